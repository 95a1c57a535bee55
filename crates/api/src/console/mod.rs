//! The web console: `lineq serve` answers at `/` with server-rendered HTML pages beside the REST
//! API, from the same process and with the same authentication.
//!
//! | page | path |
//! | --- | --- |
//! | Executions (filters in the URL, counts by status, cursor paging) | `GET /` |
//! | Execution (DAG, lineage timeline, history, actions) | `GET /executions/{id}` |
//! | Dead letters | `GET /dead-letters` |
//! | Fleet (workers, queues, finished per minute) | `GET /fleet` |
//! | Workflows (definitions, versions, DAG) | `GET /workflows`, `GET /workflows/{name}` |
//! | Login (only when the server has a token) | `GET /login` |
//!
//! Every page is rendered by [`maud`], which escapes every interpolated string; no user value is
//! ever written into a script, a style or a URL scheme position (links are built from UUIDs and
//! percent-encoded parameters only). The assets (one stylesheet, one small script) are compiled
//! into the binary ([`assets`]) and served from `/console/assets/`; the Content-Security-Policy
//! allows scripts and styles from the server only (no `unsafe-inline`), so even a value that
//! slipped through could not run. State changes (cancel, tag, untag, replay, login, logout) are
//! POSTs carrying a CSRF token ([`session`]); the rest are GETs that change nothing.
//!
//! With a token, a browser logs in once at `/login`: the token is checked and kept in an
//! `HttpOnly`, `SameSite=Strict` cookie, which authenticates the console's pages (never the
//! REST API, which takes only `Authorization: Bearer`).

pub mod assets;
pub mod dead_letters;
pub mod execution;
pub mod executions;
pub mod fleet;
pub mod layout;
pub mod login;
pub mod session;
pub mod svg;
pub mod workflows;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sqlx::PgPool;

use lineq_read::ReadPool;

use crate::pools::Pools;
use crate::rest::auth::ApiToken;

/// How the console is set up.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// Jaeger's UI, for "open in Jaeger" links (`LINEQ_JAEGER_URL`); none: no link.
    pub jaeger_url: Option<String>,
    /// A worker without a heartbeat for this long is shown as silent.
    pub silent_after: Duration,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        Self {
            jaeger_url: std::env::var("LINEQ_JAEGER_URL")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            silent_after: Duration::from_secs(30),
        }
    }
}

/// What every console handler shares.
#[derive(Debug, Clone)]
pub struct ConsoleState {
    /// The primary: the actions (cancel, tags, replay) write here.
    pub write: PgPool,
    /// Where the pages read: a replica when one is configured, else the primary.
    pub reads: ReadPool,
    /// The server's token, when it has one (then the login page is in use).
    pub token: Option<Arc<ApiToken>>,
    /// Keys the CSRF tokens.
    pub csrf: Arc<session::CsrfKey>,
    /// The options.
    pub options: Arc<ConsoleOptions>,
}

/// The paths the console owns (everything else is the REST API's).
pub fn is_console_path(path: &str) -> bool {
    path == "/"
        || [
            "/executions",
            "/dead-letters",
            "/fleet",
            "/workflows",
            "/login",
            "/logout",
            "/console/",
        ]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{}/", p.trim_end_matches('/'))))
}

/// The console's routes.
pub fn router(pools: Pools, token: Option<Arc<ApiToken>>, options: ConsoleOptions) -> Router {
    let state = ConsoleState {
        write: pools.write,
        reads: pools.read,
        token,
        csrf: Arc::new(session::CsrfKey::random()),
        options: Arc::new(options),
    };
    Router::new()
        .route("/", get(executions::page))
        .route("/executions/{id}", get(execution::page))
        .route(
            "/executions/{id}/cancel",
            get(execution::confirm_cancel).post(execution::cancel),
        )
        .route("/executions/{id}/tags", post(execution::tag))
        .route("/executions/{id}/untag", post(execution::untag))
        .route("/dead-letters", get(dead_letters::page))
        .route("/dead-letters/{id}/replay", post(dead_letters::replay))
        .route("/fleet", get(fleet::page))
        .route("/workflows", get(workflows::list))
        .route("/workflows/{name}", get(workflows::page))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/console/assets/{file}", get(assets::serve))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// The Content-Security-Policy of every console response: scripts, styles and images from the
/// server only, no inline script or style, no framing, forms only to the server.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        // Not no-referrer: with it a browser sends `Origin: null` on its own POSTs, which the CSRF
        // check refuses. same-origin still tells other sites (a Jaeger link) nothing.
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// An error shown as a page.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<lineq_core::error::Error> for PageError {
    fn from(e: lineq_core::error::Error) -> Self {
        use lineq_core::error::Error;
        let status = match &e {
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Validation(_) | Error::UnknownNamespace { .. } => StatusCode::BAD_REQUEST,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::InvalidState(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "console page failed");
            return Self::new(status, "the server could not answer; see its log");
        }
        Self::new(status, e.to_string())
    }
}

impl From<lineq_core::validation::ValidationError> for PageError {
    fn from(e: lineq_core::validation::ValidationError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.to_string())
    }
}

impl From<crate::rest::error::ApiError> for PageError {
    fn from(e: crate::rest::error::ApiError) -> Self {
        Self::new(e.status, e.detail.message)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("error");
        let body = layout::page(
            title,
            layout::Nav::None,
            None,
            maud::html! {
                h1 { (self.status.as_u16()) " " (title) }
                p.error-message { (self.message) }
                p { a href="/" { "Back to the executions" } }
            },
        );
        (self.status, body).into_response()
    }
}

/// A page handler's result.
pub type PageResult = Result<Response, PageError>;
