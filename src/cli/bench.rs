//! `lineq bench`.

use super::output::out;
use clap::Args;

use crate::bench::{BenchConfig, history_table, run as run_bench, run_with_history, table};

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
    /// Skip the keyed row (the plain row's executions under 16 concurrency keys).
    #[arg(long)]
    pub no_keyed_row: bool,
    /// Run the rows on the database as it is, then fill it with a history of N finished
    /// executions (copies, made by SQL, of one that completed and one that failed through
    /// lineq: 8 events each, every row as lineq wrote it, spread over the past 7 days, 1 in 50
    /// failed), then run the same rows again and report both side by side with their ratios.
    /// The fill's rows stay in the database. 1,250,000 executions are 10,000,000 events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pub history: Option<u64>,
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
        keyed_row: !a.no_keyed_row,
    };
    let result = match a.history {
        None => run_bench(&pool, &cfg)
            .await
            .map(|r| Report::Plain(Box::new(r))),
        Some(n) => run_with_history(&pool, &cfg, n)
            .await
            .map(|r| Report::History(Box::new(r))),
    };
    pool.close().await;
    if let Some(pg) = local {
        pg.stop().await?;
    }
    match (result?, format) {
        (Report::Plain(r), Format::Json) => print_json(&r)?,
        (Report::Plain(r), Format::Text) => out!("{}", table(&r)),
        (Report::History(r), Format::Json) => print_json(&r)?,
        (Report::History(r), Format::Text) => out!("{}", history_table(&r)),
    }
    Ok(())
}

enum Report {
    Plain(Box<crate::bench::BenchReport>),
    History(Box<crate::bench::HistoryReport>),
}
