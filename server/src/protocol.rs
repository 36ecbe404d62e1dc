//! Wire types of the driver stream (PROTOCOL.md), and the pure validation of
//! a ping. No I/O and no clocks: time comes in as an argument.

use serde::{Deserialize, Serialize};

use crate::types::{LatLng, UnixMillis};

/// Most pings in one `batch` message.
pub const MAX_BATCH: usize = 1000;
/// How far ahead of the server's clock a ping's `ts` may be.
pub const MAX_FUTURE_MS: i64 = 2 * 60 * 1000;
/// How far behind the server's clock a ping's `ts` may be.
pub const MAX_AGE_MS: i64 = 24 * 60 * 60 * 1000;
/// Largest plausible accuracy radius, metres.
pub const MAX_ACCURACY_M: f64 = 100_000.0;
/// Largest plausible ground speed, m/s (about 720 km/h: covers any road vehicle and bad fixes).
pub const MAX_SPEED_MS: f64 = 200.0;

/// A ping as the driver app sends it. Unknown fields are ignored so that
/// newer apps keep working against this server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PingIn {
    pub seq: u64,
    pub ts: i64,
    pub lat: f64,
    pub lng: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
}

/// A message from the driver app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DriverMsg {
    Ping(PingIn),
    Batch { pings: Vec<PingIn> },
    Refresh { token: String },
}

/// A message to the driver app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Ack {
        seq: u64,
    },
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    Config {
        ping_interval_ms: u64,
    },
}

/// A validated fix.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    pub seq: u64,
    pub ts: UnixMillis,
    pub pos: LatLng,
    pub acc: Option<f64>,
    pub speed: Option<f64>,
    pub heading: Option<f64>,
}

/// Why a ping was refused. `code()` is the wire code.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PingError {
    #[error("{0}")]
    Coord(#[from] crate::types::CoordError),
    #[error("acc {0} must be a finite number within 0..={MAX_ACCURACY_M}")]
    Accuracy(f64),
    #[error("speed {0} must be a finite number within 0..={MAX_SPEED_MS}")]
    Speed(f64),
    #[error("heading {0} must be a finite number within 0..=360")]
    Heading(f64),
    #[error("ts is {0} ms ahead of the server clock (at most {MAX_FUTURE_MS} allowed)")]
    InFuture(i64),
    #[error("ts is {0} ms old (at most {MAX_AGE_MS} allowed)")]
    TooOld(i64),
}

impl PingError {
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            PingError::InFuture(_) => "ts_in_future",
            PingError::TooOld(_) => "ts_too_old",
            _ => "bad_ping",
        }
    }
}

fn in_range(v: Option<f64>, hi: f64) -> bool {
    v.is_none_or(|x| x.is_finite() && (0.0..=hi).contains(&x))
}

impl PingIn {
    /// Checks a ping against the server's clock `now`.
    pub fn validate(&self, now: UnixMillis) -> Result<Fix, PingError> {
        let pos = LatLng::new(self.lat, self.lng)?;
        if !in_range(self.acc, MAX_ACCURACY_M) {
            return Err(PingError::Accuracy(self.acc.unwrap_or(f64::NAN)));
        }
        if !in_range(self.speed, MAX_SPEED_MS) {
            return Err(PingError::Speed(self.speed.unwrap_or(f64::NAN)));
        }
        if !in_range(self.heading, 360.0) {
            return Err(PingError::Heading(self.heading.unwrap_or(f64::NAN)));
        }
        let ahead = self.ts.saturating_sub(now.0);
        if ahead > MAX_FUTURE_MS {
            return Err(PingError::InFuture(ahead));
        }
        let age = now.0.saturating_sub(self.ts);
        if age > MAX_AGE_MS {
            return Err(PingError::TooOld(age));
        }
        Ok(Fix {
            seq: self.seq,
            ts: UnixMillis(self.ts),
            pos,
            acc: self.acc,
            speed: self.speed,
            heading: self.heading,
        })
    }
}

/// Where a device's stream stands: the last `seq` consumed (applied or
/// refused) and the newest valid fix.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cursor {
    pub last_seq: u64,
    pub last_fix: Option<Fix>,
}

/// What applying a message's pings did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// Valid new pings, in order.
    pub accepted: Vec<Fix>,
    /// Pings at or below the cursor: acknowledged without effect.
    pub duplicates: usize,
    /// New pings that failed validation: consumed, with the reason.
    pub refused: Vec<(u64, PingError)>,
}

impl Cursor {
    /// The number of pings that lie beyond the cursor (the ones a rate limit should count).
    #[must_use]
    pub fn fresh(&self, pings: &[PingIn]) -> usize {
        pings.iter().filter(|p| p.seq > self.last_seq).count()
    }

    /// Applies pings in order: a ping at or below the cursor is a duplicate;
    /// a new one is validated, and consumed either way. The newest fix by
    /// device time wins, so a late ping never moves the driver backwards.
    pub fn apply(&mut self, pings: &[PingIn], now: UnixMillis) -> Applied {
        let mut out = Applied::default();
        for p in pings {
            if p.seq <= self.last_seq {
                out.duplicates += 1;
                continue;
            }
            self.last_seq = p.seq;
            match p.validate(now) {
                Ok(fix) => {
                    if self.last_fix.is_none_or(|f| f.ts <= fix.ts) {
                        self.last_fix = Some(fix);
                    }
                    out.accepted.push(fix);
                }
                Err(e) => out.refused.push((p.seq, e)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = UnixMillis(1_764_072_000_000);

    fn ping() -> PingIn {
        PingIn {
            seq: 1,
            ts: NOW.0 - 500,
            lat: 60.1699,
            lng: 24.9384,
            acc: Some(6.5),
            speed: Some(8.1),
            heading: Some(270.0),
        }
    }

    #[test]
    fn the_protocol_example_parses() {
        let m: DriverMsg = serde_json::from_str(
            r#"{"type":"ping","seq":42,"ts":1764072000123,"lat":60.1699,"lng":24.9384,"acc":6.5,"speed":8.1,"heading":270}"#,
        )
        .unwrap();
        let DriverMsg::Ping(p) = m else {
            panic!("not a ping")
        };
        assert_eq!(p.seq, 42);
        assert_eq!(
            serde_json::to_string(&ServerMsg::Ack { seq: 42 }).unwrap(),
            r#"{"type":"ack","seq":42}"#
        );
        assert_eq!(
            serde_json::to_string(&ServerMsg::Config {
                ping_interval_ms: 1000
            })
            .unwrap(),
            r#"{"type":"config","ping_interval_ms":1000}"#
        );
    }

    #[test]
    fn validation_refuses_out_of_range_values() {
        assert!(ping().validate(NOW).is_ok());
        let bad = |f: fn(&mut PingIn)| {
            let mut p = ping();
            f(&mut p);
            p.validate(NOW).unwrap_err()
        };
        assert_eq!(bad(|p| p.lat = 91.0).code(), "bad_ping");
        assert_eq!(bad(|p| p.lng = -181.0).code(), "bad_ping");
        assert_eq!(bad(|p| p.acc = Some(-1.0)), PingError::Accuracy(-1.0));
        assert_eq!(bad(|p| p.speed = Some(1e9)), PingError::Speed(1e9));
        assert_eq!(bad(|p| p.heading = Some(361.0)), PingError::Heading(361.0));
        assert_eq!(
            bad(|p| p.ts = NOW.0 + MAX_FUTURE_MS + 1).code(),
            "ts_in_future"
        );
        assert_eq!(bad(|p| p.ts = NOW.0 - MAX_AGE_MS - 1).code(), "ts_too_old");
        assert_eq!(bad(|p| p.ts = i64::MIN).code(), "ts_too_old");
        assert_eq!(bad(|p| p.ts = i64::MAX).code(), "ts_in_future");
        let mut p = ping();
        p.acc = None;
        p.speed = None;
        p.heading = None;
        assert!(p.validate(NOW).is_ok());
    }

    fn arb_pings() -> impl proptest::strategy::Strategy<Value = Vec<PingIn>> {
        use proptest::prelude::*;
        proptest::collection::vec((1u64..60, -100.0f64..100.0, -5_000i64..5_000), 0..40).prop_map(
            |v| {
                v.into_iter()
                    .map(|(seq, lat, dt)| PingIn {
                        seq,
                        ts: NOW.0 + dt,
                        lat,
                        lng: 24.9,
                        acc: None,
                        speed: None,
                        heading: None,
                    })
                    .collect()
            },
        )
    }

    proptest::proptest! {
        /// Replaying anything already applied changes nothing and accepts nothing.
        #[test]
        fn replays_are_never_applied_twice(pings in arb_pings()) {
            let mut c = Cursor::default();
            c.apply(&pings, NOW);
            let before = c;
            let again = c.apply(&pings, NOW);
            proptest::prop_assert!(again.accepted.is_empty() && again.refused.is_empty());
            proptest::prop_assert_eq!(again.duplicates, pings.len());
            proptest::prop_assert_eq!(c, before);
        }

        /// Feeding pings one by one or all at once ends in the same place.
        #[test]
        fn one_by_one_equals_batched(pings in arb_pings()) {
            let mut a = Cursor::default();
            let batched = a.apply(&pings, NOW);
            let mut b = Cursor::default();
            let mut accepted = Vec::new();
            for p in &pings {
                accepted.extend(b.apply(std::slice::from_ref(p), NOW).accepted);
            }
            proptest::prop_assert_eq!(a, b);
            proptest::prop_assert_eq!(batched.accepted, accepted);
        }

        /// Every ping is exactly one of accepted, refused or duplicate.
        #[test]
        fn every_ping_is_accounted_for(pings in arb_pings()) {
            let mut c = Cursor::default();
            let r = c.apply(&pings, NOW);
            proptest::prop_assert_eq!(r.accepted.len() + r.refused.len() + r.duplicates, pings.len());
        }
    }

    #[test]
    fn json_cannot_carry_nan_or_infinity() {
        assert!(
            serde_json::from_str::<DriverMsg>(
                r#"{"type":"ping","seq":1,"ts":1,"lat":NaN,"lng":0}"#
            )
            .is_err()
        );
        assert!(
            serde_json::from_str::<DriverMsg>(
                r#"{"type":"ping","seq":1,"ts":1,"lat":1e999,"lng":0}"#
            )
            .is_err()
        );
    }
}
