//! The measuring instrument for rxtrack: a fleet simulator on real roads.
//!
//! - [`roads`]: a drivable road graph from an OpenStreetMap extract, and
//!   fastest paths on it.
//! - [`sim`]: a deterministic fleet: drivers on those paths with road-class
//!   speeds, service times, GPS noise and spikes, dead zones released as
//!   batches, pings at the interval the server asks for (1 Hz by default).
//!
//! - [`run`]: the scenario runner (fixed load): deliveries, routes, patient and
//!   dispatcher sockets through the public API, the fleet driven in real time.
//! - [`idle`]: idle mode: many open patient sockets, server memory per socket.
//! - [`stepped`]: stepped mode's verdict on each load.
//! - [`report`]: latency histograms, counters, the JSON report and summary.
//! - [`truth`]: arrivals and ETA windows judged against what the simulated
//!   drivers really did (false and missed arrivals; containment, width and
//!   point error weighted by time on screen).
//!
//! It speaks only the public protocol (PROTOCOL.md): nothing here links the
//! server's code. Churn (`churn_per_s`) runs inside a fixed or stepped run.

#[cfg(feature = "runner")]
pub mod idle;
#[cfg(feature = "runner")]
pub mod report;
/// The road network lives in its own crate (the server plans ETAs on it too).
pub use roads;
#[cfg(feature = "runner")]
pub mod run;
pub mod sim;
#[cfg(feature = "runner")]
pub mod stepped;
pub mod truth;
