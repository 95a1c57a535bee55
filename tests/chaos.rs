//! The fault-injection suite, in CI: two orchestrators and three workers as real processes,
//! 2,000 executions of a workflow with fan-out, a retry and a child execution, a random worker
//! SIGKILLed every second and one orchestrator SIGKILLed mid-run, replacements started. It
//! passes only if nothing is lost or duplicated, every lineage tree is whole and every queue is
//! empty (see `lineq chaos --help`; `--soak MINUTES` runs it longer by hand).

mod support;

use serde_json::Value;
use support::*;

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
