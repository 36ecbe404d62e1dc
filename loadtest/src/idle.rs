//! Idle mode: hold many patient tracking sockets open and measure what each
//! costs the server in resident memory. Client sockets are spread over
//! several 127.0.0.x source addresses so that ephemeral ports do not run out.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::net::TcpSocket;

use crate::report::proc_sample;
use crate::run::{claims_for, create_delivery, mint};

/// What to hold open.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    pub url: String,
    pub tenant: String,
    pub secret: Vec<u8>,
    /// Sockets to open (one per delivery).
    pub sockets: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.`sources`.
    pub sources: u8,
    /// How long to hold them before measuring, after the last opened.
    pub settle: Duration,
    pub server_pid: u32,
}

/// What idle sockets cost.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IdleReport {
    pub sockets_open: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub bytes_per_socket: f64,
}

fn host_port(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("the url must be http://host:port"))?;
    Ok(rest.trim_end_matches('/').parse()?)
}

/// Creates the deliveries, opens the sockets, waits, and measures.
pub async fn run(cfg: IdleConfig) -> anyhow::Result<IdleReport> {
    let server = host_port(&cfg.url)?;
    let http = reqwest::Client::new();
    let dispatcher = mint(
        &cfg.secret,
        &claims_for(&cfg.tenant, "dispatcher", "loadtest-idle", None, 3600),
    );
    let run_id = std::process::id();
    let mut tokens = Vec::with_capacity(cfg.sockets);
    for i in 0..cfg.sockets {
        let body = json!({"id": format!("idle-{run_id}-{i}"),
            "pickup": {"lat": 60.1699, "lng": 24.9384, "radius_m": 60},
            "dropoff": {"lat": 60.1718, "lng": 24.9414, "radius_m": 40},
            "recipient": {"first_name": "Idle"}});
        tokens.push(create_delivery(&http, &cfg.url, &dispatcher, &body).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_before) = proc_sample(cfg.server_pid)
        .ok_or_else(|| anyhow::anyhow!("cannot read /proc for the server"))?;
    let mut open = Vec::with_capacity(cfg.sockets);
    for (i, token) in tokens.iter().enumerate() {
        let n = u8::try_from(i % usize::from(cfg.sources.max(1))).unwrap_or(0) + 1;
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 0))?;
        let stream = socket.connect(server).await?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            format!("ws://{server}/v1/track/{token}/ws"),
            stream,
            Some(crate::run::client_config()),
        )
        .await?;
        open.push(ws);
    }
    tokio::time::sleep(cfg.settle).await;
    let (_, rss_after) = proc_sample(cfg.server_pid)
        .ok_or_else(|| anyhow::anyhow!("cannot read /proc for the server"))?;
    let sockets_open = open.len();
    drop(open);
    Ok(IdleReport {
        sockets_open,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        bytes_per_socket: (rss_after.saturating_sub(rss_before) * 1024) as f64
            / sockets_open.max(1) as f64,
    })
}
