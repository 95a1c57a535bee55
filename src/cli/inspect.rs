//! `lineq get` and `lineq events`.

use super::output::{out, outln};
use clap::Args;
use lineq_read::ReadPool;

use std::time::Duration;

use lineq::Client;
use lineq_read::workers;

use super::render;
use super::{Format, parse_id, print_json};

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Execution id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Execution id.
    pub id: String,
    /// Draw the events as a tree (each under its parent) instead of a list.
    #[arg(long)]
    pub tree: bool,
}

pub async fn get(
    reads: &ReadPool,
    format: Format,
    a: GetArgs,
    silent_worker_secs: u64,
) -> anyhow::Result<()> {
    let id = parse_id("execution_id", &a.id)?;
    // Just submitted and not on the replica yet: the primary answers, and its steps are read
    // there too.
    let (execution, pool) = reads
        .or_primary(|pool| async move { Client::new(pool).execution(id).await })
        .await?;
    let pool = &pool;
    let client = Client::new(pool.clone());
    let steps = client.steps(id).await?;
    // Enqueued steps whose handler no live worker of their namespace serves: they wait.
    let unserved: Vec<&lineq_core::execution::Step> = if steps
        .iter()
        .any(|s| s.status == lineq_core::execution::StepStatus::Enqueued)
    {
        let waiting =
            workers::unserved_steps(pool, Duration::from_secs(silent_worker_secs)).await?;
        steps
            .iter()
            .filter(|s| {
                s.status == lineq_core::execution::StepStatus::Enqueued
                    && waiting
                        .iter()
                        .any(|u| u.namespace == s.namespace && u.handler == s.handler)
            })
            .collect()
    } else {
        Vec::new()
    };
    // Steps held back by their flow key, and why.
    let throttled = if steps
        .iter()
        .any(|s| s.status == lineq_core::execution::StepStatus::Throttled)
    {
        lineq_core::execution::waiting_steps_of(pool, id).await?
    } else {
        Vec::new()
    };
    match format {
        Format::Json => print_json(&serde_json::json!({
            "execution": execution,
            "steps": steps,
            "unserved_steps": unserved.iter().map(|s| &s.name).collect::<Vec<_>>(),
            "throttled_steps": throttled,
        })),
        Format::Text => {
            out!("{}", render::execution(&execution, &steps));
            for w in &throttled {
                outln!("waiting: step {} {}", w.step, render::waiting(w));
            }
            for s in unserved {
                outln!(
                    "waiting: step {} needs handler {} in namespace {}, and no live worker serves it",
                    s.name,
                    s.handler,
                    s.namespace
                );
            }
            Ok(())
        }
    }
}

pub async fn events(reads: &ReadPool, format: Format, a: EventsArgs) -> anyhow::Result<()> {
    let id = parse_id("execution_id", &a.id)?;
    let (events, _) = reads
        .or_primary(|pool| async move { Client::new(pool).events(id).await })
        .await?;
    match format {
        Format::Json => print_json(&events),
        Format::Text if a.tree => {
            out!("{}", render::event_tree(&events));
            Ok(())
        }
        Format::Text => {
            out!("{}", render::event_list(&events));
            Ok(())
        }
    }
}
