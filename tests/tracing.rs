//! Tracing through real processes: an OTLP receiver runs in the test; an orchestrator and two
//! workers run as `lineq` processes pointed at it; an order-like workflow (a retry, a fan-out, a
//! fan-in, a child execution, a handler with a span of its own) runs through them. What arrives
//! must read as the execution's story: one trace per root execution (its id the root's
//! correlation id), a span per execution, per step and per attempt, the handler's own span under
//! its attempt, every lineage event as a span event, the fan-in's links — at most 4 deep outside
//! the child execution — and it must arrive when the processes are stopped with SIGTERM.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{Value, json};
use uuid::Uuid;

use lineq_core::event::EventRow;
use lineq_core::execution::{ExecutionStatus, get_execution};
use lineq_orchestrator::workflow::store;
use lineq_orchestrator::workflow::{RetryPolicy, StepDefinition, WorkflowDefinition};
use lineq_testkit::*;

/// A span as received, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    span: Span,
}

/// An OTLP receiver on 127.0.0.1: gRPC (the collector's TraceService) or HTTP/protobuf
/// (`POST /v1/traces`). Counts the connections it accepts.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
    connections: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<Got>>>);

impl Sink {
    fn record(&self, req: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().expect("spans");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .map(value_text)
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Got {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.record(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Listens on `addr` (port 0: any free port).
    async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(addr).await
    }

    /// A gRPC receiver.
    async fn grpc(listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let incoming = futures::stream::unfold(listener, move |l| {
            let counted = counted.clone();
            async move {
                let accepted = l.accept().await.map(|(s, _)| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    s
                });
                Some((accepted, l))
            }
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = TraceServiceServer::new(Sink(spans.clone()));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            spans,
            connections,
            stop: Some(tx),
        }
    }

    /// An HTTP/protobuf receiver: `POST /v1/traces` with an `ExportTraceServiceRequest`.
    async fn http(listener: tokio::net::TcpListener) -> Self {
        use axum::body::Bytes;
        use prost::Message;
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(spans.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let sink = sink.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(req) => {
                            sink.record(req);
                            let body = ExportTraceServiceResponse {
                                partial_success: None,
                            }
                            .encode_to_vec();
                            (
                                axum::http::StatusCode::OK,
                                [("content-type", "application/x-protobuf")],
                                body,
                            )
                        }
                        Err(_) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            [("content-type", "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            spans,
            connections: Arc::new(AtomicUsize::new(0)),
            stop: Some(tx),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().expect("spans").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn value_text(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(value_text)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every OTEL_* variable removed, then `vars` set: the test decides alone what is configured.
fn otel_env(cmd: &mut Command, vars: &[(&str, &str)]) {
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
}

/// Every event of the tree of `root`, children included.
async fn events_of_tree(db: &TestDb, root: Uuid) -> Vec<EventRow> {
    sqlx::query_as(
        r#"SELECT e.event_id, e.parent_event_id, e.execution_id, e.step_id, s.name AS step_name,
                  e.parent_execution_id, e.root_execution_id, e.correlation_id, e.event_type,
                  e.node_name, e.worker_id, e.attempt, e.trace_id, e.span_id, e.payload, e.created_at
           FROM lineq.events e LEFT JOIN lineq.steps s ON s.step_id = e.step_id
           WHERE e.root_execution_id = $1 ORDER BY e.created_at, e.event_id"#,
    )
    .bind(root)
    .fetch_all(&db.pool)
    .await
    .expect("events")
}

/// Submits `target` through a `lineq submit` process (so the submission's spans are exported
/// by it), returning the execution id.
fn submit(db: &TestDb, target: &str, input: &str, env: &[(&str, &str)]) -> Uuid {
    let out = lineq_with(
        &db.url,
        &["submit", target, "--input", input, "--format", "json"],
        |c| otel_env(c, env),
    );
    assert!(out.status.success(), "submit failed: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("submit json");
    let id = v["execution"]["execution_id"]
        .as_str()
        .or_else(|| v["execution_id"].as_str())
        .unwrap_or_else(|| panic!("no execution id in {v}"));
    Uuid::parse_str(id).expect("uuid")
}

/// Whether `pid` runs the SDK's batch span processor thread (Linux names threads in
/// /proc/PID/task/*/comm, cut to 15 bytes): proof that an exporter exists in that process.
fn has_exporter_thread(pid: u32) -> Option<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "OpenTelemetry.T")
    }))
}

/// An order, as the README's: `price` (a handler with a span of its own) and `reserve` (fails
/// once, then succeeds on its retry) in parallel, `charge` once both are done (a fan-in) starting
/// a child execution it waits for, then `receipt`.
fn traced_workflow() -> WorkflowDefinition {
    WorkflowDefinition::new("traced")
        .step(StepDefinition::new("price", "sleep").params(json!({"ms": 30})))
        .step(
            StepDefinition::new("reserve", "flaky")
                .retry(RetryPolicy {
                    max_attempts: 2,
                    backoff_ms: 50,
                    max_backoff_ms: 100,
                    ..Default::default()
                })
                .params(json!({"fail_attempts": 1})),
        )
        .step(
            StepDefinition::new("charge", "spawn")
                .depends_on(["price", "reserve"])
                .params(json!({"children": [{"target": "echo", "input": {}}], "wait": true})),
        )
        .step(StepDefinition::new("receipt", "echo").depends_on(["charge"]))
}

/// The attribute `key` of a span event.
fn event_attr(e: &opentelemetry_proto::tonic::trace::v1::span::Event, key: &str) -> Option<String> {
    e.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(value_text)
}

/// The span id of the span that `event_type` of `step_id` (or of the execution, with `None`)
/// opened: the span id its row stores.
fn opening_span(
    events: &[EventRow],
    event_type: &str,
    execution: Uuid,
    step: Option<Uuid>,
) -> String {
    events
        .iter()
        .filter(|e| e.event_type == event_type && e.execution_id == execution)
        .find(|e| step.is_none() || e.step_id == step)
        .and_then(|e| e.span_id.clone())
        .unwrap_or_else(|| panic!("no {event_type} of {execution} / {step:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_root_execution_is_one_trace_that_reads_as_its_story() {
    let receiver = Receiver::grpc(Receiver::listen("127.0.0.1:0").await.expect("bind")).await;
    let endpoint = receiver.endpoint();
    let db = TestDb::new().await;
    store::register(&db.pool, &traced_workflow())
        .await
        .expect("register");

    // A schedule delay far longer than the test: nothing leaves the long-running processes
    // until they flush at SIGTERM.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ];
    let mut procs = vec![Proc::start_with(
        &db.url,
        "orchestrator",
        &["orchestrator", "--poll-interval-ms", "100"],
        |c| otel_env(c, &env),
    )];
    for (i, id) in ["tw-1", "tw-2"].iter().enumerate() {
        procs.push(Proc::start_with(
            &db.url,
            &format!("worker{i}"),
            &["worker", "--poll-interval-ms", "100", "--worker-id", id],
            |c| otel_env(c, &env),
        ));
    }

    let out = lineq_with(
        &db.url,
        &[
            "submit",
            "traced",
            "--input",
            r#"{"amount": 5}"#,
            "--tag",
            "customer=acme",
            "--format",
            "json",
        ],
        |c| otel_env(c, &env),
    );
    assert!(out.status.success(), "submit failed: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("submit json");
    let root = v["execution"]["execution_id"]
        .as_str()
        .or_else(|| v["execution_id"].as_str())
        .and_then(|s| Uuid::parse_str(s).ok())
        .unwrap_or_else(|| panic!("no execution id in {v}"));
    wait_all_finished(&db.pool, &[root], Duration::from_secs(60)).await;
    let r = get_execution(&db.pool, root).await.expect("root");
    assert_eq!(r.status, ExecutionStatus::Completed, "{:?}", r.error);
    let trace_hex = r.correlation_id.simple().to_string();

    // Before SIGTERM nothing has arrived: no span ends at a submission (the one-shot `lineq
    // submit` exported nothing), and every long-running process holds an exporter.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.spans().is_empty(), "{:?}", receiver.spans());
    for p in &procs {
        if let Some(has) = has_exporter_thread(p.child.id()) {
            assert!(has, "{} should run a span exporter", p.name);
        }
    }

    for p in procs.iter_mut() {
        let status = p.terminate(Duration::from_secs(30));
        assert!(
            status.success(),
            "{} exited {status}: {}",
            p.name,
            p.log_text()
        );
    }
    // Flushed before exit: everything is there as soon as the processes are gone.
    let events = events_of_tree(&db, root).await;
    let got = receiver.spans();
    let by_span: HashMap<String, &Got> = got.iter().map(|g| (hex(&g.span.span_id), g)).collect();
    assert_eq!(by_span.len(), got.len(), "a span was exported twice");

    // One trace, named by the root's correlation id, the child included.
    let traces: HashSet<String> = got.iter().map(|g| hex(&g.span.trace_id)).collect();
    assert_eq!(traces, HashSet::from([trace_hex.clone()]));
    let child = events
        .iter()
        .map(|e| e.execution_id)
        .find(|x| *x != root)
        .expect("a child execution");
    assert!(
        events
            .iter()
            .all(|e| e.execution_id == root || e.execution_id == child)
    );

    // The spans, by what they are.
    let of = |kind: &str| -> Vec<&Got> {
        got.iter()
            .filter(|g| attr(&g.span, "lineq.span").as_deref() == Some(kind))
            .collect()
    };
    let (executions, steps, attempts) = (of("execution"), of("step"), of("attempt"));
    assert_eq!(executions.len(), 2, "the root and the child");
    assert_eq!(
        steps.len(),
        5,
        "price, reserve, charge, receipt, the child's echo"
    );
    assert_eq!(attempts.len(), 6, "reserve twice, the others once");
    let handler_spans: Vec<&Got> = got
        .iter()
        .filter(|g| attr(&g.span, "lineq.span").is_none())
        .collect();
    assert_eq!(
        handler_spans
            .iter()
            .map(|g| g.span.name.as_str())
            .collect::<Vec<_>>(),
        ["sleep"],
        "the handler's own span, and nothing else of the processes' own"
    );

    // The root: the execution from submit to end, with its status, ids and tags.
    let root_span_id = opening_span(&events, "execution_started", root, None);
    let root_span = &by_span[&root_span_id].span;
    assert!(root_span.parent_span_id.is_empty());
    assert_eq!(root_span.name, "execution traced");
    assert_eq!(by_span[&root_span_id].service, "lineq-orchestrator");
    assert_eq!(attr(root_span, "status").as_deref(), Some("completed"));
    assert_eq!(
        attr(root_span, "correlation_id"),
        Some(r.correlation_id.to_string())
    );
    assert_eq!(attr(root_span, "execution_id"), Some(root.to_string()));
    assert_eq!(attr(root_span, "root_execution_id"), Some(root.to_string()));
    assert_eq!(attr(root_span, "tag.customer").as_deref(), Some("acme"));

    // A span per step, under its execution's span, named by its first step_enqueued; a span
    // per attempt under its step's (retries too), the worker's, named by its action_started.
    let step_id = |x: Uuid, name: &str| -> Uuid {
        events
            .iter()
            .find(|e| {
                e.execution_id == x
                    && e.event_type == "step_enqueued"
                    && e.step_name.as_deref() == Some(name)
            })
            .and_then(|e| e.step_id)
            .unwrap_or_else(|| panic!("no step {name}"))
    };
    let child_span_id = opening_span(&events, "execution_started", child, None);
    for (x, name, parent) in [
        (root, "price", &root_span_id),
        (root, "reserve", &root_span_id),
        (root, "charge", &root_span_id),
        (root, "receipt", &root_span_id),
        (child, "echo", &child_span_id),
    ] {
        let sid = step_id(x, name);
        let span_id = opening_span(&events, "step_enqueued", x, Some(sid));
        let g = by_span
            .get(&span_id)
            .unwrap_or_else(|| panic!("no span for step {name}"));
        assert_eq!(g.span.name, format!("step {name}"));
        assert_eq!(&hex(&g.span.parent_span_id), parent, "step {name}");
        assert_eq!(g.service, "lineq-orchestrator", "step {name}");
        assert_eq!(attr(&g.span, "status").as_deref(), Some("completed"));
        assert_eq!(attr(&g.span, "step_id"), Some(sid.to_string()));
        let mine: Vec<&&Got> = attempts
            .iter()
            .filter(|a| attr(&a.span, "step_id") == Some(sid.to_string()))
            .collect();
        assert_eq!(mine.len(), if name == "reserve" { 2 } else { 1 }, "{name}");
        for a in mine {
            assert_eq!(hex(&a.span.parent_span_id), span_id, "attempt of {name}");
            assert_eq!(a.service, "lineq-worker");
            assert_eq!(a.span.kind, 5, "consumer");
            assert_eq!(a.span.name, format!("attempt {name}"));
            for key in ["handler", "queue", "msg_id", "attempt", "delivery"] {
                assert!(attr(&a.span, key).is_some(), "attempt lacks {key}");
            }
            assert!(matches!(
                attr(&a.span, "worker_id").as_deref(),
                Some("tw-1" | "tw-2")
            ));
            // Inside its step (the worker's clock against the database's: a little slack).
            let slack = 200_000_000;
            assert!(a.span.start_time_unix_nano + slack >= g.span.start_time_unix_nano);
            assert!(a.span.end_time_unix_nano <= g.span.end_time_unix_nano + slack);
        }
    }
    // The child execution sits under the step that spawned it.
    let charge_span = opening_span(
        &events,
        "step_enqueued",
        root,
        Some(step_id(root, "charge")),
    );
    let child_root = &by_span[&child_span_id].span;
    assert_eq!(hex(&child_root.parent_span_id), charge_span);
    assert_eq!(
        attr(child_root, "parent_execution_id"),
        Some(root.to_string())
    );

    // The retry: the first attempt failed with the handler's message, the second did not.
    let reserve = step_id(root, "reserve");
    let mut tries: Vec<&&Got> = attempts
        .iter()
        .filter(|a| attr(&a.span, "step_id") == Some(reserve.to_string()))
        .collect();
    tries.sort_by_key(|a| attr(&a.span, "attempt"));
    let status = tries[0].span.status.as_ref().expect("status");
    assert_eq!(status.code, 2, "the failed attempt is an error");
    assert!(
        status.message.contains("fails on purpose"),
        "{}",
        status.message
    );
    let ex = tries[0]
        .span
        .events
        .iter()
        .find(|x| x.name == "exception")
        .expect("exception event");
    assert_eq!(event_attr(ex, "exception.type").as_deref(), Some("flaky"));
    assert_ne!(tries[1].span.status.as_ref().map(|s| s.code), Some(2));

    // The handler's own span, under its attempt.
    let price_attempt = attempts
        .iter()
        .find(|a| attr(&a.span, "step") == Some("price".into()))
        .expect("price's attempt");
    let sleep = &handler_spans[0];
    assert_eq!(sleep.span.parent_span_id, price_attempt.span.span_id);
    assert_eq!(sleep.service, "lineq-worker");
    assert_eq!(attr(&sleep.span, "ms").as_deref(), Some("30"));
    assert!(sleep.span.start_time_unix_nano >= price_attempt.span.start_time_unix_nano);
    assert!(sleep.span.end_time_unix_nano <= price_attempt.span.end_time_unix_nano);

    // Every lineage event is a span event, once, with its id, type and parent.
    let by_event: HashMap<Uuid, &EventRow> = events.iter().map(|e| (e.event_id, e)).collect();
    let mut seen: HashSet<Uuid> = HashSet::new();
    for g in &got {
        for x in g.span.events.iter().filter(|x| x.name != "exception") {
            let id = event_attr(x, "event_id")
                .and_then(|i| Uuid::parse_str(&i).ok())
                .unwrap_or_else(|| panic!("span event {} without event_id", x.name));
            let row = by_event
                .get(&id)
                .unwrap_or_else(|| panic!("span event {id} is no event of the tree"));
            assert!(seen.insert(id), "event {id} is in the trace twice");
            assert_eq!(x.name, row.event_type);
            assert_eq!(
                event_attr(x, "parent_event_id"),
                row.parent_event_id.map(|p| p.to_string())
            );
            // On the span of its execution.
            assert_eq!(
                attr(&g.span, "execution_id"),
                Some(row.execution_id.to_string())
            );
        }
    }
    assert_eq!(seen, by_event.keys().copied().collect::<HashSet<_>>());

    // The fan-in links to both dependencies' steps; receipt to charge.
    let links = |name: &str| -> HashSet<String> {
        let id = opening_span(&events, "step_enqueued", root, Some(step_id(root, name)));
        by_span[&id]
            .span
            .links
            .iter()
            .map(|l| {
                assert_eq!(hex(&l.trace_id), trace_hex);
                hex(&l.span_id)
            })
            .collect()
    };
    let step_span =
        |name: &str| opening_span(&events, "step_enqueued", root, Some(step_id(root, name)));
    assert_eq!(
        links("charge"),
        HashSet::from([step_span("price"), step_span("reserve")])
    );
    assert_eq!(links("receipt"), HashSet::from([step_span("charge")]));
    assert!(links("price").is_empty());

    // Depth: 4 outside the child execution (execution, step, attempt, the handler's span),
    // whatever the number of steps; the child adds its own three levels.
    let depth = |g: &Got| -> usize {
        let mut d = 1;
        let mut at = &g.span;
        while !at.parent_span_id.is_empty() {
            at = &by_span
                .get(&hex(&at.parent_span_id))
                .unwrap_or_else(|| panic!("{} has a parent outside the trace", g.span.name))
                .span;
            d += 1;
            assert!(d < 20);
        }
        d
    };
    for g in &got {
        let in_child = attr(&g.span, "execution_id") == Some(child.to_string());
        let d = depth(g);
        assert!(
            d <= if in_child { 4 + 3 } else { 4 },
            "{} is {d} deep",
            g.span.name
        );
    }
    assert_eq!(depth(by_span[&root_span_id]), 1);
    assert_eq!(depth(sleep), 4);

    // From a span to its SQL row: the span id is the id its opening event's row stores.
    for g in executions.iter().chain(&steps).chain(&attempts) {
        let rows: Vec<(String, Uuid)> =
            sqlx::query_as("SELECT event_type, event_id FROM lineq.events WHERE span_id = $1")
                .bind(hex(&g.span.span_id))
                .fetch_all(&db.pool)
                .await
                .expect("rows");
        assert_eq!(rows.len(), 1, "{}", g.span.name);
        let want = match attr(&g.span, "lineq.span").as_deref() {
            Some("execution") => "execution_started",
            Some("step") => "step_enqueued",
            _ => "action_started",
        };
        assert_eq!(rows[0].0, want, "{}", g.span.name);
        assert_eq!(attr(&g.span, "event_id"), Some(rows[0].1.to_string()));
    }

    // `lineq trace` finds the trace from the root, the child, the correlation id and an event.
    let failed = events
        .iter()
        .find(|e| e.event_type == "action_failed")
        .expect("action_failed");
    let jaeger = "http://jaeger.test:16686/";
    for (id, matched) in [
        (root.to_string(), "execution"),
        (child.to_string(), "execution"),
        (r.correlation_id.to_string(), "correlation"),
        (failed.event_id.to_string(), "event"),
    ] {
        let out = lineq_with(&db.url, &["trace", &id, "--format", "json"], |c| {
            otel_env(c, &[]);
            c.env("LINEQ_JAEGER_URL", jaeger);
        });
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).expect("json");
        assert_eq!(v["trace_id"], json!(trace_hex));
        assert_eq!(v["matched"], json!(matched));
        assert_eq!(
            v["jaeger_url"],
            json!(format!("http://jaeger.test:16686/trace/{trace_hex}"))
        );
        assert_eq!(v["root_execution_ids"], json!([root]));
        if matched == "event" {
            assert_eq!(v["span_id"], json!(failed.span_id));
        }
    }
    let out = lineq_with(&db.url, &["trace", &root.to_string()], |c| {
        otel_env(c, &[]);
        c.env_remove("LINEQ_JAEGER_URL");
    });
    assert!(
        stdout(&out).contains(&format!("http://localhost:16686/trace/{trace_hex}")),
        "{}",
        stdout(&out)
    );
    let out = lineq_with(&db.url, &["trace", &Uuid::now_v7().to_string()], |c| {
        otel_env(c, &[])
    });
    assert_eq!(out.status.code(), Some(3), "unknown ids are not found");

    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_protobuf_and_the_flag_overrides_the_environment() {
    let receiver = Receiver::http(Receiver::listen("127.0.0.1:0").await.expect("bind")).await;
    let endpoint = receiver.endpoint();
    let db = TestDb::new().await;
    // The environment points elsewhere (a closed port); --otlp-endpoint wins.
    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let mut procs = [
        Proc::start_with(
            &db.url,
            "orchestrator",
            &[
                "orchestrator",
                "--poll-interval-ms",
                "100",
                "--otlp-endpoint",
                &endpoint,
            ],
            |c| otel_env(c, &env),
        ),
        Proc::start_with(
            &db.url,
            "worker",
            &[
                "worker",
                "--poll-interval-ms",
                "100",
                "--otlp-endpoint",
                &endpoint,
            ],
            |c| otel_env(c, &env),
        ),
    ];
    let out = lineq_with(
        &db.url,
        &[
            "submit",
            "echo",
            "--input",
            r#"{"hi": 1}"#,
            "--format",
            "json",
            "--otlp-endpoint",
            &endpoint,
        ],
        |c| otel_env(c, &env),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let id = v["execution"]["execution_id"]
        .as_str()
        .or_else(|| v["execution_id"].as_str())
        .expect("id");
    let id = Uuid::parse_str(id).expect("uuid");
    wait_all_finished(&db.pool, &[id], Duration::from_secs(60)).await;
    let events = events_of_tree(&db, id).await;
    assert_eq!(tree_shape(&events), ONE_STEP_COMPLETED);
    // With a short schedule delay the spans arrive while the processes run: the execution's,
    // its step's and its attempt's, named by the events that open them.
    let want: HashSet<String> = events
        .iter()
        .filter(|e| {
            matches!(
                e.event_type.as_str(),
                "execution_started" | "step_enqueued" | "action_started"
            )
        })
        .map(|e| e.span_id.clone().expect("span"))
        .collect();
    let got = eventually(Duration::from_secs(20), "spans over HTTP", || {
        let spans = receiver.spans();
        let want = want.clone();
        async move {
            let ids: HashSet<String> = spans.iter().map(|g| hex(&g.span.span_id)).collect();
            (ids == want).then_some(spans)
        }
    })
    .await;
    assert_eq!(got.len(), 3);
    let span_events: usize = got.iter().map(|g| g.span.events.len()).sum();
    assert_eq!(span_events, events.len(), "every event is a span event");
    let services: HashSet<&str> = got.iter().map(|g| g.service.as_str()).collect();
    assert_eq!(
        services,
        HashSet::from(["lineq-orchestrator", "lineq-worker"])
    );
    for p in procs.iter_mut() {
        let status = p.terminate(Duration::from_secs(30));
        assert!(
            status.success(),
            "{} exited {status}: {}",
            p.name,
            p.log_text()
        );
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_no_endpoint_nothing_is_exported() {
    // Listen where an exporter with default settings would send (gRPC's 4317), when free.
    let receiver = match Receiver::listen("127.0.0.1:4317").await {
        Ok(l) => Some(Receiver::grpc(l).await),
        Err(_) => None,
    };
    let db = TestDb::new().await;
    let mut procs = [
        Proc::start_with(
            &db.url,
            "orchestrator",
            &["orchestrator", "--poll-interval-ms", "100"],
            |c| otel_env(c, &[]),
        ),
        Proc::start_with(
            &db.url,
            "worker",
            &["worker", "--poll-interval-ms", "100"],
            |c| otel_env(c, &[]),
        ),
    ];
    let id = submit(&db, "echo", "{}", &[]);
    wait_all_finished(&db.pool, &[id], Duration::from_secs(60)).await;
    // No exporter exists in the processes at all.
    for p in &procs {
        if let Some(has) = has_exporter_thread(p.child.id()) {
            assert!(
                !has,
                "{} runs a span exporter with no endpoint configured",
                p.name
            );
        }
    }
    for p in procs.iter_mut() {
        let status = p.terminate(Duration::from_secs(30));
        assert!(
            status.success(),
            "{} exited {status}: {}",
            p.name,
            p.log_text()
        );
    }
    if let Some(r) = &receiver {
        assert_eq!(
            r.connections.load(Ordering::SeqCst),
            0,
            "nothing may connect"
        );
        assert!(r.spans().is_empty());
    }
    // The rows still carry their trace context: it travels in meta whether or not spans are
    // exported.
    let events = events_of_tree(&db, id).await;
    let corr = get_execution(&db.pool, id)
        .await
        .expect("execution")
        .correlation_id;
    assert!(
        events
            .iter()
            .all(|e| e.trace_id.as_deref() == Some(corr.simple().to_string().as_str()))
    );
    db.drop_db().await;
}

/// A worker that speaks the SQL interface and exports nothing (here: this test, through
/// `lineq.worker_*`) has its attempt's span exported by the orchestrator that reads its result,
/// under the service name it registered: named by the claim's `action_started`, under its
/// step's span, the report's events its span events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_spans_of_a_worker_that_exports_none_are_exported_for_it() {
    let receiver = Receiver::grpc(Receiver::listen("127.0.0.1:0").await.expect("bind")).await;
    let endpoint = receiver.endpoint();
    let db = TestDb::new().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let mut orchestrator = Proc::start_with(
        &db.url,
        "orchestrator",
        &["orchestrator", "--poll-interval-ms", "100"],
        |c| otel_env(c, &env),
    );
    let id = submit(&db, "echo", r#"{"hi": 1}"#, &env);

    // The worker: registered as a SQL worker of service billing-sql, which exports nothing.
    let token: String = sqlx::query_scalar(
        "SELECT lineq.worker_register('sql-1', '{default}', '{echo}', 'host', 1, '1', 'sql', 30,
                                      'billing-sql', NULL)",
    )
    .fetch_one(&db.pool)
    .await
    .expect("register");
    let (msg_id, delivery, started, traceparent, message): (i64, i32, Uuid, String, String) =
        eventually(Duration::from_secs(20), "a claim", || {
            let pool = db.pool.clone();
            let token = token.clone();
            async move {
                sqlx::query_as(
                    "SELECT msg_id, delivery, started_event_id, traceparent, message
                     FROM lineq.worker_claim('sql-1', $1, 'default', 1)",
                )
                .bind(&token)
                .fetch_optional(&pool)
                .await
                .expect("claim")
            }
        })
        .await;
    let input = serde_json::from_str::<Value>(&message).expect("message")["input"].clone();
    sqlx::query(
        "SELECT * FROM lineq.worker_report('sql-1', $1, 'default', jsonb_build_array(
             jsonb_build_object('msg_id', $2::bigint, 'delivery', $3::integer,
                                'started_event_id', $4::uuid, 'outcome', 'completed',
                                'output', $5::jsonb)))",
    )
    .bind(&token)
    .bind(msg_id)
    .bind(delivery)
    .bind(started)
    .bind(&input)
    .execute(&db.pool)
    .await
    .expect("report");
    wait_all_finished(&db.pool, &[id], Duration::from_secs(30)).await;
    let events = events_of_tree(&db, id).await;
    assert_eq!(tree_shape(&events), ONE_STEP_COMPLETED);

    let event = |t: &str| {
        events
            .iter()
            .find(|e| e.event_type == t)
            .unwrap_or_else(|| panic!("no {t} event"))
    };
    let attempt_id = event("action_started").span_id.clone().expect("span id");
    let step_id = event("step_enqueued").span_id.clone().expect("span id");
    let root_id = event("execution_started").span_id.clone().expect("span id");
    let want: HashSet<String> = HashSet::from([attempt_id.clone(), step_id.clone(), root_id]);
    let got = eventually(Duration::from_secs(20), "the three spans", || {
        let spans = receiver.spans();
        let want = want.clone();
        async move {
            let ids: HashSet<String> = spans.iter().map(|g| hex(&g.span.span_id)).collect();
            want.is_subset(&ids).then_some(spans)
        }
    })
    .await;
    let by_span: HashMap<String, &Got> = got.iter().map(|g| (hex(&g.span.span_id), g)).collect();
    let attempt = by_span[&attempt_id];
    assert_eq!(attempt.service, "billing-sql");
    assert_eq!(
        hex(&attempt.span.parent_span_id),
        step_id,
        "the attempt is a child of its step's span"
    );
    assert_eq!(by_span[&step_id].service, "lineq-orchestrator");
    // The claim's traceparent names the attempt's span, for a handler's own spans.
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            hex(&attempt.span.trace_id),
            hex(&attempt.span.span_id)
        )
    );
    assert!(attempt.span.end_time_unix_nano >= attempt.span.start_time_unix_nano);
    // The report's events are the attempt's span events.
    let names: Vec<&str> = attempt
        .span
        .events
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, ["action_started", "action_completed", "step_result"]);
    // Exported once: the orchestrator is the only exporter of the worker's events.
    let copies = got
        .iter()
        .filter(|g| g.span.span_id == attempt.span.span_id)
        .count();
    assert_eq!(copies, 1);
    let status = orchestrator.terminate(Duration::from_secs(30));
    assert!(status.success(), "{}", orchestrator.log_text());
    db.drop_db().await;
}

/// A worker that claims a step and stops before reporting (here: this test, through
/// `lineq.worker_claim`, which then says nothing more) leaves an attempt that no worker will
/// export. Once the message is delivered again and the step ends, the orchestrator exports it,
/// under the service name that worker registered: from its claim to the next delivery, an error
/// that says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attempt_whose_worker_stopped_mid_step_says_so() {
    let receiver = Receiver::grpc(Receiver::listen("127.0.0.1:0").await.expect("bind")).await;
    let endpoint = receiver.endpoint();
    let db = TestDb::new().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let mut orchestrator = Proc::start_with(
        &db.url,
        "orchestrator",
        &["orchestrator", "--poll-interval-ms", "100"],
        |c| otel_env(c, &env),
    );
    let id = submit(&db, "echo", r#"{"hi": 1}"#, &env);
    let token: String = sqlx::query_scalar(
        "SELECT lineq.worker_register('doomed-1', '{default}', '{echo}', 'host', 1, '1', 'sql', 30,
                                      'doomed-sql', NULL)",
    )
    .fetch_one(&db.pool)
    .await
    .expect("register");
    // Claimed for one second, then never reported.
    let _: (i64,) = eventually(Duration::from_secs(20), "a claim", || {
        let pool = db.pool.clone();
        let token = token.clone();
        async move {
            sqlx::query_as("SELECT msg_id FROM lineq.worker_claim('doomed-1', $1, 'default', 1, 1)")
                .bind(&token)
                .fetch_optional(&pool)
                .await
                .expect("claim")
        }
    })
    .await;
    let mut worker = Proc::start_with(
        &db.url,
        "worker",
        &["worker", "--poll-interval-ms", "100"],
        |c| otel_env(c, &env),
    );
    wait_all_finished(&db.pool, &[id], Duration::from_secs(30)).await;
    let events = events_of_tree(&db, id).await;
    let started: Vec<&EventRow> = events
        .iter()
        .filter(|e| e.event_type == "action_started")
        .collect();
    assert_eq!(started.len(), 2, "claimed, then delivered again");
    let (lost, again) = (started[0], started[1]);
    assert_eq!(lost.worker_id.as_deref(), Some("doomed-1"));
    let lost_id = lost.span_id.clone().expect("span id");
    let got = eventually(
        Duration::from_secs(20),
        "the abandoned attempt's span",
        || {
            let spans = receiver.spans();
            let lost_id = lost_id.clone();
            async move {
                spans
                    .iter()
                    .any(|g| hex(&g.span.span_id) == lost_id)
                    .then_some(spans)
            }
        },
    )
    .await;
    let by_span: HashMap<String, &Got> = got.iter().map(|g| (hex(&g.span.span_id), g)).collect();
    let g = by_span[&lost_id];
    assert_eq!(g.service, "doomed-sql");
    assert_eq!(attr(&g.span, "lineq.span").as_deref(), Some("attempt"));
    assert_eq!(attr(&g.span, "outcome").as_deref(), Some("abandoned"));
    let status = g.span.status.as_ref().expect("status");
    assert_eq!(status.code, 2);
    assert!(
        status.message.contains("doomed-1") && status.message.contains("delivered again"),
        "{}",
        status.message
    );
    let step_span = events
        .iter()
        .find(|e| e.event_type == "step_enqueued")
        .and_then(|e| e.span_id.clone())
        .expect("step");
    assert_eq!(hex(&g.span.parent_span_id), step_span);
    // From the claim to the delivery that replaced it.
    let nanos = |t: chrono::DateTime<chrono::Utc>| {
        u64::try_from(t.timestamp_nanos_opt().expect("nanos")).expect("after 1970")
    };
    assert_eq!(g.span.start_time_unix_nano, nanos(lost.created_at));
    assert_eq!(g.span.end_time_unix_nano, nanos(again.created_at));
    // The delivery that replaced it is the worker's own, under the same step.
    let again_span = eventually(Duration::from_secs(20), "the second attempt", || {
        let spans = receiver.spans();
        let want = again.span_id.clone().expect("span id");
        async move { spans.into_iter().find(|g| hex(&g.span.span_id) == want) }
    })
    .await;
    assert_eq!(again_span.service, "lineq-worker");
    assert_eq!(hex(&again_span.span.parent_span_id), step_span);
    for p in [&mut worker, &mut orchestrator] {
        let status = p.terminate(Duration::from_secs(30));
        assert!(status.success(), "{}", p.log_text());
    }
    db.drop_db().await;
}

/// A failed execution: its span and its failed step's are errors with the handler's message,
/// and a step cancelled before it ever ran (it had no span of its own) is still in the trace, as
/// an event of the execution's span. Every event is a span event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_execution_is_an_error_and_keeps_every_event() {
    let receiver = Receiver::grpc(Receiver::listen("127.0.0.1:0").await.expect("bind")).await;
    let endpoint = receiver.endpoint();
    let db = TestDb::new().await;
    store::register(
        &db.pool,
        &WorkflowDefinition::new("doomed")
            .step(StepDefinition::new("pay", "fail").params(json!({"message": "card declined"})))
            .step(StepDefinition::new("ship", "echo").depends_on(["pay"])),
    )
    .await
    .expect("register");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let mut procs = [
        Proc::start_with(
            &db.url,
            "orchestrator",
            &["orchestrator", "--poll-interval-ms", "100"],
            |c| otel_env(c, &env),
        ),
        Proc::start_with(
            &db.url,
            "worker",
            &["worker", "--poll-interval-ms", "100"],
            |c| otel_env(c, &env),
        ),
    ];
    let id = submit(&db, "doomed", "{}", &env);
    wait_all_finished(&db.pool, &[id], Duration::from_secs(60)).await;
    let events = events_of_tree(&db, id).await;
    let root_span = opening_span(&events, "execution_started", id, None);
    let want: HashSet<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    // Every span arrived: the worker's and the orchestrator's come in batches of their own.
    let got = eventually(Duration::from_secs(20), "every event in the trace", || {
        let spans = receiver.spans();
        let want = want.clone();
        async move {
            let ids: HashSet<String> = spans
                .iter()
                .flat_map(|g| g.span.events.iter())
                .filter_map(|x| event_attr(x, "event_id"))
                .collect();
            want.is_subset(&ids).then_some(spans)
        }
    })
    .await;
    let by_span: HashMap<String, &Got> = got.iter().map(|g| (hex(&g.span.span_id), g)).collect();
    let root = &by_span[&root_span].span;
    assert_eq!(attr(root, "status").as_deref(), Some("failed"));
    let status = root.status.as_ref().expect("status");
    assert_eq!(status.code, 2);
    assert!(
        status.message.contains("card declined"),
        "{}",
        status.message
    );
    let pay = events
        .iter()
        .find(|e| e.event_type == "step_enqueued")
        .expect("pay was enqueued");
    let pay_span = &by_span[pay.span_id.as_deref().expect("span")].span;
    assert_eq!(pay_span.name, "step pay");
    assert_eq!(attr(pay_span, "status").as_deref(), Some("failed"));
    assert_eq!(pay_span.status.as_ref().map(|s| s.code), Some(2));
    // `ship` never ran: no span of its own, its cancellation an event of the execution's span.
    assert!(!got.iter().any(|g| g.span.name == "step ship"));
    let cancelled = events
        .iter()
        .find(|e| e.event_type == "step_cancelled")
        .expect("ship cancelled");
    assert!(
        root.events
            .iter()
            .any(|x| { event_attr(x, "event_id") == Some(cancelled.event_id.to_string()) })
    );
    // Every event, once.
    let ids: Vec<String> = got
        .iter()
        .flat_map(|g| g.span.events.iter())
        .filter(|x| x.name != "exception")
        .filter_map(|x| event_attr(x, "event_id"))
        .collect();
    assert_eq!(ids.len(), want.len());
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), want);
    for p in procs.iter_mut() {
        let status = p.terminate(Duration::from_secs(30));
        assert!(status.success(), "{}", p.log_text());
    }
    db.drop_db().await;
}
