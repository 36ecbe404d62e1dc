//! The driver stream against the real binary: acks, dedupe, limits, and
//! every kind of hostile input, each with its precise error or close code,
//! while another driver on the same server keeps being served.
#![allow(
    clippy::too_many_lines,
    reason = "a story test reads top to bottom, step by step"
)]
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use futures_util::SinkExt as _;
use rxtrack_tests::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A second driver that must keep getting acks while others misbehave.
async fn still_served(ws: &mut Ws, seq: &mut u64) {
    *seq += 1;
    send_json(ws, &ping(*seq)).await;
    assert_eq!(
        until_ack(ws).await.0,
        *seq,
        "the well-behaved driver stopped being served"
    );
}

#[tokio::test]
async fn pings_are_acked_cumulatively_and_replays_are_not_applied_twice() {
    let s = Server::start();
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    for seq in 1..=3 {
        send_json(&mut ws, &ping(seq)).await;
        assert_eq!(until_ack(&mut ws).await, (seq, vec![]));
    }
    // A replayed batch (after a reconnect, say) is acknowledged without effect.
    let batch = json!({"type":"batch","pings":[ping(2), ping(3), ping(4), ping(5)]});
    send_json(&mut ws, &batch).await;
    assert_eq!(until_ack(&mut ws).await, (5, vec![]));
    send_json(&mut ws, &ping(1)).await;
    assert_eq!(until_ack(&mut ws).await.0, 5);

    let metrics = http()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("rxtrack_pings_accepted_total 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rxtrack_pings_duplicate_total 3"),
        "{metrics}"
    );

    // The device state survives a reconnect: old seqs stay duplicates.
    drop(ws);
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    send_json(&mut ws, &ping(5)).await;
    assert_eq!(until_ack(&mut ws).await.0, 5);
    let (_, devices) = s
        .get("/v1/devices", staff("acme", "dispatcher", "u1"))
        .await;
    assert_eq!(devices["devices"][0]["device_id"], "phone-1");
    assert_eq!(devices["devices"][0]["last_seq"], 5);
    assert_eq!(devices["devices"][0]["connected"], true);
}

#[tokio::test]
async fn the_token_may_come_as_a_header_and_never_in_the_query() {
    let s = Server::start();
    let token = driver("acme", "d1", "phone-1");
    let mut ws = ws_connect(&s, "/v1/driver/ws", &token, Present::Header).await;
    assert!(matches!(next(&mut ws, 10).await, Got::Json(v) if v["type"] == "config"));
    let (status, body) = call(http().get(s.url(&format!("/v1/driver/ws?token={token}")))).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "token_in_query");
    let (status, _) =
        call(http().get(s.url(&format!("/v1/deliveries/x?access_token={token}")))).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn bad_pings_get_precise_errors_and_the_socket_lives_on() {
    let s = Server::start();
    let mut other = driver_connect(&s, &driver("acme", "d2", "phone-2")).await;
    let mut other_seq = 0;
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    let now = now_ms();
    let cases = [
        (
            json!({"type":"ping","seq":1,"ts":now,"lat":91.0,"lng":24.9}),
            "bad_ping",
            "lat out of range",
        ),
        (
            json!({"type":"ping","seq":2,"ts":now,"lat":60.1,"lng":-180.5}),
            "bad_ping",
            "lng out of range",
        ),
        (
            json!({"type":"ping","seq":3,"ts":now,"lat":60.1,"lng":24.9,"acc":-1}),
            "bad_ping",
            "acc",
        ),
        (
            json!({"type":"ping","seq":4,"ts":now + 3 * 60_000,"lat":60.1,"lng":24.9}),
            "ts_in_future",
            "ahead",
        ),
        (
            json!({"type":"ping","seq":5,"ts":now - 25 * 3_600_000,"lat":60.1,"lng":24.9}),
            "ts_too_old",
            "old",
        ),
        (
            json!({"type":"ping","seq":6,"ts":now,"lat":"60.1","lng":24.9}),
            "bad_ping",
            "invalid type",
        ),
        (
            json!({"type":"ping","seq":7,"ts":now,"lat":60.1,"lng":24.9,"speed":1e6}),
            "bad_ping",
            "speed",
        ),
        (
            json!({"type":"ping","seq":8,"ts":now,"lat":60.1,"lng":24.9,"heading":400}),
            "bad_ping",
            "heading",
        ),
    ];
    for (msg, code, words) in cases {
        let seq = msg["seq"].as_u64().unwrap();
        send_json(&mut ws, &msg).await;
        if code == "bad_ping" && words == "invalid type" {
            // Wrong types fail to parse: an error with the seq, no ack.
            let Got::Json(v) = next(&mut ws, 10).await else {
                panic!("closed")
            };
            assert_eq!(
                (v["code"].as_str(), v["seq"].as_u64()),
                (Some(code), Some(seq)),
                "{v}"
            );
            assert!(v["message"].as_str().unwrap().contains(words), "{v}");
        } else {
            // A refused ping: its error, then the ack that consumes it.
            let (ack, errors) = until_ack(&mut ws).await;
            assert_eq!(ack, seq);
            let v = &errors[0];
            assert_eq!(
                (v["code"].as_str(), v["seq"].as_u64()),
                (Some(code), Some(seq)),
                "{v}"
            );
            assert!(v["message"].as_str().unwrap().contains(words), "{v}");
        }
        still_served(&mut other, &mut other_seq).await;
    }
    // Wrong types without a usable seq, unknown types, and a missing type.
    send_json(
        &mut ws,
        &json!({"type":"ping","seq":-1,"ts":now,"lat":60.1,"lng":24.9}),
    )
    .await;
    assert!(matches!(next(&mut ws, 10).await, Got::Json(v) if v["code"] == "bad_ping"));
    send_json(&mut ws, &json!({"type":"teleport","to":"mars"})).await;
    assert!(matches!(next(&mut ws, 10).await, Got::Json(v) if v["code"] == "unknown_type"));
    send_json(&mut ws, &json!({"seq":1})).await;
    assert!(matches!(next(&mut ws, 10).await, Got::Json(v) if v["code"] == "bad_message"));
    // NaN and infinity cannot be written in JSON: a frame with them is malformed.
    // Batches: too many, and out of order.
    let big: Vec<_> = (100..1101).map(ping).collect();
    send_json(&mut ws, &json!({"type":"batch","pings":big})).await;
    assert!(matches!(next(&mut ws, 10).await, Got::Json(v) if v["code"] == "batch_too_large"));
    send_json(
        &mut ws,
        &json!({"type":"batch","pings":[ping(20), ping(19)]}),
    )
    .await;
    assert!(matches!(next(&mut ws, 10).await, Got::Json(v) if v["code"] == "bad_batch"));
    // A good ping still works on the same socket, and the ack covers the refused ones.
    send_json(&mut ws, &ping(9)).await;
    assert_eq!(until_ack(&mut ws).await, (9, vec![]));
    still_served(&mut other, &mut other_seq).await;
}

#[tokio::test]
async fn protocol_violations_close_with_their_codes() {
    let s = Server::start();
    let mut other = driver_connect(&s, &driver("acme", "d2", "phone-2")).await;
    let mut other_seq = 0;

    // Malformed JSON (NaN is not JSON either).
    for bad in [
        "{\"type\":\"ping\",",
        "{\"type\":\"ping\",\"seq\":1,\"ts\":1,\"lat\":NaN,\"lng\":0}",
        "\u{0}\u{1}garbage",
    ] {
        let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
        ws.send(Message::Text(bad.into())).await.unwrap();
        assert_eq!(close_code(&mut ws, 10).await, Some(4400), "{bad:?}");
        still_served(&mut other, &mut other_seq).await;
    }
    // Binary garbage.
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    ws.send(Message::Binary(vec![0xde, 0xad, 0xbe, 0xef].into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws, 10).await, Some(4400));
    // An oversized frame: 1009.
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    let huge = format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(400 * 1024)
    );
    let _ = ws.send(Message::Text(huge.into())).await;
    assert_eq!(close_code(&mut ws, 10).await, Some(1009));
    still_served(&mut other, &mut other_seq).await;
}

#[tokio::test]
async fn a_flood_is_rate_limited_with_4008() {
    let s = Server::start();
    let mut other = driver_connect(&s, &driver("acme", "d2", "phone-2")).await;
    let mut other_seq = 0;
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    let mut closed = None;
    for seq in 1..=5000u64 {
        if ws
            .send(Message::Text(ping(seq).to_string().into()))
            .await
            .is_err()
        {
            break;
        }
        if seq % 50 == 0 {
            // Drain what came back so far without waiting.
            while let Ok(Some(m)) = tokio::time::timeout(
                std::time::Duration::from_millis(1),
                futures_util::StreamExt::next(&mut ws),
            )
            .await
            {
                if let Ok(Message::Close(f)) = m {
                    closed = f.map(|f| code(f.code));
                    break;
                }
            }
            if closed.is_some() {
                break;
            }
        }
    }
    if closed.is_none() {
        closed = close_code(&mut ws, 10).await;
    }
    assert_eq!(closed, Some(4008));
    // The limit holds across a reconnect (the bucket belongs to the device).
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    for seq in 6000..6100u64 {
        if ws
            .send(Message::Text(ping(seq).to_string().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut ws, 10).await, Some(4008));
    still_served(&mut other, &mut other_seq).await;
}

#[tokio::test]
async fn bad_tokens_close_with_4001_and_wrong_roles_with_4003() {
    let s = Server::start();
    let mut other = driver_connect(&s, &driver("acme", "d2", "phone-2")).await;
    let mut other_seq = 0;
    let now = now_s();
    let mut c = claims("acme", "driver", "d1", Some("phone-1"));
    let mut tokens = Vec::new();
    c["exp"] = json!(now - 120);
    c["iat"] = json!(now - 720);
    tokens.push(("expired", token_with("acme", &c)));
    let mut c = claims("acme", "driver", "d1", Some("phone-1"));
    c["iat"] = json!(now + 600);
    c["exp"] = json!(now + 1200);
    tokens.push(("not yet valid", token_with("acme", &c)));
    let mut c = claims("acme", "driver", "d1", Some("phone-1"));
    c["nbf"] = json!(now + 600);
    tokens.push(("nbf in the future", token_with("acme", &c)));
    let c = claims("acme", "driver", "d1", Some("phone-1"));
    tokens.push((
        "wrongly signed",
        sign_hs256(
            b"not-the-secret-not-the-secret-000",
            &json!({"alg":"HS256"}),
            &c,
        ),
    ));
    tokens.push(("another tenant's key", token_with("beta", &c)));
    let unsigned = {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(r#"{"alg":"none"}"#),
            e.encode(c.to_string())
        )
    };
    tokens.push(("alg none", unsigned));
    tokens.push((
        "HS512",
        sign_hs256(ACME_SECRET.as_bytes(), &json!({"alg":"HS512"}), &c),
    ));
    let mut c2 = c.clone();
    c2["aud"] = json!("someone-else");
    tokens.push(("wrong audience", token_with("acme", &c2)));
    let mut c2 = c.clone();
    c2["exp"] = json!(now + 13 * 3600);
    tokens.push(("lifetime above the driver cap", token_with("acme", &c2)));
    let mut c2 = c.clone();
    c2.as_object_mut().unwrap().remove("did");
    tokens.push(("driver without device", token_with("acme", &c2)));
    tokens.push(("garbage", "not.a.jwt".to_owned()));
    tokens.push(("empty", String::new()));
    for (what, token) in tokens {
        let how = if token.is_empty() {
            Present::None
        } else {
            Present::Subprotocol
        };
        let mut ws = ws_connect(&s, "/v1/driver/ws", &token, how).await;
        assert_eq!(close_code(&mut ws, 10).await, Some(4001), "{what}");
        still_served(&mut other, &mut other_seq).await;
    }
    // A valid staff token is not a driver token.
    let mut ws = ws_connect(
        &s,
        "/v1/driver/ws",
        &staff("acme", "dispatcher", "u1"),
        Present::Header,
    )
    .await;
    assert_eq!(close_code(&mut ws, 10).await, Some(4003));
    // And a driver token opens no staff endpoint.
    let (status, body) = s.get("/v1/devices", driver("acme", "d1", "phone-1")).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = s
        .post(
            "/v1/deliveries",
            driver("acme", "d1", "phone-1"),
            &delivery_body("rx-1"),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn one_socket_per_device_and_tokens_expire_on_live_sockets() {
    let s = Server::start();
    let mut first = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    let mut second = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    assert_eq!(close_code(&mut first, 10).await, Some(4409));
    send_json(&mut second, &ping(1)).await;
    assert_eq!(until_ack(&mut second).await.0, 1);

    // A token that expires in 2 s closes the socket with 4001 ...
    let short = |sub: &str, dev: &str| {
        let mut c = claims("acme", "driver", sub, Some(dev));
        c["exp"] = json!(now_s() + 2);
        token_with("acme", &c)
    };
    let mut ws = driver_connect(&s, &short("d3", "phone-3")).await;
    assert_eq!(close_code(&mut ws, 10).await, Some(4001));
    // ... unless it is refreshed in time.
    let mut ws = driver_connect(&s, &short("d4", "phone-4")).await;
    send_json(
        &mut ws,
        &json!({"type":"refresh","token": driver("acme", "d4", "phone-4")}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    send_json(&mut ws, &ping(1)).await;
    assert_eq!(until_ack(&mut ws).await.0, 1);
    // A refresh for another device is refused.
    send_json(
        &mut ws,
        &json!({"type":"refresh","token": driver("acme", "d4", "phone-9")}),
    )
    .await;
    assert_eq!(close_code(&mut ws, 10).await, Some(4003));
    // A refresh with a bad token is refused.
    let mut ws = driver_connect(&s, &driver("acme", "d5", "phone-5")).await;
    send_json(&mut ws, &json!({"type":"refresh","token": "nope"})).await;
    assert_eq!(close_code(&mut ws, 10).await, Some(4001));
}
