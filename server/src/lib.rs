//! rxtrack: a real-time live tracking server for pharmacy and medical deliveries.
//!
//! A map of the crate. The pure core comes first; everything after it is
//! the edge that wires it to sockets, files and clocks.
//!
//! - [`domain`]: deliveries, the status machine, the role table, proximity,
//!   ETAs and patient views, as pure functions of state, input and time.
//! - [`types`]: identifier and unit newtypes, parsed once at the edge.
//! - [`clock`]: the wall clock, read only at the edge.
//! - [`protocol`]: the driver stream's wire types and pure ping validation.
//! - [`tenant`]: one tenant's commit path, the only place its state changes:
//!   decide, chain, append, await durable, apply, publish.
//! - [`log`]: the delivery log behind [`log::EventLog`]: hash chain,
//!   sealing, segment files with group commit.
//! - [`bus`]: fan-out behind [`bus::Bus`], and its in-process implementation.
//! - [`config`]: the TOML configuration, its validation, the zero-config demo.
//! - [`auth`]: JWT verification (HS256, Ed25519) and lifetime caps.
//! - [`app`]: the shared state of a node and how it is opened from disk.
//! - [`api`]: the HTTP API; [`error`]: its error type.
//! - [`ingest`]: the driver WebSocket: dedupe, rate limits, acks;
//!   [`devices`]: what the node keeps per driver device.
//! - [`dispatch`]: the dispatcher live stream and its position board.
//! - [`track`]: patient tracking links and their WebSocket.
//! - [`ws`]: the WebSocket handshake and close helpers; [`socket`]: what
//!   every socket shares (permit, gauge, heartbeat, close), written once.
//! - [`ratelimit`]: token buckets, per device and per address.
//! - [`server`]: the accept loop and draining.
//! - [`demo`]: `rxtrack demo`'s simulated fleet on Helsinki's streets.
//! - [`web`]: the embedded pages and their assets.
//! - [`metrics`]: every metric name, in one place.
//!
//! [`server::run`] takes a bound listener, so tests can bind port 0.

pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod clock;
pub mod config;
pub mod demo;
pub mod devices;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod fsutil;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod protocol;
pub mod ratelimit;
pub mod server;
pub mod socket;
pub mod tenant;
pub mod track;
pub mod types;
pub mod web;
pub mod ws;

pub use server::run;
