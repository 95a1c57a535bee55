//! A worker written without lineq's Rust code — `examples/sql-worker/worker.sh`, a bash loop over
//! `psql` speaking the SQL interface — runs the middle step of a 3-step workflow next to Rust
//! workers: every execution completes, `lineq lineage check` passes on each tree, and a SIGKILL
//! mid-step loses nothing (the step is delivered again to another such worker).

mod support;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use lineq::orchestration::workflow::{StepDefinition, WorkflowDefinition, store};
use lineq::shared::event::events_of_execution;
use lineq::shared::execution::{ExecutionStatus, get_execution};
use lineq::{Client, SubmitRequest};
use support::*;

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
