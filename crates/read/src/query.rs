//! Finding executions by what they are about rather than by id: tags, metadata, status,
//! workflow, lineage and time, combined with AND, paged by an opaque cursor in a stable order
//! (`created_at`, then `execution_id`).
//!
//! The query is `lineq.list_executions` (migration `20261207000014_operations.sql`), so every
//! client lists the same way. Every value reaches PostgreSQL as a bound parameter; nothing from
//! the caller is ever spliced into the SQL text. Tag and metadata filters are written as `@>`
//! containment and `?&` key existence so that the GIN indexes on `lineq.executions.tags` and
//! `.metadata` answer them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::execution::{Execution, ExecutionStatus};
use lineq_core::tags::{MAX_METADATA_BYTES, MAX_TAG_KEY_LEN, MAX_TAGS, Tags, check_tag_value};
use lineq_core::validation::{ValidationError, check_json_size};

/// Page size when the caller gives none.
pub const DEFAULT_LIMIT: u32 = 50;
/// The largest page.
pub const MAX_LIMIT: u32 = 1000;
/// The longest workflow name a filter accepts (the longest a workflow can have).
pub const MAX_WORKFLOW_FILTER_LEN: usize = lineq_core::validation::MAX_NAME_LEN;

/// One page of results and the cursor of the next page (`None` on the last page).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// The items, in `created_at`, `execution_id` order.
    pub items: Vec<T>,
    /// Pass this as the next request's cursor to get the following page; absent on the last.
    pub next_cursor: Option<String>,
}

/// A position in the (`created_at`, `execution_id`) order: the last item of a page.
///
/// Its text form is `<created_at in microseconds since the epoch>_<execution id>`. Callers
/// should treat it as opaque; it is validated when parsed, so a forged one can only move the
/// page, never change the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` of the last item seen.
    pub created_at: DateTime<Utc>,
    /// `execution_id` of the last item seen.
    pub execution_id: Uuid,
}

impl Cursor {
    /// The cursor just after `e`.
    pub fn after(e: &Execution) -> Self {
        Self {
            created_at: e.created_at,
            execution_id: e.execution_id,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // PostgreSQL keeps microseconds, so this round-trips exactly.
        write!(
            f,
            "{}_{}",
            self.created_at.timestamp_micros(),
            self.execution_id.simple()
        )
    }
}

impl FromStr for Cursor {
    type Err = ValidationError;

    fn from_str(s: &str) -> std::result::Result<Self, ValidationError> {
        let bad = || {
            ValidationError::new(
                "cursor",
                format!(
                    "{:?} is not a cursor from a previous page",
                    s.chars().take(80).collect::<String>()
                ),
            )
        };
        let (micros, id) = s.split_once('_').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let created_at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
        let execution_id = Uuid::try_parse(id).map_err(|_| bad())?;
        Ok(Self {
            created_at,
            execution_id,
        })
    }
}

/// What to look for. Every filter that is set must match (AND); an empty filter lists all
/// executions.
///
/// ```
/// use lineq_read::query::ExecutionFilter;
/// use lineq_core::execution::ExecutionStatus;
/// let f = ExecutionFilter::new()
///     .tag("customer", "acme")
///     .has_tag("region")
///     .metadata(serde_json::json!({"order": {"id": "12345"}}))
///     .status(ExecutionStatus::Pending)
///     .limit(20);
/// assert_eq!(f.limit, Some(20));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionFilter {
    /// Tags that must be present with exactly these values.
    pub tags: Tags,
    /// Tag keys that must be present, with any value.
    pub has_tags: Vec<String>,
    /// A JSON object the metadata must contain (`@>`: every key and nested value given is
    /// present; arrays match when they contain the given elements).
    pub metadata: Option<Value>,
    /// Any of these statuses (none given: any status).
    pub statuses: Vec<ExecutionStatus>,
    /// The workflow (or, for a task, handler) name.
    pub workflow: Option<String>,
    /// Children of this execution.
    pub parent_execution_id: Option<Uuid>,
    /// Executions in the tree of this root (the root included).
    pub root_execution_id: Option<Uuid>,
    /// Executions with this correlation id.
    pub correlation_id: Option<Uuid>,
    /// Created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Created before this time.
    pub until: Option<DateTime<Utc>>,
    /// Page size: 1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`].
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Newest first (`created_at`, then id, descending) instead of oldest first; the cursor
    /// then leads to older executions.
    pub newest_first: bool,
}

/// A filter that passed validation, ready to become SQL.
#[derive(Debug, Clone)]
struct Checked<'a> {
    filter: &'a ExecutionFilter,
    limit: i64,
    cursor: Option<Cursor>,
}

impl ExecutionFilter {
    /// A filter that matches every execution.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires tag `key` with value `value`.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Requires tag `key` to be present.
    pub fn has_tag(mut self, key: impl Into<String>) -> Self {
        self.has_tags.push(key.into());
        self
    }

    /// Requires the metadata to contain `metadata` (a JSON object).
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Allows `status` (several calls allow any of them).
    pub fn status(mut self, status: ExecutionStatus) -> Self {
        self.statuses.push(status);
        self
    }

    /// Requires this workflow name.
    pub fn workflow(mut self, name: impl Into<String>) -> Self {
        self.workflow = Some(name.into());
        self
    }

    /// Requires this parent execution.
    pub fn parent(mut self, id: Uuid) -> Self {
        self.parent_execution_id = Some(id);
        self
    }

    /// Requires this root execution.
    pub fn root(mut self, id: Uuid) -> Self {
        self.root_execution_id = Some(id);
        self
    }

    /// Requires this correlation id.
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Created at or after `t`.
    pub fn since(mut self, t: DateTime<Utc>) -> Self {
        self.since = Some(t);
        self
    }

    /// Created before `t`.
    pub fn until(mut self, t: DateTime<Utc>) -> Self {
        self.until = Some(t);
        self
    }

    /// Sets the page size.
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }

    /// Newest first instead of oldest first.
    pub fn newest_first(mut self) -> Self {
        self.newest_first = true;
        self
    }

    /// Continues after a previous page.
    pub fn cursor(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }

    /// Checks every value: each error names the field (as the CLI flag / query parameter is
    /// named) and the limit.
    pub fn validate(&self) -> std::result::Result<(), ValidationError> {
        self.checked().map(|_| ())
    }

    #[expect(
        clippy::too_many_lines,
        reason = "every filter checked in the order of ExecutionFilter's fields, each naming itself"
    )]
    fn checked(&self) -> std::result::Result<Checked<'_>, ValidationError> {
        if self.tags.len() > MAX_TAGS {
            return Err(ValidationError::new(
                "tag",
                format!(
                    "{} tag filters; an execution has at most {MAX_TAGS} tags",
                    self.tags.len()
                ),
            ));
        }
        for (k, v) in &self.tags {
            check_filter_key("tag", k)?;
            check_tag_value(k, v).map_err(|e| ValidationError::new("tag", e.reason))?;
            if v.contains('\0') {
                return Err(ValidationError::new(
                    "tag",
                    format!("tag {k:?} value contains a NUL character"),
                ));
            }
        }
        if self.has_tags.len() > MAX_TAGS {
            return Err(ValidationError::new(
                "has_tag",
                format!(
                    "{} has_tag filters; an execution has at most {MAX_TAGS} tags",
                    self.has_tags.len()
                ),
            ));
        }
        for k in &self.has_tags {
            check_filter_key("has_tag", k)?;
        }
        if let Some(m) = &self.metadata {
            if !m.is_object() {
                return Err(ValidationError::new(
                    "metadata",
                    "the filter must be a JSON object, e.g. {\"order\":{\"id\":\"12345\"}}",
                ));
            }
            check_json_size("metadata", m, MAX_METADATA_BYTES)?;
            if has_nul(m) {
                // PostgreSQL's jsonb cannot hold U+0000; refuse it here rather than fail there.
                return Err(ValidationError::new(
                    "metadata",
                    "the filter contains a NUL character (\\u0000), which no metadata can hold",
                ));
            }
        }
        if let Some(w) = &self.workflow {
            let n = w.chars().count();
            if n == 0 || n > MAX_WORKFLOW_FILTER_LEN {
                return Err(ValidationError::new(
                    "workflow",
                    format!(
                        "it is {n} characters; a workflow name is 1 to {MAX_WORKFLOW_FILTER_LEN}"
                    ),
                ));
            }
            if w.chars().any(char::is_control) {
                return Err(ValidationError::new(
                    "workflow",
                    "it contains a control character",
                ));
            }
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since > until {
                return Err(ValidationError::new(
                    "until",
                    format!("until ({until}) is before since ({since})"),
                ));
            }
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ValidationError::new(
                "limit",
                format!("it is {limit}; a page holds 1 to {MAX_LIMIT} executions"),
            ));
        }
        let cursor = self.cursor.as_deref().map(Cursor::from_str).transpose()?;
        Ok(Checked {
            filter: self,
            limit: i64::from(limit),
            cursor,
        })
    }
}

/// Parses a tag filter `KEY=VALUE` (the value may contain `=`). The key and value are checked by
/// [`ExecutionFilter::validate`].
pub fn parse_tag_filter(s: &str) -> std::result::Result<(String, String), ValidationError> {
    let (k, v) = s.split_once('=').ok_or_else(|| {
        ValidationError::new(
            "tag",
            format!(
                "expected KEY=VALUE, got {:?}",
                s.chars().take(80).collect::<String>()
            ),
        )
    })?;
    Ok((k.to_string(), v.to_string()))
}

/// Parses an RFC 3339 time (`2026-11-23T10:00:00Z`, any offset) for the filter `field`.
pub fn parse_time(
    field: &'static str,
    s: &str,
) -> std::result::Result<DateTime<Utc>, ValidationError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ValidationError::new(
                field,
                format!(
                    "{:?} is not an RFC 3339 time such as 2026-11-23T10:00:00Z: {e}",
                    s.chars().take(80).collect::<String>()
                ),
            )
        })
}

/// Parses a metadata filter (a JSON object) for the filter field `metadata`.
pub fn parse_metadata_filter(s: &str) -> std::result::Result<Value, ValidationError> {
    serde_json::from_str(s)
        .map_err(|e| ValidationError::new("metadata", format!("not valid JSON: {e}")))
}

/// A filter key has the shape of a tag key. Reserved prefixes are allowed: lineq may set such
/// tags itself, and looking for them is harmless.
fn check_filter_key(field: &'static str, key: &str) -> std::result::Result<(), ValidationError> {
    let n = key.chars().count();
    if n == 0 || n > MAX_TAG_KEY_LEN {
        return Err(ValidationError::new(
            field,
            format!("tag key {key:?} is {n} characters; a key is 1 to {MAX_TAG_KEY_LEN}"),
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(ValidationError::new(
            field,
            format!("tag key {key:?} contains {c:?}; keys use a-z, 0-9, '-' and '_'"),
        ));
    }
    Ok(())
}

/// True when any string (key or value) in `v` holds U+0000.
pub(crate) fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// The arguments of `lineq.list_executions` and `lineq.explain_list_executions`, in order.
const LIST_ARGS: &str = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14";

impl Checked<'_> {
    /// `sql` (a call of one of the list functions, with [`LIST_ARGS`]) with every value bound;
    /// `limit` rows at most.
    fn bind<'q, O>(
        &self,
        q: sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>,
        limit: i64,
    ) -> sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments> {
        let f = self.filter;
        let statuses: Vec<String> = f.statuses.iter().map(|s| s.as_str().to_string()).collect();
        q.bind((!f.tags.is_empty()).then(|| sqlx::types::Json(f.tags.clone())))
            .bind(f.has_tags.clone())
            .bind(f.metadata.clone())
            .bind(statuses)
            .bind(f.workflow.clone())
            .bind(f.parent_execution_id)
            .bind(f.root_execution_id)
            .bind(f.correlation_id)
            .bind(f.since)
            .bind(f.until)
            .bind(i32::try_from(limit).unwrap_or(i32::MAX))
            .bind(self.cursor.map(|c| c.created_at))
            .bind(self.cursor.map(|c| c.execution_id))
            .bind(f.newest_first)
    }
}

/// Lists the executions that match `filter`, oldest first (or newest first), one page at a time, through
/// `lineq._list_executions` (the body of `lineq.list_executions`, migration
/// `20261207000014_operations.sql`), asking for one row more than a page to know whether
/// another follows.
pub async fn list_executions(pool: &PgPool, filter: &ExecutionFilter) -> Result<Page<Execution>> {
    let checked = filter.checked()?;
    let sql = format!("SELECT * FROM lineq._list_executions({LIST_ARGS})");
    let mut items = checked
        .bind(sqlx::query_as::<_, Execution>(&sql), checked.limit + 1)
        .fetch_all(pool)
        .await?;
    let limit = usize::try_from(checked.limit).unwrap_or(usize::MAX);
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|e| Cursor::after(e).to_string())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// PostgreSQL's plan (`EXPLAIN (FORMAT JSON)`, not run) for exactly the query
/// [`list_executions`] runs for `filter`, with the same values bound
/// (`lineq.explain_list_executions`). It lets operators and tests check that tag and metadata
/// filters use their indexes.
pub async fn explain_list_executions(pool: &PgPool, filter: &ExecutionFilter) -> Result<Value> {
    let checked = filter.checked()?;
    let sql = format!("SELECT lineq.explain_list_executions({LIST_ARGS})");
    let (plan,): (Value,) = checked
        .bind(sqlx::query_as(&sql), checked.limit + 1)
        .fetch_one(pool)
        .await?;
    Ok(plan)
}

/// How many executions have each status, counted up to `cap` per status (a count that reaches
/// it means "at least"): one index range per status on `executions_status_created_idx`, so it
/// stays fast however many executions there are.
pub async fn count_by_status(pool: &PgPool, cap: i64) -> Result<Vec<(ExecutionStatus, i64)>> {
    let all: Vec<String> = [
        ExecutionStatus::Pending,
        ExecutionStatus::Running,
        ExecutionStatus::Completed,
        ExecutionStatus::Failed,
        ExecutionStatus::Cancelled,
    ]
    .iter()
    .map(|s| s.as_str().to_string())
    .collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s, (SELECT count(*) FROM (SELECT 1 FROM lineq.executions e
                                         WHERE e.status = s LIMIT $2) capped)
         FROM unnest($1::text[]) s",
    )
    .bind(&all)
    .bind(cap.max(1))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(s, n)| Ok((s.parse::<ExecutionStatus>()?, n)))
        .collect()
}

/// Executions finished in each of the last `minutes` minutes, oldest minute first, as
/// `(minute start, completed, failed, cancelled)`; minutes with none are included as zeros.
/// Backed by `executions_finished_idx`.
pub async fn finished_per_minute(
    pool: &PgPool,
    minutes: i32,
) -> Result<Vec<(DateTime<Utc>, i64, i64, i64)>> {
    Ok(sqlx::query_as(
        "WITH m AS (
             SELECT generate_series(date_trunc('minute', now()) - make_interval(mins => $1 - 1),
                                    date_trunc('minute', now()), interval '1 minute') AS minute)
         SELECT m.minute,
                count(e.*) FILTER (WHERE e.status = 'completed'),
                count(e.*) FILTER (WHERE e.status = 'failed'),
                count(e.*) FILTER (WHERE e.status = 'cancelled')
         FROM m LEFT JOIN lineq.executions e
           ON e.finished_at >= m.minute AND e.finished_at < m.minute + interval '1 minute'
         GROUP BY m.minute ORDER BY m.minute",
    )
    .bind(minutes.clamp(1, 24 * 60))
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            created_at: DateTime::<Utc>::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            execution_id: Uuid::now_v7(),
        };
        assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
        for bad in [
            "",
            "_",
            "12",
            "x_0190",
            "1_not-a-uuid",
            "1'; DROP TABLE lineq.executions; --_00000000-0000-0000-0000-000000000000",
            "99999999999999999999_00000000000000000000000000000000",
        ] {
            let e = bad.parse::<Cursor>().unwrap_err();
            assert_eq!(e.field, "cursor", "{bad}");
        }
    }

    #[test]
    fn filter_validation_names_the_field() {
        let field = |f: ExecutionFilter| f.validate().unwrap_err().field;
        assert_eq!(field(ExecutionFilter::new().limit(0)), "limit");
        assert_eq!(field(ExecutionFilter::new().limit(MAX_LIMIT + 1)), "limit");
        assert!(ExecutionFilter::new().limit(MAX_LIMIT).validate().is_ok());
        assert_eq!(field(ExecutionFilter::new().tag("Bad Key", "v")), "tag");
        assert_eq!(field(ExecutionFilter::new().tag("k", "a\nb")), "tag");
        assert_eq!(field(ExecutionFilter::new().tag("k", "a\0b")), "tag");
        assert_eq!(field(ExecutionFilter::new().has_tag("")), "has_tag");
        assert_eq!(
            field(ExecutionFilter::new().metadata(json!([1]))),
            "metadata"
        );
        assert_eq!(
            field(ExecutionFilter::new().metadata(json!({"a": "\u{0}"}))),
            "metadata"
        );
        assert_eq!(field(ExecutionFilter::new().workflow("")), "workflow");
        assert_eq!(field(ExecutionFilter::new().cursor("nope")), "cursor");
        let now = Utc::now();
        assert_eq!(
            field(
                ExecutionFilter::new()
                    .since(now)
                    .until(now - chrono::Duration::seconds(1))
            ),
            "until"
        );
        // Reserved prefixes can be looked for.
        assert!(ExecutionFilter::new().has_tag("lineq_x").validate().is_ok());
    }

    #[test]
    fn the_query_is_a_fixed_call() {
        // Every value is bound; the SQL functions splice only fixed fragments.
        assert!(!LIST_ARGS.contains('\''));
        assert_eq!(LIST_ARGS.matches('$').count(), 14);
    }
}
