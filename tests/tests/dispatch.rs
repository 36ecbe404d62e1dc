//! The dispatcher live stream: snapshot, positions, delivery changes and log
//! events for the dispatcher's own tenant only, viewports, and roles.
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a story test reads top to bottom, step by step"
)]

use std::time::Duration;

use futures_util::StreamExt as _;
use rxtrack_tests::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Every JSON message that arrives within `ms`.
async fn drain(ws: &mut Ws, ms: u64) -> Vec<Value> {
    let mut out = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(t) = m {
            out.push(serde_json::from_str(t.as_str()).unwrap());
        }
    }
    out
}

fn positions(msgs: &[Value]) -> Vec<Value> {
    msgs.iter()
        .filter(|m| m["type"] == "drivers")
        .flat_map(|m| m["drivers"].as_array().unwrap().clone())
        .collect()
}

#[tokio::test]
async fn dispatchers_see_their_tenant_live_and_nothing_else() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    s.post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;

    let mut a = ws_connect(&s, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    let mut b = ws_connect(
        &s,
        "/v1/dispatch/ws",
        &staff("beta", "viewer", "bob"),
        Present::Header,
    )
    .await;
    let Got::Json(snap) = next(&mut a, 10).await else {
        panic!("no snapshot")
    };
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["deliveries"][0]["id"], "rx-1");
    assert!(
        snap["deliveries"][0]["dropoff"]["lat"].as_f64().is_some(),
        "dispatchers see fences: {snap}"
    );
    let Got::Json(snap_b) = next(&mut b, 10).await else {
        panic!("no snapshot")
    };
    assert_eq!(snap_b["deliveries"], json!([]));
    assert_eq!(snap_b["drivers"], json!([]));

    // A driver streams; the dispatcher sees its positions, newest last.
    let mut d = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    for seq in 1..=20u64 {
        send_json(&mut d, &ping(seq)).await;
        until_ack(&mut d).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let got = positions(&drain(&mut a, 600).await);
    assert!(
        got.len() >= 3,
        "positions arrive batched and conflated: {got:?}"
    );
    let last = got.last().unwrap();
    assert_eq!(last["driver_id"], "d1");
    let expected = ping(20)["lat"].as_f64().unwrap();
    assert!(
        (last["lat"].as_f64().unwrap() - expected).abs() < 1e-9,
        "latest wins: {last}"
    );

    // Delivery changes and log events arrive, never dropped.
    s.put("/v1/drivers/d1/route", &disp, &json!({"stops":["rx-1"]}))
        .await;
    s.post(
        "/v1/deliveries/rx-1/status",
        &disp,
        &json!({"status":"picked_up"}),
    )
    .await;
    let msgs = drain(&mut a, 800).await;
    let kinds: Vec<&str> = msgs
        .iter()
        .filter(|m| m["type"] == "event")
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["delivery.assigned", "delivery.picked_up"],
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m["type"] == "delivery" && m["id"] == "rx-1" && m["status"] == "en_route")
    );

    // Tenant beta heard none of it.
    assert_eq!(drain(&mut b, 300).await, Vec::<Value>::new());

    // A viewport far away filters positions out; one around the driver lets them in.
    send_json(
        &mut a,
        &json!({"type":"viewport","cells":["85283473fffffff"]}),
    )
    .await;
    drain(&mut a, 300).await;
    send_json(&mut d, &ping(21)).await;
    until_ack(&mut d).await;
    assert!(positions(&drain(&mut a, 500).await).is_empty());
    let helsinki_res5 = "851126d3fffffff";
    send_json(&mut a, &json!({"type":"viewport","cells":[helsinki_res5]})).await;
    let got = positions(&drain(&mut a, 500).await);
    assert_eq!(got.len(), 1, "{got:?}");

    // Bad viewports and wrong roles get their close codes.
    send_json(&mut a, &json!({"type":"viewport","cells":["not-a-cell"]})).await;
    assert_eq!(close_code(&mut a, 5).await, Some(4400));
    let mut wrong = ws_connect(
        &s,
        "/v1/dispatch/ws",
        &driver("acme", "d1", "phone-1"),
        Present::Subprotocol,
    )
    .await;
    assert_eq!(close_code(&mut wrong, 5).await, Some(4003));
    let mut staff_only = ws_connect(
        &s,
        "/v1/dispatch/ws",
        &staff("acme", "pharmacy_staff", "p"),
        Present::Header,
    )
    .await;
    assert_eq!(close_code(&mut staff_only, 5).await, Some(4003));
    let mut none = ws_connect(&s, "/v1/dispatch/ws", "", Present::None).await;
    assert_eq!(close_code(&mut none, 5).await, Some(4001));
}

#[tokio::test]
async fn a_large_tenant_still_gets_its_snapshot() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    let client = http();
    for i in 0..250 {
        let (code, _) = call(
            client
                .post(s.url("/v1/deliveries"))
                .bearer_auth(&disp)
                .json(&delivery_body(&format!("rx-{i}"))),
        )
        .await;
        assert_eq!(code, 201);
    }
    let mut a = ws_connect(&s, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    let Got::Json(snap) = next(&mut a, 10).await else {
        panic!("no snapshot")
    };
    assert_eq!(snap["deliveries"].as_array().unwrap().len(), 250);
    assert!(
        snap.to_string().len() > 64 * 1024,
        "the snapshot is larger than a small write buffer"
    );
}

#[tokio::test]
async fn dispatchers_see_the_window_patients_see_and_the_estimate_behind_it() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    let (_, created) = s
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    let token = tracking_token(&created);
    s.put("/v1/drivers/d1/route", &disp, &json!({"stops":["rx-1"]}))
        .await;
    s.post(
        "/v1/deliveries/rx-1/status",
        &disp,
        &json!({"status":"picked_up"}),
    )
    .await;
    let mut a = ws_connect(&s, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    let Got::Json(snap) = next(&mut a, 10).await else {
        panic!("no snapshot")
    };
    assert!(snap["deliveries"][0].get("eta_at").is_some(), "{snap}");
    // A fix about 1.3 km south of the door: the estimate and its window.
    let mut d = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    send_json(
        &mut d,
        &json!({"type":"ping","seq":1,"ts":now_ms(),"lat":60.160,"lng":24.9414,"speed":10.0}),
    )
    .await;
    until_ack(&mut d).await;
    let msgs = drain(&mut a, 800).await;
    let told = msgs
        .iter()
        .rfind(|m| m["type"] == "delivery" && m["id"] == "rx-1")
        .unwrap_or_else(|| panic!("no delivery message: {msgs:?}"));
    let (_, patient) = s.get(&format!("/v1/track/{token}"), "").await;
    assert_eq!(told["eta"], patient["eta"], "{told} vs {patient}");
    let at = told["eta_at"].as_i64().unwrap();
    let (from, to) = (
        told["eta"]["from"].as_i64().unwrap(),
        told["eta"]["to"].as_i64().unwrap(),
    );
    assert!(from <= at && at <= to, "{told}");
}

#[tokio::test]
async fn an_order_on_board_is_not_routed_through_the_pharmacy_for_a_later_one() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    // The pharmacy is 3 km south; rx-a is on board, rx-b still waits there.
    let mut on_board = delivery_body("rx-a");
    let mut waiting = delivery_body("rx-b");
    for body in [&mut on_board, &mut waiting] {
        body["pickup"] = json!({"lat": 60.1448, "lng": 24.9414, "radius_m": 60});
    }
    s.post("/v1/deliveries", &disp, &on_board).await;
    s.post("/v1/deliveries", &disp, &waiting).await;
    s.post(
        "/v1/deliveries/rx-a/status",
        &disp,
        &json!({"status":"picked_up"}),
    )
    .await;
    s.put(
        "/v1/drivers/d1/route",
        &disp,
        &json!({"stops":["rx-a", "rx-b"]}),
    )
    .await;
    // The driver is 450 m from rx-a's door, at 10 m/s.
    let mut app = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    let now = now_ms();
    send_json(
        &mut app,
        &json!({"type":"ping","seq":1,"ts":now,"lat":60.1678,"lng":24.9414,"speed":10.0}),
    )
    .await;
    until_ack(&mut app).await;
    let mut w = ws_connect(&s, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    let Got::Json(snap) = next(&mut w, 10).await else {
        panic!("no snapshot")
    };
    let eta_of = |id: &str| {
        snap["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .and_then(|d| d["eta_at"].as_i64())
            .unwrap_or_else(|| panic!("no eta_at for {id}: {snap}"))
    };
    // rx-a first, straight there: minutes, not a trip to the pharmacy and back.
    assert!(eta_of("rx-a") - now < 4 * 60_000, "{snap}");
    // rx-b after rx-a, then the pharmacy, then its door: well after.
    assert!(eta_of("rx-b") - eta_of("rx-a") > 10 * 60_000, "{snap}");
}
