//! Handlers every worker has, usable from the CLI: `echo`, `sleep` and `fail`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::context::StepContext;
use crate::handler::{HandlerError, HandlerResult, Handlers};

/// Returns its input.
pub async fn echo(_ctx: StepContext, input: Value) -> HandlerResult {
    Ok(input)
}

/// Sleeps `{"ms": N}` milliseconds (at most an hour), then returns `{"slept_ms": N}`. Stops early,
/// failing, when the step is cancelled.
pub async fn sleep(ctx: StepContext, input: Value) -> HandlerResult {
    const MAX_MS: u64 = 3_600_000;
    let ms = input.get("ms").and_then(Value::as_u64).ok_or_else(|| {
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
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({ "slept_ms": ms })),
        _ = ctx.cancellation.cancelled() => Err(HandlerError::new("sleep cancelled").kind("cancelled")),
    }
}

/// Fails with `{"message": "..."}` (or a default message). Permanent unless
/// `{"retryable": true}`.
pub async fn fail(_ctx: StepContext, input: Value) -> HandlerResult {
    let message = input
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("failed on purpose (built-in `fail` handler)")
        .to_string();
    let retryable = input
        .get("retryable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Err(HandlerError {
        kind: "handler_error".into(),
        message,
        retryable,
    })
}

/// Registers `echo`, `sleep` and `fail`.
pub fn register(handlers: &mut Handlers) {
    handlers.insert("echo", echo);
    handlers.insert("sleep", sleep);
    handlers.insert("fail", fail);
}
