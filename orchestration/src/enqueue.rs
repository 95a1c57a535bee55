//! Enqueueing ready steps: one `step_enqueued` event and one message per step, the step rows
//! moved to `enqueued`, in the caller's transaction. Used by submission (first steps), result
//! processing (dependents, retries) and child creation.

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

/// Sends `ready` and marks the steps enqueued. Returns the `step_enqueued` events for the
/// caller to insert with the rest of its transaction's events.
pub(crate) async fn enqueue(
    conn: &mut PgConnection,
    ready: Vec<ReadyStep>,
    node_name: &str,
) -> Result<Vec<NewEvent>> {
    let (events, msg_ids) = send_ready(conn, &ready, node_name).await?;
    if !ready.is_empty() {
        let ids: Vec<Uuid> = ready.iter().map(|r| r.step_id).collect();
        let attempts: Vec<i32> = ready.iter().map(|r| r.attempt).collect();
        let inputs: Vec<&Value> = ready.iter().map(|r| &r.input).collect();
        sqlx::query(
            r#"
            UPDATE lineq.steps s
            SET status = 'enqueued', msg_id = u.msg_id, attempts = u.attempt, input = u.input,
                updated_at = clock_timestamp()
            FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::jsonb[])
                 AS u(step_id, msg_id, attempt, input)
            WHERE s.step_id = u.step_id
            "#,
        )
        .bind(&ids)
        .bind(&msg_ids)
        .bind(&attempts)
        .bind(&inputs)
        .execute(conn)
        .await?;
    }
    Ok(events)
}

/// Sends the messages of `ready` (one batch per queue; delayed ones one by one) and builds
/// their `step_enqueued` events. Returns the events and each step's message id, in order; the
/// caller records them on the step rows (by update, or directly in the insert of new steps).
pub(crate) async fn send_ready(
    conn: &mut PgConnection,
    ready: &[ReadyStep],
    node_name: &str,
) -> Result<(Vec<NewEvent>, Vec<i64>)> {
    let mut events = Vec::with_capacity(ready.len());
    let mut batches: BTreeMap<String, (QueueName, Vec<Value>, Vec<usize>)> = BTreeMap::new();
    let mut msg_ids: Vec<i64> = vec![0; ready.len()];
    for (i, r) in ready.iter().enumerate() {
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
        let body = serde_json::to_value(&message)?;
        if r.delay.is_zero() {
            let entry = batches
                .entry(r.queue.as_str().to_string())
                .or_insert_with(|| (r.queue.clone(), Vec::new(), Vec::new()));
            entry.1.push(body);
            entry.2.push(i);
        } else {
            msg_ids[i] = queue::send(conn, &r.queue, &body, r.delay).await?;
        }
        events.push(event);
    }
    for (_, (q, bodies, idx)) in batches {
        let sent = queue::send_batch(conn, &q, &bodies).await?;
        for (i, id) in idx.into_iter().zip(sent) {
            msg_ids[i] = id;
        }
    }
    for ((r, e), msg_id) in ready.iter().zip(events.iter_mut()).zip(&msg_ids) {
        e.payload = json!({
            "step": r.name, "handler": r.handler, "queue": r.queue.as_str(), "msg_id": msg_id,
            "delay_ms": u64::try_from(r.delay.as_millis()).unwrap_or(u64::MAX),
            "retry_reason": r.retry_reason,
        });
    }
    Ok((events, msg_ids))
}
