//! The operations of docs/sql-api.md ("Operations") called from plain SQL, as a client in any
//! language calls them: tags, cancellation, reading and listing. Their errors are SQLSTATEs of
//! class LQ with the field in COLUMN, and an error writes nothing.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::collections::BTreeSet;

use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgDatabaseError;
use uuid::Uuid;

use lineq_core::execution::ExecutionStatus;
use lineq_orchestrator::{Client, SubmitRequest};
use lineq_read::query::{ExecutionFilter, list_executions};
use lineq_testkit::*;

/// The SQLSTATE, COLUMN and message of the error `sql` raises.
async fn refusal(pool: &PgPool, sql: &str) -> (String, Option<String>, String) {
    let e = sqlx::query(sql)
        .execute(pool)
        .await
        .expect_err("the call should be refused");
    let db = e.as_database_error().expect("a database error");
    let pg = db.downcast_ref::<PgDatabaseError>();
    (
        pg.code().to_string(),
        pg.column().map(str::to_string),
        pg.message().to_string(),
    )
}

/// What a refused call could have written: the execution's row and its events.
async fn state(pool: &PgPool, id: Uuid) -> (Value, i64) {
    let row: Value = sqlx::query_scalar(
        "SELECT jsonb_build_object('tags', tags, 'version', version, 'status', status)
         FROM lineq.executions WHERE execution_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("row");
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lineq.events WHERE execution_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("events");
    (row, events)
}

/// Every execution `lineq.list_executions(args…)` lists, two a page, each page asked for with
/// the last row's (created_at, execution_id) as the cursor.
async fn sql_pages(pool: &PgPool, args: &str, newest_first: bool) -> Vec<Uuid> {
    let sep = if args.is_empty() { "" } else { ", " };
    let sql = format!(
        "SELECT execution_id, created_at FROM lineq.list_executions({args}{sep}
             p_limit => 2, p_after_created_at => $1, p_after_execution_id => $2,
             p_newest_first => $3)"
    );
    let mut ids = Vec::new();
    let mut after: Option<(chrono::DateTime<chrono::Utc>, Uuid)> = None;
    loop {
        let page: Vec<(Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(&sql)
            .bind(after.map(|a| a.0))
            .bind(after.map(|a| a.1))
            .bind(newest_first)
            .fetch_all(pool)
            .await
            .expect("list_executions");
        ids.extend(page.iter().map(|r| r.0));
        match page.last() {
            Some(last) if page.len() == 2 => after = Some((last.1, last.0)),
            _ => return ids,
        }
    }
}

/// The same through the Rust client's pages, following `next_cursor`.
async fn rust_pages(pool: &PgPool, filter: ExecutionFilter) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut f = filter.limit(2);
    loop {
        let page = list_executions(pool, &f).await.expect("list");
        ids.extend(page.items.iter().map(|e| e.execution_id));
        match page.next_cursor {
            Some(c) => f = f.cursor(c),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn tags_from_sql() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let id = client
        .submit(SubmitRequest::new("echo").tag("customer", "acme"))
        .await
        .expect("submit")
        .execution
        .execution_id;

    // A change: the row as it is afterwards, its version bumped, a tags_changed event.
    let (tags, version): (Value, i64) = sqlx::query_as(&format!(
        "SELECT tags, version FROM lineq.update_tags('{id}',
             p_set => '{{\"region\": \"eu\"}}', p_remove => '{{customer}}',
             p_expect_version => 1, p_cause => 'moved', p_actor => 'psql')"
    ))
    .fetch_one(&db.pool)
    .await
    .expect("update_tags");
    assert_eq!(tags, json!({"region": "eu"}));
    assert_eq!(version, 2);
    let (parent_type, node, payload): (String, String, Value) = sqlx::query_as(
        "SELECT p.event_type, e.node_name, e.payload FROM lineq.events e
         JOIN lineq.events p ON p.event_id = e.parent_event_id
         WHERE e.execution_id = $1 AND e.event_type = 'tags_changed'",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .expect("tags_changed");
    assert_eq!(parent_type, "execution_started");
    assert_eq!(node, "psql");
    assert_eq!(
        payload,
        json!({"before": {"customer": "acme"}, "after": {"region": "eu"}, "version": 2,
               "cause": "moved"})
    );
    // A change that changes nothing writes nothing.
    let before = state(&db.pool, id).await;
    sqlx::query(&format!(
        "SELECT * FROM lineq.update_tags('{id}', '{{\"region\": \"eu\"}}')"
    ))
    .execute(&db.pool)
    .await
    .expect("no-op");
    assert_eq!(state(&db.pool, id).await, before);

    // Refusals: SQLSTATE, field, and nothing written.
    let cases = [
        (
            format!(
                "SELECT lineq.update_tags('{id}', '{{\"region\": \"us\"}}', p_expect_version => 1)"
            ),
            "LQ003",
            None,
            "is at version 2, not 1",
        ),
        (
            format!("SELECT lineq.update_tags('{id}', '{{\"Bad Key\": \"x\"}}')"),
            "LQ001",
            Some("tags"),
            "tag key \"Bad Key\" contains 'B'",
        ),
        (
            format!("SELECT lineq.update_tags('{id}', '{{\"lineq_owner\": \"x\"}}')"),
            "LQ001",
            Some("tags"),
            "reserved prefix",
        ),
        (
            format!("SELECT lineq.update_tags('{id}', '{{\"k\": 1}}')"),
            "LQ001",
            Some("tags"),
            "value must be a string",
        ),
        (
            format!(
                "SELECT lineq.update_tags('{id}', (SELECT jsonb_object_agg('k' || i, 'v')
                                                   FROM generate_series(1, 20) i))"
            ),
            "LQ001",
            Some("tags"),
            "21 tags; the limit is 20",
        ),
        (
            format!(
                "SELECT lineq.update_tags('{id}', '{{\"a\": \"b\"}}', p_cause => repeat('c', 257))"
            ),
            "LQ001",
            Some("cause"),
            "257 characters; the limit is 256",
        ),
        (
            format!("SELECT lineq.update_tags('{id}')"),
            "LQ001",
            Some("tags"),
            "nothing to change",
        ),
        (
            format!(
                "SELECT lineq.update_tags('{}', '{{\"a\": \"b\"}}')",
                Uuid::now_v7()
            ),
            "LQ002",
            None,
            "not found",
        ),
    ];
    for (sql, code, column, says) in cases {
        let (c, col, msg) = refusal(&db.pool, &sql).await;
        assert_eq!(c, code, "{sql}: {msg}");
        assert_eq!(col.as_deref(), column, "{sql}: {msg}");
        assert!(msg.contains(says), "{sql}: {msg}");
        assert_eq!(state(&db.pool, id).await, before, "{sql} wrote something");
    }

    // Tags of a finished execution: LQ004, naming its status.
    sqlx::query("UPDATE lineq.executions SET status = 'completed' WHERE execution_id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .expect("finish");
    let (code, _, msg) = refusal(
        &db.pool,
        &format!("SELECT lineq.update_tags('{id}', '{{\"a\": \"b\"}}')"),
    )
    .await;
    assert_eq!(code, "LQ004", "{msg}");
    assert!(msg.contains("is completed"), "{msg}");
    db.drop_db().await;
}

#[tokio::test]
async fn cancel_from_sql() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let root = client
        .submit(SubmitRequest::new("echo"))
        .await
        .expect("submit")
        .execution
        .execution_id;
    let child = client
        .submit(SubmitRequest::new("echo").parent(root))
        .await
        .expect("submit child")
        .execution
        .execution_id;
    // The root's step runs: a worker (here, psql) claimed it.
    let token: String = sqlx::query_scalar(
        "SELECT lineq.worker_register('psql-1', '{default}', '{echo}', 'host', 1, '1', 'sql')",
    )
    .fetch_one(&db.pool)
    .await
    .expect("register");
    let claimed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.worker_claim('psql-1', $1, 'default', 1, 30, 5, '{echo}')",
    )
    .bind(&token)
    .fetch_one(&db.pool)
    .await
    .expect("claim");
    assert_eq!(claimed, 1);

    // Refusals write nothing.
    let before = (state(&db.pool, root).await, state(&db.pool, child).await);
    let (code, col, _) = refusal(
        &db.pool,
        &format!("SELECT * FROM lineq.cancel('{root}', repeat('r', 257))"),
    )
    .await;
    assert_eq!((code.as_str(), col.as_deref()), ("LQ001", Some("reason")));
    let (code, col, _) = refusal(
        &db.pool,
        &format!("SELECT * FROM lineq.cancel('{root}', E'a\\nb')"),
    )
    .await;
    assert_eq!((code.as_str(), col.as_deref()), ("LQ001", Some("reason")));
    let (code, _, _) = refusal(
        &db.pool,
        &format!("SELECT * FROM lineq.cancel('{}')", Uuid::now_v7()),
    )
    .await;
    assert_eq!(code, "LQ002");
    assert_eq!(
        (state(&db.pool, root).await, state(&db.pool, child).await),
        before
    );

    let (id, executions, steps, deleted, cancelled): (Uuid, i32, i32, i32, Vec<Uuid>) =
        sqlx::query_as(&format!(
            "SELECT * FROM lineq.cancel('{root}', p_reason => 'no longer needed', p_actor => 'psql')"
        ))
        .fetch_one(&db.pool)
        .await
        .expect("cancel");
    assert_eq!(id, root);
    assert_eq!(executions, 2, "the root and its child");
    assert_eq!(steps, 2, "a step each");
    assert_eq!(deleted, 2, "both queued messages (one claimed, one not)");
    assert_eq!(cancelled, vec![root, child], "parents first");
    let statuses: Vec<(String, String)> = sqlx::query_as(
        "SELECT e.status, s.status FROM lineq.executions e JOIN lineq.steps s USING (execution_id)
         WHERE e.execution_id = ANY($1) ORDER BY e.execution_id",
    )
    .bind(vec![root, child])
    .fetch_all(&db.pool)
    .await
    .expect("statuses");
    assert_eq!(
        statuses,
        vec![("cancelled".to_string(), "cancelled".to_string()); 2]
    );
    // Each cancellation hangs off what caused it: the root's off its latest event (the claim's
    // action_started), the child's off the root's, each step's off its execution's.
    let events: Vec<(Uuid, String, Option<String>, Value)> = sqlx::query_as(
        "SELECT e.execution_id, e.event_type, p.event_type, e.payload FROM lineq.events e
         LEFT JOIN lineq.events p ON p.event_id = e.parent_event_id
         WHERE e.execution_id = ANY($1) AND e.event_type LIKE '%cancelled'
         ORDER BY e.created_at",
    )
    .bind(vec![root, child])
    .fetch_all(&db.pool)
    .await
    .expect("events");
    let shape: Vec<(Uuid, &str, Option<&str>)> = events
        .iter()
        .map(|(e, t, p, _)| (*e, t.as_str(), p.as_deref()))
        .collect();
    assert_eq!(
        shape,
        vec![
            (root, "execution_cancelled", Some("action_started")),
            (root, "step_cancelled", Some("execution_cancelled")),
            (child, "execution_cancelled", Some("execution_cancelled")),
            (child, "step_cancelled", Some("execution_cancelled")),
        ]
    );
    assert_eq!(
        events[0].3,
        json!({"status": "cancelled", "reason": "no longer needed"})
    );
    assert_eq!(events[1].3, json!({"step": "echo", "was": "enqueued"}));
    // The worker sees its step cancelled.
    let step: Uuid = sqlx::query_scalar("SELECT step_id FROM lineq.steps WHERE execution_id = $1")
        .bind(root)
        .fetch_one(&db.pool)
        .await
        .expect("step");
    let seen: Vec<Uuid> = sqlx::query_scalar("SELECT lineq.worker_cancelled($1)")
        .bind(vec![step])
        .fetch_all(&db.pool)
        .await
        .expect("worker_cancelled");
    assert_eq!(seen, vec![step]);

    // Finished: LQ004, naming its status.
    let (code, _, msg) = refusal(&db.pool, &format!("SELECT * FROM lineq.cancel('{root}')")).await;
    assert_eq!(code, "LQ004", "{msg}");
    assert!(msg.contains("already cancelled"), "{msg}");
    db.drop_db().await;
}

#[tokio::test]
async fn get_and_list_from_sql_match_rust() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut req = SubmitRequest::new("echo")
            .tag("customer", if i % 2 == 0 { "acme" } else { "globex" })
            .metadata(json!({"order": {"n": i % 3}}));
        if i % 3 == 0 {
            req = req.tag("region", "eu");
        }
        ids.push(
            client
                .submit(req)
                .await
                .expect("submit")
                .execution
                .execution_id,
        );
    }
    sqlx::query("UPDATE lineq.executions SET status = 'failed' WHERE execution_id = $1")
        .bind(ids[0])
        .execute(&db.pool)
        .await
        .expect("fail one");

    let got: (Uuid, String) =
        sqlx::query_as("SELECT execution_id, status FROM lineq.get_execution($1)")
            .bind(ids[0])
            .fetch_one(&db.pool)
            .await
            .expect("get");
    assert_eq!(got, (ids[0], "failed".to_string()));
    let (code, _, _) = refusal(
        &db.pool,
        &format!("SELECT * FROM lineq.get_execution('{}')", Uuid::now_v7()),
    )
    .await;
    assert_eq!(code, "LQ002");

    // (SQL arguments, the same filter in Rust)
    let cases: Vec<(&str, ExecutionFilter)> = vec![
        ("", ExecutionFilter::new()),
        (
            "p_tags => '{\"customer\": \"acme\", \"region\": \"eu\"}'",
            ExecutionFilter::new()
                .tag("customer", "acme")
                .tag("region", "eu"),
        ),
        (
            "p_has_tags => '{region}'",
            ExecutionFilter::new().has_tag("region"),
        ),
        (
            "p_metadata => '{\"order\": {\"n\": 1}}'",
            ExecutionFilter::new().metadata(json!({"order": {"n": 1}})),
        ),
        (
            "p_statuses => '{pending}', p_tags => '{\"customer\": \"acme\"}'",
            ExecutionFilter::new()
                .status(ExecutionStatus::Pending)
                .tag("customer", "acme"),
        ),
        (
            "p_statuses => '{failed,completed}'",
            ExecutionFilter::new()
                .status(ExecutionStatus::Failed)
                .status(ExecutionStatus::Completed),
        ),
    ];
    for (args, filter) in cases {
        let from_sql = sql_pages(&db.pool, args, false).await;
        assert_eq!(
            from_sql,
            rust_pages(&db.pool, filter.clone()).await,
            "{args}"
        );
        let mut sorted = from_sql.clone();
        sorted.sort();
        assert_eq!(sorted, from_sql, "{args}: oldest first");
        assert_eq!(
            from_sql.iter().collect::<BTreeSet<_>>().len(),
            from_sql.len(),
            "{args}: no row twice"
        );
        assert!(!from_sql.is_empty(), "{args}: something matches");
        // Newest first: the same rows the other way round.
        let mut reversed = from_sql.clone();
        reversed.reverse();
        assert_eq!(
            sql_pages(&db.pool, args, true).await,
            reversed,
            "{args}: newest first in SQL"
        );
        assert_eq!(
            rust_pages(&db.pool, filter.newest_first()).await,
            reversed,
            "{args}: newest first in Rust"
        );
    }

    // Bad filters name their field.
    for (args, field) in [
        ("p_limit => 0", "limit"),
        ("p_limit => 1001", "limit"),
        ("p_tags => '{\"Bad\": \"x\"}'", "tag"),
        ("p_has_tags => '{\"\"}'", "has_tag"),
        ("p_metadata => '[1]'", "metadata"),
        ("p_statuses => '{done}'", "status"),
        ("p_after_created_at => now()", "cursor"),
        (
            "p_since => now(), p_until => now() - interval '1 hour'",
            "until",
        ),
    ] {
        let (code, col, msg) = refusal(
            &db.pool,
            &format!("SELECT * FROM lineq.list_executions({args})"),
        )
        .await;
        assert_eq!(code, "LQ001", "{args}: {msg}");
        assert_eq!(col.as_deref(), Some(field), "{args}: {msg}");
    }
    db.drop_db().await;
}

/// `lineq.execution_history` reads an execution's changes from SQL, and `lineq_finished`
/// carries the id of every execution that finishes, on commit only.
#[tokio::test]
async fn history_and_the_finish_notification_from_sql() {
    let db = TestDb::new().await;
    let client = Client::new(db.pool.clone());
    let id = client
        .submit(SubmitRequest::new("echo").tag("customer", "acme"))
        .await
        .expect("submit")
        .execution
        .execution_id;
    sqlx::query(
        "SELECT lineq.update_tags($1, p_set => '{\"region\": \"eu\"}', p_cause => 'moved')",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .expect("tag");

    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .expect("listener");
    listener.listen("lineq_finished").await.expect("listen");

    // A cancel rolled back finishes nothing and says nothing.
    let mut tx = db.pool.begin().await.expect("begin");
    sqlx::query("SELECT * FROM lineq.cancel($1, 'second thoughts')")
        .bind(id)
        .execute(&mut *tx)
        .await
        .expect("cancel in tx");
    tx.rollback().await.expect("rollback");
    // The committed one is heard, and it is the first thing heard.
    sqlx::query("SELECT * FROM lineq.cancel($1, 'order withdrawn')")
        .bind(id)
        .execute(&db.pool)
        .await
        .expect("cancel");
    let heard = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .expect("recv");
    assert_eq!(heard.payload(), id.to_string());
    // A change that finishes nothing (tags of another execution) is not heard.
    let other = client
        .submit(SubmitRequest::new("echo"))
        .await
        .expect("submit")
        .execution
        .execution_id;
    sqlx::query("UPDATE lineq.executions SET status = 'running' WHERE execution_id = $1")
        .bind(other)
        .execute(&db.pool)
        .await
        .expect("running");
    sqlx::query("SELECT * FROM lineq.cancel($1)")
        .bind(other)
        .execute(&db.pool)
        .await
        .expect("cancel other");
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .expect("recv");
    assert_eq!(next.payload(), other.to_string(), "running is not finished");

    /// kind, event_type, status, version, cause
    type Entry = (String, String, Option<String>, Option<i64>, String);
    let history: Vec<Entry> = sqlx::query_as(
        "SELECT kind, event_type, status, version, cause FROM lineq.execution_history($1)",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .expect("history");
    let kinds: Vec<(&str, &str)> = history
        .iter()
        .map(|h| (h.0.as_str(), h.1.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("status", "execution_started"),
            ("step", "step_enqueued"),
            ("tags", "tags_changed"),
            ("status", "execution_cancelled"),
            ("step", "step_cancelled"),
        ]
    );
    assert_eq!(history[0].4, "submitted");
    assert_eq!((history[2].3, history[2].4.as_str()), (Some(2), "moved"));
    assert_eq!(
        (history[3].2.as_deref(), history[3].4.as_str()),
        (Some("cancelled"), "order withdrawn")
    );
    let (code, _, _) = refusal(
        &db.pool,
        &format!(
            "SELECT * FROM lineq.execution_history('{}')",
            Uuid::now_v7()
        ),
    )
    .await;
    assert_eq!(code, "LQ002");
    db.drop_db().await;
}
