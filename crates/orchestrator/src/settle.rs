//! Settling executions after their steps changed, inside the caller's transaction: enqueue the
//! steps whose dependencies are now done (fan-out and fan-in), finish the execution when every
//! step is done or one failed for good, and carry a finished child's outcome up to the parent
//! step that waits for it — to any depth.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::{Map, Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::event::{EventType, Lineage, NewEvent};
use lineq_core::execution::{ExecutionStatus, StepStatus};
use lineq_core::validation::QueueName;

use crate::cancel::cancel_below;
use crate::enqueue::{ReadyStep, step_input};

/// An execution locked for the current transaction.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ExecState {
    pub execution_id: Uuid,
    #[sqlx(try_from = "String")]
    pub status: ExecutionStatus,
    pub kind: String,
    pub namespace: String,
    pub input: Value,
    pub correlation_id: Uuid,
    pub parent_execution_id: Option<Uuid>,
    pub root_execution_id: Uuid,
    pub trace_correlation_id: Uuid,
    pub parent_step_id: Option<Uuid>,
    pub parent_waits: bool,
    pub workflow_name: String,
    pub tags: Value,
    pub metadata: Value,
    pub parent_step: Option<String>,
}

impl ExecState {
    pub fn lineage(&self) -> Lineage {
        Lineage {
            execution_id: self.execution_id,
            parent_execution_id: self.parent_execution_id,
            root_execution_id: self.root_execution_id,
            correlation_id: self.correlation_id,
            trace_correlation_id: self.trace_correlation_id,
        }
    }

    /// What its handlers get to know beyond the lineage.
    pub fn context(&self) -> lineq_core::message::ExecutionContext {
        lineq_core::message::ExecutionContext {
            workflow: self.workflow_name.clone(),
            tags: serde_json::from_value(self.tags.clone()).unwrap_or_default(),
            metadata: self.metadata.clone(),
            parent_step: self.parent_step.clone(),
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

/// Locks executions in id order (the same order everywhere, so orchestrators wait for each
/// other instead of deadlocking) and reads what settling needs.
pub(crate) async fn lock_executions(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<ExecState>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as::<_, ExecState>(
        r#"
        SELECT e.execution_id, e.status, e.kind, e.namespace, e.input, e.correlation_id,
               e.parent_execution_id, e.root_execution_id,
               -- The trace id is the root's correlation id. A subquery, not a join: most
               -- executions are roots, and planning a self-join of this many-indexed table
               -- cost 0.26 ms per batch against 0.12 (custom plans, see database.rs). Prune
               -- removes whole trees, so the root is there; were it ever not, the execution
               -- still settles (the join dropped it), traced under its own correlation id.
               CASE WHEN e.root_execution_id = e.execution_id THEN e.correlation_id
                    ELSE coalesce((SELECT r.correlation_id FROM lineq.executions r
                                   WHERE r.execution_id = e.root_execution_id),
                                  e.correlation_id)
               END AS trace_correlation_id,
               e.parent_step_id, e.parent_waits, e.workflow_name, e.tags, e.metadata,
               e.parent_step
        FROM lineq.executions e
        WHERE e.execution_id = ANY($1)
        ORDER BY e.execution_id
        FOR UPDATE OF e
        "#,
    )
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// A step as settling sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StepRow {
    pub step_id: Uuid,
    pub execution_id: Uuid,
    pub name: String,
    pub handler: String,
    pub queue: String,
    #[sqlx(try_from = "String")]
    pub status: StepStatus,
    pub depends_on: Vec<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub timeout_ms: Option<i64>,
    pub retry: Value,
    pub on_failure: String,
    pub params: Option<Value>,
    pub input: Option<Value>,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub msg_id: Option<i64>,
    /// Its flow key and limits (lineq.steps.flow), when it has any.
    pub flow: Option<Value>,
    pub priority: i32,
}

/// The steps of `executions`, each execution's in position order.
///
/// One index probe per execution, whatever the statistics say. `execution_id = ANY($1)` is
/// planned from the column's statistics, and until autovacuum first analyses `steps` (up to a
/// minute on a new database) the planner assumes each id matches 0.5 % of the table and
/// scans all of it: 22 ms a batch at 40,000 steps, against 0.8 ms here. `OFFSET 0` keeps the
/// subquery from being flattened into a join, which would be planned from the same guess.
pub(crate) async fn read_steps(
    conn: &mut PgConnection,
    executions: &[Uuid],
) -> Result<Vec<StepRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT s.* FROM (SELECT DISTINCT unnest($1::uuid[])) AS x(id)
         CROSS JOIN LATERAL (SELECT {STEP_COLUMNS}, position FROM lineq.steps
                             WHERE execution_id = x.id OFFSET 0) AS s
         ORDER BY s.execution_id, s.position"
    ))
    .bind(executions)
    .fetch_all(conn)
    .await?)
}

pub(crate) const STEP_COLUMNS: &str = "step_id, execution_id, name, handler, queue, status, \
    depends_on, attempts, max_attempts, timeout_ms, retry, on_failure, params, input, output, error, msg_id, \
    flow, priority";

/// What one transaction writes, gathered as it goes.
#[derive(Debug, Default)]
pub(crate) struct Work {
    pub node_name: String,
    pub events: Vec<NewEvent>,
    pub ready: Vec<ReadyStep>,
    pub execs: HashMap<Uuid, ExecState>,
    /// The latest event per execution in this transaction: the parent of its ending event.
    pub last_event: HashMap<Uuid, Uuid>,
    /// The outcome event per step that changed in this transaction: the parent of the
    /// `step_enqueued` of the steps it makes ready.
    pub step_event: HashMap<Uuid, Uuid>,
    /// Executions to settle, in order.
    pub touched: Vec<Uuid>,
    /// Executions finished in this transaction.
    pub finished: usize,
    /// Steps of executions this transaction already read (and kept current as it changed
    /// them), by execution: settle's first round uses them instead of reading them again.
    pub steps: HashMap<Uuid, Vec<StepRow>>,
}

impl Work {
    pub fn new(node_name: &str) -> Self {
        Self {
            node_name: node_name.to_string(),
            ..Default::default()
        }
    }

    /// Records an event that changed an execution (and maybe a step).
    pub fn record(&mut self, event: NewEvent, step_id: Option<Uuid>) {
        let exec = event.lineage.execution_id;
        self.last_event.insert(exec, event.event_id);
        if let Some(s) = step_id {
            self.step_event.insert(s, event.event_id);
        }
        if !self.touched.contains(&exec) {
            self.touched.push(exec);
        }
        self.events.push(event);
    }
}

/// An execution that settling decided to finish.
struct Finish {
    id: Uuid,
    status: ExecutionStatus,
    output: Option<Value>,
    error: Option<Value>,
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

        // An execution can be settled twice in one transaction (a step result and a child's
        // outcome in the same batch); steps already made ready stay `pending` in the table
        // until the batch enqueues them, so they must not be made ready again.
        let mut already: HashSet<Uuid> = work.ready.iter().map(|r| r.step_id).collect();
        let mut finishes: Vec<Finish> = Vec::new();
        let mut running: Vec<Uuid> = Vec::new();
        let mut ended: Vec<(ExecState, Uuid)> = Vec::new();
        for id in ids {
            let Some(exec) = work.execs.get(&id).cloned() else {
                continue;
            };
            let steps = by_exec.remove(&id).unwrap_or_default();
            let parent = work.last_event.get(&id).copied();

            if let Some(failed) = steps
                .iter()
                .find(|s| s.status == StepStatus::Failed && s.on_failure == "fail")
            {
                let error = json!({ "step": failed.name, "error": failed.error });
                let ev = NewEvent::new(
                    EventType::ExecutionFailed,
                    exec.lineage(),
                    parent,
                    &work.node_name,
                )
                .payload(json!({ "status": "failed", "error": error }));
                let ending = ev.event_id;
                work.events.push(ev);
                work.finished += 1;
                cancel_leftover_steps(conn, work, &exec, &steps, ending).await?;
                // Children still running can no longer matter: stop them.
                let below =
                    cancel_below(conn, id, ending, &work.node_name, "parent execution failed")
                        .await?;
                work.events.extend(below.events);
                mark(work, id, ExecutionStatus::Failed);
                finishes.push(Finish {
                    id,
                    status: ExecutionStatus::Failed,
                    output: None,
                    error: Some(error),
                });
                ended.push((exec, ending));
                continue;
            }

            let done: HashMap<&str, &StepRow> = steps
                .iter()
                .filter(|s| {
                    s.status == StepStatus::Completed
                        || (s.status == StepStatus::Failed && s.on_failure == "continue")
                })
                .map(|s| (s.name.as_str(), s))
                .collect();
            let by_name: HashMap<&str, &StepRow> =
                steps.iter().map(|s| (s.name.as_str(), s)).collect();
            let mut newly_enqueued = HashSet::new();
            for s in steps
                .iter()
                .filter(|s| s.status == StepStatus::Pending && !already.contains(&s.step_id))
            {
                if !s.depends_on.iter().all(|d| done.contains_key(d.as_str())) {
                    continue;
                }
                // The dependency that finished last (UUIDv7 ids grow with time) made it ready.
                let ready_by = s
                    .depends_on
                    .iter()
                    .filter_map(|d| by_name.get(d.as_str()))
                    .filter_map(|d| work.step_event.get(&d.step_id))
                    .max()
                    .copied()
                    .or(parent);
                let Some(ready_by) = ready_by else {
                    continue;
                };
                let deps: BTreeMap<String, Value> = s
                    .depends_on
                    .iter()
                    .filter_map(|d| done.get(d.as_str()))
                    .map(|d| (d.name.clone(), d.output.clone().unwrap_or(Value::Null)))
                    .collect();
                work.ready.push(ReadyStep {
                    lineage: exec.lineage(),
                    step_id: s.step_id,
                    name: s.name.clone(),
                    handler: s.handler.clone(),
                    queue: QueueName::new(&s.queue)?,
                    attempt: 1,
                    input: step_input(&exec.kind, &exec.input, s.params.as_ref(), &deps),
                    timeout_ms: s.timeout_ms.and_then(|t| u64::try_from(t).ok()),
                    parent_event: ready_by,
                    delay: Duration::ZERO,
                    retry_reason: None,
                    context: exec.context(),
                    flow: s.flow.clone(),
                    priority: s.priority,
                });
                newly_enqueued.insert(s.step_id);
            }

            let all_done = !steps.is_empty()
                && steps.iter().all(|s| {
                    !newly_enqueued.contains(&s.step_id)
                        && !already.contains(&s.step_id)
                        && s.status.is_terminal()
                });
            already.extend(newly_enqueued.iter().copied());
            if all_done {
                let output = if exec.kind == "task" && steps.len() == 1 {
                    steps[0].output.clone().unwrap_or(Value::Null)
                } else {
                    Value::Object(
                        steps
                            .iter()
                            .map(|s| (s.name.clone(), s.output.clone().unwrap_or(Value::Null)))
                            .collect::<Map<String, Value>>(),
                    )
                };
                let ev = NewEvent::new(
                    EventType::ExecutionCompleted,
                    exec.lineage(),
                    parent,
                    &work.node_name,
                )
                .payload(json!({ "status": "completed" }));
                let ending = ev.event_id;
                work.events.push(ev);
                work.finished += 1;
                mark(work, id, ExecutionStatus::Completed);
                finishes.push(Finish {
                    id,
                    status: ExecutionStatus::Completed,
                    output: Some(output),
                    error: None,
                });
                ended.push((exec, ending));
            } else if exec.status == ExecutionStatus::Pending {
                running.push(id);
                mark(work, id, ExecutionStatus::Running);
            }
        }

        finish_all(conn, &finishes).await?;
        if !running.is_empty() {
            sqlx::query(
                "UPDATE lineq.executions SET status = 'running', version = version + 1,
                     updated_at = clock_timestamp()
                 WHERE execution_id = ANY($1) AND status = 'pending'",
            )
            .bind(&running)
            .execute(&mut *conn)
            .await?;
        }
        // After the finishes are written, so a parent sees its children's final states.
        let mut next = Vec::new();
        for (exec, ending) in ended {
            if let Some(p) = carry_to_parent(conn, work, &exec, ending).await? {
                next.push(p);
            }
        }
        round = next;
    }
    Ok(())
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
/// finished, the step completes with their output (one child: its output; several: an array)
/// or fails with the first failure. Returns the parent execution to settle next.
pub(crate) async fn carry_to_parent(
    conn: &mut PgConnection,
    work: &mut Work,
    child: &ExecState,
    child_ending_event: Uuid,
) -> Result<Option<Uuid>> {
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
    let Some(parent) = work.execs.get(&parent_id).cloned() else {
        return Ok(None);
    };
    if parent.is_terminal() {
        return Ok(None);
    }
    let rows: Vec<(Uuid, String, Option<Value>, Option<Value>)> = sqlx::query_as(
        "SELECT execution_id, status, output, error FROM lineq.executions
         WHERE parent_step_id = $1 AND parent_waits ORDER BY created_at, execution_id",
    )
    .bind(step_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut siblings = Vec::with_capacity(rows.len());
    for (id, status, output, error) in rows {
        siblings.push((id, status.parse::<ExecutionStatus>()?, output, error));
    }
    if siblings.iter().any(|(_, s, _, _)| !s.is_terminal()) {
        return Ok(None);
    }
    let failed = siblings
        .iter()
        .find(|(_, s, _, _)| *s != ExecutionStatus::Completed);
    let (status, output, error, event_type) = match failed {
        Some((id, s, _, err)) => (
            StepStatus::Failed,
            None,
            Some(json!({
                "kind": "child_failed",
                "message": format!("child execution {id} {s}"),
                "retryable": false,
                "child_execution_id": id,
                "child_error": err,
            })),
            EventType::StepFailed,
        ),
        None => {
            let outputs: Vec<Value> = siblings
                .iter()
                .map(|(_, _, o, _)| o.clone().unwrap_or(Value::Null))
                .collect();
            let output = if outputs.len() == 1 {
                outputs.into_iter().next().unwrap_or(Value::Null)
            } else {
                Value::Array(outputs)
            };
            (
                StepStatus::Completed,
                Some(output),
                None,
                EventType::StepCompleted,
            )
        }
    };
    let updated: Option<(String, i32)> = sqlx::query_as(
        "UPDATE lineq.steps SET status = $2, output = coalesce($3, output), error = $4,
             updated_at = clock_timestamp(), finished_at = clock_timestamp()
         WHERE step_id = $1 AND status = 'waiting'
         RETURNING name, attempts",
    )
    .bind(step_id)
    .bind(status.as_str())
    .bind(&output)
    .bind(&error)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((name, attempt)) = updated else {
        return Ok(None);
    };
    let ev = NewEvent::new(
        event_type,
        parent.lineage(),
        Some(child_ending_event),
        &work.node_name,
    )
    .step(step_id, attempt)
    .payload(json!({ "step": name, "children": siblings.len(), "error": error }));
    work.record(ev, Some(step_id));
    work.touched.clear();
    Ok(Some(parent_id))
}
