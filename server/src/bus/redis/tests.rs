//! The Redis bus against what another node may send, and against a real
//! `redis-server`.

use super::*;
use crate::domain::Status;

#[tokio::test]
async fn patient_channels_are_left_once_their_sockets_close() {
    let metrics = Arc::new(Metrics::new());
    let t = TenantId::parse("acme").unwrap();
    let local = LocalBus::new([t.clone()], metrics.clone());
    // Nothing listens there: the bus keeps trying in the background.
    let target = RedisTarget::One(crate::config::SecretUrl::for_tests("redis://127.0.0.1:1"));
    let bus = RedisBus::start(&target, local, metrics).unwrap();
    let id = DeliveryId::parse("rx-1").unwrap();
    let view = PatientSnapshot {
        status: Status::Scheduled,
        stops_before: None,
        eta: None,
        updating: false,
        display_name: None,
        updated_at: 0,
    };
    let rx = bus.subscribe_patient(&t, &id, &view);
    assert!(bus.stale_channels().is_empty(), "a socket still listens");
    drop(rx);
    assert_eq!(bus.stale_channels(), ["rxtrack:acme:patient:rx-1"]);
    assert!(bus.stale_channels().is_empty(), "forgotten once");
    assert_eq!(bus.reachable(), Some(false));
    // What another node sends is not trusted blindly: garbage, a wrong
    // shape, an unknown tenant or an out-of-range fix change nothing.
    for text in [
        "{not json",
        r#"{"k":"position"}"#,
        r#"{"k":"position","n":"x","t":"nobody","d":"d1","f":{"seq":1,"ts":0,"pos":{"lat":1.0,"lng":2.0},"acc":null,"speed":null,"heading":null}}"#,
        r#"{"k":"position","n":"x","t":"acme","d":"d1","f":{"seq":1,"ts":0,"pos":{"lat":95.0,"lng":2.0},"acc":null,"speed":null,"heading":null}}"#,
        r#"{"k":"kick","n":"x","t":"acme","d":"../etc","revoked":true}"#,
    ] {
        bus.receive(text);
    }
    // What this node writes per fix reads back as a position.
    let fix: Fix = serde_json::from_str(
        r#"{"seq":1,"ts":0,"pos":{"lat":60.0,"lng":24.0},"acc":null,"speed":null,"heading":null}"#,
    )
    .unwrap();
    let d = SubjectId::parse("d1").unwrap();
    let text = serde_json::to_string(&PositionRef {
        n: "x",
        t: &t,
        d: &d,
        f: &fix,
    })
    .unwrap();
    assert!(matches!(
        serde_json::from_str::<Wire>(&text),
        Ok(Wire::Position { n, .. }) if n == "x"
    ));
    let feed = bus.local.subscribe_dispatcher(&t).unwrap();
    let frame = feed.positions.positions_since(0, None, "drivers");
    assert!(frame.text.is_none(), "nothing was placed on the map");
}

#[tokio::test]
async fn delivery_and_cell_messages_from_another_node_are_checked() {
    let metrics = Arc::new(Metrics::new());
    let t = TenantId::parse("acme").unwrap();
    let local = LocalBus::new([t.clone()], metrics.clone());
    let target = RedisTarget::One(crate::config::SecretUrl::for_tests("redis://127.0.0.1:1"));
    let bus = RedisBus::start(&target, local, metrics).unwrap();
    let mut feed = bus.subscribe_dispatcher(&t).unwrap();
    let fix = serde_json::json!({"seq": 1, "ts": 0, "pos": {"lat": 60.0, "lng": 24.0},
                                 "acc": null, "speed": null, "heading": null});
    let fine_cell = h3o::LatLng::new(60.0, 24.0)
        .unwrap()
        .to_cell(h3o::Resolution::Fifteen)
        .to_string();
    let delivery = |v: &str| serde_json::json!({"k": "delivery", "n": "x", "t": "acme", "v": v});
    let cell = |c: &str| serde_json::json!({"k": "cell", "n": "x", "t": "acme", "c": c, "d": "d1", "f": fix});
    for msg in [
        delivery("{not json"),
        delivery(r#"{"type":"event","id":"rx-1"}"#),
        delivery(r#"{"type":"delivery","id":"../x","eta":{"from":1,"to":2}}"#),
        cell("not a cell"),
        // A cell, but not of the channels' resolution.
        cell(&fine_cell),
    ] {
        bus.receive(&msg.to_string());
    }
    assert!(
        feed.events.try_recv().is_err(),
        "nothing reached the dispatcher"
    );
    assert!(bus.estimates.lock().unwrap().is_empty());
    let frame = feed.positions.positions_since(0, None, "drivers");
    assert!(frame.text.is_none(), "nothing was placed on the map");
    // A well-formed estimate is shown and remembered.
    bus.receive(
        &delivery(r#"{"type":"delivery","id":"rx-1","status":"en_route","eta":{"from":1,"to":2},"eta_at":3}"#)
            .to_string(),
    );
    assert!(feed.events.try_recv().is_ok());
    assert_eq!(bus.estimates.lock().unwrap().len(), 1);
}

/// A Redis of the test's own on a free port (Debian's `redis-server`).
struct OwnRedis(std::process::Child, u16);

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is not installed (scripts/test installs it)");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child, port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn carried(seen: i64) -> Carried {
    serde_json::from_value(serde_json::json!({
        "detector": null,
        "live": {"pos": {"lat": 60.0, "lng": 24.0}, "seen": seen,
                 "speed": {"avg": null}, "heading": null},
    }))
    .unwrap()
}

#[tokio::test]
async fn carried_tracking_is_never_replaced_by_an_older_one() {
    let redis = OwnRedis::start();
    let metrics = Arc::new(Metrics::new());
    let t = TenantId::parse("acme").unwrap();
    let local = LocalBus::new([t.clone()], metrics.clone());
    let url = format!("redis://127.0.0.1:{}", redis.1);
    let target = RedisTarget::One(crate::config::SecretUrl::for_tests(&url));
    let bus = RedisBus::start(&target, local, metrics).unwrap();
    let d = SubjectId::parse("d1").unwrap();
    let stored = async || -> Option<i64> {
        let c = bus.carried(&t, &d).await?;
        c.seen().map(|s| s.0)
    };
    let mut until = 0;
    while stored().await != Some(200) && until < 100 {
        bus.carry(&t, &d, &carried(200));
        tokio::time::sleep(Duration::from_millis(50)).await;
        until += 1;
    }
    assert_eq!(stored().await, Some(200));
    // A node whose session ended late tells what it saw before.
    bus.carry(&t, &d, &carried(100));
    // A marker after it in the same queue: once it is stored, so was
    // (or was refused) the older one.
    bus.acked(&t, &crate::types::DeviceId::parse("p").unwrap(), 7);
    for _ in 0..100 {
        if bus
            .acked_seq(&t, &crate::types::DeviceId::parse("p").unwrap())
            .await
            == Some(7)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        stored().await,
        Some(200),
        "an older state replaced a newer one"
    );
    bus.carry(&t, &d, &carried(300));
    for _ in 0..100 {
        if stored().await == Some(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored().await, Some(300));
}
