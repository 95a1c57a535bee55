//! The worker runtime: claim loop, handler tasks, visibility extension and cancellation of held
//! steps, reporting and graceful shutdown. The worker's registration heartbeat is in
//! registration.rs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use lineq_core::error::Result;
use lineq_core::ids::{new_id, node_name};
use lineq_core::message::StepError;
use lineq_core::queue;
use lineq_core::validation::{MAX_OUTPUT_BYTES, Namespace, QueueName, ValidationError};
use lineq_core::wakeup::Wakeup;

use crate::builtin;
use crate::claim::{ClaimBatch, ClaimParams, Claimed, claim};
use crate::command::{CommandHandler, CommandSpec};
use crate::context::StepContext;
use crate::handler::{Handler, Handlers};
use crate::registration::Registration;
use crate::report::{Completion, Reporter, report};

/// Most finished steps reported in one transaction.
const REPORT_BATCH: usize = 200;

/// Builds a [`Worker`]. The built-in handlers (`echo`, `sleep`, `fail`) are always registered.
pub struct WorkerBuilder {
    pool: PgPool,
    namespace: Namespace,
    concurrency: usize,
    batch_size: usize,
    visibility_timeout_secs: i32,
    poll_interval: Duration,
    shutdown_grace: Duration,
    max_deliveries: i32,
    worker_id: Option<String>,
    handlers: Handlers,
    registration_heartbeat: Duration,
}

impl WorkerBuilder {
    /// The namespace to serve (default `default`).
    pub fn namespace(mut self, namespace: &str) -> std::result::Result<Self, ValidationError> {
        self.namespace = Namespace::new(namespace)?;
        Ok(self)
    }

    /// How many handlers run at once (default 10).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Most messages claimed per read (default 50; never more than free capacity).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// How long a claimed message stays hidden before another worker may take it; extended
    /// every third of it while the handler runs (default 30 s).
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility_timeout_secs = i32::try_from(d.as_secs()).unwrap_or(i32::MAX).max(1);
        self
    }

    /// Longest wait between looks at the queue when no notification arrives (default 1 s).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// How long running handlers may take to finish after shutdown is asked (default 30 s);
    /// the messages of those still running then are released for other workers.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }

    /// A message delivered more often than this without a reported outcome is dead-lettered as
    /// poison (default 5).
    pub fn max_deliveries(mut self, n: i32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// Sets the worker id (default `<host>-<pid>-<random>`).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// How often the worker heartbeats its row in `lineq.workers` (default 5 s); keep it well
    /// under the orchestrators' silent-worker threshold.
    pub fn registration_heartbeat(mut self, d: Duration) -> Self {
        self.registration_heartbeat = d.max(Duration::from_millis(100));
        self
    }

    /// Registers a handler.
    pub fn handler(mut self, name: impl Into<String>, handler: impl Handler) -> Self {
        self.handlers.insert(name, handler);
        self
    }

    /// Registers a command handler.
    pub fn command(mut self, spec: CommandSpec) -> Self {
        let name = spec.name.clone();
        self.handlers.insert(name, CommandHandler::new(spec));
        self
    }

    /// The worker.
    pub fn build(self) -> Worker {
        let node = node_name();
        let worker_id = self.worker_id.unwrap_or_else(|| {
            let tail = new_id().simple().to_string();
            format!("{node}-{}-{}", std::process::id(), &tail[tail.len() - 6..])
        });
        Worker {
            inner: Arc::new(Inner {
                queue: queue::step_queue(&self.namespace),
                pool: self.pool,
                namespace: self.namespace,
                concurrency: self.concurrency,
                batch_size: self.batch_size,
                visibility_timeout_secs: self.visibility_timeout_secs,
                poll_interval: self.poll_interval,
                shutdown_grace: self.shutdown_grace,
                max_deliveries: self.max_deliveries,
                worker_id,
                node_name: node,
                handlers: self.handlers,
                registration_heartbeat: self.registration_heartbeat,
                token: Default::default(),
                in_flight: Mutex::new(HashMap::new()),
            }),
        }
    }
}

struct Inner {
    pool: PgPool,
    namespace: Namespace,
    queue: QueueName,
    concurrency: usize,
    batch_size: usize,
    visibility_timeout_secs: i32,
    poll_interval: Duration,
    shutdown_grace: Duration,
    max_deliveries: i32,
    worker_id: String,
    node_name: String,
    handlers: Handlers,
    registration_heartbeat: Duration,
    /// The registration's secret, presented with every claim, extension and report.
    token: crate::registration::Token,
    /// Messages held right now (msg id → step and its handler's cancellation), for visibility
    /// extension, cancellation and release on shutdown.
    in_flight: Mutex<HashMap<i64, (uuid::Uuid, CancellationToken)>>,
}

/// A worker: serves one namespace's step queue until shut down.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl Worker {
    /// A builder with defaults and the built-in handlers.
    pub fn builder(pool: PgPool) -> WorkerBuilder {
        let mut handlers = Handlers::default();
        builtin::register(&mut handlers);
        WorkerBuilder {
            pool,
            namespace: Namespace::default_namespace(),
            concurrency: 10,
            batch_size: 50,
            visibility_timeout_secs: 30,
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            max_deliveries: 5,
            worker_id: None,
            handlers,
            registration_heartbeat: Duration::from_secs(5),
        }
    }

    /// This worker's id, as written in its events.
    pub fn id(&self) -> &str {
        &self.inner.worker_id
    }

    /// The namespace it serves.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    /// The handlers it serves.
    pub fn handler_names(&self) -> Vec<&str> {
        self.inner.handlers.names()
    }

    fn identity(&self) -> crate::registration::Identity {
        let inner = &self.inner;
        crate::registration::Identity {
            worker_id: inner.worker_id.clone(),
            host: inner.node_name.clone(),
            namespaces: vec![inner.namespace.as_str().to_string()],
            handlers: inner.handler_names(),
        }
    }

    /// Runs until `shutdown` is cancelled: stops claiming, lets running handlers finish within
    /// the grace period, releases the messages of any still running, reports what finished.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let inner = &self.inner;
        let (wakeup, registration) = self.start(&shutdown).await?;
        // Bounded: if reporting stalls, handlers wait instead of piling up results in memory.
        let (done_tx, done_rx) = mpsc::channel::<Completion>(inner.concurrency * 2);
        let reporter = tokio::spawn(report_loop(self.inner.clone(), done_rx));
        let extender_stop = CancellationToken::new();
        let extender = tokio::spawn(extend_visibility_loop(
            self.inner.clone(),
            extender_stop.clone(),
        ));
        let mut steps = Steps {
            inner: self.inner.clone(),
            permits: Arc::new(Semaphore::new(inner.concurrency)),
            tasks: JoinSet::new(),
            done_tx,
            handler_cancel: CancellationToken::new(),
        };
        steps.claim_loop(&shutdown, &wakeup).await;
        steps.drain().await;
        // The reporter only goes away after every sender is dropped, this one last.
        drop(steps);
        let _ = reporter.await;
        extender_stop.cancel();
        let _ = extender.await;
        registration.stop().await;
        tracing::info!(worker_id = %inner.worker_id, "worker stopped");
        Ok(())
    }

    /// Makes sure the step queue exists, listens for its notifications and registers the worker.
    async fn start(&self, shutdown: &CancellationToken) -> Result<(Wakeup, Registration)> {
        let inner = &self.inner;
        {
            let mut conn = inner.pool.acquire().await?;
            queue::ensure_queue(&mut conn, &inner.queue).await?;
        }
        let wakeup = Wakeup::listen(
            &inner.pool,
            vec![inner.queue.clone()],
            shutdown.child_token(),
        )
        .await?;
        let registration = Registration::start(
            &inner.pool,
            self.identity(),
            inner.token.clone(),
            inner.registration_heartbeat,
            shutdown,
        )
        .await?;
        tracing::info!(worker_id = %inner.worker_id, namespace = %inner.namespace,
            concurrency = inner.concurrency, handlers = ?inner.handlers.names(), "worker started");
        Ok((wakeup, registration))
    }
}

/// The handler tasks of a running worker and what they share.
struct Steps {
    inner: Arc<Inner>,
    /// One per handler that may run at once.
    permits: Arc<Semaphore>,
    tasks: JoinSet<()>,
    /// Where handler tasks send finished steps, for the reporter.
    done_tx: mpsc::Sender<Completion>,
    /// Cancelled when the shutdown grace period is over: the parent of every handler's token.
    handler_cancel: CancellationToken,
}

impl Steps {
    /// Claims steps as capacity frees up and starts their handlers, until `shutdown`.
    async fn claim_loop(&mut self, shutdown: &CancellationToken, wakeup: &Wakeup) {
        let handlers = self.inner.handler_names();
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            while self.tasks.try_join_next().is_some() {}
            let free = self.permits.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = self.permits.clone().acquire_owned() => drop(p),
                }
                continue;
            }
            let qty = free.min(self.inner.batch_size);
            let batch = match self.inner.claim_batch(qty, &handlers).await {
                Ok(b) => {
                    backoff = Duration::from_millis(100);
                    b
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "claim failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            for claimed in batch.claimed {
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    break;
                };
                self.spawn(claimed, permit);
            }
            if batch.read < qty {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = wakeup.wait(self.inner.poll_interval) => {}
                }
            }
        }
    }

    /// Runs a claimed step's handler in a task of its own, which hands the outcome to the
    /// reporter.
    fn spawn(&mut self, claimed: Claimed, permit: OwnedSemaphorePermit) {
        let cancel = self.handler_cancel.child_token();
        lock(&self.inner.in_flight)
            .insert(claimed.msg_id, (claimed.message.step_id, cancel.clone()));
        let inner = self.inner.clone();
        let done_tx = self.done_tx.clone();
        let stopping = self.handler_cancel.clone();
        self.tasks.spawn(async move {
            let completion = run_step(&inner, claimed, cancel).await;
            // A handler that shutdown cut short has no outcome: its message stays held
            // and is released for another worker (`drain`), not reported as failed.
            if stopping.is_cancelled() && completion.outcome.is_err() {
                drop(permit);
                return;
            }
            // The reporter only goes away after every sender is dropped.
            let _ = done_tx.send(completion).await;
            drop(permit);
        });
    }

    /// Lets running handlers finish within the grace period; then cancels those still running
    /// and releases their messages.
    async fn drain(&mut self) {
        let inner = &self.inner;
        let tasks = &mut self.tasks;
        tracing::info!(worker_id = %inner.worker_id, running = tasks.len(),
            grace_ms = inner.shutdown_grace.as_millis() as u64, "worker stopping");
        let drained = tokio::time::timeout(inner.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.handler_cancel.cancel();
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            inner.release_held().await;
        }
    }
}

impl Inner {
    /// The handler names, as the claim and the registration take them.
    fn handler_names(&self) -> Vec<String> {
        self.handlers
            .names()
            .iter()
            .map(|h| h.to_string())
            .collect()
    }

    /// Claims up to `qty` messages of the steps of `handlers`.
    async fn claim_batch(&self, qty: usize, handlers: &[String]) -> Result<ClaimBatch> {
        let token = crate::registration::read(&self.token);
        claim(
            &self.pool,
            ClaimParams {
                namespace: &self.namespace,
                queue: &self.queue,
                visibility_timeout_secs: self.visibility_timeout_secs,
                qty: i32::try_from(qty).unwrap_or(i32::MAX),
                worker_id: &self.worker_id,
                token: &token,
                node_name: &self.node_name,
                max_deliveries: self.max_deliveries,
                handlers,
            },
        )
        .await
    }

    /// Extends the visibility of held messages: pushes their visibility timeout `vt_secs` into
    /// the future. Returns how many this worker still holds.
    async fn extend_visibility(&self, msg_ids: &[i64], vt_secs: i32) -> Result<usize> {
        let token = crate::registration::read(&self.token);
        let held: Vec<i64> = sqlx::query_scalar("SELECT lineq.worker_extend($1, $2, $3, $4, $5)")
            .bind(&self.worker_id)
            .bind(&token)
            .bind(self.namespace.as_str())
            .bind(msg_ids)
            .bind(vt_secs)
            .fetch_all(&self.pool)
            .await?;
        Ok(held.len())
    }

    /// Makes held messages visible again at once, for other workers.
    async fn release(&self, msg_ids: &[i64]) -> Result<usize> {
        self.extend_visibility(msg_ids, 0).await
    }

    /// Releases every message still held (those of handlers that shutdown cut short), so another
    /// worker can run them at once.
    async fn release_held(&self) {
        let held: Vec<i64> = lock(&self.in_flight).drain().map(|(m, _)| m).collect();
        if held.is_empty() {
            return;
        }
        match self.release(&held).await {
            Ok(n) => tracing::warn!(released = n, "released unfinished steps"),
            Err(e) => {
                tracing::error!(error = %e, "could not release unfinished steps; they reappear after the visibility timeout")
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the set inconsistent; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run_step(inner: &Inner, claimed: Claimed, cancel: CancellationToken) -> Completion {
    let m = &claimed.message;
    // The ids of the step's span (its action_started event) too, so a log line leads to Jaeger.
    let tc = lineq_core::trace_context::TraceContext::for_event(
        claimed.lineage.trace_correlation_id,
        claimed.started_event_id,
    );
    let span = tracing::info_span!("step", correlation_id = %m.meta.correlation_id,
        execution_id = %m.execution_id, step = %m.step, attempt = m.attempt,
        delivery = claimed.delivery, trace_id = %tc.trace_id_hex(), span_id = %tc.span_id_hex());
    let started = Instant::now();
    let label = crate::metrics::handler_label(&inner.handlers, &m.handler);
    let ns = inner.namespace.as_str();
    crate::metrics::claimed(
        ns,
        &label,
        m.attempt,
        claimed.delivery,
        claimed.enqueued_at,
        claimed.claimed_at,
    );
    let children = Arc::new(Mutex::new(Vec::new()));
    let outcome = execute(inner, &claimed, cancel, children.clone())
        .instrument(span.clone())
        .await;
    span.in_scope(|| match &outcome {
        Ok(_) => tracing::info!(
            duration_ms = started.elapsed().as_millis() as u64,
            "step completed"
        ),
        Err(e) => tracing::warn!(kind = %e.kind, error = %e.message, "step failed"),
    });
    crate::metrics::finished(ns, &label, outcome.is_ok(), started.elapsed());
    let children = std::mem::take(&mut *lock(&children));
    Completion {
        claimed,
        outcome,
        children,
        duration: started.elapsed(),
    }
}

async fn execute(
    inner: &Inner,
    claimed: &Claimed,
    cancel: CancellationToken,
    children: Arc<Mutex<Vec<lineq_core::message::ChildRequest>>>,
) -> std::result::Result<Value, StepError> {
    let m = &claimed.message;
    let Some(handler) = inner.handlers.get(&m.handler) else {
        return Err(unknown_handler(inner, &m.handler));
    };
    let ctx = step_context(inner, claimed, cancel.clone(), children);
    let task = spawn_handler(handler.as_ref(), ctx, claimed);
    let output = join_handler(task, &m.handler, m.timeout_ms, &cancel).await?;
    check_output_size(&output)?;
    Ok(output)
}

/// The failure of a step sent to a handler this worker does not serve (permanent).
fn unknown_handler(inner: &Inner, handler: &str) -> StepError {
    StepError::new(
        "unknown_handler",
        format!(
            "no handler named {:?} on worker {} (namespace {}); it serves: {}",
            handler,
            inner.worker_id,
            inner.namespace,
            inner.handlers.names().join(", ")
        ),
    )
    .permanent()
}

/// What the handler is told about the step it runs.
fn step_context(
    inner: &Inner,
    claimed: &Claimed,
    cancel: CancellationToken,
    children: Arc<Mutex<Vec<lineq_core::message::ChildRequest>>>,
) -> StepContext {
    let m = &claimed.message;
    StepContext {
        step_id: m.step_id,
        step: m.step.clone(),
        handler: m.handler.clone(),
        attempt: m.attempt,
        delivery: claimed.delivery,
        execution_id: m.execution_id,
        parent_execution_id: m.meta.parent_execution_id,
        root_execution_id: m.meta.root_execution_id,
        correlation_id: m.meta.correlation_id,
        workflow: m
            .context
            .as_ref()
            .map_or_else(|| m.handler.clone(), |c| c.workflow.clone()),
        tags: m
            .context
            .as_ref()
            .map(|c| c.tags.clone())
            .unwrap_or_default(),
        metadata: m
            .context
            .as_ref()
            .map_or_else(|| Value::Object(Default::default()), |c| c.metadata.clone()),
        parent_step: m.context.as_ref().and_then(|c| c.parent_step.clone()),
        worker_id: inner.worker_id.clone(),
        traceparent: claimed.traceparent.clone(),
        event_id: claimed.started_event_id,
        cancellation: cancel,
        children,
    }
}

/// A handler's run: its result, or the panic that ended it.
type HandlerTask = JoinHandle<std::thread::Result<crate::handler::HandlerResult>>;

/// Starts the handler on the step's input.
fn spawn_handler(handler: &dyn Handler, ctx: StepContext, claimed: &Claimed) -> HandlerTask {
    // Its own task, so a panic is caught as a failed attempt instead of killing the worker.
    // In the step's span: a spawned task does not inherit it, and every log line of the
    // handler's work must carry the step's correlation and execution ids.
    // With tracing on, in the attempt's OpenTelemetry context too: the spans the handler opens
    // (`#[instrument]`, instrumented clients) are children of the attempt's span
    // (lineq_core::telemetry::handler_spans_layer).
    let run = std::panic::AssertUnwindSafe(handler.call(ctx, claimed.message.input.clone()))
        .catch_unwind();
    match lineq_core::telemetry::handler_context(&claimed.traceparent) {
        Some(cx) => {
            use opentelemetry::context::FutureExt as _;
            tokio::spawn(run.with_context(cx).in_current_span())
        }
        None => tokio::spawn(run.in_current_span()),
    }
}

/// Waits for the handler's outcome; one that runs past the step's timeout is cancelled and
/// aborted, and a panic is a failure.
async fn join_handler(
    mut task: HandlerTask,
    handler: &str,
    timeout_ms: Option<u64>,
    cancel: &CancellationToken,
) -> std::result::Result<Value, StepError> {
    let joined = match timeout_ms.map(Duration::from_millis) {
        Some(limit) => match tokio::time::timeout(limit, &mut task).await {
            Ok(j) => j,
            Err(_) => {
                cancel.cancel();
                task.abort();
                return Err(StepError::new(
                    "timeout",
                    format!(
                        "handler {:?} ran past its {} ms timeout",
                        handler,
                        limit.as_millis()
                    ),
                ));
            }
        },
        None => task.await,
    };
    match joined {
        Ok(Ok(r)) => r.map_err(StepError::from),
        Ok(Err(panic)) => Err(StepError::new(
            "panic",
            format!("handler {:?} panicked: {}", handler, panic_message(&panic)),
        )),
        Err(e) => Err(StepError::new(
            "aborted",
            format!("handler task ended: {e}"),
        )),
    }
}

/// Refuses an output larger than a step result may be (permanent).
fn check_output_size(output: &Value) -> std::result::Result<(), StepError> {
    let size = serde_json::to_vec(output)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_OUTPUT_BYTES {
        return Err(StepError::new(
            "output_too_large",
            format!("output is {size} bytes; the limit is {MAX_OUTPUT_BYTES}"),
        )
        .permanent());
    }
    Ok(())
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_string())
}

/// Reports finished steps, as many per transaction as are waiting.
async fn report_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Completion>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < REPORT_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=8 {
            let token = crate::registration::read(&inner.token);
            let who = Reporter {
                worker_id: &inner.worker_id,
                token: &token,
                namespace: &inner.namespace,
                node_name: &inner.node_name,
            };
            match report(&inner.pool, &who, &batch).await {
                Ok(()) => break,
                Err(e) if attempt < 8 => {
                    tracing::warn!(error = %e, attempt, "reporting failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => tracing::error!(error = %e, steps = batch.len(),
                    "giving up reporting; these steps will run again after their visibility timeout"),
            }
        }
        let mut held = lock(&inner.in_flight);
        for c in &batch {
            held.remove(&c.claimed.msg_id);
        }
    }
}

/// Extends the visibility of held messages while their handlers run (every third of the
/// visibility timeout), so no other worker takes them, and cancels the handlers of steps the
/// orchestrator has cancelled. Looks twice a second.
async fn extend_visibility_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let extend_every = Duration::from_secs(
        u64::try_from(inner.visibility_timeout_secs / 3)
            .unwrap_or(1)
            .max(1),
    );
    let mut last_extend = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let held: Vec<(i64, uuid::Uuid)> = lock(&inner.in_flight)
            .iter()
            .map(|(m, (s, _))| (*m, *s))
            .collect();
        if held.is_empty() {
            continue;
        }
        if last_extend.elapsed() >= extend_every {
            last_extend = Instant::now();
            let ids: Vec<i64> = held.iter().map(|(m, _)| *m).collect();
            if let Err(e) = inner
                .extend_visibility(&ids, inner.visibility_timeout_secs)
                .await
            {
                tracing::warn!(error = %e, held = ids.len(), "visibility extension failed");
            }
        }
        signal_cancelled(&inner, &held).await;
    }
}

/// Cancels the handlers of the held steps (msg id, step id) the orchestrator has cancelled.
async fn signal_cancelled(inner: &Inner, held: &[(i64, uuid::Uuid)]) {
    let steps: Vec<uuid::Uuid> = held.iter().map(|(_, s)| *s).collect();
    match sqlx::query_scalar::<_, uuid::Uuid>("SELECT lineq.worker_cancelled($1)")
        .bind(&steps)
        .fetch_all(&inner.pool)
        .await
    {
        Ok(cancelled) if !cancelled.is_empty() => {
            for (_, (step, token)) in lock(&inner.in_flight).iter() {
                if cancelled.contains(step) && !token.is_cancelled() {
                    tracing::info!(step_id = %step, "step cancelled; signalling its handler");
                    token.cancel();
                }
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cancellation check failed"),
    }
}
