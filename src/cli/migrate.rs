//! `lineq migrate`.

use sqlx::PgPool;

use super::{Format, print_json};

pub async fn run(pool: &PgPool, format: Format) -> anyhow::Result<()> {
    let report = lineq::migrate(pool).await?;
    match format {
        Format::Json => print_json(&report)?,
        Format::Text => println!(
            "migrated: PGMQ {}, {} lineq migration(s) applied now, {} in total",
            report.pgmq_version.as_deref().unwrap_or("?"),
            report.applied.len(),
            report.total
        ),
    }
    Ok(())
}
