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
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Config, SamplingDecision, SdkTracerProvider, ShouldSample, SpanData,
    SpanEvents, SpanLinks, SpanProcessor,
};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{EventType, NewEvent};
use crate::trace_context::TraceContext;
use crate::validation::ValidationError;

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
    let transport = transport_from_env()?;
    let exporter = Reporting::new(
        build_exporter(transport, explicit.as_deref())?,
        endpoint.clone(),
        EXPORT_WARN_EVERY,
    );
    let resource = resource(&config.service_name);
    let service_name = resource
        .get(&opentelemetry::Key::new("service.name"))
        .map_or_else(|| config.service_name.clone(), |v| v.to_string());
    let mut processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch_config())
        .build();
    processor.set_resource(&resource);
    let processor = Arc::new(processor);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(SharedProcessor(processor.clone()))
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let sink_endpoint = endpoint.clone();
    let make_sink: SinkMaker = Box::new(move |service: &str| {
        let exporter = match build_exporter(transport, explicit.as_deref()) {
            // Each sink warns on its own, naming the service it exports for.
            Ok(e) => Reporting::new(
                e,
                format!("{sink_endpoint} (for {service})"),
                EXPORT_WARN_EVERY,
            ),
            Err(e) => {
                tracing::warn!(error = %e, service, "cannot export spans on behalf of a worker");
                return None;
            }
        };
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch_config())
            .build();
        processor.set_resource(
            &Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        );
        Some(Arc::new(processor) as Arc<dyn SpanProcessor>)
    });
    install(Pipeline {
        sink: processor,
        sampler: Config::default().sampler,
        scope: scope(),
        provider: Some(provider),
        service_name,
        make_sink: Some(make_sink),
        others: std::sync::Mutex::new(HashMap::new()),
    });
    tracing::info!(%endpoint, ?transport, "exporting spans over OTLP");
    Ok(TelemetryGuard {
        endpoint: Some(endpoint),
        transport: Some(transport),
    })
}

/// The batch processor's settings: the `OTEL_BSP_*` variables (BatchConfigBuilder reads them),
/// with larger defaults.
fn batch_config() -> opentelemetry_sdk::trace::BatchConfig {
    // Every attempt, step and execution is a span, so a busy process makes thousands a second: the SDK's default
    // queue (2,048) drops spans under load.
    let mut batch = opentelemetry_sdk::trace::BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        batch = batch.with_max_queue_size(DEFAULT_MAX_QUEUE_SIZE);
    }
    // Exports go one at a time, so the batch size sets how fast spans can leave: the SDK's 512
    // fell behind (and dropped spans) at 20,000 spans a second. 2,048 spans stay well under
    // the 4 MiB message limit of common collectors.
    if std::env::var_os("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none() {
        batch = batch.with_max_export_batch_size(DEFAULT_MAX_EXPORT_BATCH_SIZE);
    }
    batch.build()
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

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("lineq")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// The SDK's resource (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`, telemetry.sdk.*), with
/// `service_name` unless the environment names the service.
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

fn transport_from_env() -> Result<Transport> {
    let (var, value) = match env_nonempty("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
        Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v),
        None => match env_nonempty("OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some(v) => ("OTEL_EXPORTER_OTLP_PROTOCOL", v),
            None => return Ok(Transport::Grpc),
        },
    };
    match value.to_ascii_lowercase().as_str() {
        "grpc" => Ok(Transport::Grpc),
        "http/protobuf" => Ok(Transport::HttpProtobuf),
        _ => Err(ValidationError::new(
            var,
            format!("{value:?} is not supported; use grpc or http/protobuf"),
        )
        .into()),
    }
}

fn build_exporter(
    transport: Transport,
    explicit: Option<&str>,
) -> Result<opentelemetry_otlp::SpanExporter> {
    let invalid = |e: opentelemetry_otlp::ExporterBuildError| -> Error {
        ValidationError::new("otlp_endpoint", format!("cannot export spans: {e}")).into()
    };
    match transport {
        Transport::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc);
            if let Some(url) = explicit {
                b = b.with_endpoint(url);
            }
            b.build().map_err(invalid)
        }
        Transport::HttpProtobuf => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(url) = explicit {
                b = b.with_endpoint(http_traces_url(url));
            }
            b.build().map_err(invalid)
        }
    }
}

/// An endpoint given like `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL) made into the traces URL,
/// as the exporter does for that variable: `http://host:4318` → `http://host:4318/v1/traces`.
fn http_traces_url(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        url.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// At most one warning about failed span exports per this interval.
const EXPORT_WARN_EVERY: Duration = Duration::from_secs(30);

/// An exporter that says when exports fail: a collector that is down or refuses would
/// otherwise lose every span in silence. One warning, with the reason, the endpoint and how
/// many batches and spans failed since the last one, at most every `every`; and one
/// line at info when exports succeed again.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    endpoint: String,
    every: Duration,
    state: std::sync::Mutex<ExportFailures>,
}

#[derive(Debug, Default)]
struct ExportFailures {
    /// When the last warning was logged.
    warned_at: Option<std::time::Instant>,
    /// Failed batches and their spans not yet reported.
    batches: u64,
    spans: u64,
    /// True from the first failure until an export succeeds.
    failing: bool,
}

impl<E> Reporting<E> {
    fn new(inner: E, endpoint: String, every: Duration) -> Self {
        Self {
            inner,
            endpoint,
            every,
            state: std::sync::Mutex::new(ExportFailures::default()),
        }
    }

    /// Records one export's result; returns the warning to log now, if one is due.
    fn record(&self, spans: usize, result: &OTelSdkResult) -> Option<String> {
        let mut st = match self.state.lock() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Err(e) = result else {
            if std::mem::take(&mut st.failing) {
                tracing::info!(endpoint = %self.endpoint, "exporting spans works again");
            }
            return None;
        };
        st.failing = true;
        st.batches += 1;
        st.spans += spans as u64;
        let now = std::time::Instant::now();
        if st
            .warned_at
            .is_some_and(|at| now.duration_since(at) < self.every)
        {
            return None;
        }
        st.warned_at = Some(now);
        let (batches, spans) = (
            std::mem::take(&mut st.batches),
            std::mem::take(&mut st.spans),
        );
        Some(format!(
            "exporting spans to {} failed ({batches} batch(es), {spans} span(s) lost since the last warning; next warning in {} s at the earliest): {e}",
            self.endpoint,
            self.every.as_secs()
        ))
    }
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Reporting<E>
{
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Some(warning) = self.record(spans, &result) {
            tracing::warn!("{warning}");
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The batch processor, shared between the global tracer provider and lineq's own spans.
#[derive(Debug)]
struct SharedProcessor(Arc<dyn SpanProcessor>);

impl SpanProcessor for SharedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    // The resource was given to the processor before it was shared.
}

#[cfg(test)]
#[allow(
    clippy::too_many_lines,
    reason = "a test reads as one story, from setup to its last assertion"
)]
mod tests {
    use super::*;
    use crate::event::Lineage;
    use crate::ids::new_id;
    use serde_json::json;
    use std::sync::Mutex;

    /// Collects finished spans.
    #[derive(Debug, Default)]
    struct Collect(Mutex<Vec<SpanData>>);

    impl SpanProcessor for Collect {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn lineage(root_corr: Uuid) -> Lineage {
        Lineage {
            execution_id: new_id(),
            parent_execution_id: Some(new_id()),
            root_execution_id: new_id(),
            correlation_id: new_id(),
            trace_correlation_id: root_corr,
        }
    }

    fn attr(s: &SpanData, key: &str) -> Option<String> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    fn pipeline_with(sampler: opentelemetry_sdk::trace::Sampler) -> (Pipeline, Arc<Collect>) {
        let sink = Arc::new(Collect::default());
        (
            Pipeline {
                sink: sink.clone(),
                sampler: Box::new(sampler),
                scope: scope(),
                provider: None,
                service_name: "lineq-test".into(),
                make_sink: None,
                others: std::sync::Mutex::new(HashMap::new()),
            },
            sink,
        )
    }

    fn span_attr(s: &SpanData, key: &str) -> Option<String> {
        attr(s, key)
    }

    #[test]
    fn a_span_has_the_ids_its_opening_events_row_stores_and_every_event_as_a_span_event() {
        let corr = new_id();
        let l = lineage(corr);
        let enqueued = NewEvent::new(EventType::StepEnqueued, l, None, "n")
            .step(new_id(), 1)
            .payload(json!({"step": "charge", "handler": "flaky", "queue": "q", "msg_id": 7}));
        let started = NewEvent::new(EventType::ActionStarted, l, Some(enqueued.event_id), "n")
            .step(enqueued.step_id.unwrap(), 2)
            .worker("w1")
            .payload(
                json!({"step": "charge", "handler": "flaky", "queue": "q", "msg_id": 7,
                            "delivery": 1}),
            );
        let failed = NewEvent::new(EventType::ActionFailed, l, Some(started.event_id), "n")
            .step(enqueued.step_id.unwrap(), 2)
            .worker("w1")
            .payload(json!({"step": "charge", "error": {"kind": "flaky", "message": "nope"}}));
        let t0 = SystemTime::now();
        let t1 = t0 + Duration::from_millis(5);
        let mut span = LineqSpan::new(
            SpanShape::Attempt,
            started.clone(),
            Some(enqueued.event_id),
            t0,
            t1,
        );
        span.events = vec![(started.clone(), t0), (failed.clone(), t1)];
        span.failure = failure_of(&failed);
        span.links = vec![(enqueued.event_id, vec![KeyValue::new("step", "x")])];
        let s = span_data(&span, scope());
        assert_eq!(format!("{}", s.span_context.trace_id()), started.trace_id);
        assert_eq!(
            format!("{}", s.span_context.trace_id()),
            corr.simple().to_string()
        );
        assert_eq!(format!("{}", s.span_context.span_id()), started.span_id);
        assert_eq!(span.span_id_hex(), started.span_id);
        assert_eq!(format!("{}", s.parent_span_id), enqueued.span_id);
        assert!(s.parent_span_is_remote);
        assert_eq!(s.span_kind, SpanKind::Consumer);
        assert_eq!(s.name, "attempt charge");
        assert_eq!(span_attr(&s, "lineq.span").as_deref(), Some("attempt"));
        assert_eq!(span_attr(&s, "worker_id").as_deref(), Some("w1"));
        assert_eq!(span_attr(&s, "attempt").as_deref(), Some("2"));
        assert_eq!(span_attr(&s, "msg_id").as_deref(), Some("7"));
        assert_eq!(span_attr(&s, "delivery").as_deref(), Some("1"));
        assert_eq!(span_attr(&s, "handler").as_deref(), Some("flaky"));
        assert_eq!(
            span_attr(&s, "event_id"),
            Some(started.event_id.to_string())
        );
        assert_eq!(
            span_attr(&s, "parent_execution_id"),
            l.parent_execution_id.map(|u| u.to_string())
        );
        assert_eq!(s.status, Status::error("nope"));
        let names: Vec<&str> = s.events.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(names, ["action_started", "action_failed", "exception"]);
        let ev = &s.events.events[1];
        let ev_attr = |k: &str| {
            ev.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(ev_attr("event_id"), Some(failed.event_id.to_string()));
        assert_eq!(
            ev_attr("parent_event_id"),
            Some(started.event_id.to_string())
        );
        // The event's type is its name, not repeated as an attribute.
        assert_eq!(ev.name, "action_failed");
        assert_eq!(ev_attr("event_type"), None);
        assert_eq!(ev_attr("error.message").as_deref(), Some("nope"));
        assert_eq!(ev.timestamp, t1);
        assert_eq!(s.links.links.len(), 1);
        assert_eq!(
            format!("{}", s.links.links[0].span_context.span_id()),
            enqueued.span_id
        );
        assert_eq!(
            s.end_time.duration_since(s.start_time).unwrap(),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn failures_are_found_in_payloads_and_roots_have_no_parent() {
        let corr = new_id();
        let l = lineage(corr);
        let root = NewEvent::new(EventType::ExecutionStarted, l, None, "n")
            .payload(json!({"workflow": "order"}));
        let failed = NewEvent::new(EventType::ExecutionFailed, l, Some(root.event_id), "n").payload(
            json!({"status": "failed", "error": {"step": "s", "error": {"kind": "k", "message": "deep"}}}),
        );
        let now = SystemTime::now();
        let mut span = LineqSpan::new(SpanShape::Execution, root.clone(), None, now, now);
        span.failure = failure_of(&failed);
        let s = span_data(&span, scope());
        assert_eq!(s.parent_span_id, SpanId::INVALID);
        assert!(!s.parent_span_is_remote);
        assert_eq!(s.name, "execution order");
        assert_eq!(s.status, Status::error("deep"));
        let ex = &s.events.events[0];
        assert!(
            ex.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "exception.type" && kv.value.to_string() == "k")
        );
    }

    #[test]
    fn sampling_is_decided_per_trace() {
        let (p, _sink) = pipeline_with(opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(0.5));
        let mut kept = 0;
        // Ids made back to back (one millisecond, one UUIDv7 counter run) must still be sampled
        // independently, and the same way every time.
        for _ in 0..256 {
            let t = TraceId::from_bytes(*new_id().as_bytes());
            let first = p.sampled(t);
            assert_eq!(
                first,
                p.sampled(t),
                "a trace is exported whole or not at all"
            );
            kept += usize::from(first);
        }
        assert!(
            (64..=192).contains(&kept),
            "ratio 0.5 kept {kept} of 256 traces"
        );
    }

    #[test]
    fn off_means_nothing_happens() {
        assert!(!enabled());
        let l = lineage(new_id());
        let e = NewEvent::new(EventType::ExecutionStarted, l, None, "n");
        let now = SystemTime::now();
        export_spans(&[LineqSpan::new(SpanShape::Execution, e, None, now, now)]);
        assert_eq!(spans_exported(), 0);
        assert!(
            handler_context("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_none()
        );
    }

    #[test]
    fn failed_exports_warn_at_most_once_per_interval_and_count_what_was_lost() {
        let r = Reporting::new((), "http://127.0.0.1:1".into(), Duration::from_secs(3600));
        let fail: OTelSdkResult = Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
            "connection refused".into(),
        ));
        let first = r.record(3, &fail).expect("the first failure warns");
        assert!(
            first.contains("http://127.0.0.1:1") && first.contains("connection refused"),
            "{first}"
        );
        assert!(first.contains("1 batch(es), 3 span(s)"), "{first}");
        assert_eq!(r.record(5, &fail), None, "rate-limited");
        assert_eq!(r.record(2, &Ok(())), None);
        // Counted while quiet: the next warning (here forced by a zero interval) says so.
        let r = Reporting::new((), "e".into(), Duration::ZERO);
        assert!(r.record(1, &fail).is_some());
        assert!(
            r.record(4, &fail)
                .is_some_and(|w| w.contains("1 batch(es), 4 span(s)"))
        );
    }

    #[test]
    fn http_endpoints_get_the_traces_path() {
        assert_eq!(http_traces_url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(http_traces_url("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(
            http_traces_url("http://h:4318/custom/path"),
            "http://h:4318/custom/path"
        );
    }

    #[test]
    fn trace_id_of_a_correlation_id_is_its_hex() {
        let c = new_id();
        assert_eq!(trace_id_hex(c), c.simple().to_string());
    }
}
