//! The REST API's reads of the worker fleet and the queues (`/v1/workers`, `/v1/queues`).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use lineq_read::workers;

use super::AppState;
use super::error::ApiError;

/// A worker is shown as silent after this long without a heartbeat (the orchestrator's default).
pub const SILENT_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// A registered worker.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    /// The id written in its events.
    pub worker_id: String,
    /// Its node name.
    pub host: String,
    /// Its process id.
    pub pid: i32,
    /// The namespaces it serves.
    pub namespaces: Vec<String>,
    /// The handlers it serves.
    pub handlers: Vec<String>,
    /// Its language (`rust`, `python`, ...).
    pub language: String,
    /// Its version.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_heartbeat_at: DateTime<Utc>,
    /// When it stopped cleanly.
    pub stopped_at: Option<DateTime<Utc>>,
    /// `alive`, `silent` (no heartbeat for 30 s, no clean stop) or `stopped`.
    #[schema(example = "alive")]
    pub state: String,
}

impl From<workers::WorkerInfo> for WorkerView {
    fn from(w: workers::WorkerInfo) -> Self {
        Self {
            worker_id: w.worker_id,
            host: w.host,
            pid: w.pid,
            namespaces: w.namespaces,
            handlers: w.handlers,
            language: w.language,
            version: w.version,
            started_at: w.started_at,
            last_heartbeat_at: w.last_heartbeat_at,
            stopped_at: w.stopped_at,
            state: w.state.as_str().to_string(),
        }
    }
}

/// The registered workers, stopped ones included, most recently started first.
#[utoipa::path(
    get,
    path = "/v1/workers",
    tag = "fleet",
    responses((status = 200, description = "The workers", body = Vec<WorkerView>))
)]
pub async fn workers(State(state): State<AppState>) -> Result<Json<Vec<WorkerView>>, ApiError> {
    let w = workers::list_workers(state.reads.pool(), true, SILENT_AFTER).await?;
    Ok(Json(w.into_iter().map(Into::into).collect()))
}

/// One of lineq's queues.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// The PGMQ queue.
    pub queue_name: String,
    /// Messages in it.
    pub depth: i64,
    /// Age of its oldest message in seconds; absent when it is empty.
    pub oldest_message_age_secs: Option<i32>,
}

/// lineq's queues with their depth and oldest message age.
#[utoipa::path(
    get,
    path = "/v1/queues",
    tag = "fleet",
    responses((status = 200, description = "The queues", body = Vec<QueueView>))
)]
pub async fn queues(State(state): State<AppState>) -> Result<Json<Vec<QueueView>>, ApiError> {
    let q = workers::queue_metrics(state.reads.pool()).await?;
    Ok(Json(
        q.into_iter()
            .map(|q| QueueView {
                queue_name: q.queue_name,
                depth: q.queue_length,
                oldest_message_age_secs: q.oldest_msg_age_sec,
            })
            .collect(),
    ))
}
