//! The workflow registry through `lineq workflow register|list|show`, against a real
//! PostgreSQL: versioning, immutability, what bad definitions do (exit 2, nothing written),
//! unknown workflows (exit 3) and concurrent registration.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;
use uuid::Uuid;

use lineq_orchestrator::workflow::{OnFailure, WorkflowDefinition, store};
use lineq_testkit::*;

const DIAMOND: &str = r#"
name: diamond
description: a fans out to b and c, which join in d
steps:
  - name: a
    handler: echo
  - name: b
    handler: echo
    depends_on: [a]
    retry: { max_attempts: 3, backoff_ms: 10 }
  - name: c
    handler: sleep
    namespace: media
    depends_on: [a]
    on_failure: continue
    params: { ms: 5 }
  - name: d
    handler: echo
    depends_on: [b, c]
    timeout_ms: 500
"#;

/// Writes `yaml` to a fresh temporary file.
fn yaml_file(yaml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("lineq-wf-{}.yaml", Uuid::now_v7()));
    std::fs::write(&path, yaml).expect("write yaml");
    path
}

/// A one-step workflow `name` whose step runs `handler`.
fn one_step(name: &str, handler: &str) -> String {
    format!("name: {name}\nsteps:\n  - name: only\n    handler: {handler}\n")
}

/// Runs `lineq ARGS`, asserting exit code `code`, and returns stdout.
fn run_ok(url: &str, args: &[&str], code: i32) -> String {
    let out = lineq(url, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "lineq {args:?}\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

#[tokio::test]
async fn register_list_and_show_a_diamond() {
    let db = TestDb::new().await;
    let file = yaml_file(DIAMOND);
    let path = file.to_str().expect("utf-8 path");

    // Step c runs in namespace media, which has no step queue yet: refused, naming both, and
    // nothing registered.
    let out = lineq(&db.url, &["workflow", "register", path]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            r#"step "c" of workflow "diamond" runs in namespace 'media', which has no step queue"#
        ) && err.contains("lineq namespace create media"),
        "{err}"
    );
    assert_eq!(db.count("lineq.workflows").await, 0);
    // --create-namespaces creates it (as `lineq namespace create` would).
    let out = run_ok(
        &db.url,
        &["workflow", "register", "--create-namespaces", path],
        0,
    );
    assert_eq!(out.trim(), "registered diamond v1");
    assert!(run_ok(&db.url, &["namespace", "list"], 0).contains("media"));

    // list: text table and JSON
    let out = run_ok(&db.url, &["workflow", "list"], 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "LATEST", "VERSIONS", "STEPS", "UPDATED"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..4], ["diamond", "v1", "1", "4"], "{out}");
    let list: Value = serde_json::from_str(&run_ok(
        &db.url,
        &["workflow", "list", "--format", "json"],
        0,
    ))
    .expect("json");
    assert_eq!(list[0]["name"], "diamond");
    assert_eq!(list[0]["latest_version"], 1);
    assert_eq!(list[0]["versions"], 1);
    assert_eq!(list[0]["steps"], 4);
    assert!(list[0]["updated_at"].is_string());

    // show: every step with handler, namespace, dependencies, retry, timeout, on_failure
    let out = run_ok(&db.url, &["workflow", "show", "diamond"], 0);
    for needle in [
        "workflow    diamond",
        "version     v1",
        "description a fans out to b and c, which join in d",
        "handler     sleep",
        "namespace   media",
        "depends_on  b, c",
        "retry       3 attempts, backoff 10 ms",
        "timeout     500 ms",
        "on_failure  continue",
        "params      {\"ms\":5}",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }

    // A second version, then show of the latest and of @1.
    let v2 = yaml_file(&DIAMOND.replace("timeout_ms: 500", "timeout_ms: 900"));
    let out = run_ok(
        &db.url,
        &["workflow", "register", v2.to_str().expect("utf-8 path")],
        0,
    );
    assert_eq!(out.trim(), "registered diamond v2");
    let latest = run_ok(&db.url, &["workflow", "show", "diamond"], 0);
    assert!(
        latest.contains("version     v2") && latest.contains("timeout     900 ms"),
        "{latest}"
    );
    assert!(latest.contains("registered: v1, v2"), "{latest}");
    let first = run_ok(&db.url, &["workflow", "show", "diamond@1"], 0);
    assert!(
        first.contains("version     v1") && first.contains("timeout     500 ms"),
        "{first}"
    );

    // JSON is the StoredWorkflow; --yaml round-trips through from_yaml.
    let json: Value = serde_json::from_str(&run_ok(
        &db.url,
        &["workflow", "show", "diamond@1", "--format", "json"],
        0,
    ))
    .expect("json");
    assert_eq!(json["name"], "diamond");
    assert_eq!(json["version"], 1);
    assert_eq!(json["definition"]["version"], 1);
    assert_eq!(
        json["definition"]["steps"][3]["depends_on"],
        serde_json::json!(["b", "c"])
    );
    assert!(json["created_at"].is_string());

    let yaml = run_ok(&db.url, &["workflow", "show", "diamond@1", "--yaml"], 0);
    let back = WorkflowDefinition::from_yaml(&yaml).expect("--yaml output parses");
    let mut original = WorkflowDefinition::from_yaml(DIAMOND).expect("diamond");
    original.version = Some(1);
    assert_eq!(back, original);
    assert_eq!(back.steps[2].on_failure, OnFailure::Continue);
    // ...and registering it again changes nothing.
    let again = yaml_file(&yaml);
    let out = run_ok(
        &db.url,
        &["workflow", "register", again.to_str().expect("utf-8 path")],
        0,
    );
    assert_eq!(out.trim(), "diamond v1 already registered (unchanged)");

    // The engine's entry point works inside a transaction too.
    let mut tx = db.pool.begin().await.expect("begin");
    let got = store::get(&mut *tx, "diamond", None)
        .await
        .expect("get")
        .expect("registered");
    assert_eq!(got.version, 2);
    assert_eq!(got.definition.version, Some(2));
    assert!(
        store::get(&mut *tx, "echo", None)
            .await
            .expect("get")
            .is_none()
    );
    tx.rollback().await.expect("rollback");

    for f in [file, v2, again] {
        let _ = std::fs::remove_file(f);
    }
    db.drop_db().await;
}

#[tokio::test]
async fn versions_are_assigned_and_immutable() {
    let db = TestDb::new().await;
    let first = yaml_file(&one_step("order", "echo"));
    let second = yaml_file(&one_step("order", "sleep"));
    let (first_p, second_p) = (
        first.to_str().expect("utf-8 path"),
        second.to_str().expect("utf-8 path"),
    );

    assert_eq!(
        run_ok(&db.url, &["workflow", "register", first_p], 0).trim(),
        "registered order v1"
    );
    assert_eq!(
        run_ok(&db.url, &["workflow", "register", second_p], 0).trim(),
        "registered order v2"
    );
    // The same content as the latest: nothing written.
    assert_eq!(
        run_ok(&db.url, &["workflow", "register", second_p], 0).trim(),
        "order v2 already registered (unchanged)"
    );
    // Several files in one call (stdin among them), JSON output.
    let mut child = Command::new(lineq_bin())
        .args(["workflow", "register", "--format", "json", second_p, "-"])
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lineq");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(one_step("order", "fail").as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("lineq");
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(
        json,
        serde_json::json!([
            {"name": "order", "version": 2, "created": false},
            {"name": "order", "version": 3, "created": true},
        ])
    );
    assert_eq!(db.count("lineq.workflows WHERE name = 'order'").await, 3);

    // An explicit version that exists: identical → unchanged; different → refused, exit 2.
    let v1_again = yaml_file(&format!("version: 1\n{}", one_step("order", "echo")));
    assert_eq!(
        run_ok(
            &db.url,
            &[
                "workflow",
                "register",
                v1_again.to_str().expect("utf-8 path")
            ],
            0
        )
        .trim(),
        "order v1 already registered (unchanged)"
    );
    let v1_changed = yaml_file(&format!("version: 1\n{}", one_step("order", "sleep")));
    let out = lineq(
        &db.url,
        &[
            "workflow",
            "register",
            v1_changed.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            r#"workflow "order" version 1 is already registered with a different definition"#
        ) && err.contains("registered versions are immutable; register it as version 4"),
        "{err}"
    );
    // Documented in --help (wrapped to the terminal width, so compare words).
    let help = stdout(&lineq(&db.url, &["workflow", "register", "--help"]))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains("with a different one it is refused with exit code 2"),
        "{help}"
    );
    // An explicit new version is taken as given; the next automatic one follows it.
    let v7 = yaml_file(&format!("version: 7\n{}", one_step("order", "sleep")));
    assert_eq!(
        run_ok(
            &db.url,
            &["workflow", "register", v7.to_str().expect("utf-8 path")],
            0
        )
        .trim(),
        "registered order v7"
    );
    assert_eq!(
        run_ok(&db.url, &["workflow", "register", first_p], 0).trim(),
        "registered order v8"
    );
    let versions: Vec<i32> = store::versions(&db.pool, "order")
        .await
        .expect("versions")
        .iter()
        .map(|w| w.version)
        .collect();
    assert_eq!(versions, [1, 2, 3, 7, 8]);
    // Nothing was changed by the refused registration.
    let v1 = store::get(&db.pool, "order", Some(1))
        .await
        .expect("get")
        .expect("v1");
    assert_eq!(v1.definition.steps[0].handler, "echo");

    for f in [first, second, v1_again, v1_changed, v7] {
        let _ = std::fs::remove_file(f);
    }
    db.drop_db().await;
}

#[tokio::test]
async fn bad_definitions_are_refused_and_write_nothing() {
    let db = TestDb::new().await;
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "cycle",
            "name: w\nsteps:\n  - { name: a, handler: echo, depends_on: [c] }\n  - { name: b, handler: echo, depends_on: [a] }\n  - { name: c, handler: echo, depends_on: [b] }\n".into(),
            vec!["cycle", "a → c → b → a"],
        ),
        (
            "unknown dependency",
            "name: w\nsteps:\n  - { name: a, handler: echo, depends_on: [zz] }\n".into(),
            vec![r#"step "a" depends on unknown step "zz""#],
        ),
        (
            "duplicate step name",
            "name: w\nsteps:\n  - { name: a, handler: echo }\n  - { name: a, handler: sleep }\n".into(),
            vec![r#"step "a": the name is used by more than one step"#],
        ),
        (
            "empty handler",
            "name: w\nsteps:\n  - { name: a, handler: \"\" }\n".into(),
            vec![r#"step "a": the handler is empty"#],
        ),
        (
            "unknown YAML field",
            "name: w\nsteps:\n  - { name: a, handler: echo }\n  - { name: b, handler: echo, retries: 3 }\n".into(),
            vec![r#"step "b""#, "unknown field `retries`"],
        ),
        (
            "invalid namespace",
            "name: w\nsteps:\n  - { name: a, handler: echo, namespace: Bad-NS }\n".into(),
            vec![r#"step "a""#, "a namespace is 1 to 32 characters"],
        ),
        (
            "not YAML at all",
            "name: [unclosed\n".into(),
            vec!["not a valid workflow"],
        ),
    ];
    for (what, yaml, needles) in &cases {
        let file = yaml_file(yaml);
        let path = file.to_str().expect("utf-8 path");
        let out = lineq(&db.url, &["workflow", "register", path]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(
            err.contains(path),
            "{what}: the error names the file: {err}"
        );
        for needle in needles {
            assert!(
                err.contains(needle),
                "{what}: {needle:?} missing from {err}"
            );
        }
        assert!(stdout(&out).is_empty(), "{what}: {}", stdout(&out));
        let _ = std::fs::remove_file(file);
    }
    // One bad file among good ones: nothing at all is registered.
    let good = yaml_file(&one_step("good", "echo"));
    let bad = yaml_file("name: w\nsteps: []\n");
    let out = lineq(
        &db.url,
        &[
            "workflow",
            "register",
            good.to_str().expect("utf-8 path"),
            bad.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("at least one step"),
        "{}",
        stderr(&out)
    );
    let missing = lineq(&db.url, &["workflow", "register", "/nonexistent/wf.yaml"]);
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("cannot read /nonexistent/wf.yaml"));

    assert_eq!(db.count("lineq.workflows").await, 0);
    for f in [good, bad] {
        let _ = std::fs::remove_file(f);
    }
    db.drop_db().await;
}

#[tokio::test]
async fn unknown_workflows_are_not_found() {
    let db = TestDb::new().await;
    let out = lineq(&db.url, &["workflow", "show", "nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("workflow nope not found"),
        "{}",
        stderr(&out)
    );

    let file = yaml_file(&one_step("known", "echo"));
    run_ok(
        &db.url,
        &["workflow", "register", file.to_str().expect("utf-8 path")],
        0,
    );
    let out = lineq(&db.url, &["workflow", "show", "known@2"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("workflow known@2 not found"),
        "{}",
        stderr(&out)
    );
    for bad in ["known@0", "known@two", "known@", "bad name"] {
        let out = lineq(&db.url, &["workflow", "show", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("invalid workflow"),
            "{}",
            stderr(&out)
        );
    }
    // An empty registry lists as just the header (JSON: an empty array).
    let empty = TestDb::new().await;
    assert_eq!(
        run_ok(&empty.url, &["workflow", "list", "--format", "json"], 0).trim(),
        "[]"
    );
    let _ = std::fs::remove_file(file);
    empty.drop_db().await;
    db.drop_db().await;
}

#[tokio::test]
async fn concurrent_registrations_get_consecutive_versions() {
    let db = TestDb::new().await;
    let files: Vec<PathBuf> = (0..6)
        .map(|i| {
            yaml_file(&format!(
                "name: race\nsteps:\n  - name: only\n    handler: echo\n    timeout_ms: {}\n",
                1000 + i
            ))
        })
        .collect();
    let threads: Vec<_> = files
        .iter()
        .map(|f| {
            let (url, path) = (db.url.clone(), f.to_str().expect("utf-8 path").to_string());
            std::thread::spawn(move || lineq(&url, &["workflow", "register", &path]))
        })
        .collect();
    let mut versions = Vec::new();
    for t in threads {
        let out = t.join().expect("thread");
        assert!(out.status.success(), "{}", stderr(&out));
        let line = stdout(&out);
        let v: i32 = line
            .trim()
            .strip_prefix("registered race v")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output {line:?}"));
        versions.push(v);
    }
    versions.sort();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    // Each version holds a different one of the six definitions.
    let stored = store::versions(&db.pool, "race").await.expect("versions");
    let mut timeouts: Vec<u64> = stored
        .iter()
        .map(|w| w.definition.steps[0].timeout_ms.expect("timeout"))
        .collect();
    timeouts.sort();
    assert_eq!(timeouts, (1000..1006).collect::<Vec<u64>>());
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    db.drop_db().await;
}
