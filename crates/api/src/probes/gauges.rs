//! Gauges read from the database (by orchestrators, every 5 s) and from the connection pool.

use std::time::Duration;

use lineq_core::error::Result;
use sqlx::{PgPool, Row};

/// Messages in a lineq queue, hidden ones included (label: queue).
pub const QUEUE_DEPTH: &str = "lineq_queue_depth";
/// Age of a lineq queue's oldest message; 0 when it is empty (label: queue).
pub const QUEUE_OLDEST_AGE: &str = "lineq_queue_oldest_message_age_seconds";
/// Messages in the dead-letter queue.
pub const DEAD_LETTERS: &str = "lineq_dead_letters";
/// Executions by status (label: status).
pub const EXECUTIONS: &str = "lineq_executions";
/// Registered workers by state (label: state: alive, silent, stopped).
pub const WORKERS: &str = "lineq_workers";
/// Steps waiting for a handler no live worker serves (labels: namespace, handler).
pub const STEPS_UNSERVED: &str = "lineq_steps_unserved";
/// Most (namespace, handler) series of [`STEPS_UNSERVED`]: handler names come from submissions.
const MAX_UNSERVED_SERIES: usize = 100;
/// Steps ready but waiting (label: reason: concurrency_limit, rate_limited, delayed), from
/// `lineq.steps_waiting()`.
pub const STEPS_WAITING: &str = "lineq_steps_waiting";
/// This process's pool connections (label: state: idle, in_use).
pub const POOL_CONNECTIONS: &str = "lineq_db_pool_connections";
/// This process's pool size limit.
pub const POOL_MAX: &str = "lineq_db_pool_max_connections";

/// Every status an execution can have, so a status with no executions reads 0, not absent.
const STATUSES: [&str; 5] = ["pending", "running", "completed", "failed", "cancelled"];

/// Reads the pool's size and idle connections.
pub fn refresh_pool(pool: &PgPool) {
    let size = f64::from(pool.size());
    let idle = pool.num_idle() as f64;
    metrics::gauge!(POOL_CONNECTIONS, "state" => "idle").set(idle);
    metrics::gauge!(POOL_CONNECTIONS, "state" => "in_use").set((size - idle).max(0.0));
    metrics::gauge!(POOL_MAX).set(f64::from(pool.options().get_max_connections()));
}

/// Queue depth and oldest message age per lineq queue (`lineq.queue_metrics()`), dead letters,
/// executions by status (one `GROUP BY`) and workers by state.
pub async fn refresh_database(pool: &PgPool, silent_worker_after: Duration) -> Result<()> {
    let queues = sqlx::query(
        "SELECT queue_name, queue_length, oldest_msg_age_sec FROM lineq.queue_metrics()",
    )
    .fetch_all(pool)
    .await?;
    for q in &queues {
        let name: String = q.try_get("queue_name")?;
        let length: i64 = q.try_get("queue_length")?;
        let age: Option<i32> = q.try_get("oldest_msg_age_sec")?;
        if name == lineq_core::queue::dead_letter_queue().as_str() {
            metrics::gauge!(DEAD_LETTERS).set(length as f64);
        }
        metrics::gauge!(QUEUE_DEPTH, "queue" => name.clone()).set(length as f64);
        metrics::gauge!(QUEUE_OLDEST_AGE, "queue" => name).set(f64::from(age.unwrap_or(0)));
    }

    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM lineq.executions GROUP BY status")
            .fetch_all(pool)
            .await?;
    for status in STATUSES {
        let n = by_status
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!(EXECUTIONS, "status" => status).set(n as f64);
    }

    let silent_after = silent_worker_after.as_secs_f64();
    let by_state: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CASE WHEN stopped_at IS NOT NULL THEN 'stopped'
                     WHEN last_heartbeat_at < clock_timestamp() - make_interval(secs => $1)
                     THEN 'silent' ELSE 'alive' END AS state, count(*)
         FROM lineq.workers GROUP BY 1",
    )
    .bind(silent_after)
    .fetch_all(pool)
    .await?;
    for state in ["alive", "silent", "stopped"] {
        let n = by_state
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!(WORKERS, "state" => state).set(n as f64);
    }

    let waiting: Vec<(String, i64)> =
        sqlx::query_as("SELECT reason, steps FROM lineq.steps_waiting()")
            .fetch_all(pool)
            .await?;
    for (reason, n) in waiting {
        metrics::gauge!(STEPS_WAITING, "reason" => reason).set(n as f64);
    }

    // Handlers nobody serves now; the series of those served again drop to 0.
    static SHOWN: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let unserved = lineq_read::workers::unserved_steps(pool, silent_worker_after).await?;
    let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    for (ns, handler) in shown.drain(..) {
        if !unserved
            .iter()
            .any(|u| u.namespace == ns && u.handler == handler)
        {
            metrics::gauge!(STEPS_UNSERVED, "namespace" => ns, "handler" => handler).set(0.0);
        }
    }
    for u in unserved.into_iter().take(MAX_UNSERVED_SERIES) {
        metrics::gauge!(STEPS_UNSERVED, "namespace" => u.namespace.clone(), "handler" => u.handler.clone())
            .set(u.steps as f64);
        shown.push((u.namespace, u.handler));
    }
    Ok(())
}
