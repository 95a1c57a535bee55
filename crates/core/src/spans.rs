//! Reading back what lineq's spans are made of: stored events, and the events that name the
//! spans a process needs as parents and did not write itself (see [`crate::telemetry`]).
//!
//! Every read here runs after the transaction whose spans it completes has committed, and only
//! while tracing is on. Each looks ids up one index probe at a time (a `LATERAL` per id, as
//! `read_steps` does), so its plan does not depend on the statistics of `lineq.events`.

use std::collections::HashMap;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Result;
use crate::event::{EventType, Lineage, NewEvent};
use crate::trace_context::TraceContext;

/// An event row with when it was written.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    /// Its id.
    pub event_id: Uuid,
    /// Its parent.
    pub parent_event_id: Option<Uuid>,
    /// Its execution.
    pub execution_id: Uuid,
    /// Its step.
    pub step_id: Option<Uuid>,
    /// The execution's parent.
    pub parent_execution_id: Option<Uuid>,
    /// The root execution.
    pub root_execution_id: Uuid,
    /// The execution's correlation id.
    pub correlation_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The machine that wrote it.
    pub node_name: String,
    /// The worker that wrote it.
    pub worker_id: Option<String>,
    /// The attempt it concerns.
    pub attempt: Option<i32>,
    /// Its trace id (hex).
    pub trace_id: Option<String>,
    /// Its span id (hex).
    pub span_id: Option<String>,
    /// Its payload.
    pub payload: Value,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// The columns of [`StoredEvent`], over the alias `e`.
pub const STORED_EVENT_COLUMNS: &str = "e.event_id, e.parent_event_id, e.execution_id, \
    e.step_id, e.parent_execution_id, e.root_execution_id, e.correlation_id, e.event_type, \
    e.node_name, e.worker_id, e.attempt, e.trace_id, e.span_id, e.payload, e.created_at";

impl StoredEvent {
    /// When it was written.
    pub fn at(&self) -> SystemTime {
        SystemTime::from(self.created_at)
    }

    /// The event, with the trace and span ids its row holds; `None` for a type lineq does not
    /// know.
    pub fn event(&self) -> Option<NewEvent> {
        self.clone().into_event()
    }

    /// [`StoredEvent::event`], taking the row apart instead of copying it.
    pub fn into_event(self) -> Option<NewEvent> {
        let event_type = EventType::parse(&self.event_type)?;
        let trace = self.trace_id.filter(|t| !t.is_empty());
        let lineage = Lineage {
            execution_id: self.execution_id,
            parent_execution_id: self.parent_execution_id,
            root_execution_id: self.root_execution_id,
            correlation_id: self.correlation_id,
            trace_correlation_id: trace
                .as_deref()
                .and_then(|t| Uuid::try_parse(t).ok())
                .unwrap_or(self.correlation_id),
        };
        let span = self.span_id.filter(|s| !s.is_empty());
        // The ids a row holds; derived as the writer derived them where it holds none.
        let (trace_id, span_id) = match (trace, span) {
            (Some(t), Some(s)) => (t, s),
            (t, s) => {
                let tc = TraceContext::for_event(lineage.trace_correlation_id, self.event_id);
                (
                    t.unwrap_or_else(|| tc.trace_id_hex()),
                    s.unwrap_or_else(|| tc.span_id_hex()),
                )
            }
        };
        Some(NewEvent {
            event_id: self.event_id,
            parent_event_id: self.parent_event_id,
            event_type,
            lineage,
            step_id: self.step_id,
            node_name: self.node_name,
            worker_id: self.worker_id,
            attempt: self.attempt,
            trace_id,
            span_id,
            payload: self.payload,
        })
    }
}

/// The first `step_enqueued` of each of `steps`: the event that names the step's span.
pub async fn first_enqueued(pool: &PgPool, steps: &[Uuid]) -> Result<HashMap<Uuid, StoredEvent>> {
    if steps.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<StoredEvent> = sqlx::query_as(&format!(
        "SELECT f.* FROM (SELECT DISTINCT unnest($1::uuid[])) AS x(id)
         CROSS JOIN LATERAL (SELECT {STORED_EVENT_COLUMNS} FROM lineq.events e
                             WHERE e.step_id = x.id AND e.event_type = 'step_enqueued'
                             ORDER BY e.created_at, e.event_id LIMIT 1) AS f"
    ))
    .bind(steps)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.step_id?, r)))
        .collect())
}

/// The `execution_started` of each of `executions`: the event that names the execution's span.
pub async fn execution_started(
    pool: &PgPool,
    executions: &[Uuid],
) -> Result<HashMap<Uuid, StoredEvent>> {
    if executions.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<StoredEvent> = sqlx::query_as(&format!(
        "SELECT f.* FROM (SELECT DISTINCT unnest($1::uuid[])) AS x(id)
         CROSS JOIN LATERAL (SELECT {STORED_EVENT_COLUMNS} FROM lineq.events e
                             WHERE e.execution_id = x.id AND e.event_type = 'execution_started'
                             ORDER BY e.created_at, e.event_id LIMIT 1) AS f"
    ))
    .bind(executions)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.execution_id, r)).collect())
}
