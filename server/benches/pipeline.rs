//! The pure per-ping pipeline (geofence lookup, proximity detector, ETA,
//! patient coarsening and encoding) and in-process fan-out of one update to
//! 10k subscribers.
//!
//! `cargo bench -p rxtrack-server --bench pipeline`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use geofence::{Fence, FenceId, FenceIndex, ProximityConfig, Subject, TrackConfig};
use rxtrack_server::bus::hub::Hub;
use rxtrack_server::domain::PatientSnapshot;
use rxtrack_server::domain::Status;
use rxtrack_server::domain::eta::{self, EtaConfig};
use rxtrack_server::types::{LatLng, UnixMillis};
use tokio_tungstenite::tungstenite::Utf8Bytes;

const T0: i64 = 1_764_072_000_000;

fn city(n: u32) -> FenceIndex {
    let mut idx = FenceIndex::new();
    for i in 0..n {
        // A grid of 60 m drop-off fences over about 10 km × 10 km of Helsinki.
        let lat = 60.12 + f64::from(i % 100) * 0.0009;
        let lng = 24.85 + f64::from(i / 100) * 0.0018;
        let p = geofence::Point::new(lat, lng).expect("in range");
        idx.insert(
            FenceId(u64::from(i)),
            Fence::circle(p, 60.0).expect("valid"),
        );
    }
    idx
}

#[allow(
    clippy::too_many_lines,
    reason = "the per-ping pipelines side by side, sharing their fixtures"
)]
fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    let idx = city(10_000);
    let cfg = EtaConfig::default();
    let stops: Vec<LatLng> = (0..5)
        .map(|k| LatLng::new(60.13 + f64::from(k) * 0.01, 24.90).expect("in range"))
        .collect();
    let mut subject = Subject::default();
    let mut out = Vec::new();
    let mut t = T0;
    let mut calibration = eta::Calibration::default();
    g.bench_function("per_ping_geofence_detector_eta_coarsen_encode", |b| {
        b.iter(|| {
            t += 1000;
            // A driver moving north along a street, 10 m a second.
            let lat = 60.12 + ((t - T0) / 1000 % 10_000) as f64 * 0.00009;
            let point = geofence::Point::new(lat, 24.8512).expect("in range");
            let fix = geofence::Fix {
                ts_ms: t,
                point,
                accuracy_m: Some(5.0),
                speed_mps: None,
            };
            out.clear();
            subject.observe(
                &idx,
                &fix,
                &TrackConfig::default(),
                |_| ProximityConfig::stop(),
                &mut out,
            );
            let here = LatLng::new(lat, 24.8512).expect("in range");
            let etas = eta::arrivals(here, UnixMillis(t), &stops, 10.0, &cfg);
            let spread = calibration.spread(etas[2].0 - t);
            let window = eta::coarse_window(etas[2], UnixMillis(t), spread, &cfg);
            let snap = PatientSnapshot {
                status: Status::EnRoute,
                stops_before: Some(2),
                eta: Some(window),
                updating: false,
                display_name: None,
                updated_at: t,
            };
            black_box(snap.encode())
        });
    });

    // The same with road ETAs on central Helsinki: each fix placed on the
    // driver's plan through five stops, the plan timed again with the
    // learned speeds every 60 fixes (`eta.replan_seconds` at 1 Hz) and
    // searched again every 180 (a stop done every 3 minutes), as the server
    // does.
    let net = roads::Network::new(
        roads::RoadGraph::from_pbf_bytes(roads::HELSINKI, "helsinki").expect("bundled"),
    );
    let speeds = roads::SpeedTable::new(&net, 0.85);
    let nodes = &net.graph().nodes;
    let road_stops: Vec<(f64, f64)> = (1..=5).map(|k| nodes[k * nodes.len() / 6]).collect();
    let start = nodes[0];
    let fresh =
        || roads::Plan::new(&net, start, None, &road_stops, &speeds, 0).expect("on the map");
    let mut plan = fresh();
    let path: Vec<(f64, f64)> = plan.legs.iter().flat_map(|l| l.points.clone()).collect();
    let mut k = 0usize;
    // Where the driver is along the plan's path: back to its start with
    // every fresh plan, so that each fix lies on the plan as a driver's would.
    let mut along = 0usize;
    g.bench_function("per_ping_geofence_detector_road_eta_coarsen_encode", |b| {
        b.iter(|| {
            t += 1000;
            k += 1;
            along += 1;
            if k.is_multiple_of(180) || along >= path.len() {
                plan = fresh();
                along = 0;
            } else if k.is_multiple_of(60) {
                plan.retime(&speeds, t);
            }
            let (lat, lng) = path[along];
            let fix = geofence::Fix {
                ts_ms: t,
                point: geofence::Point::new(lat, lng).expect("in range"),
                accuracy_m: Some(5.0),
                speed_mps: Some(8.0),
            };
            out.clear();
            subject.observe(
                &idx,
                &fix,
                &TrackConfig::default(),
                |_| ProximityConfig::stop(),
                &mut out,
            );
            // Off the plan: searched again, as the server does.
            if plan.advance(&net, (lat, lng), t, 50.0) == roads::Advance::Off {
                plan = fresh();
                along = 0;
            }
            let etas = eta::schedule(UnixMillis(t), &plan.remaining_s(), 60_000, 90_000);
            let spread = calibration.spread(etas[2].0 - t);
            let window = eta::coarse_window(etas[2], UnixMillis(t), spread, &cfg);
            let snap = PatientSnapshot {
                status: Status::EnRoute,
                stops_before: Some(2),
                eta: Some(window),
                updating: false,
                display_name: None,
                updated_at: t,
            };
            black_box(snap.encode())
        });
    });
    g.finish();

    let mut g = c.benchmark_group("fanout_10k_subscribers");
    g.throughput(Throughput::Elements(10_000));
    let hub = Hub::default();
    let mut queues: Vec<_> = (0..10_000).map(|_| hub.subscribe()).collect();
    let msg = Utf8Bytes::from(r#"{"type":"event","kind":"dropoff.arrived","seq":17}"#.to_owned());
    g.bench_function("dispatcher_event_encoded_once_offered_to_each_queue", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                assert_eq!(hub.publish(&msg), 0);
                spent += started.elapsed();
                for q in &mut queues {
                    let _ = q.try_recv();
                }
            }
            spent
        });
    });
    let (tx, _rx) = tokio::sync::watch::channel(Utf8Bytes::from_static("{}"));
    let receivers: Vec<_> = (0..10_000).map(|_| tx.subscribe()).collect();
    let snapshot = Utf8Bytes::from(
        r#"{"status":"en_route","stops_before":2,"eta":null,"updating":true,"updated_at":1}"#
            .to_owned(),
    );
    g.bench_function("patient_snapshot_latest_wins_watch", |b| {
        b.iter(|| tx.send_replace(snapshot.clone()));
    });
    drop(receivers);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
