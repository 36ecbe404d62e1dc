//! The commands: each reads the book and returns the drafts of the events
//! it causes, or why it is refused. None of them changes anything; the
//! commit path chains their drafts, and [`Book::apply`] applies them once
//! they are durable.

use std::collections::HashSet;

use super::book::{Book, actor_of, draft, to_value};
use super::event::{Actor, Draft, EventKind};
use super::model::{
    AssignedData, CreateDelivery, CreatedData, DeviceData, MAX_NAME_CHARS, MAX_REASON_CHARS,
    MAX_ROUTE_STOPS, Recipient, StatusData,
};
use super::roles::{Action, Principal, Role};
use super::status::{DomainError, Status, StatusChange};
use crate::types::{DeliveryId, DeviceId, SubjectId, UnixMillis};

impl Book {
    /// `POST /v1/deliveries`: `token_sha256` is the hash of the tracking
    /// token (the token itself is never stored).
    pub fn decide_create(
        &self,
        who: &Principal,
        req: CreateDelivery,
        token_sha256: String,
        now: UnixMillis,
    ) -> Result<(Vec<Draft>, DeliveryId), DomainError> {
        Action::CreateDelivery.check(who)?;
        req.pickup.to_geofence("pickup")?;
        req.dropoff.to_geofence("dropoff")?;
        let name = req.recipient.first_name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(DomainError::Invalid(format!(
                "recipient.first_name must be 1 to {MAX_NAME_CHARS} printable characters"
            )));
        }
        if let Some(w) = req.window
            && (w.from <= 0 || w.to <= w.from)
        {
            return Err(DomainError::Invalid(
                "window.to must be after window.from".into(),
            ));
        }
        if self.delivery(&req.id).is_some() {
            return Err(DomainError::Exists(req.id.to_string()));
        }
        let data = CreatedData {
            pickup: req.pickup,
            dropoff: req.dropoff,
            recipient: Recipient {
                first_name: name.to_owned(),
            },
            window: req.window,
            tracking_token_sha256: token_sha256,
        };
        let d = draft(
            EventKind::DeliveryCreated,
            Some(&req.id),
            now,
            actor_of(who),
            to_value(&data),
        );
        Ok((vec![d], req.id))
    }

    /// `PUT /v1/drivers/{id}/route`: replaces a driver's ordered stops.
    pub fn decide_route(
        &self,
        who: &Principal,
        driver: &SubjectId,
        stops: &[DeliveryId],
        now: UnixMillis,
    ) -> Result<Vec<Draft>, DomainError> {
        Action::AssignRoute.check(who)?;
        if stops.len() > MAX_ROUTE_STOPS {
            return Err(DomainError::Invalid(format!(
                "a route has at most {MAX_ROUTE_STOPS} stops"
            )));
        }
        let mut seen = HashSet::new();
        for id in stops {
            if !seen.insert(id) {
                return Err(DomainError::Invalid(format!("stop {id} is listed twice")));
            }
            let d = self
                .delivery(id)
                .ok_or_else(|| DomainError::NotFound(id.to_string()))?;
            if d.status.is_final() {
                return Err(DomainError::Invalid(format!(
                    "delivery {id} is {} and cannot be routed",
                    d.status.as_str()
                )));
            }
        }
        let old = self.route(driver);
        let mut drafts = Vec::new();
        for id in old.iter().filter(|id| !seen.contains(id)) {
            let data = AssignedData {
                driver_id: None,
                stop: None,
            };
            drafts.push(draft(
                EventKind::DeliveryAssigned,
                Some(id),
                now,
                actor_of(who),
                to_value(&data),
            ));
        }
        for (i, id) in stops.iter().enumerate() {
            let same = self
                .delivery(id)
                .is_some_and(|d| d.driver.as_ref() == Some(driver))
                && old.get(i) == Some(id);
            if !same {
                let data = AssignedData {
                    driver_id: Some(driver.clone()),
                    stop: Some(i),
                };
                drafts.push(draft(
                    EventKind::DeliveryAssigned,
                    Some(id),
                    now,
                    actor_of(who),
                    to_value(&data),
                ));
            }
        }
        Ok(drafts)
    }

    /// `POST /v1/deliveries/{id}/status`, through the status machine.
    pub fn decide_status(
        &self,
        who: &Principal,
        id: &DeliveryId,
        change: StatusChange,
        reason: Option<String>,
        now: UnixMillis,
    ) -> Result<(Vec<Draft>, Status), DomainError> {
        Action::ChangeStatus(Some(change)).check(who)?;
        if let Some(r) = &reason
            && r.chars().count() > MAX_REASON_CHARS
        {
            return Err(DomainError::Invalid(format!(
                "reason is longer than {MAX_REASON_CHARS} characters"
            )));
        }
        let d = self
            .delivery(id)
            .ok_or_else(|| DomainError::NotFound(id.to_string()))?;
        let to = change.apply_to(d.status)?;
        let value = reason.map_or(serde_json::Value::Null, |r| {
            to_value(&StatusData { reason: Some(r) })
        });
        Ok((
            vec![draft(change.kind(), Some(id), now, actor_of(who), value)],
            to,
        ))
    }

    /// `POST /v1/devices/{id}/revoke`: `false` if it already was.
    pub fn decide_revoke_device(
        &self,
        who: &Principal,
        device: &DeviceId,
        now: UnixMillis,
    ) -> Result<(Vec<Draft>, bool), DomainError> {
        Action::RevokeDevice.check(who)?;
        if self.is_revoked(device) {
            return Ok((Vec::new(), false));
        }
        let data = DeviceData {
            device_id: device.clone(),
        };
        Ok((
            vec![draft(
                EventKind::DeviceRevoked,
                None,
                now,
                actor_of(who),
                to_value(&data),
            )],
            true,
        ))
    }

    /// `POST /v1/deliveries/{id}/link/revoke`.
    pub fn decide_revoke_link(
        &self,
        who: &Principal,
        id: &DeliveryId,
        now: UnixMillis,
    ) -> Result<Vec<Draft>, DomainError> {
        Action::RevokeLink.check(who)?;
        let d = self
            .delivery(id)
            .ok_or_else(|| DomainError::NotFound(id.to_string()))?;
        if d.link_revoked {
            return Ok(Vec::new());
        }
        Ok(vec![draft(
            EventKind::LinkRevoked,
            Some(id),
            now,
            actor_of(who),
            serde_json::Value::Null,
        )])
    }

    /// Opening a tracking link records `link.opened` (the accounting of who
    /// saw what). `None`: no link of this token is valid now.
    #[must_use]
    pub fn decide_open_link(
        &self,
        token_sha256: &str,
        now: UnixMillis,
    ) -> Option<(Draft, DeliveryId)> {
        let d = self.link(token_sha256, now)?;
        let actor = Actor {
            role: Role::TrackingLink,
            sub: "link".into(),
            device: None,
        };
        let e = draft(
            EventKind::LinkOpened,
            Some(&d.id),
            now,
            actor,
            serde_json::Value::Null,
        );
        Some((e, d.id.clone()))
    }

    /// An export is recorded before any data leaves (accounting of disclosures).
    pub fn decide_export(
        who: &Principal,
        from: i64,
        to: i64,
        now: UnixMillis,
    ) -> Result<Draft, DomainError> {
        Action::ExportLog.check(who)?;
        let data = serde_json::json!({ "from": from, "to": to });
        Ok(draft(
            EventKind::LogExported,
            None,
            now,
            actor_of(who),
            data,
        ))
    }
}
