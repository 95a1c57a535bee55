//! Reads on a streaming replica: `lineq serve --read-database-url` and the CLI's read commands
//! are served by a real hot standby (made with `pg_basebackup` from a throwaway primary of the
//! test's own), the primary is left alone by them, and a read of an execution by id right after
//! its submit never answers "not found" (read-your-writes through the primary).
//!
//! The replica's replay is paused while executions are submitted, so "the replica does not
//! have it yet" is certain rather than a race: every GET after a POST must be answered by the
//! primary, and a list (served by the replica) must not show them yet.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use lineq_testkit::local_postgres::{LocalPostgres, LocalPostgresOptions};
use lineq_testkit::*;

/// Transactions committed and rolled back in database `postgres` of the server at `url`, once
/// the count has settled (other backends' pending statistics flushed: a backend flushes at
/// exit, or within a second of going idle). Read over a fresh connection each time, so no
/// snapshot is reused; each look costs the count one or two transactions of its own.
async fn settled_xacts(url: &str) -> i64 {
    let look = || async {
        let mut c = PgConnection::connect(url).await.expect("connect for stats");
        let n: i64 = sqlx::query_scalar(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database
             WHERE datname = 'postgres'",
        )
        .fetch_one(&mut c)
        .await
        .expect("pg_stat_database");
        let _ = c.close().await;
        n
    };
    let mut last = look().await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = look().await;
        // Only the looks' own transactions in between: nothing else is pending.
        if now - last <= 3 {
            return now;
        }
        last = now;
    }
    panic!("the transaction count of {url} never settled");
}

async fn scalar<T>(url: &str, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let mut c = PgConnection::connect(url).await.expect("connect");
    let v = sqlx::query_scalar(sql)
        .fetch_one(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = c.close().await;
    v
}

/// Waits until the replica has replayed everything the primary has written so far.
async fn caught_up(primary: &str, replica: &str) {
    let lsn: String = scalar(primary, "SELECT pg_current_wal_lsn()::text").await;
    let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !scalar::<bool>(replica, &sql).await {
        assert!(
            Instant::now() < deadline,
            "the replica did not replay up to {lsn}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Starts `lineq serve --read-database-url REPLICA`; returns it with its address.
async fn serve(primary: &str, replica: &str) -> (Proc, String) {
    let server = Proc::start(
        primary,
        "replica-serve",
        &[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--read-database-url",
            replica,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let log = server.log_text();
        if let Some(rest) = log.split("listening on http://").nth(1) {
            break rest.lines().next().unwrap_or("").trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "lineq serve did not start: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (server, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_served_by_the_replica_and_a_get_after_a_submit_never_misses() {
    let primary = LocalPostgres::start(LocalPostgresOptions {
        stop_with_process: true,
        // So the primary's transaction count below is lineq's and the test's alone.
        settings: vec![("autovacuum".into(), "off".into())],
        ..Default::default()
    })
    .await
    .expect("a throwaway primary");
    let replica = primary.start_replica().await.expect("a streaming replica");
    let (p, r) = (primary.url().to_string(), replica.url().to_string());
    ok(&lineq(&p, &["migrate"]), "lineq migrate");
    ok(
        &lineq(&p, &["namespace", "create", "default"]),
        "lineq namespace create",
    );
    caught_up(&p, &r).await;

    let mut orchestrator = Proc::start(&p, "replica-orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(&p, "replica-worker", &["worker", "--concurrency", "4"]);
    let (mut server, addr) = serve(&p, &r).await;
    let (status, body) = http(&addr, "GET", "/healthz", None).await;
    assert_eq!(status, 200, "{body}");

    // (c) Read-your-writes. Replay paused: nothing submitted from here is on the replica.
    let _: String = scalar(&r, "SELECT pg_wal_replay_pause()::text").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar::<String>(&r, "SELECT pg_get_wal_replay_pause_state()").await != "paused" {
        assert!(Instant::now() < deadline, "replay did not pause");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let batch = Uuid::now_v7().simple().to_string();
    let submit = format!(r#"{{"target":"echo","input":{{"n":1}},"tags":{{"batch":"{batch}"}}}}"#);
    let mut ids = Vec::new();
    for _ in 0..50 {
        let (status, body) = http(&addr, "POST", "/v1/executions", Some(&submit)).await;
        assert_eq!(status, 201, "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        let id = v["execution"]["execution_id"]
            .as_str()
            .expect("an id")
            .to_string();
        let (status, body) = http(&addr, "GET", &format!("/v1/executions/{id}"), None).await;
        assert_eq!(status, 200, "GET right after POST of {id}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["execution_id"], id.as_str());
        ids.push(id);
    }
    let (status, body) = http(
        &addr,
        "GET",
        &format!("/v1/executions/{}", Uuid::now_v7()),
        None,
    )
    .await;
    assert_eq!(status, 404, "an id nobody submitted: {body}");
    // The list is the replica's, which has replayed none of them yet.
    let (status, body) = http(
        &addr,
        "GET",
        &format!("/v1/executions?tag=batch={batch}&limit=1000"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "{body}");
    // The same through the CLI: `lineq submit`, then `lineq get` at once.
    for _ in 0..3 {
        let out = ok(
            &lineq(&p, &["submit", "echo", "--tag", &format!("batch={batch}")]),
            "lineq submit",
        );
        let id = out.trim().to_string();
        let got = ok(
            &lineq(&p, &["get", &id, "--read-database-url", &r]),
            "lineq get right after lineq submit",
        );
        assert!(got.contains(&id), "{got}");
        ids.push(id);
    }
    let missing = lineq(
        &p,
        &[
            "get",
            &Uuid::now_v7().to_string(),
            "--read-database-url",
            &r,
        ],
    );
    assert_eq!(missing.status.code(), Some(3), "{}", stderr(&missing));
    let listed = ok(
        &lineq(
            &p,
            &[
                "list",
                "--tag",
                &format!("batch={batch}"),
                "--format",
                "json",
                "--read-database-url",
                &r,
            ],
        ),
        "lineq list",
    );
    let v: Value = serde_json::from_str(&listed).expect("JSON");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "{listed}");
    let _: String = scalar(&r, "SELECT pg_wal_replay_resume()::text").await;

    // Everything completes; then only the reads below touch either server.
    let pool = sqlx::PgPool::connect(&p).await.expect("pool");
    let uuids: Vec<Uuid> = ids.iter().map(|i| i.parse().expect("uuid")).collect();
    wait_all_finished(&pool, &uuids, Duration::from_secs(120)).await;
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.executions WHERE execution_id = ANY($1) AND status = 'completed'",
    )
    .bind(&uuids)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(completed, 53);
    pool.close().await;
    assert!(orchestrator.terminate(Duration::from_secs(30)).success());
    assert!(worker.terminate(Duration::from_secs(60)).success());
    // A fresh server for the reads: the first one's pool holds connections to the primary
    // (its writes and fallbacks) whose statistics a backend may flush up to 10 s after it
    // goes idle; a backend that exits flushes them at once. The new one's primary pool opens
    // no connection until a write or a fallback needs one.
    assert!(server.terminate(Duration::from_secs(30)).success());
    let (mut server, addr) = serve(&p, &r).await;
    caught_up(&p, &r).await;
    let (primary_before, replica_before) = (settled_xacts(&p).await, settled_xacts(&r).await);

    // (a) The reads: REST GETs, console pages and CLI read commands.
    let mut reads = 0;
    for id in &ids {
        for path in [
            format!("/v1/executions/{id}"),
            format!("/v1/executions/{id}/history"),
            format!("/v1/executions/{id}/lineage"),
        ] {
            let (status, body) = http(&addr, "GET", &path, None).await;
            assert_eq!(status, 200, "{path}: {body}");
            reads += 1;
        }
    }
    for path in [
        format!("/v1/executions?tag=batch={batch}&limit=1000"),
        "/v1/workers".to_string(),
        "/v1/queues".to_string(),
        "/v1/dead-letters".to_string(),
        "/v1/workflows".to_string(),
        "/v1/schedules".to_string(),
        "/".to_string(),
        format!("/executions/{}", ids[0]),
        "/fleet".to_string(),
        "/workflows".to_string(),
        "/dead-letters".to_string(),
    ] {
        let (status, body) = http(&addr, "GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        reads += 1;
    }
    let (_, body) = http(
        &addr,
        "GET",
        &format!("/v1/executions?tag=batch={batch}&limit=1000"),
        None,
    )
    .await;
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), 53, "the replica has them all now");
    assert!(items.iter().all(|e| e["status"] == "completed"), "{body}");
    let sessions: i64 = scalar(
        &r,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'lineq-read'",
    )
    .await;
    assert!(sessions > 0, "no lineq-read session on the replica");

    // (d) Lineage is whole, checked on the replica; the CLI's other reads too.
    for id in &ids {
        ok(
            &lineq(&p, &["lineage", "check", id, "--read-database-url", &r]),
            "lineq lineage check on the replica",
        );
        reads += 1;
    }
    for args in [
        vec!["get", ids[1].as_str()],
        vec!["events", ids[1].as_str()],
        vec!["history", ids[1].as_str()],
        vec!["lineage", ids[1].as_str()],
        vec!["list", "--tag", "batch=none"],
        vec!["workers", "--all"],
    ] {
        let mut args = args;
        args.extend(["--read-database-url", r.as_str()]);
        ok(&lineq(&p, &args), &args.join(" "));
        reads += 1;
    }
    // Its connections closed, so their statistics are flushed.
    assert!(server.terminate(Duration::from_secs(30)).success());
    let (primary_after, replica_after) = (settled_xacts(&p).await, settled_xacts(&r).await);

    // Every read is at least one transaction on the replica.
    let on_replica = replica_after - replica_before;
    let on_primary = primary_after - primary_before;
    eprintln!(
        "{reads} reads: {on_replica} transactions on the replica, {on_primary} on the primary"
    );
    assert!(
        on_replica >= reads,
        "{reads} reads, only {on_replica} transactions on the replica"
    );
    // The primary: nothing runs there any more but the statistics looks themselves (one
    // transaction each, two to a few per settled count) — no read falls back, the replica has
    // caught up. 12 is that slack, far below the reads made: reads routed to the primary
    // would add at least one transaction each.
    assert!(
        reads > 150 && on_primary <= 12,
        "{reads} reads, {on_primary} transactions on the primary"
    );

    drop(replica);
    primary.stop().await.expect("stop the primary");
}
