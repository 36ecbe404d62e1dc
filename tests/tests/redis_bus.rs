//! Several nodes with Redis as the bus between them (and PostgreSQL as the
//! log), each engine the test's own: a driver on node A, its dispatcher and
//! its patient on node B; Redis killed and restarted under them.
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use std::time::Duration;

use rxtrack_tests::nodes::{self, drive_until, next_of};
use rxtrack_tests::pg::Postgres;
use rxtrack_tests::redis::Redis;
use rxtrack_tests::*;
use serde_json::{Value, json};

fn config(pg: &Postgres, redis: &Redis) -> String {
    nodes::config(pg, &redis_toml(redis))
}

fn redis_toml(redis: &Redis) -> String {
    format!("[redis]\nurl = \"{}\"\n", redis.url())
}

async fn setup(pg: &Postgres, redis: &Redis) -> (Server, Server, String, Ws) {
    nodes::en_route_on_two(pg, &redis_toml(redis)).await
}

#[tokio::test]
async fn positions_and_eta_windows_reach_the_other_node() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let (_a, b, token, mut drv) = setup(&pg, &redis).await;
    let disp = staff("acme", "dispatcher", "alice");
    let mut map = ws_connect(&b, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    let Got::Json(snap) = next(&mut map, 10).await else {
        panic!("no snapshot")
    };
    assert_eq!(snap["type"], "snapshot");
    let mut patient = ws_connect(&b, &format!("/v1/track/{token}/ws"), "", Present::None).await;
    let Got::Json(first) = next(&mut patient, 10).await else {
        panic!("no patient snapshot")
    };
    assert_eq!(first["status"], "en_route");
    // The driver drives on node A; B's map and B's patient follow.
    let mut seq = 0;
    let mut window = Value::Null;
    let reached = drive_until(&mut drv, &mut seq, async || {
        if let Ok(Got::Json(v)) =
            tokio::time::timeout(Duration::from_millis(50), next(&mut patient, 1)).await
            && !v["eta"].is_null()
        {
            window = v["eta"].clone();
        }
        !window.is_null()
    })
    .await;
    assert!(
        reached,
        "the patient on B never got the window node A computes"
    );
    assert!(
        window["from"].is_string() || window["from"].is_number(),
        "{window}"
    );
    // B's map shows the driver, and the estimate node A computes from the
    // fixes: a delivery message with its window (the driver is on A; B
    // has no estimate of its own).
    let (mut frame, mut estimate) = (Value::Null, Value::Null);
    for _ in 0..300 {
        match tokio::time::timeout(Duration::from_millis(100), next(&mut map, 1)).await {
            Ok(Got::Json(v)) if v["type"] == "drivers" => frame = v,
            Ok(Got::Json(v))
                if v["type"] == "delivery" && v["id"] == "rx-1" && !v["eta"].is_null() =>
            {
                estimate = v;
            }
            Ok(Got::Closed(c)) => panic!("closed with {c:?}"),
            _ => {}
        }
        if !frame.is_null() && !estimate.is_null() {
            break;
        }
    }
    assert!(
        frame["drivers"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["driver_id"] == "d1")),
        "{frame}"
    );
    assert!(
        !estimate.is_null(),
        "B's dispatcher never got the estimate node A computes"
    );
    assert!(estimate["eta_at"].is_number(), "{estimate}");
    // What the patient sees never carries a position.
    assert!(first.get("lat").is_none() && window.get("lat").is_none());
}

#[tokio::test]
async fn a_redis_restart_degrades_then_resynchronises() {
    let pg = Postgres::start();
    let mut redis = Redis::start();
    let (a, b, _token, mut drv) = setup(&pg, &redis).await;
    let disp = staff("acme", "dispatcher", "alice");
    let mut map = ws_connect(&b, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    next(&mut map, 10).await;
    let mut seq = 0;
    assert!(
        drive_until(&mut drv, &mut seq, async || next_of(&mut map, "drivers")
            .await
            .is_some())
        .await
    );
    redis.kill();
    // B keeps serving its own clients, and says it is degraded.
    assert!(
        eventually(Duration::from_secs(5), async || {
            call(http().get(b.url("/readyz"))).await.1["status"] == "degraded"
        })
        .await,
        "/readyz did not say degraded without Redis"
    );
    let (code, _) = b.get("/v1/deliveries/rx-1", &disp).await;
    assert_eq!(code, 200);
    redis.restart();
    // Messages published during the gap are gone: B's dispatcher is told to
    // resynchronise (4410) and comes back to a snapshot and live positions.
    assert_eq!(close_code(&mut map, 15).await, Some(4410));
    // Both nodes reach Redis again (what A sent before would be lost).
    assert!(
        eventually(Duration::from_secs(5), async || {
            call(http().get(b.url("/readyz"))).await.1["status"] == "ready"
                && call(http().get(a.url("/readyz"))).await.1["status"] == "ready"
        })
        .await
    );
    let mut map = ws_connect(&b, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    let Got::Json(snap) = next(&mut map, 10).await else {
        panic!("no snapshot")
    };
    assert_eq!(snap["deliveries"].as_array().unwrap().len(), 1);
    assert!(
        drive_until(&mut drv, &mut seq, async || next_of(&mut map, "drivers")
            .await
            .is_some())
        .await,
        "positions did not cross nodes again after Redis came back"
    );
    let m = http()
        .get(b.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("rxtrack_bus_resyncs_total") && !l.ends_with(" 0")),
        "{m}"
    );
}

#[tokio::test]
async fn a_driver_moving_to_another_node_is_not_reapplied_what_was_acknowledged() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let (mut a, b, _token, mut drv) = setup(&pg, &redis).await;
    for seq in 1..=5 {
        send_json(&mut drv, &ping(seq)).await;
        until_ack(&mut drv).await;
    }
    // The cursor reaches Redis (asynchronously), then node A dies.
    let key = "rxtrack:acme:device:phone-1:acked";
    assert!(
        eventually(Duration::from_secs(5), async || {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &redis.port.to_string(), "GET", key])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim() == "5"
        })
        .await
    );
    a.kill9();
    // The app resends what it kept (3..5 were acknowledged by A) and more.
    let mut drv = driver_connect(&b, &driver("acme", "d1", "phone-1")).await;
    let pings: Vec<Value> = (3..=7).map(ping).collect();
    send_json(&mut drv, &json!({"type": "batch", "pings": pings})).await;
    let (acked, _) = until_ack(&mut drv).await;
    assert_eq!(acked, 7);
    let m = http()
        .get(b.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("rxtrack_pings_duplicate_total 3"), "{m}");
    assert!(m.contains("rxtrack_pings_accepted_total 2"), "{m}");
}

/// A fix at the drop-off of `delivery_body` (or `north` degrees north of it).
fn fix_at(seq: u64, ts: i64, north: f64, speed: f64) -> Value {
    json!({"type": "ping", "seq": seq, "ts": ts, "lat": 60.1718 + north, "lng": 24.9414,
           "acc": 5.0, "speed": speed})
}

#[tokio::test]
async fn kill_9_of_the_drivers_node_mid_visit_repeats_and_loses_no_proximity_event() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let (mut a, b, _token, mut drv) = setup(&pg, &redis).await;
    let disp = staff("acme", "dispatcher", "alice");
    // Device time a minute back, one fix a second: the driver comes to the
    // door and stands there; node A records the arrival.
    let t0 = now_ms() - 60_000;
    let mut seq = 0;
    let at = |seq: &mut u64, north: f64, speed: f64| {
        *seq += 1;
        fix_at(*seq, t0 + i64::try_from(*seq).unwrap() * 1000, north, speed)
    };
    for north in [0.004, 0.003, 0.002, 0.001] {
        send_json(&mut drv, &at(&mut seq, north, 10.0)).await;
        until_ack(&mut drv).await;
    }
    for _ in 0..8 {
        send_json(&mut drv, &at(&mut seq, 0.0, 0.0)).await;
        until_ack(&mut drv).await;
    }
    assert_eq!(
        a.get("/v1/deliveries/rx-1", &disp).await.1["status"],
        "arrived"
    );
    a.kill9();
    // On node B: still standing at the door, then driving off.
    let mut drv = driver_connect(&b, &driver("acme", "d1", "phone-1")).await;
    for _ in 0..8 {
        send_json(&mut drv, &at(&mut seq, 0.0, 0.0)).await;
        until_ack(&mut drv).await;
    }
    for i in 1..=10 {
        send_json(&mut drv, &at(&mut seq, 0.0004 * f64::from(i), 10.0)).await;
        until_ack(&mut drv).await;
    }
    assert!(
        eventually(Duration::from_secs(2), async || {
            // On its way again (and, this close, approaching again).
            b.get("/v1/deliveries/rx-1", &disp).await.1["status"] != "arrived"
        })
        .await,
        "leaving the door on node B was not recorded: {}",
        b.get("/v1/deliveries/rx-1/events", &disp).await.1
    );
    let (_, events) = b.get("/v1/deliveries/rx-1/events", &disp).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .filter(|k| k.starts_with("dropoff."))
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "dropoff.arrived").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "dropoff.departed").count(),
        1,
        "{kinds:?}"
    );
    let out = std::process::Command::new(binary())
        .args(["log", "verify", "--postgres", &pg.owner_url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn the_load_generator_drives_two_nodes_with_every_patient_on_the_other() {
    use loadtest::run::{RunConfig, run};
    let pg = Postgres::start();
    let redis = Redis::start();
    pg.migrate();
    let a = Server::start_with(&config(&pg, &redis), &[]);
    let b = Server::start_node(&config(&pg, &redis), &[], Some(a.data_dir()));
    let report = run(RunConfig {
        url: a.url(""),
        tenant: "acme".into(),
        secret: ACME_SECRET.as_bytes().to_vec(),
        drivers: 6,
        stops_per_driver: 1,
        duration: Duration::from_secs(5),
        seed: 7,
        dispatchers: 1,
        patients: true,
        server_pid: None,
        churn_per_s: 0,
        warmup: Duration::from_secs(1),
        extract: "helsinki",
        start_at_pickup: true,
        peers: vec![b.url("")],
    })
    .await
    .unwrap();
    assert_eq!(report.pings_acked, report.pings_sent, "{}", report.table());
    assert!(
        report.errors.is_empty() && report.closes.is_empty(),
        "{}",
        report.table()
    );
    assert_eq!(report.exposure_violations, 0);
    assert_eq!(report.statuses_out_of_order, 0);
    // Patients on the other node than their driver heard of its progress.
    assert!(
        report.ping_to_patient.is_some_and(|p| p.count > 0),
        "{}",
        report.table()
    );
}

// Multi-threaded: the proxies run on the test's runtime while starting a
// node blocks a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_postgres_and_redis_refuses_then_catches_up() {
    use rxtrack_tests::proxy::Proxy;
    let pg = Postgres::start();
    let redis = Redis::start();
    pg.migrate();
    let (pg_link, redis_link) = (Proxy::start(pg.port).await, Proxy::start(redis.port).await);
    // Node A reaches both engines through the proxies; node B directly.
    let through = format!(
        "[postgres]\nurl = \"postgres://rxtrack_app@127.0.0.1:{}/rxtrack\"\n[redis]\nurl = \"redis://127.0.0.1:{}\"\n",
        pg_link.port, redis_link.port
    );
    let a = Server::start_with(&through, &[]);
    let b = Server::start_node(&config(&pg, &redis), &[], Some(a.data_dir()));
    let disp = staff("acme", "dispatcher", "alice");
    assert_eq!(
        a.post("/v1/deliveries", &disp, &delivery_body("rx-1"))
            .await
            .0,
        201
    );

    pg_link.cut();
    redis_link.cut();
    let (code, body) = a
        .post("/v1/deliveries", &disp, &delivery_body("rx-2"))
        .await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(a.get("/v1/deliveries/rx-2", &disp).await.0, 404);
    assert!(
        eventually(Duration::from_secs(5), async || {
            http().get(a.url("/readyz")).send().await.unwrap().status() == 503
        })
        .await
    );
    // The other node is not held up by A's partition.
    assert_eq!(
        b.post("/v1/deliveries", &disp, &delivery_body("rx-3"))
            .await
            .0,
        201
    );

    pg_link.heal();
    redis_link.heal();
    assert!(
        eventually(Duration::from_secs(10), async || {
            a.post("/v1/deliveries", &disp, &delivery_body("rx-2"))
                .await
                .0
                == 201
        })
        .await,
        "node A did not write again after the partition healed"
    );
    // Each node has caught up with what the other wrote meanwhile.
    assert!(
        eventually(Duration::from_secs(5), async || {
            a.get("/v1/deliveries/rx-3", &disp).await.0 == 200
                && b.get("/v1/deliveries/rx-2", &disp).await.0 == 200
        })
        .await
    );
    let out = std::process::Command::new(binary())
        .args(["log", "verify", "--postgres", &pg.owner_url()])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["tenants"]["acme"]["events"], 3, "{report}");
}

#[tokio::test]
async fn the_link_lookup_limit_of_an_address_holds_across_nodes() {
    let pg = Postgres::start();
    let redis = Redis::start();
    pg.migrate();
    let limits = "[limits]\nlink_lookup_burst = 6\nlink_lookups_per_minute = 1\n";
    let cfg = format!("{limits}{}", config(&pg, &redis));
    let a = Server::start_with(&cfg, &[]);
    let b = Server::start_node(&cfg, &[], Some(a.data_dir()));
    let disp = staff("acme", "dispatcher", "alice");
    let (_, created) = a
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    let token = tracking_token(&created);
    assert!(
        eventually(Duration::from_secs(2), async || {
            b.get("/v1/deliveries/rx-1", &disp).await.0 == 200
        })
        .await
    );
    // Each node alone would let 6 through (12 in all); together they let
    // through 7 a minute (the burst and a minute's worth).
    let minute = || now_ms().div_euclid(60_000);
    let started = minute();
    let mut passed = 0;
    for i in 0..12 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (code, _) = call(http().get(node.url(&format!("/v1/track/{token}")))).await;
        assert!(code == 200 || code == 429, "{code}");
        passed += usize::from(code == 200);
    }
    if minute() == started {
        assert_eq!(passed, 7, "lookups from one address passed on two nodes");
    }
}

/// How many sockets subscribe to `channel` on `redis`.
fn subscribers(redis: &Redis, channel: &str) -> u64 {
    redis
        .cli(&["PUBSUB", "NUMSUB", channel])
        .lines()
        .last()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

/// The map cells the tenant's drivers were seen in.
fn cells(redis: &Redis) -> Vec<String> {
    let mut cells: Vec<String> = redis
        .cli(&["ZRANGE", "rxtrack:acme:cellset", "0", "-1"])
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    cells.sort();
    cells
}

#[tokio::test]
async fn a_node_subscribes_only_to_the_map_cells_its_dispatchers_watch() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let (a, b, _token, mut drv) = setup(&pg, &redis).await;
    let mut seq = 0;
    assert!(drive_until(&mut drv, &mut seq, async || !cells(&redis).is_empty()).await);
    let here = cells(&redis);
    assert_eq!(here.len(), 1, "{here:?}");
    let here = format!("rxtrack:acme:pos:{}", here[0]);
    // Nobody watches the map: nobody listens to positions.
    assert_eq!(subscribers(&redis, &here), 0);
    assert_eq!(subscribers(&redis, "rxtrack:acme:cells"), 0);

    // A dispatcher on B watching the whole map: B listens to the cell the
    // driver is in, and to news of cells.
    let disp = staff("acme", "dispatcher", "alice");
    let mut map = ws_connect(&b, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    next(&mut map, 10).await;
    assert!(
        eventually(Duration::from_secs(3), async || subscribers(&redis, &here)
            == 1)
        .await,
        "B did not subscribe to the driver's cell"
    );
    assert_eq!(subscribers(&redis, "rxtrack:acme:cells"), 1);
    assert!(
        drive_until(&mut drv, &mut seq, async || next_of(&mut map, "drivers")
            .await
            .is_some())
        .await
    );
    // A second driver appears elsewhere (another cell): B learns of the
    // cell and shows the driver.
    let mut far = driver_connect(&a, &driver("acme", "d2", "phone-2")).await;
    let far_ping = json!({"type":"ping","seq":1,"ts":now_ms(),"lat":60.45,"lng":22.27,"acc":5.0});
    send_json(&mut far, &far_ping).await;
    until_ack(&mut far).await;
    assert!(
        eventually(Duration::from_secs(3), async || cells(&redis).len() == 2).await,
        "the second cell was not told of"
    );
    let there = cells(&redis)
        .into_iter()
        .map(|c| format!("rxtrack:acme:pos:{c}"))
        .find(|c| *c != here)
        .unwrap();
    assert!(
        eventually(Duration::from_secs(3), async || subscribers(&redis, &there)
            == 1)
        .await,
        "B did not subscribe to the new cell"
    );
    let mut far_seq = 1;
    assert!(
        drive_until(&mut far, &mut far_seq, async || {
            next_of(&mut map, "drivers").await.is_some_and(|f| {
                f["drivers"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|d| d["driver_id"] == "d2"))
            })
        })
        .await,
        "the second driver never reached B's map"
    );

    // The dispatcher narrows its view to a far-away city: B leaves both
    // cells and the news of cells, and listens to that city only.
    let sf = "85283473fffffff";
    send_json(&mut map, &json!({"type": "viewport", "cells": [sf]})).await;
    let sf_channel = format!("rxtrack:acme:pos:{sf}");
    assert!(
        eventually(Duration::from_secs(3), async || subscribers(
            &redis,
            &sf_channel
        ) == 1)
        .await
    );
    assert!(
        eventually(Duration::from_secs(15), async || {
            subscribers(&redis, &here) == 0
                && subscribers(&redis, &there) == 0
                && subscribers(&redis, "rxtrack:acme:cells") == 0
        })
        .await,
        "B still listens to cells nobody watches"
    );
    // The dispatcher leaves: B listens to no positions at all.
    drop(map);
    assert!(
        eventually(Duration::from_secs(15), async || {
            redis
                .cli(&["PUBSUB", "CHANNELS", "rxtrack:acme:pos:*"])
                .trim()
                .is_empty()
        })
        .await,
        "B still listens to positions with no dispatcher left"
    );
}

#[tokio::test]
async fn a_stop_begun_on_one_node_and_finished_on_another_is_an_arrival() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let (mut a, b, _token, mut drv) = setup(&pg, &redis).await;
    let disp = staff("acme", "dispatcher", "alice");
    let t0 = now_ms() - 60_000;
    let mut seq = 0;
    let at = |seq: &mut u64, north: f64, speed: f64| {
        *seq += 1;
        fix_at(*seq, t0 + i64::try_from(*seq).unwrap() * 1000, north, speed)
    };
    // On node A: the driver comes to the door and stands there for two
    // seconds (a stop needs three before it counts).
    for north in [0.004, 0.003, 0.002, 0.001] {
        send_json(&mut drv, &at(&mut seq, north, 10.0)).await;
        until_ack(&mut drv).await;
    }
    for _ in 0..3 {
        send_json(&mut drv, &at(&mut seq, 0.0, 0.0)).await;
        until_ack(&mut drv).await;
    }
    // What A knows of the driver's stop (since when it is slow) reaches
    // Redis with the ack that changed it; then A dies.
    let slow_since = format!("\"slow_since\":{}", t0 + 5000);
    assert!(
        eventually(Duration::from_secs(5), async || {
            redis
                .cli(&["GET", "rxtrack:acme:driver:d1:carried"])
                .contains(&slow_since)
        })
        .await,
        "the driver's tracking state never reached Redis: {}",
        redis.cli(&["GET", "rxtrack:acme:driver:d1:carried"])
    );
    assert_eq!(
        a.get("/v1/deliveries/rx-1", &disp).await.1["status"],
        "approaching",
        "not arrived yet"
    );
    a.kill9();
    // On node B: standing three more seconds, then driving off. The stop
    // began on A: B carries on from A's detector and finds the arrival (a
    // detector of its own would have seen a stop too short to count).
    let mut drv = driver_connect(&b, &driver("acme", "d1", "phone-1")).await;
    for _ in 0..3 {
        send_json(&mut drv, &at(&mut seq, 0.0, 0.0)).await;
        until_ack(&mut drv).await;
    }
    for i in 1..=10 {
        send_json(&mut drv, &at(&mut seq, 0.0004 * f64::from(i), 10.0)).await;
        until_ack(&mut drv).await;
    }
    let (_, events) = b.get("/v1/deliveries/rx-1/events", &disp).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .filter(|k| *k == "dropoff.arrived" || *k == "dropoff.departed")
        .collect();
    assert_eq!(kinds, ["dropoff.arrived", "dropoff.departed"], "{events}");
}

/// Node `s`'s row of `device` in `GET /v1/devices`.
async fn device_row(s: &Server, device: &str) -> Value {
    let (_, devices) = s
        .get("/v1/devices", &staff("acme", "dispatcher", "alice"))
        .await;
    devices["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|r| r["device_id"] == device).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn every_node_lists_a_device_connected_to_another() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let (mut a, b, _token, mut drv) = setup(&pg, &redis).await;
    for seq in 1..=3 {
        send_json(&mut drv, &ping(seq)).await;
        until_ack(&mut drv).await;
    }
    // The driver is on A; B lists it connected at once, with its driver,
    // and its seq once A renews its report (every 5 s).
    assert!(
        eventually(Duration::from_secs(2), async || {
            let row = device_row(&b, "phone-1").await;
            row["connected"] == true && row["driver_id"] == "d1"
        })
        .await,
        "B does not list the device connected to A: {}",
        device_row(&b, "phone-1").await
    );
    assert!(
        eventually(Duration::from_secs(7), async || {
            let row = device_row(&b, "phone-1").await;
            row["connected"] == true && row["driver_id"] == "d1" && row["last_seq"] == 3
        })
        .await,
        "B does not list the device connected to A: {}",
        device_row(&b, "phone-1").await
    );
    // It leaves: B says so within a second or two.
    drop(drv);
    assert!(
        eventually(Duration::from_secs(3), async || device_row(&b, "phone-1")
            .await["connected"]
            == false)
        .await,
        "B still lists a device gone from A as connected"
    );
    // Connected again, then its node dies without a word: the report
    // lapses and B stops listing it as connected.
    let mut drv = driver_connect(&a, &driver("acme", "d1", "phone-1")).await;
    send_json(&mut drv, &ping(4)).await;
    until_ack(&mut drv).await;
    assert!(
        eventually(Duration::from_secs(3), async || device_row(&b, "phone-1")
            .await["connected"]
            == true)
        .await
    );
    a.kill9();
    assert!(
        eventually(Duration::from_secs(25), async || device_row(&b, "phone-1")
            .await["connected"]
            == false)
        .await,
        "a dead node's device is still listed as connected"
    );
    // Still listed, as A last reported it.
    assert_eq!(device_row(&b, "phone-1").await["driver_id"], "d1");
}
