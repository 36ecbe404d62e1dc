//! What the server said, held against what the simulated drivers really
//! did: arrivals (true, false, missed) and ETA quality weighted by the time
//! each window was on a patient's screen. Pure: the runner collects, this
//! judges.

use std::collections::BTreeMap;

use serde::Serialize;

/// When a simulated driver really reached and left one stop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StopTruth {
    pub arrived: Option<i64>,
    pub departed: Option<i64>,
}

/// Slack around a real visit within which an arrived event's fix counts as
/// that visit's (the server decides a few seconds after the driver stops).
const VISIT_SLACK_MS: i64 = 5_000;
/// A visit that ended this long before the run did should have been seen.
const SEEN_BY_MS: i64 = 15_000;

/// Arrived events judged against the real visits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ArrivalCount {
    /// Stops the drivers really stopped at (whole visits within the run).
    pub visits: u64,
    /// Arrived events during a real visit of that stop.
    pub true_arrivals: u64,
    /// Arrived events for a stop the driver was not stopped at.
    pub false_arrivals: u64,
    /// Visits without an arrived event.
    pub missed_arrivals: u64,
}

/// Judges each stop's arrived events (their fixes' device times) against
/// its real visit; `end_ms` is when the run stopped driving.
#[must_use]
pub fn count_arrivals(stops: &[(StopTruth, Vec<i64>)], end_ms: i64) -> ArrivalCount {
    mistakes(stops, end_ms).0
}

/// The count, and each stop (by index) that had a false or a missed arrival.
#[must_use]
pub fn mistakes(stops: &[(StopTruth, Vec<i64>)], end_ms: i64) -> (ArrivalCount, Vec<usize>) {
    let mut c = ArrivalCount::default();
    let mut wrong = Vec::new();
    for (n, (truth, events)) in stops.iter().enumerate() {
        let before = (c.false_arrivals, c.missed_arrivals);
        let during = |t: i64| {
            truth.arrived.is_some_and(|a| {
                t >= a - VISIT_SLACK_MS && truth.departed.is_none_or(|d| t <= d + VISIT_SLACK_MS)
            })
        };
        let good = events.iter().filter(|&&t| during(t)).count() as u64;
        c.true_arrivals += good.min(1);
        c.false_arrivals += events.len() as u64 - good.min(1);
        // A visit of no length (drivers that start loaded at the pharmacy)
        // is no stop to arrive at.
        let whole_visit = truth.departed.is_some_and(|d| {
            d <= end_ms - SEEN_BY_MS && truth.arrived.is_some_and(|a| d - a >= 1_000)
        });
        if whole_visit {
            c.visits += 1;
            if good == 0 {
                c.missed_arrivals += 1;
            }
        }
        if (c.false_arrivals, c.missed_arrivals) != before {
            wrong.push(n);
        }
    }
    (c, wrong)
}

/// What one patient was shown over time, and when the driver really came.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EtaTrace {
    /// The real arrival (from the simulation, continued past the run's end
    /// if need be).
    pub arrival: Option<i64>,
    /// Each window the patient was shown, from when it arrived (`None`: no
    /// window, for instance the status changed or the driver went quiet).
    pub windows: Vec<(i64, Option<(i64, i64)>)>,
    /// The point estimate behind it (the dispatcher stream's `eta_at`).
    pub points: Vec<(i64, Option<i64>)>,
}

/// ETA quality at one horizon, weighted by seconds on screen.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EtaBucket {
    /// Seconds a window was shown at this horizon.
    pub seconds: u64,
    /// Of those, seconds whose window contained the real arrival.
    pub contained: u64,
    /// Seconds whose delivery had not arrived when the run ended (each
    /// counted as not contained).
    pub unarrived: u64,
    pub mean_width_s: f64,
    /// Seconds a point estimate was known at this horizon, and its mean
    /// absolute error and mean error (positive: the estimate was late).
    pub point_seconds: u64,
    pub point_mae_s: f64,
    pub point_bias_s: f64,
}

impl EtaBucket {
    /// Share of the time the window contained the arrival.
    #[must_use]
    pub fn containment(&self) -> f64 {
        self.contained as f64 / self.seconds.max(1) as f64
    }
}

fn label(horizon_ms: i64) -> String {
    let m = (horizon_ms.max(0) / 300_000 * 5).min(30);
    if m >= 30 {
        " 30+".to_owned()
    } else {
        format!("{m:>3}-{}", m + 5)
    }
}

/// The value in force at `t` of a series of (since, value) sorted by time.
fn at<T: Copy>(series: &[(i64, Option<T>)], t: i64) -> Option<T> {
    let i = series.partition_point(|(since, _)| *since <= t);
    i.checked_sub(1).and_then(|i| series[i].1)
}

/// Samples every trace each second from its first window until the real
/// arrival (or `end_ms`), by minutes ahead in 5-minute buckets (30+ last).
#[must_use]
pub fn eta_quality(traces: &[EtaTrace], end_ms: i64) -> BTreeMap<String, EtaBucket> {
    let mut out: BTreeMap<String, EtaBucket> = BTreeMap::new();
    let mut sums: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
    for tr in traces {
        let Some(arrival) = tr.arrival else { continue };
        let Some(&(first, _)) = tr.windows.first() else {
            continue;
        };
        let stop = arrival.min(end_ms);
        let mut t = first;
        while t < stop {
            let key = label(arrival - t);
            let b = out.entry(key.clone()).or_default();
            let s = sums.entry(key).or_default();
            if let Some((from, to)) = at(&tr.windows, t) {
                b.seconds += 1;
                s.0 += (to - from) as f64 / 1000.0;
                if arrival > end_ms {
                    b.unarrived += 1;
                } else if (from..=to).contains(&arrival) {
                    b.contained += 1;
                }
            }
            if let Some(p) = at(&tr.points, t) {
                let err = (p - arrival) as f64 / 1000.0;
                b.point_seconds += 1;
                s.1 += err.abs();
                s.2 += err;
            }
            t += 1000;
        }
    }
    for (k, b) in &mut out {
        let (w, abs, signed) = sums.get(k).copied().unwrap_or_default();
        b.mean_width_s = w / b.seconds.max(1) as f64;
        b.point_mae_s = abs / b.point_seconds.max(1) as f64;
        b.point_bias_s = signed / b.point_seconds.max(1) as f64;
    }
    out.retain(|_, b| b.seconds > 0 || b.point_seconds > 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_judged_against_the_real_visits() {
        let visit = StopTruth {
            arrived: Some(100_000),
            departed: Some(190_000),
        };
        let never = StopTruth::default();
        let c = count_arrivals(
            &[
                (visit, vec![103_000]),         // true
                (visit, vec![]),                // missed
                (never, vec![50_000]),          // false: driven past
                (visit, vec![20_000, 104_000]), // one false, one true
                (
                    StopTruth {
                        arrived: Some(990_000),
                        departed: None,
                    },
                    vec![],
                ), // still there at the end
            ],
            1_000_000,
        );
        assert_eq!(
            c,
            ArrivalCount {
                visits: 3,
                true_arrivals: 2,
                false_arrivals: 2,
                missed_arrivals: 1
            }
        );
    }

    #[test]
    fn eta_quality_is_weighted_by_time_on_screen() {
        // Shown from t=0: a window containing the arrival at 600 s for 60 s,
        // then one that does not, for the remaining 540 s.
        let tr = EtaTrace {
            arrival: Some(600_000),
            windows: vec![(0, Some((500_000, 700_000))), (60_000, Some((0, 100_000)))],
            points: vec![(0, Some(660_000))],
        };
        let q = eta_quality(std::slice::from_ref(&tr), 10_000_000);
        let total: u64 = q.values().map(|b| b.seconds).sum();
        let contained: u64 = q.values().map(|b| b.contained).sum();
        assert_eq!((total, contained), (600, 60));
        let ten = &q["  5-10"];
        assert!((ten.point_bias_s - 60.0).abs() < 1e-9 && (ten.point_mae_s - 60.0).abs() < 1e-9);
        // Not arrived by the end of the run: every second shown is a miss.
        let q = eta_quality(&[tr], 300_000);
        assert_eq!(q.values().map(|b| b.contained).sum::<u64>(), 0);
        assert_eq!(q.values().map(|b| b.unarrived).sum::<u64>(), 300);
    }
}
