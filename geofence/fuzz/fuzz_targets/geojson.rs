//! Any text into the GeoJSON fence parser: it must return a fence or an
//! error, never panic; a fence it returns must answer queries sanely.
#![no_main]

use geofence::{Fence, FenceId, FenceIndex, Point};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(fence) = Fence::from_geojson(text) else { return };
    let (anchor, radius) = fence.bounds();
    assert!(radius.is_finite() && radius >= 0.0);
    let _ = fence.contains(anchor);
    let d = fence.distance_to_edge_m(anchor);
    assert!(d.is_finite());
    // Small fences go through the index too (large ones would only be slow).
    if radius < 5_000.0 {
        let mut idx = FenceIndex::new();
        idx.insert(FenceId(1), fence);
        let p = Point::new(anchor.lat(), anchor.lng()).expect("anchor is valid");
        let mut got = idx.lookup(p);
        let mut want = idx.lookup_brute_force(p);
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }
});
