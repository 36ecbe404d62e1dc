//! Snapping a position to the nearest road: a grid of square cells, each
//! listing the edges whose bounding box touches it, so a lookup reads the
//! few cells around the point instead of every edge.

use std::collections::HashMap;

use crate::graph::RoadGraph;

/// Metres per degree of latitude.
pub(crate) const M_PER_DEG: f64 = 111_195.0;

/// A local flat projection around an origin: metres east and north. Exact
/// enough across a city (the extracts here span a few kilometres).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Projection {
    origin: (f64, f64),
    k: f64,
}

impl Projection {
    #[must_use]
    pub fn new(origin: (f64, f64)) -> Self {
        Self {
            origin,
            k: origin.0.to_radians().cos(),
        }
    }

    /// (east, north) metres of a (lat, lng).
    #[must_use]
    pub fn xy(&self, p: (f64, f64)) -> (f64, f64) {
        (
            (p.1 - self.origin.1) * M_PER_DEG * self.k,
            (p.0 - self.origin.0) * M_PER_DEG,
        )
    }

    /// The (lat, lng) of (east, north) metres.
    #[must_use]
    pub fn latlng(&self, (x, y): (f64, f64)) -> (f64, f64) {
        (
            self.origin.0 + y / M_PER_DEG,
            self.origin.1 + x / (M_PER_DEG * self.k),
        )
    }
}

/// Where a position meets the road: on the directed edge `from` → `to`
/// (global id `edge`), at fraction `t` of its length, `dist_m` away.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Snap {
    pub edge: u32,
    pub from: u32,
    pub to: u32,
    pub t: f64,
    pub dist_m: f64,
    /// The point on the road, (lat, lng).
    pub point: (f64, f64),
}

/// An edge in a grid cell: its global id, its start and its end node.
type CellEdge = (u32, u32, u32);

/// The grid of edges.
#[derive(Clone, Debug)]
pub struct Snapper {
    proj: Projection,
    cell_m: f64,
    cells: HashMap<(i32, i32), Vec<CellEdge>>,
}

impl Snapper {
    /// Cells of 50 m: an edge of a city street touches a few.
    #[must_use]
    pub fn new(g: &RoadGraph) -> Self {
        let origin = g.nodes.first().copied().unwrap_or((0.0, 0.0));
        let proj = Projection::new(origin);
        let cell_m = 50.0;
        let mut cells: HashMap<(i32, i32), Vec<CellEdge>> = HashMap::new();
        for (a, es) in g.edges.iter().enumerate() {
            let Ok(a32) = u32::try_from(a) else { continue };
            let pa = proj.xy(g.nodes[a]);
            for (i, e) in es.iter().enumerate() {
                let pb = proj.xy(g.nodes[e.to as usize]);
                let (x0, x1) = (cell(pa.0.min(pb.0), cell_m), cell(pa.0.max(pb.0), cell_m));
                let (y0, y1) = (cell(pa.1.min(pb.1), cell_m), cell(pa.1.max(pb.1), cell_m));
                for cx in x0..=x1 {
                    for cy in y0..=y1 {
                        cells
                            .entry((cx, cy))
                            .or_default()
                            .push((g.edge_id(a32, i), a32, e.to));
                    }
                }
            }
        }
        Self {
            proj,
            cell_m,
            cells,
        }
    }

    /// The projection the grid uses.
    #[must_use]
    pub fn projection(&self) -> Projection {
        self.proj
    }

    /// The nearest road within `max_m` of `p`, if any.
    #[must_use]
    #[allow(
        clippy::many_single_char_names,
        reason = "geometry: the names of its formulas"
    )]
    pub fn snap(&self, g: &RoadGraph, p: (f64, f64), max_m: f64) -> Option<Snap> {
        let (px, py) = self.proj.xy(p);
        let reach = (max_m / self.cell_m).ceil().clamp(0.0, 64.0);
        #[allow(
            clippy::cast_possible_truncation,
            reason = "clamped to 64 cells just above"
        )]
        let reach = reach as i32;
        let (cx, cy) = (cell(px, self.cell_m), cell(py, self.cell_m));
        let mut best: Option<Snap> = None;
        for x in cx - reach..=cx + reach {
            for y in cy - reach..=cy + reach {
                for &(edge, from, to) in self.cells.get(&(x, y)).into_iter().flatten() {
                    let a = self.proj.xy(g.nodes[from as usize]);
                    let b = self.proj.xy(g.nodes[to as usize]);
                    let (t, d, q) = project((px, py), a, b);
                    if d <= max_m && best.is_none_or(|s| d < s.dist_m) {
                        best = Some(Snap {
                            edge,
                            from,
                            to,
                            t,
                            dist_m: d,
                            point: self.proj.latlng(q),
                        });
                    }
                }
            }
        }
        best
    }
}

fn cell(v: f64, size: f64) -> i32 {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a city's metres over 50 fit i32; out-of-range saturates"
    )]
    let c = (v / size).floor() as i32;
    c
}

/// Projects `p` onto segment `a`–`b`: (fraction along, distance, the point).
#[allow(
    clippy::many_single_char_names,
    reason = "geometry: the names of its formulas"
)]
pub(crate) fn project(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> (f64, f64, (f64, f64)) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let q = (a.0 + t * dx, a.1 + t * dy);
    (t, (p.0 - q.0).hypot(p.1 - q.1), q)
}
