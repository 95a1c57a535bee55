//! The fault-injection suite, in CI: two orchestrators and three workers as real processes,
//! 2,000 executions of a workflow with fan-out, a retry and a child execution, a random worker
//! SIGKILLed every second and one orchestrator SIGKILLed mid-run, replacements started. It
//! passes only if nothing is lost or duplicated, every lineage tree is whole and every queue is
//! empty (see `lineq chaos --help`; `--soak MINUTES` runs it longer by hand).
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use lineq_testkit::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_workers_and_an_orchestrator_and_lose_nothing() {
    let db = TestDb::empty().await;
    let out = lineq(
        &db.url,
        &["chaos", "--executions", "2000", "--format", "json"],
    );
    let report = stdout(&out);
    eprintln!("{}", stderr(&out));
    assert!(out.status.success(), "chaos failed:\n{report}");
    let v: Value = serde_json::from_str(&report).expect("json verdict");
    println!("chaos verdict: {v}");
    assert_eq!(v["executions"], 2000);
    assert_eq!(v["completed"], 2000);
    assert_eq!(v["children"], 2000, "one child per execution");
    assert_eq!(v["lost"], 0);
    assert_eq!(v["duplicated_outcomes"], 0);
    assert_eq!(v["duplicated_results"], 0);
    assert_eq!(v["lineage_faults"], 0);
    assert_eq!(v["messages_left"], 0);
    assert_eq!(v["unclean_exits"], 0);
    assert!(
        v["retries"].as_i64().expect("retries") >= 2000,
        "every flaky step retried"
    );
    assert!(
        v["worker_kills"].as_i64().expect("kills") >= 3,
        "workers were killed: {v}"
    );
    assert_eq!(v["orchestrator_kills"], 1);
    db.drop_db().await;
}

/// On a database in use: earlier failed and cancelled executions, and a worker already serving
/// `default`. chaos judges only what it submitted, in a namespace only its own workers serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judges_only_its_own_executions_on_a_database_in_use() {
    let db = TestDb::new().await;
    let mut bystander = Proc::start(
        &db.url,
        "bystander",
        &[
            "worker",
            "--worker-id",
            "bystander",
            "--poll-interval-ms",
            "50",
        ],
    );
    // Unrelated history: one failed execution, one cancelled.
    let failed = lineq(&db.url, &["submit", "fail", "--format", "json"]);
    let failed: Value = serde_json::from_str(&stdout(&failed)).expect("json");
    // Cancelled while it waits in a namespace no worker serves.
    assert!(
        lineq(&db.url, &["namespace", "create", "idle"])
            .status
            .success()
    );
    let cancelled = lineq(
        &db.url,
        &["submit", "sleep", "--namespace", "idle", "--format", "json"],
    );
    let cancelled: Value = serde_json::from_str(&stdout(&cancelled)).expect("json");
    let id = cancelled["execution_id"].as_str().expect("id");
    assert!(lineq(&db.url, &["cancel", id]).status.success());
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let fid = failed["execution_id"].as_str().expect("id").to_string();
    eventually(
        std::time::Duration::from_secs(30),
        "the unrelated execution to fail",
        || {
            let pool = db.pool.clone();
            let fid = fid.clone();
            async move {
                let s: String = sqlx::query_scalar(
                    "SELECT status FROM lineq.executions WHERE execution_id = $1::uuid",
                )
                .bind(&fid)
                .fetch_one(&pool)
                .await
                .ok()?;
                (s == "failed").then_some(())
            }
        },
    )
    .await;

    let out = lineq(
        &db.url,
        &[
            "chaos",
            "--executions",
            "30",
            "--orchestrators",
            "1",
            "--workers",
            "2",
            "--format",
            "json",
        ],
    );
    eprintln!("{}", stderr(&out));
    assert!(out.status.success(), "chaos failed:\n{}", stdout(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("json verdict");
    assert_eq!(v["executions"], 30);
    assert_eq!(v["completed"], 30);
    assert_eq!(v["lost"], 0, "earlier failures are not chaos's: {v}");
    let ns = v["namespace"].as_str().expect("namespace");
    assert!(ns.starts_with("chaos_"), "{ns}");
    // Its executions carry its tag, and the bystander ran none of its steps.
    let run = v["run_id"].as_str().expect("run id");
    let tagged = db
        .count(&format!(
            "lineq.executions WHERE tags ->> 'chaos_run' = '{run}'"
        ))
        .await;
    assert_eq!(tagged, 30);
    let stolen = db
        .count(&format!(
            "lineq.events e JOIN lineq.executions x USING (execution_id)
             WHERE e.worker_id = 'bystander' AND x.root_execution_id IN (
                 SELECT execution_id FROM lineq.executions WHERE tags ->> 'chaos_run' = '{run}')"
        ))
        .await;
    assert_eq!(stolen, 0, "a worker outside the run took its steps");
    for p in [&mut bystander, &mut orchestrator] {
        assert!(p.terminate(std::time::Duration::from_secs(20)).success());
    }
    db.drop_db().await;
}
