//! The dispatcher live stream: `GET /v1/dispatch/ws`.
//!
//! The in-process fan-out for one tenant ([`Hub`]) keeps two kinds of traffic
//! apart, with the guarantee each needs:
//!
//! - **Positions: latest wins.** A driver's position is encoded once per fix
//!   into shared bytes and stored under a version number. Every socket, once
//!   per `POSITION_INTERVAL`, sends the positions that changed since it last
//!   looked (inside its viewport, if it set one) in one frame. A slow socket
//!   simply skips intermediate positions; nobody waits for it.
//! - **Events and delivery changes: never dropped.** Each is encoded once and
//!   offered to every socket's bounded queue. A socket whose queue is full has
//!   fallen too far behind: it is dropped from the hub and closed with 4410,
//!   and resynchronises from the snapshot when it reconnects.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt as _;
use h3o::{CellIndex, Resolution};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::app::App;
use crate::auth::Principal;
use crate::domain::Action;
use crate::error::ApiError;
use crate::protocol::Fix;
use crate::types::SubjectId;
use crate::ws::{self, Socket, close};

/// How often a socket sends the positions that changed.
pub const POSITION_INTERVAL: Duration = Duration::from_millis(200);
/// Events a socket may have queued before it counts as too slow: room for
/// a burst such as thousands of patients opening their links at once (each
/// a `link.opened` event), at 16 bytes a queued message.
pub const EVENT_QUEUE: usize = 8192;
/// Most cells in one viewport message.
pub const MAX_VIEWPORT_CELLS: usize = 2000;
/// Largest message a dispatcher may send (a full viewport is about 40 KiB).
const DISPATCH_MAX_MESSAGE: usize = 64 * 1024;
/// Resolution at which driver positions are indexed for viewports.
const POSITION_RES: Resolution = Resolution::Fifteen;

struct Position {
    version: u64,
    received: std::time::Instant,
    lat: f64,
    lng: f64,
    /// The fix's H3 cell, computed the first time a viewport asks (most
    /// dispatchers watch the whole tenant; `to_cell` is the dearest step).
    cell: std::sync::OnceLock<Option<CellIndex>>,
    json: Bytes,
}

impl Position {
    fn cell(&self) -> Option<CellIndex> {
        *self.cell.get_or_init(|| {
            h3o::LatLng::new(self.lat, self.lng)
                .ok()
                .map(|ll| ll.to_cell(POSITION_RES))
        })
    }
}

/// A position as dispatchers receive it.
#[derive(serde::Serialize)]
struct PositionOut<'a> {
    driver_id: &'a SubjectId,
    lat: f64,
    lng: f64,
    ts: i64,
    speed: Option<f64>,
    heading: Option<f64>,
}

/// One tenant's fan-out.
#[derive(Default)]
pub struct Hub {
    version: AtomicU64,
    positions: Mutex<HashMap<SubjectId, Position>>,
    subscribers: Mutex<Vec<mpsc::Sender<Utf8Bytes>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Records a driver's newest position (encoded once, shared by every socket).
    pub fn position(&self, driver: &SubjectId, fix: &Fix) {
        let Ok(json) = serde_json::to_vec(&PositionOut {
            driver_id: driver,
            lat: fix.pos.lat,
            lng: fix.pos.lng,
            ts: fix.ts.0,
            speed: fix.speed,
            heading: fix.heading,
        }) else {
            return;
        };
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let mut map = self
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let position = Position {
            version,
            received: std::time::Instant::now(),
            lat: fix.pos.lat,
            lng: fix.pos.lng,
            cell: std::sync::OnceLock::new(),
            json: Bytes::from(json),
        };
        // The driver's id is cloned once, when it is first seen.
        match map.get_mut(driver) {
            Some(p) => *p = position,
            None => {
                map.insert(driver.clone(), position);
            }
        }
    }

    /// Offers a message to every socket; a socket whose queue is full is
    /// dropped (it then closes with 4410). Returns how many were dropped.
    pub fn publish(&self, msg: &Utf8Bytes) -> usize {
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = subs.len();
        subs.retain(|tx| tx.try_send(msg.clone()).is_ok());
        before - subs.len()
    }

    /// A new subscriber queue for events and delivery changes.
    pub fn subscribe(&self) -> mpsc::Receiver<Utf8Bytes> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }

    /// Positions newer than `since` inside `viewport` (all when `None`), as
    /// one frame; the newest version seen; and when the oldest included
    /// position arrived.
    fn positions_since(&self, since: u64, viewport: Option<&Viewport>, kind: &str) -> Frame {
        let map = self
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut newest = since;
        let mut oldest: Option<std::time::Instant> = None;
        let mut fresh = 0u64;
        let mut parts: Vec<&[u8]> = Vec::new();
        for p in map.values() {
            newest = newest.max(p.version);
            if p.version <= since {
                continue;
            }
            fresh += 1;
            if let Some(v) = viewport
                && !p.cell().is_some_and(|c| v.contains(c))
            {
                continue;
            }
            parts.push(&p.json);
            oldest = Some(oldest.map_or(p.received, |o| o.min(p.received)));
        }
        // Versions between `since` and `newest` that are no longer in the
        // map were overtaken by a newer position of the same driver.
        let superseded = (newest - since).saturating_sub(fresh);
        if parts.is_empty() {
            return Frame {
                text: None,
                newest,
                oldest: None,
                superseded,
            };
        }
        let mut out = String::with_capacity(32 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
        out.push_str("{\"type\":\"");
        out.push_str(kind);
        out.push_str("\",\"drivers\":[");
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(std::str::from_utf8(p).unwrap_or("null"));
        }
        out.push_str("]}");
        Frame {
            text: Some(out),
            newest,
            oldest,
            superseded,
        }
    }
}

/// What changed since a socket last looked.
struct Frame {
    /// The frame to send, if any position inside the viewport changed.
    text: Option<String>,
    /// The newest version seen.
    newest: u64,
    /// When the oldest position in the frame arrived.
    oldest: Option<std::time::Instant>,
    /// Positions this socket never saw because a newer one replaced them.
    superseded: u64,
}

/// The H3 cells a dispatcher watches, by resolution.
#[derive(Debug, Default)]
struct Viewport {
    cells: HashMap<u8, HashSet<CellIndex>>,
}

impl Viewport {
    fn contains(&self, cell: CellIndex) -> bool {
        self.cells.iter().any(|(res, set)| {
            Resolution::try_from(*res)
                .ok()
                .and_then(|r| cell.parent(r))
                .is_some_and(|p| set.contains(&p))
        })
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DispatcherMsg {
    Viewport { cells: Vec<String> },
}

/// `GET /v1/dispatch/ws` (admin, dispatcher, viewer).
pub async fn socket(State(app): State<Arc<App>>, mut req: Request) -> Result<Response, ApiError> {
    let hs = ws::handshake(&mut req)?;
    let auth = app.verify_presented(hs.token.as_deref());
    let permit = app.socket_permit()?;
    let cfg = ws::config(DISPATCH_MAX_MESSAGE, ws::LARGE_WRITES);
    let app2 = app.clone();
    app.tracker.spawn(async move {
        if let Some(mut sock) = ws::accept(hs.on_upgrade, cfg).await {
            let code = match auth {
                Err(e) => {
                    app2.metrics
                        .auth_failures
                        .with_label_values(&[e.reason()])
                        .inc();
                    Some((close::UNAUTHORIZED, "token invalid or expired"))
                }
                Ok(p) if !Action::WatchMap.allowed(p.role) => Some((
                    close::FORBIDDEN,
                    "the live map needs an admin, dispatcher or viewer token",
                )),
                Ok(p) => {
                    let gauge = app2.metrics.connections.with_label_values(&["dispatcher"]);
                    gauge.inc();
                    let code = serve(&app2, &mut sock, &p).await;
                    gauge.dec();
                    code
                }
            };
            if let Some((code, reason)) = code {
                ws::close_with(&mut sock, &app2.metrics, code, reason).await;
            }
        }
        drop(permit);
    });
    Ok(hs.response)
}

fn snapshot(app: &App, p: &Principal, hub: &Hub) -> (String, u64) {
    let Frame {
        text: drivers,
        newest: version,
        ..
    } = hub.positions_since(0, None, "snapshot");
    let deliveries: Vec<serde_json::Value> = app.tenant(&p.tenant).map_or_else(Vec::new, |t| {
        t.read(|book, tracker| {
            book.active_deliveries()
                .map(|d| {
                    let mut v =
                        serde_json::to_value(book.view(d)).unwrap_or(serde_json::Value::Null);
                    let track = tracker.track(&d.id);
                    if let Some(o) = v.as_object_mut() {
                        o.insert(
                            "eta".into(),
                            serde_json::to_value(track.and_then(|t| t.snapshot.eta))
                                .unwrap_or_default(),
                        );
                        o.insert(
                            "eta_at".into(),
                            track.and_then(|t| t.eta).map(|e| e.0).into(),
                        );
                    }
                    v
                })
                .collect()
        })
    });
    let drivers: serde_json::Value = drivers
        .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
        .map_or(serde_json::json!([]), |v| v["drivers"].clone());
    let snap =
        serde_json::json!({"type": "snapshot", "drivers": drivers, "deliveries": deliveries});
    (snap.to_string(), version)
}

async fn serve(app: &App, sock: &mut Socket, p: &Principal) -> Option<(u16, &'static str)> {
    // Subscribe before the snapshot, so nothing falls between them.
    let feed = app.bus.subscribe_dispatcher(&p.tenant)?;
    let hub = feed.positions.as_ref();
    let mut events = feed.events;
    let (snap, mut seen) = snapshot(app, p, hub);
    if !ws::send_text(sock, snap.into()).await {
        return Some((close::SLOW, "could not send the snapshot"));
    }
    let mut viewport: Option<Viewport> = None;
    let mut tick = tokio::time::interval(POSITION_INTERVAL);
    let heartbeat = Duration::from_millis(app.config.limits.heartbeat_ms);
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    let mut last_pong = std::time::Instant::now();
    let expires = ws::token_deadline(p.exp);
    loop {
        tokio::select! {
            biased;
            () = app.shutdown.cancelled() => return Some((close::GOING_AWAY, "server draining")),
            () = tokio::time::sleep_until(expires) => return Some((close::UNAUTHORIZED, "token expired")),
            msg = events.recv() => match msg {
                Some(text) => if !ws::send_text(sock, text).await {
                    app.metrics.slow_closes.inc();
                    return Some((close::SLOW, "too slow to read events"));
                },
                None => return Some((close::SLOW, "fell too far behind; reconnect for a snapshot")),
            },
            _ = tick.tick() => {
                let frame = hub.positions_since(seen, viewport.as_ref(), "drivers");
                seen = frame.newest;
                app.metrics.positions_conflated.inc_by(frame.superseded);
                let oldest = frame.oldest;
                if let Some(f) = frame.text {
                    if !ws::send_text(sock, f.into()).await {
                        app.metrics.slow_closes.inc();
                        return Some((close::SLOW, "too slow to read positions"));
                    }
                    if let Some(t) = oldest {
                        app.metrics.fanout_seconds.observe(t.elapsed().as_secs_f64());
                    }
                }
            }
            _ = ping.tick() => {
                if last_pong.elapsed() > heartbeat * 3 {
                    app.metrics.slow_closes.inc();
                    return Some((close::SLOW, "no answer to heartbeats"));
                }
                let _ = ws::send_ping(sock).await;
            }
            msg = sock.next() => match msg {
                Some(Ok(Message::Pong(_))) => last_pong = std::time::Instant::now(),
                Some(Ok(Message::Text(t))) => match parse_viewport(t.as_str()) {
                    Ok(v) => {
                        viewport = v;
                        // Resend everything inside the new viewport.
                        seen = 0;
                    }
                    Err(reason) => return Some((close::PROTOCOL, reason)),
                },
                Some(Ok(Message::Binary(_))) => return Some((close::PROTOCOL, "binary frames are not part of the protocol")),
                Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                    return Some((close::TOO_BIG, "message too large"));
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// A viewport message: `None` means "everything" (an empty cell list).
fn parse_viewport(text: &str) -> Result<Option<Viewport>, &'static str> {
    let DispatcherMsg::Viewport { cells } =
        serde_json::from_str(text).map_err(|_| "expected {\"type\":\"viewport\",\"cells\":[…]}")?;
    if cells.len() > MAX_VIEWPORT_CELLS {
        return Err("too many viewport cells");
    }
    if cells.is_empty() {
        return Ok(None);
    }
    let mut v = Viewport::default();
    for c in cells {
        let cell: CellIndex = c
            .parse()
            .map_err(|_| "a viewport cell is not an H3 cell index")?;
        v.cells
            .entry(u8::from(cell.resolution()))
            .or_default()
            .insert(cell);
    }
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewports_parse_and_match_descendants() {
        let v = parse_viewport(r#"{"type":"viewport","cells":["85283473fffffff"]}"#)
            .unwrap()
            .unwrap();
        let inside = h3o::LatLng::new(37.361_559_3, -122.055_323_8)
            .unwrap()
            .to_cell(POSITION_RES);
        let outside = h3o::LatLng::new(60.17, 24.94)
            .unwrap()
            .to_cell(POSITION_RES);
        assert!(v.contains(inside));
        assert!(!v.contains(outside));
        assert!(
            parse_viewport(r#"{"type":"viewport","cells":[]}"#)
                .unwrap()
                .is_none()
        );
        assert!(parse_viewport(r#"{"type":"viewport","cells":["nope"]}"#).is_err());
        assert!(parse_viewport(r#"{"type":"zoom"}"#).is_err());
    }

    #[test]
    fn a_full_queue_drops_the_subscriber() {
        let hub = Hub::default();
        let mut rx = hub.subscribe();
        let msg = Utf8Bytes::from_static("{}");
        for _ in 0..EVENT_QUEUE {
            assert_eq!(hub.publish(&msg), 0);
        }
        assert_eq!(hub.publish(&msg), 1);
        // What was queued is still delivered, then the channel ends.
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, EVENT_QUEUE);
        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }
}
