//! The README's shell blocks, run in order as written, against a database of their own.
//!
//! Every ```` ```sh ```` block of README.md runs, in one bash session (`set -euo pipefail`, so
//! variables and the working directory carry from one block to the next), unless the line
//! before it is a marker:
//!
//! - `<!-- readme-test: skip (REASON) -->`: not run (the test suite itself, Docker, setting up
//!   what the test provides: the database and `lineq` on `PATH`);
//! - `<!-- readme-test: background -->`: a long-running process a reader starts in a terminal of
//!   its own (an orchestrator, a worker). It runs in the background for the rest of the session
//!   and must still be running when the last block has run; then every process the blocks
//!   started is stopped.
//!
//! The blocks run in a scratch directory holding `examples/` and `clients/` of this repository
//! (they are written to run from its root), with `DATABASE_URL` naming a fresh, empty database
//! and this build's `lineq` first on `PATH`. A failure names the block, its line in README.md,
//! its code and everything it and the background processes printed.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lineq_testkit::TestDb;

#[derive(Debug, PartialEq)]
enum Mode {
    Run,
    Background,
    Skip,
}

#[derive(Debug)]
struct Block {
    /// The line of the opening fence in README.md (1-based).
    line: usize,
    mode: Mode,
    code: String,
}

const MARKER: &str = "<!-- readme-test:";

/// The ```sh blocks of `text` with the marker before each.
fn sh_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_end();
        if !fence.starts_with("```") || fence == "```" {
            i += 1;
            continue;
        }
        let is_sh = matches!(fence, "```sh" | "```bash" | "```shell");
        let marker = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim())
            .filter(|l| l.starts_with(MARKER));
        let mode = match marker {
            None => Mode::Run,
            Some(m) if m.starts_with("<!-- readme-test: background -->") => Mode::Background,
            Some(m) if m.starts_with("<!-- readme-test: skip (") && m.ends_with(") -->") => {
                Mode::Skip
            }
            Some(m) => panic!(
                "README.md, before line {}: unknown marker {m:?}; use `<!-- readme-test: skip (REASON) -->` \
                 or `<!-- readme-test: background -->`",
                i + 1
            ),
        };
        let start = i;
        i += 1;
        let mut code = String::new();
        while i < lines.len() && lines[i].trim_end() != "```" {
            code.push_str(lines[i]);
            code.push('\n');
            i += 1;
        }
        assert!(
            i < lines.len(),
            "README.md line {}: unclosed block",
            start + 1
        );
        i += 1;
        if is_sh {
            blocks.push(Block {
                line: start + 1,
                mode,
                code,
            });
        } else {
            assert!(
                marker.is_none(),
                "README.md line {}: a readme-test marker before a block that is not sh",
                start + 1
            );
        }
    }
    blocks
}

/// The script that runs `blocks` in order; background blocks write their output to
/// `bg-LINE.log` and, should they end, their exit status to `bg-LINE.rc`.
fn script(blocks: &[Block], dir: &Path) -> String {
    let mut s = String::from(
        "set -euo pipefail\n\
         trap 'echo \"readme-test: failed in $__block (exit $?)\" >&2' ERR\n",
    );
    for b in blocks {
        let name = format!("block at README.md line {}", b.line);
        s.push_str(&format!(
            "__block='{name}'\necho '::readme-test:: {name}'\n"
        ));
        match b.mode {
            Mode::Skip => {}
            Mode::Run => s.push_str(&b.code),
            Mode::Background => {
                let file = dir.join(format!("bg-{}.sh", b.line));
                std::fs::write(&file, &b.code).expect("write background block");
                s.push_str(&format!(
                    "( rc=0; bash -euo pipefail bg-{l}.sh || rc=$?; echo $rc > bg-{l}.rc ) > bg-{l}.log 2>&1 &\n",
                    l = b.line
                ));
            }
        }
    }
    s.push_str("echo '::readme-test:: done'\n");
    s
}

/// Stops every process the blocks started (their process group) when dropped, also on panic.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

fn background_logs(blocks: &[Block], dir: &Path) -> String {
    let mut out = String::new();
    for b in blocks.iter().filter(|b| b.mode == Mode::Background) {
        let log =
            std::fs::read_to_string(dir.join(format!("bg-{}.log", b.line))).unwrap_or_default();
        out.push_str(&format!(
            "--- background block at README.md line {}:\n{}--- its output:\n{log}\n",
            b.line, b.code
        ));
    }
    out
}

#[test]
fn marker_parsing() {
    let text = "intro\n\n```sh\necho a\n```\n\n<!-- readme-test: skip (docker) -->\n```sh\n\
                docker run x\n```\n<!-- readme-test: background -->\n\n```sh\nlineq worker\n\
                ```\n```sql\nSELECT 1;\n```\n";
    let blocks = sh_blocks(text);
    let modes: Vec<(usize, &Mode, &str)> = blocks
        .iter()
        .map(|b| (b.line, &b.mode, b.code.as_str()))
        .collect();
    assert_eq!(
        modes,
        [
            (3, &Mode::Run, "echo a\n"),
            (8, &Mode::Skip, "docker run x\n"),
            (13, &Mode::Background, "lineq worker\n"),
        ]
    );
}

#[test]
#[should_panic(expected = "unknown marker")]
fn unknown_marker_is_refused() {
    sh_blocks("<!-- readme-test: sometimes -->\n```sh\necho a\n```\n");
}

#[tokio::test]
async fn readme_shell_blocks_run_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README.md");
    let blocks = sh_blocks(&readme);
    let run = blocks.iter().filter(|b| b.mode == Mode::Run).count();
    let background = blocks.iter().filter(|b| b.mode == Mode::Background).count();
    assert!(
        run >= 3 && background >= 2,
        "README.md has {run} runnable and {background} background sh blocks: the local fleet is gone?"
    );

    let db = TestDb::empty().await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("readme-{}", db.name));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    for sub in ["examples", "clients"] {
        std::os::unix::fs::symlink(root.join(sub), dir.join(sub)).expect("symlink");
    }
    std::fs::write(dir.join("readme.sh"), script(&blocks, &dir)).expect("write script");

    let bin_dir = Path::new(env!("CARGO_BIN_EXE_lineq"))
        .parent()
        .expect("lineq's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new("bash")
        .arg("readme.sh")
        .current_dir(&dir)
        .env("DATABASE_URL", &db.url)
        .env("PATH", path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env_remove("RUST_LOG")
        .env_remove("LINEQ_LOG")
        .env_remove("LINEQ_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run bash");
    let group = Group(child.id() as i32);
    let out = child.wait_with_output().expect("wait for bash");
    let text = format!(
        "{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    if !out.status.success() {
        let failed = text
            .lines()
            .filter_map(|l| l.strip_prefix("::readme-test:: "))
            .next_back()
            .unwrap_or("before the first block")
            .to_string();
        let code = blocks
            .iter()
            .find(|b| failed == format!("block at README.md line {}", b.line))
            .map(|b| b.code.as_str())
            .unwrap_or("");
        panic!(
            "the README's {failed} failed ({}):\n{code}\n--- output of the blocks:\n{text}\n{}",
            out.status,
            background_logs(&blocks, &dir)
        );
    }
    assert!(
        text.contains("::readme-test:: done"),
        "the blocks did not run to the end:\n{text}"
    );
    for b in blocks.iter().filter(|b| b.mode == Mode::Background) {
        let rc = dir.join(format!("bg-{}.rc", b.line));
        assert!(
            !rc.exists(),
            "the README's background block at line {} ended before the last block ran (exit {}):\n{}",
            b.line,
            std::fs::read_to_string(&rc).unwrap_or_default().trim(),
            background_logs(&blocks, &dir)
        );
    }
    println!("{text}\n{}", background_logs(&blocks, &dir));

    drop(group);
    db.drop_db().await;
    let _ = std::fs::remove_dir_all(&dir);
}
