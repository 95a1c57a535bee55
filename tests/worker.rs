//! Worker behaviour with real processes: steps no worker serves yet, malformed messages put into a queue by
//! hand, command handlers in another language, panics and timeouts. In each case the worker
//! keeps serving everything else.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use lineq::{Client, SubmitRequest};
use lineq_core::event::events_of_execution;
use lineq_core::execution::{ExecutionStatus, get_execution};
use lineq_testkit::*;

async fn submit(client: &Client, handler: &str, input: Value) -> Uuid {
    client
        .submit(SubmitRequest::new(handler).input(input))
        .await
        .expect("submit")
        .execution
        .execution_id
}

async fn action_failed_error(db: &TestDb, id: Uuid) -> Value {
    let events = events_of_execution(&db.pool, id).await.expect("events");
    assert_eq!(tree_shape(&events), ONE_STEP_FAILED, "{id}");
    events
        .iter()
        .find(|e| e.event_type == "action_failed")
        .map(|e| e.payload["error"].clone())
        .expect("action_failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_waits_for_a_worker_that_serves_its_handler() {
    let db = TestDb::new().await;
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(&db.url, "worker", &["worker", "--worker-id", "w-old"]);
    let client = Client::new(db.pool.clone());

    // A handler no running worker serves (a rolling deploy that adds it): the step is not
    // failed by the worker that does not know it; it waits, unclaimed.
    let waiting = submit(&client, "resize", json!({"w": 2})).await;
    let good = submit(&client, "echo", json!({"after": "unknown"})).await;
    wait_all_finished(&db.pool, &[good], Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let e = get_execution(&db.pool, waiting).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Pending, "{e:?}");
    let claims = db
        .count(&format!(
            "lineq.events WHERE execution_id = '{waiting}' AND event_type = 'action_started'"
        ))
        .await;
    assert_eq!(claims, 0, "no worker claimed a step it cannot run");
    // And it says so.
    let get = stdout(&lineq(&db.url, &["get", &waiting.to_string()]));
    assert!(
        get.contains(
            "step resize needs handler resize in namespace default, and no live worker serves it"
        ),
        "{get}"
    );
    let workers = stdout(&lineq(&db.url, &["workers"]));
    assert!(
        workers.contains("1 step(s) of handler resize in namespace default"),
        "{workers}"
    );

    // A worker that serves it arrives and runs it.
    let spec = r#"resize=python3 -c "import sys, json; print(json.dumps({'w': json.load(sys.stdin)['w'] * 2}))""#;
    let mut new_worker = Proc::start(
        &db.url,
        "new-worker",
        &["worker", "--worker-id", "w-new", "--command", spec],
    );
    wait_all_finished(&db.pool, &[waiting], Duration::from_secs(30)).await;
    let e = get_execution(&db.pool, waiting).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Completed, "{e:?}");
    assert_eq!(e.output, Some(json!({"w": 4})));
    let events = events_of_execution(&db.pool, waiting)
        .await
        .expect("events");
    assert!(
        events
            .iter()
            .filter(|e| e.event_type == "action_started")
            .all(|e| e.worker_id.as_deref() == Some("w-new")),
        "only the worker that serves it claimed it"
    );
    assert!(worker.is_running());
    for p in [&mut worker, &mut new_worker, &mut orchestrator] {
        assert!(p.terminate(Duration::from_secs(20)).success());
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_the_reason() {
    let db = TestDb::new().await;
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(&db.url, "worker", &["worker"]);
    let client = Client::new(db.pool.clone());

    // A good message to copy and break.
    let template_id = submit(&client, "echo", json!(1)).await;
    wait_all_finished(&db.pool, &[template_id], Duration::from_secs(30)).await;
    let good: Value = sqlx::query_scalar("SELECT message FROM pgmq.a_lineq_steps_default LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .expect("template");
    let mut bad_meta = good.clone();
    bad_meta["meta"]["traceparent"] = json!("not-a-traceparent");
    let mut no_corr = good.clone();
    no_corr["meta"]
        .as_object_mut()
        .expect("meta")
        .remove("correlation_id");
    let mut bad_attempt = good.clone();
    bad_attempt["attempt"] = json!(-1);
    // A step name that would put a line break into logs and LINEQ_STEP.
    let mut newline_step = good.clone();
    newline_step["step"] = json!("echo\nFAKE LOG LINE");
    // Too large to hand to any worker: refused in the database, before a worker reads it.
    let mut huge = good.clone();
    huge["input"] = json!("x".repeat(3 * 1024 * 1024));
    // Nested deeper than the worker's JSON parser goes (PostgreSQL takes it): the worker hands
    // it back with lineq.worker_reject.
    let deep_text = {
        let mut t = good.clone();
        t["input"] = json!("PLACEHOLDER");
        t.to_string().replace(
            "\"PLACEHOLDER\"",
            &format!("{}1{}", "[".repeat(5000), "]".repeat(5000)),
        )
    };

    let bodies = [
        (json!("just a string"), "expected a JSON object"),
        (json!([1, 2, 3]), "expected a JSON object"),
        (json!({"step_id": 42}), "step message"),
        (bad_meta, "meta.traceparent"),
        (no_corr, "correlation_id"),
        (bad_attempt, "attempt"),
        (newline_step, "step is not a name"),
        (huge, "the limit is 2097152"),
    ];
    let mut sent = Vec::new();
    for (body, reason) in &bodies {
        let id: i64 = sqlx::query_scalar("SELECT pgmq.send('lineq_steps_default', $1::jsonb)")
            .bind(body)
            .fetch_one(&db.pool)
            .await
            .expect("send by hand");
        sent.push((id, *reason));
    }
    let deep_id: i64 =
        sqlx::query_scalar("SELECT pgmq.send('lineq_steps_default', $1::text::jsonb)")
            .bind(&deep_text)
            .fetch_one(&db.pool)
            .await
            .expect("send deep by hand");
    sent.push((deep_id, "recursion limit"));
    // A NULL body, which no client would send.
    let null_id: i64 = sqlx::query_scalar(
        "INSERT INTO pgmq.q_lineq_steps_default (vt, message) VALUES (clock_timestamp(), NULL) RETURNING msg_id",
    )
    .fetch_one(&db.pool)
    .await
    .expect("insert null");
    sent.push((null_id, "null"));
    // And a malformed result for the orchestrator.
    let bad_result: i64 =
        sqlx::query_scalar("SELECT pgmq.send('lineq_results', '{\"outcome\": \"maybe\"}')")
            .fetch_one(&db.pool)
            .await
            .expect("send result by hand");

    let letters: Vec<Value> = eventually(Duration::from_secs(30), "dead letters", || async {
        let rows: Vec<Value> =
            // The deep body is kept as it was: too deep for serde_json to hand back here.
            sqlx::query_scalar(
                "SELECT CASE WHEN message->>'reason' LIKE '%recursion limit%'
                             THEN message - 'message' ELSE message END
                 FROM pgmq.q_lineq_dlq ORDER BY msg_id",
            )
                .fetch_all(&db.pool)
                .await
                .ok()?;
        (rows.len() == sent.len() + 1).then_some(rows)
    })
    .await;
    for (msg_id, reason) in &sent {
        let letter = letters
            .iter()
            .find(|l| {
                l["source_queue"] == "lineq_steps_default" && l["source_msg_id"] == json!(msg_id)
            })
            .unwrap_or_else(|| panic!("no dead letter for step message {msg_id}"));
        let why = letter["reason"].as_str().expect("reason");
        assert!(
            why.contains(reason),
            "msg {msg_id}: {why:?} lacks {reason:?}"
        );
    }
    // The oversized body is kept only in part.
    let huge_letter = letters
        .iter()
        .find(|l| l["reason"].as_str().is_some_and(|r| r.contains("2097152")))
        .expect("huge letter");
    assert_eq!(huge_letter["message_truncated"], json!(true));
    assert_eq!(huge_letter["message"].as_str().map(str::len), Some(65536));
    assert_eq!(
        db.count(
            "lineq.events WHERE event_type = 'message_dead_lettered' AND payload->>'reason' LIKE '%recursion limit%'"
        )
        .await,
        1,
        "the worker's rejection is in the lineage"
    );
    let result_letter = letters
        .iter()
        .find(|l| l["source_queue"] == "lineq_results")
        .expect("result dead letter");
    assert_eq!(result_letter["source_msg_id"], json!(bad_result));
    assert!(result_letter["message"]["outcome"] == "maybe");
    assert_eq!(
        db.count("pgmq.q_lineq_steps_default").await,
        0,
        "none left to retry forever"
    );

    // Both keep serving.
    let after = submit(&client, "echo", json!({"still": "alive"})).await;
    wait_all_finished(&db.pool, &[after], Duration::from_secs(30)).await;
    assert_eq!(
        get_execution(&db.pool, after).await.expect("e").status,
        ExecutionStatus::Completed
    );
    for p in [&mut worker, &mut orchestrator] {
        assert!(p.is_running(), "{} died: {}", p.name, p.log_text());
        assert!(p.terminate(Duration::from_secs(20)).success());
    }
    db.drop_db().await;
}

/// The step messages lineq's send function writes are marked as lineq's (headers `{"lineq": 1}`)
/// and a claim checks only their size; a message anyone else put into the queue is checked
/// whole, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineqs_own_messages_are_marked_and_still_size_checked() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    // No worker yet: the messages wait in the queue.
    let big = submit(&client, "echo", json!({"big": true})).await;
    let plain = submit(&client, "echo", json!({"plain": true})).await;
    let queued: Vec<(i64, Option<Value>, Value)> = sqlx::query_as(
        "SELECT msg_id, headers, message FROM pgmq.q_lineq_steps_default ORDER BY msg_id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("queued");
    assert_eq!(queued.len(), 2);
    for (_, headers, _) in &queued {
        assert_eq!(headers.as_ref(), Some(&json!({"lineq": 1})), "marked");
    }
    // A marked message grown past the limit by hand is still refused.
    sqlx::query(
        "UPDATE pgmq.q_lineq_steps_default
         SET message = jsonb_set(message, '{input}', to_jsonb(repeat('x', 3 * 1024 * 1024)))
         WHERE message ->> 'execution_id' = $1",
    )
    .bind(big.to_string())
    .execute(&db.pool)
    .await
    .expect("grow");
    // An unmarked copy of a good message with a broken traceparent is checked whole.
    let mut broken = queued[1].2.clone();
    broken["meta"]["traceparent"] = json!("not-a-traceparent");
    let broken_id: i64 = sqlx::query_scalar("SELECT pgmq.send('lineq_steps_default', $1::jsonb)")
        .bind(&broken)
        .fetch_one(&db.pool)
        .await
        .expect("send by hand");
    let unmarked: Option<Value> =
        sqlx::query_scalar("SELECT headers FROM pgmq.q_lineq_steps_default WHERE msg_id = $1")
            .bind(broken_id)
            .fetch_one(&db.pool)
            .await
            .expect("headers");
    assert_eq!(unmarked, None, "pgmq.send writes no mark");

    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(&db.url, "worker", &["worker"]);
    wait_all_finished(&db.pool, &[plain], Duration::from_secs(30)).await;
    let reasons: Vec<(i64, String)> =
        eventually(Duration::from_secs(30), "dead letters", || async {
            let rows: Vec<(i64, String)> = sqlx::query_as(
                "SELECT (message ->> 'source_msg_id')::bigint, message ->> 'reason'
             FROM pgmq.q_lineq_dlq ORDER BY msg_id",
            )
            .fetch_all(&db.pool)
            .await
            .ok()?;
            (rows.len() == 2).then_some(rows)
        })
        .await;
    let reason_of = |id: i64| {
        reasons
            .iter()
            .find(|(m, _)| *m == id)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no dead letter for {id}: {reasons:?}"))
    };
    assert!(
        reason_of(queued[0].0).contains("the limit is 2097152"),
        "{reasons:?}"
    );
    assert!(
        reason_of(broken_id).contains("meta.traceparent"),
        "{reasons:?}"
    );
    assert_eq!(
        get_execution(&db.pool, plain).await.expect("plain").status,
        ExecutionStatus::Completed
    );
    // The claim's mark joins lineq's, and the archive keeps both.
    let archived: Value =
        sqlx::query_scalar("SELECT headers FROM pgmq.a_lineq_steps_default WHERE msg_id = $1")
            .bind(queued[1].0)
            .fetch_one(&db.pool)
            .await
            .expect("archived");
    assert_eq!(archived["lineq"], json!(1), "{archived}");
    assert!(archived["lineq_claim"]["worker"].is_string(), "{archived}");
    for p in [&mut worker, &mut orchestrator] {
        assert!(p.is_running(), "{} died: {}", p.name, p.log_text());
        assert!(p.terminate(Duration::from_secs(20)).success());
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_handlers_run_any_language_with_the_lineage_in_their_environment() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("lineq-cmd-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let script = dir.join("step.py");
    std::fs::write(
        &script,
        r#"import json, os, sys
data = json.load(sys.stdin)
if data.get("fail"):
    sys.stderr.write("boom: asked to fail\n")
    sys.exit(3)
keys = ["LINEQ_CORRELATION_ID", "LINEQ_EXECUTION_ID", "LINEQ_STEP", "LINEQ_ATTEMPT",
        "LINEQ_IDEMPOTENCY_KEY", "TRACEPARENT"]
print(json.dumps({"doubled": data["n"] * 2, "env": {k: os.environ.get(k) for k in keys}}))
"#,
    )
    .expect("script");
    let spec = format!("py_step=python3 {}", script.display());
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(&db.url, "worker", &["worker", "--command", &spec]);
    let client = Client::new(db.pool.clone());

    let ok = submit(&client, "py_step", json!({"n": 21})).await;
    let bad = submit(&client, "py_step", json!({"fail": true})).await;
    wait_all_finished(&db.pool, &[ok, bad], Duration::from_secs(30)).await;

    let e = get_execution(&db.pool, ok).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Completed, "{:?}", e.error);
    let out = e.output.expect("output");
    assert_eq!(out["doubled"], 42);
    let env = &out["env"];
    assert_eq!(
        env["LINEQ_CORRELATION_ID"],
        json!(e.correlation_id.to_string())
    );
    assert_eq!(env["LINEQ_EXECUTION_ID"], json!(ok.to_string()));
    assert_eq!(env["LINEQ_STEP"], "py_step");
    assert_eq!(env["LINEQ_ATTEMPT"], "1");
    let step_id: Uuid =
        sqlx::query_scalar("SELECT step_id FROM lineq.steps WHERE execution_id = $1")
            .bind(ok)
            .fetch_one(&db.pool)
            .await
            .expect("step");
    assert_eq!(env["LINEQ_IDEMPOTENCY_KEY"], json!(format!("{step_id}:1")));
    let tp = env["TRACEPARENT"].as_str().expect("traceparent");
    assert!(
        tp.starts_with(&format!("00-{}-", e.correlation_id.simple())),
        "{tp}"
    );
    let started_span: String = sqlx::query_scalar(
        "SELECT span_id FROM lineq.events WHERE execution_id = $1 AND event_type = 'action_started'",
    )
    .bind(ok)
    .fetch_one(&db.pool)
    .await
    .expect("span");
    assert!(
        tp.contains(&started_span),
        "the program continues the step's span"
    );

    let err = action_failed_error(&db, bad).await;
    assert_eq!(err["kind"], "command_failed");
    let msg = err["message"].as_str().expect("message");
    assert!(
        msg.contains("code 3") && msg.contains("boom: asked to fail"),
        "{msg}"
    );

    for p in [&mut worker, &mut orchestrator] {
        assert!(p.terminate(Duration::from_secs(20)).success());
    }
    let _ = std::fs::remove_dir_all(dir);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_timeouts_fail_the_attempt_not_the_worker() {
    use lineq::{HandlerError, StepContext, Worker};
    use tokio_util::sync::CancellationToken;

    async fn explode(_ctx: StepContext, _input: Value) -> Result<Value, HandlerError> {
        panic!("handler bug");
    }
    async fn idem(ctx: StepContext, _input: Value) -> Result<Value, HandlerError> {
        Ok(json!({
            "key": ctx.idempotency_key(), "corr": ctx.correlation_id, "workflow": ctx.workflow,
            "tags": ctx.tags, "metadata": ctx.metadata, "parent_step": ctx.parent_step,
            "parent_execution_id": ctx.parent_execution_id,
        }))
    }
    let db = TestDb::new().await;
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let stop = CancellationToken::new();
    let worker = Worker::builder(db.pool.clone())
        .handler("explode", explode)
        .handler("idem", idem)
        .build();
    let token = stop.clone();
    let running = tokio::spawn(async move { worker.run(token).await });

    let client = Client::new(db.pool.clone());
    let panicked = submit(&client, "explode", json!({})).await;
    let slow = client
        .submit(
            SubmitRequest::new("sleep")
                .input(json!({"ms": 5000}))
                .timeout_ms(200),
        )
        .await
        .expect("submit")
        .execution
        .execution_id;
    // The handler context carries the execution's tags, metadata and links.
    let fine = client
        .submit("idem")
        .tag("customer", "acme")
        .metadata(json!({"order": {"id": "12345"}}))
        .await
        .expect("submit")
        .execution
        .execution_id;
    let spawner = submit(
        &client,
        "spawn",
        json!({"children": [{"target": "idem", "input": {}}], "wait": true}),
    )
    .await;
    wait_all_finished(
        &db.pool,
        &[panicked, slow, fine, spawner],
        Duration::from_secs(30),
    )
    .await;

    let err = action_failed_error(&db, panicked).await;
    assert_eq!(err["kind"], "panic");
    assert!(err["message"].as_str().expect("m").contains("handler bug"));
    let err = action_failed_error(&db, slow).await;
    assert_eq!(err["kind"], "timeout");
    assert!(err["message"].as_str().expect("m").contains("200 ms"));
    let e = get_execution(&db.pool, fine).await.expect("e");
    assert_eq!(e.status, ExecutionStatus::Completed);
    let out = e.output.as_ref().expect("out");
    assert_eq!(out["corr"], json!(e.correlation_id));
    assert_eq!(out["workflow"], "idem");
    assert_eq!(out["tags"], json!({"customer": "acme"}));
    assert_eq!(out["metadata"], json!({"order": {"id": "12345"}}));
    assert_eq!(out["parent_step"], Value::Null);
    // A child's handler knows which execution and step spawned it.
    let s = get_execution(&db.pool, spawner).await.expect("spawner");
    assert_eq!(s.status, ExecutionStatus::Completed, "{:?}", s.error);
    let child_view = s.output.expect("output");
    assert_eq!(child_view["parent_step"], "spawn");
    assert_eq!(child_view["parent_execution_id"], json!(spawner));
    assert_eq!(child_view["workflow"], "idem");

    stop.cancel();
    running.await.expect("join").expect("worker ran cleanly");
    assert!(orchestrator.terminate(Duration::from_secs(20)).success());
    db.drop_db().await;
}
