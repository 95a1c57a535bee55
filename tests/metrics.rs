//! Metrics and probes: an orchestrator and a worker started with `--metrics-addr` serve
//! Prometheus `/metrics` with exact counters and bounded labels, `/healthz` and `/readyz`; a
//! process pointed at an unmigrated database is alive but not ready until it is migrated.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use lineq::{Client, SubmitRequest};
use lineq_orchestrator::workflow::{RetryPolicy, StepDefinition, WorkflowDefinition, store};
use lineq_testkit::*;

/// A port free right now on 127.0.0.1.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// One HTTP/1.1 GET over a plain socket: status and body; `None` while nothing listens.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.ok()?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The value of the sample `name` whose labels include every one of `labels` (`k="v"`).
fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let metric = series.split('{').next().unwrap_or("");
            metric == name && labels.iter().all(|lab| series.contains(lab))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// Polls `addr` until `/metrics` has `name{labels}` equal to `want`; returns the body.
async fn wait_for_sample(
    addr: &str,
    name: &str,
    labels: &[&str],
    want: f64,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let body = get(addr, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        if sample(&body, name, labels) == Some(want) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} never became {want} on {addr}; last scrape:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `addr` until one scrape of `/metrics` has every `name{labels}` equal to its value;
/// returns that body.
async fn wait_for_samples(addr: &str, want: &[(&str, &[&str], f64)], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let body = get(addr, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        let wrong: Vec<String> = want
            .iter()
            .filter(|(name, labels, v)| sample(&body, name, labels) != Some(*v))
            .map(|(name, labels, v)| format!("{name}{labels:?} = {v}"))
            .collect();
        if wrong.is_empty() {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "never all at once on {addr}, still not {wrong:?}; last scrape:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_and_worker_serve_metrics_and_probes() {
    let db = TestDb::new().await;
    let (orch_addr, worker_addr) = (free_addr(), free_addr());
    let mut orch = Proc::start(
        &db.url,
        "orchestrator",
        &["orchestrator", "--metrics-addr", &orch_addr],
    );
    let mut worker = Proc::start(
        &db.url,
        "worker",
        &[
            "worker",
            "--metrics-addr",
            &worker_addr,
            "--poll-interval-ms",
            "100",
        ],
    );

    // A step that fails its first attempt and succeeds on its retry.
    let flaky = WorkflowDefinition::new("metrics_flaky").step(
        StepDefinition::new("only", "flaky")
            .retry(RetryPolicy {
                max_attempts: 2,
                backoff_ms: 10,
                max_backoff_ms: 10,
                ..Default::default()
            })
            .params(json!({"fail_attempts": 1})),
    );
    store::register(&db.pool, &flaky).await.expect("register");

    let client = Client::new(db.pool.clone());
    let mut ids = Vec::new();
    let mut correlation = Vec::new();
    let requests = [
        SubmitRequest::new("echo").input(json!({"n": 1})),
        SubmitRequest::new("echo").input(json!({"n": 2})),
        SubmitRequest::new("echo").input(json!({"n": 3})),
        SubmitRequest::new("fail").input(json!({"message": "boom"})),
        SubmitRequest::new("no_such_handler"),
        SubmitRequest::new("metrics_flaky"),
    ];
    for r in requests {
        let s = client.submit(r).await.expect("submit");
        ids.push(s.execution.execution_id);
        correlation.push(s.execution.correlation_id);
    }
    // The step of no_such_handler waits for a worker that serves it; the others finish.
    let unserved = ids[4];
    let finishing: Vec<Uuid> = ids.iter().copied().filter(|id| *id != unserved).collect();
    wait_all_finished(&db.pool, &finishing, Duration::from_secs(60)).await;

    // The worker: exact counters per handler. A worker only counts after the outcome is known,
    // so once the executions are finished the counts are final.
    let ns = r#"namespace="default""#;
    let body = wait_for_sample(
        &worker_addr,
        "lineq_worker_steps_completed_total",
        &[ns, r#"handler="flaky""#],
        1.0,
        Duration::from_secs(10),
    )
    .await;
    let count = |name: &str, handler: &str| {
        sample(&body, name, &[ns, &format!("handler=\"{handler}\"")]).unwrap_or(0.0)
    };
    for (handler, claimed, completed, failed, retried) in [
        ("echo", 3.0, 3.0, 0.0, 0.0),
        ("fail", 1.0, 0.0, 1.0, 0.0),
        ("flaky", 2.0, 1.0, 1.0, 1.0),
        ("unknown", 0.0, 0.0, 0.0, 0.0),
    ] {
        assert_eq!(
            (
                count("lineq_worker_steps_claimed_total", handler),
                count("lineq_worker_steps_completed_total", handler),
                count("lineq_worker_steps_failed_total", handler),
                count("lineq_worker_steps_retried_total", handler),
            ),
            (claimed, completed, failed, retried),
            "{handler}: claimed, completed, failed, retried\n{body}"
        );
        assert_eq!(
            count("lineq_worker_step_duration_seconds_count", handler),
            claimed,
            "{handler}: one duration per outcome\n{body}"
        );
    }
    // Pickup latency: every first delivery, i.e. every claim here.
    assert_eq!(
        count("lineq_worker_pickup_latency_seconds_count", "echo"),
        3.0
    );
    assert!(
        body.contains("# TYPE lineq_worker_step_duration_seconds histogram"),
        "{body}"
    );
    assert!(
        body.contains(r#"lineq_worker_step_duration_seconds_bucket{namespace="default",handler="echo",le="0.005"}"#)
            || body.contains(r#"lineq_worker_step_duration_seconds_bucket{handler="echo",namespace="default",le="0.005"}"#),
        "{body}"
    );
    // The handler name a message gave is never a label value unless the worker serves it.
    assert!(!body.contains("no_such_handler"), "{body}");
    assert!(sample(&body, "lineq_db_pool_connections", &[r#"state="idle""#]).is_some());

    // The orchestrator: gauges from the database, refreshed every 5 s, one after another (a
    // scrape can fall between two of them), so wait for one scrape that shows them all.
    let want: &[(&str, &[&str], f64)] = &[
        ("lineq_executions", &[r#"status="completed""#], 4.0),
        ("lineq_executions", &[r#"status="failed""#], 1.0),
        ("lineq_executions", &[r#"status="pending""#], 1.0),
        (
            "lineq_queue_depth",
            &[r#"queue="lineq_steps_default""#],
            1.0,
        ),
        (
            "lineq_steps_unserved",
            &[r#"namespace="default""#, r#"handler="no_such_handler""#],
            1.0,
        ),
        ("lineq_queue_depth", &[r#"queue="lineq_results""#], 0.0),
        ("lineq_dead_letters", &[], 0.0),
        ("lineq_workers", &[r#"state="alive""#], 1.0),
    ];
    let body = wait_for_samples(&orch_addr, want, Duration::from_secs(20)).await;
    let gauge = |name: &str, labels: &[&str]| sample(&body, name, labels);
    assert!(
        gauge(
            "lineq_queue_oldest_message_age_seconds",
            &[r#"queue="lineq_steps_default""#]
        )
        .is_some()
    );
    assert!(gauge("lineq_db_pool_max_connections", &[]).is_some());
    assert!(gauge("lineq_db_pool_connections", &[r#"state="in_use""#]).is_some());

    // No label value is an id: not a correlation id, not an execution id, not any UUID.
    for addr in [&orch_addr, &worker_addr] {
        let (status, body) = get(addr, "/metrics").await.expect("scrape");
        assert_eq!(status, 200);
        for id in ids.iter().chain(&correlation) {
            assert!(!body.contains(&id.to_string()), "{id} in\n{body}");
            assert!(!body.contains(&id.simple().to_string()), "{id} in\n{body}");
        }
        let uuid_like = body
            .split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
            .any(|w| Uuid::parse_str(w).is_ok());
        assert!(!uuid_like, "a UUID in a label:\n{body}");

        assert_eq!(get(addr, "/healthz").await.expect("healthz").0, 200);
        let (status, body) = get(addr, "/readyz").await.expect("readyz");
        assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    }

    assert!(orch.terminate(Duration::from_secs(20)).success());
    assert!(worker.terminate(Duration::from_secs(20)).success());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_migrated() {
    let db = TestDb::empty().await;
    let addr = free_addr();
    let mut worker = Proc::start(
        &db.url,
        "worker-unmigrated",
        &["worker", "--metrics-addr", &addr],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        if let Some(r) = get(&addr, "/readyz").await {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no /readyz; log:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    let reason: serde_json::Value = serde_json::from_str(&body).expect("JSON reason");
    assert_eq!(reason["status"], "not_ready");
    assert!(
        reason["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not migrated"),
        "{body}"
    );
    assert_eq!(get(&addr, "/healthz").await.expect("healthz").0, 200);
    assert!(worker.is_running(), "it waits instead of exiting");

    // Once migrated it becomes ready and starts working.
    let out = lineq(&db.url, &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(Duration::from_secs(20), "ready after migrate", || {
        let addr = addr.clone();
        async move { (get(&addr, "/readyz").await?.0 == 200).then_some(()) }
    })
    .await;
    let client = Client::new(db.pool.clone());
    let s = client
        .submit(SubmitRequest::new("echo").input(json!({})))
        .await
        .expect("submit");
    // No orchestrator runs: the worker's claim is the proof it started.
    eventually(Duration::from_secs(20), "the worker to claim", || {
        let pool = db.pool.clone();
        let id = s.execution.execution_id;
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM lineq.events WHERE execution_id = $1 AND event_type = 'action_started'",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    assert!(worker.terminate(Duration::from_secs(20)).success());

    // Without --metrics-addr nothing is managing the process: it refuses at once, as before.
    let empty = TestDb::empty().await;
    let out = lineq(&empty.url, &["orchestrator"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not migrated"), "{}", stderr(&out));
    empty.drop_db().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_waiting_are_counted_by_reason() {
    let db = TestDb::new().await;
    let addr = free_addr();
    let _orch = Proc::start(
        &db.url,
        "orchestrator",
        &["orchestrator", "--metrics-addr", &addr],
    );
    // No worker: what waits keeps waiting.
    let client = Client::new(db.pool.clone());
    let reqs = (0..3)
        .map(|i| {
            SubmitRequest::new("echo")
                .input(json!({ "i": i }))
                .concurrency(lineq::ConcurrencyLimit::new("one-at-a-time", 1))
        })
        .chain([SubmitRequest::new("echo").delay(Duration::from_secs(600))])
        .collect();
    client.submit_many(reqs).await.expect("submit");
    let want: &[(&str, &[&str], f64)] = &[
        (
            "lineq_steps_waiting",
            &[r#"reason="concurrency_limit""#],
            2.0,
        ),
        ("lineq_steps_waiting", &[r#"reason="rate_limited""#], 0.0),
        ("lineq_steps_waiting", &[r#"reason="delayed""#], 1.0),
    ];
    wait_for_samples(&addr, want, Duration::from_secs(20)).await;
    db.drop_db().await;
}
