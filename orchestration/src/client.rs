//! The Rust client: submit executions and read them back.

use sqlx::PgPool;
use uuid::Uuid;

use lineq_shared::error::Result;
use lineq_shared::event::{EventRow, events_of_execution};
use lineq_shared::execution::{Execution, Step, get_execution, steps_of};
use lineq_shared::ids::node_name;

use crate::labels::{HistoryEntry, TagChange, history, update_tags_as};
use crate::query::{ExecutionFilter, Page, list_executions};
use crate::submit::{SubmitRequest, Submitted, submit};

/// A handle on a lineq database for submitting and inspecting executions.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> lineq_shared::Result<()> {
/// use lineq_orchestration::{Client, SubmitRequest};
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
    pub async fn submit(&self, req: SubmitRequest) -> Result<Submitted> {
        submit(&self.pool, &self.node_name, req).await
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

    /// Lists executions matching `filter`, one page at a time (see [`crate::query`]).
    pub async fn list(&self, filter: &ExecutionFilter) -> Result<Page<Execution>> {
        list_executions(&self.pool, filter).await
    }

    /// Changes an execution's tags while it is pending (see [`crate::labels::update_tags`]).
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

    /// An execution's status and tag changes, oldest first (see [`crate::labels::history`]).
    pub async fn history(&self, id: Uuid) -> Result<Vec<HistoryEntry>> {
        history(&self.pool, id).await
    }
}
