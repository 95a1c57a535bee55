//! `lineq migrate [--roles ...]`.

use super::output::outln;
use std::path::{Path, PathBuf};

use clap::Args;
use sqlx::PgPool;

use lineq_core::validation::ValidationError;
use lineq_migrate::roles::{self, LoginRole, Password, RoleKind, RoleName, RoleOptions};

use super::{Format, print_json};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Also create the least-privilege group roles PREFIX_orchestrator, PREFIX_worker and
    /// PREFIX_reader (NOLOGIN) and reconcile their privileges in this database. Run it as the
    /// role that owns the schema and may create roles; run it again after every upgrade and
    /// after creating namespaces with a role other than an orchestrator login made here.
    #[arg(long)]
    pub roles: bool,
    /// Name prefix of the group roles (roles belong to the cluster: use another prefix to keep
    /// two deployments in one cluster apart).
    #[arg(long, value_name = "PREFIX", default_value = roles::DEFAULT_ROLE_PREFIX, requires = "roles")]
    pub role_prefix: String,
    /// Create (or update) a LOGIN role in one group: KIND=NAME, KIND being orchestrator, worker,
    /// submitter or reader (repeatable). Its sessions act as the group in this database.
    #[arg(long = "login-role", value_name = "KIND=NAME", requires = "roles")]
    pub login_roles: Vec<String>,
    /// Set each login role's password from the file DIR/NAME (one line; the layout of Docker
    /// secrets and systemd credentials). Only a SCRAM-SHA-256 verifier is sent to PostgreSQL.
    #[arg(long, value_name = "DIR", requires = "login_roles")]
    pub role_password_dir: Option<PathBuf>,
}

pub async fn run(pool: &PgPool, format: Format, a: MigrateArgs) -> anyhow::Result<()> {
    // Every input is checked before anything is written.
    let role_options = if a.roles {
        Some(role_options(&a)?)
    } else {
        None
    };
    let report = lineq::migrate(pool).await?;
    let role_report = match &role_options {
        Some(o) => Some(roles::create_roles(pool, o).await?),
        None => None,
    };
    match format {
        Format::Json => print_json(&serde_json::json!({
            "pgmq_version": report.pgmq_version,
            "applied": report.applied,
            "total": report.total,
            "roles": role_report,
        }))?,
        Format::Text => {
            outln!(
                "migrated: PGMQ {}, {} lineq migration(s) applied now, {} in total",
                report.pgmq_version.as_deref().unwrap_or("?"),
                report.applied.len(),
                report.total
            );
            if let Some(r) = role_report {
                let created = if r.created.is_empty() {
                    "none".to_string()
                } else {
                    r.created.join(", ")
                };
                outln!(
                    "roles: {}, {}, {}, {} (created now: {created}); the worker may consume {} step queue(s); default privileges cover objects {} creates",
                    r.orchestrator,
                    r.worker,
                    r.submitter,
                    r.reader,
                    r.step_queues.len(),
                    r.owner
                );
                for l in r.logins {
                    outln!(
                        "login role {} in {}{}{}",
                        l.name,
                        l.group,
                        if l.created { ", created" } else { "" },
                        if l.password_set { ", password set" } else { "" }
                    );
                }
            }
        }
    }
    Ok(())
}

fn role_options(a: &MigrateArgs) -> anyhow::Result<RoleOptions> {
    let mut options = RoleOptions::new().prefix(&a.role_prefix)?;
    for spec in &a.login_roles {
        let (kind, name) = spec.split_once('=').ok_or_else(|| {
            ValidationError::new(
                "login_role",
                format!("{spec:?} is not KIND=NAME (e.g. worker=lineq_worker_1)"),
            )
        })?;
        let kind = RoleKind::parse(kind.trim())?;
        let name = RoleName::new(name.trim())?;
        let password = match &a.role_password_dir {
            Some(dir) => Some(read_password(dir, &name)?),
            None => None,
        };
        options = options.login(LoginRole {
            name,
            kind,
            password,
        });
    }
    Ok(options)
}

/// Reads DIR/NAME: one line, the trailing newline dropped. The content is never echoed.
fn read_password(dir: &Path, name: &RoleName) -> anyhow::Result<Password> {
    let path = dir.join(name.as_str());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ValidationError::new(
            "role_password_dir",
            format!(
                "cannot read the password of {name} from {}: {e}",
                path.display()
            ),
        )
    })?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    Password::new(line).map_err(|e| {
        ValidationError::new(
            "role_password_dir",
            format!("{}: {}", path.display(), e.reason),
        )
        .into()
    })
}
