//! Replays the real GPS tracks in `tests/data/` (see its README for their
//! sources and licences) against fences placed along them, through our
//! detector and through a naive one (inside → entered, outside → exited).
//!
//! `cargo test -p rxtrack-geofence --test real_tracks -- --nocapture` prints
//! the table recorded in geofence/README.md.

#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]
#![allow(
    clippy::print_stdout,
    reason = "the replay prints the table recorded in README.md"
)]

use geofence::{
    Fence, FenceId, FenceIndex, Fix, NaiveProximity, Point, ProximityConfig, ProximityEvent,
    Subject, TrackConfig,
};

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2020-12-18T06:15:50Z` → milliseconds since the epoch.
fn parse_time(s: &str) -> i64 {
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let days = days_from_civil(n(0, 4), n(5, 7), n(8, 10));
    ((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000 + n(17, 19) * 1000
}

fn attr(s: &str, name: &str) -> f64 {
    let start = s.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
    let end = start + s[start..].find('"').unwrap();
    s[start..end].parse().unwrap()
}

fn load(name: &str) -> Vec<Fix> {
    let text = std::fs::read_to_string(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    text.split("<trkpt ")
        .skip(1)
        .map(|chunk| {
            let t0 = chunk.find("<time>").unwrap() + 6;
            let t1 = t0 + chunk[t0..].find("</time>").unwrap();
            Fix {
                ts_ms: parse_time(&chunk[t0..t1]),
                point: Point::new(attr(chunk, "lat"), attr(chunk, "lon")).unwrap(),
                // GPX from these devices carries no accuracy: treat as good.
                accuracy_m: None,
                speed_mps: None,
            }
        })
        .collect()
}

/// A point `d` metres from `p` towards bearing `b` (radians).
fn offset(p: Point, d: f64, b: f64) -> Point {
    Point::new(
        p.lat() + d * b.cos() / 111_195.0,
        p.lng() + d * b.sin() / (111_195.0 * p.lat().to_radians().cos()),
    )
    .unwrap()
}

fn mean(fixes: &[Fix]) -> Point {
    let n = fixes.len() as f64;
    Point::new(
        fixes.iter().map(|f| f.point.lat()).sum::<f64>() / n,
        fixes.iter().map(|f| f.point.lng()).sum::<f64>() / n,
    )
    .unwrap()
}

/// Entered and exited events per fence, ours and naive.
struct Counts {
    ours: Vec<(FenceId, ProximityEvent)>,
    naive: Vec<(FenceId, ProximityEvent)>,
}

fn replay(fixes: &[Fix], fences: &[Fence]) -> Counts {
    let mut idx = FenceIndex::new();
    for (i, f) in fences.iter().enumerate() {
        idx.insert(FenceId(i as u64), f.clone());
    }
    let mut subject = Subject::default();
    let mut naive = vec![NaiveProximity::default(); fences.len()];
    let mut counts = Counts {
        ours: Vec::new(),
        naive: Vec::new(),
    };
    for fix in fixes {
        subject.observe(
            &idx,
            fix,
            &TrackConfig::default(),
            |_| ProximityConfig::default(),
            &mut counts.ours,
        );
        for (i, (f, n)) in fences.iter().zip(naive.iter_mut()).enumerate() {
            if let Some(e) = n.update(fix, f.distance_to_edge_m(fix.point)) {
                counts.naive.push((FenceId(i as u64), e));
            }
        }
    }
    counts
}

fn transitions(events: &[(FenceId, ProximityEvent)]) -> usize {
    events
        .iter()
        .filter(|(_, e)| matches!(e, ProximityEvent::Entered(_) | ProximityEvent::Exited(_)))
        .count()
}

/// Events beyond one entered and one exited per fence: each is a false one
/// for a track that passes each fence once.
fn excess(events: &[(FenceId, ProximityEvent)], fences: usize) -> usize {
    (0..fences)
        .map(|i| {
            let mine: Vec<_> = events
                .iter()
                .filter(|(id, _)| id.0 == i as u64)
                .map(|(_, e)| *e)
                .collect();
            transitions(&mine.iter().map(|e| (FenceId(0), *e)).collect::<Vec<_>>())
                .saturating_sub(2)
        })
        .sum()
}

/// Flaps: an exit followed by a re-entry of the same fence within `window_ms`,
/// the signature of jitter rather than of a real departure and return.
fn flaps(events: &[(FenceId, ProximityEvent)], window_ms: i64) -> usize {
    let mut last_exit: std::collections::HashMap<FenceId, i64> = std::collections::HashMap::new();
    let mut n = 0;
    for (id, e) in events {
        match e {
            ProximityEvent::Exited(f) => {
                last_exit.insert(*id, f.ts_ms);
            }
            ProximityEvent::Entered(f) => {
                if last_exit.get(id).is_some_and(|t| f.ts_ms - t <= window_ms) {
                    n += 1;
                }
            }
            ProximityEvent::Dwelled(_) => {}
        }
    }
    n
}

#[test]
fn the_car_track_parked_by_a_fence_edge() {
    let car = load("around-visnjan-with-car.gpx");
    assert_eq!(car.len(), 104);
    // Fixes 66..=74: the car stands for about two minutes (steps of 1–3 m).
    let parked = &car[66..=74];
    let at = mean(parked);
    // A drop-off fence whose edge runs through where the car parked: the
    // fixes jitter across it.
    let fence = Fence::circle(offset(at, 30.0, 1.0), 30.0).unwrap();
    let c = replay(parked, std::slice::from_ref(&fence));
    println!(
        "car, parked at a fence edge ({} fixes): naive {} events, ours {}",
        parked.len(),
        c.naive.len(),
        c.ours.len()
    );
    assert!(
        c.naive.len() >= 2,
        "the naive detector flaps on the real jitter: {}",
        c.naive.len()
    );
    assert!(
        !c.ours
            .iter()
            .any(|(_, e)| matches!(e, ProximityEvent::Exited(_))),
        "a parked car never leaves"
    );
    assert!(transitions(&c.ours) <= 1);
}

#[test]
fn the_walk_with_a_gps_jump() {
    let walk = load("cerknicko-jezero.gpx");
    assert_eq!(walk.len(), 296);
    // Fix 236 lies 310 m past fix 235 and 184 m before fix 237, which follows
    // it after two seconds (92 m/s): one lone fix off the walker's path.
    let lone = walk[236].point;
    let fence = Fence::circle(lone, 40.0).unwrap();
    let segment = &walk[225..=250];
    let c = replay(segment, std::slice::from_ref(&fence));
    println!(
        "walk, fence on the lone jump fix: naive {} events, ours {}",
        c.naive.len(),
        c.ours.len()
    );
    assert_eq!(
        c.naive.len(),
        2,
        "naive: entered then exited on one bad fix"
    );
    assert!(c.ours.is_empty(), "ours: one fix confirms nothing");
}

#[test]
fn fences_along_both_tracks() {
    for (name, step, radius) in [
        ("around-visnjan-with-car.gpx", 6, 40.0),
        ("cerknicko-jezero.gpx", 12, 40.0),
    ] {
        let fixes = load(name);
        let fences: Vec<Fence> = fixes
            .iter()
            .step_by(step)
            .map(|f| Fence::circle(f.point, radius).unwrap())
            .collect();
        let c = replay(&fixes, &fences);
        let (naive_excess, ours_excess) = (
            excess(&c.naive, fences.len()),
            excess(&c.ours, fences.len()),
        );
        let (naive_flaps, ours_flaps) = (flaps(&c.naive, 60_000), flaps(&c.ours, 60_000));
        println!(
            "{name}: {} fences of {radius} m; naive {} entered/exited ({} beyond one visit each, {} flaps), \
             ours {} ({}, {} flaps)",
            fences.len(),
            transitions(&c.naive),
            naive_excess,
            naive_flaps,
            transitions(&c.ours),
            ours_excess,
            ours_flaps
        );
        assert!(ours_excess <= naive_excess);
        // The walk leaves two adjacent fences by 40-50 m for half a minute
        // (fixes 255-261) and comes back: a real excursion, which both count.
        assert!(ours_flaps <= naive_flaps, "{name}: ours flapped more");
        // Every fence the track really passes through (at least two fixes
        // inside) is entered by ours.
        for (i, f) in fences.iter().enumerate() {
            let inside = fixes
                .iter()
                .filter(|x| f.distance_to_edge_m(x.point) < -5.0)
                .count();
            if inside >= 3 {
                assert!(
                    c.ours
                        .iter()
                        .any(|(id, e)| id.0 == i as u64 && matches!(e, ProximityEvent::Entered(_))),
                    "{name}: fence {i} was passed ({inside} fixes well inside) but never entered"
                );
            }
        }
    }
}

#[test]
fn stop_fences_along_the_car_track_are_entered_only_where_it_stood() {
    // The real receiver reports no speed: stillness alone decides here.
    // The car stood three times: before it set off (fixes 0-5, under 2 km/h
    // for 53 s), parked (66-74) and at the end (99-103, back where it
    // started: the drive is a round trip).
    let car = load("around-visnjan-with-car.gpx");
    let stood = [mean(&car[0..=5]), mean(&car[66..=74]), mean(&car[99..=103])];
    let fences: Vec<Fence> = car
        .iter()
        .step_by(6)
        .map(|f| Fence::circle(f.point, 40.0).unwrap())
        .collect();
    let mut idx = FenceIndex::new();
    for (i, f) in fences.iter().enumerate() {
        idx.insert(FenceId(i as u64), f.clone());
    }
    let mut subject = Subject::default();
    let mut out = Vec::new();
    for fix in &car {
        subject.observe(
            &idx,
            fix,
            &TrackConfig::default(),
            |_| ProximityConfig::stop(),
            &mut out,
        );
    }
    let entered: Vec<FenceId> = out
        .iter()
        .filter(|(_, e)| matches!(e, ProximityEvent::Entered(_)))
        .map(|(id, _)| *id)
        .collect();
    println!(
        "car, {} stop fences of 40 m along the drive: {} entered ({:?})",
        fences.len(),
        entered.len(),
        entered
    );
    for (i, f) in fences.iter().enumerate() {
        let at_a_stand = stood.iter().any(|p| f.distance_to_edge_m(*p) <= 0.0);
        let n = entered.iter().filter(|id| id.0 == i as u64).count();
        if at_a_stand {
            assert!(n >= 1, "fence {i}: the car stood there, never arrived");
        } else {
            assert_eq!(n, 0, "fence {i}: the car only drove through it");
        }
    }
}
