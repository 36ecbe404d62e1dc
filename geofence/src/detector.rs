//! The proximity detector: noisy fixes in, trustworthy events out.
//!
//! Per subject (a driver's device), a [`Track`] decides which fixes are
//! worth anything: a fix older than the newest one seen is stale (it never
//! produces a live event), and a fix that implies an impossible speed from
//! the last trusted fix is an outlier. Per (subject, fence), a [`Proximity`]
//! state machine applies asymmetric hysteresis:
//!
//! - **arriving** needs the fix inside the fence, confirmed by
//!   `enter_fixes` fixes in a row spanning at least `enter_ms`;
//! - **leaving** needs the fix beyond the larger `exit_margin_m` outside the
//!   edge, for `exit_fixes` fixes in a row spanning at least `exit_ms`;
//! - a fix less accurate than `max_accuracy_m` counts for nothing;
//! - **dwelled** fires once per visit after `dwell_ms` inside.
//!
//! A fence whose config has `require_stop` (a delivery's stop) is entered
//! only when the subject has **stopped** there, not when it drives through:
//! inside, confirmed as above, and either slow (reported speeds below
//! `TrackConfig::stop_speed_mps` for `stop_ms`) or, for a device that
//! reports no speed, still (every fix for `still_ms` within
//! `still_radius_m` of the mean of the fixes since it stood). A
//! subject inside such a fence that has not stopped is *passing*: leaving
//! again produces no event at all. See [`Motion`].
//!
//! Entered and exited strictly alternate. No clocks: time is the fix's.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::fence::Point;
use crate::index::{FenceId, FenceIndex};

mod portable;
pub use portable::Portable;

/// A position report.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    /// Device time, milliseconds since the epoch.
    pub ts_ms: i64,
    pub point: Point,
    /// Accuracy radius, metres (None: unknown, treated as good).
    pub accuracy_m: Option<f64>,
    /// Ground speed the device reported, m/s (None: not reported; then only
    /// stillness tells a stop from a drive-through).
    pub speed_mps: Option<f64>,
}

/// What happened at a fence, with the fix that decided it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProximityEvent {
    Entered(Fix),
    Dwelled(Fix),
    Exited(Fix),
}

/// Per-fence thresholds. The defaults come from the real tracks in
/// `geofence/tests/data/` (see README.md: "Choosing the thresholds").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProximityConfig {
    pub enter_fixes: u32,
    pub enter_ms: i64,
    pub exit_margin_m: f64,
    pub exit_fixes: u32,
    pub exit_ms: i64,
    pub max_accuracy_m: f64,
    pub dwell_ms: i64,
    /// Entered only once the subject has stopped inside (see [`Motion`]):
    /// driving through is not arriving.
    pub require_stop: bool,
}

impl Default for ProximityConfig {
    fn default() -> Self {
        Self {
            enter_fixes: 2,
            enter_ms: 0,
            exit_margin_m: 25.0,
            exit_fixes: 3,
            exit_ms: 5_000,
            max_accuracy_m: 50.0,
            dwell_ms: 60_000,
            require_stop: false,
        }
    }
}

impl ProximityConfig {
    /// The defaults for a stop on a route (a pharmacy, a patient's door):
    /// entered only when the subject has stopped there.
    #[must_use]
    pub fn stop() -> Self {
        Self {
            require_stop: true,
            ..Self::default()
        }
    }
}

/// Per-subject thresholds for trusting a fix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackConfig {
    /// Fastest plausible ground speed, m/s.
    pub max_speed_mps: f64,
    /// After this many outliers in a row, the next fix is trusted again
    /// (the device really moved, for instance after a long tunnel).
    pub max_outliers_in_row: u32,
    /// Slow: reported speeds below this (a standing vehicle), m/s ...
    pub stop_speed_mps: f64,
    /// ... on every fix over at least this long (two fixes at the least).
    pub stop_ms: i64,
    /// Still: every fix within this distance of the mean of the fixes
    /// since the stillness began, metres ...
    pub still_radius_m: f64,
    /// ... for at least this long.
    pub still_ms: i64,
}

impl Default for TrackConfig {
    fn default() -> Self {
        Self {
            max_speed_mps: 50.0,
            max_outliers_in_row: 3,
            stop_speed_mps: 0.5,
            stop_ms: 3_000,
            still_radius_m: 20.0,
            still_ms: 30_000,
        }
    }
}

/// Whether a subject has stopped, from its trusted fixes: the evidence a
/// stop's fence needs before it counts as an arrival.
///
/// - **Slow**: the device reports a speed below `stop_speed_mps` (0.5 m/s,
///   well below walking pace) on consecutive fixes spanning `stop_ms`
///   (3 s). Phones report Doppler speed, good to a tenth or two of a m/s,
///   so a parked car shows slow within seconds, while a car driving past at
///   20 km/h, or crawling through a 5 km/h zone (the load generator's first
///   long runs found cars at 3.5 km/h counted as stopped with a 1.4 m/s
///   threshold), does not.
/// - **Still**: for apps that report no speed, every fix for `still_ms`
///   (30 s) within `still_radius_m` (20 m)
///   of the mean of the fixes since the stillness began. The mean, not the
///   first fix: one noisy fix must not decide. Parked, consumer GPS wanders
///   a few metres (the real car track's parked fixes, 1–3 m a step; the
///   simulator's 4 m per axis puts a fix 20 m from the mean about once in
///   50,000). Moving, the newest fix runs ahead of the mean by half the
///   distance covered: 20 m after 30 s even at 1.4 m/s, so nothing faster
///   than walking pace is still for 30 s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Motion {
    /// When the current run of slow fixes began.
    slow_since: Option<i64>,
    /// The current stillness, if any fix has been seen.
    still: Option<Still>,
}

/// Fixes since the subject became still: their origin, when, and the sum
/// of their offsets from the origin (east, north, metres).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Still {
    origin: Point,
    since: i64,
    sum: (f64, f64),
    n: f64,
}

impl Still {
    fn new(origin: Point, since: i64) -> Self {
        Self {
            origin,
            since,
            sum: (0.0, 0.0),
            n: 1.0,
        }
    }

    /// Offset of `p` from the origin, metres (east, north): exact enough
    /// over the few tens of metres that matter.
    fn offset(&self, p: Point) -> (f64, f64) {
        const M_PER_DEG: f64 = 111_195.0;
        let k = self.origin.lat().to_radians().cos();
        (
            (p.lng() - self.origin.lng()) * M_PER_DEG * k,
            (p.lat() - self.origin.lat()) * M_PER_DEG,
        )
    }
}

impl Motion {
    /// Takes the next trusted fix; returns whether the subject has stopped.
    pub fn observe(&mut self, fix: &Fix, cfg: &TrackConfig) -> bool {
        let t = fix.ts_ms;
        self.slow_since = match fix.speed_mps {
            Some(v) if v.is_finite() && v >= 0.0 && v < cfg.stop_speed_mps => {
                Some(self.slow_since.unwrap_or(t))
            }
            _ => None,
        };
        let still = match self.still {
            Some(mut s) => {
                let (x, y) = s.offset(fix.point);
                let (mx, my) = (s.sum.0 / s.n, s.sum.1 / s.n);
                if (x - mx).hypot(y - my) <= cfg.still_radius_m {
                    s.sum = (s.sum.0 + x, s.sum.1 + y);
                    s.n += 1.0;
                    s
                } else {
                    Still::new(fix.point, t)
                }
            }
            None => Still::new(fix.point, t),
        };
        self.still = Some(still);
        // A device that reports its speed is believed: stillness alone
        // would still call a car stopped for its first metres away.
        match fix.speed_mps {
            Some(_) => self
                .slow_since
                .is_some_and(|since| since < t && t - since >= cfg.stop_ms),
            None => t - still.since >= cfg.still_ms,
        }
    }
}

/// How a [`Track`] judged a fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Trusted,
    /// Not newer than the newest fix seen.
    Stale,
    /// Implies an impossible speed from the last trusted fix.
    Outlier,
}

/// What the detector remembers of one subject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Track {
    newest_ts: Option<i64>,
    last_trusted: Option<Fix>,
    outliers_in_row: u32,
}

impl Track {
    /// Judges the next fix and remembers it.
    pub fn judge(&mut self, fix: &Fix, cfg: &TrackConfig) -> Verdict {
        if self.newest_ts.is_some_and(|t| fix.ts_ms <= t) {
            return Verdict::Stale;
        }
        self.newest_ts = Some(fix.ts_ms);
        if let Some(last) = self.last_trusted {
            let dt_s = (fix.ts_ms - last.ts_ms) as f64 / 1000.0;
            let speed = last.point.distance_m(fix.point) / dt_s.max(0.001);
            if speed > cfg.max_speed_mps && self.outliers_in_row < cfg.max_outliers_in_row {
                self.outliers_in_row += 1;
                return Verdict::Outlier;
            }
        }
        self.outliers_in_row = 0;
        self.last_trusted = Some(*fix);
        Verdict::Trusted
    }

    /// The last trusted fix.
    #[must_use]
    pub fn last_trusted(&self) -> Option<Fix> {
        self.last_trusted
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum State {
    Outside,
    Entering {
        fixes: u32,
        since: i64,
    },
    /// Inside a `require_stop` fence, not (yet) stopped: driving through.
    Passing,
    Inside {
        since: i64,
        dwelled: bool,
    },
    Exiting {
        fixes: u32,
        since: i64,
        inside_since: i64,
        dwelled: bool,
    },
}

/// One subject's state at one fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Proximity {
    state: State,
}

impl Default for Proximity {
    fn default() -> Self {
        Self {
            state: State::Outside,
        }
    }
}

impl Proximity {
    /// Whether the subject is currently considered inside (or leaving).
    #[must_use]
    pub fn is_inside(&self) -> bool {
        matches!(self.state, State::Inside { .. } | State::Exiting { .. })
    }

    /// Whether this state holds anything worth keeping (not plainly outside).
    #[must_use]
    pub fn is_active(&self) -> bool {
        !matches!(self.state, State::Outside)
    }

    /// Feeds a trusted fix, its signed distance to the fence's edge
    /// (negative inside) and whether the subject has stopped (see
    /// [`Motion`]; only `require_stop` fences ask). Returns the event it
    /// decided, if any.
    pub fn update(
        &mut self,
        fix: &Fix,
        distance_m: f64,
        stopped: bool,
        cfg: &ProximityConfig,
    ) -> Option<ProximityEvent> {
        // NaN accuracy is as bad as a poor one.
        if fix
            .accuracy_m
            .is_some_and(|a| a.is_nan() || a > cfg.max_accuracy_m)
        {
            return None;
        }
        let t = fix.ts_ms;
        let inside = distance_m <= 0.0;
        let beyond = distance_m > cfg.exit_margin_m;
        let (next, event) = match self.state {
            State::Outside | State::Entering { .. } if !inside => (State::Outside, None),
            State::Outside => Self::entering(1, t, t, stopped, fix, cfg),
            State::Entering { fixes, since } => {
                Self::entering(fixes + 1, since, t, stopped, fix, cfg)
            }
            // Driven through: gone again without a word.
            State::Passing if beyond => (State::Outside, None),
            State::Passing if inside && stopped => (
                State::Inside {
                    since: t,
                    dwelled: false,
                },
                Some(ProximityEvent::Entered(*fix)),
            ),
            State::Passing => (State::Passing, None),
            State::Inside { since, dwelled } if beyond => {
                Self::exiting(1, t, t, since, dwelled, fix, cfg)
            }
            State::Inside { since, dwelled } => Self::dwelling(since, dwelled, t, fix, cfg),
            State::Exiting {
                fixes,
                since,
                inside_since,
                dwelled,
            } if beyond => Self::exiting(fixes + 1, since, t, inside_since, dwelled, fix, cfg),
            State::Exiting {
                inside_since,
                dwelled,
                ..
            } => Self::dwelling(inside_since, dwelled, t, fix, cfg),
        };
        self.state = next;
        event
    }

    fn entering(
        fixes: u32,
        since: i64,
        t: i64,
        stopped: bool,
        fix: &Fix,
        cfg: &ProximityConfig,
    ) -> (State, Option<ProximityEvent>) {
        let confirmed = fixes >= cfg.enter_fixes && t - since >= cfg.enter_ms;
        if confirmed && cfg.require_stop && !stopped {
            (State::Passing, None)
        } else if confirmed {
            (
                State::Inside {
                    since: t,
                    dwelled: false,
                },
                Some(ProximityEvent::Entered(*fix)),
            )
        } else {
            (State::Entering { fixes, since }, None)
        }
    }

    fn dwelling(
        since: i64,
        dwelled: bool,
        t: i64,
        fix: &Fix,
        cfg: &ProximityConfig,
    ) -> (State, Option<ProximityEvent>) {
        if !dwelled && t - since >= cfg.dwell_ms {
            (
                State::Inside {
                    since,
                    dwelled: true,
                },
                Some(ProximityEvent::Dwelled(*fix)),
            )
        } else {
            (State::Inside { since, dwelled }, None)
        }
    }

    fn exiting(
        fixes: u32,
        since: i64,
        t: i64,
        inside_since: i64,
        dwelled: bool,
        fix: &Fix,
        cfg: &ProximityConfig,
    ) -> (State, Option<ProximityEvent>) {
        if fixes >= cfg.exit_fixes && t - since >= cfg.exit_ms {
            (State::Outside, Some(ProximityEvent::Exited(*fix)))
        } else {
            (
                State::Exiting {
                    fixes,
                    since,
                    inside_since,
                    dwelled,
                },
                None,
            )
        }
    }
}

/// Everything the detector keeps for one subject: its track and its state
/// at each fence it is entering, inside or leaving.
#[derive(Clone, Debug, Default)]
pub struct Subject {
    track: Track,
    motion: Motion,
    /// Whether the subject has stopped, as of its newest trusted fix.
    stopped: bool,
    fences: FxHashMap<FenceId, Proximity>,
    /// The candidate fences of the fix at hand, kept to spare an allocation
    /// per fix.
    candidates: Vec<FenceId>,
}

impl Subject {
    /// Feeds one fix: judges it, looks up the fences that contain it, and
    /// advances the state at those fences and at every fence the subject is
    /// already in. Events are appended to `out` in fence-id order.
    pub fn observe(
        &mut self,
        index: &FenceIndex,
        fix: &Fix,
        track_cfg: &TrackConfig,
        cfg: impl Fn(FenceId) -> ProximityConfig,
        out: &mut Vec<(FenceId, ProximityEvent)>,
    ) {
        self.observe_only(index, fix, track_cfg, cfg, |_| true, out);
    }

    /// Like [`Subject::observe`], for the fences `relevant` accepts only
    /// (a driver's own stops among a whole tenant's): the others are dropped
    /// right after the lookup, before any exact test or state, so a point
    /// inside many fences (a pharmacy's pickup fence of every delivery it
    /// sends out) costs a subject no more than its own fences there. The state
    /// of a fence that is no longer relevant is forgotten.
    pub fn observe_only(
        &mut self,
        index: &FenceIndex,
        fix: &Fix,
        track_cfg: &TrackConfig,
        cfg: impl Fn(FenceId) -> ProximityConfig,
        relevant: impl Fn(FenceId) -> bool,
        out: &mut Vec<(FenceId, ProximityEvent)>,
    ) {
        self.fences.retain(|&id, _| relevant(id));
        if self.track.judge(fix, track_cfg) != Verdict::Trusted {
            return;
        }
        self.stopped = self.motion.observe(fix, track_cfg);
        let mut ids = std::mem::take(&mut self.candidates);
        ids.clear();
        index.lookup_where(fix.point, &mut ids, &relevant);
        ids.extend(self.fences.keys().copied());
        ids.sort_unstable();
        ids.dedup();
        for &id in &ids {
            let Some(fence) = index.get(id) else {
                // The fence is gone (its delivery ended): forget it.
                self.fences.remove(&id);
                continue;
            };
            let state = self.fences.entry(id).or_default();
            let distance = fence.distance_to_edge_m(fix.point);
            if let Some(e) = state.update(fix, distance, self.stopped, &cfg(id)) {
                out.push((id, e));
            }
            if !state.is_active() {
                self.fences.remove(&id);
            }
        }
        self.candidates = ids;
    }

    /// Whether the subject is inside (or leaving) this fence.
    #[must_use]
    pub fn is_inside(&self, id: FenceId) -> bool {
        self.fences.get(&id).is_some_and(Proximity::is_inside)
    }

    /// The subject's track.
    #[must_use]
    pub fn track(&self) -> &Track {
        &self.track
    }

    /// Whether the subject has stopped, as of its newest trusted fix.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Forgets the current stop: the subject counts as stopped again only
    /// once its next fixes show a stop anew (the caller's business at this
    /// stop is done; standing on is a new stop, driving off is none).
    pub fn forget_stop(&mut self) {
        self.motion = Motion::default();
        self.stopped = false;
    }
}

/// The simplest possible detector, for comparison: entered when a fix is
/// inside, exited when one is outside. No hysteresis, no filtering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NaiveProximity {
    inside: bool,
}

impl NaiveProximity {
    pub fn update(&mut self, fix: &Fix, distance_m: f64) -> Option<ProximityEvent> {
        let inside = distance_m <= 0.0;
        if inside == self.inside {
            return None;
        }
        self.inside = inside;
        Some(if inside {
            ProximityEvent::Entered(*fix)
        } else {
            ProximityEvent::Exited(*fix)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(ts_ms: i64, lat: f64) -> Fix {
        Fix {
            ts_ms,
            point: Point::new(lat, 24.0).unwrap(),
            accuracy_m: Some(5.0),
            speed_mps: None,
        }
    }

    #[test]
    fn arrival_needs_confirmation_and_leaving_needs_the_margin() {
        let cfg = ProximityConfig::default();
        let mut p = Proximity::default();
        assert_eq!(p.update(&fix(0, 0.0), -5.0, false, &cfg), None);
        assert!(matches!(
            p.update(&fix(1000, 0.0), -5.0, false, &cfg),
            Some(ProximityEvent::Entered(_))
        ));
        // Jitter just outside the edge but within the margin: still inside.
        for t in 2..30 {
            assert_eq!(p.update(&fix(t * 1000, 0.0), 20.0, false, &cfg), None);
        }
        // One spike beyond the margin is not enough.
        assert_eq!(p.update(&fix(30_000, 0.0), 200.0, false, &cfg), None);
        assert_eq!(p.update(&fix(31_000, 0.0), 1.0, false, &cfg), None);
        assert!(p.is_inside());
        // Three fixes over five seconds beyond the margin are.
        assert_eq!(p.update(&fix(40_000, 0.0), 30.0, false, &cfg), None);
        assert_eq!(p.update(&fix(42_000, 0.0), 30.0, false, &cfg), None);
        assert_eq!(p.update(&fix(44_000, 0.0), 30.0, false, &cfg), None);
        assert!(
            matches!(p.update(&fix(45_000, 0.0), 30.0, false, &cfg), Some(ProximityEvent::Exited(f)) if f.ts_ms == 45_000)
        );
    }

    #[test]
    fn dwell_fires_once_per_visit() {
        let cfg = ProximityConfig::default();
        let mut p = Proximity::default();
        p.update(&fix(0, 0.0), -1.0, false, &cfg);
        p.update(&fix(1000, 0.0), -1.0, false, &cfg);
        assert_eq!(p.update(&fix(60_000, 0.0), -1.0, false, &cfg), None);
        assert!(matches!(
            p.update(&fix(61_000, 0.0), -1.0, false, &cfg),
            Some(ProximityEvent::Dwelled(_))
        ));
        assert_eq!(p.update(&fix(200_000, 0.0), -1.0, false, &cfg), None);
    }

    #[test]
    fn inaccurate_fixes_count_for_nothing() {
        let cfg = ProximityConfig::default();
        let mut p = Proximity::default();
        let mut bad = fix(0, 0.0);
        bad.accuracy_m = Some(500.0);
        assert_eq!(p.update(&bad, -1.0, false, &cfg), None);
        bad.ts_ms = 1000;
        assert_eq!(p.update(&bad, -1.0, false, &cfg), None);
        assert!(!p.is_active());
        let mut nan = fix(2000, 0.0);
        nan.accuracy_m = Some(f64::NAN);
        assert_eq!(p.update(&nan, -1.0, false, &cfg), None);
        assert!(!p.is_active());
    }

    #[test]
    fn tracks_refuse_stale_fixes_and_impossible_jumps() {
        let cfg = TrackConfig::default();
        let mut t = Track::default();
        assert_eq!(t.judge(&fix(10_000, 60.0), &cfg), Verdict::Trusted);
        assert_eq!(t.judge(&fix(10_000, 60.0), &cfg), Verdict::Stale);
        assert_eq!(t.judge(&fix(9_000, 60.0), &cfg), Verdict::Stale);
        // 0.01° of latitude (about 1.1 km) in one second.
        assert_eq!(t.judge(&fix(11_000, 60.01), &cfg), Verdict::Outlier);
        assert_eq!(t.judge(&fix(12_000, 60.0001), &cfg), Verdict::Trusted);
        // A real relocation is accepted after three outliers in a row.
        for i in 0..3 {
            assert_eq!(
                t.judge(&fix(13_000 + i * 1000, 61.0), &cfg),
                Verdict::Outlier
            );
        }
        assert_eq!(t.judge(&fix(17_000, 61.0), &cfg), Verdict::Trusted);
        assert_eq!(t.judge(&fix(18_000, 61.0), &cfg), Verdict::Trusted);
    }

    #[test]
    fn a_subject_carried_to_another_index_goes_on_as_if_never_moved() {
        // One fence, id 1 here and id 42 on the other side; a stop fence:
        // arriving needs the subject stopped there, over several fixes.
        let fence = crate::Fence::circle(Point::new(60.0, 24.0).unwrap(), 40.0).unwrap();
        let (mut here, mut there) = (FenceIndex::new(), FenceIndex::new());
        here.insert(FenceId(1), fence.clone());
        there.insert(FenceId(42), fence);
        let track = TrackConfig::default();
        let cfg = |_| ProximityConfig::stop();
        let at = |t: i64, speed: f64| Fix {
            speed_mps: Some(speed),
            ..fix(t * 1000, 60.0)
        };
        // Standing at the door for three seconds, then six more.
        let first: Vec<Fix> = (0..3).map(|t| at(t, 0.0)).collect();
        let rest: Vec<Fix> = (3..9).map(|t| at(t, 0.0)).collect();
        let mut whole = Subject::default();
        let mut expected = Vec::new();
        for f in first.iter().chain(&rest) {
            whole.observe(&here, f, &track, cfg, &mut expected);
        }
        assert!(
            expected
                .iter()
                .any(|(_, e)| matches!(e, ProximityEvent::Entered(_))),
            "{expected:?}"
        );
        let mut moved = Subject::default();
        let mut got = Vec::new();
        let mut digests = Vec::new();
        for f in &first {
            moved.observe(&here, f, &track, cfg, &mut got);
            digests.push(moved.fingerprint());
        }
        // The first fix at the door starts the stop and a visit; the next
        // two change neither (only their newest fix).
        assert_ne!(digests[0], Subject::default().fingerprint());
        assert_eq!(digests[1], digests[2]);
        let text = serde_json::to_string(
            &moved.export(|id| (id == FenceId(1)).then(|| "door".to_owned())),
        )
        .unwrap();
        let state: Portable<String> = serde_json::from_str(&text).unwrap();
        let mut moved = Subject::import(state, |k| (k == "door").then_some(FenceId(42)));
        for f in &rest {
            moved.observe(&there, f, &track, cfg, &mut got);
        }
        let renamed: Vec<ProximityEvent> = got.iter().map(|(_, e)| *e).collect();
        let expected: Vec<ProximityEvent> = expected.iter().map(|(_, e)| *e).collect();
        assert_eq!(renamed, expected, "the carried subject saw another visit");
        // A fresh subject on the other side would have found the arrival
        // later (the stop begun here is unknown there).
        let mut fresh = Subject::default();
        let mut later = Vec::new();
        for f in &rest {
            fresh.observe(&there, f, &track, cfg, &mut later);
        }
        let later: Vec<ProximityEvent> = later.iter().map(|(_, e)| *e).collect();
        assert_ne!(later, expected);
        // A position that is out of range is refused on the way back in.
        assert!(serde_json::from_str::<Point>("[91.0, 0.0]").is_err());
    }
}
