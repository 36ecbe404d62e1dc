//! Delivery-log events: the plaintext form the server works with, the stored
//! form on disk, and the canonical encoding the hash chain covers.
//!
//! The stored form seals PHI (`where`, `data`) with the tenant's data key;
//! the hash covers the stored (sealed) fields, so the chain verifies without
//! any key, and shredding a tenant's key leaves a chain that still verifies.

use serde::{Deserialize, Serialize};

pub use crate::domain::{Actor, Draft, Event, EventKind, Where};

/// The hash that stands before a tenant's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    use crate::auth::Role;

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
