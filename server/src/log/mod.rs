//! The durable delivery log: append-only, hash-chained per tenant, PHI sealed.
//!
//! - [`event`]: the event types and the canonical encoding the chain covers.
//! - [`crypto`]: per-tenant AES-256-GCM data keys.
//! - [`store`]: segment files, crash recovery, group commit.
//!
//! [`EventLog`] is the seam the commit path appends through; the segment
//! store is its embedded implementation. A tenant's chain head while
//! commands are in flight lives in [`TenantChain`], held by the commit path
//! under the tenant's lock: numbering, sealing and hashing happen there, in
//! the order events are handed to the log, and the log refuses any stretch
//! that does not extend the durable head, so a chain never forks or skips.

pub mod crypto;
pub mod event;
pub mod pg;
mod recover;
mod schema;
pub mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::{fmt, future::Future, pin::Pin};

use serde::Serialize;

pub use crypto::{CryptoError, DataKey};
pub use event::{Actor, Draft, Event, EventKind, GENESIS, StoredEvent, Where};
pub use store::{ChainChecker, Location, Pending, Store, StoreError};

use crate::types::{DeliveryId, TenantId};

/// The delivery log as the commit path and the readers see it. Every
/// method speaks of durable events only.
pub trait EventLog: Send + Sync + fmt::Debug {
    /// Queues one command's events, a stretch of one tenant's chain. The
    /// returned future resolves once all of them are durable, or with why
    /// none of them is. A stretch that does not extend the tenant's durable
    /// head when its turn comes (it follows an event that failed) is
    /// refused unwritten.
    fn append(&self, events: &[StoredEvent]) -> Pending;
    /// A tenant's durable chain head `(seq, hash)`.
    fn head(&self, tenant: &TenantId) -> Option<(u64, String)>;
    /// One delivery's events in chain order. Blocking.
    fn delivery_events(
        &self,
        tenant: &TenantId,
        delivery: &DeliveryId,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// A tenant's events with `from <= at < to`, in chain order, until
    /// `each` returns `false`. Blocking.
    fn scan(
        &self,
        tenant: &TenantId,
        from: i64,
        to: i64,
        each: &mut dyn FnMut(StoredEvent) -> bool,
    ) -> Result<(), StoreError>;
    /// Checks a tenant's chain as stored. Blocking.
    fn verify(&self, tenant: &TenantId) -> Result<VerifyReport, StoreError>;
    /// A tenant's durable events after `seq`, in chain order: what other
    /// nodes appended (a node that lost a race, or a node catching up).
    fn read_after(
        &self,
        tenant: &TenantId,
        seq: u64,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<StoredEvent>, StoreError>> + Send + '_>>;
    /// Tenants whose chains other nodes extend, as they do (taken once; a
    /// log with a single writer has none).
    fn changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<TenantId>> {
        None
    }
    /// Whether the log accepts writes.
    fn healthy(&self) -> bool;
    /// Writes what is queued and stops.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl EventLog for Store {
    fn append(&self, events: &[StoredEvent]) -> Pending {
        Store::append(self, events)
    }

    fn head(&self, tenant: &TenantId) -> Option<(u64, String)> {
        Store::head(self, tenant.as_str())
    }

    fn delivery_events(
        &self,
        tenant: &TenantId,
        delivery: &DeliveryId,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Store::delivery_events(self, tenant.as_str(), delivery.as_str())
    }

    fn scan(
        &self,
        tenant: &TenantId,
        from: i64,
        to: i64,
        each: &mut dyn FnMut(StoredEvent) -> bool,
    ) -> Result<(), StoreError> {
        let mut bad = None;
        Store::scan(self, |line, loc| {
            match serde_json::from_slice::<StoredEvent>(line) {
                Ok(e) if e.tenant != tenant.as_str() || e.at < from || e.at >= to => true,
                Ok(e) => each(e),
                Err(e) => {
                    bad = Some(StoreError::Corrupt {
                        segment: loc.segment,
                        offset: loc.offset,
                        reason: e.to_string(),
                    });
                    false
                }
            }
        })?;
        bad.map_or(Ok(()), Err)
    }

    fn verify(&self, tenant: &TenantId) -> Result<VerifyReport, StoreError> {
        let mut v = Verifier::new(Some(tenant.as_str()));
        Store::scan(self, |line, loc| v.line(line, loc))?;
        Ok(v.finish())
    }

    fn read_after(
        &self,
        tenant: &TenantId,
        seq: u64,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<StoredEvent>, StoreError>> + Send + '_>> {
        let reader = self.reader();
        let tenant = tenant.as_str().to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || reader.read_after(&tenant, seq))
                .await
                .map_err(|_| StoreError::Closed)?
        })
    }

    fn healthy(&self) -> bool {
        Store::healthy(self)
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Store::close(self))
    }
}

/// One tenant's chain head and data key.
#[derive(Debug)]
pub struct TenantChain {
    tenant: TenantId,
    key: Arc<DataKey>,
    seq: u64,
    hash: String,
}

impl TenantChain {
    #[must_use]
    pub fn new(tenant: TenantId, key: Arc<DataKey>, head: Option<(u64, String)>) -> Self {
        let (seq, hash) = head.unwrap_or_else(|| (0, GENESIS.to_owned()));
        Self {
            tenant,
            key,
            seq,
            hash,
        }
    }

    /// The head `(seq, hash)`.
    #[must_use]
    pub fn head(&self) -> (u64, &str) {
        (self.seq, &self.hash)
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
                    .seal(&plain, &crypto::aad(self.tenant.as_str(), seq, "where"))
            })
            .transpose()?;
        let data = if d.data.is_null() {
            None
        } else {
            let plain = serde_json::to_vec(&d.data).map_err(|_| CryptoError::Malformed)?;
            Some(
                self.key
                    .seal(&plain, &crypto::aad(self.tenant.as_str(), seq, "data"))?,
            )
        };
        let mut stored = StoredEvent {
            seq,
            tenant: self.tenant.as_str().to_owned(),
            kind: d.kind,
            delivery_id: d.delivery_id.as_ref().map(|d| d.as_str().to_owned()),
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

/// Opens a stored event with its tenant's key; its ids are parsed here, once.
pub fn open_with(key: &DataKey, s: StoredEvent) -> Result<Event, CryptoError> {
    let tenant = TenantId::parse(&s.tenant).map_err(|_| CryptoError::Malformed)?;
    let delivery_id = s
        .delivery_id
        .as_deref()
        .map(DeliveryId::parse)
        .transpose()
        .map_err(|_| CryptoError::Malformed)?;
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
        tenant,
        kind: s.kind,
        delivery_id,
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
            delivery_id: Some(DeliveryId::parse("rx-1").unwrap()),
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
        let mut chain = TenantChain::new(TenantId::parse("acme").unwrap(), key, None);
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
        let mut chain = TenantChain::new(TenantId::parse("acme").unwrap(), key, None);
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
