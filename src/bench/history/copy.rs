//! The fill's statements: copies of the templates' rows, a batch of copies per transaction,
//! made by PostgreSQL from the rows themselves.
//!
//! Copy `i` of a batch is the failed template when `i % fail_every == fail_every - 1`, else the
//! completed one. It is moved in time by a whole number of milliseconds (`shift`), so that it
//! starts at `start + i × spacing`; every timestamp of its rows moves by as much. Every id of
//! its rows is a new UUIDv7 whose time is the template id's time moved by the same shift and
//! whose random bits are a hash of the fill's seed, the copy's number and the template id: so
//! ids sort by time as lineq's do, agree with `created_at` as the template's did, and a
//! reference to an id (a parent event, a message's `meta`) becomes a reference to the same
//! copy's id. Trace ids are the new correlation ids and span ids the ends of the new event
//! ids, as lineq writes them for a root (the templates are checked for it). Messages get new
//! ids from their queue's sequence, reserved a batch at a time.

use lineq_core::queue;
use lineq_core::validation::QueueName;
use sqlx::PgConnection;

use super::templates::{COLUMNS, Templates};

/// The copies of one batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The first copy's number.
    pub lo: i64,
    /// The last copy's number.
    pub hi: i64,
    /// Different in every fill, so two fills never make the same ids.
    pub seed: String,
    /// When copy 0 starts.
    pub start: chrono::DateTime<chrono::Utc>,
    /// Milliseconds between the starts of two copies.
    pub spacing_ms: f64,
    /// Every this-many-th copy is of the failed template.
    pub fail_every: i64,
}

/// The copies: `g` gives each its number `i`, template `tpl`, hash `key`, `shift` (and
/// `shift_ms`) and step message id. Parameters $1..$9, then each statement's own.
const COPIES: &str = "
WITH g AS MATERIALIZED (
    SELECT c.i, c.tpl, c.key, c.shift_ms, c.shift_ms * interval '1 millisecond' AS shift,
           $9::bigint + (c.i - $1::bigint) AS step_msg
    FROM (SELECT s.i, x.execution_id AS tpl, $3::text || ':' || s.i || ':' AS key,
                 floor(extract(epoch FROM $4::timestamptz
                                          + s.i * $5::float8 * interval '1 millisecond'
                                          - x.created_at) * 1000)::bigint AS shift_ms
          FROM generate_series($1::bigint, $2::bigint) AS s(i)
          JOIN pg_temp.history_executions x
            ON x.execution_id = CASE WHEN s.i % $8::bigint = $8::bigint - 1
                                     THEN $7::uuid ELSE $6::uuid END) c
)";

const EXECUTIONS: &str = "
INSERT INTO lineq.executions (COLUMNS)
SELECT NEW[x.execution_id], x.workflow_name, x.workflow_version, x.namespace, x.status, x.input,
       x.output, x.error, NEW[x.correlation_id], x.parent_correlation_id, x.parent_execution_id,
       NEW[x.root_execution_id], x.parent_event_id, x.parent_step, x.tags, x.metadata,
       x.idempotency_key, x.priority, x.version, x.created_at + g.shift,
       x.updated_at + g.shift, x.finished_at + g.shift, x.kind, x.parent_step_id,
       x.parent_waits
FROM g JOIN pg_temp.history_executions x ON x.execution_id = g.tpl
ORDER BY g.i";

const STEPS: &str = "
INSERT INTO lineq.steps (COLUMNS)
SELECT NEW[s.step_id], NEW[s.execution_id], s.name, s.handler, s.namespace, s.queue, s.status,
       s.depends_on, s.attempts, s.max_attempts, s.timeout_ms, s.input, s.output, s.error,
       CASE WHEN s.msg_id IS NOT NULL THEN g.step_msg END, s.worker_id, s.created_at + g.shift,
       s.updated_at + g.shift, s.finished_at + g.shift, s.retry, s.on_failure, s.params,
       s.position, s.flow, s.priority
FROM g JOIN pg_temp.history_steps s ON s.execution_id = g.tpl
ORDER BY g.i, s.position";

/// $10: the step queue (the queue an event's `msg_id` names).
const EVENTS: &str = "
INSERT INTO lineq.events (COLUMNS)
SELECT NEW[e.event_id], NEW[e.parent_event_id], NEW[e.execution_id], NEW[e.step_id],
       NEW[e.parent_execution_id], NEW[e.root_execution_id], NEW[e.correlation_id],
       e.event_type, e.node_name, e.worker_id, e.attempt,
       replace(NEW[e.correlation_id]::text, '-', ''),
       right(replace(NEW[e.event_id]::text, '-', ''), 16),
       CASE WHEN NOT e.payload ? 'msg_id' THEN e.payload
            WHEN e.payload ->> 'queue' = $10 THEN jsonb_set(e.payload, '{msg_id}', to_jsonb(g.step_msg))
            ELSE e.payload END,
       e.created_at + g.shift
FROM g JOIN pg_temp.history_events e ON e.execution_id = g.tpl
ORDER BY g.i, e.created_at";

/// $10: the queue whose archive this fills (the step queue: a template's only archived message
/// is its step's, its result was deleted once applied).
const MESSAGES: &str = "
INSERT INTO ARCHIVE (msg_id, read_ct, enqueued_at, last_read_at, archived_at, vt, message,
                     headers)
SELECT g.step_msg, m.read_ct,
       m.enqueued_at + g.shift, m.last_read_at + g.shift, m.archived_at + g.shift,
       m.vt + g.shift,
       jsonb_set(m.message, '{meta}', (m.message -> 'meta') || jsonb_build_object(
           'correlation_id', NEW[(m.message -> 'meta' ->> 'correlation_id')::uuid],
           'parent_event_id', NEW[(m.message -> 'meta' ->> 'parent_event_id')::uuid],
           'root_execution_id', NEW[(m.message -> 'meta' ->> 'root_execution_id')::uuid],
           'traceparent', '00-'
               || replace(NEW[(m.message -> 'meta' ->> 'correlation_id')::uuid]::text, '-', '')
               || '-' || right(replace(
                      NEW[(m.message -> 'meta' ->> 'parent_event_id')::uuid]::text, '-', ''), 16)
               || '-01'))
         || jsonb_strip_nulls(jsonb_build_object(
           'execution_id', NEW[(m.message ->> 'execution_id')::uuid],
           'step_id', NEW[(m.message ->> 'step_id')::uuid],
           'started_event_id', NEW[(m.message ->> 'started_event_id')::uuid])),
       CASE WHEN m.headers #> '{lineq_claim,event}' IS NULL THEN m.headers
            ELSE jsonb_set(m.headers, '{lineq_claim,event}',
                           to_jsonb(NEW[(m.headers #>> '{lineq_claim,event}')::uuid]))
       END
FROM g JOIN pg_temp.history_messages m ON m.execution_id = g.tpl AND m.queue_name = $10
ORDER BY g.i";

/// The new id of a template id `old` in copy `g`: the time of `old` moved by the copy's shift,
/// version 7, the variant bits, and 74 bits of a hash of the copy's key and `old` (NULL for a
/// NULL `old`).
fn new_id(old: &str) -> String {
    let h = format!("md5(g.key || ({old})::text)");
    format!(
        "(lpad(to_hex(('x' || left(replace(({old})::text, '-', ''), 12))::bit(48)::bigint
                      + g.shift_ms), 12, '0')
          || '7' || substr({h}, 1, 3) || substr('89ab', ascii(substr({h}, 4, 1)) % 4 + 1, 1)
          || substr({h}, 5, 15))::uuid"
    )
}

/// `sql` with every `NEW[expr]` replaced by [`new_id`] of `expr`, and `COLUMNS` by `columns`.
/// Only this module's constants pass through here.
fn expand(sql: &str, columns: &str) -> String {
    let mut out = String::with_capacity(sql.len() * 4);
    let mut rest = sql;
    while let Some(at) = rest.find("NEW[") {
        out.push_str(&rest[..at]);
        let inner = &rest[at + 4..];
        let end = inner.find(']').unwrap_or(inner.len());
        out.push_str(&new_id(&inner[..end]));
        rest = inner.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    format!("{COPIES}\n{}", out.replace("COLUMNS", columns))
}

/// The fill's statements, made once.
pub struct Statements {
    executions: String,
    steps: String,
    events: String,
    /// The statement filling the step queue's archive.
    messages: String,
    step_queue: QueueName,
}

impl Statements {
    /// The statements for the templates' step queue.
    pub fn new(templates: &Templates) -> anyhow::Result<Self> {
        let step_queue = templates
            .completed
            .messages
            .iter()
            .find(|m| m.1 == "step")
            .map(|m| m.0.clone())
            .ok_or_else(|| anyhow::anyhow!("history template without a step message"))?;
        let columns = |table: &str| {
            COLUMNS
                .iter()
                .find(|(t, _)| *t == table)
                .map_or("", |(_, c)| c)
        };
        Ok(Self {
            executions: expand(EXECUTIONS, columns("executions")),
            steps: expand(STEPS, columns("steps")),
            events: expand(EVENTS, columns("events")),
            messages: expand(MESSAGES, "").replace("ARCHIVE", &queue::archive_table(&step_queue)),
            step_queue,
        })
    }
}

/// Copies the templates' rows into temporary tables of `conn`, where each batch reads them.
pub async fn load_templates(conn: &mut PgConnection, templates: &Templates) -> anyhow::Result<()> {
    let ids = [
        templates.completed.execution_id,
        templates.failed.execution_id,
    ];
    for (table, source) in [
        ("history_executions", "lineq.executions"),
        ("history_steps", "lineq.steps"),
        ("history_events", "lineq.events"),
    ] {
        // Names from this list only.
        sqlx::query(&format!("CREATE TEMP TABLE {table} (LIKE {source})"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO pg_temp.{table} SELECT * FROM {source} WHERE execution_id = ANY($1)"
        ))
        .bind(&ids[..])
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "CREATE TEMP TABLE history_messages (queue_name text, kind text, execution_id uuid,
             msg_id bigint, read_ct integer, enqueued_at timestamptz, last_read_at timestamptz,
             archived_at timestamptz, vt timestamptz, message jsonb, headers jsonb)",
    )
    .execute(&mut *conn)
    .await?;
    for t in [&templates.completed, &templates.failed] {
        for (q, kind, msg_id) in &t.messages {
            sqlx::query(&format!(
                "INSERT INTO pg_temp.history_messages
                 SELECT $1, $2, $3, msg_id, read_ct, enqueued_at, last_read_at, archived_at, vt,
                        message, headers
                 FROM {} WHERE msg_id = $4",
                queue::archive_table(q)
            ))
            .bind(q.as_str())
            .bind(kind)
            .bind(t.execution_id)
            .bind(msg_id)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Rows one batch wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    /// Executions.
    pub executions: u64,
    /// Events.
    pub events: u64,
    /// Archived messages.
    pub messages: u64,
}

/// Writes one batch of copies in one transaction.
pub async fn batch(
    conn: &mut PgConnection,
    st: &Statements,
    templates: &Templates,
    b: &Batch,
) -> anyhow::Result<Written> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let copies = b.hi - b.lo + 1;
    let step_base = reserve(&mut tx, &st.step_queue, copies).await?;
    let executions = bound(&st.executions, b, templates, step_base)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    bound(&st.steps, b, templates, step_base)
        .execute(&mut *tx)
        .await?;
    let events = bound(&st.events, b, templates, step_base)
        .bind(st.step_queue.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let messages = bound(&st.messages, b, templates, step_base)
        .bind(st.step_queue.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Written {
        executions,
        events,
        messages,
    })
}

/// `sql` with the parameters every statement shares ($1..$9).
fn bound<'q>(
    sql: &'q str,
    b: &Batch,
    templates: &Templates,
    step_base: i64,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(b.lo)
        .bind(b.hi)
        .bind(b.seed.clone())
        .bind(b.start)
        .bind(b.spacing_ms)
        .bind(templates.completed.execution_id)
        .bind(templates.failed.execution_id)
        .bind(b.fail_every)
        .bind(step_base)
}

/// Reserves `n` message ids of `queue`'s sequence; returns the first.
async fn reserve(conn: &mut PgConnection, queue: &QueueName, n: i64) -> anyhow::Result<i64> {
    let seq: Option<String> = sqlx::query_scalar("SELECT pg_get_serial_sequence($1, 'msg_id')")
        .bind(queue::live_table(queue))
        .fetch_one(&mut *conn)
        .await?;
    let seq = seq.ok_or_else(|| anyhow::anyhow!("queue {queue} has no msg_id sequence"))?;
    Ok(
        sqlx::query_scalar("SELECT setval($1::regclass, nextval($1::regclass) + $2 - 1) - $2 + 1")
            .bind(seq)
            .bind(n)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// The first of `template_ids` ([`Templates::ids`]) that `text` names: a copy's rows must
/// name none.
pub fn names_a_template(text: &str, template_ids: &[String]) -> Option<String> {
    template_ids
        .iter()
        .find(|id| text.contains(id.as_str()))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn every_new_marker_is_expanded_and_the_columns_are_filled_in() {
        let sql = expand(
            "SELECT NEW[a.b], x, NEW[(c ->> 'd')::uuid] INTO t (COLUMNS)",
            "p,q",
        );
        assert!(!sql.contains("NEW["), "{sql}");
        assert!(sql.contains("t (p,q)"), "{sql}");
        assert!(sql.contains("md5(g.key || (a.b)::text)"), "{sql}");
        assert!(
            sql.contains("md5(g.key || ((c ->> 'd')::uuid)::text)"),
            "{sql}"
        );
        assert!(sql.starts_with(COPIES), "{sql}");
    }

    #[test]
    fn a_text_naming_a_template_id_is_found() {
        let ids = vec![Uuid::nil().to_string()];
        assert!(
            names_a_template("{\"x\": \"00000000-0000-0000-0000-000000000000\"}", &ids).is_some()
        );
        assert!(names_a_template("{\"x\": 1}", &ids).is_none());
    }
}
