//! Delivery-log events: the plaintext form the server works with, the stored
//! form on disk, and the canonical encoding the hash chain covers.
//!
//! The stored form seals PHI (`where`, `data`) with the tenant's data key;
//! the hash covers the stored (sealed) fields, so the chain verifies without
//! any key, and shredding a tenant's key leaves a chain that still verifies.

use serde::{Deserialize, Serialize};

use crate::auth::Role;

/// The hash that stands before a tenant's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    pub delivery_id: Option<String>,
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
    pub tenant: String,
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
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

/// An event as stored: one line of a segment file. Field order is the
/// canonical order; `hash` is left out of the bytes it covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEvent {
    pub seq: u64,
    pub tenant: String,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ts: Option<i64>,
    pub actor: Actor,
    /// Sealed `Where` (base64 of nonce ‖ ciphertext ‖ tag).
    #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
    pub where_: Option<String>,
    /// Sealed details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    pub prev: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl StoredEvent {
    /// The canonical bytes the hash covers: compact JSON, fields in declared
    /// order, absent options omitted, `hash` omitted.
    ///
    /// # Panics
    /// Never: the event holds only strings, integers and enums.
    #[must_use]
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        serde_json::to_vec(&unhashed).expect("a stored event always serialises")
    }

    /// SHA-256 of the canonical bytes, lowercase hex.
    #[must_use]
    pub fn compute_hash(&self) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, &self.canonical_bytes()).as_ref())
    }

    /// The line written to a segment: canonical JSON with the hash, and `\n`.
    ///
    /// # Panics
    /// Never, as for [`Self::canonical_bytes`].
    #[must_use]
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("a stored event always serialises");
        v.push(b'\n');
        v
    }
}

/// Lowercase hex of bytes.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden() -> StoredEvent {
        StoredEvent {
            seq: 1,
            tenant: "acme".into(),
            kind: EventKind::DeliveryCreated,
            delivery_id: Some("rx-1001".into()),
            at: 1_764_072_000_123,
            device_ts: None,
            actor: Actor {
                role: Role::Dispatcher,
                sub: "u1".into(),
                device: None,
            },
            where_: None,
            data: Some("AAECAwQFBgcICQoL".into()),
            prev: GENESIS.into(),
            hash: String::new(),
        }
    }

    /// Pins the canonical encoding (hash computed independently with Python
    /// hashlib): if this test changes, every existing log
    /// stops verifying. Never edit the expected values; add a new version.
    #[test]
    fn golden_vector_canonical_encoding_and_hash() {
        let e = golden();
        assert_eq!(
            String::from_utf8(e.canonical_bytes()).unwrap(),
            r#"{"seq":1,"tenant":"acme","kind":"delivery.created","delivery_id":"rx-1001","at":1764072000123,"actor":{"role":"dispatcher","sub":"u1"},"data":"AAECAwQFBgcICQoL","prev":"0000000000000000000000000000000000000000000000000000000000000000"}"#
        );
        assert_eq!(
            e.compute_hash(),
            "7032a6b7485ec9bd39b38eaa0608f4b26598765c5ada693c1f6bbc0d44e60ab2"
        );
    }

    #[test]
    fn a_line_round_trips_and_keeps_its_hash() {
        let mut e = golden();
        e.hash = e.compute_hash();
        let line = e.to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        let back: StoredEvent = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.compute_hash(), e.hash);
    }

    #[test]
    fn any_edit_changes_the_hash() {
        let e = golden();
        let h = e.compute_hash();
        let mut t = e.clone();
        t.at += 1;
        assert_ne!(t.compute_hash(), h);
        let mut t = e.clone();
        t.kind = EventKind::DeliveryCancelled;
        assert_ne!(t.compute_hash(), h);
        let mut t = e;
        t.prev = "1".repeat(64);
        assert_ne!(t.compute_hash(), h);
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
