//! Handlers: what a worker runs for a step.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use lineq_core::message::StepError;

use crate::context::StepContext;

/// What a handler returns: its output, or why it failed.
pub type HandlerResult = Result<Value, HandlerError>;

/// A handler's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// A short machine-readable kind (default `handler_error`).
    pub kind: String,
    /// What went wrong.
    pub message: String,
    /// Whether another attempt could succeed (default true).
    pub retryable: bool,
}

impl HandlerError {
    /// A retryable failure.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            kind: "handler_error".into(),
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry can fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            ..Self::new(message)
        }
    }

    /// Sets the kind.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl From<HandlerError> for StepError {
    fn from(e: HandlerError) -> Self {
        StepError {
            kind: e.kind,
            message: e.message,
            retryable: e.retryable,
        }
    }
}

/// Something that can run a step. Any `async fn(StepContext, Value) -> HandlerResult` is one.
pub trait Handler: Send + Sync + 'static {
    /// Runs the step.
    fn call(&self, ctx: StepContext, input: Value) -> BoxFuture<'static, HandlerResult>;
}

impl<F, Fut> Handler for F
where
    F: Fn(StepContext, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, ctx: StepContext, input: Value) -> BoxFuture<'static, HandlerResult> {
        Box::pin(self(ctx, input))
    }
}

/// The handlers a worker serves, by name.
#[derive(Clone, Default)]
pub struct Handlers {
    map: HashMap<String, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Handlers {
    /// Registers `handler` as `name`, replacing any earlier one.
    pub fn insert(&mut self, name: impl Into<String>, handler: impl Handler) {
        self.map.insert(name.into(), Arc::new(handler));
    }

    /// Registers a shared handler.
    pub fn insert_arc(&mut self, name: impl Into<String>, handler: Arc<dyn Handler>) {
        self.map.insert(name.into(), handler);
    }

    /// The handler called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Handler>> {
        self.map.get(name).cloned()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.map.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}
