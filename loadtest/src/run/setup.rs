//! Setting a run up: deliveries and routes through the API, and the
//! sockets of drivers, dispatchers and patients on the nodes.

use super::*;

pub(super) async fn connect(ws_base: &str, path: &str, token: Option<&str>) -> anyhow::Result<Ws> {
    let mut req = format!("{ws_base}{path}").into_client_request()?;
    if let Some(t) = token {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&format!("rxtrack.v1, bearer.{t}"))?,
        );
    }
    Ok(
        // Nagle off (as browsers and the server do): with it on, a small
        // frame sent while the previous one is unacknowledged waits for the
        // peer's delayed ACK, and the generator measured its own stalls.
        tokio_tungstenite::connect_async_with_config(req, Some(client_config()), true)
            .await?
            .0,
    )
}

/// Creates each driver's deliveries and route through the API, for many
/// drivers at once (as a pharmacy backend would); returns the tracking
/// tokens (with their driver) and each driver's delivery indices.
pub(super) async fn create_deliveries(
    cfg: &RunConfig,
    http: &reqwest::Client,
    dispatcher: &str,
    fleet: &Fleet,
    run_id: i64,
) -> anyhow::Result<(Vec<(usize, String)>, Vec<Vec<usize>>)> {
    const IN_FLIGHT: usize = 32;
    let per_driver: Vec<anyhow::Result<Vec<String>>> = futures_util::stream::iter(&fleet.drivers)
        .map(|d| create_route(cfg, http, dispatcher, d, run_id))
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let mut links: Vec<(usize, String)> = Vec::new();
    let mut delivery_of: Vec<Vec<usize>> = Vec::new();
    for (d, tokens) in fleet.drivers.iter().zip(per_driver) {
        let mut mine = Vec::new();
        for token in tokens? {
            mine.push(links.len());
            links.push((d.index, token));
        }
        delivery_of.push(mine);
    }
    Ok((links, delivery_of))
}

/// One driver's deliveries, route and pick-up; returns the tracking tokens.
pub(super) async fn create_route(
    cfg: &RunConfig,
    http: &reqwest::Client,
    dispatcher: &str,
    d: &SimDriver,
    run_id: i64,
) -> anyhow::Result<Vec<String>> {
    let mut stops = Vec::new();
    let mut tokens = Vec::new();
    for (k, drop) in d.dropoffs.iter().enumerate() {
        let id = delivery_id(run_id, d.index, k);
        let body = json!({"id": id,
            "pickup": {"lat": d.pickup.0, "lng": d.pickup.1, "radius_m": 60},
            "dropoff": {"lat": drop.0, "lng": drop.1, "radius_m": 40},
            "recipient": {"first_name": "Load"}});
        tokens.push(create_delivery(http, &cfg.url, dispatcher, &body).await?);
        stops.push(id);
    }
    let res = http
        .put(format!(
            "{}/v1/drivers/{}/route",
            cfg.url,
            driver_sub(run_id, d.index)
        ))
        .bearer_auth(dispatcher)
        .json(&json!({"stops": stops}))
        .send()
        .await?;
    anyhow::ensure!(
        res.status().is_success(),
        "assigning a route: {}",
        res.status()
    );
    Ok(tokens)
}

/// When each ping was sent, by driver and seq.
/// The ping interval a driver socket's first message (`config`) asks for,
/// within the range the server's configuration allows (a zero interval
/// would have the simulator send forever).
pub(super) fn ping_interval_of(hello: &str) -> anyhow::Result<i64> {
    let v: Value = serde_json::from_str(hello)
        .map_err(|e| anyhow::anyhow!("driver socket: the config message is not JSON: {e}"))?;
    v["ping_interval_ms"]
        .as_i64()
        .filter(|_| v["type"] == "config")
        .filter(|ms| (100..=600_000).contains(ms))
        .ok_or_else(|| anyhow::anyhow!("driver socket: expected the config message, got {v}"))
}

/// Connects one driver app; returns its writer, the task reading its acks,
/// and the ping interval the server asked for.
/// Every node's WebSocket base, `url` first.
pub(super) fn node_bases(cfg: &RunConfig) -> Vec<String> {
    std::iter::once(&cfg.url)
        .chain(&cfg.peers)
        .map(|u| u.replacen("http://", "ws://", 1))
        .collect()
}

/// A patient socket. `elsewhere`: on another node than the delivery was
/// created on, which learns of it from the shared log a moment later.
pub(super) async fn connect_patient(
    ws_base: &str,
    path: &str,
    elsewhere: bool,
) -> anyhow::Result<Ws> {
    let mut tries = 0;
    loop {
        match connect(ws_base, path, None).await {
            Ok(ws) => return Ok(ws),
            Err(_) if elsewhere && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

pub(super) async fn connect_driver(
    cfg: &RunConfig,
    ws_base: &str,
    i: usize,
    run_id: i64,
    shared: &Arc<Mutex<Shared>>,
    sent_at: &SentAt,
) -> anyhow::Result<(Writer, tokio::task::JoinHandle<()>, i64)> {
    let claims = claims_for(
        &cfg.tenant,
        "driver",
        &driver_sub(run_id, i),
        Some(&format!("lt{run_id}-p{i}")),
        3600,
    );
    let mut ws = connect(ws_base, "/v1/driver/ws", Some(&mint(&cfg.secret, &claims))).await?;
    // The server says first how often its drivers ping.
    let interval = match ws.next().await {
        Some(Ok(Message::Text(t))) => ping_interval_of(t.as_str())?,
        other => anyhow::bail!("driver socket: expected the config message, got {other:?}"),
    };
    let (tx, rx) = ws.split();
    Ok((
        tx,
        tokio::spawn(read_driver(rx, i, shared.clone(), sent_at.clone())),
        interval,
    ))
}

/// Creates a delivery through the API; returns its tracking token.
pub async fn create_delivery(
    http: &reqwest::Client,
    url: &str,
    dispatcher: &str,
    body: &Value,
) -> anyhow::Result<String> {
    let res = http
        .post(format!("{url}/v1/deliveries"))
        .bearer_auth(dispatcher)
        .json(body)
        .send()
        .await?;
    anyhow::ensure!(
        res.status().as_u16() == 201,
        "creating a delivery: {}",
        res.status()
    );
    let created: Value = res.json().await?;
    let url = created["tracking_url"].as_str().unwrap_or("");
    Ok(url.rsplit('/').next().unwrap_or("").to_owned())
}
