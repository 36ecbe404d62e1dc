//! Deliveries, routes and devices of one tenant, rebuilt from the log.
//!
//! State changes only through events: a command checks the current state and
//! produces [`Draft`]s; each draft is chained into the log and then applied
//! with [`TenantState::apply`], the same function that rebuilds the state
//! from the log at start-up. So what the server believes is always what the
//! log says.
//!
//! Concurrency: one `std::sync::Mutex` per tenant, held only to check,
//! chain, apply and queue the append (no `.await` while it is held); the
//! caller then awaits durability with the lock released, so many requests
//! share one group commit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use geofence::{FenceId, FenceIndex, ProximityConfig, ProximityEvent, TrackConfig};
use serde::{Deserialize, Serialize};

use crate::auth::{Principal, Role};
use crate::eta::{self, Calibration, EtaConfig, ServiceModel, SpeedModel};
use crate::log::{
    Actor, CryptoError, DataKey, Draft, Event, EventKind, Location, Pending, Store, TenantChain,
    Where,
};
use crate::patient::PatientSnapshot;
use crate::protocol::Fix;
use crate::types::{DeliveryId, DeviceId, LatLng, SubjectId, TenantId, UnixMillis};

/// Most stops on one driver's route.
pub const MAX_ROUTE_STOPS: usize = 200;
/// Most vertices of a polygon fence.
pub const MAX_POLYGON_VERTICES: usize = 256;
/// Fence radius bounds, metres.
pub const MIN_RADIUS_M: f64 = 5.0;
pub const MAX_RADIUS_M: f64 = 5000.0;
/// Longest free-text reason on a status change, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Longest recipient first name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// A tracking link keeps working this long after its delivery ends.
pub const LINK_GRACE_MS: i64 = 60 * 60 * 1000;

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    Invalid(String),
    #[error("delivery {0} not found")]
    NotFound(String),
    #[error("delivery {0} already exists")]
    Exists(String),
    #[error("cannot change status from {from} to {to}")]
    Transition {
        from: &'static str,
        to: &'static str,
    },
    #[error("role {0} may not do this")]
    Forbidden(&'static str),
    #[error("sealing the event failed: {0}")]
    Crypto(#[from] CryptoError),
}

/// A delivery's status, as every audience sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Scheduled,
    EnRoute,
    Approaching,
    Arrived,
    Delivered,
    Failed,
    Cancelled,
}

impl Status {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::EnRoute => "en_route",
            Status::Approaching => "approaching",
            Status::Arrived => "arrived",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// En route or approaching: on the way to the patient.
    #[must_use]
    pub fn is_moving(self) -> bool {
        matches!(self, Self::EnRoute | Self::Approaching)
    }

    /// Delivered, failed or cancelled.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Status::Delivered | Status::Failed | Status::Cancelled)
    }
}

/// A status change asked for through the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusChange {
    PickedUp,
    Delivered,
    Failed,
    Cancelled,
}

impl StatusChange {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            StatusChange::PickedUp => "picked_up",
            StatusChange::Delivered => "delivered",
            StatusChange::Failed => "failed",
            StatusChange::Cancelled => "cancelled",
        }
    }

    fn kind(self) -> EventKind {
        match self {
            StatusChange::PickedUp => EventKind::DeliveryPickedUp,
            StatusChange::Delivered => EventKind::DeliveryDelivered,
            StatusChange::Failed => EventKind::DeliveryFailed,
            StatusChange::Cancelled => EventKind::DeliveryCancelled,
        }
    }

    /// The status machine: which changes each status allows, and the result.
    pub fn apply_to(self, from: Status) -> Result<Status, DomainError> {
        use Status as S;
        let to = match (from, self) {
            (S::Scheduled, StatusChange::PickedUp) => S::EnRoute,
            (S::EnRoute | S::Approaching | S::Arrived, StatusChange::Delivered) => S::Delivered,
            (S::EnRoute | S::Approaching | S::Arrived, StatusChange::Failed) => S::Failed,
            (S::Scheduled | S::EnRoute | S::Approaching | S::Arrived, StatusChange::Cancelled) => {
                S::Cancelled
            }
            _ => {
                return Err(DomainError::Transition {
                    from: from.as_str(),
                    to: self.as_str(),
                });
            }
        };
        Ok(to)
    }
}

/// A fence as the API takes it: a circle (`lat`, `lng`, `radius_m`) or a
/// polygon (`polygon`: `[[lat, lng], …]`, with an optional `lat`/`lng` point).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lng: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius_m: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polygon: Option<Vec<[f64; 2]>>,
}

impl Fence {
    /// The point an ETA aims at: the centre, or the mean of the vertices.
    fn target(&self) -> Option<LatLng> {
        match (&self.lat, &self.lng, &self.polygon) {
            (Some(lat), Some(lng), _) => LatLng::new(*lat, *lng).ok(),
            (_, _, Some(poly)) if !poly.is_empty() => {
                let n = poly.len() as f64;
                let lat = poly.iter().map(|p| p[0]).sum::<f64>() / n;
                let lng = poly.iter().map(|p| p[1]).sum::<f64>() / n;
                LatLng::new(lat, lng).ok()
            }
            _ => None,
        }
    }

    /// The geofence this describes, checked (self-intersection included).
    fn to_geofence(&self, name: &str) -> Result<geofence::Fence, DomainError> {
        self.validate(name)?;
        let bad = |e: geofence::FenceError| DomainError::Invalid(format!("{name}: {e}"));
        match (&self.radius_m, &self.polygon, self.lat, self.lng) {
            (Some(r), None, Some(lat), Some(lng)) => {
                geofence::Fence::circle(geofence::Point::new(lat, lng).map_err(bad)?, *r)
                    .map_err(bad)
            }
            (None, Some(poly), _, _) => {
                let fence = geofence::Fence::polygon(&[poly.as_slice()]).map_err(bad)?;
                let (_, reach) = fence.bounds();
                if reach > MAX_RADIUS_M {
                    return Err(DomainError::Invalid(format!(
                        "{name}: the polygon spans {reach:.0} m; at most {MAX_RADIUS_M} m from its first vertex"
                    )));
                }
                Ok(fence)
            }
            _ => Err(DomainError::Invalid(format!(
                "{name}: give radius_m (with lat, lng) or polygon"
            ))),
        }
    }

    fn validate(&self, name: &str) -> Result<(), DomainError> {
        let bad = |m: String| DomainError::Invalid(format!("{name}: {m}"));
        match (self.lat, self.lng) {
            (Some(lat), Some(lng)) => {
                LatLng::new(lat, lng).map_err(|e| bad(e.to_string()))?;
            }
            (None, None) => {}
            _ => return Err(bad("lat and lng go together".into())),
        }
        match (&self.radius_m, &self.polygon) {
            (Some(r), None) => {
                if self.lat.is_none() {
                    return Err(bad("a circle needs lat and lng".into()));
                }
                if !r.is_finite() || !(MIN_RADIUS_M..=MAX_RADIUS_M).contains(r) {
                    return Err(bad(format!(
                        "radius_m {r} is not within {MIN_RADIUS_M}..={MAX_RADIUS_M}"
                    )));
                }
            }
            (None, Some(poly)) => {
                if poly.len() < 3 || poly.len() > MAX_POLYGON_VERTICES {
                    return Err(bad(format!(
                        "polygon needs 3 to {MAX_POLYGON_VERTICES} vertices, got {}",
                        poly.len()
                    )));
                }
                for (i, [lat, lng]) in poly.iter().enumerate() {
                    LatLng::new(*lat, *lng).map_err(|e| bad(format!("polygon[{i}]: {e}")))?;
                }
                let twice_area: f64 = poly
                    .iter()
                    .zip(poly.iter().cycle().skip(1))
                    .map(|(a, b)| a[1] * b[0] - b[1] * a[0])
                    .sum();
                if twice_area.abs() < 1e-14 {
                    return Err(bad("polygon has no area".into()));
                }
            }
            (Some(_), Some(_)) => return Err(bad("give radius_m or polygon, not both".into())),
            (None, None) => return Err(bad("give radius_m (with lat, lng) or polygon".into())),
        }
        Ok(())
    }
}

/// The recipient, as far as rxtrack may know them: a first name, nothing clinical.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub first_name: String,
}

/// A delivery window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub from: i64,
    pub to: i64,
}

/// `POST /v1/deliveries` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDelivery {
    pub id: DeliveryId,
    pub pickup: Fence,
    pub dropoff: Fence,
    pub recipient: Recipient,
    #[serde(default)]
    pub window: Option<Window>,
}

/// What `delivery.created` records (sealed at rest).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CreatedData {
    pickup: Fence,
    dropoff: Fence,
    recipient: Recipient,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    window: Option<Window>,
    /// SHA-256 of the tracking token, hex. The token itself is never stored.
    tracking_token_sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct AssignedData {
    driver_id: Option<SubjectId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stop: Option<usize>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct StatusData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DeviceData {
    device_id: DeviceId,
}

/// One delivery.
#[derive(Clone, Debug)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "each flag mirrors one kind of log event"
)]
pub struct Delivery {
    pub id: DeliveryId,
    pub status: Status,
    pub pickup: Fence,
    pub dropoff: Fence,
    pub recipient: Recipient,
    pub window: Option<Window>,
    pub tracking_token_sha256: String,
    pub driver: Option<SubjectId>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// Where this delivery's events are in the log, in log order.
    pub events: Vec<Location>,
    /// Its pickup and drop-off fences in the tenant's index, while it is active.
    pub fences: Option<(FenceId, FenceId)>,
    /// Whether the driver is at the pickup / at the drop-off, as the log says.
    pub at_pickup: bool,
    pub at_dropoff: bool,
    /// Whether `dropoff.approaching` was recorded.
    pub approached: bool,
    /// When it reached a final status.
    pub ended_at: Option<UnixMillis>,
    pub link_revoked: bool,
    /// The latest arrival estimate.
    pub eta: Option<UnixMillis>,
    /// The estimate dispatchers were last told of.
    eta_told: Option<i64>,
    /// When `dropoff.arrived` was last recorded (server time), until the
    /// driver leaves or the delivery ends: the dwell that teaches the
    /// service time.
    pub arrived_at: Option<UnixMillis>,
    /// Earlier estimates (made at, estimate), one every
    /// `PREDICTION_EVERY_MS`, compared with the real arrival to calibrate
    /// the windows.
    predictions: Vec<(i64, i64)>,
    /// What the patient sees now, and the channel that carries it (encoded
    /// once; latest wins, so a slow reader never holds anyone up).
    pub snapshot: PatientSnapshot,
    pub patient: watch::Sender<Utf8Bytes>,
}

impl Delivery {
    /// The point the ETA aims at: the drop-off's centre.
    fn target(&self) -> Option<LatLng> {
        self.dropoff.target()
    }

    /// Whether its tracking link still works at `now`, given the grace period after the end.
    #[must_use]
    pub fn link_valid(&self, now: UnixMillis, grace_ms: i64) -> bool {
        !self.link_revoked
            && self
                .ended_at
                .is_none_or(|t| now.0 < t.0.saturating_add(grace_ms))
    }
}

/// Below this reported speed a driver is standing, m/s (walking pace, as
/// the detector's `TrackConfig::stop_speed_mps`).
const MOVING_MPS: f64 = 1.4;
/// An estimate is kept for calibration this often per delivery.
const PREDICTION_EVERY_MS: i64 = 30_000;
/// Most estimates kept per delivery (two hours' worth).
const MAX_PREDICTIONS: usize = 240;

/// What the ETA engine knows of a driver.
#[derive(Clone, Debug)]
struct DriverLive {
    pos: LatLng,
    /// Server time of the last fix.
    seen: UnixMillis,
    speed: SpeedModel,
    heading: Option<f64>,
    /// The road plan through the driver's stops, and the stops it was made for.
    plan: Option<(roads::Plan, Vec<LatLng>)>,
    /// Fixes in a row off the planned path.
    off_route: u8,
    /// When a plan was last searched for (server time, ms), and the
    /// targets of the last search that found no plan.
    searched_at: i64,
    unplannable: Option<Vec<LatLng>>,
}

/// A driver's plan is searched for at most this often, ms, unless its
/// stops change.
const SEARCH_BACKOFF_MS: i64 = 20_000;

/// Which end of a delivery a fence is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Pickup,
    Dropoff,
}

/// The staff view of a delivery (`GET /v1/deliveries/{id}`).
#[derive(Debug, Serialize)]
pub struct DeliveryView<'a> {
    pub id: &'a DeliveryId,
    pub status: Status,
    pub pickup: &'a Fence,
    pub dropoff: &'a Fence,
    pub recipient: &'a Recipient,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    pub driver_id: Option<&'a SubjectId>,
    pub stop: Option<usize>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// One tenant's state.
#[derive(Debug)]
pub struct TenantState {
    chain: TenantChain,
    deliveries: HashMap<DeliveryId, Delivery>,
    routes: HashMap<SubjectId, Vec<DeliveryId>>,
    revoked: HashSet<DeviceId>,
    /// Deliveries not yet final, kept as events apply.
    active: usize,
    /// Pickup and drop-off fences of active deliveries.
    fences: FenceIndex,
    /// The deliveries (and which of their stops) a fence serves. Identical
    /// fences are one fence: a pharmacy's pickup of every delivery it sends.
    fence_owner: HashMap<FenceId, Vec<(DeliveryId, Stop)>>,
    /// Fences by their exact shape as the API took it, and back.
    fence_by_shape: HashMap<String, FenceId>,
    fence_shape: HashMap<FenceId, String>,
    /// The fences of each driver's route, as the detector needs them on
    /// every fix; remade when the route or a delivery on it changes.
    route_fences: HashMap<SubjectId, Vec<FenceId>>,
    next_fence: u64,
    /// The proximity detector's state per driver (rebuilt from fixes; the
    /// log's arrived/departed events keep it from repeating itself).
    drivers: HashMap<SubjectId, geofence::Subject>,
    /// Last position and speed per driver, for ETAs.
    driver_live: HashMap<SubjectId, DriverLive>,
    /// Tracking links: SHA-256 of the token (hex) to delivery.
    links: HashMap<String, DeliveryId>,
    eta_cfg: EtaConfig,
    /// How long a tracking link works after its delivery ends, ms.
    link_grace_ms: i64,
    /// The road network (shared by every tenant), and this tenant's speeds
    /// learned on it.
    roads: Option<(Arc<roads::Network>, roads::SpeedTable)>,
    /// ETA errors by horizon, for the width of patients' windows.
    calibration: Calibration,
    /// The service time per stop, learned from dwell.
    service: ServiceModel,
    /// The tenant's name as patients see it.
    display_name: Option<Arc<str>>,
    /// Deliveries whose patient view or estimate moved since last taken.
    view_changes: Vec<DeliveryId>,
    /// Road plan searches this second.
    searches: SearchBudget,
}

/// A tenant: its id and its state behind one lock.
#[derive(Debug)]
pub struct Tenant {
    pub id: TenantId,
    /// The tenant's data key, to open its events outside the lock.
    pub key: Arc<DataKey>,
    state: Mutex<TenantState>,
}

/// An opened tracking link: the current snapshot, later ones, and the delivery.
pub type OpenedLink = (Utf8Bytes, watch::Receiver<Utf8Bytes>, DeliveryId);

/// What a command produced: the plaintext events, and their pending appends.
#[derive(Debug)]
pub struct Committed<T> {
    pub events: Vec<Event>,
    pub pending: Vec<Pending>,
    pub value: T,
    /// Deliveries whose patient window or estimate moved in this command,
    /// for dispatchers once its events are durable.
    pub changed: Vec<DeliveryId>,
}

/// A proximity event of `id`, decided by `fix`.
fn proximity_draft(
    kind: EventKind,
    id: &DeliveryId,
    who: &Principal,
    now: UnixMillis,
    fix: &geofence::Fix,
) -> Draft {
    Draft {
        kind,
        delivery_id: Some(id.as_str().to_owned()),
        at: now.0,
        device_ts: Some(fix.ts_ms),
        actor: actor_of(who),
        where_: Some(Where {
            lat: fix.point.lat(),
            lng: fix.point.lng(),
            acc: fix.accuracy_m,
        }),
        data: serde_json::Value::Null,
    }
}

/// Recomputes what `d`'s patient sees (from its driver's route and last
/// fix); publishes it, encoded once, if it changed. A function of the
/// tenant's parts rather than a method, so that a route's deliveries can be
/// refreshed while the route is borrowed (no copy of it per fix).
/// What a patient sees is computed from these parts of a tenant.
struct PatientParts<'a> {
    routes: &'a HashMap<SubjectId, Vec<DeliveryId>>,
    driver_live: &'a HashMap<SubjectId, DriverLive>,
    cfg: &'a EtaConfig,
    calibration: &'a mut Calibration,
    display_name: Option<&'a Arc<str>>,
    /// Deliveries whose patient view or estimate moved, for dispatchers.
    changed: &'a mut Vec<DeliveryId>,
}

/// Dispatchers hear of an estimate that moved by this much, ms, even when
/// the patient's rounded window did not change.
const ESTIMATE_MOVED_MS: i64 = 30_000;

fn publish_patient(d: &mut Delivery, parts: &mut PatientParts<'_>, now: UnixMillis) {
    let PatientParts {
        routes,
        driver_live,
        cfg,
        calibration,
        display_name,
        changed,
    } = parts;
    let moving = matches!(d.status, Status::EnRoute | Status::Approaching);
    // Stops before this one mean something only once it is on its way.
    let stops_before = d
        .driver
        .as_ref()
        .filter(|_| moving)
        .and_then(|drv| routes.get(drv))
        .and_then(|r| r.iter().position(|s| *s == d.id));
    let quiet = d
        .driver
        .as_ref()
        .and_then(|drv| driver_live.get(drv))
        .is_none_or(|l| now.0 - l.seen.0 > cfg.quiet_ms);
    let eta = d.eta.filter(|_| moving && !quiet).map(|e| {
        let spread = calibration.spread(e.0 - now.0);
        eta::coarse_window(e, now, spread, cfg)
    });
    let next = PatientSnapshot {
        status: d.status,
        stops_before,
        eta,
        updating: moving && eta.is_none(),
        display_name: display_name.cloned(),
        updated_at: now.0,
    };
    let moved = match (d.eta, d.eta_told) {
        (Some(e), Some(t)) => (e.0 - t).abs() >= ESTIMATE_MOVED_MS,
        (e, t) => e.is_some() != t.is_some(),
    };
    let same = next.same_view(&d.snapshot);
    if moved || !same {
        d.eta_told = d.eta.map(|e| e.0);
        changed.push(d.id.clone());
    }
    if same {
        return;
    }
    d.patient.send_replace(Utf8Bytes::from(next.encode()));
    d.snapshot = next;
}

fn actor_of(p: &Principal) -> Actor {
    Actor {
        role: p.role,
        sub: p.sub.as_str().to_owned(),
        device: p.device.as_ref().map(|d| d.as_str().to_owned()),
    }
}

fn draft(
    kind: EventKind,
    delivery: Option<&DeliveryId>,
    at: UnixMillis,
    actor: Actor,
    data: serde_json::Value,
) -> Draft {
    Draft {
        kind,
        delivery_id: delivery.map(|d| d.as_str().to_owned()),
        at: at.0,
        device_ts: None,
        actor,
        where_: None,
        data,
    }
}

fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

impl Tenant {
    #[must_use]
    pub fn new(id: TenantId, key: Arc<DataKey>) -> Self {
        let chain = TenantChain::new(id.as_str().to_owned(), key.clone(), None);
        Self {
            id,
            key,
            state: Mutex::new(TenantState {
                chain,
                deliveries: HashMap::new(),
                routes: HashMap::new(),
                revoked: HashSet::new(),
                active: 0,
                fences: FenceIndex::new(),
                fence_owner: HashMap::new(),
                fence_by_shape: HashMap::new(),
                fence_shape: HashMap::new(),
                route_fences: HashMap::new(),
                next_fence: 0,
                drivers: HashMap::new(),
                driver_live: HashMap::new(),
                links: HashMap::new(),
                eta_cfg: EtaConfig::default(),
                link_grace_ms: LINK_GRACE_MS,
                roads: None,
                calibration: Calibration::default(),
                service: ServiceModel::new(EtaConfig::default().service_ms),
                display_name: None,
                view_changes: Vec::new(),
                searches: SearchBudget::default(),
            }),
        }
    }

    /// The state, for reading. Never hold the guard across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, TenantState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a command: `decide` checks the state and returns drafts; each
    /// draft is chained, applied and queued for the log, all under the lock.
    pub fn commit<T>(
        &self,
        store: &Store,
        decide: impl FnOnce(&mut TenantState) -> Result<(Vec<Draft>, T), DomainError>,
    ) -> Result<Committed<T>, DomainError> {
        let mut st = self.lock();
        let (drafts, value) = decide(&mut st)?;
        let mut events = Vec::with_capacity(drafts.len());
        let mut pending = Vec::with_capacity(drafts.len());
        for d in drafts {
            let (stored, event) = st.chain.chain(d)?;
            st.apply(&event);
            pending.push(store.append(stored.to_line()));
            events.push(event);
        }
        Ok(Committed {
            events,
            pending,
            value,
            changed: std::mem::take(&mut st.view_changes),
        })
    }

    /// Moves the tenant's chain head (after start-up recovery).
    pub fn set_chain_head(&self, seq: u64, hash: String) {
        self.lock().chain.set_head(seq, hash);
    }

    /// Records where durable events landed, for reading them back.
    pub fn record_locations(&self, events: &[Event], locations: &[Location]) {
        let mut st = self.lock();
        for (e, loc) in events.iter().zip(locations) {
            st.record_location(e, *loc);
        }
    }

    /// Replays one event from the log at start-up.
    pub fn replay(
        &self,
        stored: crate::log::StoredEvent,
        loc: Location,
    ) -> Result<(), CryptoError> {
        let mut st = self.lock();
        let event = st.chain.open(stored)?;
        st.apply(&event);
        st.record_location(&event, loc);
        Ok(())
    }

    /// Creates a delivery; returns its id and the tracking token (shown once).
    pub fn create(
        &self,
        store: &Store,
        who: &Principal,
        req: CreateDelivery,
        tracking_token: &str,
        now: UnixMillis,
    ) -> Result<Committed<DeliveryId>, DomainError> {
        require(who, &[Role::Admin, Role::Dispatcher, Role::PharmacyStaff])?;
        req.pickup.to_geofence("pickup")?;
        req.dropoff.to_geofence("dropoff")?;
        let name = req.recipient.first_name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(DomainError::Invalid(format!(
                "recipient.first_name must be 1 to {MAX_NAME_CHARS} printable characters"
            )));
        }
        if let Some(w) = req.window
            && (w.from <= 0 || w.to <= w.from)
        {
            return Err(DomainError::Invalid(
                "window.to must be after window.from".into(),
            ));
        }
        let hash = crate::log::event::hex(
            ring::digest::digest(&ring::digest::SHA256, tracking_token.as_bytes()).as_ref(),
        );
        self.commit(store, |st| {
            if st.deliveries.contains_key(&req.id) {
                return Err(DomainError::Exists(req.id.to_string()));
            }
            let data = CreatedData {
                pickup: req.pickup,
                dropoff: req.dropoff,
                recipient: Recipient {
                    first_name: name.to_owned(),
                },
                window: req.window,
                tracking_token_sha256: hash,
            };
            let d = draft(
                EventKind::DeliveryCreated,
                Some(&req.id),
                now,
                actor_of(who),
                to_value(&data),
            );
            Ok((vec![d], req.id))
        })
    }

    /// Replaces a driver's ordered list of remaining drop-offs.
    pub fn assign_route(
        &self,
        store: &Store,
        who: &Principal,
        driver: &SubjectId,
        stops: &[DeliveryId],
        now: UnixMillis,
    ) -> Result<Committed<()>, DomainError> {
        require(who, &[Role::Admin, Role::Dispatcher])?;
        if stops.len() > MAX_ROUTE_STOPS {
            return Err(DomainError::Invalid(format!(
                "a route has at most {MAX_ROUTE_STOPS} stops"
            )));
        }
        self.commit(store, |st| {
            let mut seen = HashSet::new();
            for id in stops {
                if !seen.insert(id) {
                    return Err(DomainError::Invalid(format!("stop {id} is listed twice")));
                }
                let d = st
                    .deliveries
                    .get(id)
                    .ok_or_else(|| DomainError::NotFound(id.to_string()))?;
                if d.status.is_final() {
                    return Err(DomainError::Invalid(format!(
                        "delivery {id} is {} and cannot be routed",
                        d.status.as_str()
                    )));
                }
            }
            let old = st.routes.get(driver).cloned().unwrap_or_default();
            let mut drafts = Vec::new();
            for id in old.iter().filter(|id| !seen.contains(id)) {
                let data = AssignedData {
                    driver_id: None,
                    stop: None,
                };
                drafts.push(draft(
                    EventKind::DeliveryAssigned,
                    Some(id),
                    now,
                    actor_of(who),
                    to_value(&data),
                ));
            }
            for (i, id) in stops.iter().enumerate() {
                let same = st
                    .deliveries
                    .get(id)
                    .is_some_and(|d| d.driver.as_ref() == Some(driver))
                    && old.get(i) == Some(id);
                if !same {
                    let data = AssignedData {
                        driver_id: Some(driver.clone()),
                        stop: Some(i),
                    };
                    drafts.push(draft(
                        EventKind::DeliveryAssigned,
                        Some(id),
                        now,
                        actor_of(who),
                        to_value(&data),
                    ));
                }
            }
            Ok((drafts, ()))
        })
    }

    /// Changes a delivery's status through the status machine.
    pub fn change_status(
        &self,
        store: &Store,
        who: &Principal,
        id: &DeliveryId,
        change: StatusChange,
        reason: Option<String>,
        now: UnixMillis,
    ) -> Result<Committed<Status>, DomainError> {
        match who.role {
            Role::Admin | Role::Dispatcher => {}
            Role::PharmacyStaff if change == StatusChange::PickedUp => {}
            Role::PharmacyStaff => {
                return Err(DomainError::Forbidden("pharmacy_staff (only picked_up)"));
            }
            r => return Err(DomainError::Forbidden(r.as_str())),
        }
        if let Some(r) = &reason
            && r.chars().count() > MAX_REASON_CHARS
        {
            return Err(DomainError::Invalid(format!(
                "reason is longer than {MAX_REASON_CHARS} characters"
            )));
        }
        self.commit(store, |st| {
            let d = st
                .deliveries
                .get(id)
                .ok_or_else(|| DomainError::NotFound(id.to_string()))?;
            let to = change.apply_to(d.status)?;
            let data = StatusData { reason };
            let value = if data.reason.is_some() {
                to_value(&data)
            } else {
                serde_json::Value::Null
            };
            Ok((
                vec![draft(change.kind(), Some(id), now, actor_of(who), value)],
                to,
            ))
        })
    }

    /// Revokes a device: its tokens are refused from now on.
    pub fn revoke_device(
        &self,
        store: &Store,
        who: &Principal,
        device: &DeviceId,
        now: UnixMillis,
    ) -> Result<Committed<bool>, DomainError> {
        require(who, &[Role::Admin])?;
        self.commit(store, |st| {
            if st.revoked.contains(device) {
                return Ok((Vec::new(), false));
            }
            let data = DeviceData {
                device_id: device.clone(),
            };
            Ok((
                vec![draft(
                    EventKind::DeviceRevoked,
                    None,
                    now,
                    actor_of(who),
                    to_value(&data),
                )],
                true,
            ))
        })
    }

    /// Feeds a driver's accepted fixes to the proximity detector; returns the
    /// arrived/departed events they caused, queued for the log.
    pub fn observe(
        &self,
        store: &Store,
        who: &Principal,
        fixes: &[Fix],
    ) -> Result<Committed<()>, DomainError> {
        self.commit(store, |st| {
            Ok((st.proximity_drafts(who, fixes, UnixMillis::now()), ()))
        })
    }

    /// Opens a tracking link: if the token's link is valid, records
    /// `link.opened` (accounting of who saw what) and returns the current
    /// snapshot and a subscription to later ones. `None`: no such valid link.
    pub fn open_link(
        &self,
        store: &Store,
        token_sha256: &str,
        now: UnixMillis,
    ) -> Result<Option<Committed<OpenedLink>>, DomainError> {
        let mut opened = None;
        let committed = self.commit(store, |st| {
            let Some(d) = st.link(token_sha256, now) else {
                return Ok((Vec::new(), ()));
            };
            let rx = d.patient.subscribe();
            let text = rx.borrow().clone();
            opened = Some((text, rx, d.id.clone()));
            let actor = Actor {
                role: Role::TrackingLink,
                sub: "link".into(),
                device: None,
            };
            Ok((
                vec![draft(
                    EventKind::LinkOpened,
                    Some(&d.id),
                    now,
                    actor,
                    serde_json::Value::Null,
                )],
                (),
            ))
        })?;
        Ok(opened.map(|value| Committed {
            events: committed.events,
            pending: committed.pending,
            value,
            changed: committed.changed,
        }))
    }

    /// Whether a tracking link is still valid (for open sockets).
    #[must_use]
    pub fn link_is_valid(&self, token_sha256: &str, now: UnixMillis) -> bool {
        self.lock().link(token_sha256, now).is_some()
    }

    /// Revokes a delivery's tracking link: it answers 404 from now on.
    pub fn revoke_link(
        &self,
        store: &Store,
        who: &Principal,
        id: &DeliveryId,
        now: UnixMillis,
    ) -> Result<Committed<()>, DomainError> {
        require(who, &[Role::Admin, Role::Dispatcher])?;
        self.commit(store, |st| {
            let d = st
                .deliveries
                .get(id)
                .ok_or_else(|| DomainError::NotFound(id.to_string()))?;
            if d.link_revoked {
                return Ok((Vec::new(), ()));
            }
            Ok((
                vec![draft(
                    EventKind::LinkRevoked,
                    Some(id),
                    now,
                    actor_of(who),
                    serde_json::Value::Null,
                )],
                (),
            ))
        })
    }

    /// Applies the configuration: the link grace period, the ETA tunables,
    /// the road network (if any) and the name patients see.
    pub fn configure(
        &self,
        link_grace_ms: i64,
        eta: EtaConfig,
        network: Option<Arc<roads::Network>>,
        display_name: Option<Arc<str>>,
    ) {
        let mut st = self.lock();
        st.link_grace_ms = link_grace_ms;
        st.eta_cfg = eta;
        st.service = ServiceModel::new(eta.service_ms);
        st.roads = network.map(|n| {
            let speeds = roads::SpeedTable::new(&n, eta.road_speed_factor);
            (n, speeds)
        });
        st.display_name = display_name;
    }

    /// Marks quiet drivers' patients as "updating"; returns the deliveries
    /// whose view changed.
    pub fn refresh_quiet(&self, now: UnixMillis) -> Vec<DeliveryId> {
        let mut st = self.lock();
        st.refresh_quiet(now);
        std::mem::take(&mut st.view_changes)
    }

    /// Records an export in the log (HIPAA accounting of disclosures).
    pub fn log_exported(
        &self,
        store: &Store,
        who: &Principal,
        from: i64,
        to: i64,
        now: UnixMillis,
    ) -> Result<Committed<()>, DomainError> {
        let data = serde_json::json!({ "from": from, "to": to });
        self.commit(store, |_| {
            Ok((
                vec![draft(
                    EventKind::LogExported,
                    None,
                    now,
                    actor_of(who),
                    data,
                )],
                (),
            ))
        })
    }
}

fn require(who: &Principal, roles: &[Role]) -> Result<(), DomainError> {
    if roles.contains(&who.role) {
        Ok(())
    } else {
        Err(DomainError::Forbidden(who.role.as_str()))
    }
}

/// Plan searches a tenant may run per second (each takes 0.1–1 ms under
/// the tenant's lock): a fleet reconnecting at once, or a burst of route
/// changes, gets straight-line estimates for a few seconds rather than a
/// stalled tenant.
const SEARCHES_PER_SECOND: u32 = 100;

/// The searches of the current second.
#[derive(Clone, Copy, Debug, Default)]
struct SearchBudget {
    second: i64,
    used: u32,
}

impl SearchBudget {
    fn take(&mut self, now: UnixMillis) -> bool {
        let second = now.0.div_euclid(1000);
        if second != self.second {
            *self = Self { second, used: 0 };
        }
        self.used < SEARCHES_PER_SECOND && {
            self.used += 1;
            true
        }
    }
}

/// Seconds of driving from the driver to each target: along its road plan
/// (searched again when the targets change or after the driver left it,
/// within the tenant's search budget; timed again with the learned speeds
/// when older than `replan_ms`), else by the straight line.
fn drive_seconds(
    live: &mut DriverLive,
    targets: &[LatLng],
    roads: &mut Option<(Arc<roads::Network>, roads::SpeedTable)>,
    budget: &mut SearchBudget,
    cfg: &EtaConfig,
    now: UnixMillis,
) -> Vec<f64> {
    if let Some((net, speeds)) = roads {
        let current = live
            .plan
            .as_ref()
            .is_some_and(|(_, stops)| stops.as_slice() == targets);
        if current {
            if let Some((plan, _)) = live.plan.as_mut()
                && now.0 - plan.made_at_ms > cfg.replan_ms
            {
                plan.retime(speeds, now.0);
            }
        } else {
            // Stops that found no plan are tried again only after a while.
            let hopeless = live.unplannable.as_deref() == Some(targets)
                && now.0 - live.searched_at < SEARCH_BACKOFF_MS;
            if !hopeless && budget.take(now) {
                let points: Vec<(f64, f64)> = targets.iter().map(|t| (t.lat, t.lng)).collect();
                live.plan = roads::Plan::new(
                    net,
                    (live.pos.lat, live.pos.lng),
                    live.heading,
                    &points,
                    speeds,
                    now.0,
                )
                .map(|p| (p, targets.to_vec()));
                live.off_route = 0;
                live.searched_at = now.0;
                live.unplannable = live.plan.is_none().then(|| targets.to_vec());
            }
        }
        if let Some((plan, stops)) = &live.plan
            && stops.as_slice() == targets
        {
            return plan.remaining_s();
        }
    }
    eta::straight_line_s(live.pos, targets, live.speed.speed(cfg), cfg)
}

impl TenantState {
    /// Applies one event to the state. Used live and when replaying the log;
    /// an event whose details do not parse is skipped with a warning rather
    /// than stopping the server (the chain has already been verified).
    #[allow(
        clippy::too_many_lines,
        reason = "one arm per event kind, read as the table of what each does"
    )]
    pub fn apply(&mut self, e: &Event) {
        let id = e
            .delivery_id
            .as_deref()
            .and_then(|d| DeliveryId::parse(d).ok());
        let at = UnixMillis(e.at);
        match (e.kind, id) {
            (EventKind::DeliveryCreated, Some(id)) => self.apply_created(id, at, e),
            (EventKind::DeliveryAssigned, Some(id)) => {
                let Ok(a) = serde_json::from_value::<AssignedData>(e.data.clone()) else {
                    return;
                };
                let Some(d) = self.deliveries.get_mut(&id) else {
                    return;
                };
                let previous = d.driver.take();
                d.driver.clone_from(&a.driver_id);
                d.updated_at = at;
                if let Some(r) = previous.as_ref().and_then(|p| self.routes.get_mut(p)) {
                    r.retain(|s| s != &id);
                }
                if let Some(p) = &previous {
                    self.cache_route_fences(p);
                    self.refresh_route(p, at);
                }
                if let (Some(driver), Some(stop)) = (&a.driver_id, a.stop) {
                    let r = self.routes.entry(driver.clone()).or_default();
                    r.retain(|s| s != &id);
                    r.insert(stop.min(r.len()), id.clone());
                }
                if let Some(driver) = &a.driver_id {
                    self.cache_route_fences(driver);
                    self.refresh_route(driver, at);
                }
                self.refresh_patient(&id, at);
            }
            (
                kind @ (EventKind::DeliveryPickedUp
                | EventKind::DeliveryDelivered
                | EventKind::DeliveryFailed
                | EventKind::DeliveryCancelled),
                Some(id),
            ) => {
                let change = match kind {
                    EventKind::DeliveryPickedUp => StatusChange::PickedUp,
                    EventKind::DeliveryDelivered => StatusChange::Delivered,
                    EventKind::DeliveryFailed => StatusChange::Failed,
                    _ => StatusChange::Cancelled,
                };
                let Some(d) = self.deliveries.get_mut(&id) else {
                    return;
                };
                // A hand-over (at the pharmacy or the door) ends the
                // driver's stop: what comes next arrives on a stop of its own.
                if let Some(s) = d.driver.as_ref().and_then(|drv| self.drivers.get_mut(drv)) {
                    s.forget_stop();
                }
                if let Ok(to) = change.apply_to(d.status) {
                    if to.is_final() {
                        self.active = self.active.saturating_sub(1);
                        d.ended_at = Some(at);
                        d.predictions = Vec::new();
                        if let Some(t) = d.arrived_at.take() {
                            self.service.observe(at.0 - t.0);
                        }
                    }
                    d.status = to;
                    d.updated_at = at;
                }
                let route_of = d.driver.clone();
                let driver = d.driver.clone().filter(|_| d.status.is_final());
                let ended = d.status.is_final().then(|| d.fences.take()).flatten();
                if let Some(r) = driver.and_then(|drv| self.routes.get_mut(&drv)) {
                    r.retain(|s| s != &id);
                }
                if let Some((p, q)) = ended {
                    for f in [p, q] {
                        self.release_fence(f, &id);
                    }
                }
                self.refresh_patient(&id, at);
                if let Some(drv) = route_of {
                    self.cache_route_fences(&drv);
                    self.refresh_route(&drv, at);
                }
            }
            (
                kind @ (EventKind::PickupArrived
                | EventKind::PickupDeparted
                | EventKind::DropoffApproaching
                | EventKind::DropoffArrived
                | EventKind::DropoffDeparted),
                Some(id),
            ) => {
                self.apply_proximity(kind, &id, at, e.device_ts);
            }
            (EventKind::LinkRevoked, Some(id)) => {
                if let Some(d) = self.deliveries.get_mut(&id) {
                    d.link_revoked = true;
                    // Dropping the sender ends every open tracking socket.
                    d.patient = watch::channel(Utf8Bytes::from_static("")).0;
                }
            }
            (EventKind::DeviceRevoked, _) => {
                if let Ok(dd) = serde_json::from_value::<DeviceData>(e.data.clone()) {
                    self.revoked.insert(dd.device_id);
                }
            }
            _ => {}
        }
    }

    fn add_fences(
        &mut self,
        id: &DeliveryId,
        pickup: &Fence,
        dropoff: &Fence,
    ) -> Option<(FenceId, FenceId)> {
        let (Ok(p), Ok(q)) = (pickup.to_geofence("pickup"), dropoff.to_geofence("dropoff")) else {
            tracing::warn!("a delivery's fences no longer validate; it gets no proximity events");
            return None;
        };
        Some((
            self.share_fence(id, Stop::Pickup, pickup, p),
            self.share_fence(id, Stop::Dropoff, dropoff, q),
        ))
    }

    /// The fence of this exact shape, made if no active delivery has it yet;
    /// `id`'s `stop` becomes one of its owners.
    fn share_fence(
        &mut self,
        id: &DeliveryId,
        stop: Stop,
        shape: &Fence,
        fence: geofence::Fence,
    ) -> FenceId {
        let key = serde_json::to_string(shape).unwrap_or_default();
        let fid = if let Some(&f) = self.fence_by_shape.get(&key) {
            f
        } else {
            let f = FenceId(self.next_fence);
            self.next_fence += 1;
            self.fences.insert(f, fence);
            self.fence_by_shape.insert(key.clone(), f);
            self.fence_shape.insert(f, key);
            f
        };
        self.fence_owner
            .entry(fid)
            .or_default()
            .push((id.clone(), stop));
        fid
    }

    /// The fences of `driver`'s route, from the route and its deliveries.
    fn fences_of_route(&self, driver: &SubjectId) -> Vec<FenceId> {
        self.routes
            .get(driver)
            .into_iter()
            .flatten()
            .filter_map(|id| self.deliveries.get(id)?.fences)
            .flat_map(|(pickup, dropoff)| [pickup, dropoff])
            .collect()
    }

    fn cache_route_fences(&mut self, driver: &SubjectId) {
        let fences = self.fences_of_route(driver);
        if fences.is_empty() {
            self.route_fences.remove(driver);
        } else {
            self.route_fences.insert(driver.clone(), fences);
        }
    }

    /// `id` no longer uses fence `f`; the last owner's leaving removes it.
    fn release_fence(&mut self, f: FenceId, id: &DeliveryId) {
        let Some(owners) = self.fence_owner.get_mut(&f) else {
            return;
        };
        owners.retain(|(o, _)| o != id);
        if owners.is_empty() {
            self.fence_owner.remove(&f);
            self.fences.remove(f);
            if let Some(key) = self.fence_shape.remove(&f) {
                self.fence_by_shape.remove(&key);
            }
        }
    }

    /// Runs a driver's new fixes through the proximity detector and returns
    /// the log events they cause: arrived and departed at the pickup and
    /// drop-off of deliveries on this driver's route, each at most once per
    /// visit as the log already records it.
    fn proximity_drafts(&mut self, who: &Principal, fixes: &[Fix], now: UnixMillis) -> Vec<Draft> {
        let mut found = Vec::new();
        debug_assert_eq!(
            self.route_fences.get(&who.sub).cloned().unwrap_or_default(),
            self.fences_of_route(&who.sub),
            "the cached route fences are stale"
        );
        // The detector is made once per driver, not per ping.
        if !self.drivers.contains_key(&who.sub) {
            self.drivers
                .insert(who.sub.clone(), geofence::Subject::default());
        }
        // Only the fences of the driver's own stops count: a pharmacy's
        // pickup fence lies among many other fences at one spot.
        let mine = self
            .route_fences
            .get(&who.sub)
            .map_or(&[][..], Vec::as_slice);
        let Some(detector) = self.drivers.get_mut(&who.sub) else {
            return Vec::new();
        };
        for f in fixes {
            let Ok(point) = geofence::Point::new(f.pos.lat, f.pos.lng) else {
                continue;
            };
            let fix = geofence::Fix {
                ts_ms: f.ts.0,
                point,
                accuracy_m: f.acc,
                speed_mps: f.speed,
            };
            // A stop's fence counts only once the driver has stopped there:
            // driving past a later stop on the route is not arriving.
            detector.observe_only(
                &self.fences,
                &fix,
                &TrackConfig::default(),
                |_| ProximityConfig::stop(),
                |id| mine.contains(&id),
                &mut found,
            );
        }
        let mut drafts = self.approaching_drafts(who, fixes, now);
        let route = self.routes.get(&who.sub);
        // Flags as the events of this batch would leave them.
        let mut flags: HashMap<DeliveryId, (bool, bool)> = HashMap::new();
        // A shared fence's event counts for each of the driver's deliveries at it.
        let found = found.into_iter().flat_map(|(fence, event)| {
            self.fence_owner
                .get(&fence)
                .into_iter()
                .flatten()
                .map(move |(id, stop)| (id, *stop, event))
        });
        let (Some(route), Some(detector)) = (route, self.drivers.get(&who.sub)) else {
            return drafts;
        };
        for (id, stop, event) in found {
            if !route.contains(id) {
                continue;
            }
            let Some(d) = self.deliveries.get(id) else {
                continue;
            };
            let arriving = matches!(event, ProximityEvent::Entered(_));
            if arriving && !self.may_arrive(route, detector, id, stop) {
                continue;
            }
            let (at_pickup, at_dropoff) = flags
                .entry(id.clone())
                .or_insert((d.at_pickup, d.at_dropoff));
            let (kind, fix) = match (stop, event) {
                (Stop::Pickup, ProximityEvent::Entered(f)) if !*at_pickup => {
                    *at_pickup = true;
                    (EventKind::PickupArrived, f)
                }
                (Stop::Pickup, ProximityEvent::Exited(f)) if *at_pickup => {
                    *at_pickup = false;
                    (EventKind::PickupDeparted, f)
                }
                (Stop::Dropoff, ProximityEvent::Entered(f)) if !*at_dropoff => {
                    *at_dropoff = true;
                    (EventKind::DropoffArrived, f)
                }
                (Stop::Dropoff, ProximityEvent::Exited(f)) if *at_dropoff => {
                    *at_dropoff = false;
                    (EventKind::DropoffDeparted, f)
                }
                _ => continue,
            };
            drafts.push(proximity_draft(kind, id, who, now, &fix));
        }
        self.arrivals_inside(who, now, &flags, &mut drafts);
        drafts
    }

    /// Whether `id` may be recorded as arrived at `stop` now: a pickup only
    /// while its order waits there; a drop-off only once it is on its way,
    /// and not while the driver stands in the fence of an earlier drop-off
    /// of its route (two doors within one fence: the earlier one first; the
    /// later one arrives if the driver is still stopped there once the
    /// earlier one is done).
    fn may_arrive(
        &self,
        route: &[DeliveryId],
        detector: &geofence::Subject,
        id: &DeliveryId,
        stop: Stop,
    ) -> bool {
        let Some(d) = self.deliveries.get(id) else {
            return false;
        };
        match stop {
            Stop::Pickup => d.status == Status::Scheduled,
            Stop::Dropoff => {
                d.status.is_moving()
                    && !route
                        .iter()
                        .take_while(|r| *r != id)
                        .filter_map(|r| self.deliveries.get(r))
                        .any(|e| {
                            (e.status.is_moving() || e.status == Status::Arrived)
                                && e.fences.is_some_and(|(_, f)| detector.is_inside(f))
                        })
            }
        }
    }

    /// A delivery whose driver is stopped inside its fence without having
    /// arrived arrives with the driver's newest trusted fix: one added to
    /// the route while the driver waits at a fence it shares with another
    /// (a second order collected at the same pharmacy), or a door whose
    /// arrival waited for an earlier door in the same fence. `flags`: the
    /// arrived flags as this batch's events leave them.
    fn arrivals_inside(
        &self,
        who: &Principal,
        now: UnixMillis,
        flags: &HashMap<DeliveryId, (bool, bool)>,
        drafts: &mut Vec<Draft>,
    ) {
        let (Some(route), Some(detector)) = (self.routes.get(&who.sub), self.drivers.get(&who.sub))
        else {
            return;
        };
        let Some(last) = detector.track().last_trusted() else {
            return;
        };
        if !detector.is_stopped() {
            return;
        }
        for id in route {
            let Some(d) = self.deliveries.get(id) else {
                continue;
            };
            let Some((pickup, dropoff)) = d.fences else {
                continue;
            };
            let (at_pickup, at_dropoff) = flags
                .get(id)
                .copied()
                .unwrap_or((d.at_pickup, d.at_dropoff));
            if detector.is_inside(pickup)
                && !at_pickup
                && self.may_arrive(route, detector, id, Stop::Pickup)
            {
                drafts.push(proximity_draft(
                    EventKind::PickupArrived,
                    id,
                    who,
                    now,
                    &last,
                ));
            }
            if detector.is_inside(dropoff)
                && !at_dropoff
                && self.may_arrive(route, detector, id, Stop::Dropoff)
            {
                drafts.push(proximity_draft(
                    EventKind::DropoffArrived,
                    id,
                    who,
                    now,
                    &last,
                ));
            }
        }
    }

    fn apply_created(&mut self, id: DeliveryId, at: UnixMillis, e: &Event) {
        let Ok(c) = serde_json::from_value::<CreatedData>(e.data.clone()) else {
            tracing::warn!(
                seq = e.seq,
                "delivery.created without readable details; skipped"
            );
            return;
        };
        self.active += 1;
        let fences = self.add_fences(&id, &c.pickup, &c.dropoff);
        self.links
            .insert(c.tracking_token_sha256.clone(), id.clone());
        let snapshot = PatientSnapshot {
            status: Status::Scheduled,
            stops_before: None,
            eta: None,
            updating: false,
            display_name: self.display_name.clone(),
            updated_at: at.0,
        };
        let (patient, _) = watch::channel(Utf8Bytes::from(snapshot.encode()));
        self.deliveries.insert(
            id.clone(),
            Delivery {
                id,
                status: Status::Scheduled,
                pickup: c.pickup,
                dropoff: c.dropoff,
                recipient: c.recipient,
                window: c.window,
                tracking_token_sha256: c.tracking_token_sha256,
                driver: None,
                created_at: at,
                updated_at: at,
                events: Vec::new(),
                fences,
                at_pickup: false,
                at_dropoff: false,
                approached: false,
                ended_at: None,
                link_revoked: false,
                eta: None,
                eta_told: None,
                arrived_at: None,
                predictions: Vec::new(),
                snapshot,
                patient,
            },
        );
    }

    /// Recomputes the ETAs of a driver's route and its patients' snapshots.
    fn refresh_route(&mut self, driver: &SubjectId, now: UnixMillis) {
        let Some(route) = self.routes.get(driver) else {
            return;
        };
        // The pharmacy before the first delivery on the route that waits
        // there (orders already on board come before it).
        let waiting = route.iter().position(|id| {
            self.deliveries
                .get(id)
                .is_some_and(|d| d.status == Status::Scheduled)
        });
        let pickup = waiting
            .and_then(|i| self.deliveries.get(&route[i]))
            .and_then(|d| d.pickup.target());
        let at_pickup = waiting.filter(|_| pickup.is_some());
        let mut targets: Option<Vec<LatLng>> = route
            .iter()
            .map(|id| self.deliveries.get(id).and_then(Delivery::target))
            .collect();
        if let (Some(t), Some(i), Some(p)) = (targets.as_mut(), at_pickup, pickup) {
            t.insert(i, p);
        }
        let service = self.service.ms();
        // What is left of the service at the stop the driver is at.
        let first_service = route
            .first()
            .and_then(|id| self.deliveries.get(id))
            .and_then(|d| d.arrived_at)
            .filter(|_| at_pickup != Some(0))
            .map_or(service, |t| (service - (now.0 - t.0)).max(0));
        let etas = match (self.driver_live.get_mut(driver), targets) {
            (Some(live), Some(targets)) if !targets.is_empty() => {
                let drive = drive_seconds(
                    live,
                    &targets,
                    &mut self.roads,
                    &mut self.searches,
                    &self.eta_cfg,
                    now,
                );
                let mut all = eta::schedule(now, &drive, first_service, service);
                // The pharmacy's own estimate is nobody's.
                if let Some(i) = at_pickup.filter(|i| *i < all.len()) {
                    all.remove(i);
                }
                all
            }
            _ => Vec::new(),
        };
        let mut parts = PatientParts {
            routes: &self.routes,
            driver_live: &self.driver_live,
            cfg: &self.eta_cfg,
            calibration: &mut self.calibration,
            display_name: self.display_name.as_ref(),
            changed: &mut self.view_changes,
        };
        for (i, id) in route.iter().enumerate() {
            if let Some(d) = self.deliveries.get_mut(id) {
                d.eta = etas.get(i).copied();
                if let Some(e) = d.eta.filter(|_| d.status.is_moving()) {
                    let due = d
                        .predictions
                        .last()
                        .is_none_or(|p| now.0 - p.0 >= PREDICTION_EVERY_MS);
                    if due {
                        if d.predictions.len() >= MAX_PREDICTIONS {
                            // Thinned, not refused: every horizon keeps some.
                            let mut i = 0;
                            d.predictions.retain(|_| {
                                i += 1;
                                i % 2 == 0
                            });
                        }
                        d.predictions.push((now.0, e.0));
                    }
                }
                publish_patient(d, &mut parts, now);
            }
        }
    }

    /// Recomputes what a delivery's patient sees; publishes it if it changed.
    fn refresh_patient(&mut self, id: &DeliveryId, now: UnixMillis) {
        if let Some(d) = self.deliveries.get_mut(id) {
            let mut parts = PatientParts {
                routes: &self.routes,
                driver_live: &self.driver_live,
                cfg: &self.eta_cfg,
                calibration: &mut self.calibration,
                display_name: self.display_name.as_ref(),
                changed: &mut self.view_changes,
            };
            publish_patient(d, &mut parts, now);
        }
    }

    /// Marks drivers without a recent fix as quiet for their patients.
    pub fn refresh_quiet(&mut self, now: UnixMillis) {
        let quiet: Vec<SubjectId> = self
            .driver_live
            .iter()
            .filter(|(_, l)| now.0 - l.seen.0 > self.eta_cfg.quiet_ms)
            .map(|(d, _)| d.clone())
            .collect();
        for d in quiet {
            self.refresh_route(&d, now);
        }
    }

    /// The delivery a tracking token opens, if the link is valid now.
    #[must_use]
    pub fn link(&self, token_sha256: &str, now: UnixMillis) -> Option<&Delivery> {
        let id = self.links.get(token_sha256)?;
        self.deliveries
            .get(id)
            .filter(|d| d.link_valid(now, self.link_grace_ms))
    }

    /// `device_ts`: when the deciding fix was taken (the real arrival, for
    /// calibrating the windows).
    fn apply_proximity(
        &mut self,
        kind: EventKind,
        id: &DeliveryId,
        at: UnixMillis,
        device_ts: Option<i64>,
    ) {
        let Some(d) = self.deliveries.get_mut(id) else {
            return;
        };
        match kind {
            EventKind::PickupArrived => d.at_pickup = true,
            EventKind::PickupDeparted => d.at_pickup = false,
            EventKind::DropoffApproaching => {
                d.approached = true;
                if d.status == Status::EnRoute {
                    d.status = Status::Approaching;
                }
            }
            EventKind::DropoffArrived => {
                d.at_dropoff = true;
                if d.status.is_moving() {
                    d.status = Status::Arrived;
                    d.arrived_at = Some(at);
                    // How far off its earlier estimates were.
                    let actual = device_ts.unwrap_or(at.0).min(at.0);
                    self.calibration
                        .record_delivery(&std::mem::take(&mut d.predictions), actual);
                }
            }
            _ => {
                d.at_dropoff = false;
                // Left without a hand-over: on the way again, and the
                // approach may be announced again.
                if d.status == Status::Arrived {
                    d.status = Status::EnRoute;
                    d.approached = false;
                }
                if let Some(t) = d.arrived_at.take() {
                    self.service.observe(at.0 - t.0);
                }
            }
        }
        d.updated_at = at;
        let driver = d.driver.clone();
        self.refresh_patient(id, at);
        if let Some(drv) = driver {
            self.refresh_route(&drv, at);
        }
    }

    /// Updates the driver's position and speed, the ETAs of its route, and
    /// returns `dropoff.approaching` for stops whose ETA fell under the threshold.
    fn approaching_drafts(
        &mut self,
        who: &Principal,
        fixes: &[Fix],
        now: UnixMillis,
    ) -> Vec<Draft> {
        let Some(last) = fixes.iter().max_by_key(|f| f.ts) else {
            return Vec::new();
        };
        let cfg = self.eta_cfg;
        if !self.driver_live.contains_key(&who.sub) {
            self.driver_live.insert(
                who.sub.clone(),
                DriverLive {
                    pos: last.pos,
                    seen: now,
                    speed: SpeedModel::default(),
                    heading: None,
                    plan: None,
                    off_route: 0,
                    searched_at: i64::MIN,
                    unplannable: None,
                },
            );
        }
        let Some(live) = self.driver_live.get_mut(&who.sub) else {
            return Vec::new();
        };
        // Stopped at a stop of the route: no speed sample is a road's speed.
        let at_stop = self.routes.get(&who.sub).is_some_and(|r| {
            r.iter()
                .filter_map(|id| self.deliveries.get(id))
                .any(|d| d.at_dropoff || (d.at_pickup && d.status == Status::Scheduled))
        });
        for f in fixes {
            if let Some(s) = f.speed {
                live.speed.observe(s, &cfg);
            }
            if f.heading.is_some() {
                live.heading = f.heading;
            }
            // A fix too vague to place on a street tells nothing of the plan.
            if f.acc.is_some_and(|a| a.is_nan() || a > cfg.off_route_m) {
                continue;
            }
            let (Some((net, speeds)), Some((plan, _))) = (self.roads.as_mut(), live.plan.as_mut())
            else {
                continue;
            };
            match plan.advance(net, (f.pos.lat, f.pos.lng), f.ts.0, cfg.off_route_m) {
                roads::Advance::On(sample) => {
                    live.off_route = 0;
                    // Standing (at a stop, or as the phone says) is not a
                    // road's speed; a slow crawl in traffic is.
                    let standing = at_stop || f.speed.is_some_and(|v| v < MOVING_MPS);
                    if let Some((edge, mps)) = sample.filter(|_| !standing) {
                        speeds.observe(edge, mps);
                    }
                }
                roads::Advance::Off => {
                    live.off_route = live.off_route.saturating_add(1);
                    // Two fixes in a row off the path: plan again from here
                    // (not more often than every `SEARCH_BACKOFF_MS`: a
                    // driver waiting in a yard off the street stays "off").
                    if live.off_route >= 2 && now.0 - live.searched_at >= SEARCH_BACKOFF_MS {
                        live.plan = None;
                    }
                }
            }
        }
        live.pos = last.pos;
        live.seen = now;
        self.refresh_route(&who.sub, now);
        let Some(route) = self.routes.get(&who.sub) else {
            return Vec::new();
        };
        route
            .iter()
            .filter_map(|id| self.deliveries.get(id))
            .filter(|d| d.status == Status::EnRoute && !d.approached)
            .filter(|d| d.eta.is_some_and(|e| e.0 - now.0 <= cfg.approaching_ms))
            .map(|d| Draft {
                kind: EventKind::DropoffApproaching,
                delivery_id: Some(d.id.as_str().to_owned()),
                at: now.0,
                device_ts: Some(last.ts.0),
                actor: actor_of(who),
                where_: Some(Where {
                    lat: last.pos.lat,
                    lng: last.pos.lng,
                    acc: last.acc,
                }),
                data: serde_json::json!({ "eta": d.eta.map(|e| e.0) }),
            })
            .collect()
    }

    fn record_location(&mut self, e: &Event, loc: Location) {
        let Some(id) = e
            .delivery_id
            .as_deref()
            .and_then(|d| DeliveryId::parse(d).ok())
        else {
            return;
        };
        if let Some(d) = self.deliveries.get_mut(&id) {
            let at = d
                .events
                .partition_point(|l| (l.segment, l.offset) < (loc.segment, loc.offset));
            d.events.insert(at, loc);
        }
    }

    #[must_use]
    pub fn delivery(&self, id: &DeliveryId) -> Option<&Delivery> {
        self.deliveries.get(id)
    }

    /// The staff view of a delivery.
    #[must_use]
    pub fn view<'a>(&'a self, d: &'a Delivery) -> DeliveryView<'a> {
        let stop = d
            .driver
            .as_ref()
            .and_then(|drv| self.routes.get(drv))
            .and_then(|r| r.iter().position(|s| s == &d.id));
        DeliveryView {
            id: &d.id,
            status: d.status,
            pickup: &d.pickup,
            dropoff: &d.dropoff,
            recipient: &d.recipient,
            window: d.window,
            driver_id: d.driver.as_ref(),
            stop,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }

    /// Deliveries not yet in a final state.
    pub fn active_deliveries(&self) -> impl Iterator<Item = &Delivery> {
        self.deliveries.values().filter(|d| !d.status.is_final())
    }

    #[must_use]
    pub fn is_revoked(&self, device: &DeviceId) -> bool {
        self.revoked.contains(device)
    }

    #[must_use]
    pub fn revoked(&self) -> &HashSet<DeviceId> {
        &self.revoked
    }

    #[must_use]
    pub fn route(&self, driver: &SubjectId) -> &[DeliveryId] {
        self.routes.get(driver).map_or(&[], Vec::as_slice)
    }

    /// Deliveries not yet in a final state.
    #[must_use]
    pub fn active_count(&self) -> usize {
        self.active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_searches_are_budgeted_per_second() {
        let mut b = SearchBudget::default();
        let t = UnixMillis(1_764_072_000_000);
        let granted = (0..250).filter(|_| b.take(t)).count();
        assert_eq!(granted, SEARCHES_PER_SECOND as usize);
        assert!(!b.take(UnixMillis(t.0 + 999)));
        assert!(b.take(UnixMillis(t.0 + 1000)), "a new second, a new budget");
    }

    #[test]
    fn the_status_machine_allows_only_forward_moves() {
        use Status as S;
        use StatusChange as C;
        assert_eq!(C::PickedUp.apply_to(S::Scheduled).unwrap(), S::EnRoute);
        assert_eq!(C::Delivered.apply_to(S::Arrived).unwrap(), S::Delivered);
        assert_eq!(C::Cancelled.apply_to(S::Scheduled).unwrap(), S::Cancelled);
        let e = C::Delivered.apply_to(S::Scheduled).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot change status from scheduled to delivered"
        );
        for fin in [S::Delivered, S::Failed, S::Cancelled] {
            for c in [C::PickedUp, C::Delivered, C::Failed, C::Cancelled] {
                assert!(c.apply_to(fin).is_err(), "{fin:?} -> {c:?}");
            }
        }
        assert!(C::PickedUp.apply_to(S::EnRoute).is_err());
    }

    #[test]
    fn fences_are_validated() {
        let circle = |lat, lng, r| Fence {
            lat: Some(lat),
            lng: Some(lng),
            radius_m: Some(r),
            polygon: None,
        };
        assert!(circle(60.17, 24.94, 40.0).validate("pickup").is_ok());
        let e = circle(91.0, 24.94, 40.0)
            .validate("pickup")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("pickup: lat out of range"), "{e}");
        assert!(circle(60.0, 24.0, 0.5).validate("d").is_err());
        assert!(circle(60.0, 24.0, f64::NAN).validate("d").is_err());
        let poly = |p: Vec<[f64; 2]>| Fence {
            lat: None,
            lng: None,
            radius_m: None,
            polygon: Some(p),
        };
        assert!(
            poly(vec![[60.0, 24.0], [60.001, 24.0], [60.001, 24.001]])
                .validate("d")
                .is_ok()
        );
        assert!(
            poly(vec![[60.0, 24.0], [60.001, 24.0]])
                .validate("d")
                .is_err()
        );
        assert!(
            poly(vec![[60.0, 24.0], [60.001, 24.0], [60.002, 24.0]])
                .validate("d")
                .is_err()
        );
        assert!(
            poly(vec![[60.0, 24.0], [95.0, 24.0], [60.0, 24.1]])
                .validate("d")
                .is_err()
        );
    }
}
