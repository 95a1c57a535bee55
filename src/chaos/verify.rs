//! The chaos verdict: what must hold after any amount of killing.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use super::Fleet;

/// What a chaos run found. `passed()` is the suite's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    /// Root executions submitted.
    pub executions: usize,
    /// Of them, completed.
    pub completed: i64,
    /// Executions (roots and children) not completed: lost work.
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
    /// Messages left in any lineq queue (dead letters included).
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

/// Root executions of the chaos workflow that have finished.
pub async fn finished_roots(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM lineq.executions WHERE workflow_name = $1
         AND parent_execution_id IS NULL AND status IN ('completed', 'failed', 'cancelled')",
    )
    .bind(super::WORKFLOW)
    .fetch_one(pool)
    .await?)
}

async fn messages_left(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(queue_length), 0)::bigint FROM lineq.queue_metrics()",
    )
    .fetch_one(pool)
    .await?)
}

/// Waits (bounded) until no lineq queue holds a message.
pub async fn wait_for_empty_queues(pool: &PgPool, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while messages_left(pool).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Everything the suite asserts, counted.
pub async fn verdict(
    pool: &PgPool,
    submitted: usize,
    fleet: &Fleet,
    unclean_exits: usize,
    elapsed: Duration,
) -> anyhow::Result<Verdict> {
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.executions WHERE workflow_name = $1
         AND parent_execution_id IS NULL AND status = 'completed'",
    )
    .bind(super::WORKFLOW)
    .fetch_one(pool)
    .await?;
    let lost: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lineq.executions WHERE status <> 'completed'")
            .fetch_one(pool)
            .await?;
    // Exactly one step_completed per step, and no other final outcome.
    let duplicated_outcomes: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM (
             SELECT s.step_id
             FROM lineq.steps s LEFT JOIN lineq.events e
               ON e.step_id = s.step_id AND e.event_type IN ('step_completed', 'step_failed')
             GROUP BY s.step_id HAVING count(e.event_id) <> 1) d"#,
    )
    .fetch_one(pool)
    .await?;
    let duplicated_results: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM (
             SELECT step_id, attempt FROM lineq.events WHERE event_type = 'step_result'
             GROUP BY step_id, attempt HAVING count(*) > 1) d"#,
    )
    .fetch_one(pool)
    .await?;
    let redeliveries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.events WHERE event_type = 'action_started'
         AND (payload->>'delivery')::int > 1",
    )
    .fetch_one(pool)
    .await?;
    let retries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.events WHERE event_type = 'step_attempt_failed'",
    )
    .fetch_one(pool)
    .await?;
    let children: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.executions WHERE parent_execution_id IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    let roots: Vec<Uuid> = sqlx::query_scalar(
        "SELECT execution_id FROM lineq.executions WHERE parent_execution_id IS NULL",
    )
    .fetch_all(pool)
    .await?;
    let mut lineage_faults = 0;
    for root in roots {
        let report = lineq::orchestration::lineage::check::check_root(pool, root).await?;
        if !report.is_whole() {
            lineage_faults += 1;
            if lineage_faults <= 3 {
                eprintln!("chaos: lineage of {root} is not whole: {report:?}");
            }
        }
    }
    Ok(Verdict {
        executions: submitted,
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
        messages_left: messages_left(pool).await?,
        unclean_exits,
        seconds: elapsed.as_secs_f64(),
    })
}
