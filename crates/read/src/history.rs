//! An execution's history: its status, step and tag changes, oldest first.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::error::{Error, Result};

/// What a history entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// The execution's status changed (`execution_*` events).
    Status,
    /// A step's status changed (`step_*` events).
    Step,
    /// The tags changed (`tags_changed`).
    Tags,
}

/// One change in an execution's life, read from its events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What changed.
    pub kind: HistoryKind,
    /// The event it was read from.
    pub event_id: Uuid,
    /// That event's type.
    pub event_type: String,
    /// The execution's status from here on (status entries).
    pub status: Option<String>,
    /// The step concerned (step entries).
    pub step: Option<String>,
    /// The step's status from here on (step entries): `enqueued`, `completed`, `failed`,
    /// `attempt_failed`, `waiting`, `cancelled`.
    pub step_status: Option<String>,
    /// The attempt concerned (step entries).
    pub attempt: Option<i32>,
    /// The execution's version after the change (tag entries).
    pub version: Option<i64>,
    /// The tags before (tag entries).
    pub tags_before: Option<Value>,
    /// The tags after (tag entries).
    pub tags_after: Option<Value>,
    /// Why it happened.
    pub cause: String,
}

/// The history of execution `id`, oldest first: its status changes (`execution_started`,
/// `execution_completed|failed|cancelled`), its steps' changes (`step_*`, except the worker's
/// `step_result` report) and its tag changes (`tags_changed`), read by
/// `lineq.execution_history` (migration `20261207000015_history_and_finish.sql`).
/// [`Error::NotFound`] when there is no such execution.
///
/// [`Error::NotFound`]: lineq_core::error::Error::NotFound
pub async fn history(pool: &PgPool, id: Uuid) -> Result<Vec<HistoryEntry>> {
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT at, kind, event_id, event_type, status, step, step_status, attempt, version,
                tags_before, tags_after, cause
         FROM lineq.execution_history($1)",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(HistoryRow::entry).collect()
}

/// A row of `lineq.execution_history`.
#[derive(sqlx::FromRow)]
struct HistoryRow {
    at: DateTime<Utc>,
    kind: String,
    event_id: Uuid,
    event_type: String,
    status: Option<String>,
    step: Option<String>,
    step_status: Option<String>,
    attempt: Option<i32>,
    version: Option<i64>,
    tags_before: Option<Value>,
    tags_after: Option<Value>,
    cause: String,
}

impl HistoryRow {
    fn entry(self) -> Result<HistoryEntry> {
        let kind = match self.kind.as_str() {
            "status" => HistoryKind::Status,
            "step" => HistoryKind::Step,
            "tags" => HistoryKind::Tags,
            other => {
                return Err(Error::InvalidState(format!(
                    "lineq.execution_history returned an entry of kind {other:?}"
                )));
            }
        };
        Ok(HistoryEntry {
            at: self.at,
            kind,
            event_id: self.event_id,
            event_type: self.event_type,
            status: self.status,
            step: self.step,
            step_status: self.step_status,
            attempt: self.attempt,
            version: self.version,
            tags_before: self.tags_before,
            tags_after: self.tags_after,
            cause: self.cause,
        })
    }
}
