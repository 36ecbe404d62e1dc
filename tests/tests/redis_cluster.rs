//! Two nodes on a Redis Cluster of three primaries (sharded pub/sub:
//! SPUBLISH/SSUBSCRIBE) and a PostgreSQL log, each engine the test's own:
//! positions, patient views and kicks cross the cluster; a primary killed
//! and restarted degrades the nodes, then they resynchronise.
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use std::time::Duration;

use rxtrack_tests::nodes::{self, drive_until, next_of};
use rxtrack_tests::pg::Postgres;
use rxtrack_tests::redis::RedisCluster;
use rxtrack_tests::*;
use serde_json::Value;

fn cluster_toml(c: &RedisCluster) -> String {
    let seeds: Vec<String> = c.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!("[redis]\ncluster = [{}]\n", seeds.join(", "))
}

/// The sharded subscribers of `channel` across the cluster.
fn shard_subscribers(c: &RedisCluster, channel: &str) -> u64 {
    c.nodes
        .iter()
        .filter_map(|n| {
            n.cli(&["PUBSUB", "SHARDNUMSUB", channel])
                .lines()
                .last()
                .and_then(|l| l.trim().parse::<u64>().ok())
        })
        .sum()
}

async fn status(s: &Server) -> Value {
    call(http().get(s.url("/readyz"))).await.1["status"].clone()
}

#[tokio::test]
async fn two_nodes_share_positions_views_and_kicks_through_a_redis_cluster() {
    let pg = Postgres::start();
    let mut cluster = RedisCluster::start();
    let (a, b, token, mut drv) = nodes::en_route_on_two(&pg, &cluster_toml(&cluster)).await;
    assert!(
        eventually(Duration::from_secs(5), async || status(&a).await == "ready"
            && status(&b).await == "ready")
        .await,
        "the nodes did not reach the cluster"
    );
    let disp = staff("acme", "dispatcher", "alice");
    let mut map = ws_connect(&b, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    next(&mut map, 10).await;
    let mut patient = ws_connect(&b, &format!("/v1/track/{token}/ws"), "", Present::None).await;
    next(&mut patient, 10).await;
    // B listens to the patient's channel on its shard.
    assert!(
        eventually(Duration::from_secs(3), async || shard_subscribers(
            &cluster,
            "rxtrack:acme:patient:rx-1"
        ) == 1)
        .await,
        "no sharded subscription for the patient"
    );
    // The driver drives on A; B's patient gets the window and B's map the
    // positions, through the cluster.
    let mut seq = 0;
    let mut window = Value::Null;
    assert!(
        drive_until(&mut drv, &mut seq, async || {
            if let Ok(Got::Json(v)) =
                tokio::time::timeout(Duration::from_millis(50), next(&mut patient, 1)).await
                && !v["eta"].is_null()
            {
                window = v["eta"].clone();
            }
            !window.is_null()
        })
        .await,
        "the patient on B never got the window node A computes"
    );
    assert!(
        drive_until(&mut drv, &mut seq, async || next_of(&mut map, "drivers")
            .await
            .is_some())
        .await,
        "positions did not cross the cluster"
    );
    // The same device connecting to B ends its session on A (replaced),
    // which only the bus can tell A.
    let mut moved = driver_connect(&b, &driver("acme", "d1", "phone-1")).await;
    assert_eq!(close_code(&mut drv, 5).await, Some(4409));

    // A primary dies: its shard's channels are gone; both nodes say so.
    cluster.kill(0);
    assert!(
        eventually(Duration::from_secs(10), async || status(&a).await
            == "degraded"
            && status(&b).await == "degraded")
        .await,
        "/readyz did not say degraded with a shard down"
    );
    let (code, _) = b.get("/v1/deliveries/rx-1", &disp).await;
    assert_eq!(code, 200, "B stops serving its own clients");
    cluster.restart(0);
    // Back: B's dispatcher resynchronises from a snapshot, and positions
    // from the driver (now on B) reach a map on A.
    assert_eq!(close_code(&mut map, 20).await, Some(4410));
    assert!(
        eventually(Duration::from_secs(10), async || status(&a).await
            == "ready"
            && status(&b).await == "ready")
        .await,
        "the nodes did not come back with the cluster"
    );
    let mut map_a = ws_connect(&a, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    next(&mut map_a, 10).await;
    assert!(
        drive_until(&mut moved, &mut seq, async || next_of(
            &mut map_a, "drivers"
        )
        .await
        .is_some())
        .await,
        "positions did not cross the cluster after it healed"
    );
}
