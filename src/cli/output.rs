//! Standard output and errors, as scripts need them.
//!
//! Results go to stdout through [`outln!`]/[`out!`], which never panic: when the reader has gone
//! (`lineq list | head`), writing stops quietly and the command ends as it would have, exit code
//! included; any other write error is reported at the end. Errors go to stderr, as text, or with
//! `--format json` as `{"error": {"code", "message", "field"}}`.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use lineq_core::validation::ValidationError;

use super::Format;

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// Writes formatted text to stdout; see the module docs.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let result = out.write_fmt(args).and_then(|()| out.flush());
    if let Err(e) = result {
        // Nothing more can be written, whatever the reason.
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            if let Ok(mut f) = FAILED.lock() {
                f.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// The first stdout write error other than a closed pipe, if any.
pub fn write_error() -> Option<String> {
    FAILED.lock().ok().and_then(|f| f.clone())
}

/// `println!` that survives a closed pipe.
macro_rules! outln {
    () => { $crate::cli::output::write_out(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that survives a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::output::write_out(format_args!($($arg)*)) };
}

pub(crate) use {out, outln};

/// The error's message: each cause once. Causes often repeat the message of the error they
/// wrap (sqlx's "error returned from database: X" wraps X), so a cause whose text is already
/// part of the message is left out.
pub fn message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

/// A stable, machine-readable code for an exit code (see `--help`).
pub fn code(exit: u8) -> &'static str {
    match exit {
        2 => "invalid_input",
        3 => "not_found",
        4 => "conflict",
        _ => "failed",
    }
}

/// The field that broke a rule, when the error names one.
fn field(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|c| {
        c.downcast_ref::<ValidationError>()
            .or_else(|| match c.downcast_ref::<lineq::Error>() {
                Some(lineq::Error::Validation(v)) => Some(v),
                _ => None,
            })
            .map(|v| v.field.to_string())
            .or_else(|| match c.downcast_ref::<lineq::Error>() {
                Some(lineq::Error::UnknownNamespace { .. }) => Some("namespace".to_string()),
                _ => None,
            })
    })
}

/// The error as printed on stderr: `error: MESSAGE`, or in JSON
/// `{"error": {"code", "message", "field"}}`.
pub fn render_error(e: &anyhow::Error, format: Format, exit: u8) -> String {
    match format {
        Format::Text => format!("error: {}", message(e)),
        Format::Json => serde_json::json!({
            "error": {
                "code": code(exit),
                "message": message(e),
                "field": field(e),
                "exit_code": exit,
            }
        })
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("error returned from database: {0}")]
    struct Wrapper(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("password authentication failed for user \"x\"")]
    struct Inner;

    #[test]
    fn each_cause_is_said_once() {
        let e = anyhow::Error::new(Wrapper(Inner)).context("cannot connect to PostgreSQL");
        assert_eq!(
            message(&e),
            "cannot connect to PostgreSQL: error returned from database: password authentication failed for user \"x\""
        );
    }

    #[test]
    fn json_errors_name_code_and_field() {
        let e = anyhow::Error::new(ValidationError::new("input", "not valid JSON"));
        let v: serde_json::Value =
            serde_json::from_str(&render_error(&e, Format::Json, 2)).expect("json");
        assert_eq!(v["error"]["code"], "invalid_input");
        assert_eq!(v["error"]["field"], "input");
        assert_eq!(v["error"]["exit_code"], 2);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not valid JSON"))
        );
        let plain = anyhow::anyhow!("boom");
        assert_eq!(render_error(&plain, Format::Text, 1), "error: boom");
    }
}
