//! The security audit's findings (issue #19), each attack performed against real processes and
//! a real database and shown refused, or the limit holding.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use lineq::shared::execution::{ExecutionStatus, get_execution};
use lineq::{Client, SubmitRequest};
use support::*;

fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lineq-{what}-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_handlers_see_none_of_the_workers_secrets() {
    let db = TestDb::new().await;
    let dir = temp_dir("env");
    let script = dir.join("env.py");
    std::fs::write(
        &script,
        "import json, os\nprint(json.dumps(dict(os.environ)))\n",
    )
    .expect("script");
    // The interpreter itself, not a version manager's shim that sets variables of its own.
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let python = String::from_utf8_lossy(&python.stdout).trim().to_string();
    let spec = format!("show_env={python} {}", script.display());
    let mut orchestrator = Proc::start(&db.url, "orchestrator", &["orchestrator"]);
    let mut worker = Proc::start_with(
        &db.url,
        "worker",
        &["worker", "--command", &spec, "--pass-env", "STEP_REGION"],
        |c| {
            c.env("LINEQ_DATABASE_URL", &db.url)
                .env("LINEQ_API_TOKEN", "api-token-secret-0123456789")
                .env("PGPASSWORD", "pg-password-secret")
                .env("SOME_OTHER_SECRET", "other-secret")
                .env("STEP_REGION", "eu-west-9")
                .env("LC_ALL", "C")
                .env("TRACESTATE", "worker=own");
        },
    );
    let client = Client::new(db.pool.clone());
    let id = client
        .submit(SubmitRequest::new("show_env").input(json!({})))
        .await
        .expect("submit")
        .execution
        .execution_id;
    wait_all_finished(&db.pool, &[id], Duration::from_secs(30)).await;
    let e = get_execution(&db.pool, id).await.expect("execution");
    assert_eq!(e.status, ExecutionStatus::Completed, "{:?}", e.error);
    let env = e.output.expect("output");
    let env = env.as_object().expect("an object");
    let text = Value::Object(env.clone()).to_string();
    for absent in [
        "DATABASE_URL",
        "LINEQ_DATABASE_URL",
        "LINEQ_API_TOKEN",
        "PGPASSWORD",
        "SOME_OTHER_SECRET",
        "TRACESTATE",
        "RUST_LOG",
    ] {
        assert!(!env.contains_key(absent), "{absent} was passed: {text}");
    }
    // The password of the worker's database URL appears nowhere, under any name.
    assert!(!text.contains("postgres://"), "{text}");
    for secret in ["api-token-secret", "pg-password-secret", "other-secret"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert_eq!(env["STEP_REGION"], "eu-west-9", "--pass-env passes it");
    assert_eq!(env["LC_ALL"], "C");
    assert!(env.contains_key("PATH"));
    assert_eq!(env["LINEQ_EXECUTION_ID"], json!(id.to_string()));
    assert_eq!(env["LINEQ_STEP"], "show_env");
    assert!(env.contains_key("TRACEPARENT"));
    let unexpected: Vec<&String> = env
        .keys()
        .filter(|k| {
            !matches!(
                k.as_str(),
                "PATH" | "HOME" | "LANG" | "TZ" | "TMPDIR" | "STEP_REGION" | "TRACEPARENT"
            ) && !k.starts_with("LC_")
                && !k.starts_with("LINEQ_")
        })
        .collect();
    // (python3 may set LC_CTYPE itself.)
    assert!(unexpected.is_empty(), "{unexpected:?}");

    // A name lineq keeps to itself cannot be passed, from a flag or from the file.
    let refused = lineq(
        &db.url,
        &[
            "worker",
            "--command",
            &spec,
            "--pass-env",
            "LINEQ_API_TOKEN",
        ],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("pass_env"),
        "{}",
        stderr(&refused)
    );
    let config = dir.join("lineq.toml");
    std::fs::write(&config, "[worker]\npass_env = [\"DATABASE_URL\"]\n").expect("config");
    let refused = lineq(
        &db.url,
        &["--config", &config.display().to_string(), "worker"],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));

    for p in [&mut worker, &mut orchestrator] {
        assert!(p.is_running(), "{} died: {}", p.name, p.log_text());
        assert!(p.terminate(Duration::from_secs(20)).success());
    }
    let _ = std::fs::remove_dir_all(dir);
    db.drop_db().await;
}
