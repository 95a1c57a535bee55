//! The two pools a server's handlers use: writes on the primary, reads on [`ReadPool`] (a
//! streaming replica when one is configured, else the primary too).

use sqlx::PgPool;

use lineq_read::ReadPool;

/// Where a handler's statements go: `write` for anything that changes state (submit, cancel,
/// tags, replay, schedules), `read` for the GETs and the console's pages.
#[derive(Debug, Clone)]
pub struct Pools {
    /// The primary.
    pub write: PgPool,
    /// Reads (with the primary behind them for a read by id the replica does not have yet).
    pub read: ReadPool,
}

impl Pools {
    /// Reads and writes on one pool (no replica).
    pub fn primary(pool: PgPool) -> Self {
        Self {
            read: ReadPool::primary(pool.clone()),
            write: pool,
        }
    }

    /// Writes on `primary`, reads on `replica`.
    pub fn with_replica(primary: PgPool, replica: PgPool) -> Self {
        Self {
            read: ReadPool::replica(replica, primary.clone()),
            write: primary,
        }
    }
}

impl From<PgPool> for Pools {
    fn from(pool: PgPool) -> Self {
        Self::primary(pool)
    }
}
