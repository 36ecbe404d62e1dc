//! The connections to Redis: one Redis or a cluster, the publisher that
//! sends what this node publishes, and the subscribers that hear the rest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use futures_util::StreamExt as _;
use h3o::CellIndex;
use redis::aio::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use tokio::sync::mpsc;

use super::wire::{After, CELLS_KEPT_MS, CELLS_TTL_S, Out};
use super::{MAX_BATCH, PROBE, PRUNE, RETRY, RedisBus, TIMEOUT};
use crate::metrics::Metrics;
use crate::types::TenantId;

fn config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(TIMEOUT)
        .set_response_timeout(TIMEOUT)
}

/// How this node reaches Redis.
#[derive(Clone)]
pub(super) enum Engine {
    One(redis::Client),
    Cluster {
        client: ClusterClient,
        seeds: Vec<String>,
    },
}

impl Engine {
    pub(super) async fn connect(&self) -> redis::RedisResult<Conn> {
        let connect = async {
            Ok(match self {
                Self::One(c) => Conn::One(
                    c.get_multiplexed_async_connection_with_config(&config())
                        .await?,
                ),
                Self::Cluster { client, .. } => Conn::Cluster(client.get_async_connection().await?),
            })
        };
        tokio::time::timeout(TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }
}

pub(super) fn timed_out() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::IoError, "Redis did not answer in time"))
}

/// A connection to one Redis or to a cluster (which routes each command to
/// the shard of its key or channel).
#[derive(Clone)]
pub(super) enum Conn {
    One(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::One(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::One(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::One(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

pub(super) fn cluster_builder(seeds: &[String]) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(TIMEOUT)
        .response_timeout(TIMEOUT)
}

/// Stores a driver's carried tracking unless the stored one was seen later
/// (a node whose session of the driver ended late must not overwrite what
/// the node the driver moved to stored since).
const CARRY: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and type(c) == 'table' and type(c.live) == 'table' then
    local theirs = tonumber(c.live.seen)
    if theirs and tonumber(ARGV[2]) < theirs then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
";

/// Records a cell a position was published in, as of now, and forgets the
/// cells nobody published in lately (one key: atomic, one shard).
const TELL_CELL: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
";

/// A tenant's device reports are kept a day after the last one.
const DEVICES_TTL_S: u64 = 24 * 3600;

/// Sets a device's report unless a marker is given that the stored report
/// no longer holds (the device's session moved to another node since); the
/// tenant's hash expires a day after the last report.
const REPORT_DEVICE: &str = r"
local only_if = ARGV[3]
if only_if ~= '' then
  local cur = redis.call('HGET', KEYS[1], ARGV[1])
  if cur and not string.find(cur, only_if, 1, true) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
";

/// A command, built in place (no copy of it after).
macro_rules! command {
    ($name:expr $(, $arg:expr)*) => {{
        let mut c = redis::cmd($name);
        $(c.arg($arg);)*
        c
    }};
}

/// Sends a batch: pipelined to one Redis; to a cluster, each command to its
/// shard (keys first, so a cell is in the set before it is told of).
async fn send_batch(conn: &mut Conn, batch: &mut Vec<Out>) -> redis::RedisResult<()> {
    let cluster = matches!(conn, Conn::Cluster(_));
    let publish = if cluster { "SPUBLISH" } else { "PUBLISH" };
    let mut keys: Vec<redis::Cmd> = Vec::new();
    let mut set_at: HashMap<String, usize> = HashMap::new();
    let mut messages: Vec<redis::Cmd> = Vec::new();
    for out in batch.drain(..) {
        match out {
            Out::Publish(channel, text) => {
                messages.push(command!(publish, channel, text));
            }
            Out::Set { key, value, ttl } => {
                // The newest value of a key in this batch replaces the older.
                let cmd = command!("SET", &key, value, "EX", ttl);
                if let Some(&i) = set_at.get(&key) {
                    keys[i] = cmd;
                } else {
                    set_at.insert(key, keys.len());
                    keys.push(cmd);
                }
            }
            Out::Carry {
                key,
                value,
                seen,
                ttl,
            } => keys.push(command!("EVAL", CARRY, 1, key, value, seen, ttl)),
            Out::Device {
                key,
                device,
                value,
                only_if,
            } => {
                let only_if = only_if.unwrap_or_default();
                keys.push(command!(
                    "EVAL",
                    REPORT_DEVICE,
                    1,
                    key,
                    device,
                    value,
                    only_if,
                    DEVICES_TTL_S
                ));
            }
            Out::Cell {
                key,
                cell,
                notice,
                text,
            } => {
                let now_ms = crate::clock::now().0;
                keys.push(command!(
                    "EVAL",
                    TELL_CELL,
                    1,
                    key,
                    cell,
                    now_ms,
                    now_ms.saturating_sub(CELLS_KEPT_MS),
                    CELLS_TTL_S
                ));
                messages.push(command!(publish, notice, text));
            }
        }
    }
    if !cluster {
        let mut pipe = redis::pipe();
        for c in keys.into_iter().chain(messages) {
            pipe.add_command(c).ignore();
        }
        return pipe.query_async::<()>(conn).await;
    }
    for group in [keys, messages] {
        let sent = futures_util::future::join_all(group.iter().map(|c| {
            let mut conn = conn.clone();
            async move { c.query_async::<()>(&mut conn).await }
        }))
        .await;
        sent.into_iter().collect::<redis::RedisResult<Vec<()>>>()?;
    }
    Ok(())
}

/// Sends what the node publishes, reconnecting as needed.
pub(super) async fn publisher(
    engine: Engine,
    mut rx: mpsc::Receiver<Out>,
    up: Arc<AtomicBool>,
    announced: Arc<Mutex<HashMap<TenantId, HashMap<CellIndex, Instant>>>>,
) {
    let mut batch = Vec::new();
    loop {
        let mut conn = match engine.connect().await {
            Ok(c) => {
                up.store(true, Ordering::Release);
                c
            }
            Err(e) => {
                up.store(false, Ordering::Release);
                tracing::warn!(error = %e, "cannot reach Redis; fan-out across nodes paused");
                // What was queued meanwhile is dropped: pub/sub keeps
                // nothing either, and a resync follows the reconnection.
                // Cells told of may have been lost: they are told again.
                while rx.try_recv().is_ok() {}
                announced
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
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
            let sent = tokio::time::timeout(TIMEOUT, send_batch(&mut conn, &mut batch))
                .await
                .unwrap_or_else(|_| Err(timed_out()));
            if let Err(e) = sent {
                batch.clear();
                up.store(false, Ordering::Release);
                announced
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                tracing::warn!(error = %e, "publishing to Redis failed; reconnecting");
                break;
            }
        }
    }
}

/// Receives what other nodes publish on the channels this node wants, from
/// one Redis; after every (re)connection, asks for a resync.
pub(super) async fn subscriber(
    client: redis::Client,
    mut new: mpsc::UnboundedReceiver<(String, Option<After>)>,
    bus: Weak<RedisBus>,
    metrics: Arc<Metrics>,
) {
    let mut first = true;
    loop {
        let Some(b) = bus.upgrade() else {
            return;
        };
        let up = b.up.clone();
        let wanted = b.wanted_channels();
        drop(b);
        let connected = async {
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            sink.subscribe(&wanted).await?;
            redis::RedisResult::Ok((sink, stream))
        };
        let connected = tokio::time::timeout(TIMEOUT, connected)
            .await
            .unwrap_or_else(|_| Err(timed_out()));
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
            b.reconnected(first, &metrics);
        }
        first = false;
        let mut prune = tokio::time::interval(PRUNE);
        loop {
            tokio::select! {
                _ = prune.tick() => {
                    let Some(b) = bus.upgrade() else { return };
                    let stale = b.stale_channels();
                    b.reload_cells();
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
                    if let (Some(then), Some(b)) = (then, bus.upgrade()) {
                        b.after(then);
                    }
                }
            }
        }
        up.store(false, Ordering::Release);
        tracing::warn!("lost the Redis subscription; reconnecting");
        tokio::time::sleep(RETRY).await;
    }
}

/// The same, from a Redis Cluster, by sharded subscriptions: each channel
/// is subscribed on its own shard. The cluster connection reconnects and
/// resubscribes by itself; a lost shard connection (or a failed probe of
/// every shard) still counts as a gap, and once every shard answers again
/// the node subscribes anew and resynchronises.
pub(super) async fn cluster_subscriber(
    seeds: Vec<String>,
    mut new: mpsc::UnboundedReceiver<(String, Option<After>)>,
    bus: Weak<RedisBus>,
    metrics: Arc<Metrics>,
) {
    // Bounded: a subscriber that falls behind drops messages, which is a
    // gap like any other (resynchronised at the next probe).
    let (tx, mut pushes) = mpsc::channel::<redis::PushInfo>(super::QUEUE);
    let overflow = Arc::new(AtomicBool::new(false));
    let dropped = overflow.clone();
    let client = match cluster_builder(&seeds)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(move |push: redis::PushInfo| {
            if tx.try_send(push).is_err() {
                dropped.store(true, Ordering::Release);
            }
            Ok::<(), redis::aio::SendError>(())
        })
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe on the Redis cluster");
            return;
        }
    };
    let mut first = true;
    let mut probe = tokio::time::interval(PROBE);
    let mut prune = tokio::time::interval(PRUNE);
    let mut conn: Option<ClusterConnection> = None;
    // Whether the subscriptions may have a gap (first: none yet).
    let mut gap = true;
    loop {
        let Some(b) = bus.upgrade() else {
            return;
        };
        let up = b.up.clone();
        drop(b);
        tokio::select! {
            _ = probe.tick() => {
                if overflow.swap(false, Ordering::AcqRel) {
                    tracing::warn!("fell behind the Redis cluster's messages; resynchronising");
                    gap = true;
                }
                if conn.is_none() {
                    conn = tokio::time::timeout(TIMEOUT, client.get_async_connection())
                        .await
                        .ok()
                        .and_then(Result::ok);
                }
                let Some(c) = conn.clone() else {
                    up.store(false, Ordering::Release);
                    continue;
                };
                let healthy = every_shard_answers(&c).await;
                if !healthy {
                    up.store(false, Ordering::Release);
                    gap = true;
                    continue;
                }
                if gap {
                    let Some(b) = bus.upgrade() else { return };
                    if ssubscribe_each(&c, &b.wanted_channels()).await.is_err() {
                        continue;
                    }
                    gap = false;
                    up.store(true, Ordering::Release);
                    b.reconnected(first, &metrics);
                    first = false;
                }
            }
            _ = prune.tick() => {
                let (Some(c), Some(b)) = (&conn, bus.upgrade()) else { continue };
                b.reload_cells();
                for ch in b.stale_channels() {
                    let mut c = c.clone();
                    if c.sunsubscribe(&ch).await.is_err() {
                        gap = true;
                    }
                }
            }
            push = pushes.recv() => {
                let Some(push) = push else { return };
                let Some(b) = bus.upgrade() else { return };
                if on_push(&b, &push) {
                    up.store(false, Ordering::Release);
                    gap = true;
                }
            }
            ch = new.recv() => {
                let Some((ch, then)) = ch else { return };
                let Some(c) = &conn else { continue };
                let mut c = c.clone();
                if c.ssubscribe(&ch).await.is_err() {
                    // Subscribed again with the rest once the cluster answers.
                    gap = true;
                    continue;
                }
                if let (Some(then), Some(b)) = (then, bus.upgrade()) {
                    b.after(then);
                }
            }
        }
    }
}

/// Handles what the cluster pushed; `true`: the subscriptions have a gap.
fn on_push(b: &RedisBus, push: &redis::PushInfo) -> bool {
    match push.kind {
        redis::PushKind::SMessage | redis::PushKind::Message => {
            if let Some(Ok(text)) = push.data.last().map(redis::from_redis_value::<String>) {
                b.receive(&text);
            }
            false
        }
        // The server dropped a sharded subscription itself (its slot moved,
        // or its primary became a replica): a gap if this node still wants
        // the channel.
        redis::PushKind::SUnsubscribe => {
            let channel = push
                .data
                .first()
                .and_then(|v| redis::from_redis_value::<String>(v).ok());
            let gap = channel.is_some_and(|c| b.wanted_channels().contains(&c));
            if gap {
                tracing::warn!("Redis dropped a sharded subscription; resubscribing");
            }
            gap
        }
        redis::PushKind::Disconnection => {
            tracing::warn!("lost a Redis cluster connection; resubscribing");
            true
        }
        _ => false,
    }
}

/// Whether every primary of the cluster answers a PING.
async fn every_shard_answers(conn: &ClusterConnection) -> bool {
    let mut c = conn.clone();
    let cmd = redis::cmd("PING");
    let ping = c.route_command(
        &cmd,
        RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::AllSucceeded),
        )),
    );
    matches!(tokio::time::timeout(TIMEOUT, ping).await, Ok(Ok(_)))
}

/// Subscribes to each channel on its shard (a sharded subscription names
/// channels of one slot only).
async fn ssubscribe_each(conn: &ClusterConnection, channels: &[String]) -> redis::RedisResult<()> {
    let subscribed = futures_util::future::join_all(channels.iter().map(|ch| {
        let mut c = conn.clone();
        async move { c.ssubscribe(ch).await }
    }));
    match tokio::time::timeout(TIMEOUT, subscribed).await {
        Ok(all) => all
            .into_iter()
            .collect::<redis::RedisResult<Vec<()>>>()
            .map(|_| ()),
        Err(_) => Err(timed_out()),
    }
}
