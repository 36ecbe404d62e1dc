//! Stepped mode: raise the number of drivers until the p99 latency from a
//! ping to the patient passes a limit or too many pings go unacknowledged,
//! and report the last load that held.

use serde::Serialize;

use crate::report::Report;

/// When a load no longer holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// p99 of ping-to-patient latency, ms (the load-test issue: 50 ms).
    pub p99_patient_ms: f64,
    /// Share of sent pings that may go unacknowledged (0.1%).
    pub max_loss: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            p99_patient_ms: 50.0,
            max_loss: 0.001,
        }
    }
}

/// Why a step failed, if it did.
#[must_use]
pub fn verdict(r: &Report, limits: &Limits) -> Option<String> {
    let loss = 1.0 - r.pings_acked as f64 / r.pings_sent.max(1) as f64;
    if loss > limits.max_loss {
        return Some(format!("{:.2}% of pings unacknowledged", loss * 100.0));
    }
    if let Some(p) = r.ping_to_patient
        && p.p99_ms > limits.p99_patient_ms
    {
        return Some(format!("p99 ping-to-patient {:.1} ms", p.p99_ms));
    }
    if !r.closes.is_empty() {
        return Some(format!("sockets closed: {:?}", r.closes));
    }
    None
}

/// One step's outcome.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    pub drivers: usize,
    pub pings_per_s: f64,
    pub failed: Option<String>,
    /// Everything the step measured.
    pub report: Report,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Percentiles;

    fn report(sent: u64, acked: u64, p99: f64) -> Report {
        Report {
            pings_sent: sent,
            pings_acked: acked,
            ping_to_patient: Some(Percentiles {
                count: 10,
                p50_ms: 1.0,
                p90_ms: 2.0,
                p99_ms: p99,
                p999_ms: p99,
                max_ms: p99,
            }),
            ..Report::default()
        }
    }

    #[test]
    fn a_step_holds_within_the_limits_only() {
        let l = Limits::default();
        assert_eq!(verdict(&report(10_000, 10_000, 20.0), &l), None);
        assert_eq!(verdict(&report(10_000, 9_995, 20.0), &l), None);
        assert!(
            verdict(&report(10_000, 9_980, 20.0), &l)
                .unwrap()
                .contains("unacknowledged")
        );
        assert!(
            verdict(&report(10_000, 10_000, 51.0), &l)
                .unwrap()
                .contains("p99")
        );
        let mut closed = report(10, 10, 1.0);
        closed.closes.insert("dispatcher 4410".into(), 1);
        assert!(verdict(&closed, &l).is_some());
    }
}
