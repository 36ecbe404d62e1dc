//! The position board and event queues of one tenant on one node.
//!
//! - **Positions: latest wins.** A driver's position is encoded once per fix
//!   into shared bytes and stored under a version number. Every socket, once
//!   per interval, takes the positions that changed since it last looked
//!   (inside its viewport, if it set one) as one frame. A slow socket
//!   simply skips intermediate positions; nobody waits for it.
//! - **Events and delivery changes: never dropped.** Each is encoded once and
//!   offered to every socket's bounded queue. A socket whose queue is full has
//!   fallen too far behind: it is dropped from the hub (its socket then
//!   closes with 4410) and resynchronises from the snapshot when it reconnects.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use h3o::{CellIndex, Resolution};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::Fix;
use crate::types::SubjectId;

/// Events a socket may have queued before it counts as too slow: room for
/// a burst such as thousands of patients opening their links at once (each
/// a `link.opened` event), at 16 bytes a queued message.
pub const EVENT_QUEUE: usize = 8192;
/// Resolution at which driver positions are indexed for viewports.
pub const POSITION_RES: Resolution = Resolution::Fifteen;

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
            lat: fix.pos.lat(),
            lng: fix.pos.lng(),
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
            lat: fix.pos.lat(),
            lng: fix.pos.lng(),
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

    /// Drops every subscriber: their sockets close with 4410 and
    /// resynchronise from a snapshot.
    pub fn drop_all(&self) -> usize {
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = subs.len();
        subs.clear();
        n
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
    pub fn positions_since(&self, since: u64, viewport: Option<&Viewport>, kind: &str) -> Frame {
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
#[derive(Debug)]
pub struct Frame {
    /// The frame to send, if any position inside the viewport changed.
    pub text: Option<String>,
    /// The newest version seen.
    pub newest: u64,
    /// When the oldest position in the frame arrived.
    pub oldest: Option<std::time::Instant>,
    /// Positions this socket never saw because a newer one replaced them.
    pub superseded: u64,
}

/// The H3 cells a dispatcher watches, by resolution.
#[derive(Debug, Default)]
pub struct Viewport {
    pub cells: HashMap<u8, HashSet<CellIndex>>,
}

impl Viewport {
    #[must_use]
    pub fn contains(&self, cell: CellIndex) -> bool {
        self.cells.iter().any(|(res, set)| {
            Resolution::try_from(*res)
                .ok()
                .and_then(|r| cell.parent(r))
                .is_some_and(|p| set.contains(&p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
