//! `lineq dlq list|show|replay`.

use super::output::outln;
use clap::Subcommand;
use sqlx::PgPool;

use lineq_orchestrator::dead_letters;

use super::{Format, print_json};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Show one dead letter with its original message.
    Show {
        /// Dead-letter id (from `lineq dlq list`).
        id: i64,
    },
    /// Send a dead letter back to the queue it came from.
    Replay {
        /// Dead-letter id.
        id: i64,
    },
}

pub async fn run(pool: &PgPool, format: Format, cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List { limit } => {
            let letters = dead_letters::list(pool, limit).await?;
            match format {
                Format::Json => print_json(&letters)?,
                Format::Text => {
                    outln!(
                        "{:>8}  {:<25}  {:<22}  REASON",
                        "ID",
                        "DEAD-LETTERED",
                        "FROM"
                    );
                    for l in letters {
                        outln!(
                            "{:>8}  {:<25}  {:<22}  {}",
                            l.msg_id,
                            l.dead_lettered_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                            l.source_queue,
                            l.reason
                        );
                    }
                }
            }
        }
        DlqCommand::Show { id } => {
            let l = dead_letters::show(pool, id).await?;
            match format {
                Format::Json => print_json(&l)?,
                Format::Text => {
                    outln!(
                        "dead letter {} from {} (message {:?})",
                        l.msg_id,
                        l.source_queue,
                        l.source_msg_id
                    );
                    outln!("reason  {}", l.reason);
                    if let Some(e) = l.event_id {
                        outln!("event   {e}");
                    }
                    match (&l.message_unparsed, &l.message) {
                        (Some(why), serde_json::Value::String(text)) => {
                            outln!("message {why}:\n{text}");
                        }
                        _ => outln!("message {}", serde_json::to_string_pretty(&l.message)?),
                    }
                }
            }
        }
        DlqCommand::Replay { id } => {
            let r = dead_letters::replay(pool, id).await?;
            match format {
                Format::Json => print_json(&r)?,
                Format::Text => outln!(
                    "replayed dead letter {} to {} as message {}",
                    r.dead_letter,
                    r.queue,
                    r.msg_id
                ),
            }
        }
    }
    Ok(())
}
