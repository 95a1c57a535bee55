//! The worker's row in `lineq.workers`: written when it starts, heartbeated while it runs,
//! marked stopped on a clean shutdown. `lineq workers` reads it, and orchestrators release the
//! steps of a worker whose heartbeat stopped (`lineq_orchestration::fleet`).
//!
//! Registration never stops a worker: if the table is missing or the database hiccups, the
//! worker logs it and goes on serving steps (only the fleet view suffers).

use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// What a worker says about itself.
pub(crate) struct Identity<'a> {
    pub worker_id: &'a str,
    pub host: &'a str,
    pub namespaces: Vec<String>,
    pub handlers: Vec<String>,
}

/// A registered worker's heartbeat. Dropping it stops the heartbeat (the row then goes
/// silent); [`Registration::stop`] also marks the row stopped.
pub(crate) struct Registration {
    pool: PgPool,
    worker_id: String,
    task: JoinHandle<()>,
    stop: Option<DropGuard>,
}

impl Registration {
    /// Registers (or re-registers, taking over a row with the same id) and starts the
    /// heartbeat, every `interval`.
    pub(crate) async fn start(pool: &PgPool, me: Identity<'_>, interval: Duration) -> Self {
        let row = Row {
            worker_id: me.worker_id.to_string(),
            host: me.host.to_string(),
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            namespaces: me.namespaces,
            handlers: me.handlers,
        };
        if let Err(e) = row.upsert(pool).await {
            tracing::warn!(error = %e, worker_id = %row.worker_id,
                "cannot register in lineq.workers; serving steps anyway");
        }
        let token = CancellationToken::new();
        let task = tokio::spawn(heartbeat(pool.clone(), row, interval, token.clone()));
        Self {
            pool: pool.clone(),
            worker_id: me.worker_id.to_string(),
            task,
            stop: Some(token.drop_guard()),
        }
    }

    /// Stops the heartbeat and marks the worker stopped: a clean exit, not a silent one.
    pub(crate) async fn stop(mut self) {
        drop(self.stop.take());
        let _ = (&mut self.task).await;
        let stopped = sqlx::query(
            "UPDATE lineq.workers SET stopped_at = clock_timestamp(), last_heartbeat_at = clock_timestamp()
             WHERE worker_id = $1",
        )
        .bind(&self.worker_id)
        .execute(&self.pool)
        .await;
        if let Err(e) = stopped {
            tracing::warn!(error = %e, worker_id = %self.worker_id,
                "cannot mark the worker stopped in lineq.workers");
        }
    }
}

struct Row {
    worker_id: String,
    host: String,
    pid: i32,
    namespaces: Vec<String>,
    handlers: Vec<String>,
}

impl Row {
    async fn upsert(&self, pool: &PgPool) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO lineq.workers (worker_id, host, pid, namespaces, version, handlers)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (worker_id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
                 namespaces = EXCLUDED.namespaces, version = EXCLUDED.version,
                 handlers = EXCLUDED.handlers, started_at = clock_timestamp(),
                 last_heartbeat_at = clock_timestamp(), stopped_at = NULL, released_at = NULL",
        )
        .bind(&self.worker_id)
        .bind(&self.host)
        .bind(self.pid)
        .bind(&self.namespaces)
        .bind(env!("CARGO_PKG_VERSION"))
        .bind(&self.handlers)
        .execute(pool)
        .await?;
        Ok(())
    }
}

async fn heartbeat(pool: PgPool, row: Row, interval: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        // Clearing released_at: a worker that was released and came back (a partition healed)
        // is alive again, and must be released again if it goes silent again.
        let beat = sqlx::query(
            "UPDATE lineq.workers SET last_heartbeat_at = clock_timestamp(), released_at = NULL
             WHERE worker_id = $1",
        )
        .bind(&row.worker_id)
        .execute(&pool)
        .await;
        let result = match beat {
            // The row is gone (deleted by hand): write it again.
            Ok(done) if done.rows_affected() == 0 => row.upsert(&pool).await,
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, worker_id = %row.worker_id, "worker heartbeat failed");
        }
    }
}
