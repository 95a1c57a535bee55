//! The workflow registry: versioned workflow definitions in `lineq.workflows`.
//!
//! A `(name, version)` pair is immutable once registered, so an execution that records the
//! workflow version it ran always refers to the same steps. Registering without a version appends
//! the next one; registering what is already the latest (or already that exact version) changes
//! nothing, so `lineq workflow register` can be run again and again from a deploy script.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use lineq_core::validation::{ValidationError, check_name};
use lineq_core::{Error, Result};

use super::definition::WorkflowDefinition;

/// The first key of the two-key advisory lock taken per workflow name while registering
/// ("lqwf" in ASCII). The two-key form lives in a key space of its own in `pg_locks`, apart from
/// the one-`bigint` locks (such as `lineq migrate`'s), so the two can never block each other.
const REGISTER_LOCK_CLASS: i32 = 0x6c71_7766;

/// One registered version of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredWorkflow {
    /// The workflow's name.
    pub name: String,
    /// This version.
    pub version: i32,
    /// The definition, with `version` set to [`StoredWorkflow::version`].
    pub definition: WorkflowDefinition,
    /// When this version was registered.
    pub created_at: DateTime<Utc>,
}

/// What [`register`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registered {
    /// The workflow's name.
    pub name: String,
    /// The version registered, or the existing version that was identical.
    pub version: i32,
    /// False when that version already held this exact definition and nothing was written.
    pub created: bool,
}

/// One workflow in [`list`]: its latest version and how many there are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkflowSummary {
    /// The workflow's name.
    pub name: String,
    /// The highest registered version (what `submit NAME` runs).
    pub latest_version: i32,
    /// How many versions are registered.
    pub versions: i64,
    /// Steps in the latest version.
    pub steps: usize,
    /// When the latest version was registered.
    pub updated_at: DateTime<Utc>,
}

/// Validates `def`, then stores it.
///
/// With `def.version` `None` it becomes the next version (the highest plus one, 1 for a new name),
/// unless the latest version already holds exactly this definition, which is then returned with
/// `created: false`. With an explicit version that exists, an identical definition is a no-op
/// (`created: false`) and a different one is refused with a [`ValidationError`] naming the
/// workflow and version: registered versions are immutable.
///
/// Safe under concurrent registration of the same name: see the advisory lock below.
pub async fn register(pool: &PgPool, def: &WorkflowDefinition) -> Result<Registered> {
    def.validate()?;
    // The version is the row's key, not part of what is compared or stored: the same steps
    // registered as v1 and later as v2 must compare equal.
    let mut stored = def.clone();
    stored.version = None;
    let definition = serde_json::to_value(&stored)?;

    let mut tx = pool.begin().await?;
    // One registration per name at a time, for the whole transaction. Chosen over "insert, and
    // retry on a unique violation" because registering also reads (the latest definition, or the
    // one under an explicit version) to decide between no-op, new row and conflict; under the
    // lock that read and the insert are one consistent decision, with no retry loop that grows
    // with the number of concurrent registrants. Each statement in READ COMMITTED takes a fresh
    // snapshot, so the reads below see whatever the previous lock holder committed. The lock is
    // released at commit or rollback, also when the client dies. hashtext collisions only make
    // two different names wait for each other briefly.
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(REGISTER_LOCK_CLASS)
        .bind(&def.name)
        .execute(&mut *tx)
        .await?;

    let latest: Option<(i32, bool)> = sqlx::query_as(
        "SELECT version, definition = $2 FROM lineq.workflows
         WHERE name = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(&def.name)
    .bind(&definition)
    .fetch_optional(&mut *tx)
    .await?;

    let version = match def.version {
        None => match latest {
            // Compared with the latest only: registering an older definition again is a
            // deliberate revert and must become the latest, or `submit NAME` would keep running
            // the newer one.
            Some((v, true)) => return unchanged(tx, &def.name, v).await,
            Some((v, false)) => v.checked_add(1).ok_or_else(|| {
                ValidationError::new(
                    "version",
                    format!("workflow {:?} has no version left after {v}", def.name),
                )
            })?,
            None => 1,
        },
        Some(v) => {
            // jsonb equality compares values, not text: key order and number spelling do not
            // make two definitions differ.
            let same: Option<bool> = sqlx::query_scalar(
                "SELECT definition = $3 FROM lineq.workflows WHERE name = $1 AND version = $2",
            )
            .bind(&def.name)
            .bind(v)
            .bind(&definition)
            .fetch_optional(&mut *tx)
            .await?;
            match same {
                Some(true) => return unchanged(tx, &def.name, v).await,
                Some(false) => {
                    let next = latest.map_or(1, |(l, _)| l.saturating_add(1));
                    return Err(ValidationError::new(
                        "version",
                        format!(
                            "workflow {:?} version {v} is already registered with a different definition; registered versions are immutable; register it as version {next}",
                            def.name
                        ),
                    )
                    .into());
                }
                None => v,
            }
        }
    };

    sqlx::query(
        "INSERT INTO lineq.workflows (name, version, definition, description)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&def.name)
    .bind(version)
    .bind(&definition)
    .bind(&def.description)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(workflow = %def.name, version, "workflow registered");
    Ok(Registered {
        name: def.name.clone(),
        version,
        created: true,
    })
}

/// Ends a registration that found its definition already stored.
async fn unchanged(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    name: &str,
    version: i32,
) -> Result<Registered> {
    // Committing (rather than dropping) releases the advisory lock without a rollback warning.
    tx.commit().await?;
    Ok(Registered {
        name: name.to_string(),
        version,
        created: false,
    })
}

/// A registered workflow: `version`, or the latest when `None`. `Ok(None)` when the name (or that
/// version) is not registered; the engine then treats the name as a bare handler.
pub async fn get<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    name: &str,
    version: Option<i32>,
) -> Result<Option<StoredWorkflow>> {
    let row: Option<(String, i32, Value, DateTime<Utc>)> = sqlx::query_as(
        "SELECT name, version, definition, created_at FROM lineq.workflows
         WHERE name = $1 AND ($2::integer IS NULL OR version = $2)
         ORDER BY version DESC LIMIT 1",
    )
    .bind(name)
    .bind(version)
    .fetch_optional(executor)
    .await?;
    row.map(decode).transpose()
}

/// Every registered workflow, by name, with its latest version.
pub async fn list(pool: &PgPool) -> Result<Vec<WorkflowSummary>> {
    // The step count is read from the JSON rather than decoding every definition.
    let rows: Vec<(String, i32, i64, i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT DISTINCT ON (name)
                name, version, count(*) OVER (PARTITION BY name),
                coalesce(jsonb_array_length(definition -> 'steps'), 0), created_at
         FROM lineq.workflows
         ORDER BY name, version DESC",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(name, latest_version, versions, steps, updated_at)| WorkflowSummary {
                name,
                latest_version,
                versions,
                steps: usize::try_from(steps).unwrap_or(0),
                updated_at,
            },
        )
        .collect())
}

/// Every registered version of `name`, oldest first; empty when the name is not registered.
pub async fn versions(pool: &PgPool, name: &str) -> Result<Vec<StoredWorkflow>> {
    let rows: Vec<(String, i32, Value, DateTime<Utc>)> = sqlx::query_as(
        "SELECT name, version, definition, created_at FROM lineq.workflows
         WHERE name = $1 ORDER BY version",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(decode).collect()
}

/// A row as a [`StoredWorkflow`], its definition carrying the row's version.
fn decode(
    (name, version, definition, created_at): (String, i32, Value, DateTime<Utc>),
) -> Result<StoredWorkflow> {
    let mut definition: WorkflowDefinition = serde_json::from_value(definition).map_err(|e| {
        // Only possible if the row was written by something other than `register`, or by a
        // lineq whose definition format this one cannot read: say which row.
        Error::InvalidState(format!(
            "stored workflow {name:?} version {version} cannot be read: {e}"
        ))
    })?;
    definition.version = Some(version);
    Ok(StoredWorkflow {
        name,
        version,
        definition,
        created_at,
    })
}

/// Parses a workflow reference: `"name"` → `(name, None)`, `"name@3"` (or `"name@v3"`, as
/// lineq prints versions) → `(name, Some(3))`. A bad name or version is a [`ValidationError`]
/// naming the field `workflow`.
pub fn parse_ref(s: &str) -> std::result::Result<(String, Option<i32>), ValidationError> {
    let (name, version) = match s.split_once('@') {
        None => (s, None),
        Some((name, v)) => {
            let digits = v.strip_prefix('v').unwrap_or(v);
            // Leading '+' or '-' would be accepted by `parse`; a version is plain digits.
            let parsed = digits
                .chars()
                .all(|c| c.is_ascii_digit())
                .then(|| digits.parse::<i32>().ok())
                .flatten()
                .filter(|n| *n >= 1);
            match parsed {
                Some(n) => (name, Some(n)),
                None => {
                    return Err(ValidationError::new(
                        "workflow",
                        format!(
                            "{s:?}: the version after '@' must be a whole number from 1 to {}, as in NAME@3",
                            i32::MAX
                        ),
                    ));
                }
            }
        }
    };
    check_name("workflow", name)?;
    Ok((name.to_string(), version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ref_accepts_names_and_versions() {
        assert_eq!(parse_ref("order").unwrap(), ("order".to_string(), None));
        assert_eq!(
            parse_ref("payments.order@3").unwrap(),
            ("payments.order".to_string(), Some(3))
        );
        assert_eq!(
            parse_ref("order@v12").unwrap(),
            ("order".to_string(), Some(12))
        );
        assert_eq!(
            parse_ref(&format!("o@{}", i32::MAX)).unwrap(),
            ("o".to_string(), Some(i32::MAX))
        );
    }

    #[test]
    fn parse_ref_rejects_bad_versions_and_names() {
        for bad in [
            "order@",
            "order@0",
            "order@-1",
            "order@+2",
            "order@x",
            "order@v",
            "order@1.5",
            "order@ 2",
            "order@2147483648",
            "order@1@2",
            "",
            "@3",
            "bad name",
            "a;drop",
        ] {
            let e = parse_ref(bad).unwrap_err();
            assert_eq!(e.field, "workflow", "{bad:?}");
        }
        let e = parse_ref("order@x").unwrap_err().to_string();
        assert!(
            e.contains("invalid workflow") && e.contains("order@x"),
            "{e}"
        );
    }
}
