//! What this node's sockets watch on the bus between nodes: each
//! dispatcher's interest (map cells, or the whole map and so every cell
//! the tenant's drivers were seen in lately), and which channels are no
//! longer needed.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};

use super::wire::{
    After, CELLS_KEPT_MS, Interest, Topic, cell_channel, cells_key, cells_notice,
    deliveries_channel, parse_channel_cell, patient_channel,
};
use super::{RETRY, RedisBus};
use crate::types::TenantId;

impl RedisBus {
    /// Records what a dispatcher socket watches, and subscribes to it.
    pub(super) fn watch(&self, tenant: &TenantId, token: &Arc<()>, interest: Interest) {
        let mut channels = vec![(
            deliveries_channel(tenant),
            Topic::Deliveries(tenant.clone()),
            None,
        )];
        match &interest {
            Interest::All => channels.push((
                cells_notice(tenant),
                Topic::Notice(tenant.clone()),
                Some(After::LoadCells(tenant.clone())),
            )),
            Interest::Cells(cells) => channels.extend(
                cells
                    .iter()
                    .map(|&c| (cell_channel(tenant, c), Topic::Cell(tenant.clone()), None)),
            ),
        }
        // The view first: a prune running meanwhile then keeps (or takes
        // back) what it needs.
        self.views
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                Arc::as_ptr(token) as usize,
                (tenant.clone(), Arc::downgrade(token), interest),
            );
        for (channel, topic, then) in channels {
            self.want(channel, topic, then);
        }
    }

    /// The tenants with a dispatcher here watching the whole map, and the
    /// cell channels the others watch (forgetting closed sockets).
    pub(super) fn interests(&self) -> (HashSet<TenantId>, HashSet<String>) {
        let (all, cells, _) = self.interests_by_tenant();
        (all, cells)
    }

    /// The same, and every tenant with a dispatcher here at all.
    pub(super) fn interests_by_tenant(
        &self,
    ) -> (HashSet<TenantId>, HashSet<String>, HashSet<TenantId>) {
        let mut views = self.views.lock().unwrap_or_else(PoisonError::into_inner);
        views.retain(|_, (_, token, _)| token.strong_count() > 0);
        let mut all = HashSet::new();
        let mut cells = HashSet::new();
        let any: HashSet<TenantId> = views.values().map(|(t, _, _)| t.clone()).collect();
        for (t, _, interest) in views.values() {
            match interest {
                Interest::All => {
                    all.insert(t.clone());
                }
                Interest::Cells(set) => cells.extend(set.iter().map(|&c| cell_channel(t, c))),
            }
        }
        (all, cells, any)
    }

    /// Subscribes to every cell the tenant's drivers were seen in lately,
    /// if a dispatcher here still watches the whole map.
    pub(super) async fn load_cells(&self, tenant: &TenantId) {
        let mut tries = 0;
        let cells: Vec<String> = loop {
            let since = crate::clock::now().0.saturating_sub(CELLS_KEPT_MS);
            match self
                .query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(cells_key(tenant))
                        .arg(since)
                        .arg("+inf"),
                )
                .await
            {
                Ok(c) => break c,
                // Tried again: nothing else would (the news channel is
                // subscribed already).
                Err(e) if tries < 10 => {
                    tries += 1;
                    tracing::warn!(error = %e, "cannot read the map cells of a tenant from Redis; retrying");
                    tokio::time::sleep(RETRY).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the map cells of a tenant from Redis");
                    return;
                }
            }
        };
        if !self.interests().0.contains(tenant) {
            return;
        }
        for c in cells {
            if let Some(cell) = parse_channel_cell(&c) {
                self.want(
                    cell_channel(tenant, cell),
                    Topic::Cell(tenant.clone()),
                    None,
                );
            }
        }
    }

    /// Channels this node subscribed to that nobody here watches any
    /// more; forgotten here (the caller unsubscribes).
    pub(super) fn stale_channels(&self) -> Vec<String> {
        let stale = {
            let needed = self.needed();
            let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
            let stale: Vec<(String, Topic)> = wanted
                .iter()
                .filter(|(c, topic)| !needed(c, topic))
                .map(|(c, t)| (c.clone(), t.clone()))
                .collect();
            for (c, _) in &stale {
                wanted.remove(c);
            }
            stale
        };
        // A socket that began watching one of them meanwhile found it
        // still wanted and asked for nothing: it is kept.
        let needed = self.needed();
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        stale
            .into_iter()
            .filter_map(|(c, topic)| {
                if needed(&c, &topic) {
                    wanted.insert(c, topic);
                    None
                } else {
                    Some(c)
                }
            })
            .collect()
    }

    /// Whether this node's sockets need a channel now.
    pub(super) fn needed(&self) -> impl Fn(&str, &Topic) -> bool + use<> {
        let watched: HashSet<String> = self
            .local
            .watched_deliveries()
            .iter()
            .map(|(t, d)| patient_channel(t, d))
            .collect();
        let (all, cells, any) = self.interests_by_tenant();
        move |c, topic| match topic {
            Topic::Fixed => true,
            Topic::Patient => watched.contains(c),
            Topic::Cell(t) => all.contains(t) || cells.contains(c),
            Topic::Notice(t) => all.contains(t),
            Topic::Deliveries(t) => any.contains(t),
        }
    }

    pub(super) fn wanted_channels(&self) -> Vec<String> {
        self.wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}
