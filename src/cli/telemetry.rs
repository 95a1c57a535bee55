//! Tracing for every command: spans go to an OTLP endpoint when one is configured
//! (`--otlp-endpoint`, else the standard `OTEL_EXPORTER_OTLP_*` variables), and pending spans are
//! flushed before the process exits — after SIGTERM for orchestrators and workers, at the end of
//! `lineq demo`, after every one-shot command.

use lineq_core::telemetry::{self, TelemetryConfig};

use super::{Cli, Command};

/// Runs the command with tracing set up around it. Called inside the async runtime: the gRPC
/// exporter needs one, and the final flush runs while it is still there.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let name = match &cli.global.effective.telemetry.service_name {
        Some(name) => name.clone(),
        None => service_name(&cli.command).to_string(),
    };
    let config = TelemetryConfig::new(name).otlp_endpoint(cli.global.otlp_endpoint.clone());
    let guard = telemetry::init(config)?;
    let result = super::run(cli).await;
    guard.shutdown().await;
    result
}

/// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` says otherwise: in
/// Jaeger, each span shows which kind of process wrote it.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Orchestrator(_) => "lineq-orchestrator",
        Command::Worker(_) => "lineq-worker",
        Command::Serve(_) => "lineq-api",
        Command::Demo(_) => "lineq-demo",
        _ => "lineq",
    }
}
