//! Reporting: for a batch of finished steps, write `action_completed|action_failed` and
//! `step_result`, send the result messages and archive the step messages — in ONE transaction,
//! so an outcome is either fully reported or not at all (and then the step message reappears
//! and runs again).
//!
//! The step messages are archived first: a message another delivery already archived (this
//! worker was too slow and the message was handed to someone else, who reported first) still
//! gets its `action_*` event — it happened — but no `step_result` and no result message, so a
//! step never has two reported outcomes for one attempt.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use lineq_shared::error::Result;
use lineq_shared::event::{EventType, NewEvent};
use lineq_shared::message::{Meta, Outcome, ResultMessage, StepError};
use lineq_shared::queue;
use lineq_shared::telemetry;
use lineq_shared::validation::QueueName;

use crate::claim::Claimed;

/// A finished step, waiting to be reported.
#[derive(Debug)]
pub(crate) struct Completion {
    pub claimed: Claimed,
    pub outcome: std::result::Result<Value, StepError>,
    pub children: Vec<lineq_shared::message::ChildRequest>,
    pub duration: Duration,
}

pub(crate) async fn report(
    pool: &PgPool,
    step_queue: &QueueName,
    done: &[Completion],
    worker_id: &str,
    node_name: &str,
) -> Result<()> {
    let started = telemetry::start();
    let mut tx = pool.begin().await?;
    let held: Vec<i64> = done.iter().map(|c| c.claimed.msg_id).collect();
    let archived = queue::archive(&mut tx, step_queue, &held).await?;
    let mut events = Vec::with_capacity(done.len() * 2);
    let mut results = Vec::with_capacity(done.len());
    for c in done {
        let superseded = !archived.contains(&c.claimed.msg_id);
        let m = &c.claimed.message;
        let started = Some(c.claimed.started_event_id);
        let duration_ms = u64::try_from(c.duration.as_millis()).unwrap_or(u64::MAX);
        let (action_type, outcome, payload) = match &c.outcome {
            Ok(_) => (
                EventType::ActionCompleted,
                Outcome::Completed,
                json!({ "step": m.step, "duration_ms": duration_ms, "superseded": superseded }),
            ),
            Err(e) => (
                EventType::ActionFailed,
                Outcome::Failed,
                json!({ "step": m.step, "duration_ms": duration_ms, "error": e,
                        "superseded": superseded }),
            ),
        };
        let action = NewEvent::new(action_type, c.claimed.lineage, started, node_name)
            .step(m.step_id, m.attempt)
            .worker(worker_id)
            .payload(payload);
        events.push(action);
        if superseded {
            tracing::warn!(correlation_id = %m.meta.correlation_id, execution_id = %m.execution_id,
                step_id = %m.step_id, msg_id = c.claimed.msg_id,
                "step message was already reported by another delivery; not reporting again");
            continue;
        }
        let result_event =
            NewEvent::new(EventType::StepResult, c.claimed.lineage, started, node_name)
                .step(m.step_id, m.attempt)
                .worker(worker_id)
                .payload(json!({ "step": m.step, "outcome": outcome }));
        let result = ResultMessage {
            step_id: m.step_id,
            execution_id: m.execution_id,
            step: m.step.clone(),
            attempt: m.attempt,
            worker_id: worker_id.to_string(),
            outcome,
            output: c.outcome.as_ref().ok().cloned(),
            error: c.outcome.as_ref().err().cloned(),
            // Children only come to be if the attempt succeeded.
            children: if c.outcome.is_ok() {
                c.children.clone()
            } else {
                Vec::new()
            },
            started_event_id: Some(c.claimed.started_event_id),
            meta: Meta {
                correlation_id: m.meta.correlation_id,
                parent_event_id: result_event.event_id,
                parent_execution_id: m.meta.parent_execution_id,
                root_execution_id: m.meta.root_execution_id,
                traceparent: result_event.traceparent(),
                tracestate: m.meta.tracestate.clone(),
                attempt: None,
                retry_reason: None,
            },
        };
        results.push(serde_json::to_value(&result)?);
        events.push(result_event);
    }
    queue::send_batch_with_events(&mut tx, &queue::results_queue(), &results, &events).await?;
    tx.commit().await?;
    if telemetry::enabled() {
        // The children written here first, then the step spans (claim to now), so each step
        // span ends after its children.
        telemetry::export(&events, started);
        for c in done {
            if let Some(ev) = &c.claimed.started_event {
                telemetry::export_step_span(ev, c.claimed.claimed_at, c.outcome.as_ref().err());
            }
        }
    }
    Ok(())
}
