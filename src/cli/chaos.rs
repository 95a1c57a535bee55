//! `lineq chaos`.

use super::output::outln;
use std::time::Duration;

use clap::Args;
use sqlx::PgPool;

use crate::chaos::{ChaosConfig, run as run_chaos};

use super::{Format, print_json};

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Executions to submit (in soak mode: per minute).
    #[arg(long, default_value_t = 2000)]
    pub executions: usize,
    /// Orchestrator processes.
    #[arg(long, default_value_t = 2)]
    pub orchestrators: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// SIGKILL a random worker this often (milliseconds).
    #[arg(long, default_value_t = 1000)]
    pub kill_every_ms: u64,
    /// Do not kill an orchestrator.
    #[arg(long)]
    pub spare_orchestrators: bool,
    /// Keep submitting (--executions per minute) and killing for this many minutes.
    #[arg(long, value_name = "MINUTES")]
    pub soak: Option<u64>,
    /// Give up waiting for the executions after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Workers' visibility timeout: how soon a killed worker's step runs again.
    #[arg(long, default_value_t = 3)]
    pub visibility_timeout_secs: u64,
}

pub async fn run(pool: &PgPool, url: &str, format: Format, a: ChaosArgs) -> anyhow::Result<()> {
    let cfg = ChaosConfig {
        database_url: url.to_string(),
        executions: a.executions.max(1),
        orchestrators: a.orchestrators,
        workers: a.workers,
        kill_every: Duration::from_millis(a.kill_every_ms.max(50)),
        kill_orchestrator: !a.spare_orchestrators,
        soak: a.soak.map(|m| Duration::from_secs(m * 60)),
        timeout: Duration::from_secs(a.timeout_secs),
        visibility_timeout_secs: a.visibility_timeout_secs.max(1),
    };
    let v = run_chaos(pool, &cfg).await?;
    match format {
        Format::Json => print_json(&v)?,
        Format::Text => {
            outln!(
                "run {}  namespace {}  (its executions are tagged chaos_run={})",
                v.run_id,
                v.namespace,
                v.run_id
            );
            outln!(
                "executions {}  completed {}  children {}  retries {}",
                v.executions,
                v.completed,
                v.children,
                v.retries
            );
            outln!(
                "kills: workers {}  orchestrators {}  redeliveries {}",
                v.worker_kills,
                v.orchestrator_kills,
                v.redeliveries
            );
            outln!(
                "lost = {}  duplicated outcomes = {}  duplicated results = {}  lineage faults = {}  messages left = {}  unclean exits = {}",
                v.lost,
                v.duplicated_outcomes,
                v.duplicated_results,
                v.lineage_faults,
                v.messages_left,
                v.unclean_exits
            );
            outln!(
                "{:.1} s — {}",
                v.seconds,
                if v.passed() { "PASSED" } else { "FAILED" }
            );
        }
    }
    if !v.passed() {
        anyhow::bail!("chaos found lost, duplicated or broken work");
    }
    Ok(())
}
