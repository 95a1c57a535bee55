//! `lineq submit`.

use super::output::outln;
use std::io::Read;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;
use sqlx::PgPool;

use lineq::{Client, SubmitRequest};
use lineq_core::execution::{Execution, ExecutionStatus};
use lineq_core::validation::ValidationError;

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
    /// Wait until the execution finishes, then print its id and status and its output (or, when
    /// it failed, why); exits 1 unless it completed. While it waits for a worker that no live
    /// worker can be, it says so on stderr.
    #[arg(long)]
    pub wait: bool,
    /// Priority: within a namespace, ready steps of higher priority are claimed first (default
    /// 0; negative is later).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Start no earlier than this RFC 3339 time, e.g. 2026-12-24T18:00:00Z (at most 365 days
    /// ahead).
    #[arg(long, value_name = "TIME", conflicts_with = "delay")]
    pub run_at: Option<String>,
    /// Start after this delay: a number with ms, s, m, h or d, e.g. 30s or 1500ms.
    #[arg(long, value_name = "DURATION")]
    pub delay: Option<String>,
    /// A concurrency limit KEY=LIMIT: at most LIMIT steps with KEY run at once, fleet-wide.
    /// KEY is literal, or tags.NAME, metadata.PATH or input.PATH (e.g. tags.customer=2: two
    /// at a time per customer).
    #[arg(long, value_name = "KEY=LIMIT")]
    pub concurrency: Option<String>,
    /// A rate limit KEY=LIMIT/second or KEY=LIMIT/minute: at most LIMIT step starts with KEY
    /// per window, fleet-wide (e.g. api=10/second).
    #[arg(long, value_name = "KEY=LIMIT/PER")]
    pub rate_limit: Option<String>,
    /// With --wait: give up after this many seconds (exit 1), saying what it still waits for.
    #[arg(long, default_value_t = 60)]
    pub wait_timeout_secs: u64,
}

pub(super) fn read_input(arg: &str) -> Result<Value, ValidationError> {
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

/// `--delay`: a whole number with a unit (ms, s, m, h, d); a bare number is milliseconds.
pub fn parse_delay(s: &str) -> Result<Duration, ValidationError> {
    let bad = || {
        ValidationError::new(
            "delay",
            format!("{s:?}: give a whole number with ms, s, m, h or d, e.g. 30s (not negative)"),
        )
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

/// `KEY=LIMIT`, split at the last `=` (a key may hold one, a limit never does).
fn split_limit<'a>(field: &str, s: &'a str) -> Result<(&'a str, &'a str), ValidationError> {
    s.rsplit_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| ValidationError::named(field.to_string(), format!("{s:?}: give KEY=LIMIT")))
}

fn parse_limit(field: &str, s: &str) -> Result<u32, ValidationError> {
    s.parse::<u32>().map_err(|_| {
        ValidationError::named(
            format!("{field}.limit"),
            format!("{s:?} is not a whole number from 1"),
        )
    })
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

/// `silent_after_secs`: a worker without a heartbeat for this long is not counted as alive.
#[expect(
    clippy::too_many_lines,
    reason = "the submit flags turned into a request, field by field"
)]
pub async fn run(
    pool: &PgPool,
    format: Format,
    a: SubmitArgs,
    silent_after_secs: f64,
) -> anyhow::Result<()> {
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
        let (k, v) = lineq_core::tags::parse_tag(t)?;
        if req.tags.contains_key(&k) {
            return Err(ValidationError::new("tags", format!("tag {k:?} is given twice")).into());
        }
        req = req.tag(k, v);
    }
    if let Some(m) = &a.metadata {
        req = req.metadata(read_metadata(m)?);
    }
    req = req.priority(a.priority);
    if let Some(t) = &a.run_at {
        let at = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
            ValidationError::new(
                "run_at",
                format!("{t:?} is not an RFC 3339 time such as 2026-12-24T18:00:00Z: {e}"),
            )
        })?;
        req = req.run_at(at.with_timezone(&chrono::Utc));
    }
    if let Some(d) = &a.delay {
        req = req.delay(parse_delay(d)?);
    }
    if let Some(c) = &a.concurrency {
        let (key, limit) = split_limit("concurrency", c)?;
        req = req.concurrency(lineq::ConcurrencyLimit::new(
            key,
            parse_limit("concurrency", limit)?,
        ));
    }
    if let Some(r) = &a.rate_limit {
        let (key, rest) = split_limit("rate_limit", r)?;
        let (limit, per) = rest.split_once('/').ok_or_else(|| {
            ValidationError::new(
                "rate_limit",
                format!("{r:?}: give KEY=LIMIT/second or KEY=LIMIT/minute"),
            )
        })?;
        req = req.rate_limit(lineq::RateLimit::new(
            key,
            parse_limit("rate_limit", limit)?,
            per.parse()?,
        ));
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
        let started = Instant::now();
        let deadline = started + Duration::from_secs(a.wait_timeout_secs);
        let mut diagnosed = false;
        while !execution.status.is_terminal() {
            if Instant::now() > deadline {
                let why = waiting_for(pool, &client, &execution, silent_after_secs).await;
                anyhow::bail!(
                    "execution {} is still {} after {} s{}",
                    execution.execution_id,
                    execution.status,
                    a.wait_timeout_secs,
                    why.map(|w| format!(": {w}")).unwrap_or_default()
                );
            }
            // Once, early: a step no live worker can run will not start by waiting.
            if !diagnosed && started.elapsed() >= NOTE_AFTER {
                diagnosed = true;
                if let Some(w) = waiting_for(pool, &client, &execution, silent_after_secs).await {
                    eprintln!("note: {w}; still waiting");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            execution = client.execution(execution.execution_id).await?;
        }
    }
    match format {
        Format::Json => print_json(&execution)?,
        Format::Text if a.wait => {
            outln!("{} {}", execution.execution_id, execution.status);
            if let Some(o) = &execution.output {
                outln!("output {o}");
            }
            if let Some(e) = &execution.error {
                outln!("error  {}", error_message(e));
            }
        }
        Format::Text => outln!("{}", execution.execution_id),
    }
    if a.wait && execution.status != ExecutionStatus::Completed {
        let reason = execution
            .error
            .as_ref()
            .map(|e| format!(": {}", error_message(e)))
            .unwrap_or_default();
        anyhow::bail!(
            "execution {} {}{reason}",
            execution.execution_id,
            execution.status
        );
    }
    Ok(())
}

/// How long `--wait` waits before it checks that some live worker can run the steps.
const NOTE_AFTER: Duration = Duration::from_secs(2);

/// The human part of an execution's error: the innermost `message` (an execution's failure
/// names its step's error), with the step when one is named.
pub fn error_message(e: &Value) -> String {
    fn inner(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o
                .get("error")
                .filter(|x| !x.is_null())
                .and_then(inner)
                .or_else(|| o.get("message").and_then(Value::as_str).map(str::to_string)),
            _ => None,
        }
    }
    let message = inner(e).unwrap_or_else(|| e.to_string());
    match e.get("step").and_then(Value::as_str) {
        Some(step) => format!("step {step}: {message}"),
        None => message,
    }
}

/// Why the execution's enqueued steps are not running, when the reason is that no live worker
/// (heartbeat within `silent_after_secs`) serves their namespace or handler. `None` when some
/// live worker can run each of them, or when this role may not read the fleet.
async fn waiting_for(
    pool: &PgPool,
    client: &Client,
    execution: &Execution,
    silent_after_secs: f64,
) -> Option<String> {
    let steps = client.steps(execution.execution_id).await.ok()?;
    let mut reasons = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for st in steps
        .iter()
        .filter(|s| s.status == lineq_core::execution::StepStatus::Enqueued)
    {
        if !seen.insert((st.namespace.clone(), st.handler.clone())) {
            continue;
        }
        let (alive, serving): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE $2 = ANY (handlers))
             FROM lineq.workers
             WHERE stopped_at IS NULL AND released_at IS NULL
               AND last_heartbeat_at > clock_timestamp() - make_interval(secs => $3)
               AND $1 = ANY (namespaces)",
        )
        .bind(&st.namespace)
        .bind(&st.handler)
        .bind(silent_after_secs)
        .fetch_one(pool)
        .await
        .ok()?;
        if alive == 0 {
            reasons.push(format!(
                "no live worker serves namespace '{ns}' (step {step} waits in its queue; start one with `lineq worker --namespace {ns}`)",
                ns = st.namespace,
                step = st.name
            ));
        } else if serving == 0 {
            reasons.push(format!(
                "none of the {alive} live worker(s) of namespace '{}' serves handler '{}' (step {} waits for a worker that declares it)",
                st.namespace, st.handler, st.name
            ));
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}
