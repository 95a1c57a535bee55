//! `lineq workers`: the fleet as the workers registered it in `lineq.workers`.

use super::output::{out, outln};
use std::fmt::Write;
use std::time::Duration;

use clap::Args;
use sqlx::PgPool;

use lineq_read::workers::{self as fleet, WorkerInfo};

use super::{Format, GlobalArgs, print_json};

#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// Include workers that stopped cleanly.
    #[arg(long)]
    pub all: bool,
    /// A worker without a heartbeat for this many seconds is shown as silent (default:
    /// orchestrator.silent_worker_secs, 30).
    #[arg(long, value_name = "SECS")]
    pub silent_worker_secs: Option<u64>,
}

pub async fn run(pool: &PgPool, g: &GlobalArgs, a: WorkersArgs) -> anyhow::Result<()> {
    let secs = a
        .silent_worker_secs
        .unwrap_or(g.effective.orchestrator.silent_worker_secs);
    let workers = fleet::list_workers(pool, a.all, Duration::from_secs(secs)).await?;
    let unserved = fleet::unserved_steps(pool, Duration::from_secs(secs)).await?;
    match g.format {
        Format::Json => print_json(&serde_json::json!({
            "workers": workers,
            "unserved": unserved,
        }))?,
        Format::Text => {
            out!("{}", table(&workers));
            for u in &unserved {
                outln!(
                    "waiting: {} step(s) of handler {} in namespace {} (oldest {}): no live worker serves it",
                    u.steps,
                    u.handler,
                    u.namespace,
                    ago(f64::from(u.oldest_age_secs.unwrap_or(0)))
                );
            }
        }
    }
    Ok(())
}

fn table(workers: &[WorkerInfo]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<36} {:<8} {:<20} {:>7} {:<16} {:<8} {:<8} {:<20} LAST HEARTBEAT",
        "WORKER", "STATE", "HOST", "PID", "NAMESPACES", "LANGUAGE", "VERSION", "STARTED"
    );
    for w in workers {
        let _ = writeln!(
            s,
            "{:<36} {:<8} {:<20} {:>7} {:<16} {:<8} {:<8} {:<20} {}",
            w.worker_id,
            w.state.as_str(),
            w.host,
            w.pid,
            w.namespaces.join(","),
            w.language,
            w.version,
            w.started_at.format("%Y-%m-%d %H:%M:%S"),
            ago(w.silent_for_secs),
        );
    }
    s
}

/// `3s ago`, `4m12s ago`, `2h05m ago`.
fn ago(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m{:02}s ago", s / 60, s % 60),
        _ => format!("{}h{:02}m ago", s / 3600, (s % 3600) / 60),
    }
}
