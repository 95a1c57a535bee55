//! The REST API's dead letters: list, show, replay (`/v1/dead-letters`).

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use lineq_orchestrator::dead_letters;

use super::AppState;
use super::error::{ApiError, ErrorBody};

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
