//! Command handlers: a step written in any language.
//!
//! A worker declares them (`lineq worker --command resize='python3 resize.py'`); they are never
//! taken from a message, so whoever can enqueue cannot choose what runs. The program gets the
//! input as JSON on stdin and `LINEQ_CORRELATION_ID`, `LINEQ_EXECUTION_ID`, `LINEQ_STEP`,
//! `LINEQ_ATTEMPT`, `LINEQ_IDEMPOTENCY_KEY` and `TRACEPARENT` in its environment; its stdout,
//! parsed as JSON, is the output (empty stdout is `null`). A non-zero exit fails the attempt
//! with the tail of stderr.

use std::process::Stdio;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use lineq_shared::validation::{MAX_OUTPUT_BYTES, ValidationError, check_name};

use crate::context::StepContext;
use crate::handler::{Handler, HandlerError, HandlerResult};

/// How much of stderr a failure keeps.
const STDERR_TAIL_BYTES: usize = 4096;

/// A declared command: the handler name and the program with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// The handler name steps use.
    pub name: String,
    /// Program and arguments (no shell is involved).
    pub argv: Vec<String>,
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
        })
    }
}

/// Runs a [`CommandSpec`] as a handler.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    spec: CommandSpec,
}

impl CommandHandler {
    /// A handler for `spec`.
    pub fn new(spec: CommandSpec) -> Self {
        Self { spec }
    }
}

impl Handler for CommandHandler {
    fn call(&self, ctx: StepContext, input: Value) -> BoxFuture<'static, HandlerResult> {
        let spec = self.spec.clone();
        Box::pin(async move { run(spec, ctx, input).await })
    }
}

async fn run(spec: CommandSpec, ctx: StepContext, input: Value) -> HandlerResult {
    let stdin_json = serde_json::to_vec(&input)
        .map_err(|e| HandlerError::permanent(format!("input is not serializable: {e}")))?;
    let mut child = tokio::process::Command::new(&spec.argv[0])
        .args(&spec.argv[1..])
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
        })?;

    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let feed = async {
        if let Some(mut s) = stdin.take() {
            // A program that does not read its input closes the pipe: that is not an error.
            let _ = s.write_all(&stdin_json).await;
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
    let read_err = async {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf).await;
        }
        buf
    };
    let (_, out, err) = tokio::join!(feed, read_out, read_err);
    let status = child.wait().await.map_err(|e| {
        HandlerError::new(format!("command {}: {e}", spec.name)).kind("command_failed")
    })?;

    if !status.success() {
        let tail = tail_utf8(&err, STDERR_TAIL_BYTES);
        return Err(HandlerError::new(format!(
            "command {} exited with {}: {}",
            spec.name,
            status
                .code()
                .map_or_else(|| "a signal".to_string(), |c| format!("code {c}")),
            tail.trim()
        ))
        .kind("command_failed"));
    }
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
    serde_json::from_slice(&out).map_err(|e| {
        HandlerError::permanent(format!(
            "command {}: stdout is not JSON ({e}): {}",
            spec.name,
            tail_utf8(&out, 200).trim()
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
}
