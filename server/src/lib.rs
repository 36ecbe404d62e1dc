//! rxtrack: a real-time live tracking server for pharmacy and medical deliveries.
//!
//! A map of the crate, one concept per module:
//!
//! - [`config`]: the TOML configuration, its validation, the zero-config demo.
//! - [`types`]: identifier and unit newtypes, parsed once at the edge.
//! - [`auth`]: JWT verification (HS256, Ed25519), roles, lifetime caps.
//! - [`protocol`]: the driver stream's wire types and pure ping validation.
//! - [`log`]: the durable delivery log (hash chain, sealing, group commit).
//! - [`deliveries`]: deliveries, routes and devices, rebuilt from the log.
//! - [`ingest`]: the driver WebSocket: dedupe, rate limits, acks.
//! - [`ws`]: the WebSocket handshake and close helpers.
//! - [`api`]: the HTTP API.
//! - [`app`]: the shared state of a node and how it is opened from disk.
//! - [`server`]: the accept loop and draining.
//! - [`metrics`]: every metric name, in one place.
//!
//! [`server::run`] takes a bound listener, so tests can bind port 0.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod deliveries;
pub mod fsutil;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod types;
pub mod ws;

pub use server::run;
