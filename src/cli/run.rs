//! `lineq orchestrator` and `lineq worker`: long-running processes that stop cleanly on
//! SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use lineq::{CommandSpec, Orchestrator, Worker};
use lineq_api::http::HttpLimits;
use lineq_api::probes::{self, Role};
use lineq_core::validation::ValidationError;

#[derive(Debug, Args)]
pub struct OrchestratorArgs {
    /// Results processed per transaction.
    #[arg(long, default_value_t = 100)]
    pub batch_size: i32,
    /// Longest wait between looks at the results queue when no notification arrives (ms).
    #[arg(long, default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// A worker without a heartbeat for this many seconds is silent: the steps it held are
    /// released for other workers at once, instead of after their visibility timeout.
    #[arg(long, default_value_t = 30)]
    pub silent_worker_secs: u64,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address, e.g. 127.0.0.1:9100.
    /// No authentication: anyone who reaches it reads the queue, execution and worker counts
    /// (and the handler and namespace names in their labels). Anything but loopback needs
    /// --metrics-allow-remote.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Allow a --metrics-addr other machines can reach (e.g. 0.0.0.0:9100 for a Prometheus
    /// scraping from elsewhere); restrict who reaches it with a firewall or network policy.
    #[arg(long)]
    pub metrics_allow_remote: bool,
    #[command(flatten)]
    pub http: super::http::HttpArgs,
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
    /// Pass this variable of the worker's environment on to command handlers (repeatable).
    /// They get only PATH, HOME, LANG, LC_*, TZ, TMPDIR, the step's LINEQ_* variables and
    /// TRACEPARENT otherwise; the worker's DATABASE_URL and LINEQ_* settings are never passed.
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
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
    /// Seconds between heartbeats of the worker's row in lineq.workers; keep it well under the
    /// orchestrators' --silent-worker-secs.
    #[arg(long, default_value_t = 5)]
    pub heartbeat_secs: u64,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address, e.g. 127.0.0.1:9101.
    /// No authentication: anyone who reaches it reads the worker's counters (and the handler
    /// and namespace names in their labels). Anything but loopback needs
    /// --metrics-allow-remote.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Allow a --metrics-addr other machines can reach (e.g. 0.0.0.0:9101 for a Prometheus
    /// scraping from elsewhere); restrict who reaches it with a firewall or network policy.
    #[arg(long)]
    pub metrics_allow_remote: bool,
    #[command(flatten)]
    pub http: super::http::HttpArgs,
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
    let silent_worker_after = Duration::from_secs(a.silent_worker_secs);
    let metrics = MetricsListener::new(a.metrics_addr, a.metrics_allow_remote, &a.http)?;
    let probes = Probes::start(
        metrics,
        &pool,
        Role::Orchestrator {
            silent_worker_after,
        },
    )
    .await?;
    if !ensure_migrated(&pool, probes.is_some(), &stop).await? {
        return Probes::stop(probes).await;
    }
    let orchestrator = Orchestrator::builder(pool)
        .batch_size(a.batch_size)
        .poll_interval(Duration::from_millis(a.poll_interval_ms))
        .silent_worker_after(silent_worker_after)
        .build();
    let ran = orchestrator.run(stop).await;
    Probes::stop(probes).await?;
    ran?;
    Ok(())
}

pub async fn worker(pool: PgPool, a: WorkerArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let metrics = MetricsListener::new(a.metrics_addr, a.metrics_allow_remote, &a.http)?;
    let probes = Probes::start(metrics, &pool, Role::Worker).await?;
    if !ensure_migrated(&pool, probes.is_some(), &stop).await? {
        return Probes::stop(probes).await;
    }
    let mut builder = Worker::builder(pool)
        .namespace(&a.namespace)?
        .concurrency(a.concurrency)
        .batch_size(a.batch_size)
        .visibility_timeout(Duration::from_secs(a.visibility_timeout_secs))
        .shutdown_grace(Duration::from_secs(a.shutdown_grace_secs))
        .poll_interval(Duration::from_millis(a.poll_interval_ms))
        .max_deliveries(a.max_deliveries)
        .registration_heartbeat(Duration::from_secs(a.heartbeat_secs));
    for spec in &a.commands {
        builder = builder.command(CommandSpec::parse(spec)?.pass_env(&a.pass_env)?);
    }
    if let Some(id) = a.worker_id {
        builder = builder.worker_id(id);
    }
    let ran = builder.build().run(stop).await;
    Probes::stop(probes).await?;
    ran?;
    Ok(())
}

/// Fails when the database is not migrated — unless the probes are served: then the process is
/// managed (a `/readyz` answers 503 meanwhile) and waits for `lineq migrate` to be run, as a
/// deployment that starts everything at once expects. False when stopped while waiting.
async fn ensure_migrated(
    pool: &PgPool,
    wait: bool,
    stop: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut warned = false;
    loop {
        if lineq_migrate::is_migrated(pool).await? {
            return Ok(true);
        }
        if !wait {
            anyhow::bail!("the database is not migrated: run `lineq migrate` first");
        }
        if !warned {
            tracing::warn!(
                "the database is not migrated; waiting for `lineq migrate` (/readyz answers 503 meanwhile)"
            );
            warned = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Where and within which limits the metrics endpoint listens, checked before anything
/// connects.
struct MetricsListener {
    addr: SocketAddr,
    limits: HttpLimits,
}

impl MetricsListener {
    fn new(
        addr: Option<SocketAddr>,
        allow_remote: bool,
        http: &super::http::HttpArgs,
    ) -> Result<Option<Self>, ValidationError> {
        let Some(addr) = addr else {
            return Ok(None);
        };
        refuse_open_metrics(addr, allow_remote)?;
        Ok(Some(Self {
            addr,
            limits: http.limits()?,
        }))
    }
}

/// Refuses a metrics address other machines can reach unless it was asked for: the endpoint
/// has no authentication.
fn refuse_open_metrics(addr: SocketAddr, allow_remote: bool) -> Result<(), ValidationError> {
    if allow_remote || addr.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    Err(ValidationError::new(
        "metrics_addr",
        format!(
            "refusing to serve metrics on {addr}: the endpoint has no authentication and anyone who can reach it reads this process's metrics. \
             Listen on 127.0.0.1, or pass --metrics-allow-remote (metrics.allow_remote) and restrict access in the network"
        ),
    ))
}

/// The /metrics, /healthz and /readyz server of a running orchestrator or worker.
struct Probes {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Probes {
    /// Binds `addr` (an error when it is taken, before any work starts) and serves there.
    async fn start(
        listen: Option<MetricsListener>,
        pool: &PgPool,
        role: Role,
    ) -> anyhow::Result<Option<Self>> {
        let Some(MetricsListener { addr, limits }) = listen else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--metrics-addr)"))?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(probes::serve(
            listener,
            pool.clone(),
            role,
            limits,
            async move { until.cancelled().await },
        ));
        Ok(Some(Self { stop, task }))
    }

    /// Stops serving: after the orchestrator or worker has stopped, so /healthz answers
    /// through the whole graceful shutdown.
    async fn stop(this: Option<Self>) -> anyhow::Result<()> {
        if let Some(p) = this {
            p.stop.cancel();
            p.task.await?.context("metrics server failed")?;
        }
        Ok(())
    }
}
