//! `lineq cancel`.

use super::output::outln;
use clap::Args;
use sqlx::PgPool;

use lineq_orchestrator::cancel::cancel;

use super::{Format, parse_id, print_json};

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Execution id; its unfinished descendants are cancelled too.
    pub id: String,
    /// Why, recorded in the cancellation events of every execution cancelled (at most 256
    /// characters, no control characters).
    #[arg(long, default_value = "cancelled by user")]
    pub reason: String,
}

pub async fn run(pool: &PgPool, format: Format, a: CancelArgs) -> anyhow::Result<()> {
    let id = parse_id("execution_id", &a.id)?;
    let report = cancel(pool, id, &a.reason).await?;
    match format {
        Format::Json => print_json(&report)?,
        Format::Text => outln!(
            "cancelled {} execution(s) and {} step(s) ({} queued message(s) deleted)",
            report.executions,
            report.steps,
            report.messages_deleted
        ),
    }
    Ok(())
}
