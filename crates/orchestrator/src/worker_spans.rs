//! The spans of workers that do not export their own.
//!
//! lineq's Rust worker exports the spans of its attempts itself. A worker written in another
//! language against the SQL interface writes the same events (`action_started` at the claim,
//! `action_completed|action_failed` and `step_result` at the report) but exports nothing unless
//! its author wires OpenTelemetry to lineq's derived span ids. Its registration says so
//! (`lineq.workers.exports_spans`), and the orchestrator that reads its results exports those
//! events as spans on its behalf, under the service name it registered: the attempt's span
//! (named by `action_started`, from the claim to the report, under its step's span) with the
//! report's events as its span events, exactly as the Rust worker would have. A handler's own spans, opened under the claim's
//! `traceparent`, nest under that attempt span.

use std::collections::HashMap;
use std::time::SystemTime;

use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::event::EventType;
use lineq_core::spans::{STORED_EVENT_COLUMNS, StoredEvent, first_enqueued};
use lineq_core::telemetry::{self, KeyValue, LineqSpan, SpanShape};

/// A worker-side event of a worker that does not export its spans, with that worker's service.
#[derive(sqlx::FromRow)]
struct Row {
    #[sqlx(flatten)]
    event: StoredEvent,
    service_name: String,
}

/// Exports the spans of the attempts `started` (their `action_started` event ids) that workers
/// which do not export their own ran. Called after the results that name them are committed;
/// does nothing (not even the query) while tracing is off.
pub async fn export(pool: &PgPool, started: &[Uuid]) -> Result<()> {
    if !telemetry::enabled() || started.is_empty() {
        return Ok(());
    }
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {STORED_EVENT_COLUMNS},
                coalesce(w.service_name, 'lineq-worker-' || w.language) AS service_name
         FROM lineq.events e
         JOIN lineq.workers w ON w.worker_id = e.worker_id
         WHERE NOT w.exports_spans
           AND (e.event_id = ANY ($1) OR e.parent_event_id = ANY ($1))
           AND e.event_type IN ('action_started', 'action_completed', 'action_failed', 'step_result')
         ORDER BY e.created_at, e.event_id"
    ))
    .bind(started)
    .fetch_all(pool)
    .await?;
    // The steps' spans, parents of the attempts'.
    let steps: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.event.event_type == EventType::ActionStarted.as_str())
        .filter_map(|r| r.event.step_id)
        .collect();
    let parents: HashMap<Uuid, Uuid> = first_enqueued(pool, &steps)
        .await?
        .into_iter()
        .map(|(s, e)| (s, e.event_id))
        .collect();
    telemetry::export_spans(&spans(rows, &parents));
    Ok(())
}

/// The rows as attempt spans: each `action_started` lasts until the report's first event (or
/// is a moment long when there is none), holds the report's events, and carries the failure an
/// `action_failed` records; its parent is its step's span (`parents`: step → the event naming
/// it).
fn spans(rows: Vec<Row>, parents: &HashMap<Uuid, Uuid>) -> Vec<LineqSpan> {
    let mut attempts: Vec<LineqSpan> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    let mut later = Vec::new();
    for r in rows {
        let Some(e) = r.event.event() else { continue };
        let at: SystemTime = r.event.at();
        if e.event_type == EventType::ActionStarted {
            let parent = e.step_id.and_then(|s| parents.get(&s).copied());
            let mut span = LineqSpan::new(SpanShape::Attempt, e.clone(), parent, at, at);
            span.events.push((e.clone(), at));
            span.service = Some(r.service_name);
            index.insert(e.event_id, attempts.len());
            attempts.push(span);
        } else {
            later.push((e, at));
        }
    }
    for (e, at) in later {
        let Some(span) = e
            .parent_event_id
            .and_then(|p| index.get(&p))
            .map(|i| &mut attempts[*i])
        else {
            continue;
        };
        match e.event_type {
            EventType::ActionCompleted | EventType::ActionFailed => {
                span.end = if span.events.len() == 1 {
                    at
                } else {
                    span.end.min(at)
                };
                span.failure = telemetry::failure_of(&e);
                span.attributes.push(KeyValue::new(
                    "outcome",
                    if e.event_type == EventType::ActionFailed {
                        "failed"
                    } else {
                        "completed"
                    },
                ));
            }
            _ => {}
        }
        span.end = span.end.max(span.start);
        span.events.push((e, at));
    }
    attempts
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use serde_json::{Value, json};

    fn row(event_type: &str, id: Uuid, parent: Option<Uuid>, at_ms: i64, payload: Value) -> Row {
        Row {
            event: StoredEvent {
                event_id: id,
                parent_event_id: parent,
                execution_id: Uuid::nil(),
                step_id: Some(Uuid::nil()),
                parent_execution_id: None,
                root_execution_id: Uuid::nil(),
                correlation_id: Uuid::nil(),
                event_type: event_type.into(),
                node_name: "host".into(),
                worker_id: Some("py-1".into()),
                attempt: Some(1),
                trace_id: Some("0123456789abcdef0123456789abcdef".into()),
                span_id: Some(format!("{:016x}", id.as_u128() as u64)),
                payload,
                created_at: DateTime::<Utc>::from_timestamp_millis(at_ms).expect("a time"),
            },
            service_name: "billing-python".into(),
        }
    }

    #[test]
    fn an_attempt_lasts_from_its_claim_to_its_report_and_holds_its_events() {
        let enqueued = Uuid::now_v7();
        let started = Uuid::now_v7();
        let failed = Uuid::now_v7();
        let result = Uuid::now_v7();
        let spans = spans(
            vec![
                row("action_started", started, Some(enqueued), 1_000, json!({})),
                row(
                    "action_failed",
                    failed,
                    Some(started),
                    1_250,
                    json!({"error": {"kind": "handler_error", "message": "card declined"}}),
                ),
                row("step_result", result, Some(started), 1_251, json!({})),
            ],
            &HashMap::from([(Uuid::nil(), enqueued)]),
        );
        assert_eq!(spans.len(), 1);
        let attempt = &spans[0];
        assert_eq!(attempt.event.event_type, EventType::ActionStarted);
        assert_eq!(attempt.parent, Some(enqueued));
        assert_eq!(attempt.service.as_deref(), Some("billing-python"));
        let ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis()
        };
        assert_eq!((ms(attempt.start), ms(attempt.end)), (1_000, 1_250));
        assert_eq!(
            attempt.failure,
            Some(("handler_error".into(), "card declined".into()))
        );
        assert_eq!(attempt.event.trace_id, "0123456789abcdef0123456789abcdef");
        let kinds: Vec<EventType> = attempt.events.iter().map(|(e, _)| e.event_type).collect();
        assert_eq!(
            kinds,
            [
                EventType::ActionStarted,
                EventType::ActionFailed,
                EventType::StepResult
            ]
        );
    }
}
