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

fn postgres_config(pg: &Postgres) -> String {
    format!("[postgres]\nurl = \"{}\"\n", pg.app_url())
}

/// Node A, then node B on the same log and the same tenant keys.
fn two_nodes(pg: &Postgres) -> (Server, Server) {
    let a = Server::start_with(&postgres_config(pg), &[]);
    let b = Server::start_node(&postgres_config(pg), &[], Some(a.data_dir()));
    (a, b)
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
    pg.migrate();
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
    pg.migrate();
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
    pg.migrate();
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
    pg.migrate();
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

#[tokio::test]
async fn a_revoke_on_one_node_cuts_the_driver_on_another_and_watchers_follow() {
    let pg = Postgres::start();
    pg.migrate();
    let (a, b) = two_nodes(&pg);
    let disp = staff("acme", "dispatcher", "alice");
    let (_, created) = a
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    let token = tracking_token(&created);
    let (code, _) = a
        .put("/v1/drivers/d1/route", &disp, &json!({"stops": ["rx-1"]}))
        .await;
    assert_eq!(code, 200);
    // The driver on A; the patient and the live map on B.
    let mut drv = driver_connect(&a, &driver("acme", "d1", "phone-1")).await;
    send_json(&mut drv, &ping(1)).await;
    until_ack(&mut drv).await;
    assert!(
        eventually(Duration::from_secs(2), async || {
            b.get("/v1/deliveries/rx-1", &disp).await.1["driver_id"] == "d1"
        })
        .await
    );
    let mut patient = ws_connect(&b, &format!("/v1/track/{token}/ws"), "", Present::None).await;
    let Got::Json(first) = next(&mut patient, 10).await else {
        panic!("no snapshot")
    };
    assert_eq!(first["status"], "scheduled");
    let mut map = ws_connect(&b, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    let Got::Json(snap) = next(&mut map, 10).await else {
        panic!("no map snapshot")
    };
    assert_eq!(snap["type"], "snapshot");
    // A status change on A reaches B's patient and map, in order.
    for status in ["picked_up", "delivered"] {
        let (code, _) = a
            .post(
                "/v1/deliveries/rx-1/status",
                &disp,
                &json!({"status": status}),
            )
            .await;
        assert_eq!(code, 200);
    }
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("delivered") {
        let Got::Json(v) = next(&mut patient, 5).await else {
            panic!("patient closed")
        };
        seen.push(v["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        seen,
        ["en_route", "delivered"],
        "the patient on B saw {seen:?}"
    );
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let Got::Json(v) = next(&mut map, 5).await else {
            panic!("map closed")
        };
        if v["type"] == "event" {
            kinds.push(v["kind"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(kinds, ["delivery.picked_up", "delivery.delivered"]);
    // Revoked on B: the driver's socket on A closes within a second.
    let mut c = claims("acme", "admin", "root", None);
    c["auth_time"] = json!(now_s());
    let admin = token_with("acme", &c);
    let started = Instant::now();
    let (code, _) = call(
        http()
            .post(b.url("/v1/devices/phone-1/revoke"))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(close_code(&mut drv, 5).await, Some(4003));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the revoke took {:?} to reach node A",
        started.elapsed()
    );
}

#[tokio::test]
async fn with_postgres_down_nothing_is_acknowledged_and_it_resumes_when_back() {
    let pg = Postgres::start();
    pg.migrate();
    let mut a = Server::start_with(&postgres_config(&pg), &[]);
    let disp = staff("acme", "dispatcher", "alice");
    let (code, _) = a
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    assert_eq!(code, 201);
    pg.stop();
    let (code, body) = a
        .post("/v1/deliveries", &disp, &delivery_body("rx-2"))
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("log_unavailable")),
        "{body}"
    );
    assert_eq!(a.get("/v1/deliveries/rx-2", &disp).await.0, 404);
    assert!(
        eventually(Duration::from_secs(5), async || {
            http().get(a.url("/readyz")).send().await.unwrap().status() == 503
        })
        .await,
        "/readyz still says ready without the log"
    );
    pg.restart();
    assert!(
        eventually(Duration::from_secs(10), async || {
            a.post("/v1/deliveries", &disp, &delivery_body("rx-2"))
                .await
                .0
                == 201
        })
        .await,
        "no creation went through once PostgreSQL was back"
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            http().get(a.url("/readyz")).send().await.unwrap().status() == 200
        })
        .await
    );
    a.kill9();
    a.restart();
    for id in ["rx-1", "rx-2"] {
        assert_eq!(a.get(&format!("/v1/deliveries/{id}"), &disp).await.0, 200);
    }
    let report = verify(&pg);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["tenants"]["acme"]["events"], 2, "{report}");
}

#[test]
fn a_server_refuses_a_role_that_row_level_security_would_not_bind() {
    let pg = Postgres::start();
    pg.migrate();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acme.secret"), ACME_SECRET).unwrap();
    let config = dir.path().join("rxtrack.toml");
    let write = |url: &str| {
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[postgres]\nurl = \"{url}\"\n\
                 [[tenants]]\nid = \"acme\"\nhs256_secret_file = \"acme.secret\"\n"
            ),
        )
        .unwrap();
    };
    // The owner (here a superuser) sees every tenant's rows: refused.
    write(&pg.owner_url());
    let out = std::process::Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("row-level security"), "{err}");
    // A database without the schema: told to migrate.
    pg.sql("postgres", "CREATE DATABASE empty");
    write(&pg.url(APP_ROLE, "empty"));
    let out = std::process::Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rxtrack migrate"), "{err}");
}
