//! The shared state of one running node, and how it is opened from disk.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::Config;
use crate::deliveries::{DomainError, Tenant};
use crate::ingest::Devices;
use crate::log::{self, DataKey, Event, Location, Store};
use crate::metrics::Metrics;
use crate::types::TenantId;

/// Everything a request handler or socket task may need.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub verifier: Verifier,
    pub tenants: HashMap<TenantId, Tenant>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub devices: Devices,
    /// Cancelled when the node starts draining.
    pub shutdown: CancellationToken,
    /// Every task the node spawns, so that draining can wait for them.
    pub tracker: TaskTracker,
    /// One permit per open connection (HTTP or WebSocket).
    pub conn_limit: Arc<Semaphore>,
    /// Tracking-link lookups per client address.
    pub link_limiter: crate::track::LinkLimiter,
    /// Each tenant's dispatcher fan-out.
    pub hubs: HashMap<TenantId, crate::dispatch::Hub>,
}

/// Why waiting for durability failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("the delivery log could not make the change durable: {0}")]
    Log(String),
}

impl App {
    /// Opens the data folder: recovers the log (cutting a torn tail),
    /// rebuilds every tenant's state from it, and starts the log writer.
    pub fn open(config: Config, shutdown: CancellationToken) -> anyhow::Result<Arc<Self>> {
        let metrics = Arc::new(Metrics::new());
        crate::fsutil::create_private_dir(&config.data_dir)
            .with_context(|| format!("creating data folder {}", config.data_dir.display()))?;
        let log_dir = config.data_dir.join("log");

        let mut keys: HashMap<TenantId, Option<Arc<DataKey>>> = HashMap::new();
        for t in &config.tenants {
            let key = DataKey::load(&config.data_dir, &t.id, false)?.map(Arc::new);
            keys.insert(t.id.clone(), key);
        }
        let mut tenants: HashMap<TenantId, Tenant> = keys
            .iter()
            .filter_map(|(id, k)| {
                k.as_ref()
                    .map(|k| (id.clone(), Tenant::new(id.clone(), k.clone())))
            })
            .collect();

        let recovery = log::store::recover(&log_dir, |stored, loc| {
            let Ok(tid) = TenantId::parse(&stored.tenant) else {
                return Ok(());
            };
            match keys.get(&tid) {
                // A tenant no longer configured: its chain is kept, its state is not loaded.
                None => Ok(()),
                Some(None) => bail!(
                    "the log holds events of tenant {tid} but its data key {} is missing (shredded?); \
                     remove the tenant from the configuration or restore the key",
                    log::crypto::key_path(&config.data_dir, &tid).display()
                ),
                Some(Some(_)) => {
                    let seq = stored.seq;
                    tenants
                        .get(&tid)
                        .context("tenant with a key has state")?
                        .replay(stored, loc)
                        .with_context(|| format!("opening event {seq} of tenant {tid}"))
                }
            }
        })?;
        for t in &config.tenants {
            if !tenants.contains_key(&t.id) {
                let key = DataKey::load(&config.data_dir, &t.id, true)?
                    .context("a created data key can be loaded")?;
                tenants.insert(t.id.clone(), Tenant::new(t.id.clone(), Arc::new(key)));
            }
        }
        let network = load_network(&config)?;
        for (id, t) in &tenants {
            let name = config
                .tenant(id.as_str())
                .and_then(|c| c.display_name.as_deref())
                .map(Arc::from);
            t.configure(
                config.limits.link_grace_ms,
                config.eta,
                network.clone(),
                name,
            );
        }
        for (tid, (seq, hash)) in recovery.heads {
            if let Some(t) = TenantId::parse(&tid).ok().and_then(|id| tenants.get(&id)) {
                t.set_chain_head(seq, hash);
            }
        }
        tracing::info!(
            events = recovery.events,
            torn_tail_bytes = recovery.truncated_bytes,
            tenants = tenants.len(),
            "delivery log recovered"
        );
        let active: usize = tenants.values().map(|t| t.lock().active_count()).sum();
        metrics
            .deliveries_active
            .set(i64::try_from(active).unwrap_or(i64::MAX));

        let store = Store::open(&log_dir, metrics.clone())?;
        let tenant_ids: Vec<TenantId> = tenants.keys().cloned().collect();
        let config_limit = config.limits.max_connections;
        Ok(Arc::new(Self {
            verifier: config.verifier(),
            config,
            tenants,
            store,
            metrics,
            devices: Devices::default(),
            shutdown,
            tracker: TaskTracker::new(),
            conn_limit: Arc::new(Semaphore::new(config_limit)),
            link_limiter: crate::track::LinkLimiter::default(),
            hubs: tenant_ids
                .into_iter()
                .map(|t| (t, crate::dispatch::Hub::default()))
                .collect(),
        }))
    }

    /// The tenant of a verified principal (always configured: the verifier
    /// only accepts tokens of configured tenants).
    #[must_use]
    pub fn tenant(&self, id: &TenantId) -> Option<&Tenant> {
        self.tenants.get(id)
    }

    /// Waits until a command's events are durable, then records where they are.
    pub async fn durable<T>(
        &self,
        tenant: &Tenant,
        committed: crate::deliveries::Committed<T>,
    ) -> Result<(Vec<Event>, T), CommitError> {
        let mut locations: Vec<Location> = Vec::with_capacity(committed.pending.len());
        for p in committed.pending {
            match p.await {
                Ok(Ok(loc)) => locations.push(loc),
                Ok(Err(e)) => return Err(CommitError::Log(e.to_string())),
                Err(_) => return Err(CommitError::Log("the log writer stopped".into())),
            }
        }
        tenant.record_locations(&committed.events, &locations);
        self.refresh_active();
        crate::dispatch::publish_events(self, tenant, &committed.events);
        // Windows and estimates that moved with them (not already told with
        // an event of their delivery).
        let told: std::collections::HashSet<&str> = committed
            .events
            .iter()
            .filter_map(|e| e.delivery_id.as_deref())
            .collect();
        let moved: Vec<crate::types::DeliveryId> = committed
            .changed
            .into_iter()
            .filter(|id| !told.contains(id.as_str()))
            .collect();
        crate::dispatch::publish_deliveries(self, tenant, &moved);
        Ok((committed.events, committed.value))
    }

    /// A permit for one more socket, or a 503 when the node is full.
    pub fn socket_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, crate::api::ApiError> {
        self.conn_limit.clone().try_acquire_owned().map_err(|_| {
            crate::api::ApiError::new(
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
            self.verifier.verify(t, crate::types::UnixMillis::now())
        })
    }

    fn refresh_active(&self) {
        let active: usize = self.tenants.values().map(|t| t.lock().active_count()).sum();
        self.metrics
            .deliveries_active
            .set(i64::try_from(active).unwrap_or(i64::MAX));
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
