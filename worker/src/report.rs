//! Reporting: for a batch of finished steps, write `action_completed|action_failed` and
//! `step_result`, send the result messages and archive the step messages — in ONE statement
//! (so one transaction, and one round trip), so an outcome is either fully reported or not at
//! all (and then the step message reappears and runs again).
//!
//! The step messages are archived first: a message another delivery already archived (this
//! worker was too slow and the message was handed to someone else, who reported first) still
//! gets its `action_*` event — it happened — but no `step_result` and no result message, so a
//! step never has two reported outcomes for one attempt.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgPool, Row};

use lineq_shared::error::Result;
use lineq_shared::event::{EventColumns, EventType, NewEvent, insert_events_sql};
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
    let held: Vec<i64> = done.iter().map(|c| c.claimed.msg_id).collect();
    // Every event and result is built here; the statement keeps those of archived messages.
    let mut events = Vec::with_capacity(done.len() * 2);
    let mut event_msg = Vec::with_capacity(done.len() * 2);
    let mut only_if_archived = Vec::with_capacity(done.len() * 2);
    let mut results = Vec::with_capacity(done.len());
    let mut result_msg = Vec::with_capacity(done.len());
    for c in done {
        let m = &c.claimed.message;
        let started = Some(c.claimed.started_event_id);
        let duration_ms = u64::try_from(c.duration.as_millis()).unwrap_or(u64::MAX);
        let (action_type, outcome, payload) = match &c.outcome {
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
        let action = NewEvent::new(action_type, c.claimed.lineage, started, node_name)
            .step(m.step_id, m.attempt)
            .worker(worker_id)
            .payload(payload);
        events.push(action);
        event_msg.push(c.claimed.msg_id);
        only_if_archived.push(false);
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
        result_msg.push(c.claimed.msg_id);
        events.push(result_event);
        event_msg.push(c.claimed.msg_id);
        only_if_archived.push(true);
    }

    // One statement, so one implicit transaction and one round trip: archive the step
    // messages; write every `action_*` event, marked `superseded` when its message was no
    // longer there to archive (another delivery reported first); write `step_result` and send
    // the result only for messages this statement archived; wake the orchestrators.
    let sql = format!(
        "WITH {archive},
         ev AS ({events}),
         sent AS (
             INSERT INTO {results} (vt, message)
             SELECT clock_timestamp(), r.body
             FROM unnest($18::jsonb[], $19::bigint[]) WITH ORDINALITY AS r(body, held_msg, ord)
             WHERE r.held_msg IN (SELECT msg_id FROM archived)
             ORDER BY r.ord),
         wake AS MATERIALIZED (SELECT pg_notify($20, $21))
         SELECT archived.msg_id FROM archived, wake",
        archive = queue::archive_ctes(step_queue, "$15"),
        results = queue::live_table(&queue::results_queue()),
        events = insert_events_sql(
            &[
                ("$16::bigint[]", "held_msg"),
                ("$17::bool[]", "only_if_archived")
            ],
            "CASE WHEN u.only_if_archived THEN u.payload
                  ELSE u.payload || jsonb_build_object('superseded',
                                        u.held_msg NOT IN (SELECT msg_id FROM archived)) END",
            "NOT u.only_if_archived OR u.held_msg IN (SELECT msg_id FROM archived)",
        ),
    );
    let cols = EventColumns::new(&events);
    let results_queue = queue::results_queue();
    let archived: HashSet<i64> = cols
        .bind(sqlx::query(&sql))
        .bind(&held)
        .bind(&event_msg)
        .bind(&only_if_archived)
        .bind(&results)
        .bind(&result_msg)
        .bind(queue::wake_channel(&results_queue))
        .bind(results_queue.as_str())
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<std::result::Result<_, _>>()?;
    for c in done
        .iter()
        .filter(|c| !archived.contains(&c.claimed.msg_id))
    {
        let m = &c.claimed.message;
        tracing::warn!(correlation_id = %m.meta.correlation_id, execution_id = %m.execution_id,
            step_id = %m.step_id, msg_id = c.claimed.msg_id,
            "step message was already reported by another delivery; not reporting again");
    }
    if telemetry::enabled() {
        // What was written: the children first, then the step spans (claim to now), so each
        // step span ends after its children.
        let written: Vec<NewEvent> = events
            .into_iter()
            .zip(event_msg.iter().zip(&only_if_archived))
            .filter(|(_, (msg, only))| !**only || archived.contains(msg))
            .map(|(e, _)| e)
            .collect();
        telemetry::export(&written, started);
        for c in done {
            if let Some(ev) = &c.claimed.started_event {
                telemetry::export_step_span(ev, c.claimed.claimed_at, c.outcome.as_ref().err());
            }
        }
    }
    Ok(())
}
