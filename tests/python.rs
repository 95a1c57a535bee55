//! The Python client and worker (`clients/python`): installed with pip into a virtualenv under
//! the target directory, checked with ruff (lint and format) and mypy, and its pytest suite run
//! against a real PostgreSQL with the `lineq` binary of this build (orchestrators, Rust workers,
//! the CLI) next to real Python worker processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use lineq_testkit::admin_url;

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

/// A hash of everything pip installs from `clients/python`: when it is unchanged, the
/// virtualenv is up to date and is reused.
fn source_stamp(dir: &Path) -> String {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "__pycache__" || name == "build" {
                continue;
            }
            if p.is_dir() {
                walk(&p, files);
            } else {
                files.push(p);
            }
        }
    }
    let mut files = vec![dir.join("pyproject.toml"), dir.join("README.md")];
    walk(&dir.join("lineq"), &mut files);
    files.sort();
    // FNV-1a over names and contents: a change detector, not a security boundary.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for b in f.to_string_lossy().as_bytes().iter().chain(&bytes) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The virtualenv with `clients/python[test,otel]` installed, made or brought up to date.
fn venv(client: &Path) -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
    let python = venv.join("bin/python");
    let stamp_file = venv.join("lineq-source-stamp");
    let stamp = source_stamp(client);
    if std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        return venv;
    }
    if !python.exists() {
        run(
            "python3 -m venv (on Debian: apt-get install python3-venv)",
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
        );
    }
    let pip = |args: &[&str]| {
        let mut cmd = Command::new(&python);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(args)
        .current_dir(client);
        run(&format!("pip install {}", args.join(" ")), &mut cmd);
    };
    pip(&[".[test,otel]"]);
    // The same version number with new code: install the package itself again.
    pip(&["--no-deps", "--force-reinstall", "."]);
    std::fs::write(&stamp_file, stamp).expect("stamp");
    venv
}

#[test]
fn python_client_and_workers() {
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let venv = venv(&client);
    let bin = venv.join("bin");
    run(
        "ruff check",
        Command::new(bin.join("ruff"))
            .args(["check", "--no-cache", "lineq", "tests"])
            .current_dir(&client),
    );
    run(
        "ruff format --check",
        Command::new(bin.join("ruff"))
            .args(["format", "--check", "--no-cache", "lineq", "tests"])
            .current_dir(&client),
    );
    run(
        "mypy --strict",
        Command::new(bin.join("mypy"))
            .args([
                "--strict",
                "--no-incremental",
                "--cache-dir=/dev/null",
                "lineq",
            ])
            .current_dir(&client),
    );
    // The venv's pytest, not `python -m pytest`: the installed package is what is tested, not
    // the source tree in the working directory.
    let out = Command::new(bin.join("pytest"))
        .args(["-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&client)
        .env("LINEQ_TEST_ADMIN_URL", admin_url())
        .env("LINEQ_BIN", env!("CARGO_BIN_EXE_lineq"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PATH", {
            let path = std::env::var("PATH").unwrap_or_default();
            format!("{}:{path}", bin.display())
        })
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .output()
        .expect("run pytest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "pytest failed:\n{text}");
    assert!(text.contains(" passed"), "pytest ran nothing:\n{text}");
}
