//! The console's assets, compiled into the binary: one stylesheet and one small script of our
//! own (no framework, no CDN, nothing to build), cached by browsers for five minutes.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The stylesheet.
pub const CSS: &str = include_str!("assets/console.css");
/// The script: auto refresh, confirmations.
pub const JS: &str = include_str!("assets/console.js");

/// Where the stylesheet is served.
pub const CSS_PATH: &str = "/console/assets/console.css";
/// Where the script is served.
pub const JS_PATH: &str = "/console/assets/console.js";

/// `GET /console/assets/{file}`.
pub async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "no such asset",
            )
                .into_response();
        }
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}
