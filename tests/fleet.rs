//! The fleet: workers register and heartbeat in `lineq.workers`; `lineq workers` shows who is
//! alive, silent or stopped; an orchestrator releases the steps of a worker that went silent,
//! so another worker runs them long before their visibility timeout.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use lineq::{Client, SubmitRequest};
use lineq_testkit::*;

/// `lineq workers ARGS --format json`, parsed.
fn workers(url: &str, args: &[&str], env: &[(&str, &str)]) -> Vec<Value> {
    let mut all = vec!["workers", "--format", "json"];
    all.extend_from_slice(args);
    let out = lineq_with(url, &all, |c| {
        for (k, v) in env {
            c.env(k, v);
        }
    });
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<Value>(&out.stdout).expect("JSON")["workers"]
        .as_array()
        .expect("a list")
        .clone()
}

fn state_of(list: &[Value], id: &str) -> Option<String> {
    list.iter()
        .find(|w| w["worker_id"] == id)
        .map(|w| w["state"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_workers_steps_are_released_to_another_worker() {
    let db = TestDb::new().await;
    // Visibility timeout 120 s: without the release, the step would wait two minutes.
    let worker_args = |id: &'static str| {
        vec![
            "worker",
            "--worker-id",
            id,
            "--visibility-timeout-secs",
            "120",
            "--heartbeat-secs",
            "1",
            "--poll-interval-ms",
            "200",
        ]
    };
    let mut a = Proc::start(&db.url, "worker-a", &worker_args("worker-a"));
    let client = Client::new(db.pool.clone());
    let s = client
        .submit(SubmitRequest::new("sleep").input(json!({"ms": 3000})))
        .await
        .expect("submit");
    let id = s.execution.execution_id;

    // Worker A registers, then claims the step.
    eventually(Duration::from_secs(20), "worker-a to claim the step", || {
        let pool = db.pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM lineq.events
                 WHERE execution_id = $1 AND event_type = 'action_started' AND worker_id = 'worker-a'",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    let listed = workers(&db.url, &[], &[]);
    assert_eq!(state_of(&listed, "worker-a").as_deref(), Some("alive"));
    let row = listed
        .iter()
        .find(|w| w["worker_id"] == "worker-a")
        .unwrap();
    assert_eq!(row["namespaces"], json!(["default"]));
    assert_eq!(row["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        row["handlers"]
            .as_array()
            .unwrap()
            .contains(&json!("sleep")),
        "{row}"
    );
    assert_eq!(row["pid"], a.child.id());

    // Killed mid-step: no clean stop, no outcome, the message hidden for two minutes.
    a.kill();
    let killed = Instant::now();
    let mut b = Proc::start(&db.url, "worker-b", &worker_args("worker-b"));
    let mut orch = Proc::start(
        &db.url,
        "orchestrator",
        &["orchestrator", "--silent-worker-secs", "3"],
    );

    wait_all_finished(&db.pool, &[id], Duration::from_secs(60)).await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(40),
        "released and rerun in {took:?}, not after the 120 s visibility timeout"
    );
    let status: String =
        sqlx::query_scalar("SELECT status FROM lineq.executions WHERE execution_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "completed");
    // Both deliveries are in the lineage; the outcome is worker B's.
    let starts: Vec<(String, i32)> = sqlx::query_as(
        "SELECT worker_id, (payload->>'delivery')::int FROM lineq.events
         WHERE execution_id = $1 AND event_type = 'action_started' ORDER BY created_at",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        starts,
        vec![("worker-a".to_string(), 1), ("worker-b".to_string(), 2)]
    );
    let completed_by: String = sqlx::query_scalar(
        "SELECT worker_id FROM lineq.events WHERE execution_id = $1 AND event_type = 'action_completed'",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(completed_by, "worker-b");
    // The release is recorded once on the worker's row, and logged.
    let released: i64 = db
        .count("lineq.workers WHERE worker_id = 'worker-a' AND released_at IS NOT NULL")
        .await;
    assert_eq!(released, 1);
    let log = orch.log_text();
    assert!(
        log.contains("released its steps") && log.contains("worker-a"),
        "{log}"
    );
    assert!(
        !log.contains("worker-b"),
        "a live worker was released:\n{log}"
    );

    // The fleet: A silent (by flag, and by the config variable), B alive.
    let listed = workers(&db.url, &["--silent-worker-secs", "3"], &[]);
    assert_eq!(state_of(&listed, "worker-a").as_deref(), Some("silent"));
    assert_eq!(state_of(&listed, "worker-b").as_deref(), Some("alive"));
    let listed = workers(
        &db.url,
        &[],
        &[("LINEQ_ORCHESTRATOR_SILENT_WORKER_SECS", "3")],
    );
    assert_eq!(state_of(&listed, "worker-a").as_deref(), Some("silent"));
    let out = lineq(&db.url, &["workers", "--silent-worker-secs", "3"]);
    let text = stdout(&out);
    let line = |id: &str| {
        text.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not listed:\n{text}"))
            .split_whitespace()
            .nth(1)
            .map(str::to_string)
    };
    assert!(text.starts_with("WORKER"), "{text}");
    assert_eq!(line("worker-a").as_deref(), Some("silent"));
    assert_eq!(line("worker-b").as_deref(), Some("alive"));

    // A clean stop is not silence: B is stopped, shown only with --all.
    assert!(b.terminate(Duration::from_secs(20)).success());
    let listed = workers(&db.url, &["--silent-worker-secs", "3"], &[]);
    assert_eq!(state_of(&listed, "worker-b"), None);
    let listed = workers(&db.url, &["--all", "--silent-worker-secs", "3"], &[]);
    assert_eq!(state_of(&listed, "worker-b").as_deref(), Some("stopped"));
    assert_eq!(state_of(&listed, "worker-a").as_deref(), Some("silent"));
    // ... and its steps are never released.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let released: i64 = db
        .count("lineq.workers WHERE worker_id = 'worker-b' AND released_at IS NOT NULL")
        .await;
    assert_eq!(released, 0);

    assert!(orch.terminate(Duration::from_secs(20)).success());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_worker_running_a_long_step_is_left_alone() {
    let db = TestDb::new().await;
    // Heartbeats every second, threshold 3 s, a step of 6 s: it outlives the threshold twice
    // over, but its worker keeps heartbeating, so nothing is released and it runs once.
    let mut w = Proc::start(
        &db.url,
        "worker",
        &[
            "worker",
            "--worker-id",
            "steady",
            "--heartbeat-secs",
            "1",
            "--visibility-timeout-secs",
            "120",
        ],
    );
    let mut orch = Proc::start(
        &db.url,
        "orchestrator",
        &["orchestrator", "--silent-worker-secs", "3"],
    );
    let client = Client::new(db.pool.clone());
    let s = client
        .submit(SubmitRequest::new("sleep").input(json!({"ms": 6000})))
        .await
        .expect("submit");
    wait_all_finished(
        &db.pool,
        &[s.execution.execution_id],
        Duration::from_secs(60),
    )
    .await;
    let starts = db
        .count("lineq.events WHERE event_type = 'action_started'")
        .await;
    assert_eq!(starts, 1);
    assert_eq!(
        db.count("lineq.workers WHERE released_at IS NOT NULL")
            .await,
        0
    );
    assert!(w.terminate(Duration::from_secs(20)).success());
    assert!(orch.terminate(Duration::from_secs(20)).success());
    db.drop_db().await;
}
