//! Command handlers: a step written in any language.
//!
//! A worker declares them (`lineq worker --command resize='python3 resize.py'`); they are never
//! taken from a message, so whoever can enqueue cannot choose what runs. The program gets the
//! input as JSON on stdin and `LINEQ_CORRELATION_ID`, `LINEQ_EXECUTION_ID`, `LINEQ_STEP`,
//! `LINEQ_ATTEMPT`, `LINEQ_IDEMPOTENCY_KEY` and `TRACEPARENT` in its environment; its stdout,
//! parsed as JSON, is the output (empty stdout is `null`). A non-zero exit fails the attempt
//! with the tail of stderr; on success the tail of stderr, if any, is logged at info level with
//! the step's ids.
//!
//! The program does not inherit the worker's environment, which holds the worker's database
//! URL and tokens: it gets `PATH`, `HOME`, `LANG`, `LC_*`, `TZ` and `TMPDIR` from the worker,
//! the variables the worker was told to pass ([`CommandSpec::pass_env`]) and the per-step ones
//! above, nothing else.

use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use lineq_core::validation::{MAX_OUTPUT_BYTES, ValidationError, check_name};

use crate::context::StepContext;
use crate::handler::{Handler, HandlerError, HandlerResult};

/// How much of stderr is kept: the end of it, in a failure's error or the worker's log.
const STDERR_TAIL_BYTES: usize = 4096;

/// Variables a command gets from the worker's environment without being asked for: what a
/// program needs to find its tools and format text, never a credential.
const BASE_ENV: [&str; 5] = ["PATH", "HOME", "LANG", "TZ", "TMPDIR"];

/// A declared command: the handler name and the program with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// The handler name steps use.
    pub name: String,
    /// Program and arguments (no shell is involved).
    pub argv: Vec<String>,
    /// Variables of the worker's environment passed on to the program, besides the base ones
    /// (checked by [`check_pass_env`]).
    pub pass_env: Vec<String>,
}

impl CommandSpec {
    /// Parses `name=program arg...`; the command line is split like a POSIX shell would split
    /// it (quotes respected), but no shell runs it.
    pub fn parse(spec: &str) -> Result<Self, ValidationError> {
        let (name, cmd) = spec.split_once('=').ok_or_else(|| {
            ValidationError::new(
                "command",
                format!("expected NAME='PROGRAM ARGS...', got {spec:?}"),
            )
        })?;
        let name = name.trim();
        check_name("command", name)?;
        let argv = shell_words::split(cmd)
            .map_err(|e| ValidationError::new("command", format!("{name}: {e}")))?;
        if argv.is_empty() {
            return Err(ValidationError::new(
                "command",
                format!("{name}: the command line is empty"),
            ));
        }
        Ok(Self {
            name: name.to_string(),
            argv,
            pass_env: Vec::new(),
        })
    }

    /// Passes these variables of the worker's environment on to the program too.
    pub fn pass_env<S: AsRef<str>>(mut self, names: &[S]) -> Result<Self, ValidationError> {
        for name in names {
            let name = name.as_ref();
            check_pass_env(name)?;
            if !self.pass_env.iter().any(|n| n == name) {
                self.pass_env.push(name.to_string());
            }
        }
        Ok(self)
    }
}

/// Checks a `--pass-env` name: a plain variable name (letters, digits and `_`, not starting
/// with a digit), and not one of lineq's own: `LINEQ_*` (its configuration, tokens included,
/// and the per-step variables it sets itself) and `DATABASE_URL` (the worker's credentials).
pub fn check_pass_env(name: &str) -> Result<(), ValidationError> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain {
        return Err(ValidationError::new(
            "pass_env",
            format!("{name:?} is not a variable name (letters, digits and '_')"),
        ));
    }
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("LINEQ_") || upper == "DATABASE_URL" {
        return Err(ValidationError::new(
            "pass_env",
            format!(
                "{name} is lineq's own configuration (it can hold the worker's credentials) and is never passed to commands"
            ),
        ));
    }
    Ok(())
}

/// Runs a [`CommandSpec`] as a handler.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    spec: CommandSpec,
    /// The variables passed on, read from the worker's environment once, when declared.
    env: Vec<(OsString, OsString)>,
}

impl CommandHandler {
    /// A handler for `spec`.
    pub fn new(spec: CommandSpec) -> Self {
        let env = inherited_env(std::env::vars_os(), &spec.pass_env);
        Self { spec, env }
    }
}

/// The part of `vars` a command gets: the base variables, `LC_*`, and `pass_env`.
fn inherited_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    pass_env: &[String],
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(k, _)| {
            k.to_str().is_some_and(|k| {
                BASE_ENV.contains(&k) || k.starts_with("LC_") || pass_env.iter().any(|p| p == k)
            })
        })
        .collect()
}

impl Handler for CommandHandler {
    fn call(&self, ctx: StepContext, input: Value) -> BoxFuture<'static, HandlerResult> {
        let spec = self.spec.clone();
        let env = self.env.clone();
        Box::pin(async move { run(spec, env, ctx, input).await })
    }
}

async fn run(
    spec: CommandSpec,
    env: Vec<(OsString, OsString)>,
    ctx: StepContext,
    input: Value,
) -> HandlerResult {
    check_step_names(&spec, &ctx)?;
    let stdin_json = serde_json::to_vec(&input)
        .map_err(|e| HandlerError::permanent(format!("input is not serializable: {e}")))?;
    let mut child = spawn(&spec, env, &ctx)?;
    // Held until the program has exited, like the child itself.
    let mut pipes = Pipes {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
    };
    let (out, err, err_bytes) = pipes.exchange(&stdin_json).await;
    let status = child.wait().await.map_err(|e| {
        HandlerError::new(format!("command {}: {e}", spec.name)).kind("command_failed")
    })?;
    if !status.success() {
        return Err(exit_error(&spec, status, &err));
    }
    log_stderr(&spec, &ctx, &err, err_bytes);
    parse_output(&spec, &out)
}

/// Checks the step and handler names, which go into the program's environment.
fn check_step_names(spec: &CommandSpec, ctx: &StepContext) -> Result<(), HandlerError> {
    // Names go into the program's environment: a message that carries a newline or a control
    // character in one is refused, not passed on.
    for (field, value) in [("step", &ctx.step), ("handler", &ctx.handler)] {
        check_name(field, value).map_err(|e| {
            HandlerError::permanent(format!("command {}: {e}", spec.name)).kind("invalid_step")
        })?;
    }
    Ok(())
}

/// Starts the program with only `env` and the step's variables in its environment.
fn spawn(
    spec: &CommandSpec,
    env: Vec<(OsString, OsString)>,
    ctx: &StepContext,
) -> Result<Child, HandlerError> {
    tokio::process::Command::new(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(env)
        .env("LINEQ_CORRELATION_ID", ctx.correlation_id.to_string())
        .env("LINEQ_EXECUTION_ID", ctx.execution_id.to_string())
        .env("LINEQ_ROOT_EXECUTION_ID", ctx.root_execution_id.to_string())
        .env("LINEQ_STEP", &ctx.step)
        .env("LINEQ_STEP_ID", ctx.step_id.to_string())
        .env("LINEQ_ATTEMPT", ctx.attempt.to_string())
        .env("LINEQ_IDEMPOTENCY_KEY", ctx.idempotency_key())
        .env("TRACEPARENT", &ctx.traceparent)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A timed-out or cancelled step must not leave its program running.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            HandlerError::new(format!(
                "command {}: cannot start {:?}: {e}",
                spec.name, spec.argv[0]
            ))
            .kind("command_failed")
        })
}

/// The program's standard streams.
struct Pipes {
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
}

impl Pipes {
    /// Writes `stdin_json` to the program while reading its output: stdout (up to one byte past
    /// the output limit), the tail of stderr and how many bytes stderr had.
    async fn exchange(&mut self, stdin_json: &[u8]) -> (Vec<u8>, Vec<u8>, usize) {
        let stdin = &mut self.stdin;
        let stdout = &mut self.stdout;
        let stderr = &mut self.stderr;
        let feed = async {
            if let Some(mut s) = stdin.take() {
                // A program that does not read its input closes the pipe: that is not an error.
                let _ = s.write_all(stdin_json).await;
                let _ = s.shutdown().await;
            }
        };
        let read_out = async {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                // Read one byte past the limit to know it was exceeded without buffering more.
                let _ = s
                    .take(MAX_OUTPUT_BYTES as u64 + 1)
                    .read_to_end(&mut buf)
                    .await;
            }
            buf
        };
        let (_, out, (err, err_bytes)) = tokio::join!(feed, read_out, read_tail(stderr));
        (out, err, err_bytes)
    }
}

/// Reads all of stderr (a program blocked on a full pipe would never finish) but keeps only its
/// tail; returns the tail and how many bytes there were.
async fn read_tail(stderr: &mut Option<ChildStderr>) -> (Vec<u8>, usize) {
    let mut tail = Vec::new();
    let mut total = 0usize;
    if let Some(s) = stderr.as_mut() {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            total += n;
            tail.extend_from_slice(&chunk[..n]);
            if tail.len() > 2 * STDERR_TAIL_BYTES {
                tail.drain(..tail.len() - STDERR_TAIL_BYTES);
            }
        }
    }
    (tail, total)
}

/// The failure of a program that exited unsuccessfully, with the tail of its stderr.
fn exit_error(spec: &CommandSpec, status: ExitStatus, err: &[u8]) -> HandlerError {
    let tail = tail_utf8(err, STDERR_TAIL_BYTES);
    HandlerError::new(format!(
        "command {} exited with {}: {}",
        spec.name,
        status
            .code()
            .map_or_else(|| "a signal".to_string(), |c| format!("code {c}")),
        tail.trim()
    ))
    .kind("command_failed")
}

/// Logs what a program that succeeded wrote to stderr, if anything.
fn log_stderr(spec: &CommandSpec, ctx: &StepContext, err: &[u8], err_bytes: usize) {
    // A program that succeeded may still have said something worth reading (a warning, a
    // progress note): it goes to the worker's log with the step's ids, its tail only.
    let said = tail_utf8(err, STDERR_TAIL_BYTES);
    let said = said.trim();
    if !said.is_empty() {
        tracing::info!(
            command = %spec.name,
            step = %ctx.step,
            step_id = %ctx.step_id,
            execution_id = %ctx.execution_id,
            correlation_id = %ctx.correlation_id,
            attempt = ctx.attempt,
            stderr_bytes = err_bytes,
            stderr = %said,
            "command succeeded and wrote to stderr{}",
            if err_bytes > STDERR_TAIL_BYTES { " (its last 4 KiB)" } else { "" }
        );
    }
}

/// The step's output: stdout as JSON, `null` when it is empty.
fn parse_output(spec: &CommandSpec, out: &[u8]) -> HandlerResult {
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(HandlerError::permanent(format!(
            "command {}: stdout is over the {MAX_OUTPUT_BYTES}-byte output limit",
            spec.name
        ))
        .kind("output_too_large"));
    }
    if out.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(out).map_err(|e| {
        HandlerError::permanent(format!(
            "command {}: stdout is not JSON ({e}): {}",
            spec.name,
            tail_utf8(out, 200).trim()
        ))
        .kind("invalid_output")
    })
}

fn tail_utf8(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let s = CommandSpec::parse("resize=python3 resize.py --size 'a b'").unwrap();
        assert_eq!(s.name, "resize");
        assert_eq!(s.argv, vec!["python3", "resize.py", "--size", "a b"]);
        assert!(CommandSpec::parse("noequals").is_err());
        assert!(CommandSpec::parse("x=").is_err());
        assert!(CommandSpec::parse("bad name=ls").is_err());
        assert!(CommandSpec::parse("q='unterminated").is_err());
    }

    fn context(step: &str) -> StepContext {
        let id = uuid::Uuid::now_v7();
        StepContext {
            step_id: id,
            step: step.to_string(),
            handler: "cmd".to_string(),
            attempt: 1,
            delivery: 1,
            execution_id: id,
            parent_execution_id: None,
            root_execution_id: id,
            correlation_id: id,
            workflow: "cmd".to_string(),
            tags: Default::default(),
            metadata: Value::Null,
            parent_step: None,
            worker_id: "w".to_string(),
            traceparent: format!("00-{}-0000000000000001-01", id.simple()),
            event_id: id,
            cancellation: Default::default(),
            children: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_step_name_with_a_newline_never_reaches_the_program() {
        let marker = std::env::temp_dir().join(format!("lineq-cmd-{}", uuid::Uuid::now_v7()));
        let spec = CommandSpec {
            name: "cmd".into(),
            argv: vec!["touch".into(), marker.display().to_string()],
            pass_env: Vec::new(),
        };
        let handler = CommandHandler::new(spec);
        for bad in ["a\nLINEQ_STEP=forged", "tab\tname", "esc\u{1b}[31m"] {
            let e = handler.call(context(bad), Value::Null).await.unwrap_err();
            assert_eq!(e.kind, "invalid_step", "{bad:?}");
            assert!(!e.retryable);
            assert!(!e.message.contains('\n') && !e.message.contains('\u{1b}'));
            assert!(!marker.exists(), "the program ran for {bad:?}");
        }
        handler.call(context("ok_step"), Value::Null).await.unwrap();
        assert!(marker.exists());
        let _ = std::fs::remove_file(marker);
    }

    #[test]
    fn pass_env_names_are_plain_and_never_lineqs_own() {
        let s = CommandSpec::parse("a=ls").unwrap();
        let s = s.pass_env(&["AWS_REGION", "x_1", "AWS_REGION"]).unwrap();
        assert_eq!(s.pass_env, vec!["AWS_REGION", "x_1"]);
        for bad in [
            "",
            "1A",
            "A=B",
            "A B",
            "A\nB",
            "LINEQ_DATABASE_URL",
            "lineq_api_token",
            "DATABASE_URL",
        ] {
            let e = CommandSpec::parse("a=ls")
                .unwrap()
                .pass_env(&[bad])
                .unwrap_err();
            assert_eq!(e.field, "pass_env", "{bad}");
        }
    }

    #[test]
    fn only_the_base_variables_and_the_named_ones_are_inherited() {
        let vars = [
            ("PATH", "/bin"),
            ("LC_ALL", "C"),
            ("DATABASE_URL", "postgres://u:secret@h/db"),
            ("LINEQ_API_TOKEN", "secret"),
            ("LINEQ_STEP", "from-the-worker"),
            ("TRACESTATE", "worker=1"),
            ("AWS_REGION", "eu"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let got = inherited_env(vars, &["AWS_REGION".to_string()]);
        let names: Vec<_> = got.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(names, vec!["PATH", "LC_ALL", "AWS_REGION"]);
    }
}
