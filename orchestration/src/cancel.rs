//! Cancellation: an execution and all its descendants, in one transaction. Pending steps never
//! run (their queued messages are deleted), running handlers see their cancellation token (the
//! worker polls for cancelled steps it holds), and every cancellation is an event whose parent
//! is the cancellation that caused it.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use lineq_shared::error::{Error, Result};
use lineq_shared::event::{EventType, NewEvent, insert_events, latest_event};
use lineq_shared::ids::node_name;
use lineq_shared::telemetry;
use lineq_shared::validation::QueueName;

use crate::settle::{ExecState, Work, carry_to_parent, lock_executions, settle};

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

/// Cancels `execution_id` and everything below it.
pub async fn cancel(pool: &PgPool, execution_id: Uuid, reason: &str) -> Result<CancelReport> {
    let node = node_name();
    let started = telemetry::start();
    let mut tx = pool.begin().await?;
    let target = lock_executions(&mut tx, &[execution_id]).await?;
    let Some(target) = target.into_iter().next() else {
        return Err(Error::NotFound {
            what: "execution",
            id: execution_id.to_string(),
        });
    };
    if target.is_terminal() {
        return Err(Error::InvalidState(format!(
            "execution {execution_id} is already {}; only unfinished executions can be cancelled",
            target.status
        )));
    }
    let latest = latest_event(&mut *tx, execution_id).await?;
    let mut out = cancel_tree(&mut tx, execution_id, latest, &node, reason, true).await?;
    let ending = out
        .events
        .iter()
        .find(|e| e.event_type == EventType::ExecutionCancelled)
        .map(|e| e.event_id);

    // A cancelled child that its parent's step waits for ends that step (as failed).
    let mut work = Work::new(&node);
    if let Some(ending) = ending {
        let mut t = target.clone();
        t.status = "cancelled".into();
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
    out.events.extend(work.events);
    let mut events = out.events;
    let ready = std::mem::take(&mut work.ready);
    // The causes first: the `step_enqueued` events of what they made ready are stamped after.
    insert_events(&mut tx, &events).await?;
    events.extend(crate::enqueue::enqueue(&mut tx, ready, &node).await?);
    tx.commit().await?;
    telemetry::export(&events, started);
    out.report.execution_id = execution_id;
    Ok(out.report)
}

/// Cancels the unfinished descendants of `execution_id` (not itself), under `cause`.
pub(crate) async fn cancel_below(
    conn: &mut PgConnection,
    execution_id: Uuid,
    cause: Uuid,
    node: &str,
    reason: &str,
) -> Result<CancelOutcome> {
    cancel_tree(conn, execution_id, Some(cause), node, reason, false).await
}

async fn cancel_tree(
    conn: &mut PgConnection,
    execution_id: Uuid,
    cause: Option<Uuid>,
    node: &str,
    reason: &str,
    include_self: bool,
) -> Result<CancelOutcome> {
    let tree: Vec<(Uuid, i32)> = sqlx::query_as(
        r#"
        WITH RECURSIVE t(execution_id, depth) AS (
            SELECT $1::uuid, 0
            UNION ALL
            SELECT c.execution_id, t.depth + 1
            FROM lineq.executions c JOIN t ON c.parent_execution_id = t.execution_id
            WHERE t.depth < 1000
        )
        SELECT execution_id, depth FROM t ORDER BY depth, execution_id
        "#,
    )
    .bind(execution_id)
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<Uuid> = tree
        .iter()
        .filter(|(id, _)| include_self || *id != execution_id)
        .map(|(id, _)| *id)
        .collect();
    let locked: HashMap<Uuid, ExecState> = lock_executions(conn, &ids)
        .await?
        .into_iter()
        .map(|e| (e.execution_id, e))
        .collect();

    let mut out = CancelOutcome::default();
    // The cancellation event of each execution, so a child's hangs off its parent's.
    let mut cancelled_event: HashMap<Uuid, Uuid> = HashMap::new();
    if let Some(c) = cause {
        cancelled_event.insert(execution_id, c);
    }
    let mut by_queue: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (id, _) in &tree {
        let Some(exec) = locked.get(id) else { continue };
        if exec.is_terminal() {
            continue;
        }
        let parent_event = match exec
            .parent_execution_id
            .and_then(|p| cancelled_event.get(&p))
        {
            Some(e) if *id != execution_id => Some(*e),
            _ if *id == execution_id => cause,
            _ => latest_event(&mut *conn, *id).await?,
        };
        let ev = NewEvent::new(
            EventType::ExecutionCancelled,
            exec.lineage(),
            parent_event,
            node,
        )
        .payload(json!({ "status": "cancelled", "reason": reason }));
        cancelled_event.insert(*id, ev.event_id);
        sqlx::query(
            "UPDATE lineq.executions SET status = 'cancelled', version = version + 1,
                 error = $2, updated_at = clock_timestamp(), finished_at = clock_timestamp()
             WHERE execution_id = $1 AND status IN ('pending', 'running')",
        )
        .bind(id)
        .bind(json!({ "kind": "cancelled", "message": reason }))
        .execute(&mut *conn)
        .await?;
        let steps: Vec<(Uuid, String, String, String, Option<i64>, i32)> = sqlx::query_as(
            "UPDATE lineq.steps s SET status = 'cancelled', updated_at = clock_timestamp(),
                 finished_at = clock_timestamp()
             FROM (SELECT step_id, status AS was FROM lineq.steps
                   WHERE execution_id = $1 AND status IN ('pending', 'enqueued', 'waiting')
                   FOR UPDATE) old
             WHERE s.step_id = old.step_id
             RETURNING s.step_id, s.name, old.was, s.queue, s.msg_id, s.attempts",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        let cancel_event = ev.event_id;
        out.events.push(ev);
        out.report.executions += 1;
        out.report.cancelled.push(*id);
        for (step_id, name, was, queue, msg_id, attempts) in steps {
            if let (Some(m), "enqueued") = (msg_id, was.as_str()) {
                by_queue.entry(queue).or_default().push(m);
            }
            out.events.push(
                NewEvent::new(
                    EventType::StepCancelled,
                    exec.lineage(),
                    Some(cancel_event),
                    node,
                )
                .step(step_id, attempts.max(1))
                .payload(json!({ "step": name, "was": was })),
            );
            out.report.steps += 1;
        }
    }
    for (q, msgs) in by_queue {
        out.report.messages_deleted +=
            lineq_shared::queue::delete(conn, &QueueName::new(&q)?, &msgs)
                .await?
                .len();
    }
    Ok(out)
}
