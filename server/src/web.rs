//! Pages and their assets, embedded in the binary: no third-party scripts,
//! fonts or tiles, and a strict Content-Security-Policy.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::app::App;

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
    with_headers(
        body.into_response(),
        content_type,
        HeaderValue::from_static(CSP),
    )
}

/// Content type, Content-Security-Policy, no indexing, no framing.
fn with_headers(mut res: Response, content_type: &'static str, csp: HeaderValue) -> Response {
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
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

/// `GET /dispatch`: the live map. It asks for a token and works offline:
/// drivers, fences and stops are drawn on a canvas, over raster tiles only
/// when `map_tile_url` is configured (whose origin the CSP then allows).
pub async fn dispatch_page(State(app): State<Arc<App>>) -> Response {
    let Some(tiles) = &app.config.map_tiles else {
        return page(DISPATCH_HTML, "text/html; charset=utf-8");
    };
    // The template was validated: no quotes or angle brackets; escape `&`.
    let meta = format!(
        "<meta name=\"rxtrack-tiles\" content=\"{}\">",
        tiles.template.replace('&', "&amp;")
    );
    let html = DISPATCH_HTML.replacen("<!--tiles-->", &meta, 1);
    let csp = CSP.replacen(
        "img-src 'self'",
        &format!("img-src 'self' {}", tiles.origin),
        1,
    );
    // Never without a policy: the strict one if the widened one were unusable.
    let policy = HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static(CSP));
    with_headers(html.into_response(), "text/html; charset=utf-8", policy)
}

pub async fn dispatch_js() -> Response {
    page(DISPATCH_JS, "text/javascript; charset=utf-8")
}

pub async fn dispatch_css() -> Response {
    page(DISPATCH_CSS, "text/css; charset=utf-8")
}
