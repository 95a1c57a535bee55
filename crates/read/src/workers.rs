//! The worker fleet (`lineq workers`): who is registered in `lineq.workers` (written by the
//! workers themselves), how each is doing, the queues' depths, and the steps no live worker
//! serves. The release of a silent worker's steps is the orchestrator's
//! (`lineq_orchestrator::maintenance::sweeper`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

use lineq_core::error::Result;

/// How a registered worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Heartbeating.
    Alive,
    /// No heartbeat for longer than the threshold, and no clean stop: killed, frozen or cut off.
    Silent,
    /// Shut down cleanly.
    Stopped,
}

impl WorkerState {
    /// `alive`, `silent` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Alive => "alive",
            WorkerState::Silent => "silent",
            WorkerState::Stopped => "stopped",
        }
    }
}

/// A row of `lineq.workers`, with its state.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    /// The id written in its events.
    pub worker_id: String,
    /// Its node name (`LINEQ_NODE_NAME` or the host name).
    pub host: String,
    /// Its process id on that host.
    pub pid: i32,
    /// The namespaces it serves.
    pub namespaces: Vec<String>,
    /// The version it runs (of lineq, or of the client library it is written with).
    pub version: String,
    /// The language it is written in (`rust`, `python`, `bash`, ...), as it registered.
    pub language: String,
    /// The handlers it serves.
    pub handlers: Vec<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_heartbeat_at: DateTime<Utc>,
    /// When it stopped cleanly.
    pub stopped_at: Option<DateTime<Utc>>,
    /// When an orchestrator released its steps after it went silent.
    pub released_at: Option<DateTime<Utc>>,
    /// Seconds since its last heartbeat (by the database's clock).
    pub silent_for_secs: f64,
    /// Alive, silent or stopped.
    pub state: WorkerState,
}

/// The registered workers, most recently started first; stopped ones only with
/// `include_stopped`. A worker is silent after `silent_after` without a heartbeat.
pub async fn list_workers(
    pool: &PgPool,
    include_stopped: bool,
    silent_after: Duration,
) -> Result<Vec<WorkerInfo>> {
    let rows = sqlx::query(
        "SELECT worker_id, host, pid, namespaces, version, language, handlers, started_at,
                last_heartbeat_at, stopped_at, released_at,
                extract(epoch FROM clock_timestamp() - last_heartbeat_at)::float8 AS silent_for
         FROM lineq.workers
         WHERE $1 OR stopped_at IS NULL
         ORDER BY started_at DESC, worker_id",
    )
    .bind(include_stopped)
    .fetch_all(pool)
    .await?;
    let threshold = silent_after.as_secs_f64();
    rows.into_iter()
        .map(|r| {
            let stopped_at: Option<DateTime<Utc>> = r.try_get("stopped_at")?;
            let silent_for: f64 = r.try_get("silent_for")?;
            let state = if stopped_at.is_some() {
                WorkerState::Stopped
            } else if silent_for > threshold {
                WorkerState::Silent
            } else {
                WorkerState::Alive
            };
            Ok(WorkerInfo {
                worker_id: r.try_get("worker_id")?,
                host: r.try_get("host")?,
                pid: r.try_get("pid")?,
                namespaces: r.try_get("namespaces")?,
                version: r.try_get("version")?,
                language: r.try_get("language")?,
                handlers: r.try_get("handlers")?,
                started_at: r.try_get("started_at")?,
                last_heartbeat_at: r.try_get("last_heartbeat_at")?,
                stopped_at,
                released_at: r.try_get("released_at")?,
                silent_for_secs: silent_for.max(0.0),
                state,
            })
        })
        .collect()
}

/// One of lineq's queues, from `lineq.queue_metrics()`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueueMetrics {
    /// The PGMQ queue.
    pub queue_name: String,
    /// Messages in it (visible or held by a worker).
    pub queue_length: i64,
    /// Age of its oldest message in seconds; `None` when it is empty.
    pub oldest_msg_age_sec: Option<i32>,
}

/// Depth and oldest message age of each of lineq's queues (`lineq.queue_metrics()`), by name.
pub async fn queue_metrics(pool: &PgPool) -> Result<Vec<QueueMetrics>> {
    Ok(sqlx::query_as::<_, QueueMetrics>(
        "SELECT queue_name, queue_length, oldest_msg_age_sec FROM lineq.queue_metrics()
         ORDER BY queue_name",
    )
    .fetch_all(pool)
    .await?)
}

/// Steps waiting for a handler that no live worker of their namespace serves.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct UnservedSteps {
    /// The namespace.
    pub namespace: String,
    /// The handler nobody serves.
    pub handler: String,
    /// How many steps wait for it.
    pub steps: i64,
    /// How long the oldest has waited.
    pub oldest_age_secs: Option<i32>,
}

/// Steps waiting for a handler no live worker serves (`lineq.unserved_steps`), by namespace and
/// handler. A worker is live when it has heartbeated within `silent_after`.
pub async fn unserved_steps(pool: &PgPool, silent_after: Duration) -> Result<Vec<UnservedSteps>> {
    Ok(sqlx::query_as("SELECT * FROM lineq.unserved_steps($1)")
        .bind(silent_after.as_secs_f64())
        .fetch_all(pool)
        .await?)
}
