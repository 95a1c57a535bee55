//! lineq's HTTP surfaces, served by `lineq serve` and the probes of every lineq process.
//!
//! - [`access`]: who may reach what: the bearer token and the console's session.
//! - [`rest`]: the REST API with its OpenAPI document.
//! - [`console`]: the web console, server-rendered HTML beside the REST API.
//! - [`probes`]: `/metrics`, `/healthz` and `/readyz` of orchestrators and workers.
//! - [`pools`]: which statements go to the primary and which to a read replica.
//! - [`http`]: the listener loop all of them run on, with the limits that hold before any
//!   authentication.

pub mod access;
pub mod console;
pub mod http;
pub mod pools;
pub mod probes;
pub mod rest;
