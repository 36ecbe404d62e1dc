//! Crash durability: `kill -9` while drivers stream and the API writes; every
//! acknowledged change survives, a torn tail is cut, damage is named, and a
//! graceful drain closes sockets with 1001 and exits 0.
#![allow(
    clippy::too_many_lines,
    reason = "a story test reads top to bottom, step by step"
)]
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rxtrack_tests::*;
use serde_json::{Value, json};

/// What the server acknowledged before the crash: delivery id → status kinds acked.
type Acked = Arc<Mutex<BTreeMap<String, Vec<&'static str>>>>;

async fn writer(s_url: String, token: String, prefix: String, acked: Acked) {
    let client = http();
    for i in 0.. {
        let id = format!("{prefix}-{i}");
        let Ok(res) = client
            .post(format!("{s_url}/v1/deliveries"))
            .bearer_auth(&token)
            .json(&delivery_body(&id))
            .send()
            .await
        else {
            return;
        };
        if res.status().as_u16() != 201 {
            return;
        }
        acked
            .lock()
            .unwrap()
            .insert(id.clone(), vec!["delivery.created"]);
        for (st, kind) in [
            ("picked_up", "delivery.picked_up"),
            ("delivered", "delivery.delivered"),
        ] {
            let Ok(res) = client
                .post(format!("{s_url}/v1/deliveries/{id}/status"))
                .bearer_auth(&token)
                .json(&json!({"status": st}))
                .send()
                .await
            else {
                return;
            };
            if res.status().as_u16() != 200 {
                return;
            }
            acked.lock().unwrap().get_mut(&id).unwrap().push(kind);
        }
    }
}

async fn streamer(s: &Server, device: &str) {
    let mut ws = driver_connect(s, &driver("acme", device, device)).await;
    for seq in 1.. {
        if futures_util::SinkExt::send(
            &mut ws,
            tokio_tungstenite::tungstenite::Message::Text(ping(seq).to_string().into()),
        )
        .await
        .is_err()
        {
            return;
        }
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut ws),
        )
        .await
        {
            Ok(Some(Ok(_))) => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_change_survives_repeated_kill_9() {
    let mut s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    let admin = staff("acme", "admin", "root");
    let acked: Acked = Arc::default();
    let cycles = 12;
    for cycle in 0..cycles {
        let mut tasks = Vec::new();
        for w in 0..4 {
            tasks.push(tokio::spawn(writer(
                s.url(""),
                disp.clone(),
                format!("c{cycle}w{w}"),
                acked.clone(),
            )));
        }
        // Drivers stream at the same time, on the same log writer.
        let drivers =
            Box::pin(async { tokio::join!(streamer(&s, "phone-1"), streamer(&s, "phone-2")) });
        let _ = tokio::time::timeout(Duration::from_millis(300 + 50 * cycle), drivers).await;
        s.kill9();
        for t in tasks {
            let _ = t.await;
        }
        s.restart();

        // Everything acknowledged so far is there, with every acked status change.
        let snapshot = acked.lock().unwrap().clone();
        assert!(!snapshot.is_empty());
        for (id, kinds) in &snapshot {
            let (code, ev) = s.get(&format!("/v1/deliveries/{id}/events"), &disp).await;
            assert_eq!(
                code, 200,
                "cycle {cycle}: acknowledged delivery {id} is missing"
            );
            let got: Vec<&str> = ev["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["kind"].as_str().unwrap())
                .collect();
            for k in kinds {
                assert!(
                    got.contains(k),
                    "cycle {cycle}: {id} lost acknowledged {k}: {got:?}"
                );
            }
        }
        let (_, report) = s.get("/v1/log/verify", &admin).await;
        assert_eq!(report["ok"], true, "cycle {cycle}: {report}");
    }
    let total: usize = acked.lock().unwrap().values().map(Vec::len).sum();
    assert!(
        total > 50,
        "the test wrote too little to mean anything: {total}"
    );
    s.kill9();
    let out = s.cli(&["log", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn last_segment(s: &Server) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(s.data_dir().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

/// Creates deliveries rx-0 … rx-(n-1) for acme, each acknowledged with 201.
async fn create_deliveries(s: &Server, n: usize) {
    let disp = staff("acme", "dispatcher", "alice");
    for i in 0..n {
        let (code, body) = s
            .post("/v1/deliveries", &disp, &delivery_body(&format!("rx-{i}")))
            .await;
        assert_eq!(code, 201, "{body}");
    }
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_chain_goes_on() {
    let mut s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    create_deliveries(&s, 3).await;
    s.kill9();
    let seg = last_segment(&s);
    let whole = std::fs::read(&seg).unwrap();
    for torn in [
        &b"{\"seq\":4,\"tenant\":\"acme\",\"ki"[..],
        &b"{\"seq\":4,\"garbage\":true}\n"[..],
    ] {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all(torn)
            .unwrap();
        s.restart();
        let now = std::fs::read(&seg).unwrap();
        assert!(
            now == whole,
            "the torn tail was not cut back to the last whole event ({} vs {} bytes)",
            now.len(),
            whole.len()
        );
        s.kill9();
    }
    s.restart();
    assert_eq!(
        s.post("/v1/deliveries", &disp, &delivery_body("rx-9"))
            .await
            .0,
        201
    );
    for i in [0, 1, 2, 9] {
        assert_eq!(s.get(&format!("/v1/deliveries/rx-{i}"), &disp).await.0, 200);
    }
    let (_, report) = s
        .get("/v1/log/verify", staff("acme", "admin", "root"))
        .await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["tenants"]["acme"]["events"], 4);
}

#[tokio::test]
async fn an_edit_inside_the_log_is_named_and_refuses_start() {
    let mut s = Server::start();
    create_deliveries(&s, 4).await;
    s.kill9();
    let seg = last_segment(&s);
    let text = std::fs::read_to_string(&seg).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut second: Value = serde_json::from_str(&lines[1]).unwrap();
    second["at"] = json!(second["at"].as_i64().unwrap() - 3_600_000);
    lines[1] = second.to_string();
    std::fs::write(&seg, lines.join("\n") + "\n").unwrap();

    let out = s.cli(&["log", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad"]["seq"], 2, "{report}");
    assert_eq!(report["first_bad"]["tenant"], "acme");
    assert!(
        report["first_bad"]["reason"]
            .as_str()
            .unwrap()
            .contains("edited"),
        "{report}"
    );

    let err = s
        .try_restart()
        .expect_err("a damaged log must not be served");
    assert!(err.contains("corrupt") && err.contains("offset"), "{err}");

    // A deleted event is a gap.
    lines.remove(1);
    std::fs::write(&seg, lines.join("\n") + "\n").unwrap();
    let out = s.cli(&["log", "verify"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["first_bad"]["reason"]
            .as_str()
            .unwrap()
            .contains("gap"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_closes_sockets_with_1001_and_exits_0() {
    let mut s = Server::start();
    let disp = staff("acme", "dispatcher", "alice");
    let mut ws = driver_connect(&s, &driver("acme", "d1", "phone-1")).await;
    send_json(&mut ws, &ping(1)).await;
    assert_eq!(until_ack(&mut ws).await.0, 1);
    assert_eq!(
        s.post("/v1/deliveries", &disp, &delivery_body("rx-1"))
            .await
            .0,
        201
    );
    let status = tokio::task::block_in_place(|| s.terminate());
    assert_eq!(close_code(&mut ws, 10).await, Some(1001));
    assert!(status.success(), "{status:?}");
    assert!(s.output().contains("stopped"));
    s.restart();
    assert_eq!(s.get("/v1/deliveries/rx-1", &disp).await.0, 200);
    let (code, ready) = call(http().get(s.url("/readyz"))).await;
    assert_eq!((code, ready["status"].as_str()), (200, Some("ready")));
}
