//! `lineq demo`: the whole system once, in-process, on DATABASE_URL or a throwaway PostgreSQL.

use super::output::{out, outln};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use lineq::{Client, CommandSpec, DatabaseConfig, Orchestrator, SubmitRequest, Worker};
use lineq_core::execution::ExecutionStatus;
use lineq_testkit::local_postgres::{LocalPostgres, LocalPostgresOptions};

use super::{Format, print_json, render};

/// A command handler written in shell: reads the input on stdin, prints JSON on stdout, and
/// shows the lineage it gets in its environment.
const GREET_COMMAND: &str = r#"greet=sh -c 'read -r input || true; printf "{\"greeting\":\"hello from a shell step\",\"input\":%s,\"correlation_id\":\"%s\",\"attempt\":%s}\n" "$input" "$LINEQ_CORRELATION_ID" "$LINEQ_ATTEMPT"'"#;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Workers to run in-process.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Give up if the executions have not finished after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

pub async fn run(url: Option<String>, format: Format, a: DemoArgs) -> anyhow::Result<()> {
    let (pool, local) = database(url).await?;
    let result = run_on(&pool, format, &a).await;
    // Every connection closed before the server goes: one still on its way back to the pool
    // would be pinged while the server terminates it, and sqlx would warn about that.
    lineq_core::database::close(&pool, Duration::from_secs(5)).await;
    if let Some(pg) = local {
        eprintln!("stopping the throwaway PostgreSQL");
        pg.stop()
            .await
            .context("stopping the throwaway PostgreSQL")?;
    }
    result
}

/// How to look at executions in the web console after the demo.
fn console_hint(id: &uuid::Uuid) -> String {
    format!(
        "\nto look at executions in the browser:\n  \
         lineq dev     a local PostgreSQL that keeps its data, workers, and the console at http://127.0.0.1:8080/\n  \
         lineq serve   the console and REST API on DATABASE_URL; this run's first execution is at http://127.0.0.1:8080/executions/{id}\n\
         (a throwaway PostgreSQL is gone when the demo ends: run the demo with DATABASE_URL set to keep its executions)"
    )
}

pub async fn database(url: Option<String>) -> anyhow::Result<(PgPool, Option<LocalPostgres>)> {
    if let Some(url) = url {
        match DatabaseConfig::new(&url).connect().await {
            Ok(pool) => {
                eprintln!("using DATABASE_URL");
                return Ok((pool, None));
            }
            Err(e) => eprintln!("DATABASE_URL is unreachable ({e}); using a throwaway PostgreSQL"),
        }
    }
    eprintln!("starting a throwaway PostgreSQL from this machine's binaries…");
    let pg = LocalPostgres::start(LocalPostgresOptions::default())
        .await
        .context("cannot start a throwaway PostgreSQL (is PostgreSQL installed? set LINEQ_PG_BINDIR to its bin directory, or DATABASE_URL)")?;
    eprintln!("throwaway PostgreSQL ready on port {}", pg.port());
    let pool = DatabaseConfig::new(pg.url()).connect().await?;
    Ok((pool, Some(pg)))
}

#[expect(
    clippy::too_many_lines,
    reason = "the demo's story, printed as it runs"
)]
async fn run_on(pool: &PgPool, format: Format, a: &DemoArgs) -> anyhow::Result<()> {
    eprintln!("migrating (PGMQ as plain SQL, then lineq's schema)…");
    lineq::migrate(pool).await?;

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let orchestrator = Orchestrator::builder(pool.clone())
        .poll_interval(Duration::from_millis(250))
        .build();
    let token = shutdown.clone();
    tasks.spawn(async move { orchestrator.run(token).await });
    for i in 1..=a.workers.max(1) {
        let worker = Worker::builder(pool.clone())
            .worker_id(format!("demo-worker-{i}"))
            .poll_interval(Duration::from_millis(250))
            .command(CommandSpec::parse(GREET_COMMAND)?)
            .build();
        let token = shutdown.clone();
        tasks.spawn(async move { worker.run(token).await });
    }
    eprintln!(
        "started an orchestrator and {} worker(s) in-process",
        a.workers.max(1)
    );

    let client = Client::new(pool.clone());
    let runs = [
        (
            "echo",
            json!({"order": 42, "note": "echo returns its input"}),
            ExecutionStatus::Completed,
        ),
        (
            "fail",
            json!({"message": "card declined (on purpose)"}),
            ExecutionStatus::Failed,
        ),
        (
            "greet",
            json!({"name": "lineq"}),
            ExecutionStatus::Completed,
        ),
    ];
    let mut ids = Vec::new();
    for (handler, input, _) in &runs {
        let s = client
            .submit(SubmitRequest::new(*handler).input(input.clone()))
            .await?;
        eprintln!("submitted {handler:<5} → {}", s.execution.execution_id);
        ids.push(s.execution.execution_id);
    }

    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    let outcome = loop {
        let mut done = Vec::new();
        for id in &ids {
            done.push(client.execution(*id).await?);
        }
        if done.iter().all(|e| e.status.is_terminal()) {
            break Ok(done);
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "executions did not finish within {} s",
                a.timeout_secs
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    shutdown.cancel();
    while let Some(joined) = tasks.join_next().await {
        joined.context("a demo task panicked")??;
    }
    let executions = outcome?;

    let mut report = Vec::new();
    for e in &executions {
        let events = client.events(e.execution_id).await?;
        match format {
            Format::Text => {
                outln!(
                    "\n== {} ({}) → {}   correlation {}",
                    e.execution_id,
                    e.workflow_name,
                    e.status,
                    e.correlation_id
                );
                if let Some(o) = &e.output {
                    outln!("   output: {o}");
                }
                if let Some(err) = &e.error {
                    outln!("   error:  {err}");
                }
                out!("{}", render::event_tree(&events));
            }
            Format::Json => report.push(json!({ "execution": e, "events": events })),
        }
    }
    if format == Format::Json {
        print_json(&report)?;
    }
    for (e, (handler, _, expected)) in executions.iter().zip(runs.iter()) {
        anyhow::ensure!(
            e.status == *expected,
            "demo execution {handler} ended {} (expected {expected})",
            e.status
        );
    }
    eprintln!(
        "\ndemo finished: {} executions, all as expected",
        executions.len()
    );
    eprintln!("{}", console_hint(&executions[0].execution_id));
    Ok(())
}
