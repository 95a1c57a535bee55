#![forbid(unsafe_code)]
//! lineq: a distributed worker runtime on PostgreSQL message queues (PGMQ), with lineage you can
//! query in SQL and follow in traces.
//!
//! This crate is the `lineq` binary and a facade over the workspace:
//! [`shared`] (types, validation, database, queues, events), [`orchestration`] (submission and
//! result processing) and [`worker`] (the worker runtime).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use lineq::{Client, DatabaseConfig, SubmitRequest, Worker};
//!
//! let pool = DatabaseConfig::new("postgres://localhost/lineq").connect().await?;
//! lineq::migrate(&pool).await?;
//! let client = Client::new(pool.clone());
//! let submitted = client
//!     .submit(SubmitRequest::new("echo").input(serde_json::json!({"hi": 1})))
//!     .await?;
//! println!("submitted {}", submitted.execution.execution_id);
//! # Ok(()) }
//! ```

pub mod local_postgres;

pub use lineq_orchestration as orchestration;
pub use lineq_shared as shared;
pub use lineq_worker as worker;

pub use lineq_orchestration::{Client, Orchestrator, SubmitRequest, Submitted};
pub use lineq_shared::database::DatabaseConfig;
pub use lineq_shared::migrate::migrate;
pub use lineq_shared::{Error, Result};
pub use lineq_worker::{CommandSpec, HandlerError, HandlerResult, StepContext, Worker};
