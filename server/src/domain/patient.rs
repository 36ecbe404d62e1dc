//! What a patient may see of their delivery: a type with no field that could
//! carry a coordinate, a driver's identity, or another delivery.

use std::sync::Arc;

use serde::Serialize;

use super::eta::Window;
use super::status::Status;

/// The snapshot behind `GET /v1/track/{token}` and each message of its
/// WebSocket. `updating` (an addition to the contract) is true when the
/// driver has gone quiet: the ETA is then withheld rather than shown stale.
/// `display_name` (an addition) is the pharmacy's name as its configuration
/// gives it. `stops_before` is there only while the delivery is on its way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PatientSnapshot {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stops_before: Option<usize>,
    pub eta: Option<Window>,
    pub updating: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Arc<str>>,
    pub updated_at: i64,
}

impl PatientSnapshot {
    /// Whether two snapshots differ in anything a patient sees (apart from `updated_at`).
    #[must_use]
    pub fn same_view(&self, other: &Self) -> bool {
        self.status == other.status
            && self.stops_before == other.stops_before
            && self.eta == other.eta
            && self.updating == other.updating
            && self.display_name == other.display_name
    }

    /// The JSON text, encoded once and shared by every subscriber.
    ///
    /// # Panics
    /// Never: the snapshot holds only enums and integers.
    #[must_use]
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a snapshot always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_shape() {
        let s = PatientSnapshot {
            status: Status::EnRoute,
            stops_before: Some(2),
            eta: Some(Window {
                from: 1_764_073_200_000,
                to: 1_764_074_100_000,
            }),
            updating: false,
            display_name: None,
            updated_at: 1_764_072_000_123,
        };
        assert_eq!(
            s.encode(),
            r#"{"status":"en_route","stops_before":2,"eta":{"from":1764073200000,"to":1764074100000},"updating":false,"updated_at":1764072000123}"#
        );
        let named = PatientSnapshot {
            display_name: Some(Arc::from("Apteekki Kallio")),
            ..s
        };
        assert!(
            named
                .encode()
                .contains(r#""display_name":"Apteekki Kallio""#)
        );
    }
}
