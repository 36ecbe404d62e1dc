//! The live ETA of each driver's route and what its patients see: the
//! driver's position and speed, its road plan (searched within a budget),
//! the schedule of its stops, and each patient's coarse window.

use std::collections::HashMap;
use std::sync::Arc;

use super::book::{Book, Record, actor_of};
use super::eta::{self, Calibration, EtaConfig, SpeedModel};
use super::event::{Draft, EventKind, Where};
use super::patient::PatientSnapshot;
use super::roles::Principal;
use super::status::Status;
use super::tracker::{Outputs, Track, Tracker};
use crate::protocol::Fix;
use crate::types::{DeliveryId, LatLng, SubjectId, UnixMillis};

/// Below this reported speed a driver is standing, m/s (walking pace, as
/// the detector's `TrackConfig::stop_speed_mps`).
const MOVING_MPS: f64 = 1.4;
/// An estimate is kept for calibration this often per delivery.
const PREDICTION_EVERY_MS: i64 = 30_000;
/// Most estimates kept per delivery (two hours' worth).
const MAX_PREDICTIONS: usize = 240;

/// What the ETA engine knows of a driver.
#[derive(Clone, Debug)]
pub(crate) struct DriverLive {
    pub(crate) pos: LatLng,
    /// Server time of the last fix.
    pub(crate) seen: UnixMillis,
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

/// What of a driver's live state another node carries on from: its last
/// position, when it was seen, its smoothed speed and heading (the road
/// plan is searched for again).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LiveCarried {
    pos: LatLng,
    seen: UnixMillis,
    speed: SpeedModel,
    heading: Option<f64>,
}

impl DriverLive {
    pub(crate) fn carried(&self) -> LiveCarried {
        LiveCarried {
            pos: self.pos,
            seen: self.seen,
            speed: self.speed,
            heading: self.heading,
        }
    }

    pub(crate) fn resumed(c: LiveCarried) -> Self {
        Self {
            pos: c.pos,
            seen: c.seen,
            speed: c.speed,
            heading: c.heading.filter(|h| h.is_finite()),
            plan: None,
            off_route: 0,
            searched_at: i64::MIN,
            unplannable: None,
        }
    }
}

impl LiveCarried {
    pub(crate) fn seen(&self) -> UnixMillis {
        self.seen
    }

    /// Never seen later than `now`.
    pub(crate) fn clamp_seen(&mut self, now: UnixMillis) {
        self.seen = self.seen.min(now);
    }
}

/// A driver's plan is searched for at most this often, ms, unless its
/// stops change.
const SEARCH_BACKOFF_MS: i64 = 20_000;

/// Plan searches a tenant may run per second (each takes 0.1–1 ms under
/// the tenant's lock): a fleet reconnecting at once, or a burst of route
/// changes, gets straight-line estimates for a few seconds rather than a
/// stalled tenant.
const SEARCHES_PER_SECOND: u32 = 100;

/// The searches of the current second.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SearchBudget {
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
                let points: Vec<(f64, f64)> = targets.iter().map(|t| (t.lat(), t.lng())).collect();
                live.plan = roads::Plan::new(
                    net,
                    (live.pos.lat(), live.pos.lng()),
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
/// Dispatchers hear of an estimate that moved by this much, ms, even when
/// the patient's rounded window did not change.
const ESTIMATE_MOVED_MS: i64 = 30_000;

/// What a patient sees is computed from these parts of a tenant.
struct PatientParts<'a> {
    routes: &'a HashMap<SubjectId, Vec<DeliveryId>>,
    live: &'a HashMap<SubjectId, DriverLive>,
    cfg: &'a EtaConfig,
    calibration: &'a mut Calibration,
    display_name: Option<&'a Arc<str>>,
    out: &'a mut Outputs,
}

/// Recomputes what `d`'s patient sees (from its driver's route and last
/// fix) and notes it in the outputs if it changed. A function of the
/// tenant's parts rather than a method, so that a route's deliveries can be
/// refreshed while the route is borrowed (no copy of it per fix).
fn refresh_view(d: &Record, t: &mut Track, parts: &mut PatientParts<'_>, now: UnixMillis) {
    let PatientParts {
        routes,
        live,
        cfg,
        calibration,
        display_name,
        out,
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
        .and_then(|drv| live.get(drv))
        .is_none_or(|l| now.since(l.seen) > cfg.quiet_ms);
    let eta = t.eta.filter(|_| moving && !quiet).map(|e| {
        let spread = calibration.spread(e.since(now));
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
    let moved = match (t.eta, t.eta_told) {
        (Some(e), Some(told)) => (e.0 - told).abs() >= ESTIMATE_MOVED_MS,
        (e, told) => e.is_some() != told.is_some(),
    };
    let same = next.same_view(&t.snapshot);
    if moved || !same {
        t.eta_told = t.eta.map(|e| e.0);
        out.changed.push(d.id.clone());
    }
    if same {
        return;
    }
    out.patients.push(d.id.clone());
    t.snapshot = next;
}

impl Tracker {
    fn parts<'a>(
        &'a mut self,
        book: &'a Book,
    ) -> (PatientParts<'a>, &'a mut HashMap<DeliveryId, Track>) {
        (
            PatientParts {
                routes: book.routes(),
                live: &self.live,
                cfg: &self.eta_cfg,
                calibration: &mut self.calibration,
                display_name: self.display_name.as_ref(),
                out: &mut self.out,
            },
            &mut self.tracks,
        )
    }

    /// Recomputes what a delivery's patient sees.
    pub(crate) fn refresh_patient(&mut self, book: &Book, id: &DeliveryId, now: UnixMillis) {
        let Some(d) = book.delivery(id) else {
            return;
        };
        let (mut parts, tracks) = self.parts(book);
        if let Some(t) = tracks.get_mut(id) {
            refresh_view(d, t, &mut parts, now);
        }
    }

    /// Recomputes the ETAs of a driver's route and its patients' views.
    pub(crate) fn refresh_route(&mut self, book: &Book, driver: &SubjectId, now: UnixMillis) {
        let route = book.route(driver);
        if route.is_empty() {
            return;
        }
        // Each stop looked up once per fix.
        let records: Vec<Option<&Record>> = route.iter().map(|id| book.delivery(id)).collect();
        // The pharmacy before the first delivery on the route that waits
        // there (orders already on board come before it).
        let waiting = records
            .iter()
            .position(|d| d.is_some_and(|d| d.status == Status::Scheduled));
        let pickup = waiting
            .and_then(|i| records[i])
            .and_then(|d| d.pickup.target());
        let at_pickup = waiting.filter(|_| pickup.is_some());
        let mut targets: Option<Vec<LatLng>> = records
            .iter()
            .map(|d| d.and_then(|d| d.dropoff.target()))
            .collect();
        if let (Some(t), Some(i), Some(p)) = (targets.as_mut(), at_pickup, pickup) {
            t.insert(i, p);
        }
        let service = self.service.ms();
        // What is left of the service at the stop the driver is at.
        let first_service = records
            .first()
            .copied()
            .flatten()
            .and_then(|d| d.arrived_at)
            .filter(|_| at_pickup != Some(0))
            .map_or(service, |t| (service - now.since(t)).max(0));
        let etas = match (self.live.get_mut(driver), targets) {
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
        let (mut parts, tracks) = self.parts(book);
        for (i, (id, d)) in route.iter().zip(&records).enumerate() {
            let (Some(d), Some(t)) = (*d, tracks.get_mut(id)) else {
                continue;
            };
            t.eta = etas.get(i).copied();
            if let Some(e) = t.eta.filter(|_| d.status.is_moving()) {
                let due = t
                    .predictions
                    .last()
                    .is_none_or(|p| now.0 - p.0 >= PREDICTION_EVERY_MS);
                if due {
                    if t.predictions.len() >= MAX_PREDICTIONS {
                        // Thinned, not refused: every horizon keeps some.
                        let mut i = 0;
                        t.predictions.retain(|_| {
                            i += 1;
                            i % 2 == 0
                        });
                    }
                    t.predictions.push((now.0, e.0));
                }
            }
            refresh_view(d, t, &mut parts, now);
        }
    }

    /// Marks drivers without a recent fix as quiet for their patients.
    pub fn refresh_quiet(&mut self, book: &Book, now: UnixMillis) {
        let quiet: Vec<SubjectId> = self
            .live
            .iter()
            .filter(|(_, l)| now.since(l.seen) > self.eta_cfg.quiet_ms)
            .map(|(d, _)| d.clone())
            .collect();
        for d in quiet {
            self.refresh_route(book, &d, now);
        }
    }

    /// Updates the driver's position, speed and plan and the ETAs of its
    /// route (against `visible`, what patients are shown), and returns
    /// `dropoff.approaching` for stops whose ETA fell under the threshold
    /// and whose approach neither book records (`decided` holds the events
    /// in flight; it is consulted only for such a stop, so that a fix
    /// touches one book, not two).
    pub(crate) fn follow_fixes(
        &mut self,
        visible: &Book,
        decided: &Book,
        who: &Principal,
        fixes: &[Fix],
        now: UnixMillis,
    ) -> Vec<Draft> {
        let Some(last) = fixes.iter().max_by_key(|f| f.ts) else {
            return Vec::new();
        };
        let cfg = self.eta_cfg;
        // The driver's id is cloned once, when it is first seen.
        if !self.live.contains_key(&who.sub) {
            self.live.insert(
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
        let Some(live) = self.live.get_mut(&who.sub) else {
            return Vec::new();
        };
        // Stopped at a stop of the route: no speed sample is a road's speed.
        let at_stop = visible
            .route(&who.sub)
            .iter()
            .filter_map(|id| visible.delivery(id))
            .any(|d| d.at_dropoff || (d.at_pickup && d.status == Status::Scheduled));
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
            match plan.advance(net, (f.pos.lat(), f.pos.lng()), f.ts.0, cfg.off_route_m) {
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
        self.refresh_route(visible, &who.sub, now);
        // Candidates from the visible book (what this fix already touched);
        // the decided book, with what is in flight, confirms the few.
        visible
            .route(&who.sub)
            .iter()
            .filter_map(|id| visible.delivery(id))
            .filter(|d| d.status == Status::EnRoute && !d.approached)
            .filter_map(|d| Some((d, self.tracks.get(&d.id)?.eta?)))
            .filter(|(_, e)| e.since(now) <= cfg.approaching_ms)
            .filter(|(d, _)| {
                decided
                    .delivery(&d.id)
                    .is_some_and(|d| d.status == Status::EnRoute && !d.approached)
            })
            .map(|(d, e)| Draft {
                kind: EventKind::DropoffApproaching,
                delivery_id: Some(d.id.clone()),
                at: now.0,
                device_ts: Some(last.ts.0),
                actor: actor_of(who),
                where_: Some(Where {
                    lat: last.pos.lat(),
                    lng: last.pos.lng(),
                    acc: last.acc,
                }),
                data: serde_json::json!({ "eta": e.0 }),
            })
            .collect()
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
}
