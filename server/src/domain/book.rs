//! The book of one tenant: its deliveries, routes, revoked devices and
//! tracking links exactly as the log says, and the commands that extend it.
//!
//! A command is a `decide_*` function: it reads the book and returns the
//! drafts of the events it causes (or why it is refused); it changes
//! nothing. [`Book::apply`] is the only way the book changes, the same
//! function live and when the log is replayed, and it returns what changed
//! so that the read model can follow. A `Book` is cheap enough to clone:
//! the commit path keeps one with the events still in flight (what the next
//! command must see) and one with the durable events only (what readers see).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::event::{Actor, Draft, Event, EventKind};
use super::model::{
    AssignedData, CreatedData, DeviceData, Fence, LINK_GRACE_MS, Recipient, Window,
};
use super::roles::Principal;
use super::status::{Status, StatusChange};
use crate::types::{DeliveryId, DeviceId, SubjectId, UnixMillis};

/// One delivery as the log says.
#[derive(Clone, Debug)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "each flag mirrors one kind of log event"
)]
pub struct Record {
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
    /// Whether the driver is at the pickup / at the drop-off.
    pub at_pickup: bool,
    pub at_dropoff: bool,
    /// Whether `dropoff.approaching` was recorded (since the last departure).
    pub approached: bool,
    /// When it reached a final status.
    pub ended_at: Option<UnixMillis>,
    pub link_revoked: bool,
    /// When `dropoff.arrived` was recorded, until the driver leaves or the
    /// delivery ends: the dwell that teaches the service time.
    pub arrived_at: Option<UnixMillis>,
}

impl Record {
    /// Whether its tracking link still works at `now`, given the grace period after the end.
    #[must_use]
    pub fn link_valid(&self, now: UnixMillis, grace_ms: i64) -> bool {
        !self.link_revoked && self.ended_at.is_none_or(|t| now < t.plus_ms(grace_ms))
    }
}

/// What one event changed, for the read model to follow.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Nothing the read model keeps (an audit event, or one that no longer applies).
    Nothing,
    Created(DeliveryId),
    Assigned {
        id: DeliveryId,
        from: Option<SubjectId>,
        to: Option<SubjectId>,
    },
    /// A status change through the API. `handed_over`: the driver whose
    /// stop a hand-over ended; `dwell_ms`: how long the driver stood at the
    /// door, when the delivery ended there.
    Status {
        id: DeliveryId,
        driver: Option<SubjectId>,
        ended: bool,
        dwell_ms: Option<i64>,
    },
    /// An arrival, departure or approach. `arrived_at`: when the deciding
    /// fix was taken, for a drop-off arrival while on the way (the real
    /// arrival that calibrates the windows).
    Proximity {
        id: DeliveryId,
        driver: Option<SubjectId>,
        arrived_at: Option<i64>,
        dwell_ms: Option<i64>,
    },
    LinkRevoked(DeliveryId),
    DeviceRevoked(DeviceId),
}

/// One tenant's deliveries, routes, revoked devices and links.
#[derive(Clone, Debug)]
pub struct Book {
    deliveries: HashMap<DeliveryId, Record>,
    routes: HashMap<SubjectId, Vec<DeliveryId>>,
    revoked: HashSet<DeviceId>,
    /// Tracking links: SHA-256 of the token (hex) to delivery.
    links: HashMap<String, DeliveryId>,
    /// Deliveries not yet final.
    active: usize,
    /// How long a tracking link works after its delivery ends, ms.
    link_grace_ms: i64,
}

impl Default for Book {
    fn default() -> Self {
        Self {
            deliveries: HashMap::new(),
            routes: HashMap::new(),
            revoked: HashSet::new(),
            links: HashMap::new(),
            active: 0,
            link_grace_ms: LINK_GRACE_MS,
        }
    }
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

/// A draft by `who` about `delivery`.
pub(crate) fn draft(
    kind: EventKind,
    delivery: Option<&DeliveryId>,
    at: UnixMillis,
    actor: Actor,
    data: serde_json::Value,
) -> Draft {
    Draft {
        kind,
        delivery_id: delivery.cloned(),
        at: at.0,
        device_ts: None,
        actor,
        where_: None,
        data,
    }
}

pub(crate) fn actor_of(p: &Principal) -> Actor {
    Actor {
        role: p.role,
        sub: p.sub.as_str().to_owned(),
        device: p.device.as_ref().map(|d| d.as_str().to_owned()),
    }
}

pub(crate) fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

impl Book {
    /// Sets how long tracking links work after their delivery ends.
    pub fn set_link_grace_ms(&mut self, ms: i64) {
        self.link_grace_ms = ms;
    }

    #[must_use]
    pub fn delivery(&self, id: &DeliveryId) -> Option<&Record> {
        self.deliveries.get(id)
    }

    /// A driver's remaining stops, in order.
    #[must_use]
    pub fn route(&self, driver: &SubjectId) -> &[DeliveryId] {
        self.routes.get(driver).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn routes(&self) -> &HashMap<SubjectId, Vec<DeliveryId>> {
        &self.routes
    }

    #[must_use]
    pub fn is_revoked(&self, device: &DeviceId) -> bool {
        self.revoked.contains(device)
    }

    #[must_use]
    pub fn revoked(&self) -> &HashSet<DeviceId> {
        &self.revoked
    }

    /// Deliveries not yet in a final state.
    pub fn active_deliveries(&self) -> impl Iterator<Item = &Record> {
        self.deliveries.values().filter(|d| !d.status.is_final())
    }

    #[must_use]
    pub fn active_count(&self) -> usize {
        self.active
    }

    /// The delivery a tracking token opens, if the link is valid at `now`.
    #[must_use]
    pub fn link(&self, token_sha256: &str, now: UnixMillis) -> Option<&Record> {
        let id = self.links.get(token_sha256)?;
        self.deliveries
            .get(id)
            .filter(|d| d.link_valid(now, self.link_grace_ms))
    }

    /// Whether a proximity draft decided earlier (against a book that has
    /// since moved: another node wrote first) would still record something
    /// new: an arrival where the book has none, a departure where it has
    /// one, an approach not yet announced.
    #[must_use]
    pub fn still_new(&self, d: &Draft) -> bool {
        let Some(r) = d
            .delivery_id
            .as_ref()
            .and_then(|id| self.deliveries.get(id))
        else {
            return false;
        };
        match d.kind {
            EventKind::PickupArrived => !r.at_pickup && r.status == Status::Scheduled,
            EventKind::PickupDeparted => r.at_pickup,
            EventKind::DropoffArrived => !r.at_dropoff && r.status.is_moving(),
            EventKind::DropoffDeparted => r.at_dropoff,
            EventKind::DropoffApproaching => r.status == Status::EnRoute && !r.approached,
            _ => false,
        }
    }

    /// The staff view of a delivery.
    #[must_use]
    pub fn view<'a>(&'a self, d: &'a Record) -> DeliveryView<'a> {
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

    /// Applies one event. An event whose details do not parse is skipped
    /// with a warning rather than stopping the server (the chain has already
    /// been verified).
    pub fn apply(&mut self, e: &Event) -> Change {
        let at = UnixMillis(e.at);
        let Some(id) = e.delivery_id.clone() else {
            if e.kind == EventKind::DeviceRevoked
                && let Ok(dd) = serde_json::from_value::<DeviceData>(e.data.clone())
            {
                self.revoked.insert(dd.device_id.clone());
                return Change::DeviceRevoked(dd.device_id);
            }
            return Change::Nothing;
        };
        match e.kind {
            EventKind::DeliveryCreated => self.apply_created(id, at, e),
            EventKind::DeliveryAssigned => self.apply_assigned(id, at, e),
            EventKind::DeliveryPickedUp
            | EventKind::DeliveryDelivered
            | EventKind::DeliveryFailed
            | EventKind::DeliveryCancelled => self.apply_status(id, at, e.kind),
            EventKind::PickupArrived
            | EventKind::PickupDeparted
            | EventKind::DropoffApproaching
            | EventKind::DropoffArrived
            | EventKind::DropoffDeparted => self.apply_proximity(id, at, e),
            EventKind::LinkRevoked => match self.deliveries.get_mut(&id) {
                Some(d) => {
                    d.link_revoked = true;
                    Change::LinkRevoked(id)
                }
                None => Change::Nothing,
            },
            EventKind::LinkOpened | EventKind::DeviceRevoked | EventKind::LogExported => {
                Change::Nothing
            }
        }
    }

    fn apply_created(&mut self, id: DeliveryId, at: UnixMillis, e: &Event) -> Change {
        let Ok(c) = serde_json::from_value::<CreatedData>(e.data.clone()) else {
            tracing::warn!(
                seq = e.seq,
                "delivery.created without readable details; skipped"
            );
            return Change::Nothing;
        };
        if self.deliveries.contains_key(&id) {
            return Change::Nothing;
        }
        self.active += 1;
        self.links
            .insert(c.tracking_token_sha256.clone(), id.clone());
        self.deliveries.insert(
            id.clone(),
            Record {
                id: id.clone(),
                status: Status::Scheduled,
                pickup: c.pickup,
                dropoff: c.dropoff,
                recipient: c.recipient,
                window: c.window,
                tracking_token_sha256: c.tracking_token_sha256,
                driver: None,
                created_at: at,
                updated_at: at,
                at_pickup: false,
                at_dropoff: false,
                approached: false,
                ended_at: None,
                link_revoked: false,
                arrived_at: None,
            },
        );
        Change::Created(id)
    }

    fn apply_assigned(&mut self, id: DeliveryId, at: UnixMillis, e: &Event) -> Change {
        let Ok(a) = serde_json::from_value::<AssignedData>(e.data.clone()) else {
            return Change::Nothing;
        };
        let Some(d) = self.deliveries.get_mut(&id) else {
            return Change::Nothing;
        };
        let from = d.driver.take();
        d.driver.clone_from(&a.driver_id);
        d.updated_at = at;
        if let Some(r) = from.as_ref().and_then(|p| self.routes.get_mut(p)) {
            r.retain(|s| s != &id);
        }
        if let (Some(driver), Some(stop)) = (&a.driver_id, a.stop) {
            let r = self.routes.entry(driver.clone()).or_default();
            r.retain(|s| s != &id);
            r.insert(stop.min(r.len()), id.clone());
        }
        Change::Assigned {
            id,
            from,
            to: a.driver_id,
        }
    }

    fn apply_status(&mut self, id: DeliveryId, at: UnixMillis, kind: EventKind) -> Change {
        let change = match kind {
            EventKind::DeliveryPickedUp => StatusChange::PickedUp,
            EventKind::DeliveryDelivered => StatusChange::Delivered,
            EventKind::DeliveryFailed => StatusChange::Failed,
            _ => StatusChange::Cancelled,
        };
        let Some(d) = self.deliveries.get_mut(&id) else {
            return Change::Nothing;
        };
        let mut dwell_ms = None;
        if let Ok(to) = change.apply_to(d.status) {
            if to.is_final() {
                self.active = self.active.saturating_sub(1);
                d.ended_at = Some(at);
                dwell_ms = d.arrived_at.take().map(|t| at.since(t));
            }
            d.status = to;
            d.updated_at = at;
        }
        let ended = d.status.is_final();
        let driver = d.driver.clone();
        if ended && let Some(r) = driver.as_ref().and_then(|drv| self.routes.get_mut(drv)) {
            r.retain(|s| s != &id);
        }
        Change::Status {
            id,
            driver,
            ended,
            dwell_ms,
        }
    }

    fn apply_proximity(&mut self, id: DeliveryId, at: UnixMillis, e: &Event) -> Change {
        let Some(d) = self.deliveries.get_mut(&id) else {
            return Change::Nothing;
        };
        let mut arrived_at = None;
        let mut dwell_ms = None;
        match e.kind {
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
                    arrived_at = Some(e.device_ts.unwrap_or(at.0).min(at.0));
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
                dwell_ms = d.arrived_at.take().map(|t| at.since(t));
            }
        }
        d.updated_at = at;
        Change::Proximity {
            id,
            driver: d.driver.clone(),
            arrived_at,
            dwell_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::CreateDelivery;
    use crate::domain::roles::{Action, Role};
    use crate::domain::status::DomainError;
    use crate::types::TenantId;

    fn who(role: Role) -> Principal {
        Principal {
            tenant: TenantId::parse("acme").unwrap(),
            sub: SubjectId::parse("u1").unwrap(),
            role,
            device: None,
            exp: i64::MAX,
            auth_time: None,
        }
    }

    fn event(seq: u64, d: Draft) -> Event {
        Event {
            seq,
            tenant: TenantId::parse("acme").unwrap(),
            kind: d.kind,
            delivery_id: d.delivery_id,
            at: d.at,
            device_ts: d.device_ts,
            actor: d.actor,
            where_: d.where_,
            data: d.data,
            prev: String::new(),
            hash: String::new(),
        }
    }

    fn create(id: &str) -> CreateDelivery {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "pickup": {"lat": 60.17, "lng": 24.94, "radius_m": 40.0},
            "dropoff": {"lat": 60.18, "lng": 24.95, "radius_m": 30.0},
            "recipient": {"first_name": "Anneliese"},
        }))
        .unwrap()
    }

    #[test]
    fn decisions_change_nothing_and_apply_changes_what_they_decided() {
        let now = UnixMillis(1_764_072_000_000);
        let mut book = Book::default();
        let staff = who(Role::PharmacyStaff);
        let (drafts, id) = book
            .decide_create(&staff, create("rx-1"), "ab".into(), now)
            .unwrap();
        assert!(book.delivery(&id).is_none(), "deciding applies nothing");
        for (i, d) in drafts.into_iter().enumerate() {
            assert_eq!(
                book.apply(&event(i as u64 + 1, d)),
                Change::Created(id.clone())
            );
        }
        assert!(matches!(
            book.decide_create(&staff, create("rx-1"), "cd".into(), now),
            Err(DomainError::Exists(_))
        ));
        // One role table: staff may record a pick-up and nothing else.
        assert!(
            book.decide_status(&staff, &id, StatusChange::Cancelled, None, now)
                .is_err()
        );
        let (drafts, to) = book
            .decide_status(&staff, &id, StatusChange::PickedUp, None, now)
            .unwrap();
        assert_eq!(to, Status::EnRoute);
        book.apply(&event(2, drafts.into_iter().next().unwrap()));
        assert_eq!(book.delivery(&id).unwrap().status, Status::EnRoute);
        assert!(matches!(
            book.decide_route(&staff, &SubjectId::parse("d1").unwrap(), &[id], now),
            Err(DomainError::Forbidden(_))
        ));
    }

    #[test]
    fn the_role_table_answers_the_api_and_the_commands_alike() {
        use Role::{Admin, Dispatcher, Driver, PharmacyStaff, Viewer};
        assert!(Action::ReadDelivery.allowed(PharmacyStaff));
        assert!(!Action::ReadDeliveryEvents.allowed(PharmacyStaff));
        assert!(Action::ExportLog.allowed(Admin) && !Action::ExportLog.allowed(Dispatcher));
        assert!(!Action::CreateDelivery.allowed(Viewer) && !Action::CreateDelivery.allowed(Driver));
        assert!(Action::StreamPositions.allowed(Driver) && !Action::WatchMap.allowed(Driver));
    }
}
