//! Pages and their assets, embedded in the binary: no third-party scripts,
//! fonts or tiles, and a strict Content-Security-Policy.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const TRACK_HTML: &str = include_str!("../assets/track.html");
const TRACK_JS: &str = include_str!("../assets/track.js");
const TRACK_CSS: &str = include_str!("../assets/track.css");
const DISPATCH_HTML: &str = include_str!("../assets/dispatch.html");
const DISPATCH_JS: &str = include_str!("../assets/dispatch.js");
const DISPATCH_CSS: &str = include_str!("../assets/dispatch.css");

/// Only our own origin, no inline code, no framing, no forms.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                       img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut res = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        "x-robots-tag",
        HeaderValue::from_static("noindex, nofollow"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// `GET /t/{token}`: the patient tracking page. The same page for every
/// token (it reveals nothing); its script asks the API, which answers 404
/// for links that are unknown, expired or revoked.
pub async fn track_page() -> Response {
    page(TRACK_HTML, "text/html; charset=utf-8")
}

pub async fn track_js() -> Response {
    page(TRACK_JS, "text/javascript; charset=utf-8")
}

pub async fn track_css() -> Response {
    page(TRACK_CSS, "text/css; charset=utf-8")
}

/// `GET /dispatch`: the live map. It asks for a token and works offline
/// (no tiles: drivers, fences and stops are drawn on a canvas).
pub async fn dispatch_page() -> Response {
    page(DISPATCH_HTML, "text/html; charset=utf-8")
}

pub async fn dispatch_js() -> Response {
    page(DISPATCH_JS, "text/javascript; charset=utf-8")
}

pub async fn dispatch_css() -> Response {
    page(DISPATCH_CSS, "text/css; charset=utf-8")
}
