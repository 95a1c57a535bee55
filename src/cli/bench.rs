//! `lineq bench`.

use super::output::out;
use clap::Args;

use crate::bench::{BenchConfig, run as run_bench, table};

use super::{Format, print_json};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Executions per throughput run (each row runs twice) and messages per raw PGMQ run.
    #[arg(long, default_value_t = 50_000)]
    pub executions: usize,
    /// In-process orchestrators.
    #[arg(long, default_value_t = 2)]
    pub orchestrators: usize,
    /// In-process workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Handlers each worker runs at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Messages claimed per read and results processed per transaction.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Executions per submit transaction.
    #[arg(long, default_value_t = 500)]
    pub submit_batch: usize,
    /// Executions submitted one at a time for the pickup latency (a quarter of it for the
    /// workflow latency).
    #[arg(long, default_value_t = 1000)]
    pub latency_samples: usize,
    /// Skip the traced throughput row.
    #[arg(long)]
    pub no_tracing_row: bool,
    /// Skip the design-floor row: the same executions' rows written by plain SQL alone, about
    /// the most throughput design.md's rows allow on this machine.
    #[arg(long)]
    pub no_floor_row: bool,
    /// No progress bars (they are off anyway with --format json).
    #[arg(long)]
    pub no_progress: bool,
}

pub async fn run(url: Option<String>, format: Format, a: BenchArgs) -> anyhow::Result<()> {
    let (pool, local) = super::demo::database(url).await?;
    lineq::migrate(&pool).await?;
    let cfg = BenchConfig {
        executions: a.executions.max(1),
        orchestrators: a.orchestrators.max(1),
        workers: a.workers.max(1),
        concurrency: a.concurrency.max(1),
        batch_size: a.batch_size.max(1),
        submit_batch: a.submit_batch.max(1),
        latency_samples: a.latency_samples.max(10),
        progress: !a.no_progress && format == Format::Text,
        tracing_row: !a.no_tracing_row,
        floor_row: !a.no_floor_row,
    };
    let result = run_bench(&pool, &cfg).await;
    pool.close().await;
    if let Some(pg) = local {
        pg.stop().await?;
    }
    let report = result?;
    match format {
        Format::Json => print_json(&report)?,
        Format::Text => out!("{}", table(&report)),
    }
    Ok(())
}
