//! The append-only event log: lineq's lineage. Every event has exactly one parent, except the
//! first event of a root execution (its `execution_started`, or the `schedule_fired` that
//! started it), so all events under a root form one tree.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;
use crate::ids::new_id;
use crate::trace_context::TraceContext;

/// What happened. Stored as snake_case text in `lineq.events.event_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// An execution was submitted (parent: none for a root; the spawning event for a child).
    ExecutionStarted,
    /// Its steps were laid out (parent: `execution_started`).
    WorkflowInitialized,
    /// A step message was sent (parent: what made the step ready).
    StepEnqueued,
    /// A step with a flow key waits for room under its limits or for its delay (parent: what
    /// made it ready; its `step_enqueued` hangs off this when it is sent).
    StepThrottled,
    /// A worker claimed the message (parent: the message's `meta.parent_event_id`).
    ActionStarted,
    /// The handler returned output (parent: `action_started`).
    ActionCompleted,
    /// The handler failed (parent: `action_started`).
    ActionFailed,
    /// The worker reported the outcome (parent: `action_started`).
    StepResult,
    /// The orchestrator recorded the step as completed (parent: `step_result`).
    StepCompleted,
    /// The orchestrator recorded the step as failed for good (parent: `step_result`).
    StepFailed,
    /// An attempt failed and another is scheduled (parent: `step_result`; the retry's
    /// `step_enqueued` hangs off it).
    StepAttemptFailed,
    /// The step waits for child executions (parent: `step_result`).
    StepWaiting,
    /// The step was cancelled (parent: its execution's `execution_cancelled`).
    StepCancelled,
    /// The execution completed (parent: the event that ended it).
    ExecutionCompleted,
    /// The execution failed (parent: the event that ended it).
    ExecutionFailed,
    /// The execution was cancelled.
    ExecutionCancelled,
    /// A message was moved to the dead-letter queue (parent: the message's parent event).
    MessageDeadLettered,
    /// A dead letter was sent back to its queue (parent: its `message_dead_lettered`).
    MessageReplayed,
    /// A user changed the execution's tags (parent: its `execution_started`).
    TagsChanged,
    /// A schedule fired an occurrence and started this execution: the root of its lineage
    /// (no parent; its `execution_started` hangs off it). The payload names the schedule and
    /// the occurrence.
    ScheduleFired,
}

impl EventType {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExecutionStarted => "execution_started",
            Self::WorkflowInitialized => "workflow_initialized",
            Self::StepEnqueued => "step_enqueued",
            Self::StepThrottled => "step_throttled",
            Self::ActionStarted => "action_started",
            Self::ActionCompleted => "action_completed",
            Self::ActionFailed => "action_failed",
            Self::StepResult => "step_result",
            Self::StepCompleted => "step_completed",
            Self::StepFailed => "step_failed",
            Self::StepAttemptFailed => "step_attempt_failed",
            Self::StepWaiting => "step_waiting",
            Self::StepCancelled => "step_cancelled",
            Self::ExecutionCompleted => "execution_completed",
            Self::ExecutionFailed => "execution_failed",
            Self::ExecutionCancelled => "execution_cancelled",
            Self::MessageDeadLettered => "message_dead_lettered",
            Self::MessageReplayed => "message_replayed",
            Self::TagsChanged => "tags_changed",
            Self::ScheduleFired => "schedule_fired",
        }
    }

    /// The event type stored as `name`, if lineq knows it.
    pub fn parse(name: &str) -> Option<Self> {
        const ALL: [EventType; 20] = [
            EventType::ExecutionStarted,
            EventType::WorkflowInitialized,
            EventType::StepEnqueued,
            EventType::StepThrottled,
            EventType::ActionStarted,
            EventType::ActionCompleted,
            EventType::ActionFailed,
            EventType::StepResult,
            EventType::StepCompleted,
            EventType::StepFailed,
            EventType::StepAttemptFailed,
            EventType::StepWaiting,
            EventType::StepCancelled,
            EventType::ExecutionCompleted,
            EventType::ExecutionFailed,
            EventType::ExecutionCancelled,
            EventType::MessageDeadLettered,
            EventType::MessageReplayed,
            EventType::TagsChanged,
            EventType::ScheduleFired,
        ];
        ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// The identity of an execution that every one of its events carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lineage {
    /// The execution.
    pub execution_id: Uuid,
    /// Its parent execution, if it is a child.
    pub parent_execution_id: Option<Uuid>,
    /// The root of its tree.
    pub root_execution_id: Uuid,
    /// Its correlation id.
    pub correlation_id: Uuid,
    /// The correlation id of the root, which names the trace.
    pub trace_correlation_id: Uuid,
}

/// An event about to be written. Its id is known before it commits, so it can be put into the
/// next message as that message's `parent_event_id`.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event's id (UUIDv7).
    pub event_id: Uuid,
    /// Its one parent.
    pub parent_event_id: Option<Uuid>,
    /// What happened.
    pub event_type: EventType,
    /// Whose event it is.
    pub lineage: Lineage,
    /// The step it concerns, if any.
    pub step_id: Option<Uuid>,
    /// The machine that wrote it.
    pub node_name: String,
    /// The worker that wrote it, if a worker did.
    pub worker_id: Option<String>,
    /// The attempt it concerns, if any.
    pub attempt: Option<i32>,
    /// Trace id (hex) of the span that wrote it.
    pub trace_id: String,
    /// Span id (hex) of the span that wrote it.
    pub span_id: String,
    /// Anything else worth keeping: step name, error, output size, ...
    pub payload: Value,
}

impl NewEvent {
    /// A new event of `event_type` for `lineage`, child of `parent`, with trace ids derived from
    /// the lineage (see [`crate::trace_context`]).
    pub fn new(
        event_type: EventType,
        lineage: Lineage,
        parent: Option<Uuid>,
        node_name: &str,
    ) -> Self {
        Self::with_id(new_id(), event_type, lineage, parent, node_name)
    }

    /// [`NewEvent::new`] for an event whose id is already known (one the SQL interface wrote).
    pub fn with_id(
        event_id: Uuid,
        event_type: EventType,
        lineage: Lineage,
        parent: Option<Uuid>,
        node_name: &str,
    ) -> Self {
        let tc = TraceContext::for_event(lineage.trace_correlation_id, event_id);
        Self {
            event_id,
            parent_event_id: parent,
            event_type,
            lineage,
            step_id: None,
            node_name: node_name.to_string(),
            worker_id: None,
            attempt: None,
            trace_id: tc.trace_id_hex(),
            span_id: tc.span_id_hex(),
            payload: Value::Object(Default::default()),
        }
    }

    /// Sets the step and attempt.
    pub fn step(mut self, step_id: Uuid, attempt: i32) -> Self {
        self.step_id = Some(step_id);
        self.attempt = Some(attempt);
        self
    }

    /// Sets the worker.
    pub fn worker(mut self, worker_id: &str) -> Self {
        self.worker_id = Some(worker_id.to_string());
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = payload;
        self
    }

    /// The `traceparent` of the span that wrote this event, for the next message.
    pub fn traceparent(&self) -> String {
        TraceContext::for_event(self.lineage.trace_correlation_id, self.event_id).to_string()
    }
}

/// Writes `events` with one statement (column arrays through `unnest`), in the caller's
/// transaction. Rows are stamped in array order.
pub async fn insert_events(conn: &mut PgConnection, events: &[NewEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let cols = EventColumns::new(events);
    cols.bind(sqlx::query(&INSERT_EVENTS_SQL))
        .execute(conn)
        .await?;
    Ok(())
}

/// The statement that inserts a batch of events, its parameters `$1`–`$14` bound by
/// [`EventColumns::bind`]. It can also stand as a data-modifying CTE of a larger statement (the
/// queue layer writes a batch's events with its archive in one round trip this way), whose own
/// parameters then start at `$15`.
pub static INSERT_EVENTS_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| insert_events_sql(&[], "u.payload", "TRUE"));

/// [`INSERT_EVENTS_SQL`] for statements that write some events conditionally: `more` adds
/// columns to the `unnest` (`("$16::bigint[]", "held_msg")`: the parameter with its array type,
/// and the column's name in `u`), `payload` is the payload's expression over `u` and `filter`
/// decides, over `u`, which rows are written.
pub fn insert_events_sql(more: &[(&str, &str)], payload: &str, filter: &str) -> String {
    let more_params: String = more.iter().map(|(p, _)| format!(", {p}")).collect();
    let more_names: String = more.iter().map(|(_, n)| format!(", {n}")).collect();
    format!(
        r#"
        INSERT INTO lineq.events (event_id, parent_event_id, execution_id, step_id,
            parent_execution_id, root_execution_id, correlation_id, event_type, node_name,
            worker_id, attempt, trace_id, span_id, payload, created_at)
        SELECT u.event_id, u.parent_event_id, u.execution_id, u.step_id, u.parent_execution_id,
            u.root_execution_id, u.correlation_id, u.event_type, u.node_name, u.worker_id,
            u.attempt, u.trace_id, u.span_id, {payload},
            -- one timestamp per row, increasing in array order, so time order follows causality
            -- within a statement
            clock_timestamp() + make_interval(secs => u.ord * 0.000001)
        FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::uuid[],
                    $7::uuid[], $8::text[], $9::text[], $10::text[], $11::int[], $12::text[],
                    $13::text[], $14::jsonb[]{more_params})
             WITH ORDINALITY AS u(event_id, parent_event_id, execution_id, step_id,
                    parent_execution_id, root_execution_id, correlation_id, event_type, node_name,
                    worker_id, attempt, trace_id, span_id, payload{more_names}, ord)
        WHERE {filter}
        ORDER BY u.ord
"#
    )
}

/// A batch of events as the column arrays [`INSERT_EVENTS_SQL`] takes.
pub struct EventColumns<'a> {
    event_id: Vec<Uuid>,
    parent: Vec<Option<Uuid>>,
    execution: Vec<Uuid>,
    step: Vec<Option<Uuid>>,
    parent_exec: Vec<Option<Uuid>>,
    root: Vec<Uuid>,
    corr: Vec<Uuid>,
    etype: Vec<&'static str>,
    node: Vec<&'a str>,
    worker: Vec<Option<&'a str>>,
    attempt: Vec<Option<i32>>,
    trace: Vec<&'a str>,
    span: Vec<&'a str>,
    payload: Vec<&'a Value>,
}

impl<'a> EventColumns<'a> {
    /// The columns of `events`, in order.
    pub fn new(events: &'a [NewEvent]) -> Self {
        let n = events.len();
        let mut c = Self {
            event_id: Vec::with_capacity(n),
            parent: Vec::with_capacity(n),
            execution: Vec::with_capacity(n),
            step: Vec::with_capacity(n),
            parent_exec: Vec::with_capacity(n),
            root: Vec::with_capacity(n),
            corr: Vec::with_capacity(n),
            etype: Vec::with_capacity(n),
            node: Vec::with_capacity(n),
            worker: Vec::with_capacity(n),
            attempt: Vec::with_capacity(n),
            trace: Vec::with_capacity(n),
            span: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
        };
        for e in events {
            c.event_id.push(e.event_id);
            c.parent.push(e.parent_event_id);
            c.execution.push(e.lineage.execution_id);
            c.step.push(e.step_id);
            c.parent_exec.push(e.lineage.parent_execution_id);
            c.root.push(e.lineage.root_execution_id);
            c.corr.push(e.lineage.correlation_id);
            c.etype.push(e.event_type.as_str());
            c.node.push(e.node_name.as_str());
            c.worker.push(e.worker_id.as_deref());
            c.attempt.push(e.attempt);
            c.trace.push(e.trace_id.as_str());
            c.span.push(e.span_id.as_str());
            c.payload.push(&e.payload);
        }
        c
    }

    /// Binds the columns as parameters `$1`–`$14` of `query`.
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.event_id)
            .bind(&self.parent)
            .bind(&self.execution)
            .bind(&self.step)
            .bind(&self.parent_exec)
            .bind(&self.root)
            .bind(&self.corr)
            .bind(&self.etype)
            .bind(&self.node)
            .bind(&self.worker)
            .bind(&self.attempt)
            .bind(&self.trace)
            .bind(&self.span)
            .bind(&self.payload)
    }
}

/// The latest event of an execution: the parent of an event that the execution's own events did
/// not cause (a cancellation, a child submitted with an explicit parent).
pub async fn latest_event<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    execution_id: Uuid,
) -> Result<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT event_id FROM lineq.events WHERE execution_id = $1
         ORDER BY created_at DESC, event_id DESC LIMIT 1",
    )
    .bind(execution_id)
    .fetch_optional(executor)
    .await?)
}

/// An event as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventRow {
    /// Its id.
    pub event_id: Uuid,
    /// Its parent.
    pub parent_event_id: Option<Uuid>,
    /// Its execution.
    pub execution_id: Uuid,
    /// Its step, if any.
    pub step_id: Option<Uuid>,
    /// The step's name, if any (joined from `lineq.steps`).
    pub step_name: Option<String>,
    /// The parent execution.
    pub parent_execution_id: Option<Uuid>,
    /// The root execution.
    pub root_execution_id: Uuid,
    /// The correlation id.
    pub correlation_id: Uuid,
    /// What happened.
    pub event_type: String,
    /// The machine that wrote it.
    pub node_name: String,
    /// The worker that wrote it.
    pub worker_id: Option<String>,
    /// The attempt.
    pub attempt: Option<i32>,
    /// Trace id (hex).
    pub trace_id: Option<String>,
    /// Span id (hex).
    pub span_id: Option<String>,
    /// Details.
    pub payload: Value,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// Every event of an execution, in the order they were written.
pub async fn events_of_execution<'e, E>(executor: E, execution_id: Uuid) -> Result<Vec<EventRow>>
where
    E: sqlx::PgExecutor<'e>,
{
    let rows = sqlx::query_as::<_, EventRow>(
        r#"
        SELECT e.event_id, e.parent_event_id, e.execution_id, e.step_id, s.name AS step_name,
               e.parent_execution_id, e.root_execution_id, e.correlation_id, e.event_type,
               e.node_name, e.worker_id, e.attempt, e.trace_id, e.span_id, e.payload, e.created_at
        FROM lineq.events e
        LEFT JOIN lineq.steps s ON s.step_id = e.step_id
        WHERE e.execution_id = $1
        ORDER BY e.created_at, e.event_id
        "#,
    )
    .bind(execution_id)
    .fetch_all(executor)
    .await?;
    Ok(rows)
}
