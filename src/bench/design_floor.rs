//! The design floor: the rows design.md requires of one one-step execution, written by plain SQL
//! with no lineq code in the way — about the most throughput the design allows on this machine.
//!
//! Per execution: the execution and its step (each inserted, then updated), the step message
//! (sent, read and archived through PGMQ's tables), the result message (sent, read and deleted,
//! as lineq's orchestrator does) and the 8 lineage events, with the same indexes, row shapes
//! and durability as lineq. It is optimistic on purpose: 100 executions per statement, the
//! fewest transactions the data flow allows (submit, claim, report, settle), no NOTIFY, no
//! decisions. PostgreSQL builds the JSON that lineq builds in its own process, so it is not a
//! strict upper bound; but a target far above this row is out of reach of the design's rows on
//! this machine, and the gap between it and lineq's row is what lineq's own code costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::queue;
use lineq_core::validation::QueueName;

use super::{BenchConfig, bar, cost};

const STEPS: &str = "lineq_bench_floor_steps";
const RESULTS: &str = "lineq_bench_floor_results";
/// Executions per statement, as the raw reference's 100-message batches.
const BATCH: usize = 100;
/// Concurrent pipelines, as the raw reference's two consumers.
const PIPELINES: usize = 2;

/// The event columns every statement below writes.
const EVENT_COLUMNS: &str = "event_id, parent_event_id, execution_id, step_id, root_execution_id,
    correlation_id, event_type, node_name, worker_id, attempt, trace_id, span_id, payload";

struct Statements {
    submit: String,
    claim: String,
    report: String,
    read_results: String,
    settle: String,
}

impl Statements {
    #[expect(
        clippy::too_many_lines,
        reason = "the floor's SQL statements, prepared together"
    )]
    fn new(steps: &QueueName, results: &QueueName) -> Self {
        // PGMQ's read as two CTEs, `locked` and then `name` (the messages read, with their
        // `msg_id`, `read_ct` and `message`). The locking SELECT must be a CTE: as a subquery
        // the planner may run it once per joined row, locking more than the batch.
        let read = |q: &QueueName, name: &str| {
            format!(
                "locked AS (SELECT msg_id FROM {live} WHERE vt <= clock_timestamp()
                            ORDER BY msg_id LIMIT {BATCH} FOR UPDATE SKIP LOCKED),
                 {name} AS (UPDATE {live} m
                     SET last_read_at = clock_timestamp(),
                         vt = clock_timestamp() + interval '30 seconds', read_ct = m.read_ct + 1
                     WHERE m.msg_id = ANY(ARRAY(SELECT msg_id FROM locked))
                     RETURNING m.msg_id, m.read_ct, m.message)",
                live = queue::live_table(q)
            )
        };
        Self {
            // $1..$6: execution, correlation, step and three event ids; $7 the name; $8 queue.
            submit: format!(
                "WITH x AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[],
                                                 $5::uuid[], $6::uuid[])
                            AS x(eid, cid, sid, e1, e2, e3)),
                 ie AS (INSERT INTO lineq.executions (execution_id, workflow_name, namespace,
                            status, input, correlation_id, root_execution_id)
                        SELECT eid, $7, 'default', 'running', 'null', cid, eid FROM x),
                 iss AS (INSERT INTO lineq.steps (step_id, execution_id, name, handler,
                             namespace, queue, status, attempts, input, retry)
                         SELECT sid, eid, $7, $7, 'default', $8, 'enqueued', 1, 'null',
                                '{{\"jitter\": true, \"backoff_ms\": 1000, \"multiplier\": 2.0,
                                  \"max_attempts\": 1, \"max_backoff_ms\": 60000}}'
                         FROM x),
                 ev AS (INSERT INTO lineq.events ({EVENT_COLUMNS})
                        SELECT v.id, v.parent, eid, v.step, eid, cid, v.t, 'bench', NULL, v.att,
                               replace(cid::text, '-', ''), right(replace(v.id::text, '-', ''), 16),
                               v.p
                        FROM x, LATERAL (VALUES
                          (e1, NULL::uuid, NULL::uuid, 'execution_started', NULL::int,
                           jsonb_build_object('kind', 'task', 'version', 1, 'workflow', $7,
                                              'parent_step', NULL, 'parent_waits', false)),
                          (e2, e1, NULL, 'workflow_initialized', NULL,
                           jsonb_build_object('steps', jsonb_build_array($7))),
                          (e3, e2, sid, 'step_enqueued', 1,
                           jsonb_build_object('step', $7, 'queue', $8, 'msg_id', 0,
                                              'handler', $7, 'delay_ms', 0, 'retry_reason', NULL))
                        ) v(id, parent, step, t, att, p))
                 INSERT INTO {live} (vt, message)
                 SELECT clock_timestamp(), jsonb_build_object(
                     'meta', jsonb_build_object('tracestate', '',
                         'traceparent', '00-' || replace(cid::text, '-', '') || '-'
                                        || right(replace(e3::text, '-', ''), 16) || '-01',
                         'correlation_id', cid, 'parent_event_id', e3,
                         'root_execution_id', eid, 'parent_execution_id', NULL),
                     'step', $7, 'input', NULL, 'attempt', 1,
                     'context', jsonb_build_object('workflow', $7), 'handler', $7,
                     'step_id', sid, 'execution_id', eid)
                 FROM x",
                live = queue::live_table(steps)
            ),
            // $1: event ids, one per message read; $2 the queue. Returns the ids held.
            claim: format!(
                "WITH {read},
                 n AS (SELECT r.*, row_number() OVER (ORDER BY msg_id) AS i FROM r),
                 ev AS (INSERT INTO lineq.events ({EVENT_COLUMNS})
                        SELECT ($1::uuid[])[i], (message->'meta'->>'parent_event_id')::uuid,
                               (message->>'execution_id')::uuid, (message->>'step_id')::uuid,
                               (message->>'execution_id')::uuid,
                               (message->'meta'->>'correlation_id')::uuid, 'action_started',
                               'bench', 'floor-worker', 1,
                               replace(message->'meta'->>'correlation_id', '-', ''),
                               right(replace((($1::uuid[])[i])::text, '-', ''), 16),
                               jsonb_build_object('step', message->'step', 'queue', $2,
                                   'msg_id', msg_id, 'handler', message->'handler',
                                   'delivery', read_ct)
                        FROM n)
                 SELECT msg_id FROM n",
                read = read(steps, "r")
            ),
            // $1: the held ids; $2, $3: two event ids per message.
            report: format!(
                "WITH {archive},
                 x AS (SELECT a.*, row_number() OVER (ORDER BY msg_id) AS i FROM archived a),
                 ev AS (INSERT INTO lineq.events ({EVENT_COLUMNS})
                        SELECT v.id, (message->'meta'->>'parent_event_id')::uuid,
                               (message->>'execution_id')::uuid, (message->>'step_id')::uuid,
                               (message->>'execution_id')::uuid,
                               (message->'meta'->>'correlation_id')::uuid, v.t, 'bench',
                               'floor-worker', 1,
                               replace(message->'meta'->>'correlation_id', '-', ''),
                               right(replace(v.id::text, '-', ''), 16), v.p
                        FROM x, LATERAL (VALUES
                          (($2::uuid[])[i], 'action_completed', jsonb_build_object(
                              'step', message->'step', 'superseded', false, 'duration_ms', 0)),
                          (($3::uuid[])[i], 'step_result', jsonb_build_object(
                              'step', message->'step', 'outcome', 'completed'))) v(id, t, p))
                 INSERT INTO {results} (vt, message)
                 SELECT clock_timestamp(), jsonb_build_object(
                     'meta', message->'meta' || jsonb_build_object('parent_event_id',
                                                                   ($3::uuid[])[i]),
                     'step', message->'step', 'error', NULL, 'output', NULL, 'attempt', 1,
                     'outcome', 'completed', 'step_id', message->'step_id',
                     'worker_id', 'floor-worker', 'execution_id', message->'execution_id',
                     'started_event_id', ($2::uuid[])[i])
                 FROM x",
                archive = queue::archive_ctes(steps, "$1"),
                results = queue::live_table(results)
            ),
            read_results: format!("WITH {} SELECT msg_id FROM r", read(results, "r")),
            // $1: the result ids read; $2, $3: two event ids per message. Returns the number
            // of executions completed.
            settle: format!(
                "WITH gone AS (DELETE FROM {results} WHERE msg_id = ANY($1::bigint[])
                               RETURNING msg_id, message),
                 x AS (SELECT (message->>'execution_id')::uuid AS eid,
                              (message->>'step_id')::uuid AS sid,
                              (message->'meta'->>'correlation_id')::uuid AS cid,
                              (message->'meta'->>'parent_event_id')::uuid AS parent,
                              message->'step' AS step,
                              row_number() OVER (ORDER BY msg_id) AS i
                       FROM gone),
                 us AS (UPDATE lineq.steps s SET status = 'completed', output = 'null',
                            worker_id = 'floor-worker', updated_at = clock_timestamp(),
                            finished_at = clock_timestamp()
                        FROM x WHERE s.step_id = x.sid),
                 ux AS (UPDATE lineq.executions e SET status = 'completed', output = 'null',
                            version = e.version + 1, updated_at = clock_timestamp(),
                            finished_at = clock_timestamp()
                        FROM x WHERE e.execution_id = x.eid
                        RETURNING 1),
                 ev AS (INSERT INTO lineq.events ({EVENT_COLUMNS})
                        SELECT v.id, v.parent, eid, v.step, eid, cid, v.t, 'bench', NULL, v.att,
                               replace(cid::text, '-', ''), right(replace(v.id::text, '-', ''), 16),
                               v.p
                        FROM x, LATERAL (VALUES
                          (($2::uuid[])[i], parent, sid, 1, 'step_completed',
                           jsonb_build_object('step', step, 'children', 0,
                                              'worker_id', 'floor-worker')),
                          (($3::uuid[])[i], ($2::uuid[])[i], NULL::uuid, NULL::int,
                           'execution_completed', '{{\"status\": \"completed\"}}'::jsonb)
                        ) v(id, parent, step, att, t, p))
                 SELECT count(*) FROM ux",
                results = queue::live_table(results)
            ),
        }
    }
}

fn ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::now_v7()).collect()
}

/// Runs the design's rows alone, checked (every execution completed with its 8 events):
/// executions per second, and what each cost.
#[expect(
    clippy::too_many_lines,
    reason = "the floor's phases (fill, drain, settle) measured in one place"
)]
pub async fn run(
    pool: &PgPool,
    cfg: &BenchConfig,
    run_name: &str,
) -> anyhow::Result<cost::Measured> {
    let steps = QueueName::new(STEPS)?;
    let results = QueueName::new(RESULTS)?;
    {
        let mut conn = pool.acquire().await?;
        for q in [&steps, &results] {
            queue::ensure_queue(&mut conn, q).await?;
            sqlx::query("SELECT pgmq.purge_queue($1)")
                .bind(q.as_str())
                .execute(&mut *conn)
                .await?;
        }
    }
    let sql = Arc::new(Statements::new(&steps, &results));
    let n = cfg.executions;
    let pb = bar(cfg, n as u64, "design floor (SQL alone)");
    let submitted = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let mark = cost::Mark::now(pool).await?;
    let started = Instant::now();
    let mut pipelines = Vec::new();
    for _ in 0..PIPELINES {
        let (pool, sql, pb) = (pool.clone(), sql.clone(), pb.clone());
        let (submitted, completed) = (submitted.clone(), completed.clone());
        let name = run_name.to_string();
        pipelines.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            while completed.load(Ordering::Relaxed) < n {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "design floor: not done in 10 min"
                );
                let from = submitted.fetch_add(BATCH, Ordering::Relaxed);
                let k = BATCH.min(n.saturating_sub(from));
                if k > 0 {
                    let [eid, cid, sid, e1, e2, e3] =
                        [ids(k), ids(k), ids(k), ids(k), ids(k), ids(k)];
                    sqlx::query(&sql.submit)
                        .bind(&eid)
                        .bind(&cid)
                        .bind(&sid)
                        .bind(&e1)
                        .bind(&e2)
                        .bind(&e3)
                        .bind(&name)
                        .bind(STEPS)
                        .execute(&pool)
                        .await?;
                }
                let held: Vec<i64> = sqlx::query_scalar(&sql.claim)
                    .bind(ids(BATCH))
                    .bind(STEPS)
                    .fetch_all(&pool)
                    .await?;
                if !held.is_empty() {
                    sqlx::query(&sql.report)
                        .bind(&held)
                        .bind(ids(held.len()))
                        .bind(ids(held.len()))
                        .execute(&pool)
                        .await?;
                }
                let mut tx = pool.begin().await?;
                let read: Vec<i64> = sqlx::query_scalar(&sql.read_results)
                    .fetch_all(&mut *tx)
                    .await?;
                let done: i64 = sqlx::query_scalar(&sql.settle)
                    .bind(&read)
                    .bind(ids(read.len()))
                    .bind(ids(read.len()))
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                let done = usize::try_from(done).unwrap_or(0);
                completed.fetch_add(done, Ordering::Relaxed);
                pb.inc(done as u64);
                if k == 0 && held.is_empty() && done == 0 {
                    // The other pipeline holds what is left.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            anyhow::Ok(())
        }));
    }
    for p in pipelines {
        p.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cost = mark.per_unit_since(pool, n).await?;
    pb.finish_and_clear();
    let (done, events): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE x.status = 'completed'),
                (SELECT count(*) FROM lineq.events e JOIN lineq.executions y USING (execution_id)
                 WHERE y.workflow_name = $1)
         FROM lineq.executions x WHERE x.workflow_name = $1",
    )
    .bind(run_name)
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        done == n as i64 && events == 8 * n as i64,
        "design floor: {done} of {n} executions completed with {events} events (expected {})",
        8 * n
    );
    Ok(cost::Measured {
        per_second: n as f64 / seconds,
        cost,
    })
}
