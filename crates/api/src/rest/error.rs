//! Errors as the REST API answers them: a status code and `{"error": {"code", "field",
//! "message"}}`.

use axum::Json;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use lineq_core::Error;
use lineq_core::validation::ValidationError;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code: `invalid_input` (400), `unauthorized` (401),
    /// `not_found` (404), `method_not_allowed` (405), `request_timeout` (408), `conflict`
    /// (409), `precondition_failed` (412), `payload_too_large` (413), `invalid_state` (422: not
    /// allowed in the execution's current state), `unprocessable` (422: the request follows the
    /// OpenAPI document but names something that does not exist or contradicts itself),
    /// `unavailable` (503) or `internal` (500).
    #[schema(example = "invalid_input")]
    pub code: String,
    /// The field (body field, query parameter or header) that broke a rule, when one did.
    #[schema(example = "tags")]
    pub field: Option<String>,
    /// For people: the rule and its limit, or what is missing.
    #[schema(example = "invalid tags: 21 tags; the limit is 20")]
    pub message: String,
    /// For a conflict: the version the execution is at now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub detail: ErrorDetail,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                code: code.to_string(),
                field: None,
                message: message.into(),
                current_version: None,
            },
        }
    }

    /// The same error, naming `field` (a body field, query parameter or header).
    pub fn with_field(mut self, field: &str) -> Self {
        self.detail.field = Some(field.to_string());
        self
    }

    /// A 400 naming `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_input", message);
        e.detail.field = Some(field.to_string());
        e
    }

    /// A 422 naming `field`: the request follows the OpenAPI document but names something that
    /// does not exist or contradicts itself.
    pub fn unprocessable(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message).with_field(field)
    }

    /// A 413 naming `field`: the body is over the size limit.
    pub fn too_large(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message).with_field(field)
    }

    /// A 404 for a path that names nothing.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    /// Maps a library error; `precondition` says the caller sent `If-Match`, which turns a
    /// version conflict into 412 rather than 409.
    pub fn from_lineq(e: Error, precondition: bool) -> Self {
        match e {
            Error::Validation(v) => v.into(),
            // The name follows the rules; the namespace just does not exist.
            Error::UnknownNamespace { .. } => Self::unprocessable("namespace", e.to_string()),
            Error::MalformedMessage(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_input", e.to_string())
            }
            Error::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            Error::Conflict { actual, .. } => {
                let mut out = if precondition {
                    Self::new(
                        StatusCode::PRECONDITION_FAILED,
                        "precondition_failed",
                        e.to_string(),
                    )
                } else {
                    Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
                };
                out.detail.field = precondition.then(|| "If-Match".to_string());
                out.detail.current_version = Some(actual);
                out
            }
            Error::NotPermitted(_) => {
                Self::new(StatusCode::FORBIDDEN, "not_permitted", e.to_string())
            }
            Error::InvalidState(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_state",
                e.to_string(),
            ),
            other => {
                // Database and queue errors can name tables and hosts: log them, answer plainly.
                tracing::error!(error = %other, "request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log",
                )
            }
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self::from_lineq(e, false)
    }
}

impl From<ValidationError> for ApiError {
    fn from(v: ValidationError) -> Self {
        Self::invalid(&v.field, v.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.detail })).into_response()
    }
}

/// Most of a plain-text rejection kept as the message.
const MAX_REJECTION_TEXT: usize = 1024;

/// Turns any error response that is not JSON into the API's error shape, so a client never has
/// to parse anything else: axum's own rejections (a method a route does not take, a path that
/// does not decode, ...) are plain text or empty.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // The console's pages are HTML, errors included.
    let is_html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_json || is_html || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let code = match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "invalid_input",
    };
    let mut out = ApiError::new(status, code, message).into_response();
    // Headers such as Allow (405) still say what to do instead.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
