//! Login and logout, on a server with a token: the token is entered once and kept in the
//! session cookie (see [`super::session`]). On a server without one (loopback only) the login
//! page says so and sends the browser on.

use std::collections::HashMap;

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::execution::check_csrf;
use super::layout::{self, Nav, csrf_field};
use super::session;
use super::{ConsoleState, PageResult};

fn form_page(state: &ConsoleState, headers: &HeaderMap, failed: bool) -> Response {
    let csrf = state.csrf.token(headers);
    let body = html! {
        div.login {
            h1 { "Log in to lineq" }
            @if failed { p.notice.error #login-failed { "That is not this server's token." } }
            form method="post" action="/login" {
                (csrf_field(&csrf))
                label { "API token (the server's --token-file or LINEQ_API_TOKEN)"
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                }
                button type="submit" { "Log in" }
            }
            p.muted { "The token is kept in a cookie only this server can read, for this browser session." }
        }
    };
    let status = if failed {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    (status, layout::page("Log in", Nav::None, None, body)).into_response()
}

/// `GET /login`.
pub async fn form(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    if state.token.is_none() {
        return Redirect::to("/").into_response();
    }
    form_page(&state, &headers, false)
}

/// `POST /login`: `token`, `csrf`.
pub async fn submit(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    check_csrf(&state, &headers, &form)?;
    let Some(token) = &state.token else {
        return Ok(Redirect::to("/").into_response());
    };
    let presented = form.get("token").map(|t| t.trim()).unwrap_or_default();
    // A token is visible ASCII, so it is a valid cookie value as it is.
    if !presented.bytes().all(|b| b.is_ascii_graphic() && b != b';')
        || !token.matches(presented.as_bytes())
    {
        tracing::info!("console login refused: wrong token");
        return Ok(form_page(&state, &headers, true));
    }
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session::session_cookie(presented)).map_err(|_| {
            super::PageError::new(
                StatusCode::BAD_REQUEST,
                "the token cannot be kept in a cookie",
            )
        })?,
    );
    Ok(response)
}

/// `POST /logout`.
pub async fn logout(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    check_csrf(&state, &headers, &form)?;
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session::clear_cookie()).expect("a fixed cookie"),
    );
    Ok(response)
}
