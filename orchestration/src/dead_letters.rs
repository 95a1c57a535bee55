//! The dead-letter queue: messages that could not be processed (malformed, or poison: delivered
//! too often without an outcome), kept with the reason. They can be listed, read, and replayed
//! to the queue they came from.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use lineq_shared::error::{Error, Result};
use lineq_shared::event::{EventType, Lineage, NewEvent, insert_events};
use lineq_shared::ids::node_name;
use lineq_shared::queue;
use lineq_shared::telemetry;
use lineq_shared::validation::QueueName;

/// One dead letter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// Its id in the dead-letter queue.
    pub msg_id: i64,
    /// When it was dead-lettered.
    pub dead_lettered_at: DateTime<Utc>,
    /// The queue it came from.
    pub source_queue: String,
    /// Its id there.
    pub source_msg_id: Option<i64>,
    /// How often it had been read there.
    pub read_ct: Option<i64>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The `message_dead_lettered` event, when one could be written.
    pub event_id: Option<Uuid>,
    /// The original body.
    pub message: Value,
}

impl DeadLetter {
    fn from_row(msg_id: i64, at: DateTime<Utc>, body: Option<Value>) -> Self {
        let body = body.unwrap_or(Value::Null);
        Self {
            msg_id,
            dead_lettered_at: at,
            source_queue: body["source_queue"].as_str().unwrap_or("").to_string(),
            source_msg_id: body["source_msg_id"].as_i64(),
            read_ct: body["read_ct"].as_i64(),
            reason: body["reason"].as_str().unwrap_or("").to_string(),
            event_id: body["event_id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok()),
            message: body["message"].clone(),
        }
    }
}

/// The oldest `limit` dead letters.
pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<DeadLetter>> {
    let rows: Vec<(i64, DateTime<Utc>, Option<Value>)> = sqlx::query_as(
        "SELECT msg_id, enqueued_at, message FROM pgmq.q_lineq_dlq ORDER BY msg_id LIMIT $1",
    )
    .bind(limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, at, body)| DeadLetter::from_row(id, at, body))
        .collect())
}

/// One dead letter.
pub async fn show(pool: &PgPool, msg_id: i64) -> Result<DeadLetter> {
    let row: Option<(i64, DateTime<Utc>, Option<Value>)> = sqlx::query_as(
        "SELECT msg_id, enqueued_at, message FROM pgmq.q_lineq_dlq WHERE msg_id = $1",
    )
    .bind(msg_id)
    .fetch_optional(pool)
    .await?;
    row.map(|(id, at, body)| DeadLetter::from_row(id, at, body))
        .ok_or_else(|| Error::NotFound {
            what: "dead letter",
            id: msg_id.to_string(),
        })
}

type EventLineageRow = (
    Uuid,
    Option<Uuid>,
    Uuid,
    Uuid,
    Option<String>,
    Option<Uuid>,
    Option<i32>,
);

/// What a replay did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    /// The dead letter replayed (now archived).
    pub dead_letter: i64,
    /// The queue it went back to.
    pub queue: String,
    /// Its new message id there.
    pub msg_id: i64,
}

/// Sends a dead letter's original body back to its queue and archives the dead letter, in one
/// transaction; writes `message_replayed` under its `message_dead_lettered` event when it has
/// one. A replayed step message runs again under its original lineage.
pub async fn replay(pool: &PgPool, msg_id: i64) -> Result<Replayed> {
    let started = telemetry::start();
    let mut written = Vec::new();
    let mut tx = pool.begin().await?;
    let row: Option<(i64, DateTime<Utc>, Option<Value>)> = sqlx::query_as(
        "SELECT msg_id, enqueued_at, message FROM pgmq.q_lineq_dlq WHERE msg_id = $1 FOR UPDATE",
    )
    .bind(msg_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, at, body)) = row else {
        return Err(Error::NotFound {
            what: "dead letter",
            id: msg_id.to_string(),
        });
    };
    let letter = DeadLetter::from_row(id, at, body);
    let q = QueueName::new(&letter.source_queue).map_err(|e| {
        Error::InvalidState(format!(
            "dead letter {msg_id} has no usable source queue: {e}"
        ))
    })?;
    if !q.as_str().starts_with("lineq_") {
        return Err(Error::InvalidState(format!(
            "dead letter {msg_id} came from {q}, which is not a lineq queue"
        )));
    }
    if letter.message.is_null() {
        return Err(Error::InvalidState(format!(
            "dead letter {msg_id} has no body to replay"
        )));
    }
    let new_id = queue::send(&mut tx, &q, &letter.message, std::time::Duration::ZERO).await?;
    queue::archive(&mut tx, &queue::dead_letter_queue(), &[msg_id]).await?;
    if let Some(event_id) = letter.event_id {
        let lineage: Option<EventLineageRow> = sqlx::query_as(
            "SELECT e.execution_id, e.parent_execution_id, e.root_execution_id, e.correlation_id,
                        e.trace_id, e.step_id, e.attempt
                 FROM lineq.events e WHERE e.event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((exec, parent, root, corr, trace, step, attempt)) = lineage {
            let trace_corr = trace.and_then(|t| Uuid::parse_str(&t).ok()).unwrap_or(corr);
            let l = Lineage {
                execution_id: exec,
                parent_execution_id: parent,
                root_execution_id: root,
                correlation_id: corr,
                trace_correlation_id: trace_corr,
            };
            let mut ev = NewEvent::new(EventType::MessageReplayed, l, Some(event_id), &node_name())
                .payload(json!({ "queue": q.as_str(), "dead_letter": msg_id, "msg_id": new_id }));
            if let (Some(s), Some(a)) = (step, attempt) {
                ev = ev.step(s, a);
            }
            insert_events(&mut tx, std::slice::from_ref(&ev)).await?;
            written.push(ev);
        }
    }
    tx.commit().await?;
    telemetry::export(&written, started);
    Ok(Replayed {
        dead_letter: msg_id,
        queue: q.to_string(),
        msg_id: new_id,
    })
}
