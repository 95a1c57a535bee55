//! Handlers every worker has, usable from the CLI: `echo`, `sleep` and `fail`.

use std::time::Duration;

use serde_json::{Value, json};
use tracing::Instrument;

use crate::context::StepContext;
use crate::handler::{HandlerError, HandlerResult, Handlers};

/// An argument of a built-in: from a workflow step's `params`, else the top level of the
/// input (a one-step task), else the execution input (`input.input`).
fn arg<'a>(input: &'a Value, key: &str) -> Option<&'a Value> {
    input
        .get("params")
        .and_then(|p| p.get(key))
        .or_else(|| input.get(key))
        .or_else(|| input.get("input").and_then(|i| i.get(key)))
}

/// Returns its input.
pub async fn echo(_ctx: StepContext, input: Value) -> HandlerResult {
    Ok(input)
}

/// Sleeps `{"ms": N}` milliseconds (at most an hour), then returns `{"slept_ms": N}`. Stops early,
/// failing, when the step is cancelled.
pub async fn sleep(ctx: StepContext, input: Value) -> HandlerResult {
    const MAX_MS: u64 = 3_600_000;
    let ms = arg(&input, "ms").and_then(Value::as_u64).ok_or_else(|| {
        HandlerError::permanent(format!(
            "sleep needs input {{\"ms\": N}} with N a whole number of milliseconds (got {input})"
        ))
        .kind("invalid_input")
    })?;
    if ms > MAX_MS {
        return Err(
            HandlerError::permanent(format!("sleep: ms is {ms}; the limit is {MAX_MS}"))
                .kind("invalid_input"),
        );
    }
    // A span of its own, as a handler's `#[instrument]` functions have: with tracing on it is
    // exported under the attempt's span.
    let span = tracing::info_span!("sleep", ms);
    async {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({ "slept_ms": ms })),
            _ = ctx.cancellation.cancelled() => Err(HandlerError::new("sleep cancelled").kind("cancelled")),
        }
    }
    .instrument(span)
    .await
}

/// Fails with `{"message": "..."}` (or a default message). Permanent unless
/// `{"retryable": true}`.
pub async fn fail(_ctx: StepContext, input: Value) -> HandlerResult {
    let message = arg(&input, "message")
        .and_then(Value::as_str)
        .unwrap_or("failed on purpose (built-in `fail` handler)")
        .to_string();
    let retryable = arg(&input, "retryable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Err(HandlerError {
        kind: "handler_error".into(),
        message,
        retryable,
    })
}

/// Fails (retryably) while the attempt is at most `{"fail_attempts": N}`, then returns its
/// input: a step that succeeds on a retry.
pub async fn flaky(ctx: StepContext, input: Value) -> HandlerResult {
    let n = arg(&input, "fail_attempts")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if i64::from(ctx.attempt) <= n {
        return Err(HandlerError::new(format!(
            "flaky: attempt {} of the first {n} fails on purpose",
            ctx.attempt
        ))
        .kind("flaky"));
    }
    Ok(input)
}

/// Starts the child executions listed in its input and, with `"wait": true`, completes with
/// their output: `{"children": [{"target": "echo", "input": {...}, "namespace": "default"}],
/// "wait": true}`. A target is a registered workflow or a handler, like `lineq submit`'s.
pub async fn spawn(ctx: StepContext, input: Value) -> HandlerResult {
    let children = arg(&input, "children")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            HandlerError::permanent(
                "spawn needs input {\"children\": [{\"target\": ..., \"input\": ...}]}",
            )
            .kind("invalid_input")
        })?;
    let wait = arg(&input, "wait")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut ids = Vec::new();
    for c in children {
        let target = c.get("target").and_then(Value::as_str).ok_or_else(|| {
            HandlerError::permanent("spawn: every child needs a \"target\"").kind("invalid_input")
        })?;
        let mut req = lineq_core::message::ChildRequest::new(
            target,
            c.get("input").cloned().unwrap_or(Value::Null),
        );
        req.namespace = c
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        req.wait = wait;
        ids.push(ctx.spawn_child(req));
    }
    Ok(json!({ "spawned": ids }))
}

/// Registers `echo`, `sleep`, `fail`, `flaky` and `spawn`.
pub fn register(handlers: &mut Handlers) {
    handlers.insert("echo", echo);
    handlers.insert("sleep", sleep);
    handlers.insert("fail", fail);
    handlers.insert("flaky", flaky);
    handlers.insert("spawn", spawn);
}
