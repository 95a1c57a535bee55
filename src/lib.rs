#![doc = include_str!("../README.md")]

pub mod config;

pub use lineq_core::database::DatabaseConfig;
pub use lineq_core::{Error, Result};
pub use lineq_migrate::migrate;
pub use lineq_orchestrator::flow::{ConcurrencyLimit, RateLimit, RatePer};
pub use lineq_orchestrator::{Client, Orchestrator, SubmitRequest, Submitted};
pub use lineq_worker::{CommandSpec, HandlerError, HandlerResult, StepContext, Worker};
