//! The OTLP exporters (gRPC via tonic, HTTP/protobuf via a blocking reqwest client): the
//! `otlp` feature of lineq-core. Without it, lineq builds spans for nobody and an endpoint is
//! refused.

use super::*;

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Config};

/// Starts exporting to `endpoint` (see [`init`]).
pub(super) fn start(
    config: TelemetryConfig,
    endpoint: String,
    explicit: Option<String>,
) -> Result<TelemetryGuard> {
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
mod tests {
    use super::*;

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
}
