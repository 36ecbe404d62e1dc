//! Differential tests against Uber's reference H3 library (the `h3` package 4.x),
//! through fixtures made by `geofence/oracle/generate.py`.

#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use std::collections::HashSet;

use geofence::index::cover;
use geofence::{Fence, FenceError};
use h3o::{CellIndex, LatLng, Resolution};
use serde_json::Value;

fn fixtures() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/oracle.json"
    ))
    .expect("fixtures: run geofence/oracle/generate.py");
    serde_json::from_str(&text).expect("fixtures are JSON")
}

#[test]
fn cell_ids_match_the_reference_at_every_resolution() {
    let f = fixtures();
    let points = f["points"].as_array().unwrap();
    assert!(points.len() > 200);
    for p in points {
        let ll = LatLng::new(p["lat"].as_f64().unwrap(), p["lng"].as_f64().unwrap()).unwrap();
        for (r, want) in p["cells"].as_array().unwrap().iter().enumerate() {
            let res = Resolution::try_from(u8::try_from(r).unwrap()).unwrap();
            assert_eq!(
                ll.to_cell(res).to_string(),
                want.as_str().unwrap(),
                "{p} at res {r}"
            );
        }
    }
}

/// Shapes that are not valid fences, and why.
fn refused(name: &str) -> Option<fn(&FenceError) -> bool> {
    let antimeridian: fn(&FenceError) -> bool = |e| matches!(e, FenceError::Antimeridian(_));
    match name {
        "Transmeridian"
        | "TransmeridianHole"
        | "TransmeridianComplex"
        | "HalfWorld_1"
        | "HalfWorld_2"
        | "Rabi"
        | "h3o_issue23" => Some(antimeridian),
        "Empty" => Some(|e| {
            matches!(
                e,
                FenceError::NoArea { .. } | FenceError::TooFewVertices { .. }
            )
        }),
        _ => None,
    }
}

#[test]
fn the_index_cover_agrees_with_the_reference_polyfill() {
    let f = fixtures();
    let mut compared = 0;
    for s in f["shapes"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        // The reference shapes include regions far larger than any delivery
        // fence: lift the size limit (the default refuses them).
        let fence = Fence::from_geojson_value_within(&s["geometry"], 1.0e7);
        if let Some(expected) = refused(name) {
            let e = fence.expect_err(name);
            assert!(expected(&e), "{name}: {e}");
            continue;
        }
        let fence = match fence {
            Ok(f) => f,
            Err(e) => panic!("{name} was refused: {e}"),
        };
        let Some(res) = s["res"].as_u64() else {
            continue;
        };
        let res = Resolution::try_from(u8::try_from(res).unwrap()).unwrap();
        let reference: HashSet<CellIndex> = s["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().parse().unwrap())
            .collect();
        let (interior, edge) = cover(&fence, res);
        let ours: HashSet<CellIndex> = interior.iter().chain(&edge).copied().collect();
        for c in &interior {
            assert!(
                reference.contains(c),
                "{name}: interior cell {c} is not in the reference cover"
            );
        }
        for c in &reference {
            assert!(
                ours.contains(c),
                "{name}: reference cell {c} is missing from our cover"
            );
        }
        compared += 1;
    }
    assert!(compared >= 15, "only {compared} shapes compared");
}
