//! `/v1/schedules`: cron schedules that start executions (docs/schedules.md), as
//! `lineq schedule` manages them; the JSON is the CLI's `--format json`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use lineq_core::Error;
use lineq_core::tags::check_tags;
use lineq_core::validation::{
    MAX_INPUT_BYTES, Namespace, check_json_size, check_name, check_no_nul,
};
use lineq_orchestrator::schedule::{self, Fire, Missed, NewSchedule, Schedule};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::executions::body;
use super::schemas;

/// A schedule name: 1 to 128 letters, digits and `_ . : -`.
pub const SCHEDULE_NAME: &str = r"^[A-Za-z0-9_.:-]{1,128}$";

/// What to do with occurrences missed while no orchestrator ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum MissedPolicy {
    /// Fire the latest missed occurrence once.
    #[serde(rename = "skip")]
    Skip,
    /// Fire the latest `catch_up_max` missed occurrences, oldest first.
    #[serde(rename = "catch-up")]
    CatchUp,
}

/// A schedule.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ScheduleView {
    /// Its id (UUIDv7).
    pub schedule_id: Uuid,
    /// Its namespace (its name is unique there; its executions run there).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone the expression is read in.
    pub timezone: String,
    /// What each occurrence submits: a registered workflow or a handler.
    pub target: String,
    /// The input of each execution.
    #[schema(schema_with = schemas::json_value)]
    pub input: Value,
    /// The tags of each execution.
    #[schema(value_type = BTreeMap<String, String>)]
    pub tags: Value,
    /// `skip` or `catch-up`.
    pub missed: MissedPolicy,
    /// With `catch-up`: the most missed occurrences fired.
    pub catch_up_max: Option<i32>,
    /// A paused schedule fires nothing.
    pub paused: bool,
    /// The occurrence that fires next (`null` until an orchestrator has computed it).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The occurrence fired last.
    pub last_occurrence: Option<DateTime<Utc>>,
    /// When it fired last.
    pub last_fired_at: Option<DateTime<Utc>>,
    /// The execution it started last.
    pub last_execution_id: Option<Uuid>,
    /// Why the last occurrence could not fire, if it could not.
    pub last_error: Option<String>,
    /// Occurrences fired.
    pub fired: i64,
    /// Occurrences passed over (missed-occurrence policy, or a fire that failed).
    pub skipped: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<Schedule> for ScheduleView {
    fn from(s: Schedule) -> Self {
        // No `..`: a new library field must be decided on here.
        let Schedule {
            schedule_id,
            namespace,
            name,
            cron,
            timezone,
            target,
            input,
            tags,
            missed,
            catch_up_max,
            paused,
            next_fire_at,
            last_occurrence,
            last_fired_at,
            last_execution_id,
            last_error,
            fired,
            skipped,
            created_at,
            updated_at,
        } = s;
        Self {
            schedule_id,
            namespace,
            name,
            cron,
            timezone,
            target,
            input,
            tags,
            missed: if missed == "catch-up" {
                MissedPolicy::CatchUp
            } else {
                MissedPolicy::Skip
            },
            catch_up_max,
            paused,
            next_fire_at,
            last_occurrence,
            last_fired_at,
            last_execution_id,
            last_error,
            fired,
            skipped,
            created_at,
            updated_at,
        }
    }
}

/// One fired occurrence.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FireView {
    /// The occurrence.
    pub occurrence: DateTime<Utc>,
    /// Its `schedule_fired` event (the root of the execution's lineage).
    pub event_id: Uuid,
    /// The execution it started.
    pub execution_id: Uuid,
    /// When it fired.
    pub fired_at: DateTime<Utc>,
}

impl From<Fire> for FireView {
    fn from(f: Fire) -> Self {
        let Fire {
            occurrence,
            event_id,
            execution_id,
            fired_at,
        } = f;
        Self {
            occurrence,
            event_id,
            execution_id,
            fired_at,
        }
    }
}

/// A schedule with its next fire times and latest fires.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ScheduleDetailView {
    /// The schedule.
    #[serde(flatten)]
    pub schedule: ScheduleView,
    /// Its next 5 fire times (none while paused).
    pub upcoming: Vec<DateTime<Utc>>,
    /// Its latest 5 fires, newest first.
    pub recent_fires: Vec<FireView>,
}

/// A schedule to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// Its name, unique in its namespace (409 when taken).
    #[schema(example = "nightly-report", pattern = r"^[A-Za-z0-9_.:-]{1,128}$")]
    pub name: String,
    /// The cron expression: 5 fields (minute hour day-of-month month day-of-week), 6 with
    /// seconds first, or `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`; at most 256
    /// characters. One that is not valid, or never fires, is answered 422.
    #[schema(example = "0 2 * * *")]
    pub cron: String,
    /// The IANA time zone the expression is read in (default `UTC`); an unknown one is
    /// answered 422.
    #[schema(example = "Europe/Paris")]
    pub timezone: Option<String>,
    /// What each occurrence submits, as `POST /v1/executions` takes it: a registered workflow
    /// (`NAME`, `NAME@VERSION`; 422 when not registered) or a handler.
    #[schema(
        example = "echo",
        pattern = r"^[A-Za-z0-9_.:-]{1,128}(@[1-9][0-9]{0,8})?$"
    )]
    pub target: String,
    /// The input of each execution (default `null`): any JSON value of at most 1 MiB
    /// serialized.
    #[serde(default)]
    #[schema(schema_with = schemas::json_value)]
    pub input: Value,
    /// The namespace of the schedule and its executions (default `default`); it must exist
    /// (422 otherwise).
    #[schema(schema_with = namespace_schema)]
    pub namespace: Option<String>,
    /// The tags of each execution.
    #[serde(default)]
    #[schema(schema_with = schemas::submit_tags)]
    pub tags: BTreeMap<String, String>,
    /// Missed occurrences (default `skip`); `catch-up` needs `catch_up_max` (422 otherwise).
    pub missed: Option<MissedPolicy>,
    /// With `catch-up`: the most missed occurrences to fire (with `skip`: 422).
    #[serde(default, deserialize_with = "super::executions::whole_number")]
    #[schema(minimum = 1, maximum = 1000)]
    pub catch_up_max: Option<i32>,
}

fn namespace_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    schemas::optional_pattern(
        schemas::NAMESPACE,
        "The namespace (default `default`): 1 to 32 of `a-z 0-9 _`, starting with a letter; it must exist (422 otherwise).",
    )
}

/// Reads the one query parameter these routes take, `namespace`; `default` when absent.
fn namespace_param(query: Option<&str>, all: bool) -> Result<Option<String>, ApiError> {
    let mut ns = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "namespace" => {
                Namespace::new(&v).map_err(ApiError::from)?;
                ns = Some(v.into_owned());
            }
            other => {
                return Err(ApiError::invalid(
                    "query",
                    format!(
                        "unknown parameter {:?}; the only one is namespace",
                        other.chars().take(64).collect::<String>()
                    ),
                ));
            }
        }
    }
    Ok(if all {
        ns
    } else {
        Some(ns.unwrap_or_else(|| "default".into()))
    })
}

fn name_param(name: &str) -> Result<(), ApiError> {
    schedule::check_schedule_name(name).map_err(ApiError::from)
}

/// Schedules, by namespace and name.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    operation_id = "list_schedules",
    tag = "schedules",
    params(("namespace" = Option<String>, Query, pattern = r"^[a-z][a-z0-9_]{0,31}$", description = "Only this namespace's schedules (default: every namespace)")),
    responses(
        (status = 200, description = "The schedules", body = Vec<ScheduleView>),
        (status = 400, description = "A bad namespace or an unknown parameter", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<ScheduleView>>, ApiError> {
    let ns = namespace_param(query.as_deref(), true)?;
    let all = schedule::list(state.reads.pool(), ns.as_deref()).await?;
    Ok(Json(all.into_iter().map(Into::into).collect()))
}

/// Creates a schedule: at every occurrence of its cron expression an orchestrator starts an
/// execution of its target, each occurrence exactly once. Nothing is written on bad input.
#[utoipa::path(
    post,
    path = "/v1/schedules",
    operation_id = "create_schedule",
    tag = "schedules",
    request_body = ScheduleBody,
    responses(
        (status = 201, description = "Created", body = ScheduleView),
        (status = 400, description = "Invalid input (against this document, or over a size limit it states); nothing was written", body = ErrorBody),
        (status = 409, description = "A schedule of that name exists in the namespace; nothing was written", body = ErrorBody),
        (status = 413, description = "The body is over 2 MiB", body = ErrorBody),
        (status = 422, description = "The cron expression is not valid or never fires, the time zone is unknown, missed and catch_up_max disagree, or the namespace or workflow does not exist; nothing was written", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    b: Result<Json<ScheduleBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    // What the document states is checked here (400); what it cannot, below (409, 422).
    name_param(&b.name)?;
    let ns = b.namespace.unwrap_or_else(|| "default".into());
    Namespace::new(&ns).map_err(ApiError::from)?;
    let target_name = b
        .target
        .split_once('@')
        .map_or(b.target.as_str(), |(n, _)| n);
    check_name("target", target_name).map_err(ApiError::from)?;
    check_tags(&b.tags).map_err(ApiError::from)?;
    check_json_size("input", &b.input, MAX_INPUT_BYTES).map_err(ApiError::from)?;
    check_no_nul("input", &b.input).map_err(ApiError::from)?;
    if let Some(n) = b.catch_up_max {
        if !(1..=1000).contains(&n) {
            return Err(ApiError::invalid(
                "catch_up_max",
                format!("catch_up_max: it is 1 to 1000 (got {n})"),
            ));
        }
    }
    let missed = match (b.missed.unwrap_or(MissedPolicy::Skip), b.catch_up_max) {
        (MissedPolicy::Skip, None) => Missed::Skip,
        (MissedPolicy::CatchUp, Some(n)) => Missed::CatchUp { max: n as u32 },
        (MissedPolicy::Skip, Some(n)) => {
            return Err(ApiError::unprocessable(
                "catch_up_max",
                format!("catch_up_max: it applies to missed = catch-up only (got {n} with skip)"),
            ));
        }
        (MissedPolicy::CatchUp, None) => {
            return Err(ApiError::unprocessable(
                "catch_up_max",
                "catch_up_max: missed = catch-up needs the most missed occurrences to fire: 1 to 1000",
            ));
        }
    };
    let mut new = NewSchedule::new(b.name, b.cron, b.target)
        .input(b.input)
        .namespace(ns)
        .missed(missed);
    if let Some(tz) = b.timezone {
        new = new.timezone(tz);
    }
    new.tags = b.tags;
    let s = schedule::create(state.client.pool(), &new)
        .await
        .map_err(|e| match e {
            // The name follows the document, so it is taken.
            Error::Validation(v) if v.field == "name" => {
                ApiError::new(StatusCode::CONFLICT, "conflict", v.to_string()).with_field("name")
            }
            Error::Validation(v)
                if matches!(
                    v.field.as_ref(),
                    "cron" | "timezone" | "target" | "missed" | "catch_up_max"
                ) =>
            {
                let field = v.field.to_string();
                ApiError::unprocessable(&field, v.to_string())
            }
            e => e.into(),
        })?;
    Ok((StatusCode::CREATED, Json(ScheduleView::from(s))).into_response())
}

/// A schedule, its next fire times and its latest fires.
#[utoipa::path(
    get,
    path = "/v1/schedules/{name}",
    operation_id = "get_schedule",
    tag = "schedules",
    params(
        ("name" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$", description = "Schedule name"),
        ("namespace" = Option<String>, Query, pattern = r"^[a-z][a-z0-9_]{0,31}$", description = "Its namespace (default `default`)"),
    ),
    responses(
        (status = 200, description = "The schedule", body = ScheduleDetailView),
        (status = 400, description = "A bad name or namespace, or an unknown parameter", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ScheduleDetailView>, ApiError> {
    name_param(&name)?;
    let ns = namespace_param(query.as_deref(), false)?.unwrap_or_default();
    let (s, pool) = state
        .reads
        .or_primary(|pool| {
            let (ns, name) = (ns.clone(), name.clone());
            async move { schedule::get(&pool, &ns, &name).await }
        })
        .await?;
    let fires = schedule::recent_fires(&pool, s.schedule_id, 5).await?;
    Ok(Json(ScheduleDetailView {
        upcoming: s.upcoming(5),
        recent_fires: fires.into_iter().map(Into::into).collect(),
        schedule: s.into(),
    }))
}

/// Deletes a schedule; answers it as it was. The executions it started stay.
#[utoipa::path(
    delete,
    path = "/v1/schedules/{name}",
    operation_id = "delete_schedule",
    tag = "schedules",
    params(
        ("name" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$", description = "Schedule name"),
        ("namespace" = Option<String>, Query, pattern = r"^[a-z][a-z0-9_]{0,31}$", description = "Its namespace (default `default`)"),
    ),
    responses(
        (status = 200, description = "Deleted", body = ScheduleView),
        (status = 400, description = "A bad name or namespace, or an unknown parameter", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ScheduleView>, ApiError> {
    name_param(&name)?;
    let ns = namespace_param(query.as_deref(), false)?.unwrap_or_default();
    Ok(Json(
        schedule::delete(state.client.pool(), &ns, &name)
            .await?
            .into(),
    ))
}

/// Pauses a schedule: nothing fires until it is resumed.
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/pause",
    operation_id = "pause_schedule",
    tag = "schedules",
    params(
        ("name" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$", description = "Schedule name"),
        ("namespace" = Option<String>, Query, pattern = r"^[a-z][a-z0-9_]{0,31}$", description = "Its namespace (default `default`)"),
    ),
    responses(
        (status = 200, description = "Paused (or already paused)", body = ScheduleView),
        (status = 400, description = "A bad name or namespace, or an unknown parameter", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    )
)]
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ScheduleView>, ApiError> {
    name_param(&name)?;
    let ns = namespace_param(query.as_deref(), false)?.unwrap_or_default();
    Ok(Json(
        schedule::pause(state.client.pool(), &ns, &name)
            .await?
            .into(),
    ))
}

/// Resumes a paused schedule from now on: occurrences that fell while it was paused do not
/// fire.
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/resume",
    operation_id = "resume_schedule",
    tag = "schedules",
    params(
        ("name" = String, Path, pattern = r"^[A-Za-z0-9_.:-]{1,128}$", description = "Schedule name"),
        ("namespace" = Option<String>, Query, pattern = r"^[a-z][a-z0-9_]{0,31}$", description = "Its namespace (default `default`)"),
    ),
    responses(
        (status = 200, description = "Resumed (or already running)", body = ScheduleView),
        (status = 400, description = "A bad name or namespace, or an unknown parameter", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ScheduleView>, ApiError> {
    name_param(&name)?;
    let ns = namespace_param(query.as_deref(), false)?.unwrap_or_default();
    Ok(Json(
        schedule::resume(state.client.pool(), &ns, &name)
            .await?
            .into(),
    ))
}
