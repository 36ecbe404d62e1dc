//! Newtypes for identifiers and units, parsed once at the edge.
//!
//! Every identifier that arrives from a client (tenant, delivery, device,
//! subject) is checked here: 1 to 64 characters from a small alphabet, so an
//! identifier can never smuggle a path separator, whitespace or markup into a
//! file name, a log line or a page.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest identifier we accept, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {MAX_ID_LEN} characters")]
    TooLong { what: &'static str },
    #[error("{what} may contain only letters, digits and . _ : - (found {found:?})")]
    BadChar { what: &'static str, found: char },
}

fn check_id(what: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { what });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(IdError::BadChar { what, found });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses and checks an identifier.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_id($what, s)?;
                Ok(Self(s.to_owned()))
            }

            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                check_id($what, &s)?;
                Ok(Self(s))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::try_from(s).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// A tenant (one pharmacy organisation). Every key of tenant data starts with it.
    TenantId,
    "tenant id"
);
id_type!(
    /// A delivery, named by the pharmacy's backend (for example `rx-1001`).
    DeliveryId,
    "delivery id"
);
id_type!(
    /// A driver's device (the `did` claim).
    DeviceId,
    "device id"
);
id_type!(
    /// A token's subject: a user or a driver (`sub` claim, `driver_id` in routes).
    SubjectId,
    "subject"
);

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// Milliseconds from `earlier` to this instant (negative when
    /// `earlier` is later), saturating instead of overflowing.
    #[must_use]
    pub fn since(self, earlier: Self) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// This instant moved by `ms` (saturating).
    #[must_use]
    pub fn plus_ms(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    #[must_use]
    pub fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }
}

/// A WGS84 position whose values were checked to be finite and in range.
/// Its fields are private and it deserialises through [`LatLng::new`], so
/// no path (code or JSON) makes one out of range.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawLatLng")]
pub struct LatLng {
    lat: f64,
    lng: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatLng {
    lat: f64,
    lng: f64,
}

impl TryFrom<RawLatLng> for LatLng {
    type Error = CoordError;
    fn try_from(r: RawLatLng) -> Result<Self, CoordError> {
        Self::new(r.lat, r.lng)
    }
}

/// Why a coordinate was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoordError {
    #[error("lat out of range: {0} is not within -90..=90")]
    Lat(f64),
    #[error("lng out of range: {0} is not within -180..=180")]
    Lng(f64),
}

impl LatLng {
    pub fn new(lat: f64, lng: f64) -> Result<Self, CoordError> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(CoordError::Lat(lat));
        }
        if !lng.is_finite() || !(-180.0..=180.0).contains(&lng) {
            return Err(CoordError::Lng(lng));
        }
        Ok(Self { lat, lng })
    }

    #[must_use]
    pub fn lat(self) -> f64 {
        self.lat
    }

    #[must_use]
    pub fn lng(self) -> f64 {
        self.lng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_are_checked_however_they_arrive() {
        assert!(serde_json::from_str::<LatLng>(r#"{"lat":91.0,"lng":0.0}"#).is_err());
        assert!(serde_json::from_str::<LatLng>(r#"{"lat":0.0,"lng":-180.5}"#).is_err());
        assert!(serde_json::from_str::<LatLng>(r#"{"lat":1e999,"lng":0.0}"#).is_err());
        assert!(serde_json::from_str::<LatLng>(r#"{"lat":60.0,"lng":24.0,"x":1}"#).is_err());
        let ok: LatLng = serde_json::from_str(r#"{"lat":60.17,"lng":24.94}"#).unwrap();
        assert_eq!((ok.lat(), ok.lng()), (60.17, 24.94));
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"lat":60.17,"lng":24.94}"#
        );
    }

    #[test]
    fn time_arithmetic_saturates() {
        let t = UnixMillis(1_000);
        assert_eq!(t.plus_ms(500).since(t), 500);
        assert_eq!(t.since(t.plus_ms(500)), -500);
        assert_eq!(UnixMillis(i64::MAX).plus_ms(1), UnixMillis(i64::MAX));
        assert_eq!(UnixMillis(i64::MIN).since(UnixMillis(1)), i64::MIN);
    }

    #[test]
    fn ids_accept_the_usual_and_refuse_the_hostile() {
        assert!(DeliveryId::parse("rx-1001").is_ok());
        assert!(TenantId::parse("acme.eu:1_a").is_ok());
        assert_eq!(
            DeliveryId::parse(""),
            Err(IdError::Empty {
                what: "delivery id"
            })
        );
        assert!(matches!(
            DeliveryId::parse("../etc/passwd"),
            Err(IdError::BadChar { found: '/', .. })
        ));
        assert!(matches!(
            DeliveryId::parse("<script>"),
            Err(IdError::BadChar { found: '<', .. })
        ));
        assert!(matches!(
            DeliveryId::parse(&"a".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
        assert!(DeliveryId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn ids_deserialize_through_the_check() {
        let ok: Result<DeviceId, _> = serde_json::from_str("\"phone-7\"");
        assert!(ok.is_ok());
        let bad: Result<DeviceId, _> = serde_json::from_str("\"phone 7\"");
        assert!(bad.is_err());
    }

    #[test]
    fn coordinates_are_checked() {
        assert!(LatLng::new(60.17, 24.94).is_ok());
        assert_eq!(LatLng::new(90.5, 0.0), Err(CoordError::Lat(90.5)));
        assert_eq!(LatLng::new(0.0, -180.01), Err(CoordError::Lng(-180.01)));
        assert!(LatLng::new(f64::NAN, 0.0).is_err());
        assert!(LatLng::new(0.0, f64::INFINITY).is_err());
    }
}
