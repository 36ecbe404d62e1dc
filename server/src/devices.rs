//! What the node knows of each driver device that has connected since it
//! started: the seq cursor that dedupes its pings, when it was last seen,
//! and its rate-limit buckets. Kept per device, not per socket, so a
//! reconnect neither re-applies old pings nor resets its limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;

use crate::bus::{Bus, DeviceReport};
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

    /// The tenant's devices seen since start-up, here and (`remote`) as
    /// other nodes told of them: a device is connected if it is connected
    /// here or another node's report of its connection still holds at `now`.
    #[must_use]
    pub fn list(
        &self,
        tenant: &TenantId,
        bus: &dyn Bus,
        remote: Vec<(DeviceId, DeviceReport)>,
        now: UnixMillis,
    ) -> Vec<DeviceRow> {
        let mut rows: HashMap<DeviceId, DeviceRow> = {
            let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            map.iter()
                .filter(|((t, _), _)| t == tenant)
                .map(|((_, d), slot)| {
                    let s = slot.lock().unwrap_or_else(PoisonError::into_inner);
                    let row = DeviceRow {
                        device_id: d.clone(),
                        driver_id: Some(s.driver.clone()),
                        connected: bus.connected(tenant, d),
                        last_seen: s.last_seen,
                        last_seq: s.cursor.last_seq,
                        revoked: false,
                    };
                    (d.clone(), row)
                })
                .collect()
        };
        for (d, r) in remote {
            let connected = r.connected && r.until > now;
            let row = rows.entry(d.clone()).or_insert_with(|| DeviceRow {
                device_id: d,
                driver_id: Some(r.driver.clone()),
                connected: false,
                last_seen: None,
                last_seq: 0,
                revoked: false,
            });
            if r.last_seen > row.last_seen {
                row.last_seen = r.last_seen;
                row.driver_id = Some(r.driver);
            }
            row.connected |= connected;
            row.last_seq = row.last_seq.max(r.last_seq);
        }
        rows.into_values().collect()
    }

    /// The report of one of this node's devices, as of `now`.
    #[must_use]
    pub fn report(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        connected: bool,
        now: UnixMillis,
    ) -> Option<DeviceReport> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let s = map
            .get(&(tenant.clone(), device.clone()))?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(DeviceReport {
            driver: s.driver.clone(),
            connected,
            until: now.plus_ms(crate::bus::REPORT_HOLDS_MS),
            last_seen: s.last_seen,
            last_seq: s.cursor.last_seq,
        })
    }

    /// Renews the reports of the devices connected here (a node that dies
    /// stops renewing them, and they lapse).
    pub fn renew_reports(&self, bus: &dyn Bus, now: UnixMillis) {
        let keys: Vec<DeviceKey> = self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .filter(|(t, d)| bus.connected(t, d))
            .cloned()
            .collect();
        for (t, d) in keys {
            if let Some(r) = self.report(&t, &d, true, now) {
                bus.report_device(&t, &d, &r, false);
            }
        }
    }
}
