//! The OpenAPI document is exact: schemathesis (`--checks all`), installed with pip into a
//! virtualenv under the target directory, runs against a real `lineq serve` on a real
//! PostgreSQL, once without a token (loopback) and once with one, and must find nothing.
//!
//! The one setting it is given (`schemathesis.toml` below) is the one docs/rest.md explains: a
//! request that follows the document may be answered 422 when it names something that does not
//! exist (a namespace, a parent execution, a workflow version) or contradicts itself; every such
//! 422 is listed in the document. The seed is fixed so that a run is repeatable; the number of
//! examples per operation bounds its time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lineq_testkit::{Proc, TestDb};

/// The schemathesis release the document is checked with.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// Examples per operation and phase.
const EXAMPLES: &str = "25";
const SEED: &str = "20261207";
const CONFIG: &str = r#"# Written by tests/openapi_conformance.rs; see docs/rest.md.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
"#;

fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The virtualenv with schemathesis, made once.
fn venv() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis-venv");
    let stamp = venv.join("installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(SCHEMATHESIS) {
        return venv;
    }
    if !venv.join("bin/python").exists() {
        run(
            "python3 -m venv (on Debian: apt-get install python3-venv)",
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
        );
    }
    run(
        &format!("pip install {SCHEMATHESIS}"),
        Command::new(venv.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            SCHEMATHESIS,
        ]),
    );
    std::fs::write(&stamp, SCHEMATHESIS).expect("stamp");
    venv
}

/// Starts `lineq serve` on a free loopback port; returns it with its base URL.
async fn serve(db: &TestDb, token: Option<&str>) -> (Proc, String) {
    let token = token.map(str::to_string);
    let server = Proc::start_with(
        &db.url,
        "openapi-serve",
        &["serve", "--addr", "127.0.0.1:0"],
        |c| {
            if let Some(t) = token {
                c.env("LINEQ_API_TOKEN", t);
            }
        },
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let base = loop {
        let log = server.log_text();
        if let Some(rest) = log.split("listening on ").nth(1) {
            break rest.lines().next().unwrap_or("").trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "lineq serve did not start: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (server, base)
}

/// Runs schemathesis against `base` and fails with its report on any finding.
fn schemathesis(venv: &Path, base: &str, token: Option<&str>) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "schemathesis-run-{}",
        if token.is_some() { "token" } else { "loopback" }
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("run dir");
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let mut cmd = Command::new(venv.join("bin/schemathesis"));
    cmd.arg("--config-file")
        .arg(&config)
        .args([
            "run",
            &format!("{base}/openapi.json"),
            "--checks",
            "all",
            "--max-examples",
            EXAMPLES,
            "--seed",
            SEED,
            // One worker: hypothesis's source inspection is not thread-safe on every Python.
            "--workers",
            "1",
            "--request-timeout",
            "30",
        ])
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.args(["--header", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.output().expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found mismatches ({}, {}):\n{report}\n{}",
        if token.is_some() {
            "with a token"
        } else {
            "on loopback without a token"
        },
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // A run that tested nothing would also succeed.
    assert!(
        report.contains("Tested: 22"),
        "not every operation was tested:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_and_without_a_token() {
    let venv = venv();
    let db = TestDb::new().await;
    let (server, base) = serve(&db, None).await;
    schemathesis(&venv, &base, None);
    drop(server);
    let token = "conformance-token-0123456789";
    let (server, base) = serve(&db, Some(token)).await;
    schemathesis(&venv, &base, Some(token));
    drop(server);
    db.drop_db().await;
}
