//! rxtrack: a real-time live tracking server for pharmacy and medical deliveries.
//!
//! A map of the crate, one concept per module:
//!
//! - [`config`]: the TOML configuration, its validation, the zero-config demo.
//! - [`types`]: identifier and unit newtypes, parsed once at the edge.
//! - [`auth`]: JWT verification (HS256, Ed25519), roles, lifetime caps.
//! - [`protocol`]: the driver stream's wire types and pure ping validation.
//! - [`log`]: the durable delivery log (hash chain, sealing, group commit).
//! - [`deliveries`]: deliveries, routes, devices, proximity and tracking links,
//!   rebuilt from the log.
//! - [`demo`]: `rxtrack demo`'s simulated fleet on Helsinki's streets.
//! - [`dispatch`]: the dispatcher live stream and the per-tenant fan-out.
//! - [`eta`]: the ETA engine and the coarse windows patients see (pure).
//! - [`patient`]: the patient snapshot, a type with no room for PHI.
//! - [`ingest`]: the driver WebSocket: dedupe, rate limits, acks.
//! - [`ws`]: the WebSocket handshake and close helpers.
//! - [`api`]: the HTTP API.
//! - [`app`]: the shared state of a node and how it is opened from disk.
//! - [`track`]: patient tracking links and their WebSocket.
//! - [`server`]: the accept loop and draining.
//! - [`web`]: the embedded pages and their assets.
//! - [`metrics`]: every metric name, in one place.
//!
//! [`server::run`] takes a bound listener, so tests can bind port 0.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod deliveries;
pub mod demo;
pub mod dispatch;
pub mod eta;
pub mod fsutil;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod patient;
pub mod protocol;
pub mod server;
pub mod track;
pub mod types;
pub mod web;
pub mod ws;

pub use server::run;
