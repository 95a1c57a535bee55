//! The dead-letter queue: messages that could not be processed (malformed, or poison: delivered
//! too often without an outcome), kept with the reason. They can be listed, read, and replayed
//! to the queue they came from.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use lineq_core::error::{Error, Result};
use lineq_core::event::{EventType, Lineage, NewEvent, insert_events};
use lineq_core::ids::node_name;
use lineq_core::queue;
use lineq_core::validation::QueueName;

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
    /// The original body; when it cannot be read as JSON (see `message_unparsed`), the start
    /// of its text as a string.
    pub message: Value,
    /// Why the original body is shown as text instead of JSON, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_unparsed: Option<String>,
}

/// How much of a body that cannot be read as JSON is shown.
const UNPARSED_SHOWN_BYTES: usize = 4096;

/// A dead letter's columns: its fields picked out by PostgreSQL and the original body as text,
/// so that a body serde_json refuses (nested past its recursion limit: anyone who can write
/// to a queue can make one) is still listed and shown, never failing the whole read.
const COLUMNS: &str = "msg_id, enqueued_at, message->>'source_queue', message->>'source_msg_id',
    message->>'read_ct', message->>'reason', message->>'event_id', (message->'message')::text";

type DeadLetterRow = (
    i64,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl DeadLetter {
    fn from_row(row: DeadLetterRow) -> Self {
        let (msg_id, at, source_queue, source_msg_id, read_ct, reason, event_id, original) = row;
        let (message, message_unparsed) = match original.as_deref().map(serde_json::from_str) {
            None => (Value::Null, None),
            Some(Ok(v)) => (v, None),
            Some(Err(e)) => {
                let text = original.as_deref().unwrap_or_default();
                let mut end = text.len().min(UNPARSED_SHOWN_BYTES);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                (
                    Value::String(text[..end].to_string()),
                    Some(format!(
                        "not readable as JSON ({e}); the first {end} of {} bytes shown as text",
                        text.len()
                    )),
                )
            }
        };
        Self {
            msg_id,
            dead_lettered_at: at,
            source_queue: source_queue.unwrap_or_default(),
            source_msg_id: source_msg_id.and_then(|s| s.parse().ok()),
            read_ct: read_ct.and_then(|s| s.parse().ok()),
            reason: reason.unwrap_or_default(),
            event_id: event_id.and_then(|s| Uuid::parse_str(&s).ok()),
            message,
            message_unparsed,
        }
    }
}

/// The oldest `limit` dead letters.
pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<DeadLetter>> {
    let rows: Vec<DeadLetterRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM pgmq.q_lineq_dlq ORDER BY msg_id LIMIT $1"
    ))
    .bind(limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(DeadLetter::from_row).collect())
}

/// One dead letter.
pub async fn show(pool: &PgPool, msg_id: i64) -> Result<DeadLetter> {
    let row: Option<DeadLetterRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM pgmq.q_lineq_dlq WHERE msg_id = $1"
    ))
    .bind(msg_id)
    .fetch_optional(pool)
    .await?;
    row.map(DeadLetter::from_row)
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
    let mut tx = pool.begin().await?;
    let row: Option<DeadLetterRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM pgmq.q_lineq_dlq WHERE msg_id = $1 FOR UPDATE"
    ))
    .bind(msg_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(Error::NotFound {
            what: "dead letter",
            id: msg_id.to_string(),
        });
    };
    let letter = DeadLetter::from_row(row);
    if let Some(why) = &letter.message_unparsed {
        return Err(Error::InvalidState(format!(
            "dead letter {msg_id} cannot be replayed: its body is {why}"
        )));
    }
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
        }
    }
    tx.commit().await?;
    // A span event of the step's span, exported when the step ends (spans.rs).
    Ok(Replayed {
        dead_letter: msg_id,
        queue: q.to_string(),
        msg_id: new_id,
    })
}
