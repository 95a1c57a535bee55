//! The connection pool.

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::error::{Error, Result};
use crate::validation::ValidationError;

/// How to reach PostgreSQL.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// A `postgres://` URL.
    pub url: String,
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long to wait for a free connection (and for the first connect).
    pub acquire_timeout: Duration,
    /// The `application_name` shown in `pg_stat_activity`.
    pub application_name: String,
}

impl DatabaseConfig {
    /// A config for `url` with lineq's defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            application_name: "lineq".to_string(),
        }
    }

    /// Sets the pool size.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Sets the application name.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Parsed connection options.
    pub fn connect_options(&self) -> Result<PgConnectOptions> {
        let opts = PgConnectOptions::from_str(&self.url).map_err(|e| {
            Error::Validation(ValidationError::new(
                "database_url",
                format!("not a PostgreSQL URL: {e}"),
            ))
        })?;
        Ok(opts.application_name(&self.application_name))
    }

    /// Opens the pool and checks that the server answers.
    pub async fn connect(&self) -> Result<PgPool> {
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(self.connect_options()?)
            .await?;
        Ok(pool)
    }
}
