//! Cancellation: an execution and all its descendants, in one transaction. Pending steps never
//! run (their queued messages are deleted), running handlers see their cancellation token (the
//! worker polls for cancelled steps it holds), and every cancellation is an event whose parent
//! is the cancellation that caused it.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use lineq_core::error::{Error, Result};
use lineq_core::event::{EventType, Lineage, NewEvent, insert_events};
use lineq_core::ids::node_name;
use lineq_core::validation::ValidationError;

use crate::settle::{Work, carry_to_parent, lock_executions, settle};

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

/// The longest cancellation reason: it is copied into the events of every execution of the
/// tree, so its size is multiplied by the tree's.
pub const MAX_REASON_LEN: usize = 256;

/// Checks a cancellation reason: at most [`MAX_REASON_LEN`] characters, no control characters
/// (it is shown in text output and logs).
pub fn check_reason(reason: &str) -> std::result::Result<(), ValidationError> {
    let n = reason.chars().count();
    if n > MAX_REASON_LEN {
        return Err(ValidationError::new(
            "reason",
            format!("it is {n} characters; the limit is {MAX_REASON_LEN}"),
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "reason",
            "it must not contain control characters",
        ));
    }
    Ok(())
}

/// Cancels `execution_id` and everything below it. A `reason` that breaks [`check_reason`] is
/// refused with [`Error::Validation`] before anything is read or written.
///
/// The cancellation itself is `lineq._cancel` (the body of `lineq.cancel`, migration
/// `20261207000014_operations.sql`); what it leaves to this caller is carrying the cancellation
/// to a parent step that waits for the execution, and settling that parent.
pub async fn cancel(pool: &PgPool, execution_id: Uuid, reason: &str) -> Result<CancelReport> {
    check_reason(reason)?;
    let node = node_name();
    let mut tx = pool.begin().await?;
    let row: CancelRow = sqlx::query_as(
        "SELECT execution_id, executions, steps, messages_deleted, cancelled, ending_event_id,
                events
         FROM lineq._cancel($1, $2, $3, true, false)",
    )
    .bind(execution_id)
    .bind(reason)
    .bind(&node)
    .fetch_one(&mut *tx)
    .await?;
    let ending = row.ending_event_id;
    let mut out = row.outcome()?;

    // A cancelled child that its parent's step waits for ends that step (as failed).
    let mut work = Work::new(&node);
    if let Some(ending) = ending {
        if let Some(mut t) = lock_executions(&mut tx, &[execution_id])
            .await?
            .into_iter()
            .next()
        {
            t.status = lineq_core::execution::ExecutionStatus::Cancelled;
            work.execs.insert(t.execution_id, t.clone());
            if carry_to_parent(&mut tx, &mut work, &t, ending)
                .await?
                .is_some()
            {
                let parent = t.parent_execution_id;
                work.touched.extend(parent);
                settle(&mut tx, &mut work).await?;
            }
        }
    }
    out.events.extend(work.events);
    let mut events = out.events;
    let ready = std::mem::take(&mut work.ready);
    // The causes first: the `step_enqueued` events of what they made ready are stamped after.
    insert_events(&mut tx, &events).await?;
    events.extend(crate::enqueue::enqueue(&mut tx, ready, &node).await?);
    tx.commit().await?;
    // Slots its steps held go to the steps waiting for them now, not at an orchestrator's
    // next pump. (Best effort: a failure here leaves that to the orchestrators.)
    if let Err(e) = crate::flow::pump(pool, &node, None).await {
        tracing::warn!(error = %e, "flow pump after cancel failed; orchestrators will pump");
    }
    crate::spans::export_ended(pool, &events, &crate::spans::Known::default()).await;
    out.report.execution_id = execution_id;
    Ok(out.report)
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
struct CancelRow {
    execution_id: Uuid,
    executions: i32,
    steps: i32,
    messages_deleted: i32,
    cancelled: Vec<Uuid>,
    ending_event_id: Option<Uuid>,
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
    fn outcome(self) -> Result<CancelOutcome> {
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
