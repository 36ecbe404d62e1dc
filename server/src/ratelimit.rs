//! Rate limits: token buckets, and buckets per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// The client's address, as a request extension: what per-address limits
/// count (never logged).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Client addresses remembered before idle ones are forgotten.
const MAX_TRACKED_ADDRESSES: usize = 50_000;

/// A token bucket: `rate` tokens a second, at most `burst` stored.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    #[must_use]
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            rate,
            burst,
            at: now,
        }
    }

    /// Takes `n` tokens if there are enough.
    pub fn take(&mut self, n: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Token buckets per client address (tracking-link lookups).
#[derive(Debug, Default)]
pub struct AddressLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl AddressLimiter {
    pub fn allow(&self, ip: IpAddr, rate_per_s: f64, burst: f64) -> bool {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_TRACKED_ADDRESSES && !map.contains_key(&ip) {
            // Forget addresses whose buckets have refilled: they are idle.
            map.retain(|_, b| !b.clone().take(burst, now));
            if map.len() >= MAX_TRACKED_ADDRESSES {
                map.clear();
            }
        }
        map.entry(ip)
            .or_insert_with(|| Bucket::new(rate_per_s, burst, now))
            .take(1.0, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 20.0, t0);
        assert!(b.take(20.0, t0));
        assert!(!b.take(1.0, t0));
        assert!(b.take(5.0, t0 + Duration::from_millis(500)));
        assert!(!b.take(1.0, t0 + Duration::from_millis(500)));
        assert!(b.take(20.0, t0 + Duration::from_secs(100)));
        assert!(!b.take(0.5, t0 + Duration::from_secs(100)));
    }

    #[test]
    fn addresses_have_buckets_of_their_own() {
        let l = AddressLimiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.allow(a, 0.001, 2.0) && l.allow(a, 0.001, 2.0));
        assert!(!l.allow(a, 0.001, 2.0));
        assert!(l.allow(b, 0.001, 2.0));
    }
}
