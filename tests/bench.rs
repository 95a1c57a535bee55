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

/// `--history`: the rows run on the database as it is, then after a history of 2,000 executions
/// copied from real ones, and both are reported with their ratios. The history is what lineq
/// would have written: 8 events an execution, ids that sort by time as lineq's do, lineage that
/// `lineq lineage check` accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_at_a_history_reports_both_runs_and_their_ratios() {
    let db = TestDb::new().await;
    let out = lineq(
        &db.url,
        &[
            "bench",
            "--history",
            "2000",
            "--executions",
            "300",
            "--latency-samples",
            "20",
            "--no-floor-row",
            "--no-tracing-row",
            "--no-progress",
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).expect("bench prints JSON");

    // Both runs, each with the plain and the keyed row, each row run twice.
    for run in [&r["fresh"], &r["at_history"]] {
        let rows = run["throughput"].as_array().expect("throughput rows");
        assert_eq!(rows.len(), 2, "plain and keyed: {run}");
        for row in rows {
            assert_eq!(row["executions"], 600, "{row}");
            assert_eq!(row["events"], 4800, "{row}");
        }
        assert_eq!(run["pickup_latency_ms"]["n"], 20, "{run}");
        assert!(run["design_floor"].is_null(), "{run}");
    }

    // Every ratio is the history's figure over the fresh one.
    let c = &r["comparison"];
    let ratio_holds = |v: &Value| {
        let (f, h, q) = (
            v["fresh"].as_f64().expect("fresh"),
            v["at_history"].as_f64().expect("at_history"),
            v["ratio"].as_f64().expect("ratio"),
        );
        assert!(f > 0.0 && h > 0.0, "{v}");
        assert!((q - h / f).abs() < 1e-9, "{v}");
    };
    let rows = c["rows"].as_array().expect("compared rows");
    assert_eq!(rows.len(), 2, "{c}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["name"], r["fresh"]["throughput"][i]["name"], "{c}");
        assert_eq!(
            row["per_second"]["at_history"], r["at_history"]["throughput"][i]["per_second"],
            "{c}"
        );
        for figure in ["per_second", "cpu_us", "process_cpu_us", "wal_bytes"] {
            ratio_holds(&row[figure]);
        }
    }
    for figure in [
        "raw_pgmq_per_second",
        "pickup_p50_ms",
        "workflow_p50_ms",
        "commit_round_trip_p50_ms",
    ] {
        ratio_holds(&c[figure]);
    }
    assert_eq!(
        c["workflow_p50_ms"]["fresh"], r["fresh"]["workflow_latency_ms"]["p50"],
        "{c}"
    );
    // Issue 25's two targets, each judged by its ratio.
    let targets = c["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 2, "{c}");
    let cpu = rows[0]["cpu_us"]["ratio"].as_f64().expect("CPU ratio");
    assert_eq!(targets[0]["met"], cpu <= 1.1, "{c}");
    let p50 = c["workflow_p50_ms"]["ratio"].as_f64().expect("p50 ratio");
    assert_eq!(targets[1]["met"], p50 <= 1.2, "{c}");

    // The history: 2,000 executions (the two templates among them), 8 events each, 1 in 50
    // failed, their step message each archived (a result message is deleted once applied).
    let h = &r["history"];
    assert_eq!(h["executions"], 2000, "{h}");
    assert_eq!(h["failed"], 40, "{h}");
    assert_eq!(h["events"], 16_000, "{h}");
    assert_eq!(h["archived_messages"], 2000, "{h}");
    assert!(h["fill_seconds"].as_f64() > Some(0.0), "{h}");
    assert!(
        h["database_bytes"].as_i64() > h["database_bytes_before"].as_i64(),
        "{h}"
    );
    assert!(
        h["events_in_database"].as_i64() >= Some(16_000 + 2 * 4800),
        "{h}"
    );
    let workflow = h["workflow"].as_str().expect("workflow").to_string();
    assert!(workflow.starts_with("bench.history."), "{h}");

    let of_history = |sql: &str| {
        let pool = db.pool.clone();
        let sql = sql.to_string();
        let workflow = workflow.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&sql)
                .bind(workflow)
                .fetch_one(&pool)
                .await
                .expect(&sql)
        }
    };
    assert_eq!(
        of_history("SELECT count(*) FROM lineq.executions WHERE workflow_name = $1").await,
        2000
    );
    assert_eq!(
        of_history(
            "SELECT count(*) FROM lineq.executions
             WHERE workflow_name = $1 AND status = 'failed'"
        )
        .await,
        40
    );
    // Finished, each with its one step and its 8 events, in the past week.
    assert_eq!(
        of_history(
            "SELECT count(*) FROM lineq.executions x
             WHERE workflow_name = $1
               AND (status NOT IN ('completed', 'failed') OR finished_at IS NULL
                    OR created_at < now() - interval '8 days' OR finished_at > now()
                    OR (SELECT count(*) FROM lineq.events e
                        WHERE e.execution_id = x.execution_id) <> 8
                    OR (SELECT count(*) FROM lineq.steps s
                        WHERE s.execution_id = x.execution_id) <> 1)"
        )
        .await,
        0
    );
    // Ids sort by time: in creation order, every execution's id is greater than the one before;
    // every id is a UUIDv7 whose time is within a second of its row's.
    assert_eq!(
        of_history(
            "SELECT count(*) FROM (
                 SELECT execution_id,
                        lag(execution_id) OVER (ORDER BY created_at, execution_id) AS before
                 FROM lineq.executions WHERE workflow_name = $1) o
             WHERE execution_id < before"
        )
        .await,
        0
    );
    assert_eq!(
        of_history(
            "SELECT count(*) FROM lineq.events e JOIN lineq.executions x USING (execution_id)
             WHERE x.workflow_name = $1
               AND (substr(e.event_id::text, 15, 1) <> '7'
                    OR abs(('x' || left(replace(e.event_id::text, '-', ''), 12))::bit(48)::bigint
                           - (extract(epoch FROM e.created_at) * 1000)::bigint) > 1000)"
        )
        .await,
        0
    );
    // Copies do not share ids (primary keys would refuse it) nor trace ids.
    assert_eq!(
        of_history(
            "SELECT count(DISTINCT trace_id) FROM lineq.events e
             JOIN lineq.executions x USING (execution_id) WHERE x.workflow_name = $1"
        )
        .await,
        2000
    );

    // `lineq lineage check` accepts a copy's tree, a failed one's too, with its step message.
    for status in ["completed", "failed"] {
        let id: uuid::Uuid = sqlx::query_scalar(
            "SELECT execution_id FROM lineq.executions
             WHERE workflow_name = $1 AND status = $2 ORDER BY created_at DESC OFFSET 3 LIMIT 1",
        )
        .bind(&workflow)
        .bind(status)
        .fetch_one(&db.pool)
        .await
        .expect("a copy");
        let out = lineq(
            &db.url,
            &["lineage", "check", &id.to_string(), "--format", "json"],
        );
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
        let check: Value = serde_json::from_str(&stdout(&out)).expect("check prints JSON");
        assert_eq!(check["events"], 8, "{check}");
        assert_eq!(check["messages"], 1, "{check}");
        assert_eq!(check["faults"].as_array().map(Vec::len), Some(0), "{check}");
    }
    db.drop_db().await;
}

/// `--no-keyed-row` (with the other two `--no-…-row` flags) leaves the plain row alone: what
/// `tools/abba.sh` compares between two builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_flags_leave_only_the_plain_row() {
    let db = TestDb::new().await;
    let out = lineq(
        &db.url,
        &[
            "bench",
            "--executions",
            "100",
            "--latency-samples",
            "10",
            "--no-floor-row",
            "--no-tracing-row",
            "--no-keyed-row",
            "--no-progress",
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).expect("bench prints JSON");
    let rows = r["throughput"].as_array().expect("throughput rows");
    assert_eq!(rows.len(), 1, "the plain row only: {r}");
    assert_eq!(rows[0]["name"], "lineq, full lineage", "{r}");
    assert_eq!(rows[0]["executions"], 200, "{r}");
    assert!(
        r["design_floor"].is_null() && r["tracing_cost"].is_null(),
        "{r}"
    );
}
