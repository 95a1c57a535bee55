//! Least-privilege roles (`lineq migrate --roles`): real `lineq` processes connect as login roles
//! of each group and do their work, and the same roles are refused everything else.
//!
//! Roles belong to the cluster, not a database, and tests run in parallel: every test names its
//! groups with a prefix of its own (`--role-prefix`) and drops its roles at the end.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::event::events_of_execution;
use lineq_migrate::roles::Password;
use lineq_testkit::roles::*;
use lineq_testkit::*;

fn submit(url: &str, args: &[&str]) -> Uuid {
    let mut all = vec!["submit"];
    all.extend_from_slice(args);
    let out = lineq(url, &all);
    assert!(out.status.success(), "submit: {}", stderr(&out));
    Uuid::parse_str(stdout(&out).trim()).expect("submit prints the id")
}

async fn status_of(pool: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM lineq.executions WHERE execution_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_its_work_and_nothing_else() {
    let db = TestDb::new().await;
    let p = prefix();
    let (orch, work, read, ext_worker) = (
        format!("{p}_orch_login"),
        format!("{p}_work_login"),
        format!("{p}_read_login"),
        format!("{p}_ext_worker"),
    );
    let secrets = Secrets::new();
    let (orch_pw, work_pw, read_pw) = (secrets.add(&orch), secrets.add(&work), secrets.add(&read));
    let out = lineq(
        &db.url,
        &[
            "migrate",
            "--roles",
            "--role-prefix",
            &p,
            "--login-role",
            &format!("orchestrator={orch}"),
            "--login-role",
            &format!("worker={work}"),
            "--login-role",
            &format!("reader={read}"),
            "--role-password-dir",
            secrets.dir(),
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "migrate --roles: {}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(report["roles"]["worker"], format!("{p}_worker"));
    assert_eq!(report["roles"]["logins"].as_array().map(Vec::len), Some(3));
    assert!(
        !stdout(&out).contains(&work_pw) && !stderr(&out).contains(&work_pw),
        "a password was printed"
    );

    // A login role made by the operator, the usual way: it inherits its group's privileges
    // without acting as the group.
    let ext_pw = format!("pw-{}", Uuid::now_v7().simple());
    sqlx::query(&format!(
        "CREATE ROLE {ext_worker} LOGIN PASSWORD '{ext_pw}' IN ROLE {p}_worker"
    ))
    .execute(&db.pool)
    .await
    .expect("operator's login role");

    let orch_url = url_as(&db.url, &orch, &orch_pw);
    let work_url = url_as(&db.url, &work, &work_pw);
    let read_url = url_as(&db.url, &read, &read_pw);
    let ext_url = url_as(&db.url, &ext_worker, &ext_pw);

    // The orchestrator role creates a namespace through lineq.create_queue: its tables are
    // owned by lineq's owner (who ran the migration), not by the group or the login.
    let out = lineq(&orch_url, &["namespace", "create", "media"]);
    assert!(out.status.success(), "namespace create: {}", stderr(&out));

    let (owner, lineq_owner): (String, String) = sqlx::query_as(
        "SELECT tableowner::text, (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'lineq')
         FROM pg_tables WHERE tablename = 'q_lineq_steps_media'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("owner");
    assert_eq!(owner, lineq_owner, "owned by lineq's owner");
    let mut orchestrator = Proc::start(&orch_url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(&work_url, "worker", &["worker", "--concurrency", "4"]);
    let mut media_worker = Proc::start(
        &ext_url,
        "media-worker",
        &["worker", "--namespace", "media", "--concurrency", "2"],
    );

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(submit(
            &orch_url,
            &["echo", "--input", &format!(r#"{{"i":{i}}}"#)],
        ));
    }
    let failing = submit(&orch_url, &["fail", "--input", r#"{"message":"boom"}"#]);
    let media = submit(
        &orch_url,
        &["echo", "--namespace", "media", "--input", r#"{"m":1}"#],
    );
    let mut all = ids.clone();
    all.extend([failing, media]);
    wait_all_finished(&db.pool, &all, Duration::from_secs(60)).await;
    for id in ids.iter().chain([&media]) {
        assert_eq!(status_of(&db.pool, *id).await, "completed", "{id}");
    }
    assert_eq!(status_of(&db.pool, failing).await, "failed");
    let events = events_of_execution(&db.pool, ids[0]).await.expect("events");
    assert_eq!(tree_shape(&events), ONE_STEP_COMPLETED);
    let media_events = events_of_execution(&db.pool, media).await.expect("events");
    assert_eq!(tree_shape(&media_events), ONE_STEP_COMPLETED);

    for process in [&mut worker, &mut media_worker, &mut orchestrator] {
        let exit = process.terminate(Duration::from_secs(30));
        let log = process.log_text();
        assert!(exit.success(), "{} exited {exit:?}: {log}", process.name);
        assert!(
            !log.contains("permission denied"),
            "{} was refused something it needs:\n{log}",
            process.name
        );
    }
    let id = ids[0];

    // The worker: the worker protocol's functions; no table of its own to write or read.
    for url in [&work_url, &ext_url] {
        let w = connect(url).await;
        allowed(
            &w,
            "SELECT lineq.worker_cancelled(ARRAY(SELECT $1::uuid))",
            id,
        )
        .await;
        denied(
            &w,
            "SELECT step_id, status FROM lineq.steps WHERE execution_id = $1",
            id,
        )
        .await;
        denied(
            &w,
            "INSERT INTO lineq.events (event_id, execution_id, root_execution_id, correlation_id,
                 event_type, node_name) VALUES ($1, $1, $1, $1, 'x', 'x')",
            Uuid::now_v7(),
        )
        .await;
        denied(
            &w,
            "UPDATE lineq.workers SET last_heartbeat_at = now() - interval '1 hour' WHERE worker_id <> $1::text",
            id,
        )
        .await;
        denied(
            &w,
            "DELETE FROM pgmq.q_lineq_steps_default WHERE msg_id > 0 AND $1::uuid IS NOT NULL",
            id,
        )
        .await;
        denied(
            &w,
            "SELECT pgmq.send('lineq_results', jsonb_build_object('execution_id', $1::uuid))",
            id,
        )
        .await;
        denied(
            &w,
            "SELECT lineq.create_queue('lineq_steps_evil') WHERE $1::uuid IS NOT NULL",
            id,
        )
        .await;
        denied(
            &w,
            "UPDATE lineq.executions SET status = 'failed' WHERE execution_id = $1",
            id,
        )
        .await;
        denied(
            &w,
            "UPDATE lineq.steps SET status = 'failed' WHERE execution_id = $1",
            id,
        )
        .await;
        denied(&w, "DELETE FROM lineq.events WHERE execution_id = $1", id).await;
        denied(
            &w,
            "INSERT INTO lineq.executions (execution_id, workflow_name, namespace, input,
                 correlation_id, root_execution_id) VALUES ($1, 'x', 'default', '{}', $1, $1)",
            Uuid::now_v7(),
        )
        .await;
        denied(
            &w,
            "DELETE FROM lineq.executions WHERE execution_id = $1",
            id,
        )
        .await;
        denied(&w, "TRUNCATE lineq.events", id).await;
        // Not even reading what others computed: no inputs, outputs or events.
        denied(
            &w,
            "SELECT input, output FROM lineq.steps WHERE execution_id = $1",
            id,
        )
        .await;
        denied(&w, "SELECT * FROM lineq.events WHERE execution_id = $1", id).await;
        denied(
            &w,
            "SELECT * FROM lineq.executions WHERE execution_id = $1",
            id,
        )
        .await;
        // Queues: it may send results, not read them, and may not create queues.
        denied(&w, "SELECT * FROM pgmq.q_lineq_results", id).await;
        denied(&w, "SELECT pgmq.create('lineq_steps_evil')", id).await;
        w.close().await;
    }
    let w = connect(&work_url).await;
    let acting_as: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&w)
        .await
        .expect("current_user");
    assert_eq!(
        acting_as,
        format!("{p}_worker"),
        "a login made by lineq acts as its group"
    );
    w.close().await;

    // The reader: lineage queries and the CLI's read commands; no writes, no consuming.
    let r = connect(&read_url).await;
    let through_reader: i64 = sqlx::query_scalar("SELECT count(*) FROM lineq.lineage($1)")
        .bind(id)
        .fetch_one(&r)
        .await
        .expect("lineage as reader");
    assert_eq!(through_reader, events.len() as i64);
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM lineq.lineage_messages($1)")
        .bind(id)
        .fetch_one(&r)
        .await
        .expect("lineage_messages as reader");
    assert_eq!(
        messages, 1,
        "its archived step message (the result was deleted once applied)"
    );
    allowed(&r, "SELECT * FROM lineq.event_descendants((SELECT event_id FROM lineq.events WHERE execution_id = $1 AND parent_event_id IS NULL))", id).await;
    denied(
        &r,
        "INSERT INTO lineq.events (event_id, execution_id, root_execution_id, correlation_id,
             event_type, node_name) VALUES ($1, $1, $1, $1, 'x', 'x')",
        Uuid::now_v7(),
    )
    .await;
    denied(
        &r,
        "UPDATE lineq.executions SET tags = '{}' WHERE execution_id = $1",
        id,
    )
    .await;
    allowed(&r, "SELECT * FROM pgmq.metrics_all()", id).await;
    denied(
        &r,
        "SELECT * FROM pgmq.read('lineq_steps_default', 30, 1)",
        id,
    )
    .await;
    denied(&r, "SELECT pgmq.send('lineq_results', '{}')", id).await;
    r.close().await;
    for args in [
        vec!["get", &id.to_string()[..]],
        vec!["lineage", &id.to_string()[..]],
    ] {
        let out = lineq(&read_url, &args);
        assert!(out.status.success(), "{args:?} as reader: {}", stderr(&out));
    }
    let out = lineq(&read_url, &["submit", "echo"]);
    assert!(!out.status.success(), "a reader submitted");
    let r = connect(&read_url).await;
    denied(
        &r,
        "SELECT lineq.create_queue('lineq_steps_evil') WHERE $1::uuid IS NOT NULL",
        id,
    )
    .await;
    denied(
        &r,
        "SELECT lineq.worker_register('evil', '{default}', '{echo}') WHERE $1::uuid IS NOT NULL",
        id,
    )
    .await;
    r.close().await;

    // The orchestrator: all state, but not the schema or the migrations.
    let o = connect(&orch_url).await;
    denied(&o, "DROP TABLE lineq.events", id).await;
    denied(&o, "CREATE TABLE lineq.mine (i int)", id).await;
    denied(&o, "DELETE FROM lineq._sqlx_migrations", id).await;
    denied(&o, "ALTER TABLE pgmq.q_lineq_results ADD COLUMN x int", id).await;
    // Nothing of its own in a schema whose objects others run, and no forged queue.
    denied(
        &o,
        "CREATE FUNCTION pgmq.mine() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        id,
    )
    .await;
    denied(&o, "CREATE VIEW pgmq.q_lineq_steps_zz AS SELECT 1 AS x", id).await;
    denied(
        &o,
        "INSERT INTO pgmq.meta (queue_name, is_partitioned, is_unlogged) VALUES ('lineq_steps_zz', false, false)",
        id,
    )
    .await;
    o.close().await;
    // It prunes (DELETE on executions, steps, events and archives).
    sqlx::query(
        "UPDATE lineq.executions SET finished_at = now() - interval '40 days',
                created_at = now() - interval '40 days' WHERE execution_id = $1",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .expect("backdate");
    let out = lineq(
        &orch_url,
        &["prune", "--older-than", "30d", "--format", "json"],
    );
    assert!(
        out.status.success(),
        "prune as orchestrator: {}",
        stderr(&out)
    );
    let pruned: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(pruned["root_executions"], 1, "{pruned}");
    assert_eq!(
        db.count(&format!("lineq.events WHERE execution_id = '{id}'"))
            .await,
        0
    );
    assert_eq!(
        db.count(&format!("lineq.executions WHERE execution_id = '{id}'"))
            .await,
        0
    );

    db.drop_db().await;
    drop_roles(&[
        orch,
        work,
        read,
        ext_worker,
        format!("{p}_orchestrator"),
        format!("{p}_worker"),
        format!("{p}_submitter"),
        format!("{p}_reader"),
    ])
    .await;
}

/// Every relation's privileges (table and column level), the schemas' and the default ones.
async fn privileges(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.oid::regclass::text || ' ' || coalesce(c.relacl::text, '-') || ' ' ||
                coalesce((SELECT string_agg(a.attname || '=' || a.attacl::text, ',' ORDER BY a.attnum)
                          FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL), '-')
         FROM pg_class c WHERE c.relnamespace IN ('lineq'::regnamespace, 'pgmq'::regnamespace)
       UNION ALL
         SELECT 'schema ' || nspname || ' ' || coalesce(nspacl::text, '-')
         FROM pg_namespace WHERE nspname IN ('lineq', 'pgmq')
       UNION ALL
         SELECT 'default ' || defaclrole::regrole::text || ' ' || defaclnamespace::regnamespace::text
                || ' ' || defaclobjtype::text || ' ' || defaclacl::text
         FROM pg_default_acl
       UNION ALL
         SELECT 'function ' || p.oid::regprocedure::text || ' ' || coalesce(p.proacl::text, '-')
         FROM pg_proc p WHERE p.pronamespace = 'lineq'::regnamespace
       ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("privileges")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_idempotent_concurrent_and_reconciled() {
    let db = TestDb::new().await;
    let p = prefix();
    // Four at once, as a fleet's migrate jobs might: all succeed.
    let runs: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(lineq_bin())
                .args([
                    "migrate",
                    "--roles",
                    "--role-prefix",
                    &p,
                    "--format",
                    "json",
                ])
                .env("DATABASE_URL", &db.url)
                .env_remove("RUST_LOG")
                .stdin(std::process::Stdio::null())
                .output_async()
        })
        .collect();
    let mut created = Vec::new();
    for run in runs {
        let out = run.await.expect("join");
        assert!(
            out.status.success(),
            "concurrent migrate --roles: {}",
            stderr(&out)
        );
        let r: Value = serde_json::from_str(&stdout(&out)).expect("json");
        created.extend(
            r["roles"]["created"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    created.sort_by_key(|v| v.to_string());
    assert_eq!(
        created,
        vec![
            Value::from(format!("{p}_orchestrator")),
            Value::from(format!("{p}_reader")),
            Value::from(format!("{p}_submitter")),
            Value::from(format!("{p}_worker")),
        ],
        "each role created exactly once"
    );
    let first = privileges(&db.pool).await;
    let worker_may = |what: &str| {
        first
            .iter()
            .any(|l| l.starts_with(what) && l.contains(&format!("{p}_worker=")))
    };
    assert!(
        worker_may("function lineq.worker_claim("),
        "the worker may claim: {first:#?}"
    );
    assert!(
        !worker_may("lineq.events "),
        "the worker writes no table: {first:#?}"
    );
    assert!(
        !worker_may("function lineq.create_queue("),
        "the worker creates no queue: {first:#?}"
    );
    // Functions that act as lineq's owner are nobody's but the groups': not PUBLIC's.
    let public_definers: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'lineq'::regnamespace AND p.prosecdef
           AND has_function_privilege('public', p.oid, 'EXECUTE')",
    )
    .fetch_all(&db.pool)
    .await
    .expect("definers");
    assert_eq!(public_definers, Vec::<String>::new());
    // Every lineq function pins its search_path.
    let unpinned: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'lineq'::regnamespace
           AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search\\_path=%')",
    )
    .fetch_all(&db.pool)
    .await
    .expect("search paths");
    assert_eq!(unpinned, Vec::<String>::new());

    // Privileges granted by hand are taken back; nothing else changes.
    for g in [
        format!("GRANT UPDATE ON lineq.executions TO {p}_worker"),
        format!("GRANT CREATE ON SCHEMA pgmq TO {p}_worker"),
        format!("GRANT INSERT ON lineq.events TO {p}_reader"),
        format!("ALTER DEFAULT PRIVILEGES IN SCHEMA lineq GRANT UPDATE ON TABLES TO {p}_worker"),
    ] {
        sqlx::query(&g)
            .execute(&db.pool)
            .await
            .expect("grant by hand");
    }
    let out = lineq(
        &db.url,
        &[
            "migrate",
            "--roles",
            "--role-prefix",
            &p,
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(r["roles"]["created"], serde_json::json!([]));
    assert_eq!(privileges(&db.pool).await, first);

    db.drop_db().await;
    drop_roles(&[
        format!("{p}_orchestrator"),
        format!("{p}_worker"),
        format!("{p}_submitter"),
        format!("{p}_reader"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_passwords_are_scram_verifiers_and_bad_input_is_refused() {
    let db = TestDb::new().await;
    let p = prefix();

    // The verifier lineq computes is the one PostgreSQL computes, given the same salt.
    let by_pg = format!("{p}_by_pg");
    let mut conn = db.pool.acquire().await.expect("conn");
    sqlx::query("SET password_encryption = 'scram-sha-256'")
        .execute(&mut *conn)
        .await
        .expect("set");
    sqlx::query(&format!(
        "CREATE ROLE {by_pg} LOGIN PASSWORD 'correct horse battery'"
    ))
    .execute(&mut *conn)
    .await
    .expect("create");
    drop(conn);
    let stored = stored_password(&db.pool, &by_pg).await;
    assert_eq!(
        recompute(&db.pool, &stored, "correct horse battery").await,
        stored
    );

    // --role-password-dir: only a verifier reaches the server.
    let secrets = Secrets::new();
    let login = format!("{p}_w");
    let pw = secrets.add(&login);
    let out = lineq(
        &db.url,
        &[
            "migrate",
            "--roles",
            "--role-prefix",
            &p,
            "--login-role",
            &format!("worker={login}"),
            "--role-password-dir",
            secrets.dir(),
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(r["roles"]["logins"][0]["password_set"], true);
    assert_eq!(r["roles"]["logins"][0]["created"], true);
    let stored = stored_password(&db.pool, &login).await;
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
    assert_eq!(recompute(&db.pool, &stored, &pw).await, stored);

    // Refused, exit 2, and no role made.
    sqlx::query(&format!("CREATE ROLE {p}_su SUPERUSER"))
        .execute(&db.pool)
        .await
        .expect("a superuser");
    let bad_login = format!("{p}_bad");
    std::fs::write(secrets.0.join(&bad_login), "short\n").expect("file");
    let no_file = format!("{p}_nofile");
    for (args, why) in [
        (
            vec![
                format!("--login-role=worker={bad_login}"),
                format!("--role-password-dir={}", secrets.dir()),
            ],
            "password too short",
        ),
        (
            vec![
                format!("--login-role=worker={no_file}"),
                format!("--role-password-dir={}", secrets.dir()),
            ],
            "no password file",
        ),
        (
            vec!["--login-role=boss=someone".to_string()],
            "no such kind",
        ),
        (
            vec!["--login-role=worker=Bad-Name".to_string()],
            "bad role name",
        ),
        (
            vec!["--login-role=worker=postgres".to_string()],
            "the role running it",
        ),
        (vec![format!("--login-role=worker={p}_su")], "a superuser"),
        (
            vec![format!("--login-role=worker={p}_reader")],
            "a group role",
        ),
        (vec!["--role-prefix=pg".to_string()], "reserved prefix"),
    ] {
        let mut all = vec!["migrate".to_string(), "--roles".to_string()];
        if !args.iter().any(|a| a.starts_with("--role-prefix")) {
            all.push(format!("--role-prefix={p}"));
        }
        all.extend(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = lineq(&db.url, &refs);
        assert_eq!(out.status.code(), Some(2), "{why}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("short\n"),
            "{why}: a password was printed"
        );
    }
    for never in [&bad_login, &no_file] {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(never)
                .fetch_one(&db.pool)
                .await
                .expect("exists");
        assert!(!exists, "{never} was created despite bad input");
    }
    let out = lineq(&db.url, &["migrate", "--role-password-dir", secrets.dir()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--role-password-dir needs --login-role"
    );

    db.drop_db().await;
    drop_roles(&[
        by_pg,
        login,
        format!("{p}_su"),
        format!("{p}_orchestrator"),
        format!("{p}_worker"),
        format!("{p}_submitter"),
        format!("{p}_reader"),
    ])
    .await;
}

async fn stored_password(pool: &PgPool, role: &str) -> String {
    sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(role)
        .fetch_one(pool)
        .await
        .expect("rolpassword")
}

/// The verifier of `password` with the salt and iterations of `stored`.
async fn recompute(pool: &PgPool, stored: &str, password: &str) -> String {
    let rest = stored
        .strip_prefix("SCRAM-SHA-256$")
        .expect("a SCRAM verifier");
    let (params, _) = rest.split_once('$').expect("params");
    let (iterations, salt) = params.split_once(':').expect("iterations:salt");
    let salt: Vec<u8> = sqlx::query_scalar("SELECT decode($1, 'base64')")
        .bind(salt)
        .fetch_one(pool)
        .await
        .expect("base64 salt");
    scram_sha256_verifier_with(
        Password::new(password)
            .map(|_| password)
            .expect("a valid password"),
        &salt,
        iterations.parse().expect("iterations"),
    )
}

/// The SCRAM-SHA-256 verifier of `password` with a given salt and iteration count (RFC 5802,
/// 7677), computed here independently of lineq's: the oracle the stored verifiers are checked
/// against.
fn scram_sha256_verifier_with(password: &str, salt: &[u8], iterations: u32) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    type HmacSha256 = Hmac<Sha256>;
    let mac = |key: &[u8], data: &[u8]| -> [u8; 32] {
        let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(data);
        m.finalize().into_bytes().into()
    };
    let pw = password.as_bytes();
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = mac(pw, &block);
    let mut salted = u;
    for _ in 1..iterations.max(1) {
        u = mac(pw, &u);
        salted.iter_mut().zip(u.iter()).for_each(|(s, x)| *s ^= x);
    }
    let client_key = mac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = mac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// Runs a command without blocking the test's runtime.
trait OutputAsync {
    fn output_async(self) -> tokio::task::JoinHandle<std::process::Output>;
}

impl OutputAsync for &mut std::process::Command {
    fn output_async(self) -> tokio::task::JoinHandle<std::process::Output> {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn lineq");
        tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait"))
    }
}
