//! The error type shared by every lineq library crate.

use crate::validation::ValidationError;

/// Result with the lineq [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in lineq's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input broke a rule; nothing was written.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The namespace has no step queue, so nothing could ever run the step.
    #[error(
        "unknown namespace '{namespace}': it has no step queue (start a worker with --namespace {namespace}, or run `lineq namespace create {namespace}`)"
    )]
    UnknownNamespace {
        /// The namespace asked for.
        namespace: String,
    },
    /// A row that was asked for by id does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// What kind of thing: "execution", "event", ...
        what: &'static str,
        /// The id that was looked up.
        id: String,
    },
    /// An optimistic-concurrency check failed: someone else changed the row first.
    #[error("conflict: {what} is at version {actual}, not {expected}; read it again and retry")]
    Conflict {
        /// What was being changed.
        what: String,
        /// The version the caller expected.
        expected: i64,
        /// The version found.
        actual: i64,
    },
    /// The change is not allowed in the current state.
    #[error("{0}")]
    InvalidState(String),
    /// A message taken from a queue could not be understood.
    #[error("malformed message: {0}")]
    MalformedMessage(String),
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// PGMQ refused or failed.
    #[error("queue error: {0}")]
    Queue(#[from] pgmq::PgmqError),
    /// JSON could not be (de)serialized.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// True when the error is the caller's fault (bad input), so a CLI exits with code 2 and a
    /// REST API answers 400.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::Validation(_) | Error::UnknownNamespace { .. } | Error::MalformedMessage(_)
        )
    }
}
