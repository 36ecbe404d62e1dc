//! Point lookups with 1k, 10k and 100k active fences (40–300 m circles and
//! small polygons spread over a city), next to a brute-force scan and an
//! R-tree (`rstar`) of bounding boxes with the same exact test, in one run;
//! the cost of adding and removing a fence; heap bytes per fence; and a
//! crowded spot (5,000 fences at one pharmacy), whole and filtered.
//!
//! `cargo bench -p rxtrack-geofence --bench lookup`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use geofence::{Fence, FenceId, FenceIndex, Fix, Point, ProximityConfig, Subject, TrackConfig};
use rstar::RTree;
use rstar::primitives::{GeomWithData, Rectangle};

/// A deterministic generator (xorshift), so every run sees the same city.
struct Rng(u64);

impl Rng {
    fn bits(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn next(&mut self) -> f64 {
        (self.bits() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.bits() % n as u64).unwrap_or(0)
    }
}

/// A 40 km × 40 km area around Helsinki.
const LAT: (f64, f64) = (60.05, 60.41);
const LNG: (f64, f64) = (24.55, 25.27);

fn offset(lat: f64, lng: f64, d: f64, b: f64) -> [f64; 2] {
    [
        lat + d * b.cos() / 111_195.0,
        lng + d * b.sin() / (111_195.0 * lat.to_radians().cos()),
    ]
}

fn city(n: usize, rng: &mut Rng) -> Vec<Fence> {
    (0..n)
        .map(|i| {
            let lat = LAT.0 + rng.next() * (LAT.1 - LAT.0);
            let lng = LNG.0 + rng.next() * (LNG.1 - LNG.0);
            let r = 40.0 + rng.next() * 260.0;
            if i % 5 == 0 {
                // A small polygon: an irregular hexagon of radius 0.5–1 × r.
                let hexagon: Vec<[f64; 2]> = (0..6)
                    .map(|k| {
                        offset(
                            lat,
                            lng,
                            r * (0.5 + 0.5 * rng.next()),
                            std::f64::consts::TAU * f64::from(k) / 6.0,
                        )
                    })
                    .collect();
                Fence::polygon(&[&hexagon]).expect("a star-shaped hexagon is simple")
            } else {
                Fence::circle(Point::new(lat, lng).expect("in range"), r).expect("valid radius")
            }
        })
        .collect()
}

/// Query points: half inside some fence, half anywhere.
fn probes(fences: &[Fence], rng: &mut Rng) -> Vec<Point> {
    (0..4096)
        .map(|i| {
            if i % 2 == 0 {
                let (anchor, _) = fences[rng.below(fences.len())].bounds();
                anchor
            } else {
                Point::new(
                    LAT.0 + rng.next() * (LAT.1 - LAT.0),
                    LNG.0 + rng.next() * (LNG.1 - LNG.0),
                )
                .expect("in range")
            }
        })
        .collect()
}

type Boxed = GeomWithData<Rectangle<[f64; 2]>, usize>;

fn bbox(f: &Fence) -> Rectangle<[f64; 2]> {
    let (anchor, r) = f.bounds();
    let dlat = r / 111_195.0;
    let dlng = r / (111_195.0 * anchor.lat().to_radians().cos());
    Rectangle::from_corners(
        [anchor.lat() - dlat, anchor.lng() - dlng],
        [anchor.lat() + dlat, anchor.lng() + dlng],
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    g.throughput(Throughput::Elements(1));
    for n in [1_000usize, 10_000, 100_000] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
        let fences = city(n, &mut rng);
        let points = probes(&fences, &mut rng);
        let mut idx = FenceIndex::new();
        for (i, f) in fences.iter().enumerate() {
            idx.insert(FenceId(i as u64), f.clone());
        }
        eprintln!(
            "{n} fences: {} heap bytes in the index, {} per fence",
            idx.heap_bytes(),
            idx.heap_bytes() / n
        );
        let tree: RTree<Boxed> = RTree::bulk_load(
            fences
                .iter()
                .enumerate()
                .map(|(i, f)| Boxed::new(bbox(f), i))
                .collect(),
        );

        let mut out = Vec::with_capacity(16);
        let mut i = 0usize;
        if n == 1_000 {
            // The fixed cost under every lookup: the point's finest cell.
            g.bench_function("h3o_to_cell_res12_only", |b| {
                b.iter(|| {
                    i = (i + 1) % points.len();
                    let p = black_box(points[i]);
                    h3o::LatLng::new(p.lat(), p.lng())
                        .map(|ll| ll.to_cell(h3o::Resolution::Twelve))
                        .ok()
                });
            });
        }
        g.bench_with_input(BenchmarkId::new("h3_index", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % points.len();
                out.clear();
                idx.lookup_into(black_box(points[i]), &mut out);
                out.len()
            });
        });
        g.bench_with_input(BenchmarkId::new("rstar_bbox_then_exact", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % points.len();
                let p = black_box(points[i]);
                tree.locate_all_at_point(&[p.lat(), p.lng()])
                    .filter(|e| fences[e.data].contains(p))
                    .count()
            });
        });
        if n <= 10_000 {
            g.bench_with_input(BenchmarkId::new("brute_force", n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) % points.len();
                    let p = black_box(points[i]);
                    fences.iter().filter(|f| f.contains(p)).count()
                });
            });
        }
        if n == 10_000 {
            let extra = city(256, &mut Rng(7));
            let mut k = 0usize;
            g.bench_function(BenchmarkId::new("insert_then_remove_one_fence", n), |b| {
                b.iter(|| {
                    k = (k + 1) % extra.len();
                    idx.insert(FenceId(1 << 40), extra[k].clone());
                    idx.remove(FenceId(1 << 40))
                });
            });
        }
    }
    g.finish();
}

/// A busy pharmacy: the pickup fence of each of 5,000 deliveries at one
/// spot, and a driver there who cares about its own two stops.
fn crowded_spot(c: &mut Criterion) {
    let mut g = c.benchmark_group("crowded_spot_5000_fences");
    let mut idx = FenceIndex::new();
    let pharmacy = Point::new(60.1699, 24.9384).expect("a valid point");
    for i in 0..5000u64 {
        idx.insert(
            FenceId(i),
            Fence::circle(pharmacy, 60.0).expect("a valid fence"),
        );
    }
    let here = Point::new(60.16995, 24.93845).expect("a valid point");
    let mine = [FenceId(1234), FenceId(4321)];
    g.throughput(Throughput::Elements(1));
    g.bench_function("lookup_all", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            out.clear();
            idx.lookup_into(black_box(here), &mut out);
            out.len()
        });
    });
    g.bench_function("lookup_where_own_two", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            out.clear();
            idx.lookup_where(black_box(here), &mut out, |id| mine.contains(&id));
            out.len()
        });
    });
    // The proximity detector of a driver parked there: every fence, or its own.
    let mut ts = 1_764_072_000_000i64;
    let mut fix = move || {
        ts += 1000;
        Fix {
            ts_ms: ts,
            point: here,
            accuracy_m: Some(5.0),
            speed_mps: None,
        }
    };
    let mut all = Subject::default();
    let mut own = Subject::default();
    let mut events = Vec::new();
    g.bench_function("detector_every_fence", |b| {
        b.iter(|| {
            events.clear();
            all.observe(
                &idx,
                &fix(),
                &TrackConfig::default(),
                |_| ProximityConfig::default(),
                &mut events,
            );
        });
    });
    g.bench_function("detector_own_two", |b| {
        b.iter(|| {
            events.clear();
            own.observe_only(
                &idx,
                &fix(),
                &TrackConfig::default(),
                |_| ProximityConfig::default(),
                |id| mine.contains(&id),
                &mut events,
            );
        });
    });
    g.finish();
}

criterion_group!(benches, bench, crowded_spot);
criterion_main!(benches);
