//! Errors as the REST API answers them: a status code and `{"error": {"code", "field",
//! "message"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use lineq_shared::Error;
use lineq_shared::validation::ValidationError;

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
    /// `not_found` (404), `conflict` (409), `precondition_failed` (412), `invalid_state` (422),
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

    /// A 404 for a path that names nothing.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    /// Maps a library error; `precondition` says the caller sent `If-Match`, which turns a
    /// version conflict into 412 rather than 409.
    pub fn from_lineq(e: Error, precondition: bool) -> Self {
        match e {
            Error::Validation(v) => v.into(),
            Error::UnknownNamespace { .. } => {
                let mut out = Self::new(StatusCode::BAD_REQUEST, "invalid_input", e.to_string());
                out.detail.field = Some("namespace".into());
                out
            }
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
