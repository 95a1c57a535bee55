//! The REST API's reads of the fleet, the queues, the dead letters and the workflows: what the
//! console shows, for programs. Each is a call of the orchestration crate's read functions.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use lineq_orchestrator::{dead_letters, workflow};
use lineq_read::workers;

use super::AppState;
use super::error::{ApiError, ErrorBody};

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

/// A dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// Its id in the dead-letter queue.
    pub msg_id: i64,
    /// When it was dead-lettered.
    pub dead_lettered_at: DateTime<Utc>,
    /// The queue it came from.
    pub source_queue: String,
    /// Its id there.
    pub source_msg_id: Option<i64>,
    /// How often it had been read there.
    pub read_ct: Option<i64>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The `message_dead_lettered` event.
    pub event_id: Option<Uuid>,
    /// The execution the message belongs to, when its body names one.
    pub execution_id: Option<Uuid>,
    /// The original body (text when it is not JSON; see `message_unparsed`).
    pub message: Value,
    /// Why the body is shown as text, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_unparsed: Option<String>,
}

impl From<dead_letters::DeadLetter> for DeadLetterView {
    fn from(d: dead_letters::DeadLetter) -> Self {
        Self {
            execution_id: execution_of(&d.message),
            msg_id: d.msg_id,
            dead_lettered_at: d.dead_lettered_at,
            source_queue: d.source_queue,
            source_msg_id: d.source_msg_id,
            read_ct: d.read_ct,
            reason: d.reason,
            event_id: d.event_id,
            message: d.message,
            message_unparsed: d.message_unparsed,
        }
    }
}

/// The execution a dead letter's body names, when it names one.
pub fn execution_of(message: &Value) -> Option<Uuid> {
    message
        .get("execution_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::try_parse(s).ok())
}

/// The page size of `/v1/dead-letters` when none is given, and the largest.
pub const DEAD_LETTERS_LIMIT: (i64, i64) = (100, 1000);

/// Reads `limit` (1 to 1000) from a query string with nothing else in it.
fn limit_param(query: Option<&str>) -> Result<i64, ApiError> {
    let mut limit = DEAD_LETTERS_LIMIT.0;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "limit" => {
                limit = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=DEAD_LETTERS_LIMIT.1).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid("limit", format!("{v:?} is not a number from 1 to 1000"))
                    })?;
            }
            other => {
                return Err(ApiError::invalid(
                    "query",
                    format!(
                        "unknown parameter {:?}; the only one is limit",
                        other.chars().take(64).collect::<String>()
                    ),
                ));
            }
        }
    }
    Ok(limit)
}

/// Dead letters, oldest first.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    tag = "dead letters",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)")),
    responses(
        (status = 200, description = "The dead letters", body = Vec<DeadLetterView>),
        (status = 400, description = "A bad limit or an unknown parameter", body = ErrorBody),
    )
)]
pub async fn dead_letters(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<DeadLetterView>>, ApiError> {
    let limit = limit_param(query.as_deref())?;
    let d = dead_letters::list(state.reads.pool(), limit).await?;
    Ok(Json(d.into_iter().map(Into::into).collect()))
}

fn parse_msg_id(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::invalid("id", format!("{s:?} is not a dead-letter id")))
}

/// One dead letter.
#[utoipa::path(
    get,
    path = "/v1/dead-letters/{id}",
    tag = "dead letters",
    params(("id" = i64, Path, minimum = 1, description = "Dead-letter id")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterView),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
    )
)]
pub async fn dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterView>, ApiError> {
    let id = parse_msg_id(&id)?;
    let (letter, _) = state
        .reads
        .or_primary(|pool| async move { dead_letters::show(&pool, id).await })
        .await?;
    Ok(Json(letter.into()))
}

/// What a replay did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayView {
    /// The dead letter replayed (now gone from the dead-letter queue).
    pub dead_letter: i64,
    /// The queue it was sent to.
    pub queue: String,
    /// Its new message id there.
    pub msg_id: i64,
}

/// Sends a dead letter back to the queue it came from.
#[utoipa::path(
    post,
    path = "/v1/dead-letters/{id}/replay",
    tag = "dead letters",
    params(("id" = i64, Path, minimum = 1, description = "Dead-letter id")),
    responses(
        (status = 200, description = "Replayed", body = ReplayView),
        (status = 400, description = "The id is not a number, or the letter cannot be replayed", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
        (status = 422, description = "The letter cannot be replayed", body = ErrorBody),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ReplayView>, ApiError> {
    let id = parse_msg_id(&id)?;
    let r = dead_letters::replay(state.client.pool(), id).await?;
    Ok(Json(ReplayView {
        dead_letter: r.dead_letter,
        queue: r.queue,
        msg_id: r.msg_id,
    }))
}

/// A registered workflow.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowSummaryView {
    /// Its name.
    pub name: String,
    /// Its newest version.
    pub latest_version: i32,
    /// How many versions are registered.
    pub versions: i64,
    /// Steps in the newest version.
    pub steps: usize,
    /// When the newest version was registered.
    pub updated_at: DateTime<Utc>,
}

/// The registered workflows.
#[utoipa::path(
    get,
    path = "/v1/workflows",
    tag = "workflows",
    responses((status = 200, description = "The workflows", body = Vec<WorkflowSummaryView>))
)]
pub async fn workflows(
    State(state): State<AppState>,
) -> Result<Json<Vec<WorkflowSummaryView>>, ApiError> {
    let w = workflow::store::list(state.reads.pool()).await?;
    Ok(Json(
        w.into_iter()
            .map(|w| WorkflowSummaryView {
                name: w.name,
                latest_version: w.latest_version,
                versions: w.versions,
                steps: w.steps,
                updated_at: w.updated_at,
            })
            .collect(),
    ))
}

/// One version of a workflow.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowVersionView {
    /// Its name.
    pub name: String,
    /// This version.
    pub version: i32,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// The definition (as `lineq workflow register` takes it, in JSON).
    #[schema(value_type = Object)]
    pub definition: Value,
}

/// Every version of a workflow, newest first.
#[utoipa::path(
    get,
    path = "/v1/workflows/{name}",
    tag = "workflows",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$", description = "Workflow name")),
    responses(
        (status = 200, description = "Its versions", body = Vec<WorkflowVersionView>),
        (status = 400, description = "Not a workflow name", body = ErrorBody),
        (status = 404, description = "No such workflow", body = ErrorBody),
    )
)]
pub async fn workflow_versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<WorkflowVersionView>>, ApiError> {
    lineq_core::validation::check_name("workflow", &name)?;
    // Just registered and not on the replica yet: the primary answers.
    let (v, _) = state
        .reads
        .or_primary(|pool| {
            let name = name.clone();
            async move {
                let v = workflow::store::versions(&pool, &name).await?;
                if v.is_empty() {
                    return Err(lineq_core::error::Error::NotFound {
                        what: "workflow",
                        id: name,
                    });
                }
                Ok(v)
            }
        })
        .await?;
    Ok(Json(
        v.into_iter()
            .map(|w| WorkflowVersionView {
                definition: serde_json::to_value(&w.definition).unwrap_or(Value::Null),
                name: w.name,
                version: w.version,
                created_at: w.created_at,
            })
            .collect(),
    ))
}
