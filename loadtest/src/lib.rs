//! The measuring instrument for rxtrack: a fleet simulator on real roads.
//!
//! - [`roads`]: a drivable road graph from an OpenStreetMap extract, and
//!   fastest paths on it.
//! - [`sim`]: a deterministic fleet: drivers on those paths with road-class
//!   speeds, service times, GPS noise and spikes, dead zones released as
//!   batches, 1 Hz pings.
//!
//! It speaks only the public protocol (PROTOCOL.md): nothing here links the
//! server's code. The scenario runner and the load modes are still to come.

pub mod roads;
pub mod sim;
