//! Test support: an isolated database per test on a real PostgreSQL, and real `lineq`
//! processes.
//!
//! The server is `DATABASE_URL` (a role that may create databases), or, when that is unset, a
//! throwaway cluster started once per test binary from the machine's own PostgreSQL binaries and
//! stopped when the test process exits.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod roles;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use std::str::FromStr;
use uuid::Uuid;

use lineq::DatabaseConfig;
use lineq::local_postgres::{LocalPostgres, LocalPostgresOptions};

/// The URL of a role that can create databases.
pub fn admin_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            if !url.trim().is_empty() {
                return url;
            }
        }
        // Started on its own thread and runtime: test runtimes come and go, this one stays.
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let pg = rt
                .block_on(LocalPostgres::start(LocalPostgresOptions {
                    stop_with_process: true,
                    settings: vec![("max_connections".into(), "300".into())],
                    ..Default::default()
                }))
                .expect("DATABASE_URL is unset and no throwaway PostgreSQL could be started");
            let url = pg.url().to_string();
            // Lives until the test process exits; its watchdog then stops it.
            std::mem::forget(pg);
            url
        })
        .join()
        .expect("starting PostgreSQL panicked")
    })
    .clone()
}

/// A database of its own for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A fresh, migrated database.
    pub async fn new() -> Self {
        let db = Self::empty().await;
        lineq::migrate(&db.pool).await.expect("migrate");
        db
    }

    /// A fresh database with nothing in it.
    pub async fn empty() -> Self {
        let admin = admin_url();
        let name = format!("lineq_test_{}", Uuid::now_v7().simple());
        let admin_pool = DatabaseConfig::new(&admin)
            .max_connections(1)
            .connect()
            .await
            .expect("connect to the admin database");
        // The name is generated here, never from input; identifiers cannot be bound.
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin_pool)
            .await
            .expect("create database");
        admin_pool.close().await;
        let opts = PgConnectOptions::from_str(&admin)
            .expect("admin url")
            .database(&name)
            // As lineq's own pools (DatabaseConfig::connect_options).
            .options([("plan_cache_mode", "force_custom_plan"), ("jit", "off")]);
        let url = url_with_database(&admin, &name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect_with(opts)
            .await
            .expect("connect to test database");
        Self { name, url, pool }
    }

    /// Drops the database (best effort; a failed test leaves it for inspection).
    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(admin) = DatabaseConfig::new(admin_url())
            .max_connections(1)
            .connect()
            .await
        {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&admin)
            .await;
            admin.close().await;
        }
    }

    /// `SELECT count(*)` of a table or query.
    pub async fn count(&self, sql_from: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {sql_from}"))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Rows written anywhere a submit writes: executions, steps, events, step messages.
    pub async fn written(&self) -> (i64, i64, i64, i64) {
        (
            self.count("lineq.executions").await,
            self.count("lineq.steps").await,
            self.count("lineq.events").await,
            self.count("pgmq.q_lineq_steps_default").await,
        )
    }
}

fn url_with_database(url: &str, db: &str) -> String {
    // postgres://user:pass@host:port/dbname?params -> swap dbname
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..path_start], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The `lineq` binary under test.
pub fn lineq_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lineq")
}

/// Runs `lineq ARGS` against `url` to completion.
pub fn lineq(url: &str, args: &[&str]) -> Output {
    Command::new(lineq_bin())
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run lineq")
}

/// Runs `lineq ARGS` against `url` to completion, after `configure` (environment, ...).
pub fn lineq_with(url: &str, args: &[&str], configure: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(lineq_bin());
    cmd.args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    configure(&mut cmd);
    cmd.output().expect("run lineq")
}

/// A running `lineq` process, killed if still running when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    /// Starts `lineq ARGS` against `url`, logging to a file.
    pub fn start(url: &str, name: &str, args: &[&str]) -> Self {
        Self::start_with(url, name, args, |_| {})
    }

    /// Like [`Proc::start`], after `configure` (environment, ...).
    pub fn start_with(
        url: &str,
        name: &str,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let dir = std::env::temp_dir().join("lineq-test-logs");
        let _ = std::fs::create_dir_all(&dir);
        let log = dir.join(format!("{name}-{}.log", Uuid::now_v7().simple()));
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        let mut cmd = Command::new(lineq_bin());
        cmd.args(args)
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        configure(&mut cmd);
        let child = cmd.spawn().expect("spawn lineq");
        Self {
            child,
            log,
            name: name.to_string(),
        }
    }

    /// Sends SIGTERM and waits for the exit status (at most `within`).
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.wait(within)
    }

    /// Sends SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for exit, at most `within`; panics with the log when it does not exit.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {within:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` until it returns `Some`, at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every listed execution is in a terminal state.
pub async fn wait_all_finished(pool: &PgPool, ids: &[Uuid], within: Duration) {
    let ids = ids.to_vec();
    eventually(within, "executions to finish", || {
        let ids = ids.clone();
        let pool = pool.clone();
        async move {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM lineq.executions WHERE execution_id = ANY($1)
                 AND status NOT IN ('completed', 'failed', 'cancelled')",
            )
            .bind(&ids)
            .fetch_one(&pool)
            .await
            .ok()?;
            (left == 0).then_some(())
        }
    })
    .await
}

/// stdout of a finished command, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of a finished command, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that `events` form exactly one tree — one event without a parent, every other
/// parent present, no cycles — and returns its shape: `type(child,child)` with children sorted,
/// so a test can compare the whole shape in one assertion.
pub fn tree_shape(events: &[lineq::shared::event::EventRow]) -> String {
    use std::collections::HashMap;
    let by_id: HashMap<Uuid, &lineq::shared::event::EventRow> =
        events.iter().map(|e| (e.event_id, e)).collect();
    assert_eq!(by_id.len(), events.len(), "duplicate event ids");
    let roots: Vec<_> = events
        .iter()
        .filter(|e| e.parent_event_id.is_none())
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "exactly one root event expected, got {:?}",
        roots.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
    let mut children: HashMap<Uuid, Vec<&lineq::shared::event::EventRow>> = HashMap::new();
    for e in events {
        if let Some(p) = e.parent_event_id {
            assert!(
                by_id.contains_key(&p),
                "{} {} has parent {p}, which is not in the tree",
                e.event_type,
                e.event_id
            );
            children.entry(p).or_default().push(e);
        }
    }
    fn shape(
        e: &lineq::shared::event::EventRow,
        children: &HashMap<Uuid, Vec<&lineq::shared::event::EventRow>>,
        seen: &mut usize,
    ) -> String {
        *seen += 1;
        let mut kids: Vec<String> = children
            .get(&e.event_id)
            .map(|v| v.iter().map(|k| shape(k, children, seen)).collect())
            .unwrap_or_default();
        kids.sort();
        if kids.is_empty() {
            e.event_type.clone()
        } else {
            format!("{}({})", e.event_type, kids.join(","))
        }
    }
    let mut seen = 0;
    let s = shape(roots[0], &children, &mut seen);
    assert_eq!(
        seen,
        events.len(),
        "some events are not reachable from the root (a cycle)"
    );
    s
}

/// The shape of a one-step execution that completed on its first attempt.
pub const ONE_STEP_COMPLETED: &str = "execution_started(workflow_initialized(step_enqueued(action_started(action_completed,step_result(step_completed(execution_completed))))))";
/// The shape of a one-step execution whose only attempt failed.
pub const ONE_STEP_FAILED: &str = "execution_started(workflow_initialized(step_enqueued(action_started(action_failed,step_result(step_failed(execution_failed))))))";
