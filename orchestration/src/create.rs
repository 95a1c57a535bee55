//! Creating an execution — a root submitted by a client, or a child started by a step — in the
//! caller's transaction: the row, its steps, `execution_started`, `workflow_initialized`, and
//! the first steps enqueued.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use lineq_shared::error::{Error, Result};
use lineq_shared::event::{EventType, Lineage, NewEvent};
use lineq_shared::execution::Execution;
use lineq_shared::labels::Tags;
use lineq_shared::queue;
use lineq_shared::validation::Namespace;

use crate::enqueue::{ReadyStep, step_input};
use crate::workflow::WorkflowDefinition;

/// Where a child execution hangs in its parent's tree.
#[derive(Debug, Clone)]
pub(crate) struct ParentLink {
    pub execution_id: Uuid,
    pub root_execution_id: Uuid,
    pub correlation_id: Uuid,
    /// The root's correlation id: the trace the child joins.
    pub trace_correlation_id: Uuid,
    /// The event that started the child: its `execution_started` hangs off it.
    pub event_id: Uuid,
    pub step_name: Option<String>,
    pub step_id: Option<Uuid>,
    pub waits: bool,
}

/// Everything needed to create an execution.
#[derive(Debug, Clone)]
pub(crate) struct NewExecution {
    pub execution_id: Uuid,
    pub workflow: WorkflowDefinition,
    pub version: i32,
    pub kind: &'static str,
    pub input: Value,
    pub correlation_id: Uuid,
    pub idempotency_key: Option<String>,
    pub priority: i32,
    pub tags: Tags,
    pub metadata: Value,
    pub parent: Option<ParentLink>,
}

/// The first namespace of `workflow` that has no step queue, if any.
pub(crate) async fn missing_namespace(
    conn: &mut PgConnection,
    workflow: &WorkflowDefinition,
) -> Result<Option<String>> {
    let mut seen = std::collections::BTreeSet::new();
    for s in &workflow.steps {
        seen.insert(workflow.step_namespace(s).to_string());
    }
    for ns in seen {
        let q = queue::step_queue(&Namespace::new(&ns)?);
        if !queue::queue_exists(conn, &q).await? {
            return Ok(Some(ns));
        }
    }
    Ok(None)
}

/// Creates the execution. `Ok(None)` when its idempotency key is taken (nothing was written).
pub(crate) async fn create_execution(
    conn: &mut PgConnection,
    spec: NewExecution,
    node_name: &str,
) -> Result<Option<(Execution, Vec<NewEvent>, Vec<ReadyStep>)>> {
    let wf = &spec.workflow;
    let parent = spec.parent.as_ref();
    let inserted = sqlx::query_as::<_, Execution>(
        r#"
        INSERT INTO lineq.executions (execution_id, workflow_name, workflow_version, namespace,
            status, input, correlation_id, parent_correlation_id, parent_execution_id,
            root_execution_id, parent_event_id, parent_step, parent_step_id, parent_waits,
            idempotency_key, priority, tags, metadata, kind)
        VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, coalesce($9, $1), $10, $11, $12, $13,
            $14, $15, $16, $17, $18)
        ON CONFLICT DO NOTHING
        RETURNING *
        "#,
    )
    .bind(spec.execution_id)
    .bind(&wf.name)
    .bind(spec.version)
    .bind(&wf.namespace)
    .bind(&spec.input)
    .bind(spec.correlation_id)
    .bind(parent.map(|p| p.correlation_id))
    .bind(parent.map(|p| p.execution_id))
    .bind(parent.map(|p| p.root_execution_id))
    .bind(parent.map(|p| p.event_id))
    .bind(parent.and_then(|p| p.step_name.clone()))
    .bind(parent.and_then(|p| p.step_id))
    .bind(parent.is_some_and(|p| p.waits))
    .bind(&spec.idempotency_key)
    .bind(spec.priority)
    .bind(sqlx::types::Json(&spec.tags))
    .bind(&spec.metadata)
    .bind(spec.kind)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(execution) = inserted else {
        return Ok(None);
    };

    let lineage = Lineage {
        execution_id: execution.execution_id,
        parent_execution_id: execution.parent_execution_id,
        root_execution_id: execution.root_execution_id,
        correlation_id: execution.correlation_id,
        trace_correlation_id: parent.map_or(execution.correlation_id, |p| p.trace_correlation_id),
    };
    let started = NewEvent::new(
        EventType::ExecutionStarted,
        lineage,
        parent.map(|p| p.event_id),
        node_name,
    )
    .payload(json!({
        "workflow": wf.name, "version": spec.version, "kind": spec.kind,
        "parent_step": parent.and_then(|p| p.step_name.clone()),
        "parent_waits": parent.is_some_and(|p| p.waits),
    }));
    let initialized = NewEvent::new(
        EventType::WorkflowInitialized,
        lineage,
        Some(started.event_id),
        node_name,
    )
    .payload(json!({ "steps": wf.steps.iter().map(|s| &s.name).collect::<Vec<_>>() }));

    // Step rows, then the ones with no dependencies are ready at once.
    let n = wf.steps.len();
    let (mut ids, mut names, mut handlers, mut nss, mut queues) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut deps, mut max_attempts, mut timeouts, mut retries, mut on_failure, mut params) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut ready = Vec::new();
    for s in &wf.steps {
        let step_id = lineq_shared::ids::new_id();
        let ns = Namespace::new(wf.step_namespace(s))?;
        let q = queue::step_queue(&ns);
        if s.depends_on.is_empty() {
            ready.push(ReadyStep {
                lineage,
                step_id,
                name: s.name.clone(),
                handler: s.handler.clone(),
                queue: q.clone(),
                attempt: 1,
                input: step_input(spec.kind, &spec.input, s.params.as_ref(), &BTreeMap::new()),
                timeout_ms: s.timeout_ms,
                parent_event: initialized.event_id,
                delay: std::time::Duration::ZERO,
                retry_reason: None,
            });
        }
        ids.push(step_id);
        names.push(s.name.clone());
        handlers.push(s.handler.clone());
        nss.push(ns.to_string());
        queues.push(q.to_string());
        deps.push(json!(s.depends_on));
        max_attempts.push(i32::try_from(s.retry.max_attempts).unwrap_or(1));
        timeouts.push(s.timeout_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX)));
        retries.push(serde_json::to_value(&s.retry)?);
        on_failure.push(match s.on_failure {
            crate::workflow::OnFailure::Fail => "fail",
            crate::workflow::OnFailure::Continue => "continue",
        });
        params.push(s.params.clone());
    }
    let positions: Vec<i32> = (0..i32::try_from(n).unwrap_or(i32::MAX)).collect();
    sqlx::query(
        r#"
        INSERT INTO lineq.steps (step_id, execution_id, name, handler, namespace, queue, status,
            depends_on, max_attempts, timeout_ms, retry, on_failure, params, position)
        SELECT u.step_id, $1, u.name, u.handler, u.namespace, u.queue, 'pending',
            ARRAY(SELECT jsonb_array_elements_text(u.deps)), u.max_attempts, u.timeout_ms,
            u.retry, u.on_failure, u.params, u.position
        FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[],
                    $8::int[], $9::bigint[], $10::jsonb[], $11::text[], $12::jsonb[], $13::int[])
             AS u(step_id, name, handler, namespace, queue, deps, max_attempts, timeout_ms,
                  retry, on_failure, params, position)
        "#,
    )
    .bind(execution.execution_id)
    .bind(&ids)
    .bind(&names)
    .bind(&handlers)
    .bind(&nss)
    .bind(&queues)
    .bind(&deps)
    .bind(&max_attempts)
    .bind(&timeouts)
    .bind(&retries)
    .bind(&on_failure)
    .bind(&params)
    .bind(&positions)
    .execute(&mut *conn)
    .await?;
    if ready.is_empty() {
        return Err(Error::InvalidState(format!(
            "workflow {} has no step without dependencies",
            wf.name
        )));
    }
    Ok(Some((execution, vec![started, initialized], ready)))
}
