//! Log setup: structured, to stderr, `--log-format json` for log shippers.

use tracing_subscriber::EnvFilter;

use super::{Cli, LogFormat};

/// Installs the subscriber. One-shot commands log warnings only so their output stays clean;
/// `RUST_LOG` (or `LINEQ_LOG`) overrides.
pub fn init(cli: &Cli) {
    let global = &cli.global;
    let default = if global.verbose || cli.command.is_long_running() {
        "info"
    } else {
        "warn"
    };
    let filter = std::env::var("LINEQ_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(format!("{default},sqlx=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match global.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}
