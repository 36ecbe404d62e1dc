//! Proximity: a driver's fixes through its detector, against the fences of
//! its own route, become arrived and departed events, each at most once per
//! visit as the book (with the events in flight) already records it.

use std::collections::HashMap;

use geofence::{ProximityConfig, ProximityEvent, TrackConfig};

use super::book::{Book, actor_of};
use super::event::{Draft, EventKind, Where};
use super::model::Stop;
use super::roles::Principal;
use super::status::Status;
use super::tracker::Tracker;
use crate::protocol::Fix;
use crate::types::{DeliveryId, UnixMillis};

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
        delivery_id: Some(id.clone()),
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

impl Tracker {
    /// Runs a driver's accepted fixes through its detector and its ETA, and
    /// returns the events they cause: arrived and departed at the pickup and
    /// drop-off of deliveries on this driver's route, and approaching.
    /// `visible`: the book readers see (what the fences and ETAs follow);
    /// `decided`: the book with the events in flight, which decides whether
    /// an event is new.
    pub fn observe(
        &mut self,
        visible: &Book,
        decided: &Book,
        who: &Principal,
        fixes: &[Fix],
        now: UnixMillis,
    ) -> Vec<Draft> {
        let mut found = Vec::new();
        debug_assert_eq!(
            self.route_fences.get(&who.sub).cloned().unwrap_or_default(),
            self.fences_of_route(visible, &who.sub),
            "the cached route fences are stale"
        );
        // The detector is made once per driver, not per ping.
        if !self.detectors.contains_key(&who.sub) {
            self.detectors
                .insert(who.sub.clone(), geofence::Subject::default());
        }
        // Only the fences of the driver's own stops count: a pharmacy's
        // pickup fence lies among many other fences at one spot.
        let mine = self
            .route_fences
            .get(&who.sub)
            .map_or(&[][..], Vec::as_slice);
        if let Some(detector) = self.detectors.get_mut(&who.sub) {
            for f in fixes {
                let Ok(point) = geofence::Point::new(f.pos.lat(), f.pos.lng()) else {
                    continue;
                };
                let fix = geofence::Fix {
                    ts_ms: f.ts.0,
                    point,
                    accuracy_m: f.acc,
                    speed_mps: f.speed,
                };
                // A stop's fence counts only once the driver has stopped
                // there: driving past a later stop is not arriving.
                detector.observe_only(
                    &self.fences,
                    &fix,
                    &TrackConfig::default(),
                    |_| ProximityConfig::stop(),
                    |id| mine.contains(&id),
                    &mut found,
                );
            }
        }
        let mut drafts = self.follow_fixes(visible, decided, who, fixes, now);
        if found.is_empty() {
            self.arrivals_inside(visible, decided, who, now, &HashMap::new(), &mut drafts);
            self.departures_outside(visible, decided, who, now, &HashMap::new(), &mut drafts);
            return drafts;
        }
        let route = decided.route(&who.sub);
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
        let Some(detector) = self.detectors.get(&who.sub) else {
            return drafts;
        };
        for (id, stop, event) in found {
            if !route.contains(id) {
                continue;
            }
            let Some(d) = decided.delivery(id) else {
                continue;
            };
            let arriving = matches!(event, ProximityEvent::Entered(_));
            if arriving && !self.may_arrive(decided, route, detector, id, stop) {
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
        self.arrivals_inside(visible, decided, who, now, &flags, &mut drafts);
        self.departures_outside(visible, decided, who, now, &flags, &mut drafts);
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
        book: &Book,
        route: &[DeliveryId],
        detector: &geofence::Subject,
        id: &DeliveryId,
        stop: Stop,
    ) -> bool {
        let Some(d) = book.delivery(id) else {
            return false;
        };
        match stop {
            Stop::Pickup => d.status == Status::Scheduled,
            Stop::Dropoff => {
                d.status.is_moving()
                    && !route
                        .iter()
                        .take_while(|r| *r != id)
                        .filter_map(|r| book.delivery(r))
                        .any(|e| {
                            (e.status.is_moving() || e.status == Status::Arrived)
                                && self
                                    .fences_of(&e.id)
                                    .is_some_and(|(_, f)| detector.is_inside(f))
                        })
            }
        }
    }

    /// A visit the book records while the detector does not (a detector
    /// started afresh, after a restart or a failed append) ends when the
    /// driver's newest trusted fix, accurate enough, lies beyond the fence
    /// by the exit margin: departed, with that fix.
    fn departures_outside(
        &self,
        visible: &Book,
        book: &Book,
        who: &Principal,
        now: UnixMillis,
        flags: &HashMap<DeliveryId, (bool, bool)>,
        drafts: &mut Vec<Draft>,
    ) {
        // Only a visit the visible book records is looked at (a fix then
        // touches one book, not two); the decided book confirms it.
        let visiting = visible
            .route(&who.sub)
            .iter()
            .filter_map(|id| visible.delivery(id))
            .any(|d| d.at_pickup || d.at_dropoff);
        if !visiting {
            return;
        }
        let Some(detector) = self.detectors.get(&who.sub) else {
            return;
        };
        let cfg = ProximityConfig::stop();
        let Some(last) = detector
            .track()
            .last_trusted()
            .filter(|f| f.accuracy_m.is_none_or(|a| a <= cfg.max_accuracy_m))
        else {
            return;
        };
        let beyond = |f: geofence::FenceId| {
            !detector.is_inside(f)
                && self
                    .fences
                    .get(f)
                    .is_some_and(|fence| fence.distance_to_edge_m(last.point) > cfg.exit_margin_m)
        };
        for id in book.route(&who.sub) {
            let Some(d) = book.delivery(id) else {
                continue;
            };
            let (at_pickup, at_dropoff) = flags
                .get(id)
                .copied()
                .unwrap_or((d.at_pickup, d.at_dropoff));
            if !(at_pickup || at_dropoff) {
                continue;
            }
            let Some((pickup, dropoff)) = self.fences_of(id) else {
                continue;
            };
            if at_pickup && beyond(pickup) {
                drafts.push(proximity_draft(
                    EventKind::PickupDeparted,
                    id,
                    who,
                    now,
                    &last,
                ));
            }
            if at_dropoff && beyond(dropoff) {
                drafts.push(proximity_draft(
                    EventKind::DropoffDeparted,
                    id,
                    who,
                    now,
                    &last,
                ));
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
        visible: &Book,
        book: &Book,
        who: &Principal,
        now: UnixMillis,
        flags: &HashMap<DeliveryId, (bool, bool)>,
        drafts: &mut Vec<Draft>,
    ) {
        let Some(detector) = self.detectors.get(&who.sub) else {
            return;
        };
        if !detector.is_stopped() {
            return;
        }
        let Some(last) = detector.track().last_trusted() else {
            return;
        };
        // Only while inside a fence of the visible route; the decided book
        // confirms (a fix then touches one book, not two).
        let inside = visible
            .route(&who.sub)
            .iter()
            .filter_map(|id| self.fences_of(id))
            .any(|(p, q)| detector.is_inside(p) || detector.is_inside(q));
        if !inside {
            return;
        }
        let route = book.route(&who.sub);
        for id in route {
            let Some(d) = book.delivery(id) else {
                continue;
            };
            let Some((pickup, dropoff)) = self.fences_of(id) else {
                continue;
            };
            let (at_pickup, at_dropoff) = flags
                .get(id)
                .copied()
                .unwrap_or((d.at_pickup, d.at_dropoff));
            if detector.is_inside(pickup)
                && !at_pickup
                && self.may_arrive(book, route, detector, id, Stop::Pickup)
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
                && self.may_arrive(book, route, detector, id, Stop::Dropoff)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::Event;
    use crate::domain::model::CreateDelivery;
    use crate::domain::roles::Role;
    use crate::domain::status::StatusChange;
    use crate::types::{LatLng, SubjectId, TenantId};

    const T0: i64 = 1_764_072_000_000;
    /// The door: a 30 m circle.
    const DOOR: (f64, f64) = (60.18, 24.95);

    fn who(role: Role, sub: &str) -> Principal {
        Principal {
            tenant: TenantId::parse("acme").unwrap(),
            sub: SubjectId::parse(sub).unwrap(),
            role,
            device: (role == Role::Driver).then(|| crate::types::DeviceId::parse("phone").unwrap()),
            exp: i64::MAX,
            auth_time: None,
        }
    }

    /// Applies drafts to the book and the tracker, as the commit path does.
    fn apply(book: &mut Book, tracker: &mut Tracker, seq: &mut u64, drafts: Vec<Draft>) {
        for d in drafts {
            *seq += 1;
            let e = Event {
                seq: *seq,
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
            };
            let change = book.apply(&e);
            tracker.react(book, change, UnixMillis(e.at));
        }
    }

    fn fix(seq: u64, ms: i64, lat: f64, lng: f64) -> Fix {
        Fix {
            seq,
            ts: UnixMillis(T0 + ms),
            pos: LatLng::new(lat, lng).unwrap(),
            acc: Some(5.0),
            speed: Some(0.0),
            heading: None,
        }
    }

    /// A driver whose visit the book records but whose detector is new (a
    /// restart, or a detector reset after a failed append): leaving the
    /// fence is still a departure, and standing in it is not.
    #[test]
    fn a_recorded_visit_ends_when_a_fresh_detector_sees_the_driver_gone() {
        let (mut book, mut tracker, mut seq) = (Book::default(), Tracker::default(), 0);
        let disp = who(Role::Dispatcher, "alice");
        let driver = who(Role::Driver, "d1");
        let now = UnixMillis(T0);
        let req: CreateDelivery = serde_json::from_value(serde_json::json!({
            "id": "rx-1",
            "pickup": {"lat": 60.17, "lng": 24.94, "radius_m": 40.0},
            "dropoff": {"lat": DOOR.0, "lng": DOOR.1, "radius_m": 30.0},
            "recipient": {"first_name": "Anneliese"},
        }))
        .unwrap();
        let (d, id) = book.decide_create(&disp, req, "aa".into(), now).unwrap();
        apply(&mut book, &mut tracker, &mut seq, d);
        let d = book
            .decide_route(&disp, &driver.sub, std::slice::from_ref(&id), now)
            .unwrap();
        apply(&mut book, &mut tracker, &mut seq, d);
        let (d, _) = book
            .decide_status(&disp, &id, StatusChange::PickedUp, None, now)
            .unwrap();
        apply(&mut book, &mut tracker, &mut seq, d);
        // The driver stands at the door: arrived, as the log records it.
        let mut ms = 0;
        let mut n = 0;
        let mut feed = |tracker: &mut Tracker, book: &Book, lat: f64, lng: f64| {
            let mut out = Vec::new();
            for _ in 0..10 {
                ms += 1000;
                n += 1;
                let f = [fix(n, ms, lat, lng)];
                out.extend(tracker.observe(book, book, &driver, &f, UnixMillis(T0 + ms)));
            }
            out
        };
        let arrived = feed(&mut tracker, &book, DOOR.0, DOOR.1);
        assert!(
            arrived.iter().any(|d| d.kind == EventKind::DropoffArrived),
            "{arrived:?}"
        );
        apply(&mut book, &mut tracker, &mut seq, arrived);
        assert!(book.delivery(&id).unwrap().at_dropoff);

        // The detector is forgotten; the driver is still at the door: nothing.
        tracker.forget_detector(&driver.sub);
        let still = feed(&mut tracker, &book, DOOR.0, DOOR.1);
        assert!(
            still.iter().all(|d| d.kind != EventKind::DropoffDeparted),
            "{still:?}"
        );
        // Forgotten again, and now 200 m away: departed, once.
        tracker.forget_detector(&driver.sub);
        let gone = feed(&mut tracker, &book, DOOR.0 + 0.0018, DOOR.1);
        let departed: Vec<_> = gone
            .iter()
            .filter(|d| d.kind == EventKind::DropoffDeparted)
            .collect();
        assert!(!departed.is_empty(), "{gone:?}");
        apply(&mut book, &mut tracker, &mut seq, gone);
        assert!(!book.delivery(&id).unwrap().at_dropoff);
        let after = feed(&mut tracker, &book, DOOR.0 + 0.0018, DOOR.1);
        assert!(
            after.iter().all(|d| d.kind != EventKind::DropoffDeparted),
            "{after:?}"
        );

        // What another node carries on from: taken up where the driver was
        // not seen as recently, never over fresher state of its own.
        let carried = tracker.carry(&driver.sub).unwrap();
        assert!(!tracker.resume(&driver.sub, carried.clone(), UnixMillis(T0 + ms)));
        let text = serde_json::to_string(&carried).unwrap();
        let mut other = Tracker::default();
        assert!(other.resume(
            &driver.sub,
            serde_json::from_str(&text).unwrap(),
            UnixMillis(T0 + ms)
        ));
        // A detector from the future is not taken up (it would blind this
        // one): the position is, the detector starts afresh.
        let mut future = serde_json::to_value(&carried).unwrap();
        future["detector"]["track"]["newest_ts"] = serde_json::json!(T0 + ms + 3_600_000);
        let mut third = Tracker::default();
        assert!(third.resume(
            &driver.sub,
            serde_json::from_value(future).unwrap(),
            UnixMillis(T0 + ms)
        ));
        assert_eq!(
            serde_json::to_value(third.carry(&driver.sub).unwrap()).unwrap()["detector"],
            serde_json::Value::Null
        );
        assert!(other.has_live(&driver.sub, UnixMillis(T0 + ms)));
        // The other node has no such delivery: the fences are dropped.
        let back = serde_json::to_value(other.carry(&driver.sub).unwrap()).unwrap();
        assert_eq!(back["detector"]["fences"], serde_json::json!([]));
        assert_eq!(
            back["live"],
            serde_json::to_value(&carried).unwrap()["live"]
        );
    }
}
