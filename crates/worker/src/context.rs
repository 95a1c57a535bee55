//! What a handler knows about the step it runs.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use lineq_core::message::ChildRequest;

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
    /// The workflow (or, for a one-step execution, the handler) the execution runs.
    pub workflow: String,
    /// The execution's tags.
    pub tags: lineq_core::tags::Tags,
    /// The execution's metadata object.
    pub metadata: Value,
    /// For a child execution, the parent's step that spawned it.
    pub parent_step: Option<String>,
    /// The worker running it.
    pub worker_id: String,
    /// W3C `traceparent` of this step's work, to pass to anything it calls.
    pub traceparent: String,
    /// The `action_started` event of this delivery.
    pub event_id: Uuid,
    /// Cancelled when the execution is cancelled, the attempt times out, or the worker shuts
    /// down past its grace period.
    pub cancellation: CancellationToken,
    /// Children asked for so far; sent with the step's result.
    pub(crate) children: Arc<Mutex<Vec<ChildRequest>>>,
}

impl StepContext {
    /// A key that is the same for every delivery of this attempt (step id and attempt), so a
    /// handler can make its side effects happen once.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.step_id, self.attempt)
    }

    /// Starts a child execution of `target` (a registered workflow, or a handler run as one
    /// step) and returns its id. It is created when this step's result is recorded — so an
    /// attempt that crashes leaves no orphans — with its own correlation id, this execution as
    /// parent and this step's report as the parent of its first event.
    pub fn spawn(&self, target: impl Into<String>, input: Value) -> Uuid {
        self.spawn_child(ChildRequest::new(target, input))
    }

    /// Like [`Self::spawn`], and this step then waits: it completes with the child's output
    /// (an array of outputs when it waits for several) or fails with its error.
    pub fn spawn_and_wait(&self, target: impl Into<String>, input: Value) -> Uuid {
        let mut req = ChildRequest::new(target, input);
        req.wait = true;
        self.spawn_child(req)
    }

    /// Starts a child described in full.
    pub fn spawn_child(&self, req: ChildRequest) -> Uuid {
        let id = req.execution_id;
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(req);
        id
    }

    /// The children asked for so far.
    pub fn spawned(&self) -> Vec<ChildRequest> {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
