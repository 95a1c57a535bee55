//! Changing an execution's tags safely (its history is `lineq_read::history`).
//!
//! Tags change only while the execution is `pending` (once it runs, what it is about is fixed:
//! dashboards and audits rely on that). Every change bumps the execution's `version` and writes a
//! `tags_changed` event in the same transaction, so the event log is the complete history. Two
//! concurrent changes never lose one silently: the row is locked while the change is applied to
//! its current tags, and a caller that names the version it read gets
//! [`Error::Conflict`] when someone else changed the row first.

use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::error::Result;

use lineq_core::execution::Execution;
use lineq_core::ids::node_name;
use lineq_core::tags::{Tags, check_tag_key, check_tag_value};
use lineq_core::validation::ValidationError;

/// The longest cause recorded with a change.
pub const MAX_CAUSE_LEN: usize = 256;

/// A change of tags: keys to set (added or overwritten) and keys to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagChange {
    /// Keys to set.
    pub set: Tags,
    /// Keys to remove (absent keys are ignored).
    pub remove: Vec<String>,
}

impl TagChange {
    /// Checks the change on its own, before any row is read: each key and value follows the tag
    /// rules, no key is both set and removed, and something is asked for.
    pub fn validate(&self) -> std::result::Result<(), ValidationError> {
        if self.set.is_empty() && self.remove.is_empty() {
            return Err(ValidationError::new(
                "tags",
                "nothing to change: give at least one tag to set or remove",
            ));
        }
        for (k, v) in &self.set {
            check_tag_key(k)?;
            check_tag_value(k, v)?;
            if v.contains('\0') {
                // PostgreSQL's jsonb cannot store U+0000.
                return Err(ValidationError::new(
                    "tags",
                    format!("tag {k:?} value contains a NUL character"),
                ));
            }
        }
        for k in &self.remove {
            check_tag_key(k)?;
            if self.set.contains_key(k) {
                return Err(ValidationError::new(
                    "tags",
                    format!("tag {k:?} is both set and removed"),
                ));
            }
        }
        Ok(())
    }

    /// `tags` with this change applied.
    pub fn apply(&self, tags: &Tags) -> Tags {
        let mut out = tags.clone();
        for k in &self.remove {
            out.remove(k);
        }
        out.extend(self.set.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }
}

fn check_cause(cause: &str) -> std::result::Result<(), ValidationError> {
    let n = cause.chars().count();
    if n > MAX_CAUSE_LEN {
        return Err(ValidationError::new(
            "cause",
            format!("it is {n} characters; the limit is {MAX_CAUSE_LEN}"),
        ));
    }
    if cause.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "cause",
            "it must not contain control characters",
        ));
    }
    Ok(())
}

/// Changes the tags of execution `id`: sets `set`, removes `remove`.
///
/// - Refused with [`Error::Validation`] (nothing written) when a key or value breaks the tag
///   rules (see [`lineq_core::tags`]), a key is reserved, the result would have more than 20
///   tags, or `cause` is longer than [`MAX_CAUSE_LEN`].
/// - [`Error::NotFound`] when there is no such execution.
/// - [`Error::Conflict`] when `expected_version` is given and the execution is at another
///   version. Without it the change is applied to the execution's current tags under a row
///   lock, so concurrent changes of different keys all take effect.
/// - [`Error::InvalidState`] when the execution is no longer pending.
///
/// A change that leaves the tags as they were writes nothing and returns the execution as it
/// is. Otherwise the version is bumped and a `tags_changed` event (child of the execution's
/// `execution_started`, payload `{before, after, version, cause}`) is written in the same
/// transaction.
pub async fn update_tags(
    pool: &PgPool,
    id: Uuid,
    set: Tags,
    remove: Vec<String>,
    expected_version: Option<i64>,
    cause: &str,
) -> Result<Execution> {
    update_tags_as(
        pool,
        &node_name(),
        id,
        &TagChange { set, remove },
        expected_version,
        cause,
    )
    .await
}

/// [`update_tags`], with the event's `node_name` given.
///
/// The change is made by `lineq.update_tags` (migration `20261207000014_operations.sql`), which
/// checks it again and is the authority; it is checked here first only for the better error
/// without a round trip.
pub async fn update_tags_as(
    pool: &PgPool,
    node_name: &str,
    id: Uuid,
    change: &TagChange,
    expected_version: Option<i64>,
    cause: &str,
) -> Result<Execution> {
    change.validate()?;
    check_cause(cause)?;
    let mut tx = pool.begin().await?;
    let updated: Execution =
        sqlx::query_as("SELECT * FROM lineq.update_tags($1, $2, $3, $4, $5, $6)")
            .bind(id)
            .bind(sqlx::types::Json(&change.set))
            .bind(&change.remove)
            .bind(expected_version)
            .bind(cause)
            .bind(node_name)
            .fetch_one(&mut *tx)
            .await?;
    // The `tags_changed` event the function wrote is a span event of the execution's span,
    // exported when the execution ends (spans.rs).
    tx.commit().await?;
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn changes_are_checked_before_anything_is_read() {
        let field = |c: TagChange| c.validate().unwrap_err().field;
        assert_eq!(field(TagChange::default()), "tags");
        let reserved = TagChange {
            set: tags(&[("lineq_owner", "x")]),
            remove: vec![],
        };
        assert_eq!(field(reserved), "tags");
        let both = TagChange {
            set: tags(&[("a", "1")]),
            remove: vec!["a".into()],
        };
        assert!(
            both.validate()
                .unwrap_err()
                .reason
                .contains("both set and removed")
        );
        let remove_reserved = TagChange {
            set: Tags::new(),
            remove: vec!["_x".into()],
        };
        assert_eq!(field(remove_reserved), "tags");
        assert_eq!(
            check_cause(&"c".repeat(MAX_CAUSE_LEN + 1))
                .unwrap_err()
                .field,
            "cause"
        );
        assert!(check_cause(&"c".repeat(MAX_CAUSE_LEN)).is_ok());
    }

    #[test]
    fn apply_sets_and_removes() {
        let c = TagChange {
            set: tags(&[("region", "us-west"), ("customer", "globex")]),
            remove: vec!["tier".into(), "absent".into()],
        };
        let before = tags(&[("customer", "acme"), ("tier", "gold")]);
        assert_eq!(
            c.apply(&before),
            tags(&[("customer", "globex"), ("region", "us-west")])
        );
    }
}
