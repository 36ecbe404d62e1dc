//! Who may do what: roles, the verified principal, and the one role table
//! that both the HTTP layer and the commands consult.

use serde::{Deserialize, Serialize};

use super::status::DomainError;
use crate::types::{DeviceId, SubjectId, TenantId, UnixMillis};

/// Clock skew tolerated on `exp`, `iat` and `nbf`, in seconds.
pub const LEEWAY_S: i64 = 30;
/// How recent `auth_time` must be for privileged actions, in seconds.
pub const PRIVILEGED_MAX_AGE_S: i64 = 5 * 60;

/// What a token's holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Dispatcher,
    Viewer,
    PharmacyStaff,
    Driver,
    /// Not a token role: the holder of a patient tracking link, as an actor
    /// in the delivery log. [`Role::parse`] never yields it.
    TrackingLink,
}

impl Role {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Dispatcher => "dispatcher",
            Role::Viewer => "viewer",
            Role::PharmacyStaff => "pharmacy_staff",
            Role::Driver => "driver",
            Role::TrackingLink => "tracking_link",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "admin" => Role::Admin,
            "dispatcher" => Role::Dispatcher,
            "viewer" => Role::Viewer,
            "pharmacy_staff" => Role::PharmacyStaff,
            "driver" => Role::Driver,
            _ => return None,
        })
    }
}

/// A verified token holder.
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant: TenantId,
    pub sub: SubjectId,
    pub role: Role,
    /// Drivers only: the device the token was issued to.
    pub device: Option<DeviceId>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// When the holder last authenticated, seconds since the epoch.
    pub auth_time: Option<i64>,
}

impl Principal {
    /// Whether the holder authenticated recently enough for a privileged action.
    #[must_use]
    pub fn freshly_authenticated(&self, now: UnixMillis) -> bool {
        self.auth_time.is_some_and(|t| {
            now.as_secs() - t <= PRIVILEGED_MAX_AGE_S && t <= now.as_secs() + LEEWAY_S
        })
    }
}

/// Everything a principal may ask for. Each action has one row in
/// [`Action::allowed`]: the HTTP layer checks it before reading a body, and
/// the command checks it again before deciding (so no path skips it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    CreateDelivery,
    ReadDelivery,
    ReadDeliveryEvents,
    /// A status change: staff may only record a pick-up.
    ChangeStatus(Option<crate::domain::StatusChange>),
    AssignRoute,
    ExportLog,
    VerifyLog,
    ListDevices,
    RevokeDevice,
    RevokeLink,
    WatchMap,
    StreamPositions,
}

impl Action {
    /// The role table.
    #[must_use]
    pub fn allowed(self, role: Role) -> bool {
        use Role::{Admin, Dispatcher, Driver, PharmacyStaff, Viewer};
        match self {
            Action::CreateDelivery => matches!(role, Admin | Dispatcher | PharmacyStaff),
            Action::ReadDelivery => matches!(role, Admin | Dispatcher | Viewer | PharmacyStaff),
            Action::ReadDeliveryEvents | Action::WatchMap => {
                matches!(role, Admin | Dispatcher | Viewer)
            }
            Action::ChangeStatus(None) => matches!(role, Admin | Dispatcher | PharmacyStaff),
            Action::ChangeStatus(Some(c)) => match role {
                Admin | Dispatcher => true,
                PharmacyStaff => c == crate::domain::StatusChange::PickedUp,
                _ => false,
            },
            Action::AssignRoute | Action::ListDevices | Action::RevokeLink => {
                matches!(role, Admin | Dispatcher)
            }
            Action::ExportLog | Action::VerifyLog | Action::RevokeDevice => role == Admin,
            Action::StreamPositions => role == Driver,
        }
    }

    /// The role table's answer for `who`, as a domain error.
    pub fn check(self, who: &Principal) -> Result<(), DomainError> {
        if self.allowed(who.role) {
            Ok(())
        } else if who.role == Role::PharmacyStaff && matches!(self, Action::ChangeStatus(_)) {
            Err(DomainError::Forbidden("pharmacy_staff (only picked_up)"))
        } else {
            Err(DomainError::Forbidden(who.role.as_str()))
        }
    }
}
