//! Submission: an execution, its step, its first events and its first message, in one
//! transaction. A retried submit with the same idempotency key returns the first execution and
//! writes nothing.
//!
//! The work is done by the SQL function `lineq.submit_many` (migration 000013, docs/sql-api.md),
//! the same code any client in any language calls; this module checks requests client-side (a
//! fast path for bad input), makes the one call and, when tracing is on, exports the spans of
//! what committed. [`submit_in`] and [`submit_many_in`] submit inside the caller's transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::flow::{ConcurrencyLimit, RateLimit};
use lineq_core::error::{Error, Result};
use lineq_core::execution::Execution;
use lineq_core::tags::{Tags, check_metadata, check_tags};
use lineq_core::validation::{
    MAX_INPUT_BYTES, Namespace, ValidationError, check_idempotency_key, check_json_size,
    check_name, check_no_nul,
};

/// What to run. Build one with [`SubmitRequest::new`] and its setters.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// A registered workflow (`NAME` for its latest version, `NAME@VERSION`), or else a
    /// handler to run as a one-step execution.
    pub target: String,
    /// The handler's input.
    pub input: Value,
    /// The namespace whose workers run it (default `default`).
    pub namespace: String,
    /// The correlation id; a UUIDv7 is generated when `None`.
    pub correlation_id: Option<Uuid>,
    /// A key that makes a retried submit return the first execution.
    pub idempotency_key: Option<String>,
    /// Priority (higher first).
    pub priority: i32,
    /// Time limit for each attempt.
    pub timeout_ms: Option<u64>,
    /// Labels (see [`lineq_core::tags`] for the rules).
    pub tags: Tags,
    /// A JSON object of business attributes.
    pub metadata: Value,
    /// An explicit parent execution (it must exist); the new execution joins its tree.
    pub parent_execution_id: Option<Uuid>,
    /// Its first steps start no earlier than this (at most 365 days ahead).
    pub run_at: Option<DateTime<Utc>>,
    /// Or: its first steps start after this delay (at most 365 days).
    pub delay: Option<Duration>,
    /// A concurrency limit for its steps (a workflow step's own limit wins).
    pub concurrency: Option<ConcurrencyLimit>,
    /// A rate limit for its steps (a workflow step's own limit wins).
    pub rate_limit: Option<RateLimit>,
}

impl SubmitRequest {
    /// A request to run `target` (a workflow or handler name) with a `null` input in the
    /// `default` namespace.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            input: Value::Null,
            namespace: Namespace::default_namespace().to_string(),
            correlation_id: None,
            idempotency_key: None,
            priority: 0,
            timeout_ms: None,
            tags: Tags::new(),
            metadata: Value::Object(Default::default()),
            parent_execution_id: None,
            run_at: None,
            delay: None,
            concurrency: None,
            rate_limit: None,
        }
    }

    /// Starts its first steps no earlier than `at`.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Starts its first steps after `delay`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Limits how many of its steps (and of every other step with the same key) run at once.
    pub fn concurrency(mut self, limit: ConcurrencyLimit) -> Self {
        self.concurrency = Some(limit);
        self
    }

    /// Limits how many of its steps (and of every other step with the same key) start per
    /// second or minute.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Sets the priority: within a namespace, ready steps of higher priority are claimed
    /// first (-1,000,000 to 1,000,000 order; beyond that they order as the bound).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the input.
    pub fn input(mut self, input: Value) -> Self {
        self.input = input;
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the time limit for each attempt.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Sets the metadata object.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets an explicit parent execution.
    pub fn parent(mut self, execution_id: Uuid) -> Self {
        self.parent_execution_id = Some(execution_id);
        self
    }

    fn validate(&self) -> Result<Namespace> {
        check_tags(&self.tags)?;
        check_metadata(&self.metadata)?;
        let name = self
            .target
            .split_once('@')
            .map_or(self.target.as_str(), |(n, _)| n);
        check_name("handler", name)?;
        let ns = Namespace::new(&self.namespace)?;
        check_json_size("input", &self.input, MAX_INPUT_BYTES)?;
        check_no_nul("input", &self.input)?;
        if let Some(key) = &self.idempotency_key {
            check_idempotency_key(key)?;
        }
        if self.timeout_ms == Some(0) {
            return Err(ValidationError::new("timeout_ms", "it must be at least 1").into());
        }
        if self.run_at.is_some() && self.delay.is_some() {
            return Err(ValidationError::new("run_at", "give run_at or delay_ms, not both").into());
        }
        if let Some(c) = &self.concurrency {
            if c.limit == 0 || c.limit > 100_000 {
                return Err(ValidationError::new(
                    "concurrency.limit",
                    format!(
                        "it must be a whole number from 1 to 100000 (got {})",
                        c.limit
                    ),
                )
                .into());
            }
        }
        if let Some(r) = &self.rate_limit {
            if r.limit == 0 || r.limit > 1_000_000 {
                return Err(ValidationError::new(
                    "rate_limit.limit",
                    format!(
                        "it must be a whole number from 1 to 1000000 (got {})",
                        r.limit
                    ),
                )
                .into());
            }
        }
        Ok(ns)
    }
}

impl From<&str> for SubmitRequest {
    fn from(target: &str) -> Self {
        SubmitRequest::new(target)
    }
}

impl From<String> for SubmitRequest {
    fn from(target: String) -> Self {
        SubmitRequest::new(target)
    }
}

/// The result of a submit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Submitted {
    /// The execution (the first one, for a repeated idempotency key).
    pub execution: Execution,
    /// False when an execution with the same idempotency key already existed.
    pub created: bool,
}

/// Submits `req`: validates it, resolves the target (a registered workflow, else a handler run
/// as one step), then writes the execution, its steps, `execution_started`,
/// `workflow_initialized`, the first steps' `step_enqueued` and their messages, all in one
/// transaction. The work is done by the SQL function `lineq.submit_many` (docs/sql-api.md).
pub async fn submit(pool: &PgPool, node_name: &str, req: SubmitRequest) -> Result<Submitted> {
    let mut out = submit_many(pool, node_name, vec![req]).await?;
    out.pop()
        .ok_or_else(|| Error::InvalidState("submit produced no execution".into()))
}

/// Submits many executions in ONE transaction with one statement: all are written or none is.
/// Every request is validated first; an error names the request by its position (from 0).
/// Results come back in request order.
pub async fn submit_many(
    pool: &PgPool,
    node_name: &str,
    reqs: Vec<SubmitRequest>,
) -> Result<Vec<Submitted>> {
    check_all(&reqs)?;
    let mut tx = pool.begin().await?;
    let out = call_submit_many(&mut tx, node_name, &reqs).await?;
    // No span ends at a submission: the execution's and its steps' spans are exported when
    // they end, by the orchestrator that ends them (spans.rs).
    tx.commit().await?;
    Ok(out)
}

/// Submits `req` inside the caller's transaction (or on a bare connection, where the statement
/// commits at once): the execution exists exactly when that transaction commits, and a
/// rollback leaves no execution, event or message behind.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> lineq_core::error::Result<()> {
/// use lineq_orchestrator::submit::{SubmitRequest, submit_in};
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
/// let s = submit_in(&mut tx, "shop", SubmitRequest::new("ship_order")).await?;
/// tx.commit().await?;
/// # let _ = s; Ok(()) }
/// ```
///
/// Spans of the events it writes are not exported (only the caller knows whether they
/// commit); the execution's later spans are, under the same trace.
pub async fn submit_in(
    conn: &mut PgConnection,
    node_name: &str,
    req: SubmitRequest,
) -> Result<Submitted> {
    let mut out = submit_many_in(conn, node_name, vec![req]).await?;
    out.pop()
        .ok_or_else(|| Error::InvalidState("submit produced no execution".into()))
}

/// [`submit_many`] inside the caller's transaction (see [`submit_in`]).
pub async fn submit_many_in(
    conn: &mut PgConnection,
    node_name: &str,
    reqs: Vec<SubmitRequest>,
) -> Result<Vec<Submitted>> {
    check_all(&reqs)?;
    call_submit_many(conn, node_name, &reqs).await
}

/// The client-side checks: a fast path that saves a round trip for bad input. The SQL function
/// checks the same rules again and is the authority.
fn check_all(reqs: &[SubmitRequest]) -> Result<()> {
    for (i, r) in reqs.iter().enumerate() {
        r.validate().map_err(|e| at_position(reqs.len(), i, e))?;
    }
    Ok(())
}

/// A request as `lineq.submit_many` reads it.
#[derive(serde::Serialize)]
struct WireRequest<'a> {
    target: &'a str,
    input: &'a Value,
    namespace: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    priority: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    tags: &'a Tags,
    metadata: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_execution_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<&'a ConcurrencyLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<&'a RateLimit>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// A row of `lineq.submit_many`: the execution and whether this call created it.
#[derive(sqlx::FromRow)]
struct SubmittedRow {
    #[sqlx(flatten)]
    execution: Execution,
    created: bool,
}

/// One statement: `lineq.submit_many` does the checks, the resolution and the writes.
async fn call_submit_many(
    conn: &mut PgConnection,
    node_name: &str,
    reqs: &[SubmitRequest],
) -> Result<Vec<Submitted>> {
    if reqs.is_empty() {
        return Ok(Vec::new());
    }
    let wire: Vec<WireRequest<'_>> = reqs
        .iter()
        .map(|r| WireRequest {
            target: &r.target,
            input: &r.input,
            namespace: &r.namespace,
            correlation_id: r.correlation_id,
            idempotency_key: r.idempotency_key.as_deref(),
            priority: r.priority,
            timeout_ms: r.timeout_ms,
            tags: &r.tags,
            metadata: &r.metadata,
            parent_execution_id: r.parent_execution_id,
            run_at: r
                .run_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            delay_ms: r
                .delay
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            concurrency: r.concurrency.as_ref(),
            rate_limit: r.rate_limit.as_ref(),
        })
        .collect();
    let rows = sqlx::query_as::<_, SubmittedRow>("SELECT * FROM lineq.submit_many($1, $2)")
        .bind(sqlx::types::Json(&wire))
        .bind(node_name)
        .fetch_all(&mut *conn)
        .await?;
    if rows.len() != reqs.len() {
        return Err(Error::InvalidState(format!(
            "lineq.submit_many returned {} rows for {} requests",
            rows.len(),
            reqs.len()
        )));
    }
    Ok(rows
        .into_iter()
        .map(|r| Submitted {
            execution: r.execution,
            created: r.created,
        })
        .collect())
}

fn at_position(total: usize, i: usize, e: Error) -> Error {
    if total == 1 {
        return e;
    }
    match e {
        Error::Validation(v) => Error::Validation(ValidationError::named(
            v.field,
            format!("request {i}: {}", v.reason),
        )),
        other => other,
    }
}
