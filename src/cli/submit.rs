//! `lineq submit`.

use std::io::Read;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;
use sqlx::PgPool;

use lineq::shared::validation::ValidationError;
use lineq::{Client, SubmitRequest};

use super::{Format, parse_id, print_json};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The handler to run, e.g. `echo`, `sleep`, `fail`, or one a worker declares.
    pub handler: String,
    /// The input as JSON; `@FILE` reads a file, `-` reads standard input.
    #[arg(long, default_value = "null")]
    pub input: String,
    /// The namespace whose workers run it.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Correlation id (a UUID); a UUIDv7 is generated when absent.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Submitting again with the same key returns the first execution instead of a new one.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Time limit for each attempt, in milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Wait until the execution finishes, then print it; exits 1 if it failed.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 1).
    #[arg(long, default_value_t = 60)]
    pub wait_timeout_secs: u64,
}

fn read_input(arg: &str) -> Result<Value, ValidationError> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| ValidationError::new("input", format!("cannot read stdin: {e}")))?;
        s
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path)
            .map_err(|e| ValidationError::new("input", format!("cannot read {path}: {e}")))?
    } else {
        arg.to_string()
    };
    serde_json::from_str(&text)
        .map_err(|e| ValidationError::new("input", format!("not valid JSON: {e}")))
}

pub async fn run(pool: &PgPool, format: Format, a: SubmitArgs) -> anyhow::Result<()> {
    let input = read_input(&a.input)?;
    let mut req = SubmitRequest::new(a.handler)
        .input(input)
        .namespace(a.namespace);
    if let Some(c) = &a.correlation_id {
        req = req.correlation_id(parse_id("correlation_id", c)?);
    }
    if let Some(k) = a.idempotency_key {
        req = req.idempotency_key(k);
    }
    if let Some(t) = a.timeout_ms {
        req = req.timeout_ms(t);
    }
    let client = Client::new(pool.clone());
    let submitted = client.submit(req).await?;
    let mut execution = submitted.execution;
    if !submitted.created {
        eprintln!(
            "note: idempotency key already used; returning the first execution {}",
            execution.execution_id
        );
    }
    if a.wait {
        let deadline = Instant::now() + Duration::from_secs(a.wait_timeout_secs);
        while !execution.status.is_terminal() {
            if Instant::now() > deadline {
                anyhow::bail!(
                    "execution {} is still {} after {} s",
                    execution.execution_id,
                    execution.status,
                    a.wait_timeout_secs
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            execution = client.execution(execution.execution_id).await?;
        }
    }
    match format {
        Format::Json => print_json(&execution)?,
        Format::Text if a.wait => println!("{} {}", execution.execution_id, execution.status),
        Format::Text => println!("{}", execution.execution_id),
    }
    if a.wait && execution.status != lineq::shared::execution::ExecutionStatus::Completed {
        anyhow::bail!("execution {} {}", execution.execution_id, execution.status);
    }
    Ok(())
}
