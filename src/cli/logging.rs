//! Log setup: structured, to stderr, `--log-format json` for log shippers.

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
        .with_writer(std::io::stderr);
    let _ = match global.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}
