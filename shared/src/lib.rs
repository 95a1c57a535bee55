#![forbid(unsafe_code)]
//! What both sides of lineq need: domain types, ids, validation, the database pool and
//! migrations, the queue layer over PGMQ, the event log and W3C trace-context propagation.
//!
//! The orchestrator (`lineq-orchestration`) owns execution and step state; workers
//! (`lineq-worker`) only append events and send results. Everything they exchange is defined
//! here so the two sides cannot drift apart.

pub mod config;
pub mod database;
pub mod error;
pub mod event;
pub mod execution;
pub mod ids;
pub mod labels;
pub mod message;
pub mod migrate;
pub mod queue;
pub mod roles;
pub mod spans;
pub mod telemetry;
pub mod trace_context;
pub mod validation;
pub mod wakeup;

pub use error::{Error, Result};
