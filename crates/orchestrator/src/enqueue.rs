//! Enqueueing ready steps: one `step_enqueued` event and one message per step, the step rows
//! moved to `enqueued`, in the caller's transaction. Used by result processing (dependents,
//! retries) and cancellation. The message is built by the SQL function `lineq._enqueue_steps`
//! (migration 000013), which also sends a new execution's first steps: one copy of it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Map, Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::event::{EventType, Lineage, NewEvent};
use lineq_core::message::ExecutionContext;
use lineq_core::telemetry;
use lineq_core::trace_context::TraceContext;
use lineq_core::validation::QueueName;

/// A step about to be sent to its queue.
#[derive(Debug, Clone)]
pub(crate) struct ReadyStep {
    pub lineage: Lineage,
    pub step_id: Uuid,
    pub name: String,
    pub handler: String,
    pub queue: QueueName,
    pub attempt: i32,
    pub input: Value,
    pub timeout_ms: Option<u64>,
    /// The event that made it ready: `workflow_initialized`, a dependency's outcome, or for a
    /// retry the failed attempt.
    pub parent_event: Uuid,
    pub delay: Duration,
    pub retry_reason: Option<String>,
    /// The execution's workflow, tags, metadata and spawning step, for the handler.
    pub context: ExecutionContext,
    /// Its flow key and limits: it is sent when its key has room (`lineq._flow_enqueue`).
    pub flow: Option<Value>,
    /// Claimed before lower priorities of its queue.
    pub priority: i32,
}

/// The input a workflow step's handler gets: the execution input, the outputs of its
/// dependencies by step name, and its fixed parameters. A one-step task gets the execution
/// input unchanged.
pub(crate) fn step_input(
    kind: &str,
    execution_input: &Value,
    params: Option<&Value>,
    deps: &BTreeMap<String, Value>,
) -> Value {
    if kind == "task" {
        return execution_input.clone();
    }
    let mut m = Map::new();
    m.insert("input".into(), execution_input.clone());
    m.insert(
        "steps".into(),
        Value::Object(deps.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
    );
    if let Some(p) = params {
        m.insert("params".into(), p.clone());
    }
    Value::Object(m)
}

/// Sends `ready` and marks the steps enqueued through `lineq._enqueue_steps` (migration 000013,
/// the code that also sends a new execution's first steps): per queue, one statement writes the
/// `step_enqueued` events, sends the messages, moves the step rows to `enqueued` and wakes the
/// queue's consumers, so a result batch that makes steps ready pays one round trip for them.
///
/// The events are written here, stamped after everything written so far in the transaction:
/// callers write the events that made the steps ready first. The returned events are what was
/// written, for exporting spans after commit; they must not be inserted again.
pub(crate) async fn enqueue(
    conn: &mut PgConnection,
    ready: Vec<ReadyStep>,
    node_name: &str,
) -> Result<Vec<NewEvent>> {
    if ready.is_empty() {
        return Ok(Vec::new());
    }
    let wire: Vec<WireStep<'_>> = ready
        .iter()
        .map(|r| WireStep {
            execution_id: r.lineage.execution_id,
            parent_execution_id: r.lineage.parent_execution_id,
            root_execution_id: r.lineage.root_execution_id,
            correlation_id: r.lineage.correlation_id,
            trace_correlation_id: r.lineage.trace_correlation_id,
            step_id: r.step_id,
            step: &r.name,
            handler: &r.handler,
            queue: r.queue.as_str(),
            attempt: r.attempt,
            input: &r.input,
            timeout_ms: r.timeout_ms,
            parent_event_id: r.parent_event,
            delay_ms: delay_ms(r.delay),
            retry_reason: r.retry_reason.as_deref(),
            context: &r.context,
            priority: r.priority,
            flow: r.flow.as_ref(),
        })
        .collect();
    // A throttled step comes back without a message (and with its step_throttled event).
    let sent: Vec<(Uuid, Option<i64>, Uuid)> = sqlx::query_as(
        "SELECT step_id, msg_id, event_id FROM lineq._enqueue_steps($1, $2, NULL, true)",
    )
    .bind(sqlx::types::Json(&wire))
    .bind(node_name)
    .fetch_all(&mut *conn)
    .await?;
    if !telemetry::enabled() {
        return Ok(Vec::new());
    }
    let by_step: HashMap<Uuid, (i64, Uuid)> = sent
        .into_iter()
        .filter_map(|(step, msg, event)| Some((step, (msg?, event))))
        .collect();
    Ok(ready
        .iter()
        .filter_map(|r| {
            let (msg_id, event_id) = by_step.get(&r.step_id).copied()?;
            let tc = TraceContext::for_event(r.lineage.trace_correlation_id, event_id);
            let mut e = NewEvent::new(
                EventType::StepEnqueued,
                r.lineage,
                Some(r.parent_event),
                node_name,
            )
            .step(r.step_id, r.attempt)
            .payload(json!({
                "step": r.name, "handler": r.handler, "queue": r.queue.as_str(),
                "msg_id": msg_id, "delay_ms": delay_ms(r.delay), "retry_reason": r.retry_reason,
            }));
            e.event_id = event_id;
            e.trace_id = tc.trace_id_hex();
            e.span_id = tc.span_id_hex();
            Some(e)
        })
        .collect())
}

fn delay_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A ready step as `lineq._enqueue_steps` reads it.
#[derive(serde::Serialize)]
struct WireStep<'a> {
    execution_id: Uuid,
    parent_execution_id: Option<Uuid>,
    root_execution_id: Uuid,
    correlation_id: Uuid,
    trace_correlation_id: Uuid,
    step_id: Uuid,
    step: &'a str,
    handler: &'a str,
    queue: &'a str,
    attempt: i32,
    input: &'a Value,
    timeout_ms: Option<u64>,
    parent_event_id: Uuid,
    delay_ms: u64,
    retry_reason: Option<&'a str>,
    context: &'a ExecutionContext,
    #[serde(skip_serializing_if = "is_zero")]
    priority: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    flow: Option<&'a Value>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}
