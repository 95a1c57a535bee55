//! Log setup: structured, to stderr, `--log-format json` for log shippers.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use super::{Cli, LogFormat};

/// Installs the subscriber. One-shot commands log warnings only so their output stays clean;
/// `log.level` overrides (from the file, `LINEQ_LOG_LEVEL`, `LINEQ_LOG`, `RUST_LOG` or
/// `--verbose`, resolved and checked by `config::resolve`).
pub fn init(cli: &Cli) {
    let global = &cli.global;
    let default = if global.verbose || cli.command.is_long_running() {
        "info"
    } else {
        "warn"
    };
    let filter = global
        .effective
        .log
        .level
        .as_deref()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("{default},sqlx=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    let _ = match global.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}

/// Colour codes only for a person at a terminal: not in a file, a pipe or a log shipper, and
/// never with `NO_COLOR` set (https://no-color.org).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
