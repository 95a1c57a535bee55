//! Login roles for tests of `lineq migrate --roles`: names of a test's own, URLs that log in as
//! them, password files, and assertions that a statement is refused or allowed.

use std::path::PathBuf;

use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::database::DatabaseConfig;

use crate::database::admin_url;

/// A prefix of this test's own, so parallel tests never share roles.
pub fn prefix() -> String {
    format!("t{}", &Uuid::now_v7().simple().to_string()[20..])
}

/// `url` with another user and password.
pub fn url_as(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host_and_more = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host_and_more}")
}

/// A small pool that logs in with `url`.
pub async fn connect(url: &str) -> PgPool {
    DatabaseConfig::new(url)
        .max_connections(2)
        .connect()
        .await
        .expect("connect as a login role")
}

/// Asserts that `sql` (with up to one uuid parameter) is refused for lack of privilege.
pub async fn denied(pool: &PgPool, sql: &str, id: Uuid) {
    let mut q = sqlx::query(sql);
    if sql.contains("$1") {
        q = q.bind(id);
    }
    match q.execute(pool).await {
        Err(sqlx::Error::Database(e)) => assert_eq!(
            e.code().as_deref(),
            Some("42501"),
            "{sql}: expected permission denied, got {e}"
        ),
        other => panic!("{sql}: expected permission denied, got {other:?}"),
    }
}

/// Asserts that `sql` (with up to one uuid parameter) runs.
pub async fn allowed(pool: &PgPool, sql: &str, id: Uuid) {
    let mut q = sqlx::query(sql);
    if sql.contains("$1") {
        q = q.bind(id);
    }
    if let Err(e) = q.execute(pool).await {
        panic!("{sql}: expected it to run, got {e}");
    }
}

/// A directory of password files, one per role, removed on drop.
pub struct Secrets(pub PathBuf);

impl Default for Secrets {
    fn default() -> Self {
        Self::new()
    }
}

impl Secrets {
    /// A fresh, empty directory under the system temp dir.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("lineq-roles-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("secrets dir");
        Self(dir)
    }

    /// Writes a password for `role` (with a trailing newline, as `echo` would) and returns it.
    pub fn add(&self, role: &str) -> String {
        let password = format!("pw-{}", Uuid::now_v7().simple());
        std::fs::write(self.0.join(role), format!("{password}\n")).expect("password file");
        password
    }

    /// The directory, as `--password-dir` takes it.
    pub fn dir(&self) -> &str {
        self.0.to_str().expect("utf-8 temp dir")
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Drops the test's roles once its database is gone (best effort).
pub async fn drop_roles(roles: &[String]) {
    let Ok(admin) = DatabaseConfig::new(admin_url())
        .max_connections(1)
        .connect()
        .await
    else {
        return;
    };
    for r in roles {
        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {r}"))
            .execute(&admin)
            .await;
    }
    admin.close().await;
}
