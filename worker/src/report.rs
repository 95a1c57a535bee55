//! Reporting: `lineq.worker_report` takes a batch of finished steps and, in one transaction,
//! archives the step messages this worker still holds, writes `action_completed|action_failed`
//! and `step_result`, and sends the result messages — so an outcome is either fully reported or
//! not at all (and then the step message reappears and runs again).
//!
//! A delivery the worker no longer holds (the message was handed to someone else, who may have
//! reported first) still gets its `action_*` event — it happened — marked superseded, but no
//! `step_result` and no result message, so a step never has two reported outcomes for one
//! attempt.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use lineq_shared::error::Result;
use lineq_shared::event::{EventType, NewEvent};
use lineq_shared::message::{Outcome, StepError};
use lineq_shared::telemetry;
use lineq_shared::validation::Namespace;

use crate::claim::Claimed;

/// A finished step, waiting to be reported.
#[derive(Debug)]
pub(crate) struct Completion {
    pub claimed: Claimed,
    pub outcome: std::result::Result<Value, StepError>,
    pub children: Vec<lineq_shared::message::ChildRequest>,
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
    let started = telemetry::start();
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
        export_spans(who, done, &rows, started);
    }
    Ok(())
}

/// The spans of what was written: the events first, then the step spans (claim to now), so
/// each step span ends after its children.
fn export_spans(
    who: &Reporter<'_>,
    done: &[Completion],
    rows: &[Reported],
    started: telemetry::Started,
) {
    let mut written = Vec::with_capacity(rows.len() * 2);
    for (c, r) in done.iter().zip(rows) {
        let m = &c.claimed.message;
        let parent = Some(c.claimed.started_event_id);
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
        payload["superseded"] = json!(!r.reported);
        written.push(
            NewEvent::with_id(
                r.action_event_id,
                action_type,
                c.claimed.lineage,
                parent,
                who.node_name,
            )
            .step(m.step_id, m.attempt)
            .worker(who.worker_id)
            .payload(payload),
        );
        if let Some(result_id) = r.result_event_id {
            written.push(
                NewEvent::with_id(
                    result_id,
                    EventType::StepResult,
                    c.claimed.lineage,
                    parent,
                    who.node_name,
                )
                .step(m.step_id, m.attempt)
                .worker(who.worker_id)
                .payload(json!({ "step": m.step, "outcome": outcome })),
            );
        }
    }
    telemetry::export(&written, started);
    for c in done {
        if let Some(ev) = &c.claimed.started_event {
            telemetry::export_step_span(ev, c.claimed.claimed_at, c.outcome.as_ref().err());
        }
    }
}
