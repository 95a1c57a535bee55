//! `lineq submit`.

use super::output::outln;
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
    /// A registered workflow (NAME or NAME@VERSION), or a handler to run as one step, e.g.
    /// `echo`, `sleep`, `fail`, or one a worker declares.
    #[arg(value_name = "WORKFLOW|HANDLER")]
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
    /// A tag KEY=VALUE (repeatable; at most 20): keys 1-64 of a-z 0-9 - _, values up to 256
    /// characters. Find executions by them with `lineq list --tag`.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Metadata: a JSON object (at most 64 KiB and 50 top-level keys), or `@FILE`. Find
    /// executions by it with `lineq list --metadata`.
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,
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

/// `--metadata`: JSON, or `@FILE`.
fn read_metadata(arg: &str) -> Result<Value, ValidationError> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| ValidationError::new("metadata", format!("cannot read {path}: {e}")))?,
        None => arg.to_string(),
    };
    serde_json::from_str(&text)
        .map_err(|e| ValidationError::new("metadata", format!("not valid JSON: {e}")))
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
    for t in &a.tags {
        let (k, v) = lineq::shared::labels::parse_tag(t)?;
        if req.tags.contains_key(&k) {
            return Err(ValidationError::new("tags", format!("tag {k:?} is given twice")).into());
        }
        req = req.tag(k, v);
    }
    if let Some(m) = &a.metadata {
        req = req.metadata(read_metadata(m)?);
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
        Format::Text if a.wait => outln!("{} {}", execution.execution_id, execution.status),
        Format::Text => outln!("{}", execution.execution_id),
    }
    if a.wait && execution.status != lineq::shared::execution::ExecutionStatus::Completed {
        anyhow::bail!("execution {} {}", execution.execution_id, execution.status);
    }
    Ok(())
}
