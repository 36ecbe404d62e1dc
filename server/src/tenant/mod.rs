//! One tenant and its commit path: the only place its state changes.
//!
//! ```text
//! lock ─► decide (against `decided`: durable + in flight) ─► chain
//!      ─► queue the append ─► unlock ─► await durable
//!      ─► lock ─► apply to `visible` (in log order) ─► publish ─► unlock ─► answer
//! ```
//!
//! Two books are kept. `decided` holds the durable events and those still
//! in flight, so two commands racing on one delivery cannot both pass the
//! status machine. `visible` (with the read model that follows it) holds
//! durable events only: it is what every reader and every socket sees, and
//! the bus is fed from it, after durability, under the lock, in log order.
//!
//! A failed append applies nothing: the log refuses it and every stretch
//! of the chain queued behind it (they extend an event that was never
//! written), and whoever sees the failure first resets `decided` and the
//! chain head to what is durable. A retry then starts from there.
//!
//! The wait for durability runs in a task of its own, so a caller that goes
//! away (a client hanging up) never leaves a durable event unapplied.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::bus::{Bus, DeliveryChange, Kick};
use crate::domain::{
    Book, CreateDelivery, DomainError, Draft, Event, EventKind, Principal, Record, Status,
    StatusChange, Track, Tracker, eta::EtaConfig,
};
use crate::log::{CryptoError, DataKey, EventLog, GENESIS, StoredEvent, TenantChain};

use crate::metrics::Metrics;
use crate::protocol::Fix;
use crate::types::{DeliveryId, DeviceId, SubjectId, TenantId, UnixMillis};

/// Why a command did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("sealing the event failed: {0}")]
    Seal(#[from] CryptoError),
    #[error("the delivery log could not make the change durable: {0}")]
    Log(String),
    /// Another node extended the tenant's chain first (decide again).
    #[error("another node extended the tenant's log first: {0}")]
    Conflict(String),
    /// Another node extended the tenant's chain first, again and again.
    #[error("the change lost the race for the tenant's log {0} times in a row; retry")]
    Contended(u32),
}

/// How many times a command decides again after losing the race for its
/// tenant's chain to another node.
const MAX_RETRIES: u32 = 8;

/// What one pass of the commit path came to.
enum Outcome<T> {
    Done(T),
    /// Nothing to append, but events are in flight: wait for this ticket.
    Wait(u64),
}

/// A chained event waiting to be durable.
#[derive(Debug)]
struct Flight {
    ticket: u64,
    event: Event,
}

#[derive(Debug)]
struct Inner {
    /// Durable events: what readers see.
    visible: Book,
    tracker: Tracker,
    /// Durable events and those in flight: what commands decide against.
    decided: Book,
    /// The chain head over `decided`.
    chain: TenantChain,
    /// The last event applied to `visible` `(seq, hash)`.
    visible_head: (u64, String),
    in_flight: VecDeque<Flight>,
    next_ticket: u64,
}

/// What a command's `decide` may read and touch: the books (read only) and
/// the read model (a driver's fixes move its detector and ETA).
#[derive(Debug)]
pub struct Decide<'a> {
    pub visible: &'a Book,
    pub decided: &'a Book,
    pub tracker: &'a mut Tracker,
}

/// A tenant: its id, its log and bus, and its state behind one private lock.
#[derive(Debug)]
pub struct Tenant {
    pub id: TenantId,
    /// The tenant's data key, to open its events outside the lock.
    pub key: Arc<DataKey>,
    log: Arc<dyn EventLog>,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    /// Bumped whenever events in flight are settled or dropped.
    resolved: watch::Sender<u64>,
}

/// A tracking link that was opened: the patient's view now, later ones
/// (if asked for), and the delivery.
pub type OpenedLink = (Utf8Bytes, Option<watch::Receiver<Utf8Bytes>>, DeliveryId);

/// A tenant's state as the log rebuilds it at start-up, before the node
/// serves anyone.
#[derive(Debug)]
pub struct Replayed {
    key: Arc<DataKey>,
    visible: Book,
    tracker: Tracker,
}

impl Replayed {
    /// An empty state with the tenant's configuration: the link grace
    /// period, the ETA tunables, the road network (if any) and the name
    /// patients see.
    #[must_use]
    pub fn new(
        key: Arc<DataKey>,
        link_grace_ms: i64,
        eta: EtaConfig,
        network: Option<Arc<roads::Network>>,
        display_name: Option<Arc<str>>,
    ) -> Self {
        let mut visible = Book::default();
        visible.set_link_grace_ms(link_grace_ms);
        let mut tracker = Tracker::default();
        tracker.configure(eta, network, display_name);
        Self {
            key,
            visible,
            tracker,
        }
    }

    /// Applies one durable event.
    pub fn replay(&mut self, stored: StoredEvent) -> Result<(), CryptoError> {
        let event = crate::log::open_with(&self.key, stored)?;
        let change = self.visible.apply(&event);
        self.tracker
            .react(&self.visible, change, UnixMillis(event.at));
        Ok(())
    }

    /// Deliveries not yet final.
    #[must_use]
    pub fn active_count(&self) -> usize {
        self.visible.active_count()
    }
}

impl Tenant {
    /// The tenant, serving from its replayed state; its chain goes on from
    /// the log's durable head.
    #[must_use]
    pub fn new(
        id: TenantId,
        mut state: Replayed,
        log: Arc<dyn EventLog>,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let head = log.head(&id);
        let visible_head = head.clone().unwrap_or_else(|| (0, GENESIS.to_owned()));
        let chain = TenantChain::new(id.clone(), state.key.clone(), head);
        state.tracker.take_outputs();
        Self {
            id,
            key: state.key,
            log,
            bus,
            metrics,
            inner: Mutex::new(Inner {
                decided: state.visible.clone(),
                visible: state.visible,
                tracker: state.tracker,
                chain,
                visible_head,
                in_flight: VecDeque::new(),
                next_ticket: 0,
            }),
            resolved: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the durable state. Never hold on to what it returns a reference to.
    pub fn read<R>(&self, f: impl FnOnce(&Book, &Tracker) -> R) -> R {
        let g = self.lock();
        f(&g.visible, &g.tracker)
    }

    /// Runs a command through the commit path (see the module
    /// documentation). A command that decides nothing while earlier events
    /// are in flight waits for them and decides again: its answer ("already
    /// revoked", "exists", the route as it stands) must not rest on an event
    /// that may yet fail.
    async fn command<T: Send + 'static>(
        self: &Arc<Self>,
        mut decide: impl FnMut(Decide<'_>) -> Result<(Vec<Draft>, T), DomainError>,
    ) -> Result<T, CommitError> {
        let mut lost = 0;
        loop {
            let mut resolved = self.resolved.subscribe();
            let outcome = match self.commit(&mut decide, true).await {
                Err(CommitError::Conflict(_)) => {
                    // Another node extended the chain first: read what it
                    // wrote, then decide again against it.
                    lost += 1;
                    if lost > MAX_RETRIES {
                        return Err(CommitError::Contended(lost - 1));
                    }
                    self.catch_up().await?;
                    continue;
                }
                other => other?,
            };
            match outcome {
                Outcome::Done(v) => return Ok(v),
                Outcome::Wait(ticket) => {
                    while self.lock().in_flight.iter().any(|f| f.ticket <= ticket) {
                        if resolved.changed().await.is_err() {
                            return Err(CommitError::Log("the tenant is shutting down".into()));
                        }
                    }
                }
            }
        }
    }

    /// One pass of the commit path. With `wait`, a decision without drafts
    /// taken while events are in flight is not answered yet
    /// ([`Outcome::Wait`]).
    async fn commit<T: Send + 'static>(
        self: &Arc<Self>,
        decide: impl FnOnce(Decide<'_>) -> Result<(Vec<Draft>, T), DomainError>,
        wait: bool,
    ) -> Result<Outcome<T>, CommitError> {
        let (pending, ticket, value) = {
            let mut g = self.lock();
            let inner = &mut *g;
            let (drafts, value) = decide(Decide {
                visible: &inner.visible,
                decided: &inner.decided,
                tracker: &mut inner.tracker,
            })?;
            // Patient views and estimates that moved with a fix go out at
            // once: they are not events.
            self.publish_outputs(inner, &HashSet::new());
            if drafts.is_empty() {
                return Ok(match inner.in_flight.back() {
                    Some(last) if wait => Outcome::Wait(last.ticket),
                    _ => Outcome::Done(value),
                });
            }
            let (seq, hash) = inner.chain.head();
            let (seq, hash) = (seq, hash.to_owned());
            let mut stored = Vec::with_capacity(drafts.len());
            let mut events = Vec::with_capacity(drafts.len());
            for d in drafts {
                match inner.chain.chain(d) {
                    Ok((s, e)) => {
                        stored.push(s);
                        events.push(e);
                    }
                    Err(e) => {
                        inner.chain.set_head(seq, hash);
                        return Err(e.into());
                    }
                }
            }
            inner.next_ticket += 1;
            let ticket = inner.next_ticket;
            for event in events {
                inner.decided.apply(&event);
                inner.in_flight.push_back(Flight { ticket, event });
            }
            (self.log.append(&stored), ticket, value)
        };
        // Settled in a task of its own: a caller that goes away never
        // leaves a durable event unapplied.
        let me = self.clone();
        let settled = tokio::spawn(async move {
            let outcome = pending
                .await
                .unwrap_or_else(|_| Err(Arc::new(crate::log::StoreError::Closed)));
            let mut g = me.lock();
            let result = match outcome {
                Ok(()) => {
                    me.settle(&mut g, ticket);
                    Ok(())
                }
                Err(e) => {
                    if g.in_flight.iter().any(|f| f.ticket == ticket) {
                        me.fall_back(&mut g, ticket);
                    }
                    if matches!(*e, crate::log::StoreError::Conflict { .. }) {
                        Err(CommitError::Conflict(e.to_string()))
                    } else {
                        Err(CommitError::Log(e.to_string()))
                    }
                }
            };
            drop(g);
            me.resolved.send_modify(|n| *n += 1);
            result
        });
        match settled.await {
            Ok(Ok(())) => Ok(Outcome::Done(value)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CommitError::Log("the commit task failed".into())),
        }
    }

    /// Applies every event in flight up to `ticket` (all durable: the log
    /// writes in order and refuses anything after a failure) and publishes.
    fn settle(&self, inner: &mut Inner, ticket: u64) {
        let mut events = Vec::new();
        while inner.in_flight.front().is_some_and(|f| f.ticket <= ticket) {
            if let Some(f) = inner.in_flight.pop_front() {
                events.push(f.event);
            }
        }
        self.apply_durable(inner, &events);
    }

    /// Applies durable events (in log order) to the visible book and the
    /// read model, and publishes them and what they moved.
    fn apply_durable(&self, inner: &mut Inner, events: &[Event]) {
        let before = inner.visible.active_count();
        for e in events {
            inner.visible_head = (e.seq, e.hash.clone());
            let change = inner.visible.apply(e);
            inner
                .tracker
                .react(&inner.visible, change, UnixMillis(e.at));
        }
        let after = inner.visible.active_count();
        self.metrics
            .deliveries_active
            .add(i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(0));
        let mut told = HashSet::new();
        for e in events {
            self.bus.event(&self.id, e);
            // Only events that change a delivery warrant a delivery message.
            if matches!(
                e.kind,
                EventKind::LinkOpened | EventKind::LinkRevoked | EventKind::LogExported
            ) {
                continue;
            }
            if let Some(id) = &e.delivery_id {
                self.publish_delivery(inner, id);
                told.insert(id.clone());
            }
        }
        self.publish_outputs(inner, &told);
    }

    /// After the append of `failed` did not become durable: it and
    /// everything queued behind it (chained onto it, so refused by the log)
    /// is dropped; what was queued before it is left to its own outcome;
    /// commands decide from the durable state plus that again. Drivers
    /// whose proximity events were dropped get a fresh detector, so their
    /// next fixes find the visit again instead of thinking it recorded.
    fn fall_back(&self, inner: &mut Inner, failed: u64) {
        let keep = inner
            .in_flight
            .iter()
            .take_while(|f| f.ticket < failed)
            .count();
        let dropped: Vec<Flight> = inner.in_flight.drain(keep..).collect();
        let (seq, hash) = inner.in_flight.back().map_or_else(
            || inner.visible_head.clone(),
            |f| (f.event.seq, f.event.hash.clone()),
        );
        inner.chain.set_head(seq, hash);
        let mut decided = inner.visible.clone();
        for f in &inner.in_flight {
            decided.apply(&f.event);
        }
        inner.decided = decided;
        for f in &dropped {
            let proximity = matches!(
                f.event.kind,
                EventKind::PickupArrived
                    | EventKind::PickupDeparted
                    | EventKind::DropoffArrived
                    | EventKind::DropoffDeparted
            );
            if proximity && let Ok(driver) = SubjectId::parse(&f.event.actor.sub) {
                inner.tracker.forget_detector(&driver);
            }
        }
        tracing::warn!(
            tenant = %self.id,
            dropped = dropped.len(),
            "an append failed; the commands behind it were refused and the tenant decides from what is durable again"
        );
    }

    /// Whether this node tells a delivery's patients what they see: always
    /// on one node; among several, for a delivery on its way only the node
    /// holding its driver's fixes (the ETA is there), else every node alike.
    fn tells_patient(&self, inner: &Inner, id: &DeliveryId) -> bool {
        if !self.bus.shared() {
            return true;
        }
        inner.visible.delivery(id).is_none_or(|d| {
            !d.status.is_moving()
                || d.driver
                    .as_ref()
                    .is_some_and(|drv| inner.tracker.has_live(drv, crate::clock::now()))
        })
    }

    /// Publishes again the patient views this node tells: every one
    /// (after a gap in the bus between nodes), or `only` that delivery's.
    pub fn republish_views(&self, only: Option<&DeliveryId>) {
        let g = self.lock();
        if let Some(id) = only {
            if let Some(t) = g.tracker.track(id)
                && self.tells_patient(&g, id)
            {
                self.bus.patient(&self.id, id, &t.snapshot);
            }
            return;
        }
        for (id, view) in g.tracker.views() {
            if self.tells_patient(&g, id) {
                self.bus.patient(&self.id, id, view);
            }
        }
    }

    /// Tells dispatchers where a delivery stands. Its estimate is known to
    /// the node holding its driver's fixes only: with several nodes, that
    /// node tells every node's dispatchers.
    fn publish_delivery(&self, inner: &Inner, id: &DeliveryId) {
        let Some(change) = delivery_change(&inner.visible, &inner.tracker, id) else {
            return;
        };
        let holds_driver = self.bus.shared()
            && inner.visible.delivery(id).is_some_and(|d| {
                d.status.is_moving()
                    && d.driver
                        .as_ref()
                        .is_some_and(|drv| inner.tracker.has_live(drv, crate::clock::now()))
            });
        if holds_driver {
            self.bus.estimate(&self.id, &change);
        } else {
            self.bus.delivery(&self.id, &change);
        }
    }

    /// Hands what the read model moved to the bus. `told`: deliveries whose
    /// delivery message already went out with an event.
    fn publish_outputs(&self, inner: &mut Inner, told: &HashSet<DeliveryId>) {
        let out = inner.tracker.take_outputs();
        if out.is_empty() {
            return;
        }
        for id in &out.patients {
            if let Some(t) = inner.tracker.track(id)
                && self.tells_patient(inner, id)
            {
                self.bus.patient(&self.id, id, &t.snapshot);
            }
        }
        for id in out.changed.iter().filter(|id| !told.contains(*id)) {
            self.publish_delivery(inner, id);
        }
        for id in &out.closed_links {
            self.bus.close_patient(&self.id, id);
        }
        for d in &out.revoked {
            self.bus.kick_device(&self.id, d, Kick::Revoked);
        }
    }

    /// Creates a delivery; returns its id. `token_sha256`: the hash of its
    /// tracking token.
    pub async fn create(
        self: &Arc<Self>,
        who: &Principal,
        req: CreateDelivery,
        token_sha256: String,
        now: UnixMillis,
    ) -> Result<DeliveryId, CommitError> {
        self.command(|s| {
            s.decided
                .decide_create(who, req.clone(), token_sha256.clone(), now)
        })
        .await
    }

    /// Replaces a driver's ordered stops; returns them as they now stand.
    pub async fn assign_route(
        self: &Arc<Self>,
        who: &Principal,
        driver: &SubjectId,
        stops: &[DeliveryId],
        now: UnixMillis,
    ) -> Result<Vec<DeliveryId>, CommitError> {
        self.command(|s| Ok((s.decided.decide_route(who, driver, stops, now)?, ())))
            .await?;
        Ok(self.read(|b, _| b.route(driver).to_vec()))
    }

    /// Changes a delivery's status through the status machine.
    pub async fn change_status(
        self: &Arc<Self>,
        who: &Principal,
        id: &DeliveryId,
        change: StatusChange,
        reason: Option<String>,
        now: UnixMillis,
    ) -> Result<Status, CommitError> {
        self.command(|s| {
            s.decided
                .decide_status(who, id, change, reason.clone(), now)
        })
        .await
    }

    /// Revokes a device: its tokens are refused and its session ends.
    pub async fn revoke_device(
        self: &Arc<Self>,
        who: &Principal,
        device: &DeviceId,
        now: UnixMillis,
    ) -> Result<bool, CommitError> {
        self.command(|s| s.decided.decide_revoke_device(who, device, now))
            .await
    }

    /// Revokes a delivery's tracking link: it answers 404 from now on.
    pub async fn revoke_link(
        self: &Arc<Self>,
        who: &Principal,
        id: &DeliveryId,
        now: UnixMillis,
    ) -> Result<(), CommitError> {
        self.command(|s| Ok((s.decided.decide_revoke_link(who, id, now)?, ())))
            .await
    }

    /// Records an export in the log (accounting of disclosures).
    pub async fn log_exported(
        self: &Arc<Self>,
        who: &Principal,
        from: i64,
        to: i64,
        now: UnixMillis,
    ) -> Result<(), CommitError> {
        self.command(|_| Ok((vec![Book::decide_export(who, from, to, now)?], ())))
            .await
    }

    /// Feeds a driver's accepted fixes to its detector and ETA; resolves
    /// once the events they caused are durable.
    pub async fn observe(
        self: &Arc<Self>,
        who: &Principal,
        fixes: &[Fix],
        now: UnixMillis,
    ) -> Result<(), CommitError> {
        // Fixes are fed once: a batch without events is answered at once.
        let mut decided = Vec::new();
        let done = self
            .commit(
                |s| {
                    let drafts = s.tracker.observe(s.visible, s.decided, who, fixes, now);
                    decided.clone_from(&drafts);
                    Ok((drafts, ()))
                },
                false,
            )
            .await;
        if !matches!(done, Err(CommitError::Conflict(_))) {
            return done.map(|_| ());
        }
        // Another node wrote first: read what won, and chain again the
        // visits this batch found that are still new against it (the
        // detector has moved on; the fixes are not fed twice).
        for _ in 0..MAX_RETRIES {
            self.catch_up().await?;
            let again = self
                .commit(
                    |s| {
                        let still: Vec<Draft> = decided
                            .iter()
                            .filter(|d| s.decided.still_new(d))
                            .cloned()
                            .collect();
                        Ok((still, ()))
                    },
                    false,
                )
                .await;
            if !matches!(again, Err(CommitError::Conflict(_))) {
                return again.map(|_| ());
            }
        }
        Err(CommitError::Contended(MAX_RETRIES))
    }

    /// Opens a tracking link: records `link.opened` durably, then returns
    /// the patient's current view and, with `follow`, a subscription to
    /// later ones. `None`: no link of this token is valid.
    pub async fn open_link(
        self: &Arc<Self>,
        token_sha256: &str,
        now: UnixMillis,
        follow: bool,
    ) -> Result<Option<OpenedLink>, CommitError> {
        let opened = self
            .command(|s| {
                Ok(match s.decided.decide_open_link(token_sha256, now) {
                    Some((draft, id)) => (vec![draft], Some(id)),
                    None => (Vec::new(), None),
                })
            })
            .await?;
        let Some(id) = opened else {
            return Ok(None);
        };
        let g = self.lock();
        let Some(track) = g
            .visible
            .link(token_sha256, now)
            .and_then(|_| g.tracker.track(&id))
        else {
            return Ok(None);
        };
        if !follow {
            return Ok(Some((Utf8Bytes::from(track.snapshot.encode()), None, id)));
        }
        let rx = self.bus.subscribe_patient(&self.id, &id, &track.snapshot);
        let text = rx.borrow().clone();
        Ok(Some((text, Some(rx), id)))
    }

    /// What another node needs to carry on tracking `driver`, with the
    /// digest of its detector: when `due`, or when the digest moved from
    /// `told` (the state that decides events changed).
    #[must_use]
    pub fn carry(
        &self,
        driver: &SubjectId,
        due: bool,
        told: Option<u64>,
    ) -> Option<(crate::domain::tracker::Carried, Option<u64>)> {
        self.read(|_, t| {
            let digest = t.fingerprint(driver);
            if due || digest != told {
                t.carry(driver).map(|c| (c, digest))
            } else {
                None
            }
        })
    }

    /// Takes up what another node carried of `driver` (unless this node
    /// saw the driver as recently); whether it did.
    pub fn resume(&self, driver: &SubjectId, carried: crate::domain::tracker::Carried) -> bool {
        self.lock()
            .tracker
            .resume(driver, carried, crate::clock::now())
    }

    /// Whether a tracking link is still valid (for open sockets).
    #[must_use]
    pub fn link_is_valid(&self, token_sha256: &str, now: UnixMillis) -> bool {
        self.read(|b, _| b.link(token_sha256, now).is_some())
    }

    /// Marks quiet drivers' patients as "updating" and publishes what moved.
    pub fn refresh_quiet(&self, now: UnixMillis) {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.tracker.refresh_quiet(&inner.visible, now);
        self.publish_outputs(inner, &HashSet::new());
    }
}

/// Where a delivery stands, for dispatchers.
#[must_use]
pub fn delivery_change(book: &Book, tracker: &Tracker, id: &DeliveryId) -> Option<DeliveryChange> {
    let d: &Record = book.delivery(id)?;
    let t: Option<&Track> = tracker.track(id);
    Some(DeliveryChange {
        kind: "delivery",
        id: d.id.clone(),
        status: d.status,
        driver_id: d.driver.clone(),
        eta: t.and_then(|t| t.snapshot.eta),
        eta_at: t.and_then(|t| t.eta).map(|e| e.0),
    })
}

mod foreign;
#[cfg(test)]
mod tests;
