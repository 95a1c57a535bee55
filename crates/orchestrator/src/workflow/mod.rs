//! Workflows: definitions (YAML or Rust) and the registry in PostgreSQL.

pub mod definition;
pub mod store;

pub use definition::{OnFailure, RetryPolicy, StepDefinition, WorkflowDefinition};
pub use store::{Registered, StoredWorkflow, WorkflowSummary};
