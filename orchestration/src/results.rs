//! Result processing: turns the results workers send into step outcomes and finished
//! executions.
//!
//! One transaction per batch: read the results (hiding them from other orchestrators), lock the
//! executions they touch in id order (so two orchestrators never decide an execution's fate from
//! stale snapshots, and never deadlock), apply each outcome with a guarded update, write the
//! events, finish executions whose steps are all done, archive the results. A crash anywhere
//! rolls all of it back and the results become visible again. A result for a step that is no
//! longer waiting for that attempt (a duplicate) is archived and changes nothing.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{Map, Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use lineq_shared::error::Result;
use lineq_shared::event::{EventType, Lineage, NewEvent, insert_events};
use lineq_shared::message::{Outcome, ResultMessage};
use lineq_shared::queue::{self, QueuedMessage};

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchReport {
    /// Result messages read.
    pub read: usize,
    /// Outcomes applied to steps.
    pub applied: usize,
    /// Results that changed nothing (duplicates, stale attempts).
    pub ignored: usize,
    /// Results moved to the dead-letter queue.
    pub dead_lettered: usize,
    /// Executions finished by this batch.
    pub finished: usize,
}

#[derive(sqlx::FromRow)]
struct LockedExecution {
    execution_id: Uuid,
    status: String,
    correlation_id: Uuid,
    parent_execution_id: Option<Uuid>,
    root_execution_id: Uuid,
    trace_correlation_id: Uuid,
}

#[derive(sqlx::FromRow)]
struct StepState {
    step_id: Uuid,
    execution_id: Uuid,
    name: String,
    status: String,
    attempts: i32,
    output: Option<Value>,
    error: Option<Value>,
}

struct Applied {
    step_id: Uuid,
    status: &'static str,
    output: Option<Value>,
    error: Option<Value>,
    worker_id: String,
    attempt: i32,
}

/// Processes up to `batch_size` results in one transaction.
pub async fn process_batch(
    pool: &PgPool,
    node_name: &str,
    batch_size: i32,
    visibility_timeout_secs: i32,
) -> Result<BatchReport> {
    let results_queue = queue::results_queue();
    let mut tx = pool.begin().await?;
    let msgs = queue::read(
        &mut *tx,
        &results_queue,
        visibility_timeout_secs,
        batch_size,
    )
    .await?;
    let mut report = BatchReport {
        read: msgs.len(),
        ..Default::default()
    };
    if msgs.is_empty() {
        tx.commit().await?;
        return Ok(report);
    }

    let mut parsed: Vec<(&QueuedMessage, ResultMessage)> = Vec::with_capacity(msgs.len());
    for m in &msgs {
        match ResultMessage::parse(m.message.as_ref()) {
            Ok(r) => parsed.push((m, r)),
            Err(e) => {
                tracing::warn!(msg_id = m.msg_id, reason = %e, "dead-lettering result message");
                queue::dead_letter(&mut tx, &results_queue, m, &e.to_string()).await?;
                report.dead_lettered += 1;
            }
        }
    }

    let execution_ids: BTreeSet<Uuid> = parsed.iter().map(|(_, r)| r.execution_id).collect();
    let execution_ids: Vec<Uuid> = execution_ids.into_iter().collect();
    let executions: HashMap<Uuid, LockedExecution> = lock_executions(&mut tx, &execution_ids)
        .await?
        .into_iter()
        .map(|e| (e.execution_id, e))
        .collect();
    let step_ids: Vec<Uuid> = parsed.iter().map(|(_, r)| r.step_id).collect();
    let steps: HashMap<Uuid, StepState> = sqlx::query_as::<_, StepState>(
        "SELECT step_id, execution_id, name, status, attempts, output, error
         FROM lineq.steps WHERE step_id = ANY($1)",
    )
    .bind(&step_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|s| (s.step_id, s))
    .collect();

    let mut seen = HashSet::new();
    let mut applied = Vec::new();
    let mut events = Vec::new();
    // The last outcome event per execution in this batch: the parent of its ending event.
    let mut last_outcome: HashMap<Uuid, Uuid> = HashMap::new();
    let mut archive_ids = Vec::new();
    for (m, r) in parsed {
        let (Some(step), Some(exec)) = (steps.get(&r.step_id), executions.get(&r.execution_id))
        else {
            let reason = format!(
                "result for unknown step {} of execution {}",
                r.step_id, r.execution_id
            );
            queue::dead_letter(&mut tx, &results_queue, m, &reason).await?;
            report.dead_lettered += 1;
            continue;
        };
        archive_ids.push(m.msg_id);
        let fresh = step.execution_id == r.execution_id
            && step.status == "enqueued"
            && step.attempts == r.attempt
            && seen.insert(r.step_id);
        if !fresh {
            tracing::debug!(step_id = %r.step_id, attempt = r.attempt, status = %step.status,
                "ignoring duplicate or stale result");
            report.ignored += 1;
            continue;
        }
        let lineage = Lineage {
            execution_id: exec.execution_id,
            parent_execution_id: exec.parent_execution_id,
            root_execution_id: exec.root_execution_id,
            correlation_id: exec.correlation_id,
            trace_correlation_id: exec.trace_correlation_id,
        };
        let (event_type, status) = match r.outcome {
            Outcome::Completed => (EventType::StepCompleted, "completed"),
            Outcome::Failed => (EventType::StepFailed, "failed"),
        };
        let error = r.error.as_ref().map(serde_json::to_value).transpose()?;
        let event = NewEvent::new(event_type, lineage, Some(r.meta.parent_event_id), node_name)
            .step(r.step_id, r.attempt)
            .worker(&r.worker_id)
            .payload(json!({ "step": r.step, "worker_id": r.worker_id, "error": error }));
        last_outcome.insert(r.execution_id, event.event_id);
        events.push(event);
        applied.push(Applied {
            step_id: r.step_id,
            status,
            output: if r.outcome == Outcome::Completed {
                Some(r.output.unwrap_or(Value::Null))
            } else {
                None
            },
            error,
            worker_id: r.worker_id,
            attempt: r.attempt,
        });
    }
    report.applied = apply_step_outcomes(&mut tx, &applied).await?;

    let finished = finish_executions(&mut tx, &executions, &last_outcome, node_name).await?;
    report.finished = finished.len();
    events.extend(finished);
    insert_events(&mut tx, &events).await?;
    queue::archive(&mut tx, &results_queue, &archive_ids).await?;
    tx.commit().await?;
    Ok(report)
}

async fn lock_executions(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<LockedExecution>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as::<_, LockedExecution>(
        r#"
        SELECT e.execution_id, e.status, e.correlation_id, e.parent_execution_id,
               e.root_execution_id, r.correlation_id AS trace_correlation_id
        FROM lineq.executions e
        JOIN lineq.executions r ON r.execution_id = e.root_execution_id
        WHERE e.execution_id = ANY($1)
        ORDER BY e.execution_id
        FOR UPDATE OF e
        "#,
    )
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

async fn apply_step_outcomes(conn: &mut PgConnection, applied: &[Applied]) -> Result<usize> {
    if applied.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = applied.iter().map(|a| a.step_id).collect();
    let statuses: Vec<&str> = applied.iter().map(|a| a.status).collect();
    let outputs: Vec<Option<&Value>> = applied.iter().map(|a| a.output.as_ref()).collect();
    let errors: Vec<Option<&Value>> = applied.iter().map(|a| a.error.as_ref()).collect();
    let workers: Vec<&str> = applied.iter().map(|a| a.worker_id.as_str()).collect();
    let attempts: Vec<i32> = applied.iter().map(|a| a.attempt).collect();
    let done = sqlx::query(
        r#"
        UPDATE lineq.steps s
        SET status = u.status, output = u.output, error = u.error, worker_id = u.worker_id,
            updated_at = clock_timestamp(), finished_at = clock_timestamp()
        FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[], $5::text[], $6::int[])
             AS u(step_id, status, output, error, worker_id, attempt)
        WHERE s.step_id = u.step_id AND s.status = 'enqueued' AND s.attempts = u.attempt
        "#,
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&outputs)
    .bind(&errors)
    .bind(&workers)
    .bind(&attempts)
    .execute(conn)
    .await?;
    Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
}

/// Finishes the executions whose steps are all terminal (or one of which failed), and marks the
/// others `running`. Returns the ending events.
async fn finish_executions(
    conn: &mut PgConnection,
    executions: &HashMap<Uuid, LockedExecution>,
    last_outcome: &HashMap<Uuid, Uuid>,
    node_name: &str,
) -> Result<Vec<NewEvent>> {
    let touched: Vec<Uuid> = last_outcome.keys().copied().collect();
    if touched.is_empty() {
        return Ok(Vec::new());
    }
    let steps = sqlx::query_as::<_, StepState>(
        "SELECT step_id, execution_id, name, status, attempts, output, error
         FROM lineq.steps WHERE execution_id = ANY($1) ORDER BY created_at, step_id",
    )
    .bind(&touched)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_execution: HashMap<Uuid, Vec<&StepState>> = HashMap::new();
    for s in &steps {
        by_execution.entry(s.execution_id).or_default().push(s);
    }

    let (mut ids, mut statuses, mut outputs, mut errors) = (vec![], vec![], vec![], vec![]);
    let mut events = Vec::new();
    for (execution_id, steps) in by_execution {
        let Some(exec) = executions.get(&execution_id) else {
            continue;
        };
        if matches!(exec.status.as_str(), "completed" | "failed" | "cancelled") {
            continue;
        }
        let failed = steps.iter().find(|s| s.status == "failed");
        let all_completed = steps.iter().all(|s| s.status == "completed");
        let (status, output, error, event_type) = if let Some(f) = failed {
            let error = json!({ "step": f.name, "error": f.error });
            (
                "failed",
                None,
                Some(error),
                Some(EventType::ExecutionFailed),
            )
        } else if all_completed {
            let output = if steps.len() == 1 {
                steps[0].output.clone().unwrap_or(Value::Null)
            } else {
                Value::Object(
                    steps
                        .iter()
                        .map(|s| (s.name.clone(), s.output.clone().unwrap_or(Value::Null)))
                        .collect::<Map<String, Value>>(),
                )
            };
            (
                "completed",
                Some(output),
                None,
                Some(EventType::ExecutionCompleted),
            )
        } else {
            ("running", None, None, None)
        };
        if let (Some(event_type), Some(parent)) = (event_type, last_outcome.get(&execution_id)) {
            let lineage = Lineage {
                execution_id,
                parent_execution_id: exec.parent_execution_id,
                root_execution_id: exec.root_execution_id,
                correlation_id: exec.correlation_id,
                trace_correlation_id: exec.trace_correlation_id,
            };
            events.push(
                NewEvent::new(event_type, lineage, Some(*parent), node_name)
                    .payload(json!({ "status": status, "error": error })),
            );
        }
        ids.push(execution_id);
        statuses.push(status);
        outputs.push(output);
        errors.push(error);
    }
    if ids.is_empty() {
        return Ok(events);
    }
    sqlx::query(
        r#"
        UPDATE lineq.executions e
        SET status = u.status, output = u.output, error = u.error, version = e.version + 1,
            updated_at = clock_timestamp(),
            finished_at = CASE WHEN u.status IN ('completed', 'failed') THEN clock_timestamp() END
        FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[])
             AS u(execution_id, status, output, error)
        WHERE e.execution_id = u.execution_id AND e.status IN ('pending', 'running')
          AND e.status IS DISTINCT FROM u.status
        "#,
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&outputs)
    .bind(&errors)
    .execute(conn)
    .await?;
    Ok(events)
}
