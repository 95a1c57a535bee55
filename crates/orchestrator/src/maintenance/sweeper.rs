//! Releasing the steps of a worker that went silent: who is registered in `lineq.workers` is
//! read here only to find the silent ones (the fleet view is `lineq_read::workers`).
//!
//! A worker that is SIGKILLed, frozen or cut off holds its messages until their visibility
//! timeout runs out, which may be long (a worker running hour-long steps sets it long). Its
//! heartbeat in `lineq.workers` stops much sooner. When it has been silent for longer than the
//! threshold, one orchestrator makes the messages it held visible again, now, so another worker
//! runs them as a new delivery (the lineage shows both). Nothing else is written: the next
//! worker's `action_started` is the evidence.
//!
//! A message is released only when it is certain the silent worker was its last holder: its
//! step's latest `action_started` is the silent worker's, for this message, at the message's
//! current delivery count, with no outcome recorded under it; and it is still hidden. The
//! message rows are locked while that is checked, so a worker reading at the same moment either
//! claimed it before (and the delivery count no longer matches) or waits and finds it visible.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::queue;
use lineq_core::validation::{Namespace, QueueName};

/// Steps released from silent workers (label: the queue).
pub const STEPS_RELEASED: &str = "lineq_orchestrator_steps_released_total";

/// What one release did.
#[derive(Debug, Clone, Serialize)]
pub struct Released {
    /// The silent worker.
    pub worker_id: String,
    /// The queue its messages were in.
    pub queue: String,
    /// The messages made visible again.
    pub msg_ids: Vec<i64>,
}

/// Finds workers silent for longer than `silent_after` (not stopped, not released yet) and
/// releases the messages each still holds, each worker in one transaction. Safe to run from
/// several orchestrators at once: a worker is released by one of them, once (until it
/// heartbeats again).
pub async fn release_silent_workers(
    pool: &PgPool,
    silent_after: Duration,
) -> Result<Vec<Released>> {
    let secs = silent_after.as_secs_f64();
    let silent: Vec<String> = sqlx::query_scalar(
        "SELECT worker_id FROM lineq.workers
         WHERE stopped_at IS NULL AND released_at IS NULL
           AND last_heartbeat_at < clock_timestamp() - make_interval(secs => $1)",
    )
    .bind(secs)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for worker_id in silent {
        let mut tx = pool.begin().await?;
        // Taken again under the row lock: another orchestrator may have released it, or it may
        // have heartbeated, since the look above.
        let namespaces: Option<Vec<String>> = sqlx::query_scalar(
            "UPDATE lineq.workers SET released_at = clock_timestamp()
             WHERE worker_id = $1 AND stopped_at IS NULL AND released_at IS NULL
               AND last_heartbeat_at < clock_timestamp() - make_interval(secs => $2)
             RETURNING namespaces",
        )
        .bind(&worker_id)
        .bind(secs)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(namespaces) = namespaces else {
            continue;
        };
        let mut released = Vec::new();
        for ns in &namespaces {
            let Ok(ns) = Namespace::new(ns) else {
                tracing::warn!(worker_id, namespace = %ns, "silent worker lists an invalid namespace; skipped");
                continue;
            };
            let q = queue::step_queue(&ns);
            if !queue::queue_exists(&mut tx, &q).await? {
                continue;
            }
            let ids = release_in_queue(&mut tx, &q, &worker_id).await?;
            if !ids.is_empty() {
                metrics::counter!(STEPS_RELEASED, "queue" => q.as_str().to_string())
                    .increment(ids.len() as u64);
                released.push(Released {
                    worker_id: worker_id.clone(),
                    queue: q.as_str().to_string(),
                    msg_ids: ids,
                });
            }
        }
        tx.commit().await?;
        if released.is_empty() {
            tracing::warn!(
                worker_id,
                silent_after_secs = secs,
                "worker went silent; it held no steps"
            );
        }
        for r in &released {
            tracing::warn!(worker_id, queue = %r.queue, msg_ids = ?r.msg_ids,
                released = r.msg_ids.len(), silent_after_secs = secs,
                "worker went silent; released its steps for other workers");
        }
        out.extend(released);
    }
    Ok(out)
}

/// Releases, in `q`, the hidden messages whose last holder is `worker_id`. Returns their ids.
async fn release_in_queue(
    conn: &mut PgConnection,
    q: &QueueName,
    worker_id: &str,
) -> Result<Vec<i64>> {
    // The table name comes from a validated queue name; identifiers cannot be bound.
    let hidden = sqlx::query(&format!(
        "SELECT msg_id, read_ct, message->>'step_id' AS step_id
         FROM pgmq.q_{} WHERE vt > clock_timestamp()",
        q.as_str()
    ))
    .fetch_all(&mut *conn)
    .await?;
    // step id → (msg id, delivery count); a message whose step id is unreadable is not ours to
    // judge (the worker that reads it next dead-letters it).
    let mut by_step: HashMap<Uuid, (i64, i32)> = HashMap::new();
    for r in &hidden {
        let step: Option<String> = r.try_get("step_id")?;
        if let Some(step) = step.and_then(|s| Uuid::parse_str(&s).ok()) {
            by_step.insert(step, (r.try_get("msg_id")?, r.try_get("read_ct")?));
        }
    }
    if by_step.is_empty() {
        return Ok(Vec::new());
    }
    let steps: Vec<Uuid> = by_step.keys().copied().collect();
    // Each step's latest claim, kept when it is the silent worker's and has no outcome.
    let latest = sqlx::query(
        "SELECT step_id, msg_id, delivery FROM (
             SELECT DISTINCT ON (e.step_id) e.step_id, e.event_id, e.worker_id,
                    e.payload->>'queue' AS queue,
                    (e.payload->>'msg_id')::bigint AS msg_id,
                    (e.payload->>'delivery')::integer AS delivery
             FROM lineq.events e
             WHERE e.step_id = ANY($1) AND e.event_type = 'action_started'
             ORDER BY e.step_id, e.created_at DESC, e.event_id DESC
         ) last
         WHERE last.worker_id = $2 AND last.queue = $3
           AND NOT EXISTS (
             SELECT 1 FROM lineq.events o
             WHERE o.parent_event_id = last.event_id
               AND o.event_type IN ('action_completed', 'action_failed', 'step_result'))",
    )
    .bind(&steps)
    .bind(worker_id)
    .bind(q.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut ids = Vec::new();
    let mut deliveries = Vec::new();
    for r in &latest {
        let step: Uuid = r.try_get("step_id")?;
        let msg_id: Option<i64> = r.try_get("msg_id")?;
        let delivery: Option<i32> = r.try_get("delivery")?;
        if let (Some(&(m, read_ct)), Some(msg_id), Some(delivery)) =
            (by_step.get(&step), msg_id, delivery)
            && m == msg_id
            && read_ct == delivery
        {
            ids.push(m);
            deliveries.push(read_ct);
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // Lock them and check again: read since (delivery count moved) or visible already means
    // someone else has it.
    let locked: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT msg_id FROM pgmq.q_{} q
         JOIN unnest($1::bigint[], $2::integer[]) AS held(msg_id, read_ct) USING (msg_id)
         WHERE q.read_ct = held.read_ct AND q.vt > clock_timestamp()
         FOR UPDATE OF q",
        q.as_str()
    ))
    .bind(&ids)
    .bind(&deliveries)
    .fetch_all(&mut *conn)
    .await?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    queue::extend(&mut *conn, q, &locked, 0).await?;
    let mut locked = locked;
    locked.sort_unstable();
    Ok(locked)
}

/// How long the rows of stopped (or released and still silent) workers are kept for
/// `lineq workers --all`.
pub const KEEP_GONE_WORKERS: Duration = Duration::from_secs(7 * 24 * 3600);

/// Deletes the rows of workers gone for longer than `older_than`: every restart without a fixed
/// `--worker-id` registers a new id, so the table would otherwise only grow. Returns how many.
pub async fn prune_gone_workers(pool: &PgPool, older_than: Duration) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM lineq.workers
         WHERE last_heartbeat_at < clock_timestamp() - make_interval(secs => $1)
           AND (stopped_at IS NOT NULL OR released_at IS NOT NULL)",
    )
    .bind(older_than.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Runs [`release_silent_workers`] from the orchestrator loop, at most every 5 s (more often
/// for a short threshold), logging failures instead of stopping the loop.
#[derive(Debug)]
pub struct Sweeper {
    silent_after: Duration,
    every: Duration,
    last: Option<Instant>,
    last_prune: Option<Instant>,
}

impl Sweeper {
    /// A sweeper for workers silent longer than `silent_after`.
    pub fn new(silent_after: Duration) -> Self {
        Self {
            silent_after,
            every: (silent_after / 2).clamp(Duration::from_millis(200), Duration::from_secs(5)),
            last: None,
            last_prune: None,
        }
    }

    /// Sweeps when it is time to.
    pub async fn tick(&mut self, pool: &PgPool) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        if let Err(e) = release_silent_workers(pool, self.silent_after).await {
            tracing::warn!(error = %e, "releasing the steps of silent workers failed; will retry");
        }
        if self
            .last_prune
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(3600))
        {
            self.last_prune = Some(Instant::now());
            if let Err(e) = prune_gone_workers(pool, KEEP_GONE_WORKERS).await {
                tracing::warn!(error = %e, "pruning gone workers failed; will retry");
            }
        }
    }
}
