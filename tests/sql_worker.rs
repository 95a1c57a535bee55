//! A worker written without lineq's Rust code — `examples/sql-worker/worker.sh`, a bash loop over
//! `psql` speaking the SQL interface — runs the middle step of a 3-step workflow next to Rust
//! workers: every execution completes, `lineq lineage check` passes on each tree, and a SIGKILL
//! mid-step loses nothing (the step is delivered again to another such worker).
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use lineq::{Client, SubmitRequest};
use lineq_core::event::events_of_execution;
use lineq_core::execution::{ExecutionStatus, get_execution};
use lineq_orchestrator::workflow::{StepDefinition, WorkflowDefinition, store};
use lineq_testkit::*;

/// `examples/sql-worker/worker.sh` in a process group of its own, so a SIGKILL takes its psql
/// and sleep with it.
struct SqlWorker {
    child: Child,
    log: PathBuf,
}

impl SqlWorker {
    fn start(url: &str, id: &str) -> Self {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/sql-worker/worker.sh");
        let log =
            std::env::temp_dir().join(format!("sql-worker-{id}-{}.log", Uuid::now_v7().simple()));
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new("bash")
            .arg(script)
            .args([url, id, "default"])
            .env("VT_SECS", "3")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("bash");
        Self { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL to the whole group: bash, and its psql or sleep of the moment.
    fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }

    /// SIGTERM to bash alone: it finishes the call at hand, then stops cleanly.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the SQL worker did not stop:\n{}", self.log_text());
    }
}

impl Drop for SqlWorker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

fn check_lineage(url: &str, id: Uuid) {
    let out = lineq(url, &["lineage", "check", &id.to_string()]);
    assert!(
        out.status.success(),
        "lineage check {id}: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psql_worker_runs_steps_next_to_rust_workers_and_loses_nothing_when_killed() {
    let db = TestDb::new().await;
    store::register(
        &db.pool,
        &WorkflowDefinition::new("shout3")
            .step(StepDefinition::new("a", "echo"))
            .step(StepDefinition::new("b", "shout").depends_on(["a"]))
            .step(StepDefinition::new("c", "echo").depends_on(["b"])),
    )
    .await
    .expect("register");
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut rust = Proc::start(&db.url, "rust-worker", &["worker", "--worker-id", "rust-1"]);
    let mut sql = SqlWorker::start(&db.url, "psql-1");
    let client = Client::new(db.pool.clone());

    let mut ids = Vec::new();
    for i in 0..5 {
        let s = client
            .submit(SubmitRequest::new("shout3").input(json!({"text": format!("hello {i}")})))
            .await
            .expect("submit");
        ids.push(s.execution.execution_id);
    }
    wait_all_finished(&db.pool, &ids, Duration::from_secs(60)).await;
    for (i, id) in ids.iter().enumerate() {
        let e = get_execution(&db.pool, *id).await.expect("execution");
        assert_eq!(e.status, ExecutionStatus::Completed, "{}", sql.log_text());
        let out = e.output.expect("output");
        assert_eq!(out["b"], json!({"shout": format!("HELLO {i}")}), "{out}");
        let events = events_of_execution(&db.pool, *id).await.expect("events");
        let b_worker = events
            .iter()
            .find(|e| e.event_type == "action_started" && e.payload["step"] == "b")
            .and_then(|e| e.worker_id.clone());
        assert_eq!(b_worker.as_deref(), Some("psql-1"));
        check_lineage(&db.url, *id);
    }
    let language: String =
        sqlx::query_scalar("SELECT language FROM lineq.workers WHERE worker_id = 'psql-1'")
            .fetch_one(&db.pool)
            .await
            .expect("registered");
    assert_eq!(language, "bash");

    // SIGKILL the SQL worker in the middle of a step: another SQL worker gets it again.
    let slow = client
        .submit(SubmitRequest::new("shout3").input(json!({"text": "slow", "sleep": 60})))
        .await
        .expect("submit")
        .execution
        .execution_id;
    eventually(Duration::from_secs(30), "the SQL worker claims b", || async {
        let n = db
            .count(&format!(
                "lineq.events WHERE execution_id = '{slow}' AND event_type = 'action_started' AND payload->>'step' = 'b'"
            ))
            .await;
        (n == 1).then_some(())
    })
    .await;
    sql.kill();
    // The next delivery would sleep a minute too: shorten the message it will get.
    sqlx::query(
        "UPDATE pgmq.q_lineq_steps_default
         SET message = jsonb_set(message, '{input,input,sleep}', '0')
         WHERE message->>'execution_id' = $1::text",
    )
    .bind(slow.to_string())
    .execute(&db.pool)
    .await
    .expect("shorten");
    let mut sql2 = SqlWorker::start(&db.url, "psql-2");
    wait_all_finished(&db.pool, &[slow], Duration::from_secs(60)).await;
    let e = get_execution(&db.pool, slow).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Completed, "{}", sql2.log_text());
    let events = events_of_execution(&db.pool, slow).await.expect("events");
    let b_claims: Vec<(Option<String>, i64)> = events
        .iter()
        .filter(|e| e.event_type == "action_started" && e.payload["step"] == "b")
        .map(|e| {
            (
                e.worker_id.clone(),
                e.payload["delivery"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        b_claims,
        vec![
            (Some("psql-1".to_string()), 1),
            (Some("psql-2".to_string()), 2)
        ],
        "the same attempt, delivered again"
    );
    let attempts: Vec<i32> = events
        .iter()
        .filter(|e| e.event_type == "action_started" && e.payload["step"] == "b")
        .filter_map(|e| e.attempt)
        .collect();
    assert_eq!(
        attempts,
        vec![1, 1],
        "same attempt, so the same idempotency key"
    );
    check_lineage(&db.url, slow);

    sql2.stop();
    assert!(sql2.log_text().contains("stopped"), "{}", sql2.log_text());
    for p in [&mut rust, &mut orchestrator] {
        assert!(p.terminate(Duration::from_secs(20)).success());
    }
    db.drop_db().await;
}

/// The claim takes a message exactly when `lineq.step_message_problem` finds nothing wrong with
/// it, and dead-letters it with that function's reason otherwise: its fast test (casts instead
/// of regular expressions) accepts nothing the full check refuses. Each body is claimed alone,
/// then all of them in one claim (one bad message sends the batch through the full check;
/// the good ones are still taken).
#[tokio::test]
async fn the_claim_agrees_with_the_message_check_on_every_body() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    client
        .submit(SubmitRequest::new("echo").input(json!({"n": 1})))
        .await
        .expect("submit");
    let good: serde_json::Value =
        sqlx::query_scalar("SELECT message FROM pgmq.q_lineq_steps_default LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .expect("a step message");
    sqlx::query("DELETE FROM pgmq.q_lineq_steps_default")
        .execute(&db.pool)
        .await
        .expect("empty the queue");

    let uuid = good["step_id"].as_str().expect("step_id").to_string();
    let tp = good["meta"]["traceparent"]
        .as_str()
        .expect("traceparent")
        .to_string();
    let uuids = [
        json!(uuid.to_uppercase()),
        json!(format!("{{{uuid}}}")),
        json!(uuid.replace('-', "")),
        json!(format!(" {uuid}")),
        json!(format!("{}-{}", &uuid[..4], &uuid[4..]).replacen('-', "", 2)),
        json!(uuid.replacen('0', "g", 1)),
        json!(42),
        json!(null),
    ];
    let names = [
        json!("echo.v2:x-y_z"),
        json!("é"),
        json!(""),
        json!("a b"),
        json!("x".repeat(128)),
        json!("x".repeat(129)),
        json!("echo\n"),
        json!(7),
    ];
    let attempts = [
        json!(0),
        json!(1),
        json!(-1),
        json!(1.5),
        json!("1"),
        json!(123_456_789),
        json!(1_234_567_890),
        json!(1e3),
    ];
    let traceparents = [
        json!(tp.to_uppercase()),
        json!(format!("ff{}", &tp[2..])),
        json!(format!("00-{}-{}-01", "0".repeat(32), &tp[36..52])),
        json!(format!("00-{}-{}-01", &tp[3..35], "0".repeat(16))),
        json!(tp.replacen('0', " ", 2)),
        json!(format!("{}-", &tp[..54])),
        json!(tp.replacen('a', "g", 1)),
        json!(format!("{tp}0")),
        json!(null),
    ];
    let mut bodies = vec![good.clone()];
    let mut with = |path: &[&str], v: Option<serde_json::Value>| {
        let mut b = good.clone();
        let mut at = &mut b;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        let last = path[path.len() - 1];
        match v {
            Some(v) => at[last] = v,
            None => {
                at.as_object_mut().expect("an object").remove(last);
            }
        }
        bodies.push(b);
    };
    for field in [
        &["step_id"][..],
        &["execution_id"],
        &["meta", "correlation_id"],
        &["meta", "parent_event_id"],
        &["meta", "root_execution_id"],
        &["meta", "parent_execution_id"],
    ] {
        for v in &uuids {
            with(field, Some(v.clone()));
        }
        with(field, None);
    }
    for field in [&["step"][..], &["handler"]] {
        for v in &names {
            with(field, Some(v.clone()));
        }
        with(field, None);
    }
    for v in &attempts {
        with(&["attempt"], Some(v.clone()));
    }
    for v in &traceparents {
        with(&["meta", "traceparent"], Some(v.clone()));
    }
    with(&["meta", "tracestate"], Some(json!(1)));
    with(&["meta", "tracestate"], None);
    with(&["meta"], Some(json!("meta")));
    with(&["input"], None);
    bodies.push(json!([good.clone()]));

    let token: String = sqlx::query_scalar(
        "SELECT lineq.worker_register('check-1', '{default}', '{}', 'host', 1, '1', 'sql')",
    )
    .fetch_one(&db.pool)
    .await
    .expect("register");
    let claim = |qty: i32| {
        let pool = db.pool.clone();
        let token = token.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT msg_id FROM lineq.worker_claim('check-1', $1, 'default', $2)",
            )
            .bind(&token)
            .bind(qty)
            .fetch_all(&pool)
            .await
            .expect("claim")
        }
    };
    let mut expected = Vec::new();
    for body in &bodies {
        let problem: Option<String> =
            sqlx::query_scalar("SELECT lineq.step_message_problem($1, octet_length($1::text))")
                .bind(body)
                .fetch_one(&db.pool)
                .await
                .expect("check");
        expected.push(problem);
    }
    assert!(
        expected.iter().filter(|p| p.is_none()).count() >= 10,
        "the corpus holds good bodies too: {expected:?}"
    );
    assert!(expected.iter().filter(|p| p.is_some()).count() >= 40);

    let send = |body: serde_json::Value| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT pgmq.send('lineq_steps_default', $1)")
                .bind(body)
                .fetch_one(&pool)
                .await
                .expect("send")
        }
    };
    let letter = |msg_id: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT message ->> 'reason' FROM pgmq.q_lineq_dlq
                 WHERE (message ->> 'source_msg_id')::bigint = $1",
            )
            .bind(msg_id)
            .fetch_optional(&pool)
            .await
            .expect("dead letter")
        }
    };
    // Alone.
    for (body, problem) in bodies.iter().zip(&expected) {
        let id = send(body.clone()).await;
        let taken = claim(1).await;
        match problem {
            None => assert_eq!(taken, [id], "claimed: {body}"),
            Some(reason) => {
                assert!(taken.is_empty(), "not claimed: {body}");
                assert_eq!(letter(id).await.as_deref(), Some(reason.as_str()), "{body}");
            }
        }
    }
    // All in one claim.
    let mut ids = Vec::new();
    for body in &bodies {
        ids.push(send(body.clone()).await);
    }
    let taken = claim(1000).await;
    let want: Vec<i64> = ids
        .iter()
        .zip(&expected)
        .filter(|(_, p)| p.is_none())
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(taken, want);
    for (id, problem) in ids.iter().zip(&expected) {
        assert_eq!(letter(*id).await, problem.clone());
    }
    db.drop_db().await;
}

/// A report of a delivery the worker no longer holds (the message was delivered again) writes
/// only its action event, marked superseded, with the lineage read from the claim's event; the
/// holder's report then completes the step.
#[tokio::test]
async fn a_stale_delivery_writes_its_action_event_only() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let id = client
        .submit(SubmitRequest::new("echo").input(json!({"n": 1})))
        .await
        .expect("submit")
        .execution
        .execution_id;
    let register = |w: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT lineq.worker_register($1, '{default}', '{echo}', 'host', 1, '1', 'sql')",
            )
            .bind(w)
            .fetch_one(&pool)
            .await
            .expect("register")
        }
    };
    let (slow, fast) = (register("slow").await, register("fast").await);
    type Claimed = (i64, i32, Uuid);
    let claim = |w: &'static str, token: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<_, Claimed>(
                "SELECT msg_id, delivery, started_event_id
                 FROM lineq.worker_claim($1, $2, 'default', 1, 1)",
            )
            .bind(w)
            .bind(token)
            .fetch_optional(&pool)
            .await
            .expect("claim")
        }
    };
    let first = claim("slow", slow.clone()).await.expect("first delivery");
    let second = eventually(Duration::from_secs(10), "a second delivery", || {
        claim("fast", fast.clone())
    })
    .await;
    assert_eq!((second.0, second.1), (first.0, 2));
    let report = |w: &'static str, token: String, c: Claimed| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<_, (bool, Uuid)>(
                "SELECT reported, action_event_id FROM lineq.worker_report($1, $2, 'default',
                     jsonb_build_array(jsonb_build_object('msg_id', $3::bigint,
                         'delivery', $4::integer, 'started_event_id', $5::uuid,
                         'outcome', 'completed', 'output', '{\"by\": 1}'::jsonb)))",
            )
            .bind(w)
            .bind(token)
            .bind(c.0)
            .bind(c.1)
            .bind(c.2)
            .fetch_one(&pool)
            .await
            .expect("report")
        }
    };
    let (reported, action) = report("slow", slow, first).await;
    assert!(!reported, "the slow worker no longer holds it");
    let (exec, step, superseded, results): (Uuid, Option<Uuid>, bool, i64) = sqlx::query_as(
        "SELECT e.execution_id, e.step_id, (e.payload ->> 'superseded')::boolean,
                (SELECT count(*) FROM lineq.events r WHERE r.parent_event_id = $2
                   AND r.event_type = 'step_result')
         FROM lineq.events e WHERE e.event_id = $1",
    )
    .bind(action)
    .bind(first.2)
    .fetch_one(&db.pool)
    .await
    .expect("the action event");
    assert_eq!((exec, superseded, results), (id, true, 0));
    assert!(step.is_some());
    let (reported, _) = report("fast", fast, second).await;
    assert!(reported);
    db.drop_db().await;
}
