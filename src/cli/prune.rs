//! `lineq prune --older-than 30d [--dry-run] [--batch-size N]`.

use super::output::outln;
use clap::Args;
use sqlx::PgPool;

use lineq_orchestrator::maintenance::prune::{self, PruneOptions, PruneReport};

use super::{Format, print_json};

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove root executions whose whole tree finished longer ago than this (with their steps
    /// and events), and messages archived longer ago than this: a whole number and a unit,
    /// s, m, h, d or w (e.g. 30d, 12h, 90m).
    #[arg(long, value_name = "DURATION")]
    pub older_than: String,
    /// Count what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Root executions (or archived messages) per transaction; each transaction stays short.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: i64,
}

pub async fn run(pool: &PgPool, format: Format, a: PruneArgs) -> anyhow::Result<()> {
    let options = PruneOptions {
        older_than: prune::parse_retention(&a.older_than)?,
        batch_size: a.batch_size,
        dry_run: a.dry_run,
    };
    // Progress goes to stderr, so stdout holds only the result (and stays valid JSON).
    let report = prune::prune(pool, &options, |p| {
        let t = &p.totals;
        eprintln!(
            "pruned {} {}: so far {} root execution(s), {} execution(s), {} step(s), {} event(s), {} archived message(s)",
            p.removed,
            if p.phase == "executions" {
                "root execution(s)".to_string()
            } else {
                format!("message(s) from {}", p.phase)
            },
            t.root_executions,
            t.executions,
            t.steps,
            t.events,
            t.archived_messages
        );
    })
    .await?;
    match format {
        Format::Json => print_json(&report)?,
        Format::Text => print_text(&report),
    }
    Ok(())
}

fn print_text(r: &PruneReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    outln!(
        "cutoff {} ({verb} what finished or was archived before it)",
        r.cutoff.to_rfc3339()
    );
    outln!(
        "{verb}: {} root execution(s) with their trees: {} execution(s), {} step(s), {} event(s)",
        r.root_executions,
        r.executions,
        r.steps,
        r.events
    );
    outln!("{verb}: {} archived message(s)", r.archived_messages);
    for (queue, n) in r.archived_by_queue.iter().filter(|(_, n)| **n > 0) {
        outln!("  {queue}: {n}");
    }
    if r.skipped_busy > 0 {
        outln!(
            "skipped {} tree(s) another transaction was using; run again to take them",
            r.skipped_busy
        );
    }
}
