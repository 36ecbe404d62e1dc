//! Proximity events from real driver sockets: a driver drives past the pickup
//! and to the drop-off with GPS noise; the log gets each arrived/departed
//! event once, with the fix that decided it, whatever is replayed or restarted.
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]
#![allow(
    clippy::too_many_lines,
    reason = "a story test reads top to bottom, step by step"
)]

use rxtrack_tests::*;
use serde_json::{Value, json};

const PICKUP: (f64, f64) = (60.1699, 24.9384);
const DROPOFF: (f64, f64) = (60.1718, 24.9414);

/// A ping `seq` at a point, with a small deterministic GPS wobble, and the
/// speed the phone reports there (m/s).
fn ping_at(seq: u64, ts: i64, ((lat, lng), speed): ((f64, f64), f64)) -> Value {
    let wobble = ((seq * 7919) % 11) as f64 - 5.0; // -5..5
    json!({"type":"ping","seq":seq,"ts":ts,"lat":lat + wobble * 2e-6,"lng":lng + wobble * 3e-6,"acc":5.0,"speed":speed})
}

/// Driving at 9 m/s.
fn moving(points: Vec<(f64, f64)>) -> impl Iterator<Item = ((f64, f64), f64)> {
    points.into_iter().map(|p| (p, 9.0))
}

/// Standing at a point (the phone reports 0 m/s).
fn parked(at: (f64, f64), n: usize) -> impl Iterator<Item = ((f64, f64), f64)> {
    std::iter::repeat_n((at, 0.0), n)
}

/// Points from `a` to `b` in `n` steps (excluding `a`).
fn leg(a: (f64, f64), b: (f64, f64), n: u32) -> Vec<(f64, f64)> {
    (1..=n)
        .map(|i| {
            let t = f64::from(i) / f64::from(n);
            (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
        })
        .collect()
}

fn drive() -> Vec<((f64, f64), f64)> {
    let start = (PICKUP.0 - 0.0030, PICKUP.1); // about 330 m south
    moving(leg(start, PICKUP, 30))
        .chain(parked(PICKUP, 10)) // loading at the pharmacy
        .chain(moving(leg(PICKUP, DROPOFF, 30)))
        .chain(parked(DROPOFF, 15)) // at the door
        .collect()
}

async fn kinds(s: &Server, token: &str, id: &str) -> Vec<Value> {
    let (code, ev) = s.get(&format!("/v1/deliveries/{id}/events"), token).await;
    assert_eq!(code, 200, "{ev}");
    ev["events"].as_array().unwrap().clone()
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["kind"] == kind).count()
}

#[tokio::test]
async fn a_drive_past_the_pickup_to_the_dropoff() {
    let mut s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    let body = json!({
        "id": "rx-1",
        "pickup": {"lat": PICKUP.0, "lng": PICKUP.1, "radius_m": 60},
        "dropoff": {"lat": DROPOFF.0, "lng": DROPOFF.1, "radius_m": 40},
        "recipient": {"first_name": "Anneliese"}
    });
    assert_eq!(s.post("/v1/deliveries", &disp, &body).await.0, 201);
    let (code, _) = s
        .put("/v1/drivers/d1/route", &disp, &json!({"stops":["rx-1"]}))
        .await;
    assert_eq!(code, 200);

    let path = drive();
    let t0 = now_ms() - 200_000;
    let pings: Vec<Value> = path
        .iter()
        .enumerate()
        .zip(0i64..)
        .map(|((i, p), k)| ping_at(i as u64 + 1, t0 + k * 1000, *p))
        .collect();
    let n = pings.len() as u64;

    // Another driver, not on this route, drives the same way: no events for rx-1.
    let mut stranger = driver_connect(&s, &driver("acme", "d9", "phone-9")).await;
    send_json(&mut stranger, &json!({"type":"batch","pings":pings})).await;
    assert_eq!(until_ack(&mut stranger).await.0, n);
    assert_eq!(count(&kinds(&s, &disp, "rx-1").await, "pickup.arrived"), 0);

    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    // Up to the pharmacy, one ping at a time.
    for p in &pings[..40] {
        send_json(&mut ws, p).await;
        until_ack(&mut ws).await;
    }
    let ev = kinds(&s, &disp, "rx-1").await;
    assert_eq!(count(&ev, "pickup.arrived"), 1, "{ev:?}");
    let arrived = ev.iter().find(|e| e["kind"] == "pickup.arrived").unwrap();
    assert_eq!(
        arrived["actor"],
        json!({"role":"driver","sub":"d1","device":"phone-1"})
    );
    assert!(arrived["where"]["lat"].as_f64().is_some() && arrived["device_ts"].as_i64().is_some());
    assert_eq!(
        s.post(
            "/v1/deliveries/rx-1/status",
            &disp,
            &json!({"status":"picked_up"})
        )
        .await
        .0,
        200
    );

    // The rest as one batch (a dead zone), then the whole drive replayed.
    send_json(&mut ws, &json!({"type":"batch","pings":pings[40..]})).await;
    assert_eq!(until_ack(&mut ws).await.0, n);
    send_json(&mut ws, &json!({"type":"batch","pings":pings})).await;
    assert_eq!(until_ack(&mut ws).await.0, n);
    let ev = kinds(&s, &disp, "rx-1").await;
    for kind in ["pickup.arrived", "pickup.departed", "dropoff.arrived"] {
        assert_eq!(count(&ev, kind), 1, "{kind} in {ev:?}");
    }
    assert_eq!(count(&ev, "dropoff.departed"), 0);
    let order: Vec<&str> = ev.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let pos = |k: &str| order.iter().position(|x| *x == k).unwrap();
    assert!(
        pos("pickup.arrived") < pos("pickup.departed")
            && pos("pickup.departed") < pos("dropoff.arrived")
    );
    let (_, d) = s.get("/v1/deliveries/rx-1", &disp).await;
    assert_eq!(d["status"], "arrived");

    // A restart forgets the detector, not the log: still one dropoff.arrived.
    drop(ws);
    s.restart();
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    let more: Vec<Value> = (0..5)
        .map(|i| {
            ping_at(
                n + 1 + i,
                now_ms() - 5_000 + i.cast_signed() * 1000,
                (DROPOFF, 0.0),
            )
        })
        .collect();
    send_json(&mut ws, &json!({"type":"batch","pings":more})).await;
    until_ack(&mut ws).await;
    let ev = kinds(&s, &disp, "rx-1").await;
    assert_eq!(count(&ev, "dropoff.arrived"), 1, "{ev:?}");
    assert_eq!(
        s.post(
            "/v1/deliveries/rx-1/status",
            &disp,
            &json!({"status":"delivered"})
        )
        .await
        .0,
        200
    );
    let (_, report) = s
        .get("/v1/log/verify", staff("acme", "admin", "root"))
        .await;
    assert_eq!(report["ok"], true);
}

#[tokio::test]
async fn proximity_can_be_switched_off_to_measure_its_cost() {
    let s = Server::start_with("proximity = false\n", &[]);
    let disp = staff("acme", "dispatcher", "alice");
    let body = json!({
        "id": "rx-1",
        "pickup": {"lat": PICKUP.0, "lng": PICKUP.1, "radius_m": 60},
        "dropoff": {"lat": DROPOFF.0, "lng": DROPOFF.1, "radius_m": 40},
        "recipient": {"first_name": "Anneliese"}
    });
    s.post("/v1/deliveries", &disp, &body).await;
    s.put("/v1/drivers/d1/route", &disp, &json!({"stops":["rx-1"]}))
        .await;
    let t0 = now_ms() - 200_000;
    let pings: Vec<Value> = drive()
        .iter()
        .zip(0i64..)
        .map(|(p, k)| ping_at(u64::try_from(k).unwrap() + 1, t0 + k * 1000, *p))
        .collect();
    let n = pings.len() as u64;
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    send_json(&mut ws, &json!({"type":"batch","pings":pings})).await;
    assert_eq!(until_ack(&mut ws).await.0, n);
    let ev = kinds(&s, &disp, "rx-1").await;
    let names: Vec<&str> = ev.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(names, ["delivery.created", "delivery.assigned"]);
}

#[tokio::test]
async fn a_driver_waiting_at_a_busy_pharmacy_arrives_for_its_own_deliveries_only() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    // Forty deliveries leave from the same pharmacy: forty pickup fences at one spot.
    for k in 0..40 {
        let body = json!({
            "id": format!("rx-{k}"),
            "pickup": {"lat": PICKUP.0, "lng": PICKUP.1, "radius_m": 60},
            "dropoff": {"lat": DROPOFF.0, "lng": DROPOFF.1, "radius_m": 40},
            "recipient": {"first_name": "Anneliese"}
        });
        let (code, out) = s.post("/v1/deliveries", &disp, &body).await;
        assert_eq!(code, 201, "{out}");
    }
    // The driver waits at the pharmacy before anything is assigned to it.
    let t0 = now_ms() - 100_000;
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    let waiting: Vec<Value> = (0..20)
        .map(|i| ping_at(i + 1, t0 + i.cast_signed() * 1000, (PICKUP, 0.0)))
        .collect();
    send_json(&mut ws, &json!({"type":"batch","pings":waiting})).await;
    assert_eq!(until_ack(&mut ws).await.0, 20);
    for k in 0..40 {
        let id = format!("rx-{k}");
        assert_eq!(
            count(&kinds(&s, &disp, &id).await, "pickup.arrived"),
            0,
            "{id}"
        );
    }
    // Two deliveries are assigned to it while it is there: it arrives for
    // those two at its next fixes, and for no other.
    let (code, _) = s
        .put(
            "/v1/drivers/d1/route",
            &disp,
            &json!({"stops":["rx-7", "rx-31"]}),
        )
        .await;
    assert_eq!(code, 200);
    let more: Vec<Value> = (20..30)
        .map(|i| ping_at(i + 1, t0 + i.cast_signed() * 1000, (PICKUP, 0.0)))
        .collect();
    send_json(&mut ws, &json!({"type":"batch","pings":more})).await;
    assert_eq!(until_ack(&mut ws).await.0, 30);
    for k in 0..40 {
        let id = format!("rx-{k}");
        let expected = usize::from(k == 7 || k == 31);
        let ev = kinds(&s, &disp, &id).await;
        assert_eq!(count(&ev, "pickup.arrived"), expected, "{id}: {ev:?}");
    }

    // A third order is handed over while the driver is still there: it
    // arrives too (the pickup fence is one, shared by all forty), and the
    // first two do not arrive again.
    let (code, _) = s
        .put(
            "/v1/drivers/d1/route",
            &disp,
            &json!({"stops":["rx-7", "rx-31", "rx-12"]}),
        )
        .await;
    assert_eq!(code, 200);
    let more: Vec<Value> = (30..35)
        .map(|i| ping_at(i + 1, t0 + i.cast_signed() * 1000, (PICKUP, 0.0)))
        .collect();
    send_json(&mut ws, &json!({"type":"batch","pings":more})).await;
    assert_eq!(until_ack(&mut ws).await.0, 35);
    for (id, arrived) in [("rx-7", 1), ("rx-31", 1), ("rx-12", 1), ("rx-13", 0)] {
        let ev = kinds(&s, &disp, id).await;
        assert_eq!(count(&ev, "pickup.arrived"), arrived, "{id}: {ev:?}");
    }

    // rx-7 is cancelled; the fence stays for the others: driving off
    // departs rx-31 and rx-12, and nothing more is recorded for rx-7.
    let (code, out) = s
        .post(
            "/v1/deliveries/rx-7/status",
            &disp,
            &json!({"status":"cancelled"}),
        )
        .await;
    assert_eq!(code, 200, "{out}");
    let away: Vec<Value> = moving(leg(PICKUP, DROPOFF, 30))
        .zip(35u64..)
        .map(|(p, i)| ping_at(i + 1, t0 + i.cast_signed() * 1000, p))
        .collect();
    send_json(&mut ws, &json!({"type":"batch","pings":away})).await;
    assert_eq!(until_ack(&mut ws).await.0, 65);
    for (id, departed) in [("rx-7", 0), ("rx-31", 1), ("rx-12", 1)] {
        let ev = kinds(&s, &disp, id).await;
        assert_eq!(count(&ev, "pickup.departed"), departed, "{id}: {ev:?}");
    }
}

#[tokio::test]
async fn driving_past_a_later_stop_is_not_arriving_and_leaving_without_a_handover_is_on_the_way_again()
 {
    let mut s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    // rx-2's door lies on the way to rx-1's, which comes first on the route.
    let on_the_way = (
        f64::midpoint(PICKUP.0, DROPOFF.0),
        f64::midpoint(PICKUP.1, DROPOFF.1),
    );
    for (id, door) in [("rx-1", DROPOFF), ("rx-2", on_the_way)] {
        let body = json!({
            "id": id,
            "pickup": {"lat": PICKUP.0, "lng": PICKUP.1, "radius_m": 60},
            "dropoff": {"lat": door.0, "lng": door.1, "radius_m": 40},
            "recipient": {"first_name": "Anneliese"}
        });
        assert_eq!(s.post("/v1/deliveries", &disp, &body).await.0, 201);
        let (code, _) = s
            .post(
                &format!("/v1/deliveries/{id}/status"),
                &disp,
                &json!({"status":"picked_up"}),
            )
            .await;
        assert_eq!(code, 200);
    }
    let (code, _) = s
        .put(
            "/v1/drivers/d1/route",
            &disp,
            &json!({"stops":["rx-1","rx-2"]}),
        )
        .await;
    assert_eq!(code, 200);
    // Through rx-2's fence at 9 m/s to rx-1's door, a minute there, then
    // away again without handing anything over.
    let away = (DROPOFF.0 + 0.0030, DROPOFF.1);
    let path: Vec<((f64, f64), f64)> = moving(leg(PICKUP, DROPOFF, 30))
        .chain(parked(DROPOFF, 60))
        .chain(moving(leg(DROPOFF, away, 30)))
        .collect();
    let t0 = now_ms() - 200_000;
    let pings: Vec<Value> = path
        .iter()
        .zip(0i64..)
        .map(|(p, k)| ping_at(u64::try_from(k).unwrap() + 1, t0 + k * 1000, *p))
        .collect();
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    send_json(&mut ws, &json!({"type":"batch","pings":pings[..40]})).await;
    assert_eq!(until_ack(&mut ws).await.0, 40);
    let ev = kinds(&s, &disp, "rx-2").await;
    assert_eq!(count(&ev, "dropoff.arrived"), 0, "drove past rx-2: {ev:?}");
    let ev = kinds(&s, &disp, "rx-1").await;
    assert_eq!(count(&ev, "dropoff.arrived"), 1, "stopped at rx-1: {ev:?}");
    assert_eq!(
        s.get("/v1/deliveries/rx-1", &disp).await.1["status"],
        "arrived"
    );
    let rx2 = s.get("/v1/deliveries/rx-2", &disp).await.1["status"].clone();
    assert!(rx2 == "en_route" || rx2 == "approaching", "{rx2}");

    send_json(&mut ws, &json!({"type":"batch","pings":pings[40..]})).await;
    assert_eq!(until_ack(&mut ws).await.0, pings.len() as u64);
    let ev = kinds(&s, &disp, "rx-1").await;
    assert_eq!(count(&ev, "dropoff.departed"), 1, "{ev:?}");
    // Left without a status change: on the way again (and, this close,
    // approaching again), not "arrived" forever.
    let status = s.get("/v1/deliveries/rx-1", &disp).await.1["status"].clone();
    assert!(status == "en_route" || status == "approaching", "{status}");
    assert_eq!(count(&kinds(&s, &disp, "rx-2").await, "dropoff.arrived"), 0);
    // The same holds after a restart, which rebuilds the state from the log.
    drop(ws);
    s.restart();
    let after = s.get("/v1/deliveries/rx-1", &disp).await.1["status"].clone();
    assert_eq!(after, status);
}

#[tokio::test]
async fn two_doors_in_one_fence_arrive_in_route_order_and_none_before_the_pickup() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    // rx-2's door is 15 m from rx-1's, well inside its 40 m fence; rx-3's
    // door is next to the pharmacy, and rx-3 is not picked up yet.
    let next_door = (DROPOFF.0 + 0.000_135, DROPOFF.1);
    let by_the_pharmacy = (PICKUP.0 + 0.000_1, PICKUP.1);
    for (id, door) in [
        ("rx-1", DROPOFF),
        ("rx-2", next_door),
        ("rx-3", by_the_pharmacy),
    ] {
        let body = json!({
            "id": id,
            "pickup": {"lat": PICKUP.0, "lng": PICKUP.1, "radius_m": 60},
            "dropoff": {"lat": door.0, "lng": door.1, "radius_m": 40},
            "recipient": {"first_name": "Anneliese"}
        });
        assert_eq!(s.post("/v1/deliveries", &disp, &body).await.0, 201);
    }
    for id in ["rx-1", "rx-2"] {
        let (code, _) = s
            .post(
                &format!("/v1/deliveries/{id}/status"),
                &disp,
                &json!({"status":"picked_up"}),
            )
            .await;
        assert_eq!(code, 200);
    }
    let (code, _) = s
        .put(
            "/v1/drivers/d1/route",
            &disp,
            &json!({"stops":["rx-3", "rx-1", "rx-2"]}),
        )
        .await;
    assert_eq!(code, 200);
    let t0 = now_ms() - 300_000;
    let mut seq = 0u64;
    let mut batch = |path: Vec<((f64, f64), f64)>| -> Value {
        let pings: Vec<Value> = path
            .into_iter()
            .map(|p| {
                seq += 1;
                ping_at(seq, t0 + i64::try_from(seq).unwrap() * 1000, p)
            })
            .collect();
        json!({"type":"batch","pings":pings})
    };
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    // A minute at the pharmacy, in rx-3's drop-off fence: not an arrival
    // of an order still waiting there.
    send_json(&mut ws, &batch(parked(PICKUP, 60).collect())).await;
    until_ack(&mut ws).await;
    assert_eq!(count(&kinds(&s, &disp, "rx-3").await, "dropoff.arrived"), 0);
    // Parked at rx-1's door: rx-1 arrives, rx-2 (same fence, later on the
    // route) does not yet.
    let drive = batch(
        moving(leg(PICKUP, DROPOFF, 30))
            .chain(parked(DROPOFF, 20))
            .collect(),
    );
    send_json(&mut ws, &drive).await;
    until_ack(&mut ws).await;
    assert_eq!(count(&kinds(&s, &disp, "rx-1").await, "dropoff.arrived"), 1);
    assert_eq!(count(&kinds(&s, &disp, "rx-2").await, "dropoff.arrived"), 0);
    // rx-1 is handed over; the driver walks to the next door without moving
    // the car: now rx-2 has arrived.
    let (code, _) = s
        .post(
            "/v1/deliveries/rx-1/status",
            &disp,
            &json!({"status":"delivered"}),
        )
        .await;
    assert_eq!(code, 200);
    send_json(&mut ws, &batch(parked(DROPOFF, 5).collect())).await;
    until_ack(&mut ws).await;
    let ev = kinds(&s, &disp, "rx-2").await;
    assert_eq!(count(&ev, "dropoff.arrived"), 1, "{ev:?}");
    assert_eq!(
        s.get("/v1/deliveries/rx-2", &disp).await.1["status"],
        "arrived"
    );
}
