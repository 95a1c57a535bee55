//! The queue layer runs PGMQ's statements on PGMQ's tables (shared/src/queue.rs). These tests
//! hold it to PGMQ: the tables have the columns the statements use, and messages sent, read,
//! archived and deleted either way — through lineq's statements or PGMQ's own functions — are
//! the same messages with the same bookkeeping.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::time::Duration;

use serde_json::json;
use sqlx::postgres::PgListener;

use lineq_core::queue;
use lineq_core::validation::QueueName;
use lineq_core::wakeup::Wakeup;
use lineq_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_match_pgmq_tables() {
    let db = TestDb::new().await;
    let q = QueueName::new("lineq_steps_qtest").expect("name");
    let mut conn = db.pool.acquire().await.expect("conn");
    queue::ensure_queue(&mut conn, &q).await.expect("create");
    for table in ["q_lineq_steps_qtest", "a_lineq_steps_qtest"] {
        let cols: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = 'pgmq' AND table_name = $1 ORDER BY column_name",
        )
        .bind(table)
        .fetch_all(&db.pool)
        .await
        .expect("columns");
        for used in [
            "msg_id",
            "read_ct",
            "enqueued_at",
            "last_read_at",
            "vt",
            "message",
            "headers",
        ] {
            assert!(
                cols.iter().any(|c| c == used),
                "{table} lacks {used}: {cols:?}"
            );
        }
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineq_and_pgmq_functions_see_the_same_messages() {
    let db = TestDb::new().await;
    let q = QueueName::new("lineq_steps_qsame").expect("name");
    let mut conn = db.pool.acquire().await.expect("conn");
    queue::ensure_queue(&mut conn, &q).await.expect("create");

    // send_batch: ids in the order of the bodies, each body stored as sent, and a wake-up.
    let mut listener = PgListener::connect_with(&db.pool).await.expect("listen");
    listener
        .listen(queue::wake_channel(&q))
        .await
        .expect("listen");
    let bodies: Vec<_> = (0..50).map(|i| json!({ "n": i })).collect();
    let mut ids = queue::send_batch(&mut conn, &q, &bodies)
        .await
        .expect("send");
    assert_eq!(ids.len(), 50);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for (id, body) in ids.iter().zip(&bodies) {
        let stored: serde_json::Value =
            sqlx::query_scalar("SELECT message FROM pgmq.q_lineq_steps_qsame WHERE msg_id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .expect("stored");
        assert_eq!(&stored, body);
    }
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification within 5 s")
        .expect("notification");
    assert_eq!(n.payload(), q.as_str());
    // Each queue is its own channel: this send woke the consumers of `q` and no one else.
    assert_eq!(n.channel(), q.as_str());
    let mut other = PgListener::connect_with(&db.pool).await.expect("listen");
    other
        .listen(queue::wake_channel(&queue::results_queue()))
        .await
        .expect("listen");
    ids.extend(
        queue::send_batch(&mut conn, &q, &[json!({ "n": 50 })])
            .await
            .expect("send"),
    );
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification within 5 s")
        .expect("notification");
    assert_eq!(n.channel(), q.as_str());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), other.recv())
            .await
            .is_err(),
        "a listener on the results queue was woken by a step message"
    );

    // A delayed send is invisible to both readers until its time comes.
    let later = queue::send(
        &mut conn,
        &q,
        &json!({"late": true}),
        Duration::from_secs(3600),
    )
    .await
    .expect("send");

    // lineq's read takes the oldest 20 and hides them; PGMQ's read then gets the next 20.
    let first = queue::read(&db.pool, &q, 30, 20).await.expect("read");
    let mut first_ids: Vec<i64> = first.iter().map(|m| m.msg_id).collect();
    first_ids.sort_unstable();
    assert_eq!(first_ids, ids[..20]);
    assert!(first.iter().all(|m| m.read_ct == 1));
    assert!(first.iter().all(|m| m.vt > m.enqueued_at));
    let theirs: Vec<i64> =
        sqlx::query_scalar("SELECT msg_id FROM pgmq.read('lineq_steps_qsame', 30, 20)")
            .fetch_all(&db.pool)
            .await
            .expect("pgmq.read");
    let mut theirs = theirs;
    theirs.sort_unstable();
    assert_eq!(theirs, ids[20..40]);
    let rest = queue::read(&db.pool, &q, 30, 100).await.expect("read");
    let mut rest_ids: Vec<i64> = rest.iter().map(|m| m.msg_id).collect();
    rest_ids.sort_unstable();
    assert_eq!(rest_ids, ids[40..], "the delayed message stays hidden");
    assert!(!rest_ids.contains(&later));

    // A message made visible again is read a second time, with read_ct 2.
    sqlx::query("SELECT pgmq.set_vt('lineq_steps_qsame', $1, 0)")
        .bind(ids[0])
        .execute(&db.pool)
        .await
        .expect("set_vt");
    let again = queue::read(&db.pool, &q, 30, 10).await.expect("read");
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].msg_id, again[0].read_ct), (ids[0], 2));
    assert_eq!(again[0].json().expect("json"), Some(json!({ "n": 0 })));

    // archive moves each message once, with its bookkeeping; a second archive moves nothing.
    let moved = queue::archive(&mut conn, &q, &ids[..10])
        .await
        .expect("archive");
    assert_eq!(moved.len(), 10);
    assert!(
        queue::archive(&mut conn, &q, &ids[..10])
            .await
            .expect("archive")
            .is_empty()
    );
    let (archived, read_ct): (i64, i32) = sqlx::query_as(
        "SELECT count(*), max(read_ct) FROM pgmq.a_lineq_steps_qsame WHERE msg_id = ANY($1)",
    )
    .bind(&ids[..10])
    .fetch_one(&db.pool)
    .await
    .expect("archive table");
    assert_eq!((archived, read_ct), (10, 2));
    // PGMQ's own archive agrees about what is left.
    let theirs: Vec<bool> = sqlx::query_scalar(
        "SELECT pgmq.archive('lineq_steps_qsame', id) FROM unnest($1::bigint[]) AS id",
    )
    .bind(&ids[5..15])
    .fetch_all(&db.pool)
    .await
    .expect("pgmq.archive");
    assert_eq!(theirs.iter().filter(|b| **b).count(), 5);

    // delete removes for good.
    let deleted = queue::delete(&mut conn, &q, &ids[15..])
        .await
        .expect("delete");
    assert_eq!(deleted.len(), 36);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pgmq.q_lineq_steps_qsame")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(left, 1, "only the delayed message");
    drop((conn, listener, other));
    db.drop_db().await;
}

/// A queue vacuumed while it held one message has statistics of about one row; a backlog then
/// arrives. The read must still reach the rows it updates by index, not by a scan of the whole
/// table per message read (PGMQ's join shape did, and a read of 100 took 24 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_plan_uses_the_index_when_statistics_are_stale() {
    let db = TestDb::new().await;
    let q = QueueName::new("lineq_steps_qstale").expect("name");
    let mut conn = db.pool.acquire().await.expect("conn");
    queue::ensure_queue(&mut conn, &q).await.expect("create");
    let live = queue::live_table(&q);
    // 300 messages, all but the last gone, then VACUUM: one live row in a few pages.
    let body = json!({ "n": 1 });
    let ids = queue::send_batch(&mut conn, &q, &vec![body.clone(); 300])
        .await
        .expect("send");
    let last = *ids.last().expect("ids");
    sqlx::query(&format!("DELETE FROM {live} WHERE msg_id <> $1"))
        .bind(last)
        .execute(&mut *conn)
        .await
        .expect("delete");
    sqlx::query(&format!("VACUUM {live}"))
        .execute(&mut *conn)
        .await
        .expect("vacuum");
    let (pages, tuples): (i32, f32) =
        sqlx::query_as("SELECT relpages, reltuples FROM pg_class WHERE oid = $1::regclass")
            .bind(live.replace('"', ""))
            .fetch_one(&mut *conn)
            .await
            .expect("stats");
    assert!(
        tuples <= 1.0,
        "stats should be stale-small: {pages} pages, {tuples} rows"
    );
    // The backlog: 20,000 messages the statistics know nothing about.
    for _ in 0..20 {
        queue::send_batch(&mut conn, &q, &vec![body.clone(); 1000])
            .await
            .expect("send");
    }
    // The statement as a worker's connection plans it (lineq's pools force custom plans).
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN {}",
        queue::read_sql(&q)
            .replace("$1", "100")
            .replace("$2::integer", "30")
    ))
    .fetch_all(&mut *conn)
    .await
    .expect("explain");
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Cond: (msg_id = ANY"),
        "the update must find its rows by index:\n{plan}"
    );
    assert!(
        !plan.contains("Nested Loop"),
        "no per-message join over the queue:\n{plan}"
    );
    let read = queue::read(&mut *conn, &q, 30, 100).await.expect("read");
    assert_eq!(read.len(), 100);
    assert!(
        read.windows(2).all(|w| w[0].msg_id < w[1].msg_id),
        "in msg_id order"
    );
    db.drop_db().await;
}

/// lineq's pools plan every statement for its parameters and the tables' current size (see
/// DatabaseConfig::connect_options): a generic plan made while `steps` was empty joins a batch to
/// it by a sequential scan, and would keep doing so as the table grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineq_pools_do_not_keep_plans_made_for_tiny_tables() {
    let db = TestDb::new().await;
    let pool = lineq_core::database::DatabaseConfig::new(db.url.clone())
        .max_connections(1)
        .connect()
        .await
        .expect("connect");
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(&pool)
        .await
        .expect("show");
    assert_eq!(mode, "force_custom_plan");
    let jit: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(&pool)
        .await
        .expect("show");
    assert_eq!(jit, "off", "lineq's batches never pay for JIT compilation");
    // What such a connection would otherwise keep: an empty, analyzed steps table, and the
    // generic plan of a batch update by ids scans it.
    let mut conn = pool.acquire().await.expect("conn");
    sqlx::query("ANALYZE lineq.steps")
        .execute(&mut *conn)
        .await
        .expect("analyze");
    sqlx::query(
        "PREPARE lq_outcomes(uuid[], text[]) AS UPDATE lineq.steps s SET status = u.status
         FROM unnest($1, $2) AS u(step_id, status) WHERE s.step_id = u.step_id",
    )
    .execute(&mut *conn)
    .await
    .expect("prepare");
    let explain = async |conn: &mut sqlx::PgConnection| -> String {
        let plan: Vec<String> = sqlx::query_scalar("EXPLAIN EXECUTE lq_outcomes('{}', '{}')")
            .fetch_all(conn)
            .await
            .expect("explain");
        plan.join("\n")
    };
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .expect("set");
    let generic = explain(&mut conn).await;
    assert!(generic.contains("Seq Scan on steps"), "{generic}");
    // Back to the pool's setting, with rows the planner can see: an index plan.
    sqlx::query("RESET plan_cache_mode")
        .execute(&mut *conn)
        .await
        .expect("reset");
    sqlx::query(
        "INSERT INTO lineq.executions (execution_id, workflow_name, namespace, input,
                                       correlation_id, root_execution_id)
         SELECT id, 'w', 'default', 'null', id, id FROM (SELECT gen_random_uuid() AS id
                                                        FROM generate_series(1, 5000)) g",
    )
    .execute(&mut *conn)
    .await
    .expect("executions");
    sqlx::query(
        "INSERT INTO lineq.steps (step_id, execution_id, name, handler, namespace, queue)
         SELECT gen_random_uuid(), execution_id, 's', 'h', 'default', 'lineq_steps_default'
         FROM lineq.executions",
    )
    .execute(&mut *conn)
    .await
    .expect("steps");
    let custom = explain(&mut conn).await;
    assert!(!custom.contains("Seq Scan on steps"), "{custom}");
    drop(conn);
    pool.close().await;
    db.drop_db().await;
}

/// A consumer wakes for its own queue's channel, and for the channel every queue shared before
/// (senders of an earlier version, during a rolling upgrade), but not for another queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakeups_come_from_the_queue_channel_and_the_legacy_one() {
    let db = TestDb::new().await;
    let q = QueueName::new("lineq_steps_qwake").expect("name");
    let mut conn = db.pool.acquire().await.expect("conn");
    queue::ensure_queue(&mut conn, &q).await.expect("create");
    let stop = tokio_util::sync::CancellationToken::new();
    let wakeup = Wakeup::listen(&db.pool, vec![q.clone()], stop.clone())
        .await
        .expect("listen");
    // A minute-long poll interval: only a notification can end these waits in time.
    let woken = async || {
        tokio::time::timeout(Duration::from_secs(5), wakeup.wait(Duration::from_secs(60)))
            .await
            .is_ok()
    };
    let quiet = async || {
        tokio::time::timeout(
            Duration::from_millis(300),
            wakeup.wait(Duration::from_secs(60)),
        )
        .await
        .is_err()
    };

    queue::send_batch(&mut conn, &q, &[json!({ "n": 1 })])
        .await
        .expect("send");
    assert!(woken().await, "a send to the queue wakes its consumer");

    // What a sender of an earlier version does.
    let legacy_notify = async |name: &QueueName| {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(queue::LEGACY_WAKE_CHANNEL)
            .bind(name.as_str())
            .execute(&db.pool)
            .await
            .expect("notify");
    };
    legacy_notify(&q).await;
    assert!(woken().await, "an earlier version's notification wakes it");

    let results = queue::results_queue();
    queue::ensure_queue(&mut conn, &results)
        .await
        .expect("create");
    queue::send_batch(&mut conn, &results, &[json!({ "n": 2 })])
        .await
        .expect("send");
    legacy_notify(&results).await;
    assert!(quiet().await, "another queue's messages do not wake it");

    stop.cancel();
    drop(conn);
    db.drop_db().await;
}

/// The block each message of `table` is on, in `msg_id` order.
async fn pages_of(pool: &sqlx::PgPool, table: &str) -> Vec<(i64, i32)> {
    sqlx::query_as(&format!(
        "SELECT msg_id, (ctid::text::point)[0]::int FROM pgmq.{table} ORDER BY msg_id"
    ))
    .fetch_all(pool)
    .await
    .expect("pages")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_keeps_each_message_on_its_page() {
    let db = TestDb::new().await;
    let q = QueueName::new("lineq_steps_qpage").expect("name");
    let mut conn = db.pool.acquire().await.expect("conn");
    queue::ensure_queue(&mut conn, &q).await.expect("create");
    // Bodies the size of a step message: a full 8 KB page holds ten of them, so the new
    // version a read writes would have to go to another page.
    let bodies: Vec<_> = (0..40)
        .map(|i| json!({ "n": i, "pad": "x".repeat(600) }))
        .collect();
    queue::send_batch(&mut conn, &q, &bodies)
        .await
        .expect("send");
    let before = pages_of(&db.pool, "q_lineq_steps_qpage").await;
    let read = queue::read(&db.pool, &q, 30, 40).await.expect("read");
    assert_eq!(read.len(), 40);
    assert!(read.iter().all(|m| m.read_ct == 1));
    let after = pages_of(&db.pool, "q_lineq_steps_qpage").await;
    assert_eq!(
        after, before,
        "every message's new version stays on its page"
    );

    // Queues made before lineq set this get it from the migration.
    sqlx::query("SELECT pgmq.create('lineq_steps_qold')")
        .execute(&db.pool)
        .await
        .expect("create as PGMQ does");
    let fillfactor = async || -> Option<Vec<String>> {
        sqlx::query_scalar(
            "SELECT reloptions::text[] FROM pg_class
             WHERE oid = 'pgmq.q_lineq_steps_qold'::regclass",
        )
        .fetch_one(&db.pool)
        .await
        .expect("reloptions")
    };
    assert_eq!(fillfactor().await, None);
    sqlx::raw_sql(include_str!(
        "../../migrate/migrations/20261124000010_queue_fillfactor.sql"
    ))
    .execute(&db.pool)
    .await
    .expect("migration");
    assert_eq!(
        fillfactor().await,
        Some(vec![format!("fillfactor={}", queue::QUEUE_FILLFACTOR)])
    );
    drop(conn);
    db.drop_db().await;
}
