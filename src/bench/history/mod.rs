//! `lineq bench --history N`: fills the database with N finished executions of history, so the
//! bench's rows can run again at that size and be compared with their run on the database as it
//! was.
//!
//! The history is made by PostgreSQL from real executions: two templates (one completed, one
//! failed) run by the bench's own orchestrator and worker, then copied in batches, every row as
//! lineq wrote the template's (`copy.rs`): the execution, its step, its events and its archived
//! step message (its result message was deleted once applied). The copies are spread over the
//! seven days before the fill, one in 50 failed, all of one workflow of their own
//! (`bench.history.<uuid>.<n>`), so no row of the bench counts them. Then the tables are vacuumed and analyzed, as autovacuum would have done
//! for a database that grew to this size, and a checkpoint writes the fill out: neither is left
//! to run during the rows measured next.

mod copy;
mod templates;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{ConnectOptions, Connection, PgPool};
use uuid::Uuid;

use crate::bench::{BenchConfig, bar, run_label};
use copy::{Batch, Statements, Written};

/// Copies per transaction.
const BATCH: i64 = 50_000;
/// One copy in this many is of the failed template.
const FAIL_EVERY: i64 = 50;
/// How far back the history starts.
const SPAN: Duration = Duration::from_secs(7 * 24 * 3600);
/// Lineage trees of the history checked after the fill (each check reads the queue archives
/// whole, which hold two messages of every copy).
const CHECKED: i64 = 4;

/// What the fill made.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryFill {
    /// The history's workflow (and handler) name.
    pub workflow: String,
    /// Executions of history, the two templates among them.
    pub executions: u64,
    /// Of which failed.
    pub failed: u64,
    /// Their events.
    pub events: u64,
    /// Their archived step messages.
    pub archived_messages: u64,
    /// When the first copy started.
    pub from: DateTime<Utc>,
    /// When the last copy started.
    pub until: DateTime<Utc>,
    /// Seconds the templates and the copies took.
    pub fill_seconds: f64,
    /// Seconds VACUUM ANALYZE of the filled tables and the checkpoint took.
    pub vacuum_seconds: f64,
    /// `pg_database_size` before the fill (after the fresh rows) and after it, in bytes.
    pub database_bytes_before: i64,
    /// `pg_database_size` after the fill, in bytes.
    pub database_bytes: i64,
    /// Executions and events in the database after the fill (the history and every earlier
    /// row).
    pub executions_in_database: i64,
    /// Events in the database after the fill.
    pub events_in_database: i64,
}

/// Fills `pool`'s database with `n` (at least 2) executions of history.
pub async fn fill(pool: &PgPool, cfg: &BenchConfig, n: u64) -> anyhow::Result<HistoryFill> {
    anyhow::ensure!(
        n >= 2,
        "--history: at least 2 executions (the two templates)"
    );
    let database_bytes_before = database_size(pool).await?;
    let started = Instant::now();
    let workflow = run_label("history");
    let templates = templates::run(pool, cfg, &workflow).await?;
    let copies = i64::try_from(n - 2)?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await?;
    let from = now - chrono::Duration::from_std(SPAN)?;
    let spacing_ms = (SPAN.as_millis() as f64 - 60_000.0) / copies.max(1) as f64;
    let seed = Uuid::now_v7().simple().to_string();
    // One connection of its own: the templates wait in its temporary tables, and go with it.
    // Its statements are slow by design (50,000 copies each): not a warning to log.
    let options = (*pool.connect_options())
        .clone()
        .disable_statement_logging();
    let mut conn = sqlx::PgConnection::connect_with(&options).await?;
    copy::load_templates(&mut conn, &templates).await?;
    let total = copy_all(
        &mut conn,
        cfg,
        &templates,
        &Batch {
            lo: 0,
            hi: copies - 1,
            seed,
            start: from,
            spacing_ms,
            fail_every: FAIL_EVERY,
        },
    )
    .await?;
    conn.close().await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    check(pool, &templates, &workflow).await?;
    let vacuumed = Instant::now();
    vacuum(pool, cfg, &templates).await?;
    let vacuum_seconds = vacuumed.elapsed().as_secs_f64();
    let (executions_in_database, events_in_database): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM lineq.executions), (SELECT count(*) FROM lineq.events)",
    )
    .fetch_one(pool)
    .await?;
    let failed = u64::try_from(failed_among(0, copies - 1))? + 1;
    Ok(HistoryFill {
        workflow,
        executions: n,
        failed,
        events: total.events + templates.completed.events + templates.failed.events,
        archived_messages: total.messages
            + (templates.completed.messages.len() + templates.failed.messages.len()) as u64,
        from,
        until: from
            + chrono::Duration::milliseconds(((copies.max(1) - 1) as f64 * spacing_ms) as i64),
        fill_seconds,
        vacuum_seconds,
        database_bytes_before,
        database_bytes: database_size(pool).await?,
        executions_in_database,
        events_in_database,
    })
}

/// Writes copies `all.lo..=all.hi` in batches of [`BATCH`], each checked for the rows it wrote.
async fn copy_all(
    conn: &mut sqlx::PgConnection,
    cfg: &BenchConfig,
    templates: &templates::Templates,
    all: &Batch,
) -> anyhow::Result<Written> {
    let statements = Statements::new(templates)?;
    let pb = bar(cfg, u64::try_from(all.hi - all.lo + 1)?, "history fill");
    let mut total = Written::default();
    let mut lo = all.lo;
    while lo <= all.hi {
        let hi = (lo + BATCH - 1).min(all.hi);
        let b = Batch {
            lo,
            hi,
            ..all.clone()
        };
        let w = copy::batch(conn, &statements, templates, &b).await?;
        let failed = failed_among(lo, hi);
        let expected = (hi - lo + 1 - failed) as u64 * templates.completed.events
            + failed as u64 * templates.failed.events;
        anyhow::ensure!(
            w.executions == (hi - lo + 1) as u64 && w.events == expected,
            "history copies {lo}..={hi}: wrote {} executions and {} events, expected {} and \
             {expected}",
            w.executions,
            w.events,
            hi - lo + 1
        );
        total.executions += w.executions;
        total.events += w.events;
        total.messages += w.messages;
        pb.inc((hi - lo + 1) as u64);
        lo = hi + 1;
    }
    pb.finish_and_clear();
    Ok(total)
}

/// Copies of the failed template among copies `lo..=hi`.
fn failed_among(lo: i64, hi: i64) -> i64 {
    // Copy i is failed when i % FAIL_EVERY == FAIL_EVERY - 1: count those up to hi, less those
    // before lo.
    let upto = |i: i64| (i + 1) / FAIL_EVERY;
    if hi < lo { 0 } else { upto(hi) - upto(lo - 1) }
}

async fn database_size(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(pool)
            .await?,
    )
}

/// The fill checks its own work on a sample of copies, failed ones among them: each lineage
/// tree is whole, holds the template's messages, and names no id of a template.
async fn check(
    pool: &PgPool,
    templates: &templates::Templates,
    workflow: &str,
) -> anyhow::Result<()> {
    let template_ids = templates.ids(pool).await?;
    let roots = [
        templates.completed.execution_id,
        templates.failed.execution_id,
    ];
    let sample: Vec<Uuid> = sqlx::query_scalar(
        "(SELECT execution_id FROM lineq.executions
          WHERE workflow_name = $1 AND status = 'completed' AND NOT execution_id = ANY($3)
          ORDER BY random() LIMIT $2)
         UNION ALL
         (SELECT execution_id FROM lineq.executions
          WHERE workflow_name = $1 AND status = 'failed' AND NOT execution_id = ANY($3)
          ORDER BY random() LIMIT $2)",
    )
    .bind(workflow)
    .bind(CHECKED / 2)
    .bind(&roots[..])
    .fetch_all(pool)
    .await?;
    for id in sample {
        let report = lineq_read::lineage::check::check_root(pool, id).await?;
        anyhow::ensure!(
            report.is_whole(),
            "history copy {id}: its lineage is not whole: {report:?}"
        );
        anyhow::ensure!(
            report.messages == templates.completed.messages.len(),
            "history copy {id}: {} messages in its tree, expected {}",
            report.messages,
            templates.completed.messages.len()
        );
        let text: String = sqlx::query_scalar(
            "SELECT concat_ws(' ',
                 (SELECT row_to_json(x)::text FROM lineq.executions x WHERE execution_id = $1),
                 (SELECT string_agg(row_to_json(s)::text, ' ') FROM lineq.steps s
                  WHERE execution_id = $1),
                 (SELECT string_agg(row_to_json(e)::text, ' ') FROM lineq.events e
                  WHERE execution_id = $1),
                 (SELECT string_agg(m.message::text, ' ') FROM lineq.lineage_messages($1) m))",
        )
        .bind(id)
        .fetch_one(pool)
        .await?;
        if let Some(old) = copy::names_a_template(&text, &template_ids) {
            anyhow::bail!("history copy {id} still names {old} of its template");
        }
    }
    Ok(())
}

/// VACUUM ANALYZE of every table the fill wrote, then a checkpoint.
async fn vacuum(
    pool: &PgPool,
    cfg: &BenchConfig,
    templates: &templates::Templates,
) -> anyhow::Result<()> {
    let mut tables = vec![
        "lineq.executions".to_string(),
        "lineq.steps".to_string(),
        "lineq.events".to_string(),
    ];
    for (q, _, _) in &templates.completed.messages {
        tables.push(lineq_core::queue::archive_table(q));
    }
    let pb = bar(cfg, tables.len() as u64, "history vacuum");
    for t in &tables {
        // Table names from lineq's schema and its validated queue names only.
        sqlx::query(&format!("VACUUM (ANALYZE) {t}"))
            .execute(pool)
            .await?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    // The fill's dirty pages would otherwise be written out during the rows that follow. A
    // role without the right to checkpoint leaves it to the server.
    if let Err(e) = sqlx::query("CHECKPOINT").execute(pool).await {
        eprintln!("note: no CHECKPOINT after the history fill ({e})");
    }
    Ok(())
}
