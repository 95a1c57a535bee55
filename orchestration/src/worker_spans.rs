//! The spans of workers that do not export their own.
//!
//! lineq's Rust worker exports the spans of its attempts itself. A worker written in another
//! language against the SQL interface writes the same events (`action_started` at the claim,
//! `action_completed|action_failed` and `step_result` at the report) but exports nothing unless
//! its author wires OpenTelemetry to lineq's derived span ids. Its registration says so
//! (`lineq.workers.exports_spans`), and the orchestrator that reads its results exports those
//! events as spans on its behalf, under the service name it registered: the attempt's span
//! (`action_started`, from the claim to the report) with the report's events as its children,
//! exactly as the Rust worker would have. A handler's own spans, opened under the claim's
//! `traceparent`, nest under that attempt span.

use std::collections::HashMap;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use lineq_shared::error::Result;
use lineq_shared::event::{EventType, Lineage, NewEvent};
use lineq_shared::telemetry::{self, BehalfSpan};

/// A worker-side event of a worker that does not export its spans.
#[derive(sqlx::FromRow)]
struct Row {
    event_id: Uuid,
    parent_event_id: Option<Uuid>,
    execution_id: Uuid,
    step_id: Option<Uuid>,
    parent_execution_id: Option<Uuid>,
    root_execution_id: Uuid,
    correlation_id: Uuid,
    event_type: String,
    node_name: String,
    worker_id: Option<String>,
    attempt: Option<i32>,
    trace_id: String,
    span_id: String,
    payload: Value,
    created_at: DateTime<Utc>,
    service_name: String,
}

/// Exports the spans of the attempts `started` (their `action_started` event ids) that workers
/// which do not export their own ran. Called after the results that name them are committed;
/// does nothing (not even the query) while tracing is off.
pub async fn export(pool: &PgPool, started: &[Uuid]) -> Result<()> {
    if !telemetry::enabled() || started.is_empty() {
        return Ok(());
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT e.event_id, e.parent_event_id, e.execution_id, e.step_id,
                e.parent_execution_id, e.root_execution_id, e.correlation_id, e.event_type,
                e.node_name, e.worker_id, e.attempt, e.trace_id, e.span_id, e.payload,
                e.created_at, coalesce(w.service_name, 'lineq-worker-' || w.language) AS service_name
         FROM lineq.events e
         JOIN lineq.workers w ON w.worker_id = e.worker_id
         WHERE NOT w.exports_spans
           AND (e.event_id = ANY ($1) OR e.parent_event_id = ANY ($1))
           AND e.event_type IN ('action_started', 'action_completed', 'action_failed', 'step_result')
         ORDER BY e.created_at, e.event_id",
    )
    .bind(started)
    .fetch_all(pool)
    .await?;
    for (service, spans) in spans(rows) {
        telemetry::export_on_behalf(&service, &spans);
    }
    Ok(())
}

/// The rows as spans, by service: an `action_started` lasts until the report's first event
/// (or is a moment long when there is none), and carries the failure an `action_failed` child
/// records; the report's events are moments at their time.
fn spans(rows: Vec<Row>) -> HashMap<String, Vec<BehalfSpan>> {
    let events: Vec<(NewEvent, SystemTime, String)> = rows
        .into_iter()
        .filter_map(|r| Some((event(&r)?, SystemTime::from(r.created_at), r.service_name)))
        .collect();
    // Each attempt's end and failure, from its children.
    let mut ends: HashMap<Uuid, (SystemTime, Option<(String, String)>)> = HashMap::new();
    for (e, at, _) in &events {
        let Some(parent) = e
            .parent_event_id
            .filter(|_| e.event_type != EventType::ActionStarted)
        else {
            continue;
        };
        let end = ends.entry(parent).or_insert((*at, None));
        end.0 = end.0.min(*at);
        if let Some(f) = telemetry::failure_of(e) {
            end.1 = Some(f);
        }
    }
    let mut by_service: HashMap<String, Vec<BehalfSpan>> = HashMap::new();
    for (event, start, service) in events {
        let (end, failure) = match event.event_type {
            EventType::ActionStarted => ends.get(&event.event_id).cloned().unwrap_or((start, None)),
            _ => (start, None),
        };
        by_service.entry(service).or_default().push(BehalfSpan {
            event,
            start,
            end,
            failure,
        });
    }
    by_service
}

/// The row as the event it stores, with the trace and span ids the row holds.
fn event(r: &Row) -> Option<NewEvent> {
    let lineage = Lineage {
        execution_id: r.execution_id,
        parent_execution_id: r.parent_execution_id,
        root_execution_id: r.root_execution_id,
        correlation_id: r.correlation_id,
        trace_correlation_id: r.correlation_id,
    };
    let mut e = NewEvent::with_id(
        r.event_id,
        EventType::parse(&r.event_type)?,
        lineage,
        r.parent_event_id,
        &r.node_name,
    )
    .payload(r.payload.clone());
    if let Some(step_id) = r.step_id {
        e = e.step(step_id, r.attempt.unwrap_or(1));
    }
    if let Some(w) = &r.worker_id {
        e = e.worker(w);
    }
    e.trace_id.clone_from(&r.trace_id);
    e.span_id.clone_from(&r.span_id);
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(event_type: &str, id: Uuid, parent: Option<Uuid>, at_ms: i64, payload: Value) -> Row {
        Row {
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
            trace_id: "0123456789abcdef0123456789abcdef".into(),
            span_id: format!("{:016x}", id.as_u128() as u64),
            payload,
            created_at: DateTime::<Utc>::from_timestamp_millis(at_ms).expect("a time"),
            service_name: "billing-python".into(),
        }
    }

    #[test]
    fn an_attempt_lasts_from_its_claim_to_its_report_and_carries_its_failure() {
        let started = Uuid::now_v7();
        let failed = Uuid::now_v7();
        let result = Uuid::now_v7();
        let by_service = spans(vec![
            row(
                "action_started",
                started,
                Some(Uuid::now_v7()),
                1_000,
                json!({}),
            ),
            row(
                "action_failed",
                failed,
                Some(started),
                1_250,
                json!({"error": {"kind": "handler_error", "message": "card declined"}}),
            ),
            row("step_result", result, Some(started), 1_251, json!({})),
        ]);
        let spans = &by_service["billing-python"];
        assert_eq!(spans.len(), 3);
        let attempt = &spans[0];
        assert_eq!(attempt.event.event_type, EventType::ActionStarted);
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
        assert_eq!((ms(spans[2].start), ms(spans[2].end)), (1_251, 1_251));
    }
}
