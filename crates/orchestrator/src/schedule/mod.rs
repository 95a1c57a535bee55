//! Schedules: executions started at the occurrences of a cron expression (docs/schedules.md).
//!
//! A schedule lives in `lineq.schedules` and is managed by the SQL functions
//! `lineq.schedule_create|pause|resume|delete|list|get`; this module checks the cron
//! expression and time zone first (the SQL side checks what it can without a cron parser) and
//! computes the first occurrence. Every orchestrator runs [`fire::ScheduleLoop`], which fires
//! each due occurrence exactly once across the fleet.

pub mod cron;
pub mod fire;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::error::Result;
use lineq_core::tags::{Tags, check_tags};
use lineq_core::validation::{
    MAX_INPUT_BYTES, Namespace, ValidationError, check_json_size, check_name, check_no_nul,
};

pub use cron::{CronSchedule, FirePlan, Missed};

/// The channel `lineq.schedule_create` and `lineq.schedule_resume` notify, so the schedule
/// loops look again at once.
pub const WAKE_CHANNEL: &str = "lineq_schedules";

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Schedule {
    /// Its id (UUIDv7).
    pub schedule_id: Uuid,
    /// Its namespace; its name is unique there.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone the expression is evaluated in.
    pub timezone: String,
    /// What each occurrence submits: a registered workflow (`NAME`, `NAME@VERSION`) or a
    /// handler.
    pub target: String,
    /// The input of each execution.
    pub input: Value,
    /// The tags of each execution.
    pub tags: Value,
    /// `skip` or `catch-up`: what happens to occurrences missed while no orchestrator ran.
    pub missed: String,
    /// With `catch-up`: the most missed occurrences fired.
    pub catch_up_max: Option<i32>,
    /// Paused schedules fire nothing.
    pub paused: bool,
    /// The occurrence that fires next (`null` until an orchestrator has computed it).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The occurrence fired last.
    pub last_occurrence: Option<DateTime<Utc>>,
    /// When it fired last.
    pub last_fired_at: Option<DateTime<Utc>>,
    /// The execution it started last.
    pub last_execution_id: Option<Uuid>,
    /// Why the last occurrence could not be fired, if it could not.
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

impl Schedule {
    /// The expression, parsed (a row written by another tool may hold one lineq cannot use).
    pub fn expression(&self) -> std::result::Result<CronSchedule, ValidationError> {
        CronSchedule::parse(&self.cron, &self.timezone)
    }

    /// The missed-occurrence policy.
    pub fn missed_policy(&self) -> std::result::Result<Missed, ValidationError> {
        Missed::from_columns(&self.missed, self.catch_up_max)
    }

    /// The next `n` occurrences it will fire (none while paused): from `next_fire_at`, or from
    /// now when none is computed yet.
    pub fn upcoming(&self, n: usize) -> Vec<DateTime<Utc>> {
        if self.paused {
            return Vec::new();
        }
        let Ok(expr) = self.expression() else {
            return Vec::new();
        };
        match self.next_fire_at {
            Some(t) => expr.upcoming(t, n),
            None => expr.upcoming(Utc::now(), n),
        }
    }
}

/// A schedule to create. Build with [`NewSchedule::new`] and the setters.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    /// Its name: 1 to 128 letters, digits, `_ . : -`.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The time zone (default `UTC`).
    pub timezone: String,
    /// What each occurrence submits.
    pub target: String,
    /// The input of each execution.
    pub input: Value,
    /// Its namespace (default `default`).
    pub namespace: String,
    /// The tags of each execution.
    pub tags: Tags,
    /// The missed-occurrence policy (default skip).
    pub missed: Missed,
}

impl NewSchedule {
    /// A schedule `name` that submits `target` at every occurrence of `cron` (UTC, input
    /// `null`, namespace `default`, no tags, missed occurrences skipped).
    pub fn new(
        name: impl Into<String>,
        cron: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            cron: cron.into(),
            timezone: "UTC".into(),
            target: target.into(),
            input: Value::Null,
            namespace: Namespace::default_namespace().to_string(),
            tags: Tags::new(),
            missed: Missed::Skip,
        }
    }

    /// Sets the time zone.
    pub fn timezone(mut self, tz: impl Into<String>) -> Self {
        self.timezone = tz.into();
        self
    }

    /// Sets the input.
    pub fn input(mut self, input: Value) -> Self {
        self.input = input;
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Sets the missed-occurrence policy.
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    /// The checks that need no database, in the order the SQL function makes them.
    fn check(&self) -> Result<CronSchedule> {
        check_schedule_name(&self.name)?;
        Namespace::new(&self.namespace)?;
        let expr = CronSchedule::parse(&self.cron, &self.timezone)?;
        Missed::from_columns(self.missed.as_str(), self.missed.catch_up_max())?;
        let name = self
            .target
            .split_once('@')
            .map_or(self.target.as_str(), |(n, _)| n);
        check_name("target", name)?;
        check_tags(&self.tags)?;
        check_json_size("input", &self.input, MAX_INPUT_BYTES)?;
        check_no_nul("input", &self.input)?;
        Ok(expr)
    }
}

/// A schedule name: 1 to 128 letters, digits, `_ . : -` (it appears in URLs and commands).
pub fn check_schedule_name(name: &str) -> std::result::Result<(), ValidationError> {
    let ok = (1..=128).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "name",
            format!(
                "a schedule name is 1 to 128 characters of letters, digits, '_', '.', ':' and '-' (got {name:?})"
            ),
        ))
    }
}

pub(crate) const COLUMNS: &str = "schedule_id, namespace, name, cron, timezone, target, input, tags, missed, \
    catch_up_max, paused, next_fire_at, last_occurrence, last_fired_at, last_execution_id, \
    last_error, fired, skipped, created_at, updated_at";

/// Creates a schedule (`lineq.schedule_create`); its first occurrence is the first after now.
/// Bad input names the field and writes nothing; a taken name is refused (field `name`).
pub async fn create(pool: &PgPool, s: &NewSchedule) -> Result<Schedule> {
    let expr = s.check()?;
    let first = expr.next_after(Utc::now());
    let tags = serde_json::to_value(&s.tags)?;
    let row = sqlx::query_as::<_, Schedule>(&format!(
        "SELECT {COLUMNS} FROM lineq.schedule_create(p_name => $1, p_cron => $2, p_target => $3, \
         p_input => $4, p_namespace => $5, p_timezone => $6, p_tags => $7, p_missed => $8, \
         p_catch_up_max => $9, p_next_fire_at => $10)"
    ))
    .bind(&s.name)
    .bind(&s.cron)
    .bind(&s.target)
    .bind(&s.input)
    .bind(&s.namespace)
    .bind(&s.timezone)
    .bind(tags)
    .bind(s.missed.as_str())
    .bind(s.missed.catch_up_max())
    .bind(first)
    .fetch_one(pool)
    .await?;
    Ok(row)
}

/// The schedules of `namespace` (every namespace when `None`), by namespace and name.
pub async fn list(pool: &PgPool, namespace: Option<&str>) -> Result<Vec<Schedule>> {
    if let Some(ns) = namespace {
        Namespace::new(ns)?;
    }
    Ok(
        sqlx::query_as::<_, Schedule>(&format!("SELECT {COLUMNS} FROM lineq.schedule_list($1)"))
            .bind(namespace)
            .fetch_all(pool)
            .await?,
    )
}

/// One schedule; [`lineq_core::Error::NotFound`] when there is none.
pub async fn get(pool: &PgPool, namespace: &str, name: &str) -> Result<Schedule> {
    check_key(namespace, name)?;
    Ok(
        sqlx::query_as::<_, Schedule>(&format!("SELECT {COLUMNS} FROM lineq.schedule_get($1, $2)"))
            .bind(name)
            .bind(namespace)
            .fetch_one(pool)
            .await?,
    )
}

/// Pauses a schedule: nothing fires until it is resumed (a fire in progress finishes first).
pub async fn pause(pool: &PgPool, namespace: &str, name: &str) -> Result<Schedule> {
    check_key(namespace, name)?;
    Ok(sqlx::query_as::<_, Schedule>(&format!(
        "SELECT {COLUMNS} FROM lineq.schedule_pause($1, $2)"
    ))
    .bind(name)
    .bind(namespace)
    .fetch_one(pool)
    .await?)
}

/// Resumes a paused schedule from now on: what fell while it was paused does not fire.
pub async fn resume(pool: &PgPool, namespace: &str, name: &str) -> Result<Schedule> {
    check_key(namespace, name)?;
    // The first occurrence after now, when this process can evaluate the expression; else the
    // orchestrator computes it.
    let current = get(pool, namespace, name).await?;
    let next = current
        .expression()
        .ok()
        .and_then(|e| e.next_after(Utc::now()));
    Ok(sqlx::query_as::<_, Schedule>(&format!(
        "SELECT {COLUMNS} FROM lineq.schedule_resume($1, $2, $3)"
    ))
    .bind(name)
    .bind(namespace)
    .bind(next)
    .fetch_one(pool)
    .await?)
}

/// Deletes a schedule; returns it as it was. The executions it started stay.
pub async fn delete(pool: &PgPool, namespace: &str, name: &str) -> Result<Schedule> {
    check_key(namespace, name)?;
    Ok(sqlx::query_as::<_, Schedule>(&format!(
        "SELECT {COLUMNS} FROM lineq.schedule_delete($1, $2)"
    ))
    .bind(name)
    .bind(namespace)
    .fetch_one(pool)
    .await?)
}

/// One fired occurrence.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Fire {
    /// The occurrence.
    pub occurrence: DateTime<Utc>,
    /// Its `schedule_fired` event.
    pub event_id: Uuid,
    /// The execution it started.
    pub execution_id: Uuid,
    /// When it was fired.
    pub fired_at: DateTime<Utc>,
}

/// The latest `limit` fires of a schedule, newest first.
pub async fn recent_fires(pool: &PgPool, schedule_id: Uuid, limit: i64) -> Result<Vec<Fire>> {
    Ok(sqlx::query_as::<_, Fire>(
        "SELECT occurrence, event_id, execution_id, fired_at FROM lineq.schedule_fires
         WHERE schedule_id = $1 ORDER BY occurrence DESC LIMIT $2",
    )
    .bind(schedule_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

fn check_key(namespace: &str, name: &str) -> Result<()> {
    check_schedule_name(name)?;
    Namespace::new(namespace)?;
    Ok(())
}
