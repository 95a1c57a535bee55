//! The bench's rows on the database as it is, then again after a history of N executions, side
//! by side: what a grown history costs the hot path (issue 25's targets: CPU per execution at
//! the history at most 1.1× the fresh figure, the 4-step p50 at most 1.2×).

use serde::Serialize;
use sqlx::PgPool;

use super::history::{self, HistoryFill};
use super::{BenchConfig, BenchReport, Target, run, table, targets_table};

/// Both runs, the history between them, and their ratios.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    /// The history the second run met.
    pub history: HistoryFill,
    /// The rows on the database before the fill.
    pub fresh: BenchReport,
    /// The same rows after it.
    pub at_history: BenchReport,
    /// At history / fresh.
    pub comparison: Comparison,
}

/// One figure in both runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratio {
    /// Before the fill.
    pub fresh: f64,
    /// After it.
    pub at_history: f64,
    /// `at_history / fresh`.
    pub ratio: f64,
}

impl Ratio {
    fn of(fresh: f64, at_history: f64) -> Self {
        Self {
            fresh,
            at_history,
            ratio: at_history / fresh.max(f64::EPSILON),
        }
    }

    fn of_both(fresh: Option<f64>, at_history: Option<f64>) -> Option<Self> {
        fresh.zip(at_history).map(|(f, h)| Self::of(f, h))
    }
}

/// One throughput row in both runs.
#[derive(Debug, Clone, Serialize)]
pub struct RowComparison {
    /// The row.
    pub name: String,
    /// Executions per second.
    pub per_second: Ratio,
    /// The machine's CPU per execution (µs); none where `/proc` cannot be read.
    pub cpu_us: Option<Ratio>,
    /// lineq's process's CPU per execution (µs).
    pub process_cpu_us: Option<Ratio>,
    /// WAL bytes per execution.
    pub wal_bytes: Ratio,
}

/// At history / fresh.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Raw PGMQ's rate: how the machine's speed moved between the runs (its queue holds no
    /// history).
    pub raw_pgmq_per_second: Ratio,
    /// Every throughput row both runs have.
    pub rows: Vec<RowComparison>,
    /// Pickup latency p50 (ms).
    pub pickup_p50_ms: Ratio,
    /// 4-step workflow p50 (ms).
    pub workflow_p50_ms: Ratio,
    /// The machine's commit reference p50 (ms).
    pub commit_round_trip_p50_ms: Ratio,
    /// Issue 25's targets, met or not.
    pub targets: Vec<Target>,
}

/// CPU per execution at history, as a multiple of fresh.
const CPU_BOUND: f64 = 1.1;
/// 4-step p50 at history, as a multiple of fresh.
const WORKFLOW_BOUND: f64 = 1.2;

impl Comparison {
    /// The ratios of two runs.
    pub fn of(fresh: &BenchReport, at: &BenchReport) -> Self {
        let rows: Vec<RowComparison> = fresh
            .throughput
            .iter()
            .filter_map(|f| {
                let h = at.throughput.iter().find(|h| h.name == f.name)?;
                let (fc, hc) = (f.cost_per_execution, h.cost_per_execution);
                Some(RowComparison {
                    name: f.name.clone(),
                    per_second: Ratio::of(f.per_second, h.per_second),
                    cpu_us: Ratio::of_both(fc.cpu_us, hc.cpu_us),
                    process_cpu_us: Ratio::of_both(fc.process_cpu_us, hc.process_cpu_us),
                    wal_bytes: Ratio::of(fc.wal_bytes, hc.wal_bytes),
                })
            })
            .collect();
        let workflow_p50_ms = Ratio::of(fresh.workflow_latency_ms.p50, at.workflow_latency_ms.p50);
        // The plain row: the first of both runs.
        let cpu = rows.first().and_then(|r| r.cpu_us);
        let targets = vec![
            Target {
                name: "CPU per execution at history".into(),
                bound: format!("≤ {CPU_BOUND}× fresh"),
                measured: cpu.map_or("-".into(), |c| format!("{:.3}×", c.ratio)),
                met: cpu.is_some_and(|c| c.ratio <= CPU_BOUND),
            },
            Target {
                name: "4-step p50 at history".into(),
                bound: format!("≤ {WORKFLOW_BOUND}× fresh"),
                measured: format!("{:.3}×", workflow_p50_ms.ratio),
                met: workflow_p50_ms.ratio <= WORKFLOW_BOUND,
            },
        ];
        Self {
            raw_pgmq_per_second: Ratio::of(fresh.raw_pgmq_per_second, at.raw_pgmq_per_second),
            rows,
            pickup_p50_ms: Ratio::of(fresh.pickup_latency_ms.p50, at.pickup_latency_ms.p50),
            workflow_p50_ms,
            commit_round_trip_p50_ms: Ratio::of(
                fresh.commit_round_trip_ms.p50,
                at.commit_round_trip_ms.p50,
            ),
            targets,
        }
    }
}

/// The rows, the fill of `n` executions of history, the rows again.
pub async fn run_with_history(
    pool: &PgPool,
    cfg: &BenchConfig,
    n: u64,
) -> anyhow::Result<HistoryReport> {
    let fresh = run(pool, cfg).await?;
    let history = history::fill(pool, cfg, n).await?;
    let at_history = run(pool, cfg).await?;
    let comparison = Comparison::of(&fresh, &at_history);
    Ok(HistoryReport {
        history,
        fresh,
        at_history,
        comparison,
    })
}

/// Both tables and the comparison, as `lineq bench --history` prints them.
pub fn history_table(r: &HistoryReport) -> String {
    use std::fmt::Write;
    let h = &r.history;
    let mut s = String::new();
    let _ = writeln!(s, "== on the database before the history");
    s.push_str(&table(&r.fresh));
    let _ = writeln!(
        s,
        "\n== at a history of {} executions ({} failed), {} events, {} archived messages",
        h.executions, h.failed, h.events, h.archived_messages
    );
    let _ = writeln!(
        s,
        "   started {} to {}; filled in {:.0} s, vacuumed and analyzed in {:.0} s;\n   \
         database {:.2} GB (was {:.2} GB), {} executions and {} events in it",
        h.from.format("%Y-%m-%d %H:%M"),
        h.until.format("%Y-%m-%d %H:%M"),
        h.fill_seconds,
        h.vacuum_seconds,
        h.database_bytes as f64 / 1e9,
        h.database_bytes_before as f64 / 1e9,
        h.executions_in_database,
        h.events_in_database
    );
    s.push_str(&table(&r.at_history));
    comparison_table(&mut s, &r.comparison);
    s
}

fn comparison_table(s: &mut String, c: &Comparison) {
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "\n{:<44} {:>12} {:>12} {:>8}",
        "at history / fresh", "fresh", "at history", "ratio"
    );
    let mut line = |name: &str, r: Option<Ratio>, precision: usize| {
        let _ = match r {
            Some(r) => writeln!(
                s,
                "{name:<44} {:>12.precision$} {:>12.precision$} {:>8.3}",
                r.fresh, r.at_history, r.ratio
            ),
            None => writeln!(s, "{name:<44} {:>12} {:>12} {:>8}", "-", "-", "-"),
        };
    };
    line(
        "raw PGMQ, messages per second",
        Some(c.raw_pgmq_per_second),
        0,
    );
    for row in &c.rows {
        line(
            &format!("{}, per second", row.name),
            Some(row.per_second),
            0,
        );
        line("  CPU µs per execution, machine", row.cpu_us, 0);
        line(
            "  CPU µs per execution, lineq's process",
            row.process_cpu_us,
            0,
        );
        line("  WAL bytes per execution", Some(row.wal_bytes), 0);
    }
    line("pickup p50 (ms)", Some(c.pickup_p50_ms), 2);
    line("4-step workflow p50 (ms)", Some(c.workflow_p50_ms), 2);
    line(
        "reference: one durable commit p50 (ms)",
        Some(c.commit_round_trip_p50_ms),
        2,
    );
    targets_table(s, "target (issue 25)", &c.targets);
}
