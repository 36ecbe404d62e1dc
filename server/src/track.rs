//! Patient tracking links: `GET /v1/track/{token}` and its WebSocket.
//!
//! A link token is 192 random bits; only its SHA-256 is stored. Unknown,
//! expired and revoked tokens all get the same 404. Lookups are rate-limited
//! per client address, and every opening is a `link.opened` event in the log
//! before any data leaves. Patients receive only [`crate::domain::PatientSnapshot`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::app::App;
use crate::error::ApiError;
use crate::ratelimit::PeerAddr;
use crate::socket::{Close, Heartbeat, Upgrade};
use crate::types::{DeliveryId, TenantId};
use crate::ws::{self, Socket, close};

/// Longest token accepted in a path (ours are 32 characters).
const MAX_TOKEN_CHARS: usize = 128;
/// How often an open link is checked for expiry.
const EXPIRY_CHECK: Duration = Duration::from_secs(30);
/// Largest message a patient may send (they have nothing to say).
const PATIENT_MAX_MESSAGE: usize = 4 * 1024;

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such tracking link")
}

/// SHA-256 (hex) of a well-formed token; `None` for anything that cannot be one.
fn token_hash(token: &str) -> Option<String> {
    let ok = !token.is_empty()
        && token.len() <= MAX_TOKEN_CHARS
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then(|| sha256_hex(token))
}

/// SHA-256 of a tracking token, hex: the only form in which it is kept.
#[must_use]
pub fn sha256_hex(token: &str) -> String {
    crate::log::event::hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

type Opened = (
    Utf8Bytes,
    Option<watch::Receiver<Utf8Bytes>>,
    TenantId,
    DeliveryId,
    String,
);

/// Finds the link, records its opening durably, and returns its snapshot.
/// With `follow`, also subscribes to later snapshots.
async fn open(app: &App, peer: &PeerAddr, token: &str, follow: bool) -> Result<Opened, ApiError> {
    let limits = &app.config.limits;
    // This node's bucket, and (with several nodes) the address's share of
    // every node's lookups this minute.
    let shared_budget = limits.link_lookup_burst + limits.link_lookups_per_s * 60.0;
    if !app.link_limiter.allow(
        peer.0.ip(),
        limits.link_lookups_per_s,
        limits.link_lookup_burst,
    ) || !app.bus.allow_lookup(peer.0.ip(), shared_budget).await
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many tracking-link lookups from this address",
        ));
    }
    let hash = token_hash(token).ok_or_else(not_found)?;
    let now = crate::clock::now();
    for tenant in app.tenants.values() {
        if let Some((text, rx, id)) = tenant.open_link(&hash, now, follow).await? {
            return Ok((text, rx, tenant.id.clone(), id, hash));
        }
    }
    Err(not_found())
}

/// `GET /v1/track/{token}`: the current snapshot.
pub async fn snapshot(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<PeerAddr>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let (text, ..) = open(&app, &peer, &token, false).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        text.as_str().to_owned(),
    )
        .into_response())
}

/// `GET /v1/track/{token}/ws`: the snapshot, then a new one each time it changes.
pub async fn socket(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<PeerAddr>,
    Path(token): Path<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let up = Upgrade::new(&app, &mut req, PATIENT_MAX_MESSAGE, ws::SMALL_WRITES)?;
    let (text, Some(rx), tenant, _id, hash) = open(&app, &peer, &token, true).await? else {
        return Err(not_found());
    };
    let app2 = app.clone();
    Ok(up.serve(&app, "patient", move |mut sock| async move {
        let end = serve(&app2, &mut sock, text, rx, &tenant, &hash).await;
        (sock, end)
    }))
}

async fn serve(
    app: &App,
    sock: &mut Socket,
    first: Utf8Bytes,
    mut rx: watch::Receiver<Utf8Bytes>,
    tenant: &TenantId,
    hash: &str,
) -> Close {
    rx.mark_unchanged();
    if !ws::send_text(sock, first).await {
        return Some((close::SLOW, "write timed out".into()));
    }
    let mut heart = Heartbeat::start(Duration::from_millis(app.config.limits.heartbeat_ms)).await;
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    expiry.tick().await;
    loop {
        tokio::select! {
            biased;
            () = app.shutdown.cancelled() => return Some((close::GOING_AWAY, "server draining".into())),
            changed = rx.changed() => {
                if changed.is_err() {
                    return Some((close::LINK_GONE, "tracking link revoked".into()));
                }
                let text = rx.borrow_and_update().clone();
                if !ws::send_text(sock, text).await {
                    app.metrics.slow_closes.inc();
                    return Some((close::SLOW, "too slow to read updates".into()));
                }
            }
            // A client that stops reading never answers: it is closed.
            () = heart.due() => {
                if let Err(end) = heart.beat(sock, &app.metrics).await {
                    return end;
                }
            }
            _ = expiry.tick() => {
                if !app.tenant(tenant).is_some_and(|t| t.link_is_valid(hash, crate::clock::now())) {
                    return Some((close::LINK_GONE, "tracking link expired".into()));
                }
            }
            msg = sock.next() => match msg {
                Some(Ok(Message::Pong(_))) => heart.pong(),
                Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                    return Some((close::TOO_BIG, "message too large".into()));
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                // Patients have nothing to say; anything else is read and dropped.
                Some(Ok(_)) => {}
            },
        }
    }
}
