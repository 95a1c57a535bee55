//! Cancellation: an execution and all its descendants, in one transaction. Pending steps never
//! run (their queued messages are deleted), running handlers see their cancellation token (the
//! worker polls for cancelled steps it holds), and every cancellation is an event whose parent
//! is the cancellation that caused it.

use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::event::insert_events;
use lineq_core::execution::ExecutionStatus;
use lineq_core::ids::node_name;
use lineq_core::validation::ValidationError;

pub use crate::cancel_tree::CancelReport;
use crate::cancel_tree::CancelRow;
use crate::settle::{carry_to_parent, settle};
use crate::state::{Work, lock_executions};

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
/// refused with [`Error::Validation`](lineq_core::error::Error::Validation) before anything
/// is read or written.
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
            t.status = ExecutionStatus::Cancelled;
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
    crate::spans::export_ended(pool, events, &crate::spans::Known::default()).await;
    out.report.execution_id = execution_id;
    Ok(out.report)
}
