//! The bus: how what a node decided reaches the sockets that watch it.
//!
//! [`Bus`] is the seam; [`LocalBus`] is the in-process implementation (one
//! node). The commit path publishes to it from one place, after the events
//! are durable and while it still holds the tenant's lock, so each
//! audience sees a tenant's changes in log order.
//!
//! Guarantees, by kind of message:
//! - **Positions** ([`Bus::position`]): latest wins. A dispatcher socket
//!   that falls behind skips intermediate positions; nobody waits for it.
//! - **Events and delivery changes** ([`Bus::event`], [`Bus::delivery`]):
//!   only durable ones, in log order, never dropped for a subscriber that
//!   keeps up. A subscriber whose queue is full is cut off (its socket
//!   closes with 4410) and resynchronises from a snapshot.
//! - **Patient views** ([`Bus::patient`]): latest wins; a subscriber
//!   always ends on the newest view. [`Bus::close_patient`] ends every
//!   socket of a revoked link.
//! - **Kicks** ([`Bus::kick_device`]): end a device's live session (a
//!   revoke, or a newer login of the same device).
//!
//! Every method is non-blocking: the commit path calls them under a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

pub mod hub;
pub mod redis;

use hub::Hub;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::tracker::Carried;
use crate::domain::{Event, PatientSnapshot, Status, eta};
use crate::metrics::Metrics;
use crate::protocol::Fix;
use crate::types::{DeliveryId, DeviceId, SubjectId, TenantId, UnixMillis};

/// Where a delivery stands, as dispatchers are told.
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryChange {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: DeliveryId,
    pub status: Status,
    pub driver_id: Option<SubjectId>,
    /// The window the patient sees.
    pub eta: Option<eta::Window>,
    /// The estimate behind it.
    pub eta_at: Option<i64>,
}

/// What a bus answers later.
pub type BusFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A device as one node tells the others of it (for `GET /v1/devices` on
/// any node).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct DeviceReport {
    pub driver: SubjectId,
    /// Connected to the reporting node, until `until` at the latest: a node
    /// renews its connected devices' reports, and one that dies stops.
    pub connected: bool,
    pub until: UnixMillis,
    pub last_seen: Option<UnixMillis>,
    pub last_seq: u64,
}

/// How long a connected report holds without renewal, and how often the
/// node renews them.
pub const REPORT_HOLDS_MS: i64 = 15_000;
pub const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a session was ended from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    Replaced,
    Revoked,
}

/// A device's live session: kicked through its receiver.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub kicked: oneshot::Receiver<Kick>,
}

/// What a dispatcher socket reads: the events and delivery changes, and
/// the tenant's position board. `watch` lives as long as the socket: a bus
/// across nodes keeps the socket's interest (its viewport) by it.
#[derive(Debug)]
pub struct DispatcherFeed {
    pub events: mpsc::Receiver<Utf8Bytes>,
    pub positions: Arc<Hub>,
    pub watch: Arc<()>,
}

/// The seam between the commit path and the sockets. See the module
/// documentation for the guarantee of each kind of message.
pub trait Bus: Send + Sync + std::fmt::Debug {
    fn position(&self, tenant: &TenantId, driver: &SubjectId, fix: &Fix);
    fn event(&self, tenant: &TenantId, event: &Event);
    fn delivery(&self, tenant: &TenantId, change: &DeliveryChange);
    /// A delivery's estimate moved with its driver's fixes (no event):
    /// known only to the node holding the driver, which tells the others'
    /// dispatchers too.
    fn estimate(&self, tenant: &TenantId, change: &DeliveryChange) {
        self.delivery(tenant, change);
    }
    fn patient(&self, tenant: &TenantId, id: &DeliveryId, view: &PatientSnapshot);
    fn close_patient(&self, tenant: &TenantId, id: &DeliveryId);
    fn subscribe_dispatcher(&self, tenant: &TenantId) -> Option<DispatcherFeed>;
    /// A dispatcher socket narrowed its viewport (`None`: the whole map).
    /// One node already filters positions by viewport; a bus across nodes
    /// subscribes only to the map cells its dispatchers watch.
    fn viewport(&self, _tenant: &TenantId, _watch: &Arc<()>, _viewport: Option<&hub::Viewport>) {}
    /// Subscribes to a delivery's patient views, starting from `current`.
    fn subscribe_patient(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
        current: &PatientSnapshot,
    ) -> watch::Receiver<Utf8Bytes>;
    /// Registers a device's live session; an older one of the same device
    /// is kicked as replaced.
    fn open_session(&self, tenant: &TenantId, device: &DeviceId) -> Session;
    /// Forgets a session that ended (if it is still the device's).
    fn close_session(&self, tenant: &TenantId, device: &DeviceId, session: u64);
    fn kick_device(&self, tenant: &TenantId, device: &DeviceId, why: Kick);
    /// Whether the device has a live session.
    fn connected(&self, tenant: &TenantId, device: &DeviceId) -> bool;
    /// The last seq acknowledged to a device by any node (a driver that
    /// reconnects elsewhere is not re-applied what it was told is done).
    /// `None`: no other node could have acknowledged anything.
    fn acked_seq(&self, _tenant: &TenantId, _device: &DeviceId) -> BusFuture<'_, Option<u64>> {
        Box::pin(async { None })
    }
    /// Records the seq just acknowledged to a device (for [`Bus::acked_seq`]).
    fn acked(&self, _tenant: &TenantId, _device: &DeviceId, _seq: u64) {}
    /// Tells the other nodes of one of this node's devices (`closing`: its
    /// session here just ended, which must not undo a newer session of the
    /// device on another node).
    fn report_device(
        &self,
        _tenant: &TenantId,
        _device: &DeviceId,
        _report: &DeviceReport,
        _closing: bool,
    ) {
    }
    /// The tenant's devices as the other nodes last told of them.
    fn devices(&self, _tenant: &TenantId) -> BusFuture<'_, Vec<(DeviceId, DeviceReport)>> {
        Box::pin(async { Vec::new() })
    }
    /// Keeps what another node needs to carry on tracking a driver (after
    /// each acknowledgement), for [`Bus::carried`].
    fn carry(&self, _tenant: &TenantId, _driver: &SubjectId, _state: &Carried) {}
    /// What a node last kept of a driver's tracking (`None`: nothing, or no
    /// other node could have tracked it).
    fn carried(&self, _tenant: &TenantId, _driver: &SubjectId) -> BusFuture<'_, Option<Carried>> {
        Box::pin(async { None })
    }
    /// Counts a tracking-link lookup from `ip` among every node's this
    /// minute; `false` beyond `per_minute`. One node alone, or a bus that
    /// cannot be reached, leaves it to the node's own limiter (`true`).
    fn allow_lookup(&self, _ip: std::net::IpAddr, _per_minute: f64) -> BusFuture<'_, bool> {
        Box::pin(async { true })
    }
    /// Whether other nodes share this bus: a patient view is then
    /// published only by the node that holds the driver's live state.
    fn shared(&self) -> bool {
        false
    }
    /// Whether the bus reaches the other nodes now (`None`: there are none).
    fn reachable(&self) -> Option<bool> {
        None
    }
}

type Key<T> = (TenantId, T);
/// A live session: its id, and how to kick it.
type Live = (u64, oneshot::Sender<Kick>);

/// The in-process bus of a single node.
#[derive(Debug)]
pub struct LocalBus {
    hubs: HashMap<TenantId, Arc<Hub>>,
    patients: Mutex<HashMap<Key<DeliveryId>, watch::Sender<Utf8Bytes>>>,
    sessions: Mutex<HashMap<Key<DeviceId>, Live>>,
    next_session: AtomicU64,
    /// Patient channels are pruned when there are this many.
    prune_at: std::sync::atomic::AtomicUsize,
    metrics: Arc<Metrics>,
}

/// Patient channels kept before the first pruning.
const PRUNE_MIN: usize = 1024;

impl LocalBus {
    #[must_use]
    pub fn new(tenants: impl IntoIterator<Item = TenantId>, metrics: Arc<Metrics>) -> Self {
        Self {
            hubs: tenants
                .into_iter()
                .map(|t| (t, Arc::new(Hub::default())))
                .collect(),
            patients: Mutex::default(),
            sessions: Mutex::default(),
            next_session: AtomicU64::new(1),
            prune_at: std::sync::atomic::AtomicUsize::new(PRUNE_MIN),
            metrics,
        }
    }

    fn offer(&self, tenant: &TenantId, text: &Utf8Bytes) {
        if let Some(hub) = self.hubs.get(tenant) {
            let dropped = hub.publish(text);
            self.metrics.slow_closes.inc_by(dropped as u64);
        }
    }
}

impl LocalBus {
    /// Hands a patient view (encoded only if someone listens) to the
    /// delivery's sockets on this node.
    pub fn patient_text(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
        text: impl FnOnce() -> Utf8Bytes,
    ) {
        let mut map = self.patients.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (tenant.clone(), id.clone());
        if let Some(tx) = map.get(&key) {
            if tx.receiver_count() == 0 {
                map.remove(&key);
            } else {
                tx.send_replace(text());
            }
        }
    }

    /// Hands an encoded delivery message to the tenant's dispatchers here.
    pub fn delivery_text(&self, tenant: &TenantId, text: &Utf8Bytes) {
        self.offer(tenant, text);
    }

    /// Closes every dispatcher socket of this node (4410): they come back
    /// for a snapshot.
    pub fn drop_dispatchers(&self) {
        for hub in self.hubs.values() {
            hub.drop_all();
        }
    }

    /// The deliveries with patient sockets open on this node, per tenant.
    #[must_use]
    pub fn watched_deliveries(&self) -> Vec<(TenantId, DeliveryId)> {
        self.patients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Bus for LocalBus {
    fn position(&self, tenant: &TenantId, driver: &SubjectId, fix: &Fix) {
        if let Some(hub) = self.hubs.get(tenant) {
            hub.position(driver, fix);
        }
    }

    fn event(&self, tenant: &TenantId, event: &Event) {
        let mut v = serde_json::to_value(event).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("type".into(), "event".into());
        }
        self.offer(tenant, &Utf8Bytes::from(v.to_string()));
    }

    fn delivery(&self, tenant: &TenantId, change: &DeliveryChange) {
        if let Ok(text) = serde_json::to_string(change) {
            self.offer(tenant, &Utf8Bytes::from(text));
        }
    }

    fn patient(&self, tenant: &TenantId, id: &DeliveryId, view: &PatientSnapshot) {
        self.patient_text(tenant, id, || Utf8Bytes::from(view.encode()));
    }

    fn close_patient(&self, tenant: &TenantId, id: &DeliveryId) {
        // Dropping the sender ends every open tracking socket of the link.
        self.patients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(tenant.clone(), id.clone()));
    }

    fn subscribe_dispatcher(&self, tenant: &TenantId) -> Option<DispatcherFeed> {
        let hub = self.hubs.get(tenant)?;
        Some(DispatcherFeed {
            events: hub.subscribe(),
            positions: hub.clone(),
            watch: Arc::new(()),
        })
    }

    fn subscribe_patient(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
        current: &PatientSnapshot,
    ) -> watch::Receiver<Utf8Bytes> {
        // An open channel already carries `current`: views are published
        // and subscribed to under the tenant's lock.
        let mut map = self.patients.lock().unwrap_or_else(PoisonError::into_inner);
        // Channels whose sockets all closed are pruned now and then (a
        // delivery that has ended publishes nothing more to find them by).
        let key = (tenant.clone(), id.clone());
        if !map.contains_key(&key) && map.len() >= self.prune_at.load(Ordering::Relaxed) {
            map.retain(|_, tx| tx.receiver_count() > 0);
            self.prune_at
                .store((map.len() * 2).max(PRUNE_MIN), Ordering::Relaxed);
        }
        map.entry(key)
            .or_insert_with(|| watch::channel(Utf8Bytes::from(current.encode())).0)
            .subscribe()
    }

    fn open_session(&self, tenant: &TenantId, device: &DeviceId) -> Session {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, kicked) = oneshot::channel();
        let old = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((tenant.clone(), device.clone()), (id, tx));
        if let Some((_, old)) = old {
            let _ = old.send(Kick::Replaced);
        }
        Session { id, kicked }
    }

    fn close_session(&self, tenant: &TenantId, device: &DeviceId, session: u64) {
        let mut map = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (tenant.clone(), device.clone());
        if map.get(&key).is_some_and(|(id, _)| *id == session) {
            map.remove(&key);
        }
    }

    fn kick_device(&self, tenant: &TenantId, device: &DeviceId, why: Kick) {
        let session = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(tenant.clone(), device.clone()));
        if let Some((_, tx)) = session {
            let _ = tx.send(why);
        }
    }

    fn connected(&self, tenant: &TenantId, device: &DeviceId) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&(tenant.clone(), device.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_replace_and_kick() {
        let bus = LocalBus::new([], Arc::new(Metrics::new()));
        let t = TenantId::parse("acme").unwrap();
        let d = DeviceId::parse("phone").unwrap();
        let mut first = bus.open_session(&t, &d);
        let mut second = bus.open_session(&t, &d);
        assert_eq!(first.kicked.try_recv(), Ok(Kick::Replaced));
        // The first session's end does not forget the second.
        bus.close_session(&t, &d, first.id);
        assert!(bus.connected(&t, &d));
        bus.kick_device(&t, &d, Kick::Revoked);
        assert_eq!(second.kicked.try_recv(), Ok(Kick::Revoked));
        assert!(!bus.connected(&t, &d));
    }
}
