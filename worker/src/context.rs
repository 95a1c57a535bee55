//! What a handler knows about the step it runs.

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The step a handler is running, with its lineage.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The step.
    pub step_id: Uuid,
    /// The step's name.
    pub step: String,
    /// The handler name it was sent to.
    pub handler: String,
    /// The attempt, from 1.
    pub attempt: i32,
    /// Which delivery of this attempt this is (1 unless a worker died holding it).
    pub delivery: i32,
    /// The execution.
    pub execution_id: Uuid,
    /// Its parent execution, for a child.
    pub parent_execution_id: Option<Uuid>,
    /// The root execution.
    pub root_execution_id: Uuid,
    /// The correlation id.
    pub correlation_id: Uuid,
    /// The worker running it.
    pub worker_id: String,
    /// W3C `traceparent` of this step's work, to pass to anything it calls.
    pub traceparent: String,
    /// The `action_started` event of this delivery.
    pub event_id: Uuid,
    /// Cancelled when the worker shuts down past its grace period or the attempt times out.
    pub cancellation: CancellationToken,
}

impl StepContext {
    /// A key that is the same for every delivery of this attempt (step id and attempt), so a
    /// handler can make its side effects happen once.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.step_id, self.attempt)
    }
}
