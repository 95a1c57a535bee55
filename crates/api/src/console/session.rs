//! The console's session and CSRF protection.
//!
//! **Login.** With a token, a browser presents it once in the login form; it is checked like a
//! bearer token and kept in the cookie [`COOKIE`] (`HttpOnly`, so no script reads it;
//! `SameSite=Strict`, so no other site's request carries it; `Path=/`). The cookie
//! authenticates the console's pages only; the REST API takes `Authorization: Bearer`.
//!
//! **CSRF.** Every form carries a token: an HMAC, under a key drawn at start-up, of the session
//! (the cookie's value, or nothing on a server without a token). Another site cannot read a page
//! to learn it, and a token from one session is no good in another or after a restart. A POST
//! must carry it, and when the browser says where the request came from (`Origin`,
//! `Sec-Fetch-Site`) that must be this server.
//!
//! **DNS rebinding.** A server without a token (loopback only) answers console pages only to a
//! `Host` that is a loopback name or address, so a page of another site whose name was rebound
//! to 127.0.0.1 cannot read or drive the console.

use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::rest::auth::ApiToken;

/// The session cookie's name.
pub const COOKIE: &str = "lineq_session";

/// The key of the CSRF tokens, drawn when the server starts.
pub struct CsrfKey([u8; 32]);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(<redacted>)")
    }
}

impl CsrfKey {
    /// A fresh random key.
    pub fn random() -> Self {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).expect("the operating system's random source");
        Self(k)
    }

    /// The CSRF token of the request's session.
    pub fn token(&self, headers: &HeaderMap) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(b"lineq-console-csrf\0");
        if let Some(session) = cookie(headers, COOKIE) {
            mac.update(session.as_bytes());
        }
        let out = mac.finalize().into_bytes();
        out.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// True when `presented` is the session's CSRF token and the request did not come from
    /// another site.
    pub fn check(&self, headers: &HeaderMap, presented: &str) -> bool {
        let expected = self.token(headers);
        let token_ok: bool = expected.as_bytes().ct_eq(presented.as_bytes()).into();
        token_ok && same_origin(headers)
    }
}

/// False when the browser says the request came from another origin.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
        (Some(_), None) => false,
    }
}

/// The value of cookie `name`, when the request has it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// True when the request's session cookie holds the token.
pub fn has_session(headers: &HeaderMap, token: &ApiToken) -> bool {
    cookie(headers, COOKIE).is_some_and(|v| token.matches(v.as_bytes()))
}

/// The `Set-Cookie` value that keeps `token` as the session.
pub fn session_cookie(token: &str) -> String {
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that ends the session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// True when the `Host` header names this machine's loopback (or is absent: HTTP/1.0).
pub fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn csrf_tokens_are_per_session_and_per_key() {
        let key = CsrfKey::random();
        let anon = headers(&[("host", "127.0.0.1:8080")]);
        let a = headers(&[
            ("host", "h"),
            ("cookie", "x=1; lineq_session=aaaaaaaaaaaaaaaaaaaa"),
        ]);
        let t = key.token(&anon);
        assert!(key.check(&anon, &t));
        assert!(!key.check(&anon, ""));
        assert!(!key.check(&a, &t));
        assert!(key.check(&a, &key.token(&a)));
        assert!(!CsrfKey::random().check(&anon, &t));
    }

    #[test]
    fn other_origins_are_refused() {
        let key = CsrfKey::random();
        let evil = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert!(!key.check(&evil, &key.token(&evil)));
        let cross = headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]);
        assert!(!key.check(&cross, &key.token(&cross)));
        let same = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(key.check(&same, &key.token(&same)));
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost:8080",
            "127.0.0.1:1",
            "[::1]:80",
            "127.0.0.2",
            "LOCALHOST",
        ] {
            let h = {
                let mut h = HeaderMap::new();
                h.insert(header::HOST, HeaderValue::from_str(ok).unwrap());
                h
            };
            assert!(loopback_host(&h), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.1:80",
            "localhost.evil:80",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(bad).unwrap());
            assert!(!loopback_host(&h), "{bad}");
        }
    }

    #[test]
    fn cookies() {
        let h = headers(&[("cookie", "a=1; lineq_session=tok; b=2")]);
        assert_eq!(cookie(&h, COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
