//! lineq's read side: what happened, and why.
//!
//! - [`lineage`]: an execution tree's events as a causal tree, its check (`lineq lineage check`)
//!   and its renderings, over the lineage functions of the SQL interface.
//! - [`query`]: executions listed by tags, metadata, status, workflow, parent, root and time.
//! - [`history`]: one execution's status, step and tag changes.
//! - [`workers`]: the worker fleet (`lineq workers`), queue depths and unserved steps.
//! - [`pool`]: [`ReadPool`], where these reads run: a streaming replica when one is configured,
//!   with the primary behind it for a read by id the replica does not have yet.
//!
//! Nothing here writes: these functions can run on a role that may only read.

pub mod history;
pub mod lineage;
pub mod pool;
pub mod query;
pub mod workers;

pub use pool::ReadPool;
