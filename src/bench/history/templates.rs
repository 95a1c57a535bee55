//! The history's templates: one execution that completes and one that fails, each run by the
//! bench's own orchestrator and worker, so every row the fill copies is one lineq wrote.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use lineq::{Client, HandlerError, HandlerResult, StepContext, SubmitRequest};
use lineq_core::validation::QueueName;

use crate::bench::throughput::InProcess;
use crate::bench::{BenchConfig, until};

/// One template execution and what the fill needs to know of it.
#[derive(Debug, Clone)]
pub struct Template {
    /// The execution.
    pub execution_id: Uuid,
    /// Its events (every copy has as many).
    pub events: u64,
    /// Its messages, all archived: `(queue, kind, msg_id)`, its one `step` message (its result
    /// message was deleted once applied).
    pub messages: Vec<(QueueName, String, i64)>,
}

/// The two templates.
#[derive(Debug, Clone)]
pub struct Templates {
    /// An execution that completed.
    pub completed: Template,
    /// An execution whose step failed for good.
    pub failed: Template,
}

impl Templates {
    /// Every id the templates' rows hold, as text: a copy must name none of them.
    pub async fn ids(&self, pool: &PgPool) -> anyhow::Result<Vec<String>> {
        let roots = [self.completed.execution_id, self.failed.execution_id];
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT id::text FROM (
                 SELECT unnest(ARRAY[execution_id, correlation_id]) AS id
                 FROM lineq.executions WHERE execution_id = ANY($1)
                 UNION ALL SELECT step_id FROM lineq.steps WHERE execution_id = ANY($1)
                 UNION ALL SELECT event_id FROM lineq.events WHERE execution_id = ANY($1)) ids",
        )
        .bind(&roots[..])
        .fetch_all(pool)
        .await?)
    }
}

/// The columns of lineq's tables the fill copies, in order. A column the fill does not know
/// would get its default in every copy instead of the template's value, so the fill refuses to
/// run until it is added here and to `copy.rs`.
pub const COLUMNS: [(&str, &str); 3] = [
    (
        "executions",
        "execution_id,workflow_name,workflow_version,namespace,status,input,output,error,\
         correlation_id,parent_correlation_id,parent_execution_id,root_execution_id,\
         parent_event_id,parent_step,tags,metadata,idempotency_key,priority,version,created_at,\
         updated_at,finished_at,kind,parent_step_id,parent_waits",
    ),
    (
        "steps",
        "step_id,execution_id,name,handler,namespace,queue,status,depends_on,attempts,\
         max_attempts,timeout_ms,input,output,error,msg_id,worker_id,created_at,updated_at,\
         finished_at,retry,on_failure,params,position,flow,priority",
    ),
    (
        "events",
        "event_id,parent_event_id,execution_id,step_id,parent_execution_id,root_execution_id,\
         correlation_id,event_type,node_name,worker_id,attempt,trace_id,span_id,payload,\
         created_at",
    ),
];

/// The template's handler: succeeds, or fails for good when the input says `{"fail": true}`.
async fn succeed_or_fail(_ctx: StepContext, input: Value) -> HandlerResult {
    if input.get("fail").and_then(Value::as_bool) == Some(true) {
        return Err(HandlerError::permanent(
            "a history template failing on purpose",
        ));
    }
    Ok(Value::Null)
}

/// Runs the two templates of `workflow` and reads what the fill copies of them.
pub async fn run(pool: &PgPool, cfg: &BenchConfig, workflow: &str) -> anyhow::Result<Templates> {
    known_columns(pool).await?;
    let system = InProcess::start_with(pool, cfg, workflow, succeed_or_fail);
    let client = Client::new(pool.clone());
    let submit = async |input: Value| -> anyhow::Result<Uuid> {
        let s = client
            .submit(SubmitRequest::new(workflow).input(input))
            .await?;
        Ok(s.execution.execution_id)
    };
    let completed = submit(Value::Null).await?;
    let failed = submit(json!({"fail": true})).await?;
    let ended = until(Duration::from_secs(60), async || {
        Ok(client.execution(completed).await?.status.is_terminal()
            && client.execution(failed).await?.status.is_terminal())
    })
    .await;
    system.stop().await?;
    ended.map_err(|e| anyhow::anyhow!("history templates did not finish: {e}"))?;
    Ok(Templates {
        completed: read(pool, completed, "completed").await?,
        failed: read(pool, failed, "failed").await?,
    })
}

/// Fails when lineq's tables have columns other than the ones the fill copies.
async fn known_columns(pool: &PgPool) -> anyhow::Result<()> {
    for (table, columns) in COLUMNS {
        let found: String = sqlx::query_scalar(
            "SELECT string_agg(column_name::text, ',' ORDER BY ordinal_position)
             FROM information_schema.columns WHERE table_schema = 'lineq' AND table_name = $1",
        )
        .bind(table)
        .fetch_one(pool)
        .await?;
        anyhow::ensure!(
            found == columns,
            "lineq.{table} has the columns {found}; the history fill copies {columns} \
             (src/bench/history): a column it does not know would not be copied"
        );
    }
    Ok(())
}

/// Reads one template and checks that it is what the fill copies: a root execution that
/// ended with `status`, with its messages archived, trace and span ids derived from its ids
/// as the fill derives them for the copies.
async fn read(pool: &PgPool, id: Uuid, status: &str) -> anyhow::Result<Template> {
    let shape: Option<(String, bool)> = sqlx::query_as(
        "SELECT status, parent_execution_id IS NULL AND root_execution_id = execution_id
                        AND idempotency_key IS NULL
         FROM lineq.executions WHERE execution_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    anyhow::ensure!(
        shape == Some((status.to_string(), true)),
        "history template {id}: expected a root execution that {status}, found {shape:?}"
    );
    // The copies' trace ids are their correlation ids, their span ids the end of their event
    // ids, and a message's traceparent names its event's: as lineq writes them for a root.
    let underived: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM lineq.events e JOIN lineq.executions x USING (execution_id)
                 WHERE e.execution_id = $1
                   AND (e.trace_id IS DISTINCT FROM replace(x.correlation_id::text, '-', '')
                        OR e.span_id IS DISTINCT FROM
                           right(replace(e.event_id::text, '-', ''), 16)))
              + (SELECT count(*) FROM lineq.lineage_messages($1) m
                 LEFT JOIN lineq.events e ON e.event_id = m.parent_event_id
                 WHERE m.meta ->> 'traceparent' IS DISTINCT FROM
                       '00-' || e.trace_id || '-' || e.span_id || '-01')",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        underived == 0,
        "history template {id}: {underived} trace or span ids are not derived from its ids as \
         the fill derives the copies'"
    );
    let messages: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT queue_name, kind, state, msg_id FROM lineq.lineage_messages($1)
         ORDER BY kind",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let kinds: Vec<(&str, &str)> = messages
        .iter()
        .map(|(_, kind, state, _)| (kind.as_str(), state.as_str()))
        .collect();
    anyhow::ensure!(
        kinds == [("step", "archived")],
        "history template {id}: expected one archived step message (and its result deleted), \
         found {kinds:?}"
    );
    let step_msg: Option<i64> =
        sqlx::query_scalar("SELECT msg_id FROM lineq.steps WHERE execution_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
    let step_message = messages.iter().find(|m| m.1 == "step").map(|m| m.3);
    anyhow::ensure!(
        step_msg == step_message,
        "history template {id}: its step names message {step_msg:?}, its step message is \
         {step_message:?}"
    );
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lineq.events WHERE execution_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
    Ok(Template {
        execution_id: id,
        events: u64::try_from(events)?,
        messages: messages
            .into_iter()
            .map(|(queue, kind, _, msg_id)| Ok((QueueName::new(&queue)?, kind, msg_id)))
            .collect::<anyhow::Result<_>>()?,
    })
}
