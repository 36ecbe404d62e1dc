//! What the node knows of each driver device that has connected since it
//! started: the seq cursor that dedupes its pings, when it was last seen,
//! and its rate-limit buckets. Kept per device, not per socket, so a
//! reconnect neither re-applies old pings nor resets its limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;

use crate::bus::Bus;
use crate::config::Limits;
use crate::protocol::Cursor;
use crate::ratelimit::Bucket;
use crate::types::{DeviceId, SubjectId, TenantId, UnixMillis};

/// What the server knows of one device.
#[derive(Debug)]
pub struct DeviceLive {
    pub driver: SubjectId,
    pub cursor: Cursor,
    pub last_seen: Option<UnixMillis>,
    pub pings: Bucket,
    pub messages: Bucket,
}

/// A device, always with its tenant.
type DeviceKey = (TenantId, DeviceId);

/// Every device that has connected since start-up, by tenant and device.
#[derive(Debug, Default)]
pub struct Devices {
    map: Mutex<HashMap<DeviceKey, Arc<Mutex<DeviceLive>>>>,
}

/// One row of `GET /v1/devices`.
#[derive(Debug, Serialize)]
pub struct DeviceRow {
    pub device_id: DeviceId,
    pub driver_id: Option<SubjectId>,
    pub connected: bool,
    pub last_seen: Option<UnixMillis>,
    pub last_seq: u64,
    pub revoked: bool,
}

impl Devices {
    /// The device's state, made on its first connection. `acked`: the last
    /// seq another node acknowledged to it, if any (the cursor starts there
    /// if it is ahead).
    pub fn slot(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        driver: &SubjectId,
        limits: &Limits,
        acked: Option<u64>,
    ) -> Arc<Mutex<DeviceLive>> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = map
            .entry((tenant.clone(), device.clone()))
            .or_insert_with(|| {
                let l = limits;
                let now = Instant::now();
                Arc::new(Mutex::new(DeviceLive {
                    driver: driver.clone(),
                    cursor: Cursor::default(),
                    last_seen: None,
                    pings: Bucket::new(l.pings_per_second, l.ping_burst, now),
                    messages: Bucket::new(l.messages_per_second, l.message_burst, now),
                }))
            })
            .clone();
        if let Some(seq) = acked {
            let mut live = slot.lock().unwrap_or_else(PoisonError::into_inner);
            live.cursor.last_seq = live.cursor.last_seq.max(seq);
        }
        slot
    }

    /// The tenant's devices seen since start-up.
    #[must_use]
    pub fn list(&self, tenant: &TenantId, bus: &dyn Bus) -> Vec<DeviceRow> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, d), slot)| {
                let s = slot.lock().unwrap_or_else(PoisonError::into_inner);
                DeviceRow {
                    device_id: d.clone(),
                    driver_id: Some(s.driver.clone()),
                    connected: bus.connected(tenant, d),
                    last_seen: s.last_seen,
                    last_seq: s.cursor.last_seq,
                    revoked: false,
                }
            })
            .collect()
    }
}
