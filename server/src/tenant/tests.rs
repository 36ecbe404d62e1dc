use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::bus::LocalBus;
use crate::domain::Role;
use crate::log::store::{self, Recovery};
use crate::log::{Pending, Store, StoreError, VerifyReport};

/// The segment store, with appends that fail on command (a full disk):
/// the next `fail_next` appends, or the append numbered `fail_call`.
/// A failure is reported at once, before appends queued earlier are
/// durable (as a log that answers out of order would).
#[derive(Debug)]
struct FailingLog {
    inner: Store,
    fail_next: AtomicUsize,
    calls: AtomicUsize,
    fail_call: AtomicUsize,
}

impl EventLog for FailingLog {
    fn append(&self, events: &[StoredEvent]) -> Pending {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
            || self.fail_call.load(Ordering::SeqCst) == call;
        if failing {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let full = std::io::Error::from_raw_os_error(28);
            let _ = tx.send(Err(Arc::new(StoreError::Io {
                path: "00000001.ndjson".into(),
                source: full,
            })));
            return rx;
        }
        self.inner.append(events)
    }
    fn head(&self, tenant: &TenantId) -> Option<(u64, String)> {
        self.inner.head(tenant.as_str())
    }
    fn delivery_events(
        &self,
        tenant: &TenantId,
        delivery: &DeliveryId,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        EventLog::delivery_events(&self.inner, tenant, delivery)
    }
    fn scan(
        &self,
        tenant: &TenantId,
        from: i64,
        to: i64,
        each: &mut dyn FnMut(StoredEvent) -> bool,
    ) -> Result<(), StoreError> {
        EventLog::scan(&self.inner, tenant, from, to, each)
    }
    fn verify(&self, tenant: &TenantId) -> Result<VerifyReport, StoreError> {
        EventLog::verify(&self.inner, tenant)
    }
    fn read_after(
        &self,
        tenant: &TenantId,
        seq: u64,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<StoredEvent>, StoreError>> + Send + '_>,
    > {
        EventLog::read_after(&self.inner, tenant, seq)
    }
    fn healthy(&self) -> bool {
        true
    }
    fn close(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.inner.close())
    }
}

fn acme() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn dispatcher() -> Principal {
    Principal {
        tenant: acme(),
        sub: SubjectId::parse("alice").unwrap(),
        role: Role::Dispatcher,
        device: None,
        exp: i64::MAX,
        auth_time: None,
    }
}

fn create(id: &str) -> CreateDelivery {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "pickup": {"lat": 60.17, "lng": 24.94, "radius_m": 40.0},
        "dropoff": {"lat": 60.18, "lng": 24.95, "radius_m": 30.0},
        "recipient": {"first_name": "Anneliese"},
    }))
    .unwrap()
}

fn open(
    dir: &std::path::Path,
    key: &Arc<DataKey>,
) -> (Arc<Tenant>, Arc<FailingLog>, Arc<LocalBus>) {
    let metrics = Arc::new(Metrics::new());
    let mut state = Replayed::new(key.clone(), 3_600_000, EtaConfig::default(), None, None);
    let recovery: Recovery = store::recover(dir, |e, _| {
        state.replay(e)?;
        Ok(())
    })
    .unwrap();
    let log = Arc::new(FailingLog {
        inner: Store::open(dir, metrics.clone(), recovery).unwrap(),
        fail_next: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
        fail_call: AtomicUsize::new(0),
    });
    let bus = Arc::new(LocalBus::new([acme()], metrics.clone()));
    let t = Tenant::new(acme(), state, log.clone(), bus.clone(), metrics);
    (Arc::new(t), log, bus)
}

fn rx1() -> DeliveryId {
    DeliveryId::parse("rx-1").unwrap()
}

/// A full disk under the log: the client gets the error, nothing is
/// applied or published (not even what was decided behind it), the
/// retry succeeds once there is room, and a restart agrees.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_append_applies_nothing_and_fails_what_was_queued_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(DataKey::from_bytes(&[3u8; 32]).unwrap());
    let (t, log, bus) = open(dir.path(), &key);
    let mut feed = bus.subscribe_dispatcher(&acme()).unwrap();
    let who = dispatcher();
    let now = UnixMillis(1_764_072_000_000);
    let driver = SubjectId::parse("d1").unwrap();

    let id = rx1();
    log.fail_next.store(1, Ordering::SeqCst);
    // The route is decided while the creation is in flight (it sees
    // rx-1), so it is chained behind the write that fails.
    let (created, routed) = tokio::join!(
        t.create(&who, create("rx-1"), "aa".into(), now),
        t.assign_route(&who, &driver, std::slice::from_ref(&id), now),
    );
    assert!(matches!(created, Err(CommitError::Log(_))), "{created:?}");
    let routed = routed.unwrap_err().to_string();
    assert!(routed.contains("never written"), "{routed}");
    assert!(t.read(|b, tr| b.delivery(&rx1()).is_none() && tr.track(&rx1()).is_none()));
    assert!(t.read(|b, _| b.route(&driver).is_empty()));
    assert!(feed.events.try_recv().is_err(), "nothing was published");
    assert_eq!(log.head(&acme()), None, "the chain head did not move");

    // Room again: the retry is not "exists", and the chain goes on from
    // the durable head.
    assert_eq!(
        t.create(&who, create("rx-1"), "aa".into(), now)
            .await
            .unwrap(),
        rx1()
    );
    let stops = t.assign_route(&who, &driver, &[rx1()], now).await.unwrap();
    assert_eq!(stops, vec![rx1()]);
    assert!(
        feed.events.try_recv().is_ok(),
        "durable events are published"
    );
    let report = log.verify(&acme()).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, 2);

    // A restart finds exactly what clients were told.
    log.close().await;
    drop((t, log));
    let (t, log, _) = open(dir.path(), &key);
    assert!(t.read(|b, _| b.delivery(&rx1()).is_some() && b.route(&driver) == [rx1()]));
    assert_eq!(log.head(&acme()).map(|h| h.0), Some(2));
    log.close().await;
}

/// Two commands racing on one delivery: the second decides against the
/// first (in flight), so only one passes the status machine.
#[tokio::test(flavor = "current_thread")]
async fn decisions_see_what_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(DataKey::from_bytes(&[3u8; 32]).unwrap());
    let (t, log, _) = open(dir.path(), &key);
    let who = dispatcher();
    let now = UnixMillis(1_764_072_000_000);
    t.create(&who, create("rx-1"), "aa".into(), now)
        .await
        .unwrap();
    let id = rx1();
    let (a, b) = tokio::join!(
        t.change_status(&who, &id, StatusChange::Cancelled, None, now),
        t.change_status(&who, &id, StatusChange::PickedUp, None, now),
    );
    assert_eq!(a.unwrap(), Status::Cancelled);
    assert!(matches!(
        b,
        Err(CommitError::Domain(DomainError::Transition { .. }))
    ));
    assert_eq!(log.head(&acme()).map(|h| h.0), Some(2));
    log.close().await;
}

/// A failure reported before an earlier append is durable: the earlier
/// one is still applied once it is, and the chain goes on after it.
#[tokio::test(flavor = "current_thread")]
async fn a_failure_ahead_of_an_earlier_append_keeps_the_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(DataKey::from_bytes(&[3u8; 32]).unwrap());
    let (t, log, _) = open(dir.path(), &key);
    let who = dispatcher();
    let now = UnixMillis(1_764_072_000_000);
    log.fail_call.store(2, Ordering::SeqCst);
    let (one, two) = tokio::join!(
        t.create(&who, create("rx-1"), "aa".into(), now),
        t.create(&who, create("rx-2"), "bb".into(), now),
    );
    assert_eq!(one.unwrap(), rx1());
    assert!(matches!(two, Err(CommitError::Log(_))), "{two:?}");
    assert!(
        t.read(|b, _| b.delivery(&rx1()).is_some()),
        "the durable one is shown"
    );
    let rx2 = DeliveryId::parse("rx-2").unwrap();
    assert_eq!(
        t.create(&who, create("rx-2"), "bb".into(), now)
            .await
            .unwrap(),
        rx2
    );
    let report = log.verify(&acme()).unwrap();
    assert!(report.ok && report.events == 2, "{report:?}");
    log.close().await;
}

/// A command that finds nothing to do because of an event still in
/// flight waits for it: when that event fails, the command decides
/// again and does the work, instead of answering "already done".
#[tokio::test(flavor = "current_thread")]
async fn nothing_to_do_is_not_answered_on_an_event_that_may_fail() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(DataKey::from_bytes(&[3u8; 32]).unwrap());
    let (t, log, _) = open(dir.path(), &key);
    let who = dispatcher();
    let now = UnixMillis(1_764_072_000_000);
    t.create(&who, create("rx-1"), "aa".into(), now)
        .await
        .unwrap();
    let id = rx1();
    log.fail_next.store(1, Ordering::SeqCst);
    let (first, second) =
        tokio::join!(t.revoke_link(&who, &id, now), t.revoke_link(&who, &id, now),);
    assert!(matches!(first, Err(CommitError::Log(_))), "{first:?}");
    second.unwrap();
    assert!(t.read(|b, _| b.delivery(&id).unwrap().link_revoked));
    assert_eq!(log.head(&acme()).map(|h| h.0), Some(2));
    log.close().await;
}
