//! Submission: an execution, its step, its first events and its first message, in one
//! transaction. A retried submit with the same idempotency key returns the first execution and
//! writes nothing.

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use lineq_shared::error::{Error, Result};
use lineq_shared::event::insert_events;
use lineq_shared::execution::Execution;
use lineq_shared::ids::new_id;
use lineq_shared::labels::{Tags, check_metadata, check_tags};
use lineq_shared::telemetry;
use lineq_shared::validation::{
    MAX_INPUT_BYTES, Namespace, ValidationError, check_idempotency_key, check_json_size,
    check_name, check_no_nul,
};

use std::collections::{HashMap, HashSet};

use crate::create::{NewExecution, ParentLink, create_executions};
use crate::workflow::{WorkflowDefinition, store};

/// What to run. Build one with [`SubmitRequest::new`] and its setters.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// A registered workflow (`NAME` for its latest version, `NAME@VERSION`), or else a
    /// handler to run as a one-step execution.
    pub target: String,
    /// The handler's input.
    pub input: Value,
    /// The namespace whose workers run it (default `default`).
    pub namespace: String,
    /// The correlation id; a UUIDv7 is generated when `None`.
    pub correlation_id: Option<Uuid>,
    /// A key that makes a retried submit return the first execution.
    pub idempotency_key: Option<String>,
    /// Priority (higher first).
    pub priority: i32,
    /// Time limit for each attempt.
    pub timeout_ms: Option<u64>,
    /// Labels (see [`lineq_shared::labels`] for the rules).
    pub tags: Tags,
    /// A JSON object of business attributes.
    pub metadata: Value,
    /// An explicit parent execution (it must exist); the new execution joins its tree.
    pub parent_execution_id: Option<Uuid>,
}

impl SubmitRequest {
    /// A request to run `target` (a workflow or handler name) with a `null` input in the
    /// `default` namespace.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            input: Value::Null,
            namespace: Namespace::default_namespace().to_string(),
            correlation_id: None,
            idempotency_key: None,
            priority: 0,
            timeout_ms: None,
            tags: Tags::new(),
            metadata: Value::Object(Default::default()),
            parent_execution_id: None,
        }
    }

    /// Sets the input.
    pub fn input(mut self, input: Value) -> Self {
        self.input = input;
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the time limit for each attempt.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Sets the metadata object.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets an explicit parent execution.
    pub fn parent(mut self, execution_id: Uuid) -> Self {
        self.parent_execution_id = Some(execution_id);
        self
    }

    fn validate(&self) -> Result<Namespace> {
        check_tags(&self.tags)?;
        check_metadata(&self.metadata)?;
        let name = self
            .target
            .split_once('@')
            .map_or(self.target.as_str(), |(n, _)| n);
        check_name("handler", name)?;
        let ns = Namespace::new(&self.namespace)?;
        check_json_size("input", &self.input, MAX_INPUT_BYTES)?;
        check_no_nul("input", &self.input)?;
        if let Some(key) = &self.idempotency_key {
            check_idempotency_key(key)?;
        }
        if self.timeout_ms == Some(0) {
            return Err(ValidationError::new("timeout_ms", "it must be at least 1").into());
        }
        Ok(ns)
    }
}

impl From<&str> for SubmitRequest {
    fn from(target: &str) -> Self {
        SubmitRequest::new(target)
    }
}

impl From<String> for SubmitRequest {
    fn from(target: String) -> Self {
        SubmitRequest::new(target)
    }
}

/// The result of a submit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Submitted {
    /// The execution (the first one, for a repeated idempotency key).
    pub execution: Execution,
    /// False when an execution with the same idempotency key already existed.
    pub created: bool,
}

/// Submits `req`: validates it, resolves the target (a registered workflow, else a handler run
/// as one step), then writes the execution, its steps, `execution_started`,
/// `workflow_initialized`, the first steps' `step_enqueued` and their messages, all in one
/// transaction.
pub async fn submit(pool: &PgPool, node_name: &str, req: SubmitRequest) -> Result<Submitted> {
    let mut out = submit_many(pool, node_name, vec![req]).await?;
    out.pop()
        .ok_or_else(|| Error::InvalidState("submit produced no execution".into()))
}

/// Submits many executions in ONE transaction with a fixed number of statements: all are
/// written or none is. Every request is validated first; an error names the request by its
/// position. Results come back in request order.
pub async fn submit_many(
    pool: &PgPool,
    node_name: &str,
    reqs: Vec<SubmitRequest>,
) -> Result<Vec<Submitted>> {
    let started = telemetry::start();
    let mut namespaces = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.iter().enumerate() {
        namespaces.push(r.validate().map_err(|e| at_position(reqs.len(), i, e))?);
    }
    let mut tx = pool.begin().await?;
    let mut resolved: HashMap<String, (WorkflowDefinition, i32, &'static str)> = HashMap::new();
    let mut checked_namespaces: HashSet<String> = HashSet::new();
    let mut specs = Vec::with_capacity(reqs.len());
    for (i, (req, namespace)) in reqs.iter().zip(&namespaces).enumerate() {
        let cache_key = format!("{}\u{0}{}\u{0}{:?}", req.target, namespace, req.timeout_ms);
        let (workflow, version, kind) = match resolved.get(&cache_key) {
            Some(r) => r.clone(),
            None => {
                let r = resolve(&mut tx, req, namespace)
                    .await
                    .map_err(|e| at_position(reqs.len(), i, e))?;
                for ns in r.0.steps.iter().map(|s| r.0.step_namespace(s).to_string()) {
                    if checked_namespaces.insert(ns.clone()) {
                        let q = lineq_shared::queue::step_queue(&Namespace::new(&ns)?);
                        if !lineq_shared::queue::queue_exists(&mut tx, &q).await? {
                            return Err(at_position(
                                reqs.len(),
                                i,
                                Error::UnknownNamespace { namespace: ns },
                            ));
                        }
                    }
                }
                resolved.insert(cache_key, r.clone());
                r
            }
        };
        let parent = match req.parent_execution_id {
            Some(id) => Some(
                explicit_parent(&mut tx, id)
                    .await
                    .map_err(|e| at_position(reqs.len(), i, e))?,
            ),
            None => None,
        };
        specs.push(NewExecution {
            execution_id: new_id(),
            workflow,
            version,
            kind,
            input: req.input.clone(),
            correlation_id: req.correlation_id.unwrap_or_else(new_id),
            idempotency_key: req.idempotency_key.clone(),
            priority: req.priority,
            tags: req.tags.clone(),
            metadata: req.metadata.clone(),
            parent,
        });
    }
    let ids: Vec<Uuid> = specs.iter().map(|s| s.execution_id).collect();
    let mut created = create_executions(&mut tx, specs, node_name).await?;

    // Requests whose idempotency key was taken get the first execution with that key (the
    // insert waited for it to commit, so it is visible).
    let taken: Vec<String> = ids
        .iter()
        .zip(&reqs)
        .filter(|(id, _)| !created.contains_key(id))
        .filter_map(|(_, r)| r.idempotency_key.clone())
        .collect();
    let existing: HashMap<String, Execution> = if taken.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, Execution>(
            // The IS NOT NULL lets the planner use the partial unique index.
            "SELECT * FROM lineq.executions
             WHERE idempotency_key = ANY($1) AND idempotency_key IS NOT NULL",
        )
        .bind(&taken)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .filter_map(|e| e.idempotency_key.clone().map(|k| (k, e)))
        .collect()
    };

    let mut events = Vec::new();
    let mut out = Vec::with_capacity(reqs.len());
    for (id, req) in ids.iter().zip(&reqs) {
        if let Some(c) = created.remove(id) {
            events.extend(c.events);
            out.push(Submitted {
                execution: c.execution,
                created: true,
            });
        } else {
            let first = req
                .idempotency_key
                .as_ref()
                .and_then(|k| existing.get(k))
                .cloned()
                // Another request of this very batch took the key first.
                .or_else(|| {
                    out.iter()
                        .find(|s: &&Submitted| {
                            s.execution.idempotency_key.is_some()
                                && s.execution.idempotency_key == req.idempotency_key
                        })
                        .map(|s| s.execution.clone())
                })
                .ok_or_else(|| Error::InvalidState(format!("execution {id} was not created")))?;
            out.push(Submitted {
                execution: first,
                created: false,
            });
        }
    }
    insert_events(&mut tx, &events).await?;
    tx.commit().await?;
    // Spans only for what committed.
    telemetry::export(&events, started);
    Ok(out)
}

fn at_position(total: usize, i: usize, e: Error) -> Error {
    if total == 1 {
        return e;
    }
    match e {
        Error::Validation(v) => Error::Validation(ValidationError::named(
            v.field,
            format!("request {i}: {}", v.reason),
        )),
        other => other,
    }
}

/// The workflow a request runs: a registered one, else its handler as one step.
async fn resolve(
    conn: &mut sqlx::PgConnection,
    req: &SubmitRequest,
    namespace: &Namespace,
) -> Result<(WorkflowDefinition, i32, &'static str)> {
    let (name, version) = parse_target(&req.target)?;
    match store::get(&mut *conn, &name, version).await? {
        Some(stored) => Ok((stored.definition, stored.version, "workflow")),
        None if version.is_some() => Err(Error::NotFound {
            what: "workflow",
            id: req.target.clone(),
        }),
        None => Ok((
            WorkflowDefinition::single_step(&name, namespace.as_str(), req.timeout_ms),
            1,
            "task",
        )),
    }
}

/// `NAME` or `NAME@VERSION`.
fn parse_target(target: &str) -> Result<(String, Option<i32>)> {
    match target.split_once('@') {
        None => Ok((target.to_string(), None)),
        Some((name, v)) => {
            let v: i32 = v.parse().ok().filter(|v| *v >= 1).ok_or_else(|| {
                ValidationError::new(
                    "workflow",
                    format!("{target:?}: the version after @ must be a whole number from 1"),
                )
            })?;
            Ok((name.to_string(), Some(v)))
        }
    }
}

/// The link for a client-chosen parent: it must exist; the new execution joins its tree under
/// the parent's latest event.
async fn explicit_parent(conn: &mut sqlx::PgConnection, id: Uuid) -> Result<ParentLink> {
    let row: Option<(Uuid, Uuid, Uuid, Option<Uuid>)> = sqlx::query_as(
        r#"
        SELECT p.root_execution_id, p.correlation_id, r.correlation_id,
               (SELECT e.event_id FROM lineq.events e WHERE e.execution_id = p.execution_id
                ORDER BY e.created_at DESC, e.event_id DESC LIMIT 1)
        FROM lineq.executions p JOIN lineq.executions r ON r.execution_id = p.root_execution_id
        WHERE p.execution_id = $1
        "#,
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((root, correlation, trace_correlation, Some(event))) = row else {
        return Err(ValidationError::new(
            "parent",
            format!("parent execution {id} does not exist"),
        )
        .into());
    };
    Ok(ParentLink {
        execution_id: id,
        root_execution_id: root,
        correlation_id: correlation,
        trace_correlation_id: trace_correlation,
        event_id: event,
        step_name: None,
        step_id: None,
        waits: false,
    })
}
