//! Operations: health, readiness, metrics, zero-config start, and the rule
//! that no PHI (names, precise coordinates, tokens) reaches the server's output.
#![allow(
    clippy::too_many_lines,
    reason = "a story test reads top to bottom, step by step"
)]
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rxtrack_tests::*;
use serde_json::json;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = Server::start();
    let (code, body) = call(http().get(s.url("/healthz"))).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("ok")));
    let (code, body) = call(http().get(s.url("/readyz"))).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("ready")));

    let disp = staff("acme", "dispatcher", "alice");
    s.post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    s.get("/v1/deliveries/rx-1", "bad").await;
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    send_json(&mut ws, &ping(1)).await;
    until_ack(&mut ws).await;
    send_json(
        &mut ws,
        &json!({"type":"ping","seq":2,"ts":now_ms(),"lat":95.0,"lng":0.0}),
    )
    .await;
    until_ack(&mut ws).await;

    let res = http().get(s.url("/metrics")).send().await.unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let m = res.text().await.unwrap();
    for needle in [
        "rxtrack_connections{kind=\"driver\"} 1",
        "rxtrack_pings_accepted_total 1",
        "rxtrack_pings_rejected_total{reason=\"bad_ping\"} 1",
        "rxtrack_acks_sent_total 2",
        "rxtrack_log_appends_total 1",
        "rxtrack_log_fsync_seconds_count",
        "rxtrack_http_requests_total{method=\"POST\",route=\"/v1/deliveries\",status=\"201\"} 1",
        "rxtrack_http_requests_total{method=\"GET\",route=\"/v1/deliveries/{id}\",status=\"401\"} 1",
        "rxtrack_auth_failures_total{reason=\"malformed\"} 1",
        "rxtrack_deliveries_active 1",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    // Labels hold route templates, never concrete ids.
    assert!(!m.contains("rx-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_phi_reaches_the_servers_output() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    let admin = staff("acme", "admin", "root");
    let drv = driver("acme", "d1", "phone-1");
    // A distinctive name and coordinates that appear nowhere else.
    let body = json!({
        "id": "rx-phi",
        "pickup": {"lat": 60.167_341, "lng": 24.943_217, "radius_m": 60},
        "dropoff": {"lat": 60.171_893, "lng": 24.948_761, "radius_m": 40},
        "recipient": {"first_name": "Zbigniewa"}
    });
    let (_, created) = s.post("/v1/deliveries", &disp, &body).await;
    let tracking = created["tracking_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    s.put("/v1/drivers/d1/route", &disp, &json!({"stops":["rx-phi"]}))
        .await;
    let mut ws = driver_connect(&s, &drv).await;
    let pings: Vec<_> = (1..=20)
        .map(|i| json!({"type":"ping","seq":i,"ts":now_ms(),"lat":60.169_417 + f64::from(i) * 1e-6,"lng":24.945_523,"acc":5}))
        .collect();
    send_json(&mut ws, &json!({"type":"batch","pings":pings})).await;
    until_ack(&mut ws).await;
    // Hostile input too: errors must not echo PHI into the logs either.
    send_json(
        &mut ws,
        &json!({"type":"ping","seq":21,"ts":now_ms(),"lat":99.123_456,"lng":24.945_523}),
    )
    .await;
    until_ack(&mut ws).await;
    s.post(
        "/v1/deliveries/rx-phi/status",
        &disp,
        &json!({"status":"picked_up"}),
    )
    .await;
    s.post(
        "/v1/deliveries/rx-phi/status",
        &disp,
        &json!({"status":"failed","reason":"Zbigniewa not home"}),
    )
    .await;
    s.get("/v1/deliveries/rx-phi/events", &disp).await;
    s.get("/v1/log/export", &admin).await;
    call(http().get(s.url(&format!("/v1/track/{tracking}")))).await;
    call(http().get(s.url("/v1/track/not-a-real-token"))).await;
    call(http().get(s.url(&format!("/v1/driver/ws?token={drv}")))).await;
    let mut bad = json!({"id":"rx-2","recipient":{"first_name":"Zbigniewa"}});
    bad["diagnosis"] = json!("Zbigniewa");
    s.post("/v1/deliveries", &disp, &bad).await;
    drop(ws);
    let mut s = s;
    tokio::task::block_in_place(|| s.terminate());

    let out = s.output();
    assert!(
        out.contains("delivery log recovered"),
        "the capture saw the server's log:\n{out}"
    );
    for secret in [
        "Zbigniewa",
        "60.167",
        "24.943",
        "60.171",
        "24.948",
        "60.1694",
        "24.9455",
        "99.123",
        &disp,
        &drv,
        &admin,
        &tracking,
    ] {
        assert!(
            !out.contains(secret),
            "{secret:?} reached the server's output:\n{out}"
        );
    }
}

#[test]
fn zero_config_start_prints_a_quick_start_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("rxtrack listening on http://")
        .expect("listening line")
        .to_owned();
    let mut banner = String::new();
    for l in lines.by_ref().take(8) {
        banner.push_str(&l.unwrap());
        banner.push('\n');
    }
    assert!(banner.contains("demo tenant"), "{banner}");
    assert!(banner.contains("rxtrack token"), "{banner}");
    assert!(dir.path().join("rxtrack-data/demo-tenant.secret").exists());

    // A token minted by the CLI works against the running demo node.
    let token = Command::new(binary())
        .args(["token", "--role", "dispatcher", "--sub", "alice"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (code, body) = rt.block_on(async {
        call(
            http()
                .post(format!("http://{addr}/v1/deliveries"))
                .bearer_auth(&token)
                .json(&delivery_body("rx-1")),
        )
        .await
    });
    assert_eq!(code, 201, "{body}");
    assert!(
        body["tracking_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://{addr}/t/"))
    );
    assert!(terminate(&mut child).success());
}

#[tokio::test]
async fn silent_connections_are_dropped_at_the_authentication_deadline() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = Server::start_with("[limits]\nheader_timeout_ms = 500\n", &[]);
    let mut idle = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    slow.write_all(b"GET /v1/driver/ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Others are served meanwhile.
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    send_json(&mut ws, &ping(1)).await;
    assert_eq!(until_ack(&mut ws).await.0, 1);
    for conn in [&mut idle, &mut slow] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server kept a silent connection open");
    }
}

#[tokio::test]
async fn the_demo_fleet_moves_on_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--drivers",
            "2",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addr = String::new();
    let mut viewer = String::new();
    let mut tracking = String::new();
    while tracking.is_empty() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("demo output");
        if let Some(a) = line.strip_prefix("rxtrack listening on http://") {
            addr = a.to_owned();
        }
        if let Some(t) = line.split("viewer token: ").nth(1) {
            viewer = t.trim_end_matches(')').to_owned();
        }
        if let Some(u) = line.trim().strip_prefix(&format!("http://{addr}/t/")) {
            tracking = u.to_owned();
        }
    }
    // The link works, and the map shows the fleet moving.
    let (code, snap) = call(http().get(format!("http://{addr}/v1/track/{tracking}"))).await;
    assert_eq!(code, 200, "{snap}");
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/v1/dispatch/ws"),
    )
    .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("rxtrack.v1, bearer.{viewer}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut drivers = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while drivers.len() < 2 {
        let Got::Json(m) = tokio::time::timeout_at(deadline, next(&mut ws, 15))
            .await
            .expect("positions in time")
        else {
            panic!("map socket closed");
        };
        for d in m["drivers"].as_array().into_iter().flatten() {
            drivers.insert(d["driver_id"].as_str().unwrap().to_owned());
        }
    }
    assert!(terminate(&mut child).success());
}
