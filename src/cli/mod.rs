//! The command line: parsing, dispatch, output formats and exit codes.

mod bench;
mod cancel;
mod chaos;
pub mod config;
mod demo;
mod dev;
mod dlq;
mod http;
mod inspect;
pub mod lineage;
mod list;
pub mod logging;
mod migrate;
mod namespace;
pub mod output;
mod prune;
mod render;
mod run;
mod schedule;
mod serve;
mod submit;
mod tags;
pub mod telemetry;
mod trace;
mod workers;
mod workflow;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sqlx::PgPool;

use lineq::DatabaseConfig;
use lineq_core::validation::ValidationError;
use lineq_read::ReadPool;
use lineq_read::pool::READ_APPLICATION_NAME;
use output::outln;

/// lineq — a distributed worker runtime on PostgreSQL message queues (PGMQ), with lineage you
/// can query.
///
/// Submit executions, run orchestrators and workers on any number of machines against one
/// PostgreSQL, and ask why a step ran and what it caused.
///
/// Exit codes: 0 success, 1 failure, 2 invalid input (nothing was written), 3 not found,
/// 4 conflict (someone else changed it first; read it again and retry).
#[derive(Debug, Parser)]
#[command(name = "lineq", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// PostgreSQL URL, e.g. postgres://user:pass@host:5432/db.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// A streaming replica of the database, for the read side: get, events, list, history,
    /// lineage, workers, and `serve`'s GETs and console pages. A read of one execution that
    /// the replica has not replayed yet is answered by the primary (--database-url); lists and
    /// lineage may lag by the replica's replay delay. Also database.read_url in the config file.
    #[arg(
        long,
        env = "LINEQ_READ_DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub read_database_url: Option<String>,
    /// Output format: human-readable text, or JSON for scripts.
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    pub format: Format,
    /// Log format (logs go to stderr). Also LINEQ_LOG_FORMAT or log.format in the config file
    /// (checked there, so a bad value is named by its variable).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log at info level even for one-shot commands (RUST_LOG or LINEQ_LOG override).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Export spans to this OTLP endpoint, e.g. http://localhost:4317 (gRPC), or
    /// http://localhost:4318 with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf. Default:
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT; with none, no spans.
    #[arg(long, global = true, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Configuration file (TOML). Precedence: flags, then LINEQ_<SECTION>_<KEY> variables, then
    /// this file, then defaults; `lineq config show` prints the result.
    #[arg(long, env = "LINEQ_CONFIG", global = true, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
    /// The effective configuration, once resolved (see `config::resolve`).
    #[arg(skip)]
    pub effective: lineq::config::Config,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For scripts.
    Json,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One compact line per event.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install PGMQ (as plain SQL) and apply lineq's migrations. Idempotent and safe to run from
    /// several processes at once. With --roles, also create the least-privilege roles.
    Migrate(migrate::MigrateArgs),
    /// Submit an execution: one step running HANDLER. Prints the execution id.
    Submit(submit::SubmitArgs),
    /// Show an execution and its steps.
    Get(inspect::GetArgs),
    /// List an execution's events in order, each with its parent (its lineage).
    Events(inspect::EventsArgs),
    /// Draw the lineage tree of an execution, event or correlation id (events with step,
    /// worker, attempt, time and duration; child executions nested), as text, JSON, DOT or
    /// Mermaid; `lineage check ID` proves the tree is whole.
    Lineage(lineage::LineageArgs),
    /// Find executions by tags, metadata, status, workflow, lineage and time (filters combine
    /// with AND), oldest first (or --newest-first), one page at a time.
    List(list::ListArgs),
    /// Set tags on a pending execution (KEY=VALUE...). A concurrent change makes it fail with a
    /// conflict instead of being lost.
    Tag(tags::TagArgs),
    /// Remove tags from a pending execution (KEY...).
    Untag(tags::UntagArgs),
    /// Show an execution's history: status, step and tag changes, with time and cause.
    History(tags::HistoryArgs),
    /// Serve the REST API (and its OpenAPI document at /openapi.json), the web console at / and
    /// Prometheus metrics at /metrics. Stops on SIGTERM/Ctrl-C.
    Serve(serve::ServeArgs),
    /// Run an orchestrator: processes results, finishes executions and fires due schedules.
    /// Stops on SIGTERM/Ctrl-C.
    Orchestrator(run::OrchestratorArgs),
    /// Run a worker: claims steps of a namespace and runs their handlers. Stops on
    /// SIGTERM/Ctrl-C, letting running handlers finish within a grace period.
    Worker(run::WorkerArgs),
    /// Manage namespaces (each is a step queue that a pool of workers serves).
    #[command(subcommand)]
    Namespace(namespace::NamespaceCommand),
    /// Manage workflows: register versioned definitions from YAML, list them, show one.
    /// Registered versions are immutable; registering without a version adds the next one.
    #[command(subcommand)]
    Workflow(workflow::WorkflowCommand),
    /// Cron schedules: create one (an execution of a workflow or handler at every occurrence),
    /// list, show (with the next fire times), pause, resume, delete. Orchestrators fire them,
    /// each occurrence exactly once.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Cancel an execution and all its descendants: pending steps never run, running handlers
    /// see their cancellation token. Prints how many executions and steps were cancelled.
    Cancel(cancel::CancelArgs),
    /// The dead-letter queue: messages that could not be processed, with the reason.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Retention: remove root executions whose whole tree finished before the cutoff (with
    /// their steps and events) and archived queue messages older than it, in short batches.
    Prune(prune::PruneArgs),
    /// Print the trace of an execution, correlation id or event (its trace id is the root
    /// execution's correlation id) and its Jaeger URL (LINEQ_JAEGER_URL).
    Trace(trace::TraceArgs),
    /// Measure throughput and latency against raw PGMQ on the same database, in one run, and
    /// what a message and an execution cost in WAL and CPU (DATABASE_URL, or a throwaway
    /// PostgreSQL).
    Bench(bench::BenchArgs),
    /// Fault injection: run orchestrators and workers as processes, SIGKILL them while they
    /// work, and prove nothing was lost, duplicated or left without lineage.
    ///
    /// Needs a database it may migrate (DATABASE_URL), nothing else; it may be one in use. Its
    /// steps run in a namespace of its own (chaos_<run id>, served only by its workers), its
    /// executions carry the tag chaos_run=<run id>, and only they are judged.
    Chaos(chaos::ChaosArgs),
    /// The configuration: `config show` prints the effective one, secrets masked.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// List the workers registered in the database: alive, silent (no heartbeat for longer
    /// than --silent-worker-secs) or, with --all, stopped.
    Workers(workers::WorkersArgs),
    /// Run the whole system once, in-process, and print what happened. Uses DATABASE_URL, or a
    /// throwaway PostgreSQL from the machine's own binaries when it is unset or unreachable.
    Demo(demo::DemoArgs),
    /// Everything on this machine, for trying lineq: a local PostgreSQL (its data kept in
    /// --data-dir across runs), an orchestrator, workers and the REST API with the web console
    /// on 127.0.0.1. Prints the console's URL and a first `lineq submit`; Ctrl-C stops it all.
    Dev(dev::DevArgs),
}

impl Command {
    /// Commands that run until stopped log at info level by default.
    pub fn is_long_running(&self) -> bool {
        matches!(
            self,
            Command::Orchestrator(_)
                | Command::Worker(_)
                | Command::Migrate(_)
                | Command::Serve(_)
                | Command::Dev(_)
        )
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Migrate(a) => migrate::run(&connect_sized(g, 5).await?, g.format, a).await,
        Command::Submit(a) => {
            let silent = g.effective.orchestrator.silent_worker_secs as f64;
            submit::run(&connect(g).await?, g.format, a, silent).await
        }
        Command::Get(a) => {
            let silent = g.effective.orchestrator.silent_worker_secs;
            inspect::get(&connect_read(g).await?, g.format, a, silent).await
        }
        Command::Events(a) => inspect::events(&connect_read(g).await?, g.format, a).await,
        Command::Lineage(a) => lineage::run(&connect_read(g).await?, g.format, a).await,
        Command::List(a) => list::run(&connect_read(g).await?, g.format, a).await,
        Command::Tag(a) => tags::tag(&connect(g).await?, g.format, a).await,
        Command::Untag(a) => tags::untag(&connect(g).await?, g.format, a).await,
        Command::History(a) => tags::history(&connect_read(g).await?, g.format, a).await,
        Command::Serve(a) => serve::run(g, a).await,
        Command::Orchestrator(a) => {
            let stop = run::shutdown_on_signal();
            run::orchestrator(connect_sized(g, 5).await?, a, stop).await
        }
        Command::Worker(a) => {
            let stop = run::shutdown_on_signal();
            run::worker(connect_sized(g, a.pool_size()).await?, a, stop).await
        }
        Command::Namespace(c) => namespace::run(&connect(g).await?, g.format, c).await,
        Command::Workflow(c) => workflow::run(&connect(g).await?, g.format, c).await,
        Command::Schedule(c) => schedule::run(&connect(g).await?, g.format, c).await,
        Command::Bench(a) => bench::run(g.database_url.clone(), g.format, a).await,
        Command::Chaos(a) => {
            let url = g.database_url.clone().unwrap_or_default();
            chaos::run(&connect_sized(g, 10).await?, &url, g.format, a).await
        }
        Command::Cancel(a) => cancel::run(&connect(g).await?, g.format, a).await,
        Command::Dlq(c) => dlq::run(&connect(g).await?, g.format, c).await,
        Command::Prune(a) => prune::run(&connect(g).await?, g.format, a).await,
        Command::Trace(a) => trace::run(&connect(g).await?, g.format, a).await,
        Command::Demo(a) => demo::run(g.database_url.clone(), g.format, a).await,
        Command::Dev(a) => dev::run(a).await,
        Command::Config(config::ConfigCommand::Show) => config::show(&g.effective, g.format),
        Command::Workers(a) => workers::run(connect_read(g).await?.pool(), g, a).await,
    }
}

/// A pool for a command that reads or writes lineq's schema: refused with "run `lineq migrate`
/// first" when the database has none (instead of PostgreSQL's `relation ... does not exist`).
async fn connect(g: &GlobalArgs) -> anyhow::Result<PgPool> {
    let pool = connect_sized(g, 5).await?;
    require_schema(&pool).await?;
    Ok(pool)
}

/// Fails unless lineq's migrations have been applied to the database. Needs no privilege on
/// lineq's tables, so it works for every role.
async fn require_schema(pool: &PgPool) -> anyhow::Result<()> {
    let migrated: bool = sqlx::query_scalar(
        "SELECT to_regclass('lineq._sqlx_migrations') IS NOT NULL
            AND to_regclass('lineq.executions') IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .map_err(lineq::Error::from)?;
    if !migrated {
        anyhow::bail!("the database is not migrated: run `lineq migrate` first");
    }
    Ok(())
}

/// The pool of the read commands: the replica (`--read-database-url`), with the primary behind
/// it for a read by id the replica has not replayed yet (connected only if that happens); or
/// the primary's own pool when no replica is configured.
async fn connect_read(g: &GlobalArgs) -> anyhow::Result<ReadPool> {
    let Some(url) = g.read_database_url.as_deref() else {
        return Ok(ReadPool::primary(connect(g).await?));
    };
    let size = g.effective.database.max_connections.unwrap_or(5);
    let replica = DatabaseConfig::new(url)
        .max_connections(size)
        .application_name(READ_APPLICATION_NAME);
    let replica = open(&replica).await?;
    require_schema(&replica).await?;
    let primary = DatabaseConfig::new(primary_url(g)?)
        .max_connections(size)
        .connect_lazy()?;
    Ok(ReadPool::replica(replica, primary))
}

/// The primary's URL, or the error that says how to give it.
fn primary_url(g: &GlobalArgs) -> Result<&str, ValidationError> {
    g.database_url.as_deref().ok_or_else(|| {
        ValidationError::new(
            "database_url",
            "DATABASE_URL is not set; export it or pass --database-url",
        )
    })
}

async fn connect_sized(g: &GlobalArgs, size: u32) -> anyhow::Result<PgPool> {
    let config = DatabaseConfig::new(primary_url(g)?)
        .max_connections(g.effective.database.max_connections.unwrap_or(size));
    open(&config).await
}

/// Opens a pool, naming where it tried when it cannot (never the password).
async fn open(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    // Where it tried, so "connection refused" says to what (never the password).
    let target = config
        .connect_options()
        .map(|o| match o.get_socket() {
            Some(socket) => format!(" at {}", socket.display()),
            None => format!(" at {}:{}", o.get_host(), o.get_port()),
        })
        .unwrap_or_default();
    config
        .connect()
        .await
        .with_context(|| format!("cannot connect to PostgreSQL{target}"))
}

/// Maps an error to the exit code promised in `--help`.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(err) = cause.downcast_ref::<lineq::Error>() {
            if err.is_invalid_input() {
                return 2;
            }
            if matches!(err, lineq::Error::NotFound { .. }) {
                return 3;
            }
            if matches!(err, lineq::Error::Conflict { .. }) {
                return 4;
            }
        }
        if cause.downcast_ref::<ValidationError>().is_some()
            || cause.downcast_ref::<lineq::config::ConfigError>().is_some()
        {
            return 2;
        }
    }
    1
}

/// Prints `value` as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Parses an execution id argument, naming the field when it is not a UUID.
pub fn parse_id(field: &'static str, s: &str) -> Result<uuid::Uuid, ValidationError> {
    uuid::Uuid::parse_str(s.trim())
        .map_err(|e| ValidationError::new(field, format!("{s:?} is not a UUID: {e}")))
}
