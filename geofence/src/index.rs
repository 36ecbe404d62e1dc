//! The H3 index: which fences contain a point, in a few hash lookups.
//!
//! Each fence is covered by H3 cells at a resolution chosen from its size
//! (cell edge about a third of its radius), and each covering cell is
//! classified:
//! - **interior**: every point that H3 assigns to the cell (or to any of its
//!   descendants) is inside the fence, so the answer needs no geometry;
//! - **edge**: the cell may hold points on both sides, so the exact test
//!   ([`Fence::contains`]) decides.
//!
//! The interior and edge sets are compacted separately (seven full siblings
//! become their parent). A lookup computes the point's cell at the finest
//! resolution in use and walks its ancestors, one hash lookup per resolution
//! that holds any cell.
//!
//! Why the answer is exact: H3 descendants do not tile their ancestor
//! exactly, but every point whose fine cell descends from a cell `C` lies
//! within about 1.06 × the circumradius of `C`'s centre (a geometric series
//! over the aperture-7 levels). Covering and classifying with a margin of
//! 1.5 × the circumradius, measured on the cell's own boundary, makes the
//! cover complete (no point inside a fence can miss it) and interior cells
//! sound (the signed distance to the edge is 1-Lipschitz). Property tests
//! check the index against brute force.

use std::collections::VecDeque;

use h3o::{CellIndex, LatLng, Resolution};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::fence::{Fence, Point};

/// Coarsest and finest resolution a fence is covered at.
pub const MIN_RES: u8 = 5;
pub const MAX_RES: u8 = 13;
/// Safety margin over a cell's circumradius (see the module docs).
const MARGIN: f64 = 1.5;
/// The top bit of an entry marks an interior cell.
const INTERIOR: u32 = 1 << 31;

/// A caller-chosen fence identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FenceId(pub u64);

struct Stored {
    id: FenceId,
    fence: Fence,
    cells: Vec<CellIndex>,
}

/// An index of fences that can be changed at run time.
#[derive(Default)]
pub struct FenceIndex {
    slots: Vec<Option<Stored>>,
    free: Vec<u32>,
    by_id: FxHashMap<FenceId, u32>,
    cells: FxHashMap<u64, Vec<u32>>,
    /// How many cells of each resolution are in `cells`.
    per_res: [u32; 16],
}

impl std::fmt::Debug for FenceIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FenceIndex")
            .field("fences", &self.by_id.len())
            .field("cells", &self.cells.len())
            .finish()
    }
}

/// The resolution a fence of bounding radius `r` metres is covered at.
#[must_use]
pub fn resolution_for(radius_m: f64) -> Resolution {
    let target = radius_m / 3.0;
    for r in MIN_RES..=MAX_RES {
        let res = Resolution::try_from(r).unwrap_or(Resolution::Thirteen);
        if res.edge_length_m() <= target {
            return res;
        }
    }
    Resolution::try_from(MAX_RES).unwrap_or(Resolution::Thirteen)
}

fn to_latlng(p: Point) -> LatLng {
    LatLng::new(p.lat(), p.lng()).expect("a Point is finite and in range, as h3o requires")
}

fn to_point(ll: LatLng) -> Point {
    Point::new(ll.lat(), ll.lng()).expect("h3o yields finite coordinates in range")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Interior,
    Edge,
    Outside,
}

fn classify(fence: &Fence, cell: CellIndex) -> Class {
    let center = LatLng::from(cell);
    let c = to_point(center);
    let circumradius = cell
        .boundary()
        .iter()
        .map(|v| c.distance_m(to_point(*v)))
        .fold(0.0, f64::max);
    let margin = MARGIN * circumradius;
    let d = fence.distance_to_edge_m(c);
    if d <= -margin {
        Class::Interior
    } else if d <= margin {
        Class::Edge
    } else {
        Class::Outside
    }
}

/// The cover of a fence: `(interior, edge)` cells at `res`, uncompacted.
#[must_use]
pub fn cover(fence: &Fence, res: Resolution) -> (Vec<CellIndex>, Vec<CellIndex>) {
    let (anchor, _) = fence.bounds();
    let start = to_latlng(anchor).to_cell(res);
    let mut seen: FxHashSet<CellIndex> = FxHashSet::default();
    let mut queue = VecDeque::from([start]);
    seen.insert(start);
    let (mut interior, mut edge) = (Vec::new(), Vec::new());
    while let Some(cell) = queue.pop_front() {
        match classify(fence, cell) {
            Class::Outside => continue,
            Class::Interior => interior.push(cell),
            Class::Edge => edge.push(cell),
        }
        for n in cell.grid_disk::<Vec<_>>(1) {
            if seen.insert(n) {
                queue.push_back(n);
            }
        }
    }
    (interior, edge)
}

fn compacted(mut cells: Vec<CellIndex>) -> Vec<CellIndex> {
    let fallback = cells.clone();
    // Compaction only fails on duplicates or mixed resolutions, which a
    // cover never has; the uncompacted set is correct either way.
    match CellIndex::compact(&mut cells) {
        Ok(()) => cells,
        Err(_) => fallback,
    }
}

impl FenceIndex {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of fences.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds a fence, replacing any fence with the same id.
    ///
    /// ```
    /// use geofence::{Fence, FenceId, FenceIndex, Point};
    /// let mut idx = FenceIndex::new();
    /// idx.insert(FenceId(7), Fence::circle(Point::new(60.1699, 24.9384)?, 60.0)?);
    /// assert_eq!(idx.lookup(Point::new(60.1700, 24.9385)?), vec![FenceId(7)]);
    /// assert!(idx.lookup(Point::new(60.1750, 24.9384)?).is_empty());
    /// idx.remove(FenceId(7));
    /// assert!(idx.lookup(Point::new(60.1700, 24.9385)?).is_empty());
    /// # Ok::<(), geofence::FenceError>(())
    /// ```
    pub fn insert(&mut self, id: FenceId, fence: Fence) {
        self.remove(id);
        let (_, radius) = fence.bounds();
        let res = resolution_for(radius);
        let (interior, edge) = cover(&fence, res);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX >> 1)
        });
        let mut cells = Vec::new();
        for (set, flag) in [(compacted(interior), INTERIOR), (compacted(edge), 0)] {
            for c in set {
                self.cells
                    .entry(u64::from(c))
                    .or_default()
                    .push(slot | flag);
                self.per_res[usize::from(u8::from(c.resolution()))] += 1;
                cells.push(c);
            }
        }
        self.by_id.insert(id, slot);
        self.slots[slot as usize] = Some(Stored { id, fence, cells });
    }

    /// Removes a fence; returns it if it was there.
    pub fn remove(&mut self, id: FenceId) -> Option<Fence> {
        let slot = self.by_id.remove(&id)?;
        let stored = self.slots.get_mut(slot as usize)?.take()?;
        for c in &stored.cells {
            let key = u64::from(*c);
            if let Some(v) = self.cells.get_mut(&key) {
                v.retain(|e| e & !INTERIOR != slot);
                if v.is_empty() {
                    self.cells.remove(&key);
                }
            }
            self.per_res[usize::from(u8::from(c.resolution()))] -= 1;
        }
        self.free.push(slot);
        Some(stored.fence)
    }

    /// The fence with this id.
    #[must_use]
    pub fn get(&self, id: FenceId) -> Option<&Fence> {
        let slot = *self.by_id.get(&id)?;
        self.slots.get(slot as usize)?.as_ref().map(|s| &s.fence)
    }

    /// Every fence that contains `p`, in no particular order.
    #[must_use]
    pub fn lookup(&self, p: Point) -> Vec<FenceId> {
        let mut out = Vec::new();
        self.lookup_into(p, &mut out);
        out
    }

    /// Like [`Self::lookup`], appending to `out` (no allocation when it has room).
    pub fn lookup_into(&self, p: Point, out: &mut Vec<FenceId>) {
        self.lookup_where(p, out, |_| true);
    }

    /// Like [`Self::lookup_into`], for the fences `keep` accepts only: the
    /// others are skipped before their exact test, so many fences at one
    /// spot cost a caller that wants few of them one check each.
    pub fn lookup_where(&self, p: Point, out: &mut Vec<FenceId>, keep: impl Fn(FenceId) -> bool) {
        let Some(finest) = (0..16).rev().find(|&r| self.per_res[r] > 0) else {
            return;
        };
        let res = Resolution::try_from(u8::try_from(finest).unwrap_or(MAX_RES))
            .unwrap_or(Resolution::Thirteen);
        let cell = to_latlng(p).to_cell(res);
        for r in (0..=finest).rev() {
            if self.per_res[r] == 0 {
                continue;
            }
            let Some(ancestor) = Resolution::try_from(u8::try_from(r).unwrap_or(0))
                .ok()
                .and_then(|res| cell.parent(res))
            else {
                continue;
            };
            let Some(entries) = self.cells.get(&u64::from(ancestor)) else {
                continue;
            };
            for &e in entries {
                let slot = e & !INTERIOR;
                let Some(Some(stored)) = self.slots.get(slot as usize) else {
                    continue;
                };
                if keep(stored.id) && (e & INTERIOR != 0 || stored.fence.contains(p)) {
                    out.push(stored.id);
                }
            }
        }
    }

    /// The same answer by testing every fence (for tests and benchmarks).
    #[must_use]
    pub fn lookup_brute_force(&self, p: Point) -> Vec<FenceId> {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.fence.contains(p))
            .map(|s| s.id)
            .collect()
    }

    /// Cells (compacted) the index holds for a fence.
    #[must_use]
    pub fn cells_of(&self, id: FenceId) -> &[CellIndex] {
        self.by_id
            .get(&id)
            .and_then(|s| self.slots.get(*s as usize))
            .and_then(Option::as_ref)
            .map_or(&[], |s| s.cells.as_slice())
    }

    /// Approximate heap bytes held by the index (for memory-per-fence figures).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        let cell_map = self.cells.capacity() * (8 + std::mem::size_of::<Vec<u32>>() + 1)
            + self.cells.values().map(|v| v.capacity() * 4).sum::<usize>();
        let slots = self.slots.capacity() * std::mem::size_of::<Option<Stored>>()
            + self
                .slots
                .iter()
                .flatten()
                .map(|s| {
                    s.cells.capacity() * 8
                        + match &s.fence {
                            Fence::Circle(_) => 0,
                            Fence::Polygon(_) => s.fence_vertex_bytes(),
                        }
                })
                .sum::<usize>();
        let ids = self.by_id.capacity() * (8 + 4 + 1);
        cell_map + slots + ids
    }
}

impl Stored {
    fn fence_vertex_bytes(&self) -> usize {
        match &self.fence {
            Fence::Circle(_) => 0,
            Fence::Polygon(p) => p.vertex_count() * std::mem::size_of::<Point>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lng: f64) -> Point {
        Point::new(lat, lng).unwrap()
    }

    #[test]
    fn resolution_follows_size() {
        assert_eq!(resolution_for(40.0), Resolution::Twelve);
        assert_eq!(resolution_for(300.0), Resolution::Ten);
        assert_eq!(resolution_for(1.0), Resolution::Thirteen);
        assert_eq!(resolution_for(100_000.0), Resolution::Five);
    }

    #[test]
    fn interior_and_edge_cells_cover_a_circle() {
        let f = Fence::circle(p(60.1699, 24.9384), 300.0).unwrap();
        let (interior, edge) = cover(&f, resolution_for(300.0));
        assert!(!interior.is_empty() && !edge.is_empty());
        let mut idx = FenceIndex::new();
        idx.insert(FenceId(1), f);
        // Compaction keeps the cell count small.
        assert!(idx.cells_of(FenceId(1)).len() <= interior.len() + edge.len());
    }

    #[test]
    fn a_filtered_lookup_is_the_lookup_filtered() {
        // Many fences at one spot (a pharmacy's pickups) and some nearby.
        let mut idx = FenceIndex::new();
        for i in 0..200u32 {
            let r = if i < 150 { 60.0 } else { 20.0 + f64::from(i) };
            let i = u64::from(i);
            idx.insert(FenceId(i), Fence::circle(p(60.1699, 24.9384), r).unwrap());
        }
        for q in [
            p(60.1699, 24.9384),
            p(60.1703, 24.9384),
            p(60.1712, 24.9390),
        ] {
            let mut all = idx.lookup(q);
            all.retain(|id| id.0 % 7 == 3);
            all.sort_unstable();
            let mut some = Vec::new();
            idx.lookup_where(q, &mut some, |id| id.0 % 7 == 3);
            some.sort_unstable();
            assert_eq!(some, all);
        }
        let mut none = Vec::new();
        idx.lookup_where(p(60.1699, 24.9384), &mut none, |_| false);
        assert!(none.is_empty());
    }

    #[test]
    fn removal_leaves_nothing_behind() {
        let mut idx = FenceIndex::new();
        for i in 0..50u32 {
            let f =
                Fence::circle(p(60.16 + f64::from(i) * 1e-3, 24.93), 40.0 + f64::from(i)).unwrap();
            idx.insert(FenceId(i.into()), f);
        }
        for i in 0..50 {
            assert!(idx.remove(FenceId(i)).is_some());
        }
        assert!(idx.cells.is_empty());
        assert_eq!(idx.per_res, [0; 16]);
        assert!(idx.is_empty());
    }

    #[test]
    fn overlapping_fences_are_all_found_once() {
        let mut idx = FenceIndex::new();
        idx.insert(FenceId(1), Fence::circle(p(60.17, 24.94), 300.0).unwrap());
        idx.insert(FenceId(2), Fence::circle(p(60.17, 24.94), 40.0).unwrap());
        let sq = [
            [60.168, 24.936],
            [60.168, 24.944],
            [60.172, 24.944],
            [60.172, 24.936],
        ];
        idx.insert(FenceId(3), Fence::polygon(&[&sq[..]]).unwrap());
        let mut got = idx.lookup(p(60.17, 24.94));
        got.sort();
        assert_eq!(got, vec![FenceId(1), FenceId(2), FenceId(3)]);
        // Replacing an id keeps one fence under it.
        idx.insert(FenceId(2), Fence::circle(p(61.0, 25.0), 40.0).unwrap());
        let mut got = idx.lookup(p(60.17, 24.94));
        got.sort();
        assert_eq!(got, vec![FenceId(1), FenceId(3)]);
    }
}
