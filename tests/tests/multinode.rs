//! Several nodes on one PostgreSQL delivery log, with a PostgreSQL of the
//! test's own (`initdb`, `pg_ctl`, a free port): what one node changes,
//! every node shows; two nodes changing the same delivery at once never
//! fork the chain; the server's role cannot read another tenant's rows nor
//! change any; `kill -9` loses nothing a client was told.
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use std::time::{Duration, Instant};

use rxtrack_tests::pg::{APP_ROLE, DATABASE, Postgres};
use rxtrack_tests::*;
use serde_json::{Value, json};

/// Creates the schema and lets the application role insert and read.
fn migrate(pg: &Postgres) {
    let out = std::process::Command::new(binary())
        .args([
            "migrate",
            "--postgres",
            &pg.owner_url(),
            "--grant-to",
            APP_ROLE,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn postgres_config(pg: &Postgres) -> String {
    format!("[postgres]\nurl = \"{}\"\n", pg.app_url())
}

/// Node A, then node B on the same log and the same tenant keys.
fn two_nodes(pg: &Postgres) -> (Server, Server) {
    let a = Server::start_with(&postgres_config(pg), &[]);
    let b = Server::start_node(&postgres_config(pg), &[], Some(a.data_dir()));
    (a, b)
}

/// Polls `f` until it is true or `within` passes.
async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn verify(pg: &Postgres) -> Value {
    let out = std::process::Command::new(binary())
        .args(["log", "verify", "--postgres", &pg.owner_url()])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn what_one_node_changes_every_node_shows_within_a_second() {
    let pg = Postgres::start();
    migrate(&pg);
    let (a, b) = two_nodes(&pg);
    let disp = staff("acme", "dispatcher", "alice");
    let (code, created) = a
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    assert_eq!(code, 201, "{created}");
    let seen = eventually(Duration::from_secs(1), async || {
        b.get("/v1/deliveries/rx-1", &disp).await.0 == 200
    })
    .await;
    assert!(
        seen,
        "node B did not show node A's delivery within a second"
    );
    // Node B's change on top of it, shown by A; the tracking link made on
    // A opens on B, and a revoke on B closes it on A.
    let (code, _) = b
        .post(
            "/v1/deliveries/rx-1/status",
            &disp,
            &json!({"status": "picked_up"}),
        )
        .await;
    assert_eq!(code, 200);
    assert!(
        eventually(Duration::from_secs(1), async || {
            a.get("/v1/deliveries/rx-1", &disp).await.1["status"] == "en_route"
        })
        .await
    );
    let token = tracking_token(&created);
    let (code, _) = call(http().get(b.url(&format!("/v1/track/{token}")))).await;
    assert_eq!(code, 200);
    let (code, _) = b
        .post("/v1/deliveries/rx-1/link/revoke", &disp, &json!({}))
        .await;
    assert_eq!(code, 200);
    assert!(
        eventually(Duration::from_secs(1), async || {
            call(http().get(a.url(&format!("/v1/track/{token}"))))
                .await
                .0
                == 404
        })
        .await,
        "a link revoked on B still opened on A"
    );
    // Every event once, in one chain: created, picked up, the opening on
    // B, revoked.
    let report = verify(&pg);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["tenants"]["acme"]["events"], 4, "{report}");
}

#[tokio::test]
async fn two_nodes_racing_on_one_delivery_never_fork_the_chain() {
    let pg = Postgres::start();
    migrate(&pg);
    let (a, b) = two_nodes(&pg);
    let disp = staff("acme", "dispatcher", "alice");
    let rounds = 20;
    for i in 0..rounds {
        let id = format!("rx-{i}");
        let (code, _) = a.post("/v1/deliveries", &disp, &delivery_body(&id)).await;
        assert_eq!(code, 201);
        assert!(
            eventually(Duration::from_secs(2), async || {
                b.get(&format!("/v1/deliveries/{id}"), &disp).await.0 == 200
            })
            .await
        );
        let path = format!("/v1/deliveries/{id}/status");
        let (code, _) = a.post(&path, &disp, &json!({"status": "picked_up"})).await;
        assert_eq!(code, 200);
        assert!(
            eventually(Duration::from_secs(2), async || {
                b.get(&format!("/v1/deliveries/{id}"), &disp).await.1["status"] == "en_route"
            })
            .await
        );
        // At the same instant: A marks it delivered, B failed. Whichever
        // comes second finds it final: exactly one passes.
        let (delivered, failed) = (json!({"status": "delivered"}), json!({"status": "failed"}));
        let (ra, rb) = tokio::join!(
            a.post(&path, &disp, &delivered),
            b.post(&path, &disp, &failed),
        );
        let wins = [ra.0, rb.0].iter().filter(|c| **c == 200).count();
        let refused = [ra.0, rb.0].iter().filter(|c| **c == 409).count();
        assert_eq!((wins, refused), (1, 1), "round {i}: {ra:?} {rb:?}");
    }
    let report = verify(&pg);
    assert_eq!(report["ok"], true, "{report}");
    // Each round: created, picked up, and one final status.
    assert_eq!(report["tenants"]["acme"]["events"], rounds * 3, "{report}");
}

#[tokio::test]
async fn the_servers_role_sees_its_tenant_only_and_changes_nothing() {
    let pg = Postgres::start();
    migrate(&pg);
    let a = Server::start_with(&postgres_config(&pg), &[]);
    for (tenant, id) in [("acme", "rx-acme"), ("beta", "rx-beta")] {
        let t = staff(tenant, "dispatcher", "alice");
        let (code, _) = a.post("/v1/deliveries", &t, &delivery_body(id)).await;
        assert_eq!(code, 201);
    }
    let count = |sql: &str| {
        let out = pg.psql(APP_ROLE, DATABASE, sql);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // With beta set, acme's rows do not exist; with no tenant set, none do.
    let (ok, n, _) = count(
        "SELECT set_config('rxtrack.tenant', 'beta', false); \
         SELECT count(*) FROM delivery_events WHERE tenant = 'acme'",
    );
    assert!(ok);
    assert!(n.ends_with('0'), "beta's session read acme's rows: {n}");
    let (ok, n, _) = count("SELECT count(*) FROM delivery_events");
    assert!(ok && n == "0", "{n}");
    let (ok, n, _) = count(
        "SELECT set_config('rxtrack.tenant', 'beta', false); \
         SELECT count(*) FROM delivery_events",
    );
    assert!(ok && n.ends_with('1'), "{n}");
    // Writing another tenant's rows, or changing or removing any row, is refused.
    for sql in [
        "SELECT set_config('rxtrack.tenant', 'beta', false); \
         INSERT INTO delivery_events VALUES ('acme', 99, NULL, 0, 'x', 'y', '{}')",
        "SELECT set_config('rxtrack.tenant', 'beta', false); UPDATE delivery_events SET at = 0",
        "SELECT set_config('rxtrack.tenant', 'beta', false); DELETE FROM delivery_events",
    ] {
        let (ok, _, err) = count(sql);
        assert!(!ok, "{sql} was allowed");
        assert!(
            err.contains("row-level security") || err.contains("permission denied"),
            "{err}"
        );
    }
    assert_eq!(verify(&pg)["ok"], true);
}

#[tokio::test]
async fn kill_9_loses_nothing_a_client_was_told() {
    let pg = Postgres::start();
    migrate(&pg);
    let (mut a, b) = two_nodes(&pg);
    let disp = staff("acme", "dispatcher", "alice");
    let mut told = 0;
    for i in 0..30 {
        let (code, _) = a
            .post("/v1/deliveries", &disp, &delivery_body(&format!("rx-{i}")))
            .await;
        if code == 201 {
            told += 1;
        }
    }
    a.kill9();
    assert_eq!(told, 30);
    for i in 0..30 {
        let (code, _) = b.get(&format!("/v1/deliveries/rx-{i}"), &disp).await;
        assert_eq!(code, 200, "rx-{i} acknowledged by A, missing on B");
    }
    a.restart();
    let (code, _) = a.get("/v1/deliveries/rx-29", &disp).await;
    assert_eq!(code, 200);
    let report = verify(&pg);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["tenants"]["acme"]["events"], 30, "{report}");
}
