//! Invariants of the proximity detector, over random noisy walks.

#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use geofence::{
    Fence, FenceId, FenceIndex, Fix, Point, ProximityConfig, ProximityEvent, Subject, TrackConfig,
};
use proptest::prelude::*;

const C: (f64, f64) = (60.1699, 24.9384);

fn offset(dist_m: f64, bearing: f64) -> Point {
    let lat = C.0 + dist_m * bearing.cos() / 111_195.0;
    let lng = C.1 + dist_m * bearing.sin() / (111_195.0 * C.0.to_radians().cos());
    Point::new(lat, lng).unwrap()
}

fn index() -> FenceIndex {
    let mut idx = FenceIndex::new();
    idx.insert(
        FenceId(1),
        Fence::circle(Point::new(C.0, C.1).unwrap(), 50.0).unwrap(),
    );
    let sq = [
        [60.1695, 24.9380],
        [60.1695, 24.9390],
        [60.1703, 24.9390],
        [60.1703, 24.9380],
    ];
    idx.insert(FenceId(2), Fence::polygon(&[&sq[..]]).unwrap());
    idx
}

/// A walk: (seconds since the last fix, distance from the centre, bearing, accuracy).
fn walk() -> impl Strategy<Value = Vec<Fix>> {
    proptest::collection::vec((1i64..10, 0.0f64..200.0, 0.0f64..6.3, 1.0f64..80.0), 1..120)
        .prop_map(|steps| {
            let mut t = 1_764_072_000_000;
            steps
                .into_iter()
                .map(|(dt, d, b, acc)| {
                    t += dt * 1000;
                    Fix {
                        ts_ms: t,
                        point: offset(d, b),
                        accuracy_m: Some(acc),
                        speed_mps: None,
                    }
                })
                .collect()
        })
}

fn run(fixes: &[Fix]) -> Vec<(FenceId, ProximityEvent)> {
    let idx = index();
    let mut s = Subject::default();
    let mut out = Vec::new();
    for f in fixes {
        s.observe(
            &idx,
            f,
            &TrackConfig::default(),
            |_| ProximityConfig::default(),
            &mut out,
        );
    }
    out
}

fn event_ts(e: &ProximityEvent) -> i64 {
    match e {
        ProximityEvent::Entered(f) | ProximityEvent::Dwelled(f) | ProximityEvent::Exited(f) => {
            f.ts_ms
        }
    }
}

proptest! {
    #[test]
    fn entered_and_exited_strictly_alternate(fixes in walk()) {
        for fence in [FenceId(1), FenceId(2)] {
            let mut inside = false;
            let mut dwelled = false;
            for (_, e) in run(&fixes).into_iter().filter(|(id, _)| *id == fence) {
                match e {
                    ProximityEvent::Entered(_) => { prop_assert!(!inside); inside = true; dwelled = false; }
                    ProximityEvent::Dwelled(_) => { prop_assert!(inside && !dwelled); dwelled = true; }
                    ProximityEvent::Exited(_) => { prop_assert!(inside); inside = false; }
                }
            }
        }
    }

    #[test]
    fn a_stationary_device_inside_never_exits(
        jitter in proptest::collection::vec((0.0f64..6.3, 0.0f64..1.0, 1.0f64..30.0), 2..300),
        center_d in 0.0f64..30.0,
    ) {
        // Parked 0–30 m from the centre of a 50 m circle; each fix jitters by
        // up to the exit margin's reach: never beyond 50 + 25 m from the centre.
        let cfg = ProximityConfig::default();
        let mut t = 1_764_072_000_000;
        let fixes: Vec<Fix> = jitter.iter().map(|&(b, u, acc)| {
            t += 1000;
            let reach = 50.0 + cfg.exit_margin_m - center_d;
            let d = center_d + u * reach;
            Fix { ts_ms: t, point: offset(d.min(74.9), b), accuracy_m: Some(acc), speed_mps: None }
        }).collect();
        let events = run(&fixes);
        prop_assert!(!events.iter().any(|(id, e)| *id == FenceId(1) && matches!(e, ProximityEvent::Exited(_))));
    }

    #[test]
    fn watching_only_some_fences_gives_exactly_their_events(fixes in walk(), drop_at in 0usize..120) {
        // Fences at one spot that this subject does not care about change
        // nothing for the fence it does, and get no events or state.
        let idx = index();
        let all = run(&fixes);
        let mut s = Subject::default();
        let mut mine = Vec::new();
        for f in &fixes {
            s.observe_only(&idx, f, &TrackConfig::default(), |_| ProximityConfig::default(),
                |id| id == FenceId(2), &mut mine);
            prop_assert!(!s.is_inside(FenceId(1)));
        }
        let expected: Vec<_> = all.iter().filter(|(id, _)| *id == FenceId(2)).copied().collect();
        prop_assert_eq!(&mine, &expected);
        // A fence that stops being relevant midway is forgotten: no exit for it.
        let drop_at = drop_at.min(fixes.len());
        let mut s = Subject::default();
        let mut out = Vec::new();
        for (i, f) in fixes.iter().enumerate() {
            let keep = i < drop_at;
            s.observe_only(&idx, f, &TrackConfig::default(), |_| ProximityConfig::default(),
                |id| keep || id != FenceId(1), &mut out);
        }
        if drop_at < fixes.len() {
            prop_assert!(!s.is_inside(FenceId(1)));
        }
        let before: Vec<_> = all.iter().filter(|(_, e)| event_ts(e) <= fixes.get(drop_at.wrapping_sub(1)).map_or(i64::MIN, |f| f.ts_ms)).copied().collect();
        let fence1: Vec<_> = out.iter().filter(|(id, _)| *id == FenceId(1)).copied().collect();
        let fence1_before: Vec<_> = before.iter().filter(|(id, _)| *id == FenceId(1)).copied().collect();
        prop_assert_eq!(fence1, fence1_before);
    }

    #[test]
    fn one_by_one_or_in_batches_gives_the_same_events(fixes in walk(), cut in 0usize..120) {
        let idx = index();
        let whole = run(&fixes);
        let cut = cut.min(fixes.len());
        let mut s = Subject::default();
        let mut out = Vec::new();
        for batch in [&fixes[..cut], &fixes[cut..]] {
            for f in batch {
                s.observe(&idx, f, &TrackConfig::default(), |_| ProximityConfig::default(), &mut out);
            }
        }
        prop_assert_eq!(whole, out);
    }

    #[test]
    fn a_replayed_fix_gives_no_event(fixes in walk(), pick in any::<proptest::sample::Index>()) {
        let idx = index();
        let mut s = Subject::default();
        let mut out = Vec::new();
        for f in &fixes {
            s.observe(&idx, f, &TrackConfig::default(), |_| ProximityConfig::default(), &mut out);
        }
        let before = out.len();
        let replay = fixes[pick.index(fixes.len())];
        s.observe(&idx, &replay, &TrackConfig::default(), |_| ProximityConfig::default(), &mut out);
        prop_assert_eq!(out.len(), before);
    }
}
