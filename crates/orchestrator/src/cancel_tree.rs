//! Cancelling a tree of executions in SQL (`lineq._cancel`, `lineq._cancel_tree`, migration
//! `20261207000014_operations.sql`) and turning what those functions return into events and
//! counts. Used by cancellation (`cancel`) and by settling (a failed execution stops its
//! children).

use sqlx::PgConnection;
use uuid::Uuid;

use lineq_core::error::{Error, Result};
use lineq_core::event::{EventType, Lineage, NewEvent};

/// What a cancel did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CancelReport {
    /// The execution asked for.
    pub execution_id: Uuid,
    /// Executions cancelled (it and its descendants that had not finished).
    pub executions: usize,
    /// Steps cancelled.
    pub steps: usize,
    /// Queued step messages deleted before any worker took them.
    pub messages_deleted: usize,
    /// The ids of the cancelled executions, parents first.
    pub cancelled: Vec<Uuid>,
}

/// Events and counts of a cancellation inside a larger transaction.
#[derive(Debug, Default)]
pub(crate) struct CancelOutcome {
    pub events: Vec<NewEvent>,
    pub report: CancelReport,
}

/// Cancels the unfinished descendants of `execution_id` (not itself), under `cause`, through
/// `lineq._cancel_tree`. The events are returned, not written: the caller writes them with the
/// rest of its transaction's.
pub(crate) async fn cancel_below(
    conn: &mut PgConnection,
    execution_id: Uuid,
    cause: Uuid,
    node: &str,
    reason: &str,
) -> Result<CancelOutcome> {
    let row: CancelRow = sqlx::query_as(
        "SELECT $1::uuid AS execution_id, executions, steps, messages_deleted, cancelled,
                NULL::uuid AS ending_event_id, events
         FROM lineq._cancel_tree($1, $2, $3, $4, false, false)",
    )
    .bind(execution_id)
    .bind(cause)
    .bind(reason)
    .bind(node)
    .fetch_one(&mut *conn)
    .await?;
    row.outcome()
}

/// What `lineq._cancel` and `lineq._cancel_tree` return.
#[derive(sqlx::FromRow)]
pub(crate) struct CancelRow {
    execution_id: Uuid,
    executions: i32,
    steps: i32,
    messages_deleted: i32,
    cancelled: Vec<Uuid>,
    pub(crate) ending_event_id: Option<Uuid>,
    events: sqlx::types::Json<Vec<SqlEvent>>,
}

/// An event a cancellation function made, as it returns it.
#[derive(serde::Deserialize)]
struct SqlEvent {
    event_id: Uuid,
    parent_event_id: Option<Uuid>,
    event_type: String,
    execution_id: Uuid,
    parent_execution_id: Option<Uuid>,
    root_execution_id: Uuid,
    correlation_id: Uuid,
    trace_correlation_id: Uuid,
    step_id: Option<Uuid>,
    attempt: Option<i32>,
    node_name: String,
    payload: serde_json::Value,
}

impl CancelRow {
    pub(crate) fn outcome(self) -> Result<CancelOutcome> {
        let mut events = Vec::with_capacity(self.events.0.len());
        for e in self.events.0 {
            let event_type = match e.event_type.as_str() {
                "execution_cancelled" => EventType::ExecutionCancelled,
                "step_cancelled" => EventType::StepCancelled,
                other => {
                    return Err(Error::InvalidState(format!(
                        "lineq._cancel_tree returned an event of type {other:?}"
                    )));
                }
            };
            let lineage = Lineage {
                execution_id: e.execution_id,
                parent_execution_id: e.parent_execution_id,
                root_execution_id: e.root_execution_id,
                correlation_id: e.correlation_id,
                trace_correlation_id: e.trace_correlation_id,
            };
            let mut ev = NewEvent::with_id(
                e.event_id,
                event_type,
                lineage,
                e.parent_event_id,
                &e.node_name,
            )
            .payload(e.payload);
            if let Some(step_id) = e.step_id {
                ev = ev.step(step_id, e.attempt.unwrap_or(1));
            }
            events.push(ev);
        }
        let count = |n: i32| usize::try_from(n).unwrap_or_default();
        Ok(CancelOutcome {
            events,
            report: CancelReport {
                execution_id: self.execution_id,
                executions: count(self.executions),
                steps: count(self.steps),
                messages_deleted: count(self.messages_deleted),
                cancelled: self.cancelled,
            },
        })
    }
}
