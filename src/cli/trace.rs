//! `lineq trace ID`: the trace of an execution, a correlation id or an event, and where to open
//! it in Jaeger.
//!
//! Nothing is asked of Jaeger: a trace id is the correlation id of the root execution of the
//! tree (see `lineq_core::trace_context`), so the database alone knows it.

use super::output::outln;
use clap::Args;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::telemetry::trace_id_hex;
use lineq_core::trace_context::TraceContext;

use super::{Format, parse_id, print_json};

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// An execution id (its root's trace), a correlation id, or an event id (its trace, and
    /// the span that wrote it).
    pub id: String,
    /// Jaeger's UI, for the link.
    #[arg(
        long,
        env = "LINEQ_JAEGER_URL",
        default_value = "http://localhost:16686",
        value_name = "URL"
    )]
    pub jaeger_url: String,
}

/// What an id resolved to.
#[derive(Debug, Serialize)]
struct TraceRef {
    /// The id asked about.
    id: Uuid,
    /// What it is: `execution`, `correlation` or `event`.
    matched: &'static str,
    /// The trace id (32 hex digits).
    trace_id: String,
    /// For an event: the span that wrote it (16 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<String>,
    /// The trace in Jaeger's UI.
    jaeger_url: String,
    /// The root executions whose trees the id belongs to.
    root_execution_ids: Vec<Uuid>,
}

pub async fn run(pool: &PgPool, format: Format, a: TraceArgs) -> anyhow::Result<()> {
    let id = parse_id("id", &a.id)?;
    let base = a.jaeger_url.trim().trim_end_matches('/').to_string();
    let found = resolve(pool, id).await?;
    if found.is_empty() {
        return Err(lineq::Error::NotFound {
            what: "execution, correlation id or event",
            id: id.to_string(),
        }
        .into());
    }
    let refs: Vec<TraceRef> = found
        .into_iter()
        .map(|(matched, trace_id, span_id, roots)| TraceRef {
            id,
            matched,
            jaeger_url: format!("{base}/trace/{trace_id}"),
            trace_id,
            span_id,
            root_execution_ids: roots,
        })
        .collect();
    match format {
        Format::Json => match refs.as_slice() {
            [one] => print_json(one)?,
            many => print_json(&many)?,
        },
        Format::Text => {
            for r in &refs {
                outln!("trace_id    {}", r.trace_id);
                if let Some(s) = &r.span_id {
                    outln!("span_id     {s}");
                }
                outln!("jaeger_url  {}", r.jaeger_url);
            }
        }
    }
    Ok(())
}

/// `(what matched, trace id, span id, root executions)` per trace. Several only when a
/// correlation id was reused across unrelated trees.
type Found = (&'static str, String, Option<String>, Vec<Uuid>);

async fn resolve(pool: &PgPool, id: Uuid) -> anyhow::Result<Vec<Found>> {
    let execution: Option<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT e.root_execution_id, r.correlation_id
         FROM lineq.executions e JOIN lineq.executions r ON r.execution_id = e.root_execution_id
         WHERE e.execution_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    if let Some((root, corr)) = execution {
        return Ok(vec![("execution", trace_id_hex(corr), None, vec![root])]);
    }
    let by_correlation: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT DISTINCT e.root_execution_id, r.correlation_id
         FROM lineq.executions e JOIN lineq.executions r ON r.execution_id = e.root_execution_id
         WHERE e.correlation_id = $1
         ORDER BY 1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    if !by_correlation.is_empty() {
        let mut traces: Vec<Found> = Vec::new();
        for (root, corr) in by_correlation {
            let trace = trace_id_hex(corr);
            match traces.iter_mut().find(|t| t.1 == trace) {
                Some(t) => t.3.push(root),
                None => traces.push(("correlation", trace, None, vec![root])),
            }
        }
        return Ok(traces);
    }
    // An event's row stores the ids of the span that wrote it: those are exactly what was
    // exported.
    let event: Option<(Uuid, Uuid, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT e.root_execution_id, r.correlation_id, e.trace_id, e.span_id
         FROM lineq.events e JOIN lineq.executions r ON r.execution_id = e.root_execution_id
         WHERE e.event_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(event
        .map(|(root, corr, trace, span)| {
            let derived = TraceContext::for_event(corr, id);
            let trace = trace.unwrap_or_else(|| derived.trace_id_hex());
            let span = span.unwrap_or_else(|| derived.span_id_hex());
            vec![("event", trace, Some(span), vec![root])]
        })
        .unwrap_or_default())
}
