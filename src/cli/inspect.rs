//! `lineq get` and `lineq events`.

use clap::Args;
use sqlx::PgPool;

use lineq::Client;

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

pub async fn get(pool: &PgPool, format: Format, a: GetArgs) -> anyhow::Result<()> {
    let id = parse_id("execution_id", &a.id)?;
    let client = Client::new(pool.clone());
    let execution = client.execution(id).await?;
    let steps = client.steps(id).await?;
    match format {
        Format::Json => print_json(&serde_json::json!({ "execution": execution, "steps": steps })),
        Format::Text => {
            print!("{}", render::execution(&execution, &steps));
            Ok(())
        }
    }
}

pub async fn events(pool: &PgPool, format: Format, a: EventsArgs) -> anyhow::Result<()> {
    let id = parse_id("execution_id", &a.id)?;
    let events = Client::new(pool.clone()).events(id).await?;
    match format {
        Format::Json => print_json(&events),
        Format::Text if a.tree => {
            print!("{}", render::event_tree(&events));
            Ok(())
        }
        Format::Text => {
            print!("{}", render::event_list(&events));
            Ok(())
        }
    }
}
