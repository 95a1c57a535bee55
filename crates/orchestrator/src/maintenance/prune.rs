//! Retention (`lineq prune --older-than 30d`): removes finished executions, their steps and
//! events, and archived queue messages, once they are older than the retention.
//!
//! - The unit is a root execution's whole tree. A root is removed when it and every execution
//!   under it are finished (completed, failed or cancelled) and the last of them finished before
//!   the cutoff; its executions, their steps and every event of the tree go in one
//!   transaction, so lineage is never left half there. A tree with anything unfinished is never
//!   touched, however old.
//! - Archived messages (`pgmq.a_<queue>` of every lineq queue: step queues, results, dead
//!   letters) are removed by age alone: those archived before the cutoff. The archive is the log
//!   of messages already processed; nothing reads it but lineage inspection, which reports
//!   messages it finds and never misses ones that are gone. Matching messages to executions
//!   would mean scanning every message's JSON, as the archive has no index on it; `archived_at`
//!   is indexed. Live messages (`pgmq.q_…`, including dead letters not yet replayed) are never
//!   touched.
//! - Work goes in batches of `batch_size` root executions (or archived messages) per
//!   transaction. Rows are taken with `FOR UPDATE SKIP LOCKED`, so a batch never waits for an
//!   orchestrator and two pruners share the work; each transaction is short and sets a
//!   `lock_timeout`, so the live system is never blocked for long.
//! - The cutoff is computed once, from the database's clock, so machines with skewed clocks
//!   agree and a long run does not chase a moving target.
//!
//! Once an execution is pruned, its idempotency key is free again.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::validation::{QueueName, ValidationError};

/// The largest batch: a transaction should stay short.
pub const MAX_BATCH_SIZE: i64 = 100_000;
/// The longest a batch waits for a lock before it gives up (and the run fails; run it again).
const LOCK_TIMEOUT: &str = "5s";
/// The longest retention accepted (100 years): beyond it the arithmetic means nothing.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// What to prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Remove what finished (or was archived) longer ago than this.
    pub older_than: Duration,
    /// Root executions (or archived messages) per transaction.
    pub batch_size: i64,
    /// Count what would be removed, remove nothing.
    pub dry_run: bool,
}

impl PruneOptions {
    /// Options for `older_than`, batches of 1000, really removing.
    pub fn new(older_than: Duration) -> Self {
        Self {
            older_than,
            batch_size: 1000,
            dry_run: false,
        }
    }

    fn validate(&self) -> std::result::Result<(), ValidationError> {
        if self.older_than.is_zero() || self.older_than > MAX_RETENTION {
            return Err(ValidationError::new(
                "older_than",
                "the retention must be more than zero and at most 100 years",
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(ValidationError::new(
                "batch_size",
                format!("it must be 1 to {MAX_BATCH_SIZE} (got {})", self.batch_size),
            ));
        }
        Ok(())
    }
}

/// Parses a retention such as `30d`, `12h`, `90m`, `45s` or `2w`: a whole number and one unit.
pub fn parse_retention(s: &str) -> std::result::Result<Duration, ValidationError> {
    let err = || {
        ValidationError::new(
            "older_than",
            format!(
                "{s:?} is not a retention; give a whole number and a unit: s, m, h, d or w (e.g. 30d, 12h, 90m)"
            ),
        )
    };
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err())?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(err()),
    };
    let secs = n.checked_mul(unit_secs).ok_or_else(err)?;
    let d = Duration::from_secs(secs);
    if d.is_zero() || d > MAX_RETENTION {
        return Err(ValidationError::new(
            "older_than",
            format!("{s:?}: the retention must be more than zero and at most 100 years"),
        ));
    }
    Ok(d)
}

/// What a run removed (or, dry, would remove).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Everything finished or archived before this is in scope.
    pub cutoff: DateTime<Utc>,
    /// True when nothing was removed.
    pub dry_run: bool,
    /// Root executions removed, each with its tree.
    pub root_executions: u64,
    /// Executions removed (roots and their descendants).
    pub executions: u64,
    /// Steps removed.
    pub steps: u64,
    /// Events removed.
    pub events: u64,
    /// Archived messages removed, all queues.
    pub archived_messages: u64,
    /// Archived messages removed, by queue.
    pub archived_by_queue: BTreeMap<String, u64>,
    /// Transactions committed.
    pub batches: u64,
    /// Trees that were old enough but were skipped because another transaction held one of their
    /// rows; the next run takes them.
    pub skipped_busy: u64,
}

/// One committed batch, for progress output.
#[derive(Debug, Clone, Serialize)]
pub struct PruneProgress {
    /// `executions` or `archive:<queue>`.
    pub phase: String,
    /// What this batch removed (root executions, or archived messages).
    pub removed: u64,
    /// The totals so far.
    pub totals: PruneReport,
}

/// Prunes (or counts, when `dry_run`) what is older than the retention, calling `progress`
/// after every committed batch.
#[expect(
    clippy::too_many_lines,
    reason = "the phases of a prune (trees, archives, workers) with their progress reports, in order"
)]
pub async fn prune(
    pool: &PgPool,
    options: &PruneOptions,
    mut progress: impl FnMut(&PruneProgress),
) -> Result<PruneReport> {
    options.validate()?;
    let cutoff: DateTime<Utc> = sqlx::query_scalar("SELECT now() - make_interval(secs => $1)")
        .bind(options.older_than.as_secs_f64())
        .fetch_one(pool)
        .await?;
    let mut report = PruneReport {
        cutoff,
        dry_run: options.dry_run,
        ..PruneReport::default()
    };
    let queues = archive_tables(pool).await?;
    if options.dry_run {
        count_trees(pool, cutoff, &mut report).await?;
        for (queue, table) in &queues {
            let sql = format_sql(
                pool,
                "SELECT count(*) FROM pgmq.%I WHERE archived_at < $1",
                table,
            )
            .await?;
            let n: i64 = sqlx::query_scalar(&sql)
                .bind(cutoff)
                .fetch_one(pool)
                .await?;
            report.archived_messages += count(n);
            report.archived_by_queue.insert(queue.clone(), count(n));
        }
        return Ok(report);
    }

    loop {
        let mut tx = pool.begin().await?;
        set_lock_timeout(&mut tx).await?;
        let batch = prune_trees(&mut tx, cutoff, options.batch_size).await?;
        tx.commit().await?;
        if batch.roots == 0 {
            // What is left old enough is only what someone else holds (a tree skipped by an
            // earlier batch may have been taken by a later one, so only this count is true).
            report.skipped_busy = batch.skipped_busy;
            break;
        }
        report.root_executions += batch.roots;
        report.executions += batch.executions;
        report.steps += batch.steps;
        report.events += batch.events;
        report.batches += 1;
        progress(&PruneProgress {
            phase: "executions".into(),
            removed: batch.roots,
            totals: report.clone(),
        });
    }

    for (queue, table) in &queues {
        let sql = format_sql(
            pool,
            // The batch is locked in a materialized CTE: a locking sub-select inside `IN` is
            // a plan node the executor may run again, and each run may lock a different set.
            "WITH batch AS MATERIALIZED (
                 SELECT msg_id FROM pgmq.%1$I WHERE archived_at < $1 LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             DELETE FROM pgmq.%1$I WHERE msg_id IN (SELECT msg_id FROM batch)",
            table,
        )
        .await?;
        loop {
            let mut tx = pool.begin().await?;
            set_lock_timeout(&mut tx).await?;
            let n = sqlx::query(&sql)
                .bind(cutoff)
                .bind(options.batch_size)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            if n == 0 {
                break;
            }
            report.archived_messages += n;
            *report.archived_by_queue.entry(queue.clone()).or_default() += n;
            report.batches += 1;
            progress(&PruneProgress {
                phase: format!("archive:{queue}"),
                removed: n,
                totals: report.clone(),
            });
        }
    }
    Ok(report)
}

/// The roots that may go: finished before the cutoff, with every execution of their tree
/// finished before it too. `created_at < cutoff` is implied (nothing finishes before it starts)
/// and lets the `(status, created_at)` index find candidates.
const ELIGIBLE_ROOTS: &str = "
    FROM lineq.executions r
    WHERE r.status IN ('completed', 'failed', 'cancelled')
      AND r.created_at < $1
      AND r.parent_execution_id IS NULL
      AND r.finished_at < $1
      AND NOT EXISTS (
          SELECT 1 FROM lineq.executions m
          WHERE m.root_execution_id = r.execution_id
            AND (m.status NOT IN ('completed', 'failed', 'cancelled')
                 OR m.finished_at IS NULL OR m.finished_at >= $1))";

struct TreeBatch {
    roots: u64,
    executions: u64,
    steps: u64,
    events: u64,
    skipped_busy: u64,
}

async fn prune_trees(
    tx: &mut PgConnection,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<TreeBatch> {
    let candidates: Vec<Uuid> = sqlx::query_scalar(&format!(
        "SELECT r.execution_id {ELIGIBLE_ROOTS} LIMIT $2 FOR UPDATE OF r SKIP LOCKED"
    ))
    .bind(cutoff)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if candidates.is_empty() {
        return Ok(TreeBatch {
            roots: 0,
            executions: 0,
            steps: 0,
            events: 0,
            skipped_busy: 0,
        });
    }
    // Lock every member without waiting; a tree with a member someone else holds (or one that
    // changed since the check above) waits for the next run rather than blocking anyone.
    let ready: Vec<Uuid> = sqlx::query_scalar(
        "WITH locked AS (
             SELECT m.root_execution_id, m.status, m.finished_at
             FROM lineq.executions m
             WHERE m.root_execution_id = ANY($1)
             FOR UPDATE SKIP LOCKED
         ),
         members AS (
             SELECT root_execution_id, count(*) AS n
             FROM lineq.executions WHERE root_execution_id = ANY($1)
             GROUP BY root_execution_id
         )
         SELECT l.root_execution_id
         FROM locked l JOIN members t USING (root_execution_id)
         GROUP BY l.root_execution_id, t.n
         HAVING count(*) = t.n
            AND bool_and(l.status IN ('completed', 'failed', 'cancelled')
                         AND l.finished_at < $2)",
    )
    .bind(&candidates)
    .bind(cutoff)
    .fetch_all(&mut *tx)
    .await?;
    let skipped_busy = (candidates.len() - ready.len()) as u64;
    if ready.is_empty() {
        return Ok(TreeBatch {
            roots: 0,
            executions: 0,
            steps: 0,
            events: 0,
            skipped_busy,
        });
    }
    // Steps carry no foreign key (migration 000009): they go first, by their executions.
    let steps = sqlx::query(
        "DELETE FROM lineq.steps s USING lineq.executions x
         WHERE x.execution_id = s.execution_id AND x.root_execution_id = ANY($1)",
    )
    .bind(&ready)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let events = sqlx::query("DELETE FROM lineq.events WHERE root_execution_id = ANY($1)")
        .bind(&ready)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    // A fired execution is a root; the record of its fire goes with it (the schedule keeps
    // its `last_fired_at`).
    sqlx::query("DELETE FROM lineq.schedule_fires WHERE execution_id = ANY($1)")
        .bind(&ready)
        .execute(&mut *tx)
        .await?;
    // One statement for the whole tree: the parent foreign key is checked at its end, when the
    // children are gone too.
    let executions = sqlx::query("DELETE FROM lineq.executions WHERE root_execution_id = ANY($1)")
        .bind(&ready)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(TreeBatch {
        roots: ready.len() as u64,
        executions,
        steps,
        events,
        skipped_busy,
    })
}

async fn count_trees(pool: &PgPool, cutoff: DateTime<Utc>, report: &mut PruneReport) -> Result<()> {
    let (roots, executions, steps, events): (i64, i64, i64, i64) = sqlx::query_as(&format!(
        "WITH roots AS (SELECT r.execution_id {ELIGIBLE_ROOTS}),
              tree AS (SELECT x.execution_id FROM lineq.executions x
                       WHERE x.root_execution_id IN (SELECT execution_id FROM roots))
         SELECT (SELECT count(*) FROM roots),
                (SELECT count(*) FROM tree),
                (SELECT count(*) FROM lineq.steps s WHERE s.execution_id IN (SELECT execution_id FROM tree)),
                (SELECT count(*) FROM lineq.events e
                 WHERE e.root_execution_id IN (SELECT execution_id FROM roots))"
    ))
    .bind(cutoff)
    .fetch_one(pool)
    .await?;
    report.root_executions = count(roots);
    report.executions = count(executions);
    report.steps = count(steps);
    report.events = count(events);
    Ok(())
}

/// The archive tables of lineq's queues, as (queue, table). Names come from `lineq.queues()` and are
/// validated like any queue name before they are used as identifiers.
async fn archive_tables(pool: &PgPool) -> Result<Vec<(String, String)>> {
    let names: Vec<String> = sqlx::query_scalar(
        // Only queues whose tables are lineq's own plain tables (see lineq.queues()).
        "SELECT queue_name FROM lineq.queues()",
    )
    .fetch_all(pool)
    .await?;
    Ok(names
        .into_iter()
        .filter_map(|n| match QueueName::new(&n) {
            Ok(q) => Some((n, format!("a_{q}"))),
            Err(_) => {
                tracing::warn!(queue = %n, "skipping a queue with a name lineq would not create");
                None
            }
        })
        .collect())
}

/// `template` with `%I` filled in by PostgreSQL's `format()`: table names cannot be bound
/// parameters, so they are quoted by the server, never spliced in here.
async fn format_sql(pool: &PgPool, template: &str, ident: &str) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT format($1, $2)")
        .bind(template)
        .bind(ident)
        .fetch_one(pool)
        .await?)
}

async fn set_lock_timeout(tx: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(LOCK_TIMEOUT)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions() {
        assert_eq!(
            parse_retention("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_retention("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(
            parse_retention("90m").unwrap(),
            Duration::from_secs(90 * 60)
        );
        assert_eq!(parse_retention("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(
            parse_retention("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        for bad in [
            "",
            "30",
            "d",
            "0d",
            "-1d",
            "1.5d",
            "30 d",
            "30D",
            "30days",
            "1y",
            "99999999999999999999d",
            "40000d",
        ] {
            assert_eq!(
                parse_retention(bad).unwrap_err().field,
                "older_than",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn options_are_checked() {
        let mut o = PruneOptions::new(Duration::from_secs(60));
        assert!(o.validate().is_ok());
        o.batch_size = 0;
        assert_eq!(o.validate().unwrap_err().field, "batch_size");
        o.batch_size = MAX_BATCH_SIZE + 1;
        assert!(o.validate().is_err());
        let o = PruneOptions::new(Duration::ZERO);
        assert_eq!(o.validate().unwrap_err().field, "older_than");
    }
}
