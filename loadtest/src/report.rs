//! Measurements: latency histograms, counters, the machine-readable report
//! and the summary table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency recorder in microseconds (1 µs to 60 s, 3 significant digits).
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid bounds"),
        }
    }
}

/// Percentiles of one latency, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Records one latency, microseconds (clamped into the histogram's range).
    pub fn record_us(&mut self, us: u64) {
        let _ = self.hist.record(us.clamp(1, 60_000_000));
    }

    pub fn merge(&mut self, other: &Latency) {
        let _ = self.hist.add(&other.hist);
    }

    #[must_use]
    pub fn percentiles(&self) -> Percentiles {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: self.hist.len(),
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.hist.max() as f64 / 1000.0,
        }
    }
}

/// When the ping that caused a patient's update was sent (ms, wall clock).
///
/// Patients never see the driver's fixes, so an update names no ping; but a
/// driver's pings are processed in order, one socket at a time, and a
/// snapshot stamped `updated_at` was made while the server handled the
/// newest ping of that driver sent at or before that instant (as long as the
/// server is less than one ping interval behind; a larger backlog shows in the
/// ack latency). `sends` holds the driver's message send times in ascending
/// order, all in one clock (load generator and server on one machine).
/// `None` when no ping of the driver was sent in the `window_ms` before the
/// update: it was not caused by a ping (the setup, or a quiet driver).
#[must_use]
pub fn cause_of_patient_update(sends: &[i64], updated_at: i64, window_ms: i64) -> Option<i64> {
    let cause = *sends.get(sends.partition_point(|&t| t <= updated_at).checked_sub(1)?)?;
    (updated_at - cause <= window_ms).then_some(cause)
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub duration_s: f64,
    pub drivers: usize,
    pub deliveries: usize,
    pub patients: usize,
    pub dispatchers: usize,
    pub pings_sent: u64,
    pub pings_acked: u64,
    pub pings_per_s_acked: f64,
    pub ack: Option<Percentiles>,
    pub ping_to_dispatcher: Option<Percentiles>,
    /// From the ping that caused a patient update to its arrival at the
    /// patient (see [`cause_of_patient_update`]).
    pub ping_to_patient: Option<Percentiles>,
    /// From the server making a patient update (its `updated_at`) to its
    /// arrival at the patient.
    pub change_to_patient: Option<Percentiles>,
    /// Patient updates not caused by a ping (no ping of the driver shortly before).
    pub patient_updates_without_ping: u64,
    /// Ack and ping-to-patient latencies of the pings sent during the warm-up.
    pub warmup_ack: Option<Percentiles>,
    pub warmup_ping_to_patient: Option<Percentiles>,
    pub messages_received: u64,
    pub messages_per_s: f64,
    pub errors: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    /// Patient messages that carried anything but the allowed keys.
    pub exposure_violations: u64,
    /// Churn mode: patient sockets opened and closed during the run, and failures.
    pub churn_connects: u64,
    pub churn_failures: u64,
    pub statuses_out_of_order: u64,
    pub server_cpu_percent: Option<f64>,
    pub server_rss_kib: Option<u64>,
    /// Drop-off and pickup arrived events judged against the real visits.
    pub arrivals: crate::truth::ArrivalCount,
    pub pickup_arrivals: crate::truth::ArrivalCount,
    /// ETA quality by minutes ahead, weighted by time on screen.
    pub eta_by_minutes_ahead: BTreeMap<String, crate::truth::EtaBucket>,
}

fn row(name: &str, p: Option<&Percentiles>) -> String {
    match p {
        Some(p) if p.count > 0 => format!(
            "{name:<22} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
            p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
        ),
        _ => format!("{name:<22} {:>9}\n", 0),
    }
}

impl Report {
    /// The human-readable summary.
    #[must_use]
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} drivers, {} deliveries, {} patient and {} dispatcher sockets, {:.0} s",
            self.drivers, self.deliveries, self.patients, self.dispatchers, self.duration_s
        );
        let _ = writeln!(
            s,
            "pings sent {} acked {} ({:.0}/s, {} unacknowledged); messages received {} ({:.0}/s)",
            self.pings_sent,
            self.pings_acked,
            self.pings_per_s_acked,
            self.pings_sent.saturating_sub(self.pings_acked),
            self.messages_received,
            self.messages_per_s
        );
        s.push_str(
            "latency                    count    p50 ms    p90 ms    p99 ms  p99.9 ms    max ms\n",
        );
        s.push_str(&row("ack", self.ack.as_ref()));
        s.push_str(&row("ping to dispatcher", self.ping_to_dispatcher.as_ref()));
        s.push_str(&row("ping to patient", self.ping_to_patient.as_ref()));
        s.push_str(&row("change to patient", self.change_to_patient.as_ref()));
        if self.warmup_ack.is_some() {
            s.push_str(&row("ack, warm-up", self.warmup_ack.as_ref()));
            s.push_str(&row(
                "ping to patient, w-up",
                self.warmup_ping_to_patient.as_ref(),
            ));
        }
        if self.patient_updates_without_ping > 0 {
            let _ = writeln!(
                s,
                "patient updates not caused by a ping (setup, quiet drivers): {}",
                self.patient_updates_without_ping
            );
        }
        let _ = writeln!(
            s,
            "errors {:?}; closes {:?}; exposure violations {}; statuses out of order {}",
            self.errors, self.closes, self.exposure_violations, self.statuses_out_of_order
        );
        if self.churn_connects + self.churn_failures > 0 {
            let _ = writeln!(
                s,
                "churn: {} connects, {} failed",
                self.churn_connects, self.churn_failures
            );
        }
        if let (Some(cpu), Some(rss)) = (self.server_cpu_percent, self.server_rss_kib) {
            let _ = writeln!(s, "server: {cpu:.0}% of one core, {rss} KiB resident");
        }
        for (name, a) in [
            ("drop-off", &self.arrivals),
            ("pickup", &self.pickup_arrivals),
        ] {
            let _ = writeln!(
                s,
                "{name} arrivals: {} real visits, {} arrived events during one, {} false, {} missed",
                a.visits, a.true_arrivals, a.false_arrivals, a.missed_arrivals
            );
        }
        if !self.eta_by_minutes_ahead.is_empty() {
            let _ = writeln!(
                s,
                "ETA (min ahead)  seconds  contained  unarrived  width(min)  point MAE(s)  bias(s)"
            );
        }
        for (bucket, b) in &self.eta_by_minutes_ahead {
            let _ = writeln!(
                s,
                "{bucket:<16} {:>8} {:>9.1}% {:>10} {:>11.1} {:>13.0} {:>8.0}",
                b.seconds,
                100.0 * b.containment(),
                b.unarrived,
                b.mean_width_s / 60.0,
                b.point_mae_s,
                b.point_bias_s
            );
        }
        s
    }
}

/// CPU ticks (user + system) and resident memory of a local process, from /proc.
#[must_use]
pub fn proc_sample(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((ticks, rss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_recorded_sample() {
        let mut l = Latency::default();
        // 1..=1000 ms.
        for ms in 1..=1000u64 {
            l.record_us(ms * 1000);
        }
        let p = l.percentiles();
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 500.0).abs() <= 1.0, "{p:?}");
        assert!((p.p90_ms - 900.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() <= 1.0, "{p:?}");
        assert!((p.p999_ms - 999.0).abs() <= 1.0, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() <= 1.0, "{p:?}");
        let mut other = Latency::default();
        other.record_us(5_000_000);
        l.merge(&other);
        assert_eq!(l.percentiles().count, 1001);
        assert!(l.percentiles().max_ms >= 4990.0);
    }

    #[test]
    fn patient_updates_are_timed_from_the_ping_that_caused_them() {
        // A driver sent at 1000, 2000 (a batch after a dead zone), 3000.
        let sends = [1_000, 2_000, 3_000];
        // Made at 2004 while the ping sent at 2000 was handled.
        assert_eq!(cause_of_patient_update(&sends, 2_004, 10_000), Some(2_000));
        // Made the very millisecond the ping was sent.
        assert_eq!(cause_of_patient_update(&sends, 3_000, 10_000), Some(3_000));
        // Before the driver's first ping: the setup made it.
        assert_eq!(cause_of_patient_update(&sends, 999, 10_000), None);
        assert_eq!(cause_of_patient_update(&[], 5_000, 10_000), None);
        // Long after the last ping: a quiet driver's update, no ping's.
        assert_eq!(cause_of_patient_update(&sends, 20_000, 10_000), None);
        assert_eq!(cause_of_patient_update(&sends, 13_000, 10_000), Some(3_000));
    }

    #[test]
    fn the_table_shows_what_was_measured() {
        let mut ack = Latency::default();
        for ms in 1..=100u64 {
            ack.record_us(ms * 1000);
        }
        let r = Report {
            drivers: 2,
            pings_sent: 100,
            pings_acked: 97,
            pings_per_s_acked: 9.7,
            ack: Some(ack.percentiles()),
            closes: BTreeMap::from([("driver 4410".to_owned(), 1)]),
            warmup_ack: Some(ack.percentiles()),
            ..Report::default()
        };
        let t = r.table();
        assert!(
            t.contains("pings sent 100 acked 97 (10/s, 3 unacknowledged)"),
            "{t}"
        );
        let row = t.lines().find(|l| l.starts_with("ack ")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells[1..],
            ["100", "50.02", "90.05", "99.01", "100.03", "100.03"],
            "{t}"
        );
        assert!(t.contains("ack, warm-up"), "{t}");
        assert!(t.contains("\"driver 4410\": 1"), "{t}");
        assert!(!t.contains("server:"), "no server pid, no server line: {t}");
    }

    #[test]
    fn proc_samples_read_this_process() {
        let (ticks, rss) = proc_sample(std::process::id()).unwrap();
        assert!(rss > 0);
        let _ = ticks;
    }
}
