//! The delivery log's events as the domain knows them: a draft before it
//! is chained, and a chained event in plaintext. The stored (sealed,
//! hashed) form lives with the log.

use serde::{Deserialize, Serialize};

use super::roles::Role;
use crate::types::{DeliveryId, TenantId};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "delivery.created")]
    DeliveryCreated,
    #[serde(rename = "delivery.assigned")]
    DeliveryAssigned,
    #[serde(rename = "delivery.picked_up")]
    DeliveryPickedUp,
    #[serde(rename = "delivery.delivered")]
    DeliveryDelivered,
    #[serde(rename = "delivery.failed")]
    DeliveryFailed,
    #[serde(rename = "delivery.cancelled")]
    DeliveryCancelled,
    #[serde(rename = "pickup.arrived")]
    PickupArrived,
    #[serde(rename = "pickup.departed")]
    PickupDeparted,
    #[serde(rename = "dropoff.approaching")]
    DropoffApproaching,
    #[serde(rename = "dropoff.arrived")]
    DropoffArrived,
    #[serde(rename = "dropoff.departed")]
    DropoffDeparted,
    #[serde(rename = "link.opened")]
    LinkOpened,
    /// Addition: a tracking link was revoked by staff.
    #[serde(rename = "link.revoked")]
    LinkRevoked,
    #[serde(rename = "device.revoked")]
    DeviceRevoked,
    #[serde(rename = "log.exported")]
    LogExported,
}

/// Who caused an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    pub role: Role,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Where it happened: a GPS fix (PHI, sealed at rest).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Where {
    pub lat: f64,
    pub lng: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<f64>,
}

/// An event before it is chained: what the domain produces.
#[derive(Clone, Debug, PartialEq)]
pub struct Draft {
    pub kind: EventKind,
    pub delivery_id: Option<DeliveryId>,
    pub at: i64,
    pub device_ts: Option<i64>,
    pub actor: Actor,
    pub where_: Option<Where>,
    /// Kind-specific details (PHI allowed: sealed at rest). `Null` when none.
    pub data: serde_json::Value,
}

/// A chained event in plaintext, as the API shows it to staff.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub seq: u64,
    pub tenant: TenantId,
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<DeliveryId>,
    pub at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_ts: Option<i64>,
    pub actor: Actor,
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_: Option<Where>,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    pub prev: String,
    pub hash: String,
}
