//! Bearer-token authentication for the REST API.
//!
//! When a token is configured, every request except `GET /healthz` (so load balancers and
//! orchestrators can probe liveness) must carry `Authorization: Bearer <token>`; anything else
//! gets 401 with a JSON error, whatever the path (so unknown paths do not reveal which exist).
//!
//! Only the SHA-256 digest of the token is kept, and a presented token is hashed and compared
//! with [`subtle`]'s constant-time equality: neither the comparison's time nor the token's
//! length tells a caller how close it came. The token and the `Authorization` header are never
//! logged, and `Debug` prints neither.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use lineq_core::validation::ValidationError;

use super::error::ApiError;

/// The shortest token accepted: anything shorter can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;
/// The longest token accepted (it travels in a header).
pub const MAX_TOKEN_LEN: usize = 4096;
/// The paths open without a token.
pub const OPEN_PATHS: &[&str] = &["/healthz"];

/// The token the API requires. Holds only its digest.
#[derive(Clone)]
pub struct ApiToken {
    digest: [u8; 32],
}

impl ApiToken {
    /// Validates `token`: 16 to 4096 visible ASCII characters (what a header can carry
    /// unchanged, with no spaces to be trimmed away by a proxy).
    pub fn new(token: &str) -> Result<Self, ValidationError> {
        let n = token.len();
        if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&n) {
            return Err(ValidationError::new(
                "token",
                format!("an API token is {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters (got {n})"),
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ValidationError::new(
                "token",
                "an API token is visible ASCII characters, without spaces",
            ));
        }
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// True when `presented` is the token, in time that depends on neither.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Middleware: lets a request through when it carries the token (or asks for an open path).
pub async fn require_bearer(
    State(token): State<Arc<ApiToken>>,
    request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match bearer(request.headers().get(header::AUTHORIZATION)) {
        Some(presented) if token.matches(presented) => next.run(request).await,
        presented => {
            // The path is logged, the header never.
            tracing::debug!(path = %request.uri().path(), with_token = presented.is_some(),
                "request refused: no valid bearer token");
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this API requires Authorization: Bearer <token>",
            )
            .with_field("Authorization")
            .into_response();
            let challenge = if presented.is_some() {
                r#"Bearer realm="lineq", error="invalid_token""#
            } else {
                r#"Bearer realm="lineq""#
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            response
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
pub(crate) fn bearer(value: Option<&HeaderValue>) -> Option<&[u8]> {
    let v = value?.as_bytes();
    let (scheme, rest) = v.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(ApiToken::new("short").is_err());
        assert!(ApiToken::new("has a space in it!!").is_err());
        assert!(ApiToken::new(&"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
        let t = ApiToken::new("0123456789abcdef-secret").unwrap();
        assert!(t.matches(b"0123456789abcdef-secret"));
        assert!(!t.matches(b"0123456789abcdef-secreT"));
        assert!(!t.matches(b"0123456789abcdef-secre"));
        assert!(!t.matches(b""));
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn bearer_headers() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer(Some(&h("Bearer abc"))), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(&h("bearer  abc "))), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(&h("Basic abc"))), None);
        assert_eq!(bearer(Some(&h("Bearer "))), None);
        assert_eq!(bearer(Some(&h("Bearer"))), None);
        assert_eq!(bearer(None), None);
    }
}
