//! Executions and steps as stored, and the reads every side needs. Only the orchestrator
//! writes these tables (see `lineq-orchestration`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::Lineage;

/// The state of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// Submitted; its steps are queued or waiting.
    Pending,
    /// At least one step has finished and others remain.
    Running,
    /// Every step completed.
    Completed,
    /// A step failed for good.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

/// The state of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for its dependencies.
    Pending,
    /// Its message is in a queue (or held by a worker).
    Enqueued,
    /// Ready, but held back by its flow key (a concurrency or rate limit, or its delay); sent
    /// when its key has room (docs/flow-control.md).
    Throttled,
    /// Its handler finished and it waits for the child executions it started.
    Waiting,
    /// Completed with output.
    Completed,
    /// Failed for good.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

macro_rules! text_enum {
    ($t:ty, $name:literal, { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
            /// True for a state nothing leaves.
            pub fn is_terminal(self) -> bool {
                matches!(self.as_str(), "completed" | "failed" | "cancelled")
            }
        }
        impl FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok(Self::$v),)*
                    other => Err(Error::Validation(crate::validation::ValidationError::new(
                        $name,
                        format!("unknown {} {other:?}", $name),
                    ))),
                }
            }
        }
        impl TryFrom<String> for $t {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                s.parse()
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(ExecutionStatus, "status", {
    Pending => "pending", Running => "running", Completed => "completed",
    Failed => "failed", Cancelled => "cancelled",
});
text_enum!(StepStatus, "step status", {
    Pending => "pending", Enqueued => "enqueued", Throttled => "throttled", Waiting => "waiting",
    Completed => "completed",
    Failed => "failed", Cancelled => "cancelled",
});

/// One execution row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Execution {
    /// Its id (UUIDv7).
    pub execution_id: Uuid,
    /// The workflow (or, for a one-step execution, the handler) it runs.
    pub workflow_name: String,
    /// The workflow version.
    pub workflow_version: i32,
    /// The namespace its steps run in by default.
    pub namespace: String,
    /// Its state.
    #[sqlx(try_from = "String")]
    pub status: ExecutionStatus,
    /// Its input.
    pub input: Value,
    /// Its output, once completed.
    pub output: Option<Value>,
    /// Its error, once failed.
    pub error: Option<Value>,
    /// Its correlation id.
    pub correlation_id: Uuid,
    /// The correlation id of its parent, for a child.
    pub parent_correlation_id: Option<Uuid>,
    /// Its parent, for a child.
    pub parent_execution_id: Option<Uuid>,
    /// The root of its tree (itself for a root).
    pub root_execution_id: Uuid,
    /// The event that spawned it, for a child.
    pub parent_event_id: Option<Uuid>,
    /// The step that spawned it, for a child.
    pub parent_step: Option<String>,
    /// Labels.
    pub tags: Value,
    /// Free-form JSON object.
    pub metadata: Value,
    /// The idempotency key it was submitted with.
    pub idempotency_key: Option<String>,
    /// Priority (higher first).
    pub priority: i32,
    /// Optimistic-concurrency counter, bumped on every change.
    pub version: i64,
    /// `task` (one handler) or `workflow`.
    pub kind: String,
    /// The step that spawned it, for a child.
    pub parent_step_id: Option<Uuid>,
    /// Whether the spawning step waits for it.
    pub parent_waits: bool,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

impl Execution {
    /// The lineage every event of this execution carries. `trace_correlation_id` is the root's
    /// correlation id, which the caller supplies for a child (it is the own one for a root).
    pub fn lineage(&self, trace_correlation_id: Uuid) -> Lineage {
        Lineage {
            execution_id: self.execution_id,
            parent_execution_id: self.parent_execution_id,
            root_execution_id: self.root_execution_id,
            correlation_id: self.correlation_id,
            trace_correlation_id,
        }
    }
}

/// One step row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Step {
    /// Its id.
    pub step_id: Uuid,
    /// Its execution.
    pub execution_id: Uuid,
    /// Its name, unique in the execution.
    pub name: String,
    /// The handler that runs it.
    pub handler: String,
    /// Its namespace.
    pub namespace: String,
    /// The queue its messages go to.
    pub queue: String,
    /// Its state.
    #[sqlx(try_from = "String")]
    pub status: StepStatus,
    /// Steps it waits for.
    pub depends_on: Vec<String>,
    /// Attempts made so far.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Time limit per attempt.
    pub timeout_ms: Option<i64>,
    /// Its input.
    pub input: Option<Value>,
    /// Its output.
    pub output: Option<Value>,
    /// Its last error.
    pub error: Option<Value>,
    /// The message id of its current message.
    pub msg_id: Option<i64>,
    /// The worker that reported its last outcome.
    pub worker_id: Option<String>,
    /// Its retry policy (JSON of the workflow's `retry`).
    pub retry: Value,
    /// `fail` or `continue`.
    pub on_failure: String,
    /// Fixed parameters from the definition.
    pub params: Option<Value>,
    /// Its position in the definition.
    pub position: i32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Reads one execution.
pub async fn get_execution<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    execution_id: Uuid,
) -> Result<Execution> {
    // `lineq.get_execution` raises LQ002 (NotFound) when there is none.
    Ok(
        sqlx::query_as::<_, Execution>("SELECT * FROM lineq.get_execution($1)")
            .bind(execution_id)
            .fetch_one(executor)
            .await?,
    )
}

/// Reads the steps of an execution, in creation order.
pub async fn steps_of<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    execution_id: Uuid,
) -> Result<Vec<Step>> {
    Ok(sqlx::query_as::<_, Step>(
        "SELECT * FROM lineq.steps WHERE execution_id = $1 ORDER BY position, created_at",
    )
    .bind(execution_id)
    .fetch_all(executor)
    .await?)
}

/// A throttled step of an execution and why it waits (lineq.flow_waiting).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WaitingStep {
    /// The step.
    pub step_id: Uuid,
    /// Its name.
    pub step: String,
    /// `concurrency_limit`, `rate_limited` or `delayed`.
    pub reason: String,
    /// Its flow key, resolved ("tags.customer=acme").
    pub key: String,
    /// The key's concurrency limit.
    pub limit: Option<i32>,
    /// The key's rate limit (starts per window).
    pub rate: Option<i32>,
    /// `second` or `minute`.
    pub per: Option<String>,
    /// Since when it waits.
    pub since: DateTime<Utc>,
    /// For a delay, when it is due.
    pub until: Option<DateTime<Utc>>,
}

/// The throttled steps of an execution, in line order.
pub async fn waiting_steps_of<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    execution_id: Uuid,
) -> Result<Vec<WaitingStep>> {
    Ok(sqlx::query_as::<_, WaitingStep>(
        "SELECT w.step_id, w.send ->> 'step' AS step, w.reason, w.key, k.max_running AS \"limit\",
                k.rate, CASE k.per_ms WHEN 1000 THEN 'second' WHEN 60000 THEN 'minute' END AS per,
                w.since, w.not_before AS until
         FROM lineq.flow_waiting w JOIN lineq.flow_keys k ON k.key = w.key
         WHERE w.execution_id = $1 ORDER BY w.priority DESC, w.seq",
    )
    .bind(execution_id)
    .fetch_all(executor)
    .await?)
}
