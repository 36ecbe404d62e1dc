//! Patient tracking links against the real binary: snapshots, the live
//! socket through a whole delivery, minimum necessary exposure on every
//! message, identical 404s, revocation, rate limits and slow readers.
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

const DROPOFF: (f64, f64) = (60.1718, 24.9414);
const PICKUP: (f64, f64) = (60.1500, 24.9414);

/// Deterministic GPS noise of up to about ±4 m.
fn noise(i: u32, salt: u32) -> f64 {
    (f64::from((i * 7919 + salt * 104_729) % 11) - 5.0) * 8e-6
}

/// Every patient message: only the allowed keys, nothing that looks like a
/// coordinate or another party.
fn assert_minimal(msg: &Value) {
    let obj = msg.as_object().unwrap();
    for k in obj.keys() {
        assert!(
            [
                "status",
                "stops_before",
                "eta",
                "updating",
                "display_name",
                "updated_at"
            ]
            .contains(&k.as_str()),
            "key {k} in {msg}"
        );
    }
    let text = msg.to_string();
    for forbidden in [
        "lat",
        "lng",
        "60.17",
        "24.94",
        "d1",
        "phone",
        "Anneliese",
        "rx-2",
    ] {
        assert!(!text.contains(forbidden), "{forbidden} in {text}");
    }
    if let Some(eta) = msg["eta"].as_object() {
        // Whole 5 minutes, except a start that would be past: then the
        // current minute.
        let (from, to) = (eta["from"].as_i64().unwrap(), eta["to"].as_i64().unwrap());
        assert_eq!(to % 300_000, 0, "windows end on whole 5 minutes: {msg}");
        assert_eq!(from % 60_000, 0, "windows start on a whole minute: {msg}");
        let minute = now_ms() / 60_000 * 60_000;
        assert!(
            from >= minute - 60_000,
            "windows never start in the past: {msg}"
        );
        assert!(
            from % 300_000 == 0 || from <= minute + 60_000,
            "a start off the 5-minute grid is the current minute: {msg}"
        );
    }
}

async fn patient_next(ws: &mut Ws) -> Value {
    match next(ws, 15).await {
        Got::Json(v) => {
            assert_minimal(&v);
            v
        }
        Got::Closed(c) => panic!("patient socket closed with {c:?}"),
    }
}

#[tokio::test]
async fn a_patient_follows_the_whole_delivery() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    let mut body = delivery_body("rx-1");
    // The pharmacy lies on the way: the driver passes its fence after a minute.
    body["pickup"] = json!({"lat": PICKUP.0, "lng": PICKUP.1, "radius_m": 60});
    body["dropoff"] = json!({"lat": DROPOFF.0, "lng": DROPOFF.1, "radius_m": 40});
    let (_, created) = s.post("/v1/deliveries", &disp, &body).await;
    let token = tracking_token(&created);
    s.post("/v1/deliveries", &disp, &delivery_body("rx-2"))
        .await;

    let res = http()
        .get(s.url(&format!("/v1/track/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(res.headers()["referrer-policy"], "no-referrer");
    let snap: Value = res.json().await.unwrap();
    assert_minimal(&snap);
    assert_eq!(snap["status"], "scheduled");

    let mut patient = ws_connect(&s, &format!("/v1/track/{token}/ws"), "", Present::None).await;
    assert_eq!(patient_next(&mut patient).await["status"], "scheduled");
    // A dispatcher watches the same story.
    let mut dispatcher = ws_connect(&s, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    let dispatcher_seen = tokio::spawn(async move {
        let mut msgs: Vec<Value> = vec![];
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_secs(5), dispatcher.next()).await
        {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                msgs.push(serde_json::from_str(t.as_str()).unwrap());
            }
        }
        msgs
    });
    // On a route but not yet picked up: stops before it mean nothing yet,
    // so the patient is shown no change.
    s.put(
        "/v1/drivers/d1/route",
        &disp,
        &json!({"stops":["rx-2","rx-1"]}),
    )
    .await;
    s.post(
        "/v1/deliveries/rx-1/status",
        &disp,
        &json!({"status":"picked_up"}),
    )
    .await;
    let m = patient_next(&mut patient).await;
    assert_eq!(
        (
            m["status"].as_str(),
            m["updating"].as_bool(),
            m["stops_before"].as_u64()
        ),
        (Some("en_route"), Some(true), Some(1)),
        "{m}"
    );
    s.put("/v1/drivers/d1/route", &disp, &json!({"stops":["rx-1"]}))
        .await;
    assert_eq!(patient_next(&mut patient).await["stops_before"], 0);

    // The driver approaches from 3 km south at 10 m/s (past the pharmacy,
    // where it does not stop), then stands at the door.
    let mut driver_ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    let t0 = now_ms() - 400_000;
    let steps = 300u32;
    let pings: Vec<Value> = (0..=steps + 10)
        .map(|i| {
            let f = f64::from(steps.saturating_sub(i)) / f64::from(steps);
            json!({"type":"ping","seq": i + 1, "ts": t0 + i64::from(i) * 1000,
                   "lat": DROPOFF.0 - 0.027 * f + noise(i, 7), "lng": DROPOFF.1 + noise(i, 13) * 2.0, "acc": 5.0,
                   "speed": if i > steps { 0.0 } else { 10.0 }})
        })
        .collect();
    let mut seen = vec![];
    let mut views: Vec<Value> = vec![];
    let mut windows = vec![];
    let mut record = |v: &Value| {
        assert_minimal(v);
        if seen.last() != Some(&v["status"]) {
            seen.push(v["status"].clone());
        }
        if let Some(eta) = v["eta"].as_object() {
            windows.push((eta["from"].as_i64().unwrap(), eta["to"].as_i64().unwrap()));
        }
        let mut view = v.clone();
        view.as_object_mut().unwrap().remove("updated_at");
        views.push(view);
    };
    for chunk in pings.chunks(10) {
        send_json(&mut driver_ws, &json!({"type":"batch","pings":chunk})).await;
        until_ack(&mut driver_ws).await;
        while let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(20), patient.next()).await
        {
            record(&serde_json::from_str(t.as_str()).unwrap());
        }
    }
    s.post(
        "/v1/deliveries/rx-1/status",
        &disp,
        &json!({"status":"delivered"}),
    )
    .await;
    loop {
        let v = patient_next(&mut patient).await;
        record(&v);
        if v["status"] == "delivered" {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            json!("en_route"),
            json!("approaching"),
            json!("arrived"),
            json!("delivered")
        ],
        "{seen:?}"
    );
    assert!(
        windows.len() >= 2,
        "the ETA window was shown and updated: {windows:?}"
    );
    let first = windows.first().unwrap();
    let last = windows.last().unwrap();
    assert!(
        last.1 - last.0 <= first.1 - first.0,
        "windows shrink as the driver nears: {windows:?}"
    );
    for w in views.windows(2) {
        assert_ne!(
            w[0], w[1],
            "a snapshot is pushed only when what the patient sees changes"
        );
    }

    // Every opening is accounted for, and approaching is in the log once.
    let (_, ev) = s.get("/v1/deliveries/rx-1/events", &disp).await;
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "link.opened").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "dropoff.approaching")
            .count(),
        1,
        "{kinds:?}"
    );
    let opened = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "link.opened")
        .unwrap();
    assert_eq!(opened["actor"]["role"], "tracking_link");

    // The dispatcher saw the driver move and every event, including approaching.
    let msgs = dispatcher_seen.await.unwrap();
    let positions: usize = msgs
        .iter()
        .filter(|m| m["type"] == "drivers")
        .map(|m| m["drivers"].as_array().unwrap().len())
        .sum();
    // The drive is replayed faster than one frame per 200 ms: conflated, latest wins.
    assert!(positions >= 2, "dispatcher positions: {positions}");
    let last = msgs.iter().rfind(|m| m["type"] == "drivers").unwrap();
    assert!(
        (last["drivers"][0]["lat"].as_f64().unwrap() - DROPOFF.0).abs() < 1e-4,
        "{last}"
    );
    for kind in [
        "delivery.picked_up",
        "dropoff.approaching",
        "dropoff.arrived",
        "delivery.delivered",
    ] {
        assert!(
            msgs.iter()
                .any(|m| m["type"] == "event" && m["kind"] == kind),
            "dispatcher missed {kind}"
        );
    }
    // It drove past the pharmacy at road speed: that is not arriving there.
    for kind in ["pickup.arrived", "pickup.departed"] {
        assert!(!kinds.contains(&kind), "{kind}: {kinds:?}");
    }
    let arrived: Vec<&Value> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "dropoff.arrived")
        .collect();
    assert_eq!(arrived.len(), 1);
    assert!(
        arrived[0]["where"]["lat"].as_f64().is_some() && arrived[0]["actor"]["device"] == "phone-1"
    );
    let (_, report) = s
        .get("/v1/log/verify", staff("acme", "admin", "root"))
        .await;
    assert_eq!(report["ok"], true, "{report}");
    let m = http()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!m.contains("rxtrack_ping_to_fanout_seconds_count 0"), "{m}");

    // Revoked: the socket closes, and the link is a 404 like any other.
    let (code, _) = call(
        http()
            .post(s.url("/v1/deliveries/rx-1/link/revoke"))
            .bearer_auth(&disp),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(close_code(&mut patient, 10).await, Some(4404));
    let (code, revoked) = call(http().get(s.url(&format!("/v1/track/{token}")))).await;
    let (code2, guessed) =
        call(http().get(s.url("/v1/track/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))).await;
    let (code3, junk) = call(http().get(s.url(&format!("/v1/track/{}", "x.".repeat(300))))).await;
    assert_eq!((code, code2, code3), (404, 404, 404));
    assert_eq!(revoked, guessed);
    assert_eq!(guessed, junk);
}

#[tokio::test]
async fn lookups_are_rate_limited_and_slow_patients_are_closed() {
    let s = Server::start_with(
        "[limits]\nlink_lookup_burst = 6\nlink_lookups_per_minute = 1\nheartbeat_ms = 300\n",
        &[],
    );
    let disp = staff("acme", "dispatcher", "alice");
    let (_, created) = s
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    let token = tracking_token(&created);
    // A patient who reads, and one who never reads again.
    let mut reader = ws_connect(&s, &format!("/v1/track/{token}/ws"), "", Present::None).await;
    let mut stalled = ws_connect(&s, &format!("/v1/track/{token}/ws"), "", Present::None).await;
    patient_next(&mut reader).await;
    patient_next(&mut stalled).await;
    // The reader keeps reading (and so answers heartbeats) while the other stalls.
    s.post(
        "/v1/deliveries/rx-1/status",
        &disp,
        &json!({"status":"picked_up"}),
    )
    .await;
    assert_eq!(patient_next(&mut reader).await["status"], "en_route");
    // Heartbeats every 300 ms: the stalled one is closed after three go
    // unanswered. Keep reading until the server says so (a loaded machine
    // may take longer than the nominal second).
    let metrics_url = s.url("/metrics");
    let reading = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut m = String::new();
        while tokio::time::Instant::now() < deadline {
            let soon = tokio::time::Instant::now() + Duration::from_millis(200);
            while let Ok(Some(Ok(_))) = tokio::time::timeout_at(soon, reader.next()).await {}
            m = http()
                .get(&metrics_url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if m.contains("rxtrack_slow_closes_total 1") {
                break;
            }
        }
        (reader, m)
    });
    let (mut reader, m) = reading.await.unwrap();
    assert!(m.contains("rxtrack_slow_closes_total 1"), "{m}");
    // The stalled socket was closed with 4410 (after what it had not read).
    assert_eq!(close_code(&mut stalled, 5).await, Some(4410));
    // The reader is still served.
    s.post(
        "/v1/deliveries/rx-1/status",
        &disp,
        &json!({"status":"cancelled"}),
    )
    .await;
    assert_eq!(patient_next(&mut reader).await["status"], "cancelled");
    // Two lookups were spent by the sockets; the burst allows six in all.
    let mut codes = vec![];
    for _ in 0..6 {
        codes.push(
            call(http().get(s.url("/v1/track/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")))
                .await
                .0,
        );
    }
    assert_eq!(codes, [404, 404, 404, 404, 429, 429]);
}

#[tokio::test]
async fn links_expire_after_the_grace_period() {
    let s = Server::start_with("[limits]\nlink_grace_s = 1\n", &[]);
    let disp = staff("acme", "dispatcher", "alice");
    let (_, created) = s
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    let token = tracking_token(&created);
    s.post(
        "/v1/deliveries/rx-1/status",
        &disp,
        &json!({"status":"cancelled"}),
    )
    .await;
    let (code, snap) = call(http().get(s.url(&format!("/v1/track/{token}")))).await;
    assert_eq!((code, snap["status"].as_str()), (200, Some("cancelled")));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, expired) = call(http().get(s.url(&format!("/v1/track/{token}")))).await;
    let (_, guessed) = call(http().get(s.url("/v1/track/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))).await;
    assert_eq!(code, 404);
    assert_eq!(expired, guessed);
}

#[tokio::test]
async fn oversized_messages_close_subscriber_sockets_with_1009() {
    use futures_util::SinkExt as _;
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    let (_, created) = s
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    let token = tracking_token(&created);
    let mut patient = ws_connect(&s, &format!("/v1/track/{token}/ws"), "", Present::None).await;
    patient_next(&mut patient).await;
    let _ = patient
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "x".repeat(10_000).into(),
        ))
        .await;
    assert_eq!(close_code(&mut patient, 5).await, Some(1009));
    let mut map = ws_connect(&s, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    assert!(matches!(next(&mut map, 5).await, Got::Json(v) if v["type"] == "snapshot"));
    let _ = map
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "x".repeat(100_000).into(),
        ))
        .await;
    assert_eq!(close_code(&mut map, 5).await, Some(1009));
    // Others are unaffected.
    let (code, _) = call(http().get(s.url(&format!("/v1/track/{token}")))).await;
    assert_eq!(code, 200);
}
