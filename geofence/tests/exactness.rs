//! The index answers exactly what a brute-force geometric test answers, for
//! random fences and random points, with points crowded around fence edges
//! (where the hexagon grid would go wrong if anything did).

#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use geofence::{Fence, FenceId, FenceIndex, Point};
use proptest::prelude::*;

/// Central Helsinki, about 1.5 km × 2 km.
const LAT: (f64, f64) = (60.160, 60.180);
const LNG: (f64, f64) = (24.925, 24.960);

#[derive(Debug, Clone)]
enum Shape {
    Circle {
        lat: f64,
        lng: f64,
        r: f64,
    },
    /// A star-shaped polygon: radii at evenly spread angles, optional hole.
    Star {
        lat: f64,
        lng: f64,
        radii: Vec<f64>,
        hole: bool,
    },
}

fn offset(lat: f64, lng: f64, dist_m: f64, bearing: f64) -> (f64, f64) {
    let dlat = dist_m * bearing.cos() / 111_195.0;
    let dlng = dist_m * bearing.sin() / (111_195.0 * lat.to_radians().cos());
    (lat + dlat, lng + dlng)
}

fn build(s: &Shape) -> Option<Fence> {
    match s {
        Shape::Circle { lat, lng, r } => Fence::circle(Point::new(*lat, *lng).ok()?, *r).ok(),
        Shape::Star {
            lat,
            lng,
            radii,
            hole,
        } => {
            let n = radii.len() as f64;
            let ring: Vec<[f64; 2]> = radii
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let (a, b) = offset(*lat, *lng, *r, std::f64::consts::TAU * i as f64 / n);
                    [a, b]
                })
                .collect();
            let min_r = radii.iter().copied().fold(f64::INFINITY, f64::min);
            let inner: Vec<[f64; 2]> = (0..6)
                .map(|i| {
                    let (a, b) = offset(
                        *lat,
                        *lng,
                        min_r * 0.3,
                        std::f64::consts::TAU * f64::from(i) / 6.0,
                    );
                    [a, b]
                })
                .collect();
            if *hole {
                Fence::polygon(&[&ring, &inner]).ok()
            } else {
                Fence::polygon(&[&ring]).ok()
            }
        }
    }
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        (LAT.0..LAT.1, LNG.0..LNG.1, 20.0f64..400.0).prop_map(|(lat, lng, r)| Shape::Circle {
            lat,
            lng,
            r
        }),
        (
            LAT.0..LAT.1,
            LNG.0..LNG.1,
            proptest::collection::vec(30.0f64..300.0, 3..12),
            any::<bool>()
        )
            .prop_map(|(lat, lng, radii, hole)| Shape::Star {
                lat,
                lng,
                radii,
                hole
            }),
    ]
}

/// Points: uniform over the area, and near each fence's edge.
fn probes(shapes: &[Shape], seeds: &[(f64, f64, f64)]) -> Vec<Point> {
    let mut out = Vec::new();
    for (i, &(u, v, w)) in seeds.iter().enumerate() {
        out.push(Point::new(LAT.0 + u * (LAT.1 - LAT.0), LNG.0 + v * (LNG.1 - LNG.0)).unwrap());
        if let Some(s) = shapes.get(i % shapes.len().max(1)) {
            let (lat, lng, r) = match s {
                Shape::Circle { lat, lng, r } => (*lat, *lng, *r),
                Shape::Star {
                    lat, lng, radii, ..
                } => (*lat, *lng, radii[i % radii.len()]),
            };
            // Within ±3 m of the nominal edge, in a random direction.
            let (a, b) = offset(lat, lng, r + (w - 0.5) * 6.0, u * std::f64::consts::TAU);
            out.push(Point::new(a, b).unwrap());
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_index_equals_brute_force(
        shapes in proptest::collection::vec(shape(), 1..40),
        seeds in proptest::collection::vec((0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0), 200),
        removals in proptest::collection::vec(any::<proptest::sample::Index>(), 0..10),
    ) {
        let mut idx = FenceIndex::new();
        for (i, s) in shapes.iter().enumerate() {
            if let Some(f) = build(s) {
                idx.insert(FenceId(i as u64), f);
            }
        }
        // Fences come and go at run time.
        for r in &removals {
            idx.remove(FenceId(r.index(shapes.len()) as u64));
        }
        for p in probes(&shapes, &seeds) {
            let mut got = idx.lookup(p);
            let mut want = idx.lookup_brute_force(p);
            got.sort();
            want.sort();
            prop_assert_eq!(got, want, "at {:?}", p);
        }
    }
}

/// The same check on a fixed dense grid over a few real-sized fences, so a
/// failure is easy to reproduce.
#[test]
fn a_dense_grid_agrees_with_brute_force() {
    let mut idx = FenceIndex::new();
    let shapes = [
        Shape::Circle {
            lat: 60.1699,
            lng: 24.9384,
            r: 40.0,
        },
        Shape::Circle {
            lat: 60.1702,
            lng: 24.9390,
            r: 300.0,
        },
        Shape::Star {
            lat: 60.1690,
            lng: 24.9400,
            radii: vec![80.0, 150.0, 60.0, 200.0, 90.0],
            hole: true,
        },
    ];
    for (i, s) in shapes.iter().enumerate() {
        idx.insert(FenceId(i as u64), build(s).unwrap());
    }
    let mut inside = 0;
    for i in 0..200 {
        for j in 0..200 {
            let p = Point::new(
                60.166 + f64::from(i) * 0.00004,
                24.932 + f64::from(j) * 0.00008,
            )
            .unwrap();
            let mut got = idx.lookup(p);
            let mut want = idx.lookup_brute_force(p);
            got.sort();
            want.sort();
            assert_eq!(got, want, "at {p:?}");
            inside += want.len();
        }
    }
    assert!(
        inside > 1000,
        "the grid must actually hit the fences ({inside})"
    );
}
