//! `lineq orchestrator` and `lineq worker`: long-running processes that stop cleanly on
//! SIGTERM or Ctrl-C.

use std::time::Duration;

use clap::Args;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use lineq::{CommandSpec, Orchestrator, Worker};

#[derive(Debug, Args)]
pub struct OrchestratorArgs {
    /// Results processed per transaction.
    #[arg(long, default_value_t = 100)]
    pub batch_size: i32,
    /// Longest wait between looks at the results queue when no notification arrives (ms).
    #[arg(long, default_value_t = 1000)]
    pub poll_interval_ms: u64,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The namespace to serve.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// How many handlers run at once.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Most messages claimed per read.
    #[arg(long, default_value_t = 50)]
    pub batch_size: usize,
    /// Declare a command handler: NAME='PROGRAM ARGS...' (repeatable). The program gets the
    /// input as JSON on stdin and prints its output as JSON on stdout. Only the worker's own
    /// flags can declare commands; a message can never choose what runs.
    #[arg(long = "command", value_name = "NAME=COMMAND")]
    pub commands: Vec<String>,
    /// Seconds a claimed message stays hidden from other workers (extended while it runs).
    #[arg(long, default_value_t = 30)]
    pub visibility_timeout_secs: u64,
    /// Seconds running handlers get to finish after SIGTERM before their steps are released.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Longest wait between looks at the queue when no notification arrives (ms).
    #[arg(long, default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// A message delivered more often than this without an outcome is dead-lettered as poison.
    #[arg(long, default_value_t = 5)]
    pub max_deliveries: i32,
    /// Worker id written in events (default: host-pid-random).
    #[arg(long)]
    pub worker_id: Option<String>,
}

impl WorkerArgs {
    /// Connections the worker needs: claims, reports, heartbeats, the listener, and headroom.
    pub fn pool_size(&self) -> u32 {
        u32::try_from(self.concurrency.min(20)).unwrap_or(20) / 4 + 5
    }
}

/// A token cancelled on SIGTERM or Ctrl-C. The handlers are registered before this returns
/// (not in the spawned task), so a signal that arrives while the process is still connecting
/// stops it cleanly instead of killing it.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    tokio::spawn(async move {
        #[cfg(unix)]
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

pub async fn orchestrator(
    pool: PgPool,
    a: OrchestratorArgs,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    ensure_migrated(&pool).await?;
    let orchestrator = Orchestrator::builder(pool)
        .batch_size(a.batch_size)
        .poll_interval(Duration::from_millis(a.poll_interval_ms))
        .build();
    orchestrator.run(stop).await?;
    Ok(())
}

pub async fn worker(pool: PgPool, a: WorkerArgs, stop: CancellationToken) -> anyhow::Result<()> {
    ensure_migrated(&pool).await?;
    let mut builder = Worker::builder(pool)
        .namespace(&a.namespace)?
        .concurrency(a.concurrency)
        .batch_size(a.batch_size)
        .visibility_timeout(Duration::from_secs(a.visibility_timeout_secs))
        .shutdown_grace(Duration::from_secs(a.shutdown_grace_secs))
        .poll_interval(Duration::from_millis(a.poll_interval_ms))
        .max_deliveries(a.max_deliveries);
    for spec in &a.commands {
        builder = builder.command(CommandSpec::parse(spec)?);
    }
    if let Some(id) = a.worker_id {
        builder = builder.worker_id(id);
    }
    builder.build().run(stop).await?;
    Ok(())
}

async fn ensure_migrated(pool: &PgPool) -> anyhow::Result<()> {
    if !lineq::shared::migrate::is_migrated(pool).await? {
        anyhow::bail!("the database is not migrated: run `lineq migrate` first");
    }
    Ok(())
}
