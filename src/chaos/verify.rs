//! The chaos verdict: what must hold after any amount of killing.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use super::{Fleet, Run};

/// What a chaos run found. `passed()` is the suite's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    /// The run's id (its executions carry the tag `chaos_run=<id>`).
    pub run_id: String,
    /// The namespace its steps ran in.
    pub namespace: String,
    /// Root executions submitted.
    pub executions: usize,
    /// Of them, completed.
    pub completed: i64,
    /// Of the run's executions (roots and children), those not completed: lost work.
    pub lost: i64,
    /// Steps with other than exactly one recorded success.
    pub duplicated_outcomes: i64,
    /// Attempts reported more than once by workers.
    pub duplicated_results: i64,
    /// Deliveries after the first (the work killed workers left behind).
    pub redeliveries: i64,
    /// Attempts retried by policy.
    pub retries: i64,
    /// Child executions.
    pub children: i64,
    /// Workers SIGKILLed.
    pub worker_kills: usize,
    /// Orchestrators SIGKILLed.
    pub orchestrator_kills: usize,
    /// Roots whose lineage check found a fault.
    pub lineage_faults: usize,
    /// Messages of the run left in a queue: its namespace's queue, and results and dead letters
    /// of its executions.
    pub messages_left: i64,
    /// Processes that did not exit 0 on SIGTERM at the end.
    pub unclean_exits: usize,
    /// Wall time.
    pub seconds: f64,
}

impl Verdict {
    /// True when nothing was lost, duplicated or broken.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.completed == self.executions as i64
            && self.duplicated_outcomes == 0
            && self.duplicated_results == 0
            && self.lineage_faults == 0
            && self.messages_left == 0
            && self.unclean_exits == 0
    }
}

/// Of the run's root executions (`ids`), those that have finished.
pub async fn finished_roots(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM lineq.executions WHERE execution_id = ANY($1)
         AND status IN ('completed', 'failed', 'cancelled')",
    )
    .bind(ids)
    .fetch_one(pool)
    .await?)
}

/// The run's messages still in a queue: everything in its own namespace's queue, and the
/// results and dead letters that belong to its executions (those queues are shared).
async fn messages_left(pool: &PgPool, run: &Run, roots: &[Uuid]) -> anyhow::Result<i64> {
    let ns = lineq_core::validation::Namespace::new(&run.namespace)?;
    let q = lineq_core::queue::step_queue(&ns);
    // The name is validated and lineq's own (`lineq_steps_chaos_<hex>`); tables cannot be bound.
    let own: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM pgmq.q_{q}"))
        .fetch_one(pool)
        .await?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT execution_id::text FROM lineq.executions WHERE root_execution_id = ANY($1)",
    )
    .bind(roots)
    .fetch_all(pool)
    .await?;
    let shared: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pgmq.q_lineq_results
                 WHERE message ->> 'execution_id' = ANY($1))
              + (SELECT count(*) FROM pgmq.q_lineq_dlq
                 WHERE message ->> 'source_queue' = $2
                    OR message -> 'message' ->> 'execution_id' = ANY($1))",
    )
    .bind(&ids)
    .bind(q.as_str())
    .fetch_one(pool)
    .await?;
    Ok(own + shared)
}

/// Waits (bounded) until none of the run's messages is in a queue.
pub async fn wait_for_empty_queues(
    pool: &PgPool,
    run: &Run,
    roots: &[Uuid],
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while messages_left(pool, run, roots).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Everything the suite asserts, counted.
#[expect(
    clippy::too_many_lines,
    reason = "every invariant of the verdict, one after the other"
)]
pub async fn verdict(
    pool: &PgPool,
    run: &Run,
    roots: &[Uuid],
    fleet: &Fleet,
    unclean_exits: usize,
    elapsed: Duration,
) -> anyhow::Result<Verdict> {
    // Everything below counts the run's executions only: its roots and their descendants.
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.executions WHERE execution_id = ANY($1)
         AND status = 'completed'",
    )
    .bind(roots)
    .fetch_one(pool)
    .await?;
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.executions WHERE root_execution_id = ANY($1)
         AND status <> 'completed'",
    )
    .bind(roots)
    .fetch_one(pool)
    .await?;
    // Exactly one step_completed per step, and no other final outcome.
    let duplicated_outcomes: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM (
             SELECT s.step_id
             FROM lineq.executions x
             JOIN lineq.steps s ON s.execution_id = x.execution_id
             LEFT JOIN lineq.events e
               ON e.step_id = s.step_id AND e.event_type IN ('step_completed', 'step_failed')
             WHERE x.root_execution_id = ANY($1)
             GROUP BY s.step_id HAVING count(e.event_id) <> 1) d"#,
    )
    .bind(roots)
    .fetch_one(pool)
    .await?;
    let duplicated_results: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM (
             SELECT step_id, attempt FROM lineq.events
             WHERE root_execution_id = ANY($1) AND event_type = 'step_result'
             GROUP BY step_id, attempt HAVING count(*) > 1) d"#,
    )
    .bind(roots)
    .fetch_one(pool)
    .await?;
    let redeliveries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.events WHERE root_execution_id = ANY($1)
         AND event_type = 'action_started' AND (payload->>'delivery')::int > 1",
    )
    .bind(roots)
    .fetch_one(pool)
    .await?;
    let retries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.events WHERE root_execution_id = ANY($1)
         AND event_type = 'step_attempt_failed'",
    )
    .bind(roots)
    .fetch_one(pool)
    .await?;
    let children: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.executions WHERE root_execution_id = ANY($1)
         AND parent_execution_id IS NOT NULL",
    )
    .bind(roots)
    .fetch_one(pool)
    .await?;
    let mut lineage_faults = 0;
    for root in roots {
        let report = lineq_read::lineage::check::check_root(pool, *root).await?;
        if !report.is_whole() {
            lineage_faults += 1;
            if lineage_faults <= 3 {
                eprintln!("chaos: lineage of {root} is not whole: {report:?}");
            }
        }
    }
    Ok(Verdict {
        run_id: run.id.clone(),
        namespace: run.namespace.clone(),
        executions: roots.len(),
        completed,
        lost,
        duplicated_outcomes,
        duplicated_results,
        redeliveries,
        retries,
        children,
        worker_kills: fleet.worker_kills(),
        orchestrator_kills: fleet.orchestrator_kills(),
        lineage_faults,
        messages_left: messages_left(pool, run, roots).await?,
        unclean_exits,
        seconds: elapsed.as_secs_f64(),
    })
}
