//! The worker's registration in `lineq.workers`, through the SQL interface: registered when it
//! starts (`lineq.worker_register`, which returns the secret token every later call presents),
//! heartbeated while it runs, marked stopped on a clean shutdown. `lineq workers` reads it, and
//! orchestrators release the steps of a worker whose heartbeat stopped
//! (`lineq_orchestrator::maintenance::sweeper`).
//!
//! A worker cannot claim without a registration, so registering is part of starting; a
//! heartbeat that fails is logged and tried again at the next beat.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use lineq_core::error::{Error, Result};

/// What a worker says about itself.
#[derive(Clone)]
pub(crate) struct Identity {
    pub worker_id: String,
    pub host: String,
    pub namespaces: Vec<String>,
    pub handlers: Vec<String>,
}

/// The token a registration got; shared with the claim loop, the reporter, the visibility
/// extension loop and the heartbeat, and replaced when the worker has to register again.
pub(crate) type Token = Arc<RwLock<String>>;

/// How long a registration must have been silent before the same worker id may register again
/// (a worker restarted with the id of one that was killed waits this long at most).
const TAKEOVER_AFTER: Duration = Duration::from_secs(30);

/// A registered worker's heartbeat. Dropping it stops the heartbeat (the row then goes
/// silent); [`Registration::stop`] also marks the row stopped.
pub(crate) struct Registration {
    pool: PgPool,
    worker_id: String,
    token: Token,
    task: JoinHandle<()>,
    stop: Option<DropGuard>,
}

impl Registration {
    /// Registers and starts the heartbeat, every `interval`. A worker id whose earlier
    /// registration is still alive is waited for (until it has been silent long enough), or
    /// until `shutdown`.
    pub(crate) async fn start(
        pool: &PgPool,
        me: Identity,
        token: Token,
        interval: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Self> {
        let mut warned = false;
        loop {
            match register(pool, &me).await {
                Ok(t) => {
                    *write(&token) = t;
                    break;
                }
                Err(Error::NotPermitted(why)) if !shutdown.is_cancelled() => {
                    if !warned {
                        tracing::warn!(worker_id = %me.worker_id, %why,
                            "waiting for the earlier registration of this worker id to go silent");
                        warned = true;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(heartbeat(
            pool.clone(),
            me.clone(),
            token.clone(),
            interval,
            stop.clone(),
        ));
        Ok(Self {
            pool: pool.clone(),
            worker_id: me.worker_id,
            token,
            task,
            stop: Some(stop.drop_guard()),
        })
    }

    /// Stops the heartbeat and marks the worker stopped: a clean exit, not a silent one.
    pub(crate) async fn stop(mut self) {
        drop(self.stop.take());
        let _ = (&mut self.task).await;
        let token = read(&self.token);
        let stopped = sqlx::query("SELECT lineq.worker_stop($1, $2)")
            .bind(&self.worker_id)
            .bind(&token)
            .execute(&self.pool)
            .await;
        if let Err(e) = stopped {
            tracing::warn!(error = %e, worker_id = %self.worker_id,
                "cannot mark the worker stopped in lineq.workers");
        }
    }
}

/// The token's current value.
pub(crate) fn read(token: &Token) -> String {
    token.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write(token: &Token) -> std::sync::RwLockWriteGuard<'_, String> {
    token.write().unwrap_or_else(|e| e.into_inner())
}

async fn register(pool: &PgPool, me: &Identity) -> Result<String> {
    Ok(sqlx::query_scalar(
        "SELECT lineq.worker_register($1, $2, $3, $4, $5, $6, 'rust', $7, $8, $9)",
    )
    .bind(&me.worker_id)
    .bind(&me.namespaces)
    .bind(&me.handlers)
    .bind(&me.host)
    .bind(i32::try_from(std::process::id()).unwrap_or(i32::MAX))
    .bind(env!("CARGO_PKG_VERSION"))
    .bind(TAKEOVER_AFTER.as_secs_f64())
    // Its spans: exported by itself while tracing is on, else by the orchestrator.
    .bind(lineq_core::telemetry::service_name())
    .bind(lineq_core::telemetry::enabled())
    .fetch_one(pool)
    .await?)
}

async fn heartbeat(
    pool: PgPool,
    me: Identity,
    token: Token,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        // A heartbeat also clears released_at: a worker that was released and came back (a
        // partition healed) is alive again, and must be released again if it goes silent again.
        let current = read(&token);
        let beat = sqlx::query("SELECT lineq.worker_heartbeat($1, $2)")
            .bind(&me.worker_id)
            .bind(&current)
            .execute(&pool)
            .await
            .map_err(Error::from);
        let result = match beat {
            // The registration is gone (deleted or stopped by hand): register again.
            Err(Error::NotPermitted(_)) => match register(&pool, &me).await {
                Ok(t) => {
                    *write(&token) = t;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            other => other.map(|_| ()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, worker_id = %me.worker_id, "worker heartbeat failed");
        }
    }
}
