//! The security audit's findings (issue #19), each attack performed against real processes and
//! a real database and shown refused, or the limit holding.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use lineq::shared::execution::{ExecutionStatus, get_execution};
use lineq::{Client, SubmitRequest};
use support::*;

fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lineq-{what}-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_handlers_see_none_of_the_workers_secrets() {
    let db = TestDb::new().await;
    let dir = temp_dir("env");
    let script = dir.join("env.py");
    std::fs::write(
        &script,
        "import json, os\nprint(json.dumps(dict(os.environ)))\n",
    )
    .expect("script");
    // The interpreter itself, not a version manager's shim that sets variables of its own.
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let python = String::from_utf8_lossy(&python.stdout).trim().to_string();
    let spec = format!("show_env={python} {}", script.display());
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start_with(
        &db.url,
        "worker",
        &["worker", "--command", &spec, "--pass-env", "STEP_REGION"],
        |c| {
            c.env("LINEQ_DATABASE_URL", &db.url)
                .env("LINEQ_API_TOKEN", "api-token-secret-0123456789")
                .env("PGPASSWORD", "pg-password-secret")
                .env("SOME_OTHER_SECRET", "other-secret")
                .env("STEP_REGION", "eu-west-9")
                .env("LC_ALL", "C")
                .env("TRACESTATE", "worker=own");
        },
    );
    let client = Client::new(db.pool.clone());
    let id = client
        .submit(SubmitRequest::new("show_env").input(json!({})))
        .await
        .expect("submit")
        .execution
        .execution_id;
    wait_all_finished(&db.pool, &[id], Duration::from_secs(30)).await;
    let e = get_execution(&db.pool, id).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Completed, "{:?}", e.error);
    let env = e.output.expect("output");
    let env = env.as_object().expect("an object");
    let text = Value::Object(env.clone()).to_string();
    for absent in [
        "DATABASE_URL",
        "LINEQ_DATABASE_URL",
        "LINEQ_API_TOKEN",
        "PGPASSWORD",
        "SOME_OTHER_SECRET",
        "TRACESTATE",
        "RUST_LOG",
    ] {
        assert!(!env.contains_key(absent), "{absent} was passed: {text}");
    }
    // The password of the worker's database URL appears nowhere, under any name.
    assert!(!text.contains("postgres://"), "{text}");
    for secret in ["api-token-secret", "pg-password-secret", "other-secret"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert_eq!(env["STEP_REGION"], "eu-west-9", "--pass-env passes it");
    assert_eq!(env["LC_ALL"], "C");
    assert!(env.contains_key("PATH"));
    assert_eq!(env["LINEQ_EXECUTION_ID"], json!(id.to_string()));
    assert_eq!(env["LINEQ_STEP"], "show_env");
    assert!(env.contains_key("TRACEPARENT"));
    let unexpected: Vec<&String> = env
        .keys()
        .filter(|k| {
            !matches!(
                k.as_str(),
                "PATH" | "HOME" | "LANG" | "TZ" | "TMPDIR" | "STEP_REGION" | "TRACEPARENT"
            ) && !k.starts_with("LC_")
                && !k.starts_with("LINEQ_")
        })
        .collect();
    // (python3 may set LC_CTYPE itself.)
    assert!(unexpected.is_empty(), "{unexpected:?}");

    // A name lineq keeps to itself cannot be passed, from a flag or from the file.
    let refused = lineq(
        &db.url,
        &[
            "worker",
            "--command",
            &spec,
            "--pass-env",
            "LINEQ_API_TOKEN",
        ],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("pass_env"),
        "{}",
        stderr(&refused)
    );
    let config = dir.join("lineq.toml");
    std::fs::write(&config, "[worker]\npass_env = [\"DATABASE_URL\"]\n").expect("config");
    let refused = lineq(
        &db.url,
        &["--config", &config.display().to_string(), "worker"],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));

    for p in [&mut worker, &mut orchestrator] {
        assert!(p.is_running(), "{} died: {}", p.name, p.log_text());
        assert!(p.terminate(Duration::from_secs(20)).success());
    }
    let _ = std::fs::remove_dir_all(dir);
    db.drop_db().await;
}

/// Waits for `lineq serve`'s "listening on" line and returns its address.
async fn listening_addr(server: &mut Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = server.log_text();
        if let Some(rest) = log.split("listening on http://").nth(1) {
            return rest.lines().next().unwrap_or("").trim().to_string();
        }
        assert!(server.is_running(), "lineq serve exited: {log}");
        assert!(
            Instant::now() < deadline,
            "lineq serve did not start: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port free right now on 127.0.0.1.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Reads until the server closes the connection (EOF or reset); what it sent, and how long it
/// took. Panics when the connection is still open after `within`.
async fn until_closed(s: &mut TcpStream, within: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + within).into(), s.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open for {within:?}; it sent {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

/// One complete GET with `Connection: close`: the status and body.
async fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let (text, _) = until_closed(&mut s, Duration::from_secs(10)).await;
    status_and_body(&text)
}

fn status_and_body(text: &str) -> (u16, String) {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The flags of the short limits the HTTP tests run with.
const SHORT_LIMITS: [&str; 8] = [
    "--http-header-timeout-secs",
    "2",
    "--http-request-timeout-secs",
    "2",
    "--http-idle-timeout-secs",
    "2",
    "--http-max-connections",
    "3",
];

/// The slow-client attacks on a listener with [`SHORT_LIMITS`]: each connection is closed by
/// the server within a few seconds, and a fourth connection at once is refused.
async fn slow_clients_are_cut_off(addr: &str) {
    let limit = Duration::from_secs(8);
    // Connected, and nothing sent.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let (_, took) = until_closed(&mut idle, limit).await;
    assert!(
        took >= Duration::from_millis(1500),
        "closed too early: {took:?}"
    );

    // Half a request header, then nothing.
    let mut partial = TcpStream::connect(addr).await.expect("connect");
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    until_closed(&mut partial, limit).await;

    // A header trickled a byte at a time: activity does not extend the header timeout.
    let mut trickle = TcpStream::connect(addr).await.expect("connect");
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\nX-Trickle: ")
        .await
        .expect("write");
    let start = Instant::now();
    let closed = loop {
        if trickle.write_all(b"a").await.is_err() {
            break true;
        }
        let mut b = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(250), trickle.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            _ => {}
        }
        if start.elapsed() > limit {
            break false;
        }
    };
    assert!(closed, "a trickled header kept the connection open");

    // A kept-alive connection that starts no second request.
    let mut kept = TcpStream::connect(addr).await.expect("connect");
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let (text, _) = until_closed(&mut kept, limit).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // The connection limit: three held open, the fourth refused at once with 503.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("write");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    let (text, took) = until_closed(&mut extra, limit).await;
    assert!(took < Duration::from_millis(1500), "refused late: {took:?}");
    let (status, body) = status_and_body(&text);
    assert_eq!(status, 503, "{text}");
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"]["code"], "unavailable");
    // The held ones are cut off by the header timeout, and their places are free again.
    for mut s in held {
        until_closed(&mut s, limit).await;
    }
    let (status, _) = get(addr, "/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_cuts_off_slow_clients_and_holds_its_connection_limit() {
    let db = TestDb::new().await;
    let mut args = vec!["serve", "--addr", "127.0.0.1:0"];
    args.extend(SHORT_LIMITS);
    let mut server = Proc::start(&db.url, "serve", &args);
    let addr = listening_addr(&mut server).await;
    slow_clients_are_cut_off(&addr).await;

    // A body that stalls: 408 in the API's error shape when the request timeout is up.
    let mut stalled = TcpStream::connect(&addr).await.expect("connect");
    stalled
        .write_all(
            format!(
                "POST /v1/executions HTTP/1.1\r\nHost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"target\":"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let (text, took) = until_closed(&mut stalled, Duration::from_secs(8)).await;
    let (status, body) = status_and_body(&text);
    assert_eq!(status, 408, "{text}");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"]["code"], "request_timeout");
    assert_eq!(db.count("lineq.executions").await, 0);

    assert!(server.is_running(), "{}", server.log_text());
    assert!(server.terminate(Duration::from_secs(10)).success());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_cuts_off_slow_clients_and_holds_its_connection_limit() {
    let db = TestDb::new().await;
    let addr = free_addr();
    let mut args = vec!["worker", "--metrics-addr", &addr];
    args.extend(SHORT_LIMITS);
    let mut worker = Proc::start(&db.url, "worker", &args);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).await.is_err() {
        assert!(worker.is_running(), "{}", worker.log_text());
        assert!(Instant::now() < deadline, "{}", worker.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    slow_clients_are_cut_off(&addr).await;
    assert!(worker.is_running(), "{}", worker.log_text());
    assert!(worker.terminate(Duration::from_secs(20)).success());
    db.drop_db().await;
}
