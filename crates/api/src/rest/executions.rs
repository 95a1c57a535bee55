//! `/v1/executions`: submit, list with filters, read, history, tags and cancel.
//!
//! The response types here are the API's contract and the source of the OpenAPI document. Each
//! is built from the library type by destructuring every field, so a field added to the library
//! fails the build here until the API (and so the document) says what to do with it; the JSON is
//! the same as the CLI's `--format json`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use lineq_core::execution::{Execution, ExecutionStatus};
use lineq_orchestrator::tags::TagChange;
use lineq_orchestrator::{SubmitRequest, Submitted};
use lineq_read::history::{HistoryEntry, HistoryKind};
use lineq_read::query::{
    ExecutionFilter, Page, parse_metadata_filter, parse_tag_filter, parse_time,
};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::schemas;

/// The state of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Submitted; its steps are queued or waiting.
    Pending,
    /// At least one step has finished and others remain.
    Running,
    /// Every step completed.
    Completed,
    /// A step failed for good.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl From<ExecutionStatus> for Status {
    fn from(s: ExecutionStatus) -> Self {
        match s {
            ExecutionStatus::Pending => Self::Pending,
            ExecutionStatus::Running => Self::Running,
            ExecutionStatus::Completed => Self::Completed,
            ExecutionStatus::Failed => Self::Failed,
            ExecutionStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// An execution: one submitted task or workflow run.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ExecutionView {
    /// Its id (UUIDv7).
    pub execution_id: Uuid,
    /// The workflow (or, for a task, the handler) it runs.
    pub workflow_name: String,
    /// The workflow version.
    pub workflow_version: i32,
    /// The namespace its steps run in by default.
    pub namespace: String,
    /// Its state.
    pub status: Status,
    /// Its input.
    pub input: Value,
    /// Its output, once completed.
    pub output: Option<Value>,
    /// Its error, once failed.
    pub error: Option<Value>,
    /// Its correlation id.
    pub correlation_id: Uuid,
    /// The correlation id of its parent, for a child.
    pub parent_correlation_id: Option<Uuid>,
    /// Its parent, for a child.
    pub parent_execution_id: Option<Uuid>,
    /// The root of its tree (itself for a root).
    pub root_execution_id: Uuid,
    /// The event that spawned it, for a child.
    pub parent_event_id: Option<Uuid>,
    /// The step that spawned it, for a child.
    pub parent_step: Option<String>,
    /// Labels: string keys to string values.
    #[schema(value_type = BTreeMap<String, String>)]
    pub tags: Value,
    /// Business attributes: a JSON object.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// The idempotency key it was submitted with.
    pub idempotency_key: Option<String>,
    /// Priority (higher first).
    pub priority: i32,
    /// Bumped on every change; send it back as `If-Match` to change tags safely.
    pub version: i64,
    /// `task` (one handler) or `workflow`.
    pub kind: String,
    /// The step that spawned it, for a child.
    pub parent_step_id: Option<Uuid>,
    /// Whether the spawning step waits for it.
    pub parent_waits: bool,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<Execution> for ExecutionView {
    fn from(e: Execution) -> Self {
        // No `..`: a new library field must be decided on here.
        let Execution {
            execution_id,
            workflow_name,
            workflow_version,
            namespace,
            status,
            input,
            output,
            error,
            correlation_id,
            parent_correlation_id,
            parent_execution_id,
            root_execution_id,
            parent_event_id,
            parent_step,
            tags,
            metadata,
            idempotency_key,
            priority,
            version,
            kind,
            parent_step_id,
            parent_waits,
            created_at,
            updated_at,
            finished_at,
        } = e;
        Self {
            execution_id,
            workflow_name,
            workflow_version,
            namespace,
            status: status.into(),
            input,
            output,
            error,
            correlation_id,
            parent_correlation_id,
            parent_execution_id,
            root_execution_id,
            parent_event_id,
            parent_step,
            tags,
            metadata,
            idempotency_key,
            priority,
            version,
            kind,
            parent_step_id,
            parent_waits,
            created_at,
            updated_at,
            finished_at,
        }
    }
}

/// One page of executions.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ExecutionPage {
    /// The executions, oldest first (`created_at`, then `execution_id`).
    pub items: Vec<ExecutionView>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl From<Page<Execution>> for ExecutionPage {
    fn from(p: Page<Execution>) -> Self {
        let Page { items, next_cursor } = p;
        Self {
            items: items.into_iter().map(Into::into).collect(),
            next_cursor,
        }
    }
}

/// The result of a submit.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SubmittedView {
    /// The execution (the first one, for a repeated idempotency key).
    pub execution: ExecutionView,
    /// False when an execution with the same idempotency key already existed.
    pub created: bool,
}

/// What to run.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// A registered workflow (`NAME` for its latest version, `NAME@VERSION`), or else a handler
    /// to run as a one-step execution. `handler` is accepted as another name for it.
    #[serde(alias = "handler")]
    #[schema(
        example = "echo",
        pattern = r"^[A-Za-z0-9_.:-]{1,128}(@[1-9][0-9]{0,8})?$"
    )]
    pub target: String,
    /// The handler's input (default `null`): any JSON value of at most 1 MiB serialized.
    #[serde(default)]
    #[schema(schema_with = schemas::json_value)]
    pub input: Value,
    /// The namespace whose workers run it (default `default`); it must exist (422 otherwise).
    #[schema(schema_with = namespace_schema)]
    pub namespace: Option<String>,
    /// The correlation id; a UUIDv7 is generated when absent.
    pub correlation_id: Option<Uuid>,
    /// Submitting again with the same key returns the first execution.
    #[schema(schema_with = idempotency_key_schema)]
    pub idempotency_key: Option<String>,
    /// Time limit for each attempt, in milliseconds.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 999_999_999_999_999_999_u64)]
    pub timeout_ms: Option<u64>,
    /// Labels: at most 20; keys 1–64 of `a-z 0-9 - _` (not starting `lineq_` or `_`), values
    /// at most 256 characters without newlines.
    #[serde(default)]
    #[schema(schema_with = schemas::submit_tags)]
    pub tags: BTreeMap<String, String>,
    /// A JSON object of at most 64 KiB and 50 top-level keys (none starting `_lineq_`).
    #[schema(schema_with = schemas::metadata)]
    pub metadata: Option<Value>,
    /// An explicit parent execution (it must exist); the new execution joins its tree.
    pub parent_execution_id: Option<Uuid>,
    /// Priority (higher first; default 0): within a namespace, ready steps of higher priority
    /// are claimed first.
    #[serde(default, deserialize_with = "whole_number")]
    pub priority: Option<i32>,
    /// Start its first steps no earlier than this time (RFC 3339, at most 365 days ahead; not
    /// with `delay_ms`).
    pub run_at: Option<DateTime<Utc>>,
    /// Start its first steps after this many milliseconds (at most 365 days; not with
    /// `run_at`).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 31_536_000_000_u64)]
    pub delay_ms: Option<u64>,
    /// At most `limit` steps with `key` run at once, fleet-wide (docs/flow-control.md).
    pub concurrency: Option<ConcurrencyBody>,
    /// At most `limit` step starts with `key` per second or minute, fleet-wide.
    pub rate_limit: Option<RateLimitBody>,
}

/// A concurrency limit: at most `limit` steps with `key` run at once.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyBody {
    /// Literal, or a path into the execution: `tags.NAME`, `metadata.PATH`, `input.PATH`.
    #[schema(min_length = 1, max_length = 200, example = "tags.customer")]
    pub key: String,
    /// Steps with the key running at once.
    #[schema(minimum = 1, maximum = 100_000)]
    pub limit: u32,
}

/// A rate limit: at most `limit` step starts with `key` per window.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    /// Literal, or a path into the execution: `tags.NAME`, `metadata.PATH`, `input.PATH`; the
    /// same key as `concurrency` when both are given.
    #[schema(min_length = 1, max_length = 200, example = "api")]
    pub key: String,
    /// Starts per window.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub limit: u32,
    /// The window (default `second`).
    #[serde(default)]
    pub per: RatePerBody,
}

/// A rate limit's window.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RatePerBody {
    /// Windows of one second.
    #[default]
    Second,
    /// Windows of one minute.
    Minute,
}

/// An optional integer that JSON may spell as `1210` or `1210.0`: JSON Schema's `integer` is
/// any number without a fractional part, and the document promises that.
pub(super) fn whole_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    use serde::de::Error as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let out_of_range = || D::Error::custom(format!("{n} is out of range"));
    if let Some(i) = n.as_i64() {
        return T::try_from(i).map(Some).map_err(|_| out_of_range());
    }
    if let Some(u) = n.as_u64() {
        return T::try_from(u).map(Some).map_err(|_| out_of_range());
    }
    match n.as_f64() {
        // A whole float within i64 converts exactly (2^63 itself is out: `<`).
        #[allow(clippy::cast_precision_loss)]
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
            #[allow(clippy::cast_possible_truncation)] // whole and within i64, checked above
            let i = f as i64;
            T::try_from(i).map(Some).map_err(|_| out_of_range())
        }
        _ => Err(D::Error::custom(format!("{n} is not a whole number"))),
    }
}

fn namespace_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    schemas::optional_pattern(
        schemas::NAMESPACE,
        "The namespace whose workers run it (default `default`): 1 to 32 of `a-z 0-9 _`, starting with a letter; it must exist (422 otherwise).",
    )
}

fn idempotency_key_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(schemas::NO_CONTROL))
        .min_length(Some(1))
        .max_length(Some(lineq_core::validation::MAX_IDEMPOTENCY_KEY_LEN))
        .description(Some(
            "Submitting again with the same key returns the first execution: 1 to 255 characters, no control characters.",
        ))
        .into()
}

/// A change of tags: at least one key to set or remove, no key both set and removed (422).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagPatch {
    /// Tags to add or overwrite.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Tag keys to remove (absent keys are ignored).
    #[serde(default)]
    pub remove: Vec<String>,
    /// Why, recorded in the `tags_changed` event (at most 256 characters).
    pub cause: Option<String>,
}

impl ToSchema for TagPatch {}

/// Written by hand: the derive cannot say that one of `set` and `remove` is not empty.
impl utoipa::PartialSchema for TagPatch {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        tag_patch_schema()
    }
}

fn tag_patch_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
    let fields = || {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("set", schemas::set_tags())
            .property("remove", schemas::remove_keys())
            .property(
                "cause",
                schemas::optional_text(
                    lineq_orchestrator::tags::MAX_CAUSE_LEN,
                    "Why, recorded in the `tags_changed` event (at most 256 characters).",
                ),
            )
            .additional_properties(Some(
                utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
            ))
    };
    AnyOfBuilder::new()
        .item(
            fields()
                .property("set", schemas::set_tags().min_properties(Some(1)))
                .required("set"),
        )
        .item(
            fields()
                .property("remove", schemas::remove_keys().min_items(Some(1)))
                .required("remove"),
        )
        .description(Some(
            "A change of tags: at least one key to set or remove; a key both set and removed is refused (422).",
        ))
        .into()
}

/// Why a cancel was asked for.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Recorded in the `execution_cancelled` events (at most 256 characters, no control
    /// characters).
    #[schema(schema_with = reason_schema)]
    pub reason: Option<String>,
}

fn reason_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    schemas::optional_text(
        lineq_orchestrator::cancel::MAX_REASON_LEN,
        "Recorded in the `execution_cancelled` events (at most 256 characters, no control characters).",
    )
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CancelView {
    /// The execution asked for.
    pub execution_id: Uuid,
    /// Executions cancelled (it and its unfinished descendants).
    pub executions: usize,
    /// Steps cancelled.
    pub steps: usize,
    /// Queued step messages deleted before any worker took them.
    pub messages_deleted: usize,
    /// The ids of the cancelled executions, parents first.
    pub cancelled: Vec<Uuid>,
}

impl From<lineq_orchestrator::cancel::CancelReport> for CancelView {
    fn from(r: lineq_orchestrator::cancel::CancelReport) -> Self {
        let lineq_orchestrator::cancel::CancelReport {
            execution_id,
            executions,
            steps,
            messages_deleted,
            cancelled,
        } = r;
        Self {
            execution_id,
            executions,
            steps,
            messages_deleted,
            cancelled,
        }
    }
}

/// What a history entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKindView {
    /// The execution's status changed.
    Status,
    /// A step's status changed.
    Step,
    /// The tags changed.
    Tags,
}

/// One change in an execution's life, read from its events.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct HistoryEntryView {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What changed.
    pub kind: HistoryKindView,
    /// The event it was read from.
    pub event_id: Uuid,
    /// That event's type.
    pub event_type: String,
    /// The execution's status from here on (status entries).
    pub status: Option<String>,
    /// The step concerned (step entries).
    pub step: Option<String>,
    /// The step's status from here on (step entries).
    pub step_status: Option<String>,
    /// The attempt concerned.
    pub attempt: Option<i32>,
    /// The execution's version after the change (tag entries).
    pub version: Option<i64>,
    /// The tags before (tag entries).
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub tags_before: Option<Value>,
    /// The tags after (tag entries).
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub tags_after: Option<Value>,
    /// Why it happened.
    pub cause: String,
}

impl From<HistoryEntry> for HistoryEntryView {
    fn from(h: HistoryEntry) -> Self {
        let HistoryEntry {
            at,
            kind,
            event_id,
            event_type,
            status,
            step,
            step_status,
            attempt,
            version,
            tags_before,
            tags_after,
            cause,
        } = h;
        Self {
            at,
            kind: match kind {
                HistoryKind::Status => HistoryKindView::Status,
                HistoryKind::Step => HistoryKindView::Step,
                HistoryKind::Tags => HistoryKindView::Tags,
            },
            event_id,
            event_type,
            status,
            step,
            step_status,
            attempt,
            version,
            tags_before,
            tags_after,
            cause,
        }
    }
}

/// The filters of `GET /v1/executions`, combined with AND. Repeatable parameters are given once
/// per value (`?tag=customer=acme&tag=region=us-west`).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by hand from the raw query (repeated keys); here for the document
pub struct ListParams {
    /// A tag `KEY=VALUE` the execution must have (repeatable, at most 20; one value per key,
    /// a key given twice is 422).
    #[param(example = "customer=acme", schema_with = tag_filters)]
    tag: Option<Vec<String>>,
    /// A tag key the execution must have, with any value (repeatable, at most 20).
    #[param(schema_with = has_tag_filters)]
    has_tag: Option<Vec<String>>,
    /// A JSON object the metadata must contain (`@>`), at most 64 KiB.
    #[param(example = json!({"order": {"id": "12345"}}), schema_with = metadata_filter)]
    metadata: Option<String>,
    /// A status the execution may be in (repeatable: any of them).
    status: Option<Vec<Status>>,
    /// The workflow (or handler) name: 1 to 128 characters, no control characters.
    #[param(pattern = r"^[^\u0000-\u001f\u007f-\u009f]{1,128}$")]
    workflow: Option<String>,
    /// The parent execution.
    parent: Option<Uuid>,
    /// The root execution.
    root: Option<Uuid>,
    /// The correlation id.
    correlation_id: Option<Uuid>,
    /// Created at or after (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Created before (RFC 3339); before `since` is 422.
    until: Option<DateTime<Utc>>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,18}_[0-9a-fA-F]{32}$")]
    cursor: Option<String>,
}

fn tag_filters() -> utoipa::openapi::schema::ArrayBuilder {
    schemas::repeated(schemas::TAG_FILTER)
}

fn has_tag_filters() -> utoipa::openapi::schema::ArrayBuilder {
    schemas::repeated(schemas::FILTER_TAG_KEY)
}

/// The metadata filter is JSON text in a query parameter: declared as such (`content`) in
/// [`crate::rest::openapi`]; here its type.
fn metadata_filter() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String)
}

/// Reads the filter from a raw query string, each parameter named as in [`ListParams`].
pub fn filter_from_query(query: &str) -> Result<ExecutionFilter, ApiError> {
    let mut f = ExecutionFilter::new();
    let uuid = |field: &str, v: &str| {
        Uuid::try_parse(v)
            .map_err(|e| ApiError::invalid(field, format!("{v:?} is not a UUID: {e}")))
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "tag" => {
                let (key, value) = parse_tag_filter(&v)?;
                if f.tags.insert(key.clone(), value).is_some() {
                    return Err(ApiError::unprocessable(
                        "tag",
                        format!("tag {key:?} is given twice; an execution has one value per key"),
                    ));
                }
            }
            "has_tag" => f.has_tags.push(v.into_owned()),
            "metadata" => f.metadata = Some(parse_metadata_filter(&v)?),
            "status" => f.statuses.push(v.parse::<ExecutionStatus>()?),
            "workflow" => f.workflow = Some(v.into_owned()),
            "parent" => f.parent_execution_id = Some(uuid("parent", &v)?),
            "root" => f.root_execution_id = Some(uuid("root", &v)?),
            "correlation_id" => f.correlation_id = Some(uuid("correlation_id", &v)?),
            "since" => f.since = Some(parse_time("since", &v)?),
            "until" => f.until = Some(parse_time("until", &v)?),
            "limit" => {
                f.limit = Some(v.parse().map_err(|_| {
                    ApiError::invalid("limit", format!("{v:?} is not a page size from 1 to 1000"))
                })?)
            }
            "cursor" => {
                // Exactly the document's pattern: a `next_cursor` is never before 1970.
                let (micros, id) = v.split_once('_').unwrap_or_default();
                if micros.is_empty()
                    || micros.len() > 18
                    || !micros.bytes().all(|b| b.is_ascii_digit())
                    || id.len() != 32
                    || !id.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(ApiError::invalid(
                        "cursor",
                        format!(
                            "{:?} is not a cursor from a previous page",
                            v.chars().take(80).collect::<String>()
                        ),
                    ));
                }
                f.cursor = Some(v.into_owned());
            }
            other => {
                return Err(ApiError::invalid(
                    "query",
                    format!(
                        "unknown parameter {:?}; filters are tag, has_tag, metadata, status, workflow, parent, root, correlation_id, since, until, limit, cursor",
                        other.chars().take(64).collect::<String>()
                    ),
                ));
            }
        }
    }
    if let (Some(since), Some(until)) = (f.since, f.until) {
        if since > until {
            return Err(ApiError::unprocessable(
                "until",
                format!("until ({until}) is before since ({since})"),
            ));
        }
    }
    f.validate()?;
    Ok(f)
}

fn parse_execution_id(s: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(s)
        .map_err(|e| ApiError::invalid("execution_id", format!("{s:?} is not a UUID: {e}")))
}

pub(super) fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t).map_err(rejected_body)
}

/// A body the JSON extractor refused: 413 when it is over the size limit, else 400.
fn rejected_body(e: JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large("body", e.body_text())
    } else {
        ApiError::invalid("body", e.body_text())
    }
}

/// The strong ETag of an execution version.
pub fn etag(version: i64) -> String {
    format!("\"v{version}\"")
}

/// Reads `If-Match`: `*`, a version (`3`) or the ETag of one (`"v3"`, `"3"`, `W/"v3"`), exactly
/// the forms of [`schemas::IF_MATCH`]. `*` and no header mean "whatever the current version is".
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::invalid(
            "If-Match",
            "expected *, the execution's version (3) or its ETag (\"v3\")",
        )
    };
    let s = raw.to_str().map_err(|_| bad())?.trim();
    if s == "*" {
        return Ok(None);
    }
    let quoted = s.strip_prefix("W/").unwrap_or(s);
    let digits = match quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
        Some(inner) => inner.strip_prefix('v').unwrap_or(inner),
        // Bare digits only without W/ and quotes.
        None if quoted.len() == s.len() => s,
        None => return Err(bad()),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits.parse::<i64>().map(Some).map_err(|_| bad())
}

fn with_etag(status: StatusCode, e: Execution) -> Response {
    let tag = etag(e.version);
    let mut r = (status, Json(ExecutionView::from(e))).into_response();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// Submits an execution.
#[utoipa::path(
    post,
    path = "/v1/executions",
    tag = "executions",
    request_body = SubmitBody,
    responses(
        (status = 201, description = "Created", body = SubmittedView),
        (status = 200, description = "The idempotency key was used before: the first execution", body = SubmittedView),
        (status = 400, description = "Invalid input (against this document, or over a size limit it states); nothing was written", body = ErrorBody),
        (status = 413, description = "The body is over 2 MiB", body = ErrorBody),
        (status = 422, description = "The namespace, the parent execution or the workflow version does not exist, or the flow control cannot apply (run_at with delay_ms, a run_at over 365 days ahead, a key path that names nothing in this execution, two different flow keys); nothing was written", body = ErrorBody),
    )
)]
#[expect(
    clippy::too_many_lines,
    reason = "the request's fields checked in their order, each with the error that names it"
)]
pub async fn submit(
    State(state): State<AppState>,
    b: Result<Json<SubmitBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let mut req = SubmitRequest::new(b.target).input(b.input);
    if let Some(p) = b.priority {
        req.priority = p;
    }
    if let Some(ns) = b.namespace {
        req = req.namespace(ns);
    }
    if let Some(c) = b.correlation_id {
        req = req.correlation_id(c);
    }
    if let Some(k) = b.idempotency_key {
        req = req.idempotency_key(k);
    }
    if let Some(t) = b.timeout_ms {
        req = req.timeout_ms(t);
    }
    req.tags = b.tags;
    if let Some(m) = b.metadata {
        req = req.metadata(m);
    }
    if let Some(p) = b.parent_execution_id {
        req = req.parent(p);
    }
    if let Some(t) = b.run_at {
        req = req.run_at(t);
    }
    if let Some(ms) = b.delay_ms {
        req = req.delay(std::time::Duration::from_millis(ms));
    }
    if let Some(c) = b.concurrency {
        req = req.concurrency(lineq_orchestrator::flow::ConcurrencyLimit::new(
            c.key, c.limit,
        ));
    }
    if let Some(r) = b.rate_limit {
        let per = match r.per {
            RatePerBody::Second => lineq_orchestrator::flow::RatePer::Second,
            RatePerBody::Minute => lineq_orchestrator::flow::RatePer::Minute,
        };
        req = req.rate_limit(lineq_orchestrator::flow::RateLimit::new(
            r.key, r.limit, per,
        ));
    }
    let Submitted { execution, created } = state.client.submit(req).await.map_err(|e| match e {
        // A parent that does not exist: the request follows the document but names nothing.
        lineq_core::Error::Validation(v) if v.field == "parent" => {
            ApiError::unprocessable("parent_execution_id", v.to_string())
        }
        // Flow control the document cannot state: run_at with delay_ms, a run_at over 365
        // days ahead, a key path this execution has nothing at, two different keys.
        lineq_core::Error::Validation(v)
            if v.field == "run_at"
                || v.field.starts_with("concurrency")
                || v.field.starts_with("rate_limit") =>
        {
            let field = v.field.to_string();
            ApiError::unprocessable(&field, v.to_string())
        }
        // `NAME@VERSION` of a workflow (or version) that is not registered.
        e @ lineq_core::Error::NotFound {
            what: "workflow", ..
        } => ApiError::unprocessable("target", e.to_string()),
        e => e.into(),
    })?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/v1/executions/{}", execution.execution_id);
    let tag = etag(execution.version);
    let mut r = (
        status,
        Json(SubmittedView {
            execution: execution.into(),
            created,
        }),
    )
        .into_response();
    for (name, value) in [(header::LOCATION, location), (header::ETAG, tag)] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, v);
        }
    }
    Ok(r)
}

/// Lists executions matching every filter given, oldest first, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/executions",
    tag = "executions",
    params(ListParams),
    responses(
        (status = 200, description = "One page", body = ExecutionPage),
        (status = 400, description = "A filter is invalid", body = ErrorBody),
        (status = 422, description = "The filter contradicts itself: a tag key given twice, or `until` before `since`", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<ExecutionPage>, ApiError> {
    let filter = filter_from_query(query.as_deref().unwrap_or(""))?;
    let page = lineq_read::query::list_executions(state.reads.pool(), &filter).await?;
    Ok(Json(page.into()))
}

/// Reads one execution. Its `ETag` is its version, for `If-Match`.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}",
    tag = "executions",
    params(("id" = Uuid, Path, description = "Execution id")),
    responses(
        (status = 200, description = "The execution", body = ExecutionView,
            headers(("ETag" = String, description = "\"v<version>\""))),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such execution", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_execution_id(&id)?;
    // Not on the replica yet (just submitted): the primary answers, never a false 404.
    let (execution, _) = state
        .reads
        .or_primary(|pool| async move { lineq_core::execution::get_execution(&pool, id).await })
        .await?;
    Ok(with_etag(StatusCode::OK, execution))
}

/// The execution's status, step and tag changes, oldest first, each with its time and cause.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}/history",
    tag = "executions",
    params(("id" = Uuid, Path, description = "Execution id")),
    responses(
        (status = 200, description = "The history", body = Vec<HistoryEntryView>),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such execution", body = ErrorBody),
    )
)]
pub async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<HistoryEntryView>>, ApiError> {
    let id = parse_execution_id(&id)?;
    let (h, _) = state
        .reads
        .or_primary(|pool| async move { lineq_read::history::history(&pool, id).await })
        .await?;
    Ok(Json(h.into_iter().map(Into::into).collect()))
}

async fn change_tags(
    state: &AppState,
    headers: &HeaderMap,
    id: Uuid,
    change: TagChange,
    cause: &str,
) -> Result<Response, ApiError> {
    let expected = if_match(headers)?;
    // The change on its own first (400): a tag rule it breaks after that is one that depends
    // on the execution's tags (more than 20 together), which the document cannot state (422).
    change.validate()?;
    let updated = state
        .client
        .update_tags(id, &change, expected, cause)
        .await
        .map_err(|e| match e {
            lineq_core::Error::Validation(v) if v.field == "tags" => {
                ApiError::unprocessable("tags", v.to_string())
            }
            e => ApiError::from_lineq(e, expected.is_some()),
        })?;
    Ok(with_etag(StatusCode::OK, updated))
}

/// Changes tags while the execution is pending. With `If-Match` (a version or ETag) the change
/// applies only to that version (412 otherwise); without it, to the current tags.
#[utoipa::path(
    patch,
    path = "/v1/executions/{id}/tags",
    tag = "executions",
    params(
        ("id" = Uuid, Path, description = "Execution id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^(\*|[0-9]{1,18}|(W/)?"v?[0-9]{1,18}")$"#, description = "The version read: `3` or `\"v3\"` (`*`: any)"),
    ),
    request_body = TagPatch,
    responses(
        (status = 200, description = "The execution after the change", body = ExecutionView,
            headers(("ETag" = String, description = "\"v<version>\""))),
        (status = 400, description = "Invalid tags; nothing changed", body = ErrorBody),
        (status = 404, description = "No such execution", body = ErrorBody),
        (status = 409, description = "Changed concurrently", body = ErrorBody),
        (status = 412, description = "If-Match names a stale version", body = ErrorBody),
        (status = 413, description = "The body is over 2 MiB", body = ErrorBody),
        (status = 422, description = "The execution is no longer pending, a key is both set and removed, or the execution would have more than 20 tags", body = ErrorBody),
    )
)]
pub async fn patch_tags(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Json<TagPatch>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = parse_execution_id(&id)?;
    let b = body(b)?;
    let cause = b
        .cause
        .unwrap_or_else(|| "PATCH /v1/executions/{id}/tags".into());
    if let Some(k) = b.remove.iter().find(|k| b.set.contains_key(*k)) {
        return Err(ApiError::unprocessable(
            "tags",
            format!("tag {k:?} is both set and removed"),
        ));
    }
    let change = TagChange {
        set: b.set,
        remove: b.remove,
    };
    change_tags(&state, &headers, id, change, &cause).await
}

/// Removes one tag while the execution is pending (`If-Match` as for PATCH).
#[utoipa::path(
    delete,
    path = "/v1/executions/{id}/tags/{key}",
    tag = "executions",
    params(
        ("id" = Uuid, Path, description = "Execution id"),
        ("key" = String, Path, pattern = r"^(?!lineq_|_)[a-z0-9_-]{1,64}$", description = "Tag key"),
        ("If-Match" = Option<String>, Header, pattern = r#"^(\*|[0-9]{1,18}|(W/)?"v?[0-9]{1,18}")$"#, description = "The version read: `3` or `\"v3\"` (`*`: any)"),
    ),
    responses(
        (status = 200, description = "The execution after the change", body = ExecutionView,
            headers(("ETag" = String, description = "\"v<version>\""))),
        (status = 400, description = "Invalid key or If-Match", body = ErrorBody),
        (status = 404, description = "No such execution", body = ErrorBody),
        (status = 409, description = "Changed concurrently", body = ErrorBody),
        (status = 412, description = "If-Match names a stale version", body = ErrorBody),
        (status = 422, description = "The execution is no longer pending", body = ErrorBody),
    )
)]
pub async fn delete_tag(
    State(state): State<AppState>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_execution_id(&id)?;
    let change = TagChange {
        set: Default::default(),
        remove: vec![key],
    };
    change_tags(
        &state,
        &headers,
        id,
        change,
        "DELETE /v1/executions/{id}/tags/{key}",
    )
    .await
}

/// Cancels an unfinished execution and its descendants.
#[utoipa::path(
    post,
    path = "/v1/executions/{id}/cancel",
    tag = "executions",
    params(("id" = Uuid, Path, description = "Execution id")),
    request_body(content = Option<CancelBody>, description = "Optional reason"),
    responses(
        (status = 200, description = "What was cancelled", body = CancelView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such execution", body = ErrorBody),
        (status = 422, description = "The execution has already finished", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Result<Json<Option<CancelBody>>, JsonRejection>,
) -> Result<Json<CancelView>, ApiError> {
    let id = parse_execution_id(&id)?;
    let b = match b {
        // The body is optional: without a Content-Type there is none, as before.
        Err(JsonRejection::MissingJsonContentType(_))
            if !headers.contains_key(header::CONTENT_TYPE) =>
        {
            None
        }
        // `null` is no body too.
        other => body(other)?,
    };
    let reason = b
        .and_then(|b| b.reason)
        .unwrap_or_else(|| "cancelled through the REST API".into());
    let report = lineq_orchestrator::cancel::cancel(state.client.pool(), id, &reason).await?;
    Ok(Json(report.into()))
}

/// The server's health: whether it can reach PostgreSQL.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: String,
}

/// Liveness and database reachability (the primary's, and the read replica's when one is
/// configured). Open without a token.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Serving", body = Health),
        (status = 503, description = "PostgreSQL is unreachable", body = Health),
    )
)]
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let mut reached = sqlx::query("SELECT 1").execute(state.client.pool()).await;
    if reached.is_ok() && state.reads.is_replica() {
        reached = sqlx::query("SELECT 1").execute(state.reads.pool()).await;
    }
    match reached {
        Ok(_) => (
            StatusCode::OK,
            Json(Health {
                status: "ok".into(),
            }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "health check cannot reach PostgreSQL");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "unavailable".into(),
                }),
            )
        }
    }
}

/// An execution's whole lineage tree (the root's tree, children nested), exactly as
/// `lineq lineage ID --format json` prints it.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}/lineage",
    tag = "executions",
    params(("id" = Uuid, Path, description = "Execution id")),
    responses(
        (status = 200, description = "The lineage tree", body = Object),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such execution", body = ErrorBody),
    )
)]
pub async fn lineage(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_execution_id(&id)?;
    let (tree, _) = state
        .reads
        .or_primary(|pool| async move { lineq_read::lineage::execution_lineage(&pool, id).await })
        .await?;
    let json = serde_json::to_value(&tree).map_err(lineq_core::Error::from)?;
    Ok(Json(json))
}
