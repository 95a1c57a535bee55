//! Enqueueing ready steps: one `step_enqueued` event and one message per step, the step rows
//! moved to `enqueued`, in the caller's transaction. Used by result processing (dependents,
//! retries) and cancellation. A new execution's first steps are sent by the SQL function
//! `lineq._enqueue_steps` (migration 000013), which builds the same message.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use lineq_shared::error::Result;
use lineq_shared::event::{EventType, Lineage, NewEvent};
use lineq_shared::message::{ExecutionContext, Meta, StepMessage};
use lineq_shared::queue;
use lineq_shared::validation::QueueName;

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

/// Sends `ready` and marks the steps enqueued: one statement per queue does both (and wakes
/// the queue's consumers), so a result batch that makes steps ready pays one round trip for
/// them. Returns the `step_enqueued` events for the caller to insert with the rest of its
/// transaction's events.
pub(crate) async fn enqueue(
    conn: &mut PgConnection,
    ready: Vec<ReadyStep>,
    node_name: &str,
) -> Result<Vec<NewEvent>> {
    let (mut events, bodies) = prepare(&ready, node_name)?;
    let mut msg_ids: Vec<i64> = vec![0; ready.len()];
    for (q, idx) in by_queue(&ready).into_values() {
        let batch_bodies: Vec<&Value> = idx.iter().map(|&i| &bodies[i]).collect();
        let delays: Vec<f64> = idx.iter().map(|&i| ready[i].delay.as_secs_f64()).collect();
        let step_ids: Vec<Uuid> = idx.iter().map(|&i| ready[i].step_id).collect();
        let attempts: Vec<i32> = idx.iter().map(|&i| ready[i].attempt).collect();
        let inputs: Vec<&Value> = idx.iter().map(|&i| &ready[i].input).collect();
        // Identity values are taken in the order the ordered SELECT yields the rows, so the ids
        // by msg_id are in the order of `idx`; the step rows find their message by its step id.
        let sent: Vec<i64> = sqlx::query_scalar(&format!(
            r#"
            WITH wake AS MATERIALIZED (SELECT pg_notify($1, $2)),
                 sent AS (
                     INSERT INTO {live} (vt, message)
                     SELECT clock_timestamp() + make_interval(secs => m.delay), m.body
                     FROM unnest($3::jsonb[], $4::float8[]) WITH ORDINALITY AS m(body, delay, ord)
                     ORDER BY m.ord
                     RETURNING msg_id, message),
                 marked AS (
                     UPDATE lineq.steps s
                     SET status = 'enqueued', msg_id = sent.msg_id, attempts = u.attempt,
                         input = u.input, updated_at = clock_timestamp()
                     FROM unnest($5::uuid[], $6::int[], $7::jsonb[]) AS u(step_id, attempt, input),
                          sent
                     WHERE s.step_id = u.step_id
                       AND (sent.message->>'step_id')::uuid = u.step_id)
            SELECT sent.msg_id FROM sent, wake ORDER BY sent.msg_id
            "#,
            live = queue::live_table(q),
        ))
        .bind(queue::wake_channel(q))
        .bind(q.as_str())
        .bind(&batch_bodies)
        .bind(&delays)
        .bind(&step_ids)
        .bind(&attempts)
        .bind(&inputs)
        .fetch_all(&mut *conn)
        .await?;
        for (i, id) in idx.into_iter().zip(sent) {
            msg_ids[i] = id;
        }
    }
    fill_payloads(&ready, &mut events, &msg_ids);
    Ok(events)
}

/// The `step_enqueued` event and the message of each step of `ready`, in order; the message
/// names its event as its parent.
fn prepare(ready: &[ReadyStep], node_name: &str) -> Result<(Vec<NewEvent>, Vec<Value>)> {
    let mut events = Vec::with_capacity(ready.len());
    let mut bodies = Vec::with_capacity(ready.len());
    for r in ready {
        let event = NewEvent::new(
            EventType::StepEnqueued,
            r.lineage,
            Some(r.parent_event),
            node_name,
        )
        .step(r.step_id, r.attempt);
        let message = StepMessage {
            step_id: r.step_id,
            execution_id: r.lineage.execution_id,
            step: r.name.clone(),
            handler: r.handler.clone(),
            attempt: r.attempt,
            input: r.input.clone(),
            timeout_ms: r.timeout_ms,
            context: Some(r.context.clone()),
            meta: Meta {
                correlation_id: r.lineage.correlation_id,
                parent_event_id: event.event_id,
                parent_execution_id: r.lineage.parent_execution_id,
                root_execution_id: r.lineage.root_execution_id,
                traceparent: event.traceparent(),
                tracestate: String::new(),
                attempt: (r.attempt > 1).then_some(r.attempt),
                retry_reason: r.retry_reason.clone(),
            },
        };
        bodies.push(serde_json::to_value(&message)?);
        events.push(event);
    }
    Ok((events, bodies))
}

/// The indexes into `ready` of each queue's steps, queues in name order.
fn by_queue(ready: &[ReadyStep]) -> BTreeMap<&str, (&QueueName, Vec<usize>)> {
    let mut m: BTreeMap<&str, (&QueueName, Vec<usize>)> = BTreeMap::new();
    for (i, r) in ready.iter().enumerate() {
        m.entry(r.queue.as_str())
            .or_insert_with(|| (&r.queue, Vec::new()))
            .1
            .push(i);
    }
    m
}

/// What the `step_enqueued` events say once the messages are sent.
fn fill_payloads(ready: &[ReadyStep], events: &mut [NewEvent], msg_ids: &[i64]) {
    for ((r, e), msg_id) in ready.iter().zip(events.iter_mut()).zip(msg_ids) {
        e.payload = json!({
            "step": r.name, "handler": r.handler, "queue": r.queue.as_str(), "msg_id": msg_id,
            "delay_ms": u64::try_from(r.delay.as_millis()).unwrap_or(u64::MAX),
            "retry_reason": r.retry_reason,
        });
    }
}
