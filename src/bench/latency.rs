//! Latency on an idle system: pickup (submit committed → handler started) and a 4-step linear
//! workflow (submit → completed), one execution at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use lineq::{Client, HandlerResult, Orchestrator, StepContext, SubmitRequest, Worker};
use lineq_orchestrator::workflow::{StepDefinition, WorkflowDefinition, store};

use super::{BenchConfig, bar, until};

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Samples.
    pub n: usize,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            n: v.len(),
        }
    }
}

type Starts = Arc<Mutex<HashMap<Uuid, Instant>>>;

fn system(
    pool: &PgPool,
    starts: Starts,
) -> (CancellationToken, tokio::task::JoinSet<lineq::Result<()>>) {
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let o = Orchestrator::builder(pool.clone()).build();
    let t = stop.clone();
    tasks.spawn(async move { o.run(t).await });
    let w = Worker::builder(pool.clone())
        .worker_id("bench-latency")
        .handler("bench.mark", move |ctx: StepContext, _input: Value| {
            let starts = starts.clone();
            async move {
                starts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ctx.execution_id, Instant::now());
                HandlerResult::Ok(Value::Null)
            }
        })
        .build();
    let t = stop.clone();
    tasks.spawn(async move { w.run(t).await });
    (stop, tasks)
}

async fn stop(
    stop: CancellationToken,
    mut tasks: tokio::task::JoinSet<lineq::Result<()>>,
) -> anyhow::Result<()> {
    stop.cancel();
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Submit committed → handler started.
pub async fn pickup(pool: &PgPool, cfg: &BenchConfig) -> anyhow::Result<Percentiles> {
    let starts: Starts = Arc::default();
    let (token, tasks) = system(pool, starts.clone());
    let client = Client::new(pool.clone());
    // Let the listeners connect and the first polls pass.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pb = bar(cfg, cfg.latency_samples as u64, "pickup latency");
    let mut v = Vec::with_capacity(cfg.latency_samples);
    for _ in 0..cfg.latency_samples {
        let s = client.submit(SubmitRequest::new("bench.mark")).await?;
        let committed = Instant::now();
        let id = s.execution.execution_id;
        let mut at = None;
        until(Duration::from_secs(10), async || {
            at = starts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .copied();
            Ok(at.is_some())
        })
        .await?;
        if let Some(at) = at {
            v.push(at.saturating_duration_since(committed).as_secs_f64() * 1000.0);
        }
        // Idle between samples: the next one starts from a quiet system.
        until(Duration::from_secs(10), async || {
            Ok(client.execution(id).await?.status.is_terminal())
        })
        .await?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    stop(token, tasks).await?;
    Ok(Percentiles::of(v))
}

/// What [`linear_workflow`] measured.
pub struct WorkflowLatency {
    /// Submit → completed, per workflow.
    pub workflow: Percentiles,
    /// The machine's reference, sampled just before each workflow: see
    /// [`super::BenchReport::commit_round_trip_ms`].
    pub commit_round_trip: Percentiles,
}

/// A 4-step linear workflow, submit → completed, from the database's own timestamps
/// (`created_at` in the submit transaction to `finished_at` in the orchestrator's), and before
/// each one the machine's reference: one durable commit, as this process sees it.
pub async fn linear_workflow(pool: &PgPool, cfg: &BenchConfig) -> anyhow::Result<WorkflowLatency> {
    let wf = WorkflowDefinition::new("bench_linear4")
        .step(StepDefinition::new("s1", "bench.mark"))
        .step(StepDefinition::new("s2", "bench.mark").depends_on(["s1"]))
        .step(StepDefinition::new("s3", "bench.mark").depends_on(["s2"]))
        .step(StepDefinition::new("s4", "bench.mark").depends_on(["s3"]));
    store::register(pool, &wf).await?;
    let (token, tasks) = system(pool, Arc::default());
    let client = Client::new(pool.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = (cfg.latency_samples / 4).max(10);
    let pb = bar(cfg, n as u64, "4-step workflow latency");
    let mut v = Vec::with_capacity(n);
    let mut commits = Vec::with_capacity(n);
    for _ in 0..n {
        commits.push(commit_round_trip(pool).await?);
        let id = client
            .submit(SubmitRequest::new("bench_linear4"))
            .await?
            .execution
            .execution_id;
        until(Duration::from_secs(10), async || {
            Ok(client.execution(id).await?.status.is_terminal())
        })
        .await?;
        let ms: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM finished_at - created_at)::float8 * 1000 FROM lineq.executions
             WHERE execution_id = $1 AND status = 'completed'",
        )
        .bind(id)
        .fetch_one(pool)
        .await?;
        v.push(ms);
        pb.inc(1);
    }
    pb.finish_and_clear();
    stop(token, tasks).await?;
    Ok(WorkflowLatency {
        workflow: Percentiles::of(v),
        commit_round_trip: Percentiles::of(commits),
    })
}

/// One durable commit from this process, in ms: a transactional WAL record (a logical
/// decoding message, which touches no table and which nothing consumes), so the commit waits
/// for the WAL flush as every transaction of a workflow step does. Taking a transaction id
/// alone would not do: PostgreSQL commits a transaction that wrote no WAL without waiting for
/// the flush. There is no table work and next to nothing to plan: what it measures is the
/// machine (scheduling, loopback, fsync), which on a shared VM changes from hour to hour.
async fn commit_round_trip(pool: &PgPool) -> anyhow::Result<f64> {
    let mut conn = pool.acquire().await?;
    let t = Instant::now();
    sqlx::query("SELECT pg_logical_emit_message(true, 'lineq-bench', '')")
        .execute(&mut *conn)
        .await?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}
