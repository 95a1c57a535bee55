//! The effective configuration: the file (`--config` or `LINEQ_CONFIG`), then the environment
//! (`LINEQ_<SECTION>_<KEY>`, `DATABASE_URL`, ...), then the flags really given on the command
//! line — and `lineq config show`, which prints it with secrets masked.
//!
//! clap fills every flag with its default, so the parsed arguments alone cannot tell a flag
//! given as `--concurrency 10` from one left at its default 10. `ArgMatches::value_source` can:
//! only `ValueSource::CommandLine` beats the environment and the file. The defaults shown in
//! `--help` are the config defaults (a test checks they agree).

use super::output::out;
use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{ArgMatches, Subcommand};

use lineq::config::{Config, LogFormat as ConfigLogFormat};
use lineq_core::validation::ValidationError;

use super::{Cli, Command, Format, LogFormat, print_json};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (file, then environment, then flags), with the
    /// database password masked. As TOML (usable as a config file), or JSON with --format json.
    Show,
}

pub fn show(cli_config: &Config, format: Format) -> anyhow::Result<()> {
    let masked = cli_config.masked();
    match format {
        Format::Json => print_json(&masked)?,
        Format::Text => out!("{}", masked.to_toml()),
    }
    Ok(())
}

/// The process environment, skipping variables that are not UTF-8 (none of lineq's are;
/// `std::env::vars` would panic on them).
fn environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v): (OsString, OsString)| {
            Some((k.into_string().ok()?, v.into_string().ok()?))
        })
        .collect()
}

/// Loads the file and the environment, lays the flags given on the command line over them, and
/// writes the result back into `cli` (its arguments and `cli.global.config`), so every command
/// reads effective values.
pub fn resolve(cli: &mut Cli, matches: &ArgMatches) -> anyhow::Result<()> {
    resolve_with(cli, matches, environment())
}

/// [`resolve`] with a given environment (for tests).
#[expect(
    clippy::too_many_lines,
    reason = "every setting's layering (flag, environment, file, default) in one table-like place"
)]
pub fn resolve_with(
    cli: &mut Cli,
    matches: &ArgMatches,
    env: Vec<(String, String)>,
) -> anyhow::Result<()> {
    let mut config = Config::load(cli.global.config.as_deref(), env.iter().cloned())?;
    let sub = matches.subcommand().map(|(_, m)| m);
    // Global flags may be given before or after the subcommand; clap records them on both.
    let given = |id: &str| {
        [Some(matches), sub]
            .into_iter()
            .flatten()
            .any(|m| m.value_source(id) == Some(ValueSource::CommandLine))
    };

    let g = &mut cli.global;
    if given("database_url") {
        config.database.url = g.database_url.clone();
    }
    if given("read_database_url") {
        config.database.read_url = g.read_database_url.clone();
    }
    if given("log_format") {
        config.log.format = match g.log_format {
            LogFormat::Text => ConfigLogFormat::Text,
            LogFormat::Json => ConfigLogFormat::Json,
        };
    }
    if given("otlp_endpoint") {
        config.telemetry.otlp_endpoint = g.otlp_endpoint.clone();
    }
    let level_from_env = env.iter().any(|(k, v)| {
        matches!(k.as_str(), "RUST_LOG" | "LINEQ_LOG" | "LINEQ_LOG_LEVEL") && !v.is_empty()
    });
    // --verbose beats the file, but not a filter from the environment (as before the file).
    if g.verbose && !level_from_env {
        config.log.level = Some("info".to_string());
    }
    if let Some(level) = &config.log.level {
        tracing_subscriber::EnvFilter::try_new(level).map_err(|e| {
            ValidationError::new("log.level", format!("{level:?} is not a log filter: {e}"))
        })?;
    }

    let sub_given =
        |id: &str| sub.is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine));
    match &mut cli.command {
        Command::Worker(a) => {
            let w = &mut config.worker;
            if sub_given("namespace") {
                w.namespace = a.namespace.clone();
            }
            if sub_given("concurrency") {
                w.concurrency = a.concurrency;
            }
            if sub_given("batch_size") {
                w.batch_size = a.batch_size;
            }
            if sub_given("visibility_timeout_secs") {
                w.visibility_timeout_secs = a.visibility_timeout_secs;
            }
            if sub_given("shutdown_grace_secs") {
                w.shutdown_grace_secs = a.shutdown_grace_secs;
            }
            if sub_given("poll_interval_ms") {
                w.poll_interval_ms = a.poll_interval_ms;
            }
            if sub_given("max_deliveries") {
                w.max_deliveries = a.max_deliveries;
            }
            if sub_given("heartbeat_secs") {
                w.heartbeat_secs = a.heartbeat_secs;
            }
            if sub_given("worker_id") {
                w.worker_id = a.worker_id.clone();
            }
            // --command adds to the file's commands, replacing one of the same name.
            for spec in &a.commands {
                let parsed = lineq::CommandSpec::parse(spec)?;
                let (_, line) = spec.split_once('=').unwrap_or_default();
                w.commands.insert(parsed.name, line.to_string());
            }
            // --pass-env adds to the file's list.
            for name in &a.pass_env {
                if !w.pass_env.contains(name) {
                    w.pass_env.push(name.clone());
                }
            }
            for name in &w.pass_env {
                lineq_worker::command::check_pass_env(name)?;
            }
            if sub_given("metrics_addr") {
                config.metrics.addr = a.metrics_addr;
            }
            if sub_given("metrics_allow_remote") {
                config.metrics.allow_remote = a.metrics_allow_remote;
            }
            a.http.resolve(&mut config.http, sub_given);
            let w = &config.worker;
            a.namespace = w.namespace.clone();
            a.concurrency = w.concurrency;
            a.batch_size = w.batch_size;
            a.visibility_timeout_secs = w.visibility_timeout_secs;
            a.shutdown_grace_secs = w.shutdown_grace_secs;
            a.poll_interval_ms = w.poll_interval_ms;
            a.max_deliveries = w.max_deliveries;
            a.heartbeat_secs = w.heartbeat_secs;
            a.worker_id = w.worker_id.clone();
            a.commands = w
                .commands
                .iter()
                .map(|(name, line)| format!("{name}={line}"))
                .collect();
            a.pass_env = w.pass_env.clone();
            a.metrics_addr = config.metrics.addr;
            a.metrics_allow_remote = config.metrics.allow_remote;
        }
        Command::Orchestrator(a) => {
            let o = &mut config.orchestrator;
            if sub_given("batch_size") {
                o.batch_size = a.batch_size;
            }
            if sub_given("poll_interval_ms") {
                o.poll_interval_ms = a.poll_interval_ms;
            }
            if sub_given("silent_worker_secs") {
                o.silent_worker_secs = a.silent_worker_secs;
            }
            if sub_given("metrics_addr") {
                config.metrics.addr = a.metrics_addr;
            }
            if sub_given("metrics_allow_remote") {
                config.metrics.allow_remote = a.metrics_allow_remote;
            }
            a.http.resolve(&mut config.http, sub_given);
            let o = &config.orchestrator;
            a.batch_size = o.batch_size;
            a.poll_interval_ms = o.poll_interval_ms;
            a.silent_worker_secs = o.silent_worker_secs;
            a.metrics_addr = config.metrics.addr;
            a.metrics_allow_remote = config.metrics.allow_remote;
        }
        Command::Serve(a) => {
            if sub_given("addr") {
                config.api.addr = a.addr;
            }
            a.addr = config.api.addr;
            if sub_given("token_file") {
                config.api.token_file = a.token_file.clone();
            }
            a.token_file = config.api.token_file.clone();
            a.http.resolve(&mut config.http, sub_given);
        }
        _ => {}
    }

    g.database_url = config.database.url.clone();
    g.read_database_url = config.database.read_url.clone();
    g.log_format = match config.log.format {
        ConfigLogFormat::Text => LogFormat::Text,
        ConfigLogFormat::Json => LogFormat::Json,
    };
    // The standard OTEL_* variables are left to the telemetry setup, which ranks them as the
    // OpenTelemetry SDK does (and treats their paths the same way); an endpoint from the flag,
    // LINEQ_TELEMETRY_OTLP_ENDPOINT or the file is passed on.
    let from_otel_env = !given("otlp_endpoint")
        && !env
            .iter()
            .any(|(k, v)| k == "LINEQ_TELEMETRY_OTLP_ENDPOINT" && !v.is_empty())
        && env.iter().any(|(k, v)| {
            (k == "OTEL_EXPORTER_OTLP_ENDPOINT" || k == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                && !v.is_empty()
        });
    g.otlp_endpoint = if from_otel_env {
        None
    } else {
        config.telemetry.otlp_endpoint.clone()
    };
    g.effective = config;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::*;

    fn resolved(args: &[&str], file: Option<&str>, env: &[(&str, &str)]) -> anyhow::Result<Cli> {
        let dir = std::env::temp_dir().join(format!("lineq-config-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir)?;
        let mut argv: Vec<String> = vec!["lineq".into()];
        if let Some(text) = file {
            let path = dir.join("lineq.toml");
            std::fs::write(&path, text)?;
            argv.push("--config".into());
            argv.push(path.display().to_string());
        }
        argv.extend(args.iter().map(|s| s.to_string()));
        let matches = Cli::command().try_get_matches_from(argv)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let result = resolve_with(&mut cli, &matches, env);
        let _ = std::fs::remove_dir_all(&dir);
        result.map(|()| cli)
    }

    #[test]
    fn help_defaults_are_the_config_defaults() {
        let cli = resolved(&["worker"], None, &[]).unwrap();
        let Command::Worker(a) = &cli.command else {
            unreachable!()
        };
        let d = Config::default();
        assert_eq!(cli.global.effective, d);
        // What clap alone would have parsed, defaults included.
        let raw = Cli::try_parse_from(["lineq", "worker"]).unwrap();
        let Command::Worker(r) = raw.command else {
            unreachable!()
        };
        assert_eq!(
            (
                r.namespace,
                r.concurrency,
                r.batch_size,
                r.visibility_timeout_secs
            ),
            (
                a.namespace.clone(),
                a.concurrency,
                a.batch_size,
                a.visibility_timeout_secs
            )
        );
        assert_eq!(
            (
                r.shutdown_grace_secs,
                r.poll_interval_ms,
                r.max_deliveries,
                r.heartbeat_secs
            ),
            (
                a.shutdown_grace_secs,
                a.poll_interval_ms,
                a.max_deliveries,
                a.heartbeat_secs
            )
        );
        let raw = Cli::try_parse_from(["lineq", "orchestrator"]).unwrap();
        let Command::Orchestrator(o) = raw.command else {
            unreachable!()
        };
        assert_eq!(
            (o.batch_size, o.poll_interval_ms, o.silent_worker_secs),
            (
                d.orchestrator.batch_size,
                d.orchestrator.poll_interval_ms,
                d.orchestrator.silent_worker_secs
            )
        );
        let raw = Cli::try_parse_from(["lineq", "serve"]).unwrap();
        let Command::Serve(s) = raw.command else {
            unreachable!()
        };
        assert_eq!(s.addr, d.api.addr);
        let h = &s.http;
        assert_eq!(
            (
                h.http_header_timeout_secs,
                h.http_request_timeout_secs,
                h.http_idle_timeout_secs,
                h.http_max_connections
            ),
            (
                d.http.header_timeout_secs,
                d.http.request_timeout_secs,
                d.http.idle_timeout_secs,
                d.http.max_connections
            )
        );
        assert_eq!(
            lineq_api::http::HttpLimits::default(),
            h.limits().expect("the defaults are valid")
        );
    }

    #[test]
    fn worker_flags_beat_env_beat_file() {
        let file = "[worker]\nconcurrency = 3\nbatch_size = 7\nmax_deliveries = 9\ncommands = { a = \"echo file\", b = \"echo b\" }\n[metrics]\naddr = \"127.0.0.1:9101\"\n";
        let env = [
            ("LINEQ_WORKER_BATCH_SIZE", "8"),
            ("LINEQ_WORKER_CONCURRENCY", "4"),
        ];
        let cli = resolved(
            &[
                "worker",
                "--concurrency",
                "5",
                "--command",
                "a=echo flag",
                "--metrics-addr",
                "127.0.0.1:9200",
            ],
            Some(file),
            &env,
        )
        .unwrap();
        let Command::Worker(a) = &cli.command else {
            unreachable!()
        };
        assert_eq!(a.concurrency, 5, "flag over env over file");
        assert_eq!(a.batch_size, 8, "env over file");
        assert_eq!(a.max_deliveries, 9, "file over default");
        assert_eq!(a.poll_interval_ms, 1000, "default");
        assert_eq!(a.commands, vec!["a=echo flag", "b=echo b"]);
        assert_eq!(a.metrics_addr, Some("127.0.0.1:9200".parse().unwrap()));
        assert_eq!(cli.global.effective.worker.concurrency, 5);
    }

    #[test]
    fn a_flag_equal_to_its_default_still_wins() {
        let cli = resolved(
            &["orchestrator", "--batch-size", "100"],
            Some("[orchestrator]\nbatch_size = 5\nsilent_worker_secs = 4\n"),
            &[],
        )
        .unwrap();
        let Command::Orchestrator(o) = &cli.command else {
            unreachable!()
        };
        assert_eq!((o.batch_size, o.silent_worker_secs), (100, 4));
    }

    #[test]
    fn global_flags_before_or_after_the_subcommand() {
        let env = [("DATABASE_URL", "postgres://env/db")];
        for args in [
            &["--database-url", "postgres://flag/db", "config", "show"][..],
            &["config", "show", "--database-url", "postgres://flag/db"][..],
        ] {
            let cli = resolved(
                args,
                Some("[database]\nurl = \"postgres://file/db\"\n"),
                &env,
            )
            .unwrap();
            assert_eq!(
                cli.global.database_url.as_deref(),
                Some("postgres://flag/db")
            );
        }
        // The read replica's URL layers the same way: flag, then environment, then file.
        let file = Some("[database]\nread_url = \"postgres://file/replica\"\n");
        let cli = resolved(&["config", "show"], file, &[]).unwrap();
        assert_eq!(
            cli.global.read_database_url.as_deref(),
            Some("postgres://file/replica")
        );
        let read_env = [("LINEQ_READ_DATABASE_URL", "postgres://env/replica")];
        let cli = resolved(&["config", "show"], file, &read_env).unwrap();
        assert_eq!(
            cli.global.read_database_url.as_deref(),
            Some("postgres://env/replica")
        );
        let args = ["list", "--read-database-url", "postgres://flag/replica"];
        let cli = resolved(&args, file, &read_env).unwrap();
        assert_eq!(
            cli.global.read_database_url.as_deref(),
            Some("postgres://flag/replica")
        );
        assert_eq!(
            cli.global.effective.database.read_url.as_deref(),
            Some("postgres://flag/replica")
        );
        let cli = resolved(
            &["config", "show"],
            Some("[database]\nurl = \"postgres://file/db\"\n"),
            &env,
        )
        .unwrap();
        assert_eq!(
            cli.global.database_url.as_deref(),
            Some("postgres://env/db")
        );
    }
}
