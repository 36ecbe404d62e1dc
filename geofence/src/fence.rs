//! Fences (circles and polygons with holes), their validation, GeoJSON input,
//! and the exact tests the index falls back to.
//!
//! Semantics: a circle contains the points whose great-circle (haversine)
//! distance to its centre is at most its radius. A polygon follows GeoJSON
//! (RFC 7946): straight edges in longitude/latitude, even-odd rule, holes
//! excluded. Fences may not cross the antimeridian.

use serde_json::Value;

/// Mean Earth radius, metres (IUGG).
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// Smallest and largest circle radius, metres.
pub const MIN_RADIUS_M: f64 = 1.0;
pub const MAX_RADIUS_M: f64 = 100_000.0;
/// Most vertices in one polygon, holes included (validation is quadratic).
pub const MAX_VERTICES: usize = 2048;
/// Most holes in one polygon.
pub const MAX_HOLES: usize = 64;
/// Largest GeoJSON text accepted, bytes.
pub const MAX_GEOJSON_BYTES: usize = 1024 * 1024;

/// A WGS84 position, checked to be finite and in range (also when read
/// back: it deserializes from `[lat, lng]` through [`Point::new`]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "(f64, f64)", into = "(f64, f64)")]
pub struct Point {
    lat: f64,
    lng: f64,
}

impl TryFrom<(f64, f64)> for Point {
    type Error = FenceError;

    fn try_from((lat, lng): (f64, f64)) -> Result<Self, FenceError> {
        Self::new(lat, lng)
    }
}

impl From<Point> for (f64, f64) {
    fn from(p: Point) -> Self {
        (p.lat, p.lng)
    }
}

impl Point {
    /// A point from latitude and longitude in degrees.
    ///
    /// ```
    /// let p = geofence::Point::new(60.1699, 24.9384).unwrap();
    /// assert_eq!(p.lat(), 60.1699);
    /// assert!(geofence::Point::new(91.0, 0.0).is_err());
    /// ```
    pub fn new(lat: f64, lng: f64) -> Result<Self, FenceError> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(FenceError::Latitude(lat));
        }
        if !lng.is_finite() || !(-180.0..=180.0).contains(&lng) {
            return Err(FenceError::Longitude(lng));
        }
        Ok(Self { lat, lng })
    }

    #[must_use]
    pub fn lat(self) -> f64 {
        self.lat
    }

    #[must_use]
    pub fn lng(self) -> f64 {
        self.lng
    }

    /// Great-circle distance in metres (haversine).
    #[must_use]
    pub fn distance_m(self, other: Point) -> f64 {
        let (p1, p2) = (self.lat.to_radians(), other.lat.to_radians());
        let dp = p2 - p1;
        let dl = (other.lng - self.lng).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
    }
}

/// Why a fence (or a point) was refused. Each variant carries the bad value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FenceError {
    #[error("latitude {0} is not a finite number within -90..=90")]
    Latitude(f64),
    #[error("longitude {0} is not a finite number within -180..=180")]
    Longitude(f64),
    #[error("radius {0} m is not within {MIN_RADIUS_M}..={MAX_RADIUS_M}")]
    Radius(f64),
    #[error("ring {ring} has {count} distinct vertices; a ring needs at least 3")]
    TooFewVertices { ring: usize, count: usize },
    #[error("the polygon has {0} vertices; at most {MAX_VERTICES} are allowed")]
    TooManyVertices(usize),
    #[error("the polygon has {0} holes; at most {MAX_HOLES} are allowed")]
    TooManyHoles(usize),
    #[error("ring {ring} has no area")]
    NoArea { ring: usize },
    #[error("ring {ring_a} edge {edge_a} crosses ring {ring_b} edge {edge_b}")]
    SelfIntersection {
        ring_a: usize,
        edge_a: usize,
        ring_b: usize,
        edge_b: usize,
    },
    #[error("hole {0} is not inside the exterior ring")]
    HoleOutside(usize),
    #[error("the fence spans {0}° of longitude; fences may not cross the antimeridian")]
    Antimeridian(f64),
    #[error("the polygon reaches {0:.0} m from its first vertex, more than allowed")]
    TooLarge(f64),
    #[error("GeoJSON: {0}")]
    GeoJson(String),
}

/// A circle fence.
#[derive(Clone, Debug, PartialEq)]
pub struct Circle {
    center: Point,
    radius_m: f64,
}

/// A polygon fence: one exterior ring and optional holes. Rings are stored
/// without the closing vertex.
#[derive(Clone, Debug, PartialEq)]
pub struct Polygon {
    rings: Vec<Vec<Point>>,
    /// Bounding box: min lat, min lng, max lat, max lng.
    bbox: [f64; 4],
}

impl Polygon {
    /// Vertices over all rings.
    #[must_use]
    pub fn vertex_count(&self) -> usize {
        self.rings.iter().map(Vec::len).sum()
    }
}

/// A fence.
#[derive(Clone, Debug, PartialEq)]
pub enum Fence {
    Circle(Circle),
    Polygon(Polygon),
}

/// A local tangent plane around an origin, in metres (x east, y north).
/// Accurate to well under 0.1% over the few kilometres a fence spans.
#[derive(Clone, Copy, Debug)]
struct Plane {
    lat0: f64,
    lng0: f64,
    kx: f64,
    ky: f64,
}

impl Plane {
    fn at(origin: Point) -> Self {
        let ky = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        Self {
            lat0: origin.lat,
            lng0: origin.lng,
            kx: ky * origin.lat.to_radians().cos(),
            ky,
        }
    }

    fn xy(&self, p: Point) -> (f64, f64) {
        ((p.lng - self.lng0) * self.kx, (p.lat - self.lat0) * self.ky)
    }
}

fn segment_distance((px, py): (f64, f64), (ax, ay): (f64, f64), (bx, by): (f64, f64)) -> f64 {
    let (dx, dy) = (bx - ax, by - ay);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (cx, cy) = (ax + t * dx, ay + t * dy);
    ((px - cx).powi(2) + (py - cy).powi(2)).sqrt()
}

/// Even-odd ray casting on (lng, lat).
fn ring_contains(ring: &[Point], p: Point) -> bool {
    let mut inside = false;
    let mut prev = ring[ring.len() - 1];
    for &cur in ring {
        if (cur.lat > p.lat) != (prev.lat > p.lat) {
            let cross = (prev.lng - cur.lng) * (p.lat - cur.lat) / (prev.lat - cur.lat) + cur.lng;
            if p.lng < cross {
                inside = !inside;
            }
        }
        prev = cur;
    }
    inside
}

fn orientation(a: Point, b: Point, c: Point) -> f64 {
    (b.lng - a.lng) * (c.lat - a.lat) - (b.lat - a.lat) * (c.lng - a.lng)
}

fn on_segment(a: Point, b: Point, p: Point) -> bool {
    p.lng >= a.lng.min(b.lng)
        && p.lng <= a.lng.max(b.lng)
        && p.lat >= a.lat.min(b.lat)
        && p.lat <= a.lat.max(b.lat)
}

/// Whether segments ab and cd share any point.
fn segments_touch(a: Point, b: Point, c: Point, d: Point) -> bool {
    let (o1, o2, o3, o4) = (
        orientation(a, b, c),
        orientation(a, b, d),
        orientation(c, d, a),
        orientation(c, d, b),
    );
    if ((o1 > 0.0 && o2 < 0.0) || (o1 < 0.0 && o2 > 0.0))
        && ((o3 > 0.0 && o4 < 0.0) || (o3 < 0.0 && o4 > 0.0))
    {
        return true;
    }
    (o1 == 0.0 && on_segment(a, b, c))
        || (o2 == 0.0 && on_segment(a, b, d))
        || (o3 == 0.0 && on_segment(c, d, a))
        || (o4 == 0.0 && on_segment(c, d, b))
}

fn twice_area(ring: &[Point]) -> f64 {
    let n = ring.len();
    (0..n)
        .map(|i| {
            let (a, b) = (ring[i], ring[(i + 1) % n]);
            a.lng * b.lat - b.lng * a.lat
        })
        .sum()
}

fn normalise_ring(idx: usize, raw: &[[f64; 2]]) -> Result<Vec<Point>, FenceError> {
    let mut ring: Vec<Point> = Vec::with_capacity(raw.len());
    for &[lat, lng] in raw {
        let p = Point::new(lat, lng)?;
        if ring.last() != Some(&p) {
            ring.push(p);
        }
    }
    while ring.len() > 1 && ring.first() == ring.last() {
        ring.pop();
    }
    if ring.len() < 3 {
        return Err(FenceError::TooFewVertices {
            ring: idx,
            count: ring.len(),
        });
    }
    if twice_area(&ring).abs() < 1e-18 {
        return Err(FenceError::NoArea { ring: idx });
    }
    Ok(ring)
}

impl Fence {
    /// A circle of `radius_m` metres around `center`.
    ///
    /// ```
    /// use geofence::{Fence, Point};
    /// let f = Fence::circle(Point::new(60.1699, 24.9384)?, 50.0)?;
    /// assert!(f.contains(Point::new(60.1701, 24.9386)?));
    /// assert!(Fence::circle(Point::new(60.0, 24.0)?, -1.0).is_err());
    /// # Ok::<(), geofence::FenceError>(())
    /// ```
    pub fn circle(center: Point, radius_m: f64) -> Result<Self, FenceError> {
        if !radius_m.is_finite() || !(MIN_RADIUS_M..=MAX_RADIUS_M).contains(&radius_m) {
            return Err(FenceError::Radius(radius_m));
        }
        let dlng =
            (radius_m / (EARTH_RADIUS_M * center.lat.to_radians().cos().max(1e-9))).to_degrees();
        if center.lng - dlng < -180.0 || center.lng + dlng > 180.0 || center.lat.abs() > 85.0 {
            return Err(FenceError::Antimeridian(2.0 * dlng));
        }
        Ok(Fence::Circle(Circle { center, radius_m }))
    }

    /// A polygon from rings of `[lat, lng]` pairs: the exterior first, then
    /// holes. A closing vertex equal to the first is optional.
    ///
    /// ```
    /// use geofence::{Fence, Point};
    /// let square = [[60.0, 24.0], [60.0, 24.01], [60.01, 24.01], [60.01, 24.0]];
    /// let hole = [[60.004, 24.004], [60.004, 24.006], [60.006, 24.006], [60.006, 24.004]];
    /// let f = Fence::polygon(&[&square[..], &hole[..]])?;
    /// assert!(f.contains(Point::new(60.002, 24.002)?));
    /// assert!(!f.contains(Point::new(60.005, 24.005)?));
    /// # Ok::<(), geofence::FenceError>(())
    /// ```
    pub fn polygon(rings: &[&[[f64; 2]]]) -> Result<Self, FenceError> {
        Self::polygon_within(rings, MAX_RADIUS_M)
    }

    /// As [`Fence::polygon`], with another limit on how far the polygon may
    /// reach from its first vertex (metres). Covering a fence costs time in
    /// proportion to its size, so a server keeps the default or lower.
    pub fn polygon_within(rings: &[&[[f64; 2]]], max_reach_m: f64) -> Result<Self, FenceError> {
        if rings.is_empty() {
            return Err(FenceError::TooFewVertices { ring: 0, count: 0 });
        }
        if rings.len() - 1 > MAX_HOLES {
            return Err(FenceError::TooManyHoles(rings.len() - 1));
        }
        let total: usize = rings.iter().map(|r| r.len()).sum();
        if total > MAX_VERTICES {
            return Err(FenceError::TooManyVertices(total));
        }
        let rings: Vec<Vec<Point>> = rings
            .iter()
            .enumerate()
            .map(|(i, r)| normalise_ring(i, r))
            .collect::<Result<_, _>>()?;
        let mut bbox = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        for p in &rings[0] {
            bbox = [
                bbox[0].min(p.lat),
                bbox[1].min(p.lng),
                bbox[2].max(p.lat),
                bbox[3].max(p.lng),
            ];
        }
        if bbox[3] - bbox[1] >= 180.0 {
            return Err(FenceError::Antimeridian(bbox[3] - bbox[1]));
        }
        let anchor = rings[0][0];
        let reach = rings[0]
            .iter()
            .map(|p| anchor.distance_m(*p))
            .fold(0.0, f64::max);
        if reach > max_reach_m {
            return Err(FenceError::TooLarge(reach));
        }
        check_simple(&rings)?;
        for (h, hole) in rings.iter().enumerate().skip(1) {
            if !hole.iter().all(|p| ring_contains(&rings[0], *p)) {
                return Err(FenceError::HoleOutside(h));
            }
        }
        Ok(Fence::Polygon(Polygon { rings, bbox }))
    }

    /// A polygon from GeoJSON: a `Polygon` geometry, or a `Feature` whose
    /// geometry is one. Positions are `[longitude, latitude]` (RFC 7946).
    ///
    /// ```
    /// let f = geofence::Fence::from_geojson(
    ///     r#"{"type":"Polygon","coordinates":[[[24.0,60.0],[24.01,60.0],[24.01,60.01],[24.0,60.0]]]}"#,
    /// )?;
    /// assert!(matches!(f, geofence::Fence::Polygon(_)));
    /// # Ok::<(), geofence::FenceError>(())
    /// ```
    pub fn from_geojson(text: &str) -> Result<Self, FenceError> {
        if text.len() > MAX_GEOJSON_BYTES {
            return Err(FenceError::GeoJson(format!(
                "larger than {MAX_GEOJSON_BYTES} bytes"
            )));
        }
        let v: Value =
            serde_json::from_str(text).map_err(|e| FenceError::GeoJson(e.to_string()))?;
        Self::from_geojson_value(&v)
    }

    /// As [`Fence::from_geojson`], from a parsed value.
    pub fn from_geojson_value(v: &Value) -> Result<Self, FenceError> {
        Self::from_geojson_value_within(v, MAX_RADIUS_M)
    }

    /// As [`Fence::from_geojson_value`], with the reach limit of [`Fence::polygon_within`].
    pub fn from_geojson_value_within(v: &Value, max_reach_m: f64) -> Result<Self, FenceError> {
        let gj = |m: &str| FenceError::GeoJson(m.to_owned());
        let geometry = match v.get("type").and_then(Value::as_str) {
            Some("Feature") => v
                .get("geometry")
                .ok_or_else(|| gj("a Feature needs a geometry"))?,
            Some("Polygon") => v,
            Some(other) => {
                let shown: String = other.chars().take(32).collect();
                return Err(FenceError::GeoJson(format!(
                    "type {shown:?} is not a Polygon or a Feature"
                )));
            }
            None => return Err(gj("missing \"type\"")),
        };
        if geometry.get("type").and_then(Value::as_str) != Some("Polygon") {
            return Err(gj("the geometry must be a Polygon"));
        }
        let rings = geometry
            .get("coordinates")
            .and_then(Value::as_array)
            .ok_or_else(|| gj("coordinates must be an array of rings"))?;
        let mut parsed: Vec<Vec<[f64; 2]>> = Vec::with_capacity(rings.len().min(MAX_HOLES + 1));
        let mut total = 0usize;
        for (i, ring) in rings.iter().enumerate() {
            if i > MAX_HOLES {
                return Err(FenceError::TooManyHoles(rings.len() - 1));
            }
            let positions = ring
                .as_array()
                .ok_or_else(|| FenceError::GeoJson(format!("ring {i} is not an array")))?;
            total += positions.len();
            if total > MAX_VERTICES {
                return Err(FenceError::TooManyVertices(total));
            }
            let mut out = Vec::with_capacity(positions.len());
            for (j, pos) in positions.iter().enumerate() {
                let pair = pos.as_array().filter(|a| a.len() >= 2);
                let (Some(lng), Some(lat)) = (
                    pair.and_then(|a| a[0].as_f64()),
                    pair.and_then(|a| a[1].as_f64()),
                ) else {
                    return Err(FenceError::GeoJson(format!(
                        "ring {i} position {j} is not [longitude, latitude]"
                    )));
                };
                out.push([lat, lng]);
            }
            parsed.push(out);
        }
        let refs: Vec<&[[f64; 2]]> = parsed.iter().map(Vec::as_slice).collect();
        Fence::polygon_within(&refs, max_reach_m)
    }

    /// Whether the fence contains `p` (the exact test).
    #[must_use]
    pub fn contains(&self, p: Point) -> bool {
        match self {
            Fence::Circle(c) => c.center.distance_m(p) <= c.radius_m,
            Fence::Polygon(poly) => {
                let b = poly.bbox;
                if p.lat < b[0] || p.lat > b[2] || p.lng < b[1] || p.lng > b[3] {
                    return false;
                }
                ring_contains(&poly.rings[0], p)
                    && !poly.rings[1..].iter().any(|h| ring_contains(h, p))
            }
        }
    }

    /// Signed distance from `p` to the fence's edge, metres: negative inside,
    /// positive outside. This is what an "approaching" decision and the exit
    /// margin of the detector use.
    #[must_use]
    pub fn distance_to_edge_m(&self, p: Point) -> f64 {
        match self {
            Fence::Circle(c) => c.center.distance_m(p) - c.radius_m,
            Fence::Polygon(poly) => {
                let plane = Plane::at(p);
                let q = plane.xy(p);
                let d = poly
                    .rings
                    .iter()
                    .flat_map(|r| {
                        let n = r.len();
                        (0..n).map(move |i| (r[i], r[(i + 1) % n]))
                    })
                    .map(|(a, b)| segment_distance(q, plane.xy(a), plane.xy(b)))
                    .fold(f64::INFINITY, f64::min);
                if self.contains(p) { -d } else { d }
            }
        }
    }

    /// A point inside or on the fence, and the largest distance from it to
    /// any point of the fence (metres): together they bound the fence.
    #[must_use]
    pub fn bounds(&self) -> (Point, f64) {
        match self {
            Fence::Circle(c) => (c.center, c.radius_m),
            Fence::Polygon(poly) => {
                let anchor = poly.rings[0][0];
                let r = poly.rings[0]
                    .iter()
                    .map(|p| anchor.distance_m(*p))
                    .fold(0.0, f64::max);
                (anchor, r)
            }
        }
    }
}

/// No two edges of any rings touch, except neighbours at their shared vertex.
fn check_simple(rings: &[Vec<Point>]) -> Result<(), FenceError> {
    let edges: Vec<(usize, usize, Point, Point)> = rings
        .iter()
        .enumerate()
        .flat_map(|(ri, r)| {
            let n = r.len();
            (0..n).map(move |i| (ri, i, r[i], r[(i + 1) % n]))
        })
        .collect();
    for (x, &(ra, ea, a, b)) in edges.iter().enumerate() {
        for &(rb, eb, c, d) in &edges[x + 1..] {
            if ra == rb {
                let n = rings[ra].len();
                if eb == ea + 1 || (ea == 0 && eb == n - 1) {
                    continue;
                }
            }
            if segments_touch(a, b, c, d) {
                return Err(FenceError::SelfIntersection {
                    ring_a: ra,
                    edge_a: ea,
                    ring_b: rb,
                    edge_b: eb,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lng: f64) -> Point {
        Point::new(lat, lng).unwrap()
    }

    #[test]
    fn haversine_matches_known_distances() {
        // One degree of latitude is about 111.2 km.
        let d = p(60.0, 24.0).distance_m(p(61.0, 24.0));
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
        assert!(p(60.0, 24.0).distance_m(p(60.0, 24.0)) < 1e-9);
    }

    #[test]
    fn polygon_validation_names_the_problem() {
        let bowtie = [[0.0, 0.0], [0.02, 0.02], [0.02, 0.0], [0.0, 0.01]];
        assert!(matches!(
            Fence::polygon(&[&bowtie[..]]),
            Err(FenceError::SelfIntersection { .. })
        ));
        let line = [[0.0, 0.0], [0.005, 0.005], [0.01, 0.01]];
        assert_eq!(
            Fence::polygon(&[&line[..]]),
            Err(FenceError::NoArea { ring: 0 })
        );
        let two = [[0.0, 0.0], [0.01, 0.01], [0.0, 0.0]];
        assert!(matches!(
            Fence::polygon(&[&two[..]]),
            Err(FenceError::TooFewVertices { count: 2, .. })
        ));
        let sq = [[0.0, 0.0], [0.0, 0.01], [0.01, 0.01], [0.01, 0.0]];
        let out = [[0.02, 0.02], [0.02, 0.03], [0.03, 0.03]];
        assert_eq!(
            Fence::polygon(&[&sq[..], &out[..]]),
            Err(FenceError::HoleOutside(1))
        );
        let crossing = [[0.005, 0.005], [0.005, 0.015], [0.007, 0.005]];
        assert!(matches!(
            Fence::polygon(&[&sq[..], &crossing[..]]),
            Err(FenceError::SelfIntersection { .. })
        ));
        let wide = [[0.0, -100.0], [0.0, 100.0], [1.0, 0.0]];
        assert!(matches!(
            Fence::polygon(&[&wide[..]]),
            Err(FenceError::Antimeridian(_))
        ));
        let huge = [[0.0, 0.0], [0.0, 2.0], [2.0, 2.0]];
        assert!(matches!(
            Fence::polygon(&[&huge[..]]),
            Err(FenceError::TooLarge(_))
        ));
        let bad = [[0.0, 0.0], [95.0, 1.0], [1.0, 0.0]];
        assert_eq!(Fence::polygon(&[&bad[..]]), Err(FenceError::Latitude(95.0)));
        assert!(Fence::polygon(&[&sq[..]]).is_ok());
        // A closing vertex and repeated vertices are tolerated.
        let closed = [
            [0.0, 0.0],
            [0.0, 0.01],
            [0.0, 0.01],
            [0.01, 0.01],
            [0.01, 0.0],
            [0.0, 0.0],
        ];
        assert!(Fence::polygon(&[&closed[..]]).is_ok());
    }

    #[test]
    fn circles_are_checked() {
        assert_eq!(
            Fence::circle(p(60.0, 24.0), 0.5),
            Err(FenceError::Radius(0.5))
        );
        assert!(Fence::circle(p(60.0, 24.0), f64::NAN).is_err());
        assert!(Fence::circle(p(0.0, 179.9999), 100.0).is_err());
    }

    #[test]
    fn geojson_errors_are_precise() {
        let e = |s: &str| Fence::from_geojson(s).unwrap_err().to_string();
        assert!(e("{").contains("GeoJSON"));
        assert!(e(r#"{"type":"Point","coordinates":[1,2]}"#).contains("not a Polygon"));
        assert!(e(r#"{"type":"Polygon"}"#).contains("coordinates"));
        assert!(e(r#"{"type":"Polygon","coordinates":[[[1,2],[3]]]}"#).contains("position 1"));
        assert!(
            e(r#"{"type":"Feature","geometry":{"type":"LineString"}}"#)
                .contains("must be a Polygon")
        );
        let ok = r#"{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[[24.0,60.0],[24.01,60.0],[24.01,60.01],[24.0,60.0]]]}}"#;
        assert!(Fence::from_geojson(ok).is_ok());
    }

    #[test]
    fn signed_distance_to_edge() {
        let c = Fence::circle(p(60.0, 24.0), 100.0).unwrap();
        assert!((c.distance_to_edge_m(p(60.0, 24.0)) + 100.0).abs() < 1e-6);
        let sq =
            Fence::polygon(&[&[[60.0, 24.0], [60.0, 24.01], [60.01, 24.01], [60.01, 24.0]][..]])
                .unwrap();
        // 0.001° of latitude north of the southern edge: about 111 m inside.
        let d = sq.distance_to_edge_m(p(60.001, 24.005));
        assert!((d + 111.2).abs() < 0.5, "{d}");
        let d = sq.distance_to_edge_m(p(59.999, 24.005));
        assert!((d - 111.2).abs() < 0.5, "{d}");
    }
}
