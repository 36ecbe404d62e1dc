//! What nodes say to each other over Redis, and the names it goes under.

use std::collections::HashSet;

use h3o::{CellIndex, Resolution};
use serde::{Deserialize, Serialize};

use crate::bus::hub::Viewport;
use crate::protocol::Fix;
use crate::types::{DeliveryId, DeviceId, SubjectId, TenantId};

/// The resolution of the map cells that name position channels (about
/// 250 km², 8.5 km a side): a city is a dozen channels, a street map one.
pub(super) const CHANNEL_RES: Resolution = Resolution::Five;
/// A viewport covering more channel cells than this counts as the map.
const MAX_CHANNEL_CELLS: u64 = 512;
/// A cell stays in the tenant's set this long after a node last told of it
/// (nodes tell again every 10 minutes while they publish there), and the
/// set itself expires this long after the last telling.
pub(super) const CELLS_KEPT_MS: i64 = 30 * 60 * 1000;
pub(super) const CELLS_TTL_S: u64 = 30 * 60;

/// How long a device's acknowledged seq is kept without news of it.
pub(super) const CURSOR_TTL_S: u64 = 24 * 3600;

pub(super) fn cursor_key(t: &TenantId, d: &DeviceId) -> String {
    format!("rxtrack:{t}:device:{d}:acked")
}

pub(super) fn devices_key(t: &TenantId) -> String {
    format!("rxtrack:{t}:devices")
}

pub(super) fn deliveries_channel(t: &TenantId) -> String {
    format!("rxtrack:{t}:deliveries")
}

pub(super) fn carried_key(t: &TenantId, d: &SubjectId) -> String {
    format!("rxtrack:{t}:driver:{d}:carried")
}

pub(super) fn cell_channel(t: &TenantId, cell: CellIndex) -> String {
    format!("rxtrack:{t}:pos:{cell}")
}

pub(super) fn cells_notice(t: &TenantId) -> String {
    format!("rxtrack:{t}:cells")
}

pub(super) fn cells_key(t: &TenantId) -> String {
    format!("rxtrack:{t}:cellset")
}

pub(super) fn patient_channel(t: &TenantId, d: &DeliveryId) -> String {
    format!("rxtrack:{t}:patient:{d}")
}

/// The channel cell of a position: the parent of its finest cell, as the
/// dispatcher's viewport filter sees it.
pub(super) fn channel_cell(fix: &Fix) -> Option<CellIndex> {
    h3o::LatLng::new(fix.pos.lat(), fix.pos.lng())
        .ok()
        .and_then(|ll| {
            ll.to_cell(crate::bus::hub::POSITION_RES)
                .parent(CHANNEL_RES)
        })
}

/// What the publisher sends.
pub(super) enum Out {
    Publish(String, String),
    /// A key's value, kept `ttl` seconds (a device's acknowledged seq, a
    /// driver's carried tracking); only the last of a key in a batch is sent.
    Set {
        key: String,
        value: String,
        ttl: u64,
    },
    /// A driver's carried tracking, kept unless what is stored was seen
    /// later (`seen`: when this node last saw the driver, ms).
    Carry {
        key: String,
        value: String,
        seen: i64,
        ttl: u64,
    },
    /// A device's report in the tenant's hash (`key`, field `device`);
    /// `only_if` the field still holds a report of this node.
    Device {
        key: String,
        device: String,
        value: String,
        only_if: Option<String>,
    },
    /// A cell this node publishes positions in: added to the tenant's set
    /// (`key`), then told on `notice`.
    Cell {
        key: String,
        cell: String,
        notice: String,
        text: String,
    },
}

/// Why this node listens on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Topic {
    /// Kicks and resync requests: always.
    Fixed,
    Patient,
    /// A map cell of the tenant's.
    Cell(TenantId),
    /// New cells of the tenant's (for dispatchers watching the whole map).
    Notice(TenantId),
    /// Estimates of the tenant's deliveries (for any dispatcher).
    Deliveries(TenantId),
}

/// What to do once a subscription holds.
pub(super) enum After {
    /// Send this (on its own channel), so an answer to it is heard.
    Send(Wire),
    /// Subscribe to every cell the tenant's drivers are known to be in.
    LoadCells(TenantId),
}

/// What a dispatcher socket watches, in channel cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Interest {
    All,
    Cells(HashSet<CellIndex>),
}

impl Interest {
    pub(super) fn of(viewport: Option<&Viewport>) -> Self {
        let Some(v) = viewport else {
            return Self::All;
        };
        let mut cells = HashSet::new();
        for &c in v.cells.values().flatten() {
            if c.resolution() >= CHANNEL_RES {
                cells.extend(c.parent(CHANNEL_RES));
            } else if c.children_count(CHANNEL_RES) + cells.len() as u64 > MAX_CHANNEL_CELLS {
                return Self::All;
            } else {
                cells.extend(c.children(CHANNEL_RES));
            }
            if cells.len() as u64 > MAX_CHANNEL_CELLS {
                return Self::All;
            }
        }
        Self::Cells(cells)
    }
}

/// A message between nodes; `n` names the node that sent it.
#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub(super) enum Wire {
    Position {
        n: String,
        t: TenantId,
        d: SubjectId,
        f: Fix,
    },
    Patient {
        n: String,
        t: TenantId,
        id: DeliveryId,
        v: String,
    },
    Kick {
        n: String,
        t: TenantId,
        d: DeviceId,
        revoked: bool,
    },
    /// Asks every node to publish its patient views again: all of them
    /// (after a gap), or one delivery's (a patient just subscribed here).
    Resync {
        n: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        want: Option<(TenantId, DeliveryId)>,
    },
    /// A delivery message for dispatchers whose estimate moved with its
    /// driver's fixes on the sending node.
    Delivery { n: String, t: TenantId, v: String },
    /// A node publishes positions in a new cell of the tenant's; the
    /// position that opened it comes along (a node subscribing to the cell
    /// only now would miss it otherwise).
    Cell {
        n: String,
        t: TenantId,
        c: String,
        d: SubjectId,
        f: Fix,
    },
}

/// A [`Wire::Position`] as it is written, without copying its parts (one
/// per fix).
#[derive(Serialize)]
#[serde(tag = "k", rename = "position")]
pub(super) struct PositionRef<'a> {
    pub n: &'a str,
    pub t: &'a TenantId,
    pub d: &'a SubjectId,
    pub f: &'a Fix,
}

impl Wire {
    pub(super) fn sender(&self) -> &str {
        match self {
            Self::Position { n, .. }
            | Self::Patient { n, .. }
            | Self::Kick { n, .. }
            | Self::Resync { n, .. }
            | Self::Delivery { n, .. }
            | Self::Cell { n, .. } => n,
        }
    }
}

pub(super) fn parse_channel_cell(text: &str) -> Option<CellIndex> {
    text.parse::<CellIndex>()
        .ok()
        .filter(|c| c.resolution() == CHANNEL_RES)
}
