//! lineq's core: what every other crate needs. Ids, validation, the database pool, the step
//! and result messages with their lineage (`meta`), the event log, tags, the queue layer over
//! PGMQ, wake-ups, W3C trace context and the OpenTelemetry span model.
//!
//! The orchestrator (`lineq-orchestrator`) owns execution and step state; workers
//! (`lineq-worker`) only append events and send results. Everything they exchange is defined
//! here so the two sides cannot drift apart. Span export over OTLP is the `otlp` feature.

pub mod database;
pub mod error;
pub mod event;
pub mod execution;
pub mod ids;
pub mod message;
pub mod queue;
pub mod spans;
pub mod tags;
pub mod telemetry;
pub mod trace_context;
pub mod validation;
pub mod wakeup;

pub use error::{Error, Result};
