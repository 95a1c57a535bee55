//! The `lineq` command as a user runs it: migrate, submit, get, events, demo, and what bad input
//! does (a clear error, exit code 2, nothing written).
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use lineq::{Client, SubmitRequest};
use lineq_testkit::*;

#[tokio::test]
async fn bad_input_is_refused_and_writes_nothing() {
    let db = TestDb::new().await;
    let big = std::env::temp_dir().join(format!("lineq-big-{}.json", Uuid::now_v7()));
    std::fs::write(&big, json!({ "blob": "x".repeat(1024 * 1024) }).to_string()).expect("write");
    let big_arg = format!("@{}", big.display());
    let long_ns = "n".repeat(33);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["submit", "echo", "--input", "{not json"],
            "invalid input: not valid JSON",
        ),
        (
            vec!["submit", "echo", "--input", "@/nonexistent/file.json"],
            "invalid input: cannot read",
        ),
        (
            vec!["submit", "echo", "--input", &big_arg],
            "the limit is 1048576 bytes",
        ),
        (
            vec!["submit", "echo", "--namespace", "nowhere"],
            "unknown namespace 'nowhere'",
        ),
        (
            vec![
                "submit",
                "echo",
                "--namespace",
                "x; DROP TABLE lineq.executions",
            ],
            "invalid namespace",
        ),
        (
            vec!["submit", "echo", "--namespace", "../../etc"],
            "invalid namespace",
        ),
        (
            vec!["submit", "echo", "--namespace", "Payments"],
            "invalid namespace",
        ),
        (
            vec!["submit", "echo", "--namespace", &long_ns],
            "1 to 32 characters",
        ),
        (vec!["submit", "rm -rf /"], "invalid handler"),
        (
            vec!["submit", "echo", "--correlation-id", "not-a-uuid"],
            "invalid correlation_id",
        ),
        (
            vec!["submit", "echo", "--idempotency-key", ""],
            "invalid idempotency_key",
        ),
        (
            vec!["submit", "echo", "--timeout-ms", "0"],
            "invalid timeout_ms",
        ),
        (vec!["namespace", "create", "bad-name"], "invalid namespace"),
        (vec!["get", "123"], "invalid execution_id"),
        (
            vec!["worker", "--command", "no_equals_sign"],
            "invalid command",
        ),
    ];
    for (args, needle) in cases {
        let out = lineq(&db.url, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: stderr {:?} lacks {needle:?}",
            stderr(&out)
        );
        assert_eq!(db.written().await, (0, 0, 0, 0), "{args:?} wrote something");
    }
    // The unsafe namespace did not become a table either.
    assert_eq!(db.count("pgmq.meta").await, 3, "no queue was created");
    assert_eq!(
        db.count("pg_tables WHERE schemaname = 'pgmq' AND tablename LIKE 'q\\_%'")
            .await,
        3
    );
    let _ = std::fs::remove_file(big);

    let missing = lineq(&db.url, &["get", &Uuid::now_v7().to_string()]);
    assert_eq!(missing.status.code(), Some(3), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("not found"));
    db.drop_db().await;
}

#[tokio::test]
async fn missing_database_url_is_a_clear_error() {
    let out = std::process::Command::new(lineq_bin())
        .args(["get", &Uuid::now_v7().to_string()])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("DATABASE_URL is not set"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn idempotent_submit_returns_the_first_execution() {
    let db = TestDb::new().await;
    // CLI: the same key twice.
    let a = lineq(
        &db.url,
        &[
            "submit",
            "echo",
            "--idempotency-key",
            "order-7",
            "--input",
            "1",
        ],
    );
    let b = lineq(
        &db.url,
        &[
            "submit",
            "echo",
            "--idempotency-key",
            "order-7",
            "--input",
            "2",
        ],
    );
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        stderr(&a),
        stderr(&b)
    );
    assert_eq!(
        stdout(&a),
        stdout(&b),
        "the second submit returns the first id"
    );
    assert!(stderr(&b).contains("already used"));
    assert_eq!(
        db.written().await,
        (1, 1, 3, 1),
        "one execution, step, 3 events, 1 message"
    );

    // Library: many at once with one key, exactly one execution.
    let client = Client::new(db.pool.clone());
    let mut handles = Vec::new();
    for i in 0..8 {
        let c = client.clone();
        handles.push(tokio::spawn(async move {
            c.submit(
                SubmitRequest::new("echo")
                    .input(json!(i))
                    .idempotency_key("race"),
            )
            .await
            .expect("submit")
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for h in handles {
        let s = h.await.expect("join");
        ids.insert(s.execution.execution_id);
        created += usize::from(s.created);
    }
    assert_eq!(ids.len(), 1, "all concurrent submits see one execution");
    assert_eq!(created, 1);
    assert_eq!(db.written().await, (2, 2, 6, 2));
    db.drop_db().await;
}

#[tokio::test]
async fn submit_prints_the_row_as_json_and_keeps_correlation_ids() {
    let db = TestDb::new().await;
    let given = Uuid::new_v4();
    let out = lineq(
        &db.url,
        &[
            "submit",
            "echo",
            "--format",
            "json",
            "--correlation-id",
            &given.to_string(),
            "--input",
            r#"{"a":[1,2]}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let row: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(row["correlation_id"], json!(given));
    assert_eq!(row["status"], "pending");
    assert_eq!(row["input"], json!({"a": [1, 2]}));
    assert_eq!(row["root_execution_id"], row["execution_id"]);

    let out = lineq(&db.url, &["submit", "echo", "--format", "json"]);
    let row: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let generated = Uuid::parse_str(row["correlation_id"].as_str().expect("str")).expect("uuid");
    assert_eq!(generated.get_version_num(), 7);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_events_show_the_lineage() {
    let db = TestDb::new().await;
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start(
        &db.url,
        "worker",
        &[
            "worker",
            "--worker-id",
            "w-get",
            "--command",
            r#"noisy=sh -c 'echo "careful: disk almost full" >&2; echo 7'"#,
        ],
    );
    let out = lineq(
        &db.url,
        &["submit", "echo", "--input", r#"{"k":"v"}"#, "--wait"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out)
        .split_whitespace()
        .next()
        .expect("id")
        .to_string();
    // --wait shows the status and the output.
    assert_eq!(
        stdout(&out),
        format!("{id} completed\noutput {{\"k\":\"v\"}}\n")
    );

    // A failure says why, on stdout and in the error.
    let failed = lineq(
        &db.url,
        &[
            "submit",
            "fail",
            "--input",
            r#"{"message":"card declined"}"#,
            "--wait",
        ],
    );
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        stdout(&failed).contains(" failed\nerror  ") && stdout(&failed).contains("card declined"),
        "{}",
        stdout(&failed)
    );
    assert!(
        stderr(&failed).contains("failed: ") && stderr(&failed).contains("card declined"),
        "{}",
        stderr(&failed)
    );

    // A command that succeeds keeps what it wrote on stderr: in the worker's log, with the
    // step's ids.
    let noisy = lineq(&db.url, &["submit", "noisy", "--wait", "--format", "json"]);
    assert!(noisy.status.success(), "{}", stderr(&noisy));
    let row: Value = serde_json::from_str(&stdout(&noisy)).expect("json");
    assert_eq!(row["output"], 7);
    let noisy_id = row["execution_id"].as_str().expect("id").to_string();
    let log = worker.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("careful: disk almost full"))
        .unwrap_or_else(|| panic!("the command's stderr is not in the worker's log:\n{log}"));
    assert!(line.contains(&noisy_id), "{line}");
    assert!(line.contains("step_id="), "{line}");

    let get = lineq(&db.url, &["get", &id]);
    assert!(get.status.success());
    let text = stdout(&get);
    assert!(
        text.contains("status      completed") && text.contains(r#"output      {"k":"v"}"#),
        "{text}"
    );

    let get_json: Value =
        serde_json::from_str(&stdout(&lineq(&db.url, &["get", &id, "--format", "json"])))
            .expect("json");
    assert_eq!(get_json["steps"][0]["status"], "completed");
    assert_eq!(get_json["steps"][0]["worker_id"], "w-get");

    let events: Value = serde_json::from_str(&stdout(&lineq(
        &db.url,
        &["events", &id, "--format", "json"],
    )))
    .expect("json");
    let types: Vec<&str> = events
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["event_type"].as_str().expect("type"))
        .collect();
    assert_eq!(types[0], "execution_started");
    assert_eq!(*types.last().expect("last"), "execution_completed");
    assert_eq!(types.len(), 8);

    let tree = stdout(&lineq(&db.url, &["events", &id, "--tree"]));
    let lines: Vec<&str> = tree.lines().collect();
    assert!(lines[0].starts_with("execution_started"), "{tree}");
    assert!(tree.contains("└─ execution_completed"), "{tree}");
    assert!(tree.contains("worker=w-get"), "{tree}");
    let list = stdout(&lineq(&db.url, &["events", &id]));
    assert_eq!(list.lines().count(), 9, "header + 8 events:\n{list}");

    for p in [&mut worker, &mut orchestrator] {
        assert!(p.terminate(Duration::from_secs(20)).success());
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrate_is_safe_and_idempotent() {
    let db = TestDb::empty().await;
    // Four processes at once on a database that has nothing yet.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            std::thread::spawn(move || lineq(&url, &["migrate", "--format", "json"]))
        })
        .collect();
    let mut applied: Vec<i64> = Vec::new();
    let mut total = 0;
    for h in handles {
        let out = h.join().expect("thread");
        assert!(out.status.success(), "{}", stderr(&out));
        let r: Value = serde_json::from_str(&stdout(&out)).expect("json report");
        let versions = r["applied"].as_array().expect("applied");
        applied.extend(versions.iter().map(|v| v.as_i64().expect("version")));
        total = r["total"].as_i64().expect("total");
        assert!(r["pgmq_version"].is_string());
    }
    let mut unique = applied.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        applied.len(),
        "a migration was applied twice: {applied:?}"
    );
    assert_eq!(
        applied.len() as i64,
        total,
        "every migration applied by exactly one process"
    );
    assert_eq!(db.count("lineq._sqlx_migrations").await, total);
    assert_eq!(
        db.count(
            "pgmq.meta WHERE queue_name IN ('lineq_results','lineq_dlq','lineq_steps_default')"
        )
        .await,
        3
    );
    let again = lineq(&db.url, &["migrate"]);
    assert!(
        stdout(&again).contains("0 lineq migration(s) applied now"),
        "{}",
        stdout(&again)
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_end_to_end() {
    let db = TestDb::empty().await;
    let out = lineq(&db.url, &["demo"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.matches("== ").count(), 3, "{text}");
    assert!(text.contains("(echo) → completed"));
    assert!(text.contains("(fail) → failed"));
    assert!(text.contains("(greet) → completed"));
    assert!(text.contains("hello from a shell step"));
    assert_eq!(text.matches("execution_started").count(), 3);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_its_own_postgres_when_none_is_configured() {
    let out = std::process::Command::new(lineq_bin())
        .args(["demo", "--format", "json"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run demo");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("throwaway PostgreSQL"));
    // Every connection is closed before the cluster stops: no warning about a connection the
    // server terminated.
    assert!(
        !stderr(&out).contains("terminating connection"),
        "{}",
        stderr(&out)
    );
    let report: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let statuses: Vec<&str> = report
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["execution"]["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["completed", "failed", "completed"]);
}

#[tokio::test]
async fn database_errors_say_what_failed_once() {
    // Nothing listens on port 1: refused at once, and said so (not "pool timed out").
    let out = lineq("postgres://nobody:secret@127.0.0.1:1/lineq", &["list"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot connect to PostgreSQL at 127.0.0.1:1")
            && err.to_lowercase().contains("connection refused"),
        "{err}"
    );
    assert!(
        !err.contains("timed out") && !err.contains("secret"),
        "{err}"
    );

    // The server's reason, once.
    let db = TestDb::empty().await;
    let missing = db.url.replace(&db.name, "lineq_no_such_database");
    let out = lineq(&missing, &["list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(
        err.matches("\"lineq_no_such_database\" does not exist")
            .count(),
        1,
        "{err}"
    );

    // A database without lineq's schema: every command that needs it says what to do.
    for args in [
        vec!["list"],
        vec!["submit", "echo"],
        vec!["get", "01a2504e-f487-7001-9fc8-8ba569374709"],
        vec!["workflow", "list"],
    ] {
        let out = lineq(&db.url, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("not migrated: run `lineq migrate` first") && !err.contains("relation"),
            "{args:?}: {err}"
        );
    }
    db.drop_db().await;
}

#[tokio::test]
async fn output_for_scripts() {
    let db = TestDb::new().await;
    // --format json: errors are JSON on stderr, with the same exit codes.
    let out = lineq(
        &db.url,
        &["submit", "echo", "--input", "{bad", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(2));
    let e: Value = serde_json::from_str(stderr(&out).trim()).expect("a JSON error");
    assert_eq!(e["error"]["code"], "invalid_input");
    assert_eq!(e["error"]["field"], "input");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not valid JSON")),
        "{e}"
    );
    let out = lineq(
        &db.url,
        &["get", &Uuid::now_v7().to_string(), "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(3));
    let e: Value = serde_json::from_str(stderr(&out).trim()).expect("a JSON error");
    assert_eq!(e["error"]["code"], "not_found");

    // A reader that goes away (`lineq list | head`) is not a crash.
    for _ in 0..3 {
        assert!(lineq(&db.url, &["submit", "echo"]).status.success());
    }
    let mut child = std::process::Command::new(lineq_bin())
        .args(["list"])
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));

    // Logs to a file or a pipe carry no colour codes.
    let out = lineq(
        &db.url,
        &[
            "-v",
            "submit",
            "echo",
            "--otlp-endpoint",
            "http://127.0.0.1:1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("exporting spans over OTLP"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
    db.drop_db().await;
}

#[tokio::test]
async fn a_span_export_that_fails_says_so() {
    let db = TestDb::new().await;
    let out = lineq(&db.url, &["submit", "echo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    // Cancelling ends the execution and its step: their spans are exported, and nothing listens
    // on port 1.
    let out = lineq(
        &db.url,
        &["cancel", &id, "--otlp-endpoint", "http://127.0.0.1:1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("WARN") && err.contains("exporting spans to http://127.0.0.1:1 failed"),
        "{err}"
    );
    // Said once, by lineq, not again per batch by the SDK.
    assert!(!err.contains("BatchSpanProcessor.ExportError"), "{err}");
    db.drop_db().await;
}

#[tokio::test]
async fn submit_wait_says_when_no_live_worker_serves_the_namespace() {
    let db = TestDb::new().await;
    let out = lineq(
        &db.url,
        &["submit", "echo", "--wait", "--wait-timeout-secs", "3"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("still pending after 3 s: no live worker serves namespace 'default'"),
        "{err}"
    );
    // Said while waiting too, not only at the end.
    assert!(
        err.contains("note: no live worker serves namespace"),
        "{err}"
    );
    db.drop_db().await;
}

#[test]
fn help_lists_every_exit_code() {
    let out = std::process::Command::new(lineq_bin())
        .arg("--help")
        .output()
        .expect("run");
    let help = stdout(&out);
    for code in [
        "0 success",
        "1 failure",
        "2 invalid input",
        "3 not found",
        "4 conflict",
    ] {
        assert!(help.contains(code), "--help lacks {code:?}:\n{help}");
    }
}

#[tokio::test]
async fn list_pages_newest_first() {
    let db = TestDb::new().await;
    let mut submitted = Vec::new();
    for i in 0..3 {
        let out = lineq(&db.url, &["submit", "echo", "--input", &i.to_string()]);
        assert!(out.status.success(), "{}", stderr(&out));
        submitted.push(stdout(&out).trim().to_string());
    }
    let ids = |out: &std::process::Output| -> (Vec<String>, Option<String>) {
        assert!(out.status.success(), "{}", stderr(out));
        let page: Value = serde_json::from_str(&stdout(out)).expect("json");
        let ids = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|e| e["execution_id"].as_str().expect("id").to_string())
            .collect();
        (ids, page["next_cursor"].as_str().map(str::to_string))
    };
    let (oldest_first, _) = ids(&lineq(&db.url, &["list", "--format", "json"]));
    assert_eq!(oldest_first, submitted);
    let (first, cursor) = ids(&lineq(
        &db.url,
        &["list", "--newest-first", "--limit", "2", "--format", "json"],
    ));
    assert_eq!(first, [submitted[2].clone(), submitted[1].clone()]);
    let cursor = cursor.expect("a next page");
    let (rest, more) = ids(&lineq(
        &db.url,
        &[
            "list",
            "--newest-first",
            "--limit",
            "2",
            "--cursor",
            &cursor,
            "--format",
            "json",
        ],
    ));
    assert_eq!(rest, [submitted[0].clone()]);
    assert_eq!(more, None);
    db.drop_db().await;
}
