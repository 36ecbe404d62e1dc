//! `rxtrack demo`: a node with a small simulated fleet on the real streets
//! of central Helsinki, so a newcomer sees the map move and a tracking link
//! count down. The drivers connect like any driver app, over real sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use loadtest::roads::RoadGraph;
use loadtest::sim::{Fleet, Out, SimConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::app::App;
use crate::auth::{AUDIENCE, Claims, Principal, Role, mint_hs256};
use crate::domain::{CreateDelivery, Fence, Recipient, StatusChange};
use crate::types::{DeliveryId, SubjectId, TenantId};

/// Central Helsinki's streets (© OpenStreetMap contributors, ODbL 1.0).
const HELSINKI: &[u8] = roads::HELSINKI;
/// Drop-offs per simulated driver.
const STOPS: usize = 3;

fn circle(p: (f64, f64), radius_m: f64) -> Fence {
    Fence {
        lat: Some(p.0),
        lng: Some(p.1),
        radius_m: Some(radius_m),
        polygon: None,
    }
}

fn tracking_token() -> anyhow::Result<String> {
    use base64::Engine as _;
    let mut raw = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| anyhow::anyhow!("the random generator failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// Plans the fleet, creates its deliveries and routes, and drives it until
/// the node shuts down. Returns the first tracking URLs to show.
pub async fn start(app: Arc<App>, addr: SocketAddr, drivers: usize) -> anyhow::Result<Vec<String>> {
    let graph = RoadGraph::from_pbf_bytes(HELSINKI, "helsinki-center.osm.pbf")?;
    let now = crate::clock::now();
    let cfg = SimConfig {
        drivers,
        stops_per_driver: STOPS,
        service_ms: 60_000,
        // The drivers have loaded at the pharmacy: the printed tracking
        // links count down from the first minute.
        pickup_ms: 0,
        start_at_pickup: true,
        dead_zone_per_minute: 0.02,
        ..SimConfig::default()
    };
    let seed = u64::try_from(now.0).unwrap_or(1);
    let fleet = Fleet::new(&graph, cfg, seed, now.0);
    let tenant_id = TenantId::parse(crate::config::DEMO_TENANT)?;
    let tenant = app
        .tenant(&tenant_id)
        .context("the demo tenant is configured")?;
    let secret = app
        .config
        .tenant(crate::config::DEMO_TENANT)
        .and_then(|t| t.hs256_secret.clone())
        .context("the demo tenant has a secret")?;
    let dispatcher = Principal {
        tenant: tenant_id.clone(),
        sub: SubjectId::parse("demo-dispatcher")?,
        role: Role::Dispatcher,
        device: None,
        exp: now.as_secs() + 3600,
        auth_time: Some(now.as_secs()),
    };
    let run = now.as_secs() % 100_000;
    let mut urls = Vec::new();
    let mut ids: Vec<Vec<DeliveryId>> = Vec::new();
    for d in &fleet.drivers {
        let mut stops = Vec::new();
        for (k, drop) in d.dropoffs.iter().enumerate() {
            let id = DeliveryId::parse(&format!("demo-{run}-{}-{k}", d.index))?;
            let token = tracking_token()?;
            let req = CreateDelivery {
                id: id.clone(),
                pickup: circle(d.pickup, 60.0),
                dropoff: circle(*drop, 40.0),
                recipient: Recipient {
                    first_name: "Demo".into(),
                },
                window: None,
            };
            let hash = crate::track::sha256_hex(&token);
            tenant
                .create(&dispatcher, req, hash, crate::clock::now())
                .await?;
            urls.push(format!("http://{addr}/t/{token}"));
            stops.push(id);
        }
        let driver = SubjectId::parse(&format!("driver-{}", d.index))?;
        tenant
            .assign_route(&dispatcher, &driver, &stops, crate::clock::now())
            .await?;
        for id in &stops {
            tenant
                .change_status(
                    &dispatcher,
                    id,
                    StatusChange::PickedUp,
                    None,
                    crate::clock::now(),
                )
                .await?;
        }
        ids.push(stops);
    }
    let app2 = app.clone();
    app.tracker.spawn(async move {
        if let Err(e) = drive(app2, addr, fleet, ids, &secret, dispatcher).await {
            tracing::warn!(error = %e, "the demo fleet stopped");
        }
    });
    Ok(urls)
}

async fn connect(addr: SocketAddr, token: &str) -> anyhow::Result<crate::ws::ClientSocket> {
    let mut req = format!("ws://{addr}/v1/driver/ws").into_client_request()?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("rxtrack.v1, bearer.{token}"))?,
    );
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
}

async fn drive(
    app: Arc<App>,
    addr: SocketAddr,
    mut fleet: Fleet,
    ids: Vec<Vec<DeliveryId>>,
    secret: &[u8],
    dispatcher: Principal,
) -> anyhow::Result<()> {
    let tenant = app.tenant(&dispatcher.tenant).context("demo tenant")?;
    let mut sockets = Vec::new();
    for d in &fleet.drivers {
        let now = crate::clock::now().as_secs();
        let claims = Claims {
            tid: dispatcher.tenant.to_string(),
            sub: format!("driver-{}", d.index),
            role: Role::Driver,
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + 12 * 3600,
            did: Some(format!("sim-{}", d.index)),
            auth_time: Some(now),
        };
        let (mut tx, mut rx) = connect(addr, &mint_hs256(secret, &claims)).await?.split();
        // Acks are read and dropped: the demo only needs the server to see the fleet.
        let shutdown = app.shutdown.clone();
        app.tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    m = rx.next() => if m.is_none() { return },
                }
            }
        });
        let _ = tx.flush().await;
        sockets.push(tx);
    }
    let mut delivered: Vec<Vec<bool>> = ids.iter().map(|s| vec![false; s.len()]).collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = app.shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let now = crate::clock::now();
        for (i, out) in fleet.step(now.0) {
            let msg = match out {
                Out::Ping(p) => {
                    serde_json::json!({"type": "ping", "seq": p.seq, "ts": p.ts, "lat": p.lat,
                    "lng": p.lng, "acc": p.acc, "speed": p.speed, "heading": p.heading})
                }
                Out::Batch(b) => serde_json::json!({"type": "batch", "pings": b}),
            };
            if let Some(s) = sockets.get_mut(i) {
                s.send(Message::Text(msg.to_string().into())).await?;
            }
        }
        // Doors are answered after the service time.
        for (i, d) in fleet.drivers.iter().enumerate() {
            let mut changes = Vec::new();
            for (k, arrived) in d.arrivals.iter().enumerate() {
                if arrived.is_some_and(|t| now.0 - t >= fleet.cfg.service_ms) && !delivered[i][k] {
                    delivered[i][k] = true;
                    changes.push((ids[i][k].clone(), StatusChange::Delivered));
                }
            }
            for (id, change) in changes {
                match tenant
                    .change_status(&dispatcher, &id, change, None, now)
                    .await
                {
                    Ok(_) | Err(crate::tenant::CommitError::Domain(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}
