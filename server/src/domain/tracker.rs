//! The read model of one tenant, kept beside its book: the fences of active
//! deliveries (shared when identical), each driver's proximity detector and
//! ETA state, and what each patient sees.
//!
//! It follows the book through [`Tracker::react`] (one call per applied
//! event, with the [`Change`] the book returned) and through the driver's
//! fixes ([`Tracker::observe`], in `proximity`). It never publishes: what
//! moved is collected in [`Outputs`] for the commit path to hand to the bus.

use std::collections::HashMap;
use std::sync::Arc;

use geofence::{FenceId, FenceIndex};

use super::book::{Book, Change};
use super::eta::{Calibration, EtaConfig, ServiceModel};
use super::live::{DriverLive, LiveCarried, SearchBudget};
use super::model::{Fence, Stop};
use super::patient::PatientSnapshot;
use super::status::Status;
use crate::types::{DeliveryId, DeviceId, SubjectId, UnixMillis};

/// What the read model keeps of one delivery.
#[derive(Clone, Debug)]
pub struct Track {
    /// Its pickup and drop-off fences in the tenant's index, while it is active.
    pub(crate) fences: Option<(FenceId, FenceId)>,
    /// The latest arrival estimate.
    pub eta: Option<UnixMillis>,
    /// The estimate dispatchers were last told of.
    pub(crate) eta_told: Option<i64>,
    /// Earlier estimates (made at, estimate), compared with the real
    /// arrival to calibrate the windows.
    pub(crate) predictions: Vec<(i64, i64)>,
    /// What the patient sees now.
    pub snapshot: PatientSnapshot,
}

impl Carried {
    /// When the carrying node last saw the driver.
    #[must_use]
    pub fn seen(&self) -> Option<UnixMillis> {
        self.live.as_ref().map(LiveCarried::seen)
    }
}

/// How far another node's clock may run ahead of this one's.
const CLOCK_SKEW_MS: i64 = 60_000;

/// A driver's tracking as another node carries it on: the proximity
/// detector (each fence named by a delivery and stop it serves) and the
/// live position and speed.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    detector: Option<geofence::Portable<(DeliveryId, Stop)>>,
    live: Option<LiveCarried>,
}

/// What moved since the commit path last looked.
#[derive(Debug, Default, PartialEq)]
pub struct Outputs {
    /// Deliveries whose patient view changed (publish their snapshot).
    pub patients: Vec<DeliveryId>,
    /// Deliveries whose window or estimate moved, for dispatchers.
    pub changed: Vec<DeliveryId>,
    /// Tracking links revoked: their open sockets end.
    pub closed_links: Vec<DeliveryId>,
    /// Devices revoked: their live sessions end.
    pub revoked: Vec<DeviceId>,
}

impl Outputs {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.patients.is_empty()
            && self.changed.is_empty()
            && self.closed_links.is_empty()
            && self.revoked.is_empty()
    }
}

/// One tenant's read model.
#[derive(Debug)]
pub struct Tracker {
    /// Pickup and drop-off fences of active deliveries.
    pub(crate) fences: FenceIndex,
    /// The deliveries (and which of their stops) a fence serves. Identical
    /// fences are one fence: a pharmacy's pickup of every delivery it sends.
    pub(crate) fence_owner: HashMap<FenceId, Vec<(DeliveryId, Stop)>>,
    /// Fences by their exact shape as the API took it, and back.
    fence_by_shape: HashMap<String, FenceId>,
    fence_shape: HashMap<FenceId, String>,
    /// The fences of each driver's route, as the detector needs them on
    /// every fix; remade when the route or a delivery on it changes.
    pub(crate) route_fences: HashMap<SubjectId, Vec<FenceId>>,
    next_fence: u64,
    /// The proximity detector's state per driver.
    pub(crate) detectors: HashMap<SubjectId, geofence::Subject>,
    /// Last position, speed and road plan per driver, for ETAs.
    pub(crate) live: HashMap<SubjectId, DriverLive>,
    pub(crate) tracks: HashMap<DeliveryId, Track>,
    pub(crate) eta_cfg: EtaConfig,
    /// The road network (shared by every tenant), and this tenant's speeds
    /// learned on it.
    pub(crate) roads: Option<(Arc<roads::Network>, roads::SpeedTable)>,
    /// ETA errors by horizon, for the width of patients' windows.
    pub(crate) calibration: Calibration,
    /// The service time per stop, learned from dwell.
    pub(crate) service: ServiceModel,
    /// The tenant's name as patients see it.
    pub(crate) display_name: Option<Arc<str>>,
    /// Road plan searches this second.
    pub(crate) searches: SearchBudget,
    pub(crate) out: Outputs,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            fences: FenceIndex::new(),
            fence_owner: HashMap::new(),
            fence_by_shape: HashMap::new(),
            fence_shape: HashMap::new(),
            route_fences: HashMap::new(),
            next_fence: 0,
            detectors: HashMap::new(),
            live: HashMap::new(),
            tracks: HashMap::new(),
            eta_cfg: EtaConfig::default(),
            roads: None,
            calibration: Calibration::default(),
            service: ServiceModel::new(EtaConfig::default().service_ms),
            display_name: None,
            searches: SearchBudget::default(),
            out: Outputs::default(),
        }
    }
}

impl Tracker {
    /// Applies the ETA tunables, the road network (if any) and the name
    /// patients see.
    pub fn configure(
        &mut self,
        eta: EtaConfig,
        network: Option<Arc<roads::Network>>,
        display_name: Option<Arc<str>>,
    ) {
        self.eta_cfg = eta;
        self.service = ServiceModel::new(eta.service_ms);
        self.roads = network.map(|n| {
            let speeds = roads::SpeedTable::new(&n, eta.road_speed_factor);
            (n, speeds)
        });
        self.display_name = display_name;
    }

    /// What the read model keeps of a delivery.
    #[must_use]
    pub fn track(&self, id: &DeliveryId) -> Option<&Track> {
        self.tracks.get(id)
    }

    /// Whether the driver's fixes come here, recently (within the quiet
    /// time): its deliveries' ETAs are this node's to tell. A driver that
    /// moved to another node stops counting here once quiet.
    #[must_use]
    pub fn has_live(&self, driver: &SubjectId, now: UnixMillis) -> bool {
        self.live
            .get(driver)
            .is_some_and(|l| now.since(l.seen) <= self.eta_cfg.quiet_ms)
    }

    /// Every delivery's current patient view.
    pub fn views(&self) -> impl Iterator<Item = (&DeliveryId, &PatientSnapshot)> {
        self.tracks.iter().map(|(id, t)| (id, &t.snapshot))
    }

    /// Forgets a driver's detector: its next fixes start a new one, which
    /// finds the driver's visits again (the book keeps events from
    /// repeating).
    pub fn forget_detector(&mut self, driver: &SubjectId) {
        self.detectors.remove(driver);
    }

    /// What another node needs to carry on tracking `driver` where this
    /// one stopped (none if this node never tracked it). Fences are named
    /// by a delivery and stop they serve: fence ids are this node's own,
    /// while every node holds the same deliveries.
    #[must_use]
    pub fn carry(&self, driver: &SubjectId) -> Option<Carried> {
        let detector = self.detectors.get(driver).map(|d| {
            d.export(|f| {
                self.fence_owner
                    .get(&f)
                    .and_then(|owners| owners.first())
                    .cloned()
            })
        });
        let live = self.live.get(driver).map(DriverLive::carried);
        (detector.is_some() || live.is_some()).then_some(Carried { detector, live })
    }

    /// The digest of the driver's detector state that decides events (see
    /// `geofence::Subject::fingerprint`).
    #[must_use]
    pub fn fingerprint(&self, driver: &SubjectId) -> Option<u64> {
        self.detectors
            .get(driver)
            .map(geofence::Subject::fingerprint)
    }

    /// Takes up what another node carried of `driver`, unless this node
    /// saw the driver as recently; whether it did. Fences of deliveries no
    /// longer active here are dropped.
    pub fn resume(&mut self, driver: &SubjectId, mut carried: Carried, now: UnixMillis) -> bool {
        // What another node kept is checked like anything it sends: a
        // detector it could not have made by now is not taken up, and a
        // last sighting is never later than now.
        if carried
            .detector
            .as_ref()
            .is_some_and(|d| !d.is_plausible(now.0, CLOCK_SKEW_MS))
        {
            carried.detector = None;
        }
        if let Some(l) = carried.live.as_mut() {
            l.clamp_seen(now);
        }
        let theirs = carried.live.as_ref().map(LiveCarried::seen);
        let ours = self.live.get(driver).map(|l| l.seen);
        if ours.is_some() && (theirs.is_none() || ours >= theirs) {
            return false;
        }
        match carried.detector {
            Some(d) => {
                let subject = geofence::Subject::import(d, |(id, stop)| {
                    let (pickup, dropoff) = self.fences_of(id)?;
                    Some(match stop {
                        Stop::Pickup => pickup,
                        Stop::Dropoff => dropoff,
                    })
                });
                self.detectors.insert(driver.clone(), subject);
            }
            None => {
                self.detectors.remove(driver);
            }
        }
        match carried.live {
            Some(l) => {
                self.live.insert(driver.clone(), DriverLive::resumed(l));
            }
            None => {
                self.live.remove(driver);
            }
        }
        true
    }

    /// What moved since last taken.
    pub fn take_outputs(&mut self) -> Outputs {
        let mut out = std::mem::take(&mut self.out);
        dedup(&mut out.patients);
        dedup(&mut out.changed);
        out
    }

    /// Follows one event the book applied.
    pub fn react(&mut self, book: &Book, change: Change, at: UnixMillis) {
        match change {
            Change::Nothing => {}
            Change::Created(id) => self.created(book, id, at),
            Change::Assigned { id, from, to } => {
                for driver in [from, to].into_iter().flatten() {
                    self.cache_route_fences(book, &driver);
                    self.refresh_route(book, &driver, at);
                }
                self.refresh_patient(book, &id, at);
            }
            Change::Status {
                id,
                driver,
                ended,
                dwell_ms,
            } => {
                // A hand-over (at the pharmacy or the door) ends the
                // driver's stop: what comes next arrives on a stop of its own.
                if let Some(s) = driver.as_ref().and_then(|d| self.detectors.get_mut(d)) {
                    s.forget_stop();
                }
                if ended {
                    if let Some(ms) = dwell_ms {
                        self.service.observe(ms);
                    }
                    let fences = self.tracks.get_mut(&id).and_then(|t| {
                        t.predictions = Vec::new();
                        t.fences.take()
                    });
                    if let Some((p, q)) = fences {
                        self.release_fence(p, &id);
                        self.release_fence(q, &id);
                    }
                }
                self.refresh_patient(book, &id, at);
                if let Some(drv) = driver {
                    self.cache_route_fences(book, &drv);
                    self.refresh_route(book, &drv, at);
                }
            }
            Change::Proximity {
                id,
                driver,
                arrived_at,
                dwell_ms,
            } => {
                if let (Some(actual), Some(t)) = (arrived_at, self.tracks.get_mut(&id)) {
                    // How far off its earlier estimates were.
                    self.calibration
                        .record_delivery(&std::mem::take(&mut t.predictions), actual);
                }
                if let Some(ms) = dwell_ms {
                    self.service.observe(ms);
                }
                self.refresh_patient(book, &id, at);
                if let Some(drv) = driver {
                    self.refresh_route(book, &drv, at);
                }
            }
            Change::LinkRevoked(id) => self.out.closed_links.push(id),
            Change::DeviceRevoked(d) => self.out.revoked.push(d),
        }
    }

    fn created(&mut self, book: &Book, id: DeliveryId, at: UnixMillis) {
        let Some(d) = book.delivery(&id) else {
            return;
        };
        let fences = self.add_fences(&id, &d.pickup, &d.dropoff);
        let snapshot = PatientSnapshot {
            status: Status::Scheduled,
            stops_before: None,
            eta: None,
            updating: false,
            display_name: self.display_name.clone(),
            updated_at: at.0,
        };
        self.tracks.insert(
            id,
            Track {
                fences,
                eta: None,
                eta_told: None,
                predictions: Vec::new(),
                snapshot,
            },
        );
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

    /// The fences of a delivery, while it is active.
    pub(crate) fn fences_of(&self, id: &DeliveryId) -> Option<(FenceId, FenceId)> {
        self.tracks.get(id)?.fences
    }

    /// The fences of `driver`'s route, from the route and its deliveries.
    pub(crate) fn fences_of_route(&self, book: &Book, driver: &SubjectId) -> Vec<FenceId> {
        book.route(driver)
            .iter()
            .filter_map(|id| self.fences_of(id))
            .flat_map(|(pickup, dropoff)| [pickup, dropoff])
            .collect()
    }

    fn cache_route_fences(&mut self, book: &Book, driver: &SubjectId) {
        let fences = self.fences_of_route(book, driver);
        if fences.is_empty() {
            self.route_fences.remove(driver);
        } else {
            self.route_fences.insert(driver.clone(), fences);
        }
    }
}

/// Drops repeats, keeping first places (the lists are a few ids long).
fn dedup(ids: &mut Vec<DeliveryId>) {
    let mut i = 0;
    while i < ids.len() {
        if ids[..i].contains(&ids[i]) {
            ids.remove(i);
        } else {
            i += 1;
        }
    }
}
