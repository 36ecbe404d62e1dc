//! The status machine, and why a command is refused.

use serde::{Deserialize, Serialize};

use super::event::EventKind;

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    Invalid(String),
    #[error("delivery {0} not found")]
    NotFound(String),
    #[error("delivery {0} already exists")]
    Exists(String),
    #[error("cannot change status from {from} to {to}")]
    Transition {
        from: &'static str,
        to: &'static str,
    },
    #[error("role {0} may not do this")]
    Forbidden(&'static str),
}

/// A delivery's status, as every audience sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Scheduled,
    EnRoute,
    Approaching,
    Arrived,
    Delivered,
    Failed,
    Cancelled,
}

impl Status {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::EnRoute => "en_route",
            Status::Approaching => "approaching",
            Status::Arrived => "arrived",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// En route or approaching: on the way to the patient.
    #[must_use]
    pub fn is_moving(self) -> bool {
        matches!(self, Self::EnRoute | Self::Approaching)
    }

    /// Delivered, failed or cancelled.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Status::Delivered | Status::Failed | Status::Cancelled)
    }
}

/// A status change asked for through the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusChange {
    PickedUp,
    Delivered,
    Failed,
    Cancelled,
}

impl StatusChange {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            StatusChange::PickedUp => "picked_up",
            StatusChange::Delivered => "delivered",
            StatusChange::Failed => "failed",
            StatusChange::Cancelled => "cancelled",
        }
    }

    #[must_use]
    pub fn kind(self) -> EventKind {
        match self {
            StatusChange::PickedUp => EventKind::DeliveryPickedUp,
            StatusChange::Delivered => EventKind::DeliveryDelivered,
            StatusChange::Failed => EventKind::DeliveryFailed,
            StatusChange::Cancelled => EventKind::DeliveryCancelled,
        }
    }

    /// The status machine: which changes each status allows, and the result.
    pub fn apply_to(self, from: Status) -> Result<Status, DomainError> {
        use Status as S;
        let to = match (from, self) {
            (S::Scheduled, StatusChange::PickedUp) => S::EnRoute,
            (S::EnRoute | S::Approaching | S::Arrived, StatusChange::Delivered) => S::Delivered,
            (S::EnRoute | S::Approaching | S::Arrived, StatusChange::Failed) => S::Failed,
            (S::Scheduled | S::EnRoute | S::Approaching | S::Arrived, StatusChange::Cancelled) => {
                S::Cancelled
            }
            _ => {
                return Err(DomainError::Transition {
                    from: from.as_str(),
                    to: self.as_str(),
                });
            }
        };
        Ok(to)
    }
}
