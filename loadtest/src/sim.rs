//! A deterministic fleet on real roads: each driver leaves a pharmacy,
//! drives the fastest paths to its drop-offs at speeds that fit each road
//! class, stops for a service time at each, and reports a fix every second
//! with GPS noise (and the occasional spike) as real receivers do. Dead zones
//! hold pings back and release them as one batch, as a driver app does.
//! Everything follows from the seed; time is an argument.

use serde::Serialize;

use crate::roads::{RoadGraph, distance_m};

/// A small, fast, seedable generator (xorshift64*); no external state.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose state is the seed scrambled by `SplitMix64`, so that
    /// neighbouring seeds give unrelated streams.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform index below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % (n.max(1) as u64)).unwrap_or(0)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-12);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// How the fleet behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub drivers: usize,
    pub stops_per_driver: usize,
    pub ping_interval_ms: i64,
    /// Time at each drop-off, ms.
    pub service_ms: i64,
    /// Time at the pharmacy collecting the orders, ms.
    pub pickup_ms: i64,
    /// Drivers start at the pharmacy (already loaded) instead of across town.
    pub start_at_pickup: bool,
    /// Share of the road's free-flow speed actually driven (traffic).
    pub speed_factor: (f64, f64),
    /// GPS noise: standard deviation per axis, metres. The car track in
    /// `geofence/tests/data` wanders a few metres when parked: 4 m fits.
    pub noise_sigma_m: f64,
    /// Chance that a fix is a spike, and how far spikes land, metres.
    pub spike_probability: f64,
    pub spike_m: (f64, f64),
    /// Chance per minute of driving of entering a dead zone, and its length.
    pub dead_zone_per_minute: f64,
    pub dead_zone_ms: (i64, i64),
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            drivers: 10,
            stops_per_driver: 4,
            ping_interval_ms: 1000,
            service_ms: 90_000,
            pickup_ms: 60_000,
            start_at_pickup: false,
            speed_factor: (0.7, 1.0),
            noise_sigma_m: 4.0,
            spike_probability: 0.003,
            spike_m: (60.0, 180.0),
            dead_zone_per_minute: 0.05,
            dead_zone_ms: (20_000, 90_000),
        }
    }
}

/// One fix as the driver app reports it, with the truth beside it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ping {
    pub seq: u64,
    pub ts: i64,
    pub lat: f64,
    pub lng: f64,
    pub acc: f64,
    pub speed: f64,
    pub heading: f64,
    #[serde(skip)]
    pub true_pos: (f64, f64),
}

/// What a driver app sends.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    Ping(Ping),
    Batch(Vec<Ping>),
}

/// A stretch of road between two stops: points and the speed on each segment.
#[derive(Clone, Debug, Default)]
struct Leg {
    points: Vec<(f64, f64)>,
    speeds: Vec<f64>,
}

/// One simulated driver.
#[derive(Clone, Debug)]
pub struct SimDriver {
    pub index: usize,
    /// The pharmacy and the drop-offs, as positions.
    pub pickup: (f64, f64),
    pub dropoffs: Vec<(f64, f64)>,
    /// When the driver really reached each drop-off (ground truth for ETAs).
    pub arrivals: Vec<Option<i64>>,
    /// When it left each drop-off again (after the service time).
    pub departures: Vec<Option<i64>>,
    /// When it reached and left the pharmacy.
    pub pickup_visit: Option<(i64, i64)>,
    legs: Vec<Leg>,
    leg: usize,
    segment: usize,
    along_m: f64,
    waiting_until: i64,
    last_ms: i64,
    next_ping_ms: i64,
    seq: u64,
    dead_until: Option<i64>,
    held: Vec<Ping>,
    rng: Rng,
}

impl SimDriver {
    /// Whether the driver has reached the pharmacy (and so picked up).
    #[must_use]
    pub fn picked_up(&self) -> bool {
        self.leg >= 1
    }

    /// Whether the app is holding fixes back (in a dead zone).
    #[must_use]
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether every drop-off has been reached.
    #[must_use]
    pub fn finished(&self) -> bool {
        self.leg >= self.legs.len()
    }

    fn position(&self) -> ((f64, f64), f64, f64) {
        let Some(leg) = self.legs.get(self.leg) else {
            let last = self.dropoffs.last().copied().unwrap_or(self.pickup);
            return (last, 0.0, 0.0);
        };
        if leg.points.len() < 2 {
            return (leg.points.first().copied().unwrap_or(self.pickup), 0.0, 0.0);
        }
        let i = self.segment.min(leg.points.len() - 2);
        let (a, b) = (leg.points[i], leg.points[i + 1]);
        let len = distance_m(a, b).max(1e-9);
        let t = (self.along_m / len).clamp(0.0, 1.0);
        let pos = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        let heading = ((b.1 - a.1) * a.0.to_radians().cos())
            .atan2(b.0 - a.0)
            .to_degrees()
            .rem_euclid(360.0);
        (pos, leg.speeds[i], heading)
    }

    /// Moves the driver to time `now`.
    fn advance(&mut self, now: i64, service_ms: i64, pickup_ms: i64) {
        let mut dt_s = (now - self.last_ms).max(0) as f64 / 1000.0;
        self.last_ms = now;
        while dt_s > 0.0 && !self.finished() {
            if self.waiting_until > now {
                return;
            }
            let leg = &self.legs[self.leg];
            if self.segment + 1 >= leg.points.len() {
                // At the end of a leg: the pharmacy (the first), else a drop-off.
                #[allow(clippy::cast_possible_truncation, reason = "under a second of ms")]
                let early = (dt_s * 1000.0) as i64;
                if self.leg > 0 {
                    self.arrivals[self.leg - 1] = Some(now - early);
                    self.waiting_until = now + service_ms;
                    self.departures[self.leg - 1] = Some(self.waiting_until);
                } else {
                    self.waiting_until = now + pickup_ms;
                    self.pickup_visit = Some((now - early, self.waiting_until));
                }
                self.leg += 1;
                self.segment = 0;
                self.along_m = 0.0;
                if self.waiting_until > now {
                    return;
                }
                continue;
            }
            let (a, b) = (leg.points[self.segment], leg.points[self.segment + 1]);
            let len = distance_m(a, b);
            let speed = leg.speeds[self.segment];
            let left = len - self.along_m;
            let step = speed * dt_s;
            if step < left {
                self.along_m += step;
                dt_s = 0.0;
            } else {
                dt_s -= left / speed;
                self.segment += 1;
                self.along_m = 0.0;
            }
        }
    }

    fn fix(&mut self, now: i64, cfg: &SimConfig) -> Ping {
        let (truth, speed, heading) = self.position();
        let k = truth.0.to_radians().cos();
        let (mut dx, mut dy) = (
            self.rng.normal() * cfg.noise_sigma_m,
            self.rng.normal() * cfg.noise_sigma_m,
        );
        if self.rng.unit() < cfg.spike_probability {
            let d = cfg.spike_m.0 + self.rng.unit() * (cfg.spike_m.1 - cfg.spike_m.0);
            let b = self.rng.unit() * std::f64::consts::TAU;
            dx += d * b.cos();
            dy += d * b.sin();
        }
        self.seq += 1;
        Ping {
            seq: self.seq,
            ts: now,
            lat: truth.0 + dy / 111_195.0,
            lng: truth.1 + dx / (111_195.0 * k),
            acc: cfg.noise_sigma_m.max(1.0),
            speed: if self.waiting_until > now { 0.0 } else { speed },
            heading,
            true_pos: truth,
        }
    }
}

/// A whole fleet.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub cfg: SimConfig,
    pub drivers: Vec<SimDriver>,
}

fn leg(graph: &RoadGraph, path: &[u32], rng: &mut Rng, cfg: &SimConfig) -> Leg {
    let factor = cfg.speed_factor.0 + rng.unit() * (cfg.speed_factor.1 - cfg.speed_factor.0);
    let points = path.iter().map(|&n| graph.nodes[n as usize]).collect();
    let speeds = path
        .windows(2)
        .map(|w| graph.edge(w[0], w[1]).map_or(8.0, |e| e.speed_mps) * factor)
        .collect();
    Leg { points, speeds }
}

impl Fleet {
    /// Plans a fleet on `graph`: one pharmacy, and for each driver
    /// `stops_per_driver` random drop-offs in the order they are drawn.
    #[must_use]
    pub fn new(graph: &RoadGraph, cfg: SimConfig, seed: u64, start_ms: i64) -> Self {
        let mut rng = Rng::new(seed);
        let n = graph.nodes.len();
        let pharmacy = u32::try_from(rng.below(n)).unwrap_or(0);
        let mut drivers = Vec::with_capacity(cfg.drivers);
        for index in 0..cfg.drivers {
            let mut drng = Rng::new(rng.next_u64());
            // Each driver starts somewhere in town and drives to the pharmacy first.
            let anywhere = u32::try_from(drng.below(n)).unwrap_or(0);
            let start = if cfg.start_at_pickup {
                pharmacy
            } else {
                anywhere
            };
            let mut stops = vec![pharmacy];
            while stops.len() <= cfg.stops_per_driver {
                let s = u32::try_from(drng.below(n)).unwrap_or(0);
                if s != *stops.last().unwrap_or(&pharmacy) {
                    stops.push(s);
                }
            }
            let mut legs = Vec::new();
            let mut at = start;
            for &s in &stops {
                let path = graph.fastest_path(at, s).unwrap_or_else(|| vec![at, s]);
                legs.push(leg(graph, &path, &mut drng, &cfg));
                at = s;
            }
            let node = |i: u32| graph.nodes[i as usize];
            drivers.push(SimDriver {
                index,
                pickup: node(pharmacy),
                dropoffs: stops[1..].iter().map(|&s| node(s)).collect(),
                arrivals: vec![None; stops.len() - 1],
                departures: vec![None; stops.len() - 1],
                pickup_visit: None,
                legs,
                leg: 0,
                segment: 0,
                along_m: 0.0,
                waiting_until: 0,
                last_ms: start_ms,
                // Spread first pings over the interval so the load is even.
                next_ping_ms: start_ms
                    + i64::try_from(
                        drng.below(usize::try_from(cfg.ping_interval_ms).unwrap_or(1000)),
                    )
                    .unwrap_or(0),
                seq: 0,
                dead_until: None,
                held: Vec::new(),
                rng: drng,
            });
        }
        Self { cfg, drivers }
    }

    /// Moves the whole plan `by_ms` later: every clock of every driver, as
    /// if the fleet had been planned that much later. The runner plans the
    /// fleet before it creates deliveries and opens sockets, then delays it
    /// by the time that took, so that driving starts without a backlog of
    /// pings that fell due during the setup.
    pub fn delay(&mut self, by_ms: i64) {
        for d in &mut self.drivers {
            d.last_ms += by_ms;
            d.next_ping_ms += by_ms;
            if d.waiting_until != 0 {
                d.waiting_until += by_ms;
            }
            if let Some(until) = &mut d.dead_until {
                *until += by_ms;
            }
            for a in d.arrivals.iter_mut().chain(&mut d.departures).flatten() {
                *a += by_ms;
            }
            if let Some((a, b)) = &mut d.pickup_visit {
                *a += by_ms;
                *b += by_ms;
            }
            for p in &mut d.held {
                p.ts += by_ms;
            }
        }
    }

    /// Advances the fleet to `now` and returns what each driver app sends.
    pub fn step(&mut self, now: i64) -> Vec<(usize, Out)> {
        let cfg = self.cfg.clone();
        let mut out = Vec::new();
        for d in &mut self.drivers {
            while d.next_ping_ms <= now {
                let t = d.next_ping_ms;
                d.next_ping_ms += cfg.ping_interval_ms;
                d.advance(t, cfg.service_ms, cfg.pickup_ms);
                let fix = d.fix(t, &cfg);
                match d.dead_until {
                    Some(until) if t < until => d.held.push(fix),
                    Some(_) => {
                        d.dead_until = None;
                        d.held.push(fix);
                        for chunk in std::mem::take(&mut d.held).chunks(1000) {
                            out.push((d.index, Out::Batch(chunk.to_vec())));
                        }
                    }
                    None => {
                        let per_ping =
                            cfg.dead_zone_per_minute * cfg.ping_interval_ms as f64 / 60_000.0;
                        if !d.finished() && d.rng.unit() < per_ping {
                            let (lo, hi) = cfg.dead_zone_ms;
                            let span = lo
                                + i64::try_from(
                                    d.rng.below(usize::try_from((hi - lo).max(1)).unwrap_or(1)),
                                )
                                .unwrap_or(0);
                            d.dead_until = Some(t + span);
                            d.held.push(fix);
                        } else {
                            out.push((d.index, Out::Ping(fix)));
                        }
                    }
                }
            }
        }
        out
    }
}
