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
    /// The caller may not do this (a worker reporting a message it does not hold, a heartbeat
    /// for another worker's registration).
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(sqlx::Error),
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

/// The SQLSTATEs of lineq's SQL interface (docs/sql-api.md). Class `LQ` is lineq's own, so a
/// client can tell lineq's refusals from PostgreSQL's.
pub mod sqlstate {
    /// Bad input: the message names the field and the limit; the field is also in the error's
    /// `COLUMN` field.
    pub const INVALID_INPUT: &str = "LQ001";
    /// Something asked for by id does not exist.
    pub const NOT_FOUND: &str = "LQ002";
    /// An expected version did not match (optimistic concurrency).
    pub const CONFLICT: &str = "LQ003";
    /// Not allowed in the current state (tags of a finished execution, a child of a finished
    /// tree).
    pub const INVALID_STATE: &str = "LQ004";
    /// A namespace without a step queue.
    pub const UNKNOWN_NAMESPACE: &str = "LQ005";
    /// The caller may not do this (not its claim, not its registration).
    pub const NOT_PERMITTED: &str = "LQ006";
}

impl From<sqlx::Error> for Error {
    /// Maps the SQL interface's SQLSTATEs (class `LQ`) to typed errors; anything else stays a
    /// database error.
    fn from(e: sqlx::Error) -> Self {
        let sqlx::Error::Database(db) = &e else {
            return Error::Database(e);
        };
        let Some(code) = db.code() else {
            return Error::Database(e);
        };
        let message = db.message().to_string();
        let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
        let detail = |key: &str| -> Option<String> {
            pg.and_then(|p| p.detail()).and_then(|d| {
                d.split(';')
                    .filter_map(|kv| kv.trim().split_once('='))
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
            })
        };
        match code.as_ref() {
            sqlstate::INVALID_INPUT => {
                let field = pg.and_then(|p| p.column()).unwrap_or("input").to_string();
                // The message is "<field>: <reason>"; keep the reason.
                let reason = message
                    .strip_prefix(&format!("{field}: "))
                    .unwrap_or(&message)
                    .to_string();
                Error::Validation(ValidationError::named(field, reason))
            }
            sqlstate::NOT_FOUND => Error::NotFound {
                what: match detail("what").as_deref() {
                    Some("workflow") => "workflow",
                    Some("step") => "step",
                    Some("event") => "event",
                    Some("worker") => "worker",
                    Some("schedule") => "schedule",
                    _ => "execution",
                },
                id: detail("id").unwrap_or(message),
            },
            sqlstate::CONFLICT => Error::Conflict {
                // "execution 0190…": what, and which one when the detail names it.
                what: {
                    let what = detail("what").unwrap_or_else(|| "execution".into());
                    match detail("id") {
                        Some(id) => format!("{what} {id}"),
                        None => what,
                    }
                },
                expected: detail("expected")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_default(),
                actual: detail("actual")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_default(),
            },
            sqlstate::INVALID_STATE => Error::InvalidState(message),
            sqlstate::UNKNOWN_NAMESPACE => Error::UnknownNamespace {
                namespace: detail("namespace").unwrap_or(message),
            },
            sqlstate::NOT_PERMITTED => Error::NotPermitted(message),
            _ => Error::Database(e),
        }
    }
}
