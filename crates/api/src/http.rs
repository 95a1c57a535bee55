//! The HTTP listeners of `lineq serve` and `--metrics-addr`, with limits that hold before any
//! authentication: how long a client may take to send a request's headers, how long a request
//! may take from its headers to its response (reading the body included), how long a connection
//! may sit with no bytes moving and no request running, and how many connections are open at
//! once. Without them a client that opens sockets and sends nothing, or a byte at a time,
//! holds them for as long as it likes.
//!
//! HTTP/1.1 only (hyper's connection builder, whose header-read timeout `axum::serve` does not
//! expose). Every refusal is JSON in the REST API's error shape.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::rest::error::ApiError;
use lineq_core::validation::ValidationError;

/// Most connections a listener may be configured to hold (the semaphore's own ceiling is far
/// above; this keeps a typo from meaning "unlimited").
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// What a connection over the limit gets before it is closed: the request is not read.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 89\r\n\r\n\
{\"error\":{\"code\":\"unavailable\",\"field\":null,\"message\":\"too many connections; try again\"}}";

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest wait for a request's complete headers, from when the connection opens or the
    /// previous response was sent: a kept-alive connection that sends nothing is closed after
    /// it too.
    pub header_read_timeout: Duration,
    /// Longest time from a request's headers to its response, reading the body included;
    /// past it the client gets 408.
    pub request_timeout: Duration,
    /// Longest time a connection may go with no bytes read or written while no request is
    /// being handled (a client that stops reading a response, or an unread body).
    pub idle_timeout: Duration,
    /// Most connections open at once; one more gets 503 and is closed.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

impl HttpLimits {
    /// Limits from their configured values (seconds), each checked: no timeout of 0 and 1 to
    /// [`MAX_CONNECTIONS_LIMIT`] connections.
    pub fn from_secs(
        header_read: u64,
        request: u64,
        idle: u64,
        max_connections: usize,
    ) -> Result<Self, ValidationError> {
        for (field, secs) in [
            ("http.header_timeout_secs", header_read),
            ("http.request_timeout_secs", request),
            ("http.idle_timeout_secs", idle),
        ] {
            if secs == 0 || secs > 86_400 {
                return Err(ValidationError::new(
                    field,
                    format!("{secs} s: a timeout is 1 to 86400 seconds"),
                ));
            }
        }
        if max_connections == 0 || max_connections > MAX_CONNECTIONS_LIMIT {
            return Err(ValidationError::new(
                "http.max_connections",
                format!("{max_connections}: it must be 1 to {MAX_CONNECTIONS_LIMIT}"),
            ));
        }
        Ok(Self {
            header_read_timeout: Duration::from_secs(header_read),
            request_timeout: Duration::from_secs(request),
            idle_timeout: Duration::from_secs(idle),
            max_connections,
        })
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then lets the
/// requests in flight finish (each within the request timeout) and closes idle connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "connection limit reached; refusing");
            // Best effort and never waiting: the socket buffer takes it or it is lost.
            let _ = stream.try_write(TOO_MANY_CONNECTIONS);
            continue;
        };
        connections.spawn(connection(
            stream,
            router.clone(),
            limits,
            stop.clone(),
            permit,
        ));
    }
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves one connection until the client closes it, a limit closes it, or shutdown.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: HttpLimits,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let router = router.clone();
        let activity = seen.clone();
        async move {
            let _busy = activity.begin();
            let request = router.oneshot(req.map(Body::new));
            let response = match tokio::time::timeout(limits.request_timeout, request).await {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(_) => ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request took longer than {} s",
                        limits.request_timeout.as_secs()
                    ),
                )
                .into_response(),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let wait = activity.idle_left(limits.idle_timeout);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(wait) => {
                if activity.idle_left(limits.idle_timeout).is_zero() {
                    tracing::debug!("HTTP connection idle too long; closing");
                    return; // dropping the connection closes the socket
                }
            }
        }
    }
}

/// When a connection last moved bytes, and how many of its requests are being handled.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks a request as being handled until the guard drops.
    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// How long until the connection has been idle for `timeout`; while a request is being
    /// handled, the whole timeout (its own limit is the request timeout).
    fn idle_left(&self, timeout: Duration) -> Duration {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return timeout;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let idle = self.start.elapsed().saturating_sub(last);
        timeout.saturating_sub(idle)
    }
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // Idle time counts from the end of the request, not from its last byte.
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that records when bytes last moved through it.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_response_is_well_formed() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "unavailable");
    }

    #[test]
    fn limits_are_checked() {
        assert!(HttpLimits::from_secs(10, 30, 60, 1024).is_ok());
        assert_eq!(
            HttpLimits::from_secs(0, 30, 60, 1).unwrap_err().field,
            "http.header_timeout_secs"
        );
        assert_eq!(
            HttpLimits::from_secs(1, 1, 1, 0).unwrap_err().field,
            "http.max_connections"
        );
    }
}
