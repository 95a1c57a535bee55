//! Claiming: `lineq.worker_claim` reads a batch of step messages and records `action_started`
//! for every one of them in the same transaction, so a claim and its evidence commit together.
//! Messages that cannot be run are dead-lettered there, with the reason; one that the database
//! accepted but this worker cannot parse is handed back with `lineq.worker_reject`.

use std::time::SystemTime;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::event::{EventType, Lineage, NewEvent};
use lineq_core::message::StepMessage;
use lineq_core::telemetry;
use lineq_core::validation::{Namespace, QueueName};

/// A message this worker holds, with its `action_started` event.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub msg_id: i64,
    pub delivery: i32,
    pub message: StepMessage,
    pub lineage: Lineage,
    pub started_event_id: Uuid,
    pub traceparent: String,
    /// When the claim began: the start of the attempt's span.
    pub claimed_at: SystemTime,
    /// When the message was sent (for the pickup-latency metric).
    pub enqueued_at: chrono::DateTime<chrono::Utc>,
    /// The `action_started` event, kept while tracing is on: it names the attempt's span, exported
    /// when the outcome is reported (report.rs).
    pub started_event: Option<NewEvent>,
}

/// What a claim returned.
pub(crate) struct ClaimBatch {
    pub claimed: Vec<Claimed>,
    /// How many messages the claim returned (what it dead-lettered is not among them).
    pub read: usize,
}

pub(crate) struct ClaimParams<'a> {
    pub namespace: &'a Namespace,
    pub queue: &'a QueueName,
    pub visibility_timeout_secs: i32,
    pub qty: i32,
    pub worker_id: &'a str,
    pub token: &'a str,
    pub node_name: &'a str,
    /// A message read more often than this (workers keep dying on it) is dead-lettered.
    pub max_deliveries: i32,
    /// The handlers this worker serves: it claims only their steps.
    pub handlers: &'a [String],
}

#[derive(sqlx::FromRow)]
struct Row {
    msg_id: i64,
    delivery: i32,
    enqueued_at: chrono::DateTime<chrono::Utc>,
    message: String,
    started_event_id: Uuid,
    traceparent: String,
}

pub(crate) async fn claim(pool: &PgPool, p: ClaimParams<'_>) -> Result<ClaimBatch> {
    let claimed_at = SystemTime::now();
    let rows: Vec<Row> =
        sqlx::query_as("SELECT * FROM lineq.worker_claim($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(p.worker_id)
            .bind(p.token)
            .bind(p.namespace.as_str())
            .bind(p.qty)
            .bind(p.visibility_timeout_secs)
            .bind(p.max_deliveries)
            .bind(p.handlers)
            .bind(p.node_name)
            .fetch_all(pool)
            .await?;
    // Messages the claim dead-lettered are not counted: a claim of only those looks like an
    // empty queue, and the loop waits for the next wake-up or poll.
    let read = rows.len();
    let mut claimed = Vec::with_capacity(read);
    for r in rows {
        let message = match parse(&r.message) {
            Ok(m) => m,
            Err(reason) => {
                tracing::warn!(queue = %p.queue, msg_id = r.msg_id, %reason,
                    "dead-lettering a step message this worker cannot parse");
                sqlx::query("SELECT lineq.worker_reject($1, $2, $3, $4, $5, $6)")
                    .bind(p.worker_id)
                    .bind(p.token)
                    .bind(p.namespace.as_str())
                    .bind(r.msg_id)
                    .bind(&reason)
                    .bind(p.node_name)
                    .execute(pool)
                    .await?;
                continue;
            }
        };
        let trace = lineq_core::trace_context::TraceContext::parse(&r.traceparent)
            .map(|tc| Uuid::from_bytes(tc.trace_id))
            .unwrap_or(message.meta.correlation_id);
        let lineage = Lineage {
            execution_id: message.execution_id,
            parent_execution_id: message.meta.parent_execution_id,
            root_execution_id: message.meta.root_execution_id,
            correlation_id: message.meta.correlation_id,
            // The trace id is the root's correlation id (see lineq_core::trace_context).
            trace_correlation_id: trace,
        };
        let started_event = telemetry::enabled().then(|| {
            NewEvent::with_id(
                r.started_event_id,
                EventType::ActionStarted,
                lineage,
                Some(message.meta.parent_event_id),
                p.node_name,
            )
            .step(message.step_id, message.attempt)
            .worker(p.worker_id)
            .payload(json!({
                "step": message.step, "handler": message.handler, "queue": p.queue.as_str(),
                "msg_id": r.msg_id, "delivery": r.delivery,
            }))
        });
        claimed.push(Claimed {
            msg_id: r.msg_id,
            delivery: r.delivery,
            lineage,
            started_event_id: r.started_event_id,
            traceparent: r.traceparent,
            claimed_at,
            enqueued_at: r.enqueued_at,
            started_event,
            message,
        });
    }
    Ok(ClaimBatch { claimed, read })
}

/// Parses a message the database already checked: what it cannot check (an input nested
/// deeper than serde's limit, say) fails here.
fn parse(text: &str) -> std::result::Result<StepMessage, String> {
    let body: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("message body: {e}"))?;
    let msg = StepMessage::parse(Some(&body)).map_err(|e| e.to_string())?;
    Ok(msg)
}
