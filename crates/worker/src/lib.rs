//! The worker side of lineq: claim step messages, run handlers, report back.
//!
//! Workers never change executions or steps: they append events and send results, and the
//! orchestrator owns state. A worker that dies mid-step loses nothing — its message becomes
//! visible again and another worker runs it, and the lineage shows both deliveries.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> lineq_core::Result<()> {
//! use lineq_worker::{HandlerError, StepContext, Worker};
//! use serde_json::{Value, json};
//!
//! async fn charge(ctx: StepContext, input: Value) -> Result<Value, HandlerError> {
//!     // The key is the same for every delivery of this attempt: use it to charge only once.
//!     let key = ctx.idempotency_key();
//!     Ok(json!({ "charged": input["amount"], "key": key }))
//! }
//!
//! let worker = Worker::builder(pool)
//!     .namespace("payments")?
//!     .concurrency(8)
//!     .handler("payments.charge", charge)
//!     .build();
//! worker.run(tokio_util::sync::CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

pub mod builtin;
mod claim;
pub mod command;
pub mod context;
pub mod handler;
pub mod metrics;
mod registration;
mod report;
pub mod worker;

pub use command::CommandSpec;
pub use context::StepContext;
pub use handler::{Handler, HandlerError, HandlerResult, Handlers};
pub use worker::{Worker, WorkerBuilder};
