//! The spans of steps and executions, exported by the orchestrator that commits their end.
//!
//! A step's span runs from its first `step_enqueued` to its outcome (`step_completed`,
//! `step_failed` or `step_cancelled`), and an execution's from its `execution_started` to its
//! end, so each is exported once, after the transaction that ended it commits, by the process
//! that committed it. Their events were written by several processes over the step's or the
//! execution's life (the submitter, workers, orchestrators), so they are read back here: one
//! read of the ended steps' events, one of the ended executions' own events, and the events that
//! name the parents and the fan-in links. Nothing is read while tracing is off.
//!
//! An attempt whose worker stopped before reporting (killed, or cut off from the database) has
//! an `action_started` and nothing under it; its span, which no worker will export, is exported
//! here with the step's: from the claim to the delivery that replaced it, marked as abandoned.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::event::{EventType, NewEvent};
use lineq_core::execution::{ExecutionStatus, StepStatus};
use lineq_core::spans::{STORED_EVENT_COLUMNS, StoredEvent, execution_started, first_enqueued};
use lineq_core::telemetry::{self, KeyValue, LineqSpan, SpanShape};

/// What the transaction that ended steps and executions already read, so it need not be read
/// again: each step's dependencies (name and step id), each execution's row.
#[derive(Debug, Default)]
pub(crate) struct Known {
    pub dependencies: HashMap<Uuid, Vec<(String, Uuid)>>,
    pub executions: HashMap<Uuid, ExecutionRow>,
    /// The `action_started` events whose outcomes the batch reported.
    pub reported: Vec<Uuid>,
}

impl Known {
    /// What `work` holds about the steps and executions it changed.
    pub(crate) fn from_work(work: &crate::state::Work) -> Self {
        let mut k = Known::default();
        for steps in work.steps.values() {
            for s in steps {
                let deps = s
                    .depends_on
                    .iter()
                    .filter_map(|name| {
                        let d = steps.iter().find(|d| &d.name == name)?;
                        Some((name.clone(), d.step_id))
                    })
                    .collect();
                k.dependencies.insert(s.step_id, deps);
            }
        }
        for (id, e) in &work.execs {
            k.executions.insert(
                *id,
                ExecutionRow {
                    execution_id: *id,
                    status: e.status,
                    parent_step_id: e.parent_step_id,
                    tags: e.tags.clone(),
                },
            );
        }
        k
    }
}

/// An attempt a result batch reported: its `action_started` and the worker that ran it.
#[derive(Debug, Clone)]
pub(crate) struct Reported {
    pub started_event_id: Uuid,
    pub worker_id: String,
}

/// Whether each worker seen so far exports its own attempts' spans (`lineq.workers.exports_spans`,
/// fixed at registration; a worker id names one process run), so the events of attempts that
/// workers exported are not read back to learn that there is nothing to export.
static EXPORTS_OWN: std::sync::LazyLock<std::sync::Mutex<HashMap<String, bool>>> =
    std::sync::LazyLock::new(Default::default);

/// A fleet's distinct worker ids over an orchestrator's life are few; past this many the
/// cache starts again rather than grow.
const EXPORTS_OWN_LIMIT: usize = 10_000;

/// The attempts of `reported` that workers which export no spans of their own ran: those the
/// orchestrator exports on their behalf ([`crate::worker_spans`]). Looks up only workers not
/// seen before.
async fn attempts_to_export(pool: &PgPool, reported: &[Reported]) -> Result<Vec<Uuid>> {
    let unknown: Vec<String> = {
        let cache = EXPORTS_OWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reported
            .iter()
            .filter(|r| !cache.contains_key(&r.worker_id))
            .map(|r| r.worker_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect()
    };
    if !unknown.is_empty() {
        let rows: Vec<(String, bool)> = sqlx::query_as(
            "SELECT worker_id, exports_spans FROM lineq.workers WHERE worker_id = ANY($1)",
        )
        .bind(&unknown)
        .fetch_all(pool)
        .await?;
        let mut cache = EXPORTS_OWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() + rows.len() > EXPORTS_OWN_LIMIT {
            cache.clear();
        }
        cache.extend(rows);
    }
    let cache = EXPORTS_OWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A worker missing from lineq.workers (pruned since) is asked about again next time, and
    // its attempts are looked at now: the read finds what there is.
    Ok(reported
        .iter()
        .filter(|r| cache.get(&r.worker_id) != Some(&true))
        .map(|r| r.started_event_id)
        .collect())
}

/// Exports in flight, and how many may be: a result batch hands its spans to a task of their own
/// so the next batch does not wait for their reads, and waits only when this many are behind.
static EXPORTS: std::sync::LazyLock<(TaskTracker, Arc<Semaphore>)> =
    std::sync::LazyLock::new(|| (TaskTracker::new(), Arc::new(Semaphore::new(32))));

/// How many of those read at once: the reads share the orchestrator's pool with its own work,
/// and exports that took every connection would hold up the result loop they follow.
static READING: Semaphore = Semaphore::const_new(2);

/// [`export_ended`] of a result batch, and the spans of the attempts it reported that workers
/// which export none ran ([`crate::worker_spans`]), in a task of their own.
pub(crate) async fn export_in_background(
    pool: PgPool,
    attempts: Vec<Reported>,
    committed: Vec<NewEvent>,
    mut known: Known,
) {
    let (tracker, limit) = &*EXPORTS;
    let Ok(permit) = limit.clone().acquire_owned().await else {
        return;
    };
    tracker.spawn(async move {
        let _permit = permit;
        let Ok(_reading) = READING.acquire().await else {
            return;
        };
        // Best-effort: a failed read costs a warning, never the batch (already committed).
        let on_behalf = match attempts_to_export(&pool, &attempts).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell which workers export their own spans");
                attempts.iter().map(|r| r.started_event_id).collect()
            }
        };
        if let Err(e) = crate::worker_spans::export(&pool, &on_behalf).await {
            tracing::warn!(error = %e, "cannot export the spans of workers that do not export their own");
        }
        known.reported = attempts.iter().map(|r| r.started_event_id).collect();
        export_ended(&pool, committed, &known).await;
    });
}

/// Waits for the exports in flight: an orchestrator that stops hands every span it owes to the
/// exporter first.
pub(crate) async fn wait_for_exports() {
    let (tracker, _) = &*EXPORTS;
    tracker.close();
    tracker.wait().await;
    tracker.reopen();
}

/// Exports the spans of the steps and executions that `committed` (the events of a committed
/// transaction) ended. Tracing is best-effort: a failed read costs a warning, never the work.
pub(crate) async fn export_ended(pool: &PgPool, committed: Vec<NewEvent>, known: &Known) {
    if !telemetry::enabled() {
        return;
    }
    match spans_of_ended(pool, committed, known).await {
        Ok(spans) => telemetry::export_spans(&spans),
        Err(e) => {
            tracing::warn!(error = %e, "cannot export the spans of ended steps and executions");
        }
    }
}

fn ends_step(t: EventType) -> bool {
    matches!(
        t,
        EventType::StepCompleted | EventType::StepFailed | EventType::StepCancelled
    )
}

fn ends_execution(t: EventType) -> bool {
    matches!(
        t,
        EventType::ExecutionCompleted | EventType::ExecutionFailed | EventType::ExecutionCancelled
    )
}

/// The events an attempt's span holds; every other event of a step is the step span's.
fn of_attempt(t: EventType) -> bool {
    matches!(
        t,
        EventType::ActionStarted
            | EventType::ActionCompleted
            | EventType::ActionFailed
            | EventType::StepResult
    )
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ExecutionRow {
    execution_id: Uuid,
    #[sqlx(try_from = "String")]
    status: ExecutionStatus,
    parent_step_id: Option<Uuid>,
    tags: Value,
}

/// An ended step's or execution's event, parsed, with when it was written; for an
/// `action_started`, whether its outcome was reported.
#[derive(Clone)]
struct Ended {
    event: NewEvent,
    at: SystemTime,
    reported: bool,
}

impl Ended {
    /// A row of [`STORED_EVENT_COLUMNS`] and `reported`, decoded only as far as needed: an
    /// event the batch committed itself is in memory already, and only its time is read.
    fn parse(row: &PgRow, committed: &mut HashMap<Uuid, NewEvent>) -> Result<Option<Ended>> {
        let event_id: Uuid = row.try_get(0)?;
        let created_at: chrono::DateTime<chrono::Utc> = row.try_get(14)?;
        let reported: bool = row.try_get(15)?;
        // Each row is read once (the steps' events and the executions' own are apart), so an
        // event the batch committed is moved out of the map, not copied.
        let event = match committed.remove(&event_id) {
            Some(e) => Some(e),
            // A reported claim is none of the step span's events (the worker exported it with
            // its attempt): only its place in the step's story is read.
            None if reported => Some(claim(row, event_id)?),
            None => StoredEvent {
                event_id,
                parent_event_id: row.try_get(1)?,
                execution_id: row.try_get(2)?,
                step_id: row.try_get(3)?,
                parent_execution_id: row.try_get(4)?,
                root_execution_id: row.try_get(5)?,
                correlation_id: row.try_get(6)?,
                event_type: row.try_get(7)?,
                node_name: row.try_get(8)?,
                worker_id: row.try_get(9)?,
                attempt: row.try_get(10)?,
                trace_id: row.try_get(11)?,
                span_id: row.try_get(12)?,
                payload: row.try_get(13)?,
                created_at,
            }
            .into_event(),
        };
        Ok(event.map(|event| Ended {
            event,
            at: SystemTime::from(created_at),
            reported,
        }))
    }
}

/// A reported `action_started` as far as a step's span needs it: its id, parent, step,
/// execution and attempt (which delivery replaced which, and how many attempts there were).
fn claim(row: &PgRow, event_id: Uuid) -> Result<NewEvent> {
    let execution_id: Uuid = row.try_get(2)?;
    Ok(NewEvent {
        event_id,
        parent_event_id: row.try_get(1)?,
        event_type: EventType::ActionStarted,
        lineage: lineq_core::event::Lineage {
            execution_id,
            parent_execution_id: None,
            root_execution_id: execution_id,
            correlation_id: execution_id,
            trace_correlation_id: execution_id,
        },
        step_id: row.try_get(3)?,
        node_name: String::new(),
        worker_id: None,
        attempt: row.try_get(10)?,
        trace_id: String::new(),
        span_id: String::new(),
        payload: Value::Null,
    })
}

#[derive(sqlx::FromRow)]
struct Dependency {
    step_id: Uuid,
    name: String,
    dependency_id: Uuid,
}

#[derive(sqlx::FromRow)]
struct WorkerRow {
    worker_id: String,
    service_name: String,
}

async fn spans_of_ended(
    pool: &PgPool,
    committed: Vec<NewEvent>,
    known: &Known,
) -> Result<Vec<LineqSpan>> {
    let (steps, executions) = ended(&committed);
    if steps.is_empty() && executions.is_empty() {
        return Ok(Vec::new());
    }
    let (step_events, exec_events) =
        read_ended_events(pool, &steps, &executions, committed, known).await?;
    let exec_rows = execution_rows(pool, &executions, known).await?;

    // The events that name the parents: each ended step's execution, each ended child
    // execution's spawning step; and the fan-in steps' dependencies, for their links.
    let started = executions_started(pool, &step_events, &exec_events).await?;
    let dependencies = dependencies_of(pool, &steps, known).await?;
    let mut named: Vec<Uuid> = exec_rows.iter().filter_map(|r| r.parent_step_id).collect();
    named.extend(dependencies.iter().map(|d| d.dependency_id));
    let step_spans: HashMap<Uuid, Uuid> = first_enqueued(pool, &named)
        .await?
        .into_iter()
        .map(|(s, e)| (s, e.event_id))
        .collect();

    // The events are moved into the spans, each into the one it belongs to: grouped by step
    // (in time order, as read), then what no step span took by execution.
    let mut spans = Vec::new();
    let mut abandoned = Vec::new();
    let mut by_execution: HashMap<Uuid, Vec<Ended>> = HashMap::new();
    let mut by_step: HashMap<Uuid, Vec<Ended>> = HashMap::new();
    for e in step_events {
        if let Some(s) = e.event.step_id {
            by_step.entry(s).or_default().push(e);
        }
    }
    for step in &steps {
        let Some(events) = by_step.remove(step) else {
            continue;
        };
        let links = links_of(*step, &dependencies, &step_spans);
        match step_span(events, &started, links, &mut abandoned) {
            Ok(span) => spans.push(span),
            // A step cancelled before it was ever enqueued has no span: its events are the
            // execution's.
            Err(orphans) => {
                for e in orphans {
                    by_execution
                        .entry(e.event.lineage.execution_id)
                        .or_default()
                        .push(e);
                }
            }
        }
    }
    spans.extend(with_services(pool, abandoned).await?);
    for e in exec_events {
        by_execution
            .entry(e.event.lineage.execution_id)
            .or_default()
            .push(e);
    }

    let rows: HashMap<Uuid, &ExecutionRow> =
        exec_rows.iter().map(|r| (r.execution_id, r)).collect();
    for x in &executions {
        let mut events = by_execution.remove(x).unwrap_or_default();
        events.sort_by_key(|e| (e.at, e.event.event_id));
        let row = rows.get(x).copied();
        let parent = row
            .and_then(|r| r.parent_step_id)
            .and_then(|s| step_spans.get(&s).copied());
        if let Some(span) = execution_span(events, row, parent) {
            spans.push(span);
        }
    }
    Ok(spans)
}

/// The steps and the executions that `committed` ended, in order.
fn ended(committed: &[NewEvent]) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut steps: Vec<Uuid> = Vec::new();
    let mut executions: Vec<Uuid> = Vec::new();
    for e in committed {
        if ends_step(e.event_type) {
            if let Some(s) = e.step_id.filter(|s| !steps.contains(s)) {
                steps.push(s);
            }
        } else if ends_execution(e.event_type) && !executions.contains(&e.lineage.execution_id) {
            executions.push(e.lineage.execution_id);
        }
    }
    (steps, executions)
}

/// One read: the ended steps' own events, and of their attempts only the claims (the worker
/// exported the rest with each attempt's span), each with whether its outcome was reported
/// (this batch's reports are known; older ones are looked up); and the ended executions' own
/// events (those of no step). Returned apart: the steps', the executions'.
async fn read_ended_events(
    pool: &PgPool,
    steps: &[Uuid],
    executions: &[Uuid],
    committed: Vec<NewEvent>,
    known: &Known,
) -> Result<(Vec<Ended>, Vec<Ended>)> {
    let rows: Vec<PgRow> = sqlx::query(&format!(
        "SELECT f.* FROM (
             SELECT s.* FROM (SELECT DISTINCT unnest($1::uuid[])) AS x(id)
             CROSS JOIN LATERAL (
                 SELECT {STORED_EVENT_COLUMNS},
                        e.event_type = 'action_started' AND (e.event_id = ANY ($3) OR EXISTS (
                            SELECT 1 FROM lineq.events r
                            WHERE r.parent_event_id = e.event_id
                              AND r.event_type IN ('action_completed', 'action_failed')))
                          AS reported
                 FROM lineq.events e
                 WHERE e.step_id = x.id
                   AND e.event_type NOT IN ('action_completed', 'action_failed', 'step_result')
                 OFFSET 0) AS s
             UNION ALL
             SELECT s.* FROM (SELECT DISTINCT unnest($2::uuid[])) AS x(id)
             CROSS JOIN LATERAL (SELECT {STORED_EVENT_COLUMNS}, false AS reported
                                 FROM lineq.events e
                                 WHERE e.execution_id = x.id AND e.step_id IS NULL
                                 OFFSET 0) AS s) AS f
         ORDER BY f.created_at, f.event_id"
    ))
    .bind(steps)
    .bind(executions)
    .bind(&known.reported)
    .fetch_all(pool)
    .await?;
    let mut committed: HashMap<Uuid, NewEvent> =
        committed.into_iter().map(|e| (e.event_id, e)).collect();
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        events.extend(Ended::parse(row, &mut committed)?);
    }
    Ok(events.into_iter().partition(|e| e.event.step_id.is_some()))
}

/// The rows of the ended `executions`: those the transaction knows, the rest read.
async fn execution_rows(
    pool: &PgPool,
    executions: &[Uuid],
    known: &Known,
) -> Result<Vec<ExecutionRow>> {
    let unknown: Vec<Uuid> = executions
        .iter()
        .filter(|x| !known.executions.contains_key(x))
        .copied()
        .collect();
    let mut rows: Vec<ExecutionRow> = if unknown.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT execution_id, status, parent_step_id, tags FROM lineq.executions
             WHERE execution_id = ANY($1)",
        )
        .bind(&unknown)
        .fetch_all(pool)
        .await?
    };
    rows.extend(
        executions
            .iter()
            .filter_map(|x| known.executions.get(x))
            .cloned(),
    );
    Ok(rows)
}

/// The `execution_started` event of each execution that an ended step or execution belongs
/// to: those read with the ended executions' events, the rest looked up.
async fn executions_started(
    pool: &PgPool,
    step_events: &[Ended],
    exec_events: &[Ended],
) -> Result<HashMap<Uuid, Uuid>> {
    let mut started: HashMap<Uuid, Uuid> = exec_events
        .iter()
        .filter(|e| e.event.event_type == EventType::ExecutionStarted)
        .map(|e| (e.event.lineage.execution_id, e.event.event_id))
        .collect();
    let missing: Vec<Uuid> = step_events
        .iter()
        .map(|e| e.event.lineage.execution_id)
        .filter(|x| !started.contains_key(x))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    started.extend(
        execution_started(pool, &missing)
            .await?
            .into_iter()
            .map(|(x, e)| (x, e.event_id)),
    );
    Ok(started)
}

/// The dependencies of the ended `steps`: those the transaction knows, the rest read.
async fn dependencies_of(pool: &PgPool, steps: &[Uuid], known: &Known) -> Result<Vec<Dependency>> {
    let unknown: Vec<Uuid> = steps
        .iter()
        .filter(|s| !known.dependencies.contains_key(s))
        .copied()
        .collect();
    let mut dependencies: Vec<Dependency> = if unknown.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT s.step_id, d.name, d.step_id AS dependency_id
             FROM lineq.steps s
             JOIN lineq.steps d ON d.execution_id = s.execution_id AND d.name = ANY (s.depends_on)
             WHERE s.step_id = ANY($1) AND cardinality(s.depends_on) > 0
             ORDER BY s.step_id, d.position",
        )
        .bind(&unknown)
        .fetch_all(pool)
        .await?
    };
    for s in steps {
        for (name, id) in known.dependencies.get(s).into_iter().flatten() {
            dependencies.push(Dependency {
                step_id: *s,
                name: name.clone(),
                dependency_id: *id,
            });
        }
    }
    Ok(dependencies)
}

/// The links of `step`'s span to its dependencies' spans (`step_spans`: step → the event
/// naming its span).
fn links_of(
    step: Uuid,
    dependencies: &[Dependency],
    step_spans: &HashMap<Uuid, Uuid>,
) -> Vec<(Uuid, Vec<KeyValue>)> {
    dependencies
        .iter()
        .filter(|d| d.step_id == step)
        .filter_map(|d| {
            let to = step_spans.get(&d.dependency_id)?;
            Some((
                *to,
                vec![
                    KeyValue::new("lineq.link", "depends_on"),
                    KeyValue::new("step", d.name.clone()),
                ],
            ))
        })
        .collect()
}

/// The abandoned attempts' spans, each under the service name its worker registered.
async fn with_services(pool: &PgPool, mut abandoned: Vec<LineqSpan>) -> Result<Vec<LineqSpan>> {
    if abandoned.is_empty() {
        return Ok(abandoned);
    }
    let workers: Vec<String> = abandoned
        .iter()
        .filter_map(|s| s.event.worker_id.clone())
        .collect();
    let services: HashMap<String, String> = sqlx::query_as::<_, WorkerRow>(
        "SELECT worker_id, coalesce(service_name, 'lineq-worker-' || language) AS service_name
         FROM lineq.workers WHERE worker_id = ANY($1)",
    )
    .bind(&workers)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|w| (w.worker_id, w.service_name))
    .collect();
    for s in &mut abandoned {
        s.service = Some(
            s.event
                .worker_id
                .as_ref()
                .and_then(|w| services.get(w))
                .cloned()
                .unwrap_or_else(|| "lineq-worker".to_string()),
        );
    }
    Ok(abandoned)
}

/// The span of one ended step from its events (in time order), and the spans of its abandoned
/// attempts into `abandoned`; the events back when the step has no span.
fn step_span(
    events: Vec<Ended>,
    started: &HashMap<Uuid, Uuid>,
    links: Vec<(Uuid, Vec<KeyValue>)>,
    abandoned: &mut Vec<LineqSpan>,
) -> std::result::Result<LineqSpan, Vec<Ended>> {
    let first = events
        .iter()
        .position(|e| e.event.event_type == EventType::StepEnqueued);
    let outcome = events.iter().rposition(|e| ends_step(e.event.event_type));
    let (Some(first), Some(outcome)) = (first, outcome) else {
        return Err(events);
    };
    let (start, end) = (events[first].at, events[outcome].at);
    let outcome = &events[outcome].event;
    let parent = started
        .get(&events[first].event.lineage.execution_id)
        .copied();
    // The first `step_enqueued` names the span and is also one of its events.
    let mut span = LineqSpan::new(
        SpanShape::Step,
        events[first].event.clone(),
        parent,
        start,
        end,
    );
    span.links = links;
    span.failure = telemetry::failure_of(outcome);
    let status = match outcome.event_type {
        EventType::StepCompleted => StepStatus::Completed,
        EventType::StepFailed => StepStatus::Failed,
        _ => StepStatus::Cancelled,
    };
    span.attributes
        .push(KeyValue::new("status", status.as_str()));
    let attempts = events
        .iter()
        .filter_map(|e| e.event.attempt)
        .max()
        .unwrap_or(1);
    span.attributes
        .push(KeyValue::new("attempts", i64::from(attempts)));
    abandoned.extend(abandoned_attempts(&events, span.event.event_id, end));
    span.events = events
        .into_iter()
        .filter(|e| !of_attempt(e.event.event_type))
        .map(|e| (e.event, e.at))
        .collect();
    Ok(span)
}

/// The spans of the attempts nobody reported (`events`: a step's events in time order; `step`:
/// its span): each lasts until its message was delivered again (or dead-lettered), or else
/// until the step's `end`.
fn abandoned_attempts(events: &[Ended], step: Uuid, end: SystemTime) -> Vec<LineqSpan> {
    let mut abandoned = Vec::new();
    for (i, claim) in events.iter().enumerate() {
        let (e, at) = (&claim.event, claim.at);
        if e.event_type != EventType::ActionStarted || claim.reported {
            continue;
        }
        let replaced = events[i + 1..].iter().find(|n| {
            n.event.parent_event_id == e.parent_event_id
                && matches!(
                    n.event.event_type,
                    EventType::ActionStarted | EventType::MessageDeadLettered
                )
        });
        let until = replaced.map_or(end, |n| n.at);
        let mut a = LineqSpan::new(SpanShape::Attempt, e.clone(), Some(step), at, until);
        a.events.push((e.clone(), at));
        let worker = e.worker_id.as_deref().unwrap_or("a worker");
        a.failure = Some((
            "abandoned".to_string(),
            match replaced {
                Some(n) if n.event.event_type == EventType::ActionStarted => format!(
                    "{worker} claimed this delivery and reported no outcome (it stopped, or lost the database); the message was delivered again"
                ),
                Some(_) => format!(
                    "{worker} claimed this delivery and reported no outcome; the message was dead-lettered"
                ),
                None => format!(
                    "{worker} claimed this delivery and reported no outcome before the step ended"
                ),
            },
        ));
        a.attributes.push(KeyValue::new("outcome", "abandoned"));
        abandoned.push(a);
    }
    abandoned
}

/// The span of one ended execution from its own events (those of no step, in time order).
fn execution_span(
    events: Vec<Ended>,
    row: Option<&ExecutionRow>,
    parent: Option<Uuid>,
) -> Option<LineqSpan> {
    let first = events
        .iter()
        .position(|e| e.event.event_type == EventType::ExecutionStarted)?;
    let ending = events
        .iter()
        .rposition(|e| ends_execution(e.event.event_type))?;
    let (start, end) = (events[first].at, events[ending].at);
    // `execution_started` names the span and is also one of its events.
    let mut span = LineqSpan::new(
        SpanShape::Execution,
        events[first].event.clone(),
        parent,
        start,
        end,
    );
    span.failure = telemetry::failure_of(&events[ending].event);
    if let Some(r) = row {
        span.attributes
            .push(KeyValue::new("status", r.status.as_str()));
        if let Value::Object(tags) = &r.tags {
            for (k, v) in tags {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                span.attributes.push(KeyValue::new(format!("tag.{k}"), v));
            }
        }
    }
    if let Some(p) = row.and_then(|r| r.parent_step_id) {
        span.attributes
            .push(KeyValue::new("parent_step_id", p.to_string()));
    }
    span.events = events.into_iter().map(|e| (e.event, e.at)).collect();
    Some(span)
}
