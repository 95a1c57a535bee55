//! `lineq bench` end to end on a real PostgreSQL, small: every row runs, the JSON carries what
//! `docs/benchmarks.md` reports, and the bench's own checks passed (it exits non-zero when any
//! execution is missing an event or a sampled lineage tree is not whole).
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use lineq_testkit::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_bench_runs_every_row_and_checks_its_work() {
    let db = TestDb::new().await;
    let out = lineq(
        &db.url,
        &[
            "bench",
            "--executions",
            "300",
            "--latency-samples",
            "20",
            "--no-progress",
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).expect("bench prints JSON");

    let raw = r["raw_pgmq_per_second"].as_f64().expect("raw");
    assert!(raw > 0.0, "{r}");
    assert_eq!(r["raw_pgmq_runs"].as_array().map(Vec::len), Some(2), "{r}");

    let rows = r["throughput"].as_array().expect("throughput rows");
    assert_eq!(rows.len(), 3, "plain, traced and keyed: {r}");
    assert_eq!(rows[2]["name"], "lineq, concurrency key (16 keys)", "{r}");
    for row in rows {
        // Each row runs twice: 600 executions, 8 events each, all checked.
        assert_eq!(row["executions"], 600, "{row}");
        assert_eq!(row["events"], 4800, "{row}");
        let seconds = row["seconds"].as_f64().expect("seconds");
        let per_second = row["per_second"].as_f64().expect("per_second");
        assert!(seconds > 0.0 && per_second > 0.0, "{row}");
        assert!((per_second * seconds - 600.0).abs() < 1.0, "{row}");
        let ratio = row["ratio_to_raw"].as_f64().expect("ratio");
        assert!((ratio - per_second / raw).abs() < 1e-9, "{row}");
        assert!(row["peak_rss_mib"].as_f64().expect("rss") > 0.0, "{row}");
        let runs = row["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 2, "{row}");
        assert!(
            runs.iter().all(|r| r.as_f64().is_some_and(|r| r > 0.0)),
            "{row}"
        );
    }
    // What a unit cost: WAL and CPU. An execution writes its messages' rows and more, so it
    // writes more WAL than one raw message does; on Linux the machine's CPU is read too, and
    // this process's share of it is a part of it.
    let raw_cost = &r["raw_pgmq_cost_per_message"];
    let raw_wal = raw_cost["wal_bytes"].as_f64().expect("raw WAL");
    assert!(raw_wal > 0.0, "{r}");
    // The reference's 300 messages take a few clock ticks at most: present, not compared.
    assert!(raw_cost["cpu_us"].as_f64() >= Some(0.0), "{r}");
    assert!(raw_cost["process_cpu_us"].as_f64() >= Some(0.0), "{r}");
    for row in rows {
        let cost = &row["cost_per_execution"];
        assert!(cost["wal_bytes"].as_f64() > Some(2.0 * raw_wal), "{row}");
        let cpu = cost["cpu_us"].as_f64().expect("CPU");
        let own = cost["process_cpu_us"].as_f64().expect("process CPU");
        assert!(cpu > 0.0 && own > 0.0 && own <= cpu, "{row}");
    }
    assert!(r["cores"].as_u64() >= Some(1), "{r}");
    // The tests' server is on this machine, so the CPU figures include its work.
    assert_eq!(r["database_on_this_machine"], true, "{r}");
    let floor_cost = &r["design_floor"]["cost_per_execution"];
    assert!(
        floor_cost["wal_bytes"].as_f64() > Some(2.0 * raw_wal),
        "{r}"
    );
    assert!(floor_cost["cpu_us"].as_f64() > Some(0.0), "{r}");

    // Every span of the traced row reached the in-process OTLP receiver: three per one-step
    // execution (the execution, its step, its attempt), its 8 events their span events.
    assert_eq!(rows[1]["spans_sent"], 1800, "{r}");
    assert_eq!(rows[1]["spans_received"], 1800, "{r}");

    let floor = &r["design_floor"];
    assert!(floor["per_second"].as_f64().expect("floor") > 0.0, "{r}");
    assert_eq!(floor["runs"].as_array().map(Vec::len), Some(2), "{r}");

    assert_eq!(r["pickup_latency_ms"]["n"], 20, "{r}");
    // A quarter of the samples, and at least 10.
    assert_eq!(r["workflow_latency_ms"]["n"], 10, "{r}");
    // The machine's reference: one durable commit before each workflow.
    assert_eq!(r["commit_round_trip_ms"]["n"], 10, "{r}");
    let ratio = r["workflow_in_commits"].as_f64().expect("ratio");
    let expected = r["workflow_latency_ms"]["p50"].as_f64().expect("p50")
        / r["commit_round_trip_ms"]["p50"].as_f64().expect("p50");
    assert!((ratio - expected).abs() < 1e-9, "{r}");
    for l in [
        &r["pickup_latency_ms"],
        &r["workflow_latency_ms"],
        &r["commit_round_trip_ms"],
    ] {
        let (p50, p99) = (
            l["p50"].as_f64().expect("p50"),
            l["p99"].as_f64().expect("p99"),
        );
        assert!(p50 > 0.0 && p50 <= p99, "{l}");
    }
    let targets = r["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 6, "{r}");

    // The reference is PGMQ as it ships; lineq's queues leave room on their pages for reads.
    let options = async |table: &str| -> Option<Vec<String>> {
        sqlx::query_scalar("SELECT reloptions::text[] FROM pg_class WHERE oid = $1::regclass")
            .bind(format!("pgmq.{table}"))
            .fetch_one(&db.pool)
            .await
            .expect("reloptions")
    };
    assert_eq!(options("q_lineq_bench_raw").await, None);
    let lineq_queue = Some(vec!["fillfactor=50".to_string()]);
    assert_eq!(options("q_lineq_results").await, lineq_queue);
    assert_eq!(options("q_lineq_steps_default").await, lineq_queue);

    // Nothing of the throughput rows is left unfinished.
    let unfinished = db
        .count("lineq.executions WHERE status NOT IN ('completed')")
        .await;
    assert_eq!(unfinished, 0);
    // The keyed row's keys: every slot given back, nothing held back.
    assert_eq!(db.count("lineq.flow_keys").await, 16);
    assert_eq!(db.count("lineq.flow_holders").await, 0);
    assert_eq!(db.count("lineq.flow_waiting").await, 0);
    db.drop_db().await;
}
