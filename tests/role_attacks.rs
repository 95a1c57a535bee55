//! Attacks by a lineq credential on what other roles run or own, performed against real login
//! roles of `lineq migrate --roles`, real `lineq` processes and the worker protocol. Each is
//! refused at its first step, and a refused attack writes nothing.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::execution::{ExecutionStatus, get_execution};
use lineq_testkit::roles::*;
use lineq_testkit::*;

/// A migrated database with login roles for the orchestrator and worker groups.
struct Fleet {
    db: TestDb,
    prefix: String,
    orch: String,
    work: String,
    sub: String,
    orch_url: String,
    work_url: String,
    sub_url: String,
    _secrets: Secrets,
}

impl Fleet {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let prefix = prefix();
        let (orch, work, sub) = (
            format!("{prefix}_o_login"),
            format!("{prefix}_w_login"),
            format!("{prefix}_s_login"),
        );
        let secrets = Secrets::new();
        let (orch_pw, work_pw, sub_pw) =
            (secrets.add(&orch), secrets.add(&work), secrets.add(&sub));
        let out = lineq(
            &db.url,
            &[
                "migrate",
                "--roles",
                "--role-prefix",
                &prefix,
                "--login-role",
                &format!("orchestrator={orch}"),
                "--login-role",
                &format!("worker={work}"),
                "--login-role",
                &format!("submitter={sub}"),
                "--role-password-dir",
                secrets.dir(),
            ],
        );
        assert!(out.status.success(), "migrate --roles: {}", stderr(&out));
        Self {
            orch_url: url_as(&db.url, &orch, &orch_pw),
            work_url: url_as(&db.url, &work, &work_pw),
            sub_url: url_as(&db.url, &sub, &sub_pw),
            db,
            prefix,
            orch,
            work,
            sub,
            _secrets: secrets,
        }
    }

    async fn drop(self) {
        self.db.drop_db().await;
        let p = &self.prefix;
        drop_roles(&[
            self.orch,
            self.work,
            self.sub,
            format!("{p}_orchestrator"),
            format!("{p}_worker"),
            format!("{p}_submitter"),
            format!("{p}_reader"),
        ])
        .await;
    }
}

/// The SQLSTATE of a refused statement.
async fn refused_with(pool: &PgPool, sql: &str, binds: &[Value]) -> String {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = match b {
            Value::String(s) => q.bind(s.clone()),
            Value::Number(n) => q.bind(n.as_i64()),
            other => q.bind(other.clone()),
        };
    }
    match q.execute(pool).await {
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.to_string()).unwrap_or_default(),
        other => panic!("{sql}: expected a refusal, got {other:?}"),
    }
}

/// The orchestrator credential (held by `lineq serve` and every submitting application) tries
/// to plant code that runs as whoever reads every queue (`lineq lineage check`, as a
/// superuser): it cannot create anything in schema pgmq, nor register a queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_role_cannot_plant_code_that_others_run() {
    let f = Fleet::new().await;
    let o = connect(&f.orch_url).await;
    // Step 1 of the attack: a function in pgmq that records who calls it.
    assert_eq!(
        refused_with(
            &o,
            "CREATE FUNCTION pgmq.spy() RETURNS boolean LANGUAGE sql AS 'SELECT true'",
            &[]
        )
        .await,
        "42501"
    );
    // The other steps fail too on their own.
    assert_eq!(
        refused_with(
            &o,
            "INSERT INTO pgmq.meta (queue_name, is_partitioned, is_unlogged) VALUES ('lineq_steps_zz', false, false)",
            &[]
        )
        .await,
        "42501"
    );
    assert_eq!(
        refused_with(
            &o,
            "CREATE VIEW pgmq.q_lineq_steps_zz AS SELECT 1 AS msg_id",
            &[]
        )
        .await,
        "42501"
    );
    assert_eq!(
        refused_with(&o, "CREATE TABLE lineq.mine (i int)", &[]).await,
        "42501"
    );
    // Queues are created through lineq.create_queue, which checks the name.
    assert_eq!(
        refused_with(
            &o,
            "SELECT lineq.create_queue($1)",
            &[json!("x; DROP TABLE lineq.events")]
        )
        .await,
        "LQ001"
    );
    sqlx::query("SELECT lineq.create_queue('lineq_steps_media')")
        .execute(&o)
        .await
        .expect("the orchestrator creates a namespace's queue");
    let owned_by_lineq: bool = sqlx::query_scalar(
        "SELECT tableowner = (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'lineq')
         FROM pg_tables WHERE schemaname = 'pgmq' AND tablename = 'q_lineq_steps_media'",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("owner");
    assert!(owned_by_lineq);
    o.close().await;

    // Had such objects been planted anyway (by anyone who could), the readers of every queue
    // read only plain tables owned by lineq's owner: the planted view's function never runs
    // as the superuser who runs `lineq lineage check`.
    let su = &f.db.pool;
    for stmt in [
        "CREATE TABLE public.spied (who text)",
        "CREATE FUNCTION public.spy() RETURNS boolean LANGUAGE sql AS $$ INSERT INTO public.spied VALUES (current_user); SELECT true $$",
        "CREATE VIEW pgmq.q_lineq_steps_zz AS SELECT 1::bigint AS msg_id, now() AS enqueued_at, '{}'::jsonb AS message WHERE public.spy()",
        "CREATE VIEW pgmq.a_lineq_steps_zz AS SELECT 1::bigint AS msg_id, now() AS enqueued_at, now() AS archived_at, '{}'::jsonb AS message WHERE public.spy()",
        "INSERT INTO pgmq.meta (queue_name, is_partitioned, is_unlogged) VALUES ('lineq_steps_zz', false, false)",
    ] {
        sqlx::query(stmt).execute(su).await.expect(stmt);
    }
    let id = Uuid::parse_str(stdout(&lineq(&f.db.url, &["submit", "echo"])).trim()).expect("id");
    let out = lineq(&f.db.url, &["lineage", "check", &id.to_string()]);
    assert!(
        stdout(&out).len() + stderr(&out).len() > 0,
        "lineage check printed nothing"
    );
    assert_eq!(f.db.count("public.spied").await, 0, "the planted view ran");
    f.drop().await;
}

/// The worker credential tries to forge an outcome, drop a message without a trace, and make
/// the orchestrator release another worker's step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_role_reaches_no_further_than_its_own_claims() {
    let f = Fleet::new().await;
    let w = connect(&f.work_url).await;
    let id =
        Uuid::parse_str(stdout(&lineq(&f.orch_url, &["submit", "echo", "--input", "1"])).trim())
            .expect("id");

    // A forged result straight into the results queue, and a message deleted without an event.
    assert_eq!(
        refused_with(
            &w,
            "SELECT pgmq.send('lineq_results', $1::jsonb)",
            &[json!(
                json!({"execution_id": id, "outcome": "completed"}).to_string()
            )]
        )
        .await,
        "42501"
    );
    assert_eq!(
        refused_with(&w, "DELETE FROM pgmq.q_lineq_steps_default", &[]).await,
        "42501"
    );
    assert_eq!(
        refused_with(
            &w,
            "SELECT * FROM pgmq.read('lineq_steps_default', 30, 10)",
            &[]
        )
        .await,
        "42501"
    );
    // Another worker's heartbeat set into the past.
    assert_eq!(
        refused_with(
            &w,
            "UPDATE lineq.workers SET last_heartbeat_at = now() - interval '1 hour'",
            &[]
        )
        .await,
        "42501"
    );

    // The honest worker registers and claims the step.
    let token: String = sqlx::query_scalar(
        "SELECT lineq.worker_register('honest', '{default}', '{echo}', 'h', 1, 'test', 'sql')",
    )
    .fetch_one(&w)
    .await
    .expect("register");
    let (msg_id, delivery, started): (i64, i32, Uuid) = sqlx::query_as(
        "SELECT msg_id, delivery, started_event_id FROM lineq.worker_claim('honest', $1, 'default', 10)",
    )
    .bind(&token)
    .fetch_one(&w)
    .await
    .expect("claim");

    // An attacker with the same role: cannot take over the live registration, heartbeat it,
    // or report the step it holds.
    assert_eq!(
        refused_with(
            &w,
            "SELECT lineq.worker_register('honest', '{default}', '{echo}')",
            &[]
        )
        .await,
        "LQ006"
    );
    assert_eq!(
        refused_with(&w, "SELECT lineq.worker_heartbeat('honest', 'guess')", &[]).await,
        "LQ006"
    );
    let evil: String =
        sqlx::query_scalar("SELECT lineq.worker_register('evil', '{default}', '{echo}')")
            .fetch_one(&w)
            .await
            .expect("register evil");
    let forged = json!([{
        "msg_id": msg_id, "delivery": delivery, "started_event_id": started,
        "outcome": "completed", "output": {"forged": true},
        "children": [{"execution_id": Uuid::now_v7(), "target": "echo", "input": {"x": 1}}]
    }]);
    assert_eq!(
        refused_with(
            &w,
            "SELECT * FROM lineq.worker_report('evil', $1, 'default', $2::jsonb)",
            &[json!(evil), json!(forged.to_string())]
        )
        .await,
        "LQ006"
    );
    assert_eq!(
        refused_with(
            &w,
            "SELECT * FROM lineq.worker_report('honest', 'guess', 'default', $1::jsonb)",
            &[json!(forged.to_string())]
        )
        .await,
        "LQ006"
    );
    // Nor extend, release or dead-letter it.
    let extended: Vec<i64> = sqlx::query_scalar(
        "SELECT lineq.worker_release('evil', $1, 'default', ARRAY[$2]::bigint[])",
    )
    .bind(&evil)
    .bind(msg_id)
    .fetch_all(&w)
    .await
    .expect("release");
    assert!(extended.is_empty(), "released another worker's message");
    let rejected: bool =
        sqlx::query_scalar("SELECT lineq.worker_reject('evil', $1, 'default', $2, 'mine now')")
            .bind(&evil)
            .bind(msg_id)
            .fetch_one(&w)
            .await
            .expect("reject");
    assert!(!rejected, "dead-lettered another worker's message");
    assert_eq!(f.db.count("pgmq.q_lineq_results").await, 0);
    assert_eq!(f.db.count("pgmq.q_lineq_dlq").await, 0);

    // The honest worker reports; the orchestrator completes it with the honest output.
    let honest = json!([{
        "msg_id": msg_id, "delivery": delivery, "started_event_id": started,
        "outcome": "completed", "output": {"honest": true}
    }]);
    let reported: bool =
        sqlx::query_scalar("SELECT reported FROM lineq.worker_report('honest', $1, 'default', $2)")
            .bind(&token)
            .bind(&honest)
            .fetch_one(&w)
            .await
            .expect("report");
    assert!(reported);
    w.close().await;
    let mut orchestrator = Proc::start(&f.orch_url, "orchestrator", &["orchestrator"]);
    wait_all_finished(&f.db.pool, &[id], Duration::from_secs(30)).await;
    let e = get_execution(&f.db.pool, id).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Completed);
    assert_eq!(e.output, Some(json!({"honest": true})));
    assert_eq!(f.db.count("lineq.executions").await, 1, "no forged child");
    assert!(orchestrator.terminate(Duration::from_secs(20)).success());
    f.drop().await;
}

/// An application's credential: it submits in its own transaction, tags and cancels through
/// lineq's functions, reads its executions; it writes no table and touches no queue. And a
/// worker's credential cannot submit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_submitter_role_submits_tags_and_cancels_and_nothing_else() {
    let f = Fleet::new().await;
    let s = connect(&f.sub_url).await;

    // In its own transaction: rolled back, nothing exists.
    let mut tx = s.begin().await.expect("begin");
    let id: Uuid = sqlx::query_scalar(
        "SELECT execution_id FROM lineq.submit('echo', '{\"n\": 1}', p_tags => '{\"team\": \"a\"}')",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("submit as submitter");
    tx.rollback().await.expect("rollback");
    assert_eq!(f.db.count("lineq.executions").await, 0);
    assert_eq!(f.db.count("pgmq.q_lineq_steps_default").await, 0);

    // Committed, it exists; the submitter reads it, tags it and cancels it.
    let id2: Uuid =
        sqlx::query_scalar("SELECT execution_id FROM lineq.submit('echo', '{\"n\": 2}')")
            .fetch_one(&s)
            .await
            .expect("submit");
    assert_ne!(id, id2);
    let status: String =
        sqlx::query_scalar("SELECT status FROM lineq.executions WHERE execution_id = $1")
            .bind(id2)
            .fetch_one(&s)
            .await
            .expect("read its execution");
    assert_eq!(status, "pending");
    sqlx::query("SELECT lineq.update_tags($1, '{\"team\": \"b\"}')")
        .bind(id2)
        .execute(&s)
        .await
        .expect("tag");
    sqlx::query("SELECT * FROM lineq.cancel($1, 'not needed')")
        .bind(id2)
        .execute(&s)
        .await
        .expect("cancel");
    let e = get_execution(&f.db.pool, id2).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Cancelled);

    // Nothing directly.
    for sql in [
        "UPDATE lineq.executions SET status = 'completed'",
        "DELETE FROM lineq.events",
        "INSERT INTO lineq.events (event_id, execution_id, root_execution_id, correlation_id, event_type, node_name) VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'x', 'x')",
        "SELECT * FROM pgmq.q_lineq_steps_default",
        "SELECT pgmq.send('lineq_steps_default', '{}')",
        "SELECT lineq.create_queue('lineq_steps_x')",
        "SELECT lineq.worker_register('w', '{default}', '{echo}')",
    ] {
        assert_eq!(refused_with(&s, sql, &[]).await, "42501", "{sql}");
    }
    s.close().await;

    // A worker's credential cannot submit.
    let w = connect(&f.work_url).await;
    assert_eq!(
        refused_with(&w, "SELECT * FROM lineq.submit('echo')", &[]).await,
        "42501"
    );
    assert_eq!(
        refused_with(&w, "SELECT * FROM lineq.cancel(gen_random_uuid())", &[]).await,
        "42501"
    );
    w.close().await;
    f.drop().await;
}
