//! The bus across nodes, through Redis pub/sub (`[redis]`).
//!
//! Durable events, delivery changes, revoked links and devices already
//! reach every node through the log itself (each node applies the log and
//! publishes to its own sockets). Redis carries what is not in the log, and
//! only to the nodes whose clients need it:
//!
//! - **positions** on `rxtrack:{tenant}:pos`, to nodes with a dispatcher of
//!   the tenant (latest wins, as on one node);
//! - **patient views** on `rxtrack:{tenant}:patient:{delivery}`, to nodes
//!   with that delivery's patient; the view of a delivery on its way is
//!   published only by the node holding its driver's live state (its ETA);
//! - **kicks** on `rxtrack:kick`: a device that connects to one node ends
//!   its session on any other (as replaced), and a revoke ends it at once;
//! - **each device's acknowledged seq** (a key, kept a day), so a driver
//!   that reconnects to another node is not re-applied what it was told is
//!   done.
//!
//! Redis pub/sub drops messages while a connection is down. A node that
//! (re)connects asks every node, on `rxtrack:resync`, to publish its patient
//! views again, and closes its dispatcher sockets (4410: resynchronise from
//! a snapshot), counted in `rxtrack_bus_resyncs_total`. While Redis is
//! unreachable, each node keeps serving its own clients; `/readyz` says so.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Bus, DeliveryChange, DispatcherFeed, Kick, LocalBus, Session};
use crate::domain::{Event, PatientSnapshot};
use crate::metrics::Metrics;
use crate::protocol::Fix;
use crate::types::{DeliveryId, DeviceId, SubjectId, TenantId};

const KICKS: &str = "rxtrack:kick";
const RESYNC: &str = "rxtrack:resync";
/// Most messages sent to Redis in one pipeline.
const MAX_BATCH: usize = 1024;
/// Wait between reconnection attempts, and longest wait for Redis.
const RETRY: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(2);
/// How often channels of patients who left are unsubscribed.
const PRUNE: Duration = Duration::from_secs(10);
/// Messages waiting for Redis before new ones are dropped (pub/sub keeps
/// nothing for the absent either; a resync follows a gap).
const QUEUE: usize = 65_536;

fn config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(TIMEOUT)
        .set_response_timeout(TIMEOUT)
}

/// How long a device's acknowledged seq is kept without news of it.
const CURSOR_TTL_S: u64 = 24 * 3600;

fn cursor_key(t: &TenantId, d: &DeviceId) -> String {
    format!("rxtrack:{t}:device:{d}:acked")
}

/// What the publisher sends: a message on a channel, or a device's cursor.
enum Out {
    Publish(String, String),
    Cursor(String, u64),
}

fn positions(t: &TenantId) -> String {
    format!("rxtrack:{t}:pos")
}

fn patient_channel(t: &TenantId, d: &DeliveryId) -> String {
    format!("rxtrack:{t}:patient:{d}")
}

/// A message between nodes; `n` names the node that sent it.
#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Wire {
    Position {
        n: String,
        t: TenantId,
        d: SubjectId,
        f: Fix,
    },
    Patient {
        n: String,
        t: TenantId,
        id: DeliveryId,
        v: String,
    },
    Kick {
        n: String,
        t: TenantId,
        d: DeviceId,
        revoked: bool,
    },
    /// Asks every node to publish its patient views again: all of them
    /// (after a gap), or one delivery's (a patient just subscribed here).
    Resync {
        n: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        want: Option<(TenantId, DeliveryId)>,
    },
}

/// Asks the commit paths for their patient views again, all or one
/// delivery's (set after start).
pub type Republish = Box<dyn Fn(Option<&(TenantId, DeliveryId)>) + Send + Sync>;

/// The bus of one node among several.
pub struct RedisBus {
    local: Arc<LocalBus>,
    node: String,
    out: mpsc::Sender<Out>,
    client: redis::Client,
    /// Channels for the subscriber to add, and what to send once it has.
    subscribe: mpsc::UnboundedSender<(String, Option<Wire>)>,
    wanted: Arc<Mutex<HashSet<String>>>,
    /// Whether the subscription and the publishing connection are up.
    up: Arc<AtomicBool>,
    publishing: Arc<AtomicBool>,
    republish: Arc<Mutex<Option<Republish>>>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("node", &self.node)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects to Redis and starts the publisher and the subscriber; a
    /// Redis that cannot be reached now is retried in the background.
    pub fn start(
        url: &str,
        local: LocalBus,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let mut raw = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "no randomness")))?;
        let node = crate::log::event::hex(&raw);
        let (out, out_rx) = mpsc::channel(QUEUE);
        let (subscribe, sub_rx) = mpsc::unbounded_channel();
        let wanted = Arc::new(Mutex::new(HashSet::from([
            KICKS.to_owned(),
            RESYNC.to_owned(),
        ])));
        let bus = Arc::new(Self {
            client: client.clone(),
            local: Arc::new(local),
            node,
            out,
            subscribe,
            wanted: wanted.clone(),
            up: Arc::new(AtomicBool::new(false)),
            publishing: Arc::new(AtomicBool::new(false)),
            republish: Arc::new(Mutex::new(None)),
        });
        tokio::spawn(publisher(client.clone(), out_rx, bus.publishing.clone()));
        tokio::spawn(subscriber(client, sub_rx, Arc::downgrade(&bus), metrics));
        Ok(bus)
    }

    /// Sets what republishes this node's patient views (after a gap).
    pub fn on_resync(&self, f: Republish) {
        *self
            .republish
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(f);
    }

    fn send(&self, channel: String, msg: &Wire) {
        if let Ok(text) = serde_json::to_string(msg) {
            let _ = self.out.try_send(Out::Publish(channel, text));
        }
    }

    /// Subscribes to `channel` (once), then sends `then` (on its own
    /// channel) once the subscription holds, so an answer to it is heard.
    fn want(&self, channel: String, then: Option<Wire>) {
        let new = self
            .wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(channel.clone());
        if new {
            let _ = self.subscribe.send((channel, then));
        } else if let Some(msg) = then {
            self.send(RESYNC.to_owned(), &msg);
        }
    }

    /// Patient channels this node subscribed to whose sockets have all
    /// closed; forgotten here (the caller unsubscribes).
    fn stale_patient_channels(&self) -> Vec<String> {
        let watched: HashSet<String> = self
            .local
            .watched_deliveries()
            .iter()
            .map(|(t, d)| patient_channel(t, d))
            .collect();
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<String> = wanted
            .iter()
            .filter(|c| c.contains(":patient:") && !watched.contains(*c))
            .cloned()
            .collect();
        for c in &stale {
            wanted.remove(c);
        }
        stale
    }

    /// A message from another node.
    fn receive(&self, text: &str) {
        let Ok(msg) = serde_json::from_str::<Wire>(text) else {
            tracing::warn!("an unreadable message on the bus; ignored");
            return;
        };
        match msg {
            Wire::Position { n, .. }
            | Wire::Patient { n, .. }
            | Wire::Kick { n, .. }
            | Wire::Resync { n, .. }
                if n == self.node => {}
            Wire::Position { t, d, f, .. } => self.local.position(&t, &d, &f),
            Wire::Patient { t, id, v, .. } => {
                self.local.patient_text(&t, &id, || Utf8Bytes::from(v));
            }
            Wire::Kick { t, d, revoked, .. } => {
                let why = if revoked {
                    Kick::Revoked
                } else {
                    Kick::Replaced
                };
                self.local.kick_device(&t, &d, why);
            }
            Wire::Resync { want, .. } => self.republish(want.as_ref()),
        }
    }

    fn republish(&self, want: Option<&(TenantId, DeliveryId)>) {
        if let Some(f) = self
            .republish
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            f(want);
        }
    }
}

impl Bus for RedisBus {
    fn position(&self, tenant: &TenantId, driver: &SubjectId, fix: &Fix) {
        self.local.position(tenant, driver, fix);
        self.send(
            positions(tenant),
            &Wire::Position {
                n: self.node.clone(),
                t: tenant.clone(),
                d: driver.clone(),
                f: *fix,
            },
        );
    }

    fn event(&self, tenant: &TenantId, event: &Event) {
        self.local.event(tenant, event);
    }

    fn delivery(&self, tenant: &TenantId, change: &DeliveryChange) {
        self.local.delivery(tenant, change);
    }

    fn patient(&self, tenant: &TenantId, id: &DeliveryId, view: &PatientSnapshot) {
        self.local.patient(tenant, id, view);
        self.send(
            patient_channel(tenant, id),
            &Wire::Patient {
                n: self.node.clone(),
                t: tenant.clone(),
                id: id.clone(),
                v: view.encode(),
            },
        );
    }

    fn close_patient(&self, tenant: &TenantId, id: &DeliveryId) {
        self.local.close_patient(tenant, id);
    }

    fn subscribe_dispatcher(&self, tenant: &TenantId) -> Option<DispatcherFeed> {
        self.want(positions(tenant), None);
        self.local.subscribe_dispatcher(tenant)
    }

    fn subscribe_patient(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
        current: &PatientSnapshot,
    ) -> watch::Receiver<Utf8Bytes> {
        // The local channel first: the pruner leaves a channel alone while
        // a socket here holds its receiver.
        let rx = self.local.subscribe_patient(tenant, id, current);
        // The node with the driver's fixes tells this patient its view now
        // (it publishes only changes otherwise), once this node listens.
        self.want(
            patient_channel(tenant, id),
            Some(Wire::Resync {
                n: self.node.clone(),
                want: Some((tenant.clone(), id.clone())),
            }),
        );
        rx
    }

    fn open_session(&self, tenant: &TenantId, device: &DeviceId) -> Session {
        // A session of this device on another node ends (replaced).
        self.send(
            KICKS.to_owned(),
            &Wire::Kick {
                n: self.node.clone(),
                t: tenant.clone(),
                d: device.clone(),
                revoked: false,
            },
        );
        self.local.open_session(tenant, device)
    }

    fn close_session(&self, tenant: &TenantId, device: &DeviceId, session: u64) {
        self.local.close_session(tenant, device, session);
    }

    fn kick_device(&self, tenant: &TenantId, device: &DeviceId, why: Kick) {
        self.local.kick_device(tenant, device, why);
        self.send(
            KICKS.to_owned(),
            &Wire::Kick {
                n: self.node.clone(),
                t: tenant.clone(),
                d: device.clone(),
                revoked: why == Kick::Revoked,
            },
        );
    }

    fn connected(&self, tenant: &TenantId, device: &DeviceId) -> bool {
        self.local.connected(tenant, device)
    }

    fn acked_seq(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<u64>> + Send + '_>> {
        let key = cursor_key(tenant, device);
        Box::pin(async move {
            let read = async {
                let mut conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config())
                    .await?;
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<u64>>(&mut conn)
                    .await
            };
            // Redis unreachable: the node's own cursor is all there is.
            match tokio::time::timeout(RETRY, read).await {
                Ok(Ok(seq)) => seq,
                _ => None,
            }
        })
    }

    fn acked(&self, tenant: &TenantId, device: &DeviceId, seq: u64) {
        let _ = self
            .out
            .try_send(Out::Cursor(cursor_key(tenant, device), seq));
    }

    fn allow_lookup(
        &self,
        ip: std::net::IpAddr,
        per_minute: f64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        // The address is kept only hashed, for two minutes.
        let digest = ring::digest::digest(&ring::digest::SHA256, ip.to_string().as_bytes());
        let minute = crate::clock::now().0.div_euclid(60_000);
        let key = format!(
            "rxtrack:lookups:{}:{minute}",
            crate::log::event::hex(&digest.as_ref()[..12])
        );
        Box::pin(async move {
            let count = async {
                let mut conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config())
                    .await?;
                let (n,): (u64,) = redis::pipe()
                    .atomic()
                    .cmd("INCR")
                    .arg(&key)
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(120)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                redis::RedisResult::Ok(n)
            };
            match tokio::time::timeout(TIMEOUT, count).await {
                Ok(Ok(n)) => n as f64 <= per_minute,
                // Redis unreachable: the node's own limiter still holds.
                _ => true,
            }
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn reachable(&self) -> Option<bool> {
        Some(self.up.load(Ordering::Acquire) && self.publishing.load(Ordering::Acquire))
    }
}

/// Sends what the node publishes, pipelined, reconnecting as needed.
async fn publisher(client: redis::Client, mut rx: mpsc::Receiver<Out>, up: Arc<AtomicBool>) {
    let mut batch = Vec::new();
    loop {
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config())
            .await
        {
            Ok(c) => {
                up.store(true, Ordering::Release);
                c
            }
            Err(e) => {
                up.store(false, Ordering::Release);
                tracing::warn!(error = %e, "cannot reach Redis; fan-out across nodes paused");
                // What was queued meanwhile is dropped: pub/sub keeps
                // nothing either, and a resync follows the reconnection.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            let Some(first) = rx.recv().await else {
                return;
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut pipe = redis::pipe();
            for out in batch.drain(..) {
                match out {
                    Out::Publish(channel, text) => {
                        pipe.cmd("PUBLISH").arg(channel).arg(text).ignore();
                    }
                    Out::Cursor(key, seq) => {
                        pipe.cmd("SET")
                            .arg(key)
                            .arg(seq)
                            .arg("EX")
                            .arg(CURSOR_TTL_S)
                            .ignore();
                    }
                }
            }
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                up.store(false, Ordering::Release);
                tracing::warn!(error = %e, "publishing to Redis failed; reconnecting");
                break;
            }
        }
    }
}

/// Receives what other nodes publish on the channels this node wants;
/// after every (re)connection, asks for a resync.
async fn subscriber(
    client: redis::Client,
    mut new: mpsc::UnboundedReceiver<(String, Option<Wire>)>,
    bus: Weak<RedisBus>,
    metrics: Arc<Metrics>,
) {
    let mut first = true;
    loop {
        let Some(b) = bus.upgrade() else {
            return;
        };
        let up = b.up.clone();
        let wanted: Vec<String> = b
            .wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        drop(b);
        let connected = async {
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            sink.subscribe(&wanted).await?;
            redis::RedisResult::Ok((sink, stream))
        }
        .await;
        let (mut sink, mut stream) = match connected {
            Ok(c) => c,
            Err(e) => {
                up.store(false, Ordering::Release);
                tracing::warn!(error = %e, "cannot subscribe on Redis; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        up.store(true, Ordering::Release);
        if let Some(b) = bus.upgrade() {
            // Whatever was published while this node was away is gone:
            // every node publishes its views again, and this node's
            // dispatchers resynchronise from a snapshot.
            b.send(
                RESYNC.to_owned(),
                &Wire::Resync {
                    n: b.node.clone(),
                    want: None,
                },
            );
            if !first {
                metrics.bus_resyncs.inc();
                b.local.drop_dispatchers();
            }
        }
        first = false;
        let mut prune = tokio::time::interval(PRUNE);
        loop {
            tokio::select! {
                _ = prune.tick() => {
                    // Channels of patients no longer here are left.
                    let Some(b) = bus.upgrade() else { return };
                    let stale = b.stale_patient_channels();
                    drop(b);
                    if !stale.is_empty() && sink.unsubscribe(&stale).await.is_err() {
                        break;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Ok(text) = msg.get_payload::<String>() else { continue };
                    match bus.upgrade() {
                        Some(b) => b.receive(&text),
                        None => return,
                    }
                }
                ch = new.recv() => {
                    let Some((ch, then)) = ch else { return };
                    if sink.subscribe(&ch).await.is_err() {
                        break;
                    }
                    if let (Some(msg), Some(b)) = (then, bus.upgrade()) {
                        b.send(RESYNC.to_owned(), &msg);
                    }
                }
            }
        }
        up.store(false, Ordering::Release);
        tracing::warn!("lost the Redis subscription; reconnecting");
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    #[tokio::test]
    async fn patient_channels_are_left_once_their_sockets_close() {
        let metrics = Arc::new(Metrics::new());
        let t = TenantId::parse("acme").unwrap();
        let local = LocalBus::new([t.clone()], metrics.clone());
        // Nothing listens there: the bus keeps trying in the background.
        let bus = RedisBus::start("redis://127.0.0.1:1", local, metrics).unwrap();
        let id = DeliveryId::parse("rx-1").unwrap();
        let view = PatientSnapshot {
            status: Status::Scheduled,
            stops_before: None,
            eta: None,
            updating: false,
            display_name: None,
            updated_at: 0,
        };
        let rx = bus.subscribe_patient(&t, &id, &view);
        assert!(
            bus.stale_patient_channels().is_empty(),
            "a socket still listens"
        );
        drop(rx);
        assert_eq!(bus.stale_patient_channels(), ["rxtrack:acme:patient:rx-1"]);
        assert!(bus.stale_patient_channels().is_empty(), "forgotten once");
        assert_eq!(bus.reachable(), Some(false));
        // What another node sends is not trusted blindly: garbage, a wrong
        // shape, an unknown tenant or an out-of-range fix change nothing.
        for text in [
            "{not json",
            r#"{"k":"position"}"#,
            r#"{"k":"position","n":"x","t":"nobody","d":"d1","f":{"seq":1,"ts":0,"pos":{"lat":1.0,"lng":2.0},"acc":null,"speed":null,"heading":null}}"#,
            r#"{"k":"position","n":"x","t":"acme","d":"d1","f":{"seq":1,"ts":0,"pos":{"lat":95.0,"lng":2.0},"acc":null,"speed":null,"heading":null}}"#,
            r#"{"k":"kick","n":"x","t":"acme","d":"../etc","revoked":true}"#,
        ] {
            bus.receive(text);
        }
        let feed = bus.local.subscribe_dispatcher(&t).unwrap();
        let frame = feed.positions.positions_since(0, None, "drivers");
        assert!(frame.text.is_none(), "nothing was placed on the map");
    }
}
