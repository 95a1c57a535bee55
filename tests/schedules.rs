//! Schedules with real processes on a real PostgreSQL: every occurrence fires exactly once
//! under two orchestrators while one is SIGKILLed, pausing stops it and resuming starts it
//! again, each fired execution completes under a worker with the schedule's tags and a lineage
//! rooted at its `schedule_fired` event, missed occurrences follow the schedule's policy, and
//! bad input names its field and writes nothing.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use lineq_testkit::{Proc, TestDb, eventually, lineq, stderr, stdout, wait_all_finished};

/// The `schedule_fired` events of a schedule: (occurrence, skipped, event id, execution id).
async fn fired_events(pool: &PgPool, name: &str) -> Vec<(DateTime<Utc>, i64, Uuid, Uuid)> {
    sqlx::query_as(
        "SELECT (payload->>'occurrence')::timestamptz, (payload->>'skipped')::bigint,
                event_id, execution_id
         FROM lineq.events
         WHERE event_type = 'schedule_fired' AND payload->>'schedule' = $1
         ORDER BY 1, event_id",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .expect("schedule_fired events")
}

async fn fired_count(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar("SELECT fired FROM lineq.schedules WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("fired")
}

async fn db_now(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await
        .expect("now")
}

/// Sleeps until `ms` milliseconds past the next whole second, so a kill lands while an
/// every-second schedule is being fired.
async fn just_after_a_second(ms: i64) {
    let now = Utc::now();
    let into = i64::from(now.timestamp_subsec_millis());
    let wait = (1000 - into + ms).rem_euclid(1000).max(1);
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}\n{}", stdout(o), stderr(o));
    stdout(o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_under_two_orchestrators_one_killed_fires_each_occurrence_once() {
    let db = TestDb::new().await;
    let worker = Proc::start(&db.url, "sched-worker", &["worker"]);
    let mut a = Proc::start(&db.url, "sched-orch-a", &["orchestrator"]);
    let mut b = Proc::start(&db.url, "sched-orch-b", &["orchestrator"]);
    ok(&lineq(
        &db.url,
        &[
            "schedule",
            "create",
            "tick",
            "--cron",
            "* * * * * *",
            "echo",
            "--input",
            r#"{"hello": "schedule"}"#,
            "--tag",
            "team=ops",
            "--tag",
            "kind=heartbeat",
        ],
    ));

    // Both fire for a while, then one is SIGKILLed while an occurrence is being fired, and
    // the other carries on; then a third starts and both run again.
    tokio::time::sleep(Duration::from_secs(8)).await;
    just_after_a_second(2).await;
    a.kill();
    tokio::time::sleep(Duration::from_secs(8)).await;
    just_after_a_second(1).await;
    b.kill();
    let _c = Proc::start(&db.url, "sched-orch-c", &["orchestrator"]);
    let mut d = Proc::start(&db.url, "sched-orch-d", &["orchestrator"]);
    tokio::time::sleep(Duration::from_secs(12)).await;

    // Pause: nothing fires while paused.
    let paused: Value = serde_json::from_str(&ok(&lineq(
        &db.url,
        &["schedule", "pause", "tick", "--format", "json"],
    )))
    .expect("json");
    assert_eq!(paused["paused"], true);
    let at_pause = fired_count(&db.pool, "tick").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fired_count(&db.pool, "tick").await,
        at_pause,
        "a paused schedule fired"
    );
    let shown: Value = serde_json::from_str(&ok(&lineq(
        &db.url,
        &["schedule", "show", "tick", "--format", "json"],
    )))
    .expect("json");
    assert_eq!(shown["upcoming"], Value::Array(vec![]), "{shown}");

    // Resume: it fires again, from now on (nothing that fell while paused).
    let resumed_at = db_now(&db.pool).await;
    ok(&lineq(&db.url, &["schedule", "resume", "tick"]));
    eventually(Duration::from_secs(10), "fires after resume", || async {
        (fired_count(&db.pool, "tick").await >= at_pause + 2).then_some(())
    })
    .await;
    ok(&lineq(&db.url, &["schedule", "pause", "tick"]));
    d.kill();

    let fired = fired_events(&db.pool, "tick").await;
    assert!(fired.len() >= 20, "only {} fires in ~30 s", fired.len());

    // Exactly once: one schedule_fired event per occurrence, one fire row per event, one
    // execution per fire.
    let mut per_occurrence: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for (o, ..) in &fired {
        *per_occurrence.entry(*o).or_default() += 1;
    }
    let twice: Vec<_> = per_occurrence.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "occurrences fired more than once: {twice:?}"
    );
    assert_eq!(
        db.count("lineq.schedule_fires").await,
        fired.len() as i64,
        "schedule_fires rows"
    );
    let executions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.executions x
         JOIN lineq.schedule_fires f ON f.execution_id = x.execution_id
         WHERE x.parent_event_id = f.event_id",
    )
    .fetch_one(&db.pool)
    .await
    .expect("executions");
    assert_eq!(executions, fired.len() as i64);

    // No gaps except the policy's: each occurrence is the one after the previous, plus the
    // occurrences its event says were skipped, and the only other gap is the pause.
    let resumed_at = resumed_at.timestamp();
    for w in fired.windows(2) {
        let ((prev, ..), (cur, skipped, ..)) = (&w[0], &w[1]);
        let gap = (*cur - *prev).num_seconds();
        if cur.timestamp() > resumed_at && prev.timestamp() <= resumed_at {
            continue; // paused in between
        }
        assert_eq!(
            gap,
            1 + skipped,
            "occurrence {cur} follows {prev} with {skipped} skipped"
        );
    }

    // Every fired execution completes under the worker, carries the schedule's tags, and its
    // lineage starts at its schedule_fired event.
    let ids: Vec<Uuid> = fired.iter().map(|f| f.3).collect();
    wait_all_finished(&db.pool, &ids, Duration::from_secs(60)).await;
    let (completed, tagged): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'completed'),
                count(*) FILTER (WHERE tags = '{\"team\": \"ops\", \"kind\": \"heartbeat\"}'::jsonb)
         FROM lineq.executions WHERE execution_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&db.pool)
    .await
    .expect("status");
    assert_eq!((completed, tagged), (ids.len() as i64, ids.len() as i64));
    for (occurrence, _, event_id, execution_id) in &fired {
        let report = lineq_read::lineage::check::check(&db.pool, *execution_id)
            .await
            .expect("lineage check");
        assert!(
            report.is_whole(),
            "lineage of {execution_id} ({occurrence}): {:?}",
            report.faults
        );
        let (root, kind, payload): (Option<Uuid>, String, Value) = sqlx::query_as(
            "SELECT parent_event_id, event_type, payload FROM lineq.events WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_one(&db.pool)
        .await
        .expect("root event");
        assert_eq!((root, kind.as_str()), (None, "schedule_fired"));
        assert_eq!(payload["schedule"], "tick");
        let started_parent: Uuid = sqlx::query_scalar(
            "SELECT parent_event_id FROM lineq.events
             WHERE execution_id = $1 AND event_type = 'execution_started'",
        )
        .bind(execution_id)
        .fetch_one(&db.pool)
        .await
        .expect("execution_started");
        assert_eq!(started_parent, *event_id);
    }
    // And the command line says so too.
    let out = lineq(
        &db.url,
        &["lineage", "check", &ids[ids.len() / 2].to_string()],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    drop(worker);
    db.drop_db().await;
}

/// Waits until the current minute has at least `secs` seconds left, so a test that counts
/// every-minute occurrences does not straddle a minute boundary.
async fn not_near_a_minute_boundary(secs: u32) {
    use chrono::Timelike;
    let s = Utc::now().second();
    if s + secs >= 60 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - s))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_occurrences_after_downtime_follow_the_policy() {
    let db = TestDb::new().await;
    for (name, missed) in [
        ("skipper", vec!["--missed", "skip"]),
        (
            "catcher",
            vec!["--missed", "catch-up", "--catch-up-max", "3"],
        ),
    ] {
        let mut args = vec!["schedule", "create", name, "--cron", "* * * * *", "echo"];
        args.extend(missed);
        ok(&lineq(&db.url, &args));
    }
    // Ten minutes of downtime: next_fire_at ten occurrences in the past.
    not_near_a_minute_boundary(20).await;
    sqlx::query(
        "UPDATE lineq.schedules
         SET next_fire_at = date_trunc('minute', clock_timestamp()) - interval '10 minutes'",
    )
    .execute(&db.pool)
    .await
    .expect("downtime");
    let minute: DateTime<Utc> =
        sqlx::query_scalar("SELECT date_trunc('minute', clock_timestamp())")
            .fetch_one(&db.pool)
            .await
            .expect("minute");
    let orchestrator = Proc::start(&db.url, "sched-missed", &["orchestrator"]);
    eventually(Duration::from_secs(15), "the missed fires", || async {
        (fired_count(&db.pool, "skipper").await >= 1 && fired_count(&db.pool, "catcher").await >= 3)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(orchestrator);

    // skip: the latest missed occurrence fires once; the nine before it are passed over.
    let skipper = fired_events(&db.pool, "skipper").await;
    let occ: Vec<_> = skipper.iter().map(|f| (f.0, f.1)).collect();
    assert_eq!(occ, vec![(minute, 10)], "skip fired {occ:?}");
    // catch-up 3: the latest three fire, oldest first; the seven before them are passed over.
    let catcher = fired_events(&db.pool, "catcher").await;
    let occ: Vec<_> = catcher.iter().map(|f| (f.0, f.1)).collect();
    let m = |n: i64| minute - chrono::Duration::minutes(n);
    assert_eq!(
        occ,
        vec![(m(2), 8), (m(1), 0), (m(0), 0)],
        "catch-up fired {occ:?}"
    );
    // Both wait for the next minute now.
    let next: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT next_fire_at FROM lineq.schedules ORDER BY name")
            .fetch_all(&db.pool)
            .await
            .expect("next");
    assert_eq!(next, vec![m(-1), m(-1)]);
    let skipped: Vec<i64> = sqlx::query_scalar("SELECT skipped FROM lineq.schedules ORDER BY name")
        .fetch_all(&db.pool)
        .await
        .expect("skipped");
    assert_eq!(skipped, vec![8, 10], "catcher, skipper");
    db.drop_db().await;
}

/// `lineq schedule create ... --format json`: (exit code, error field, message).
fn create_error(url: &str, args: &[&str]) -> (Option<i32>, Value, String) {
    let mut all = vec!["--format", "json", "schedule", "create"];
    all.extend_from_slice(args);
    let out = lineq(url, &all);
    let err: Value = serde_json::from_str(stderr(&out).trim()).unwrap_or_else(|e| {
        panic!(
            "{args:?}: stderr is not JSON ({e}): {}{}",
            stdout(&out),
            stderr(&out)
        )
    });
    (
        out.status.code(),
        err["error"]["field"].clone(),
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let db = TestDb::new().await;
    ok(&lineq(
        &db.url,
        &["schedule", "create", "taken", "--cron", "0 * * * *", "echo"],
    ));
    let before = (db.count("lineq.schedules").await, db.written().await);
    for (args, field, says) in [
        (
            vec!["bad-cron", "--cron", "not a cron", "echo"],
            "cron",
            "3 fields",
        ),
        (
            vec!["bad-cron", "--cron", "61 * * * *", "echo"],
            "cron",
            "61",
        ),
        (
            vec!["never", "--cron", "0 0 30 2 *", "echo"],
            "cron",
            "never",
        ),
        (
            vec![
                "tz",
                "--cron",
                "* * * * *",
                "--timezone",
                "Mars/Olympus",
                "echo",
            ],
            "timezone",
            "Mars/Olympus",
        ),
        (
            vec!["taken", "--cron", "* * * * *", "echo"],
            "name",
            "already exists",
        ),
        (
            vec!["target", "--cron", "* * * * *", "nightly@3"],
            "target",
            "nightly@3",
        ),
        (
            vec!["target", "--cron", "* * * * *", "no spaces allowed"],
            "target",
            "no spaces allowed",
        ),
        (
            vec![
                "ns",
                "--cron",
                "* * * * *",
                "echo",
                "--namespace",
                "nowhere",
            ],
            "namespace",
            "nowhere",
        ),
        (
            vec![
                "cu",
                "--cron",
                "* * * * *",
                "echo",
                "--missed",
                "catch-up",
                "--catch-up-max",
                "0",
            ],
            "catch_up_max",
            "1 to 1000",
        ),
        (
            vec!["cu", "--cron", "* * * * *", "echo", "--missed", "catch-up"],
            "catch_up_max",
            "--catch-up-max",
        ),
        (
            vec!["tags", "--cron", "* * * * *", "echo", "--tag", "Bad=x"],
            "tags",
            "Bad",
        ),
        (
            vec!["in", "--cron", "* * * * *", "echo", "--input", "{nope"],
            "input",
            "JSON",
        ),
    ] {
        let (code, f, message) = create_error(&db.url, &args);
        assert_eq!(code, Some(2), "{args:?}: {message}");
        assert_eq!(f, field, "{args:?}: {message}");
        assert!(
            message.contains(says),
            "{args:?}: {message:?} does not say {says:?}"
        );
    }
    assert_eq!(
        (db.count("lineq.schedules").await, db.written().await),
        before,
        "bad input wrote something"
    );

    // The SQL interface refuses the same without the CLI's checks: LQ001 with the field in
    // COLUMN, nothing written.
    for (call, field) in [
        ("SELECT lineq.schedule_create('x', '* * *', 'echo')", "cron"),
        (
            "SELECT lineq.schedule_create('x', '* * * * * ; DROP', 'echo')",
            "cron",
        ),
        (
            "SELECT lineq.schedule_create('x', '* * * * *', 'echo', p_timezone => 'Nowhere/City')",
            "timezone",
        ),
        (
            "SELECT lineq.schedule_create('taken', '* * * * *', 'echo')",
            "name",
        ),
        (
            "SELECT lineq.schedule_create('x y', '* * * * *', 'echo')",
            "name",
        ),
        (
            "SELECT lineq.schedule_create('x', '* * * * *', 'nightly@2')",
            "target",
        ),
        (
            "SELECT lineq.schedule_create('x', '* * * * *', 'echo', p_missed => 'catch-up', p_catch_up_max => 1001)",
            "catch_up_max",
        ),
        (
            "SELECT lineq.schedule_create('x', '* * * * *', 'echo', p_missed => 'sometimes')",
            "missed",
        ),
    ] {
        let e = sqlx::query(call).execute(&db.pool).await.expect_err(call);
        let db_err = e.as_database_error().expect("a database error");
        assert_eq!(db_err.code().as_deref(), Some("LQ001"), "{call}: {db_err}");
        let pg = db_err
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .expect("pg error");
        assert_eq!(pg.column(), Some(field), "{call}: {db_err}");
    }
    assert_eq!(
        (db.count("lineq.schedules").await, db.written().await),
        before,
        "bad SQL input wrote something"
    );

    // Unknown schedules are not found (exit 3).
    for cmd in ["show", "pause", "resume", "delete"] {
        let out = lineq(&db.url, &["schedule", cmd, "missing"]);
        assert_eq!(out.status.code(), Some(3), "{cmd}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("schedule missing not found"),
            "{}",
            stderr(&out)
        );
    }
    db.drop_db().await;
}

#[tokio::test]
async fn list_show_and_delete() {
    let db = TestDb::new().await;
    ok(&lineq(
        &db.url,
        &[
            "schedule",
            "create",
            "paris",
            "--cron",
            "0 9 * * MON-FRI",
            "--timezone",
            "Europe/Paris",
            "echo",
            "--input",
            "42",
        ],
    ));
    let listed: Value = serde_json::from_str(&ok(&lineq(
        &db.url,
        &["schedule", "list", "--format", "json"],
    )))
    .expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["timezone"], "Europe/Paris");
    assert_eq!(listed[0]["input"], 42);
    let text = ok(&lineq(&db.url, &["schedule", "list"]));
    assert!(
        text.contains("paris") && text.contains("Europe/Paris"),
        "{text}"
    );

    // The next fire times: weekdays at 09:00 in Paris (07:00 or 08:00 UTC).
    let shown: Value = serde_json::from_str(&ok(&lineq(
        &db.url,
        &[
            "schedule", "show", "paris", "--next", "7", "--format", "json",
        ],
    )))
    .expect("json");
    let upcoming: Vec<DateTime<Utc>> =
        serde_json::from_value(shown["upcoming"].clone()).expect("times");
    assert_eq!(upcoming.len(), 7);
    assert_eq!(
        shown["next_fire_at"],
        serde_json::to_value(upcoming[0]).expect("time")
    );
    for t in &upcoming {
        use chrono::{Datelike, Timelike};
        assert!(
            matches!((t.hour(), t.minute(), t.second()), (7 | 8, 0, 0)),
            "{t}"
        );
        assert!(t.weekday().number_from_monday() <= 5, "{t}");
    }
    assert!(upcoming.windows(2).all(|w| w[0] < w[1]), "{upcoming:?}");
    let text = ok(&lineq(&db.url, &["schedule", "show", "paris"]));
    assert!(text.contains("next fires"), "{text}");

    let deleted: Value = serde_json::from_str(&ok(&lineq(
        &db.url,
        &["schedule", "delete", "paris", "--format", "json"],
    )))
    .expect("json");
    assert_eq!(deleted["name"], "paris");
    assert_eq!(db.count("lineq.schedules").await, 0);
    db.drop_db().await;
}

/// The submitter role manages schedules, the reader lists them, the worker does neither, and
/// only the orchestrator fires them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_manage_read_and_fire_schedules() {
    use lineq_testkit::roles::{Secrets, allowed, connect, denied, drop_roles, prefix, url_as};
    let db = TestDb::new().await;
    let p = prefix();
    let (orch, sub, read, work) = (
        format!("{p}_orch_login"),
        format!("{p}_sub_login"),
        format!("{p}_read_login"),
        format!("{p}_work_login"),
    );
    let secrets = Secrets::new();
    let (orch_pw, sub_pw, read_pw, work_pw) = (
        secrets.add(&orch),
        secrets.add(&sub),
        secrets.add(&read),
        secrets.add(&work),
    );
    ok(&lineq(
        &db.url,
        &[
            "migrate",
            "--roles",
            "--role-prefix",
            &p,
            "--login-role",
            &format!("orchestrator={orch}"),
            "--login-role",
            &format!("submitter={sub}"),
            "--login-role",
            &format!("reader={read}"),
            "--login-role",
            &format!("worker={work}"),
            "--role-password-dir",
            secrets.dir(),
        ],
    ));
    let id = Uuid::now_v7();
    let sub_url = url_as(&db.url, &sub, &sub_pw);
    // The submitter: create, pause, resume, list, show and delete, by the CLI and by SQL.
    ok(&lineq(
        &sub_url,
        &[
            "schedule",
            "create",
            "by-sub",
            "--cron",
            "* * * * * *",
            "echo",
        ],
    ));
    ok(&lineq(&sub_url, &["schedule", "pause", "by-sub"]));
    ok(&lineq(&sub_url, &["schedule", "show", "by-sub"]));
    ok(&lineq(&sub_url, &["schedule", "list"]));
    let s = connect(&sub_url).await;
    allowed(
        &s,
        "SELECT lineq.schedule_create('sql-sub', '0 0 * * *', 'echo') WHERE $1::uuid IS NOT NULL",
        id,
    )
    .await;
    allowed(&s, "SELECT lineq.schedule_delete('sql-sub')", id).await;
    // ... but never fire one, nor write the table behind the functions' backs.
    denied(
        &s,
        "SELECT lineq._fire_schedule($1, now(), NULL, 0, NULL, 'x')",
        id,
    )
    .await;
    denied(&s, "SELECT * FROM lineq._schedules_due(1)", id).await;
    denied(&s, "UPDATE lineq.schedules SET next_fire_at = now()", id).await;
    s.close().await;

    // The reader lists, and changes nothing.
    let read_url = url_as(&db.url, &read, &read_pw);
    let listed: Value = serde_json::from_str(&ok(&lineq(
        &read_url,
        &["schedule", "list", "--format", "json"],
    )))
    .expect("json");
    assert_eq!(listed[0]["name"], "by-sub");
    let r = connect(&read_url).await;
    denied(
        &r,
        "SELECT lineq.schedule_create('x', '* * * * *', 'echo') WHERE $1::uuid IS NOT NULL",
        id,
    )
    .await;
    denied(&r, "SELECT lineq.schedule_pause('by-sub')", id).await;
    r.close().await;

    // The worker neither manages nor reads schedules.
    let w = connect(&url_as(&db.url, &work, &work_pw)).await;
    denied(
        &w,
        "SELECT lineq.schedule_create('x', '* * * * *', 'echo') WHERE $1::uuid IS NOT NULL",
        id,
    )
    .await;
    denied(&w, "SELECT * FROM lineq.schedule_list()", id).await;
    w.close().await;

    // The orchestrator role fires.
    ok(&lineq(&sub_url, &["schedule", "resume", "by-sub"]));
    let orchestrator = Proc::start(
        &url_as(&db.url, &orch, &orch_pw),
        "sched-roles-orch",
        &["orchestrator"],
    );
    eventually(
        Duration::from_secs(15),
        "a fire as the orchestrator role",
        || async { (fired_count(&db.pool, "by-sub").await >= 2).then_some(()) },
    )
    .await;
    drop(orchestrator);
    db.drop_db().await;
    drop_roles(&[
        orch,
        sub,
        read,
        work,
        format!("{p}_orchestrator"),
        format!("{p}_worker"),
        format!("{p}_submitter"),
        format!("{p}_reader"),
    ])
    .await;
}

/// `METHOD uri [body]` against the REST API in process: (status, JSON body).
async fn rest(app: &axum::Router, method: &str, uri: &str, body: Option<Value>) -> (u16, Value) {
    use tower::ServiceExt;
    let req = axum::http::Request::builder().method(method).uri(uri);
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(axum::body::Body::from(b.to_string())),
        None => req.body(axum::body::Body::empty()),
    }
    .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_rest_api_manages_schedules() {
    use serde_json::json;
    let db = TestDb::new().await;
    let app = lineq_api::rest::router(db.pool.clone());
    let (status, created) = rest(
        &app,
        "POST",
        "/v1/schedules",
        Some(
            json!({"name": "api-tick", "cron": "*/5 * * * * *", "target": "echo",
                    "input": {"n": 1}, "tags": {"team": "api"},
                    "missed": "catch-up", "catch_up_max": 2}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["missed"], "catch-up");
    assert_eq!(created["catch_up_max"], 2);
    assert_eq!(created["tags"], json!({"team": "api"}));

    // Bad input: 422 for what the document cannot state, 409 for a taken name, 400 for what
    // it does; nothing written.
    for (body, status, field) in [
        (
            json!({"name": "x", "cron": "nope", "target": "echo"}),
            422,
            "cron",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "timezone": "Nowhere/X", "target": "echo"}),
            422,
            "timezone",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "target": "wf@4"}),
            422,
            "target",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "target": "echo", "namespace": "nowhere"}),
            422,
            "namespace",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "target": "echo", "missed": "catch-up"}),
            422,
            "catch_up_max",
        ),
        (
            json!({"name": "api-tick", "cron": "* * * * *", "target": "echo"}),
            409,
            "name",
        ),
        (
            json!({"name": "a b", "cron": "* * * * *", "target": "echo"}),
            400,
            "name",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "target": "echo", "catch_up_max": 0}),
            400,
            "catch_up_max",
        ),
    ] {
        let (got, err) = rest(&app, "POST", "/v1/schedules", Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {err}");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }
    assert_eq!(db.count("lineq.schedules").await, 1);

    let (status, listed) = rest(&app, "GET", "/v1/schedules", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let (status, one) = rest(&app, "GET", "/v1/schedules/api-tick", None).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["name"], "api-tick");
    assert_eq!(one["upcoming"].as_array().map(Vec::len), Some(5));
    let (status, paused) = rest(&app, "POST", "/v1/schedules/api-tick/pause", None).await;
    assert_eq!((status, &paused["paused"]), (200, &json!(true)));
    let (_, one) = rest(
        &app,
        "GET",
        "/v1/schedules/api-tick?namespace=default",
        None,
    )
    .await;
    assert_eq!(one["upcoming"], json!([]));
    let (status, resumed) = rest(&app, "POST", "/v1/schedules/api-tick/resume", None).await;
    assert_eq!((status, &resumed["paused"]), (200, &json!(false)));
    let (status, _) = rest(&app, "GET", "/v1/schedules/api-tick?namespace=other", None).await;
    assert_eq!(status, 404);
    let (status, _) = rest(&app, "GET", "/v1/schedules/api-tick?nope=1", None).await;
    assert_eq!(status, 400);
    let (status, gone) = rest(&app, "DELETE", "/v1/schedules/api-tick", None).await;
    assert_eq!((status, &gone["name"]), (200, &json!("api-tick")));
    let (status, _) = rest(&app, "DELETE", "/v1/schedules/api-tick", None).await;
    assert_eq!(status, 404);
    db.drop_db().await;
}

/// The `lineq` commands of docs/schedules.md run as written, in order, against a fresh
/// database: every line of its ```` ```sh ```` blocks succeeds, and every `$ lineq …` of its
/// ```` ```console ```` blocks fails with exit code 2 and exactly the error shown under it.
#[tokio::test]
async fn the_examples_of_docs_schedules_md_run() {
    let db = TestDb::new().await;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schedules.md"))
        .expect("docs/schedules.md");
    let mut block: Option<&str> = None;
    let mut lines = doc.lines().peekable();
    let (mut ran, mut refused) = (0, 0);
    while let Some(line) = lines.next() {
        if let Some(kind) = line.strip_prefix("```") {
            block = if block.is_some() { None } else { Some(kind) };
            continue;
        }
        let args = |cmd: &str| -> Vec<String> {
            let cmd = cmd.split(" # ").next().unwrap_or(cmd).trim();
            let words = shell_words::split(cmd).expect("shell words");
            assert_eq!(words.first().map(String::as_str), Some("lineq"), "{cmd}");
            words[1..].to_vec()
        };
        match block {
            Some("sh") if line.starts_with("lineq ") => {
                let a = args(line);
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                ok(&lineq(&db.url, &a));
                ran += 1;
            }
            Some("console") if line.starts_with("$ lineq ") => {
                let a = args(&line[2..]);
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                let out = lineq(&db.url, &a);
                let expected = lines.next().expect("the error under the command");
                assert_eq!(out.status.code(), Some(2), "{line}: {}", stderr(&out));
                assert_eq!(stderr(&out).trim(), expected, "{line}");
                refused += 1;
            }
            _ => {}
        }
    }
    assert!(ran >= 9 && refused >= 5, "ran {ran}, refused {refused}");
    db.drop_db().await;
}

/// `lineq prune` removes a fired execution's fire record with its tree, and leaves the
/// schedule and the fires of executions it keeps.
#[tokio::test]
async fn prune_removes_the_fires_of_the_executions_it_removes() {
    let db = TestDb::new().await;
    ok(&lineq(
        &db.url,
        &[
            "schedule",
            "create",
            "tick",
            "--cron",
            "* * * * * *",
            "echo",
        ],
    ));
    let orchestrator = Proc::start(&db.url, "sched-prune-o", &["orchestrator"]);
    let worker = Proc::start(&db.url, "sched-prune-w", &["worker"]);
    eventually(Duration::from_secs(20), "three fires", || async {
        (fired_count(&db.pool, "tick").await >= 3).then_some(())
    })
    .await;
    ok(&lineq(&db.url, &["schedule", "pause", "tick"]));
    let fired: Vec<Uuid> = sqlx::query_scalar("SELECT execution_id FROM lineq.schedule_fires")
        .fetch_all(&db.pool)
        .await
        .expect("fired");
    wait_all_finished(&db.pool, &fired, Duration::from_secs(20)).await;
    drop(worker);
    drop(orchestrator);
    assert!(fired.len() >= 3, "{} fires", fired.len());
    // The newest fire's execution is kept (finished "now"); the others age past the cutoff.
    sqlx::query(
        "UPDATE lineq.executions SET created_at = created_at - interval '2 days',
                finished_at = finished_at - interval '2 days'
         WHERE execution_id <> (SELECT execution_id FROM lineq.schedule_fires
                                ORDER BY occurrence DESC LIMIT 1)",
    )
    .execute(&db.pool)
    .await
    .expect("age");
    let out = lineq(
        &db.url,
        &["prune", "--older-than", "1d", "--format", "json"],
    );
    assert!(out.status.success(), "prune: {}", stderr(&out));
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT execution_id FROM lineq.schedule_fires")
        .fetch_all(&db.pool)
        .await
        .expect("fires left");
    let kept: Vec<Uuid> = sqlx::query_scalar("SELECT execution_id FROM lineq.executions")
        .fetch_all(&db.pool)
        .await
        .expect("executions left");
    assert_eq!(left.len(), 1, "one fire left: {left:?}");
    assert_eq!(left, kept, "the fire left is the execution kept");
    assert_eq!(db.count("lineq.schedules").await, 1, "the schedule stays");
    db.drop_db().await;
}
