//! `lineq tag`, `lineq untag` and `lineq history`.

use super::output::{out, outln};
use std::fmt::Write;

use clap::Args;
use lineq_read::ReadPool;
use serde_json::Value;
use sqlx::PgPool;

use lineq::Client;
use lineq_core::tags::{Tags, parse_tag};
use lineq_core::validation::ValidationError;
use lineq_orchestrator::tags::TagChange;
use lineq_read::history::{HistoryEntry, HistoryKind};

use super::{Format, parse_id, print_json};

#[derive(Debug, Args)]
pub struct TagArgs {
    /// Execution id.
    pub id: String,
    /// Tags to set, KEY=VALUE (added, or overwritten when present).
    #[arg(required = true, value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Change only if the execution is still at this version (from `lineq get --format json`);
    /// otherwise the version read just before is used. Either way a concurrent change makes
    /// this one fail with a conflict instead of being lost.
    #[arg(long, value_name = "N")]
    pub expect_version: Option<i64>,
    /// Why, recorded in the `tags_changed` event.
    #[arg(long, default_value = "lineq tag")]
    pub cause: String,
}

#[derive(Debug, Args)]
pub struct UntagArgs {
    /// Execution id.
    pub id: String,
    /// Tag keys to remove.
    #[arg(required = true, value_name = "KEY")]
    pub keys: Vec<String>,
    /// Change only if the execution is still at this version (see `lineq tag`).
    #[arg(long, value_name = "N")]
    pub expect_version: Option<i64>,
    /// Why, recorded in the `tags_changed` event.
    #[arg(long, default_value = "lineq untag")]
    pub cause: String,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Execution id.
    pub id: String,
}

pub async fn tag(pool: &PgPool, format: Format, a: TagArgs) -> anyhow::Result<()> {
    let id = parse_id("execution_id", &a.id)?;
    let mut set = Tags::new();
    for t in &a.tags {
        let (k, v) = parse_tag(t)?;
        if set.insert(k.clone(), v).is_some() {
            return Err(ValidationError::new("tags", format!("tag {k:?} is given twice")).into());
        }
    }
    let change = TagChange {
        set,
        remove: Vec::new(),
    };
    apply(pool, format, id, change, a.expect_version, &a.cause).await
}

pub async fn untag(pool: &PgPool, format: Format, a: UntagArgs) -> anyhow::Result<()> {
    let id = parse_id("execution_id", &a.id)?;
    let change = TagChange {
        set: Tags::new(),
        remove: a.keys,
    };
    apply(pool, format, id, change, a.expect_version, &a.cause).await
}

async fn apply(
    pool: &PgPool,
    format: Format,
    id: uuid::Uuid,
    change: TagChange,
    expect_version: Option<i64>,
    cause: &str,
) -> anyhow::Result<()> {
    // Refuse bad input before touching the database (and with exit code 2).
    change.validate()?;
    let client = Client::new(pool.clone());
    let expected = match expect_version {
        Some(v) => v,
        // Guard with the version we read, so a change made between the read and the write is
        // reported as a conflict rather than silently built upon.
        None => client.execution(id).await?.version,
    };
    let updated = client
        .update_tags(id, &change, Some(expected), cause)
        .await?;
    match format {
        Format::Json => print_json(&updated),
        Format::Text => {
            outln!(
                "{} version {} tags {}",
                updated.execution_id,
                updated.version,
                tags_text(Some(&updated.tags))
            );
            Ok(())
        }
    }
}

pub async fn history(reads: &ReadPool, format: Format, a: HistoryArgs) -> anyhow::Result<()> {
    let id = parse_id("execution_id", &a.id)?;
    let (entries, _) = reads
        .or_primary(|pool| async move { Client::new(pool).history(id).await })
        .await?;
    match format {
        Format::Json => print_json(&entries),
        Format::Text => {
            out!("{}", render(&entries));
            Ok(())
        }
    }
}

fn tags_text(tags: Option<&Value>) -> String {
    let Some(o) = tags.and_then(Value::as_object) else {
        return "{}".to_string();
    };
    let inner = o
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_string)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("{{{inner}}}")
}

/// One line per change: time, what, the new state, and why.
fn render(entries: &[HistoryEntry]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<32}  {:<6}  {:<40}  CAUSE", "TIME", "KIND", "CHANGE");
    for e in entries {
        let (kind, change) = match e.kind {
            HistoryKind::Status => (
                "status",
                e.status.clone().unwrap_or_else(|| e.event_type.clone()),
            ),
            HistoryKind::Step => (
                "step",
                format!(
                    "{} {}",
                    e.step.as_deref().unwrap_or("?"),
                    e.step_status.as_deref().unwrap_or("?")
                ),
            ),
            HistoryKind::Tags => (
                "tags",
                format!(
                    "v{} {} -> {}",
                    e.version.map_or("?".to_string(), |v| v.to_string()),
                    tags_text(e.tags_before.as_ref()),
                    tags_text(e.tags_after.as_ref())
                ),
            ),
        };
        let _ = writeln!(
            s,
            "{:<32}  {:<6}  {:<40}  {}",
            e.at.to_rfc3339(),
            kind,
            change,
            e.cause
        );
    }
    s
}
