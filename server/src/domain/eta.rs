//! The ETA engine and the coarsening of what patients see. Pure: positions,
//! speeds and time in; arrival estimates and coarse windows out.
//!
//! For each stop on a driver's route, the remaining path runs from the
//! driver through every earlier stop to this one (through the pharmacy
//! first while a delivery on the route is not yet picked up). With a road
//! extract (`roads = …`), its driving time is the fastest road path
//! (`roads::Plan`, over speeds learned from the fleet); without one, the
//! fallback is the sum of great-circle legs times a circuity factor at a
//! smoothed speed with a floor and a ceiling. Either way a service time is
//! added for each earlier stop: learned from the dwell the log records
//! ([`ServiceModel`]), less what the driver has already spent at the stop
//! it is at.
//!
//! Patients see a window, not a time. Its width is calibrated, not guessed
//! ([`Calibration`]): each delivery's earlier estimates are compared with
//! its real arrival, and the window spans the 2.5th to the 97.5th
//! percentile of the recent errors at that horizon (a wide prior until
//! enough arrivals were seen), then is rounded outward to whole `round_ms`
//! (5 minutes by default), never starting before the current minute. The
//! window changes only when the rounded bounds change, so a patient is not
//! shown a number that jitters.

use serde::Serialize;

use crate::types::{LatLng, UnixMillis};

/// Tunables of the ETA engine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EtaConfig {
    /// Road distance per straight-line distance.
    pub circuity: f64,
    /// Speed used before the driver has reported any.
    pub default_speed_mps: f64,
    /// Floor and ceiling of the smoothed speed (stopped at a light is not a
    /// speed to plan with; a burst on a highway is not either).
    pub min_speed_mps: f64,
    pub max_speed_mps: f64,
    /// Weight of each new speed sample in the moving average.
    pub smoothing: f64,
    /// Time spent at each earlier stop, ms: the prior of the learned one.
    pub service_ms: i64,
    /// Share of road-class speeds drivers hold before the fleet has taught
    /// the road speeds (with a road extract).
    pub road_speed_factor: f64,
    /// A road plan older than this is timed again with the learned speeds.
    pub replan_ms: i64,
    /// A driver farther than this from its planned path has left it, metres.
    pub off_route_m: f64,
    /// Patient windows are rounded outward to this, ms.
    pub round_ms: i64,
    /// `dropoff.approaching` fires when the ETA falls under this, ms.
    pub approaching_ms: i64,
    /// Without a fix for this long, patients see "updating" instead of an ETA.
    pub quiet_ms: i64,
}

impl Default for EtaConfig {
    fn default() -> Self {
        Self {
            circuity: 1.35,
            default_speed_mps: 8.0,
            min_speed_mps: 3.0,
            max_speed_mps: 25.0,
            smoothing: 0.2,
            service_ms: 3 * 60_000,
            road_speed_factor: 0.85,
            replan_ms: 60_000,
            off_route_m: 50.0,
            round_ms: 5 * 60_000,
            approaching_ms: 5 * 60_000,
            quiet_ms: 2 * 60_000,
        }
    }
}

/// Great-circle distance, metres (the geofence crate's haversine).
#[must_use]
pub fn distance_m(a: LatLng, b: LatLng) -> f64 {
    match (
        geofence::Point::new(a.lat(), a.lng()),
        geofence::Point::new(b.lat(), b.lng()),
    ) {
        (Ok(p), Ok(q)) => p.distance_m(q),
        // A LatLng is checked to the same ranges; this arm cannot be taken.
        _ => f64::INFINITY,
    }
}

/// A smoothed speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpeedModel {
    avg: Option<f64>,
}

impl SpeedModel {
    /// Takes a speed sample (m/s); non-finite or negative samples are ignored.
    pub fn observe(&mut self, sample: f64, cfg: &EtaConfig) {
        if !sample.is_finite() || sample < 0.0 {
            return;
        }
        self.avg = Some(match self.avg {
            None => sample,
            Some(a) => a + cfg.smoothing * (sample - a),
        });
    }

    /// The speed to plan with, m/s.
    #[must_use]
    pub fn speed(&self, cfg: &EtaConfig) -> f64 {
        self.avg
            .unwrap_or(cfg.default_speed_mps)
            .clamp(cfg.min_speed_mps, cfg.max_speed_mps)
    }
}

/// Arrival estimates for each stop of a route, from the driver's position,
/// by the straight-line model with a full service time at each earlier stop.
#[must_use]
pub fn arrivals(
    from: LatLng,
    now: UnixMillis,
    stops: &[LatLng],
    speed_mps: f64,
    cfg: &EtaConfig,
) -> Vec<UnixMillis> {
    let drive = straight_line_s(from, stops, speed_mps, cfg);
    schedule(now, &drive, cfg.service_ms, cfg.service_ms)
}

/// Seconds of driving to each stop, from the straight-line model: legs
/// times the circuity factor at `speed_mps`.
#[must_use]
pub fn straight_line_s(
    from: LatLng,
    stops: &[LatLng],
    speed_mps: f64,
    cfg: &EtaConfig,
) -> Vec<f64> {
    let mut here = from;
    let mut acc = 0.0;
    stops
        .iter()
        .map(|stop| {
            acc += distance_m(here, *stop) * cfg.circuity / speed_mps.max(0.1);
            here = *stop;
            acc
        })
        .collect()
}

/// Arrival times from cumulative driving seconds per stop: each stop after
/// the first also waits for the service at every earlier one; the first
/// earlier stop's service is `first_service_ms` (what is left of it when
/// the driver is already there).
#[must_use]
pub fn schedule(
    now: UnixMillis,
    drive_s: &[f64],
    first_service_ms: i64,
    service_ms: i64,
) -> Vec<UnixMillis> {
    drive_s
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let services = match i {
                0 => 0,
                n => first_service_ms + service_ms * (i64::try_from(n).unwrap_or(0) - 1),
            };
            #[allow(
                clippy::cast_possible_truncation,
                reason = "milliseconds of a plausible drive fit i64"
            )]
            let driving = (s * 1000.0).round() as i64;
            UnixMillis(now.0.saturating_add(driving).saturating_add(services))
        })
        .collect()
}

/// Service time per stop, learned from the dwell the log records (from
/// `dropoff.arrived` to the delivery's end or the driver's departure),
/// starting from the configured prior.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServiceModel {
    ms: f64,
    samples: u32,
}

impl ServiceModel {
    #[must_use]
    pub fn new(prior_ms: i64) -> Self {
        Self {
            ms: prior_ms as f64,
            samples: 0,
        }
    }

    /// Takes one observed dwell; implausible ones (under 5 s, over an hour)
    /// are ignored.
    pub fn observe(&mut self, dwell_ms: i64) {
        if !(5_000..=3_600_000).contains(&dwell_ms) {
            return;
        }
        // The first observations move it fast, later ones smooth.
        let alpha = (1.0 / f64::from(self.samples + 2)).max(0.1);
        self.ms += alpha * (dwell_ms as f64 - self.ms);
        self.samples = self.samples.saturating_add(1);
    }

    /// The service time to plan with, ms.
    #[must_use]
    pub fn ms(&self) -> i64 {
        #[allow(clippy::cast_possible_truncation, reason = "clamped to an hour")]
        let ms = self.ms.clamp(0.0, 3_600_000.0) as i64;
        ms
    }
}

/// Upper bounds of the horizon buckets (minutes ahead), the last open.
const BUCKET_MINUTES: [i64; 8] = [2, 5, 10, 15, 20, 30, 45, i64::MAX];
/// Recent errors kept per bucket.
const ERRORS_PER_BUCKET: usize = 500;
/// Deliveries a bucket needs before its percentiles replace the prior.
const MIN_ERRORS: usize = 40;

/// Observed ETA errors (actual arrival minus estimate) by how far ahead the
/// estimate was, and the window each bucket calls for.
#[derive(Clone, Debug)]
pub struct Calibration {
    buckets: Vec<ErrorBucket>,
}

#[derive(Clone, Debug, Default)]
struct ErrorBucket {
    errors: std::collections::VecDeque<i64>,
    /// The 2.5th and 97.5th percentiles, recomputed when errors arrive.
    spread: Option<(i64, i64)>,
    dirty: bool,
}

impl Default for Calibration {
    fn default() -> Self {
        Self {
            buckets: vec![ErrorBucket::default(); BUCKET_MINUTES.len()],
        }
    }
}

fn bucket_of(horizon_ms: i64) -> usize {
    let minutes = horizon_ms.max(0) / 60_000;
    BUCKET_MINUTES
        .iter()
        .position(|&m| minutes < m)
        .unwrap_or(BUCKET_MINUTES.len() - 1)
}

impl Calibration {
    /// Records that an estimate made `horizon_ms` ahead missed by `error_ms`
    /// (positive: the driver came later).
    pub fn record(&mut self, horizon_ms: i64, error_ms: i64) {
        let b = &mut self.buckets[bucket_of(horizon_ms)];
        if b.errors.len() == ERRORS_PER_BUCKET {
            b.errors.pop_front();
        }
        b.errors.push_back(error_ms);
        b.dirty = true;
    }

    /// Records a delivery's arrival against its earlier estimates (made
    /// at, estimate): one error per horizon bucket, the estimate made
    /// earliest in it, so that one long delivery's many estimates, which
    /// err together, count once.
    pub fn record_delivery(&mut self, predictions: &[(i64, i64)], actual: i64) {
        let mut seen = [false; BUCKET_MINUTES.len()];
        for &(made, estimate) in predictions {
            let b = bucket_of(estimate - made);
            if !seen[b] {
                seen[b] = true;
                self.record(estimate - made, actual - estimate);
            }
        }
    }

    /// Errors recorded per bucket.
    #[must_use]
    pub fn counts(&self) -> Vec<usize> {
        self.buckets.iter().map(|b| b.errors.len()).collect()
    }

    /// The window around an estimate `horizon_ms` ahead: offsets (ms) of its
    /// start and end from the estimate.
    pub fn spread(&mut self, horizon_ms: i64) -> (i64, i64) {
        let h = horizon_ms.max(0);
        let b = &mut self.buckets[bucket_of(h)];
        if b.errors.len() < MIN_ERRORS {
            return prior_spread(h);
        }
        if b.dirty || b.spread.is_none() {
            let mut v: Vec<i64> = b.errors.iter().copied().collect();
            v.sort_unstable();
            let n = v.len();
            // Conservative ranks: the window errs wide, not narrow.
            let lo = v[(n * 25 / 1000).min(n - 1)];
            let hi = v[(n * 975).div_ceil(1000).min(n - 1)];
            b.spread = Some((lo, hi));
            b.dirty = false;
        }
        b.spread.unwrap_or_else(|| prior_spread(h))
    }
}

/// Before enough arrivals: two minutes plus a quarter of the time ahead
/// early, three minutes plus a third of it late (drivers are late more
/// often than early).
fn prior_spread(horizon_ms: i64) -> (i64, i64) {
    (-(120_000 + horizon_ms / 4), 180_000 + horizon_ms / 3)
}

/// A coarse arrival window, as patients see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    pub from: i64,
    pub to: i64,
}

/// The window for an estimate: `spread` (offsets of its ends from the
/// estimate, from [`Calibration::spread`]) rounded outward to whole
/// `round_ms`, never starting before the current minute nor ending before
/// the next one.
#[must_use]
pub fn coarse_window(
    eta: UnixMillis,
    now: UnixMillis,
    spread: (i64, i64),
    cfg: &EtaConfig,
) -> Window {
    const MINUTE: i64 = 60_000;
    let r = cfg.round_ms.max(1);
    let this_minute = now.0.div_euclid(MINUTE) * MINUTE;
    let lo = eta.0.saturating_add(spread.0.min(0)).max(now.0);
    let hi = eta.0.saturating_add(spread.1.max(0)).max(lo);
    let from = (lo.div_euclid(r) * r).max(this_minute);
    let to = hi
        .div_euclid(r)
        .saturating_add(i64::from(hi.rem_euclid(r) != 0))
        * r;
    Window {
        from,
        to: to.max(this_minute + MINUTE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ll(lat: f64, lng: f64) -> LatLng {
        LatLng::new(lat, lng).unwrap()
    }

    const NOW: UnixMillis = UnixMillis(1_764_072_000_000);

    #[test]
    fn arrivals_add_legs_and_service_times() {
        let cfg = EtaConfig::default();
        let a = ll(60.0, 24.0);
        let b = ll(60.01, 24.0); // about 1112 m north
        let c = ll(60.02, 24.0);
        let eta = arrivals(a, NOW, &[b, c], 10.0, &cfg);
        let leg_ms = 1112.0 * 1.35 / 10.0 * 1000.0;
        let first = (eta[0].0 - NOW.0) as f64;
        let second = (eta[1].0 - eta[0].0 - cfg.service_ms) as f64;
        assert!((first - leg_ms).abs() < 2000.0, "{eta:?}");
        assert!((second - leg_ms).abs() < 2000.0, "{eta:?}");
    }

    #[test]
    #[allow(clippy::float_cmp, reason = "clamping returns the bound itself")]
    fn speed_is_smoothed_and_clamped() {
        let cfg = EtaConfig::default();
        let mut s = SpeedModel::default();
        assert_eq!(s.speed(&cfg), cfg.default_speed_mps);
        s.observe(0.0, &cfg);
        assert_eq!(s.speed(&cfg), cfg.min_speed_mps);
        for _ in 0..50 {
            s.observe(60.0, &cfg);
        }
        assert_eq!(s.speed(&cfg), cfg.max_speed_mps);
        s.observe(f64::NAN, &cfg);
        s.observe(-3.0, &cfg);
        assert_eq!(s.speed(&cfg), cfg.max_speed_mps);
    }

    #[test]
    fn windows_are_rounded_outward_and_stable() {
        let cfg = EtaConfig::default();
        let mut cal = Calibration::default();
        let eta = UnixMillis(NOW.0 + 20 * 60_000 + 17_000);
        let w = coarse_window(eta, NOW, cal.spread(eta.0 - NOW.0), &cfg);
        assert_eq!(w.from % cfg.round_ms, 0);
        assert_eq!(w.to % cfg.round_ms, 0);
        assert!(w.from <= eta.0 && eta.0 <= w.to);
        // A few seconds of change do not move the window.
        let w2 = coarse_window(
            UnixMillis(eta.0 + 5_000),
            UnixMillis(NOW.0 + 5_000),
            cal.spread(eta.0 - NOW.0),
            &cfg,
        );
        assert_eq!(w, w2);
        // Nearer the door, the window narrows.
        let near_eta = UnixMillis(NOW.0 + 3 * 60_000);
        let near = coarse_window(near_eta, NOW, cal.spread(3 * 60_000), &cfg);
        assert!(near.to - near.from <= w.to - w.from);
    }

    #[test]
    fn a_window_never_starts_before_the_current_minute() {
        let cfg = EtaConfig::default();
        // 10:26:10, the driver expected at 10:27: the 5-minute floor would
        // say 10:25, which is past.
        let now = UnixMillis(1_764_152_770_000);
        let eta = UnixMillis(now.0 + 50_000);
        let w = coarse_window(eta, now, (-120_000, 180_000), &cfg);
        assert_eq!(w.from, now.0 / 60_000 * 60_000, "{w:?}");
        assert!(w.to >= eta.0 && w.to % cfg.round_ms == 0, "{w:?}");
        // An estimate already overdue still gives a window ahead of now.
        let late = coarse_window(UnixMillis(now.0 - 600_000), now, (-60_000, 60_000), &cfg);
        assert!(
            late.from >= now.0 / 60_000 * 60_000 && late.to > now.0,
            "{late:?}"
        );
    }

    #[test]
    fn calibration_learns_the_spread_of_its_errors() {
        let mut cal = Calibration::default();
        let prior = cal.spread(10 * 60_000);
        assert!(prior.0 < 0 && prior.1 > 0);
        // Estimates 10-15 minutes ahead were late by 0 to 100 s.
        for i in 0..200 {
            cal.record(12 * 60_000, i * 500);
        }
        let (lo, hi) = cal.spread(11 * 60_000);
        assert!((0..=5_000).contains(&lo), "{lo}");
        assert!((95_000..=100_000).contains(&hi), "{hi}");
        // Another horizon keeps its prior.
        assert_eq!(cal.spread(60_000), prior_spread(60_000));
        assert_eq!(cal.counts()[3], 200);
        // One delivery's estimates count once per horizon.
        let mut one = Calibration::default();
        let estimates: Vec<(i64, i64)> = (0..40).map(|i| (i * 30_000, 1_800_000)).collect();
        one.record_delivery(&estimates, 1_860_000);
        assert_eq!(one.counts().iter().sum::<usize>(), 4, "{:?}", one.counts());
    }

    #[test]
    fn service_time_is_learned_from_dwell() {
        let mut s = ServiceModel::new(180_000);
        for _ in 0..30 {
            s.observe(90_000);
        }
        assert!((s.ms() - 90_000).abs() < 2_000, "{}", s.ms());
        s.observe(1_000);
        s.observe(10_000_000);
        assert!((s.ms() - 90_000).abs() < 2_000);
    }

    #[test]
    fn schedules_add_services_of_earlier_stops() {
        let at = schedule(NOW, &[60.0, 120.0, 300.0], 30_000, 90_000);
        assert_eq!(at[0].0 - NOW.0, 60_000);
        assert_eq!(at[1].0 - NOW.0, 120_000 + 30_000);
        assert_eq!(at[2].0 - NOW.0, 300_000 + 30_000 + 90_000);
    }
}
