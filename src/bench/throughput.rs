//! Throughput: one-step no-op executions through an in-process orchestrator and workers, with
//! full lineage (8 events per execution), durability as users run it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use lineq::{Client, HandlerResult, Orchestrator, StepContext, SubmitRequest, Worker};
use lineq_worker::Handler;

use super::memory::Sampler;
use super::{BenchConfig, ThroughputRow, bar, cost};

async fn noop(_ctx: StepContext, _input: Value) -> HandlerResult {
    Ok(Value::Null)
}

/// An orchestrator and workers running in this process until dropped.
pub struct InProcess {
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<lineq::Result<()>>,
}

impl InProcess {
    /// Starts `cfg.orchestrators` orchestrators and `cfg.workers` workers serving `handler` (a
    /// no-op).
    pub fn start(pool: &PgPool, cfg: &BenchConfig, handler: &str) -> Self {
        Self::start_with(pool, cfg, handler, noop)
    }

    /// The same, with `serve` as the handler.
    pub fn start_with(
        pool: &PgPool,
        cfg: &BenchConfig,
        handler: &str,
        serve: impl Handler + Clone,
    ) -> Self {
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..cfg.orchestrators.max(1) {
            let o = Orchestrator::builder(pool.clone())
                .batch_size(i32::try_from(cfg.batch_size).unwrap_or(100))
                .build();
            let t = stop.clone();
            tasks.spawn(async move { o.run(t).await });
        }
        for i in 0..cfg.workers.max(1) {
            let w = Worker::builder(pool.clone())
                .worker_id(format!("bench-worker-{i}"))
                .concurrency(cfg.concurrency)
                .batch_size(cfg.batch_size)
                .handler(handler.to_string(), serve.clone())
                .build();
            let t = stop.clone();
            tasks.spawn(async move { w.run(t).await });
        }
        Self { stop, tasks }
    }

    /// Stops everything and waits.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        while let Some(r) = self.tasks.join_next().await {
            r??;
        }
        Ok(())
    }
}

/// The keyed row's limit per key: above what the bench ever runs at once.
const KEYED_LIMIT: u32 = 100_000;

/// Runs `cfg.executions` executions and measures. With `keys`, every execution carries a
/// concurrency limit on one of that many keys (`tags.tenant`), generous enough never to hold a
/// step back: the row measures what a key costs, not what a limit waits.
#[expect(
    clippy::too_many_lines,
    reason = "one measured run: fleet start, load, drain, figures"
)]
pub async fn run(
    pool: &PgPool,
    cfg: &BenchConfig,
    name: &str,
    raw: f64,
    keys: Option<usize>,
) -> anyhow::Result<ThroughputRow> {
    let handler = super::run_label("noop");
    let system = InProcess::start(pool, cfg, &handler);
    let client = Client::new(pool.clone());
    let n = cfg.executions;
    let pb = bar(cfg, n as u64, name);
    let sampler = Sampler::start();
    // The row is timed by the database's clock, from just before the first submit to the last
    // `finished_at`, so how often progress is polled changes neither the figure nor, polled
    // twice a second, the load being measured.
    let started: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await?;
    let mark = cost::Mark::now(pool).await?;
    let submitted = Arc::new(AtomicUsize::new(0));
    let producer = {
        let client = client.clone();
        let handler = handler.clone();
        let batch = cfg.submit_batch.max(1);
        let submitted = submitted.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < n {
                let k = batch.min(n - sent);
                let reqs = (0..k)
                    .map(|i| {
                        let req = SubmitRequest::new(handler.clone());
                        match keys {
                            Some(keys) => req
                                .tag("tenant", format!("t{}", (sent + i) % keys.max(1)))
                                .concurrency(lineq::ConcurrencyLimit::new(
                                    "tags.tenant",
                                    KEYED_LIMIT,
                                )),
                            None => req,
                        }
                    })
                    .collect();
                client.submit_many(reqs).await?;
                sent += k;
                submitted.store(sent, Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    };
    // Progress is read from the unfinished executions only (an index range of `pending` and
    // `running` rows), so a poll costs nothing for the executions earlier rows finished. The
    // producer runs ahead of the workers, so the range can hold thousands of rows: a poll took
    // 16 ms, and every 50 ms it was an eighth of the machine, taken from the row it measured.
    let unfinished = || {
        let pool = pool.clone();
        let handler = handler.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM lineq.executions
                 WHERE status IN ('pending', 'running') AND workflow_name = $1",
            )
            .bind(&handler)
            .fetch_one(&pool)
            .await
        }
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // Read before counting: every execution submitted by then is either counted as
        // unfinished or finished.
        let all_sent = producer.is_finished();
        let sent = submitted.load(Ordering::Relaxed);
        let left = usize::try_from(unfinished().await?).unwrap_or(0);
        let done = sent.saturating_sub(left);
        pb.set_position(done as u64);
        if all_sent && left == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name}: only {done} of {n} completed in 10 min"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cost = mark.per_unit_since(pool, n).await?;
    let seconds: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(finished_at) - $2)::float8 FROM lineq.executions
         WHERE workflow_name = $1",
    )
    .bind(&handler)
    .bind(started)
    .fetch_one(pool)
    .await?;
    let (peak, growth) = sampler.finish();
    producer.await??;
    pb.finish_and_clear();
    system.stop().await?;

    // It checks its own work: every execution completed with its whole event tree.
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.executions WHERE workflow_name = $1 AND status = 'completed'",
    )
    .bind(&handler)
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        completed == n as i64,
        "{name}: {completed} of {n} executions completed"
    );
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lineq.events e JOIN lineq.executions x USING (execution_id)
         WHERE x.workflow_name = $1",
    )
    .bind(&handler)
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        events == 8 * n as i64,
        "{name}: {events} events for {n} executions, expected {}",
        8 * n
    );
    let sample: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT execution_id FROM lineq.executions WHERE workflow_name = $1 ORDER BY random() LIMIT 50",
    )
    .bind(&handler)
    .fetch_all(pool)
    .await?;
    for id in sample {
        let report = lineq_read::lineage::check::check_root(pool, id).await?;
        anyhow::ensure!(
            report.is_whole(),
            "{name}: lineage of {id} is not whole: {report:?}"
        );
    }
    let per_second = n as f64 / seconds;
    Ok(ThroughputRow {
        name: name.to_string(),
        executions: n,
        seconds,
        per_second,
        ratio_to_raw: per_second / raw,
        events,
        peak_rss_mib: peak,
        rss_growth_mib: growth,
        cost_per_execution: cost,
        spans_received: None,
        spans_sent: None,
        runs: vec![per_second],
    })
}

/// The same with span export (an execution's, its step's and its attempt's span, every event a
/// span event) to an in-process OTLP receiver over gRPC. Spans the SDK's bounded queue drops
/// under load are counted, not hidden: the receiver's count is set against the spans sent.
pub async fn run_traced(
    pool: &PgPool,
    cfg: &BenchConfig,
    raw: f64,
) -> anyhow::Result<Option<ThroughputRow>> {
    if lineq_core::telemetry::enabled() {
        eprintln!("note: tracing is already configured for this process; skipping the traced row");
        return Ok(None);
    }
    let sink = super::otlp_sink::Sink::start().await?;
    let guard = lineq_core::telemetry::init(
        lineq_core::telemetry::TelemetryConfig::new("lineq-bench")
            .otlp_endpoint(Some(sink.endpoint())),
    )?;
    let sent_before = lineq_core::telemetry::spans_exported();
    let row = run(pool, cfg, "lineq + tracing (OTLP)", raw, None).await;
    guard.shutdown().await;
    let sent = lineq_core::telemetry::spans_exported() - sent_before;
    let mut row = row?;
    row.spans_received = Some(sink.received());
    row.spans_sent = Some(usize::try_from(sent).unwrap_or(usize::MAX));
    Ok(Some(row))
}
