//! The Rust client: submit executions and read them back.

use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::event::{EventRow, events_of_execution};
use lineq_core::execution::{Execution, Step, get_execution, steps_of};
use lineq_core::ids::node_name;

use lineq_read::history::{HistoryEntry, history};

use crate::submit::{SubmitRequest, Submitted, submit};
use crate::tags::{TagChange, update_tags_as};
use lineq_read::query::{ExecutionFilter, Page, list_executions};

/// A handle on a lineq database for submitting and inspecting executions.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> lineq_core::Result<()> {
/// use lineq_orchestrator::{Client, SubmitRequest};
/// let client = Client::new(pool);
/// let done = client
///     .submit(SubmitRequest::new("echo").input(serde_json::json!({"hello": "world"})))
///     .await?;
/// println!("{}", done.execution.execution_id);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    pool: PgPool,
    node_name: String,
}

impl Client {
    /// A client on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            node_name: node_name(),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Submits an execution (see [`crate::submit::submit`]).
    ///
    /// Takes a [`SubmitRequest`] or just a workflow/handler name, and returns a builder: set
    /// what you need, then `.send().await` (or simply `.await`).
    ///
    /// ```no_run
    /// # async fn demo(client: lineq_orchestrator::Client, parent: uuid::Uuid) -> lineq_core::Result<()> {
    /// let submitted = client
    ///     .submit("process_order")
    ///     .input(serde_json::json!({"order": 12345}))
    ///     .tag("customer", "acme")
    ///     .metadata(serde_json::json!({"order": {"id": "12345"}}))
    ///     .parent(parent)
    ///     .send()
    ///     .await?;
    /// # let _ = submitted; Ok(()) }
    /// ```
    pub fn submit(&self, req: impl Into<SubmitRequest>) -> SubmitBuilder<'_> {
        SubmitBuilder {
            client: self,
            req: req.into(),
        }
    }

    /// Submits many executions in one transaction (see [`crate::submit::submit_many`]).
    pub async fn submit_many(&self, reqs: Vec<SubmitRequest>) -> Result<Vec<Submitted>> {
        crate::submit::submit_many(&self.pool, &self.node_name, reqs).await
    }

    /// Reads an execution.
    pub async fn execution(&self, id: Uuid) -> Result<Execution> {
        get_execution(&self.pool, id).await
    }

    /// Reads an execution's steps.
    pub async fn steps(&self, id: Uuid) -> Result<Vec<Step>> {
        steps_of(&self.pool, id).await
    }

    /// Reads an execution's events, oldest first.
    pub async fn events(&self, id: Uuid) -> Result<Vec<EventRow>> {
        // Distinguish "no such execution" from "no events yet".
        get_execution(&self.pool, id).await?;
        events_of_execution(&self.pool, id).await
    }

    /// Lists executions matching `filter`, one page at a time (see [`lineq_read::query`]).
    pub async fn list(&self, filter: &ExecutionFilter) -> Result<Page<Execution>> {
        list_executions(&self.pool, filter).await
    }

    /// Changes an execution's tags while it is pending (see [`crate::tags::update_tags`]).
    pub async fn update_tags(
        &self,
        id: Uuid,
        change: &TagChange,
        expected_version: Option<i64>,
        cause: &str,
    ) -> Result<Execution> {
        update_tags_as(
            &self.pool,
            &self.node_name,
            id,
            change,
            expected_version,
            cause,
        )
        .await
    }

    /// An execution's status and tag changes, oldest first (see [`lineq_read::history::history`]).
    pub async fn history(&self, id: Uuid) -> Result<Vec<HistoryEntry>> {
        history(&self.pool, id).await
    }
}

/// A submission being built; see [`Client::submit`].
#[must_use = "a submission does nothing until it is sent (`.send().await` or `.await`)"]
#[derive(Debug)]
pub struct SubmitBuilder<'a> {
    client: &'a Client,
    req: SubmitRequest,
}

impl<'a> SubmitBuilder<'a> {
    /// Sets the input.
    pub fn input(mut self, input: serde_json::Value) -> Self {
        self.req = self.req.input(input);
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.req = self.req.namespace(namespace);
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.req = self.req.correlation_id(id);
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.req = self.req.idempotency_key(key);
        self
    }

    /// Sets the per-attempt timeout.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.req = self.req.timeout_ms(ms);
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.req = self.req.tag(key, value);
        self
    }

    /// Sets the metadata object.
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.req = self.req.metadata(metadata);
        self
    }

    /// Sets an explicit parent execution.
    pub fn parent(mut self, execution_id: Uuid) -> Self {
        self.req = self.req.parent(execution_id);
        self
    }

    /// Submits it.
    pub async fn send(self) -> Result<Submitted> {
        submit(&self.client.pool, &self.client.node_name, self.req).await
    }
}

impl<'a> std::future::IntoFuture for SubmitBuilder<'a> {
    type Output = Result<Submitted>;
    type IntoFuture = futures::future::BoxFuture<'a, Result<Submitted>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}
