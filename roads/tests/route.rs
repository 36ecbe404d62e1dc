//! Road plans against the plain Dijkstra of the graph, and progress along them.
#![allow(
    clippy::unwrap_used,
    reason = "helpers of a test fail the test by panicking"
)]

use proptest::prelude::*;
use roads::{Advance, Network, Plan, RoadGraph, SpeedTable};

fn helsinki() -> &'static Network {
    static NET: std::sync::OnceLock<Network> = std::sync::OnceLock::new();
    NET.get_or_init(|| {
        Network::new(RoadGraph::from_pbf_bytes(roads::HELSINKI, "helsinki").unwrap())
    })
}

/// Free-flow seconds of the graph's own Dijkstra path between two nodes.
fn dijkstra_s(g: &RoadGraph, a: u32, b: u32) -> f64 {
    let path = g.fastest_path(a, b).unwrap();
    path.windows(2)
        .map(|w| {
            let e = g.edge(w[0], w[1]).unwrap();
            e.len_m / e.speed_mps
        })
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Between two road nodes, A* over class speeds finds the fastest time
    /// Dijkstra finds (within rounding).
    #[test]
    fn a_star_legs_are_as_fast_as_dijkstra(a in 0usize..100_000, b in 0usize..100_000) {
        let net = helsinki();
        let g = net.graph();
        let (a, b) = (a % g.nodes.len(), b % g.nodes.len());
        prop_assume!(a != b);
        let speeds = SpeedTable::new(net, 1.0);
        let plan = Plan::new(net, g.nodes[a], None, &[g.nodes[b]], &speeds, 0).unwrap();
        let ours = plan.legs[0].total_s();
        let theirs = dijkstra_s(g, u32::try_from(a).unwrap(), u32::try_from(b).unwrap());
        // A snapped node may sit on any edge meeting it: ours may be a
        // fraction of an edge shorter, never meaningfully longer.
        prop_assert!(ours <= theirs + 0.5, "ours {ours} s, Dijkstra {theirs} s");
        prop_assert!(ours >= theirs - 1.0, "ours {ours} s, Dijkstra {theirs} s");
    }
}

#[test]
fn driving_the_plan_counts_down_and_leaving_it_is_noticed() {
    let net = helsinki();
    let g = net.graph();
    let speeds = SpeedTable::new(net, 1.0);
    let (from, to) = (g.nodes[10], g.nodes[g.nodes.len() / 2]);
    let mut plan = Plan::new(net, from, None, &[to], &speeds, 0).unwrap();
    let total = plan.remaining_s()[0];
    assert!(total > 30.0, "{total}");
    let path = plan.legs[0].points.clone();
    let mut last = total;
    let mut t = 0;
    let mut samples = 0;
    for p in &path[1..] {
        t += 5_000;
        match plan.advance(net, *p, t, 50.0) {
            Advance::On(s) => samples += usize::from(s.is_some()),
            Advance::Off => panic!("on its own path"),
        }
        let left = plan.remaining_s()[0];
        assert!(left <= last + 1e-6, "remaining grew: {last} -> {left}");
        last = left;
    }
    assert!(last < 1.0, "at the stop: {last}");
    assert!(samples > 0, "moving along the path gives speed samples");
    // A point 500 m away from every point of the path is off it.
    let far = (from.0 + 0.02, from.1 + 0.02);
    assert_eq!(plan.advance(net, far, t + 1000, 50.0), Advance::Off);
}

#[test]
fn learned_speeds_move_towards_what_the_fleet_drives() {
    let net = helsinki();
    let mut speeds = SpeedTable::new(net, 1.0);
    let before = speeds.speed(0);
    for _ in 0..50 {
        speeds.observe(0, before * 0.5);
    }
    assert!(
        (speeds.speed(0) - before * 0.5).abs() < 0.5,
        "{}",
        speeds.speed(0)
    );
    // Impossible speeds are not learned.
    speeds.observe(1, 500.0);
    speeds.observe(1, f64::NAN);
    assert_eq!(speeds.learned_edges(), 1);
    assert!(speeds.ratio() < 1.0);
}

#[test]
fn a_plan_retimed_with_learned_speeds_keeps_its_path_and_progress() {
    let net = helsinki();
    let g = net.graph();
    let mut speeds = SpeedTable::new(net, 1.0);
    let mut plan = Plan::new(
        net,
        g.nodes[10],
        None,
        &[g.nodes[g.nodes.len() / 2]],
        &speeds,
        0,
    )
    .unwrap();
    let before = plan.remaining_s()[0];
    let points = plan.legs[0].points.clone();
    // The fleet found every edge of it at half its class speed.
    for &e in &plan.legs[0].edges.clone() {
        for _ in 0..30 {
            speeds.observe(e, speeds.speed(e) * 0.5);
        }
    }
    plan.retime(&speeds, 60_000);
    assert_eq!(plan.legs[0].points, points);
    assert_eq!(plan.made_at_ms, 60_000);
    let after = plan.remaining_s()[0];
    assert!(after > before * 1.5, "{before} -> {after}");
}

#[test]
fn a_route_that_doubles_back_is_followed_leg_by_leg() {
    // Out to a stop and back the same way: both legs share streets, and a
    // fix on the way out must not be taken for one on the way back.
    let net = helsinki();
    let g = net.graph();
    let speeds = SpeedTable::new(net, 1.0);
    let (home, out) = (g.nodes[10], g.nodes[g.nodes.len() / 3]);
    let mut plan = Plan::new(net, home, None, &[out, home], &speeds, 0).unwrap();
    let first = plan.legs[0].points.clone();
    let mut t = 0;
    for p in &first[1..first.len() - 1] {
        t += 2_000;
        assert!(matches!(plan.advance(net, *p, t, 50.0), Advance::On(_)));
        assert_eq!(plan.progress.leg, 0, "jumped to the way back at {p:?}");
        let left = plan.remaining_s();
        assert!(left[0] > 0.0 && left[1] > left[0], "{left:?}");
    }
}

#[test]
fn the_kotka_extract_plans_too() {
    let net = Network::new(RoadGraph::from_pbf_bytes(roads::KOTKA, "kotka").unwrap());
    let g = net.graph();
    let speeds = SpeedTable::new(&net, 0.85);
    let stops: Vec<(f64, f64)> = (1..5).map(|i| g.nodes[i * g.nodes.len() / 5]).collect();
    let plan = Plan::new(&net, g.nodes[0], None, &stops, &speeds, 0).unwrap();
    let left = plan.remaining_s();
    assert_eq!(left.len(), 4);
    assert!(left.windows(2).all(|w| w[0] <= w[1]), "{left:?}");
}
