//! Flow control's pump: sends the throttled steps whose keys have room now (a slot freed, a
//! delay passed, a new rate window began). The decisions are `lineq.flow_pump`'s (migration
//! `20261207000024_flow_control.sql`); orchestrators call it after a result batch that touched
//! steps with a flow key, after a cancel, and when the next delay or rate window is due.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use lineq_core::error::Result;

/// What one pump did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pumped {
    /// Steps sent.
    pub sent: i32,
    /// When a step waiting for its delay or for a rate window is next due.
    pub next_due: Option<DateTime<Utc>>,
}

/// Runs `lineq.flow_pump` in a transaction of its own: for `keys`, or with `None` for every
/// key with waiting steps (then `next_due` says when to run it again).
pub async fn pump(pool: &PgPool, node_name: &str, keys: Option<&[String]>) -> Result<Pumped> {
    let (sent, next_due): (i32, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT sent, next_due FROM lineq.flow_pump($1, $2)")
            .bind(node_name)
            .bind(keys)
            .fetch_one(pool)
            .await?;
    Ok(Pumped { sent, next_due })
}

/// At most `limit` steps with the same key run at once, across the fleet. The key is literal,
/// or a path into the execution: `tags.NAME`, `metadata.PATH` or `input.PATH` (one key per
/// value there: `tags.customer` limits each customer on its own).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    /// The key: literal, or `tags.NAME`, `metadata.PATH`, `input.PATH`.
    pub key: String,
    /// Steps with the key running at once (1 to 100,000).
    pub limit: u32,
}

impl ConcurrencyLimit {
    /// At most `limit` steps with `key` at once.
    pub fn new(key: impl Into<String>, limit: u32) -> Self {
        Self {
            key: key.into(),
            limit,
        }
    }
}

/// At most `limit` step starts per second (or minute) with the same key, across the fleet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The key, as for [`ConcurrencyLimit::key`]; a step has one key, so when it also has a
    /// concurrency limit both must name the same one.
    pub key: String,
    /// Starts per window (1 to 1,000,000).
    pub limit: u32,
    /// The window.
    #[serde(default)]
    pub per: RatePer,
}

impl RateLimit {
    /// At most `limit` starts with `key` per `per`.
    pub fn new(key: impl Into<String>, limit: u32, per: RatePer) -> Self {
        Self {
            key: key.into(),
            limit,
            per,
        }
    }
}

/// A rate limit's window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RatePer {
    /// Per second (windows start on whole seconds).
    #[default]
    Second,
    /// Per minute (windows start on whole minutes).
    Minute,
}

impl std::str::FromStr for RatePer {
    type Err = lineq_core::validation::ValidationError;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "second" => Ok(Self::Second),
            "minute" => Ok(Self::Minute),
            other => Err(lineq_core::validation::ValidationError::new(
                "rate_limit.per",
                format!("it must be \"second\" or \"minute\" (got {other:?})"),
            )),
        }
    }
}
