//! Configuration: the file, the environment and flags, in that order of precedence; unknown keys
//! refused with exit code 2; `lineq config show` masking secrets. Most of these run
//! `lineq config show` as a process with a clean environment and need no database.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use uuid::Uuid;

use lineq_testkit::*;

/// Writes `text` to a fresh temporary `.toml` file.
fn toml_file(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("lineq-config-{}.toml", Uuid::now_v7()));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs `lineq ARGS` with only the environment `env` (nothing inherited: no DATABASE_URL, no
/// RUST_LOG, no LINEQ_ variables from the machine).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(lineq_bin());
    cmd.args(args).env_clear().stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lineq")
}

/// `lineq [PRE...] config show --format json`, which must succeed, parsed.
fn show(pre: &[&str], env: &[(&str, &str)]) -> Value {
    let mut args = pre.to_vec();
    args.extend(["config", "show", "--format", "json"]);
    let out = run(&args, env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "lineq {args:?}\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("config show prints JSON")
}

/// Runs `lineq ARGS`, expecting exit code 2 and `needle` in stderr; returns stderr.
fn refused(args: &[&str], env: &[(&str, &str)], needle: &str) -> String {
    let out = run(args, env);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "lineq {args:?} should exit 2\nstdout: {}\nstderr: {err}",
        stdout(&out)
    );
    assert!(err.contains(needle), "stderr should name {needle:?}: {err}");
    err
}

#[test]
fn no_file_gives_the_defaults() {
    let c = show(&[], &[]);
    assert_eq!(c["database"]["url"], Value::Null);
    assert_eq!(c["worker"]["namespace"], "default");
    assert_eq!(c["worker"]["concurrency"], 10);
    assert_eq!(c["worker"]["batch_size"], 50);
    assert_eq!(c["worker"]["visibility_timeout_secs"], 30);
    assert_eq!(c["worker"]["heartbeat_secs"], 5);
    assert_eq!(c["orchestrator"]["batch_size"], 100);
    assert_eq!(c["orchestrator"]["silent_worker_secs"], 30);
    assert_eq!(c["api"]["addr"], "127.0.0.1:8080");
    assert_eq!(c["metrics"]["addr"], Value::Null);
    assert_eq!(c["log"]["format"], "text");
}

#[test]
fn file_then_environment_then_flag() {
    let file = toml_file(
        r#"
[database]
url = "postgres://file@localhost/file"
max_connections = 7

[worker]
concurrency = 3
batch_size = 4
commands = { resize = "python3 /opt/resize.py --fast" }

[log]
format = "json"

[telemetry]
otlp_endpoint = "http://file:4317"
"#,
    );
    let f = file.to_str().expect("utf-8 path");

    // The file alone.
    let c = show(&["--config", f], &[]);
    assert_eq!(c["database"]["url"], "postgres://file@localhost/file");
    assert_eq!(c["database"]["max_connections"], 7);
    assert_eq!(c["worker"]["concurrency"], 3);
    assert_eq!(
        c["worker"]["commands"]["resize"],
        "python3 /opt/resize.py --fast"
    );
    assert_eq!(c["log"]["format"], "json");
    assert_eq!(c["telemetry"]["otlp_endpoint"], "http://file:4317");

    // The environment over the file, key by key; the rest stays the file's.
    let env = [
        ("DATABASE_URL", "postgres://env@localhost/env"),
        ("LINEQ_WORKER_CONCURRENCY", "9"),
        ("LINEQ_LOG_FORMAT", "text"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
        ("LINEQ_METRICS_ADDR", "127.0.0.1:9101"),
    ];
    let c = show(&["--config", f], &env);
    assert_eq!(c["database"]["url"], "postgres://env@localhost/env");
    assert_eq!(c["worker"]["concurrency"], 9);
    assert_eq!(c["worker"]["batch_size"], 4);
    assert_eq!(c["log"]["format"], "text");
    assert_eq!(c["telemetry"]["otlp_endpoint"], "http://env:4317");
    assert_eq!(c["metrics"]["addr"], "127.0.0.1:9101");

    // LINEQ_DATABASE_URL beats the standard DATABASE_URL.
    let mut both = env.to_vec();
    both.push(("LINEQ_DATABASE_URL", "postgres://lineq@localhost/lineq"));
    let c = show(&["--config", f], &both);
    assert_eq!(c["database"]["url"], "postgres://lineq@localhost/lineq");

    // Flags over both, before or after the subcommand.
    let c = show(
        &[
            "--config",
            f,
            "--database-url",
            "postgres://flag@localhost/flag",
            "--log-format",
            "json",
            "--otlp-endpoint",
            "http://flag:4317",
        ],
        &env,
    );
    assert_eq!(c["database"]["url"], "postgres://flag@localhost/flag");
    assert_eq!(c["log"]["format"], "json");
    assert_eq!(c["telemetry"]["otlp_endpoint"], "http://flag:4317");
    let out = run(
        &[
            "config",
            "show",
            "--format",
            "json",
            "--config",
            f,
            "--database-url",
            "postgres://after@localhost/after",
        ],
        &env,
    );
    let c: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(c["database"]["url"], "postgres://after@localhost/after");
}

#[test]
fn the_file_can_come_from_lineq_config_and_the_flag_wins() {
    let a = toml_file("[worker]\nconcurrency = 11\n");
    let b = toml_file("[worker]\nconcurrency = 12\n");
    let a = a.to_str().expect("utf-8 path");
    let b = b.to_str().expect("utf-8 path");
    assert_eq!(
        show(&[], &[("LINEQ_CONFIG", a)])["worker"]["concurrency"],
        11
    );
    assert_eq!(
        show(&["--config", b], &[("LINEQ_CONFIG", a)])["worker"]["concurrency"],
        12
    );
}

#[test]
fn unknown_keys_and_bad_values_are_errors_naming_them() {
    let typo = toml_file("[worker]\nconcurency = 3\n");
    refused(
        &["--config", typo.to_str().unwrap(), "config", "show"],
        &[],
        "concurency",
    );
    let section = toml_file("[wrker]\nconcurrency = 3\n");
    refused(
        &["--config", section.to_str().unwrap(), "config", "show"],
        &[],
        "wrker",
    );
    let top = toml_file("database_url = \"postgres://x\"\n");
    refused(
        &["--config", top.to_str().unwrap(), "config", "show"],
        &[],
        "database_url",
    );
    let wrong_type = toml_file("[worker]\nconcurrency = \"many\"\n");
    refused(
        &["--config", wrong_type.to_str().unwrap(), "config", "show"],
        &[],
        "concurrency",
    );
    let bad_addr = toml_file("[metrics]\naddr = \"everywhere\"\n");
    refused(
        &["--config", bad_addr.to_str().unwrap(), "config", "show"],
        &[],
        "addr",
    );

    // The environment: a known section with an unknown key, and a value that does not fit.
    let err = refused(
        &["config", "show"],
        &[("LINEQ_WORKER_CONCURENCY", "3")],
        "LINEQ_WORKER_CONCURENCY",
    );
    assert!(err.contains("concurrency"), "lists the keys: {err}");
    refused(
        &["config", "show"],
        &[("LINEQ_ORCHESTRATOR_BATCH_SIZE", "lots")],
        "LINEQ_ORCHESTRATOR_BATCH_SIZE",
    );
    refused(
        &["config", "show"],
        &[("LINEQ_LOG_FORMAT", "xml")],
        "LINEQ_LOG_FORMAT",
    );
    refused(
        &["config", "show"],
        &[("LINEQ_LOG_LEVEL", "info,=[")],
        "log.level",
    );

    // LINEQ_ variables that are not configuration are left alone.
    let c = show(
        &[],
        &[
            ("LINEQ_NODE_NAME", "n1"),
            ("LINEQ_JAEGER_URL", "http://j"),
            ("LINEQ_STEP", "x"),
            ("LINEQ_LOG", "debug"),
        ],
    );
    assert_eq!(c["log"]["level"], "debug");

    // An explicit file that does not exist is an error, not the defaults.
    refused(
        &["--config", "/nonexistent/lineq.toml", "config", "show"],
        &[],
        "/nonexistent/lineq.toml",
    );
    refused(
        &["config", "show"],
        &[("LINEQ_CONFIG", "/nonexistent/from-env.toml")],
        "/nonexistent/from-env.toml",
    );
}

#[test]
fn show_masks_the_password_and_prints_loadable_toml() {
    let secret = "s3cr3t-Pa55";
    let file = toml_file(&format!(
        "[database]\nurl = \"postgres://lineq:{secret}@db.internal:5432/lineq?password={secret}\"\n[api]\ntoken_file = \"/etc/lineq/api-token\"\n"
    ));
    let f = file.to_str().unwrap();
    let c = show(&["--config", f], &[]);
    assert_eq!(
        c["database"]["url"],
        "postgres://lineq:****@db.internal:5432/lineq?password=****"
    );
    assert_eq!(c["api"]["token_file"], "/etc/lineq/api-token");

    let out = run(&["--config", f, "config", "show"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains(secret), "the password leaked:\n{text}");
    assert!(text.contains("lineq:****@db.internal"), "{text}");

    // What `show` prints is a config file that gives the same configuration back.
    let again = toml_file(&text);
    let c2 = show(&["--config", again.to_str().unwrap()], &[]);
    assert_eq!(c2, c);

    // The environment's URL is masked too, and so is the API token.
    let token = "tok-0123456789abcdef-secret";
    let env = [
        ("DATABASE_URL", format!("postgres://u:{secret}@h/db")),
        ("LINEQ_API_TOKEN", token.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = show(&[], &env);
    assert_eq!(c["database"]["url"], "postgres://u:****@h/db");
    assert_eq!(c["api"]["token"], "****");
    let out = run(&["config", "show"], &env);
    let text = stdout(&out);
    assert!(!text.contains(token) && !text.contains(secret), "{text}");
}

#[tokio::test]
async fn commands_use_the_effective_configuration() {
    let db = TestDb::new().await;
    // The database URL from the file reaches a real command...
    let file = toml_file(&format!("[database]\nurl = \"{}\"\n", db.url));
    let f = file.to_str().unwrap();
    let out = run(&["--config", f, "namespace", "list"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "default");
    // ...the environment beats it...
    let out = run(
        &["--config", f, "namespace", "list"],
        &[("DATABASE_URL", "not a url")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // ...and the flag beats both.
    let out = run(
        &[
            "--config",
            f,
            "namespace",
            "list",
            "--database-url",
            &db.url,
        ],
        &[("DATABASE_URL", "not a url")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // A worker takes its namespace from the file: an invalid one is refused before it starts.
    let bad = toml_file(&format!(
        "[database]\nurl = \"{}\"\n[worker]\nnamespace = \"Not-Valid\"\n",
        db.url
    ));
    let out = run(&["--config", bad.to_str().unwrap(), "worker"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("namespace"), "{}", stderr(&out));
    db.drop_db().await;
}
