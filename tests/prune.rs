//! Retention (`lineq prune`) on real runs: finished trees older than the cutoff go with their
//! steps, events and archived messages; recent ones, unfinished ones and trees with an
//! unfinished member stay whole.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use lineq::{Client, SubmitRequest};
use lineq_testkit::*;

/// Every execution of the trees of `roots`.
async fn tree_members(pool: &PgPool, roots: &[Uuid]) -> Vec<Uuid> {
    sqlx::query_scalar(
        "SELECT execution_id FROM lineq.executions WHERE root_execution_id = ANY($1)",
    )
    .bind(roots)
    .fetch_all(pool)
    .await
    .expect("members")
}

/// Counts of (executions, steps, events, archived messages) of the trees of `roots`.
async fn footprint(pool: &PgPool, roots: &[Uuid]) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "WITH t AS (SELECT execution_id FROM lineq.executions WHERE root_execution_id = ANY($1))
         SELECT (SELECT count(*) FROM t),
                (SELECT count(*) FROM lineq.steps WHERE execution_id IN (SELECT execution_id FROM t)),
                (SELECT count(*) FROM lineq.events WHERE root_execution_id = ANY($1)),
                (SELECT count(*) FROM (
                    SELECT message FROM pgmq.a_lineq_steps_default
                    UNION ALL SELECT message FROM pgmq.a_lineq_results) a
                 WHERE a.message ->> 'execution_id' IN (SELECT execution_id::text FROM t))",
    )
    .bind(roots)
    .fetch_one(pool)
    .await
    .expect("footprint")
}

/// Moves the executions of the trees of `roots` `days` into the past, and their archived
/// messages too when `archive`.
async fn backdate(pool: &PgPool, roots: &[Uuid], days: i32, archive: bool) {
    let members = tree_members(pool, roots).await;
    sqlx::query(
        "UPDATE lineq.executions
         SET created_at = created_at - make_interval(days => $2),
             finished_at = finished_at - make_interval(days => $2)
         WHERE execution_id = ANY($1)",
    )
    .bind(&members)
    .bind(days)
    .execute(pool)
    .await
    .expect("backdate executions");
    if !archive {
        return;
    }
    let ids: Vec<String> = members.iter().map(Uuid::to_string).collect();
    for table in ["pgmq.a_lineq_steps_default", "pgmq.a_lineq_results"] {
        sqlx::query(&format!(
            "UPDATE {table} SET archived_at = archived_at - make_interval(days => $2)
             WHERE message ->> 'execution_id' = ANY($1)"
        ))
        .bind(&ids)
        .bind(days)
        .execute(pool)
        .await
        .expect("backdate archive");
    }
}

fn prune_json(url: &str, args: &[&str]) -> (Value, String) {
    let mut all = vec!["prune", "--format", "json"];
    all.extend_from_slice(args);
    let out = lineq(url, &all);
    assert!(out.status.success(), "prune {args:?}: {}", stderr(&out));
    (
        serde_json::from_str(&stdout(&out)).expect("json report"),
        stderr(&out),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_old_finished_trees_and_nothing_else() {
    let db = TestDb::new().await;
    // A namespace no worker serves: what goes there never finishes.
    let out = lineq(&db.url, &["namespace", "create", "idle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(&db.url, "worker", &["worker", "--concurrency", "8"]);
    let client = Client::new(db.pool.clone());
    let submit = |req: SubmitRequest| {
        let client = client.clone();
        async move {
            client
                .submit(req)
                .await
                .expect("submit")
                .execution
                .execution_id
        }
    };

    // Old and finished: three roots, one failed, one tree of three.
    let old_echo = submit(SubmitRequest::new("echo").input(json!({"old": 1}))).await;
    let old_echo2 = submit(SubmitRequest::new("echo").input(json!({"old": 2}))).await;
    let old_failed = submit(SubmitRequest::new("fail").input(json!({"message": "x"}))).await;
    let old_tree = submit(SubmitRequest::new("spawn").input(json!({
        "children": [{"target": "echo", "input": {"c": 1}}, {"target": "echo", "input": {"c": 2}}],
        "wait": true
    })))
    .await;
    // Old, finished root, but its child never finishes: the tree stays.
    let half_done = submit(SubmitRequest::new("spawn").input(json!({
        "children": [{"target": "echo", "input": {}, "namespace": "idle"}],
        "wait": false
    })))
    .await;
    // Old and never finished.
    let unfinished = submit(SubmitRequest::new("echo").namespace("idle")).await;
    // Finished, but recent.
    let recent = submit(SubmitRequest::new("echo").input(json!({"new": 1}))).await;

    let finishing = [old_echo, old_echo2, old_failed, old_tree, half_done, recent];
    wait_all_finished(&db.pool, &finishing, Duration::from_secs(60)).await;
    // The result of the last step is deleted in the same transaction that finishes it, and the
    // step message archived before that: nothing of these trees is left in flight.
    let old = [old_echo, old_echo2, old_failed, old_tree];
    backdate(&db.pool, &old, 40, true).await;
    // Their archived messages stay recent: archives go by age alone.
    backdate(&db.pool, &[half_done, unfinished], 40, false).await;
    let kept = [half_done, unfinished, recent];

    let old_before = footprint(&db.pool, &old).await;
    let kept_before = footprint(&db.pool, &kept).await;
    assert_eq!(old_before.0, 6, "four roots, two children");
    assert!(
        old_before.3 >= 6,
        "archived step messages (results are deleted once applied): {old_before:?}"
    );
    let recent_archived = db.count("pgmq.a_lineq_steps_default").await
        + db.count("pgmq.a_lineq_results").await
        - old_before.3
        - kept_before.3;

    // Dry run: the counts, and nothing removed.
    let (dry, _) = prune_json(&db.url, &["--older-than", "30d", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["root_executions"], 4, "{dry}");
    assert_eq!(dry["executions"], old_before.0, "{dry}");
    assert_eq!(dry["steps"], old_before.1, "{dry}");
    assert_eq!(dry["events"], old_before.2, "{dry}");
    assert_eq!(dry["archived_messages"], old_before.3, "{dry}");
    assert_eq!(footprint(&db.pool, &old).await, old_before);

    // For real, one root per transaction, with progress on stderr.
    let (done, progress) = prune_json(&db.url, &["--older-than", "30d", "--batch-size", "1"]);
    assert_eq!(done["dry_run"], false);
    for field in [
        "root_executions",
        "executions",
        "steps",
        "events",
        "archived_messages",
    ] {
        assert_eq!(done[field], dry[field], "{field}: {done}");
    }
    assert!(done["batches"].as_u64().unwrap_or(0) >= 4, "{done}");
    assert!(
        progress
            .lines()
            .filter(|l| l.contains("root execution(s)"))
            .count()
            >= 4,
        "{progress}"
    );
    assert_eq!(footprint(&db.pool, &old).await, (0, 0, 0, 0));
    // Steps have no foreign key to their execution (migration 000009): none may be left behind.
    let orphans = db
        .count(
            "lineq.steps s WHERE NOT EXISTS
                 (SELECT 1 FROM lineq.executions x WHERE x.execution_id = s.execution_id)",
        )
        .await;
    assert_eq!(orphans, 0, "steps outlived their executions");
    assert_eq!(
        footprint(&db.pool, &kept).await,
        kept_before,
        "kept trees stay whole"
    );
    assert_eq!(
        db.count("pgmq.a_lineq_steps_default").await + db.count("pgmq.a_lineq_results").await,
        recent_archived + kept_before.3,
        "only old archived messages went"
    );
    // What stayed is still a whole tree.
    let out = lineq(&db.url, &["lineage", "check", &recent.to_string()]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));

    // Again: nothing left to do.
    let (again, _) = prune_json(&db.url, &["--older-than", "30d"]);
    assert_eq!(again["root_executions"], 0);
    assert_eq!(again["archived_messages"], 0);

    // The system goes on working after a prune.
    let after = submit(SubmitRequest::new("echo")).await;
    wait_all_finished(&db.pool, &[after], Duration::from_secs(30)).await;

    worker.terminate(Duration::from_secs(30));
    orchestrator.terminate(Duration::from_secs(30));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_refuses_bad_input() {
    let db = TestDb::new().await;
    for args in [
        vec!["prune", "--older-than", "0d"],
        vec!["prune", "--older-than", "30"],
        vec!["prune", "--older-than", "30x"],
        vec!["prune", "--older-than", "1y"],
        vec!["prune", "--older-than", "30d", "--batch-size", "0"],
        vec!["prune"],
    ] {
        let out = lineq(&db.url, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    db.drop_db().await;
}
