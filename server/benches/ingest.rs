//! The driver ingest path without sockets: decode a message, validate its
//! pings, dedupe them against the device cursor, and encode the ack.
//!
//! `cargo bench -p rxtrack-server --bench ingest`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rxtrack_server::protocol::{Cursor, DriverMsg, PingIn, ServerMsg};
use rxtrack_server::types::UnixMillis;

const NOW: UnixMillis = UnixMillis(1_764_072_000_000);

fn ping_json(seq: u64) -> String {
    format!(
        r#"{{"type":"ping","seq":{seq},"ts":{},"lat":{},"lng":24.9384,"acc":6.5,"speed":8.1,"heading":270}}"#,
        NOW.0 - 500,
        60.1699 + seq as f64 * 1e-6
    )
}

fn pings(msg: DriverMsg) -> Vec<PingIn> {
    match msg {
        DriverMsg::Ping(p) => vec![p],
        DriverMsg::Batch { pings } => pings,
        DriverMsg::Refresh { .. } => Vec::new(),
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest");

    let single = ping_json(42);
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_ping", |b| {
        b.iter(|| serde_json::from_str::<DriverMsg>(black_box(&single)).expect("valid"));
    });

    // The whole per-ping path: decode, validate, dedupe, ack.
    let frames: Vec<String> = (1..=1000).map(ping_json).collect();
    g.bench_function("ping_decode_validate_dedupe_ack", |b| {
        let mut cursor = Cursor::default();
        let mut i = 0usize;
        b.iter(|| {
            if i == frames.len() {
                i = 0;
                cursor = Cursor::default();
            }
            let msg = serde_json::from_str::<DriverMsg>(&frames[i]).expect("valid");
            i += 1;
            let applied = cursor.apply(&pings(msg), NOW);
            black_box(&applied);
            serde_json::to_string(&ServerMsg::Ack {
                seq: cursor.last_seq,
            })
            .expect("ack")
        });
    });

    // A batch of 1000 pings after a dead zone, then the same batch replayed.
    let batch = format!("{{\"type\":\"batch\",\"pings\":[{}]}}", frames.join(","));
    g.throughput(Throughput::Elements(1000));
    g.bench_function("batch_1000_decode_validate_dedupe", |b| {
        b.iter(|| {
            let msg = serde_json::from_str::<DriverMsg>(black_box(&batch)).expect("valid");
            let mut cursor = Cursor::default();
            cursor.apply(&pings(msg), NOW)
        });
    });
    let replay = pings(serde_json::from_str::<DriverMsg>(&batch).expect("valid"));
    let mut seen = Cursor::default();
    seen.apply(&replay, NOW);
    g.bench_function("batch_1000_replayed_dedupe_only", |b| {
        b.iter(|| {
            let mut c = seen;
            c.apply(black_box(&replay), NOW)
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
