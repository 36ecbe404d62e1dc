//! Limits and ETA tunables: the `[limits]` and `[eta]` tables, their
//! defaults and their ranges.

use serde::Deserialize;

use super::{ConfigError, invalid};
use crate::domain::eta::EtaConfig;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEta {
    circuity: Option<f64>,
    default_speed_kmh: Option<f64>,
    min_speed_kmh: Option<f64>,
    max_speed_kmh: Option<f64>,
    service_minutes: Option<f64>,
    window_minutes: Option<i64>,
    approaching_minutes: Option<f64>,
    quiet_seconds: Option<i64>,
    road_speed_factor: Option<f64>,
    replan_seconds: Option<i64>,
    off_route_m: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_message_kib: Option<usize>,
    max_connections: Option<usize>,
    ping_interval_ms: Option<u64>,
    pings_per_second: Option<f64>,
    ping_burst: Option<f64>,
    messages_per_second: Option<f64>,
    message_burst: Option<f64>,
    max_body_kib: Option<usize>,
    header_timeout_ms: Option<u64>,
    link_lookups_per_minute: Option<f64>,
    link_lookup_burst: Option<f64>,
    heartbeat_ms: Option<u64>,
    link_grace_s: Option<i64>,
}

/// Server-wide limits. Each default is chosen for a driver app that pings
/// at 1 Hz and sends up to 1000 buffered pings in one batch after a dead zone.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest WebSocket message (and frame), bytes. A batch of 1000 pings is
    /// about 110 KiB, so 192 KiB leaves room without tungstenite's 64 MiB default.
    pub max_message_bytes: usize,
    /// Open connections (HTTP and WebSocket) held at once.
    pub max_connections: usize,
    /// The ping interval the server asks drivers for.
    pub ping_interval_ms: u64,
    /// Sustained pings per second per device, and the burst a batch may use.
    pub pings_per_second: f64,
    pub ping_burst: f64,
    /// Sustained WebSocket messages per second per device, and their burst.
    pub messages_per_second: f64,
    pub message_burst: f64,
    /// Largest HTTP request body, bytes.
    pub max_body_bytes: usize,
    /// A connection must send its request headers (and so its token) within
    /// this time: the authentication deadline, and the slowloris guard.
    pub header_timeout_ms: u64,
    /// Tracking-link lookups per client address: sustained rate and burst.
    pub link_lookups_per_s: f64,
    pub link_lookup_burst: f64,
    /// Subscriber sockets are pinged this often, and closed after three
    /// heartbeats without an answer.
    pub heartbeat_ms: u64,
    /// How long a tracking link keeps working after its delivery ends, ms.
    pub link_grace_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 192 * 1024,
            max_connections: 18_000,
            ping_interval_ms: 1000,
            pings_per_second: 20.0,
            ping_burst: 3000.0,
            messages_per_second: 10.0,
            message_burst: 60.0,
            max_body_bytes: 64 * 1024,
            header_timeout_ms: 10_000,
            link_lookups_per_s: 1.0,
            link_lookup_burst: 30.0,
            heartbeat_ms: 20_000,
            link_grace_ms: crate::domain::model::LINK_GRACE_MS,
        }
    }
}

pub(super) fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    v: T,
    lo: T,
    hi: T,
    key: &str,
) -> Result<T, ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(key, format!("{v} is not within {lo}..={hi}")));
    }
    Ok(v)
}

pub(super) fn parse_limits(r: &RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let pos = |v: Option<f64>, def: f64, key: &str| -> Result<f64, ConfigError> {
        match v {
            None => Ok(def),
            Some(x) if x.is_finite() && x > 0.0 && x <= 1e6 => Ok(x),
            Some(x) => Err(invalid(
                format!("limits.{key}"),
                format!("{x} must be a number in (0, 1000000]"),
            )),
        }
    };
    Ok(Limits {
        max_message_bytes: match r.max_message_kib {
            None => d.max_message_bytes,
            Some(k) => check_range(k, 4, 4096, "limits.max_message_kib")? * 1024,
        },
        max_connections: match r.max_connections {
            None => d.max_connections,
            Some(n) => check_range(n, 1, 1_000_000, "limits.max_connections")?,
        },
        ping_interval_ms: match r.ping_interval_ms {
            None => d.ping_interval_ms,
            Some(n) => check_range(n, 100, 600_000, "limits.ping_interval_ms")?,
        },
        pings_per_second: pos(r.pings_per_second, d.pings_per_second, "pings_per_second")?,
        ping_burst: pos(r.ping_burst, d.ping_burst, "ping_burst")?,
        messages_per_second: pos(
            r.messages_per_second,
            d.messages_per_second,
            "messages_per_second",
        )?,
        message_burst: pos(r.message_burst, d.message_burst, "message_burst")?,
        max_body_bytes: match r.max_body_kib {
            None => d.max_body_bytes,
            Some(k) => check_range(k, 1, 16 * 1024, "limits.max_body_kib")? * 1024,
        },
        header_timeout_ms: match r.header_timeout_ms {
            None => d.header_timeout_ms,
            Some(n) => check_range(n, 100, 120_000, "limits.header_timeout_ms")?,
        },
        link_lookups_per_s: pos(
            r.link_lookups_per_minute.map(|m| m / 60.0),
            d.link_lookups_per_s,
            "link_lookups_per_minute",
        )?,
        link_lookup_burst: pos(
            r.link_lookup_burst,
            d.link_lookup_burst,
            "link_lookup_burst",
        )?,
        link_grace_ms: match r.link_grace_s {
            None => d.link_grace_ms,
            Some(s) => check_range(s, 0, 30 * 24 * 3600, "limits.link_grace_s")? * 1000,
        },
        heartbeat_ms: match r.heartbeat_ms {
            None => d.heartbeat_ms,
            Some(n) => check_range(n, 100, 600_000, "limits.heartbeat_ms")?,
        },
    })
}

pub(super) fn parse_eta(r: &RawEta) -> Result<EtaConfig, ConfigError> {
    let d = EtaConfig::default();
    let num = |v: Option<f64>, lo: f64, hi: f64, key: &str| -> Result<Option<f64>, ConfigError> {
        match v {
            None => Ok(None),
            Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(Some(x)),
            Some(x) => Err(invalid(
                format!("eta.{key}"),
                format!("{x} is not within {lo}..={hi}"),
            )),
        }
    };
    let kmh = |v: f64| v / 3.6;
    #[allow(
        clippy::cast_possible_truncation,
        reason = "bounded minutes in ms fit i64"
    )]
    let ms = |minutes: f64| (minutes * 60_000.0) as i64;
    let cfg = EtaConfig {
        circuity: num(r.circuity, 1.0, 3.0, "circuity")?.unwrap_or(d.circuity),
        default_speed_mps: num(r.default_speed_kmh, 1.0, 200.0, "default_speed_kmh")?
            .map_or(d.default_speed_mps, kmh),
        min_speed_mps: num(r.min_speed_kmh, 1.0, 200.0, "min_speed_kmh")?
            .map_or(d.min_speed_mps, kmh),
        max_speed_mps: num(r.max_speed_kmh, 1.0, 300.0, "max_speed_kmh")?
            .map_or(d.max_speed_mps, kmh),
        service_ms: num(r.service_minutes, 0.0, 120.0, "service_minutes")?.map_or(d.service_ms, ms),
        round_ms: match r.window_minutes {
            None => d.round_ms,
            Some(m) => check_range(m, 1, 60, "eta.window_minutes")? * 60_000,
        },
        approaching_ms: num(r.approaching_minutes, 0.5, 120.0, "approaching_minutes")?
            .map_or(d.approaching_ms, ms),
        quiet_ms: match r.quiet_seconds {
            None => d.quiet_ms,
            Some(s) => check_range(s, 10, 3600, "eta.quiet_seconds")? * 1000,
        },
        road_speed_factor: num(r.road_speed_factor, 0.2, 1.5, "road_speed_factor")?
            .unwrap_or(d.road_speed_factor),
        replan_ms: match r.replan_seconds {
            None => d.replan_ms,
            Some(s) => check_range(s, 5, 3600, "eta.replan_seconds")? * 1000,
        },
        off_route_m: num(r.off_route_m, 10.0, 1000.0, "off_route_m")?.unwrap_or(d.off_route_m),
        ..d
    };
    if cfg.min_speed_mps > cfg.max_speed_mps {
        return Err(invalid(
            "eta.min_speed_kmh",
            "must not exceed eta.max_speed_kmh",
        ));
    }
    Ok(cfg)
}
