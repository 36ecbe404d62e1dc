//! Several nodes on one log: taking in what other nodes appended to a
//! tenant's chain.

use super::{CommitError, Tenant};
use crate::log::{CryptoError, StoredEvent};

impl Tenant {
    /// Takes in what other nodes appended to this tenant's chain (read from
    /// the log, in order): each event after the visible head is applied and
    /// published as if it were this node's. An event of this node's own in
    /// flight is recognised by its hash; one in flight that lost its place
    /// to another node's is dropped with everything behind it (the log
    /// refuses them; their commands decide again).
    pub fn absorb(&self, stored: Vec<StoredEvent>) -> Result<usize, CryptoError> {
        let mut g = self.lock();
        let inner = &mut *g;
        // Everything is opened before anything changes: an event that does
        // not open (a wrong key) leaves the tenant as it was.
        let mut fresh = Vec::new();
        let mut ours = 0;
        let mut lost = false;
        for s in stored {
            let next = inner.visible_head.0 + 1 + fresh.len() as u64;
            if s.seq < next {
                continue;
            }
            if s.seq > next {
                break;
            }
            if !lost {
                match inner.in_flight.get(ours) {
                    Some(f) if f.event.seq == s.seq && f.event.hash == s.hash => {
                        fresh.push(f.event.clone());
                        ours += 1;
                        continue;
                    }
                    Some(f) if f.event.seq <= s.seq => lost = true,
                    _ => {}
                }
            }
            fresh.push(crate::log::open_with(&self.key, s)?);
        }
        if lost {
            inner.in_flight.clear();
        } else {
            inner.in_flight.drain(..ours);
        }
        let n = fresh.len();
        if n == 0 {
            return Ok(0);
        }
        let ours_left = !inner.in_flight.is_empty();
        self.apply_durable(inner, &fresh);
        if !ours_left {
            inner.decided = inner.visible.clone();
            let (seq, hash) = inner.visible_head.clone();
            inner.chain.set_head(seq, hash);
        }
        if lost {
            tracing::debug!(tenant = %self.id, "another node extended the chain first; this node's commands in flight decide again");
        }
        drop(g);
        self.resolved.send_modify(|n| *n += 1);
        Ok(n)
    }

    /// Reads and takes in what other nodes appended since the visible head.
    pub async fn catch_up(&self) -> Result<usize, CommitError> {
        let after = self.visible_seq();
        let events = self
            .log
            .read_after(&self.id, after)
            .await
            .map_err(|e| CommitError::Log(e.to_string()))?;
        Ok(self.absorb(events)?)
    }

    /// The seq of the last event applied.
    #[must_use]
    pub fn visible_seq(&self) -> u64 {
        self.lock().visible_head.0
    }
}
