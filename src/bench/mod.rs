//! `lineq bench`: measures lineq against raw PGMQ on the same database in one run, so every
//! figure is a ratio on the same machine at the same moment (see docs/benchmarks.md).

mod at_history;
mod cost;
mod design_floor;
mod history;
mod latency;
mod memory;
mod otlp_sink;
mod raw_pgmq;
mod throughput;

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sqlx::PgPool;

pub use at_history::{HistoryReport, history_table, run_with_history};
pub use latency::Percentiles;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Executions in the throughput runs (and messages in the raw PGMQ reference).
    pub executions: usize,
    /// In-process orchestrators.
    pub orchestrators: usize,
    /// In-process workers.
    pub workers: usize,
    /// Handlers each worker runs at once.
    pub concurrency: usize,
    /// Messages a worker claims per read, results an orchestrator processes per transaction.
    pub batch_size: usize,
    /// Executions per `submit_many` transaction.
    pub submit_batch: usize,
    /// Executions for each latency measurement.
    pub latency_samples: usize,
    /// Show progress bars.
    pub progress: bool,
    /// Also run the traced throughput row (span export to an in-process OTLP receiver).
    pub tracing_row: bool,
    /// Also run the design floor: the rows of the same executions written by SQL alone.
    pub floor_row: bool,
    /// Also run the keyed row: the plain row's executions under concurrency keys.
    pub keyed_row: bool,
}

/// A name for one run's executions (their workflow and handler), unique across processes, so
/// a bench never counts an earlier bench's executions on the same database as its own.
fn run_label(what: &str) -> String {
    static PROCESS: LazyLock<String> = LazyLock::new(|| uuid::Uuid::now_v7().simple().to_string());
    static RUN: AtomicUsize = AtomicUsize::new(0);
    format!(
        "bench.{what}.{}.{}",
        *PROCESS,
        RUN.fetch_add(1, Ordering::Relaxed)
    )
}

/// One throughput row.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    /// What was measured.
    pub name: String,
    /// Executions completed.
    pub executions: usize,
    /// Seconds from the first submit to the last completion.
    pub seconds: f64,
    /// Executions completed per second.
    pub per_second: f64,
    /// Ratio to the raw PGMQ reference.
    pub ratio_to_raw: f64,
    /// Events written.
    pub events: i64,
    /// Peak resident memory during the run (MiB), and its growth from the first tenth.
    pub peak_rss_mib: f64,
    /// RSS at the end minus RSS after the first tenth of the run (MiB).
    pub rss_growth_mib: f64,
    /// What an execution cost while the row ran: WAL, the machine's busy CPU (the server's
    /// and lineq's when the database runs on this machine) and lineq's process's part of it.
    pub cost_per_execution: cost::PerUnit,
    /// For the traced row: spans the receiver got (all that were sent when none was dropped).
    pub spans_received: Option<usize>,
    /// For the traced row: spans lineq handed to its exporter (three per one-step execution:
    /// the execution, its step, its attempt; every event is a span event of one of them).
    pub spans_sent: Option<usize>,
    /// Executions per second of each run combined into this row, in the order they ran.
    pub runs: Vec<f64>,
}

const PLAIN: &str = "lineq, full lineage";
const KEYED: &str = "lineq, concurrency key (16 keys)";
/// Keys of the keyed row.
const KEYS: usize = 16;

impl ThroughputRow {
    /// Runs of the same row as one: their executions over their seconds, the peak and the
    /// largest growth of memory, spans summed.
    fn combine(runs: &[ThroughputRow], raw: f64) -> ThroughputRow {
        let executions: usize = runs.iter().map(|r| r.executions).sum();
        let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
        let per_second = executions as f64 / seconds.max(f64::EPSILON);
        ThroughputRow {
            name: runs.first().map(|r| r.name.clone()).unwrap_or_default(),
            executions,
            seconds,
            per_second,
            ratio_to_raw: per_second / raw,
            events: runs.iter().map(|r| r.events).sum(),
            peak_rss_mib: runs.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max),
            rss_growth_mib: runs
                .iter()
                .map(|r| r.rss_growth_mib)
                .fold(f64::MIN, f64::max),
            cost_per_execution: cost::PerUnit::mean(
                runs.iter().map(|r| (r.cost_per_execution, r.executions)),
            ),
            spans_received: runs.iter().map(|r| r.spans_received).sum::<Option<usize>>(),
            spans_sent: runs.iter().map(|r| r.spans_sent).sum::<Option<usize>>(),
            runs: runs.iter().flat_map(|r| r.runs.iter().copied()).collect(),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Raw PGMQ: messages per second through send_batch/read_batch/delete_batch (the mean of
    /// the two runs in `raw_pgmq_runs`).
    pub raw_pgmq_per_second: f64,
    /// The raw PGMQ reference, run first and again last, so a machine whose speed drifts
    /// during the bench moves both ends of every ratio.
    pub raw_pgmq_runs: [f64; 2],
    /// What a raw message cost (the mean of the two runs): the unit the lineq rows' costs are
    /// compared with. The process's part is the reference's client.
    pub raw_pgmq_cost_per_message: cost::PerUnit,
    /// lineq throughput rows.
    pub throughput: Vec<ThroughputRow>,
    /// The design floor: executions per second when the rows design.md requires of them are
    /// written by plain SQL alone (no lineq code, 100 per statement, no NOTIFY): what the
    /// design's rows cost on this machine. Run before and after the lineq rows.
    pub design_floor: Option<FloorRow>,
    /// Tracing cost: 1 − traced/untraced throughput.
    pub tracing_cost: Option<f64>,
    /// Submit committed → handler started, idle system (ms).
    pub pickup_latency_ms: Percentiles,
    /// A 4-step linear workflow, submit → completed (ms).
    pub workflow_latency_ms: Percentiles,
    /// The machine's reference for the latencies: one durable commit (a WAL record written and
    /// flushed, no table touched) from this process, sampled just before each 4-step workflow
    /// (ms). The workflow's own figure moves with it: this machine's 4-step p50 has
    /// ranged from 14 to 34 ms with the same code, hour to hour.
    pub commit_round_trip_ms: Percentiles,
    /// The 4-step p50 as a multiple of the commit reference's p50: a within-run ratio that
    /// holds still when the machine's speed does not.
    pub workflow_in_commits: f64,
    /// The targets, and whether this run met them.
    pub targets: Vec<Target>,
    /// CPU cores of this machine, for what the CPU figures allow: with every core busy, a row
    /// costing `c` µs per execution runs at most `cores × 10⁶ / c` executions a second.
    pub cores: usize,
    /// Whether the server runs on this machine (a Unix socket or a loopback address): only
    /// then do the CPU figures include the server's work, and say what the CPU allows.
    pub database_on_this_machine: bool,
}

/// The design floor's figures.
#[derive(Debug, Clone, Serialize)]
pub struct FloorRow {
    /// Executions per second: the mean of `runs`.
    pub per_second: f64,
    /// The two runs, before and after the lineq rows.
    pub runs: [f64; 2],
    /// Ratio to the raw PGMQ reference: about the best ratio the design's rows allow here.
    pub ratio_to_raw: f64,
    /// lineq's throughput as a share of this floor: what lineq's own code leaves of it.
    pub lineq_share: f64,
    /// What an execution cost (the mean of the two runs); the process's part is the floor's
    /// client.
    pub cost_per_execution: cost::PerUnit,
}

/// A target from issue 7 and this run's figure.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What it is.
    pub name: String,
    /// The bound.
    pub bound: String,
    /// This run's figure.
    pub measured: String,
    /// Met or not.
    pub met: bool,
}

fn bar(cfg: &BenchConfig, len: u64, what: &str) -> ProgressBar {
    if !cfg.progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:<28} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Runs every measurement against `pool` (which must be migrated and otherwise idle).
///
/// The latencies are measured first, on the idle system. Then the throughput rows run twice
/// each, in the order floor, plain, keyed, traced, traced, keyed, plain, floor, between two runs of the raw
/// reference: on a machine whose speed drifts (a shared 2-core VM does), each row then sees the
/// same average conditions, and the ratios compare like with like.
#[expect(
    clippy::too_many_lines,
    reason = "the rows of the bench, run in the order the table shows them"
)]
pub async fn run(pool: &PgPool, cfg: &BenchConfig) -> anyhow::Result<BenchReport> {
    // Latency first, while the system is idle as the issue means it: after the throughput rows
    // PostgreSQL is still checkpointing and vacuuming their hundreds of thousands of rows.
    let pickup = latency::pickup(pool, cfg).await?;
    let latency::WorkflowLatency {
        workflow,
        commit_round_trip,
    } = latency::linear_workflow(pool, cfg).await?;
    let raw_first = raw_pgmq::run(pool, cfg).await?;
    let floor_first = if cfg.floor_row {
        Some(design_floor::run(pool, cfg, &run_label("floor")).await?)
    } else {
        None
    };
    let plain_a = throughput::run(pool, cfg, PLAIN, raw_first.per_second, None).await?;
    let keyed_a = if cfg.keyed_row {
        Some(throughput::run(pool, cfg, KEYED, raw_first.per_second, Some(KEYS)).await?)
    } else {
        None
    };
    let mut traced = Vec::new();
    if cfg.tracing_row {
        for _ in 0..2 {
            if let Some(t) = throughput::run_traced(pool, cfg, raw_first.per_second).await? {
                traced.push(t);
            }
        }
    }
    let keyed_b = match keyed_a {
        Some(_) => Some(throughput::run(pool, cfg, KEYED, raw_first.per_second, Some(KEYS)).await?),
        None => None,
    };
    let plain_b = throughput::run(pool, cfg, PLAIN, raw_first.per_second, None).await?;
    let floor_last = match floor_first {
        Some(_) => Some(design_floor::run(pool, cfg, &run_label("floor")).await?),
        None => None,
    };
    let raw_last = raw_pgmq::run(pool, cfg).await?;
    let raw = (raw_first.per_second + raw_last.per_second) / 2.0;
    let raw_cost = cost::PerUnit::mean([(raw_first.cost, 1), (raw_last.cost, 1)]);
    let plain = ThroughputRow::combine(&[plain_a, plain_b], raw);
    let design_floor = floor_first.zip(floor_last).map(|(a, b)| {
        let per_second = (a.per_second + b.per_second) / 2.0;
        FloorRow {
            per_second,
            runs: [a.per_second, b.per_second],
            ratio_to_raw: per_second / raw,
            lineq_share: plain.per_second / per_second,
            cost_per_execution: cost::PerUnit::mean([(a.cost, 1), (b.cost, 1)]),
        }
    });
    let mut rows = vec![plain.clone()];
    let mut tracing_cost = None;
    if !traced.is_empty() {
        let t = ThroughputRow::combine(&traced, raw);
        tracing_cost = Some(1.0 - t.per_second / plain.per_second);
        rows.push(t);
    }
    if let Some((a, b)) = keyed_a.zip(keyed_b) {
        rows.push(ThroughputRow::combine(&[a, b], raw));
    }
    let mut targets = vec![
        Target {
            name: "throughput vs raw PGMQ".into(),
            bound: "≥ 0.25×".into(),
            measured: format!("{:.3}×", plain.ratio_to_raw),
            met: plain.ratio_to_raw >= 0.25,
        },
        Target {
            name: "pickup latency p50".into(),
            bound: "≤ 3 ms".into(),
            measured: format!("{:.2} ms", pickup.p50),
            met: pickup.p50 <= 3.0,
        },
        Target {
            name: "pickup latency p99".into(),
            bound: "≤ 20 ms".into(),
            measured: format!("{:.2} ms", pickup.p99),
            met: pickup.p99 <= 20.0,
        },
        Target {
            name: "4-step workflow p50".into(),
            bound: "≤ 25 ms".into(),
            measured: format!("{:.2} ms", workflow.p50),
            met: workflow.p50 <= 25.0,
        },
        Target {
            name: "worker memory flat".into(),
            bound: "growth ≤ 16 MiB".into(),
            measured: format!("{:+.1} MiB", plain.rss_growth_mib),
            met: plain.rss_growth_mib <= 16.0,
        },
    ];
    if let Some(cost) = tracing_cost {
        targets.push(Target {
            name: "tracing cost".into(),
            bound: "≤ 15 %".into(),
            measured: format!("{:.1} %", cost * 100.0),
            met: cost <= 0.15,
        });
    }
    Ok(BenchReport {
        raw_pgmq_per_second: raw,
        raw_pgmq_runs: [raw_first.per_second, raw_last.per_second],
        raw_pgmq_cost_per_message: raw_cost,
        throughput: rows,
        design_floor,
        tracing_cost,
        pickup_latency_ms: pickup,
        workflow_in_commits: workflow.p50 / commit_round_trip.p50.max(f64::EPSILON),
        workflow_latency_ms: workflow,
        commit_round_trip_ms: commit_round_trip,
        targets,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        database_on_this_machine: cost::database_on_this_machine(pool).await?,
    })
}

/// The report as the table `lineq bench` prints.
pub fn table(r: &BenchReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<34} {:>12} {:>10} {:>9} {:>12}",
        "throughput", "per second", "× raw", "peak MiB", "growth MiB"
    );
    let _ = writeln!(
        s,
        "{:<34} {:>12.0} {:>10} {:>9} {:>12}",
        "raw PGMQ (send/read/delete ×100)", r.raw_pgmq_per_second, "1.000", "-", "-"
    );
    let _ = writeln!(
        s,
        "  (mean of {:.0} before and {:.0} after the lineq rows)",
        r.raw_pgmq_runs[0], r.raw_pgmq_runs[1]
    );
    for t in &r.throughput {
        let _ = writeln!(
            s,
            "{:<34} {:>12.0} {:>10.3} {:>9.1} {:>+12.1}",
            t.name, t.per_second, t.ratio_to_raw, t.peak_rss_mib, t.rss_growth_mib
        );
        if t.runs.len() > 1 {
            let each: Vec<String> = t.runs.iter().map(|r| format!("{r:.0}")).collect();
            let _ = writeln!(s, "  (runs, in order: {})", each.join(", "));
        }
    }
    if let Some(f) = &r.design_floor {
        let _ = writeln!(
            s,
            "{:<34} {:>12.0} {:>10.3} {:>9} {:>12}",
            "design floor (its SQL alone)", f.per_second, f.ratio_to_raw, "-", "-"
        );
        let _ = writeln!(
            s,
            "  (mean of {:.0} before and {:.0} after; lineq reaches {:.0} % of it)",
            f.runs[0],
            f.runs[1],
            f.lineq_share * 100.0
        );
    }
    for t in &r.throughput {
        if let (Some(n), Some(sent)) = (t.spans_received, t.spans_sent) {
            let _ = writeln!(
                s,
                "spans received by the OTLP receiver: {n} of {sent} sent (holding {} events)",
                t.events
            );
        }
    }
    if let Some(c) = r.tracing_cost {
        let _ = writeln!(s, "tracing cost: {:.1} % of throughput", c * 100.0);
    }
    cost_table(&mut s, r);
    let _ = writeln!(
        s,
        "\n{:<34} {:>8} {:>8} {:>8} {:>8}",
        "latency (ms)", "p50", "p95", "p99", "n"
    );
    for (name, p) in [
        ("pickup (submit → handler start)", &r.pickup_latency_ms),
        ("4-step workflow (submit → done)", &r.workflow_latency_ms),
        ("reference: one durable commit", &r.commit_round_trip_ms),
    ] {
        let _ = writeln!(
            s,
            "{:<34} {:>8.2} {:>8.2} {:>8.2} {:>8}",
            name, p.p50, p.p95, p.p99, p.n
        );
    }
    let _ = writeln!(
        s,
        "  (the 4-step p50 is {:.1} commit references; the reference is sampled before each workflow)",
        r.workflow_in_commits
    );
    targets_table(&mut s, "target", &r.targets);
    s
}

/// The targets under `heading`, one line each: bound, measured, met.
fn targets_table(s: &mut String, heading: &str, targets: &[Target]) {
    use std::fmt::Write;
    let _ = writeln!(s, "\n{heading:<30} {:>16} {:>14}  met", "bound", "measured");
    for t in targets {
        let _ = writeln!(
            s,
            "{:<30} {:>16} {:>14}  {}",
            t.name,
            t.bound,
            t.measured,
            if t.met { "yes" } else { "NO" }
        );
    }
}

/// What a raw message and an execution cost the machine: WAL, and busy CPU with the part of
/// it spent in this process (the rest is the server's), each also as a multiple of the raw
/// message's.
fn cost_table(s: &mut String, r: &BenchReport) {
    use std::fmt::Write;
    let raw = r.raw_pgmq_cost_per_message;
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    let times = |v: Option<f64>, unit: Option<f64>| {
        v.zip(unit).map_or("-".to_string(), |(v, unit)| {
            format!("{:.1}", v / unit.max(f64::EPSILON))
        })
    };
    let _ = writeln!(
        s,
        "\n{:<34} {:>12} {:>10} {:>9} {:>12} {:>11}",
        "cost per message / execution", "WAL bytes", "× raw", "CPU µs", "× raw", "in-process"
    );
    let mut line = |name: &str, c: &cost::PerUnit| {
        let _ = writeln!(
            s,
            "{:<34} {:>12.0} {:>10} {:>9} {:>12} {:>11}",
            name,
            c.wal_bytes,
            times(Some(c.wal_bytes), Some(raw.wal_bytes)),
            opt(c.cpu_us),
            times(c.cpu_us, raw.cpu_us),
            opt(c.process_cpu_us)
        );
    };
    line("raw PGMQ (per message)", &raw);
    for t in &r.throughput {
        line(&t.name, &t.cost_per_execution);
    }
    if let Some(f) = &r.design_floor {
        line("design floor (its SQL alone)", &f.cost_per_execution);
    }
    // What the CPU alone allows: executions per second with every core busy.
    let ceiling = |cpu: Option<f64>| {
        cpu.filter(|c| *c > 0.0)
            .map(|c| r.cores as f64 * 1e6 / c)
            .map(|per_second| {
                format!(
                    "{per_second:.0}/s = {:.3}× raw",
                    per_second / r.raw_pgmq_per_second.max(f64::EPSILON)
                )
            })
    };
    let plain = r
        .throughput
        .first()
        .and_then(|t| ceiling(t.cost_per_execution.cpu_us));
    let floor = r
        .design_floor
        .as_ref()
        .and_then(|f| ceiling(f.cost_per_execution.cpu_us));
    if !r.database_on_this_machine {
        let _ = writeln!(
            s,
            "  (the database runs on another machine: the CPU figures are this machine's only)"
        );
    } else if let Some(plain) = plain {
        let _ = write!(
            s,
            "  (with all {} cores busy, the CPU per execution allows at most: lineq {plain}",
            r.cores
        );
        match floor {
            Some(floor) => {
                let _ = writeln!(s, ";\n   the design floor {floor})");
            }
            None => {
                let _ = writeln!(s, ")");
            }
        }
    }
}

/// Waits (bounded) for `check` to return true.
async fn until(
    within: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + within;
    while !check().await? {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(on_this_machine: bool) -> BenchReport {
        let ms = Percentiles {
            p50: 1.0,
            p95: 2.0,
            p99: 3.0,
            n: 10,
        };
        let row = ThroughputRow {
            name: PLAIN.into(),
            executions: 1000,
            seconds: 1.0,
            per_second: 1000.0,
            ratio_to_raw: 0.1,
            events: 8000,
            peak_rss_mib: 90.0,
            rss_growth_mib: 0.0,
            cost_per_execution: cost::PerUnit {
                wal_bytes: 14_000.0,
                cpu_us: Some(500.0),
                process_cpu_us: Some(100.0),
            },
            spans_received: None,
            spans_sent: None,
            runs: vec![1000.0],
        };
        BenchReport {
            raw_pgmq_per_second: 10_000.0,
            raw_pgmq_runs: [10_000.0, 10_000.0],
            raw_pgmq_cost_per_message: cost::PerUnit {
                wal_bytes: 700.0,
                cpu_us: Some(50.0),
                process_cpu_us: Some(5.0),
            },
            throughput: vec![row],
            design_floor: Some(FloorRow {
                per_second: 2000.0,
                runs: [2000.0, 2000.0],
                ratio_to_raw: 0.2,
                lineq_share: 0.5,
                cost_per_execution: cost::PerUnit {
                    wal_bytes: 13_000.0,
                    cpu_us: Some(250.0),
                    process_cpu_us: Some(10.0),
                },
            }),
            tracing_cost: None,
            pickup_latency_ms: ms.clone(),
            workflow_latency_ms: ms.clone(),
            commit_round_trip_ms: ms,
            workflow_in_commits: 1.0,
            targets: Vec::new(),
            cores: 2,
            database_on_this_machine: on_this_machine,
        }
    }

    #[test]
    fn the_cost_table_gives_each_unit_as_raw_messages_and_what_the_cpu_allows() {
        let t = table(&report(true));
        // 14,000 / 700 bytes = 20 raw messages of WAL; 500 / 50 µs = 10 of CPU.
        assert!(
            t.contains("14000       20.0       500         10.0         100"),
            "{t}"
        );
        assert!(
            t.contains("13000       18.6       250          5.0          10"),
            "{t}"
        );
        // 2 cores × 10⁶ µs / 500 µs = 4,000 executions a second, 0.4× the raw 10,000.
        assert!(t.contains("lineq 4000/s = 0.400× raw"), "{t}");
        assert!(t.contains("the design floor 8000/s = 0.800× raw"), "{t}");
    }

    #[test]
    fn a_remote_database_gets_no_cpu_ceiling() {
        let t = table(&report(false));
        assert!(!t.contains("cores busy"), "{t}");
        assert!(t.contains("the CPU figures are this machine's only"), "{t}");
    }
}
