//! The REST API (`lineq serve`): the same operations as the Rust client and the CLI, as JSON
//! over HTTP, with an OpenAPI document at `/openapi.json`.
//!
//! | method and path | what |
//! | --- | --- |
//! | `POST /v1/executions` | submit |
//! | `GET /v1/executions` | list with filters (`tag`, `has_tag`, `metadata`, `status`, `workflow`, `parent`, `root`, `correlation_id`, `since`, `until`), `limit` and `cursor` |
//! | `GET /v1/executions/{id}` | one execution, its version as `ETag` |
//! | `GET /v1/executions/{id}/history` | status, step and tag changes |
//! | `PATCH /v1/executions/{id}/tags` | `{"set": {...}, "remove": [...]}`, `If-Match` optional |
//! | `DELETE /v1/executions/{id}/tags/{key}` | remove one tag |
//! | `POST /v1/executions/{id}/cancel` | cancel it and its descendants |
//! | `GET /v1/workers` | the registered workers and their state |
//! | `GET /v1/queues` | lineq's queues: depth and oldest message age |
//! | `GET /v1/dead-letters`, `GET /v1/dead-letters/{id}` | dead letters |
//! | `POST /v1/dead-letters/{id}/replay` | send a dead letter back to its queue |
//! | `GET /v1/workflows`, `GET /v1/workflows/{name}` | registered workflows and their versions |
//! | `GET /v1/schedules`, `POST /v1/schedules` | cron schedules: list, create |
//! | `GET /v1/schedules/{name}`, `DELETE /v1/schedules/{name}` | one schedule with its next fire times; delete |
//! | `POST /v1/schedules/{name}/pause`, `POST /v1/schedules/{name}/resume` | pause, resume |
//! | `GET /healthz` | liveness and database reachability |
//! | `GET /openapi.json` | this API's OpenAPI 3.1 document |
//!
//! Errors are `{"error": {"code", "field", "message"}}` with 400 (invalid input, nothing
//! written), 401 (no valid bearer token), 404, 405 (method), 408 (request too slow), 409
//! (conflict) or 412 (stale `If-Match`), 413 (body over 2 MiB), 422 (not allowed in the
//! current state), 503 (too many connections). Every error the API answers to an HTTP request has this shape.
//!
//! With a token ([`router_with_token`]), every route but `/healthz` requires
//! `Authorization: Bearer <token>` (see [`auth`]); `lineq serve` refuses to listen on anything
//! but loopback without one.

pub mod auth;
pub mod dead_letters;
pub mod error;
pub mod executions;
pub mod openapi;
pub mod schedules;
pub mod schemas;
pub mod workers;
pub mod workflows;

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::middleware;
use axum::routing::{delete, get, patch, post};
use sqlx::PgPool;
use tokio::net::TcpListener;

use lineq_orchestrator::Client;
use lineq_read::ReadPool;

use crate::pools::Pools;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The client writes act through, on the primary.
    pub client: Client,
    /// Where the GETs read: a replica when one is configured, else the primary.
    pub reads: ReadPool,
}

/// The API's routes on `pool`, for a server without a token.
pub fn router(pool: PgPool) -> Router {
    api_routes(Pools::primary(pool), false)
}

/// The API's routes; `with_token` says whether the server requires one (for its document).
fn api_routes(pools: Pools, with_token: bool) -> Router {
    let state = AppState {
        client: Client::new(pools.write),
        reads: pools.read,
    };
    Router::new()
        .route(
            "/v1/executions",
            post(executions::submit).get(executions::list),
        )
        .route("/v1/executions/{id}", get(executions::get))
        .route("/v1/executions/{id}/history", get(executions::history))
        .route("/v1/executions/{id}/lineage", get(executions::lineage))
        .route("/v1/executions/{id}/tags", patch(executions::patch_tags))
        .route(
            "/v1/executions/{id}/tags/{key}",
            delete(executions::delete_tag),
        )
        .route("/v1/executions/{id}/cancel", post(executions::cancel))
        .route("/v1/workers", get(workers::workers))
        .route("/v1/queues", get(workers::queues))
        .route("/v1/dead-letters", get(dead_letters::dead_letters))
        .route("/v1/dead-letters/{id}", get(dead_letters::dead_letter))
        .route("/v1/dead-letters/{id}/replay", post(dead_letters::replay))
        .route("/v1/workflows", get(workflows::workflows))
        .route("/v1/workflows/{name}", get(workflows::workflow_versions))
        .route(
            "/v1/schedules",
            get(schedules::list).post(schedules::create),
        )
        .route(
            "/v1/schedules/{name}",
            get(schedules::get).delete(schedules::delete),
        )
        .route("/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/v1/schedules/{name}/resume", post(schedules::resume))
        .route("/healthz", get(executions::healthz))
        .route(
            "/openapi.json",
            get(move || async move { Json(openapi::document_json(with_token)) }),
        )
        .fallback(|| async { error::ApiError::no_route() })
        .layer(middleware::from_fn(error::json_errors))
        .with_state(state)
}

/// The API's routes on `pool`, requiring `token` (when given) on every route but `/healthz`.
pub fn router_with_token(pool: PgPool, token: Option<auth::ApiToken>) -> Router {
    let with_token = token.is_some();
    let token = token.map(Arc::new);
    // A layer on the whole router covers the fallback too, so unknown paths answer 401.
    api_routes(Pools::primary(pool), with_token).layer(middleware::from_fn_with_state(
        token,
        crate::access::authenticate,
    ))
}

/// Everything `lineq serve` answers: the REST API, the console at `/` (unless `console` is
/// `None`) and, with a Prometheus `metrics` handle, `/metrics`; all behind the same token.
/// Writes go to `pools.write`, the GETs and the console's pages read on `pools.read`.
pub fn app(
    pools: impl Into<Pools>,
    token: Option<auth::ApiToken>,
    console: Option<crate::console::ConsoleOptions>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Router {
    let pools = pools.into();
    let with_token = token.is_some();
    let token = token.map(Arc::new);
    let mut routes = api_routes(pools.clone(), with_token);
    if let Some(options) = console {
        routes = routes.merge(crate::console::router(
            pools.clone(),
            token.clone(),
            options,
        ));
    }
    if let Some(handle) = metrics {
        // The pool gauges are the primary's, where this server's writes wait for connections.
        let pool = pools.write;
        routes = routes.route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                let pool = pool.clone();
                async move {
                    crate::probes::gauges::refresh_pool(&pool);
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        handle.render(),
                    )
                }
            }),
        );
    }
    routes.layer(middleware::from_fn_with_state(
        token,
        crate::access::authenticate,
    ))
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then finishes the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: crate::http::HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::http::serve(listener, app, limits, shutdown).await
}
