//! Operations endpoints of orchestrators and workers (`--metrics-addr`): Prometheus `/metrics`,
//! `/healthz` (200 while the process runs) and `/readyz` (200 when the database answers and is
//! migrated, 503 with the reason otherwise).
//!
//! Metrics go through the [`metrics`] facade: the libraries count where things happen
//! (`lineq_worker::metrics`, `lineq_orchestrator::maintenance::sweeper`) without knowing about Prometheus, and
//! cost nothing when no recorder is installed; this module installs the Prometheus recorder and
//! serves what it renders. The gauges that come from the database are refreshed here
//! ([`gauges`]). Every label value is bounded: queue, namespace, handler (registered ones, else
//! `unknown`), status and state, never an id.

pub mod gauges;

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Histogram buckets for step durations and pickup latency (seconds): from 5 ms to 10 min.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// Which kind of process serves the endpoints: orchestrators also poll the database gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `lineq orchestrator`: queue depths, dead letters, executions by status, the fleet (a
    /// worker is silent after `silent_worker_after` without a heartbeat).
    Orchestrator {
        /// The orchestrator's silent-worker threshold.
        silent_worker_after: Duration,
    },
    /// `lineq worker`: its own counters and histograms.
    Worker,
}

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install_recorder() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .install_recorder()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

#[derive(Clone)]
struct ProbeState {
    pool: PgPool,
    handle: PrometheusHandle,
}

/// The routes: `/metrics`, `/healthz`, `/readyz`.
pub fn router(pool: PgPool, handle: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "alive" })) }),
        )
        .route("/readyz", get(readyz))
        .with_state(ProbeState { pool, handle })
}

async fn metrics_text(State(s): State<ProbeState>) -> Response {
    // Pool gauges cost nothing to read, so they are fresh at every scrape.
    gauges::refresh_pool(&s.pool);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.handle.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<ProbeState>) -> Response {
    match readiness(&s.pool).await {
        Ok(()) => axum::Json(json!({ "status": "ready" })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not_ready", "reason": reason })),
        )
            .into_response(),
    }
}

/// `Ok` when the database answers `SELECT 1` and lineq's migrations are all applied; else why
/// not.
pub async fn readiness(pool: &PgPool) -> Result<(), String> {
    let ping = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool),
    )
    .await;
    match ping {
        Err(_) => return Err("database did not answer within 2 s".to_string()),
        Ok(Err(e)) => return Err(format!("database unreachable: {e}")),
        Ok(Ok(_)) => {}
    }
    match lineq_migrate::is_migrated(pool).await {
        Ok(true) => Ok(()),
        Ok(false) => Err("database is not migrated: run `lineq migrate`".to_string()),
        Err(e) => Err(format!("cannot check migrations: {e}")),
    }
}

/// Serves the endpoints on `listener` within `limits` until `shutdown` completes. For an
/// orchestrator, also refreshes the database gauges every 5 s meanwhile.
pub async fn serve(
    listener: TcpListener,
    pool: PgPool,
    role: Role,
    limits: crate::http::HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = install_recorder().map_err(std::io::Error::other)?;
    let stop = CancellationToken::new();
    let upkeep = tokio::spawn(upkeep(pool.clone(), handle.clone(), role, stop.clone()));
    let served = crate::http::serve(listener, router(pool, handle), limits, shutdown).await;
    stop.cancel();
    let _ = upkeep.await;
    served
}

/// Every 5 s: the recorder's upkeep (histogram buckets are drained into the totals), and the
/// orchestrator's database gauges.
async fn upkeep(pool: PgPool, handle: PrometheusHandle, role: Role, stop: CancellationToken) {
    loop {
        if let Role::Orchestrator {
            silent_worker_after,
        } = role
        {
            if let Err(e) = gauges::refresh_database(&pool, silent_worker_after).await {
                tracing::warn!(error = %e, "refreshing database gauges failed");
            }
        }
        handle.run_upkeep();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
