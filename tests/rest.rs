//! The REST API: the same answers as the CLI, errors with codes and fields, `If-Match`
//! concurrency, the OpenAPI document, and a real `lineq serve` process over TCP.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

use lineq_testkit::*;

/// Sends one request through the router (no socket), returning status, headers and JSON body.
async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("{uri}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
        })
    };
    (status, headers, json)
}

fn cli_json(url: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let out = lineq(url, &all);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("CLI prints JSON")
}

/// URL-encodes a query value.
fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_cli_give_the_same_answers() {
    let db = TestDb::new().await;
    let app = lineq_api::rest::router(db.pool.clone());

    // Submitted both ways.
    let (status, headers, created) = call(
        &app,
        Method::POST,
        "/v1/executions",
        Some(json!({
            "handler": "echo",
            "input": {"x": 1},
            "tags": {"customer": "acme", "region": "us-west"},
            "metadata": {"order": {"id": "12345"}},
        })),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["created"], json!(true));
    let a = created["execution"]["execution_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        headers["location"].to_str().unwrap(),
        format!("/v1/executions/{a}")
    );
    assert_eq!(headers["etag"].to_str().unwrap(), "\"v1\"");
    let out = lineq(
        &db.url,
        &[
            "submit",
            "sleep",
            "--tag",
            "customer=acme",
            "--tag",
            "region=eu",
            "--metadata",
            r#"{"order":{"id":"777"},"channel":"web"}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let b = stdout(&out).trim().to_string();
    let (status, _, child) = call(
        &app,
        Method::POST,
        "/v1/executions",
        Some(json!({"handler": "echo", "parent_execution_id": a, "tags": {"tier": "gold"}})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{child}");
    let c = child["execution"]["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    let corr = child["execution"]["correlation_id"]
        .as_str()
        .unwrap()
        .to_string();

    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec![], String::new()),
        (vec!["--tag", "customer=acme"], "tag=customer%3Dacme".into()),
        (
            vec!["--tag", "customer=acme", "--tag", "region=eu"],
            "tag=customer=acme&tag=region=eu".into(),
        ),
        (vec!["--has-tag", "tier"], "has_tag=tier".into()),
        (
            vec!["--metadata", r#"{"order":{"id":"12345"}}"#],
            format!("metadata={}", enc(r#"{"order":{"id":"12345"}}"#)),
        ),
        (vec!["--status", "pending"], "status=pending".into()),
        (
            vec!["--status", "completed", "--status", "failed"],
            "status=completed&status=failed".into(),
        ),
        (vec!["--workflow", "sleep"], "workflow=sleep".into()),
        (vec!["--parent", &a], format!("parent={a}")),
        (vec!["--root", &a], format!("root={a}")),
        (
            vec!["--correlation-id", &corr],
            format!("correlation_id={corr}"),
        ),
        (
            vec![
                "--since",
                "2000-01-01T00:00:00Z",
                "--until",
                "2100-01-01T00:00:00+02:00",
            ],
            format!(
                "since={}&until={}",
                enc("2000-01-01T00:00:00Z"),
                enc("2100-01-01T00:00:00+02:00")
            ),
        ),
        (
            vec!["--since", "2100-01-01T00:00:00Z"],
            "since=2100-01-01T00:00:00Z".into(),
        ),
        (
            vec![
                "--tag",
                "customer=acme",
                "--has-tag",
                "region",
                "--limit",
                "1",
            ],
            "tag=customer=acme&has_tag=region&limit=1".into(),
        ),
        (
            vec!["--tag", "customer=' OR '1'='1"],
            format!("tag={}", enc("customer=' OR '1'='1")),
        ),
    ];
    for (args, query) in &cases {
        let mut cli_args = vec!["list"];
        cli_args.extend(args.iter());
        let cli = cli_json(&db.url, &cli_args);
        let (status, _, rest) = call(
            &app,
            Method::GET,
            &format!("/v1/executions?{query}"),
            None,
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{query}: {rest}");
        assert_eq!(rest, cli, "{args:?} vs ?{query}");
    }
    // A page and the next, both ways, with the cursor from the other side.
    let cli1 = cli_json(&db.url, &["list", "--limit", "2"]);
    let cursor = cli1["next_cursor"].as_str().expect("more").to_string();
    let (_, _, rest2) = call(
        &app,
        Method::GET,
        &format!("/v1/executions?limit=2&cursor={}", enc(&cursor)),
        None,
        &[],
    )
    .await;
    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["execution_id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut all = ids(&cli1);
    all.extend(ids(&rest2));
    assert_eq!(all, vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(rest2["next_cursor"], Value::Null);

    // One execution, its tags changed both ways, and its history.
    let (status, headers, patched) = call(
        &app,
        Method::PATCH,
        &format!("/v1/executions/{a}/tags"),
        Some(json!({"set": {"tier": "gold"}, "remove": ["region"], "cause": "upsell"})),
        &[("if-match", "\"v1\"")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(headers["etag"].to_str().unwrap(), "\"v2\"");
    assert_eq!(patched["tags"], json!({"customer": "acme", "tier": "gold"}));
    let out = lineq(
        &db.url,
        &["tag", &a, "region=us-east", "--expect-version", "2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, headers, got) =
        call(&app, Method::GET, &format!("/v1/executions/{a}"), None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["etag"].to_str().unwrap(), "\"v3\"");
    assert_eq!(got, cli_json(&db.url, &["get", &a])["execution"]);
    assert_eq!(
        got["tags"],
        json!({"customer": "acme", "tier": "gold", "region": "us-east"})
    );
    let (status, _, history) = call(
        &app,
        Method::GET,
        &format!("/v1/executions/{a}/history"),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history, cli_json(&db.url, &["history", &a]));
    let tag_changes: Vec<&Value> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["kind"] == "tags")
        .collect();
    assert_eq!(tag_changes.len(), 2);
    assert_eq!(tag_changes[0]["cause"], "upsell");
    assert_eq!(tag_changes[1]["cause"], "lineq tag");
    assert_eq!(tag_changes[1]["version"], json!(3));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_errors_name_the_field_and_use_the_right_status() {
    let db = TestDb::new().await;
    let app = lineq_api::rest::router(db.pool.clone());
    let err = |v: &Value| (v["error"]["code"].clone(), v["error"]["field"].clone());

    // 400, the field named, nothing written.
    for (body, field, needle) in [
        (
            json!({"handler": "echo", "tags": {"lineq_x": "1"}}),
            "tags",
            "reserved prefix",
        ),
        (
            json!({"handler": "echo", "tags": {"Bad": "1"}}),
            "tags",
            "contains 'B'",
        ),
        (
            json!({"handler": "echo", "tags": {"k": "v".repeat(257)}}),
            "tags",
            "the limit is 256",
        ),
        (
            json!({"handler": "echo", "tags": (0..21).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            "tags",
            "21 tags; the limit is 20",
        ),
        (
            json!({"handler": "echo", "metadata": {"_lineq_x": 1}}),
            "metadata",
            "reserved prefix",
        ),
        (
            json!({"handler": "echo", "metadata": [1]}),
            "metadata",
            "JSON object",
        ),
        (
            json!({"handler": "echo", "metadata": {"b": "x".repeat(64 * 1024)}}),
            "metadata",
            "the limit is 65536 bytes",
        ),
        (json!({"handler": "rm -rf /"}), "handler", "invalid handler"),
        (
            json!({"handler": "echo", "bogus": 1}),
            "body",
            "unknown field",
        ),
        (json!({"input": 1}), "body", "target"),
    ] {
        let (status, _, e) = call(
            &app,
            Method::POST,
            "/v1/executions",
            Some(body.clone()),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {e}");
        assert_eq!(
            err(&e),
            (json!("invalid_input"), json!(field)),
            "{body}: {e}"
        );
        assert!(
            e["error"]["message"].as_str().unwrap().contains(needle),
            "{e}"
        );
        assert_eq!(db.written().await, (0, 0, 0, 0), "{body} wrote something");
    }

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=junk", "cursor"),
        ("metadata=%5B1%5D", "metadata"),
        ("metadata=%7Bnope", "metadata"),
        ("tag=nokv", "tag"),
        ("has_tag=x%27%3B%20DROP%20TABLE%20t", "has_tag"),
        ("status=bogus", "status"),
        ("parent=nope", "parent"),
        ("since=yesterday", "since"),
        ("tags=customer=acme", "query"),
    ] {
        let (status, _, e) = call(
            &app,
            Method::GET,
            &format!("/v1/executions?{query}"),
            None,
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {e}");
        assert_eq!(
            err(&e),
            (json!("invalid_input"), json!(field)),
            "{query}: {e}"
        );
    }

    // 422: the request follows the OpenAPI document but names something that does not exist or
    // contradicts itself.
    let nowhere = Uuid::now_v7();
    for (method, uri, body, field, needle) in [
        (
            Method::POST,
            "/v1/executions".to_string(),
            Some(json!({"handler": "echo", "namespace": "nowhere"})),
            "namespace",
            "unknown namespace",
        ),
        (
            Method::POST,
            "/v1/executions".to_string(),
            Some(json!({"handler": "echo", "parent_execution_id": nowhere})),
            "parent_execution_id",
            "does not exist",
        ),
        (
            Method::POST,
            "/v1/executions".to_string(),
            Some(json!({"target": "echo@3"})),
            "target",
            "not found",
        ),
        (
            Method::GET,
            "/v1/executions?tag=k=a&tag=k=b".to_string(),
            None,
            "tag",
            "given twice",
        ),
        (
            Method::GET,
            "/v1/executions?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z".to_string(),
            None,
            "until",
            "before since",
        ),
    ] {
        let (status, _, e) = call(&app, method.clone(), &uri, body.clone(), &[]).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{uri} {body:?}: {e}"
        );
        assert_eq!(
            err(&e),
            (json!("unprocessable"), json!(field)),
            "{uri} {body:?}: {e}"
        );
        assert!(
            e["error"]["message"].as_str().unwrap().contains(needle),
            "{e}"
        );
        assert_eq!(db.written().await, (0, 0, 0, 0), "{body:?} wrote something");
    }

    let (status, _, e) = call(&app, Method::GET, "/v1/executions/123", None, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err(&e), (json!("invalid_input"), json!("execution_id")));
    let missing = Uuid::now_v7();
    for (method, uri, body) in [
        (Method::GET, format!("/v1/executions/{missing}"), None),
        (
            Method::GET,
            format!("/v1/executions/{missing}/history"),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/executions/{missing}/tags"),
            Some(json!({"set": {"a": "b"}})),
        ),
        (
            Method::DELETE,
            format!("/v1/executions/{missing}/tags/a"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/executions/{missing}/cancel"),
            None,
        ),
        (Method::GET, "/v2/nothing".to_string(), None),
    ] {
        let (status, _, e) = call(&app, method.clone(), &uri, body, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {e}");
        assert_eq!(e["error"]["code"], "not_found", "{method} {uri}");
    }

    // Idempotent submit: 201, then 200 with the first execution.
    let body =
        json!({"handler": "echo", "idempotency_key": "order-1", "tags": {"customer": "acme"}});
    let (s1, _, first) = call(
        &app,
        Method::POST,
        "/v1/executions",
        Some(body.clone()),
        &[],
    )
    .await;
    let (s2, _, again) = call(&app, Method::POST, "/v1/executions", Some(body), &[]).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(again["created"], json!(false));
    assert_eq!(again["execution"], first["execution"]);
    let id = first["execution"]["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    let tags_uri = format!("/v1/executions/{id}/tags");

    // If-Match: a stale version is 412 with the current one; garbage is 400.
    let patch = json!({"set": {"region": "eu"}});
    let (status, _, e) = call(
        &app,
        Method::PATCH,
        &tags_uri,
        Some(patch.clone()),
        &[("if-match", "\"v7\"")],
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{e}");
    assert_eq!(err(&e), (json!("precondition_failed"), json!("If-Match")));
    assert_eq!(e["error"]["current_version"], json!(1));
    let (status, _, e) = call(
        &app,
        Method::PATCH,
        &tags_uri,
        Some(patch.clone()),
        &[("if-match", "soon")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err(&e), (json!("invalid_input"), json!("If-Match")));
    for (body, needle) in [
        (json!({"set": {"_x": "1"}}), "reserved prefix"),
        (json!({"set": {}, "remove": []}), "nothing to change"),
        (json!({"add": {"a": "1"}}), "unknown field"),
        (
            json!({"set": {"a": "1"}, "cause": "c".repeat(257)}),
            "the limit is 256",
        ),
    ] {
        let (status, _, e) = call(&app, Method::PATCH, &tags_uri, Some(body.clone()), &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(needle),
            "{e}"
        );
    }
    let (status, _, e) = call(
        &app,
        Method::PATCH,
        &tags_uri,
        Some(json!({"set": {"a": "1"}, "remove": ["a"]})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(err(&e), (json!("unprocessable"), json!("tags")));
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("both set and removed")
    );
    // Every accepted form of If-Match; no If-Match at all is allowed too.
    for (if_match, version) in [("1", 2), ("\"v2\"", 3), ("W/\"v3\"", 4), ("*", 5)] {
        let (status, headers, e) = call(
            &app,
            Method::PATCH,
            &tags_uri,
            Some(json!({"set": {"n": version.to_string()}})),
            &[("if-match", if_match)],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{if_match}: {e}");
        assert_eq!(e["version"], json!(version));
        assert_eq!(headers["etag"].to_str().unwrap(), format!("\"v{version}\""));
    }
    let (status, _, e) = call(
        &app,
        Method::DELETE,
        &format!("{tags_uri}/n"),
        None,
        &[("if-match", "\"v5\"")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!(e["tags"], json!({"customer": "acme"}));
    assert_eq!(e["version"], json!(6));
    let (status, _, e) = call(
        &app,
        Method::DELETE,
        &format!("{tags_uri}/lineq_x"),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");

    // Concurrent PATCHes naming the same version: one 200, the rest 412, none lost silently.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let app = app.clone();
            let uri = tags_uri.clone();
            tokio::spawn(async move {
                call(
                    &app,
                    Method::PATCH,
                    &uri,
                    Some(json!({"set": {format!("r{i}"): "x"}})),
                    &[("if-match", "6")],
                )
                .await
                .0
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("join"));
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
            .count(),
        5
    );

    // Cancelled: tags are fixed (422), and cancelling again is 422 too.
    let (status, _, report) = call(
        &app,
        Method::POST,
        &format!("/v1/executions/{id}/cancel"),
        Some(json!({"reason": "customer asked"})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["execution_id"], json!(id));
    let (status, _, e) = call(
        &app,
        Method::PATCH,
        &tags_uri,
        Some(json!({"set": {"late": "1"}})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["code"], "invalid_state");
    let (status, _, _) = call(
        &app,
        Method::POST,
        &format!("/v1/executions/{id}/cancel"),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, _, history) = call(
        &app,
        Method::GET,
        &format!("/v1/executions/{id}/history"),
        None,
        &[],
    )
    .await;
    // The execution's own last status change (its steps' cancellations follow it).
    let last = history
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|h| h["kind"] == "status")
        .unwrap()
        .clone();
    assert_eq!(last["status"], "cancelled", "{history:#}");
    assert_eq!(last["cause"], "customer asked", "{history:#}");

    let (status, _, h) = call(&app, Method::GET, "/healthz", None, &[]).await;
    assert_eq!((status, h), (StatusCode::OK, json!({"status": "ok"})));
    db.drop_db().await;
}

#[tokio::test]
async fn the_openapi_document_is_generated_from_the_routes() {
    let db = TestDb::new().await;
    let app = lineq_api::rest::router(db.pool.clone());
    let (status, _, doc) = call(&app, Method::GET, "/openapi.json", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/v1/executions", "post"),
        ("/v1/executions", "get"),
        ("/v1/executions/{id}", "get"),
        ("/v1/executions/{id}/history", "get"),
        ("/v1/executions/{id}/lineage", "get"),
        ("/v1/executions/{id}/tags", "patch"),
        ("/v1/executions/{id}/tags/{key}", "delete"),
        ("/v1/executions/{id}/cancel", "post"),
        ("/healthz", "get"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    let list_params: Vec<&str> = paths["/v1/executions"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "tag",
        "has_tag",
        "metadata",
        "status",
        "workflow",
        "parent",
        "root",
        "correlation_id",
        "since",
        "until",
        "limit",
        "cursor",
    ] {
        assert!(
            list_params.contains(&p),
            "{p} not documented: {list_params:?}"
        );
    }
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for s in [
        "ExecutionView",
        "ExecutionPage",
        "SubmitBody",
        "TagPatch",
        "HistoryEntryView",
        "ErrorBody",
        "Status",
    ] {
        assert!(schemas.contains_key(s), "schema {s} missing");
    }
    // The documented execution has exactly the fields the API sends.
    let e = call(
        &app,
        Method::POST,
        "/v1/executions",
        Some(json!({"handler": "echo"})),
        &[],
    )
    .await
    .2;
    let mut sent: Vec<&String> = e["execution"].as_object().unwrap().keys().collect();
    let mut documented: Vec<&String> = schemas["ExecutionView"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    sent.sort();
    documented.sort();
    assert_eq!(sent, documented);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineq_serve_answers_over_tcp_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    let mut server = Proc::start(&db.url, "serve", &["serve", "--addr", "127.0.0.1:0"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let log = server.log_text();
        if let Some(rest) = log.split("listening on http://").nth(1) {
            break rest.lines().next().unwrap_or("").trim().to_string();
        }
        assert!(server.is_running(), "lineq serve exited: {log}");
        assert!(
            Instant::now() < deadline,
            "lineq serve did not start: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, body) = http(&addr, "GET", "/healthz", None).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/executions",
        Some(r#"{"target":"echo","tags":{"customer":"acme"}}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let created: Value = serde_json::from_str(&body).expect("json");
    let (status, body) = http(&addr, "GET", "/v1/executions?tag=customer=acme", None).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["items"][0], created["execution"]);
    let (status, body) = http(&addr, "GET", "/v1/executions?limit=0", None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(&addr, "GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("/v1/executions/{id}/tags"), "{body}");

    let exit = server.terminate(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}: {}", server.log_text());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_lineage_is_the_cli_lineage() {
    let db = TestDb::new().await;
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(&db.url, "worker", &["worker"]);
    let client = lineq::Client::new(db.pool.clone());
    let input = serde_json::json!({"children": [{"target": "echo", "input": 1}], "wait": true});
    let id = client
        .submit(lineq::SubmitRequest::new("spawn").input(input))
        .await
        .expect("submit")
        .execution
        .execution_id;
    wait_all_finished(&db.pool, &[id], std::time::Duration::from_secs(30)).await;
    let app = lineq_api::rest::router(db.pool.clone());
    let (status, _, rest) = call(
        &app,
        Method::GET,
        &format!("/v1/executions/{id}/lineage"),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let cli = cli_json(&db.url, &["lineage", &id.to_string()]);
    assert_eq!(rest, cli, "REST and CLI lineage differ");
    let text = rest.to_string();
    assert!(
        text.contains("step_waiting") && text.contains("execution_completed"),
        "{text}"
    );
    let (status, _, err) = call(
        &app,
        Method::GET,
        &format!("/v1/executions/{}/lineage", uuid::Uuid::now_v7()),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    for p in [&mut worker, &mut orchestrator] {
        assert!(p.terminate(std::time::Duration::from_secs(20)).success());
    }
    db.drop_db().await;
}

/// What the OpenAPI document allows is accepted: integers written as `5.0`, a cancel body of
/// `null`, every `If-Match` form, a `next_cursor`; and what it does not allow is refused.
#[tokio::test]
async fn rest_accepts_exactly_what_the_document_allows() {
    let db = TestDb::new().await;
    let app = lineq_api::rest::router(db.pool.clone());
    let (status, _, e) = call(
        &app,
        Method::POST,
        "/v1/executions",
        Some(json!({"target": "echo", "priority": 5.0, "timeout_ms": 1e3})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{e}");
    assert_eq!(e["execution"]["priority"], json!(5));
    let id = e["execution"]["execution_id"].as_str().unwrap().to_string();
    for body in [
        json!({"target": "echo", "priority": 1.5}),
        json!({"target": "echo", "priority": 3e10}),
        json!({"target": "echo", "timeout_ms": 0}),
        json!({"target": "echo", "input": {"a": "nul\u{0}"}}),
    ] {
        let (status, _, e) = call(
            &app,
            Method::POST,
            "/v1/executions",
            Some(body.clone()),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {e}");
    }
    // If-Match forms outside the document's pattern are refused, before anything is read.
    for bad in ["W/3", "\"v3", "v3", "+3", "3 4", "null"] {
        let (status, _, e) = call(
            &app,
            Method::PATCH,
            &format!("/v1/executions/{id}/tags"),
            Some(json!({"set": {"a": "b"}})),
            &[("if-match", bad)],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert_eq!(e["error"]["field"], "If-Match");
    }
    // A cursor the server gave is accepted; others like it are not.
    let (_, _, page) = call(&app, Method::GET, "/v1/executions?limit=1", None, &[]).await;
    assert_eq!(page["next_cursor"], Value::Null);
    let (status, _, e) = call(
        &app,
        Method::GET,
        "/v1/executions?cursor=-1_0190aaaabbbbccccddddeeeeffff0000",
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    // A cancel body of `null` is no body.
    let raw = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/executions/{id}/cancel"))
        .header("content-type", "application/json")
        .body(Body::from("null"))
        .expect("request");
    let res = app.clone().oneshot(raw).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    db.drop_db().await;
}
