//! Spans over OTLP: a trace per root execution that reads as its story — the execution, its
//! steps, each step's attempts, and the handler's own spans — with every lineage event in it.
//!
//! The shape ([`SpanShape`]):
//! - one span per **execution**, from `execution_started` to its end (`execution order`), the
//!   root of the trace; a child execution's sits under the step that spawned it;
//! - one span per **step** under it, from its first `step_enqueued` to its outcome
//!   (`step charge`), so a slow step is one long bar at depth 2 however long the workflow;
//! - one span per **attempt** (a delivery to a worker) under its step, from the claim to the
//!   report (`attempt charge`), under the worker's service name;
//! - the **handler's own spans** under its attempt ([`handler_spans_layer`],
//!   [`handler_context`]; command handlers get the attempt as `TRACEPARENT`).
//!
//! Every lineage event is a span event of the span it belongs to, with its `event_id`, type and
//! parent: the attempt's `action_*` and `step_result`, the step's other events, the execution's
//! events of no step. A fan-in step's span links to the spans of its dependencies.
//!
//! Ids are derived, not random (see [`crate::trace_context`]): the trace id is the root
//! execution's correlation id, and a span's id is the tail of the id of the event that opens it
//! (`execution_started`, the step's first `step_enqueued`, `action_started`), the span id that
//! event's row stores. So any process can name a parent span it did not create, the claim's
//! `traceparent` already names the attempt's span, and `lineq.events.span_id` leads from a span
//! to its row.
//!
//! Spans are built as [`SpanData`] and handed straight to the batch span processor rather than
//! made through the `Tracer` API: in opentelemetry 0.33 `SpanBuilder` has no `trace_id` or
//! `span_id` field any more, and `SdkTracer::build_with_context` takes every span id from the
//! provider's `IdGenerator` (and a root span's trace id too), so the Tracer API cannot produce
//! the derived ids. Building the finished span directly is exact by construction. A handler's
//! own spans have no lineage row and go through the Tracer API (tracing-opentelemetry).
//!
//! Who exports what, always after the transaction that ends the span commits ([`export_spans`]):
//! - the worker: each attempt's span, when it reports the outcome;
//! - the orchestrator that commits a step's outcome or an execution's end: their spans, read
//!   back from the events (`lineq-orchestration`'s `spans.rs`), and the spans of attempts whose
//!   worker stopped before reporting (abandoned: from the claim to the next delivery);
//! - for a worker that exports no spans itself (one that speaks the SQL interface from another
//!   language), the orchestrator that reads its results, under that worker's service name.
//!
//! When tracing is off (no endpoint configured) every function here is one atomic load: no
//! exporter exists, no thread runs, nothing connects anywhere.
//!
//! Configuration ([`init`]): the endpoint from [`TelemetryConfig::otlp_endpoint`], else
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`; the transport from
//! `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default, or
//! `http/protobuf`). The SDK itself reads the rest: `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` (resource), `OTEL_TRACES_SAMPLER` / `_ARG` (sampler),
//! `OTEL_BSP_*` (batching), `OTEL_EXPORTER_OTLP_HEADERS` / `_TIMEOUT` / `_COMPRESSION`.
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn tracing off.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use opentelemetry::InstrumentationScope;
pub use opentelemetry::KeyValue;
use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    SamplingDecision, SdkTracerProvider, ShouldSample, SpanData, SpanEvents, SpanLinks,
    SpanProcessor,
};
use serde_json::Value;
use uuid::Uuid;

#[cfg(feature = "otlp")]
use crate::error::Error;
use crate::error::Result;
use crate::event::{EventType, NewEvent};
use crate::trace_context::TraceContext;
use crate::validation::ValidationError;

#[cfg(feature = "otlp")]
mod otlp;

/// How long an exit waits for pending spans to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// True while a pipeline is installed: the one check every export makes first.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The installed pipeline.
static PIPELINE: RwLock<Option<Arc<Pipeline>>> = RwLock::new(None);

/// What [`init`] needs.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// The OTLP endpoint, e.g. `http://localhost:4317` (gRPC) or `http://localhost:4318`
    /// (HTTP/protobuf; `/v1/traces` is appended when the URL has no path, as for
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`). Overrides the environment; `None` reads it.
    pub otlp_endpoint: Option<String>,
    /// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` sets one.
    pub service_name: String,
}

impl TelemetryConfig {
    /// A configuration for `service_name`, with the endpoint from the environment.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            otlp_endpoint: None,
            service_name: service_name.into(),
        }
    }

    /// Sets (or, with `None`, leaves to the environment) the endpoint.
    pub fn otlp_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.otlp_endpoint = endpoint.filter(|e| !e.trim().is_empty());
        self
    }
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Transport {
    /// OTLP/gRPC (Jaeger: port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (Jaeger: port 4318).
    HttpProtobuf,
}

/// Keeps tracing on; [`TelemetryGuard::shutdown`] (or dropping it) flushes pending spans and
/// turns it off.
#[derive(Debug)]
#[must_use = "dropping the guard shuts tracing down"]
pub struct TelemetryGuard {
    endpoint: Option<String>,
    transport: Option<Transport>,
}

impl TelemetryGuard {
    /// The endpoint spans go to, or `None` when tracing is off.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The transport, when tracing is on.
    pub fn transport(&self) -> Option<Transport> {
        self.transport
    }

    /// Flushes pending spans (waiting at most a few seconds) and turns tracing off. Runs the
    /// blocking flush off the async threads, so the gRPC client can still make progress on them.
    pub async fn shutdown(mut self) {
        if self.endpoint.take().is_some() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = tokio::task::spawn_blocking(shutdown).await;
            } else {
                shutdown();
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if self.endpoint.take().is_some() {
            shutdown();
        }
    }
}

/// Spans buffered for export before the SDK starts dropping them (about 1 KiB each).
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 32_768;

/// Spans sent per OTLP export request unless `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` says otherwise.
pub const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 2_048;

/// Installs the span pipeline when an endpoint is configured (see the module docs), and the
/// global tracer provider over the same batch processor, so spans a handler makes with the
/// `opentelemetry` API under its step's `traceparent` go to the same place. Call it inside a
/// Tokio runtime (the gRPC client needs one) and keep the guard until the process ends.
///
/// With no endpoint configured it does nothing: no exporter, no thread, no connection.
pub fn init(config: TelemetryConfig) -> Result<TelemetryGuard> {
    let off = TelemetryGuard {
        endpoint: None,
        transport: None,
    };
    if env_is("OTEL_SDK_DISABLED", "true") || env_is("OTEL_TRACES_EXPORTER", "none") {
        return Ok(off);
    }
    let explicit = config.otlp_endpoint.clone();
    let Some(endpoint) = explicit.clone().or_else(env_endpoint) else {
        return Ok(off);
    };
    start(config, endpoint, explicit)
}

/// Builds the exporters and installs the pipeline.
#[cfg(feature = "otlp")]
fn start(
    config: TelemetryConfig,
    endpoint: String,
    explicit: Option<String>,
) -> Result<TelemetryGuard> {
    otlp::start(config, endpoint, explicit)
}

/// This build has no exporter: an endpoint is an error, not silence.
#[cfg(not(feature = "otlp"))]
fn start(
    _config: TelemetryConfig,
    endpoint: String,
    _explicit: Option<String>,
) -> Result<TelemetryGuard> {
    Err(ValidationError::new(
        "otlp_endpoint",
        format!(
            "cannot export spans to {endpoint}: lineq-core was built without its `otlp` feature"
        ),
    )
    .into())
}

/// This process's `service.name` while spans are exported.
pub fn service_name() -> Option<String> {
    if !enabled() {
        return None;
    }
    pipeline().map(|p| p.service_name.clone())
}

/// True when spans are being exported.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Flushes pending spans, waiting at most a few seconds, and turns tracing off. Blocking;
/// idempotent. In async code prefer [`TelemetryGuard::shutdown`].
pub fn shutdown() {
    ENABLED.store(false, Ordering::SeqCst);
    let pipeline = match PIPELINE.write() {
        Ok(mut p) => p.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    if let Some(p) = pipeline {
        let others: Vec<Arc<dyn SpanProcessor>> = match p.others.lock() {
            Ok(o) => o.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        };
        for o in others {
            if let Err(e) = o.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                tracing::warn!(error = %e, "flushing spans at exit failed; some may be lost");
            }
        }
        let result = match &p.provider {
            Some(provider) => provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT),
            None => p.sink.shutdown_with_timeout(SHUTDOWN_TIMEOUT),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "flushing spans at exit failed; some may be lost");
        }
    }
}

/// Which of lineq's three spans a [`LineqSpan`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanShape {
    /// An execution, from its `execution_started` to its end: the root of its trace, or, for a
    /// child execution, a child of the step that spawned it. Named by its `execution_started`.
    Execution,
    /// A step, from its first `step_enqueued` to its outcome, with every attempt inside it.
    /// Named by that first `step_enqueued`.
    Step,
    /// One delivery of a step message to a worker, from the claim to the report of its
    /// outcome, with the handler's own spans inside it. Named by its `action_started`.
    Attempt,
}

impl SpanShape {
    /// `execution`, `step` or `attempt`: the span's `lineq.span` attribute and the first word
    /// of its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Execution => "execution",
            Self::Step => "step",
            Self::Attempt => "attempt",
        }
    }
}

/// One of lineq's spans, assembled from the lineage events it covers. Its span id is the one
/// the row of `event` stores (the event id's last 8 bytes), so `lineq.events.span_id` leads from
/// the span to the event that opened it; its trace id is the root execution's correlation id.
#[derive(Debug, Clone)]
pub struct LineqSpan {
    /// Which span it is.
    pub shape: SpanShape,
    /// The event that names it: `execution_started`, the step's first `step_enqueued`, or the
    /// attempt's `action_started`.
    pub event: NewEvent,
    /// The event that names the parent span; `None` for the root of the trace.
    pub parent: Option<Uuid>,
    /// Its start.
    pub start: SystemTime,
    /// Its end.
    pub end: SystemTime,
    /// Its lineage events, each with when it was written: exported as span events.
    pub events: Vec<(NewEvent, SystemTime)>,
    /// Spans it links to, each named by its event, with the link's attributes.
    pub links: Vec<(Uuid, Vec<KeyValue>)>,
    /// `(kind, message)` when what it covers failed.
    pub failure: Option<(String, String)>,
    /// Attributes beyond those every span of its shape carries.
    pub attributes: Vec<KeyValue>,
    /// The `service.name` it is exported under when it is another process's (a worker that
    /// exports no spans of its own); `None` for this process's own.
    pub service: Option<String>,
}

impl LineqSpan {
    /// A span of `shape` named by `event`, under the span `parent` names, with no events yet.
    pub fn new(
        shape: SpanShape,
        event: NewEvent,
        parent: Option<Uuid>,
        start: SystemTime,
        end: SystemTime,
    ) -> Self {
        Self {
            shape,
            event,
            parent,
            start: start.min(end),
            end,
            events: Vec::new(),
            links: Vec::new(),
            failure: None,
            attributes: Vec::new(),
            service: None,
        }
    }

    /// Its span id, as 16 hex digits.
    pub fn span_id_hex(&self) -> String {
        own_span_id(&self.event).to_string()
    }
}

/// Spans handed to an exporter since the process started (sampled-out ones are not counted).
static SPANS_EXPORTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many of lineq's spans this process has handed to its exporters: what a collector should
/// have received once they are flushed.
pub fn spans_exported() -> u64 {
    SPANS_EXPORTED.load(Ordering::Relaxed)
}

/// Exports `spans`, whose events are all committed. Each goes to this process's exporter, or,
/// with [`LineqSpan::service`], to one that names that service.
pub fn export_spans(spans: &[LineqSpan]) {
    if !enabled() || spans.is_empty() {
        return;
    }
    let Some(p) = pipeline() else { return };
    let mut decisions = HashMap::new();
    for s in spans {
        let trace_id = trace_id_of(&s.event);
        if !*decisions
            .entry(trace_id)
            .or_insert_with(|| p.sampled(trace_id))
        {
            continue;
        }
        let (sink, attribute) = match &s.service {
            Some(service) => {
                let sink = p.sink_for(service);
                // Under this process's own name (no processor of its own could be made): say
                // whose it is.
                let attribute = Arc::ptr_eq(&sink, &p.sink)
                    .then(|| KeyValue::new("lineq.service", service.clone()));
                (sink, attribute)
            }
            None => (p.sink.clone(), None),
        };
        let mut data = span_data(s, p.scope.clone());
        data.attributes.extend(attribute);
        sink.on_end(data);
        SPANS_EXPORTED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The OpenTelemetry context a handler runs in: the attempt named by the claim's `traceparent`
/// as a remote parent, flagged sampled when lineq exports that trace. `None` while tracing is
/// off or the `traceparent` is not one.
pub fn handler_context(traceparent: &str) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::TraceContextExt;
    if !enabled() {
        return None;
    }
    let p = pipeline()?;
    let tc = TraceContext::parse(traceparent).ok()?;
    let trace_id = TraceId::from_bytes(tc.trace_id);
    let flags = if p.sampled(trace_id) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            SpanId::from_bytes(tc.span_id),
            flags,
            true,
            TraceState::NONE,
        )),
    )
}

/// A `tracing` layer that makes the spans a handler opens (`#[instrument]` functions,
/// instrumented clients) OpenTelemetry spans under the attempt that runs it, exported with
/// lineq's own spans (through `tracing-opentelemetry`).
///
/// Only spans opened while an OpenTelemetry context is current — inside a handler, which the
/// worker runs in [`handler_context`] — and spans under those are exported: lineq's own
/// `tracing` spans, its database driver's and its exporter's are not. Log events inside an
/// exported span become its span events. While tracing is off the layer does nothing.
pub fn handler_spans_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    tracing_opentelemetry::layer()
        .with_tracer(GlobalTracer)
        .with_filter(InHandler)
}

/// The global tracer provider's tracer, looked up when a span is made: the layer is installed
/// with the log subscriber, before [`init`] has made the provider.
#[derive(Debug, Clone, Copy)]
struct GlobalTracer;

impl opentelemetry::trace::Tracer for GlobalTracer {
    type Span = opentelemetry::global::BoxedSpan;

    fn build_with_context(
        &self,
        builder: opentelemetry::trace::SpanBuilder,
        parent_cx: &opentelemetry::Context,
    ) -> Self::Span {
        opentelemetry::global::tracer("lineq.handler").build_with_context(builder, parent_cx)
    }
}

/// Lets spans through to [`handler_spans_layer`] only inside a handler (see there).
#[derive(Debug, Clone, Copy)]
struct InHandler;

impl<S> tracing_subscriber::layer::Filter<S> for InHandler
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        use opentelemetry::trace::TraceContextExt;
        if !enabled() {
            return false;
        }
        // Under a span this layer already exports; or, for a span, opened in a handler.
        cx.lookup_current().is_some()
            || (meta.is_span() && opentelemetry::Context::map_current(|c| c.has_active_span()))
    }

    fn callsite_enabled(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Decided per span: whether one is in a handler is known only when it is made.
        tracing::subscriber::Interest::sometimes()
    }
}

/// The trace id of the trace `correlation_id` names (a root execution's correlation id), as 32
/// hex digits.
pub fn trace_id_hex(correlation_id: Uuid) -> String {
    TraceContext::for_event(correlation_id, correlation_id).trace_id_hex()
}

struct Pipeline {
    sink: Arc<dyn SpanProcessor>,
    sampler: Box<dyn ShouldSample>,
    scope: InstrumentationScope,
    provider: Option<SdkTracerProvider>,
    /// This process's `service.name`.
    service_name: String,
    /// Makes a processor whose spans carry another service's name ([`LineqSpan::service`]);
    /// `None` in tests, where every span goes to `sink`.
    make_sink: Option<SinkMaker>,
    /// The processors made so far, by service name.
    others: std::sync::Mutex<HashMap<String, Arc<dyn SpanProcessor>>>,
}

type SinkMaker = Box<dyn Fn(&str) -> Option<Arc<dyn SpanProcessor>> + Send + Sync>;

/// At most this many other services get a processor of their own; spans of any more go out
/// under this process's name, with the worker's in `lineq.service`.
const MAX_OTHER_SERVICES: usize = 32;

impl Pipeline {
    /// The processor for spans of `service`: this process's own, or one made for it.
    fn sink_for(&self, service: &str) -> Arc<dyn SpanProcessor> {
        if service == self.service_name {
            return self.sink.clone();
        }
        let Some(make) = &self.make_sink else {
            return self.sink.clone();
        };
        let mut others = match self.others.lock() {
            Ok(o) => o,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(s) = others.get(service) {
            return s.clone();
        }
        if others.len() >= MAX_OTHER_SERVICES {
            return self.sink.clone();
        }
        match make(service) {
            Some(s) => {
                others.insert(service.to_string(), s.clone());
                s
            }
            None => self.sink.clone(),
        }
    }

    /// One decision per trace, made as for its root span (no parent, a fixed name): with a
    /// ratio sampler every process decides the same way for the same trace id, so a trace is
    /// exported whole or not at all.
    fn sampled(&self, trace_id: TraceId) -> bool {
        let r = self.sampler.should_sample(
            None,
            sampling_id(trace_id),
            "lineq",
            &SpanKind::Internal,
            &[],
            &[],
        );
        matches!(r.decision, SamplingDecision::RecordAndSample)
    }
}

/// The id the sampler sees. The SDK's ratio sampler compares the low 8 bytes of the trace id
/// with the ratio, taking them as uniformly random. lineq's trace ids are UUIDs: byte 8 starts
/// with the variant bits `10`, and in a UUIDv7 the next 30 bits are a counter that merely
/// increments within a millisecond — as they are, a ratio below 0.5 would keep no trace at all
/// and a burst of submissions would be kept or dropped together. Mixing all 128 bits (the
/// splitmix64 finalizer) gives the sampler the uniform bits it assumes, and every process still
/// computes the same decision for the same trace.
fn sampling_id(trace_id: TraceId) -> TraceId {
    let v = u128::from_be_bytes(trace_id.to_bytes());
    let mut z = (v as u64) ^ ((v >> 64) as u64).rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    TraceId::from(((v >> 64) << 64) | u128::from(z))
}

fn pipeline() -> Option<Arc<Pipeline>> {
    match PIPELINE.read() {
        Ok(p) => p.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

#[cfg_attr(
    not(feature = "otlp"),
    allow(dead_code, reason = "used by the exporter")
)]
fn install(p: Pipeline) {
    let old = match PIPELINE.write() {
        Ok(mut slot) => slot.replace(Arc::new(p)),
        Err(poisoned) => poisoned.into_inner().replace(Arc::new(p)),
    };
    ENABLED.store(true, Ordering::SeqCst);
    if let Some(old) = old {
        let _ = old.sink.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
    }
}

/// The span `s` describes.
fn span_data(s: &LineqSpan, scope: InstrumentationScope) -> SpanData {
    let trace_id = trace_id_of(&s.event);
    let parent_span_id = s.parent.map_or(SpanId::INVALID, span_id_for);
    let kind = match s.shape {
        SpanShape::Execution | SpanShape::Step => SpanKind::Internal,
        SpanShape::Attempt => SpanKind::Consumer,
    };
    let mut events: Vec<Event> = s
        .events
        .iter()
        .map(|(e, at)| {
            Event::new(
                e.event_type.as_str(),
                (*at).clamp(s.start, s.end),
                event_attributes(e),
                0,
            )
        })
        .collect();
    let status = match &s.failure {
        Some((kind, message)) => {
            events.push(Event::new(
                "exception",
                s.end,
                vec![
                    KeyValue::new("exception.type", kind.clone()),
                    KeyValue::new("exception.message", message.clone()),
                ],
                0,
            ));
            Status::error(message.clone())
        }
        None => Status::Unset,
    };
    // Both are non-exhaustive: filled in place.
    let mut span_events = SpanEvents::default();
    span_events.events = events;
    let mut span_links = SpanLinks::default();
    span_links.links = s
        .links
        .iter()
        .map(|(to, attributes)| {
            let mut a = Vec::with_capacity(attributes.len() + 1);
            a.push(KeyValue::new("event_id", uuid_text(*to)));
            a.extend(attributes.iter().cloned());
            Link::new(
                SpanContext::new(
                    trace_id,
                    span_id_for(*to),
                    TraceFlags::SAMPLED,
                    true,
                    TraceState::NONE,
                ),
                a,
                0,
            )
        })
        .collect();
    SpanData {
        span_context: SpanContext::new(
            trace_id,
            own_span_id(&s.event),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id,
        // A parent span is always another process's or another transaction's.
        parent_span_is_remote: parent_span_id != SpanId::INVALID,
        span_kind: kind,
        name: span_name(s),
        start_time: s.start,
        end_time: s.end,
        attributes: span_attributes(s),
        dropped_attributes_count: 0,
        events: span_events,
        links: span_links,
        status,
        instrumentation_scope: scope,
    }
}

/// The span id the row of `e` stores.
fn own_span_id(e: &NewEvent) -> SpanId {
    SpanId::from_hex(&e.span_id)
        .ok()
        .filter(|s| *s != SpanId::INVALID)
        .unwrap_or_else(|| span_id_for(e.event_id))
}

fn trace_id_of(e: &NewEvent) -> TraceId {
    TraceId::from_hex(&e.trace_id)
        .ok()
        .filter(|t| *t != TraceId::INVALID)
        .unwrap_or_else(|| {
            TraceId::from_bytes(TraceContext::trace_id_for(e.lineage.trace_correlation_id))
        })
}

fn span_id_for(event_id: Uuid) -> SpanId {
    SpanId::from_bytes(TraceContext::span_id_for(event_id))
}

/// `execution order`, `step charge`, `attempt charge`.
fn span_name(s: &LineqSpan) -> Cow<'static, str> {
    let key = match s.shape {
        SpanShape::Execution => "workflow",
        SpanShape::Step | SpanShape::Attempt => "step",
    };
    match s.event.payload.get(key).and_then(Value::as_str) {
        Some(what) => Cow::Owned(format!("{} {what}", s.shape.as_str())),
        None => Cow::Borrowed(s.shape.as_str()),
    }
}

/// A UUID as its hyphenated lowercase text, without going through `Display` (the formatting
/// machinery is most of the cost of a span's five to seven ids).
fn uuid_text(id: Uuid) -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut buf).to_owned()
}

/// What every span of its shape carries: the lineage ids, what it is about, and the event that
/// names it (`event_id`, whose row stores the span's id).
fn span_attributes(s: &LineqSpan) -> Vec<KeyValue> {
    let e = &s.event;
    let l = &e.lineage;
    let mut a = Vec::with_capacity(16 + s.attributes.len());
    a.extend([
        KeyValue::new("lineq.span", s.shape.as_str()),
        KeyValue::new("event_id", uuid_text(e.event_id)),
        KeyValue::new("correlation_id", uuid_text(l.correlation_id)),
        KeyValue::new("execution_id", uuid_text(l.execution_id)),
        KeyValue::new("root_execution_id", uuid_text(l.root_execution_id)),
    ]);
    if let Some(p) = l.parent_execution_id {
        a.push(KeyValue::new("parent_execution_id", uuid_text(p)));
    }
    let text = |key: &str| e.payload.get(key).and_then(Value::as_str);
    match s.shape {
        SpanShape::Execution => {
            if let Some(w) = text("workflow") {
                a.push(KeyValue::new("workflow", w.to_string()));
            }
        }
        SpanShape::Step | SpanShape::Attempt => {
            if let Some(id) = e.step_id {
                a.push(KeyValue::new("step_id", uuid_text(id)));
            }
            for key in ["step", "handler", "queue"] {
                if let Some(v) = text(key) {
                    a.push(KeyValue::new(key, v.to_string()));
                }
            }
        }
    }
    if s.shape == SpanShape::Attempt {
        if let Some(n) = e.attempt {
            a.push(KeyValue::new("attempt", i64::from(n)));
        }
        if let Some(w) = &e.worker_id {
            a.push(KeyValue::new("worker_id", w.clone()));
        }
        a.push(KeyValue::new("node_name", e.node_name.clone()));
        for key in ["msg_id", "delivery"] {
            if let Some(v) = e.payload.get(key).and_then(Value::as_i64) {
                a.push(KeyValue::new(key, v));
            }
        }
    }
    a.extend(s.attributes.iter().cloned());
    a
}

/// A lineage event as a span event's attributes: its id, type and parent, the worker and
/// attempt when it has them, and from its payload what says why (an error as `error.kind` and
/// `error.message`, a retry's reason and delay, a dead letter's reason). The rest of the payload
/// is in its row, which `event_id` names.
fn event_attributes(e: &NewEvent) -> Vec<KeyValue> {
    // Its type is the span event's name.
    let mut a = Vec::with_capacity(6);
    a.push(KeyValue::new("event_id", uuid_text(e.event_id)));
    if let Some(p) = e.parent_event_id {
        a.push(KeyValue::new("parent_event_id", uuid_text(p)));
    }
    if let Some(w) = &e.worker_id {
        a.push(KeyValue::new("worker_id", w.clone()));
    }
    if let Some(n) = e.attempt {
        a.push(KeyValue::new("attempt", i64::from(n)));
    }
    if let Some(v) = e.payload.get("error").filter(|v| !v.is_null()) {
        let (kind, message) = error_in(v);
        a.push(KeyValue::new("error.kind", kind));
        a.push(KeyValue::new("error.message", message));
    }
    for key in ["reason", "retry_reason"] {
        if let Some(t) = e.payload.get(key).and_then(Value::as_str) {
            a.push(KeyValue::new(key, t.chars().take(256).collect::<String>()));
        }
    }
    for key in ["delay_ms", "delivery"] {
        if let Some(n) = e.payload.get(key).and_then(Value::as_i64) {
            a.push(KeyValue::new(key, n));
        }
    }
    a
}

/// `(kind, message)` of an event that records a failure.
/// `(kind, message)` of the failure `e` records, for the events that record one.
pub fn failure_of(e: &NewEvent) -> Option<(String, String)> {
    match e.event_type {
        EventType::ActionFailed
        | EventType::StepFailed
        | EventType::StepAttemptFailed
        | EventType::ExecutionFailed => {
            Some(error_in(e.payload.get("error").unwrap_or(&Value::Null)))
        }
        EventType::MessageDeadLettered => Some((
            "dead_lettered".into(),
            e.payload
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("dead-lettered")
                .to_string(),
        )),
        _ => None,
    }
}

/// Finds the error in a payload's `error`: a [`StepError`] (`{kind, message}`), or one nested
/// under another `error` (an execution's failure names its step's).
fn error_in(v: &Value) -> (String, String) {
    if let Some(message) = v.get("message").and_then(Value::as_str) {
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("error");
        return (kind.to_string(), message.to_string());
    }
    if let Some(inner) = v.get("error").filter(|i| !i.is_null()) {
        return error_in(inner);
    }
    match v {
        Value::String(s) => ("error".into(), s.clone()),
        Value::Null => ("error".into(), "failed".into()),
        other => ("error".into(), other.to_string()),
    }
}

#[cfg_attr(
    not(feature = "otlp"),
    allow(dead_code, reason = "used by the exporter")
)]
fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("lineq")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// The SDK's resource (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`, telemetry.sdk.*), with
/// `service_name` unless the environment names the service.
#[cfg_attr(
    not(feature = "otlp"),
    allow(dead_code, reason = "used by the exporter")
)]
fn resource(service_name: &str) -> Resource {
    let from_env = env_nonempty("OTEL_SERVICE_NAME");
    let in_attributes = env_nonempty("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
        a.split(',')
            .any(|kv| kv.trim_start().starts_with("service.name="))
    });
    let builder = Resource::builder();
    match from_env {
        // The SDK lets OTEL_RESOURCE_ATTRIBUTES win; the specification says OTEL_SERVICE_NAME.
        Some(name) => builder.with_service_name(name),
        None if in_attributes => builder,
        None => builder.with_service_name(service_name.to_string()),
    }
    .build()
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn env_is(name: &str, value: &str) -> bool {
    env_nonempty(name).is_some_and(|v| v.eq_ignore_ascii_case(value))
}

fn env_endpoint() -> Option<String> {
    env_nonempty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

#[cfg(test)]
mod tests;
