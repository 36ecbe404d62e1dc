//! The pharmacy backend API against the real binary: the whole story, the
//! role table, tenant isolation, the status machine, and hostile bodies.
#![allow(
    clippy::too_many_lines,
    reason = "a story test reads top to bottom, step by step"
)]
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use rxtrack_tests::*;
use serde_json::{Value, json};

async fn create(s: &Server, token: &str, body: &Value) -> (u16, Value) {
    s.post("/v1/deliveries", token, body).await
}

async fn status(s: &Server, token: &str, id: &str, body: &Value) -> (u16, Value) {
    s.post(&format!("/v1/deliveries/{id}/status"), token, body)
        .await
}

#[tokio::test]
async fn the_whole_ingest_story() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    let admin = staff("acme", "admin", "root");

    let (code, body) = create(&s, &disp, &delivery_body("rx-1001")).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["id"], "rx-1001");
    let url = body["tracking_url"].as_str().unwrap();
    let token = url
        .strip_prefix("https://track.example.test/t/")
        .expect("tracking URL on public_url");
    assert!(token.len() >= 22, "at least 128 bits: {token}");
    let (code, _) = create(&s, &disp, &delivery_body("rx-1002")).await;
    assert_eq!(code, 201);

    let (code, body) = s
        .put(
            "/v1/drivers/d1/route",
            &disp,
            &json!({"stops":["rx-1002","rx-1001"]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["stops"], json!(["rx-1002", "rx-1001"]));

    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-7")).await;
    let pings: Vec<_> = (1..=30).map(ping).collect();
    send_json(&mut ws, &json!({"type":"batch","pings":pings})).await;
    assert_eq!(until_ack(&mut ws).await, (30, vec![]));

    let (code, body) = status(
        &s,
        &staff("acme", "pharmacy_staff", "pat"),
        "rx-1001",
        &json!({"status":"picked_up"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "en_route");
    let (code, body) = status(&s, &disp, "rx-1001", &json!({"status":"delivered"})).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("delivered")));

    let (code, d) = s.get("/v1/deliveries/rx-1001", &disp).await;
    assert_eq!(code, 200);
    assert_eq!(d["status"], "delivered");
    assert_eq!(d["recipient"]["first_name"], "Anneliese");
    // Delivered: it left the route.
    let (_, d2) = s.get("/v1/deliveries/rx-1002", &disp).await;
    assert_eq!(
        (d2["driver_id"].as_str(), d2["stop"].as_u64()),
        (Some("d1"), Some(0))
    );

    let (code, ev) = s.get("/v1/deliveries/rx-1001/events", &disp).await;
    assert_eq!(code, 200);
    let kinds: Vec<_> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "delivery.created",
            "delivery.assigned",
            "delivery.picked_up",
            "delivery.delivered"
        ]
    );
    let first = &ev["events"][0];
    assert_eq!(first["actor"], json!({"role":"dispatcher","sub":"alice"}));
    assert_eq!(first["data"]["recipient"]["first_name"], "Anneliese");
    assert_eq!(ev["events"][2]["actor"]["role"], "pharmacy_staff");
    for w in ev["events"].as_array().unwrap().windows(2) {
        assert!(w[0]["seq"].as_u64() < w[1]["seq"].as_u64());
    }

    // Export (privileged) is itself logged, then streams NDJSON.
    let res = http()
        .get(s.url("/v1/log/export"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let text = res.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().all(|l| l["tenant"] == "acme"));
    assert_eq!(lines.last().unwrap()["kind"], "log.exported");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["kind"] == "delivery.created")
            .count(),
        2
    );
    let (code, from_to) = s
        .get(
            &format!(
                "/v1/log/export?from={}&to={}",
                now_ms() + 60_000,
                now_ms() + 120_000
            ),
            &admin,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(from_to, Value::String(String::new()));

    // Verify via the API and, after a clean stop, via the CLI.
    let (code, report) = s.get("/v1/log/verify", &admin).await;
    assert_eq!(code, 200);
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["tenants"]["acme"]["events"].as_u64().unwrap() >= 8);
    let out = s.cli(&["log", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // At rest, PHI is sealed: neither the name nor the coordinates are in the segment files.
    let mut raw = String::new();
    for e in std::fs::read_dir(s.data_dir().join("log")).unwrap() {
        raw.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    assert!(raw.contains("delivery.created"));
    for secret in ["Anneliese", "60.1699", "24.9384", "60.1718"] {
        assert!(!raw.contains(secret), "{secret} is in the log in plaintext");
    }
}

#[tokio::test]
async fn the_status_machine_refuses_invalid_transitions_with_409() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    create(&s, &disp, &delivery_body("rx-1")).await;
    let (code, body) = status(&s, &disp, "rx-1", &json!({"status":"delivered"})).await;
    assert_eq!(code, 409);
    assert_eq!(body["error"]["code"], "invalid_transition");
    assert_eq!(
        body["error"]["message"],
        "cannot change status from scheduled to delivered"
    );
    assert_eq!(
        status(
            &s,
            &disp,
            "rx-1",
            &json!({"status":"cancelled","reason":"patient moved"})
        )
        .await
        .0,
        200
    );
    let (code, body) = status(&s, &disp, "rx-1", &json!({"status":"picked_up"})).await;
    assert_eq!(code, 409);
    assert_eq!(
        body["error"]["message"],
        "cannot change status from cancelled to picked_up"
    );
    let (code, body) = status(&s, &disp, "rx-1", &json!({"status":"teleported"})).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    // A duplicate id is a conflict.
    let (code, body) = create(&s, &disp, &delivery_body("rx-1")).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("exists"))
    );
    // Routing a finished delivery or an unknown one is refused.
    let (code, _) = s
        .put("/v1/drivers/d1/route", &disp, &json!({"stops":["rx-1"]}))
        .await;
    assert_eq!(code, 400);
    let (code, _) = s
        .put("/v1/drivers/d1/route", &disp, &json!({"stops":["nope"]}))
        .await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn bodies_refuse_unknown_fields_and_hostile_values() {
    let s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    let mut with_diagnosis = delivery_body("rx-1");
    with_diagnosis["diagnosis"] = json!("hypertension");
    let mut in_recipient = delivery_body("rx-2");
    in_recipient["recipient"]["medication"] = json!("lisinopril");
    let mut bad_lat = delivery_body("rx-3");
    bad_lat["dropoff"]["lat"] = json!(123.0);
    let mut bad_radius = delivery_body("rx-4");
    bad_radius["pickup"]["radius_m"] = json!(-5);
    let mut bad_id = delivery_body("rx-5");
    bad_id["id"] = json!("../../etc/passwd");
    let mut both = delivery_body("rx-6");
    both["pickup"]["polygon"] = json!([[60.0, 24.0], [60.1, 24.0], [60.1, 24.1]]);
    let mut empty_name = delivery_body("rx-7");
    empty_name["recipient"]["first_name"] = json!("  ");
    let mut bad_window = delivery_body("rx-8");
    bad_window["window"] = json!({"from": 10, "to": 5});
    let mut lat_string = delivery_body("rx-9");
    lat_string["pickup"]["lat"] = json!("60.1");
    let mut bowtie = delivery_body("rx-10");
    bowtie["dropoff"] = json!({"polygon": [[60.170, 24.940], [60.174, 24.944], [60.174, 24.940], [60.170, 24.942]]});
    let mut county = delivery_body("rx-11");
    county["dropoff"] =
        json!({"polygon": [[60.0, 24.0], [60.0, 25.0], [60.5, 25.0], [60.5, 24.0]]});
    for (body, code, words) in [
        (with_diagnosis, "invalid_body", "unknown field `diagnosis`"),
        (in_recipient, "invalid_body", "unknown field `medication`"),
        (bad_lat, "invalid", "dropoff: lat out of range"),
        (bad_radius, "invalid", "radius_m"),
        (bad_id, "invalid_body", "delivery id"),
        (both, "invalid", "not both"),
        (empty_name, "invalid", "first_name"),
        (bad_window, "invalid", "window"),
        (lat_string, "invalid_body", "invalid type"),
        (bowtie, "invalid", "crosses"),
        (county, "invalid", "polygon"),
    ] {
        let (status, b) = create(&s, &disp, &body).await;
        assert_eq!(status, 400, "{b}");
        assert_eq!(b["error"]["code"], code, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(words),
            "{b}"
        );
    }
    // A polygon fence is accepted.
    let mut poly = delivery_body("rx-poly");
    poly["dropoff"] = json!({"polygon": [[60.1716, 24.9410], [60.1720, 24.9410], [60.1720, 24.9418], [60.1716, 24.9418]]});
    assert_eq!(create(&s, &disp, &poly).await.0, 201);

    // Malformed JSON, an empty body, and an oversized body.
    let (status, b) = call(
        http()
            .post(s.url("/v1/deliveries"))
            .bearer_auth(&disp)
            .body("{\"id\":"),
    )
    .await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    let (status, _) = call(http().post(s.url("/v1/deliveries")).bearer_auth(&disp)).await;
    assert_eq!(status, 400);
    let big = format!("{{\"id\":\"{}\"}}", "x".repeat(100 * 1024));
    let (status, b) = call(
        http()
            .post(s.url("/v1/deliveries"))
            .bearer_auth(&disp)
            .body(big),
    )
    .await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );
    // Unknown endpoints and methods answer in the same error format.
    let (status, b) = s.get("/v1/nothing", &disp).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = call(
        http()
            .delete(s.url("/v1/deliveries/rx-poly"))
            .bearer_auth(&disp),
    )
    .await;
    assert_eq!(status, 405);
    // A bad id in a path.
    let (status, b) = s.get("/v1/deliveries/a%20b", &disp).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (400, Some("invalid_id"))
    );
}

#[tokio::test]
async fn tenants_are_isolated_and_roles_enforced() {
    let s = Server::start();
    let a = staff("acme", "dispatcher", "alice");
    let b = staff("beta", "admin", "bob");
    assert_eq!(create(&s, &a, &delivery_body("rx-1")).await.0, 201);
    // Tenant beta sees nothing of acme's delivery: the same 404 as for a missing one.
    let (code, body) = s.get("/v1/deliveries/rx-1", &b).await;
    let (code2, body2) = s.get("/v1/deliveries/rx-404", &b).await;
    assert_eq!((code, code2), (404, 404));
    assert_eq!(body["error"]["code"], body2["error"]["code"]);
    assert_eq!(
        status(&s, &b, "rx-1", &json!({"status":"cancelled"}))
            .await
            .0,
        404
    );
    assert_eq!(s.get("/v1/deliveries/rx-1/events", &b).await.0, 404);
    // Beta may use the same id for its own delivery.
    assert_eq!(create(&s, &b, &delivery_body("rx-1")).await.0, 201);
    let (_, export) = s.get("/v1/log/export", &b).await;
    let text = export.as_str().unwrap().to_owned();
    assert!(
        text.lines().all(|l| l.contains("\"tenant\":\"beta\"")),
        "{text}"
    );

    // The role table.
    let viewer = staff("acme", "viewer", "v");
    let pharm = staff("acme", "pharmacy_staff", "p");
    assert_eq!(create(&s, &viewer, &delivery_body("rx-2")).await.0, 403);
    assert_eq!(s.get("/v1/deliveries/rx-1", &viewer).await.0, 200);
    assert_eq!(s.get("/v1/deliveries/rx-1/events", &viewer).await.0, 200);
    assert_eq!(
        status(&s, &viewer, "rx-1", &json!({"status":"cancelled"}))
            .await
            .0,
        403
    );
    assert_eq!(create(&s, &pharm, &delivery_body("rx-3")).await.0, 201);
    assert_eq!(
        status(&s, &pharm, "rx-3", &json!({"status":"cancelled"}))
            .await
            .0,
        403
    );
    assert_eq!(s.get("/v1/deliveries/rx-1/events", &pharm).await.0, 403);
    assert_eq!(
        s.put("/v1/drivers/d1/route", &pharm, &json!({"stops":[]}))
            .await
            .0,
        403
    );
    assert_eq!(s.get("/v1/log/export", &a).await.0, 403);
    assert_eq!(s.get("/v1/log/verify", &a).await.0, 403);
    assert_eq!(
        call(
            http()
                .post(s.url("/v1/devices/phone-1/revoke"))
                .bearer_auth(&a)
        )
        .await
        .0,
        403
    );
    // No token, a bad token.
    let (code, body) = call(http().get(s.url("/v1/deliveries/rx-1"))).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (code, _) = s.get("/v1/deliveries/rx-1", "x.y.z").await;
    assert_eq!(code, 401);
    // Staff lifetime cap (1 h).
    let mut c = claims("acme", "admin", "root", None);
    c["exp"] = json!(now_s() + 2 * 3600);
    let (code, body) = s.get("/v1/deliveries/rx-1", token_with("acme", &c)).await;
    assert_eq!(code, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lifetime"),
        "{body}"
    );
}

#[tokio::test]
async fn privileged_actions_need_a_recent_auth_time_and_revoke_cuts_the_device() {
    let s = Server::start();
    let mut stale = claims("acme", "admin", "root", None);
    stale["auth_time"] = json!(now_s() - 600);
    let stale = token_with("acme", &stale);
    let (code, body) = s.get("/v1/log/export", &stale).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (403, Some("reauthentication_required"))
    );
    let (code, _) = call(
        http()
            .post(s.url("/v1/devices/phone-1/revoke"))
            .bearer_auth(&stale),
    )
    .await;
    assert_eq!(code, 403);

    let admin = staff("acme", "admin", "root");
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    let mut other = driver_connect(&s, &driver("acme", "d2", "phone-2")).await;
    let started = std::time::Instant::now();
    let (code, body) = call(
        http()
            .post(s.url("/v1/devices/phone-1/revoke"))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(close_code(&mut ws, 5).await, Some(4003));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "closed within a second"
    );
    // Its tokens are refused from now on, even after a restart; others are unaffected.
    let mut again = ws_connect(
        &s,
        "/v1/driver/ws",
        &driver("acme", "d1", "phone-1"),
        Present::Subprotocol,
    )
    .await;
    assert_eq!(close_code(&mut again, 5).await, Some(4003));
    send_json(&mut other, &ping(1)).await;
    assert_eq!(until_ack(&mut other).await.0, 1);
    let (_, devices) = s.get("/v1/devices", &admin).await;
    let d = devices["devices"].as_array().unwrap();
    assert!(
        d.iter().any(|r| r["device_id"] == "phone-1"
            && r["revoked"] == true
            && r["connected"] == false),
        "{devices}"
    );
    let mut s = s;
    s.restart();
    let mut again = ws_connect(
        &s,
        "/v1/driver/ws",
        &driver("acme", "d1", "phone-1"),
        Present::Subprotocol,
    )
    .await;
    assert_eq!(close_code(&mut again, 5).await, Some(4003));
    let (_, events) = s.get("/v1/log/export", &admin).await;
    assert!(events.as_str().unwrap().contains("device.revoked"));
}

#[tokio::test]
async fn ed25519_tokens_of_a_configured_key_are_accepted() {
    use base64::Engine as _;
    use ring::signature::KeyPair as _;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public = base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref());
    let s = Server::start_with(
        &format!("[[tenants]]\nid = \"gamma\"\ned25519_public_keys = [\"{public}\"]\n"),
        &[],
    );
    let sign = |claims: &Value, alg: &str| {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signed = format!(
            "{}.{}",
            e.encode(format!("{{\"alg\":\"{alg}\"}}")),
            e.encode(claims.to_string())
        );
        format!(
            "{signed}.{}",
            e.encode(pair.sign(signed.as_bytes()).as_ref())
        )
    };
    let admin = sign(&claims("gamma", "dispatcher", "g1", None), "EdDSA");
    assert_eq!(create(&s, &admin, &delivery_body("rx-ed")).await.0, 201);
    let mut ws = driver_connect(
        &s,
        &sign(&claims("gamma", "driver", "d1", Some("phone-g")), "EdDSA"),
    )
    .await;
    send_json(&mut ws, &ping(1)).await;
    assert_eq!(until_ack(&mut ws).await.0, 1);
    // The same signature presented as HS256 is refused: keys are bound to one algorithm.
    let (code, _) = s
        .get(
            "/v1/deliveries/rx-ed",
            sign(&claims("gamma", "admin", "g", None), "HS256"),
        )
        .await;
    assert_eq!(code, 401);
    // An Ed25519 token claiming tenant acme (which has no Ed25519 key) is refused.
    let (code, _) = s
        .get(
            "/v1/deliveries/rx-ed",
            sign(&claims("acme", "admin", "g", None), "EdDSA"),
        )
        .await;
    assert_eq!(code, 401);
}
