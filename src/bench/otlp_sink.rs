//! An OTLP receiver in this process (the collector's gRPC TraceService), so the traced
//! throughput row measures real span export over a real connection without any other program.
//!
//! It counts spans without decoding them: each request is read only down to its list of spans
//! (prost skips every other field, and each span stays a slice of undecoded bytes). A collector
//! runs elsewhere in production, so what it spends decoding is not lineq's cost, and here it
//! would compete with lineq for the same two cores. The tracing tests decode every span in full
//! (tests/tracing.rs).

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};

/// `ExportTraceServiceRequest`, as far as counting its spans needs (same field numbers).
#[derive(Clone, PartialEq, prost::Message)]
struct ExportRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<bytes::Bytes>,
}

/// The TraceService: counts the spans of every `Export` call.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl tonic::server::NamedService for Counter {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tonic::server::UnaryService<ExportRequest> for Counter {
    type Response = ExportTraceServiceResponse;
    type Future = Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<ExportRequest>) -> Self::Future {
        let n: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n, Ordering::Relaxed);
        ready(Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        })))
    }
}

impl<B> Service<http::Request<B>> for Counter
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The service has one method, Export, so every call is one.
        let counter = self.clone();
        Box::pin(async move {
            let codec =
                tonic_prost::ProstCodec::<ExportTraceServiceResponse, ExportRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(counter, req).await)
        })
    }
}

/// A running receiver; stops when dropped.
pub struct Sink {
    addr: SocketAddr,
    spans: Counter,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Sink {
    /// Listens on a free loopback port, served by a thread of its own with its own runtime: a
    /// collector is another process, so the receiver must not run its requests on the worker
    /// threads of the orchestrators and workers it measures (its CPU still counts, scheduled
    /// by the OS as a collector's would be).
    pub async fn start() -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let spans = Counter::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = spans.clone();
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        // The exporter then cannot connect, and the bench reports the spans
                        // that never arrived.
                        eprintln!("warning: the OTLP receiver could not start: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("warning: the OTLP receiver could not listen: {e}");
                            return;
                        }
                    };
                    let incoming = futures::stream::unfold(listener, |l| async move {
                        Some((l.accept().await.map(|(s, _)| s), l))
                    });
                    let _ = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })?;
        Ok(Self {
            addr,
            spans,
            stop: Some(tx),
        })
    }

    /// The endpoint to export to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Spans received so far.
    pub fn received(&self) -> usize {
        self.spans.0.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
