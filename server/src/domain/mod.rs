//! The pure domain: what a delivery is, how its state changes, and what
//! each audience may see of it. Nothing here touches a socket, a file, a
//! clock, a lock or a runtime: time is an argument, state changes only
//! through [`Book::apply`], and what moved is returned, never published.
//! `scripts/check-domain` (run by CI) keeps it that way.
//!
//! - [`event`]: drafts and chained events (the stored, sealed form is the log's).
//! - [`roles`]: roles, the principal, and the one role table ([`Action`]).
//! - [`status`]: the status machine and why a command is refused.
//! - [`model`]: fences, recipient, window and event payloads.
//! - [`book`]: a tenant's deliveries, routes, devices and links, and
//!   `apply`; `commands`: the `decide_*` functions that extend it.
//! - [`tracker`]: the read model that follows the book: shared fences,
//!   detectors, ETAs, patient views.
//! - `proximity`, `live`: how a driver's fixes become events and ETAs.
//! - [`eta`]: the ETA arithmetic and the coarse windows patients see.
//! - [`patient`]: the patient snapshot, a type with no room for PHI.

pub mod book;
mod commands;
pub mod eta;
pub mod event;
mod live;
pub mod model;
pub mod patient;
mod proximity;
pub mod roles;
pub mod status;
pub mod tracker;

pub use book::{Book, Change, DeliveryView, Record};
pub use event::{Actor, Draft, Event, EventKind, Where};
pub use model::{CreateDelivery, Fence, Recipient, Stop, Window};
pub use patient::PatientSnapshot;
pub use roles::{Action, LEEWAY_S, PRIVILEGED_MAX_AGE_S, Principal, Role};
pub use status::{DomainError, Status, StatusChange};
pub use tracker::{Outputs, Track, Tracker};
