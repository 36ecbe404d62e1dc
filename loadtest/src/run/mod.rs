//! The scenario runner (fixed load): creates deliveries and routes through
//! the API with minted tokens, opens patient tracking sockets and dispatcher
//! streams, drives the fleet in real time, and measures what comes back.
//! Only the public protocol is used.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::report::{Latency, Report, cause_of_patient_update, proc_sample};
use crate::roads::RoadGraph;
use crate::sim::{Fleet, Out, SimConfig, SimDriver};
use crate::truth::{EtaTrace, StopTruth, count_arrivals, eta_quality};

mod readers;
mod setup;

use readers::{read_dispatcher, read_driver, read_patient};
pub use setup::create_delivery;
use setup::{connect, connect_driver, connect_patient, create_deliveries, node_bases};

/// Central Helsinki's streets (© OpenStreetMap contributors, `ODbL` 1.0).
pub const HELSINKI: &[u8] = roads::HELSINKI;

/// The bundled extract a run drives on: `helsinki` (central Helsinki's
/// streets) or `kotka` (Karhula: suburbs and a motorway).
#[must_use]
pub fn extract(name: &str) -> Option<&'static [u8]> {
    match name {
        "helsinki" => Some(roads::HELSINKI),
        "kotka" => Some(roads::KOTKA),
        _ => None,
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub tenant: String,
    /// The tenant's HS256 secret, to mint tokens as its backend would.
    pub secret: Vec<u8>,
    pub drivers: usize,
    pub stops_per_driver: usize,
    pub duration: Duration,
    pub seed: u64,
    /// Dispatcher streams to open.
    pub dispatchers: usize,
    /// Whether to open one patient socket per delivery.
    pub patients: bool,
    /// A local server process to sample CPU and memory from.
    pub server_pid: Option<u32>,
    /// Churn: patient sockets opened (snapshot read) and closed per second
    /// during the run, on top of the steady ones.
    pub churn_per_s: usize,
    /// Driving before `duration` starts. Its pings count (sent, acked,
    /// lost), but their ack and ping-to-patient latencies go to separate
    /// warm-up rows and their dispatcher latencies nowhere: every driver's
    /// first fixes fall in it, and they cost the server more than later ones
    /// (first ETA of each route, new detector and driver state).
    pub warmup: Duration,
    /// The bundled extract to drive on (see [`extract`]).
    pub extract: &'static str,
    /// Drivers start loaded at the pharmacy (handed over at once) instead
    /// of driving there from across town and waiting for their orders.
    pub start_at_pickup: bool,
    /// Other nodes of the same deployment (`--peer`): drivers, dispatchers
    /// and patients are spread over `url` and these, each patient on
    /// another node than its driver.
    pub peers: Vec<String>,
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(0)
}

/// Mints an HS256 token, as a tenant's backend does.
#[must_use]
pub fn mint(secret: &[u8], claims: &Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{h}.{p}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signed.as_bytes()).as_ref())
    )
}

/// Standard claims for a role, valid for `ttl_s` seconds.
#[must_use]
pub fn claims_for(tenant: &str, role: &str, sub: &str, device: Option<&str>, ttl_s: i64) -> Value {
    let now = now_ms() / 1000;
    let mut c = json!({"tid": tenant, "sub": sub, "role": role, "aud": "rxtrack", "iat": now, "exp": now + ttl_s, "auth_time": now});
    if let Some(d) = device {
        c["did"] = json!(d);
    }
    c
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The load generator's socket settings. tungstenite's default read buffer
/// (128 KiB, zero-filled before every read) made `memset` 43% of the
/// generator's CPU at 20,000 pings/s; 4 KiB (the server's own choice) reads
/// acks and snapshots in one go. Frames are written out at once.
#[must_use]
pub fn client_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// Shared measurements, written by the reader tasks.
#[derive(Default)]
struct Shared {
    /// Send time of each ping, by (driver, device ts).
    sent_by_ts: HashMap<(usize, i64), Instant>,
    ack: Latency,
    dispatcher: Latency,
    patient: Latency,
    change: Latency,
    warmup_ack: Latency,
    warmup_patient: Latency,
    /// Latencies of pings sent before this instant are warm-up.
    measure_from: Option<Instant>,
    measure_from_ms: i64,
    /// Send time (wall clock, ms) of each message of each driver, ascending.
    sends: Vec<Vec<i64>>,
    patient_without_ping: u64,
    acked: u64,
    messages: u64,
    errors: BTreeMap<String, u64>,
    closes: BTreeMap<String, u64>,
    violations: u64,
    out_of_order: u64,
    churn_ok: u64,
    churn_failed: u64,
    /// Windows patients saw: delivery index → (receive time ms, window).
    windows: HashMap<usize, Shown>,
    /// Point estimates dispatchers saw: delivery id → (receive time ms, estimate).
    points: HashMap<String, Vec<(i64, Option<i64>)>>,
    /// Arrived events (their fixes' device times): delivery id → times.
    dropoff_arrived: HashMap<String, Vec<i64>>,
    pickup_arrived: HashMap<String, Vec<i64>>,
}

/// Windows one patient was shown: (receive time ms, window).
type Shown = Vec<(i64, Option<(i64, i64)>)>;

/// A patient update made longer than this after the driver's last ping was
/// not caused by a ping.
const CAUSE_WINDOW_MS: i64 = 10_000;

const STATUS_ORDER: [&str; 7] = [
    "scheduled",
    "en_route",
    "approaching",
    "arrived",
    "delivered",
    "failed",
    "cancelled",
];

/// The furthest status a patient has seen, after one more: statuses only
/// move forward, except that a driver who leaves without handing over
/// (arrived, then en route again) is on its way once more.
fn next_status_rank(last: usize, rank: usize, out_of_order: &mut u64) -> usize {
    const EN_ROUTE: usize = 1;
    const ARRIVED: usize = 3;
    if last == ARRIVED && rank == EN_ROUTE {
        return rank;
    }
    if rank < last {
        *out_of_order += 1;
    }
    last.max(rank)
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

fn close_code(msg: &Message) -> Option<String> {
    match msg {
        Message::Close(Some(f)) => Some(format!("{} {}", u16::from(f.code), f.reason)),
        Message::Close(None) => Some("none".into()),
        _ => None,
    }
}

/// Runs the scenario and returns its report.
pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    let start = now_ms();
    let mut fleet = plan(&cfg, start)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let ws_base = cfg.url.replacen("http://", "ws://", 1);
    // Driver i on node i, its patient on node i + 1.
    let nodes = node_bases(&cfg);
    let node = |i: usize| nodes[i % nodes.len()].as_str();
    let dispatcher = mint(
        &cfg.secret,
        &claims_for(&cfg.tenant, "dispatcher", "loadtest", None, 3600),
    );
    let run_id = start % 1_000_000;

    // Deliveries and routes, through the API.
    let (links, _) = create_deliveries(&cfg, &http, &dispatcher, &fleet, run_id).await?;

    let shared = Arc::new(Mutex::new(Shared {
        sends: vec![Vec::new(); fleet.drivers.len()],
        ..Shared::default()
    }));
    let mut tasks = Vec::new();

    // Dispatchers: positions arrive batched; each is matched to its ping.
    for k in 0..cfg.dispatchers {
        let ws = connect(node(k + 1), "/v1/dispatch/ws", Some(&dispatcher)).await?;
        tasks.push(tokio::spawn(read_dispatcher(
            ws,
            format!("lt{run_id}-d"),
            shared.clone(),
        )));
    }

    // Patients: only allowed keys, statuses in order; windows kept for ETA quality.
    if cfg.patients {
        for (n, (driver, token)) in links.iter().enumerate() {
            let path = format!("/v1/track/{token}/ws");
            let ws = connect_patient(node(*driver + 1), &path, !cfg.peers.is_empty()).await?;
            tasks.push(tokio::spawn(read_patient(ws, n, *driver, shared.clone())));
        }
    }

    // Drivers: a writer here, a reader task each for acks and errors.
    let sent_at: SentAt = Arc::new(Mutex::new(vec![VecDeque::new(); fleet.drivers.len()]));
    let mut writers = Vec::new();
    for d in &fleet.drivers {
        let (tx, reader, interval) =
            connect_driver(&cfg, node(d.index), d.index, run_id, &shared, &sent_at).await?;
        writers.push(tx);
        tasks.push(reader);
        // Driver apps ping as often as the server asks.
        fleet.cfg.ping_interval_ms = interval;
    }

    // Churn: links opened and closed again while the fleet drives.
    if cfg.churn_per_s > 0 && !links.is_empty() {
        let (shared, ws_base, tokens) = (
            shared.clone(),
            ws_base.clone(),
            links.iter().map(|l| l.1.clone()).collect(),
        );
        tasks.push(tokio::spawn(churn(
            ws_base,
            tokens,
            cfg.churn_per_s,
            shared,
        )));
    }
    // The fleet drives from now on: no pings fell due during the setup.
    fleet.delay(now_ms() - start);
    let pharmacy = Pharmacy {
        http: http.clone(),
        url: cfg.url.clone(),
        token: dispatcher.clone(),
        ids: (0..fleet.drivers.len())
            .map(|i| {
                (0..fleet.drivers[i].dropoffs.len())
                    .map(|k| delivery_id(run_id, i, k))
                    .collect()
            })
            .collect(),
    };
    let driven = drive(&cfg, &mut fleet, &mut writers, &sent_at, &shared, &pharmacy).await;
    let end_ms = now_ms();
    // Rates over the whole drive (warm-up pings count as sent and acked).
    let elapsed = driven.total_s;
    // Let the last acks and fan-out arrive.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for w in &mut writers {
        let _ = w.close().await;
    }
    for t in &tasks {
        t.abort();
    }

    let server_cpu_percent = cpu_percent(driven.cpu_before, driven.cpu_after, driven.measured_s);
    let rest = driven_to_the_end(&fleet, end_ms);
    let s = lock(&shared);
    let judged = judge(&s, &rest, &pharmacy.ids, &links, end_ms);
    Ok(Report {
        duration_s: elapsed,
        drivers: fleet.drivers.len(),
        deliveries: links.len(),
        patients: if cfg.patients { links.len() } else { 0 },
        dispatchers: cfg.dispatchers,
        pings_sent: driven.pings_sent,
        server_cpu_percent,
        server_rss_kib: driven.cpu_after.map(|(_, rss)| rss),
        arrivals: judged.0,
        pickup_arrivals: judged.1,
        eta_by_minutes_ahead: judged.2,
        ..measured(&s, elapsed)
    })
}

/// The truth of what did not happen within the run: the simulation driven
/// on, offline, until every driver is done (four hours at the most).
fn driven_to_the_end(fleet: &Fleet, end_ms: i64) -> Fleet {
    let mut rest = fleet.clone();
    let mut t = end_ms;
    while rest.drivers.iter().any(|d| !d.finished()) && t < end_ms + 4 * 3_600_000 {
        t += 1000;
        let _ = rest.step(t);
    }
    rest
}

/// Arrivals (drop-off and pickup) and ETA quality: what the server said,
/// held against what the simulated drivers did (`fleet`: driven to the end).
fn judge(
    s: &Shared,
    fleet: &Fleet,
    ids: &[Vec<String>],
    links: &[(usize, String)],
    end_ms: i64,
) -> (
    crate::truth::ArrivalCount,
    crate::truth::ArrivalCount,
    BTreeMap<String, crate::truth::EtaBucket>,
) {
    let mut dropoffs = Vec::new();
    let mut pickups = Vec::new();
    let mut traces = Vec::new();
    let mut n = 0usize;
    for (i, d) in fleet.drivers.iter().enumerate() {
        for (k, id) in ids[i].iter().enumerate() {
            let truth = StopTruth {
                arrived: d.arrivals[k],
                departed: d.departures[k],
            };
            let events = s.dropoff_arrived.get(id).cloned().unwrap_or_default();
            dropoffs.push((truth, events));
            let pickup = StopTruth {
                arrived: d.pickup_visit.map(|v| v.0),
                departed: d.pickup_visit.map(|v| v.1),
            };
            pickups.push((
                pickup,
                s.pickup_arrived.get(id).cloned().unwrap_or_default(),
            ));
            // The patient of this delivery, if one watched.
            if links.get(n).is_some_and(|l| l.0 == i) {
                let mut windows = s.windows.get(&n).cloned().unwrap_or_default();
                windows.sort_by_key(|w| w.0);
                let mut points = s.points.get(id).cloned().unwrap_or_default();
                points.sort_by_key(|p| p.0);
                traces.push(EtaTrace {
                    arrival: d.arrivals[k],
                    windows,
                    points,
                });
            }
            n += 1;
        }
    }
    // Each wrong arrival, for whoever looks into it (stderr).
    let (dropoff_count, wrong) = crate::truth::mistakes(&dropoffs, end_ms);
    let ids: Vec<&String> = ids.iter().flatten().collect();
    for n in wrong {
        let (truth, events) = &dropoffs[n];
        eprintln!(
            "\nwrong drop-off arrival: {} visit {:?}..{:?}, arrived events at {:?}",
            ids[n], truth.arrived, truth.departed, events
        );
    }
    (
        dropoff_count,
        count_arrivals(&pickups, end_ms),
        eta_quality(&traces, end_ms),
    )
}

/// The pharmacy's backend, as the runner plays it: it hands orders over
/// when the driver is at the pharmacy and marks each delivered when the
/// driver leaves the door.
struct Pharmacy {
    http: reqwest::Client,
    url: String,
    token: String,
    /// Delivery ids by driver and stop.
    ids: Vec<Vec<String>>,
}

impl Pharmacy {
    /// Changes a delivery's status, in the background (errors are counted).
    fn status(
        &self,
        id: &str,
        status: &'static str,
        shared: &Arc<Mutex<Shared>>,
    ) -> tokio::task::JoinHandle<()> {
        let (http, url, token, id, shared) = (
            self.http.clone(),
            self.url.clone(),
            self.token.clone(),
            id.to_owned(),
            shared.clone(),
        );
        tokio::spawn(async move {
            let res = http
                .post(format!("{url}/v1/deliveries/{id}/status"))
                .bearer_auth(&token)
                .json(&json!({ "status": status }))
                .send()
                .await;
            if !res.is_ok_and(|r| r.status().is_success()) {
                *lock(&shared)
                    .errors
                    .entry(format!("marking {status}"))
                    .or_default() += 1;
            }
        })
    }
}

fn delivery_id(run_id: i64, driver: usize, stop: usize) -> String {
    format!("lt-{run_id}-{driver}-{stop}")
}

/// What driving the fleet sent, and the server's CPU and memory around
/// the measured part (after the warm-up).
struct Driven {
    pings_sent: u64,
    total_s: f64,
    measured_s: f64,
    cpu_before: Option<(u64, u64)>,
    cpu_after: Option<(u64, u64)>,
}

/// Drives the fleet through the warm-up and the measured duration.
async fn drive(
    cfg: &RunConfig,
    fleet: &mut Fleet,
    writers: &mut [Writer],
    sent_at: &SentAt,
    shared: &Arc<Mutex<Shared>>,
    pharmacy: &Pharmacy,
) -> Driven {
    let mut picked = vec![false; fleet.drivers.len()];
    let mut delivered: Vec<Vec<bool>> = pharmacy.ids.iter().map(|s| vec![false; s.len()]).collect();
    let mut calls = Vec::new();
    // Status changes wait until the server has every fix up to them (none
    // held back in a dead zone, all acknowledged), as they would coming
    // through the driver app's own channel after its fixes.
    let mut due: Vec<(usize, String, &'static str)> = Vec::new();
    let began = Instant::now();
    let measure_from = began + cfg.warmup;
    {
        let mut s = lock(shared);
        s.measure_from = Some(measure_from);
        s.measure_from_ms = now_ms() + i64::try_from(cfg.warmup.as_millis()).unwrap_or(0);
    }
    let mut cpu_before = None;
    let mut pings_sent = 0u64;
    // Pings go out as they fall due, a few milliseconds apart: real driver
    // apps are not synchronised, and sending each 50 ms of pings at once
    // (the first version) measured the generator's bursts, not the server.
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown = Instant::now();
    while began.elapsed() < cfg.duration + cfg.warmup {
        tick.tick().await;
        if cpu_before.is_none() && Instant::now() >= measure_from {
            cpu_before = Some(cfg.server_pid.and_then(proc_sample));
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            progress(began, pings_sent, shared);
            forget_old_sends(&mut lock(shared));
        }
        let now = now_ms();
        for (i, out) in fleet.step(now) {
            pings_sent += send(i, out, sent_at, shared, &mut writers[i]).await;
        }
        // Handed over as the driver leaves the pharmacy with the orders;
        // delivered as it leaves each door.
        for (i, d) in fleet.drivers.iter().enumerate() {
            let loaded = d.pickup_visit.is_some_and(|(_, left)| left <= now);
            if loaded && !picked[i] {
                picked[i] = true;
                for id in &pharmacy.ids[i] {
                    due.push((i, id.clone(), "picked_up"));
                }
            }
            for (k, left) in d.departures.iter().enumerate() {
                if left.is_some_and(|t| t <= now) && !delivered[i][k] {
                    delivered[i][k] = true;
                    due.push((i, pharmacy.ids[i][k].clone(), "delivered"));
                }
            }
        }
        let acked = |i: usize| {
            sent_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(i)
                .is_none_or(VecDeque::is_empty)
        };
        due.retain(|(i, id, status)| {
            let ready = !fleet.drivers[*i].holding() && acked(*i);
            if ready {
                calls.push(pharmacy.status(id, status, shared));
            }
            !ready
        });
    }
    for c in calls {
        let _ = c.await;
    }
    Driven {
        pings_sent,
        total_s: began.elapsed().as_secs_f64(),
        measured_s: measure_from.elapsed().as_secs_f64(),
        cpu_before: cpu_before.flatten(),
        cpu_after: cfg.server_pid.and_then(proc_sample),
    }
}

/// Forgets send times no reply can refer to any more, so that long runs
/// hold memory for the last seconds only: positions reach dispatchers within
/// a conflation interval, and patient updates name their cause within
/// `CAUSE_WINDOW_MS`.
fn forget_old_sends(s: &mut Shared) {
    const KEEP: Duration = Duration::from_secs(30);
    if let Some(horizon) = Instant::now().checked_sub(KEEP) {
        s.sent_by_ts.retain(|_, sent| *sent >= horizon);
    }
    let horizon_ms = now_ms() - CAUSE_WINDOW_MS - 20_000;
    for sends in &mut s.sends {
        let old = sends.partition_point(|&t| t < horizon_ms);
        sends.drain(..old);
    }
}

/// What the reader tasks measured.
fn measured(s: &Shared, elapsed: f64) -> Report {
    let pct = |l: &Latency| Some(l.percentiles()).filter(|p| p.count > 0);
    Report {
        pings_acked: s.acked,
        pings_per_s_acked: s.acked as f64 / elapsed,
        ack: pct(&s.ack),
        ping_to_dispatcher: pct(&s.dispatcher),
        ping_to_patient: pct(&s.patient),
        change_to_patient: pct(&s.change),
        warmup_ack: pct(&s.warmup_ack),
        warmup_ping_to_patient: pct(&s.warmup_patient),
        patient_updates_without_ping: s.patient_without_ping,
        messages_received: s.messages,
        messages_per_s: s.messages as f64 / elapsed,
        errors: s.errors.clone(),
        closes: s.closes.clone(),
        exposure_violations: s.violations,
        churn_connects: s.churn_ok,
        churn_failures: s.churn_failed,
        statuses_out_of_order: s.out_of_order,
        ..Report::default()
    }
}

type Writer = futures_util::stream::SplitSink<Ws, Message>;

/// Records the send time of each ping in `out`, then sends it; returns how
/// many pings went.
async fn send(
    i: usize,
    out: Out,
    sent_at: &Mutex<Vec<VecDeque<(u64, Instant)>>>,
    shared: &Mutex<Shared>,
    writer: &mut Writer,
) -> u64 {
    let pings = match &out {
        Out::Ping(p) => std::slice::from_ref(p),
        Out::Batch(b) => b.as_slice(),
    };
    let sent = Instant::now();
    {
        let mut all = sent_at.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = &mut all[i];
        let mut s = lock(shared);
        if let Some(sends) = s.sends.get_mut(i) {
            sends.push(now_ms());
        }
        for p in pings {
            mine.push_back((p.seq, sent));
            s.sent_by_ts.insert((i, p.ts), sent);
        }
    }
    let n = pings.len() as u64;
    let msg = match out {
        Out::Ping(p) => {
            json!({"type": "ping", "seq": p.seq, "ts": p.ts, "lat": p.lat, "lng": p.lng,
            "acc": p.acc, "speed": p.speed, "heading": p.heading})
        }
        Out::Batch(b) => json!({"type": "batch", "pings": b}),
    };
    if writer
        .send(Message::Text(msg.to_string().into()))
        .await
        .is_err()
    {
        *lock(shared).errors.entry("send failed".into()).or_default() += 1;
    }
    n
}

/// Share of one core the server used between two samples, percent.
fn cpu_percent(
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
    elapsed_s: f64,
) -> Option<f64> {
    // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ).
    const TICKS_PER_S: f64 = 100.0;
    match (before, after) {
        (Some((a, _)), Some((b, _))) => {
            Some(b.saturating_sub(a) as f64 / TICKS_PER_S / elapsed_s * 100.0)
        }
        _ => None,
    }
}

/// Opens and closes patient sockets at `per_s` a second, round robin over
/// the tracking links, until aborted.
async fn churn(ws_base: String, tokens: Vec<String>, per_s: usize, shared: Arc<Mutex<Shared>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let per_tick = per_s.div_ceil(10);
    let mut next = 0usize;
    loop {
        tick.tick().await;
        for _ in 0..per_tick {
            let token = &tokens[next % tokens.len()];
            next += 1;
            let ok = match connect(&ws_base, &format!("/v1/track/{token}/ws"), None).await {
                Ok(mut ws) => {
                    let first = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
                    let _ = ws.close(None).await;
                    matches!(first, Ok(Some(Ok(Message::Text(_)))))
                }
                Err(_) => false,
            };
            let mut s = lock(&shared);
            if ok {
                s.churn_ok += 1;
            } else {
                s.churn_failed += 1;
            }
        }
    }
}

/// A driver's id in a run. Each run has its own drivers and devices: a
/// stepped run's later steps must not resume the seq cursors of earlier ones.
fn driver_sub(run_id: i64, i: usize) -> String {
    format!("lt{run_id}-d{i}")
}

/// Each driver's unacknowledged pings, (seq, send time), in seq order.
type SentAt = Arc<Mutex<Vec<VecDeque<(u64, Instant)>>>>;

/// The live progress line, on stderr.
fn progress(began: Instant, pings_sent: u64, shared: &Mutex<Shared>) {
    let s = lock(shared);
    eprint!(
        "\r{:>4.0} s  pings sent {pings_sent}  acked {}  messages {}  errors {}  closes {}   ",
        began.elapsed().as_secs_f64(),
        s.acked,
        s.messages,
        s.errors.values().sum::<u64>(),
        s.closes.values().sum::<u64>()
    );
}

/// The fleet for a run, on the chosen extract's streets.
fn plan(cfg: &RunConfig, start: i64) -> anyhow::Result<Fleet> {
    let bytes = extract(cfg.extract)
        .ok_or_else(|| anyhow::anyhow!("no bundled extract {:?} (helsinki, kotka)", cfg.extract))?;
    let graph = RoadGraph::from_pbf_bytes(bytes, cfg.extract)?;
    let sim = SimConfig {
        drivers: cfg.drivers,
        stops_per_driver: cfg.stops_per_driver,
        start_at_pickup: cfg.start_at_pickup,
        pickup_ms: if cfg.start_at_pickup {
            0
        } else {
            SimConfig::default().pickup_ms
        },
        ..SimConfig::default()
    };
    Ok(Fleet::new(&graph, sim, cfg.seed, start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use setup::ping_interval_of;

    #[test]
    fn statuses_move_forward_but_a_departure_without_hand_over_is_on_the_way_again() {
        let mut bad = 0;
        let mut last = 0;
        // scheduled, en_route, approaching, arrived, en_route (left), approaching, arrived, delivered
        for rank in [0, 1, 2, 3, 1, 2, 3, 4] {
            last = next_status_rank(last, rank, &mut bad);
        }
        assert_eq!((last, bad), (4, 0));
        // Delivered, then en route: a message out of order.
        next_status_rank(4, 1, &mut bad);
        // Approaching, then scheduled: too.
        next_status_rank(2, 0, &mut bad);
        assert_eq!(bad, 2);
    }

    #[test]
    fn the_ping_interval_comes_from_a_sane_config_message() {
        assert_eq!(
            ping_interval_of(r#"{"type":"config","ping_interval_ms":250}"#).unwrap(),
            250
        );
        for bad in [
            "",
            "not json",
            r#"{"type":"ack","ping_interval_ms":250}"#,
            r#"{"type":"config"}"#,
            r#"{"type":"config","ping_interval_ms":"250"}"#,
            r#"{"type":"config","ping_interval_ms":0}"#,
            r#"{"type":"config","ping_interval_ms":-5}"#,
            r#"{"type":"config","ping_interval_ms":1e300}"#,
            r#"{"type":"config","ping_interval_ms":99999999999}"#,
        ] {
            assert!(ping_interval_of(bad).is_err(), "{bad}");
        }
    }
}
