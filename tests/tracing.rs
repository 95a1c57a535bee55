//! Tracing through real processes: an OTLP receiver runs in the test; an orchestrator and two
//! workers run as `lineq` processes pointed at it; a workflow with a retry and a child execution
//! runs through them. The spans that arrive must be exactly the events the database holds: one
//! span per event with the row's trace and span ids, each span's parent the span of its parent
//! event — so one trace per root execution, child executions included, with the trace id of the
//! root's correlation id — and they must arrive when the processes are stopped with SIGTERM.

mod support;

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

use lineq::orchestration::workflow::store;
use lineq::orchestration::workflow::{RetryPolicy, StepDefinition, WorkflowDefinition};
use lineq::shared::event::EventRow;
use lineq::shared::execution::{ExecutionStatus, get_execution};
use support::*;

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

fn traced_workflow() -> WorkflowDefinition {
    WorkflowDefinition::new("traced")
        .step(
            StepDefinition::new("charge", "flaky")
                .retry(RetryPolicy {
                    max_attempts: 2,
                    backoff_ms: 50,
                    max_backoff_ms: 100,
                    ..Default::default()
                })
                .params(json!({"fail_attempts": 1})),
        )
        .step(
            StepDefinition::new("fan", "spawn")
                .depends_on(["charge"])
                .params(json!({"children": [{"target": "echo", "input": {}}], "wait": true})),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_root_execution_is_one_trace_across_processes() {
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

    let root = submit(&db, "traced", r#"{"amount": 5}"#, &env);
    wait_all_finished(&db.pool, &[root], Duration::from_secs(60)).await;
    let r = get_execution(&db.pool, root).await.expect("root");
    assert_eq!(r.status, ExecutionStatus::Completed, "{:?}", r.error);
    let trace_hex = r.correlation_id.simple().to_string();

    // Before SIGTERM: only the one-shot `lineq submit` has exported (it flushed at exit), and
    // every long-running process holds an exporter.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = receiver.spans();
    assert_eq!(
        early.len(),
        3,
        "execution_started, workflow_initialized, step_enqueued"
    );
    assert!(
        early.iter().all(|g| g.service == "lineq"),
        "{:?}",
        early.iter().map(|g| &g.service).collect::<Vec<_>>()
    );
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

    // Exactly one span per event, with the ids the event row stores.
    let by_span: HashMap<String, &Got> = got.iter().map(|g| (hex(&g.span.span_id), g)).collect();
    assert_eq!(by_span.len(), got.len(), "a span was exported twice");
    let event_spans: HashSet<String> = events
        .iter()
        .map(|e| e.span_id.clone().expect("span_id"))
        .collect();
    assert_eq!(by_span.keys().cloned().collect::<HashSet<_>>(), event_spans);
    assert_eq!(got.len(), events.len());

    // One trace, named by the root's correlation id, children included.
    let traces: HashSet<String> = got.iter().map(|g| hex(&g.span.trace_id)).collect();
    assert_eq!(traces, HashSet::from([trace_hex.clone()]));
    let child_execs: HashSet<Uuid> = events
        .iter()
        .map(|e| e.execution_id)
        .filter(|x| *x != root)
        .collect();
    assert_eq!(child_execs.len(), 1, "one child execution");

    let by_event: HashMap<Uuid, &EventRow> = events.iter().map(|e| (e.event_id, e)).collect();
    let span_of = |e: &EventRow| -> &Span { &by_span[e.span_id.as_deref().expect("span_id")].span };
    for e in &events {
        let s = span_of(e);
        // The parent span is the parent event's span; only the root's execution_started has none.
        match e.parent_event_id {
            Some(p) => assert_eq!(
                hex(&s.parent_span_id),
                by_event[&p].span_id.clone().expect("parent span"),
                "{} {}",
                e.event_type,
                e.event_id
            ),
            None => {
                assert_eq!(
                    (e.event_type.as_str(), e.execution_id),
                    ("execution_started", root)
                );
                assert!(s.parent_span_id.is_empty());
            }
        }
        // The lineage attributes, on every span.
        assert_eq!(attr(s, "event_id"), Some(e.event_id.to_string()));
        assert_eq!(
            attr(s, "event_type").as_deref(),
            Some(e.event_type.as_str())
        );
        assert_eq!(
            attr(s, "correlation_id"),
            Some(e.correlation_id.to_string())
        );
        assert_eq!(attr(s, "execution_id"), Some(e.execution_id.to_string()));
        assert_eq!(attr(s, "root_execution_id"), Some(root.to_string()));
        assert_eq!(
            attr(s, "parent_execution_id"),
            e.parent_execution_id.map(|p| p.to_string())
        );
        assert_eq!(attr(s, "attempt"), e.attempt.map(|a| a.to_string()));
        assert_eq!(attr(s, "worker_id"), e.worker_id.clone());
        if e.step_id.is_some() && e.event_type != "step_cancelled" {
            assert_eq!(attr(s, "step"), e.step_name.clone(), "{}", e.event_type);
        }
        assert!(s.start_time_unix_nano <= s.end_time_unix_nano);
    }

    // Each worker span (the attempt: action_started) is the child of its step's enqueue span,
    // written by another process, and runs from the claim to the report: its children lie
    // within it.
    let started: Vec<&EventRow> = events
        .iter()
        .filter(|e| e.event_type == "action_started")
        .collect();
    assert_eq!(started.len(), 4, "charge twice, fan, the child's echo");
    for a in &started {
        let g = by_span[a.span_id.as_deref().expect("span")];
        let s = &g.span;
        assert_eq!(g.service, "lineq-worker");
        assert_eq!(s.kind, 5, "consumer");
        let enq = by_event[&a.parent_event_id.expect("parent")];
        assert_eq!(enq.event_type, "step_enqueued");
        assert_eq!((enq.step_id, enq.attempt), (a.step_id, a.attempt));
        assert_eq!(hex(&s.parent_span_id), enq.span_id.clone().expect("span"));
        let enq_service = &by_span[enq.span_id.as_deref().expect("span")].service;
        assert!(
            enq_service == "lineq" || enq_service == "lineq-orchestrator",
            "{enq_service}"
        );
        for key in ["handler", "queue", "msg_id", "worker_id"] {
            assert!(attr(s, key).is_some(), "worker span lacks {key}");
        }
        assert!(matches!(
            attr(s, "worker_id").as_deref(),
            Some("tw-1" | "tw-2")
        ));
        for kid in events
            .iter()
            .filter(|k| k.parent_event_id == Some(a.event_id))
        {
            let k = span_of(kid);
            assert!(
                k.start_time_unix_nano >= s.start_time_unix_nano,
                "{}",
                kid.event_type
            );
            assert!(
                k.end_time_unix_nano <= s.end_time_unix_nano,
                "{}",
                kid.event_type
            );
        }
    }

    // The retry: the first attempt's spans are errors with the handler's message.
    let failed = events
        .iter()
        .find(|e| e.event_type == "action_failed")
        .expect("action_failed");
    for e in [failed, by_event[&failed.parent_event_id.expect("parent")]] {
        let s = span_of(e);
        let status = s.status.as_ref().expect("status");
        assert_eq!(status.code, 2, "{} is an error", e.event_type);
        assert!(
            status.message.contains("fails on purpose"),
            "{}",
            status.message
        );
    }
    let f = span_of(failed);
    let ex = f
        .events
        .iter()
        .find(|x| x.name == "exception")
        .expect("exception event");
    assert!(ex.attributes.iter().any(|kv| kv.key == "exception.type"
        && kv.value.as_ref().map(value_text).as_deref() == Some("flaky")));
    let attempt_failed = events
        .iter()
        .find(|e| e.event_type == "step_attempt_failed")
        .expect("retry");
    assert_eq!(
        span_of(attempt_failed).status.as_ref().map(|s| s.code),
        Some(2)
    );

    // Each orchestrator span that processed a result is the child of the worker's step_result
    // span and linked to the worker's span of that attempt.
    for e in events.iter().filter(|e| {
        matches!(
            e.event_type.as_str(),
            "step_completed" | "step_attempt_failed" | "step_waiting"
        ) && by_event[&e.parent_event_id.expect("parent")].event_type == "step_result"
    }) {
        let g = by_span[e.span_id.as_deref().expect("span")];
        assert_eq!(g.service, "lineq-orchestrator");
        let result = by_event[&e.parent_event_id.expect("parent")];
        let attempt = by_event[&result.parent_event_id.expect("parent")];
        assert_eq!(attempt.event_type, "action_started");
        let links: Vec<(String, String)> = g
            .span
            .links
            .iter()
            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
            .collect();
        assert_eq!(
            links,
            vec![(trace_hex.clone(), attempt.span_id.clone().expect("span"))],
            "{}",
            e.event_type
        );
    }

    // The child execution sits in the same trace under the step that spawned it.
    let child = *child_execs.iter().next().expect("child");
    let child_start = events
        .iter()
        .find(|e| e.execution_id == child && e.event_type == "execution_started")
        .expect("child execution_started");
    let spawned_by = by_event[&child_start.parent_event_id.expect("parent")];
    assert_eq!(
        (
            spawned_by.event_type.as_str(),
            spawned_by.step_name.as_deref()
        ),
        ("step_result", Some("fan"))
    );
    let fan_attempt = by_event[&spawned_by.parent_event_id.expect("parent")];
    for e in events.iter().filter(|e| e.execution_id == child) {
        // Walk up the spans: every child span reaches the spawning step's worker span.
        let mut at = span_of(e);
        let mut hops = 0;
        while hex(&at.span_id) != fan_attempt.span_id.clone().expect("span") {
            let parent = hex(&at.parent_span_id);
            at = &by_span
                .get(&parent)
                .unwrap_or_else(|| panic!("{} has a parent outside the trace", e.event_type))
                .span;
            hops += 1;
            assert!(hops < 100);
        }
        assert_eq!(
            attr(span_of(e), "parent_execution_id"),
            Some(root.to_string())
        );
    }

    // Every event row names its span: from SQL to Jaeger and back.
    assert!(
        events
            .iter()
            .all(|e| e.trace_id.as_deref() == Some(trace_hex.as_str()))
    );

    // `lineq trace` finds the trace from the root, the child, the correlation id and an event.
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
    // With a short schedule delay the spans arrive while the processes run.
    let want: HashSet<String> = events
        .iter()
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
    assert_eq!(got.len(), events.len());
    let services: HashSet<&str> = got.iter().map(|g| g.service.as_str()).collect();
    assert_eq!(
        services,
        HashSet::from(["lineq", "lineq-orchestrator", "lineq-worker"])
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
/// `lineq.worker_*`) has its attempt's spans exported by the orchestrator that reads its result,
/// under the service name it registered: the attempt's span is the claim's `action_started`,
/// child of the step's `step_enqueued`; the report's events are its children; the step's
/// outcome links to it; and every event of the execution is a span.
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

    let want: HashSet<String> = events
        .iter()
        .map(|e| e.span_id.clone().expect("span"))
        .collect();
    let got = eventually(Duration::from_secs(20), "every event as a span", || {
        let spans = receiver.spans();
        let want = want.clone();
        async move {
            let ids: HashSet<String> = spans.iter().map(|g| hex(&g.span.span_id)).collect();
            want.is_subset(&ids).then_some(spans)
        }
    })
    .await;
    let by_span: HashMap<String, &Got> = got.iter().map(|g| (hex(&g.span.span_id), g)).collect();
    let event = |t: &str| {
        events
            .iter()
            .find(|e| e.event_type == t)
            .unwrap_or_else(|| panic!("no {t} event"))
    };
    let span_of = |t: &str| {
        let e = event(t);
        by_span[e.span_id.as_deref().expect("span id")]
    };
    let attempt = span_of("action_started");
    assert_eq!(attempt.service, "billing-sql");
    assert_eq!(
        hex(&attempt.span.parent_span_id),
        event("step_enqueued").span_id.clone().expect("span id"),
        "the attempt is a child of its step's enqueueing"
    );
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
    for t in ["action_completed", "step_result"] {
        let g = span_of(t);
        assert_eq!(g.service, "billing-sql", "{t}");
        assert_eq!(g.span.parent_span_id, attempt.span.span_id, "{t}");
    }
    let outcome = span_of("step_completed");
    assert_eq!(outcome.service, "lineq-orchestrator");
    assert!(
        outcome
            .span
            .links
            .iter()
            .any(|l| l.span_id == attempt.span.span_id),
        "the step's outcome links to the attempt"
    );
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
