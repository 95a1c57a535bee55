//! `lineq list`: find executions by tags, metadata, status, workflow, lineage and time.

use super::output::out;
use std::fmt::Write;

use clap::Args;
use lineq_read::ReadPool;
use serde_json::Value;

use lineq::Client;
use lineq_core::execution::{Execution, ExecutionStatus};
use lineq_core::validation::ValidationError;
use lineq_read::query::{
    ExecutionFilter, Page, parse_metadata_filter, parse_tag_filter, parse_time,
};

use super::{Format, parse_id, print_json};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only executions with this tag KEY=VALUE (repeatable; all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Only executions that have tag KEY, with any value (repeatable).
    #[arg(long = "has-tag", value_name = "KEY")]
    pub has_tags: Vec<String>,
    /// Only executions whose metadata contains this JSON object, e.g. '{"order":{"id":"12345"}}'.
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,
    /// Only executions in this status (repeatable: any of them): pending, running, completed,
    /// failed, cancelled.
    #[arg(long = "status", value_name = "STATUS")]
    pub statuses: Vec<String>,
    /// Only executions of this workflow (or handler).
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only children of this execution.
    #[arg(long, value_name = "ID")]
    pub parent: Option<String>,
    /// Only executions in the tree of this root execution.
    #[arg(long, value_name = "ID")]
    pub root: Option<String>,
    /// Only executions with this correlation id.
    #[arg(long, value_name = "ID")]
    pub correlation_id: Option<String>,
    /// Only executions created at or after this RFC 3339 time, e.g. 2026-11-23T10:00:00Z.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only executions created before this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Executions per page (1 to 1000).
    #[arg(long, default_value_t = lineq_read::query::DEFAULT_LIMIT)]
    pub limit: u32,
    /// Continue after a previous page (its `next_cursor`); give the same --newest-first as for
    /// that page.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Newest first (by creation time) instead of oldest first; the next page then holds older
    /// executions.
    #[arg(long)]
    pub newest_first: bool,
}

impl ListArgs {
    /// The filter these flags describe; errors name the flag.
    pub fn filter(&self) -> Result<ExecutionFilter, anyhow::Error> {
        let mut f = ExecutionFilter::new().limit(self.limit);
        for t in &self.tags {
            let (k, v) = parse_tag_filter(t)?;
            if f.tags.contains_key(&k) {
                return Err(ValidationError::new(
                    "tag",
                    format!("tag {k:?} is given twice; an execution has one value per key"),
                )
                .into());
            }
            f = f.tag(k, v);
        }
        for k in &self.has_tags {
            f = f.has_tag(k.clone());
        }
        if let Some(m) = &self.metadata {
            f = f.metadata(parse_metadata_filter(m)?);
        }
        for s in &self.statuses {
            f = f.status(s.parse::<ExecutionStatus>()?);
        }
        if let Some(w) = &self.workflow {
            f = f.workflow(w.clone());
        }
        if let Some(p) = &self.parent {
            f = f.parent(parse_id("parent", p)?);
        }
        if let Some(r) = &self.root {
            f = f.root(parse_id("root", r)?);
        }
        if let Some(c) = &self.correlation_id {
            f = f.correlation_id(parse_id("correlation_id", c)?);
        }
        if let Some(t) = &self.since {
            f = f.since(parse_time("since", t)?);
        }
        if let Some(t) = &self.until {
            f = f.until(parse_time("until", t)?);
        }
        if let Some(c) = &self.cursor {
            f = f.cursor(c.clone());
        }
        if self.newest_first {
            f = f.newest_first();
        }
        f.validate()?;
        Ok(f)
    }
}

pub async fn run(reads: &ReadPool, format: Format, a: ListArgs) -> anyhow::Result<()> {
    let filter = a.filter()?;
    let page = Client::new(reads.pool().clone()).list(&filter).await?;
    match format {
        Format::Json => print_json(&page),
        Format::Text => {
            out!("{}", render(&page));
            Ok(())
        }
    }
}

fn tags_text(tags: &Value) -> String {
    match tags.as_object() {
        Some(o) if !o.is_empty() => o
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_string)
                )
            })
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".to_string(),
    }
}

/// One line per execution, then the cursor of the next page when there is one.
fn render(page: &Page<Execution>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<36}  {:<9}  {:<24}  {:<32}  TAGS",
        "EXECUTION ID", "STATUS", "WORKFLOW", "CREATED"
    );
    for e in &page.items {
        let _ = writeln!(
            s,
            "{:<36}  {:<9}  {:<24}  {:<32}  {}",
            e.execution_id,
            e.status.as_str(),
            e.workflow_name,
            e.created_at.to_rfc3339(),
            tags_text(&e.tags)
        );
    }
    if let Some(c) = &page.next_cursor {
        let _ = writeln!(s, "next page: --cursor {c}");
    }
    s
}
