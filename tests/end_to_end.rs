//! The whole system with real processes: `lineq orchestrator` and two `lineq worker`s on a real
//! PostgreSQL, 200 executions, and the lineage each of them wrote.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use lineq::{Client, SubmitRequest};
use lineq_core::event::events_of_execution;
use lineq_core::execution::{ExecutionStatus, get_execution};
use lineq_core::ids::is_v7;
use lineq_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_executions_through_real_processes() {
    let db = TestDb::new().await;
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut w1 = Proc::start(&db.url, "worker1", &["worker", "--concurrency", "8"]);
    let mut w2 = Proc::start(&db.url, "worker2", &["worker", "--concurrency", "8"]);

    let client = Client::new(db.pool.clone());
    let mut given: HashMap<Uuid, Uuid> = HashMap::new(); // execution -> correlation id given
    let mut ids = Vec::new();
    for i in 0..195 {
        let mut req = SubmitRequest::new("echo").input(json!({ "i": i }));
        if i % 4 == 0 {
            // Given correlation ids are kept as they are, whatever their version.
            let c = if i % 8 == 0 {
                Uuid::new_v4()
            } else {
                Uuid::now_v7()
            };
            req = req.correlation_id(c);
            let s = client.submit(req).await.expect("submit");
            given.insert(s.execution.execution_id, c);
            ids.push(s.execution.execution_id);
        } else {
            ids.push(
                client
                    .submit(req)
                    .await
                    .expect("submit")
                    .execution
                    .execution_id,
            );
        }
    }
    // And some through the CLI, as a user would.
    for i in 195..200 {
        let out = lineq(
            &db.url,
            &["submit", "echo", "--input", &json!({ "i": i }).to_string()],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        ids.push(Uuid::parse_str(stdout(&out).trim()).expect("submit prints the id"));
    }
    assert_eq!(ids.len(), 200);

    wait_all_finished(&db.pool, &ids, Duration::from_secs(120)).await;

    let mut workers_seen = HashSet::new();
    for id in &ids {
        let e = get_execution(&db.pool, *id).await.expect("execution");
        assert_eq!(e.status, ExecutionStatus::Completed, "{id}");
        assert_eq!(e.output.as_ref(), Some(&e.input), "echo returns its input");
        match given.get(id) {
            Some(c) => assert_eq!(e.correlation_id, *c, "given correlation id preserved"),
            None => assert!(
                is_v7(&e.correlation_id),
                "generated correlation id is UUIDv7"
            ),
        }
        let events = events_of_execution(&db.pool, *id).await.expect("events");
        assert_eq!(tree_shape(&events), ONE_STEP_COMPLETED, "{id}");
        let trace_id = e.correlation_id.simple().to_string();
        for ev in &events {
            assert_eq!(ev.correlation_id, e.correlation_id);
            assert_eq!(ev.root_execution_id, e.execution_id);
            assert_eq!(ev.parent_execution_id, None);
            assert_eq!(
                ev.trace_id.as_deref(),
                Some(trace_id.as_str()),
                "{}",
                ev.event_type
            );
            if let Some(w) = &ev.worker_id {
                workers_seen.insert(w.clone());
            }
        }
    }
    assert_eq!(
        workers_seen.len(),
        2,
        "both worker processes should have run steps: {workers_seen:?}"
    );

    check_archived_meta_matches_events(&db, &ids).await;

    assert_eq!(
        db.count("pgmq.q_lineq_steps_default").await,
        0,
        "step queue drained"
    );
    assert_eq!(
        db.count("pgmq.q_lineq_results").await,
        0,
        "results queue drained"
    );
    assert_eq!(
        db.count("pgmq.q_lineq_dlq").await,
        0,
        "nothing dead-lettered"
    );

    for p in [&mut w1, &mut w2, &mut orchestrator] {
        let status = p.terminate(Duration::from_secs(20));
        assert!(
            status.success(),
            "{} exited {status}: {}",
            p.name,
            p.log_text()
        );
    }
    db.drop_db().await;
}

/// The `meta` of every archived step message equals the events written for it; no result
/// message is kept once applied.
async fn check_archived_meta_matches_events(db: &TestDb, ids: &[Uuid]) {
    let steps: Vec<(i64, Value)> =
        sqlx::query_as("SELECT msg_id, message FROM pgmq.a_lineq_steps_default")
            .fetch_all(&db.pool)
            .await
            .expect("archived step messages");
    assert_eq!(
        steps.len(),
        ids.len(),
        "one archived step message per execution"
    );
    for (msg_id, m) in steps {
        let step_id = Uuid::parse_str(m["step_id"].as_str().expect("step_id")).expect("uuid");
        let meta = &m["meta"];
        let row: (Uuid, Uuid, Option<String>, Uuid, Uuid) = sqlx::query_as(
            "SELECT enq.event_id, x.correlation_id, enq.span_id, x.execution_id, st.parent_event_id
             FROM lineq.events enq
             JOIN lineq.executions x ON x.execution_id = enq.execution_id
             JOIN lineq.events st ON st.step_id = enq.step_id AND st.event_type = 'action_started'
             WHERE enq.step_id = $1 AND enq.event_type = 'step_enqueued'",
        )
        .bind(step_id)
        .fetch_one(&db.pool)
        .await
        .expect("step_enqueued and action_started for the message");
        let (enqueued, correlation, span, execution, started_parent) = row;
        assert_eq!(meta["parent_event_id"], json!(enqueued), "msg {msg_id}");
        assert_eq!(
            started_parent, enqueued,
            "action_started.parent = meta.parent_event_id"
        );
        assert_eq!(meta["correlation_id"], json!(correlation));
        assert_eq!(meta["root_execution_id"], json!(execution));
        assert_eq!(meta["parent_execution_id"], Value::Null);
        let tp = meta["traceparent"].as_str().expect("traceparent");
        assert_eq!(
            tp,
            format!("00-{}-{}-01", correlation.simple(), span.expect("span id")),
            "traceparent names the trace of the correlation id and the enqueue span"
        );
    }

    // A result message is deleted once applied: its step_result event and the step's row hold
    // what it said (its own meta is checked while it waits: results_wait_with_their_meta below).
    assert_eq!(
        db.count("pgmq.a_lineq_results").await,
        0,
        "no result archived"
    );
    let results_with_outcome: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.events r
         WHERE r.execution_id = ANY($1) AND r.event_type = 'step_result'
           AND (SELECT count(*) FROM lineq.events c
                WHERE c.parent_event_id = r.event_id AND c.event_type = 'step_completed') = 1",
    )
    .bind(ids)
    .fetch_one(&db.pool)
    .await
    .expect("step_result events");
    assert_eq!(
        results_with_outcome,
        i64::try_from(ids.len()).expect("count"),
        "one step_result per execution, the orchestrator's outcome hanging off it"
    );
}

/// Waits for `n` result messages in the results queue, and returns their bodies.
async fn queued_results(db: &TestDb, n: i64) -> Vec<Value> {
    eventually(
        Duration::from_secs(30),
        "the results to be sent",
        || async { (db.count("pgmq.q_lineq_results").await == n).then_some(()) },
    )
    .await;
    sqlx::query_scalar("SELECT message FROM pgmq.q_lineq_results ORDER BY msg_id")
        .fetch_all(&db.pool)
        .await
        .expect("queued results")
}

/// With no orchestrator running, a worker's result messages wait in the results queue, each
/// with the meta of the `step_result` event that sent it; the tree checks whole with them
/// queued, and again once an orchestrator has applied and deleted them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_wait_with_their_meta() {
    let db = TestDb::new().await;
    let mut worker = Proc::start(&db.url, "worker", &["worker"]);
    let client = Client::new(db.pool.clone());
    let mut ids = Vec::new();
    for i in 0..3 {
        let s = client
            .submit(SubmitRequest::new("echo").input(json!({ "i": i })))
            .await
            .expect("submit");
        ids.push(s.execution.execution_id);
    }
    let results = queued_results(&db, 3).await;
    let mut outputs: Vec<i64> = results
        .iter()
        .filter_map(|m| m["output"]["i"].as_i64())
        .collect();
    outputs.sort_unstable();
    assert_eq!(outputs, [0, 1, 2], "each result carries its output");
    for m in results {
        let execution =
            Uuid::parse_str(m["execution_id"].as_str().expect("execution_id")).expect("uuid");
        let parent =
            Uuid::parse_str(m["meta"]["parent_event_id"].as_str().expect("parent")).expect("uuid");
        let (etype, correlation, span): (String, Uuid, Option<String>) = sqlx::query_as(
            "SELECT r.event_type, r.correlation_id, r.span_id FROM lineq.events r
             WHERE r.event_id = $1 AND r.execution_id = $2",
        )
        .bind(parent)
        .bind(execution)
        .fetch_one(&db.pool)
        .await
        .expect("the result's parent event, of its execution");
        assert_eq!(etype, "step_result");
        assert_eq!(m["meta"]["correlation_id"], json!(correlation));
        assert_eq!(m["meta"]["root_execution_id"], json!(execution));
        assert_eq!(
            m["meta"]["traceparent"],
            json!(format!(
                "00-{}-{}-01",
                correlation.simple(),
                span.expect("span id")
            ))
        );
    }
    for id in &ids {
        let report = lineq_read::lineage::check(&db.pool, *id)
            .await
            .expect("check");
        assert_eq!(report.faults, vec![], "whole with its result queued");
    }

    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    wait_all_finished(&db.pool, &ids, Duration::from_secs(30)).await;
    assert_eq!(db.count("pgmq.q_lineq_results").await, 0);
    assert_eq!(
        db.count("pgmq.a_lineq_results").await,
        0,
        "deleted, not archived"
    );
    for id in &ids {
        let report = lineq_read::lineage::check(&db.pool, *id)
            .await
            .expect("check");
        assert_eq!(report.faults, vec![], "whole with its result applied");
    }
    for p in [&mut worker, &mut orchestrator] {
        assert!(
            p.terminate(Duration::from_secs(20)).success(),
            "{}",
            p.log_text()
        );
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_result_changes_nothing() {
    let db = TestDb::new().await;
    let mut worker = Proc::start(&db.url, "worker", &["worker"]);
    let client = Client::new(db.pool.clone());
    let id = client
        .submit(SubmitRequest::new("echo").input(json!({"x": 1})))
        .await
        .expect("submit")
        .execution
        .execution_id;
    // The result exactly as the worker sent it, kept before an orchestrator applies it.
    let sent = queued_results(&db, 1).await.remove(0);
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    wait_all_finished(&db.pool, &[id], Duration::from_secs(30)).await;
    let before = get_execution(&db.pool, id).await.expect("execution");
    let events_before = db.count("lineq.events").await;

    // Replay it.
    sqlx::query("SELECT pgmq.send('lineq_results', $1)")
        .bind(&sent)
        .execute(&db.pool)
        .await
        .expect("resend");
    eventually(
        Duration::from_secs(20),
        "the duplicate to be consumed",
        || async { (db.count("pgmq.q_lineq_results").await == 0).then_some(()) },
    )
    .await;

    let after = get_execution(&db.pool, id).await.expect("execution");
    assert_eq!(after.version, before.version, "no state change");
    assert_eq!(after.status, ExecutionStatus::Completed);
    assert_eq!(
        db.count("lineq.events").await,
        events_before,
        "no new events"
    );
    assert_eq!(
        db.count("pgmq.a_lineq_results").await,
        0,
        "both results deleted, not archived"
    );
    assert_eq!(db.count("pgmq.q_lineq_dlq").await, 0);
    for p in [&mut worker, &mut orchestrator] {
        assert!(
            p.terminate(Duration::from_secs(20)).success(),
            "{}",
            p.log_text()
        );
    }
    db.drop_db().await;
}
