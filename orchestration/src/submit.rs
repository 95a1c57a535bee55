//! Submission: an execution, its step, its first events and its first message, in one
//! transaction. A retried submit with the same idempotency key returns the first execution and
//! writes nothing.

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use lineq_shared::error::{Error, Result};
use lineq_shared::event::{EventType, NewEvent, insert_events};
use lineq_shared::execution::Execution;
use lineq_shared::ids::new_id;
use lineq_shared::labels::{Tags, check_metadata, check_tags};
use lineq_shared::message::{Meta, StepMessage};
use lineq_shared::queue;
use lineq_shared::validation::{
    MAX_INPUT_BYTES, Namespace, check_idempotency_key, check_json_size, check_name,
};

/// What to run. Build one with [`SubmitRequest::new`] and its setters.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// The handler to run (a one-step execution).
    pub handler: String,
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
    /// A request to run `handler` with a `null` input in the `default` namespace.
    pub fn new(handler: impl Into<String>) -> Self {
        Self {
            handler: handler.into(),
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
        check_name("handler", &self.handler)?;
        let ns = Namespace::new(&self.namespace)?;
        check_json_size("input", &self.input, MAX_INPUT_BYTES)?;
        if let Some(key) = &self.idempotency_key {
            check_idempotency_key(key)?;
        }
        if self.timeout_ms == Some(0) {
            return Err(lineq_shared::validation::ValidationError::new(
                "timeout_ms",
                "it must be at least 1",
            )
            .into());
        }
        Ok(ns)
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

/// Submits `req`: validates it, then writes the execution, its step, `execution_started`,
/// `workflow_initialized` and `step_enqueued`, and sends the step message, all in one
/// transaction.
pub async fn submit(pool: &PgPool, node_name: &str, req: SubmitRequest) -> Result<Submitted> {
    let namespace = req.validate()?;
    let step_queue = queue::step_queue(&namespace);
    let mut tx = pool.begin().await?;
    if !queue::queue_exists(&mut tx, &step_queue).await? {
        return Err(Error::UnknownNamespace {
            namespace: namespace.to_string(),
        });
    }

    let execution_id = new_id();
    let correlation_id = req.correlation_id.unwrap_or_else(new_id);
    let inserted = sqlx::query_as::<_, Execution>(
        r#"
        INSERT INTO lineq.executions (execution_id, workflow_name, namespace, status, input,
            correlation_id, root_execution_id, idempotency_key, priority, tags, metadata)
        VALUES ($1, $2, $3, 'pending', $4, $5, $1, $6, $7, $8, $9)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING *
        "#,
    )
    .bind(execution_id)
    .bind(&req.handler)
    .bind(namespace.as_str())
    .bind(&req.input)
    .bind(correlation_id)
    .bind(&req.idempotency_key)
    .bind(req.priority)
    .bind(sqlx::types::Json(&req.tags))
    .bind(&req.metadata)
    .fetch_optional(&mut *tx)
    .await?;

    let Some(execution) = inserted else {
        // The key is taken: the insert waited for the first submit to commit, so it is visible.
        let first = sqlx::query_as::<_, Execution>(
            "SELECT * FROM lineq.executions WHERE idempotency_key = $1",
        )
        .bind(&req.idempotency_key)
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        return Ok(Submitted {
            execution: first,
            created: false,
        });
    };

    let lineage = execution.lineage(correlation_id);
    let step_id = new_id();
    let step_name = req.handler.clone();
    let started = NewEvent::new(EventType::ExecutionStarted, lineage, None, node_name).payload(
        json!({ "workflow": req.handler, "namespace": namespace, "correlation_id_given": req.correlation_id.is_some() }),
    );
    let initialized = NewEvent::new(
        EventType::WorkflowInitialized,
        lineage,
        Some(started.event_id),
        node_name,
    )
    .payload(json!({ "steps": [step_name] }));
    let mut enqueued = NewEvent::new(
        EventType::StepEnqueued,
        lineage,
        Some(initialized.event_id),
        node_name,
    )
    .step(step_id, 1);

    let message = StepMessage {
        step_id,
        execution_id,
        step: step_name.clone(),
        handler: req.handler.clone(),
        attempt: 1,
        input: req.input.clone(),
        timeout_ms: req.timeout_ms,
        meta: Meta {
            correlation_id,
            parent_event_id: enqueued.event_id,
            parent_execution_id: None,
            root_execution_id: execution_id,
            traceparent: enqueued.traceparent(),
            tracestate: String::new(),
        },
    };
    let msg_id = queue::send(&mut tx, &step_queue, &serde_json::to_value(&message)?, 0).await?;
    enqueued.payload = json!({
        "step": step_name, "handler": req.handler, "queue": step_queue.as_str(), "msg_id": msg_id,
    });

    sqlx::query(
        r#"
        INSERT INTO lineq.steps (step_id, execution_id, name, handler, namespace, queue, status,
            attempts, max_attempts, timeout_ms, input, msg_id)
        VALUES ($1, $2, $3, $4, $5, $6, 'enqueued', 1, 1, $7, $8, $9)
        "#,
    )
    .bind(step_id)
    .bind(execution_id)
    .bind(&step_name)
    .bind(&req.handler)
    .bind(namespace.as_str())
    .bind(step_queue.as_str())
    .bind(req.timeout_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX)))
    .bind(&req.input)
    .bind(msg_id)
    .execute(&mut *tx)
    .await?;

    insert_events(&mut tx, &[started, initialized, enqueued]).await?;
    tx.commit().await?;
    Ok(Submitted {
        execution,
        created: true,
    })
}
