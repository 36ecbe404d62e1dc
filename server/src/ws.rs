//! The WebSocket handshake over hyper, and small helpers for closing.
//!
//! We answer the upgrade ourselves (instead of through a framework extractor)
//! so that the socket gets our own tungstenite configuration: message and
//! frame limits in KiB and small buffers, because an idle socket must cost
//! little memory.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// The subprotocol of this contract.
pub const SUBPROTOCOL: &str = "rxtrack.v1";
/// How long a close handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A server-side WebSocket over an upgraded hyper connection.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// A client WebSocket (the demo fleet's driver apps).
pub type ClientSocket = WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Close codes the server sends (PROTOCOL.md, plus documented additions).
pub mod close {
    /// Server draining: reconnect, possibly elsewhere.
    pub const GOING_AWAY: u16 = 1001;
    /// Frame or message too large.
    pub const TOO_BIG: u16 = 1009;
    /// Token invalid or expired.
    pub const UNAUTHORIZED: u16 = 4001;
    /// Forbidden or device revoked.
    pub const FORBIDDEN: u16 = 4003;
    /// Rate limited.
    pub const RATE_LIMITED: u16 = 4008;
    /// Protocol violation.
    pub const PROTOCOL: u16 = 4400;
    /// Addition: a newer connection of the same device replaced this one.
    pub const REPLACED: u16 = 4409;
    /// Addition: the tracking link was revoked or has expired.
    pub const LINK_GONE: u16 = 4404;
    /// Addition: the client does not keep up (writes time out or heartbeats
    /// go unanswered); reconnect and resynchronise from the snapshot.
    pub const SLOW: u16 = 4410;
}

/// Largest message the server sends on driver and patient sockets (acks,
/// errors, snapshots are far smaller).
pub const SMALL_WRITES: usize = 64 * 1024;
/// Largest message the server sends to a dispatcher: a snapshot of a large
/// tenant or a frame of thousands of positions. It caps a transient buffer;
/// nothing is allocated until such a message is sent.
pub const LARGE_WRITES: usize = 16 * 1024 * 1024;

/// The tungstenite configuration for a server socket: the largest message
/// it accepts, and the largest it may have to send (tungstenite refuses to
/// send a message bigger than its write buffer cap).
#[must_use]
pub fn config(max_message_bytes: usize, max_write_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(max_write_bytes)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// A checked upgrade request: the 101 response to return, the token the
/// client presented (if any), and the future that yields the raw connection.
#[derive(Debug)]
pub struct Handshake {
    pub response: Response<Body>,
    pub token: Option<String>,
    pub on_upgrade: OnUpgrade,
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    })
}

/// The bearer token from `Authorization: Bearer …`.
#[must_use]
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Checks a WebSocket upgrade request and prepares the 101 response.
pub fn handshake(req: &mut Request<Body>) -> Result<Handshake, ApiError> {
    let headers = req.headers();
    if !header_has(headers, header::UPGRADE, "websocket")
        || !header_has(headers, header::CONNECTION, "upgrade")
    {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            "this endpoint speaks WebSocket only",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(ApiError::bad_request(
            "bad_handshake",
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::bad_request("bad_handshake", "Sec-WebSocket-Key is missing"))?;
    let accept = derive_accept_key(key.as_bytes());

    let mut offered_v1 = false;
    let mut token = bearer(headers);
    for v in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        for p in v.to_str().unwrap_or("").split(',').map(str::trim) {
            if p == SUBPROTOCOL {
                offered_v1 = true;
            } else if let Some(t) = p.strip_prefix("bearer.") {
                token.get_or_insert_with(|| t.to_owned());
            }
        }
    }
    let on_upgrade = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or_else(|| ApiError::bad_request("bad_handshake", "connection cannot be upgraded"))?;

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if offered_v1 {
        // Never echo the bearer entry back: select only our subprotocol.
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(Handshake {
        response,
        token,
        on_upgrade,
    })
}

/// Completes the upgrade into a WebSocket with our configuration.
pub async fn accept(on_upgrade: OnUpgrade, cfg: WebSocketConfig) -> Option<Socket> {
    let upgraded = on_upgrade.await.ok()?;
    Some(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await)
}

/// How long one write to a client may take before the socket is given up.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a text message within [`WRITE_TIMEOUT`]; `false` if it could not.
pub async fn send_text(ws: &mut Socket, text: tokio_tungstenite::tungstenite::Utf8Bytes) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::Text(text))).await,
        Ok(Ok(()))
    )
}

/// Sends a heartbeat ping within [`WRITE_TIMEOUT`]; `false` if it could not.
pub async fn send_ping(ws: &mut Socket) -> bool {
    matches!(
        tokio::time::timeout(
            WRITE_TIMEOUT,
            ws.send(Message::Ping(bytes::Bytes::from_static(b"hb")))
        )
        .await,
        Ok(Ok(()))
    )
}

/// When a token with expiry `exp_s` (seconds) runs out, as a timer deadline.
#[must_use]
pub fn token_deadline(exp_s: i64) -> tokio::time::Instant {
    let left_ms = exp_s
        .saturating_mul(1000)
        .saturating_sub(crate::clock::now().0)
        .max(0);
    tokio::time::Instant::now() + Duration::from_millis(u64::try_from(left_ms).unwrap_or(0))
}

/// Sends a close frame, waits briefly for the client's, and counts the code.
pub async fn close_with(ws: &mut Socket, metrics: &Metrics, code: u16, reason: &str) {
    metrics
        .ws_closes
        .with_label_values(&[&code.to_string()])
        .inc();
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if ws.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}
