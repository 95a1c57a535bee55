//! The queue layer over PGMQ: which queues exist, and sending, reading, extending, archiving and
//! dead-lettering messages inside the caller's transaction.
//!
//! Every send also does `pg_notify(<queue>, <queue>)` in the same transaction (in the same
//! statement), so a listening consumer wakes the moment the message commits; consumers poll as a
//! fallback for notifications missed while disconnected. Each queue is its own channel, so a
//! send wakes only the consumers of that queue.
//!
//! The hot operations (send, read, archive, delete) run PGMQ's own statements on its tables
//! rather than calling its PL/pgSQL functions: each of those builds its statement with `format()`
//! and plans it on every call (0.4–1.2 ms for a one-message call on the benchmark machine),
//! where these are prepared once per connection. The SQL is the functions' SQL; the table name
//! comes from a validated [`QueueName`] (a-z, 0-9 and `_` only), exactly as PGMQ derives it, and
//! `tests/queue.rs` holds them to the installed PGMQ.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, Row};

use crate::event::{EventColumns, INSERT_EVENTS_SQL, NewEvent};

use crate::error::Result;
use crate::validation::{Namespace, QueueName};

/// The channel a queue's consumers `LISTEN` on: the queue's name (the payload is the name too).
///
/// One channel per queue rather than one for all: PostgreSQL signals every backend listening
/// on a channel at each commit that notifies it, so with a shared channel each step message
/// also woke every orchestrator, and each result every worker, right on the critical path.
/// A queue name is at most 47 characters, so it fits PostgreSQL's 63-byte channel names.
pub fn wake_channel(queue: &QueueName) -> &str {
    queue.as_str()
}

/// The one channel every queue shared until each had its own (the payload named the queue).
/// Nothing of this version notifies it, but consumers still listen on it: during a rolling
/// upgrade, processes of the earlier version send there, and their messages should still
/// wake the upgraded consumers at once rather than at their next poll.
pub const LEGACY_WAKE_CHANNEL: &str = "lineq_queue";

/// The step queue of a namespace: `lineq_steps_<namespace>`.
pub fn step_queue(namespace: &Namespace) -> QueueName {
    QueueName::new(&format!("lineq_steps_{}", namespace.as_str()))
        .expect("a valid namespace always makes a valid queue name")
}

/// The queue workers send results to and orchestrators read.
pub fn results_queue() -> QueueName {
    QueueName::new("lineq_results").expect("constant is valid")
}

/// The dead-letter queue.
pub fn dead_letter_queue() -> QueueName {
    QueueName::new("lineq_dlq").expect("constant is valid")
}

/// The largest message a consumer will parse (an input of [`MAX_INPUT_BYTES`] plus the
/// envelope); a larger one is dead-lettered unread.
///
/// [`MAX_INPUT_BYTES`]: crate::validation::MAX_INPUT_BYTES
pub const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// A message as read from a queue. The body is kept as the text PostgreSQL sent: it is parsed
/// message by message, so one that is too large, too deeply nested or not an object is
/// dead-lettered alone instead of failing the whole read (sqlx would decode every row's JSON
/// up front, and one bad row would fail every read forever).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueuedMessage {
    /// PGMQ's message id.
    pub msg_id: i64,
    /// How many times it has been read, this read included.
    pub read_ct: i32,
    /// When it was sent.
    pub enqueued_at: DateTime<Utc>,
    /// When it becomes visible again.
    pub vt: DateTime<Utc>,
    /// The body as JSON text, `None` if the row holds SQL NULL.
    pub body: Option<String>,
}

impl QueuedMessage {
    /// The body parsed, checked against [`MAX_MESSAGE_BYTES`]. The error says why, for the
    /// dead letter.
    pub fn json(&self) -> std::result::Result<Option<Value>, crate::error::Error> {
        let Some(text) = &self.body else {
            return Ok(None);
        };
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(crate::error::Error::MalformedMessage(format!(
                "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                text.len()
            )));
        }
        serde_json::from_str(text)
            .map(Some)
            .map_err(|e| crate::error::Error::MalformedMessage(format!("message body: {e}")))
    }
}

/// Creates `queue` if it does not exist, through `lineq.create_queue` (which validates the
/// name again and makes PGMQ's tables, owned by lineq's owner, with [`QUEUE_FILLFACTOR`]).
///
/// Looks first, so a role that may not create queues (a worker) only needs the queue to be
/// there; when it is missing, the error says who may create it.
pub async fn ensure_queue(conn: &mut PgConnection, queue: &QueueName) -> Result<()> {
    if queue_exists(&mut *conn, queue).await? {
        return Ok(());
    }
    let created = sqlx::query("SELECT lineq.create_queue($1)")
        .bind(queue.as_str())
        .execute(&mut *conn)
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
            Err(crate::error::Error::InvalidState(format!(
                "queue {queue} does not exist and this database role may not create it; create it with \
                 `lineq namespace create` (or `lineq migrate`) as an orchestrator role or the schema owner"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// How full PostgreSQL fills a queue table's pages (percent), leaving the rest for the row
/// versions reads make.
///
/// A read sets a message's `vt` and `read_ct`, which writes a new version of its row. On a full
/// page that version goes to another page, and the WAL then carries the whole message again
/// plus a lock record; on the same page PostgreSQL logs only the bytes that changed. With half
/// of each page free, an execution's two messages write 1.4 KB less WAL, a tenth of all it
/// writes (docs/benchmarks.md, "Throughput"). Queue tables hold only the messages in flight, so
/// the pages left half empty cost little. Migration 000010 sets it on queues made before.
pub const QUEUE_FILLFACTOR: u8 = 50;

/// True when `queue` exists.
pub async fn queue_exists(conn: &mut PgConnection, queue: &QueueName) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pgmq.meta WHERE queue_name = $1)")
            .bind(queue.as_str())
            .fetch_one(conn)
            .await?,
    )
}

/// Sends one message, visible after `delay` (millisecond precision); returns its id.
pub async fn send(
    conn: &mut PgConnection,
    queue: &QueueName,
    body: &Value,
    delay: std::time::Duration,
) -> Result<i64> {
    let id: i64 = sqlx::query_scalar(&format!(
        "WITH wake AS MATERIALIZED (SELECT pg_notify($3, $4)),
              sent AS (INSERT INTO {live} (vt, message)
                       VALUES (clock_timestamp() + make_interval(secs => $2::float8), $1::jsonb)
                       RETURNING msg_id)
         SELECT sent.msg_id FROM sent, wake",
        live = live_table(queue)
    ))
    .bind(body)
    .bind(delay.as_secs_f64())
    .bind(wake_channel(queue))
    .bind(queue.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

/// Sends many messages with one statement (which also notifies); returns their ids in order.
pub async fn send_batch(
    conn: &mut PgConnection,
    queue: &QueueName,
    bodies: &[Value],
) -> Result<Vec<i64>> {
    if bodies.is_empty() {
        return Ok(Vec::new());
    }
    // Identity values are taken in the order unnest yields the rows, so ordering by msg_id
    // returns the ids in the order of `bodies`.
    let ids: Vec<i64> = sqlx::query_scalar(&format!(
        "WITH wake AS MATERIALIZED (SELECT pg_notify($2, $3)),
              sent AS (INSERT INTO {live} (vt, message)
                       SELECT clock_timestamp(), m FROM unnest($1::jsonb[]) AS m
                       RETURNING msg_id)
         SELECT sent.msg_id FROM sent, wake ORDER BY sent.msg_id",
        live = live_table(queue)
    ))
    .bind(bodies)
    .bind(wake_channel(queue))
    .bind(queue.as_str())
    .fetch_all(&mut *conn)
    .await?;
    Ok(ids)
}

/// Writes `events` and deletes `msg_ids` of `queue` in one statement: an orchestrator's batch
/// ends this way. A result message is deleted, not archived: once applied, everything it held
/// is in the step's row and its `step_result` event. Returns the ids actually deleted (a
/// message someone else deleted first is not among them).
pub async fn delete_with_events(
    conn: &mut PgConnection,
    queue: &QueueName,
    msg_ids: &[i64],
    events: &[NewEvent],
) -> Result<Vec<i64>> {
    if events.is_empty() {
        return delete(conn, queue, msg_ids).await;
    }
    let cols = EventColumns::new(events);
    let sql = format!(
        "WITH ev AS ({events}),
              gone AS (DELETE FROM {live} WHERE msg_id = ANY($15::bigint[]) RETURNING msg_id)
         SELECT msg_id FROM gone",
        events = INSERT_EVENTS_SQL.as_str(),
        live = live_table(queue)
    );
    let rows = cols
        .bind(sqlx::query(&sql))
        .bind(msg_ids)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<std::result::Result<_, _>>()?)
}

/// `pgmq."q_<queue>"`: the live table PGMQ made for `queue` (its `format_table_name`). Safe to
/// put into SQL: a [`QueueName`] is only a-z, 0-9 and `_`.
pub fn live_table(queue: &QueueName) -> String {
    format!("pgmq.\"q_{}\"", queue.as_str())
}

/// PGMQ's archive as two CTEs for a larger statement: `archived` (the rows deleted from the
/// live table, of the ids in parameter `ids`) and `moved` (their ids, inserted into the archive
/// table). A message someone else archived first is in neither.
pub fn archive_ctes(queue: &QueueName, ids: &str) -> String {
    format!(
        "archived AS (
             DELETE FROM {live} WHERE msg_id = ANY({ids}::bigint[])
             RETURNING msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers),
         moved AS (
             INSERT INTO {archive} (msg_id, vt, read_ct, enqueued_at, last_read_at, message,
                                    headers)
             SELECT msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers
             FROM archived
             RETURNING msg_id)",
        live = live_table(queue),
        archive = archive_table(queue)
    )
}

/// `pgmq."a_<queue>"`: the queue's archive table.
pub fn archive_table(queue: &QueueName) -> String {
    format!("pgmq.\"a_{}\"", queue.as_str())
}

/// Reads up to `qty` visible messages and hides them for `vt_secs` (PGMQ's `read`), in
/// `msg_id` order. The statement is [`read_sql`].
pub async fn read<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    queue: &QueueName,
    vt_secs: i32,
    qty: i32,
) -> Result<Vec<QueuedMessage>> {
    Ok(sqlx::query_as::<_, QueuedMessage>(&read_sql(queue))
        .bind(i64::from(qty))
        .bind(vt_secs)
        .fetch_all(executor)
        .await?)
}

/// The statement of [`read`]: `$1` how many, `$2` the visibility timeout in seconds.
///
/// PGMQ's own statement joins the locked ids back to the table (`FROM cte WHERE m.msg_id =
/// cte.msg_id`). A queue table is often vacuumed while nearly empty, and its statistics then say
/// "a row or two" until the next vacuum; under a backlog the planner joins with a nested loop
/// over a sequential scan, once per message read (a read of 100 from 20,000 took 24 ms). Matching
/// `msg_id = ANY(ARRAY(...))` is one index scan whatever the statistics say.
pub fn read_sql(queue: &QueueName) -> String {
    format!(
        "WITH cte AS (
             SELECT msg_id FROM {live}
             WHERE vt <= clock_timestamp()
             ORDER BY msg_id
             LIMIT $1
             FOR UPDATE SKIP LOCKED),
         got AS (
             UPDATE {live} m
             SET last_read_at = clock_timestamp(),
                 vt = clock_timestamp() + make_interval(secs => $2::integer),
                 read_ct = m.read_ct + 1
             WHERE m.msg_id = ANY(ARRAY(SELECT msg_id FROM cte))
             RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message::text AS body)
         SELECT * FROM got ORDER BY msg_id",
        live = live_table(queue)
    )
}

/// Pushes the visibility timeout of held messages `vt_secs` into the future (a visibility
/// extension).
/// Returns how many of them still exist.
pub async fn extend<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    queue: &QueueName,
    msg_ids: &[i64],
    vt_secs: i32,
) -> Result<usize> {
    if msg_ids.is_empty() {
        return Ok(0);
    }
    let rows: Vec<i64> =
        sqlx::query_scalar("SELECT msg_id FROM pgmq.set_vt($1::text, $2::bigint[], $3::integer)")
            .bind(queue.as_str())
            .bind(msg_ids)
            .bind(vt_secs)
            .fetch_all(executor)
            .await?;
    Ok(rows.len())
}

/// Deletes messages (e.g. of cancelled steps) so no worker runs them. Returns the ids deleted.
pub async fn delete(
    conn: &mut PgConnection,
    queue: &QueueName,
    msg_ids: &[i64],
) -> Result<Vec<i64>> {
    if msg_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(&format!(
        "DELETE FROM {live} WHERE msg_id = ANY($1) RETURNING msg_id",
        live = live_table(queue)
    ))
    .bind(msg_ids)
    .fetch_all(conn)
    .await?)
}

/// Moves messages to the queue's archive (`pgmq.a_<queue>`). Returns the ids actually moved: a
/// message already archived by someone else is not moved twice (a concurrent archiver waits for
/// the first to commit, then finds nothing).
pub async fn archive(
    conn: &mut PgConnection,
    queue: &QueueName,
    msg_ids: &[i64],
) -> Result<Vec<i64>> {
    if msg_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<i64> = sqlx::query_scalar(&format!(
        "WITH {archive} SELECT msg_id FROM moved",
        archive = archive_ctes(queue, "$1")
    ))
    .bind(msg_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// Sends `msg` to the dead-letter queue with `reason`, and archives it from `queue`, in the
/// caller's transaction. `event_id` is the `message_dead_lettered` event, when one was written.
/// Returns the dead letter's id.
pub async fn dead_letter(
    conn: &mut PgConnection,
    queue: &QueueName,
    msg: &QueuedMessage,
    reason: &str,
    event_id: Option<uuid::Uuid>,
) -> Result<i64> {
    let letter = json!({
        "source_queue": queue.as_str(),
        "source_msg_id": msg.msg_id,
        "read_ct": msg.read_ct,
        "enqueued_at": msg.enqueued_at,
        "reason": reason,
        "event_id": event_id,
    });
    // The original goes in as PostgreSQL parsed it, whatever Rust thought of it.
    let dlq = dead_letter_queue();
    let id: i64 = sqlx::query_scalar(&format!(
        "WITH wake AS MATERIALIZED (SELECT pg_notify($3, $4)),
              sent AS (INSERT INTO {live} (vt, message)
                       VALUES (clock_timestamp(),
                               $1::jsonb || jsonb_build_object('message', $2::text::jsonb))
                       RETURNING msg_id)
         SELECT sent.msg_id FROM sent, wake",
        live = live_table(&dlq)
    ))
    .bind(&letter)
    .bind(&msg.body)
    .bind(wake_channel(&dlq))
    .bind(dlq.as_str())
    .fetch_one(&mut *conn)
    .await?;
    archive(conn, queue, &[msg.msg_id]).await?;
    Ok(id)
}
