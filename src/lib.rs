#![forbid(unsafe_code)]
#![doc = include_str!("../README.md")]

pub mod api;
pub mod console;
pub mod http;
pub mod local_postgres;
pub mod probes;

pub use lineq_orchestration as orchestration;
pub use lineq_shared as shared;
pub use lineq_worker as worker;

pub use lineq_orchestration::flow::{ConcurrencyLimit, RateLimit, RatePer};
pub use lineq_orchestration::{Client, Orchestrator, SubmitRequest, Submitted};
pub use lineq_shared::database::DatabaseConfig;
pub use lineq_shared::migrate::migrate;
pub use lineq_shared::{Error, Result};
pub use lineq_worker::{CommandSpec, HandlerError, HandlerResult, StepContext, Worker};
