//! lineq's schema. [`migrate`] installs PGMQ as plain SQL (no `CREATE EXTENSION`) and applies
//! lineq's own migrations (`migrations/`, embedded at compile time; the SQL interface lives there
//! as functions in schema `lineq`), under one advisory lock so any number of processes may run it
//! at once. [`roles`] creates the database roles whose grants are lineq's security boundary.

pub mod roles;

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use lineq_core::error::Result;
use lineq_core::queue;
use lineq_core::validation::Namespace;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Advisory lock held while migrating ("lineq" in ASCII, so it is recognisable in `pg_locks`).
/// [`crate::roles`] takes it too, so grants never interleave with a migration.
pub(crate) const MIGRATE_LOCK: i64 = 0x006c_696e_6571;

/// Takes [`MIGRATE_LOCK`] on `conn`, waiting for whoever holds it. It asks with
/// `pg_try_advisory_lock` and sleeps between tries, so a waiting session is idle rather than
/// inside a statement: a migration that builds an index `CONCURRENTLY` waits for every
/// statement in progress, and would deadlock with a waiter blocked in `pg_advisory_lock`.
pub(crate) async fn lock_migrations(conn: &mut sqlx::PgConnection) -> Result<()> {
    let mut pause = std::time::Duration::from_millis(20);
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATE_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if got {
            return Ok(());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(500));
    }
}

/// What a migration run found and did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationReport {
    /// The PGMQ version installed in schema `pgmq`.
    pub pgmq_version: Option<String>,
    /// lineq migrations applied by this run (version numbers).
    pub applied: Vec<i64>,
    /// lineq migrations in the database after the run.
    pub total: usize,
}

/// Installs or upgrades PGMQ, applies lineq migrations, and creates the results queue, the
/// dead-letter queue and the `default` namespace's step queue. Idempotent; concurrent callers
/// wait for each other.
pub async fn migrate(pool: &PgPool) -> Result<MigrationReport> {
    let mut conn = pool.acquire().await?;
    lock_migrations(&mut conn).await?;
    let result = migrate_locked(pool, &mut conn).await;
    // Release even on failure; a dropped connection would release it too.
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *conn)
        .await;
    let report = result?;
    unlock?;
    Ok(report)
}

async fn migrate_locked(
    pool: &PgPool,
    conn: &mut sqlx::pool::PoolConnection<sqlx::Postgres>,
) -> Result<MigrationReport> {
    pgmq::install::install_sql_from_embedded(pool).await?;
    let pgmq_version = pgmq::install::installed_version(pool)
        .await?
        .map(|v| v.to_string());

    sqlx::query("CREATE SCHEMA IF NOT EXISTS lineq")
        .execute(&mut **conn)
        .await?;
    // sqlx keeps its bookkeeping table in the first schema of the search path: keep it in ours.
    sqlx::query("SET search_path TO lineq")
        .execute(&mut **conn)
        .await?;
    let before: Vec<i64> = sqlx::query_scalar("SELECT version FROM lineq._sqlx_migrations")
        .fetch_all(&mut **conn)
        .await
        .unwrap_or_default();
    let run = MIGRATOR.run(&mut **conn).await;
    sqlx::query("RESET search_path")
        .execute(&mut **conn)
        .await?;
    run?;
    let after: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM lineq._sqlx_migrations ORDER BY version")
            .fetch_all(&mut **conn)
            .await?;

    for q in [
        queue::results_queue(),
        queue::dead_letter_queue(),
        queue::step_queue(&Namespace::default_namespace()),
    ] {
        queue::ensure_queue(conn, &q).await?;
    }
    Ok(MigrationReport {
        pgmq_version,
        applied: after
            .iter()
            .filter(|v| !before.contains(v))
            .copied()
            .collect(),
        total: after.len(),
    })
}

/// True when lineq's migrations are all applied (for readiness checks and friendly errors).
pub async fn is_migrated(pool: &PgPool) -> Result<bool> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    // A missing bookkeeping table means "never migrated", not an error.
    let found = sqlx::query_scalar::<_, Option<i64>>(
        "SELECT max(version) FROM lineq._sqlx_migrations WHERE success",
    )
    .fetch_one(pool)
    .await
    .ok()
    .flatten();
    Ok(found.unwrap_or(0) >= latest)
}
