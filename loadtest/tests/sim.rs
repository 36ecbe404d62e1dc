//! The simulator drives on real roads, reproducibly, the way driver apps send.
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use std::path::Path;

use loadtest::roads::RoadGraph;
use loadtest::sim::{Fleet, Out, Ping, SimConfig};

fn helsinki() -> RoadGraph {
    RoadGraph::from_pbf(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../roads/data/helsinki-center.osm.pbf"),
    )
    .unwrap()
}

const T0: i64 = 1_764_072_000_000;

fn run(graph: &RoadGraph, seed: u64, minutes: i64) -> (Fleet, Vec<(usize, Out)>) {
    let cfg = SimConfig {
        drivers: 8,
        stops_per_driver: 3,
        ..SimConfig::default()
    };
    let mut fleet = Fleet::new(graph, cfg, seed, T0);
    let mut out = Vec::new();
    for s in 1..=minutes * 60 {
        out.extend(fleet.step(T0 + s * 1000));
    }
    (fleet, out)
}

fn pings(out: &[(usize, Out)]) -> Vec<(usize, Ping)> {
    out.iter()
        .flat_map(|(d, o)| match o {
            Out::Ping(p) => vec![(*d, p.clone())],
            Out::Batch(b) => b.iter().map(|p| (*d, p.clone())).collect(),
        })
        .collect()
}

#[test]
fn the_road_graphs_are_real() {
    let g = helsinki();
    assert!(g.edge_count() > 1000, "{} edges", g.edge_count());
    assert!(g.total_length_m() > 15_000.0, "{} m", g.total_length_m());
    let k = RoadGraph::from_pbf(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../roads/data/kotka-karhula.osm.pbf"),
    )
    .unwrap();
    assert!(k.edge_count() > 500);
    // Every node reaches every other (largest strongly connected component).
    assert!(
        g.fastest_path(0, u32::try_from(g.nodes.len() - 1).unwrap())
            .is_some()
    );
}

#[test]
fn every_fix_is_on_a_road_before_noise() {
    let g = helsinki();
    let (_, out) = run(&g, 7, 6);
    let all = pings(&out);
    assert!(all.len() > 8 * 300, "{} pings", all.len());
    for (_, p) in all.iter().step_by(7) {
        let d = g.distance_to_road_m(p.true_pos);
        assert!(d < 1.0, "{:?} is {d} m from any road", p.true_pos);
    }
    // The noise is GPS-sized: a few metres typically, spikes rarely.
    let errors: Vec<f64> = all
        .iter()
        .map(|(_, p)| loadtest::roads::distance_m(p.true_pos, (p.lat, p.lng)))
        .collect();
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    assert!((2.0..10.0).contains(&mean), "mean error {mean} m");
    assert!(errors.iter().filter(|e| **e > 50.0).count() < errors.len() / 50);
}

#[test]
fn runs_are_reproducible_from_the_seed() {
    let g = helsinki();
    let (_, a) = run(&g, 42, 3);
    let (_, b) = run(&g, 42, 3);
    let (_, c) = run(&g, 43, 3);
    assert!(a == b, "the same seed gave different runs");
    assert!(a != c, "different seeds gave the same run");
}

#[test]
fn apps_send_pings_at_1_hz_and_batches_after_dead_zones() {
    let g = helsinki();
    let cfg = SimConfig {
        drivers: 20,
        dead_zone_per_minute: 0.5,
        ..SimConfig::default()
    };
    let mut fleet = Fleet::new(&g, cfg, 9, T0);
    let mut out = Vec::new();
    for s in 1..=600 {
        out.extend(fleet.step(T0 + s * 1000));
    }
    assert!(
        out.iter()
            .any(|(_, o)| matches!(o, Out::Batch(b) if b.len() > 10)),
        "no batch"
    );
    for d in 0..20 {
        let mine: Vec<Ping> = pings(&out)
            .into_iter()
            .filter(|(i, _)| *i == d)
            .map(|(_, p)| p)
            .collect();
        for w in mine.windows(2) {
            assert_eq!(
                w[1].seq,
                w[0].seq + 1,
                "driver {d}: seqs ascend without gaps"
            );
            assert_eq!(w[1].ts - w[0].ts, 1000, "driver {d}: one fix a second");
        }
    }
    // Drivers reach their drop-offs, in order.
    let (fleet, _) = run(&g, 5, 40);
    let reached: usize = fleet
        .drivers
        .iter()
        .map(|d| d.arrivals.iter().flatten().count())
        .sum();
    assert!(
        reached >= 8,
        "only {reached} drop-offs reached in 40 minutes"
    );
    for d in &fleet.drivers {
        let times: Vec<i64> = d.arrivals.iter().flatten().copied().collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn a_delayed_fleet_drives_the_same_plan_later() {
    let g = helsinki();
    let cfg = SimConfig {
        drivers: 8,
        stops_per_driver: 2,
        dead_zone_per_minute: 0.5,
        ..SimConfig::default()
    };
    let mut on_time = Fleet::new(&g, cfg.clone(), 7, T0);
    let mut late = Fleet::new(&g, cfg, 7, T0);
    // The setup took 5 s: nothing falls due during it, and from then on the
    // delayed fleet sends what the other sent, 5 s later.
    let by = 5_000;
    late.delay(by);
    assert!(
        late.step(T0 + by - 1).is_empty(),
        "pings fell due during the setup"
    );
    for s in 0..=300 {
        let a = on_time.step(T0 + s * 1000);
        let b = late.step(T0 + by + s * 1000);
        let shifted: Vec<(usize, Ping)> = pings(&a)
            .into_iter()
            .map(|(d, mut p)| {
                p.ts += by;
                (d, p)
            })
            .collect();
        assert_eq!(pings(&b), shifted, "second {s}");
    }
    for (a, b) in on_time.drivers.iter().zip(&late.drivers) {
        let moved: Vec<Option<i64>> = a.arrivals.iter().map(|t| t.map(|t| t + by)).collect();
        assert_eq!(b.arrivals, moved);
    }
}
