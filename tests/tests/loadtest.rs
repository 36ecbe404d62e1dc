//! A short load scenario against the real server: every acknowledged ping is
//! accounted for, dispatchers see positions, patients see only what they may,
//! in order, and nothing is refused or closed.
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use std::time::Duration;

use loadtest::run::{RunConfig, run};
use rxtrack_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fixed_load_passes_its_end_to_end_checks() {
    // Driver apps ping as often as the server's config message says: 2 Hz here.
    let s = Server::start_with(
        "[limits]\nlink_lookup_burst = 100000\nping_interval_ms = 500\n",
        &[],
    );
    let report = run(RunConfig {
        url: s.url(""),
        tenant: "acme".into(),
        secret: ACME_SECRET.as_bytes().to_vec(),
        drivers: 8,
        stops_per_driver: 2,
        duration: Duration::from_secs(5),
        seed: 3,
        dispatchers: 1,
        patients: true,
        server_pid: None,
        churn_per_s: 20,
        warmup: Duration::from_secs(1),
        extract: "helsinki",
        start_at_pickup: true,
        peers: Vec::new(),
    })
    .await
    .unwrap();
    assert!(report.pings_sent >= 8 * 8, "{report:?}");
    assert_eq!(report.pings_acked, report.pings_sent, "{}", report.table());
    // Every ping's ack was timed: in the warm-up second or after it.
    let ack = report.ack.unwrap();
    assert_eq!(
        ack.count + report.warmup_ack.unwrap().count,
        report.pings_sent
    );
    assert!(ack.p50_ms > 0.0 && ack.p50_ms <= ack.p99_ms && ack.p99_ms <= ack.max_ms);
    assert!(report.ping_to_dispatcher.unwrap().count > 0);
    // Drivers start loaded at the pharmacy: the runner hands the orders over
    // at once, so the first fixes turn "updating" into ETA windows.
    let to_patient = report.ping_to_patient.map_or(0, |p| p.count);
    // Every change a patient saw is timed from the server's change, and
    // those that a ping caused from that ping too.
    let warm = report.warmup_ping_to_patient.map_or(0, |p| p.count);
    assert!(to_patient + warm > 0, "{}", report.table());
    assert_eq!(
        to_patient + warm + report.patient_updates_without_ping,
        report.change_to_patient.unwrap().count
    );
    assert_eq!(report.patients, 16);
    assert_eq!(report.exposure_violations, 0);
    assert_eq!(report.statuses_out_of_order, 0);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.closes.is_empty(), "{:?}", report.closes);
    // Patients came and went meanwhile, and every one got its snapshot.
    assert!(report.churn_connects >= 50, "{}", report.table());
    assert_eq!(report.churn_failures, 0);
    // Nobody reached a door in five seconds: no drop-off arrival, and none
    // is claimed.
    assert_eq!(report.arrivals.false_arrivals, 0, "{}", report.table());
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["ack"]["p99_ms"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_mode_holds_sockets_from_several_source_addresses() {
    let s = Server::start_with("[limits]\nlink_lookup_burst = 100000\n", &[]);
    let report = loadtest::idle::run(loadtest::idle::IdleConfig {
        url: s.url(""),
        tenant: "acme".into(),
        secret: ACME_SECRET.as_bytes().to_vec(),
        sockets: 24,
        sources: 3,
        settle: Duration::from_millis(300),
        server_pid: s.pid(),
    })
    .await
    .unwrap();
    assert_eq!(report.sockets_open, 24);
    assert!(report.rss_after_kib > 0 && report.bytes_per_socket.is_finite());
}
