//! Workflows: definitions (YAML or Rust) and the registry in PostgreSQL.

pub mod definition;

pub use definition::{OnFailure, RetryPolicy, StepDefinition, WorkflowDefinition};
