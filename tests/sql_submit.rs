//! Submission through SQL (`lineq.submit`, `lineq.submit_many`, migration 000013): inside the
//! caller's transaction, idempotent under concurrency, and strict about its input.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::postgres::PgDatabaseError;
use uuid::Uuid;

use lineq::{Client, Error, SubmitRequest};
use lineq_core::message::StepMessage;
use lineq_core::trace_context::TraceContext;
use lineq_orchestrator::submit::{submit_in, submit_many_in};
use lineq_testkit::*;

/// The SQLSTATE, COLUMN, message and DETAIL of a failed statement.
fn pg_error(e: &sqlx::Error) -> (String, Option<String>, String, Option<String>) {
    let db = e.as_database_error().expect("a database error");
    let pg = db.downcast_ref::<PgDatabaseError>();
    (
        pg.code().to_string(),
        pg.column().map(str::to_string),
        pg.message().to_string(),
        pg.detail().map(str::to_string),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_in_the_callers_transaction_exists_exactly_when_it_commits() {
    let db = TestDb::new().await;
    sqlx::query("CREATE TABLE public.shop_orders (id int PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .unwrap();

    // BEGIN; INSERT …; SELECT lineq.submit(…); ROLLBACK;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO public.shop_orders VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (id, created): (Uuid, bool) = sqlx::query_as(
        "SELECT execution_id, created FROM lineq.submit('echo', p_input => '{\"order\": 1}')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(created);
    // Visible inside the transaction, message included.
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM pgmq.q_lineq_steps_default")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(inside, 1);
    tx.rollback().await.unwrap();
    assert_eq!(
        db.written().await,
        (0, 0, 0, 0),
        "a rollback leaves nothing"
    );
    assert_eq!(db.count("public.shop_orders").await, 0);
    assert_eq!(
        db.count(&format!("lineq.executions WHERE execution_id = '{id}'"))
            .await,
        0
    );

    // The same with COMMIT: written together with the order, and run by a real worker.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO public.shop_orders VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (id, corr): (Uuid, Uuid) = sqlx::query_as(
        "SELECT execution_id, correlation_id FROM lineq.submit('echo', p_input => '{\"order\": 1}',
                p_tags => '{\"shop\": \"eu\"}', p_metadata => '{\"order\": {\"id\": 1}}')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.written().await, (1, 1, 3, 1));

    // The message is what Rust's StepMessage reads and writes back unchanged.
    let (body, parent_event): (Value, Uuid) = sqlx::query_as(
        "SELECT m.message, e.event_id FROM pgmq.q_lineq_steps_default m
         JOIN lineq.events e ON e.event_type = 'step_enqueued' AND e.execution_id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let msg = StepMessage::parse(Some(&body)).expect("a worker parses it");
    assert_eq!(
        serde_json::to_value(&msg).unwrap(),
        body,
        "same shape as Rust's"
    );
    assert_eq!(msg.meta.parent_event_id, parent_event);
    assert_eq!(
        msg.meta.traceparent,
        TraceContext::for_event(corr, parent_event).to_string()
    );
    let ctx = msg.context.expect("context");
    assert_eq!(ctx.workflow, "echo");
    assert_eq!(ctx.tags.get("shop").map(String::as_str), Some("eu"));
    assert_eq!(ctx.metadata, json!({"order": {"id": 1}}));

    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(&db.url, "worker", &["worker"]);
    wait_all_finished(&db.pool, &[id], Duration::from_secs(60)).await;
    let (status, output): (String, Option<Value>) =
        sqlx::query_as("SELECT status, output FROM lineq.executions WHERE execution_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "completed");
    assert_eq!(output, Some(json!({"order": 1})));
    // The lineage is one tree: every event but execution_started has its parent.
    let orphans = db
        .count(&format!(
            "lineq.events e WHERE e.execution_id = '{id}' AND e.event_type <> 'execution_started'
             AND NOT EXISTS (SELECT 1 FROM lineq.events p WHERE p.event_id = e.parent_event_id)"
        ))
        .await;
    assert_eq!(orphans, 0);
    worker.terminate(Duration::from_secs(10));
    orchestrator.terminate(Duration::from_secs(10));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_in_follows_the_sqlx_transaction_it_is_given() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    let s = submit_in(
        &mut tx,
        "test",
        SubmitRequest::new("echo").input(json!({"a": 1})),
    )
    .await
    .unwrap();
    assert!(s.created);
    let many = submit_many_in(
        &mut tx,
        "test",
        vec![SubmitRequest::new("echo"), SubmitRequest::new("echo")],
    )
    .await
    .unwrap();
    assert_eq!(many.len(), 2);
    tx.rollback().await.unwrap();
    assert_eq!(
        db.written().await,
        (0, 0, 0, 0),
        "a rollback leaves nothing"
    );

    let mut tx = db.pool.begin().await.unwrap();
    let s = submit_in(&mut tx, "test", SubmitRequest::new("echo"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.written().await, (1, 1, 3, 1));
    let node: String =
        sqlx::query_scalar("SELECT node_name FROM lineq.events WHERE execution_id = $1 LIMIT 1")
            .bind(s.execution.execution_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(node, "test");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_with_one_idempotency_key_make_one_execution() {
    let db = TestDb::new().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            let s = submit_in(
                &mut tx,
                "test",
                SubmitRequest::new("echo")
                    .input(json!({ "i": i }))
                    .idempotency_key("order-42"),
            )
            .await
            .unwrap();
            // Hold the transaction open so the others wait on the key.
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.commit().await.unwrap();
            s
        }));
    }
    // And the same through SQL, at the same time.
    let sql = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            sqlx::query_as::<_, (Uuid, bool)>(
                "SELECT execution_id, created FROM lineq.submit('echo', p_idempotency_key => 'order-42')",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        })
    };
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let (sql_id, sql_created) = sql.await.unwrap();
    let first = results
        .iter()
        .map(|s| s.execution.execution_id)
        .chain([sql_id])
        .collect::<std::collections::HashSet<_>>();
    assert_eq!(first.len(), 1, "every submit got the one execution");
    let created = results.iter().filter(|s| s.created).count() + usize::from(sql_created);
    assert_eq!(created, 1, "exactly one submit created it");
    assert_eq!(
        db.written().await,
        (1, 1, 3, 1),
        "one execution's rows, once"
    );

    // In one batch, the second request with a key gets the first's execution.
    let out = Client::new(db.pool.clone())
        .submit_many(vec![
            SubmitRequest::new("echo").idempotency_key("batch-1"),
            SubmitRequest::new("echo").idempotency_key("batch-1"),
            SubmitRequest::new("echo").idempotency_key("order-42"),
        ])
        .await
        .unwrap();
    assert!(out[0].created && !out[1].created && !out[2].created);
    assert_eq!(out[0].execution.execution_id, out[1].execution.execution_id);
    assert_eq!(out[2].execution.execution_id, sql_id);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_is_lq001_naming_the_field_and_the_limit_and_writes_nothing() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO lineq.workflows (name, version, definition) VALUES ('wf', 1,
         '{\"name\": \"wf\", \"namespace\": \"default\", \"steps\": [{\"name\": \"a\", \"handler\": \"echo\"}]}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "lineq.submit('echo', p_tags => (SELECT jsonb_object_agg('k' || i, 'v') FROM generate_series(1, 21) i))",
            "tags",
            &["21 tags", "limit is 20"],
        ),
        (
            "lineq.submit('echo', p_tags => jsonb_build_object(repeat('k', 65), 'v'))",
            "tags",
            &["65 characters", "1 to 64"],
        ),
        (
            "lineq.submit('echo', p_tags => '{\"Customer\": \"x\"}')",
            "tags",
            &["\"Customer\"", "a-z, 0-9"],
        ),
        (
            "lineq.submit('echo', p_tags => '{\"lineq_x\": \"x\"}')",
            "tags",
            &["reserved prefix"],
        ),
        (
            "lineq.submit('echo', p_tags => jsonb_build_object('k', repeat('v', 257)))",
            "tags",
            &["257 characters", "limit is 256"],
        ),
        (
            "lineq.submit('echo', p_metadata => jsonb_build_object('b', repeat('x', 65536)))",
            "metadata",
            &["65544 bytes", "limit is 65536 bytes"],
        ),
        (
            "lineq.submit('echo', p_metadata => (SELECT jsonb_object_agg('k' || i, i) FROM generate_series(1, 51) i))",
            "metadata",
            &["51 top-level keys", "limit is 50"],
        ),
        (
            "lineq.submit('echo', p_metadata => '[1]')",
            "metadata",
            &["JSON object"],
        ),
        (
            "lineq.submit('echo', p_input => to_jsonb(repeat('x', 1048575)))",
            "input",
            &["1048577 bytes", "limit is 1048576 bytes"],
        ),
        (
            "lineq.submit('echo', p_namespace => 'Payments')",
            "namespace",
            &["1 to 32 characters", "\"Payments\""],
        ),
        (
            "lineq.submit('echo', p_namespace => repeat('n', 33))",
            "namespace",
            &["33 characters long", "1 to 32"],
        ),
        (
            "lineq.submit('echo', p_idempotency_key => repeat('k', 256))",
            "idempotency_key",
            &["1 to 255 characters", "got 256"],
        ),
        (
            "lineq.submit('echo', p_idempotency_key => E'a\\nb')",
            "idempotency_key",
            &["control characters"],
        ),
        (
            "lineq.submit('echo', p_timeout_ms => 0)",
            "timeout_ms",
            &["at least 1", "got 0"],
        ),
        (
            "lineq.submit('wf@latest')",
            "workflow",
            &["\"wf@latest\"", "whole number from 1"],
        ),
        ("lineq.submit('wf@0')", "workflow", &["whole number from 1"]),
        (
            "lineq.submit('rm -rf /')",
            "handler",
            &["1 to 128 characters", "\"rm -rf /\""],
        ),
        (
            "lineq.submit('echo', p_parent_execution_id => lineq.uuid_v7())",
            "parent",
            &["does not exist"],
        ),
        (
            "lineq.submit_many('{\"target\": \"echo\"}')",
            "requests",
            &["JSON array"],
        ),
        (
            "lineq.submit_many('[{\"target\": \"echo\"}, {\"target\": \"echo\"}, {\"target\": \"echo\", \"timeout_ms\": 0}]')",
            "timeout_ms",
            &["request 2:", "at least 1"],
        ),
        (
            "lineq.submit_many('[{\"target\": \"echo\", \"tag\": {}}]')",
            "request",
            &["unknown field \"tag\""],
        ),
        (
            "lineq.submit_many('[{\"input\": 1}]')",
            "target",
            &["required"],
        ),
    ];
    for (call, field, needles) in cases {
        let err = sqlx::query(&format!("SELECT * FROM {call}"))
            .fetch_all(&db.pool)
            .await
            .expect_err(call);
        let (code, column, message, _) = pg_error(&err);
        assert_eq!(code, "LQ001", "{call}: {message}");
        assert_eq!(column.as_deref(), Some(*field), "{call}: {message}");
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{call}: {message}"
        );
        for n in *needles {
            assert!(message.contains(n), "{call}: {message:?} should say {n:?}");
        }
        // The Rust side maps it to a validation error naming the field.
        match Error::from(err) {
            Error::Validation(v) => assert_eq!(v.field, *field),
            other => panic!("{call}: {other:?}"),
        }
    }
    // A rule broken by a later request of a batch writes nothing for the earlier ones.
    assert_eq!(db.written().await, (0, 0, 0, 0));

    // An unregistered version is not found (LQ002), naming the workflow.
    let err = sqlx::query("SELECT * FROM lineq.submit('wf@9')")
        .fetch_all(&db.pool)
        .await
        .unwrap_err();
    let (code, _, _, detail) = pg_error(&err);
    assert_eq!(code, "LQ002");
    assert_eq!(detail.as_deref(), Some("what=workflow; id=wf@9"));
    assert_eq!(db.written().await, (0, 0, 0, 0));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_namespaces_and_finished_trees_are_refused() {
    let db = TestDb::new().await;
    let err = sqlx::query("SELECT * FROM lineq.submit('echo', p_namespace => 'payments')")
        .fetch_all(&db.pool)
        .await
        .unwrap_err();
    let (code, _, message, detail) = pg_error(&err);
    assert_eq!(code, "LQ005", "{message}");
    assert_eq!(detail.as_deref(), Some("namespace=payments"));
    match Error::from(err) {
        Error::UnknownNamespace { namespace } => assert_eq!(namespace, "payments"),
        other => panic!("{other:?}"),
    }

    let client = Client::new(db.pool.clone());
    let root = client.submit("echo").await.unwrap().execution.execution_id;
    let child = client
        .submit(SubmitRequest::new("echo").parent(root))
        .await
        .unwrap()
        .execution;
    assert_eq!(child.root_execution_id, root);
    let written = db.written().await;

    // A cancelled parent, then a running parent under a completed root.
    sqlx::query("UPDATE lineq.executions SET status = 'cancelled' WHERE execution_id = $1")
        .bind(child.execution_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let err = sqlx::query("SELECT * FROM lineq.submit('echo', p_parent_execution_id => $1)")
        .bind(child.execution_id)
        .fetch_all(&db.pool)
        .await
        .unwrap_err();
    let (code, _, message, detail) = pg_error(&err);
    assert_eq!(code, "LQ004", "{message}");
    assert!(message.contains("cancelled"), "{message}");
    assert_eq!(
        detail,
        Some(format!(
            "what=execution; id={}; status=cancelled",
            child.execution_id
        ))
    );

    sqlx::query(
        "UPDATE lineq.executions SET status = CASE WHEN execution_id = $1 THEN 'completed' ELSE 'running' END
         WHERE execution_id IN ($1, $2)",
    )
    .bind(root)
    .bind(child.execution_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let err = client
        .submit(SubmitRequest::new("echo").parent(child.execution_id))
        .await
        .unwrap_err();
    match &err {
        Error::InvalidState(m) => assert!(m.contains("completed"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(db.written().await, written, "nothing was grafted");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_message_from_sql_is_the_rust_step_message() {
    let db = TestDb::new().await;
    let (exec, step, parent, corr, root_corr) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let root = Uuid::now_v7();
    let steps = json!([{
        "execution_id": exec, "parent_execution_id": root, "root_execution_id": root,
        "correlation_id": corr, "trace_correlation_id": root_corr, "step_id": step,
        "step": "charge", "handler": "payments.charge", "queue": "lineq_steps_default",
        "attempt": 2, "input": {"amount": 5}, "timeout_ms": 1500, "parent_event_id": parent,
        "delay_ms": 0, "retry_reason": "handler_error: boom",
        "context": {"workflow": "order", "parent_step": "spawn"}
    }]);
    let (step_id, msg_id, event_id): (Uuid, i64, Uuid) =
        sqlx::query_as("SELECT * FROM lineq._enqueue_steps($1, 'test')")
            .bind(&steps)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(step_id, step);
    let body: Value =
        sqlx::query_scalar("SELECT message FROM pgmq.q_lineq_steps_default WHERE msg_id = $1")
            .bind(msg_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let msg = StepMessage::parse(Some(&body)).expect("a worker parses it");
    assert_eq!(
        serde_json::to_value(&msg).unwrap(),
        body,
        "same shape as Rust's"
    );
    assert_eq!(msg.meta.attempt, Some(2));
    assert_eq!(
        msg.meta.retry_reason.as_deref(),
        Some("handler_error: boom")
    );
    assert_eq!(msg.meta.parent_event_id, event_id);
    assert_eq!(msg.meta.parent_execution_id, Some(root));
    assert_eq!(
        msg.meta.traceparent,
        TraceContext::for_event(root_corr, event_id).to_string()
    );
    assert_eq!(msg.timeout_ms, Some(1500));
    let (parent_event_id, attempt, payload): (Option<Uuid>, Option<i32>, Value) = sqlx::query_as(
        "SELECT parent_event_id, attempt, payload FROM lineq.events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(parent_event_id, Some(parent));
    assert_eq!(attempt, Some(2));
    assert_eq!(payload["msg_id"], json!(msg_id));
    assert_eq!(payload["queue"], json!("lineq_steps_default"));

    // Queue names are checked before they become table names.
    let bad = json!([{"queue": "x\"; DROP TABLE lineq.events; --", "step_id": step}]);
    let err = sqlx::query("SELECT * FROM lineq._enqueue_steps($1, 'test')")
        .bind(&bad)
        .fetch_all(&db.pool)
        .await
        .unwrap_err();
    assert_eq!(pg_error(&err).0, "LQ001");
    db.drop_db().await;
}

/// The cheap test that lets a batch of plain requests skip the full rules
/// (`lineq._plain_requests`, migration 000020) passes only requests the full rules accept: every
/// request below is tried alone through `lineq.submit_many` in a transaction that is rolled
/// back, and each one the cheap test passes must be accepted. The plain requests of everyday
/// use must pass it, or the full rules run for every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_request_test_passes_only_what_the_full_rules_accept() {
    let db = TestDb::new().await;
    let long = "x".repeat(1_048_570);
    let requests = vec![
        // plain: must pass the cheap test
        json!({"target": "echo"}),
        json!({"target": "echo", "input": {"order": 1}}),
        json!({"target": "a.b:c-d_e", "input": null, "namespace": "default", "priority": 0}),
        json!({"target": "echo", "tags": {}, "metadata": {}, "idempotency_key": null,
               "timeout_ms": null, "correlation_id": null, "parent_execution_id": null}),
        json!({"target": "echo", "tags": null, "metadata": null, "namespace": null}),
        json!({"target": "echo", "input": long}),
        // not plain, valid or not: the full rules decide
        json!({"target": "echo", "tags": {"customer": "acme"}}),
        json!({"target": "echo", "metadata": {"k": 1}}),
        json!({"target": "echo", "priority": 5}),
        json!({"target": "echo", "idempotency_key": "k-1"}),
        json!({"target": "echo", "timeout_ms": 1000}),
        json!({"target": "echo", "correlation_id": Uuid::now_v7()}),
        json!({"target": "echo@1"}),
        // refused by the full rules
        json!({"target": "echo", "input": "x".repeat(1_048_577)}),
        json!({"target": ""}),
        json!({"target": "x".repeat(129)}),
        json!({"target": "rm -rf /"}),
        json!({"target": "échelle"}),
        json!({"target": "echo\n"}),
        json!({"target": 5}),
        json!({"target": null}),
        json!({"input": 1}),
        json!({"target": "echo", "tag": {}}),
        json!({"target": "echo", "execution_id": Uuid::now_v7()}),
        json!({"target": "echo", "namespace": ""}),
        json!({"target": "echo", "namespace": "Payments"}),
        json!({"target": "echo", "namespace": "1abc"}),
        json!({"target": "echo", "namespace": "_abc"}),
        json!({"target": "echo", "namespace": "n".repeat(33)}),
        json!({"target": "echo", "namespace": "ab-c"}),
        json!({"target": "echo", "namespace": "ñu"}),
        json!({"target": "echo", "namespace": 7}),
        json!({"target": "echo", "tags": []}),
        json!({"target": "echo", "tags": "x"}),
        json!({"target": "echo", "metadata": [1]}),
        json!({"target": "echo", "metadata": "x"}),
        json!({"target": "echo", "priority": "0"}),
        json!({"target": "echo", "priority": 0.5}),
        json!({"target": "echo", "priority": 1e20}),
        json!({"target": "echo", "timeout_ms": 0}),
        json!({"target": "echo", "idempotency_key": ""}),
        json!({"target": "echo", "idempotency_key": 7}),
        json!({"target": "echo", "correlation_id": "not-a-uuid"}),
        json!({"target": "echo", "parent_execution_id": Uuid::now_v7()}),
        json!({"target": "echo", "parent_execution_id": 1}),
        json!([{"target": "echo"}]),
        json!("echo"),
        json!(null),
    ];
    let mut plain = 0;
    for (i, request) in requests.iter().enumerate() {
        let passes: bool =
            sqlx::query_scalar("SELECT lineq._plain_requests(jsonb_build_array($1::jsonb))")
                .bind(request)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let mut tx = db.pool.begin().await.unwrap();
        let accepted = sqlx::query("SELECT * FROM lineq.submit_many(jsonb_build_array($1::jsonb))")
            .bind(request)
            .fetch_all(&mut *tx)
            .await;
        tx.rollback().await.unwrap();
        if i < 6 {
            assert!(passes, "request {i} is plain: {request}");
        }
        if passes {
            plain += 1;
            assert!(
                accepted.is_ok(),
                "request {i} passed the cheap test but the rules refuse it: {:?}",
                accepted.err()
            );
        }
    }
    assert_eq!(plain, 6, "only the plain requests pass the cheap test");
    db.drop_db().await;
}
