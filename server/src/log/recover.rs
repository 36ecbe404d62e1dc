//! Start-up recovery of the segment files: every chain checked, a torn
//! tail (never acknowledged) cut, and where each delivery's events are.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::path::Path;

use super::event::{GENESIS, StoredEvent};
use super::store::{Location, StoreError, io_err, list_segments, segment_path};

/// Follows each tenant's chain: sequence numbers without gaps, `prev`
/// matching the previous hash, and each hash matching its content.
#[derive(Debug, Default)]
pub struct ChainChecker {
    heads: HashMap<String, (u64, String)>,
}

impl ChainChecker {
    /// Checks the next event of its tenant's chain and advances the chain.
    pub fn check(&mut self, e: &StoredEvent) -> Result<(), String> {
        let (last_seq, last_hash) = self
            .heads
            .get(&e.tenant)
            .map_or((0, GENESIS), |(s, h)| (*s, h.as_str()));
        if e.seq != last_seq + 1 {
            return Err(format!(
                "tenant {} event seq {} follows seq {last_seq} (gap or reorder)",
                e.tenant, e.seq
            ));
        }
        if e.prev != last_hash {
            return Err(format!(
                "tenant {} event seq {}: prev does not match the hash of seq {last_seq}",
                e.tenant, e.seq
            ));
        }
        if e.compute_hash() != e.hash {
            return Err(format!(
                "tenant {} event seq {}: hash does not match its content (edited)",
                e.tenant, e.seq
            ));
        }
        self.heads.insert(e.tenant.clone(), (e.seq, e.hash.clone()));
        Ok(())
    }

    /// Each tenant's last `(seq, hash)`.
    #[must_use]
    pub fn into_heads(self) -> HashMap<String, (u64, String)> {
        self.heads
    }

    #[must_use]
    pub fn heads(&self) -> &HashMap<String, (u64, String)> {
        &self.heads
    }
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    pub events: u64,
    /// Bytes cut from a torn tail (never acknowledged).
    pub truncated_bytes: u64,
    pub heads: HashMap<String, (u64, String)>,
    /// Where each delivery's events are, by tenant and delivery, in order.
    pub index: DeliveryIndex,
}

/// Where each delivery's events are: (tenant, delivery) to locations in log order.
pub type DeliveryIndex = HashMap<(String, String), Vec<Location>>;

/// Reads every segment, checks the chains, cuts a torn tail of the last
/// segment back to the last whole event, and calls `each` for every event
/// in log order. Damage anywhere else is an error: it is never repaired
/// silently.
pub fn recover(
    dir: &Path,
    mut each: impl FnMut(StoredEvent, Location) -> anyhow::Result<()>,
) -> anyhow::Result<Recovery> {
    let segments = list_segments(dir)?;
    let mut checker = ChainChecker::default();
    let mut rec = Recovery::default();
    for (i, &seg) in segments.iter().enumerate() {
        let last_segment = i + 1 == segments.len();
        let path = segment_path(dir, seg);
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err(&path))?;
        let mut offset = 0usize;
        while offset < bytes.len() {
            let rest = &bytes[offset..];
            let line_end = rest.iter().position(|&b| b == b'\n');
            let is_last_line = line_end.is_none_or(|end| offset + end + 1 == bytes.len());
            let outcome = match line_end {
                None => Err("line has no end (torn write)".to_owned()),
                Some(end) => serde_json::from_slice::<StoredEvent>(&rest[..end])
                    .map_err(|e| format!("unreadable event: {e}"))
                    .and_then(|ev| checker.check(&ev).map(|()| (ev, end))),
            };
            match outcome {
                Ok((ev, end)) => {
                    let loc = Location {
                        segment: seg,
                        offset: offset as u64,
                        len: u32::try_from(end).unwrap_or(u32::MAX),
                    };
                    if let Some(d) = &ev.delivery_id {
                        rec.index
                            .entry((ev.tenant.clone(), d.clone()))
                            .or_default()
                            .push(loc);
                    }
                    each(ev, loc)?;
                    rec.events += 1;
                    offset += end + 1;
                }
                Err(reason) if last_segment && is_last_line => {
                    let keep = offset as u64;
                    rec.truncated_bytes = bytes.len() as u64 - keep;
                    tracing::warn!(
                        segment = seg,
                        offset = keep,
                        cut_bytes = rec.truncated_bytes,
                        %reason,
                        "cutting a torn tail from the delivery log (it was never acknowledged)"
                    );
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    f.set_len(keep).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                    break;
                }
                Err(reason) => {
                    return Err(StoreError::Corrupt {
                        segment: seg,
                        offset: offset as u64,
                        reason,
                    }
                    .into());
                }
            }
        }
    }
    rec.heads = checker.into_heads();
    Ok(rec)
}
