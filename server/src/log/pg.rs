//! The delivery log in PostgreSQL: the log of record when several nodes
//! serve the same tenants.
//!
//! One append-only table, `delivery_events`, holds every tenant's chain:
//! one row per event, the event's canonical line (the same bytes, sealing
//! and hash chain as the embedded segment files) beside the columns that
//! find it. The server's role may only INSERT and SELECT; row-level
//! security lets a session see and write only the rows of the tenant it set
//! (`rxtrack.tenant`), and every statement runs with it set.
//!
//! - **No fork, no gap.** An append inserts a stretch of one chain only if
//!   it extends the stored head (the previous row exists with the hash the
//!   stretch names), and `(tenant, seq)` is the primary key: of two nodes
//!   extending the same head, exactly one commits; the other is told
//!   [`StoreError::Conflict`], reads what won and decides again.
//! - **Group commit.** One writer task per node takes every append waiting,
//!   inserts each stretch with one multi-row statement inside its own
//!   savepoint (a lost race spoils only its own stretch), and commits once.
//! - **Tailing.** Each commit notifies `rxtrack_events` with the tenant;
//!   every node listens, and reads the rows after what it has applied (the
//!   table is the truth; the notification only wakes it, and a poll every
//!   second covers a lost one).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls};

use super::event::{GENESIS, StoredEvent};
use super::schema::{db, verify_lines};
use super::store::{Pending, StoreError};
use super::{EventLog, VerifyReport};

pub use super::schema::{migrate, verify_all};
use crate::types::{DeliveryId, TenantId};

/// The notification channel every append names its tenant on.
pub const CHANNEL: &str = "rxtrack_events";
/// Most appends in one transaction.
const MAX_GROUP: usize = 512;
/// Connections for reads (events, export, verify, catching up).
const READERS: usize = 4;
/// How often a node looks for other nodes' events without being told.
pub const POLL: Duration = Duration::from_secs(1);
/// Longest wait for a connection, a commit or a read.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One command's events, and who to tell.
struct Append {
    tenant: String,
    events: Vec<StoredEvent>,
    done: oneshot::Sender<Result<(), Arc<StoreError>>>,
}

/// The PostgreSQL log of one node.
pub struct PgLog {
    pool: Pool,
    tx: mpsc::UnboundedSender<Append>,
    heads: Arc<Mutex<HashMap<String, (u64, String)>>>,
    /// The last commit went through (or none failed yet).
    healthy: Arc<AtomicBool>,
    /// The listening connection answers (probed every second).
    reachable: Arc<AtomicBool>,
    changes: Mutex<Option<mpsc::UnboundedReceiver<TenantId>>>,
}

impl std::fmt::Debug for PgLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLog")
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl PgLog {
    /// Connects (a writer, readers, a listener) and starts the group-commit
    /// writer. `tenants`: the tenants this node serves (polled for changes).
    pub async fn connect(url: &str, tenants: Vec<TenantId>) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Database(e.to_string()))?;
        // A database that vanishes (a cut network, a half-open connection)
        // is noticed in seconds, not at TCP's two hours.
        pg.connect_timeout(TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5));
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(READERS + 1)
            .build()
            .map_err(|e| StoreError::Database(e.to_string()))?;
        // Fail now, with the reason, if the database cannot be reached, has
        // no schema, or would not hold this role to its tenants' rows.
        let client = pool
            .get()
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let row = client
            .query_one(
                "SELECT to_regclass('delivery_events') IS NOT NULL,                         coalesce((SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user), false),                         coalesce((SELECT tableowner = current_user FROM pg_tables WHERE tablename = 'delivery_events'), false)",
                &[],
            )
            .await
            .map_err(|e| db(&e))?;
        let (schema, bypass, owner): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
        if !schema {
            return Err(StoreError::Database(
                "no delivery_events table: run `rxtrack migrate --postgres <owner URL> --grant-to <this role>`".into(),
            ));
        }
        if bypass || owner {
            return Err(StoreError::Database(
                "this role owns delivery_events or bypasses row-level security: \
                 connect the servers as a role that may only insert and read (rxtrack migrate --grant-to)"
                    .into(),
            ));
        }
        drop(client);
        let (tx, rx) = mpsc::unbounded_channel();
        let heads = Arc::new(Mutex::new(HashMap::new()));
        let healthy = Arc::new(AtomicBool::new(true));
        tokio::spawn(writer(pool.clone(), rx, heads.clone(), healthy.clone()));
        let (ch_tx, ch_rx) = mpsc::unbounded_channel();
        let reachable = Arc::new(AtomicBool::new(true));
        tokio::spawn(listen(
            pg,
            tenants,
            ch_tx,
            reachable.clone(),
            healthy.clone(),
        ));
        Ok(Self {
            pool,
            tx,
            heads,
            healthy,
            reachable,
            changes: Mutex::new(Some(ch_rx)),
        })
    }

    /// A tenant's events after `seq`, read with the tenant set.
    pub async fn read_after_async(
        &self,
        tenant: &str,
        seq: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        tokio::time::timeout(TIMEOUT, self.read_after_inner(tenant, seq))
            .await
            .unwrap_or_else(|_| Err(StoreError::Database("the read timed out".into())))
    }

    async fn read_after_inner(
        &self,
        tenant: &str,
        seq: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let after = i64::try_from(seq).unwrap_or(i64::MAX);
        let events = self
            .query_tenant(
                tenant,
                "SELECT line FROM delivery_events WHERE tenant = $1 AND seq > $2 ORDER BY seq",
                &[&tenant, &after],
            )
            .await?
            .iter()
            .map(|l| parse(l))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(last) = events.last() {
            let mut heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
            let h = heads
                .entry(tenant.to_owned())
                .or_insert((0, GENESIS.to_owned()));
            if last.seq > h.0 {
                *h = (last.seq, last.hash.clone());
            }
        }
        Ok(events)
    }

    /// Runs `f` on a blocking thread's view of the runtime (the trait's
    /// blocking reads are called from `spawn_blocking`).
    fn block_on<T>(fut: impl Future<Output = T>) -> T {
        tokio::runtime::Handle::current().block_on(fut)
    }

    async fn query_tenant(
        &self,
        tenant: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<String>, StoreError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let tx = client.transaction().await.map_err(|e| db(&e))?;
        tx.execute("SELECT set_config('rxtrack.tenant', $1, true)", &[&tenant])
            .await
            .map_err(|e| db(&e))?;
        let rows = tx.query(sql, params).await.map_err(|e| db(&e))?;
        tx.commit().await.map_err(|e| db(&e))?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }
}

fn parse(line: &str) -> Result<StoredEvent, StoreError> {
    serde_json::from_str(line).map_err(|e| StoreError::Database(format!("an unreadable row: {e}")))
}

impl EventLog for PgLog {
    fn append(&self, events: &[StoredEvent]) -> Pending {
        let (done, rx) = oneshot::channel();
        let Some(first) = events.first() else {
            let _ = done.send(Ok(()));
            return rx;
        };
        let a = Append {
            tenant: first.tenant.clone(),
            events: events.to_vec(),
            done,
        };
        if let Err(mpsc::error::SendError(a)) = self.tx.send(a) {
            let _ = a.done.send(Err(Arc::new(StoreError::Closed)));
        }
        rx
    }

    fn head(&self, tenant: &TenantId) -> Option<(u64, String)> {
        self.heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant.as_str())
            .cloned()
    }

    fn delivery_events(
        &self,
        tenant: &TenantId,
        delivery: &DeliveryId,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let lines = Self::block_on(self.query_tenant(
            tenant.as_str(),
            "SELECT line FROM delivery_events WHERE tenant = $1 AND delivery_id = $2 ORDER BY seq",
            &[&tenant.as_str(), &delivery.as_str()],
        ))?;
        lines.iter().map(|l| parse(l)).collect()
    }

    fn scan(
        &self,
        tenant: &TenantId,
        from: i64,
        to: i64,
        each: &mut dyn FnMut(StoredEvent) -> bool,
    ) -> Result<(), StoreError> {
        let lines = Self::block_on(self.query_tenant(
            tenant.as_str(),
            "SELECT line FROM delivery_events WHERE tenant = $1 AND at >= $2 AND at < $3 ORDER BY seq",
            &[&tenant.as_str(), &from, &to],
        ))?;
        for l in &lines {
            if !each(parse(l)?) {
                break;
            }
        }
        Ok(())
    }

    fn verify(&self, tenant: &TenantId) -> Result<VerifyReport, StoreError> {
        let lines = Self::block_on(self.query_tenant(
            tenant.as_str(),
            "SELECT line FROM delivery_events WHERE tenant = $1 ORDER BY seq",
            &[&tenant.as_str()],
        ))?;
        Ok(verify_lines(
            lines.iter().map(String::as_str),
            Some(tenant.as_str()),
        ))
    }

    fn read_after(
        &self,
        tenant: &TenantId,
        seq: u64,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<StoredEvent>, StoreError>> + Send + '_>> {
        let tenant = tenant.as_str().to_owned();
        Box::pin(async move { self.read_after_async(&tenant, seq).await })
    }

    fn changes(&self) -> Option<mpsc::UnboundedReceiver<TenantId>> {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && self.reachable.load(Ordering::Acquire)
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// The group-commit writer: everything waiting, one transaction.
async fn writer(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<Append>,
    heads: Arc<Mutex<HashMap<String, (u64, String)>>>,
    healthy: Arc<AtomicBool>,
) {
    let mut group = Vec::new();
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let outcome = tokio::time::timeout(TIMEOUT, commit(&pool, &group))
            .await
            .unwrap_or_else(|_| Err(StoreError::Database("the commit timed out".into())));
        match outcome {
            Ok(outcomes) => {
                healthy.store(true, Ordering::Release);
                let mut h = heads.lock().unwrap_or_else(PoisonError::into_inner);
                for (a, ok) in group.drain(..).zip(outcomes) {
                    let result = if ok {
                        if let Some(last) = a.events.last() {
                            let head = h.entry(a.tenant.clone()).or_insert((0, GENESIS.to_owned()));
                            if last.seq > head.0 {
                                *head = (last.seq, last.hash.clone());
                            }
                        }
                        Ok(())
                    } else {
                        Err(Arc::new(StoreError::Conflict {
                            tenant: a.tenant.clone(),
                            seq: a.events.first().map_or(0, |e| e.seq),
                        }))
                    };
                    let _ = a.done.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "a PostgreSQL log commit failed; nothing of it was kept");
                healthy.store(false, Ordering::Release);
                let e = Arc::new(e);
                for a in group.drain(..) {
                    let _ = a.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Inserts each append of the group in a savepoint of one transaction;
/// returns which ones went in (the others lost a race or follow one that did).
async fn commit(pool: &Pool, group: &[Append]) -> Result<Vec<bool>, StoreError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| StoreError::Database(e.to_string()))?;
    let tx = client.transaction().await.map_err(|e| db(&e))?;
    let insert = tx
        .prepare(
            "INSERT INTO delivery_events (tenant, seq, delivery_id, at, prev, hash, line) \
             SELECT $1, s, d, a, p, h, l \
             FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[]) \
                  AS t(s, d, a, p, h, l) \
             WHERE CASE WHEN $8::bigint = 1 THEN $9::text = $10::text \
                   ELSE EXISTS (SELECT 1 FROM delivery_events \
                                WHERE tenant = $1 AND seq = $8 - 1 AND hash = $9) END",
        )
        .await
        .map_err(|e| db(&e))?;
    let mut outcomes = vec![true; group.len()];
    let mut notified: Vec<&str> = Vec::new();
    // Every node takes tenants in the same order, so two nodes' groups
    // never wait on each other's rows in a cycle (a stable sort keeps one
    // tenant's appends in chain order).
    let mut order: Vec<usize> = (0..group.len())
        .filter(|i| !group[*i].events.is_empty())
        .collect();
    order.sort_by(|x, y| group[*x].tenant.cmp(&group[*y].tenant));
    // A node's appends of one tenant extend each other: each run of them
    // that does goes in with one statement, all or nothing (if its first
    // event lost the race, every later one extends a loser anyway).
    for run in runs(group, &order) {
        let ok = insert_run(&tx, &insert, group, &run).await?;
        let tenant = group[run[0]].tenant.as_str();
        if ok && !notified.contains(&tenant) {
            notified.push(tenant);
        }
        for i in run {
            outcomes[i] = ok;
        }
    }
    for t in notified {
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &t])
            .await
            .map_err(|e| db(&e))?;
    }
    tx.commit().await.map_err(|e| db(&e))?;
    Ok(outcomes)
}

/// Splits the appends (indices in `order`, by tenant) into runs of one
/// tenant each, every append extending the one before it in the run.
fn runs(group: &[Append], order: &[usize]) -> Vec<Vec<usize>> {
    let mut runs: Vec<Vec<usize>> = Vec::new();
    for &i in order {
        let a = &group[i];
        let extends = runs.last().and_then(|r| r.last()).is_some_and(|&j| {
            let b = &group[j];
            match (b.events.last(), a.events.first()) {
                (Some(last), Some(first)) => {
                    b.tenant == a.tenant && first.seq == last.seq + 1 && first.prev == last.hash
                }
                _ => false,
            }
        });
        match runs.last_mut() {
            Some(r) if extends => r.push(i),
            _ => runs.push(vec![i]),
        }
    }
    runs
}

/// Inserts one run of appends in a savepoint; `false`: it lost the race
/// (another node's rows are in its place, or it follows one that lost).
async fn insert_run(
    tx: &tokio_postgres::Transaction<'_>,
    insert: &tokio_postgres::Statement,
    group: &[Append],
    run: &[usize],
) -> Result<bool, StoreError> {
    let events: Vec<&StoredEvent> = run.iter().flat_map(|&i| &group[i].events).collect();
    let (Some(first), Some(&i0)) = (events.first(), run.first()) else {
        return Ok(true);
    };
    let tenant = &group[i0].tenant;
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| i64::try_from(e.seq).unwrap_or(i64::MAX))
        .collect();
    let ids: Vec<Option<&str>> = events.iter().map(|e| e.delivery_id.as_deref()).collect();
    let ats: Vec<i64> = events.iter().map(|e| e.at).collect();
    let prevs: Vec<&str> = events.iter().map(|e| e.prev.as_str()).collect();
    let hashes: Vec<&str> = events.iter().map(|e| e.hash.as_str()).collect();
    let lines: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.to_line()).trim_end().to_owned())
        .collect();
    let first_seq = i64::try_from(first.seq).unwrap_or(i64::MAX);
    tx.batch_execute("SAVEPOINT append")
        .await
        .map_err(|e| db(&e))?;
    tx.execute("SELECT set_config('rxtrack.tenant', $1, true)", &[tenant])
        .await
        .map_err(|e| db(&e))?;
    let inserted = tx
        .execute(
            insert,
            &[
                tenant,
                &seqs,
                &ids,
                &ats,
                &prevs,
                &hashes,
                &lines,
                &first_seq,
                &first.prev.as_str(),
                &GENESIS,
            ],
        )
        .await;
    let ok = match inserted {
        Ok(n) => n == events.len() as u64,
        // Another node took the place first (or their transactions
        // collided): this run lost the race.
        Err(e)
            if [
                SqlState::UNIQUE_VIOLATION,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::T_R_SERIALIZATION_FAILURE,
            ]
            .iter()
            .any(|c| e.code() == Some(c)) =>
        {
            false
        }
        Err(e) => return Err(db(&e)),
    };
    let end = if ok {
        "RELEASE SAVEPOINT append"
    } else {
        "ROLLBACK TO SAVEPOINT append"
    };
    tx.batch_execute(end).await.map_err(|e| db(&e))?;
    Ok(ok)
}

/// Listens for other nodes' appends and polls every [`POLL`] as well;
/// reconnects after a lost connection (and then names every tenant, so
/// that each catches up).
async fn listen(
    pg: tokio_postgres::Config,
    tenants: Vec<TenantId>,
    out: mpsc::UnboundedSender<TenantId>,
    healthy: Arc<AtomicBool>,
    writes: Arc<AtomicBool>,
) {
    loop {
        match pg.connect(NoTls).await {
            Ok((client, mut conn)) => {
                let (note_tx, mut note_rx) = mpsc::unbounded_channel::<String>();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                let _ = note_tx.send(n.payload().to_owned());
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    healthy.store(true, Ordering::Release);
                    // After (re)connecting, everything may have moved.
                    for t in &tenants {
                        if out.send(t.clone()).is_err() {
                            return;
                        }
                    }
                    let mut poll = tokio::time::interval(POLL);
                    loop {
                        tokio::select! {
                            note = note_rx.recv() => match note {
                                Some(t) => {
                                    if let Ok(t) = TenantId::parse(&t)
                                        && tenants.contains(&t)
                                        && out.send(t).is_err()
                                    {
                                        return;
                                    }
                                }
                                None => break,
                            },
                            _ = poll.tick() => {
                                // The connection answers: the database is
                                // there (and a failed write may be retried).
                                let probe = tokio::time::timeout(TIMEOUT, client.simple_query("SELECT 1")).await;
                                if !matches!(probe, Ok(Ok(_))) {
                                    break;
                                }
                                writes.store(true, Ordering::Release);
                                for t in &tenants {
                                    if out.send(t.clone()).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                }
                driver.abort();
                healthy.store(false, Ordering::Release);
                tracing::warn!("lost the PostgreSQL notification connection; reconnecting");
            }
            Err(e) => {
                healthy.store(false, Ordering::Release);
                tracing::warn!(error = %e, "cannot reach PostgreSQL for notifications; retrying");
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
