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
pub mod error;
pub mod executions;
pub mod openapi;

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::middleware;
use axum::routing::{delete, get, patch, post};
use sqlx::PgPool;
use tokio::net::TcpListener;

use lineq_orchestration::Client;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The client the handlers act through.
    pub client: Client,
}

/// The API's routes on `pool`.
pub fn router(pool: PgPool) -> Router {
    let state = AppState {
        client: Client::new(pool),
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
        .route("/healthz", get(executions::healthz))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .fallback(|| async { error::ApiError::no_route() })
        .layer(middleware::from_fn(error::json_errors))
        .with_state(state)
}

/// The API's routes on `pool`, requiring `token` (when given) on every route but `/healthz`.
pub fn router_with_token(pool: PgPool, token: Option<auth::ApiToken>) -> Router {
    let routes = router(pool);
    match token {
        // A layer on the whole router covers the fallback too, so unknown paths answer 401.
        Some(token) => routes.layer(middleware::from_fn_with_state(
            Arc::new(token),
            auth::require_bearer,
        )),
        None => routes,
    }
}

/// Serves the API on `listener` within `limits` until `shutdown` completes, then finishes the
/// requests in flight. With `token`, requests must carry it (see [`router_with_token`]).
pub async fn serve(
    listener: TcpListener,
    pool: PgPool,
    token: Option<auth::ApiToken>,
    limits: crate::http::HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::http::serve(listener, router_with_token(pool, token), limits, shutdown).await
}
