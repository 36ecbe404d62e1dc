//! What road ETAs cost: a plan (A* through a driver's stops) and a fix
//! placed on it, on central Helsinki's streets.
#![allow(clippy::unwrap_used, reason = "a bench fails by panicking")]
#![allow(
    clippy::many_single_char_names,
    reason = "criterion's c and b, and short loop names"
)]

use criterion::{Criterion, criterion_group, criterion_main};
use roads::{Advance, Network, Plan, RoadGraph, SpeedTable};

fn bench(c: &mut Criterion) {
    let net = Network::new(RoadGraph::from_pbf_bytes(roads::HELSINKI, "helsinki").unwrap());
    let speeds = SpeedTable::new(&net, 0.85);
    let n = net.graph().nodes.len();
    let pick = |i: usize| net.graph().nodes[(i * 7919) % n];
    let stops: Vec<(f64, f64)> = (1..=8).map(pick).collect();
    c.bench_function("plan: 8 stops across central Helsinki", |b| {
        b.iter(|| Plan::new(&net, pick(0), None, &stops, &speeds, 0).unwrap());
    });
    c.bench_function("plan: 1 leg", |b| {
        b.iter(|| Plan::new(&net, pick(0), None, &stops[..1], &speeds, 0).unwrap());
    });
    let plan = Plan::new(&net, pick(0), None, &stops, &speeds, 0).unwrap();
    let path: Vec<(f64, f64)> = plan.legs[0].points.clone();
    c.bench_function(
        "advance: a fix placed on the plan, and the remaining times",
        |b| {
            let mut p = plan.clone();
            let mut i = 0usize;
            let mut t = 0i64;
            b.iter(|| {
                i = (i + 1) % path.len();
                if i == 0 {
                    p = plan.clone();
                }
                t += 1000;
                let a = p.advance(&net, path[i], t, 50.0);
                assert!(matches!(a, Advance::On(_)));
                p.remaining_s()
            });
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
