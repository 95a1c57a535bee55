//! The span model and the pipeline, checked against an in-process exporter.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use super::*;
use crate::event::Lineage;
use crate::ids::new_id;
use opentelemetry_sdk::error::OTelSdkResult;
use serde_json::json;
use std::sync::Mutex;

/// Collects finished spans.
#[derive(Debug, Default)]
struct Collect(Mutex<Vec<SpanData>>);

impl SpanProcessor for Collect {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
    fn on_end(&self, span: SpanData) {
        self.0.lock().unwrap().push(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn lineage(root_corr: Uuid) -> Lineage {
    Lineage {
        execution_id: new_id(),
        parent_execution_id: Some(new_id()),
        root_execution_id: new_id(),
        correlation_id: new_id(),
        trace_correlation_id: root_corr,
    }
}

fn attr(s: &SpanData, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn pipeline_with(sampler: opentelemetry_sdk::trace::Sampler) -> (Pipeline, Arc<Collect>) {
    let sink = Arc::new(Collect::default());
    (
        Pipeline {
            sink: sink.clone(),
            sampler: Box::new(sampler),
            scope: scope(),
            provider: None,
            service_name: "lineq-test".into(),
            make_sink: None,
            others: std::sync::Mutex::new(HashMap::new()),
        },
        sink,
    )
}

fn span_attr(s: &SpanData, key: &str) -> Option<String> {
    attr(s, key)
}

#[test]
fn a_span_has_the_ids_its_opening_events_row_stores_and_every_event_as_a_span_event() {
    let corr = new_id();
    let l = lineage(corr);
    let enqueued = NewEvent::new(EventType::StepEnqueued, l, None, "n")
        .step(new_id(), 1)
        .payload(json!({"step": "charge", "handler": "flaky", "queue": "q", "msg_id": 7}));
    let started = NewEvent::new(EventType::ActionStarted, l, Some(enqueued.event_id), "n")
        .step(enqueued.step_id.unwrap(), 2)
        .worker("w1")
        .payload(
            json!({"step": "charge", "handler": "flaky", "queue": "q", "msg_id": 7,
                        "delivery": 1}),
        );
    let failed = NewEvent::new(EventType::ActionFailed, l, Some(started.event_id), "n")
        .step(enqueued.step_id.unwrap(), 2)
        .worker("w1")
        .payload(json!({"step": "charge", "error": {"kind": "flaky", "message": "nope"}}));
    let t0 = SystemTime::now();
    let t1 = t0 + Duration::from_millis(5);
    let mut span = LineqSpan::new(
        SpanShape::Attempt,
        started.clone(),
        Some(enqueued.event_id),
        t0,
        t1,
    );
    span.events = vec![(started.clone(), t0), (failed.clone(), t1)];
    span.failure = failure_of(&failed);
    span.links = vec![(enqueued.event_id, vec![KeyValue::new("step", "x")])];
    let s = span_data(&span, scope());
    assert_eq!(format!("{}", s.span_context.trace_id()), started.trace_id);
    assert_eq!(
        format!("{}", s.span_context.trace_id()),
        corr.simple().to_string()
    );
    assert_eq!(format!("{}", s.span_context.span_id()), started.span_id);
    assert_eq!(span.span_id_hex(), started.span_id);
    assert_eq!(format!("{}", s.parent_span_id), enqueued.span_id);
    assert!(s.parent_span_is_remote);
    assert_eq!(s.span_kind, SpanKind::Consumer);
    assert_eq!(s.name, "attempt charge");
    assert_eq!(span_attr(&s, "lineq.span").as_deref(), Some("attempt"));
    assert_eq!(span_attr(&s, "worker_id").as_deref(), Some("w1"));
    assert_eq!(span_attr(&s, "attempt").as_deref(), Some("2"));
    assert_eq!(span_attr(&s, "msg_id").as_deref(), Some("7"));
    assert_eq!(span_attr(&s, "delivery").as_deref(), Some("1"));
    assert_eq!(span_attr(&s, "handler").as_deref(), Some("flaky"));
    assert_eq!(
        span_attr(&s, "event_id"),
        Some(started.event_id.to_string())
    );
    assert_eq!(
        span_attr(&s, "parent_execution_id"),
        l.parent_execution_id.map(|u| u.to_string())
    );
    assert_eq!(s.status, Status::error("nope"));
    let names: Vec<&str> = s.events.events.iter().map(|e| e.name.as_ref()).collect();
    assert_eq!(names, ["action_started", "action_failed", "exception"]);
    let ev = &s.events.events[1];
    let ev_attr = |k: &str| {
        ev.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(ev_attr("event_id"), Some(failed.event_id.to_string()));
    assert_eq!(
        ev_attr("parent_event_id"),
        Some(started.event_id.to_string())
    );
    // The event's type is its name, not repeated as an attribute.
    assert_eq!(ev.name, "action_failed");
    assert_eq!(ev_attr("event_type"), None);
    assert_eq!(ev_attr("error.message").as_deref(), Some("nope"));
    assert_eq!(ev.timestamp, t1);
    assert_eq!(s.links.links.len(), 1);
    assert_eq!(
        format!("{}", s.links.links[0].span_context.span_id()),
        enqueued.span_id
    );
    assert_eq!(
        s.end_time.duration_since(s.start_time).unwrap(),
        Duration::from_millis(5)
    );
}

#[test]
fn failures_are_found_in_payloads_and_roots_have_no_parent() {
    let corr = new_id();
    let l = lineage(corr);
    let root = NewEvent::new(EventType::ExecutionStarted, l, None, "n")
        .payload(json!({"workflow": "order"}));
    let failed = NewEvent::new(EventType::ExecutionFailed, l, Some(root.event_id), "n").payload(
        json!({"status": "failed", "error": {"step": "s", "error": {"kind": "k", "message": "deep"}}}),
    );
    let now = SystemTime::now();
    let mut span = LineqSpan::new(SpanShape::Execution, root.clone(), None, now, now);
    span.failure = failure_of(&failed);
    let s = span_data(&span, scope());
    assert_eq!(s.parent_span_id, SpanId::INVALID);
    assert!(!s.parent_span_is_remote);
    assert_eq!(s.name, "execution order");
    assert_eq!(s.status, Status::error("deep"));
    let ex = &s.events.events[0];
    assert!(
        ex.attributes
            .iter()
            .any(|kv| kv.key.as_str() == "exception.type" && kv.value.to_string() == "k")
    );
}

#[test]
fn sampling_is_decided_per_trace() {
    let (p, _sink) = pipeline_with(opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(0.5));
    let mut kept = 0;
    // Ids made back to back (one millisecond, one UUIDv7 counter run) must still be sampled
    // independently, and the same way every time.
    for _ in 0..256 {
        let t = TraceId::from_bytes(*new_id().as_bytes());
        let first = p.sampled(t);
        assert_eq!(
            first,
            p.sampled(t),
            "a trace is exported whole or not at all"
        );
        kept += usize::from(first);
    }
    assert!(
        (64..=192).contains(&kept),
        "ratio 0.5 kept {kept} of 256 traces"
    );
}

#[test]
fn off_means_nothing_happens() {
    assert!(!enabled());
    let l = lineage(new_id());
    let e = NewEvent::new(EventType::ExecutionStarted, l, None, "n");
    let now = SystemTime::now();
    export_spans(&[LineqSpan::new(SpanShape::Execution, e, None, now, now)]);
    assert_eq!(spans_exported(), 0);
    assert!(handler_context("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_none());
}

#[test]
fn trace_id_of_a_correlation_id_is_its_hex() {
    let c = new_id();
    assert_eq!(trace_id_hex(c), c.simple().to_string());
}
