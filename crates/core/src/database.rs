//! The connection pool.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::error::{Error, Result};
use crate::validation::ValidationError;

/// A pooled connection idle at least this long is pinged before it is handed out.
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// How to reach PostgreSQL.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// A `postgres://` URL.
    pub url: String,
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long to wait for a free connection (and for the first connect).
    pub acquire_timeout: Duration,
    /// The `application_name` shown in `pg_stat_activity`.
    pub application_name: String,
}

impl DatabaseConfig {
    /// A config for `url` with lineq's defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            application_name: "lineq".to_string(),
        }
    }

    /// Sets the pool size.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Sets the application name.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Parsed connection options.
    ///
    /// Every connection plans each statement for its own parameters
    /// (`plan_cache_mode = force_custom_plan`). lineq's statements are prepared once per
    /// connection, and PostgreSQL would otherwise settle on a generic plan after five runs, costed
    /// for the table sizes of that moment: a plan made while `steps` or a queue held a few hundred
    /// rows (a fresh database, a quiet hour) scans the whole table once that table has grown,
    /// and keeps doing so until the next ANALYZE. `lineq bench` measured it: a batch update of 100
    /// steps took 36 ms instead of 2, and throughput halved. Custom plans cost a planning pass
    /// per statement and follow the tables' size as it changes; the price, measured, is about
    /// 0.3 ms of pickup latency and 7 ms per 4-step workflow.
    ///
    /// JIT compilation is off (`jit = off`): lineq's hot statements touch at most a batch of rows,
    /// and PostgreSQL compiles any plan whose estimate passes `jit_above_cost`, which a
    /// statement over a table not yet analysed can do (a 100-execution step read compiled 12
    /// functions, 13 ms, to run 1 ms of work). Pools made by hand for a `Worker` or an
    /// `Orchestrator` should set both (see docs/design-notes.md).
    pub fn connect_options(&self) -> Result<PgConnectOptions> {
        let opts = PgConnectOptions::from_str(&self.url).map_err(|e| {
            Error::Validation(ValidationError::new(
                "database_url",
                format!("not a PostgreSQL URL: {e}"),
            ))
        })?;
        Ok(opts
            .application_name(&self.application_name)
            .options([("plan_cache_mode", "force_custom_plan"), ("jit", "off")]))
    }

    /// Opens the pool and checks that the server answers.
    ///
    /// The check is one connection opened directly (then closed), so a server that refuses
    /// (wrong port, wrong password, no such database) fails at once with PostgreSQL's or the
    /// operating system's own reason. A pool's first connect would instead retry such errors
    /// until its acquire timeout and then report only that it timed out. A server that does not
    /// answer at all fails after [`DatabaseConfig::acquire_timeout`].
    ///
    /// A connection handed out is pinged first only if it sat idle for a second or more
    /// ([`PING_IDLE_AFTER`]). sqlx pings on every acquire by default, a round trip on the
    /// critical path of every claim, report and result batch; a connection in use by a busy
    /// loop was working milliseconds ago. sqlx also pings a connection when it comes back to the
    /// pool (off that path) and drops it if it is broken.
    pub async fn connect(&self) -> Result<PgPool> {
        let opts = self.connect_options()?;
        let first = tokio::time::timeout(self.acquire_timeout, PgConnection::connect_with(&opts))
            .await
            .map_err(|_| {
                Error::Database(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no answer from {}:{} within {} s",
                        opts.get_host(),
                        opts.get_port(),
                        self.acquire_timeout.as_secs_f64()
                    ),
                )))
            })??;
        // Closing politely keeps the server's log free of "unexpected EOF".
        let _ = first.close().await;
        Ok(self.pool_on(opts))
    }

    /// The pool without connecting: its first connection is opened by its first statement.
    /// For a pool that may never be used (the primary behind a replica's reads, asked only
    /// when the replica has not yet replayed what it is asked for).
    pub fn connect_lazy(&self) -> Result<PgPool> {
        Ok(self.pool_on(self.connect_options()?))
    }

    fn pool_on(&self, opts: PgConnectOptions) -> PgPool {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(opts)
    }
}

/// Closes `pool` and waits, at most `within`, until none of its connections is open.
///
/// `PgPool::close` can return while a connection is still on its way back to the pool (a
/// query future dropped mid-flight, a `LISTEN` connection being released): sqlx then pings it
/// on release. Before the server stops (a throwaway cluster at the end of a run), waiting for
/// it keeps that ping from meeting a server that is terminating its connections.
pub async fn close(pool: &PgPool, within: Duration) {
    pool.close().await;
    let deadline = tokio::time::Instant::now() + within;
    while pool.size() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
