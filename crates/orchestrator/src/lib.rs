//! The orchestrator side of lineq: it owns execution and step state.
//!
//! - [`Client`] submits executions and reads them back ([`submit`]).
//! - [`Orchestrator`] processes the results workers send, records each step's outcome and
//!   finishes executions ([`results`]), fires due schedules ([`schedule`]), admits steps that
//!   wait for a concurrency or rate limit ([`flow`]) and releases the steps of silent workers
//!   ([`maintenance::sweeper`]).
//! - [`maintenance::prune`] removes finished history past its retention.
//! - Reading (lineage, queries, history, the fleet) is `lineq-read`.
//!
//! Every state change is a guarded SQL update inside one transaction per unit of work, so any
//! number of orchestrators can run against one database and a duplicate result changes nothing.

pub mod cancel;
mod cancel_tree;
pub mod client;
pub mod dead_letters;
mod decide;
mod enqueue;
pub mod flow;
pub mod maintenance;
pub mod orchestrator;
pub mod results;
pub mod schedule;
mod settle;
mod spans;
mod state;
pub mod submit;
pub mod tags;
pub mod worker_spans;
pub mod workflow;

pub use client::{Client, SubmitBuilder};
pub use orchestrator::{Orchestrator, OrchestratorBuilder};
pub use submit::{SubmitRequest, Submitted};
