//! Result processing: turns the results workers send into step outcomes — completed, waiting
//! for children, retried after a backoff, or failed — then settles the executions they touch.
//!
//! One transaction per batch: read the results (hiding them from other orchestrators), lock the
//! executions they touch in id order (so two orchestrators never decide an execution's fate from
//! stale snapshots), apply each outcome with a guarded update, create the children steps asked
//! for, enqueue what became ready, finish what is done, write the events, delete the results (once
//! applied, a result's step row and its `step_result` event hold all it said). A crash anywhere
//! rolls all of it back and the results become visible again. A result for a step that is no
//! longer waiting for that attempt (a duplicate) is deleted and changes nothing.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::event::{EventType, NewEvent};
use lineq_core::execution::StepStatus;
use lineq_core::message::{ChildRequest, Outcome, ResultMessage, StepError};
use lineq_core::queue::{self, QueuedMessage};
use lineq_core::telemetry;
use lineq_core::validation::{Namespace, QueueName, check_name};

use crate::decide::{StepDecision, Triage, decide_step, triage};
use crate::enqueue::{ReadyStep, enqueue};
use crate::settle::{carry_to_parent, settle};
use crate::state::{ExecState, StepRow, Work, lock_executions, read_steps};
use crate::workflow::{WorkflowDefinition, store};

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchReport {
    /// Result messages read.
    pub read: usize,
    /// Outcomes applied to steps.
    pub applied: usize,
    /// Results that changed nothing (duplicates, stale attempts, cancelled steps).
    pub ignored: usize,
    /// Results moved to the dead-letter queue.
    pub dead_lettered: usize,
    /// Attempts scheduled again.
    pub retried: usize,
    /// Child executions created.
    pub children: usize,
    /// Executions finished by this batch.
    pub finished: usize,
    /// The flow keys of the steps it touched (they may have room now).
    pub flow_keys: Vec<String>,
}

/// `{"kind": "child_finished", "execution_id", "ending_event_id"}`: `lineq.cancel` (SQL)
/// ended a child execution that a step of a running parent waits for; settling the parent is
/// left to the orchestrator.
struct ChildFinished {
    execution_id: Uuid,
    ending_event_id: Uuid,
}

impl ChildFinished {
    fn parse(m: &QueuedMessage) -> Option<Self> {
        // A look at the text first: results are most of what this queue holds, and parsing
        // each twice would cost more than this.
        if !m.body.as_deref()?.contains("\"child_finished\"") {
            return None;
        }
        let body = m.json().ok()??;
        if body.get("kind").and_then(Value::as_str) != Some("child_finished") {
            return None;
        }
        let id = |key: &str| {
            body.get(key)
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
        };
        Some(Self {
            execution_id: id("execution_id")?,
            ending_event_id: id("ending_event_id")?,
        })
    }
}

struct StepUpdate {
    step_id: Uuid,
    status: StepStatus,
    output: Option<Value>,
    error: Option<Value>,
    worker_id: String,
    attempt: i32,
}

/// A batch's messages, sorted: results, and children cancelled from SQL.
#[derive(Default)]
struct Messages<'m> {
    results: Vec<(&'m QueuedMessage, ResultMessage)>,
    finished_children: Vec<(&'m QueuedMessage, ChildFinished)>,
}

/// What applying a batch's results gathered for writing.
#[derive(Default)]
struct Applied {
    updates: Vec<StepUpdate>,
    /// The children asked for: the parent execution, the step's name, the result.
    children: Vec<(ExecState, String, ResultMessage)>,
    /// The results done with, deleted in the batch's last statement.
    done_ids: Vec<i64>,
}

/// Processes up to `batch_size` results in one transaction.
pub async fn process_batch(
    pool: &PgPool,
    node_name: &str,
    batch_size: i32,
    visibility_timeout_secs: i32,
) -> Result<BatchReport> {
    let results_queue = queue::results_queue();
    let mut tx = pool.begin().await?;
    let msgs = queue::read(
        &mut *tx,
        &results_queue,
        visibility_timeout_secs,
        batch_size,
    )
    .await?;
    let mut report = BatchReport {
        read: msgs.len(),
        ..Default::default()
    };
    if msgs.is_empty() {
        tx.commit().await?;
        return Ok(report);
    }
    let messages = sort_messages(&mut tx, &results_queue, &msgs, &mut report).await?;
    let attempts = reported_attempts(&messages.results);
    let (mut work, steps) = lock_batch(&mut tx, node_name, &messages).await?;
    report.flow_keys = flow_keys(&steps);
    let Messages {
        results,
        finished_children,
    } = messages;
    let applied = apply_results(
        &mut tx,
        &results_queue,
        &mut work,
        &steps,
        results,
        &mut report,
    )
    .await?;
    apply_step_updates(&mut tx, &applied.updates).await?;
    keep_current(&mut work, &steps, &applied.updates);
    report.children = create_children(&mut tx, &work, applied.children).await?;
    settle(&mut tx, &mut work).await?;
    let mut done_ids = applied.done_ids;
    done_ids.extend(finished_children.iter().map(|(m, _)| m.msg_id));
    settle_parents_of(&mut tx, &mut work, &finished_children).await?;
    report.finished = work.finished;

    let ready = std::mem::take(&mut work.ready);
    // What settling read, for the spans of what this batch ends (read only with tracing on).
    let known = if telemetry::enabled() {
        crate::spans::Known::from_work(&work)
    } else {
        crate::spans::Known::default()
    };
    let mut events = work.events;
    // The outcome events first: the `step_enqueued` events of what they made ready are stamped
    // after them.
    queue::delete_with_events(&mut tx, &results_queue, &done_ids, &events).await?;
    events.extend(enqueue(&mut tx, ready, node_name).await?);
    tx.commit().await?;
    // The spans this batch ended, and those of attempts whose workers export none: exported
    // after the commit, in a task of their own (their reads need not hold up the next batch).
    if telemetry::enabled() {
        crate::spans::export_in_background(pool.clone(), attempts, events, known).await;
    }
    Ok(report)
}
/// Sorts a batch's messages: results, children cancelled from SQL, and what is neither
/// (dead-lettered here).
async fn sort_messages<'m>(
    conn: &mut PgConnection,
    results_queue: &QueueName,
    msgs: &'m [QueuedMessage],
    report: &mut BatchReport,
) -> Result<Messages<'m>> {
    let mut sorted = Messages {
        results: Vec::with_capacity(msgs.len()),
        finished_children: Vec::new(),
    };
    for m in msgs {
        if let Some(c) = ChildFinished::parse(m) {
            sorted.finished_children.push((m, c));
            continue;
        }
        match m
            .json()
            .and_then(|body| ResultMessage::parse(body.as_ref()))
        {
            Ok(r) => sorted.results.push((m, r)),
            Err(e) => {
                tracing::warn!(msg_id = m.msg_id, reason = %e, "dead-lettering result message");
                queue::dead_letter(&mut *conn, results_queue, m, &e.to_string(), None).await?;
                report.dead_lettered += 1;
            }
        }
    }
    Ok(sorted)
}

/// For tracing: the attempts reported, whose spans workers that export none need exported.
fn reported_attempts(results: &[(&QueuedMessage, ResultMessage)]) -> Vec<crate::spans::Reported> {
    if !telemetry::enabled() {
        return Vec::new();
    }
    results
        .iter()
        .filter_map(|(_, r)| {
            Some(crate::spans::Reported {
                started_event_id: r.started_event_id?,
                worker_id: r.worker_id.clone(),
            })
        })
        .collect()
}

/// Locks the executions the batch names, in id order, and reads all their steps: settling
/// needs them all, and keeping them current here (see [`keep_current`]) saves it reading them
/// again. Returns the transaction's [`Work`] and the steps by id.
async fn lock_batch(
    conn: &mut PgConnection,
    node_name: &str,
    messages: &Messages<'_>,
) -> Result<(Work, HashMap<Uuid, StepRow>)> {
    let mut work = Work::new(node_name);
    let execution_ids: Vec<Uuid> = messages
        .results
        .iter()
        .map(|(_, r)| r.execution_id)
        .chain(
            messages
                .finished_children
                .iter()
                .map(|(_, c)| c.execution_id),
        )
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for e in lock_executions(&mut *conn, &execution_ids).await? {
        work.execs.insert(e.execution_id, e);
    }
    let mut steps: HashMap<Uuid, StepRow> = HashMap::new();
    for s in read_steps(&mut *conn, &execution_ids).await? {
        steps.insert(s.step_id, s.clone());
        work.steps.entry(s.execution_id).or_default().push(s);
    }
    Ok((work, steps))
}

/// The flow keys of `steps` (they may have room once the batch commits).
fn flow_keys(steps: &HashMap<Uuid, StepRow>) -> Vec<String> {
    steps
        .values()
        .filter_map(|s| s.flow.as_ref()?.get("key")?.as_str().map(str::to_string))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Applies each result as [`triage`] sorts it: an unknown one is dead-lettered, a stale one
/// deleted and ignored, a fresh one decided ([`apply_fresh`]).
async fn apply_results(
    conn: &mut PgConnection,
    results_queue: &QueueName,
    work: &mut Work,
    steps: &HashMap<Uuid, StepRow>,
    results: Vec<(&QueuedMessage, ResultMessage)>,
    report: &mut BatchReport,
) -> Result<Applied> {
    let reported: Vec<&ResultMessage> = results.iter().map(|(_, r)| r).collect();
    let triaged = triage(&reported, steps, &work.execs);
    let mut applied = Applied::default();
    for ((m, r), t) in results.into_iter().zip(triaged) {
        let (Triage::Fresh | Triage::Stale, Some(step), Some(exec)) =
            (t, steps.get(&r.step_id), work.execs.get(&r.execution_id))
        else {
            let reason = format!(
                "result for unknown step {} of execution {}",
                r.step_id, r.execution_id
            );
            queue::dead_letter(&mut *conn, results_queue, m, &reason, None).await?;
            report.dead_lettered += 1;
            continue;
        };
        let exec = exec.clone();
        applied.done_ids.push(m.msg_id);
        if t == Triage::Stale {
            tracing::debug!(step_id = %r.step_id, attempt = r.attempt, status = %step.status,
                "ignoring duplicate or stale result");
            report.ignored += 1;
            continue;
        }
        report.applied += 1;
        apply_fresh(&mut *conn, work, exec, step, r, &mut applied, report).await?;
    }
    Ok(applied)
}

/// A fresh result: checks the children it asks for (a bad request fails the step), decides
/// what it makes of its step ([`decide_step`]) and records that.
async fn apply_fresh(
    conn: &mut PgConnection,
    work: &mut Work,
    exec: ExecState,
    step: &StepRow,
    mut r: ResultMessage,
    applied: &mut Applied,
    report: &mut BatchReport,
) -> Result<()> {
    fail_bad_spawn(conn, &exec, &mut r).await?;
    let decision = decide_step(step, &r);
    let error = r.error.as_ref().map(serde_json::to_value).transpose()?;
    let update = StepUpdate {
        step_id: r.step_id,
        status: decision.status(),
        output: None,
        error,
        worker_id: r.worker_id.clone(),
        attempt: r.attempt,
    };
    let event = |event_type, payload| {
        NewEvent::new(
            event_type,
            exec.lineage(),
            Some(r.meta.parent_event_id),
            &work.node_name,
        )
        .step(r.step_id, r.attempt)
        .worker(&r.worker_id)
        .payload(payload)
    };
    match decision {
        StepDecision::Complete { waits } => {
            let ev = event(
                if waits {
                    EventType::StepWaiting
                } else {
                    EventType::StepCompleted
                },
                json!({ "step": r.step, "worker_id": r.worker_id, "children": r.children.len() }),
            );
            work.record(ev, (!waits).then_some(r.step_id));
            applied.updates.push(StepUpdate {
                output: Some(r.output.clone().unwrap_or(Value::Null)),
                error: None,
                ..update
            });
            if !r.children.is_empty() {
                applied.children.push((exec, step.name.clone(), r));
            }
        }
        StepDecision::Retry {
            attempt,
            delay,
            reason,
        } => {
            let ev = event(
                EventType::StepAttemptFailed,
                json!({ "step": r.step, "error": update.error, "next_attempt": attempt,
                        "delay_ms": u64::try_from(delay.as_millis()).unwrap_or(u64::MAX) }),
            );
            let again = retry(&exec, step, attempt, delay, reason, ev.event_id)?;
            work.ready.push(again);
            // The execution is not settled by a retry: it goes on as it was.
            work.events.push(ev);
            report.retried += 1;
            applied.updates.push(update);
        }
        StepDecision::Fail => {
            let ev = event(
                EventType::StepFailed,
                json!({ "step": r.step, "worker_id": r.worker_id, "error": update.error }),
            );
            work.record(ev, Some(r.step_id));
            applied.updates.push(update);
        }
    }
    Ok(())
}

/// A completed result whose children [`check_children`] refuses becomes a failure that no
/// retry can fix.
async fn fail_bad_spawn(
    conn: &mut PgConnection,
    exec: &ExecState,
    r: &mut ResultMessage,
) -> Result<()> {
    if r.outcome == Outcome::Completed && !r.children.is_empty() {
        if let Err(why) = check_children(conn, exec, &r.children).await? {
            r.outcome = Outcome::Failed;
            r.error = Some(StepError::new("spawn_failed", why).permanent());
            r.children.clear();
        }
    }
    Ok(())
}

/// Attempt `attempt` of `step`, sent after `delay`; `failed` is the event of the attempt
/// before.
fn retry(
    exec: &ExecState,
    step: &StepRow,
    attempt: i32,
    delay: std::time::Duration,
    reason: String,
    failed: Uuid,
) -> Result<ReadyStep> {
    Ok(ReadyStep {
        lineage: exec.lineage(),
        step_id: step.step_id,
        name: step.name.clone(),
        handler: step.handler.clone(),
        queue: QueueName::new(&step.queue)?,
        attempt,
        // A retry gets exactly the input the failed attempt got.
        input: step.input.clone().unwrap_or(Value::Null),
        timeout_ms: step.timeout_ms.and_then(|t| u64::try_from(t).ok()),
        parent_event: failed,
        delay,
        retry_reason: Some(reason),
        context: exec.context(),
        // A retry queues again behind its key's waiting steps.
        flow: step.flow.clone(),
        priority: step.priority,
    })
}

/// The step rows settling will use, changed as `updates` changed the table (the guarded update
/// matched exactly these: every one was checked fresh under its execution's lock).
fn keep_current(work: &mut Work, steps: &HashMap<Uuid, StepRow>, updates: &[StepUpdate]) {
    for u in updates {
        if let Some(row) = steps
            .get(&u.step_id)
            .and_then(|s| work.steps.get_mut(&s.execution_id))
            .and_then(|rows| rows.iter_mut().find(|r| r.step_id == u.step_id))
        {
            row.status = u.status;
            row.output = u.output.clone();
            row.error = u.error.clone();
        }
    }
}

/// Children cancelled from SQL whose parents' steps wait for them: carries each outcome up and
/// settles the parents, as `lineq cancel` does in its own transaction.
async fn settle_parents_of(
    conn: &mut PgConnection,
    work: &mut Work,
    children: &[(&QueuedMessage, ChildFinished)],
) -> Result<()> {
    let mut parents = Vec::new();
    for (_, c) in children {
        let Some(child) = work.execs.get(&c.execution_id).cloned() else {
            continue;
        };
        if !child.is_terminal() {
            continue;
        }
        if let Some(p) = carry_to_parent(&mut *conn, work, &child, c.ending_event_id).await? {
            parents.push(p);
        }
    }
    if !parents.is_empty() {
        work.touched.extend(parents);
        settle(conn, work).await?;
    }
    Ok(())
}

async fn apply_step_updates(conn: &mut PgConnection, updates: &[StepUpdate]) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|a| a.step_id).collect();
    let statuses: Vec<&str> = updates.iter().map(|a| a.status.as_str()).collect();
    let outputs: Vec<Option<&Value>> = updates.iter().map(|a| a.output.as_ref()).collect();
    let errors: Vec<Option<&Value>> = updates.iter().map(|a| a.error.as_ref()).collect();
    let workers: Vec<&str> = updates.iter().map(|a| a.worker_id.as_str()).collect();
    let attempts: Vec<i32> = updates.iter().map(|a| a.attempt).collect();
    sqlx::query(
        r#"
        UPDATE lineq.steps s
        SET status = u.status, output = u.output, error = u.error, worker_id = u.worker_id,
            updated_at = clock_timestamp(),
            finished_at = CASE WHEN u.status IN ('completed', 'failed') THEN clock_timestamp() END
        FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[], $5::text[], $6::int[])
             AS u(step_id, status, output, error, worker_id, attempt)
        WHERE s.step_id = u.step_id AND s.status = 'enqueued' AND s.attempts = u.attempt
        "#,
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&outputs)
    .bind(&errors)
    .bind(&workers)
    .bind(&attempts)
    .execute(conn)
    .await?;
    Ok(())
}

/// Checks what a handler asked to spawn; `Ok(Err(reason))` turns the step into a failure. What
/// passes here, `lineq._create_executions` accepts (so a bad request fails its step instead of
/// the whole result batch, again and again).
async fn check_children(
    conn: &mut PgConnection,
    parent: &ExecState,
    children: &[ChildRequest],
) -> Result<std::result::Result<(), String>> {
    for c in children {
        let (name, version) = match c.target.split_once('@') {
            None => (c.target.as_str(), None),
            Some((n, v)) => match v.parse::<i32>().ok().filter(|v| *v >= 1) {
                Some(v) => (n, Some(v)),
                None => {
                    return Ok(Err(format!(
                        "child {}: the version after @ must be a whole number from 1",
                        c.target
                    )));
                }
            },
        };
        if let Err(e) = check_name("child target", name) {
            return Ok(Err(e.to_string()));
        }
        let ns = c.namespace.as_deref().unwrap_or(&parent.namespace);
        let ns = match Namespace::new(ns) {
            Ok(ns) => ns,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if !queue::queue_exists(conn, &queue::step_queue(&ns)).await? {
            return Ok(Err(format!("child {}: unknown namespace {ns}", c.target)));
        }
        match store::get(&mut *conn, name, version).await? {
            Some(stored) => {
                if let Some(missing) = missing_namespace(conn, &stored.definition).await? {
                    return Ok(Err(format!(
                        "child {}: unknown namespace {missing}",
                        c.target
                    )));
                }
            }
            None if version.is_some() => {
                return Ok(Err(format!("child {}: workflow not found", c.target)));
            }
            None => {}
        }
    }
    Ok(Ok(()))
}

/// The first namespace of `workflow` that has no step queue, if any.
async fn missing_namespace(
    conn: &mut PgConnection,
    workflow: &WorkflowDefinition,
) -> Result<Option<String>> {
    let mut seen = std::collections::BTreeSet::new();
    for s in &workflow.steps {
        seen.insert(workflow.step_namespace(s).to_string());
    }
    for ns in seen {
        let q = queue::step_queue(&Namespace::new(&ns)?);
        if !queue::queue_exists(conn, &q).await? {
            return Ok(Some(ns));
        }
    }
    Ok(None)
}

/// A child as `lineq._create_executions` reads it (its internal form: the id the worker chose
/// and the link to the step that asked for it).
#[derive(serde::Serialize)]
struct WireChild<'a> {
    target: &'a str,
    input: &'a Value,
    namespace: &'a str,
    execution_id: Uuid,
    parent_execution_id: Uuid,
    parent_event_id: Uuid,
    parent_step: &'a str,
    parent_step_id: Uuid,
    parent_waits: bool,
}

/// Creates the children of the batch with one call of the SQL code submission uses. Returns
/// how many were created (a replayed child whose id exists is not created twice).
async fn create_children(
    conn: &mut PgConnection,
    work: &Work,
    requests: Vec<(ExecState, String, ResultMessage)>,
) -> Result<usize> {
    let mut wire = Vec::new();
    for (parent, step_name, r) in &requests {
        for c in &r.children {
            wire.push(WireChild {
                target: &c.target,
                input: &c.input,
                namespace: c.namespace.as_deref().unwrap_or(&parent.namespace),
                execution_id: c.execution_id,
                parent_execution_id: parent.execution_id,
                // The worker's report of the step that asked for it.
                parent_event_id: r.meta.parent_event_id,
                parent_step: step_name,
                parent_step_id: r.step_id,
                parent_waits: c.wait,
            });
        }
    }
    if wire.is_empty() {
        return Ok(0);
    }
    let created: Vec<Uuid> = sqlx::query_scalar(
        "SELECT execution_id FROM lineq._create_executions($1, $2, true) WHERE created",
    )
    .bind(sqlx::types::Json(&wire))
    .bind(&work.node_name)
    .fetch_all(&mut *conn)
    .await?;
    tracing::debug!(children = created.len(), "children created");
    Ok(created.len())
}
