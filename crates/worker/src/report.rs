//! Reporting: `lineq.worker_report` takes a batch of finished steps and, in one transaction,
//! archives the step messages this worker still holds, writes `action_completed|action_failed`
//! and `step_result`, and sends the result messages — so an outcome is either fully reported or
//! not at all (and then the step message reappears and runs again).
//!
//! A delivery the worker no longer holds (the message was handed to someone else, who may have
//! reported first) still gets its `action_*` event — it happened — marked superseded, but no
//! `step_result` and no result message, so a step never has two reported outcomes for one
//! attempt.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::event::{EventType, NewEvent};
use lineq_core::message::{Outcome, StepError};
use lineq_core::telemetry::{self, LineqSpan, SpanShape};
use lineq_core::validation::Namespace;
use opentelemetry::KeyValue;

use crate::claim::Claimed;

/// A finished step, waiting to be reported.
#[derive(Debug)]
pub(crate) struct Completion {
    pub claimed: Claimed,
    pub outcome: std::result::Result<Value, StepError>,
    pub children: Vec<lineq_core::message::ChildRequest>,
    pub duration: Duration,
}

/// Who reports.
pub(crate) struct Reporter<'a> {
    pub worker_id: &'a str,
    pub token: &'a str,
    pub namespace: &'a Namespace,
    pub node_name: &'a str,
}

#[derive(sqlx::FromRow)]
struct Reported {
    msg_id: i64,
    reported: bool,
    action_event_id: Uuid,
    result_event_id: Option<Uuid>,
}

pub(crate) async fn report(pool: &PgPool, who: &Reporter<'_>, done: &[Completion]) -> Result<()> {
    let outcomes: Vec<Value> = done
        .iter()
        .map(|c| {
            let duration_ms = u64::try_from(c.duration.as_millis()).unwrap_or(u64::MAX);
            let mut o = json!({
                "msg_id": c.claimed.msg_id,
                "delivery": c.claimed.delivery,
                "started_event_id": c.claimed.started_event_id,
                "duration_ms": duration_ms,
            });
            match &c.outcome {
                Ok(output) => {
                    o["outcome"] = json!(Outcome::Completed);
                    o["output"] = output.clone();
                    if !c.children.is_empty() {
                        o["children"] = json!(c.children);
                    }
                }
                Err(e) => {
                    o["outcome"] = json!(Outcome::Failed);
                    o["error"] = json!(e);
                }
            }
            o
        })
        .collect();
    let rows: Vec<Reported> =
        sqlx::query_as("SELECT * FROM lineq.worker_report($1, $2, $3, $4, $5)")
            .bind(who.worker_id)
            .bind(who.token)
            .bind(who.namespace.as_str())
            .bind(Value::Array(outcomes))
            .bind(who.node_name)
            .fetch_all(pool)
            .await?;
    for (c, r) in done.iter().zip(&rows).filter(|(_, r)| !r.reported) {
        let m = &c.claimed.message;
        tracing::warn!(correlation_id = %m.meta.correlation_id, execution_id = %m.execution_id,
            step_id = %m.step_id, msg_id = r.msg_id,
            "this delivery is no longer held (delivered again, or reported by another delivery); not reporting its outcome");
    }
    if telemetry::enabled() {
        // Tracing is best-effort: the outcomes are committed whatever happens to their spans.
        if let Err(e) = export_spans(pool, who, done, &rows).await {
            tracing::warn!(error = %e, "cannot export the spans of reported attempts");
        }
    }
    Ok(())
}

/// The span of each reported attempt: from the claim to now, under its step's span, with the
/// attempt's events (`action_started`, `action_completed|action_failed`, `step_result`) as its
/// span events.
///
/// The step's span is named by the step's first `step_enqueued`: for a first attempt that is the
/// message's parent event; a retry's message names the retry's `step_enqueued`, so the first
/// one is looked up.
async fn export_spans(
    pool: &PgPool,
    who: &Reporter<'_>,
    done: &[Completion],
    rows: &[Reported],
) -> Result<()> {
    let end = SystemTime::now();
    let retried: Vec<Uuid> = done
        .iter()
        .filter(|c| c.claimed.message.attempt > 1 && c.claimed.started_event.is_some())
        .map(|c| c.claimed.message.step_id)
        .collect();
    let first = lineq_core::spans::first_enqueued(pool, &retried).await?;
    let mut spans = Vec::with_capacity(done.len());
    for (c, r) in done.iter().zip(rows) {
        let Some(started_event) = &c.claimed.started_event else {
            continue;
        };
        let m = &c.claimed.message;
        let parent = if m.attempt > 1 {
            first.get(&m.step_id).map(|f| f.event_id)
        } else {
            Some(m.meta.parent_event_id)
        };
        spans.push(attempt_span(who, c, r, started_event, parent, end));
    }
    telemetry::export_spans(&spans);
    Ok(())
}

/// The span of one reported attempt, from its claim to `end`, under the step's span `parent`.
fn attempt_span(
    who: &Reporter<'_>,
    c: &Completion,
    r: &Reported,
    started_event: &NewEvent,
    parent: Option<Uuid>,
    end: SystemTime,
) -> LineqSpan {
    let m = &c.claimed.message;
    let parent_event = Some(c.claimed.started_event_id);
    let (action_type, outcome, payload) = action_event(c, r.reported);
    // From the claim; a claim that began before the message was sent (the claim statement
    // sees what commits while it runs) starts with the message.
    let start = c
        .claimed
        .claimed_at
        .max(SystemTime::from(c.claimed.enqueued_at));
    let mut span = LineqSpan::new(
        SpanShape::Attempt,
        started_event.clone(),
        parent,
        start,
        end,
    );
    span.events.push((started_event.clone(), start));
    span.events.push((
        NewEvent::with_id(
            r.action_event_id,
            action_type,
            c.claimed.lineage,
            parent_event,
            who.node_name,
        )
        .step(m.step_id, m.attempt)
        .worker(who.worker_id)
        .payload(payload),
        end,
    ));
    if let Some(result_id) = r.result_event_id {
        span.events.push((
            NewEvent::with_id(
                result_id,
                EventType::StepResult,
                c.claimed.lineage,
                parent_event,
                who.node_name,
            )
            .step(m.step_id, m.attempt)
            .worker(who.worker_id)
            .payload(json!({ "step": m.step, "outcome": outcome })),
            end,
        ));
    }
    span.failure = c
        .outcome
        .as_ref()
        .err()
        .map(|f| (f.kind.clone(), f.message.clone()));
    span.attributes.push(KeyValue::new(
        "outcome",
        match outcome {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
        },
    ));
    if !r.reported {
        span.attributes.push(KeyValue::new("superseded", true));
    }
    span
}

/// The type, outcome and payload of an attempt's `action_completed|action_failed` event.
fn action_event(c: &Completion, reported: bool) -> (EventType, Outcome, Value) {
    let m = &c.claimed.message;
    let duration_ms = u64::try_from(c.duration.as_millis()).unwrap_or(u64::MAX);
    let (action_type, outcome, mut payload) = match &c.outcome {
        Ok(_) => (
            EventType::ActionCompleted,
            Outcome::Completed,
            json!({ "step": m.step, "duration_ms": duration_ms }),
        ),
        Err(e) => (
            EventType::ActionFailed,
            Outcome::Failed,
            json!({ "step": m.step, "duration_ms": duration_ms, "error": e }),
        ),
    };
    payload["superseded"] = json!(!reported);
    (action_type, outcome, payload)
}
