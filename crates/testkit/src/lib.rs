//! lineq's test support, for the integration tests of every lineq crate.
//!
//! - [`local_postgres`]: a throwaway PostgreSQL cluster from the machine's own server binaries
//!   (also what `lineq demo` and `lineq dev` start when no database is given).
//! - [`database`]: a fresh, migrated database per test ([`TestDb`]), so tests run in parallel.
//! - [`process`]: real `lineq` processes ([`Proc`], [`lineq`]), logging to files.
//! - [`http`]: one HTTP/1.1 request over a plain socket ([`http()`]).
//! - [`wait`]: polling with a deadline ([`eventually`]).
//! - [`shape`]: an event tree's shape as one string ([`tree_shape`]).
//! - [`roles`]: login roles of a test's own, and assertions that a statement is refused.
//!
//! ```no_run
//! # async fn demo() {
//! use lineq_testkit::TestDb;
//!
//! let db = TestDb::new().await;
//! let n: i64 = db.count("lineq.executions").await;
//! assert_eq!(n, 0);
//! db.drop_db().await;
//! # }
//! ```

pub mod database;
pub mod http;
pub mod local_postgres;
pub mod process;
pub mod roles;
pub mod shape;
pub mod wait;

pub use database::{TestDb, admin_url};
pub use http::{http, status_and_body};
pub use process::{Proc, lineq, lineq_bin, lineq_with, stderr, stdout};
pub use shape::{ONE_STEP_COMPLETED, ONE_STEP_FAILED, tree_shape};
pub use wait::{eventually, wait_all_finished};
