//! The bus across nodes, through Redis pub/sub (`[redis]`): one Redis
//! (PUBLISH/SUBSCRIBE) or a Redis Cluster (`cluster = [...]`: sharded
//! pub/sub, SPUBLISH/SSUBSCRIBE, each channel living on one shard).
//!
//! Durable events, delivery changes, revoked links and devices already
//! reach every node through the log itself (each node applies the log and
//! publishes to its own sockets). Redis carries what is not in the log, and
//! only to the nodes whose clients need it:
//!
//! - **positions** on `rxtrack:{tenant}:pos:{cell}`, one channel per H3
//!   cell at resolution 5 (about 250 km²). A node subscribes to the cells
//!   its dispatchers' viewports cover; for a dispatcher watching the whole
//!   map, to every cell the tenant's drivers are in: each node records the
//!   cells it publishes in (with the time, again every 10 minutes) in the
//!   sorted set `rxtrack:{tenant}:cellset`, which forgets cells after 30
//!   minutes, and tells `rxtrack:{tenant}:cells`, so a node watching
//!   everything learns of new cells. Channels nobody here watches any more
//!   are left every 10 s;
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use h3o::CellIndex;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

mod interest;
mod link;
mod wire;

use link::{Conn, Engine, cluster_builder, cluster_subscriber, publisher, subscriber, timed_out};
use wire::{
    After, CURSOR_TTL_S, Interest, Out, PositionRef, Topic, Wire, carried_key, cell_channel,
    cells_key, cells_notice, channel_cell, cursor_key, deliveries_channel, devices_key,
    parse_channel_cell, patient_channel,
};

use super::hub::Viewport;
use super::{Bus, DeliveryChange, DeviceReport, DispatcherFeed, Kick, LocalBus, Session};
use crate::config::RedisTarget;
use crate::domain::tracker::Carried;
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
/// How often channels nobody here watches any more are left.
const PRUNE: Duration = Duration::from_secs(10);
/// How often a cluster subscriber checks every shard is reachable.
const PROBE: Duration = Duration::from_secs(1);
/// Messages waiting for Redis before new ones are dropped (pub/sub keeps
/// nothing for the absent either; a resync follows a gap).
const QUEUE: usize = 65_536;
/// How long a driver's carried tracking (its precise last fix among it)
/// is kept: long enough for a reconnect to another node, no longer.
const CARRIED_TTL_S: u64 = 600;
/// How long an estimate told by another node stands in for this node's
/// own, and how many are kept.
const ESTIMATE_HOLDS: Duration = Duration::from_secs(120);
const MAX_ESTIMATES: usize = 100_000;
/// How often a node tells again of a cell it publishes positions in.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(600);

/// Asks the commit paths for their patient views again, all or one
/// delivery's (set after start).
pub type Republish = Box<dyn Fn(Option<&(TenantId, DeliveryId)>) + Send + Sync>;

/// One tenant's dispatcher interest: the socket's token and what it watches.
type View = (TenantId, Weak<()>, Interest);

/// The bus of one node among several.
pub struct RedisBus {
    local: Arc<LocalBus>,
    node: String,
    out: mpsc::Sender<Out>,
    engine: Engine,
    /// The connection for queries, made on first use and again after an error.
    conn: Mutex<Option<Conn>>,
    /// Channels for the subscriber to add, and what to do once it has.
    subscribe: mpsc::UnboundedSender<(String, Option<After>)>,
    wanted: Arc<Mutex<HashMap<String, Topic>>>,
    /// What each dispatcher socket of this node watches, by its token.
    views: Mutex<HashMap<usize, View>>,
    /// The newest estimate (window, estimate) another node told of each
    /// delivery on its way, for this node's own delivery messages.
    estimates: Mutex<HashMap<(TenantId, DeliveryId), (serde_json::Value, Instant)>>,
    /// Cells this node told of, and when.
    announced: Arc<Mutex<HashMap<TenantId, HashMap<CellIndex, Instant>>>>,
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
        target: &RedisTarget,
        local: LocalBus,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, redis::RedisError> {
        let engine = match target {
            RedisTarget::One(url) => Engine::One(redis::Client::open(url.expose())?),
            RedisTarget::Cluster(urls) => {
                let seeds: Vec<String> = urls.iter().map(|u| u.expose().to_owned()).collect();
                Engine::Cluster {
                    client: cluster_builder(&seeds).build()?,
                    seeds,
                }
            }
        };
        let mut raw = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "no randomness")))?;
        let node = crate::log::event::hex(&raw);
        let (out, out_rx) = mpsc::channel(QUEUE);
        let (subscribe, sub_rx) = mpsc::unbounded_channel();
        let wanted = Arc::new(Mutex::new(HashMap::from([
            (KICKS.to_owned(), Topic::Fixed),
            (RESYNC.to_owned(), Topic::Fixed),
        ])));
        let bus = Arc::new(Self {
            engine: engine.clone(),
            conn: Mutex::new(None),
            local: Arc::new(local),
            node,
            out,
            subscribe,
            wanted,
            views: Mutex::default(),
            estimates: Mutex::default(),
            announced: Arc::default(),
            up: Arc::new(AtomicBool::new(false)),
            publishing: Arc::new(AtomicBool::new(false)),
            republish: Arc::new(Mutex::new(None)),
        });
        tokio::spawn(publisher(
            engine.clone(),
            out_rx,
            bus.publishing.clone(),
            bus.announced.clone(),
        ));
        match engine {
            Engine::One(client) => {
                tokio::spawn(subscriber(client, sub_rx, Arc::downgrade(&bus), metrics));
            }
            Engine::Cluster { seeds, .. } => {
                tokio::spawn(cluster_subscriber(
                    seeds,
                    sub_rx,
                    Arc::downgrade(&bus),
                    metrics,
                ));
            }
        }
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

    /// The query connection (made once, again after an error).
    async fn conn(&self) -> redis::RedisResult<Conn> {
        let cached = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(c) = cached {
            return Ok(c);
        }
        let c = self.engine.connect().await?;
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = Some(c.clone());
        Ok(c)
    }

    /// Runs a query with a deadline (none while Redis is known to be
    /// down); an error forgets the connection.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        if !self.publishing.load(Ordering::Acquire) {
            return Err(timed_out());
        }
        let run = async {
            let mut conn = self.conn().await?;
            cmd.query_async::<T>(&mut conn).await
        };
        let result = tokio::time::timeout(TIMEOUT, run)
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        if result.is_err() {
            *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        result
    }

    /// Subscribes to `channel` (once), then does `then` once the
    /// subscription holds.
    fn want(&self, channel: String, topic: Topic, then: Option<After>) {
        let new = self
            .wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(channel.clone(), topic)
            .is_none();
        match then {
            _ if new => {
                let _ = self.subscribe.send((channel, then));
            }
            Some(After::Send(msg)) => self.send(RESYNC.to_owned(), &msg),
            // A dispatcher watching the whole map arrived (perhaps after
            // the ones before it were dropped, and cells told meanwhile
            // went unheeded): look the cells up again, through the
            // subscriber (subscribing again is harmless).
            Some(After::LoadCells(t)) => {
                let _ = self.subscribe.send((channel, Some(After::LoadCells(t))));
            }
            None => {}
        }
    }

    /// A message from another node.
    fn receive(&self, text: &str) {
        let Ok(msg) = serde_json::from_str::<Wire>(text) else {
            tracing::warn!("an unreadable message on the bus; ignored");
            return;
        };
        if msg.sender() == self.node {
            return;
        }
        match msg {
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
            Wire::Resync { want, .. } => {
                if want.is_none() {
                    // A node that was away missed the cells told meanwhile
                    // (and a restarted Redis forgot them): tell them again
                    // with the next position in each.
                    self.announced
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clear();
                }
                self.republish(want.as_ref());
            }
            Wire::Delivery { t, v, .. } => {
                // Only a delivery message with a valid id goes to sockets.
                let m: serde_json::Value = serde_json::from_str(&v).unwrap_or_default();
                let id = m["id"].as_str().and_then(|id| DeliveryId::parse(id).ok());
                let Some(id) = id.filter(|_| m["type"] == "delivery") else {
                    tracing::warn!("an unreadable delivery message on the bus; ignored");
                    return;
                };
                self.remember_estimate(&t, id, &m);
                self.local.delivery_text(&t, &Utf8Bytes::from(v));
            }
            Wire::Cell { t, c, d, f, .. } => {
                if let Some(cell) = parse_channel_cell(&c)
                    && self.interests().0.contains(&t)
                {
                    self.local.position(&t, &d, &f);
                    self.want(cell_channel(&t, cell), Topic::Cell(t), None);
                }
            }
        }
    }

    /// Keeps the estimate another node told of a delivery (forgotten
    /// once it has none, and after [`ESTIMATE_HOLDS`]).
    fn remember_estimate(&self, t: &TenantId, id: DeliveryId, m: &serde_json::Value) {
        let mut map = self
            .estimates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (t.clone(), id);
        if m["eta"].is_null() {
            map.remove(&key);
            return;
        }
        if map.len() >= MAX_ESTIMATES {
            map.retain(|_, (_, at)| at.elapsed() < ESTIMATE_HOLDS);
        }
        if map.len() < MAX_ESTIMATES {
            let e = serde_json::json!({"eta": m["eta"], "eta_at": m["eta_at"]});
            map.insert(key, (e, Instant::now()));
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

    /// Tells other nodes of the cell a position is in, when it is new here
    /// (or was told long ago); the position goes along.
    fn announce(&self, tenant: &TenantId, cell: CellIndex, driver: &SubjectId, fix: &Fix) {
        let now = Instant::now();
        {
            let mut told = self
                .announced
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let cells = match told.get_mut(tenant) {
                Some(c) => c,
                None => told.entry(tenant.clone()).or_default(),
            };
            if cells
                .get(&cell)
                .is_some_and(|at| now.duration_since(*at) < ANNOUNCE_EVERY)
            {
                return;
            }
            cells.insert(cell, now);
        }
        let notice = Wire::Cell {
            n: self.node.clone(),
            t: tenant.clone(),
            c: cell.to_string(),
            d: driver.clone(),
            f: *fix,
        };
        let sent = serde_json::to_string(&notice).is_ok_and(|text| {
            self.out
                .try_send(Out::Cell {
                    key: cells_key(tenant),
                    cell: cell.to_string(),
                    notice: cells_notice(tenant),
                    text,
                })
                .is_ok()
        });
        if !sent {
            // Told again with the next position.
            if let Some(cells) = self
                .announced
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(tenant)
            {
                cells.remove(&cell);
            }
        }
    }

    /// After the subscription (re)connected: whatever was published while
    /// this node was away is gone, so every node publishes its views again,
    /// this node's dispatchers resynchronise from a snapshot, and cells
    /// told of meanwhile are looked up.
    fn reconnected(self: &Arc<Self>, first: bool, metrics: &Metrics) {
        self.send(
            RESYNC.to_owned(),
            &Wire::Resync {
                n: self.node.clone(),
                want: None,
            },
        );
        if !first {
            metrics.bus_resyncs.inc();
            self.local.drop_dispatchers();
        }
        for t in self.interests().0 {
            let bus = self.clone();
            tokio::spawn(async move { bus.load_cells(&t).await });
        }
    }

    /// Looks the cells of every tenant watched whole here up again (every
    /// 10 s): a cell told while this node was not listening, or before a
    /// dispatcher came back, is found within that time.
    fn reload_cells(self: &Arc<Self>) {
        for t in self.interests().0 {
            let bus = self.clone();
            tokio::spawn(async move { bus.load_cells(&t).await });
        }
    }

    /// Once a subscription holds: what it asked for.
    fn after(self: &Arc<Self>, then: After) {
        match then {
            After::Send(msg) => self.send(RESYNC.to_owned(), &msg),
            After::LoadCells(t) => {
                let bus = self.clone();
                tokio::spawn(async move { bus.load_cells(&t).await });
            }
        }
    }
}

impl Bus for RedisBus {
    fn position(&self, tenant: &TenantId, driver: &SubjectId, fix: &Fix) {
        self.local.position(tenant, driver, fix);
        let Some(cell) = channel_cell(fix) else {
            return;
        };
        // The position also goes on the cell's own channel: nodes that
        // already watch the cell heard nothing new on the news channel.
        self.announce(tenant, cell, driver, fix);
        let msg = PositionRef {
            n: &self.node,
            t: tenant,
            d: driver,
            f: fix,
        };
        if let Ok(text) = serde_json::to_string(&msg) {
            let _ = self
                .out
                .try_send(Out::Publish(cell_channel(tenant, cell), text));
        }
    }

    fn event(&self, tenant: &TenantId, event: &Event) {
        self.local.event(tenant, event);
    }

    fn delivery(&self, tenant: &TenantId, change: &DeliveryChange) {
        // A delivery on its way whose driver is on another node: this node
        // has no estimate of its own; the driver's node told the last one.
        if change.eta.is_none() && change.status.is_moving() {
            let known = self
                .estimates
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&(tenant.clone(), change.id.clone()))
                .filter(|(_, at)| at.elapsed() < ESTIMATE_HOLDS)
                .map(|(e, _)| e.clone());
            if let (Some(e), Ok(mut v)) = (known, serde_json::to_value(change)) {
                v["eta"] = e["eta"].clone();
                v["eta_at"] = e["eta_at"].clone();
                self.local
                    .delivery_text(tenant, &Utf8Bytes::from(v.to_string()));
                return;
            }
        }
        self.local.delivery(tenant, change);
    }

    fn estimate(&self, tenant: &TenantId, change: &DeliveryChange) {
        let Ok(v) = serde_json::to_string(change) else {
            return;
        };
        self.local
            .delivery_text(tenant, &Utf8Bytes::from(v.clone()));
        self.send(
            deliveries_channel(tenant),
            &Wire::Delivery {
                n: self.node.clone(),
                t: tenant.clone(),
                v,
            },
        );
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
        let feed = self.local.subscribe_dispatcher(tenant)?;
        self.watch(tenant, &feed.watch, Interest::All);
        Some(feed)
    }

    fn viewport(&self, tenant: &TenantId, watch: &Arc<()>, viewport: Option<&Viewport>) {
        self.watch(tenant, watch, Interest::of(viewport));
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
            Topic::Patient,
            Some(After::Send(Wire::Resync {
                n: self.node.clone(),
                want: Some((tenant.clone(), id.clone())),
            })),
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

    fn acked_seq(&self, tenant: &TenantId, device: &DeviceId) -> super::BusFuture<'_, Option<u64>> {
        let key = cursor_key(tenant, device);
        Box::pin(async move {
            // Redis unreachable: the node's own cursor is all there is.
            self.query::<Option<u64>>(redis::cmd("GET").arg(&key))
                .await
                .ok()
                .flatten()
        })
    }

    fn acked(&self, tenant: &TenantId, device: &DeviceId, seq: u64) {
        let _ = self.out.try_send(Out::Set {
            key: cursor_key(tenant, device),
            value: seq.to_string(),
            ttl: CURSOR_TTL_S,
        });
    }

    fn report_device(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        report: &DeviceReport,
        closing: bool,
    ) {
        let value = serde_json::json!({"n": self.node, "r": report}).to_string();
        let _ = self.out.try_send(Out::Device {
            key: devices_key(tenant),
            device: device.to_string(),
            value,
            // A session that ended here must not undo a newer one elsewhere.
            only_if: closing.then(|| format!("{{\"n\":\"{}\"", self.node)),
        });
    }

    fn devices(&self, tenant: &TenantId) -> super::BusFuture<'_, Vec<(DeviceId, DeviceReport)>> {
        let key = devices_key(tenant);
        Box::pin(async move {
            #[derive(serde::Deserialize)]
            struct Stored {
                n: String,
                r: DeviceReport,
            }
            let all: Vec<(String, String)> = self
                .query(redis::cmd("HGETALL").arg(&key))
                .await
                .unwrap_or_default();
            // This node's own reports are older than what it knows itself;
            // what another node stored is checked like anything it sends.
            all.into_iter()
                .filter_map(|(device, text)| {
                    let stored: Stored = serde_json::from_str(&text).ok()?;
                    (stored.n != self.node).then_some(())?;
                    Some((DeviceId::parse(&device).ok()?, stored.r))
                })
                .collect()
        })
    }

    fn carry(&self, tenant: &TenantId, driver: &SubjectId, state: &Carried) {
        if let Ok(value) = serde_json::to_string(state) {
            let _ = self.out.try_send(Out::Carry {
                key: carried_key(tenant, driver),
                value,
                seen: state.seen().map_or(0, |s| s.0),
                ttl: CARRIED_TTL_S,
            });
        }
    }

    fn carried(
        &self,
        tenant: &TenantId,
        driver: &SubjectId,
    ) -> super::BusFuture<'_, Option<Carried>> {
        let key = carried_key(tenant, driver);
        Box::pin(async move {
            let text = self
                .query::<Option<String>>(redis::cmd("GET").arg(&key))
                .await
                .ok()
                .flatten()?;
            // What another node kept is checked like anything it sends.
            serde_json::from_str(&text)
                .inspect_err(|_| {
                    tracing::warn!("an unreadable carried driver state in Redis; ignored");
                })
                .ok()
        })
    }

    fn allow_lookup(&self, ip: std::net::IpAddr, per_minute: f64) -> super::BusFuture<'_, bool> {
        // The address is kept only hashed, for two minutes.
        let digest = ring::digest::digest(&ring::digest::SHA256, ip.to_string().as_bytes());
        let minute = crate::clock::now().0.div_euclid(60_000);
        let key = format!(
            "rxtrack:lookups:{}:{minute}",
            crate::log::event::hex(&digest.as_ref()[..12])
        );
        Box::pin(async move {
            // The counter is made with its expiry first, so it never
            // outlives its minute (one key: one shard of a cluster).
            let count = async {
                self.query::<()>(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(0)
                        .arg("EX")
                        .arg(120)
                        .arg("NX"),
                )
                .await?;
                self.query::<u64>(redis::cmd("INCR").arg(&key)).await
            };
            match count.await {
                Ok(n) => n as f64 <= per_minute,
                // Redis unreachable: the node's own limiter still holds.
                Err(_) => true,
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

#[cfg(test)]
mod tests;
