//! `lineq dev`: everything on this machine in one process, for trying lineq out — a local
//! PostgreSQL from the machine's own binaries whose data directory survives restarts, the
//! migrations, an orchestrator, workers (the built-ins and `--command` handlers), and the REST
//! API with the web console on 127.0.0.1. Stops everything, the PostgreSQL included, on Ctrl-C
//! or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use lineq::{CommandSpec, DatabaseConfig, Orchestrator, Worker};
use lineq_testkit::local_postgres::{LocalPostgres, LocalPostgresOptions};

use super::output::outln;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the local PostgreSQL keeps its data; created on first use and kept across runs.
    #[arg(
        long,
        env = "LINEQ_DEV_DIR",
        default_value = ".lineq-dev",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// Address of the API and console: loopback only (there is no token).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Workers to run in-process.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// A command handler, as `lineq worker --command NAME=COMMAND` (repeatable).
    #[arg(long = "command", value_name = "NAME=COMMAND")]
    pub commands: Vec<String>,
    /// Jaeger's UI, for the console's "open in Jaeger" links.
    #[arg(long, env = "LINEQ_JAEGER_URL", value_name = "URL")]
    pub jaeger_url: Option<String>,
}

pub async fn run(a: DevArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.addr.ip().to_canonical().is_loopback(),
        "lineq dev serves without a token, so only on loopback (127.0.0.1 or [::1]), not {}",
        a.addr
    );
    let commands = a
        .commands
        .iter()
        .map(|c| CommandSpec::parse(c))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!("starting PostgreSQL in {} …", a.data_dir.display());
    let pg = LocalPostgres::start(LocalPostgresOptions {
        persistent_dir: Some(a.data_dir.clone()),
        ..Default::default()
    })
    .await
    .context("cannot start a local PostgreSQL (is PostgreSQL installed? set LINEQ_PG_BINDIR to its bin directory)")?;
    let result = run_on(&pg, &a, commands).await;
    eprintln!(
        "stopping PostgreSQL (its data stays in {})",
        a.data_dir.display()
    );
    pg.stop().await.context("stopping the local PostgreSQL")?;
    result
}

async fn run_on(pg: &LocalPostgres, a: &DevArgs, commands: Vec<CommandSpec>) -> anyhow::Result<()> {
    let pool = DatabaseConfig::new(pg.url())
        .max_connections(20)
        .connect()
        .await?;
    lineq::migrate(&pool).await.context("migrating")?;
    let listener = tokio::net::TcpListener::bind(a.addr)
        .await
        .with_context(|| format!("cannot listen on {}", a.addr))?;
    let local = listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let orchestrator = Orchestrator::builder(pool.clone())
        .poll_interval(Duration::from_millis(250))
        .build();
    let token = shutdown.clone();
    tasks.spawn(async move { orchestrator.run(token).await });
    for i in 1..=a.workers.max(1) {
        let mut builder = Worker::builder(pool.clone())
            .worker_id(format!("dev-worker-{i}-{}", std::process::id()))
            .poll_interval(Duration::from_millis(250));
        for c in &commands {
            builder = builder.command(c.clone());
        }
        let worker = builder.build();
        let token = shutdown.clone();
        tasks.spawn(async move { worker.run(token).await });
    }

    let app = super::serve::app(pool.clone().into(), None, a.jaeger_url.clone())?;
    outln!("lineq dev is running (Ctrl-C stops it)");
    outln!("  console      http://{local}/");
    outln!("  REST API     http://{local}/v1/executions  (OpenAPI at /openapi.json)");
    outln!("  database     {}", pg.url());
    outln!("  data kept in {}", a.data_dir.display());
    outln!("try:");
    outln!(
        "  DATABASE_URL={} lineq submit echo --input '{{\"hello\":\"lineq\"}}' --tag try=1",
        pg.url()
    );
    let stop = shutdown.clone();
    let served = lineq_api::rest::serve(
        listener,
        app,
        lineq_api::http::HttpLimits::default(),
        async move {
            super::serve::stop_signal().await;
            stop.cancel();
        },
    )
    .await;
    shutdown.cancel();
    while let Some(joined) = tasks.join_next().await {
        joined.context("a lineq dev task panicked")??;
    }
    lineq_core::database::close(&pool, Duration::from_secs(5)).await;
    served.context("serving the console")?;
    eprintln!("stopped");
    Ok(())
}
