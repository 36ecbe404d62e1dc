//! The dispatcher live stream: `GET /v1/dispatch/ws`.
//!
//! A dispatcher gets a snapshot (drivers and active deliveries), then, from
//! the tenant's board ([`crate::bus::hub`]), every `POSITION_INTERVAL` the
//! positions that changed inside its viewport, and every event and delivery
//! change as it becomes durable. It may narrow its viewport to H3 cells.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;
use futures_util::StreamExt as _;
use h3o::CellIndex;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use crate::app::App;
use crate::auth::Principal;
use crate::bus::hub::{Frame, Hub, Viewport};
use crate::domain::Action;
use crate::error::ApiError;
use crate::socket::{Close, Heartbeat, Upgrade};
use crate::ws::{self, Socket, close};

/// How often a socket sends the positions that changed.
pub const POSITION_INTERVAL: Duration = Duration::from_millis(200);
/// Most cells in one viewport message.
pub const MAX_VIEWPORT_CELLS: usize = 2000;
/// Largest message a dispatcher may send (a full viewport is about 40 KiB).
const DISPATCH_MAX_MESSAGE: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DispatcherMsg {
    Viewport { cells: Vec<String> },
}

/// `GET /v1/dispatch/ws` (admin, dispatcher, viewer).
pub async fn socket(State(app): State<Arc<App>>, mut req: Request) -> Result<Response, ApiError> {
    let up = Upgrade::new(&app, &mut req, DISPATCH_MAX_MESSAGE, ws::LARGE_WRITES)?;
    let auth = app.verify_presented(up.token());
    let app2 = app.clone();
    Ok(up.serve(&app, "dispatcher", move |mut sock| async move {
        let end = match auth {
            Err(e) => {
                app2.metrics
                    .auth_failures
                    .with_label_values(&[e.reason()])
                    .inc();
                Some((close::UNAUTHORIZED, "token invalid or expired".into()))
            }
            Ok(p) if !Action::WatchMap.allowed(p.role) => Some((
                close::FORBIDDEN,
                "the live map needs an admin, dispatcher or viewer token".into(),
            )),
            Ok(p) => serve(&app2, &mut sock, &p).await,
        };
        (sock, end)
    }))
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

async fn serve(app: &App, sock: &mut Socket, p: &Principal) -> Close {
    // Subscribe before the snapshot, so nothing falls between them.
    let feed = app.bus.subscribe_dispatcher(&p.tenant)?;
    let crate::bus::DispatcherFeed {
        mut events,
        positions,
        watch,
    } = feed;
    let hub = positions.as_ref();
    let (snap, mut seen) = snapshot(app, p, hub);
    if !ws::send_text(sock, snap.into()).await {
        return Some((close::SLOW, "could not send the snapshot".into()));
    }
    let mut viewport: Option<Viewport> = None;
    let mut tick = tokio::time::interval(POSITION_INTERVAL);
    let mut heart = Heartbeat::start(Duration::from_millis(app.config.limits.heartbeat_ms)).await;
    let expires = ws::token_deadline(p.exp);
    loop {
        tokio::select! {
            biased;
            () = app.shutdown.cancelled() => return Some((close::GOING_AWAY, "server draining".into())),
            () = tokio::time::sleep_until(expires) => return Some((close::UNAUTHORIZED, "token expired".into())),
            msg = events.recv() => match msg {
                Some(text) => if !ws::send_text(sock, text).await {
                    app.metrics.slow_closes.inc();
                    return Some((close::SLOW, "too slow to read events".into()));
                },
                None => return Some((close::SLOW, "fell too far behind; reconnect for a snapshot".into())),
            },
            _ = tick.tick() => {
                let frame = hub.positions_since(seen, viewport.as_ref(), "drivers");
                seen = frame.newest;
                app.metrics.positions_conflated.inc_by(frame.superseded);
                let oldest = frame.oldest;
                if let Some(f) = frame.text {
                    if !ws::send_text(sock, f.into()).await {
                        app.metrics.slow_closes.inc();
                        return Some((close::SLOW, "too slow to read positions".into()));
                    }
                    if let Some(t) = oldest {
                        app.metrics.fanout_seconds.observe(t.elapsed().as_secs_f64());
                    }
                }
            }
            () = heart.due() => {
                if let Err(end) = heart.beat(sock, &app.metrics).await {
                    return end;
                }
            }
            msg = sock.next() => match msg {
                Some(Ok(Message::Pong(_))) => heart.pong(),
                Some(Ok(Message::Text(t))) => match parse_viewport(t.as_str()) {
                    Ok(v) => {
                        app.bus.viewport(&p.tenant, &watch, v.as_ref());
                        viewport = v;
                        // Resend everything inside the new viewport.
                        seen = 0;
                    }
                    Err(reason) => return Some((close::PROTOCOL, reason.into())),
                },
                Some(Ok(Message::Binary(_))) => return Some((close::PROTOCOL, "binary frames are not part of the protocol".into())),
                Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                    return Some((close::TOO_BIG, "message too large".into()));
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
    use crate::bus::hub::POSITION_RES;

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
}
