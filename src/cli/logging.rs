//! Log setup: structured, to stderr, `--log-format json` for log shippers.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    // The SDK's own line for every failed export is left out: lineq's exporter says it once
    // per interval, with the endpoint and what was lost (shared::telemetry).
    let quiet = filter_fn(|m| !REPLACED_OTEL_EVENTS.contains(&m.name()));
    // A handler's own spans, exported under its attempt while tracing is on (and nothing
    // otherwise: the layer checks first).
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(lineq_core::telemetry::handler_spans_layer());
    let _ = match global.log_format {
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_filter(quiet))
            .try_init(),
        LogFormat::Text => registry.with(layer.compact().with_filter(quiet)).try_init(),
    };
}

/// OpenTelemetry's internal log events about failed exports, one per batch: replaced by the
/// rate-limited warning of lineq's exporter.
const REPLACED_OTEL_EVENTS: [&str; 2] =
    ["BatchSpanProcessor.ExportError", "Export.Failed.Exhausted"];

/// Colour codes only for a person at a terminal: not in a file, a pipe or a log shipper, and
/// never with `NO_COLOR` set (https://no-color.org).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
