//! A drivable road graph from an OpenStreetMap extract, and shortest paths
//! by travel time.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use osmpbf::{Element, ElementReader};

/// Why a road graph could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RoadError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("{0} has no drivable roads")]
    Empty(String),
}

/// A road edge from one node to another.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Edge {
    pub to: u32,
    pub len_m: f64,
    /// Free-flow speed for the road's class (or its `maxspeed`), m/s.
    pub speed_mps: f64,
}

/// Nodes (lat, lng) and directed edges of the drivable network, restricted
/// to its largest strongly connected component so that every node can
/// reach every other.
#[derive(Clone, Debug, Default)]
pub struct RoadGraph {
    pub nodes: Vec<(f64, f64)>,
    pub edges: Vec<Vec<Edge>>,
    /// The global id of each node's first edge: edge `i` of node `v` is
    /// edge `first_edge[v] + i` (ids index per-edge tables such as learned
    /// speeds).
    first_edge: Vec<u32>,
}

/// Great-circle distance, metres.
#[must_use]
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let dl = (b.1 - a.1).to_radians();
    let h = ((p2 - p1) / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6_371_008.8 * h.sqrt().min(1.0).asin()
}

/// Free-flow speed of a `highway=*` class, m/s; `None` if not drivable.
#[must_use]
pub fn class_speed(highway: &str) -> Option<f64> {
    let kmh = match highway {
        "motorway" => 100.0,
        "motorway_link" | "trunk_link" => 60.0,
        "trunk" => 80.0,
        "primary" | "primary_link" => 50.0,
        "secondary" | "secondary_link" => 45.0,
        "tertiary" | "tertiary_link" => 40.0,
        "unclassified" => 35.0,
        "residential" => 30.0,
        "service" => 20.0,
        "living_street" => 10.0,
        _ => return None,
    };
    Some(kmh / 3.6)
}

fn parse_maxspeed(v: &str) -> Option<f64> {
    let n: f64 = v.split_whitespace().next()?.parse().ok()?;
    (n > 0.0 && n < 200.0).then_some(n / 3.6)
}

struct Way {
    refs: Vec<i64>,
    speed: f64,
    oneway: i8,
}

impl RoadGraph {
    /// Reads an `.osm.pbf` extract.
    pub fn from_pbf(path: &Path) -> Result<Self, RoadError> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| RoadError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Self::from_reader(std::io::BufReader::new(file), &shown)
    }

    /// Reads an `.osm.pbf` extract held in memory (`name` is for errors).
    pub fn from_pbf_bytes(bytes: &[u8], name: &str) -> Result<Self, RoadError> {
        Self::from_reader(std::io::Cursor::new(bytes), name)
    }

    fn from_reader<R: std::io::Read + Send>(input: R, shown: &str) -> Result<Self, RoadError> {
        let shown = shown.to_owned();
        let reader = ElementReader::new(input);
        let mut coords: HashMap<i64, (f64, f64)> = HashMap::new();
        let mut ways: Vec<Way> = Vec::new();
        reader
            .for_each(|el| match el {
                Element::Node(n) => {
                    coords.insert(n.id(), (n.lat(), n.lon()));
                }
                Element::DenseNode(n) => {
                    coords.insert(n.id(), (n.lat(), n.lon()));
                }
                Element::Way(w) => {
                    let mut highway = None;
                    let mut maxspeed = None;
                    let mut oneway = 0i8;
                    for (k, v) in w.tags() {
                        match k {
                            "highway" => highway = class_speed(v).map(|s| (s, v == "motorway")),
                            "maxspeed" => maxspeed = parse_maxspeed(v),
                            "oneway" => {
                                oneway = match v {
                                    "yes" | "true" | "1" => 1,
                                    "-1" | "reverse" => -1,
                                    _ => 0,
                                };
                            }
                            _ => {}
                        }
                    }
                    if let Some((speed, motorway)) = highway {
                        ways.push(Way {
                            refs: w.refs().collect(),
                            speed: maxspeed.unwrap_or(speed),
                            oneway: if oneway == 0 && motorway { 1 } else { oneway },
                        });
                    }
                }
                Element::Relation(_) => {}
            })
            .map_err(|e| RoadError::Read {
                path: shown.clone(),
                message: e.to_string(),
            })?;

        let mut index: HashMap<i64, u32> = HashMap::new();
        let mut g = RoadGraph::default();
        let mut id_of = |osm: i64, g: &mut RoadGraph| -> Option<u32> {
            if let Some(i) = index.get(&osm) {
                return Some(*i);
            }
            let c = *coords.get(&osm)?;
            let i = u32::try_from(g.nodes.len()).ok()?;
            g.nodes.push(c);
            g.edges.push(Vec::new());
            index.insert(osm, i);
            Some(i)
        };
        for w in &ways {
            for pair in w.refs.windows(2) {
                let (Some(a), Some(b)) = (id_of(pair[0], &mut g), id_of(pair[1], &mut g)) else {
                    continue;
                };
                let len_m = distance_m(g.nodes[a as usize], g.nodes[b as usize]);
                if len_m <= 0.0 {
                    continue;
                }
                if w.oneway >= 0 {
                    g.edges[a as usize].push(Edge {
                        to: b,
                        len_m,
                        speed_mps: w.speed,
                    });
                }
                if w.oneway <= 0 {
                    g.edges[b as usize].push(Edge {
                        to: a,
                        len_m,
                        speed_mps: w.speed,
                    });
                }
            }
        }
        let mut g = g.largest_component();
        if g.nodes.is_empty() {
            return Err(RoadError::Empty(shown));
        }
        g.number_edges();
        Ok(g)
    }

    /// Gives every directed edge its global id.
    fn number_edges(&mut self) {
        let mut next = 0u32;
        self.first_edge = self
            .edges
            .iter()
            .map(|es| {
                let first = next;
                next = next.saturating_add(u32::try_from(es.len()).unwrap_or(u32::MAX));
                first
            })
            .collect();
    }

    /// The global id of edge `i` of node `v`.
    #[must_use]
    pub fn edge_id(&self, v: u32, i: usize) -> u32 {
        self.first_edge
            .get(v as usize)
            .map_or(0, |f| f + u32::try_from(i).unwrap_or(0))
    }

    /// The edge from `a` to `b` with its global id, if any.
    #[must_use]
    pub fn edge_with_id(&self, a: u32, b: u32) -> Option<(u32, &Edge)> {
        let (i, e) = self
            .edges
            .get(a as usize)?
            .iter()
            .enumerate()
            .find(|(_, e)| e.to == b)?;
        Some((self.edge_id(a, i), e))
    }

    /// Number of directed edges.
    #[must_use]
    pub fn edge_count(&self) -> usize {
        self.edges.iter().map(Vec::len).sum()
    }

    /// Total length of the directed edges, metres.
    #[must_use]
    pub fn total_length_m(&self) -> f64 {
        self.edges.iter().flatten().map(|e| e.len_m).sum()
    }

    /// The largest strongly connected component (Kosaraju, iterative).
    fn largest_component(self) -> Self {
        let n = self.nodes.len();
        let mut order = Vec::with_capacity(n);
        let mut seen = vec![false; n];
        for s in 0..n {
            if seen[s] {
                continue;
            }
            seen[s] = true;
            let mut stack = vec![(s, 0usize)];
            while let Some((v, i)) = stack.pop() {
                if let Some(e) = self.edges[v].get(i) {
                    stack.push((v, i + 1));
                    let w = e.to as usize;
                    if !seen[w] {
                        seen[w] = true;
                        stack.push((w, 0));
                    }
                } else {
                    order.push(v);
                }
            }
        }
        let mut reverse: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (v, es) in self.edges.iter().enumerate() {
            for e in es {
                reverse[e.to as usize].push(v);
            }
        }
        let mut comp = vec![usize::MAX; n];
        let mut sizes = Vec::new();
        for &s in order.iter().rev() {
            if comp[s] != usize::MAX {
                continue;
            }
            let c = sizes.len();
            let mut size = 0;
            let mut stack = vec![s];
            comp[s] = c;
            while let Some(v) = stack.pop() {
                size += 1;
                for &w in &reverse[v] {
                    if comp[w] == usize::MAX {
                        comp[w] = c;
                        stack.push(w);
                    }
                }
            }
            sizes.push(size);
        }
        let Some(best) = (0..sizes.len()).max_by_key(|&c| sizes[c]) else {
            return RoadGraph::default();
        };
        let mut remap = vec![u32::MAX; n];
        let mut out = RoadGraph::default();
        for v in 0..n {
            if comp[v] == best {
                remap[v] = u32::try_from(out.nodes.len()).unwrap_or(u32::MAX);
                out.nodes.push(self.nodes[v]);
            }
        }
        out.edges = vec![Vec::new(); out.nodes.len()];
        for v in 0..n {
            if comp[v] != best {
                continue;
            }
            for e in &self.edges[v] {
                let to = remap[e.to as usize];
                if to != u32::MAX {
                    out.edges[remap[v] as usize].push(Edge { to, ..*e });
                }
            }
        }
        out
    }

    /// The fastest path from `from` to `to` (node indices), by free-flow
    /// travel time; `None` if unreachable.
    #[must_use]
    pub fn fastest_path(&self, from: u32, to: u32) -> Option<Vec<u32>> {
        let n = self.nodes.len();
        let mut best = vec![f64::INFINITY; n];
        let mut prev = vec![u32::MAX; n];
        let mut heap = BinaryHeap::new();
        best[from as usize] = 0.0;
        heap.push(Item(0.0, from));
        while let Some(Item(t, v)) = heap.pop() {
            if v == to {
                break;
            }
            if t > best[v as usize] {
                continue;
            }
            for e in &self.edges[v as usize] {
                let nt = t + e.len_m / e.speed_mps;
                if nt < best[e.to as usize] {
                    best[e.to as usize] = nt;
                    prev[e.to as usize] = v;
                    heap.push(Item(nt, e.to));
                }
            }
        }
        if !best[to as usize].is_finite() {
            return None;
        }
        let mut path = vec![to];
        let mut v = to;
        while v != from {
            v = prev[v as usize];
            path.push(v);
        }
        path.reverse();
        Some(path)
    }

    /// The edge from `a` to `b`, if any.
    #[must_use]
    pub fn edge(&self, a: u32, b: u32) -> Option<&Edge> {
        self.edges.get(a as usize)?.iter().find(|e| e.to == b)
    }

    /// Distance from a point to the nearest road edge, metres (for tests).
    #[must_use]
    pub fn distance_to_road_m(&self, p: (f64, f64)) -> f64 {
        let k = p.0.to_radians().cos();
        let xy = |q: (f64, f64)| ((q.1 - p.1) * 111_195.0 * k, (q.0 - p.0) * 111_195.0);
        let mut best = f64::INFINITY;
        for (a, es) in self.edges.iter().enumerate() {
            let (ax, ay) = xy(self.nodes[a]);
            for e in es {
                let (bx, by) = xy(self.nodes[e.to as usize]);
                let (dx, dy) = (bx - ax, by - ay);
                let len2 = dx * dx + dy * dy;
                let t = if len2 > 0.0 {
                    ((-ax) * dx + (-ay) * dy) / len2
                } else {
                    0.0
                }
                .clamp(0.0, 1.0);
                let (cx, cy) = (ax + t * dx, ay + t * dy);
                best = best.min((cx * cx + cy * cy).sqrt());
            }
        }
        best
    }
}

/// A node in a search queue: smallest cost first (`BinaryHeap` is a
/// max-heap, so the order is reversed), ties by node.
#[derive(PartialEq)]
pub(crate) struct Item(pub f64, pub u32);
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .total_cmp(&self.0)
            .then_with(|| self.1.cmp(&other.1))
    }
}
