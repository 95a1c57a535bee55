//! Failures a fleet sees every day: SIGTERM during work, PostgreSQL restarting under running
//! processes, connections that die while idle, and poison (huge, deeply nested) messages.

use std::time::{Duration, Instant};

use serde_json::json;

use lineq::{Client, DatabaseConfig, SubmitRequest};
use lineq_core::execution::{ExecutionStatus, get_execution};
use lineq_testkit::local_postgres::{LocalPostgres, LocalPostgresOptions};
use lineq_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_handlers_finish_then_exits_zero() {
    let db = TestDb::new().await;
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(
        &db.url,
        "worker",
        &["worker", "--shutdown-grace-secs", "20"],
    );
    let client = Client::new(db.pool.clone());
    let id = client
        .submit(SubmitRequest::new("sleep").input(json!({"ms": 1500})))
        .await
        .expect("submit")
        .execution
        .execution_id;
    eventually(Duration::from_secs(20), "the step to start", || async {
        (db.count(&format!(
            "lineq.events WHERE execution_id = '{id}' AND event_type = 'action_started'"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    let asked = Instant::now();
    let status = worker.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", worker.log_text());
    assert!(
        asked.elapsed() >= Duration::from_millis(800),
        "it waited for the handler"
    );
    // The outcome was reported before exit; the orchestrator finishes it.
    wait_all_finished(&db.pool, &[id], Duration::from_secs(20)).await;
    assert_eq!(
        get_execution(&db.pool, id).await.expect("e").status,
        ExecutionStatus::Completed
    );
    let starts = db
        .count(&format!(
            "lineq.events WHERE execution_id = '{id}' AND event_type = 'action_started'"
        ))
        .await;
    assert_eq!(starts, 1, "no second delivery was needed");
    assert!(orchestrator.terminate(Duration::from_secs(20)).success());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_period_releases_the_step_to_another_worker() {
    let db = TestDb::new().await;
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    // A long visibility timeout: the step comes back quickly only because it is released.
    let mut first = Proc::start(
        &db.url,
        "first",
        &[
            "worker",
            "--worker-id",
            "first",
            "--shutdown-grace-secs",
            "1",
            "--visibility-timeout-secs",
            "120",
        ],
    );
    let client = Client::new(db.pool.clone());
    let id = client
        .submit(SubmitRequest::new("sleep").input(json!({"ms": 3000})))
        .await
        .expect("submit")
        .execution
        .execution_id;
    eventually(Duration::from_secs(20), "the step to start", || async {
        (db.count(&format!(
            "lineq.events WHERE execution_id = '{id}' AND event_type = 'action_started'"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    let status = first.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", first.log_text());
    assert!(
        first.log_text().contains("released unfinished steps"),
        "{}",
        first.log_text()
    );
    let started = Instant::now();
    let mut second = Proc::start(&db.url, "second", &["worker", "--worker-id", "second"]);
    wait_all_finished(&db.pool, &[id], Duration::from_secs(30)).await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "released, not left to time out"
    );
    assert_eq!(
        get_execution(&db.pool, id).await.expect("e").status,
        ExecutionStatus::Completed
    );
    let workers: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT worker_id FROM lineq.events WHERE execution_id = $1 AND event_type = 'action_started' ORDER BY created_at",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .expect("starts");
    assert_eq!(
        workers,
        vec![Some("first".to_string()), Some("second".to_string())]
    );
    for p in [&mut second, &mut orchestrator] {
        assert!(p.terminate(Duration::from_secs(20)).success());
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run_loses_nothing() {
    // A cluster of its own: restarting the shared one would disturb other tests.
    let pg = LocalPostgres::start(LocalPostgresOptions::default())
        .await
        .expect("postgres");
    let pool = DatabaseConfig::new(pg.url())
        .connect()
        .await
        .expect("connect");
    lineq::migrate(&pool).await.expect("migrate");
    let url = pg.url().to_string();
    let mut orchestrator = Proc::start(
        &url,
        "orchestrator",
        &["orchestrator", "--poll-interval-ms", "200"],
    );
    let mut worker = Proc::start(
        &url,
        "worker",
        &["worker", "--poll-interval-ms", "200", "--concurrency", "8"],
    );
    let client = Client::new(pool.clone());
    let mut ids = Vec::new();
    for i in 0..120 {
        let s = client
            .submit(SubmitRequest::new("sleep").input(json!({"ms": 40, "i": i})))
            .await
            .expect("submit");
        ids.push(s.execution.execution_id);
    }
    // Restart while steps are in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.restart().await.expect("restart");
    // Submissions after the restart work too (the pool reconnects).
    for _ in 0..5 {
        match client
            .submit(SubmitRequest::new("echo").input(json!("after")))
            .await
        {
            Ok(s) => {
                ids.push(s.execution.execution_id);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(ids.len(), 121);
    wait_all_finished(&pool, &ids, Duration::from_secs(90)).await;
    let completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lineq.executions WHERE status = 'completed'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(completed, 121);
    let dup: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT step_id FROM lineq.events WHERE event_type = 'step_completed'
         GROUP BY step_id HAVING count(*) > 1) d",
    )
    .fetch_one(&pool)
    .await
    .expect("dups");
    assert_eq!(dup, 0);
    for p in [&mut worker, &mut orchestrator] {
        assert!(
            p.is_running(),
            "{} died with the database: {}",
            p.name,
            p.log_text()
        );
        assert!(
            p.terminate(Duration::from_secs(20)).success(),
            "{}",
            p.log_text()
        );
    }
    pool.close().await;
    pg.stop().await.expect("stop");
}

/// lineq's pool does not ping a connection on every acquire (a round trip in front of every
/// claim), only one that sat idle for `PING_IDLE_AFTER`: one that died meanwhile (a server
/// restart, a proxy's idle timeout) is replaced before anyone gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_died_while_idle_is_replaced_before_use() {
    let db = TestDb::new().await;
    let pool = DatabaseConfig::new(db.url.clone())
        .max_connections(1)
        .connect()
        .await
        .expect("connect");
    let first: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("pid");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&db.pool)
        .await
        .expect("terminate");
    assert!(killed);
    tokio::time::sleep(lineq_core::database::PING_IDLE_AFTER + Duration::from_millis(300)).await;
    let second: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("the dead connection was replaced, not handed out");
    assert_ne!(first, second);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_deeply_nested_messages_are_dead_lettered_and_the_worker_goes_on() {
    let db = TestDb::new().await;
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(&db.url, "worker", &["worker"]);
    // 10 MB, and 5,000 levels deep: both valid jsonb, neither something a worker should parse.
    let huge = json!({"blob": "x".repeat(10 * 1024 * 1024)});
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    sqlx::query("SELECT pgmq.send('lineq_steps_default', $1::jsonb)")
        .bind(&huge)
        .execute(&db.pool)
        .await
        .expect("send huge");
    sqlx::query("SELECT pgmq.send('lineq_steps_default', $1::text::jsonb)")
        .bind(&deep)
        .execute(&db.pool)
        .await
        .expect("send deep");
    let reasons: Vec<String> = eventually(Duration::from_secs(30), "two dead letters", || async {
        let r: Vec<String> =
            sqlx::query_scalar("SELECT message->>'reason' FROM pgmq.q_lineq_dlq ORDER BY msg_id")
                .fetch_all(&db.pool)
                .await
                .ok()?;
        (r.len() == 2).then_some(r)
    })
    .await;
    assert!(reasons[0].contains("the limit is 2097152"), "{reasons:?}");
    // Not an object, which the database sees before any worker parses it (a deep input
    // inside a step message is handed back by the worker: tests/worker.rs).
    assert!(reasons[1].contains("expected a JSON object"), "{reasons:?}");
    // The original bodies are kept for inspection (the huge one's first 64 KiB).
    let kept: i64 = db
        .count("pgmq.q_lineq_dlq WHERE message->'message' IS NOT NULL")
        .await;
    assert_eq!(kept, 2);

    let client = Client::new(db.pool.clone());
    let id = client
        .submit(SubmitRequest::new("echo").input(json!(1)))
        .await
        .expect("submit")
        .execution
        .execution_id;
    wait_all_finished(&db.pool, &[id], Duration::from_secs(30)).await;
    assert_eq!(
        get_execution(&db.pool, id).await.expect("e").status,
        ExecutionStatus::Completed
    );
    for p in [&mut worker, &mut orchestrator] {
        assert!(p.is_running(), "{} died: {}", p.name, p.log_text());
        assert!(p.terminate(Duration::from_secs(20)).success());
    }
    db.drop_db().await;
}
