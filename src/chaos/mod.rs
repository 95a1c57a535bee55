//! `lineq chaos`: the fault-injection suite. It runs a fleet of real `lineq orchestrator` and
//! `lineq worker` processes against one database, submits executions of a workflow with
//! fan-out, a retry and a child execution, SIGKILLs a random worker every interval (and one
//! orchestrator once), starts replacements, and then proves nothing was lost: every execution
//! completed, each step has exactly one recorded success, every lineage tree is whole, and no
//! message is left in any queue.
//!
//! A run needs only a database it may migrate; it may be one in use. Its steps run in a
//! namespace of its own, `chaos_<run id>`, which only its workers serve, and it judges only the
//! executions it submitted (and their children): earlier failures, other work and workers
//! already running elsewhere do not count and take no part. Orchestrators already running on
//! the database do take part, as any orchestrator would; killing its own ones is still a test.

mod fleet;
mod verify;

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;

use lineq_core::queue;
use lineq_core::validation::Namespace;
use lineq_orchestrator::workflow::{RetryPolicy, StepDefinition, WorkflowDefinition, store};
use lineq_orchestrator::{Client, SubmitRequest};
use uuid::Uuid;

pub use fleet::Fleet;
pub use verify::Verdict;

/// The workflow every chaos execution runs (a version per run, in the run's namespace).
pub const WORKFLOW: &str = "lineq_chaos";

/// The tag every execution of a run carries: `chaos_run=<run id>`.
pub const RUN_TAG: &str = "chaos_run";

/// One chaos run: its id and the namespace its steps run in.
#[derive(Debug, Clone)]
pub struct Run {
    /// 12 hex digits, random.
    pub id: String,
    /// `chaos_<id>`: served by this run's workers only.
    pub namespace: String,
}

impl Run {
    /// A new run with a fresh id.
    pub fn new() -> Self {
        // The last 12 hex digits of a UUIDv7 are random.
        let hex = Uuid::now_v7().simple().to_string();
        let id = hex[hex.len() - 12..].to_string();
        Self {
            namespace: format!("chaos_{id}"),
            id,
        }
    }
}

impl Default for Run {
    fn default() -> Self {
        Self::new()
    }
}

/// How hard to shake the system.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The database URL the processes use.
    pub database_url: String,
    /// Executions to submit (in soak mode: per minute).
    pub executions: usize,
    /// Orchestrator processes.
    pub orchestrators: usize,
    /// Worker processes.
    pub workers: usize,
    /// A random worker is SIGKILLed this often.
    pub kill_every: Duration,
    /// Also SIGKILL one orchestrator, once, mid-run.
    pub kill_orchestrator: bool,
    /// Keep submitting and killing for this long (a soak), instead of one batch.
    pub soak: Option<Duration>,
    /// Give up waiting for completion after this long.
    pub timeout: Duration,
    /// Visibility timeout of the workers (short, so killed steps come back soon).
    pub visibility_timeout_secs: u64,
}

/// Registers the chaos workflow with every step (and the child) in `namespace`: fan → {flaky
/// (retried once), spawn (waits for a child), sleep} → join. Returns its version.
pub async fn register_workflow(pool: &PgPool, namespace: &str) -> lineq_core::Result<i32> {
    let retry = RetryPolicy {
        max_attempts: 3,
        backoff_ms: 50,
        max_backoff_ms: 200,
        ..Default::default()
    };
    let wf = WorkflowDefinition::new(WORKFLOW)
        .step(StepDefinition::new("fan", "echo"))
        .step(
            StepDefinition::new("flaky", "flaky")
                .depends_on(["fan"])
                .retry(retry)
                .params(json!({"fail_attempts": 1})),
        )
        .step(
            StepDefinition::new("child", "spawn")
                .depends_on(["fan"])
                .params(json!({"children": [{"target": "echo", "input": {"from": "chaos"}, "namespace": namespace}], "wait": true})),
        )
        .step(
            StepDefinition::new("nap", "sleep")
                .depends_on(["fan"])
                .params(json!({"ms": 30})),
        )
        .step(StepDefinition::new("join", "echo").depends_on(["flaky", "child", "nap"]));
    let mut wf = wf;
    wf.namespace = namespace.to_string();
    Ok(store::register(pool, &wf).await?.version)
}

/// Runs the suite and returns its verdict.
#[expect(
    clippy::too_many_lines,
    reason = "the chaos run's phases in order: fleet, load, faults, drain"
)]
pub async fn run(pool: &PgPool, cfg: &ChaosConfig) -> anyhow::Result<Verdict> {
    lineq_migrate::migrate(pool).await?;
    let run = Run::new();
    let ns = Namespace::new(&run.namespace)?;
    queue::ensure_queue(&mut *pool.acquire().await?, &queue::step_queue(&ns)).await?;
    let version = register_workflow(pool, &run.namespace).await?;
    let target = format!("{WORKFLOW}@{version}");
    eprintln!(
        "chaos: run {} in namespace {} (workflow {target}, tag {RUN_TAG}={})",
        run.id, run.namespace, run.id
    );
    let started = Instant::now();
    let mut fleet = Fleet::start(cfg, &run.namespace)?;
    let mut ids: Vec<Uuid> = Vec::new();
    let client = Client::new(pool.clone());
    let mut submitted = 0usize;
    let mut last_kill = Instant::now();
    let orchestrator_kill_at = cfg.executions / 3;
    let soak_until = cfg.soak.map(|d| started + d);
    let mut next_batch = Instant::now();
    let mut progress = Instant::now();

    loop {
        // Submit: everything at once, or in soak mode a batch every minute until the end.
        let due = match soak_until {
            None => submitted < cfg.executions,
            Some(end) => Instant::now() < end && Instant::now() >= next_batch,
        };
        if due {
            let n = if soak_until.is_some() {
                cfg.executions
            } else {
                cfg.executions - submitted
            };
            for _ in 0..n {
                let s = client
                    .submit(
                        SubmitRequest::new(target.as_str())
                            .namespace(run.namespace.as_str())
                            .tag(RUN_TAG, run.id.as_str())
                            .input(json!({"n": submitted})),
                    )
                    .await?;
                ids.push(s.execution.execution_id);
                submitted += 1;
                if last_kill.elapsed() >= cfg.kill_every {
                    fleet.kill_random_worker()?;
                    last_kill = Instant::now();
                }
            }
            next_batch = Instant::now() + Duration::from_secs(60);
        }
        if last_kill.elapsed() >= cfg.kill_every {
            fleet.kill_random_worker()?;
            last_kill = Instant::now();
        }
        let finished = verify::finished_roots(pool, &ids).await?;
        if cfg.kill_orchestrator
            && !fleet.orchestrator_killed()
            && finished >= orchestrator_kill_at as i64
        {
            fleet.kill_one_orchestrator()?;
        }
        fleet.replace_dead()?;
        let soak_over = soak_until.is_none_or(|end| Instant::now() >= end);
        if soak_over && submitted > 0 && finished >= submitted as i64 {
            break;
        }
        if progress.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "chaos: {finished}/{submitted} executions finished, {} worker kills, {} orchestrator kills, {:.0}s",
                fleet.worker_kills(),
                fleet.orchestrator_kills(),
                started.elapsed().as_secs_f64()
            );
            progress = Instant::now();
        }
        if started.elapsed() > cfg.timeout + cfg.soak.unwrap_or_default() {
            eprintln!("chaos: timed out waiting for executions to finish");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last results drain before the fleet goes.
    verify::wait_for_empty_queues(pool, &run, &ids, Duration::from_secs(30)).await?;
    let unclean = fleet.stop(Duration::from_secs(30))?;
    verify::verdict(pool, &run, &ids, &fleet, unclean, started.elapsed()).await
}
