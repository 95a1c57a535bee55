//! `lineq namespace create|list`.

use super::output::outln;
use clap::Subcommand;
use sqlx::PgPool;

use lineq_core::queue;
use lineq_core::validation::Namespace;

use super::{Format, print_json};

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Create a namespace's step queue (a worker creates its own on start only when its
    /// database role may create queues; the least-privilege worker role may not).
    Create {
        /// 1 to 32 characters of a-z, 0-9 and _, starting with a letter.
        namespace: String,
    },
    /// List namespaces.
    List,
}

pub async fn run(pool: &PgPool, format: Format, cmd: NamespaceCommand) -> anyhow::Result<()> {
    match cmd {
        NamespaceCommand::Create { namespace } => {
            let ns = Namespace::new(&namespace)?;
            let q = queue::step_queue(&ns);
            let mut conn = pool.acquire().await?;
            queue::ensure_queue(&mut conn, &q).await?;
            match format {
                Format::Json => {
                    print_json(&serde_json::json!({"namespace": ns, "queue": q.as_str()}))?
                }
                Format::Text => outln!("namespace {ns} (queue {q})"),
            }
        }
        NamespaceCommand::List => {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT substr(queue_name, length('lineq_steps_') + 1) FROM lineq.queues()
                 WHERE queue_name LIKE 'lineq\\_steps\\_%' ORDER BY 1",
            )
            .fetch_all(pool)
            .await?;
            match format {
                Format::Json => print_json(&names)?,
                Format::Text => names.iter().for_each(|n| outln!("{n}")),
            }
        }
    }
    Ok(())
}
