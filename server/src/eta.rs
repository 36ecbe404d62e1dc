//! The ETA engine and the coarsening of what patients see. Pure: positions,
//! speeds and time in; arrival estimates and coarse windows out.
//!
//! For each stop on a driver's route, the remaining path runs from the
//! driver through every earlier stop to this one; its length is the sum of
//! great-circle legs times a circuity factor (roads are not straight; the
//! road network comes later). Travel time uses a smoothed speed with a floor
//! and a ceiling, plus a service time at each earlier stop.
//!
//! Patients see a window, not a time: the estimate widened by an
//! uncertainty that grows with the time remaining, then rounded outward to
//! whole `round_ms` (5 minutes by default). The window changes only when the
//! rounded bounds change, so a patient is not shown a number that jitters.

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
    /// Time spent at each earlier stop, ms.
    pub service_ms: i64,
    /// Patient windows are rounded outward to this, ms.
    pub round_ms: i64,
    /// Uncertainty: this share of the time remaining, at least `min_spread_ms`, each side.
    pub spread: f64,
    pub min_spread_ms: i64,
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
            round_ms: 5 * 60_000,
            spread: 0.15,
            min_spread_ms: 2 * 60_000,
            approaching_ms: 5 * 60_000,
            quiet_ms: 2 * 60_000,
        }
    }
}

/// Great-circle distance, metres (the geofence crate's haversine).
#[must_use]
pub fn distance_m(a: LatLng, b: LatLng) -> f64 {
    match (
        geofence::Point::new(a.lat, a.lng),
        geofence::Point::new(b.lat, b.lng),
    ) {
        (Ok(p), Ok(q)) => p.distance_m(q),
        // A LatLng is checked to the same ranges; this arm cannot be taken.
        _ => f64::INFINITY,
    }
}

/// A smoothed speed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
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

/// Arrival estimates for each stop of a route, from the driver's position.
#[must_use]
pub fn arrivals(
    from: LatLng,
    now: UnixMillis,
    stops: &[LatLng],
    speed_mps: f64,
    cfg: &EtaConfig,
) -> Vec<UnixMillis> {
    let mut at = now.0 as f64;
    let mut here = from;
    let mut out = Vec::with_capacity(stops.len());
    for (i, stop) in stops.iter().enumerate() {
        if i > 0 {
            at += cfg.service_ms as f64;
        }
        at += distance_m(here, *stop) * cfg.circuity / speed_mps.max(0.1) * 1000.0;
        here = *stop;
        #[allow(
            clippy::cast_possible_truncation,
            reason = "milliseconds of a plausible time fit i64"
        )]
        out.push(UnixMillis(at.round() as i64));
    }
    out
}

/// A coarse arrival window, as patients see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    pub from: i64,
    pub to: i64,
}

/// The window for an estimate: widened by the uncertainty, rounded outward.
#[must_use]
pub fn coarse_window(eta: UnixMillis, now: UnixMillis, cfg: &EtaConfig) -> Window {
    let remaining = (eta.0 - now.0).max(0);
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a share of a remaining time in ms fits i64"
    )]
    let spread = ((remaining as f64 * cfg.spread) as i64).max(cfg.min_spread_ms);
    let r = cfg.round_ms.max(1);
    let from = (eta.0 - spread).div_euclid(r) * r;
    let to = (eta.0 + spread + r - 1).div_euclid(r) * r;
    Window {
        from: from.max(now.0.div_euclid(r) * r),
        to,
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
        let eta = UnixMillis(NOW.0 + 20 * 60_000 + 17_000);
        let w = coarse_window(eta, NOW, &cfg);
        assert_eq!(w.from % cfg.round_ms, 0);
        assert_eq!(w.to % cfg.round_ms, 0);
        assert!(w.from <= eta.0 && eta.0 <= w.to);
        // A few seconds of change do not move the window.
        let w2 = coarse_window(UnixMillis(eta.0 + 5_000), UnixMillis(NOW.0 + 5_000), &cfg);
        assert_eq!(w, w2);
        // Nearer the door, the window narrows.
        let near = coarse_window(UnixMillis(NOW.0 + 3 * 60_000), NOW, &cfg);
        assert!(near.to - near.from <= w.to - w.from);
    }
}
