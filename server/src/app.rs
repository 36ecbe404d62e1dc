//! The shared state of one running node, and how it is opened from disk.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::bus::{Bus, LocalBus};
use crate::config::Config;
use crate::devices::Devices;
use crate::error::ApiError;
use crate::log::{self, DataKey, EventLog, Store};
use crate::metrics::Metrics;
use crate::tenant::{Replayed, Tenant};
use crate::types::TenantId;

/// Everything a request handler or socket task may need.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub verifier: Verifier,
    pub tenants: HashMap<TenantId, Arc<Tenant>>,
    /// The delivery log (durable events only).
    pub log: Arc<dyn EventLog>,
    /// Where committed changes and positions go out to sockets.
    pub bus: Arc<dyn Bus>,
    pub metrics: Arc<Metrics>,
    pub devices: Devices,
    /// Cancelled when the node starts draining.
    pub shutdown: CancellationToken,
    /// Every task the node spawns, so that draining can wait for them.
    pub tracker: TaskTracker,
    /// One permit per open connection (HTTP or WebSocket).
    pub conn_limit: Arc<Semaphore>,
    /// Tracking-link lookups per client address.
    pub link_limiter: crate::ratelimit::AddressLimiter,
}

impl App {
    /// Opens the delivery log (the data folder's, or PostgreSQL's with
    /// `[postgres]`), rebuilds every tenant's state from it, and starts the
    /// log writer (and, on PostgreSQL, the tailing of other nodes' events).
    pub async fn open(config: Config, shutdown: CancellationToken) -> anyhow::Result<Arc<Self>> {
        let metrics = Arc::new(Metrics::new());
        crate::fsutil::create_private_dir(&config.data_dir)
            .with_context(|| format!("creating data folder {}", config.data_dir.display()))?;
        let network = load_network(&config)?;
        let fresh = |key: Arc<DataKey>, id: &TenantId| {
            let name = config
                .tenant(id.as_str())
                .and_then(|c| c.display_name.as_deref())
                .map(Arc::from);
            Replayed::new(
                key,
                config.limits.link_grace_ms,
                config.eta,
                network.clone(),
                name,
            )
        };

        let mut keys: HashMap<TenantId, Option<Arc<DataKey>>> = HashMap::new();
        for t in &config.tenants {
            let key = DataKey::load(&config.data_dir, &t.id, false)?.map(Arc::new);
            keys.insert(t.id.clone(), key);
        }
        let mut states: HashMap<TenantId, Replayed> = keys
            .iter()
            .filter_map(|(id, k)| k.as_ref().map(|k| (id.clone(), fresh(k.clone(), id))))
            .collect();

        let log = open_log(&config, &keys, &mut states, &metrics).await?;
        for t in &config.tenants {
            if !states.contains_key(&t.id) {
                // Several nodes share one log: a key made here would seal
                // what the others cannot open. One is made only for a
                // tenant whose chain is still empty (the first node).
                if log.head(&t.id).is_some() {
                    anyhow::bail!(
                        "tenant {} has events in the shared log but no data key here ({}): \
                         copy it from another node",
                        t.id,
                        log::crypto::key_path(&config.data_dir, &t.id).display()
                    );
                }
                let key = DataKey::load(&config.data_dir, &t.id, true)?
                    .context("a created data key can be loaded")?;
                states.insert(t.id.clone(), fresh(Arc::new(key), &t.id));
            }
        }
        let active: usize = states.values().map(Replayed::active_count).sum();
        metrics
            .deliveries_active
            .set(i64::try_from(active).unwrap_or(i64::MAX));

        let local = LocalBus::new(states.keys().cloned(), metrics.clone());
        let (bus, redis): (Arc<dyn Bus>, _) = match &config.redis {
            Some(target) => {
                let r = crate::bus::redis::RedisBus::start(target, local, metrics.clone())
                    .context("[redis]: the URL is not usable")?;
                (r.clone(), Some(r))
            }
            None => (Arc::new(local), None),
        };
        let tenants: HashMap<TenantId, Arc<Tenant>> = states
            .into_iter()
            .map(|(id, state)| {
                let t = Tenant::new(id.clone(), state, log.clone(), bus.clone(), metrics.clone());
                (id, Arc::new(t))
            })
            .collect();
        let config_limit = config.limits.max_connections;
        if let Some(r) = &redis {
            let weak: HashMap<TenantId, std::sync::Weak<Tenant>> = tenants
                .iter()
                .map(|(id, t)| (id.clone(), Arc::downgrade(t)))
                .collect();
            r.on_resync(Box::new(move |want| match want {
                Some((tenant, id)) => {
                    if let Some(t) = weak.get(tenant).and_then(std::sync::Weak::upgrade) {
                        t.republish_views(Some(id));
                    }
                }
                None => {
                    for t in weak.values().filter_map(std::sync::Weak::upgrade) {
                        t.republish_views(None);
                    }
                }
            }));
        }
        if let Some(changes) = log.changes() {
            tokio::spawn(tail(changes, tenants.clone()));
        }
        Ok(Arc::new(Self {
            verifier: config.verifier(),
            config,
            tenants,
            log,
            bus,
            metrics,
            devices: Devices::default(),
            shutdown,
            tracker: TaskTracker::new(),
            conn_limit: Arc::new(Semaphore::new(config_limit)),
            link_limiter: crate::ratelimit::AddressLimiter::default(),
        }))
    }

    /// The tenant of a verified principal (always configured: the verifier
    /// only accepts tokens of configured tenants).
    #[must_use]
    pub fn tenant(&self, id: &TenantId) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    /// A permit for one more socket, or a 503 when the node is full.
    pub fn socket_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.conn_limit.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many connections; retry later",
            )
        })
    }

    /// Verifies the token a socket presented, if any.
    pub fn verify_presented(
        &self,
        token: Option<&str>,
    ) -> Result<crate::auth::Principal, crate::auth::AuthError> {
        token.map_or(Err(crate::auth::AuthError::Missing), |t| {
            self.verifier.verify(t, crate::clock::now())
        })
    }
}

/// Opens the delivery log and replays it into the tenants' states: the
/// PostgreSQL log with `[postgres]`, else the data folder's segments
/// (recovered first: a torn tail is cut).
async fn open_log(
    config: &Config,
    keys: &HashMap<TenantId, Option<Arc<DataKey>>>,
    states: &mut HashMap<TenantId, Replayed>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn EventLog>> {
    let log_dir = config.data_dir.join("log");
    let missing_key = |tid: &TenantId| {
        anyhow::anyhow!(
            "the log holds events of tenant {tid} but its data key {} is missing (shredded?); \
             remove the tenant from the configuration or restore the key",
            log::crypto::key_path(&config.data_dir, tid).display()
        )
    };
    Ok(if let Some(url) = &config.postgres {
        let ids: Vec<TenantId> = config.tenants.iter().map(|t| t.id.clone()).collect();
        let pg = log::pg::PgLog::connect(url.expose(), ids.clone())
            .await
            .context("connecting to the PostgreSQL delivery log ([postgres])")?;
        let mut events = 0;
        for id in &ids {
            let stored = pg
                .read_after_async(id.as_str(), 0)
                .await
                .with_context(|| format!("reading tenant {id}'s events from PostgreSQL"))?;
            if stored.is_empty() {
                continue;
            }
            let state = states.get_mut(id).ok_or_else(|| missing_key(id))?;
            for e in stored {
                let seq = e.seq;
                state
                    .replay(e)
                    .with_context(|| format!("opening event {seq} of tenant {id}"))?;
                events += 1;
            }
        }
        tracing::info!(
            events,
            tenants = ids.len(),
            "delivery log read from PostgreSQL"
        );
        Arc::new(pg)
    } else {
        let recovery = log::store::recover(&log_dir, |stored, _| {
            let Ok(tid) = TenantId::parse(&stored.tenant) else {
                return Ok(());
            };
            match keys.get(&tid) {
                // A tenant no longer configured: its chain is kept, its state is not loaded.
                None => Ok(()),
                Some(None) => Err(missing_key(&tid)),
                Some(Some(_)) => {
                    let seq = stored.seq;
                    states
                        .get_mut(&tid)
                        .context("tenant with a key has state")?
                        .replay(stored)
                        .with_context(|| format!("opening event {seq} of tenant {tid}"))
                }
            }
        })?;
        tracing::info!(
            events = recovery.events,
            torn_tail_bytes = recovery.truncated_bytes,
            "delivery log recovered"
        );
        Arc::new(Store::open(&log_dir, metrics.clone(), recovery)?)
    })
}

/// Takes in what other nodes append, tenant by tenant, as the log reports
/// it (several nodes on one PostgreSQL log).
async fn tail(
    mut changes: tokio::sync::mpsc::UnboundedReceiver<TenantId>,
    tenants: HashMap<TenantId, Arc<Tenant>>,
) {
    while let Some(first) = changes.recv().await {
        // What piled up meanwhile is one catch-up per tenant.
        let mut due = std::collections::BTreeSet::from([first]);
        while let Ok(id) = changes.try_recv() {
            due.insert(id);
        }
        for id in due {
            if let Some(t) = tenants.get(&id)
                && let Err(e) = t.catch_up().await
            {
                tracing::warn!(tenant = %id, error = %e, "catching up with other nodes failed; retrying on the next change");
            }
        }
    }
}

/// The road network for ETAs, if the configuration names one: loaded once,
/// shared read-only by every tenant.
fn load_network(config: &Config) -> anyhow::Result<Option<Arc<roads::Network>>> {
    let Some(src) = &config.roads else {
        return Ok(None);
    };
    let net = src
        .load()
        .with_context(|| format!("roads = {src:?}: the road extract could not be read"))?;
    tracing::info!(
        nodes = net.graph().nodes.len(),
        edges = net.graph().edge_count(),
        "road network loaded for ETAs"
    );
    Ok(Some(Arc::new(net)))
}
