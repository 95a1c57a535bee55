//! Where the read side's statements go: a streaming replica when one is configured, else the
//! primary.
//!
//! A replica lags its primary by its replay delay (`pg_last_xact_replay_timestamp()` on the
//! replica), so an execution just submitted may not be there yet. A read of one thing by id
//! that finds nothing on the replica is asked again of the primary before it answers "not
//! found" ([`ReadPool::or_primary`]): a submit followed by a read of its id always sees it.
//! Lists and lineage may lag by the replay delay.

use std::future::Future;

use sqlx::PgPool;

use lineq_core::error::{Error, Result};

/// The `application_name` of lineq's connections to a read replica (`pg_stat_activity`).
pub const READ_APPLICATION_NAME: &str = "lineq-read";

/// The pool reads run on, with the primary to fall back on when it is a replica.
///
/// Writes never go through it: it is a separate type from the primary's `PgPool` so that a
/// reader of the code sees which statement goes where.
#[derive(Debug, Clone)]
pub struct ReadPool {
    /// Where reads go.
    read: PgPool,
    /// The primary, when `read` is a replica.
    primary: Option<PgPool>,
}

impl ReadPool {
    /// Reads on the primary itself (no replica configured).
    pub fn primary(pool: PgPool) -> Self {
        Self {
            read: pool,
            primary: None,
        }
    }

    /// Reads on `replica`, falling back on `primary` for a read by id that finds nothing.
    pub fn replica(replica: PgPool, primary: PgPool) -> Self {
        Self {
            read: replica,
            primary: Some(primary),
        }
    }

    /// The pool reads go to.
    pub fn pool(&self) -> &PgPool {
        &self.read
    }

    /// Whether reads go to a replica.
    pub fn is_replica(&self) -> bool {
        self.primary.is_some()
    }

    /// Runs `read` on the read pool; when that is a replica and `read` finds nothing there
    /// ([`Error::NotFound`]), runs it again on the primary, which has every committed write.
    /// Returns the result with the pool that answered, so follow-up reads of the same thing
    /// (an execution's steps after the execution) go where it was found.
    pub async fn or_primary<T, F, Fut>(&self, read: F) -> Result<(T, PgPool)>
    where
        F: Fn(PgPool) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        match read(self.read.clone()).await {
            Err(Error::NotFound { what, id }) => match &self.primary {
                Some(primary) => {
                    tracing::debug!(what, id, "not on the replica yet; asking the primary");
                    Ok((read(primary.clone()).await?, primary.clone()))
                }
                None => Err(Error::NotFound { what, id }),
            },
            other => other.map(|t| (t, self.read.clone())),
        }
    }
}
