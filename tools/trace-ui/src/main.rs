//! A Jaeger UI for lineq's traces, on this machine only: receives OTLP over gRPC on
//! 127.0.0.1:4317 (lineq's default endpoint) and serves the Jaeger UI that the `otlp-embedded`
//! crate bundles on http://127.0.0.1:16686/, keeping the last 100 traces in memory.
//!
//! `LINEQ_TRACE_UI_OTLP` and `LINEQ_TRACE_UI_HTTP` change the two addresses.
//!
//! Two things this tool does that `otlp-embedded` 0.0.2 does not, so the UI shows the trace as
//! Jaeger's own collector would: each span's parent reference comes first (the crate lists a
//! span's links first, and the UI takes the first reference for the parent), and spans of
//! processes that set no `service.instance.id` are not all shown under one service (the crate
//! keys processes by that attribute alone: set `OTEL_RESOURCE_ATTRIBUTES=service.instance.id=…`
//! per process).

use otlp_embedded::{Config, State, TraceServiceImpl, TraceServiceServer, ui_app};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let otlp = std::env::var("LINEQ_TRACE_UI_OTLP").unwrap_or_else(|_| "127.0.0.1:4317".into());
    let http = std::env::var("LINEQ_TRACE_UI_HTTP").unwrap_or_else(|_| "127.0.0.1:16686".into());
    let state = State::new(Config {
        max_length: 100,
        max_memory_usage: 1 << 27,
    });
    let listener = tokio::net::TcpListener::bind(&http).await?;
    let ui = ui_app(state.clone(), "/").layer(axum::middleware::map_response(parent_first));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, ui).await {
            eprintln!("UI server: {e}");
        }
    });
    println!("Jaeger UI: http://{http}/   OTLP/gRPC: http://{otlp}");
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(TraceServiceImpl::new(state)))
        .serve(otlp.parse()?)
        .await?;
    Ok(())
}

/// Puts each span's `CHILD_OF` reference before its links in the UI's trace API answers.
async fn parent_first(res: axum::response::Response) -> axum::response::Response {
    let is_json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return axum::response::Response::from_parts(parts, axum::body::Body::empty());
    };
    let mut v: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return axum::response::Response::from_parts(parts, bytes.into()),
    };
    reorder(&mut v);
    let body = serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec());
    let mut res = axum::response::Response::from_parts(parts, body.into());
    res.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
    res
}

fn reorder(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::Array(refs)) = m.get_mut("references") {
                refs.sort_by_key(|r| r.get("refType").and_then(|t| t.as_str()) != Some("CHILD_OF"));
            }
            m.values_mut().for_each(reorder);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(reorder),
        _ => {}
    }
}
