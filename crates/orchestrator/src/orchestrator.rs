//! The orchestrator process: a loop that processes result batches as they arrive, and the
//! schedule loop beside it ([`crate::schedule::fire`]).

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use lineq_core::error::Result;
use lineq_core::ids::node_name;
use lineq_core::queue;
use lineq_core::wakeup::Wakeup;

use crate::results::{BatchReport, process_batch};

/// Builds an [`Orchestrator`].
#[derive(Debug, Clone)]
pub struct OrchestratorBuilder {
    pool: PgPool,
    batch_size: i32,
    poll_interval: Duration,
    visibility_timeout_secs: i32,
    node_name: String,
    silent_worker_after: Duration,
}

impl OrchestratorBuilder {
    /// Results processed per transaction (default 100).
    pub fn batch_size(mut self, n: i32) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Longest wait between looks at the results queue when no notification arrives
    /// (default 1 s).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// A worker without a heartbeat for this long is silent, and its steps are released for
    /// other workers (default 30 s; see [`crate::maintenance::sweeper`]).
    pub fn silent_worker_after(mut self, d: Duration) -> Self {
        self.silent_worker_after = d;
        self
    }

    /// The orchestrator.
    pub fn build(self) -> Orchestrator {
        Orchestrator { cfg: self }
    }
}

/// Processes results until told to stop.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    cfg: OrchestratorBuilder,
}

impl Orchestrator {
    /// A builder with defaults.
    pub fn builder(pool: PgPool) -> OrchestratorBuilder {
        OrchestratorBuilder {
            pool,
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
            visibility_timeout_secs: 30,
            node_name: node_name(),
            silent_worker_after: Duration::from_secs(30),
        }
    }

    /// Processes one batch now (for tests and tools).
    pub async fn tick(&self) -> Result<BatchReport> {
        process_batch(
            &self.cfg.pool,
            &self.cfg.node_name,
            self.cfg.batch_size,
            self.cfg.visibility_timeout_secs,
        )
        .await
    }

    /// Sends the throttled steps that have room now; returns when to pump again (at the next
    /// delay or rate window due, at most a poll interval away).
    async fn pump(&self) -> Instant {
        let later = Instant::now() + self.cfg.poll_interval;
        match crate::flow::pump(&self.cfg.pool, &self.cfg.node_name, None).await {
            Ok(p) => {
                if p.sent > 0 {
                    tracing::debug!(sent = p.sent, "flow pump sent throttled steps");
                }
                let due = p.next_due.map(|t| {
                    let ms = (t - chrono::Utc::now()).num_milliseconds().max(0);
                    Instant::now() + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
                });
                due.map_or(later, |d| d.min(later))
            }
            Err(e) => {
                tracing::warn!(error = %e, "flow pump failed; trying again");
                later
            }
        }
    }

    /// Runs until `shutdown` is cancelled; the batch in hand is finished first.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let wakeup = Wakeup::listen(
            &self.cfg.pool,
            vec![queue::results_queue()],
            shutdown.child_token(),
        )
        .await?;
        tracing::info!(node = %self.cfg.node_name, "orchestrator started");
        let schedules = {
            let looper = crate::schedule::fire::ScheduleLoop::new(
                self.cfg.pool.clone(),
                self.cfg.node_name.clone(),
            );
            let stop = shutdown.child_token();
            tokio::spawn(async move { looper.run(stop).await })
        };
        let mut backoff = Duration::from_millis(100);
        let mut fleet = crate::maintenance::sweeper::Sweeper::new(self.cfg.silent_worker_after);
        // When the flow pump runs next without a batch asking for it (see crate::flow).
        let mut pump_at = Instant::now();
        while !shutdown.is_cancelled() {
            fleet.tick(&self.cfg.pool).await;
            match self.tick().await {
                Ok(report) => {
                    backoff = Duration::from_millis(100);
                    if report.read > 0 {
                        tracing::debug!(?report, "processed results");
                    }
                    if Instant::now() >= pump_at {
                        pump_at = self.pump().await;
                    } else if !report.flow_keys.is_empty() {
                        // Slots of these keys may have freed: their next steps go now.
                        if let Err(e) = crate::flow::pump(
                            &self.cfg.pool,
                            &self.cfg.node_name,
                            Some(&report.flow_keys),
                        )
                        .await
                        {
                            tracing::warn!(error = %e, "flow pump failed; the timer pumps again");
                        }
                    }
                    if report.read as i32 >= self.cfg.batch_size {
                        continue; // more may be waiting
                    }
                    let wait = self
                        .cfg
                        .poll_interval
                        .min(pump_at.saturating_duration_since(Instant::now()));
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = wakeup.wait(wait) => {}
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "result batch failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        // A fire in progress finishes (or rolls back) before the process exits.
        if let Err(e) = schedules.await {
            tracing::error!(error = %e, "the schedule loop ended abnormally");
        }
        // The spans of what it ended, before the exporter is flushed.
        crate::spans::wait_for_exports().await;
        tracing::info!("orchestrator stopped");
        Ok(())
    }
}
