//! Turns at writing a tenant's chain, when several nodes share it.
//!
//! Every append names the chain head it extends, and PostgreSQL lets one
//! of two racing appends in: correct, but two nodes writing one tenant at
//! the same moment lose to each other again and again (each loss costs a
//! read of what won and a new decision). So a node writes a tenant's chain
//! only while it holds the tenant's **lease**, a session-level advisory
//! lock in PostgreSQL on a connection of its own:
//!
//! - a node that needs to append and does not hold the lease takes it
//!   (`pg_try_advisory_lock`, retried every couple of milliseconds), then
//!   reads what the others wrote before it decides: its decision then rests
//!   on the head it will extend, and it does not lose;
//! - while it waits it says so (`NOTIFY rxtrack_lease`), and a holder that
//!   hears it hands the lease over once it has held it for a turn;
//! - a holder lets go of a lease it has not used for a moment, and the
//!   database lets go of every lease of a node whose connection dies.
//!
//! The lease only spares lost races: the chain check still decides every
//! append, so a node that writes without it (its lease lapsed while an
//! append was on its way) is refused as before, never forks the chain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::schema::db;
use super::store::StoreError;

/// The channel a node waiting for a lease names the tenant on.
const WANTED: &str = "rxtrack_lease";
/// How often a waiting node tries the lease again.
const RETRY: Duration = Duration::from_millis(2);
/// How often a waiting node says again that it waits.
const ASK_EVERY: Duration = Duration::from_millis(20);
/// A holder asked for the lease hands it over after holding it this long.
const TURN: Duration = Duration::from_millis(50);
/// A lease unused this long is let go.
const IDLE: Duration = Duration::from_millis(20);
/// After handing a lease over, a node waits this long before asking for it
/// again (so that the node that asked gets its turn).
const YIELD: Duration = Duration::from_millis(5);
/// How often held leases are looked over.
const SWEEP: Duration = Duration::from_millis(5);
/// Longest wait for a lease.
const TIMEOUT: Duration = Duration::from_secs(5);

struct Held {
    since: Instant,
    used: Instant,
}

#[derive(Default)]
struct State {
    held: HashMap<String, Held>,
    /// When another node last said it waits for a tenant's lease.
    wanted: HashMap<String, Instant>,
    /// When this node last handed a tenant's lease over.
    yielded: HashMap<String, Instant>,
}

/// This node's leases.
pub struct Leases {
    pg: tokio_postgres::Config,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// One acquisition at a time per tenant (advisory locks are re-entrant
    /// within a session: two at once would take the lock twice).
    taking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    state: Arc<Mutex<State>>,
}

/// The advisory lock key of a tenant's lease.
fn key(tenant: &str) -> i64 {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("rxtrack:lease:{tenant}").as_bytes(),
    );
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    i64::from_be_bytes(b)
}

impl Leases {
    /// Leases over connections made from `pg`; starts the sweeper.
    pub fn start(pg: tokio_postgres::Config) -> Arc<Self> {
        let leases = Arc::new(Self {
            pg,
            client: tokio::sync::Mutex::new(None),
            taking: Mutex::default(),
            state: Arc::default(),
        });
        tokio::spawn(sweep(Arc::downgrade(&leases)));
        leases
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this node holds the tenant's lease now.
    pub fn holds(&self, tenant: &str) -> bool {
        self.state().held.contains_key(tenant)
    }

    /// The lease connection, made (and listening) if need be.
    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        // A new session holds nothing: the database let go of the old one's.
        self.state().held.clear();
        let (client, mut conn) = tokio::time::timeout(TIMEOUT, self.pg.connect(NoTls))
            .await
            .map_err(|_| StoreError::Database("connecting for a lease timed out".into()))?
            .map_err(|e| db(&e))?;
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let AsyncMessage::Notification(n) = m {
                    state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .wanted
                        .insert(n.payload().to_owned(), Instant::now());
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {WANTED}"))
            .await
            .map_err(|e| db(&e))?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Takes the tenant's lease, waiting for another node to hand it over;
    /// `true` if it was not held here already (read what others wrote
    /// before deciding).
    pub async fn take(&self, tenant: &str) -> Result<bool, StoreError> {
        if let Some(h) = self.state().held.get_mut(tenant) {
            h.used = Instant::now();
            return Ok(false);
        }
        let one = self
            .taking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_default()
            .clone();
        let _one = one.lock().await;
        if let Some(h) = self.state().held.get_mut(tenant) {
            h.used = Instant::now();
            return Ok(false);
        }
        let yielded = self.state().yielded.get(tenant).copied();
        if let Some(at) = yielded {
            tokio::time::sleep((at + YIELD).saturating_duration_since(Instant::now())).await;
        }
        let started = Instant::now();
        let mut asked: Option<Instant> = None;
        let k = key(tenant);
        loop {
            let client = self.client().await?;
            let got: bool = match client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&k])
                .await
            {
                Ok(row) => row.get(0),
                Err(e) => {
                    *self.client.lock().await = None;
                    return Err(db(&e));
                }
            };
            if got {
                let now = Instant::now();
                self.state().held.insert(
                    tenant.to_owned(),
                    Held {
                        since: now,
                        used: now,
                    },
                );
                return Ok(true);
            }
            if started.elapsed() > TIMEOUT {
                return Err(StoreError::Database(
                    "another node held the tenant's log for too long".into(),
                ));
            }
            if asked.is_none_or(|at| at.elapsed() >= ASK_EVERY) {
                client
                    .execute("SELECT pg_notify($1, $2)", &[&WANTED, &tenant])
                    .await
                    .map_err(|e| db(&e))?;
                asked = Some(Instant::now());
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Lets go of the leases unused for a moment, and of those held for a
    /// turn that another node asked for.
    async fn sweep_once(&self) {
        let now = Instant::now();
        let done: Vec<(String, bool)> = {
            let mut s = self.state();
            let s = &mut *s;
            let done: Vec<(String, bool)> =
                s.held
                    .iter()
                    .filter_map(|(t, h)| {
                        let asked = s.wanted.get(t).is_some_and(|at| {
                            now.duration_since(*at) < ASK_EVERY * 2 && *at > h.since
                        });
                        if asked && now.duration_since(h.since) >= TURN {
                            Some((t.clone(), true))
                        } else if now.duration_since(h.used) >= IDLE {
                            Some((t.clone(), false))
                        } else {
                            None
                        }
                    })
                    .collect();
            for (t, handed) in &done {
                s.held.remove(t);
                if *handed {
                    s.yielded.insert(t.clone(), now);
                }
            }
            s.wanted
                .retain(|_, at| now.duration_since(*at) < ASK_EVERY * 10);
            s.yielded
                .retain(|_, at| now.duration_since(*at) < YIELD * 10);
            done
        };
        if done.is_empty() {
            return;
        }
        let Some(client) = self.client.lock().await.clone() else {
            return;
        };
        for (t, _) in done {
            if client
                .query_one("SELECT pg_advisory_unlock($1)", &[&key(&t)])
                .await
                .is_err()
            {
                // The session is gone, and its locks with it.
                *self.client.lock().await = None;
                return;
            }
        }
    }
}

async fn sweep(leases: std::sync::Weak<Leases>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(l) = leases.upgrade() else {
            return;
        };
        l.sweep_once().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_own_stable_key() {
        assert_eq!(key("acme"), key("acme"));
        assert_ne!(key("acme"), key("acme2"));
    }
}
