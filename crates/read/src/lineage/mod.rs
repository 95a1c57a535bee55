//! Lineage: asking the event log why something ran and what it caused, and proving the log is
//! whole.
//!
//! The questions are answered by SQL functions in schema `lineq` (see
//! `migrations/20261123000004_lineage.sql` and `docs/lineage.md`); this module calls them with
//! bound parameters and turns their rows into Rust values:
//!
//! - [`ancestors`], [`descendants`], [`execution_tree`], [`lineage_events`], [`correlation`] and
//!   [`messages`] are the functions, one to one;
//! - [`resolve`] tells whether an id names an execution, an event or a correlation;
//! - [`tree()`] / [`lineage()`] / [`execution_lineage`] build the nested [`LineageTree`] that
//!   `lineq lineage` prints and `GET /v1/executions/{id}/lineage` returns;
//! - [`check()`] proves a tree is whole, or names what is wrong with it;
//! - [`render`] draws a tree as Graphviz DOT or Mermaid;
//! - [`bench_ancestors`] times the deepest-ancestors query on a synthetic chain.

pub mod check;
pub mod render;
pub mod tree;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::error::{Error, Result};
use lineq_core::event::EventRow;

pub use check::{CheckReport, Fault, check, check_root};
pub use tree::{EventNode, ExecutionNode, LineageTree};

/// What an id given to `lineq lineage` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// An execution: its tree is the execution and everything below it.
    Execution {
        /// The execution.
        id: Uuid,
    },
    /// An event: its tree is the chain from the root down to it, and everything below it.
    Event {
        /// The event.
        id: Uuid,
        /// The execution that wrote it.
        execution_id: Uuid,
        /// The root of its tree.
        root_execution_id: Uuid,
    },
    /// A correlation id: its tree is every execution carrying it, with their descendants.
    Correlation {
        /// The correlation id.
        id: Uuid,
    },
}

impl Target {
    /// The id that was resolved.
    pub fn id(&self) -> Uuid {
        match *self {
            Target::Execution { id } | Target::Event { id, .. } | Target::Correlation { id } => id,
        }
    }
}

/// Finds what `id` names: an execution, else an event, else a correlation id (in that order;
/// all three are UUIDs that lineq generates, so a clash would mean a client chose a correlation
/// id equal to an existing execution or event id).
pub async fn resolve(pool: &PgPool, id: Uuid) -> Result<Target> {
    let found: Option<(String, Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
        r#"
        SELECT kind, execution_id, root_execution_id
        FROM (
            SELECT 1 AS rank, 'execution' AS kind, NULL::uuid AS execution_id,
                   NULL::uuid AS root_execution_id
            FROM lineq.executions WHERE execution_id = $1
            UNION ALL
            SELECT 2, 'event', e.execution_id, e.root_execution_id
            FROM lineq.events e WHERE e.event_id = $1
            UNION ALL
            (SELECT 3, 'correlation', NULL::uuid, NULL::uuid
             FROM lineq.executions WHERE correlation_id = $1 LIMIT 1)
        ) found
        ORDER BY rank
        LIMIT 1
        "#,
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    match found {
        Some((kind, _, _)) if kind == "execution" => Ok(Target::Execution { id }),
        Some((kind, Some(execution_id), Some(root_execution_id))) if kind == "event" => {
            Ok(Target::Event {
                id,
                execution_id,
                root_execution_id,
            })
        }
        Some((kind, _, _)) if kind == "correlation" => Ok(Target::Correlation { id }),
        _ => Err(Error::NotFound {
            what: "execution, event or correlation id",
            id: id.to_string(),
        }),
    }
}

/// One row of `lineq.event_ancestors`: an event and how far above the start it is.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Ancestor {
    /// 0 for the event asked about, 1 for its parent, ...
    pub distance: i32,
    /// The event.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub event: EventRow,
}

/// One row of `lineq.event_descendants`: an event below the start, with its place.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Descendant {
    /// 0 for the event asked about, 1 for its children, ...
    pub depth: i32,
    /// Event ids from the start down to this event.
    pub path: Vec<Uuid>,
    /// The event.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub event: EventRow,
}

/// One row of `lineq.lineage`: an event of an execution tree, with its place.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LineageEvent {
    /// How far below the execution asked about the event's execution is.
    pub execution_depth: i32,
    /// The event's depth below its top (the execution's first event); `None` on a corrupted
    /// loop, which no top reaches.
    pub depth: Option<i32>,
    /// Event ids from the top down to this event; `None` on a loop.
    pub path: Option<Vec<Uuid>>,
    /// The workflow of the event's execution.
    pub workflow_name: String,
    /// The event.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub event: EventRow,
}

/// One row of `lineq.execution_tree` or `lineq.correlation`: an execution with its place.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TreeExecution {
    /// 0 for the execution asked about (or the topmost of a correlation), 1 for its children...
    pub depth: i32,
    /// Execution ids from the top down to this execution.
    pub path: Vec<Uuid>,
    /// The execution.
    pub execution_id: Uuid,
    /// Its parent.
    pub parent_execution_id: Option<Uuid>,
    /// The root of its tree.
    pub root_execution_id: Uuid,
    /// Its correlation id.
    pub correlation_id: Uuid,
    /// Its parent's correlation id.
    pub parent_correlation_id: Option<Uuid>,
    /// The event that spawned it.
    pub parent_event_id: Option<Uuid>,
    /// The step that spawned it.
    pub parent_step: Option<String>,
    /// Its workflow.
    pub workflow_name: String,
    /// Its workflow version.
    pub workflow_version: i32,
    /// Its namespace.
    pub namespace: String,
    /// Its status (text, so statuses added later still read).
    pub status: String,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One row of `lineq.lineage_messages`: a queue message of a tree.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LineageMessage {
    /// The PGMQ queue.
    pub queue_name: String,
    /// `queued` or `archived`.
    pub state: String,
    /// `step`, `result` or `dead_letter`.
    pub kind: String,
    /// PGMQ's id in that queue.
    pub msg_id: i64,
    /// When it was sent.
    pub enqueued_at: DateTime<Utc>,
    /// When it was archived.
    pub archived_at: Option<DateTime<Utc>>,
    /// The body's `execution_id`, when it is a UUID.
    pub execution_id: Option<Uuid>,
    /// `meta.parent_event_id`, when it is a UUID.
    pub parent_event_id: Option<Uuid>,
    /// The `meta` object as sent.
    pub meta: Option<Value>,
    /// The whole body (for a dead letter, the original message).
    pub message: Option<Value>,
    /// Why it was dead-lettered.
    pub reason: Option<String>,
}

// The recursive functions are called as one-off statements (`persistent(false)`), planned with
// the actual argument and table size each time. A prepared statement's cached generic plan made
// while `lineq.events` was small can walk the events table with a sequential scan per level,
// which turns a millisecond walk into seconds on a deep tree; a millisecond or two of planning
// is the better price.
const EVENT_COLUMNS: &str = "event_id, parent_event_id, execution_id, step_id, step_name, \
    parent_execution_id, root_execution_id, correlation_id, event_type, node_name, worker_id, \
    attempt, trace_id, span_id, payload, created_at";

/// `lineq.event_ancestors(event_id)`: the chain from the event up to its root, nearest first.
pub async fn ancestors(pool: &PgPool, event_id: Uuid) -> Result<Vec<Ancestor>> {
    Ok(sqlx::query_as::<_, Ancestor>(&format!(
        "SELECT distance, {EVENT_COLUMNS} FROM lineq.event_ancestors($1) ORDER BY distance"
    ))
    .bind(event_id)
    .persistent(false)
    .fetch_all(pool)
    .await?)
}

/// `lineq.event_descendants(event_id)`: the event and everything it caused, depth first.
pub async fn descendants(pool: &PgPool, event_id: Uuid) -> Result<Vec<Descendant>> {
    Ok(sqlx::query_as::<_, Descendant>(&format!(
        "SELECT depth, path, {EVENT_COLUMNS} FROM lineq.event_descendants($1) ORDER BY path"
    ))
    .bind(event_id)
    .persistent(false)
    .fetch_all(pool)
    .await?)
}

/// `lineq.execution_tree(execution_id)`: the execution and its descendant executions.
pub async fn execution_tree(pool: &PgPool, execution_id: Uuid) -> Result<Vec<TreeExecution>> {
    Ok(
        sqlx::query_as::<_, TreeExecution>("SELECT * FROM lineq.execution_tree($1) ORDER BY path")
            .bind(execution_id)
            .fetch_all(pool)
            .await?,
    )
}

/// `lineq.lineage(execution_id)`: every event of the execution and its descendants.
pub async fn lineage_events(pool: &PgPool, execution_id: Uuid) -> Result<Vec<LineageEvent>> {
    Ok(sqlx::query_as::<_, LineageEvent>(&format!(
        "SELECT execution_depth, depth, path, workflow_name, {EVENT_COLUMNS}
         FROM lineq.lineage($1) ORDER BY path NULLS LAST, created_at, event_id"
    ))
    .bind(execution_id)
    .persistent(false)
    .fetch_all(pool)
    .await?)
}

/// `lineq.correlation(correlation_id)`: every execution under the correlation id.
pub async fn correlation(pool: &PgPool, correlation_id: Uuid) -> Result<Vec<TreeExecution>> {
    Ok(
        sqlx::query_as::<_, TreeExecution>("SELECT * FROM lineq.correlation($1) ORDER BY path")
            .bind(correlation_id)
            .fetch_all(pool)
            .await?,
    )
}

/// `lineq.lineage_messages(root_execution_id)`: the queue messages of a root's tree.
pub async fn messages(pool: &PgPool, root_execution_id: Uuid) -> Result<Vec<LineageMessage>> {
    Ok(sqlx::query_as::<_, LineageMessage>(
        "SELECT * FROM lineq.lineage_messages($1) ORDER BY enqueued_at, queue_name, msg_id",
    )
    .bind(root_execution_id)
    .fetch_all(pool)
    .await?)
}

/// Executions by id, in the shape of [`TreeExecution`] (depth 0, path of one).
async fn executions_by_id(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<TreeExecution>> {
    Ok(sqlx::query_as::<_, TreeExecution>(
        r#"
        SELECT 0 AS depth, ARRAY[x.execution_id] AS path, x.execution_id, x.parent_execution_id,
               x.root_execution_id, x.correlation_id, x.parent_correlation_id, x.parent_event_id,
               x.parent_step, x.workflow_name, x.workflow_version, x.namespace, x.status,
               x.created_at, x.finished_at
        FROM lineq.executions x
        WHERE x.execution_id = ANY($1)
        ORDER BY x.created_at, x.execution_id
        "#,
    )
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// Events of the given executions, oldest first.
async fn events_of(pool: &PgPool, execution_ids: &[Uuid]) -> Result<Vec<EventRow>> {
    Ok(sqlx::query_as::<_, EventRow>(
        r#"
        SELECT e.event_id, e.parent_event_id, e.execution_id, e.step_id, s.name AS step_name,
               e.parent_execution_id, e.root_execution_id, e.correlation_id, e.event_type,
               e.node_name, e.worker_id, e.attempt, e.trace_id, e.span_id, e.payload, e.created_at
        FROM lineq.events e
        LEFT JOIN lineq.steps s ON s.step_id = e.step_id
        WHERE e.execution_id = ANY($1)
        ORDER BY e.created_at, e.event_id
        "#,
    )
    .bind(execution_ids)
    .fetch_all(pool)
    .await?)
}

/// The nested tree of `target` (see [`Target`] for what each kind covers).
pub async fn tree(pool: &PgPool, target: Target) -> Result<LineageTree> {
    let (executions, events) = match target {
        Target::Execution { id } => {
            let executions = execution_tree(pool, id).await?;
            if executions.is_empty() {
                return Err(Error::NotFound {
                    what: "execution",
                    id: id.to_string(),
                });
            }
            let events = lineage_events(pool, id)
                .await?
                .into_iter()
                .map(|r| r.event)
                .collect();
            (executions, events)
        }
        Target::Correlation { id } => {
            let executions = correlation(pool, id).await?;
            let ids: Vec<Uuid> = executions.iter().map(|x| x.execution_id).collect();
            let events = events_of(pool, &ids).await?;
            (executions, events)
        }
        Target::Event { id, .. } => {
            // Up to the root, then everything below: why it happened and what it caused.
            let mut events: Vec<EventRow> = ancestors(pool, id)
                .await?
                .into_iter()
                .skip(1)
                .map(|a| a.event)
                .collect();
            events.extend(descendants(pool, id).await?.into_iter().map(|d| d.event));
            let mut ids: Vec<Uuid> = events.iter().map(|e| e.execution_id).collect();
            ids.sort();
            ids.dedup();
            (executions_by_id(pool, &ids).await?, events)
        }
    };
    Ok(tree::build(target, executions, events))
}

/// The tree of whatever `id` names (see [`resolve`]). What `lineq lineage ID` prints.
pub async fn lineage(pool: &PgPool, id: Uuid) -> Result<LineageTree> {
    let target = resolve(pool, id).await?;
    tree(pool, target).await
}

/// The tree of one execution and its descendants: the JSON body of
/// `GET /v1/executions/{id}/lineage` (and of `lineq lineage ID --format json` for an execution
/// id). [`Error::NotFound`] when there is no such execution.
pub async fn execution_lineage(pool: &PgPool, execution_id: Uuid) -> Result<LineageTree> {
    tree(pool, Target::Execution { id: execution_id }).await
}

/// What [`bench_ancestors`] measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AncestorsBench {
    /// Events in the synthetic chain.
    pub depth: u32,
    /// Rows the query returned (the whole chain).
    pub rows: u64,
    /// The first run.
    pub first: Duration,
    /// The fastest of the runs.
    pub best: Duration,
    /// The median of the runs.
    pub median: Duration,
    /// How many runs were timed.
    pub runs: u32,
}

/// Times `lineq.event_ancestors` from the deepest event of a synthetic chain of `depth` events
/// (the worst case for the walk: one index lookup per level), `runs` times. The chain is
/// written inside a transaction that is rolled back, so this leaves nothing behind and may run
/// against a live database (it takes no locks beyond the rows it writes).
pub async fn bench_ancestors(pool: &PgPool, depth: u32, runs: u32) -> Result<AncestorsBench> {
    if depth == 0 || runs == 0 {
        return Err(lineq_core::validation::ValidationError::new(
            "depth",
            "depth and runs must be at least 1",
        )
        .into());
    }
    let mut tx = pool.begin().await?;
    let salt = Uuid::now_v7().to_string();
    let execution_id = Uuid::now_v7();
    // md5(salt || i) is a stable id for level i, so each row can name its parent (i - 1) without
    // a lookup; the ids are random-looking like real ones, which keeps the index realistic.
    sqlx::query(
        r#"
        INSERT INTO lineq.events (event_id, parent_event_id, execution_id, root_execution_id,
            correlation_id, event_type, node_name, created_at)
        SELECT md5($1 || i)::uuid,
               CASE WHEN i > 1 THEN md5($1 || (i - 1))::uuid END,
               $2, $2, $2, 'bench_synthetic', 'bench',
               clock_timestamp() + make_interval(secs => i * 0.000001)
        FROM generate_series(1, $3::integer) AS i
        "#,
    )
    .bind(&salt)
    .bind(execution_id)
    .bind(i32::try_from(depth).unwrap_or(i32::MAX))
    .execute(&mut *tx)
    .await?;
    let deepest: Uuid = sqlx::query_scalar("SELECT md5($1 || $2::integer)::uuid")
        .bind(&salt)
        .bind(i32::try_from(depth).unwrap_or(i32::MAX))
        .fetch_one(&mut *tx)
        .await?;
    let mut times = Vec::with_capacity(runs as usize);
    let mut rows = 0u64;
    for _ in 0..runs {
        let t0 = Instant::now();
        // Planned afresh each run (not a cached prepared statement): a generic plan cached by
        // an earlier, shallower run on this connection was made for a smaller table and would
        // measure that plan, not the query. Planning time is part of what is measured.
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM lineq.event_ancestors($1)")
            .bind(deepest)
            .persistent(false)
            .fetch_one(&mut *tx)
            .await?;
        times.push(t0.elapsed());
        rows = u64::try_from(n).unwrap_or(0);
    }
    tx.rollback().await?;
    let first = times[0];
    times.sort();
    Ok(AncestorsBench {
        depth,
        rows,
        first,
        best: times[0],
        median: times[times.len() / 2],
        runs,
    })
}
