//! Route plans for ETAs: the fastest road path from a driver through its
//! stops, and the driver's progress along it between recomputations.
//!
//! A plan is computed (A* per leg, over travel times from a [`SpeedTable`])
//! when the stops change or the driver leaves the planned path, and timed
//! again with the current speeds ([`Plan::retime`]) as often as the caller
//! wants; in between, each fix is projected onto the plan near where the
//! driver was, which costs a few segment projections rather than a search.

use std::collections::BinaryHeap;

use std::cell::RefCell;

use crate::graph::{Item, RoadGraph, distance_m};
use crate::snap::{Projection, Snap, Snapper, project};

/// Search labels by node (cost, previous node, edge used), reused across
/// searches on one thread: a generation stamp marks this search's, so a
/// search touches only the nodes it reaches (no map, no clearing of the
/// whole graph).
#[derive(Debug, Default)]
struct Labels {
    generation: u32,
    stamp: Vec<u32>,
    label: Vec<(f64, u32, u32)>,
}

impl Labels {
    fn start(&mut self, nodes: usize) {
        if self.stamp.len() < nodes {
            self.stamp.resize(nodes, 0);
            self.label.resize(nodes, (0.0, 0, 0));
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.fill(0);
            self.generation = 1;
        }
    }

    fn get(&self, v: u32) -> Option<(f64, u32, u32)> {
        let i = v as usize;
        (self.stamp.get(i) == Some(&self.generation)).then(|| self.label[i])
    }

    fn set(&mut self, v: u32, label: (f64, u32, u32)) {
        let i = v as usize;
        if let (Some(s), Some(l)) = (self.stamp.get_mut(i), self.label.get_mut(i)) {
            *s = self.generation;
            *l = label;
        }
    }
}

thread_local! {
    static LABELS: RefCell<Labels> = RefCell::new(Labels::default());
}

/// How far from a road a position may be and still be snapped to it, metres.
pub const SNAP_MAX_M: f64 = 250.0;
/// Segments ahead of the driver's last progress searched on each fix.
const LOOKAHEAD_SEGMENTS: usize = 40;
/// A fix goes on the earliest segment ahead that is at most this much
/// farther than the nearest one, metres (GPS noise, a street driven twice).
const PREFER_EARLIER_M: f64 = 10.0;

/// The road network: the graph and its snapping grid, built once and
/// shared read-only.
#[derive(Clone, Debug)]
pub struct Network {
    graph: RoadGraph,
    snapper: Snapper,
    /// The fastest speed anywhere, for A*'s admissible estimate, m/s: no
    /// speed a `SpeedTable` plans with exceeds it (class × 1.5 at most).
    top_speed: f64,
}

/// Travel-time speeds per directed edge: road-class speeds at first,
/// learned from the fleet's own fixes as it drives.
#[derive(Clone, Debug)]
pub struct SpeedTable {
    class: Vec<f32>,
    learned: Vec<f32>,
    samples: Vec<u16>,
    /// Observed speed over class speed, across every edge: the prior of
    /// edges not yet driven.
    ratio: f64,
}

/// Weight of one observation in an edge's learned speed.
const EDGE_ALPHA: f64 = 0.2;
/// Weight of one observation in the network-wide ratio.
const RATIO_ALPHA: f64 = 0.01;

impl SpeedTable {
    /// Class speeds times `prior_ratio` (drivers rarely hold free-flow speed).
    #[must_use]
    pub fn new(net: &Network, prior_ratio: f64) -> Self {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "speeds of m/s fit f32 to well below a cm/s"
        )]
        let class: Vec<f32> = net
            .graph
            .edges
            .iter()
            .flatten()
            .map(|e| e.speed_mps as f32)
            .collect();
        let n = class.len();
        Self {
            class,
            learned: vec![0.0; n],
            samples: vec![0; n],
            ratio: prior_ratio.clamp(0.2, 1.5),
        }
    }

    /// The speed to plan with on `edge`, m/s.
    #[must_use]
    pub fn speed(&self, edge: u32) -> f64 {
        let i = edge as usize;
        match (self.samples.get(i), self.learned.get(i)) {
            (Some(&n), Some(&v)) if n > 0 => f64::from(v),
            _ => self
                .class
                .get(i)
                .map_or(8.0, |&c| f64::from(c) * self.ratio),
        }
    }

    /// Learns from a driver observed moving along `edge` at `mps`.
    pub fn observe(&mut self, edge: u32, mps: f64) {
        let i = edge as usize;
        let Some(&class) = self.class.get(i) else {
            return;
        };
        let class = f64::from(class);
        // Plausible speeds only: a GPS jump is not a speed on this road.
        if !mps.is_finite() || mps < 0.5 || mps > class * 1.6 + 5.0 {
            return;
        }
        self.ratio += RATIO_ALPHA * ((mps / class).clamp(0.2, 1.5) - self.ratio);
        let n = self.samples[i];
        let old = f64::from(self.learned[i]);
        let new = if n == 0 {
            // Start from the prior, so one sample does not decide the edge.
            let prior = class * self.ratio;
            prior + 0.5 * (mps - prior)
        } else {
            old + EDGE_ALPHA * (mps - old)
        };
        #[allow(clippy::cast_possible_truncation, reason = "m/s fit f32")]
        {
            self.learned[i] = new.clamp(1.0, class * 1.3 + 2.0) as f32;
        }
        self.samples[i] = n.saturating_add(1);
    }

    /// Edges with at least one observation.
    #[must_use]
    pub fn learned_edges(&self) -> usize {
        self.samples.iter().filter(|&&n| n > 0).count()
    }

    /// The network-wide observed-to-class speed ratio.
    #[must_use]
    pub fn ratio(&self) -> f64 {
        self.ratio
    }
}

/// A path between two points: the points, the seconds and metres from its
/// start at each, and the edge of each segment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Leg {
    pub points: Vec<(f64, f64)>,
    pub secs: Vec<f64>,
    pub metres: Vec<f64>,
    pub edges: Vec<u32>,
}

impl Leg {
    /// Seconds from its start to its end.
    #[must_use]
    pub fn total_s(&self) -> f64 {
        self.secs.last().copied().unwrap_or(0.0)
    }

    fn push(&mut self, p: (f64, f64), secs: f64, edge: u32) {
        let metres = match (self.points.last(), self.metres.last()) {
            (Some(&q), Some(&m)) => m + distance_m(q, p),
            _ => 0.0,
        };
        if !self.points.is_empty() {
            self.edges.push(edge);
        }
        self.points.push(p);
        self.secs.push(secs);
        self.metres.push(metres);
    }
}

impl Network {
    #[must_use]
    pub fn new(graph: RoadGraph) -> Self {
        let snapper = Snapper::new(&graph);
        let top_speed = graph
            .edges
            .iter()
            .flatten()
            .map(|e| e.speed_mps)
            .fold(1.0, f64::max)
            * 1.5
            + 2.0;
        Self {
            graph,
            snapper,
            top_speed,
        }
    }

    #[must_use]
    pub fn graph(&self) -> &RoadGraph {
        &self.graph
    }

    /// The nearest road within [`SNAP_MAX_M`].
    #[must_use]
    pub fn snap(&self, p: (f64, f64)) -> Option<Snap> {
        self.snapper.snap(&self.graph, p, SNAP_MAX_M)
    }

    /// The projection of the snapping grid.
    #[must_use]
    pub fn projection(&self) -> Projection {
        self.snapper.projection()
    }

    /// Whether a snapped point stands on its edge's start (`end` false) or
    /// end node, within a metre.
    fn at_node(&self, s: &Snap, end: bool) -> bool {
        let len = self
            .graph
            .edge_with_id(s.from, s.to)
            .map_or(0.0, |(_, e)| e.len_m);
        let along = if end { 1.0 - s.t } else { s.t };
        along * len <= 1.0
    }

    fn time(&self, from: u32, to: u32, speeds: &SpeedTable) -> Option<(u32, f64)> {
        let (id, e) = self.graph.edge_with_id(from, to)?;
        Some((id, e.len_m / speeds.speed(id).max(0.5)))
    }

    /// The fastest leg from `a` to `b`. `heading` (degrees, the driver's)
    /// picks the direction of travel on a two-way street; without it both
    /// are allowed. `None`: no path (cannot happen within one strongly
    /// connected graph, but the caller falls back on the straight line).
    #[must_use]
    #[allow(
        clippy::many_single_char_names,
        clippy::too_many_lines,
        reason = "one A* search with its start and end on streets, read top to bottom; a and b are the ends"
    )]
    pub fn leg(
        &self,
        a: &Snap,
        heading: Option<f64>,
        b: &Snap,
        speeds: &SpeedTable,
    ) -> Option<Leg> {
        let fwd = self.time(a.from, a.to, speeds);
        let back = self.time(a.to, a.from, speeds);
        let along = heading.map(|h| {
            let (p, q) = (
                self.graph.nodes[a.from as usize],
                self.graph.nodes[a.to as usize],
            );
            let bearing = ((q.1 - p.1) * p.0.to_radians().cos())
                .atan2(q.0 - p.0)
                .to_degrees();
            let diff = (h - bearing).rem_euclid(360.0);
            !(90.0..=270.0).contains(&diff)
        });
        // Start options: (node, seconds to it, edge used).
        let mut starts: Vec<(u32, f64, u32)> = Vec::with_capacity(2);
        if let Some((id, t)) = fwd.filter(|_| along != Some(false) || back.is_none()) {
            starts.push((a.to, (1.0 - a.t) * t, id));
        }
        if let Some((id, t)) = back.filter(|_| along != Some(true) || fwd.is_none()) {
            starts.push((a.from, a.t * t, id));
        }
        // Standing on a node (stops and drivers often are), every street
        // leaving it is a start, one-way ones included.
        if let Some((id, _)) = fwd.filter(|_| self.at_node(a, false)) {
            starts.push((a.from, 0.0, id));
        }
        // End options: (node, seconds from it to b, edge used).
        let mut ends: Vec<(u32, f64, u32)> = Vec::with_capacity(2);
        if let Some((id, t)) = self.time(b.from, b.to, speeds) {
            ends.push((b.from, b.t * t, id));
        }
        if let Some((id, t)) = self.time(b.to, b.from, speeds) {
            ends.push((b.to, (1.0 - b.t) * t, id));
        }
        // A target on a node is reached by any street into it.
        if let Some((id, _)) = self
            .graph
            .edge_with_id(b.from, b.to)
            .filter(|_| self.at_node(b, true))
        {
            ends.push((b.to, 0.0, id));
        }
        // Both on the same street, b ahead in the direction of travel.
        let same = (a.from == b.from && a.to == b.to) || (a.from == b.to && a.to == b.from);
        let mut best_direct: Option<(f64, u32)> = None;
        if same {
            let tb = if a.from == b.from { b.t } else { 1.0 - b.t };
            for &(node, _, id) in &starts {
                let (ahead, dt) = if node == a.to {
                    (tb >= a.t, tb - a.t)
                } else {
                    (tb <= a.t, a.t - tb)
                };
                let t = if node == a.to { fwd } else { back };
                if let (true, Some((_, full))) = (ahead, t) {
                    let s = dt * full;
                    if best_direct.is_none_or(|(x, _)| s < x) {
                        best_direct = Some((s, id));
                    }
                }
            }
        }
        let target = b.point;
        let h = |v: u32| distance_m(self.graph.nodes[v as usize], target) / self.top_speed;
        LABELS.with_borrow_mut(|best| {
            best.start(self.graph.nodes.len());
            let mut heap = BinaryHeap::new();
            for &(v, t, id) in &starts {
                if best.get(v).is_none_or(|b| t < b.0) {
                    best.set(v, (t, u32::MAX, id));
                    heap.push(Item(t + h(v), v));
                }
            }
            let mut found: Option<(f64, u32, u32)> = best_direct.map(|(s, id)| (s, u32::MAX, id));
            while let Some(Item(f, v)) = heap.pop() {
                if found.is_some_and(|(x, _, _)| f >= x) {
                    break;
                }
                let Some((g, _, _)) = best.get(v) else {
                    continue;
                };
                if f > g + h(v) + 1e-9 {
                    continue;
                }
                for &(node, rest, id) in &ends {
                    if node == v && found.is_none_or(|(x, _, _)| g + rest < x) {
                        found = Some((g + rest, v, id));
                    }
                }
                for (i, e) in self.graph.edges[v as usize].iter().enumerate() {
                    let id = self.graph.edge_id(v, i);
                    let ng = g + e.len_m / speeds.speed(id).max(0.5);
                    if best.get(e.to).is_none_or(|b| ng < b.0) {
                        best.set(e.to, (ng, v, id));
                        heap.push(Item(ng + h(e.to), e.to));
                    }
                }
            }
            let (total, last, end_edge) = found?;
            let mut leg = Leg::default();
            if last == u32::MAX {
                // Along one street.
                leg.push(a.point, 0.0, end_edge);
                leg.push(b.point, total, end_edge);
                return Some(leg);
            }
            // Walk back from the last node to a start.
            let mut chain = vec![last];
            let mut v = last;
            while let Some((_, prev, _)) = best.get(v) {
                if prev == u32::MAX {
                    break;
                }
                chain.push(prev);
                v = prev;
                if chain.len() > self.graph.nodes.len() {
                    return None;
                }
            }
            chain.reverse();
            let first = chain[0];
            let (_, _, start_edge) = best.get(first)?;
            leg.push(a.point, 0.0, start_edge);
            for &n in &chain {
                let (g, _, id) = best.get(n)?;
                leg.push(self.graph.nodes[n as usize], g, id);
            }
            leg.push(b.point, total, end_edge);
            Some(leg)
        })
    }
}

/// Where a driver is on its plan: leg, segment, fraction of the segment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    pub leg: usize,
    pub segment: usize,
    pub frac: f64,
}

/// A driver's plan: one leg per stop, in order, and its progress.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub legs: Vec<Leg>,
    /// When it was computed, ms (the caller's clock).
    pub made_at_ms: i64,
    pub progress: Progress,
    /// Metres along the plan of the progress.
    progress_m: f64,
    /// Where the current speed sample began: time (ms), metres along the plan.
    anchor: Option<(i64, f64)>,
}

/// A speed sample spans at least this much time (GPS noise of a few metres
/// would swamp one second's movement) ...
const SAMPLE_MIN_MS: i64 = 5_000;
/// ... and at most this much (a longer gap is a dead zone).
const SAMPLE_MAX_MS: i64 = 15_000;

/// What one fix told about the plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Advance {
    /// On the path; with a speed sample (edge, m/s) when the move since the
    /// last fix gives one.
    On(Option<(u32, f64)>),
    /// Farther than the tolerance from the path: plan again.
    Off,
}

impl Plan {
    /// Plans from `from` (heading in degrees, if known) through `stops`.
    /// `None` when a point cannot be snapped to a road within reach.
    #[must_use]
    pub fn new(
        net: &Network,
        from: (f64, f64),
        heading: Option<f64>,
        stops: &[(f64, f64)],
        speeds: &SpeedTable,
        now_ms: i64,
    ) -> Option<Self> {
        // Every point on the map first: a stop off it fails before any search.
        let mut at = net.snap(from)?;
        let snapped: Vec<Snap> = stops.iter().map(|&s| net.snap(s)).collect::<Option<_>>()?;
        let mut heading = heading;
        let mut legs = Vec::with_capacity(stops.len());
        for to in snapped {
            legs.push(net.leg(&at, heading, &to, speeds)?);
            at = to;
            heading = None;
        }
        Some(Self {
            legs,
            made_at_ms: now_ms,
            progress: Progress::default(),
            progress_m: 0.0,
            anchor: None,
        })
    }

    /// Times the plan's legs again with the current speeds, keeping its
    /// paths and the driver's progress: what was learned since it was made
    /// reaches the estimates without a new search.
    pub fn retime(&mut self, speeds: &SpeedTable, now_ms: i64) {
        for leg in &mut self.legs {
            let mut acc = 0.0;
            for i in 0..leg.edges.len() {
                let metres = leg.metres[i + 1] - leg.metres[i];
                acc += metres / speeds.speed(leg.edges[i]).max(0.5);
                leg.secs[i + 1] = acc;
            }
        }
        self.made_at_ms = now_ms;
    }

    /// Metres from the plan's start to a progress point.
    fn metres_at(&self, p: Progress) -> f64 {
        let before: f64 = self.legs[..p.leg]
            .iter()
            .map(|l| l.metres.last().copied().unwrap_or(0.0))
            .sum();
        let leg = &self.legs[p.leg];
        let m0 = leg.metres.get(p.segment).copied().unwrap_or(0.0);
        let m1 = leg.metres.get(p.segment + 1).copied().unwrap_or(m0);
        before + m0 + p.frac * (m1 - m0)
    }

    /// Places a fix on the plan, searching ahead of the last progress (and
    /// one segment back, for noise). Off when it is farther than `max_off_m`.
    pub fn advance(&mut self, net: &Network, p: (f64, f64), ts_ms: i64, max_off_m: f64) -> Advance {
        let projection = net.projection();
        let xy = projection.xy(p);
        // Every candidate ahead, in path order; the earliest one within
        // `PREFER_EARLIER_M` of the nearest wins, so a route that doubles
        // back (a dead end, out to the pharmacy and back) is not skipped
        // ahead onto its return.
        let mut candidates: Vec<(f64, Progress)> = Vec::with_capacity(LOOKAHEAD_SEGMENTS);
        let mut seen = 0;
        let start = self.progress;
        'legs: for li in start.leg..self.legs.len() {
            let leg = &self.legs[li];
            let from = if li == start.leg {
                start.segment.saturating_sub(1)
            } else {
                0
            };
            for si in from..leg.points.len().saturating_sub(1) {
                let (t, d, _) = project(
                    xy,
                    projection.xy(leg.points[si]),
                    projection.xy(leg.points[si + 1]),
                );
                candidates.push((
                    d,
                    Progress {
                        leg: li,
                        segment: si,
                        frac: t,
                    },
                ));
                seen += 1;
                if seen >= LOOKAHEAD_SEGMENTS {
                    break 'legs;
                }
            }
        }
        let nearest = candidates.iter().map(|c| c.0).fold(f64::INFINITY, f64::min);
        if nearest > max_off_m {
            return Advance::Off;
        }
        let Some(&(_, prog)) = candidates
            .iter()
            .find(|c| c.0 <= nearest + PREFER_EARLIER_M)
        else {
            return Advance::Off;
        };
        let metres = self.metres_at(prog);
        // Progress never goes backwards (noise around a point does not undo it).
        if metres >= self.progress_m {
            self.progress = prog;
            self.progress_m = metres;
        }
        let mut sample = None;
        match self.anchor {
            Some((t0, _)) if ts_ms - t0 < SAMPLE_MIN_MS => {}
            Some((t0, m0)) => {
                let dt = ts_ms - t0;
                let dm = metres - m0;
                let edge = self.legs[prog.leg].edges.get(prog.segment).copied();
                if dt <= SAMPLE_MAX_MS && dm > 2.0 {
                    sample = edge.map(|e| (e, dm / (dt as f64 / 1000.0)));
                }
                self.anchor = Some((ts_ms, metres));
            }
            None => self.anchor = Some((ts_ms, metres)),
        }
        Advance::On(sample)
    }

    /// Seconds of driving from the current progress to the end of each leg.
    #[must_use]
    pub fn remaining_s(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.legs.len());
        let mut acc = 0.0;
        for (li, leg) in self.legs.iter().enumerate() {
            if li < self.progress.leg {
                out.push(0.0);
                continue;
            }
            if li == self.progress.leg {
                let p = self.progress;
                let s0 = leg.secs.get(p.segment).copied().unwrap_or(0.0);
                let s1 = leg.secs.get(p.segment + 1).copied().unwrap_or(s0);
                acc += (leg.total_s() - (s0 + p.frac * (s1 - s0))).max(0.0);
            } else {
                acc += leg.total_s();
            }
            out.push(acc);
        }
        out
    }
}
