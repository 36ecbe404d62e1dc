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
        self.arrivals_inside(decided, who, now, &flags, &mut drafts);
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

    /// A delivery whose driver is stopped inside its fence without having
    /// arrived arrives with the driver's newest trusted fix: one added to
    /// the route while the driver waits at a fence it shares with another
    /// (a second order collected at the same pharmacy), or a door whose
    /// arrival waited for an earlier door in the same fence. `flags`: the
    /// arrived flags as this batch's events leave them.
    fn arrivals_inside(
        &self,
        book: &Book,
        who: &Principal,
        now: UnixMillis,
        flags: &HashMap<DeliveryId, (bool, bool)>,
        drafts: &mut Vec<Draft>,
    ) {
        let route = book.route(&who.sub);
        let Some(detector) = self.detectors.get(&who.sub) else {
            return;
        };
        let Some(last) = detector.track().last_trusted() else {
            return;
        };
        if !detector.is_stopped() {
            return;
        }
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
