//! Two nodes on one PostgreSQL log and one bus, for the multi-node tests.
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use std::time::Duration;

use serde_json::{Value, json};

use crate::pg::Postgres;
use crate::{
    Got, Server, Ws, delivery_body, driver, driver_connect, eventually, next, ping, send_json,
    staff, tracking_token, until_ack,
};

/// The configuration of a node on `pg`'s log with `redis` (a `[redis]` table).
#[must_use]
pub fn config(pg: &Postgres, redis: &str) -> String {
    format!("[postgres]\nurl = \"{}\"\n{redis}", pg.app_url())
}

/// Nodes A and B on `pg` and the bus `redis` (a `[redis]` table), a
/// delivery on its way with driver d1, and the driver connected to A; the
/// tracking token too.
///
/// # Panics
/// When any step fails.
pub async fn en_route_on_two(pg: &Postgres, redis: &str) -> (Server, Server, String, Ws) {
    pg.migrate();
    let a = Server::start_with(&config(pg, redis), &[]);
    let b = Server::start_node(&config(pg, redis), &[], Some(a.data_dir()));
    let disp = staff("acme", "dispatcher", "alice");
    let (_, created) = a
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    a.put("/v1/drivers/d1/route", &disp, &json!({"stops": ["rx-1"]}))
        .await;
    let (code, _) = a
        .post(
            "/v1/deliveries/rx-1/status",
            &disp,
            &json!({"status": "picked_up"}),
        )
        .await;
    assert_eq!(code, 200);
    assert!(
        eventually(Duration::from_secs(2), async || {
            b.get("/v1/deliveries/rx-1", &disp).await.1["status"] == "en_route"
        })
        .await
    );
    let drv = driver_connect(&a, &driver("acme", "d1", "phone-1")).await;
    (a, b, tracking_token(&created), drv)
}

/// Pings from the driver until `done` says so (or 10 s pass).
pub async fn drive_until(drv: &mut Ws, seq: &mut u64, mut done: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        *seq += 1;
        send_json(drv, &ping(*seq)).await;
        until_ack(drv).await;
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The next message with `type` within a second (`None`: none came). Used
/// between pings: positions are latest-wins, and one published just before
/// a node subscribed to its map cell is never seen; the next ping's is.
///
/// # Panics
/// When the socket closes.
pub async fn next_of(ws: &mut Ws, kind: &str) -> Option<Value> {
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        match tokio::time::timeout_at(until, next(ws, 10)).await {
            Ok(Got::Json(v)) if v["type"] == kind => return Some(v),
            Ok(Got::Json(_)) => {}
            Ok(Got::Closed(c)) => panic!("closed with {c:?}"),
            Err(_) => return None,
        }
    }
}
