//! The messages orchestrators and workers exchange through PGMQ, and their `meta`: the lineage
//! contract. A message that does not parse, or whose `meta` does not hold, is dead-lettered with
//! the reason — never retried forever, never allowed to stop a consumer.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::Error;
use crate::trace_context::TraceContext;
use crate::validation::check_name;

/// Lineage carried by every message; every event written because of the message inherits it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The correlation id of the execution the message belongs to.
    pub correlation_id: Uuid,
    /// The event that caused this message (for a step message, its `step_enqueued`; for a
    /// result message, the worker's `step_result`).
    pub parent_event_id: Uuid,
    /// The execution that spawned this one, if any.
    pub parent_execution_id: Option<Uuid>,
    /// The root of this execution's tree (itself for a root).
    pub root_execution_id: Uuid,
    /// W3C `traceparent` of the span that sent the message.
    pub traceparent: String,
    /// W3C `tracestate`, passed through untouched.
    #[serde(default)]
    pub tracestate: String,
    /// For a retry: the attempt this message carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// For a retry: why the previous attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_reason: Option<String>,
}

impl Meta {
    /// Checks what serde cannot: the trace context is of W3C form.
    pub fn check(&self) -> Result<TraceContext, Error> {
        TraceContext::parse(&self.traceparent)
            .map_err(|e| Error::MalformedMessage(format!("meta.traceparent: {e}")))
    }
}

/// A step for a worker to run. Sent by the orchestrator to the namespace's step queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMessage {
    /// The step row this message runs.
    pub step_id: Uuid,
    /// The execution the step belongs to.
    pub execution_id: Uuid,
    /// The step's name within its execution.
    pub step: String,
    /// The handler a worker must run.
    pub handler: String,
    /// The attempt number, from 1. Redelivery of the same message keeps the attempt (and so the
    /// idempotency key); the read count tells deliveries apart.
    pub attempt: i32,
    /// The handler's input.
    pub input: Value,
    /// How long the handler may run, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// What the handler may know about its execution beyond the lineage: workflow, tags,
    /// metadata and the spawning step (workers may not read `lineq.executions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ExecutionContext>,
    /// Lineage.
    pub meta: Meta,
}

impl StepMessage {
    /// Parses and checks a message body taken from a step queue.
    pub fn parse(body: Option<&Value>) -> Result<Self, Error> {
        let body = body.ok_or_else(|| Error::MalformedMessage("message body is null".into()))?;
        if !body.is_object() {
            return Err(Error::MalformedMessage(format!(
                "expected a JSON object, got {}",
                json_kind(body)
            )));
        }
        let msg: StepMessage = serde_json::from_value(body.clone())
            .map_err(|e| Error::MalformedMessage(format!("step message: {e}")))?;
        msg.meta.check()?;
        check_name("handler", &msg.handler).map_err(|e| Error::MalformedMessage(e.to_string()))?;
        if msg.attempt < 1 {
            return Err(Error::MalformedMessage(format!(
                "attempt must be at least 1, got {}",
                msg.attempt
            )));
        }
        Ok(msg)
    }
}

/// An execution's labels and links, carried to its handlers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionContext {
    /// The workflow (or, for a one-step execution, the handler) the execution runs.
    pub workflow: String,
    /// Its tags.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: crate::tags::Tags,
    /// Its metadata object.
    #[serde(default, skip_serializing_if = "is_empty_object")]
    pub metadata: Value,
    /// The step of the parent execution that spawned it, for a child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_step: Option<String>,
}

fn is_empty_object(v: &Value) -> bool {
    v.is_null() || v.as_object().is_some_and(|o| o.is_empty())
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The handler returned output.
    Completed,
    /// The handler (or the worker on its behalf) failed.
    Failed,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// A short machine-readable kind: `handler_error`, `unknown_handler`, `timeout`, `panic`,
    /// `command_failed`, `output_too_large`, ...
    pub kind: String,
    /// The human-readable reason.
    pub message: String,
    /// Whether another attempt could succeed.
    #[serde(default = "default_true")]
    pub retryable: bool,
}

fn default_true() -> bool {
    true
}

impl StepError {
    /// A new error of `kind`.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            retryable: true,
        }
    }

    /// The same error, marked as one no retry can fix.
    pub fn permanent(mut self) -> Self {
        self.retryable = false;
        self
    }
}

/// The outcome of one attempt, sent by a worker to the results queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    /// The step that ran.
    pub step_id: Uuid,
    /// Its execution.
    pub execution_id: Uuid,
    /// The step's name.
    pub step: String,
    /// The attempt that ended.
    pub attempt: i32,
    /// The worker that ran it.
    pub worker_id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The handler's output, when completed.
    #[serde(default)]
    pub output: Option<Value>,
    /// The failure, when failed.
    #[serde(default)]
    pub error: Option<StepError>,
    /// Child executions the handler started, created by the orchestrator when it records this
    /// result (so a crashed attempt never leaves orphans behind).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildRequest>,
    /// The worker's `action_started` event: the span of the attempt, which the orchestrator's
    /// span for this result links to (its parent is the `step_result` span in `meta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_event_id: Option<Uuid>,
    /// Lineage: `parent_event_id` is the worker's `step_result` event.
    pub meta: Meta,
}

/// A child execution a handler asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildRequest {
    /// The child's id, chosen by the worker so the handler can know it at once.
    pub execution_id: Uuid,
    /// A registered workflow, or a handler to run as one step.
    pub target: String,
    /// The child's input.
    #[serde(default)]
    pub input: Value,
    /// The namespace (default: the parent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Whether the spawning step waits for it and completes with its output.
    #[serde(default)]
    pub wait: bool,
}

impl ChildRequest {
    /// A child running `target` (a workflow or handler name) with `input`.
    pub fn new(target: impl Into<String>, input: Value) -> Self {
        Self {
            execution_id: crate::ids::new_id(),
            target: target.into(),
            input,
            namespace: None,
            wait: false,
        }
    }

    /// Runs it in `namespace`.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }
}

impl ResultMessage {
    /// Parses and checks a message body taken from the results queue.
    pub fn parse(body: Option<&Value>) -> Result<Self, Error> {
        let body = body.ok_or_else(|| Error::MalformedMessage("message body is null".into()))?;
        let msg: ResultMessage = serde_json::from_value(body.clone())
            .map_err(|e| Error::MalformedMessage(format!("result message: {e}")))?;
        msg.meta.check()?;
        match (msg.outcome, &msg.output, &msg.error) {
            (Outcome::Failed, _, None) => Err(Error::MalformedMessage(
                "a failed result must carry an error".into(),
            )),
            _ => Ok(msg),
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::new_id;
    use serde_json::json;

    fn meta() -> Meta {
        let corr = new_id();
        Meta {
            correlation_id: corr,
            parent_event_id: new_id(),
            parent_execution_id: None,
            root_execution_id: new_id(),
            traceparent: TraceContext::for_event(corr, new_id()).to_string(),
            tracestate: String::new(),
            attempt: None,
            retry_reason: None,
        }
    }

    #[test]
    fn step_message_round_trip() {
        let m = StepMessage {
            step_id: new_id(),
            execution_id: new_id(),
            step: "s".into(),
            handler: "echo".into(),
            attempt: 1,
            input: json!({"a": 1}),
            timeout_ms: None,
            context: None,
            meta: meta(),
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(StepMessage::parse(Some(&v)).unwrap(), m);
    }

    #[test]
    fn malformed_step_messages_say_why() {
        let good = serde_json::to_value(StepMessage {
            step_id: new_id(),
            execution_id: new_id(),
            step: "s".into(),
            handler: "echo".into(),
            attempt: 1,
            input: json!(null),
            timeout_ms: None,
            context: None,
            meta: meta(),
        })
        .unwrap();
        let cases: Vec<(Option<Value>, &str)> = vec![
            (None, "null"),
            (Some(json!("hello")), "a string"),
            (Some(json!({"step_id": "x"})), "step message"),
            (
                Some({
                    let mut v = good.clone();
                    v["meta"]["traceparent"] = json!("nope");
                    v
                }),
                "meta.traceparent",
            ),
            (
                Some({
                    let mut v = good.clone();
                    v["meta"].as_object_mut().unwrap().remove("correlation_id");
                    v
                }),
                "correlation_id",
            ),
            (
                Some({
                    let mut v = good.clone();
                    v["attempt"] = json!(0);
                    v
                }),
                "attempt",
            ),
            (
                Some({
                    let mut v = good.clone();
                    v["handler"] = json!("rm -rf /");
                    v
                }),
                "handler",
            ),
        ];
        for (body, needle) in cases {
            let err = StepMessage::parse(body.as_ref()).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }
}
