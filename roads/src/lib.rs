//! The drivable road network, shared by the server (road ETAs) and the fleet
//! simulator: one graph, loaded once, read-only.
//!
//! Pure: no async runtime, no clocks (time is an argument), no globals.
//! Reading an extract is the only I/O, and [`RoadGraph::from_pbf_bytes`]
//! avoids even that.
//!
//! - [`graph`]: the graph from an OpenStreetMap extract (drivable classes,
//!   speeds, one-way streets, its largest strongly connected component) and
//!   fastest paths between nodes.
//! - [`snap`]: the nearest road to a position, through a grid.
//! - [`route`]: [`Network`] (graph and grid), fastest legs between snapped
//!   points by A*, a driver's [`Plan`] through its stops and its progress
//!   along it, and [`SpeedTable`]: class speeds learned from the fleet.
//!
//! ```
//! use roads::{Network, Plan, RoadGraph, SpeedTable};
//!
//! let net = Network::new(RoadGraph::from_pbf_bytes(roads::HELSINKI, "helsinki")?);
//! let speeds = SpeedTable::new(&net, 0.85);
//! let (from, stop) = (net.graph().nodes[0], net.graph().nodes[100]);
//! let plan = Plan::new(&net, from, None, &[stop], &speeds, 0).expect("both are on the map");
//! assert!(plan.remaining_s()[0] > 0.0);
//! # Ok::<(), roads::RoadError>(())
//! ```

pub mod graph;
pub mod route;
pub mod snap;

pub use graph::{Edge, RoadError, RoadGraph, class_speed, distance_m};
pub use route::{Advance, Leg, Network, Plan, Progress, SNAP_MAX_M, SpeedTable};
pub use snap::{Projection, Snap, Snapper};

/// Central Helsinki's streets (see `data/README.md`; © OpenStreetMap
/// contributors, `ODbL` 1.0).
pub const HELSINKI: &[u8] = include_bytes!("../data/helsinki-center.osm.pbf");
/// Karhula, Kotka: suburban streets and a motorway (© OpenStreetMap
/// contributors, `ODbL` 1.0).
pub const KOTKA: &[u8] = include_bytes!("../data/kotka-karhula.osm.pbf");
