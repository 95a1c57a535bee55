//! A database of its own for every test, on a real PostgreSQL.
//!
//! The server is `DATABASE_URL` (a role that may create databases), or, when that is unset, a
//! throwaway cluster started once per test process from the machine's own PostgreSQL binaries
//! ([`crate::local_postgres`]) and stopped when the test process exits.

use std::str::FromStr;
use std::sync::OnceLock;

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

use lineq_core::database::DatabaseConfig;

use crate::local_postgres::{LocalPostgres, LocalPostgresOptions};

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
    /// The database's name (`lineq_test_<uuid>`).
    pub name: String,
    /// A URL that connects to it.
    pub url: String,
    /// A pool on it, with the session settings of lineq's own pools.
    pub pool: PgPool,
}

impl TestDb {
    /// A fresh, migrated database.
    pub async fn new() -> Self {
        let db = Self::empty().await;
        lineq_migrate::migrate(&db.pool).await.expect("migrate");
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
