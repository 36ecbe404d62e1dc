//! A full disk under the delivery log, for real: the data folder is a small
//! tmpfs that the test fills. The client gets 503 `log_unavailable`, nothing
//! of the refused change is visible through the API or a socket, the retry
//! succeeds once there is room (not 409), the server stays ready, and a
//! restart agrees with what clients were told.
//!
//! Mounting needs root (CI runs as root); where the mount is refused the
//! test says so and stops. The same promise is tested without a mount by
//! `tenant::tests` in the server crate, with an `EventLog` that fails on command.
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use rxtrack_tests::*;
use serde_json::Value;

/// A tmpfs mounted over a folder, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Self> {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(at.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Writes a file until the disk is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test]
async fn a_full_disk_refuses_the_change_and_shows_nothing_of_it() {
    let mut s = Server::start();
    s.kill9();
    // The data folder moves onto a 512 KiB tmpfs.
    let saved = s.dir.path().join("saved");
    copy_dir(&s.data_dir(), &saved);
    let Some(_mount) = Mount::tmpfs(&s.data_dir(), "512k") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs it as root)");
        return;
    };
    copy_dir(&saved, &s.data_dir());
    s.restart();
    let disp = staff("acme", "dispatcher", "alice");
    let mut map = ws_connect(&s, "/v1/dispatch/ws", &disp, Present::Subprotocol).await;
    let Got::Json(snap) = next(&mut map, 10).await else {
        panic!("no snapshot")
    };
    assert_eq!(snap["type"], "snapshot");

    let filler = fill(&s.data_dir());
    let (code, body) = s
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("log_unavailable")),
        "{body}"
    );
    // Nothing of it anywhere: not through the API, not on the live map.
    let (code, _) = s.get("/v1/deliveries/rx-1", &disp).await;
    assert_eq!(code, 404);
    let (code, _) = s.get("/v1/deliveries/rx-1/events", &disp).await;
    assert_eq!(code, 404);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(700), map_message(&mut map))
            .await
            .is_err(),
        "the live map heard of a change that is not durable"
    );
    // Still full: refused again, the same way.
    let (code, _) = s
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    assert_eq!(code, 503);

    // Room again: the retry is a creation, not a conflict, and it is shown.
    std::fs::remove_file(filler).unwrap();
    let (code, created) = s
        .post("/v1/deliveries", &disp, &delivery_body("rx-1"))
        .await;
    assert_eq!(code, 201, "{created}");
    let (code, _) = s.get("/v1/deliveries/rx-1", &disp).await;
    assert_eq!(code, 200);
    let heard = map_message(&mut map).await;
    assert_eq!(heard["kind"], "delivery.created", "{heard}");
    let ready = http().get(s.url("/readyz")).send().await.unwrap().status();
    assert_eq!(
        ready.as_u16(),
        200,
        "a full disk does not take the node out for good"
    );

    // A restart agrees with what clients were told: one delivery, a chain
    // of one event.
    s.kill9();
    s.restart();
    let (code, d) = s.get("/v1/deliveries/rx-1", &disp).await;
    assert_eq!((code, d["status"].as_str()), (200, Some("scheduled")));
    let (_, report) = s
        .get("/v1/log/verify", staff("acme", "admin", "root"))
        .await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["events"], 1, "{report}");
    s.kill9();
}

/// The next event or delivery message on the live map (positions skipped).
async fn map_message(ws: &mut Ws) -> Value {
    loop {
        match next(ws, 10).await {
            Got::Json(v) if v["type"] == "event" || v["type"] == "delivery" => return v,
            Got::Json(_) => {}
            Got::Closed(c) => panic!("map closed with {c:?}"),
        }
    }
}
