//! The durable delivery log: append-only, hash-chained per tenant, PHI sealed.
//!
//! - [`event`]: the event types and the canonical encoding the chain covers.
//! - [`crypto`]: per-tenant AES-256-GCM data keys.
//! - [`store`]: segment files, crash recovery, group commit.
//!
//! A tenant's chain head lives in [`TenantChain`], which the domain holds
//! under the tenant's lock: numbering, sealing and hashing happen there, in
//! the order events are handed to the store, so the file order of each
//! tenant's events is its chain order.

pub mod crypto;
pub mod event;
pub mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

pub use crypto::{CryptoError, DataKey};
pub use event::{Actor, Draft, Event, EventKind, GENESIS, StoredEvent, Where};
pub use store::{ChainChecker, Location, Pending, Store, StoreError};

/// One tenant's chain head and data key.
#[derive(Debug)]
pub struct TenantChain {
    tenant: String,
    key: Arc<DataKey>,
    seq: u64,
    hash: String,
}

impl TenantChain {
    #[must_use]
    pub fn new(tenant: String, key: Arc<DataKey>, head: Option<(u64, String)>) -> Self {
        let (seq, hash) = head.unwrap_or_else(|| (0, GENESIS.to_owned()));
        Self {
            tenant,
            key,
            seq,
            hash,
        }
    }

    /// Moves the head to the last event found in the log.
    pub fn set_head(&mut self, seq: u64, hash: String) {
        self.seq = seq;
        self.hash = hash;
    }

    /// Numbers, seals and chains a draft. The caller must hand the stored
    /// event to the store before chaining the next one.
    pub fn chain(&mut self, d: Draft) -> Result<(StoredEvent, Event), CryptoError> {
        let seq = self.seq + 1;
        let where_ = d
            .where_
            .map(|w| {
                let plain = serde_json::to_vec(&w).map_err(|_| CryptoError::Malformed)?;
                self.key
                    .seal(&plain, &crypto::aad(&self.tenant, seq, "where"))
            })
            .transpose()?;
        let data = if d.data.is_null() {
            None
        } else {
            let plain = serde_json::to_vec(&d.data).map_err(|_| CryptoError::Malformed)?;
            Some(
                self.key
                    .seal(&plain, &crypto::aad(&self.tenant, seq, "data"))?,
            )
        };
        let mut stored = StoredEvent {
            seq,
            tenant: self.tenant.clone(),
            kind: d.kind,
            delivery_id: d.delivery_id.clone(),
            at: d.at,
            device_ts: d.device_ts,
            actor: d.actor.clone(),
            where_,
            data,
            prev: self.hash.clone(),
            hash: String::new(),
        };
        stored.hash = stored.compute_hash();
        self.seq = seq;
        self.hash.clone_from(&stored.hash);
        let event = Event {
            seq,
            tenant: self.tenant.clone(),
            kind: d.kind,
            delivery_id: d.delivery_id,
            at: d.at,
            device_ts: d.device_ts,
            actor: d.actor,
            where_: d.where_,
            data: d.data,
            prev: stored.prev.clone(),
            hash: stored.hash.clone(),
        };
        Ok((stored, event))
    }

    /// Opens a stored event of this tenant into its plaintext form.
    pub fn open(&self, s: StoredEvent) -> Result<Event, CryptoError> {
        open_with(&self.key, s)
    }
}

/// Opens a stored event with its tenant's key.
pub fn open_with(key: &DataKey, s: StoredEvent) -> Result<Event, CryptoError> {
    let where_ = s
        .where_
        .as_deref()
        .map(|w| {
            let plain = key.open(w, &crypto::aad(&s.tenant, s.seq, "where"))?;
            serde_json::from_slice::<Where>(&plain).map_err(|_| CryptoError::Malformed)
        })
        .transpose()?;
    let data = match s.data.as_deref() {
        None => serde_json::Value::Null,
        Some(d) => {
            let plain = key.open(d, &crypto::aad(&s.tenant, s.seq, "data"))?;
            serde_json::from_slice(&plain).map_err(|_| CryptoError::Malformed)?
        }
    };
    Ok(Event {
        seq: s.seq,
        tenant: s.tenant,
        kind: s.kind,
        delivery_id: s.delivery_id,
        at: s.at,
        device_ts: s.device_ts,
        actor: s.actor,
        where_,
        data,
        prev: s.prev,
        hash: s.hash,
    })
}

/// The first event that failed verification.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BadEvent {
    pub segment: u32,
    pub offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub reason: String,
}

/// One tenant's chain as verified.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChainSummary {
    pub events: u64,
    pub head: String,
}

/// The outcome of verifying the log.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub ok: bool,
    pub events: u64,
    pub tenants: BTreeMap<String, ChainSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad: Option<BadEvent>,
}

/// Verifies chains line by line. With `only`, checks just that tenant's
/// chain (lines of other tenants must still parse).
#[derive(Debug)]
pub struct Verifier<'a> {
    only: Option<&'a str>,
    checker: ChainChecker,
    events: u64,
    first_bad: Option<BadEvent>,
}

impl<'a> Verifier<'a> {
    #[must_use]
    pub fn new(only: Option<&'a str>) -> Self {
        Self {
            only,
            checker: ChainChecker::default(),
            events: 0,
            first_bad: None,
        }
    }

    /// Checks one line; returns `false` once a bad event was found.
    pub fn line(&mut self, line: &[u8], loc: Location) -> bool {
        let bad = |tenant, seq, reason| BadEvent {
            segment: loc.segment,
            offset: loc.offset,
            tenant,
            seq,
            reason,
        };
        let ev: StoredEvent = match serde_json::from_slice(line) {
            Ok(ev) => ev,
            Err(e) => {
                self.first_bad = Some(bad(None, None, format!("unreadable event: {e}")));
                return false;
            }
        };
        if self.only.is_some_and(|t| t != ev.tenant) {
            return true;
        }
        if let Err(reason) = self.checker.check(&ev) {
            self.first_bad = Some(bad(Some(ev.tenant), Some(ev.seq), reason));
            return false;
        }
        self.events += 1;
        true
    }

    #[must_use]
    pub fn finish(self) -> VerifyReport {
        let tenants = self
            .checker
            .heads()
            .iter()
            .map(|(t, (seq, hash))| {
                (
                    t.clone(),
                    ChainSummary {
                        events: *seq,
                        head: hash.clone(),
                    },
                )
            })
            .collect();
        VerifyReport {
            ok: self.first_bad.is_none(),
            events: self.events,
            tenants,
            first_bad: self.first_bad,
        }
    }
}

/// Verifies a log folder offline (for `rxtrack log verify`); needs no keys.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, StoreError> {
    let mut v = Verifier::new(None);
    store::scan_segments(dir, None, |line, loc| v.line(line, loc))?;
    Ok(v.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn draft(kind: EventKind, with_where: bool) -> Draft {
        Draft {
            kind,
            delivery_id: Some("rx-1".into()),
            at: 1_764_072_000_000,
            device_ts: None,
            actor: Actor {
                role: Role::Dispatcher,
                sub: "u1".into(),
                device: None,
            },
            where_: with_where.then_some(Where {
                lat: 60.1699,
                lng: 24.9384,
                acc: Some(5.0),
            }),
            data: serde_json::json!({"recipient":{"first_name":"Anneliese"}}),
        }
    }

    #[test]
    fn chained_events_verify_and_open() {
        let key = Arc::new(DataKey::from_bytes(&[1u8; 32]).unwrap());
        let mut chain = TenantChain::new("acme".into(), key, None);
        let (s1, e1) = chain
            .chain(draft(EventKind::DeliveryCreated, false))
            .unwrap();
        let (s2, _) = chain.chain(draft(EventKind::DropoffArrived, true)).unwrap();
        assert_eq!(s1.prev, GENESIS);
        assert_eq!(s2.prev, s1.hash);
        let line = String::from_utf8(s2.to_line()).unwrap();
        assert!(
            !line.contains("Anneliese") && !line.contains("60.1699") && !line.contains("24.9384")
        );
        let mut v = Verifier::new(None);
        let loc = Location {
            segment: 1,
            offset: 0,
            len: 0,
        };
        assert!(v.line(&s1.to_line(), loc));
        assert!(v.line(&s2.to_line(), loc));
        let r = v.finish();
        assert!(r.ok);
        assert_eq!(r.tenants["acme"].events, 2);
        assert_eq!(chain.open(s1).unwrap(), e1);
        let opened = chain.open(s2).unwrap();
        assert!((opened.where_.unwrap().lat - 60.1699).abs() < f64::EPSILON);
    }

    #[test]
    fn verifier_names_the_first_bad_event() {
        let key = Arc::new(DataKey::from_bytes(&[1u8; 32]).unwrap());
        let mut chain = TenantChain::new("acme".into(), key, None);
        let events: Vec<_> = (0..4)
            .map(|_| {
                chain
                    .chain(draft(EventKind::DeliveryAssigned, false))
                    .unwrap()
                    .0
            })
            .collect();
        let loc = |i: u64| Location {
            segment: 1,
            offset: i,
            len: 0,
        };
        // An edit.
        let mut edited = events.clone();
        edited[2].at += 1;
        let mut v = Verifier::new(None);
        for (i, e) in edited.iter().enumerate() {
            if !v.line(&e.to_line(), loc(i as u64)) {
                break;
            }
        }
        let bad = v.finish().first_bad.unwrap();
        assert_eq!((bad.seq, bad.offset), (Some(3), 2));
        assert!(bad.reason.contains("edited"), "{}", bad.reason);
        // A gap.
        let mut v = Verifier::new(None);
        assert!(v.line(&events[0].to_line(), loc(0)));
        assert!(!v.line(&events[2].to_line(), loc(1)));
        assert!(v.finish().first_bad.unwrap().reason.contains("gap"));
        // A reorder.
        let mut v = Verifier::new(None);
        assert!(!v.line(&events[1].to_line(), loc(0)));
        // Garbage.
        let mut v = Verifier::new(None);
        assert!(!v.line(b"{not json", loc(0)));
        assert!(v.finish().first_bad.unwrap().reason.contains("unreadable"));
    }
}
