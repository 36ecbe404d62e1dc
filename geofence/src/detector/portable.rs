//! A subject's state carried to another process (another node of a
//! cluster, with its own index of the same fences), and the digest that
//! says when it must go.

use serde::{Deserialize, Serialize};

use super::{Motion, Proximity, State, Subject, Track};
use crate::index::FenceId;

/// A subject's state with each fence named by the caller, since fence ids
/// belong to one index: what another process (another node of a cluster,
/// with its own index of the same fences) needs to carry on where this one
/// stopped. Fences the other side does not know are dropped on import.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Portable<K> {
    track: Track,
    motion: Motion,
    stopped: bool,
    fences: Vec<(K, Proximity)>,
}

impl<K> Portable<K> {
    /// Whether a state read from elsewhere is one this detector could have
    /// made by `now_ms` (give or take `skew_ms` between clocks): no time
    /// after it or before the epoch, counts and sums in range. One that is
    /// not would blind the detector (a newest fix in the future makes every
    /// fix stale) or overflow its arithmetic.
    #[must_use]
    pub fn is_plausible(&self, now_ms: i64, skew_ms: i64) -> bool {
        let latest = now_ms.saturating_add(skew_ms);
        let time = |t: i64| (0..=latest).contains(&t);
        let track = self.track.newest_ts.is_none_or(time)
            && self.track.last_trusted.is_none_or(|f| time(f.ts_ms))
            && self.track.outliers_in_row <= 1_000;
        let motion = self.motion.slow_since.is_none_or(time)
            && self.motion.still.is_none_or(|s| {
                time(s.since)
                    && s.n.is_finite()
                    && (0.0..=1e9).contains(&s.n)
                    && s.sum.0.is_finite()
                    && s.sum.1.is_finite()
            });
        let fences = self.fences.iter().all(|(_, p)| match p.state {
            State::Outside | State::Passing => true,
            State::Entering { fixes, since } => fixes <= 1_000_000 && time(since),
            State::Inside { since, .. } => time(since),
            State::Exiting {
                fixes,
                since,
                inside_since,
                ..
            } => fixes <= 1_000_000 && time(since) && time(inside_since),
        });
        track && motion && fences
    }
}

impl Subject {
    /// A digest of the part of the state that decides events: whether
    /// the subject has stopped or is slowing, and where it stands at each
    /// fence (not its newest fix, which changes every time). A process
    /// that hands the state over needs to do so when this changes; the
    /// rest can follow now and then.
    #[must_use]
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = rustc_hash::FxHasher::default();
        self.stopped.hash(&mut h);
        self.motion.slow_since.hash(&mut h);
        // Without reported speeds, stillness decides stopping.
        if self
            .track
            .last_trusted
            .is_some_and(|f| f.speed_mps.is_none())
        {
            self.motion.still.map(|s| s.since).hash(&mut h);
        }
        // Order-free over the fences.
        let fences = self.fences.iter().fold(0u64, |acc, (id, p)| {
            let mut f = rustc_hash::FxHasher::default();
            id.hash(&mut f);
            p.hash(&mut f);
            acc.wrapping_add(f.finish())
        });
        fences.hash(&mut h);
        h.finish()
    }

    /// The state, with each fence named by `name` (fences it cannot name
    /// are left out).
    pub fn export<K>(&self, name: impl Fn(FenceId) -> Option<K>) -> Portable<K> {
        let mut ids: Vec<&FenceId> = self.fences.keys().collect();
        ids.sort_unstable();
        Portable {
            track: self.track,
            motion: self.motion,
            stopped: self.stopped,
            fences: ids
                .into_iter()
                .filter_map(|id| Some((name(*id)?, self.fences[id])))
                .collect(),
        }
    }

    /// A subject from an exported state, each fence found by `id` in this
    /// side's index (fences it cannot find are dropped).
    pub fn import<K>(state: Portable<K>, id: impl Fn(&K) -> Option<FenceId>) -> Self {
        Self {
            track: state.track,
            motion: state.motion,
            stopped: state.stopped,
            fences: state
                .fences
                .into_iter()
                .filter_map(|(k, p)| Some((id(&k)?, p)))
                .collect(),
            candidates: Vec::new(),
        }
    }
}
