//! What one transaction of the orchestrator holds: the executions it locked, their steps as
//! it read them (kept current as it changes them), and what it will write. Result processing,
//! settling and cancellation share these.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::event::{Lineage, NewEvent};
use lineq_core::execution::{ExecutionStatus, StepStatus};

use crate::enqueue::ReadyStep;

/// An execution locked for the current transaction.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ExecState {
    pub execution_id: Uuid,
    #[sqlx(try_from = "String")]
    pub status: ExecutionStatus,
    pub kind: String,
    pub namespace: String,
    pub input: Value,
    pub correlation_id: Uuid,
    pub parent_execution_id: Option<Uuid>,
    pub root_execution_id: Uuid,
    pub trace_correlation_id: Uuid,
    pub parent_step_id: Option<Uuid>,
    pub parent_waits: bool,
    pub workflow_name: String,
    pub tags: Value,
    pub metadata: Value,
    pub parent_step: Option<String>,
}

impl ExecState {
    pub fn lineage(&self) -> Lineage {
        Lineage {
            execution_id: self.execution_id,
            parent_execution_id: self.parent_execution_id,
            root_execution_id: self.root_execution_id,
            correlation_id: self.correlation_id,
            trace_correlation_id: self.trace_correlation_id,
        }
    }

    /// What its handlers get to know beyond the lineage.
    pub fn context(&self) -> lineq_core::message::ExecutionContext {
        lineq_core::message::ExecutionContext {
            workflow: self.workflow_name.clone(),
            tags: serde_json::from_value(self.tags.clone()).unwrap_or_default(),
            metadata: self.metadata.clone(),
            parent_step: self.parent_step.clone(),
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

/// Locks executions in id order (the same order everywhere, so orchestrators wait for each
/// other instead of deadlocking) and reads what settling needs.
pub(crate) async fn lock_executions(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<ExecState>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as::<_, ExecState>(
        r#"
        SELECT e.execution_id, e.status, e.kind, e.namespace, e.input, e.correlation_id,
               e.parent_execution_id, e.root_execution_id,
               -- The trace id is the root's correlation id. A subquery, not a join: most
               -- executions are roots, and planning a self-join of this many-indexed table
               -- cost 0.26 ms per batch against 0.12 (custom plans, see database.rs). Prune
               -- removes whole trees, so the root is there; were it ever not, the execution
               -- still settles (the join dropped it), traced under its own correlation id.
               CASE WHEN e.root_execution_id = e.execution_id THEN e.correlation_id
                    ELSE coalesce((SELECT r.correlation_id FROM lineq.executions r
                                   WHERE r.execution_id = e.root_execution_id),
                                  e.correlation_id)
               END AS trace_correlation_id,
               e.parent_step_id, e.parent_waits, e.workflow_name, e.tags, e.metadata,
               e.parent_step
        FROM lineq.executions e
        WHERE e.execution_id = ANY($1)
        ORDER BY e.execution_id
        FOR UPDATE OF e
        "#,
    )
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// A step as settling sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StepRow {
    pub step_id: Uuid,
    pub execution_id: Uuid,
    pub name: String,
    pub handler: String,
    pub queue: String,
    #[sqlx(try_from = "String")]
    pub status: StepStatus,
    pub depends_on: Vec<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub timeout_ms: Option<i64>,
    pub retry: Value,
    pub on_failure: String,
    pub params: Option<Value>,
    pub input: Option<Value>,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub msg_id: Option<i64>,
    /// Its flow key and limits (lineq.steps.flow), when it has any.
    pub flow: Option<Value>,
    pub priority: i32,
}

/// The steps of `executions`, each execution's in position order.
///
/// One index probe per execution, whatever the statistics say. `execution_id = ANY($1)` is
/// planned from the column's statistics, and until autovacuum first analyses `steps` (up to a
/// minute on a new database) the planner assumes each id matches 0.5 % of the table and
/// scans all of it: 22 ms a batch at 40,000 steps, against 0.8 ms here. `OFFSET 0` keeps the
/// subquery from being flattened into a join, which would be planned from the same guess.
pub(crate) async fn read_steps(
    conn: &mut PgConnection,
    executions: &[Uuid],
) -> Result<Vec<StepRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT s.* FROM (SELECT DISTINCT unnest($1::uuid[])) AS x(id)
         CROSS JOIN LATERAL (SELECT {STEP_COLUMNS}, position FROM lineq.steps
                             WHERE execution_id = x.id OFFSET 0) AS s
         ORDER BY s.execution_id, s.position"
    ))
    .bind(executions)
    .fetch_all(conn)
    .await?)
}

const STEP_COLUMNS: &str = "step_id, execution_id, name, handler, queue, status, \
    depends_on, attempts, max_attempts, timeout_ms, retry, on_failure, params, input, output, error, msg_id, \
    flow, priority";

/// What one transaction writes, gathered as it goes.
#[derive(Debug, Default)]
pub(crate) struct Work {
    pub node_name: String,
    pub events: Vec<NewEvent>,
    pub ready: Vec<ReadyStep>,
    pub execs: HashMap<Uuid, ExecState>,
    /// The latest event per execution in this transaction: the parent of its ending event.
    pub last_event: HashMap<Uuid, Uuid>,
    /// The outcome event per step that changed in this transaction: the parent of the
    /// `step_enqueued` of the steps it makes ready.
    pub step_event: HashMap<Uuid, Uuid>,
    /// Executions to settle, in order.
    pub touched: Vec<Uuid>,
    /// Executions finished in this transaction.
    pub finished: usize,
    /// Steps of executions this transaction already read (and kept current as it changed
    /// them), by execution: settle's first round uses them instead of reading them again.
    pub steps: HashMap<Uuid, Vec<StepRow>>,
}

impl Work {
    pub fn new(node_name: &str) -> Self {
        Self {
            node_name: node_name.to_string(),
            ..Default::default()
        }
    }

    /// Records an event that changed an execution (and maybe a step).
    pub fn record(&mut self, event: NewEvent, step_id: Option<Uuid>) {
        let exec = event.lineage.execution_id;
        self.last_event.insert(exec, event.event_id);
        if let Some(s) = step_id {
            self.step_event.insert(s, event.event_id);
        }
        if !self.touched.contains(&exec) {
            self.touched.push(exec);
        }
        self.events.push(event);
    }
}
