//! Plans on a new database: until autovacuum first analyses a table (up to a minute after it
//! fills), PostgreSQL plans from default guesses. lineq's hot statements must still probe
//! indexes then, and never pay for JIT compilation.

use std::time::Duration;

use lineq::{Client, SubmitRequest};
use lineq_testkit::*;
use serde_json::json;

/// Sequential scans of `lineq.steps` counted by the server so far. The processes are gone by
/// the time this is read, so their counters have been flushed.
async fn steps_seq_scans(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT seq_scan FROM pg_stat_user_tables WHERE schemaname = 'lineq' AND relname = 'steps'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("seq_scan")
}

/// Waits until no backend of `application_name` is connected to the test database, so their
/// table counters have reached the statistics. A backend whose client closed its connection
/// exits at once on an idle machine; on a loaded one (every test binary of CI at once) one has
/// been seen to linger past 20 s. Such a backend is then terminated: exiting, it flushes its
/// counters just the same.
async fn backends_gone(db: &TestDb, application_name: &str) {
    let left = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1",
        )
        .bind(application_name)
        .fetch_one(&db.pool)
        .await
        .expect("pg_stat_activity")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while left().await > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if left().await > 0 {
        let lingering: Vec<(i32, Option<String>, String)> = sqlx::query_as(
            "SELECT pid, state, query FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1",
        )
        .bind(application_name)
        .fetch_all(&db.pool)
        .await
        .expect("lingering backends");
        eprintln!(
            "terminating {application_name} backends still connected after 20 s: {lingering:?}"
        );
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1",
        )
        .bind(application_name)
        .execute(&db.pool)
        .await
        .expect("terminate");
    }
    eventually(Duration::from_secs(20), "backends to exit", || async {
        (left().await == 0).then_some(())
    })
    .await;
}

/// A settling orchestrator reads the steps of each batch's executions. With `steps` holding
/// 20,000 rows and no statistics, `execution_id = ANY($1)` was planned as a scan of the whole
/// table for every batch (22 ms at 40,000 rows, in `lineq bench`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_probes_steps_by_index_before_the_first_analyze() {
    // Set up through a pool of its own, closed before counting: a backend reports its table
    // counters late (within seconds, or when it exits), and the migrations' index builds scan
    // `steps` too.
    let db = TestDb::empty().await;
    let setup = lineq::DatabaseConfig::new(db.url.clone())
        .application_name("lineq-test-setup")
        .max_connections(4)
        .connect()
        .await
        .expect("setup pool");
    lineq::migrate(&setup).await.expect("migrate");
    for table in ["lineq.steps", "lineq.executions"] {
        sqlx::query(&format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = false)"
        ))
        .execute(&setup)
        .await
        .expect("autovacuum off");
    }
    // History a new deployment could hold before its first ANALYZE.
    sqlx::query(
        "WITH x AS (
             INSERT INTO lineq.executions (execution_id, workflow_name, namespace, input,
                                           correlation_id, root_execution_id, status)
             SELECT id, 'history', 'default', 'null', id, id, 'completed'
             FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, 20000)) g
             RETURNING execution_id)
         INSERT INTO lineq.steps (step_id, execution_id, name, handler, namespace, queue, status)
         SELECT gen_random_uuid(), execution_id, 'run', 'noop', 'default', 'lineq_steps_default',
                'completed'
         FROM x",
    )
    .execute(&setup)
    .await
    .expect("history");
    setup.close().await;
    backends_gone(&db, "lineq-test-setup").await;
    let analysed = db
        .count("pg_stats WHERE schemaname = 'lineq' AND tablename = 'steps'")
        .await;
    assert_eq!(analysed, 0, "steps must have no statistics for this test");
    let before = steps_seq_scans(&db).await;

    let mut orchestrator = Proc::start(&db.url, "plans-orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(&db.url, "plans-worker", &["worker", "--concurrency", "16"]);
    let client = Client::new(db.pool.clone());
    let submitted = client
        .submit_many(
            (0..300)
                .map(|i| SubmitRequest::new("echo").input(json!({ "i": i })))
                .collect(),
        )
        .await
        .expect("submit");
    let ids: Vec<_> = submitted.iter().map(|s| s.execution.execution_id).collect();
    wait_all_finished(&db.pool, &ids, Duration::from_secs(60)).await;
    assert!(orchestrator.terminate(Duration::from_secs(20)).success());
    assert!(worker.terminate(Duration::from_secs(20)).success());
    // A backend flushes its table counters as it exits; wait for the processes' backends to go.
    backends_gone(&db, "lineq").await;

    let completed = db
        .count("lineq.executions WHERE workflow_name = 'echo' AND status = 'completed'")
        .await;
    assert_eq!(completed, 300);
    let analysed = db
        .count("pg_stats WHERE schemaname = 'lineq' AND tablename = 'steps'")
        .await;
    assert_eq!(analysed, 0, "nothing analysed steps during the run");
    let scans = steps_seq_scans(&db).await - before;
    assert_eq!(
        scans, 0,
        "sequential scans of lineq.steps while settling 300 executions"
    );
    db.drop_db().await;
}
