//! Settling executions after their steps changed, inside the caller's transaction: enqueue the
//! steps whose dependencies are now done (fan-out and fan-in), finish the execution when every
//! step is done or one failed for good, and carry a finished child's outcome up to the parent
//! step that waits for it — to any depth. What each execution's steps mean is decided in
//! [`crate::decide`]; this module reads the rows and writes the decisions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::event::{EventType, NewEvent};
use lineq_core::execution::{ExecutionStatus, StepStatus};
use lineq_core::validation::QueueName;

use crate::cancel_tree::cancel_below;
use crate::decide::{Ready, Settlement, Verdict, WaitedChild, settle_execution, waiting_step_end};
use crate::enqueue::ReadyStep;
use crate::state::{ExecState, StepRow, Work, lock_executions, read_steps};

/// An execution that settling decided to finish.
struct Finish {
    id: Uuid,
    status: ExecutionStatus,
    output: Option<Value>,
    error: Option<Value>,
}

/// What one round of settling writes together.
#[derive(Default)]
struct Round {
    finishes: Vec<Finish>,
    /// Pending executions that go on: running now.
    running: Vec<Uuid>,
    /// Executions ended, with their ending events: their parents are settled next.
    ended: Vec<(ExecState, Uuid)>,
}

/// Settles every touched execution, cascading to waiting parents. Works in rounds so a batch
/// costs a fixed number of statements, not a few per execution: one query reads the steps of
/// every execution in the round, one update finishes those that are done, one marks the rest
/// running. Only the rare paths (a failure that cancels what is left, a child that completes a
/// waiting parent step) touch rows one by one.
pub(crate) async fn settle(conn: &mut PgConnection, work: &mut Work) -> Result<()> {
    let mut round: Vec<Uuid> = work.touched.drain(..).collect();
    // Current for the first round only: later rounds (parents) follow writes made here.
    let mut prefetched = std::mem::take(&mut work.steps);
    while !round.is_empty() {
        let mut seen = HashSet::new();
        let ids: Vec<Uuid> = round
            .into_iter()
            .filter(|id| seen.insert(*id))
            .filter(|id| work.execs.get(id).is_some_and(|e| !e.is_terminal()))
            .collect();
        if ids.is_empty() {
            break;
        }
        let mut by_exec = round_steps(conn, &ids, &mut prefetched).await?;
        // An execution can be settled twice in one transaction (a step result and a child's
        // outcome in the same batch); steps already made ready stay `pending` in the table
        // until the batch enqueues them, so they must not be made ready again.
        let mut already: HashSet<Uuid> = work.ready.iter().map(|r| r.step_id).collect();
        let mut writes = Round::default();
        for id in ids {
            let Some(exec) = work.execs.get(&id).cloned() else {
                continue;
            };
            let steps = by_exec.remove(&id).unwrap_or_default();
            settle_one(conn, work, exec, &steps, &mut already, &mut writes).await?;
        }
        round = write_round(conn, work, writes).await?;
    }
    Ok(())
}

/// The steps of the round's executions: those read earlier in the transaction (first round
/// only), the rest read in one query.
async fn round_steps(
    conn: &mut PgConnection,
    ids: &[Uuid],
    prefetched: &mut HashMap<Uuid, Vec<StepRow>>,
) -> Result<HashMap<Uuid, Vec<StepRow>>> {
    let mut by_exec: HashMap<Uuid, Vec<StepRow>> = HashMap::with_capacity(ids.len());
    let unread: Vec<Uuid> = ids
        .iter()
        .filter(|id| match prefetched.remove(id) {
            Some(rows) => {
                by_exec.insert(**id, rows);
                false
            }
            None => true,
        })
        .copied()
        .collect();
    prefetched.clear();
    if !unread.is_empty() {
        for r in read_steps(&mut *conn, &unread).await? {
            by_exec.entry(r.execution_id).or_default().push(r);
        }
    }
    Ok(by_exec)
}

/// Decides what `exec`'s steps make of it ([`settle_execution`]) and gathers the writes: the
/// steps it makes ready, its end (with, on a failure, the cancellation of what is left of it
/// and below it) or its start.
async fn settle_one(
    conn: &mut PgConnection,
    work: &mut Work,
    exec: ExecState,
    steps: &[StepRow],
    already: &mut HashSet<Uuid>,
    round: &mut Round,
) -> Result<()> {
    let id = exec.execution_id;
    let parent = work.last_event.get(&id).copied();
    let Settlement { verdict, ready } =
        settle_execution(&exec, steps, already, &work.step_event, parent);
    for r in ready {
        already.insert(r.step.step_id);
        work.ready.push(ready_step(&exec, r)?);
    }
    match verdict {
        Verdict::Fail { error } => {
            let finish = Finish {
                id,
                status: ExecutionStatus::Failed,
                output: None,
                error: Some(error),
            };
            let ending = end_execution(work, round, exec.clone(), parent, finish);
            cancel_leftover_steps(conn, work, &exec, steps, ending).await?;
            // Children still running can no longer matter: stop them.
            let below =
                cancel_below(conn, id, ending, &work.node_name, "parent execution failed").await?;
            work.events.extend(below.events);
        }
        Verdict::Complete { output } => {
            let finish = Finish {
                id,
                status: ExecutionStatus::Completed,
                output: Some(output),
                error: None,
            };
            end_execution(work, round, exec, parent, finish);
        }
        Verdict::Start => {
            round.running.push(id);
            mark(work, id, ExecutionStatus::Running);
        }
        Verdict::Stay => {}
    }
    Ok(())
}

/// Records how `exec` ends (its `execution_completed` or `execution_failed` event, caused by
/// `parent`) for the round to write; returns the ending event's id.
fn end_execution(
    work: &mut Work,
    round: &mut Round,
    exec: ExecState,
    parent: Option<Uuid>,
    finish: Finish,
) -> Uuid {
    let (event_type, payload) = match &finish.error {
        Some(error) => (
            EventType::ExecutionFailed,
            json!({ "status": finish.status.as_str(), "error": error }),
        ),
        None => (
            EventType::ExecutionCompleted,
            json!({ "status": finish.status.as_str() }),
        ),
    };
    let ev = NewEvent::new(event_type, exec.lineage(), parent, &work.node_name).payload(payload);
    let ending = ev.event_id;
    work.events.push(ev);
    work.finished += 1;
    mark(work, exec.execution_id, finish.status);
    round.finishes.push(finish);
    round.ended.push((exec, ending));
    ending
}

/// A step made ready, as it is sent.
fn ready_step(exec: &ExecState, r: Ready<'_>) -> Result<ReadyStep> {
    let s = r.step;
    Ok(ReadyStep {
        lineage: exec.lineage(),
        step_id: s.step_id,
        name: s.name.clone(),
        handler: s.handler.clone(),
        queue: QueueName::new(&s.queue)?,
        attempt: 1,
        input: r.input,
        timeout_ms: s.timeout_ms.and_then(|t| u64::try_from(t).ok()),
        parent_event: r.parent_event,
        delay: Duration::ZERO,
        retry_reason: None,
        context: exec.context(),
        flow: s.flow.clone(),
        priority: s.priority,
    })
}

/// Writes a round's finishes and starts, then carries the finished children's outcomes up.
/// Returns the parents to settle next.
async fn write_round(conn: &mut PgConnection, work: &mut Work, round: Round) -> Result<Vec<Uuid>> {
    finish_all(conn, &round.finishes).await?;
    if !round.running.is_empty() {
        sqlx::query(
            "UPDATE lineq.executions SET status = 'running', version = version + 1,
                 updated_at = clock_timestamp()
             WHERE execution_id = ANY($1) AND status = 'pending'",
        )
        .bind(&round.running)
        .execute(&mut *conn)
        .await?;
    }
    // After the finishes are written, so a parent sees its children's final states.
    let mut next = Vec::new();
    for (exec, ending) in round.ended {
        if let Some(p) = carry_to_parent(conn, work, &exec, ending).await? {
            next.push(p);
        }
    }
    Ok(next)
}

async fn finish_all(conn: &mut PgConnection, finishes: &[Finish]) -> Result<()> {
    if finishes.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = finishes.iter().map(|f| f.id).collect();
    let statuses: Vec<&str> = finishes.iter().map(|f| f.status.as_str()).collect();
    let outputs: Vec<Option<&Value>> = finishes.iter().map(|f| f.output.as_ref()).collect();
    let errors: Vec<Option<&Value>> = finishes.iter().map(|f| f.error.as_ref()).collect();
    sqlx::query(
        r#"
        UPDATE lineq.executions e
        SET status = u.status, output = u.output, error = u.error, version = e.version + 1,
            updated_at = clock_timestamp(), finished_at = clock_timestamp()
        FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[])
             AS u(execution_id, status, output, error)
        WHERE e.execution_id = u.execution_id AND e.status IN ('pending', 'running')
        "#,
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&outputs)
    .bind(&errors)
    .execute(conn)
    .await?;
    Ok(())
}

fn mark(work: &mut Work, id: Uuid, status: ExecutionStatus) {
    if let Some(e) = work.execs.get_mut(&id) {
        e.status = status;
    }
}

/// After a failure: steps that have not finished are cancelled and their queued messages
/// deleted, so nothing more runs for this execution.
async fn cancel_leftover_steps(
    conn: &mut PgConnection,
    work: &mut Work,
    exec: &ExecState,
    steps: &[StepRow],
    cause: Uuid,
) -> Result<()> {
    let left: Vec<&StepRow> = steps.iter().filter(|s| !s.status.is_terminal()).collect();
    if left.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = left.iter().map(|s| s.step_id).collect();
    sqlx::query(
        "UPDATE lineq.steps SET status = 'cancelled', updated_at = clock_timestamp(),
             finished_at = clock_timestamp()
         WHERE step_id = ANY($1) AND status IN ('pending', 'enqueued', 'throttled', 'waiting')",
    )
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    let mut by_queue: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for s in &left {
        if let (Some(m), StepStatus::Enqueued) = (s.msg_id, s.status) {
            by_queue.entry(&s.queue).or_default().push(m);
        }
        work.events.push(
            NewEvent::new(
                EventType::StepCancelled,
                exec.lineage(),
                Some(cause),
                &work.node_name,
            )
            .step(s.step_id, s.attempts.max(1))
            .payload(json!({ "step": s.name, "was": s.status.as_str() })),
        );
    }
    for (q, msgs) in by_queue {
        lineq_core::queue::delete(conn, &QueueName::new(q)?, &msgs).await?;
    }
    Ok(())
}

/// A finished child whose parent step waits for it: when all the step's waited-for children are
/// finished, the step completes with their output or fails with the first failure
/// ([`waiting_step_end`]). Returns the parent execution to settle next.
pub(crate) async fn carry_to_parent(
    conn: &mut PgConnection,
    work: &mut Work,
    child: &ExecState,
    child_ending_event: Uuid,
) -> Result<Option<Uuid>> {
    let Some((parent, step_id)) = waiting_parent(conn, work, child).await? else {
        return Ok(None);
    };
    let children = waited_children(conn, step_id).await?;
    let Some(end) = waiting_step_end(&children) else {
        return Ok(None);
    };
    let updated: Option<(String, i32)> = sqlx::query_as(
        "UPDATE lineq.steps SET status = $2, output = coalesce($3, output), error = $4,
             updated_at = clock_timestamp(), finished_at = clock_timestamp()
         WHERE step_id = $1 AND status = 'waiting'
         RETURNING name, attempts",
    )
    .bind(step_id)
    .bind(end.status.as_str())
    .bind(&end.output)
    .bind(&end.error)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((name, attempt)) = updated else {
        return Ok(None);
    };
    let event_type = if end.status == StepStatus::Failed {
        EventType::StepFailed
    } else {
        EventType::StepCompleted
    };
    let ev = NewEvent::new(
        event_type,
        parent.lineage(),
        Some(child_ending_event),
        &work.node_name,
    )
    .step(step_id, attempt)
    .payload(json!({ "step": name, "children": children.len(), "error": end.error }));
    work.record(ev, Some(step_id));
    work.touched.clear();
    Ok(Some(parent.execution_id))
}

/// The parent of `child`, locked, and its step that waits for `child`; none when no step
/// waits for it or the parent has ended.
async fn waiting_parent(
    conn: &mut PgConnection,
    work: &mut Work,
    child: &ExecState,
) -> Result<Option<(ExecState, Uuid)>> {
    let (true, Some(step_id), Some(parent_id)) = (
        child.parent_waits,
        child.parent_step_id,
        child.parent_execution_id,
    ) else {
        return Ok(None);
    };
    if !work.execs.contains_key(&parent_id) {
        for e in lock_executions(conn, &[parent_id]).await? {
            work.execs.insert(e.execution_id, e);
        }
    }
    Ok(work
        .execs
        .get(&parent_id)
        .filter(|p| !p.is_terminal())
        .map(|p| (p.clone(), step_id)))
}

/// The children that step `step_id` waits for, in creation order.
async fn waited_children(conn: &mut PgConnection, step_id: Uuid) -> Result<Vec<WaitedChild>> {
    let rows: Vec<(Uuid, String, Option<Value>, Option<Value>)> = sqlx::query_as(
        "SELECT execution_id, status, output, error FROM lineq.executions
         WHERE parent_step_id = $1 AND parent_waits ORDER BY created_at, execution_id",
    )
    .bind(step_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut children = Vec::with_capacity(rows.len());
    for (execution_id, status, output, error) in rows {
        children.push(WaitedChild {
            execution_id,
            status: status.parse()?,
            output,
            error,
        });
    }
    Ok(children)
}
