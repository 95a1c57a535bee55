//! Claiming: read a batch of step messages and record `action_started` for every one of them in
//! the same transaction, so a claim and its evidence commit together. Messages that cannot be
//! understood are dead-lettered in that transaction, with the reason.

use std::time::SystemTime;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use lineq_shared::error::Result;
use lineq_shared::event::{EventType, Lineage, NewEvent, insert_events};
use lineq_shared::message::StepMessage;
use lineq_shared::queue;
use lineq_shared::telemetry;
use lineq_shared::validation::QueueName;

/// A message this worker holds, with its `action_started` event.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub msg_id: i64,
    pub delivery: i32,
    pub message: StepMessage,
    pub lineage: Lineage,
    pub started_event_id: Uuid,
    pub traceparent: String,
    /// When the claim began: the start of the step's span.
    pub claimed_at: SystemTime,
    /// When the message was sent (for the pickup-latency metric).
    pub enqueued_at: chrono::DateTime<chrono::Utc>,
    /// The `action_started` event, kept while tracing is on: it is exported as the step's span
    /// when the outcome is reported (report.rs).
    pub started_event: Option<NewEvent>,
}

/// What a claim returned.
pub(crate) struct ClaimBatch {
    pub claimed: Vec<Claimed>,
    pub read: usize,
}

pub(crate) struct ClaimParams<'a> {
    pub queue: &'a QueueName,
    pub visibility_timeout_secs: i32,
    pub qty: i32,
    pub worker_id: &'a str,
    pub node_name: &'a str,
    /// A message read more often than this (workers keep dying on it) is dead-lettered.
    pub max_deliveries: i32,
}

pub(crate) async fn claim(pool: &PgPool, p: ClaimParams<'_>) -> Result<ClaimBatch> {
    let started = telemetry::start();
    let claimed_at = SystemTime::now();
    let mut tx = pool.begin().await?;
    let msgs = queue::read(&mut *tx, p.queue, p.visibility_timeout_secs, p.qty).await?;
    let read = msgs.len();
    let mut claimed = Vec::with_capacity(read);
    let mut events = Vec::with_capacity(read);
    for m in &msgs {
        let parsed = m
            .json()
            .and_then(|body| StepMessage::parse(body.as_ref()))
            .and_then(|msg| {
                let tc = msg.meta.check()?;
                Ok((msg, tc))
            });
        let (message, tc) = match parsed {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(queue = %p.queue, msg_id = m.msg_id, reason = %e,
                    "dead-lettering malformed step message");
                queue::dead_letter(&mut tx, p.queue, m, &e.to_string(), None).await?;
                continue;
            }
        };
        let lineage = Lineage {
            execution_id: message.execution_id,
            parent_execution_id: message.meta.parent_execution_id,
            root_execution_id: message.meta.root_execution_id,
            correlation_id: message.meta.correlation_id,
            // The trace id is the root's correlation id (see lineq_shared::trace_context).
            trace_correlation_id: Uuid::from_bytes(tc.trace_id),
        };
        if m.read_ct > p.max_deliveries {
            let reason = format!(
                "delivered {} times without a reported outcome (limit {}): it may crash or hang every worker that runs it",
                m.read_ct, p.max_deliveries
            );
            let event = NewEvent::new(
                EventType::MessageDeadLettered,
                lineage,
                Some(message.meta.parent_event_id),
                p.node_name,
            )
            .step(message.step_id, message.attempt)
            .worker(p.worker_id)
            .payload(
                json!({ "step": message.step, "queue": p.queue.as_str(), "msg_id": m.msg_id,
                             "reason": reason }),
            );
            tracing::warn!(correlation_id = %message.meta.correlation_id,
                execution_id = %message.execution_id, queue = %p.queue, msg_id = m.msg_id,
                %reason, "dead-lettering poison message");
            queue::dead_letter(&mut tx, p.queue, m, &reason, Some(event.event_id)).await?;
            events.push(event);
            continue;
        }
        let event = NewEvent::new(
            EventType::ActionStarted,
            lineage,
            Some(message.meta.parent_event_id),
            p.node_name,
        )
        .step(message.step_id, message.attempt)
        .worker(p.worker_id)
        .payload(json!({
            "step": message.step, "handler": message.handler, "queue": p.queue.as_str(),
            "msg_id": m.msg_id, "delivery": m.read_ct,
        }));
        claimed.push(Claimed {
            msg_id: m.msg_id,
            delivery: m.read_ct,
            lineage,
            started_event_id: event.event_id,
            traceparent: event.traceparent(),
            claimed_at,
            enqueued_at: m.enqueued_at,
            started_event: telemetry::enabled().then(|| event.clone()),
            message,
        });
        events.push(event);
    }
    insert_events(&mut tx, &events).await?;
    tx.commit().await?;
    if telemetry::enabled() {
        // Claims become spans when their outcome is reported; dead letters end here.
        let dead: Vec<NewEvent> = events
            .into_iter()
            .filter(|e| e.event_type == EventType::MessageDeadLettered)
            .collect();
        telemetry::export(&dead, started);
    }
    Ok(ClaimBatch { claimed, read })
}
