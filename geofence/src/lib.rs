//! Geofences indexed with H3, and a proximity detector with hysteresis.
//!
//! A pure library: no I/O, no async runtime, no clocks (time is part of each
//! fix), no globals. Positions and fences in, events out.
//!
//! - [`fence`]: circles and polygons with holes (also from GeoJSON),
//!   validated on creation; the exact containment test and the signed
//!   distance to a fence's edge.
//! - [`index`]: the H3 index answering "which fences contain this point"
//!   exactly, in a few hash lookups; fences are added and removed at run time.
//! - [`detector`]: per subject and fence, trustworthy entered / dwelled /
//!   exited events from noisy GPS.
//!
//! ```
//! use geofence::{Fence, FenceId, FenceIndex, Fix, Point, Proximity, ProximityConfig, ProximityEvent};
//!
//! let mut index = FenceIndex::new();
//! index.insert(FenceId(1), Fence::circle(Point::new(60.1699, 24.9384)?, 40.0)?);
//! let cfg = ProximityConfig::default();
//! let mut state = Proximity::default();
//! let mut events = Vec::new();
//! for (t, lat) in [(0, 60.1690), (1000, 60.1698), (2000, 60.1699)] {
//!     let fix = Fix { ts_ms: t, point: Point::new(lat, 24.9384)?, accuracy_m: Some(5.0), speed_mps: None };
//!     let fence = index.get(FenceId(1)).expect("inserted");
//!     events.extend(state.update(&fix, fence.distance_to_edge_m(fix.point), false, &cfg));
//! }
//! assert!(matches!(events[..], [ProximityEvent::Entered(f)] if f.ts_ms == 2000));
//! # Ok::<(), geofence::FenceError>(())
//! ```

pub mod detector;
pub mod fence;
pub mod index;

pub use detector::{
    Fix, Motion, NaiveProximity, Portable, Proximity, ProximityConfig, ProximityEvent, Subject,
    Track, TrackConfig, Verdict,
};
pub use fence::{Fence, FenceError, Point};
pub use index::{FenceId, FenceIndex};
