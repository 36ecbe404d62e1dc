//! Arbitrary rings of coordinates into `Fence::polygon` and `Fence::circle`:
//! an error or a fence, never a panic; and the index agrees with brute force
//! at the vertices, where the exact test is hardest.
#![no_main]

use geofence::{Fence, FenceId, FenceIndex, Point};
use libfuzzer_sys::fuzz_target;

fn f64s(data: &[u8]) -> Vec<f64> {
    data.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let holes = usize::from(data[0] % 3);
    let values = f64s(&data[1..]);
    // Keep most inputs near Helsinki so that valid polygons come up often.
    let pairs: Vec<[f64; 2]> = values
        .chunks_exact(2)
        .map(|c| {
            if c[0].is_finite() && c[0].abs() < 1.0 && c[1].is_finite() && c[1].abs() < 1.0 {
                [60.17 + c[0] * 0.01, 24.94 + c[1] * 0.01]
            } else {
                [c[0], c[1]]
            }
        })
        .collect();
    if let (Some(&[lat, lng]), Some(r)) = (pairs.first(), values.last()) {
        if let Ok(p) = Point::new(lat, lng) {
            let _ = Fence::circle(p, *r);
        }
    }
    let per = pairs.len() / (holes + 1);
    if per == 0 {
        return;
    }
    let rings: Vec<&[[f64; 2]]> = pairs.chunks(per).take(holes + 1).collect();
    let Ok(fence) = Fence::polygon(&rings) else { return };
    let mut idx = FenceIndex::new();
    idx.insert(FenceId(1), fence);
    for &[lat, lng] in &pairs {
        let Ok(p) = Point::new(lat, lng) else { continue };
        let mut got = idx.lookup(p);
        let mut want = idx.lookup_brute_force(p);
        got.sort();
        want.sort();
        assert_eq!(got, want, "at {p:?}");
    }
});
