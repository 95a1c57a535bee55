//! Creating an execution — a root submitted by a client, or a child started by a step — in the
//! caller's transaction: the row, its steps, `execution_started`, `workflow_initialized`, and
//! the first steps enqueued.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use lineq_shared::error::{Error, Result};
use lineq_shared::event::{EventType, Lineage, NewEvent};
use lineq_shared::execution::Execution;
use lineq_shared::labels::Tags;
use lineq_shared::queue;
use lineq_shared::validation::Namespace;

use crate::enqueue::{ReadyStep, send_ready, step_input};
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

/// An execution just created (its first steps already sent), with the events the caller writes
/// together with the rest of its transaction's.
#[derive(Debug)]
pub(crate) struct Created {
    pub execution: Execution,
    pub events: Vec<NewEvent>,
}

/// Creates the execution. `Ok(None)` when its idempotency key is taken (nothing was written).
pub(crate) async fn create_execution(
    conn: &mut PgConnection,
    spec: NewExecution,
    node_name: &str,
) -> Result<Option<Created>> {
    let id = spec.execution_id;
    let mut created = create_executions(conn, vec![spec], node_name).await?;
    Ok(created.remove(&id))
}

/// Creates many executions with a fixed number of statements (one for the rows, one send per
/// queue for all their first steps, one for all their steps — written once, already
/// `enqueued` where they were sent), whatever their number. Executions whose idempotency key (or id) is taken are left out of the
/// result and nothing is written for them.
pub(crate) async fn create_executions(
    conn: &mut PgConnection,
    specs: Vec<NewExecution>,
    node_name: &str,
) -> Result<HashMap<Uuid, Created>> {
    let mut out = HashMap::with_capacity(specs.len());
    if specs.is_empty() {
        return Ok(out);
    }
    let n = specs.len();
    macro_rules! col {
        ($f:expr) => {
            specs.iter().map($f).collect::<Vec<_>>()
        };
    }
    let ids = col!(|s| s.execution_id);
    let names = col!(|s| s.workflow.name.clone());
    let versions = col!(|s| s.version);
    let namespaces = col!(|s| s.workflow.namespace.clone());
    let inputs = col!(|s| s.input.clone());
    let correlations = col!(|s| s.correlation_id);
    let parent_corr = col!(|s| s.parent.as_ref().map(|p| p.correlation_id));
    let parent_exec = col!(|s| s.parent.as_ref().map(|p| p.execution_id));
    let roots = col!(|s| s
        .parent
        .as_ref()
        .map_or(s.execution_id, |p| p.root_execution_id));
    let parent_event = col!(|s| s.parent.as_ref().map(|p| p.event_id));
    let parent_step = col!(|s| s.parent.as_ref().and_then(|p| p.step_name.clone()));
    let parent_step_id = col!(|s| s.parent.as_ref().and_then(|p| p.step_id));
    let waits = col!(|s| s.parent.as_ref().is_some_and(|p| p.waits));
    let keys = col!(|s| s.idempotency_key.clone());
    let priorities = col!(|s| s.priority);
    let tags = col!(|s| serde_json::to_value(&s.tags).unwrap_or_else(|_| json!({})));
    let metadata = col!(|s| s.metadata.clone());
    let kinds = col!(|s| s.kind);
    let inserted = sqlx::query_as::<_, Execution>(
        r#"
        INSERT INTO lineq.executions (execution_id, workflow_name, workflow_version, namespace,
            status, input, correlation_id, parent_correlation_id, parent_execution_id,
            root_execution_id, parent_event_id, parent_step, parent_step_id, parent_waits,
            idempotency_key, priority, tags, metadata, kind)
        SELECT u.id, u.name, u.version, u.namespace, 'pending', u.input, u.corr, u.parent_corr,
            u.parent_exec, u.root, u.parent_event, u.parent_step, u.parent_step_id, u.waits,
            u.key, u.priority, u.tags, u.metadata, u.kind
        FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::jsonb[], $6::uuid[],
                    $7::uuid[], $8::uuid[], $9::uuid[], $10::uuid[], $11::text[], $12::uuid[],
                    $13::bool[], $14::text[], $15::int[], $16::jsonb[], $17::jsonb[], $18::text[])
             WITH ORDINALITY AS u(id, name, version, namespace, input, corr, parent_corr,
                    parent_exec, root, parent_event, parent_step, parent_step_id, waits, key,
                    priority, tags, metadata, kind, ord)
        ORDER BY u.ord
        ON CONFLICT DO NOTHING
        RETURNING *
        "#,
    )
    .bind(&ids)
    .bind(&names)
    .bind(&versions)
    .bind(&namespaces)
    .bind(&inputs)
    .bind(&correlations)
    .bind(&parent_corr)
    .bind(&parent_exec)
    .bind(&roots)
    .bind(&parent_event)
    .bind(&parent_step)
    .bind(&parent_step_id)
    .bind(&waits)
    .bind(&keys)
    .bind(&priorities)
    .bind(&tags)
    .bind(&metadata)
    .bind(&kinds)
    .fetch_all(&mut *conn)
    .await?;
    let mut rows: HashMap<Uuid, Execution> =
        inserted.into_iter().map(|e| (e.execution_id, e)).collect();

    let mut steps = StepColumns::with_capacity(n);
    let mut all_ready: Vec<ReadyStep> = Vec::new();
    let mut pending_out: Vec<(Uuid, Execution, Vec<NewEvent>)> = Vec::with_capacity(n);
    for spec in specs {
        let Some(execution) = rows.remove(&spec.execution_id) else {
            continue;
        };
        let wf = &spec.workflow;
        let parent = spec.parent.as_ref();
        let lineage = Lineage {
            execution_id: execution.execution_id,
            parent_execution_id: execution.parent_execution_id,
            root_execution_id: execution.root_execution_id,
            correlation_id: execution.correlation_id,
            trace_correlation_id: parent
                .map_or(execution.correlation_id, |p| p.trace_correlation_id),
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
        let context = lineq_shared::message::ExecutionContext {
            workflow: wf.name.clone(),
            tags: spec.tags.clone(),
            metadata: spec.metadata.clone(),
            parent_step: parent.and_then(|p| p.step_name.clone()),
        };
        let mut ready = Vec::new();
        for (position, s) in wf.steps.iter().enumerate() {
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
                    context: context.clone(),
                });
            }
            steps.push(execution.execution_id, step_id, position, s, &ns, &q)?;
        }
        if ready.is_empty() {
            return Err(Error::InvalidState(format!(
                "workflow {} has no step without dependencies",
                wf.name
            )));
        }
        all_ready.extend(ready);
        pending_out.push((
            execution.execution_id,
            execution,
            vec![started, initialized],
        ));
    }
    let (enqueued, msg_ids) = send_ready(conn, &all_ready, node_name).await?;
    let sent: HashMap<Uuid, (i64, &ReadyStep)> = all_ready
        .iter()
        .zip(&msg_ids)
        .map(|(r, m)| (r.step_id, (*m, r)))
        .collect();
    steps.mark_sent(&sent);
    steps.insert(conn).await?;
    let mut enqueued_by_exec: HashMap<Uuid, Vec<NewEvent>> = HashMap::new();
    for e in enqueued {
        enqueued_by_exec
            .entry(e.lineage.execution_id)
            .or_default()
            .push(e);
    }
    for (id, execution, mut events) in pending_out {
        events.extend(enqueued_by_exec.remove(&id).unwrap_or_default());
        out.insert(id, Created { execution, events });
    }
    Ok(out)
}

/// Step rows as column arrays, for one `INSERT … SELECT FROM unnest`.
struct StepColumns {
    execution: Vec<Uuid>,
    ids: Vec<Uuid>,
    names: Vec<String>,
    handlers: Vec<String>,
    namespaces: Vec<String>,
    queues: Vec<String>,
    deps: Vec<Value>,
    max_attempts: Vec<i32>,
    timeouts: Vec<Option<i64>>,
    retries: Vec<Value>,
    on_failure: Vec<&'static str>,
    params: Vec<Option<Value>>,
    positions: Vec<i32>,
    statuses: Vec<&'static str>,
    attempts: Vec<i32>,
    msg_ids: Vec<Option<i64>>,
    inputs: Vec<Option<Value>>,
}

impl StepColumns {
    fn with_capacity(n: usize) -> Self {
        Self {
            execution: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            names: Vec::with_capacity(n),
            handlers: Vec::with_capacity(n),
            namespaces: Vec::with_capacity(n),
            queues: Vec::with_capacity(n),
            deps: Vec::with_capacity(n),
            max_attempts: Vec::with_capacity(n),
            timeouts: Vec::with_capacity(n),
            retries: Vec::with_capacity(n),
            on_failure: Vec::with_capacity(n),
            params: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            msg_ids: Vec::with_capacity(n),
            inputs: Vec::with_capacity(n),
        }
    }

    /// Steps whose first message was sent are written as `enqueued`, with the message.
    fn mark_sent(&mut self, sent: &HashMap<Uuid, (i64, &ReadyStep)>) {
        for (i, id) in self.ids.iter().enumerate() {
            if let Some((msg_id, r)) = sent.get(id) {
                self.statuses[i] = "enqueued";
                self.attempts[i] = r.attempt;
                self.msg_ids[i] = Some(*msg_id);
                self.inputs[i] = Some(r.input.clone());
            }
        }
    }

    fn push(
        &mut self,
        execution_id: Uuid,
        step_id: Uuid,
        position: usize,
        s: &crate::workflow::StepDefinition,
        ns: &Namespace,
        q: &lineq_shared::validation::QueueName,
    ) -> Result<()> {
        self.execution.push(execution_id);
        self.ids.push(step_id);
        self.names.push(s.name.clone());
        self.handlers.push(s.handler.clone());
        self.namespaces.push(ns.to_string());
        self.queues.push(q.to_string());
        self.deps.push(json!(s.depends_on));
        self.max_attempts
            .push(i32::try_from(s.retry.max_attempts).unwrap_or(1));
        self.timeouts
            .push(s.timeout_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX)));
        self.retries.push(serde_json::to_value(&s.retry)?);
        self.on_failure.push(match s.on_failure {
            crate::workflow::OnFailure::Fail => "fail",
            crate::workflow::OnFailure::Continue => "continue",
        });
        self.params.push(s.params.clone());
        self.positions
            .push(i32::try_from(position).unwrap_or(i32::MAX));
        self.statuses.push("pending");
        self.attempts.push(0);
        self.msg_ids.push(None);
        self.inputs.push(None);
        Ok(())
    }

    async fn insert(self, conn: &mut PgConnection) -> Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            r#"
            INSERT INTO lineq.steps (step_id, execution_id, name, handler, namespace, queue,
                status, depends_on, max_attempts, timeout_ms, retry, on_failure, params, position,
                attempts, msg_id, input)
            SELECT u.step_id, u.execution_id, u.name, u.handler, u.namespace, u.queue, u.status,
                ARRAY(SELECT jsonb_array_elements_text(u.deps)), u.max_attempts, u.timeout_ms,
                u.retry, u.on_failure, u.params, u.position, u.attempts, u.msg_id, u.input
            FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                        $7::jsonb[], $8::int[], $9::bigint[], $10::jsonb[], $11::text[],
                        $12::jsonb[], $13::int[], $14::text[], $15::int[], $16::bigint[],
                        $17::jsonb[])
                 AS u(step_id, execution_id, name, handler, namespace, queue, deps, max_attempts,
                      timeout_ms, retry, on_failure, params, position, status, attempts, msg_id,
                      input)
            "#,
        )
        .bind(&self.ids)
        .bind(&self.execution)
        .bind(&self.names)
        .bind(&self.handlers)
        .bind(&self.namespaces)
        .bind(&self.queues)
        .bind(&self.deps)
        .bind(&self.max_attempts)
        .bind(&self.timeouts)
        .bind(&self.retries)
        .bind(&self.on_failure)
        .bind(&self.params)
        .bind(&self.positions)
        .bind(&self.statuses)
        .bind(&self.attempts)
        .bind(&self.msg_ids)
        .bind(&self.inputs)
        .execute(conn)
        .await?;
        Ok(())
    }
}
