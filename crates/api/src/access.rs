//! Who may reach what, for the whole server: the REST API's bearer token and the console's
//! login session meet here, so neither surface depends on the other to be protected.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::console::{is_console_path, session};
use crate::rest::auth::{ApiToken, OPEN_PATHS, bearer, require_bearer};

/// Middleware of the whole server (REST API and console): on a server with a token, API routes
/// need `Authorization: Bearer`, console pages the bearer header or the login cookie (a page
/// asked for without either is sent to `/login`); on a server without one (loopback only),
/// console pages answer only to a loopback `Host` (see [`session`]).
pub async fn authenticate(
    State(token): State<Option<Arc<ApiToken>>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if OPEN_PATHS.contains(&path) {
        return next.run(request).await;
    }
    if is_console_path(path) {
        let Some(token) = token else {
            if session::loopback_host(request.headers()) {
                return next.run(request).await;
            }
            return (
                StatusCode::MISDIRECTED_REQUEST,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "this console has no token and answers only to localhost, 127.0.0.1 or [::1]",
            )
                .into_response();
        };
        if path == "/login" || path.starts_with("/console/assets/") {
            return next.run(request).await;
        }
        let by_header = bearer(request.headers().get(header::AUTHORIZATION))
            .is_some_and(|presented| token.matches(presented));
        if by_header || session::has_session(request.headers(), &token) {
            return next.run(request).await;
        }
        tracing::debug!(path = %path, "console request without a session: to the login page");
        return if request.method() == axum::http::Method::GET
            || request.method() == axum::http::Method::HEAD
        {
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, "/login")],
                "log in at /login",
            )
                .into_response()
        } else {
            (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "log in at /login first",
            )
                .into_response()
        };
    }
    match token {
        None => next.run(request).await,
        Some(token) => require_bearer(State(token), request, next).await,
    }
}
