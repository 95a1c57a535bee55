//! One HTTP/1.1 request over a plain socket, for tests of `lineq serve` that want to see exactly
//! what goes over the wire (no client library rewriting headers).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `method path` with a JSON `body` to `addr` (`host:port`) and returns the status and the
/// response body (`0` when the answer has no status line).
pub async fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.expect("read");
    status_and_body(&String::from_utf8_lossy(&resp))
}

/// The status and the body of a whole HTTP/1.1 response as read off the socket (`0` when it
/// has no status line).
pub fn status_and_body(text: &str) -> (u16, String) {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
