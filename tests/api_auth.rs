//! The REST API's bearer token, through real `lineq serve` processes: it refuses to listen beyond
//! loopback without one, requires it on every route but /healthz when it has one, and never
//! writes it to its log.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use lineq_testkit::*;

const TOKEN_ENV: &str = "LINEQ_API_TOKEN";

fn new_token() -> String {
    format!("tok-{}", Uuid::now_v7().simple())
}

/// Starts `lineq serve ARGS` with `env`, and returns it with the port it listens on.
async fn serve(url: &str, args: &[&str], env: &[(&str, &str)]) -> (Proc, u16) {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Debug logging, so a token that reached any log line would be caught below.
    let mut server = Proc::start_with(url, "serve", &all, |c| {
        c.env("RUST_LOG", "debug");
        for (k, v) in env {
            c.env(k, v);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = loop {
        let log = server.log_text();
        if let Some(rest) = log.split("listening on http://").nth(1) {
            let addr = rest.lines().next().unwrap_or("").trim().to_string();
            break addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .expect("a port");
        }
        assert!(server.is_running(), "lineq serve exited: {log}");
        assert!(
            Instant::now() < deadline,
            "lineq serve did not start: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (server, port)
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; returns status, headers (lowercased names) and body.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_listen_beyond_loopback_without_a_token() {
    let db = TestDb::new().await;
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"] {
        let out = lineq_with(&db.url, &["serve", "--addr", addr], |c| {
            c.env_remove(TOKEN_ENV);
        });
        assert_eq!(out.status.code(), Some(2), "{addr}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("refusing to serve"),
            "{}",
            stderr(&out)
        );
        assert!(!stdout(&out).contains("listening"), "{addr} was served");
    }
    // A token that breaks the rules is refused too, without being echoed.
    let out = lineq_with(&db.url, &["serve", "--addr", "0.0.0.0:0"], |c| {
        c.env(TOKEN_ENV, "hunter2");
    });
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
    // So is a token given two ways.
    let file = std::env::temp_dir().join(format!("lineq-token-{}", Uuid::now_v7().simple()));
    std::fs::write(&file, format!("{}\n", new_token())).expect("token file");
    let token = new_token();
    let out = lineq_with(
        &db.url,
        &[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--token-file",
            file.to_str().expect("utf-8"),
        ],
        |c| {
            c.env(TOKEN_ENV, &token);
        },
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!stderr(&out).contains(&token));
    let _ = std::fs::remove_file(&file);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_route_but_healthz_requires_it() {
    let db = TestDb::new().await;
    let token = new_token();
    let (mut server, port) = serve(&db.url, &["--addr", "0.0.0.0:0"], &[(TOKEN_ENV, &token)]).await;
    let right = format!("Bearer {token}");
    let wrong = format!("Bearer {}", new_token());

    let (status, _, body) = http(port, "GET", "/healthz", None, None).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    for path in ["/v1/executions", "/openapi.json", "/no/such/path"] {
        let (status, head, body) = http(port, "GET", path, None, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        let err: Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(err["error"]["code"], "unauthorized", "{body}");
        assert_eq!(err["error"]["field"], "Authorization", "{body}");
        for auth in [
            wrong.as_str(),
            token.as_str(),
            "Basic dXNlcjpwYXNz",
            "Bearer",
            &format!("Bearer {}x", token),
            &right[..right.len() - 1],
        ] {
            let (status, _, body) = http(port, "GET", path, Some(auth), None).await;
            assert_eq!(status, 401, "{path} with {auth:?}: {body}");
        }
    }
    let (status, head, _) = http(port, "GET", "/v1/executions", Some(&wrong), None).await;
    assert_eq!(status, 401);
    assert!(head.contains("error=\"invalid_token\""), "{head}");

    let (status, _, body) = http(
        port,
        "POST",
        "/v1/executions",
        Some(&right),
        Some(r#"{"target":"echo"}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, _, body) = http(port, "GET", "/v1/executions", Some(&right), None).await;
    assert_eq!(status, 200, "{body}");
    // The scheme is case-insensitive (RFC 7235).
    let lower = format!("bearer {token}");
    let (status, _, _) = http(port, "GET", "/v1/executions", Some(&lower), None).await;
    assert_eq!(status, 200);
    let (status, _, body) = http(port, "GET", "/no/such/path", Some(&right), None).await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = http(port, "GET", "/openapi.json", Some(&right), None).await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let exit = server.terminate(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}: {}", server.log_text());
    let log = server.log_text();
    assert!(!log.contains(&token), "the token is in the log:\n{log}");
    assert!(
        !log.to_lowercase().contains("authorization: bearer"),
        "{log}"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_enforced_on_loopback_too() {
    let db = TestDb::new().await;
    let token = new_token();
    let file = std::env::temp_dir().join(format!("lineq-token-{}", Uuid::now_v7().simple()));
    // One line, as `echo` or a secrets manager writes it.
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    let path = file.to_str().expect("utf-8").to_string();
    let (mut server, port) = serve(
        &db.url,
        &["--addr", "127.0.0.1:0", "--token-file", &path],
        &[],
    )
    .await;
    let (status, _, _) = http(port, "GET", "/v1/executions", None, None).await;
    assert_eq!(status, 401);
    let (status, _, body) = http(
        port,
        "GET",
        "/v1/executions",
        Some(&format!("Bearer {token}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let exit = server.terminate(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
    assert!(!server.log_text().contains(&token));
    let _ = std::fs::remove_file(&file);

    // Without a token, loopback stays open, as before.
    let (mut open, port) = serve(&db.url, &["--addr", "127.0.0.1:0"], &[]).await;
    let (status, _, _) = http(port, "GET", "/v1/executions", None, None).await;
    assert_eq!(status, 200);
    open.terminate(Duration::from_secs(10));
    db.drop_db().await;
}
