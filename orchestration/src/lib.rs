#![forbid(unsafe_code)]
//! The orchestrator side of lineq: it owns execution and step state.
//!
//! - [`Client`] submits executions and reads them back ([`submit`]).
//! - [`Orchestrator`] processes the results workers send, records each step's outcome and
//!   finishes executions ([`results`]), and fires due schedules ([`schedule`]).
//!
//! Every state change is a guarded SQL update inside one transaction per unit of work, so any
//! number of orchestrators can run against one database and a duplicate result changes nothing.

pub mod cancel;
mod cancel_tree;
pub mod client;
pub mod dead_letters;
mod decide;
mod enqueue;
pub mod fleet;
pub mod flow;
pub mod labels;
pub mod lineage;
pub mod orchestrator;
pub mod prune;
pub mod query;
pub mod results;
pub mod schedule;
mod settle;
mod spans;
mod state;
pub mod submit;
pub mod worker_spans;
pub mod workflow;

pub use client::{Client, SubmitBuilder};
pub use orchestrator::{Orchestrator, OrchestratorBuilder};
pub use submit::{SubmitRequest, Submitted};
