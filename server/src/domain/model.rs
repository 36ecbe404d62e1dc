//! What a delivery is made of, as the API takes it and the log records it:
//! fences, recipient, window, and the payloads of the events.

use serde::{Deserialize, Serialize};

use super::status::DomainError;
use crate::types::{DeliveryId, DeviceId, LatLng, SubjectId};

/// Most stops on one driver's route.
pub const MAX_ROUTE_STOPS: usize = 200;
/// Most vertices of a polygon fence.
pub const MAX_POLYGON_VERTICES: usize = 256;
/// Fence radius bounds, metres.
pub const MIN_RADIUS_M: f64 = 5.0;
pub const MAX_RADIUS_M: f64 = 5000.0;
/// Longest free-text reason on a status change, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Longest recipient first name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// A tracking link keeps working this long after its delivery ends.
pub const LINK_GRACE_MS: i64 = 60 * 60 * 1000;

/// polygon (`polygon`: `[[lat, lng], …]`, with an optional `lat`/`lng` point).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lng: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius_m: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polygon: Option<Vec<[f64; 2]>>,
}

impl Fence {
    /// The point an ETA aims at: the centre, or the mean of the vertices.
    pub(crate) fn target(&self) -> Option<LatLng> {
        match (&self.lat, &self.lng, &self.polygon) {
            (Some(lat), Some(lng), _) => LatLng::new(*lat, *lng).ok(),
            (_, _, Some(poly)) if !poly.is_empty() => {
                let n = poly.len() as f64;
                let lat = poly.iter().map(|p| p[0]).sum::<f64>() / n;
                let lng = poly.iter().map(|p| p[1]).sum::<f64>() / n;
                LatLng::new(lat, lng).ok()
            }
            _ => None,
        }
    }

    /// The geofence this describes, checked (self-intersection included).
    pub(crate) fn to_geofence(&self, name: &str) -> Result<geofence::Fence, DomainError> {
        self.validate(name)?;
        let bad = |e: geofence::FenceError| DomainError::Invalid(format!("{name}: {e}"));
        match (&self.radius_m, &self.polygon, self.lat, self.lng) {
            (Some(r), None, Some(lat), Some(lng)) => {
                geofence::Fence::circle(geofence::Point::new(lat, lng).map_err(bad)?, *r)
                    .map_err(bad)
            }
            (None, Some(poly), _, _) => {
                let fence = geofence::Fence::polygon(&[poly.as_slice()]).map_err(bad)?;
                let (_, reach) = fence.bounds();
                if reach > MAX_RADIUS_M {
                    return Err(DomainError::Invalid(format!(
                        "{name}: the polygon spans {reach:.0} m; at most {MAX_RADIUS_M} m from its first vertex"
                    )));
                }
                Ok(fence)
            }
            _ => Err(DomainError::Invalid(format!(
                "{name}: give radius_m (with lat, lng) or polygon"
            ))),
        }
    }

    pub(crate) fn validate(&self, name: &str) -> Result<(), DomainError> {
        let bad = |m: String| DomainError::Invalid(format!("{name}: {m}"));
        match (self.lat, self.lng) {
            (Some(lat), Some(lng)) => {
                LatLng::new(lat, lng).map_err(|e| bad(e.to_string()))?;
            }
            (None, None) => {}
            _ => return Err(bad("lat and lng go together".into())),
        }
        match (&self.radius_m, &self.polygon) {
            (Some(r), None) => {
                if self.lat.is_none() {
                    return Err(bad("a circle needs lat and lng".into()));
                }
                if !r.is_finite() || !(MIN_RADIUS_M..=MAX_RADIUS_M).contains(r) {
                    return Err(bad(format!(
                        "radius_m {r} is not within {MIN_RADIUS_M}..={MAX_RADIUS_M}"
                    )));
                }
            }
            (None, Some(poly)) => {
                if poly.len() < 3 || poly.len() > MAX_POLYGON_VERTICES {
                    return Err(bad(format!(
                        "polygon needs 3 to {MAX_POLYGON_VERTICES} vertices, got {}",
                        poly.len()
                    )));
                }
                for (i, [lat, lng]) in poly.iter().enumerate() {
                    LatLng::new(*lat, *lng).map_err(|e| bad(format!("polygon[{i}]: {e}")))?;
                }
                let twice_area: f64 = poly
                    .iter()
                    .zip(poly.iter().cycle().skip(1))
                    .map(|(a, b)| a[1] * b[0] - b[1] * a[0])
                    .sum();
                if twice_area.abs() < 1e-14 {
                    return Err(bad("polygon has no area".into()));
                }
            }
            (Some(_), Some(_)) => return Err(bad("give radius_m or polygon, not both".into())),
            (None, None) => return Err(bad("give radius_m (with lat, lng) or polygon".into())),
        }
        Ok(())
    }
}

/// The recipient, as far as rxtrack may know them: a first name, nothing clinical.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub first_name: String,
}

/// A delivery window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub from: i64,
    pub to: i64,
}

/// `POST /v1/deliveries` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDelivery {
    pub id: DeliveryId,
    pub pickup: Fence,
    pub dropoff: Fence,
    pub recipient: Recipient,
    #[serde(default)]
    pub window: Option<Window>,
}

/// What `delivery.created` records (sealed at rest).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CreatedData {
    pub(crate) pickup: Fence,
    pub(crate) dropoff: Fence,
    pub(crate) recipient: Recipient,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) window: Option<Window>,
    /// SHA-256 of the tracking token, hex. The token itself is never stored.
    pub(crate) tracking_token_sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AssignedData {
    pub(crate) driver_id: Option<SubjectId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stop: Option<usize>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct StatusData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DeviceData {
    pub(crate) device_id: DeviceId,
}

/// Which end of a delivery a fence is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    Pickup,
    Dropoff,
}
