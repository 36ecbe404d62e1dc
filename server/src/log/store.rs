//! Segment files, crash recovery, and the group-commit writer.
//!
//! The log is a folder of append-only NDJSON segment files named
//! `00000001.ndjson`, `00000002.ndjson`, … Each line is one [`StoredEvent`].
//! One writer thread owns the active segment: it takes every append that is
//! waiting, writes them with one `write`, makes them durable with one
//! `fdatasync`, and only then answers each caller (group commit). There is
//! no code path that rewrites or deletes a line, except start-up recovery
//! cutting a torn tail that was never acknowledged.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::event::{GENESIS, StoredEvent};
use crate::metrics::Metrics;

/// A segment is closed and a new one started past this size.
pub const SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Most appends in one group commit, so one group's latency stays bounded.
const MAX_GROUP_EVENTS: usize = 4096;

/// Where a line lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

/// Errors of the log's storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("log I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "log is corrupt at segment {segment} offset {offset}: {reason}; run `rxtrack log verify`"
    )]
    Corrupt {
        segment: u32,
        offset: u64,
        reason: String,
    },
    #[error(
        "the delivery log stopped accepting writes after an fdatasync error; the server must be restarted"
    )]
    Poisoned,
    #[error("the delivery log is shut down")]
    Closed,
    #[error(
        "tenant {tenant} event {seq} follows an event that was never written; nothing of it was kept"
    )]
    Stale { tenant: String, seq: u64 },
    /// Another writer extended the tenant's chain first (several nodes).
    #[error("conflict: tenant {tenant} event {seq} was already written by another node")]
    Conflict { tenant: String, seq: u64 },
    #[error("the PostgreSQL log: {0}")]
    Database(String),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The path of segment `n`.
#[must_use]
pub fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.ndjson"))
}

/// The segment numbers present, ascending.
pub fn list_segments(dir: &Path) -> Result<Vec<u32>, StoreError> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in rd {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".ndjson")) else {
            continue;
        };
        if let Ok(n) = stem.parse::<u32>() {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Calls `each` with every whole line of every segment, in log order, until
/// it returns `false`. With `limit = Some((segment, len))`, stops there (the
/// durable end); a trailing line without `\n` is never passed on.
pub fn scan_segments(
    dir: &Path,
    limit: Option<(u32, u64)>,
    mut each: impl FnMut(&[u8], Location) -> bool,
) -> Result<(), StoreError> {
    for seg in list_segments(dir)? {
        let seg_limit = match limit {
            Some((s, _)) if seg > s => break,
            Some((s, len)) if seg == s => len,
            _ => u64::MAX,
        };
        let path = segment_path(dir, seg);
        let f = File::open(&path).map_err(io_err(&path))?;
        let mut reader = BufReader::new(f.take(seg_limit));
        let mut offset = 0u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(io_err(&path))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            let loc = Location {
                segment: seg,
                offset,
                len: u32::try_from(n - 1).unwrap_or(u32::MAX),
            };
            if !each(&line[..n - 1], loc) {
                return Ok(());
            }
            offset += n as u64;
        }
    }
    Ok(())
}

pub use super::recover::{ChainChecker, DeliveryIndex, Recovery, recover};

/// One command's events (a stretch of one tenant's chain), and who to tell
/// once they are durable.
struct Append {
    tenant: String,
    first_seq: u64,
    prev: String,
    last: (u64, String),
    /// The events' delivery ids and line lengths (with `\n`), in order.
    lines: Vec<(Option<String>, usize)>,
    bytes: Vec<u8>,
    done: oneshot::Sender<Result<(), Arc<StoreError>>>,
}

enum Msg {
    Append(Append),
    Close(oneshot::Sender<()>),
}

/// How far the log is durable: the active segment and its durable length.
#[derive(Clone, Copy, Debug, Default)]
struct DurableMark {
    segment: u32,
    len: u64,
}

/// What the writer shares with readers: each tenant's durable chain head,
/// where each delivery's events are, and how far the files are durable.
#[derive(Debug, Default)]
struct Shared {
    heads: HashMap<String, (u64, String)>,
    index: DeliveryIndex,
    mark: DurableMark,
}

/// The handle to the segment files: appends through the writer thread,
/// reads straight from the files.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    tx: mpsc::UnboundedSender<Msg>,
    poisoned: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A pending append: resolves once the events are durable, or with why not
/// (then none of them is in the log).
pub type Pending = oneshot::Receiver<Result<(), Arc<StoreError>>>;

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Store {
    /// Opens the log folder for appending, after [`recover`] read it.
    pub fn open(
        dir: &Path,
        metrics: Arc<Metrics>,
        recovered: Recovery,
    ) -> Result<Self, StoreError> {
        crate::fsutil::create_private_dir(dir).map_err(io_err(dir))?;
        let segments = list_segments(dir)?;
        let segment = segments.last().copied().unwrap_or(1);
        let path = segment_path(dir, segment);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        crate::fsutil::sync_dir(dir).map_err(io_err(dir))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        let shared = Arc::new(Mutex::new(Shared {
            heads: recovered.heads,
            index: recovered.index,
            mark: DurableMark { segment, len },
        }));
        let poisoned = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            dir: dir.to_owned(),
            segment,
            len,
            file,
            poisoned: poisoned.clone(),
            shared: shared.clone(),
            metrics,
        };
        let handle = std::thread::Builder::new()
            .name("rxtrack-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(dir))?;
        Ok(Self {
            dir: dir.to_owned(),
            tx,
            poisoned,
            shared,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Queues one command's events for the next group commit. They must
    /// extend their tenant's durable chain once everything queued before
    /// them is written; anything else (a stretch that follows an event
    /// which failed) is refused. Events are written in the order this is
    /// called, all of a call or none.
    #[must_use]
    pub fn append(&self, events: &[StoredEvent]) -> Pending {
        let (done, rx) = oneshot::channel();
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            let _ = done.send(Ok(()));
            return rx;
        };
        let mut bytes = Vec::new();
        let mut lines = Vec::with_capacity(events.len());
        for e in events {
            let line = e.to_line();
            lines.push((e.delivery_id.clone(), line.len()));
            bytes.extend_from_slice(&line);
        }
        let a = Append {
            tenant: first.tenant.clone(),
            first_seq: first.seq,
            prev: first.prev.clone(),
            last: (last.seq, last.hash.clone()),
            lines,
            bytes,
            done,
        };
        if self.poisoned.load(Ordering::Acquire) {
            let _ = a.done.send(Err(Arc::new(StoreError::Poisoned)));
        } else if let Err(mpsc::error::SendError(Msg::Append(a))) = self.tx.send(Msg::Append(a)) {
            let _ = a.done.send(Err(Arc::new(StoreError::Closed)));
        }
        rx
    }

    /// A tenant's durable chain head.
    #[must_use]
    pub fn head(&self, tenant: &str) -> Option<(u64, String)> {
        lock(&self.shared).heads.get(tenant).cloned()
    }

    /// Every tenant's durable chain head.
    #[must_use]
    pub fn heads(&self) -> HashMap<String, (u64, String)> {
        lock(&self.shared).heads.clone()
    }

    /// Whether the log still accepts writes.
    #[must_use]
    pub fn healthy(&self) -> bool {
        !self.poisoned.load(Ordering::Acquire)
    }

    /// Reads one line back.
    fn read(&self, loc: Location) -> Result<Vec<u8>, StoreError> {
        let path = segment_path(&self.dir, loc.segment);
        let f = File::open(&path).map_err(io_err(&path))?;
        let mut buf = vec![0u8; loc.len as usize];
        f.read_exact_at(&mut buf, loc.offset)
            .map_err(io_err(&path))?;
        Ok(buf)
    }

    /// Every durable event of one delivery, in log order. Blocking.
    pub fn delivery_events(
        &self,
        tenant: &str,
        delivery: &str,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let locations = lock(&self.shared)
            .index
            .get(&(tenant.to_owned(), delivery.to_owned()))
            .cloned()
            .unwrap_or_default();
        locations
            .into_iter()
            .map(|loc| {
                let line = self.read(loc)?;
                serde_json::from_slice(&line).map_err(|e| StoreError::Corrupt {
                    segment: loc.segment,
                    offset: loc.offset,
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Calls `each` with every durable line, in log order, until it returns
    /// `false`. Blocking: call it from a blocking thread.
    pub fn scan(&self, each: impl FnMut(&[u8], Location) -> bool) -> Result<(), StoreError> {
        let mark = lock(&self.shared).mark;
        scan_segments(&self.dir, Some((mark.segment, mark.len)), each)
    }

    /// A handle that reads the durable segments from any thread.
    #[must_use]
    pub fn reader(&self) -> Reader {
        Reader {
            dir: self.dir.clone(),
            mark: lock(&self.shared).mark,
        }
    }

    /// Writes and syncs everything queued, then stops the writer.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// Reads the segments up to the durable end it was made at.
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    mark: DurableMark,
}

impl Reader {
    /// A tenant's events after `seq`, in order.
    pub fn read_after(&self, tenant: &str, seq: u64) -> Result<Vec<StoredEvent>, StoreError> {
        let mut out = Vec::new();
        let mut bad = None;
        scan_segments(
            &self.dir,
            Some((self.mark.segment, self.mark.len)),
            |line, loc| {
                match serde_json::from_slice::<StoredEvent>(line) {
                    Ok(e) if e.tenant == tenant && e.seq > seq => out.push(e),
                    Ok(_) => {}
                    Err(e) => {
                        bad = Some(StoreError::Corrupt {
                            segment: loc.segment,
                            offset: loc.offset,
                            reason: e.to_string(),
                        });
                        return false;
                    }
                }
                true
            },
        )?;
        bad.map_or(Ok(out), Err)
    }
}

struct Writer {
    dir: PathBuf,
    segment: u32,
    len: u64,
    file: File,
    poisoned: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<Metrics>,
}

/// Why an append was refused before it was written.
fn stale(a: &Append) -> StoreError {
    StoreError::Stale {
        tenant: a.tenant.clone(),
        seq: a.first_seq,
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut group: Vec<Append> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut close = None;
            match first {
                Msg::Append(a) => group.push(a),
                Msg::Close(c) => close = Some(c),
            }
            while close.is_none() && group.len() < MAX_GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(Msg::Append(a)) => group.push(a),
                    Ok(Msg::Close(c)) => close = Some(c),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.commit(&mut group, &mut buf);
            }
            if let Some(c) = close {
                let _ = c.send(());
                // Anything still queued after Close is refused.
                rx.close();
                while let Ok(m) = rx.try_recv() {
                    if let Msg::Append(a) = m {
                        let _ = a.done.send(Err(Arc::new(StoreError::Closed)));
                    }
                }
                return;
            }
        }
    }

    /// Writes a group: each append must extend its tenant's chain as the
    /// appends before it leave it (else it is refused, unwritten); the rest
    /// are written with one `write` and made durable with one `fdatasync`.
    fn commit(&mut self, group: &mut Vec<Append>, buf: &mut Vec<u8>) {
        if self.poisoned.load(Ordering::Acquire) {
            for a in group.drain(..) {
                let _ = a.done.send(Err(Arc::new(StoreError::Poisoned)));
            }
            return;
        }
        let mut accepted = Vec::with_capacity(group.len());
        {
            let mut heads: HashMap<&str, (u64, &str)> = HashMap::new();
            let shared = lock(&self.shared);
            for (i, a) in group.iter().enumerate() {
                let head = heads.get(a.tenant.as_str()).copied().unwrap_or_else(|| {
                    shared
                        .heads
                        .get(&a.tenant)
                        .map_or((0, GENESIS), |(s, h)| (*s, h.as_str()))
                });
                if a.first_seq == head.0 + 1 && a.prev == head.1 {
                    heads.insert(a.tenant.as_str(), (a.last.0, a.last.1.as_str()));
                    accepted.push(i);
                }
            }
        }
        let result = self.write_group(group, &accepted, buf);
        let mut accepted = accepted.into_iter().peekable();
        match result {
            Ok(locations) => {
                let events: usize = locations.iter().map(Vec::len).sum();
                if events > 0 {
                    self.metrics.log_appends.inc_by(events as u64);
                    self.metrics.log_group_size.observe(events as f64);
                }
                let mut locations = locations.into_iter();
                let mut shared = lock(&self.shared);
                shared.mark = DurableMark {
                    segment: self.segment,
                    len: self.len,
                };
                for (i, a) in group.drain(..).enumerate() {
                    if accepted.next_if_eq(&i).is_none() {
                        let why = Arc::new(stale(&a));
                        let _ = a.done.send(Err(why));
                        continue;
                    }
                    let locs = locations.next().unwrap_or_default();
                    for ((delivery, _), loc) in a.lines.iter().zip(locs) {
                        if let Some(d) = delivery {
                            shared
                                .index
                                .entry((a.tenant.clone(), d.clone()))
                                .or_default()
                                .push(loc);
                        }
                    }
                    shared.heads.insert(a.tenant.clone(), a.last.clone());
                    let _ = a.done.send(Ok(()));
                }
            }
            Err(e) => {
                self.metrics.log_write_errors.inc();
                let e = Arc::new(e);
                for (i, a) in group.drain(..).enumerate() {
                    let why = if accepted.next_if_eq(&i).is_some() {
                        e.clone()
                    } else {
                        Arc::new(stale(&a))
                    };
                    let _ = a.done.send(Err(why));
                }
            }
        }
    }

    /// Writes the accepted appends; returns where each one's lines are.
    /// A failed write (a full disk) is cut back, so the file ends where the
    /// durable log ends and later appends can go on once there is room; a
    /// failed cut or `fdatasync` leaves the file's state unknown (fsync
    /// errors are not retryable), so the log refuses all further writes.
    fn write_group(
        &mut self,
        group: &[Append],
        accepted: &[usize],
        buf: &mut Vec<u8>,
    ) -> Result<Vec<Vec<Location>>, StoreError> {
        if accepted.is_empty() {
            return Ok(Vec::new());
        }
        if self.len >= SEGMENT_MAX_BYTES
            && let Err(e) = self.rotate()
        {
            // A half-made next segment would make every later rotation fail.
            tracing::error!(error = %e, "starting a new delivery log segment failed; refusing further writes");
            self.poisoned.store(true, Ordering::Release);
            return Err(e);
        }
        buf.clear();
        let mut locations = Vec::with_capacity(accepted.len());
        for &i in accepted {
            let a = &group[i];
            let mut at = self.len + buf.len() as u64;
            let mut locs = Vec::with_capacity(a.lines.len());
            for (_, n) in &a.lines {
                locs.push(Location {
                    segment: self.segment,
                    offset: at,
                    len: u32::try_from(n.saturating_sub(1)).unwrap_or(u32::MAX),
                });
                at += *n as u64;
            }
            locations.push(locs);
            buf.extend_from_slice(&a.bytes);
        }
        let path = segment_path(&self.dir, self.segment);
        if let Err(e) = self.file.write_all(buf) {
            let cut = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data());
            if let Err(cut) = cut {
                tracing::error!(error = %cut, "cutting a failed write from the delivery log failed; refusing further writes");
                self.poisoned.store(true, Ordering::Release);
            } else {
                tracing::error!(error = %e, "a delivery log write failed (nothing of it was kept); later writes are tried again");
            }
            return Err(io_err(&path)(e));
        }
        let started = Instant::now();
        if let Err(e) = self.file.sync_data() {
            // The callers are told it failed: cut what was written, so that
            // a restart does not find it either (best effort: after a failed
            // fdatasync the file's state is unknown, hence the poisoning).
            let _ = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data());
            tracing::error!(error = %e, "delivery log fdatasync failed; refusing further writes");
            self.poisoned.store(true, Ordering::Release);
            return Err(io_err(&path)(e));
        }
        self.metrics
            .log_fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.len += buf.len() as u64;
        Ok(locations)
    }

    fn rotate(&mut self) -> Result<(), StoreError> {
        let next = self.segment + 1;
        let path = segment_path(&self.dir, next);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        crate::fsutil::sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        file.seek(SeekFrom::End(0)).map_err(io_err(&path))?;
        self.file = file;
        self.segment = next;
        self.len = 0;
        Ok(())
    }
}
