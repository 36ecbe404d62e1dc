//! Configuration: the TOML file, its validation, and the zero-config demo.
//!
//! Everything is checked at start-up, and each error names the key that is
//! wrong and why, so an operator never learns about a typo at 3 a.m.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::auth::{LifetimeCaps, TenantKeys, Verifier};
use crate::domain::eta::EtaConfig;
use crate::types::TenantId;

/// Shortest HS256 secret we accept, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_HS256_SECRET: usize = 32;
/// The tenant `rxtrack serve` creates when it runs without a configuration.
pub const DEMO_TENANT: &str = "demo";

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    public_url: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    #[serde(default)]
    limits: RawLimits,
    redis: Option<RawRedis>,
    map_tile_url: Option<String>,
    proximity: Option<bool>,
    #[serde(default)]
    eta: RawEta,
    roads: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEta {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    hs256_secret_file: Option<PathBuf>,
    hs256_secret_env: Option<String>,
    #[serde(default)]
    ed25519_public_keys: Vec<String>,
    max_staff_token_ttl_s: Option<i64>,
    max_driver_token_ttl_s: Option<i64>,
    display_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    #[allow(dead_code, reason = "read only to refuse it with a clear message")]
    url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
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

/// One tenant's verified configuration.
#[derive(Clone)]
pub struct TenantConfig {
    pub id: TenantId,
    pub hs256_secret: Option<Vec<u8>>,
    pub ed25519_keys: Vec<[u8; 32]>,
    pub caps: LifetimeCaps,
    /// The pharmacy's name as patients see it on the tracking page.
    pub display_name: Option<String>,
}

/// Longest tenant display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 80;

/// Where the road network comes from (`roads = …`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoadsSource {
    /// An `.osm.pbf` extract.
    File(PathBuf),
    /// An extract bundled in the binary: `bundled:helsinki` or `bundled:kotka`.
    Bundled(&'static str),
}

impl RoadsSource {
    /// Reads the extract into a road network.
    pub fn load(&self) -> Result<roads::Network, roads::RoadError> {
        let graph = match self {
            RoadsSource::File(path) => roads::RoadGraph::from_pbf(path)?,
            RoadsSource::Bundled("kotka") => {
                roads::RoadGraph::from_pbf_bytes(roads::KOTKA, "bundled:kotka")?
            }
            RoadsSource::Bundled(_) => {
                roads::RoadGraph::from_pbf_bytes(roads::HELSINKI, "bundled:helsinki")?
            }
        };
        Ok(roads::Network::new(graph))
    }
}

fn parse_roads(v: &str, base: &Path) -> Result<RoadsSource, ConfigError> {
    match v.strip_prefix("bundled:") {
        Some("helsinki") => Ok(RoadsSource::Bundled("helsinki")),
        Some("kotka") => Ok(RoadsSource::Bundled("kotka")),
        Some(other) => Err(invalid(
            "roads",
            format!(
                "no bundled extract {other:?}: use bundled:helsinki, bundled:kotka or a path to an .osm.pbf file"
            ),
        )),
        None if v.trim().is_empty() => Err(invalid("roads", "must name an .osm.pbf file")),
        None => Ok(RoadsSource::File(resolve(base, Path::new(v)))),
    }
}

impl std::fmt::Debug for TenantConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConfig")
            .field("id", &self.id)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("ed25519_keys", &self.ed25519_keys.len())
            .finish()
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Base of tracking URLs, without a trailing slash.
    pub public_url: Option<String>,
    pub data_dir: PathBuf,
    pub tenants: Vec<TenantConfig>,
    pub limits: Limits,
    /// Optional raster tiles under the dispatcher map (`{z}/{x}/{y}`), and
    /// their origin for the page's Content-Security-Policy.
    pub map_tiles: Option<MapTiles>,
    /// The ETA engine's tunables (`[eta]`).
    pub eta: EtaConfig,
    /// Geofencing, proximity events and ETAs on driver fixes (on unless
    /// `proximity = false`, which exists to measure what they cost).
    pub proximity: bool,
    /// The road network for ETAs (`roads = …`); none: straight lines.
    pub roads: Option<RoadsSource>,
}

/// A validated tile URL template.
#[derive(Clone, Debug)]
pub struct MapTiles {
    pub template: String,
    pub origin: String,
}

fn parse_tiles(u: &str) -> Result<MapTiles, ConfigError> {
    let bad = |m: &str| invalid("map_tile_url", m.to_owned());
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with https:// (or http://)"))?;
    if !(u.contains("{z}") && u.contains("{x}") && u.contains("{y}")) {
        return Err(bad("must contain {z}, {x} and {y}"));
    }
    if u.chars().any(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '<' | '>' | '\\' | '`')
    }) {
        return Err(bad(
            "must be a plain URL (no spaces, quotes or angle brackets)",
        ));
    }
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains(['{', '}', '@', '?', '#']) {
        return Err(bad("needs a plain host name"));
    }
    let scheme = if u.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    Ok(MapTiles {
        template: u.to_owned(),
        origin: format!("{scheme}://{host}"),
    })
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default data folder, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "rxtrack-data";

impl Config {
    /// Reads and validates a TOML configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, |name| std::env::var(name).ok())
    }

    /// Validates a configuration text. `env` looks up environment variables
    /// (a parameter so tests need not touch the process environment).
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if raw.redis.is_some() {
            return Err(invalid(
                "redis",
                "multi-node operation through Redis is not available in this build; remove [redis] to run a single node",
            ));
        }
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let listen = parse_listen(raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        let public_url = raw.public_url.map(|u| parse_public_url(&u)).transpose()?;
        let data_dir = resolve(
            base,
            &raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        );
        if raw.tenants.is_empty() {
            return Err(invalid(
                "tenants",
                "at least one [[tenants]] entry is required",
            ));
        }
        let mut seen = HashSet::new();
        let mut tenants = Vec::with_capacity(raw.tenants.len());
        for (i, t) in raw.tenants.into_iter().enumerate() {
            let tc = parse_tenant(i, &t, base, &env)?;
            if !seen.insert(tc.id.clone()) {
                return Err(invalid(
                    format!("tenants[{i}].id"),
                    format!("tenant {} is listed twice", tc.id),
                ));
            }
            tenants.push(tc);
        }
        Ok(Self {
            listen,
            public_url,
            data_dir,
            tenants,
            limits: parse_limits(&raw.limits)?,
            map_tiles: raw.map_tile_url.as_deref().map(parse_tiles).transpose()?,
            eta: parse_eta(&raw.eta)?,
            proximity: raw.proximity.unwrap_or(true),
            roads: raw
                .roads
                .as_deref()
                .map(|v| parse_roads(v, base))
                .transpose()?,
        })
    }

    /// The zero-configuration single node: a demo tenant whose HS256 secret is
    /// created (once) in the data folder.
    pub fn demo(data_dir: &Path) -> anyhow::Result<Self> {
        let secret = load_or_create_secret(&data_dir.join("demo-tenant.secret"))?;
        Ok(Self {
            listen: parse_listen(DEFAULT_LISTEN)?,
            public_url: None,
            data_dir: data_dir.to_owned(),
            tenants: vec![TenantConfig {
                id: TenantId::parse(DEMO_TENANT)?,
                hs256_secret: Some(secret),
                ed25519_keys: Vec::new(),
                caps: LifetimeCaps::default(),
                display_name: Some("Demo Pharmacy".into()),
            }],
            limits: Limits::default(),
            map_tiles: None,
            eta: EtaConfig::default(),
            proximity: true,
            roads: None,
        })
    }

    /// Builds the token verifier for the configured tenants.
    #[must_use]
    pub fn verifier(&self) -> Verifier {
        let keys: HashMap<_, _> = self
            .tenants
            .iter()
            .map(|t| {
                (
                    t.id.clone(),
                    TenantKeys::new(t.hs256_secret.as_deref(), t.ed25519_keys.clone(), t.caps),
                )
            })
            .collect();
        Verifier::new(keys)
    }

    #[must_use]
    pub fn tenant(&self, id: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.id.as_str() == id)
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        invalid(
            "listen",
            format!("{s:?} is not an address like 127.0.0.1:8080"),
        )
    })
}

fn parse_public_url(u: &str) -> Result<String, ConfigError> {
    let trimmed = u.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| {
            invalid(
                "public_url",
                "must start with https:// (or http:// for local testing)",
            )
        })?;
    if rest.is_empty() || rest.contains(|c: char| c.is_whitespace() || c == '?' || c == '#') {
        return Err(invalid(
            "public_url",
            "must be a plain base URL such as https://track.example.com",
        ));
    }
    Ok(trimmed.to_owned())
}

fn parse_tenant(
    i: usize,
    t: &RawTenant,
    base: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<TenantConfig, ConfigError> {
    let key = |k: &str| format!("tenants[{i}].{k}");
    let id = TenantId::parse(&t.id).map_err(|e| invalid(key("id"), e.to_string()))?;
    let hs256_secret = match (&t.hs256_secret_file, &t.hs256_secret_env) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("hs256_secret_file"),
                "set hs256_secret_file or hs256_secret_env, not both",
            ));
        }
        (Some(f), None) => {
            let path = resolve(base, f);
            let bytes = std::fs::read(&path).map_err(|e| {
                invalid(
                    key("hs256_secret_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(check_secret(
                trim_newline(bytes),
                &key("hs256_secret_file"),
            )?)
        }
        (None, Some(var)) => {
            let v = env(var).ok_or_else(|| {
                invalid(
                    key("hs256_secret_env"),
                    format!("environment variable {var} is not set"),
                )
            })?;
            Some(check_secret(v.into_bytes(), &key("hs256_secret_env"))?)
        }
        (None, None) => None,
    };
    let mut ed25519_keys = Vec::new();
    for (j, k) in t.ed25519_public_keys.iter().enumerate() {
        let bytes = STANDARD
            .decode(k.trim())
            .map_err(|_| invalid(key(&format!("ed25519_public_keys[{j}]")), "is not base64"))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            invalid(
                key(&format!("ed25519_public_keys[{j}]")),
                "must be a raw 32-byte Ed25519 public key, base64-encoded",
            )
        })?;
        ed25519_keys.push(arr);
    }
    if hs256_secret.is_none() && ed25519_keys.is_empty() {
        return Err(invalid(
            key("id"),
            format!(
                "tenant {id} has no key: set hs256_secret_file, hs256_secret_env or ed25519_public_keys"
            ),
        ));
    }
    let mut caps = LifetimeCaps::default();
    if let Some(s) = t.max_staff_token_ttl_s {
        caps.staff_s = check_range(s, 60, 24 * 3600, &key("max_staff_token_ttl_s"))?;
    }
    if let Some(s) = t.max_driver_token_ttl_s {
        caps.driver_s = check_range(s, 60, 24 * 3600, &key("max_driver_token_ttl_s"))?;
    }
    let display_name = match t.display_name.as_deref().map(str::trim) {
        None => None,
        Some(n)
            if n.is_empty()
                || n.chars().count() > MAX_DISPLAY_NAME_CHARS
                || n.chars().any(char::is_control) =>
        {
            return Err(invalid(
                format!("tenants[{i}].display_name"),
                format!("must be 1 to {MAX_DISPLAY_NAME_CHARS} printable characters"),
            ));
        }
        Some(n) => Some(n.to_owned()),
    };
    Ok(TenantConfig {
        id,
        hs256_secret,
        ed25519_keys,
        caps,
        display_name,
    })
}

fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
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

fn parse_limits(r: &RawLimits) -> Result<Limits, ConfigError> {
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

fn parse_eta(r: &RawEta) -> Result<EtaConfig, ConfigError> {
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

fn trim_newline(mut b: Vec<u8>) -> Vec<u8> {
    while matches!(b.last(), Some(b'\n' | b'\r')) {
        b.pop();
    }
    b
}

fn check_secret(b: Vec<u8>, key: &str) -> Result<Vec<u8>, ConfigError> {
    if b.len() < MIN_HS256_SECRET {
        return Err(invalid(
            key,
            format!(
                "the HS256 secret must be at least {MIN_HS256_SECRET} bytes (it has {})",
                b.len()
            ),
        ));
    }
    Ok(b)
}

/// Reads a secret file, creating it with 32 random bytes (hex, mode 0600) first if absent.
pub fn load_or_create_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    if !path.exists() {
        let mut raw = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        let hex = crate::log::event::hex(&raw);
        crate::fsutil::write_private(path, hex.as_bytes())
            .with_context(|| format!("creating {}", path.display()))?;
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(check_secret(
        trim_newline(bytes),
        &path.display().to_string(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/rxtrack/rxtrack.toml"), |k| {
            (k == "ACME_JWT").then(|| "s".repeat(40))
        })
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const TENANT: &str = "[[tenants]]\nid = \"acme\"\nhs256_secret_env = \"ACME_JWT\"\n";

    #[test]
    fn road_eta_keys_are_checked() {
        for (line, key) in [
            ("road_speed_factor = 9", "eta.road_speed_factor"),
            ("replan_seconds = 1", "eta.replan_seconds"),
            ("off_route_m = -1", "eta.off_route_m"),
        ] {
            assert!(
                err(&format!("{TENANT}[eta]\n{line}\n")).contains(key),
                "{line}"
            );
        }
        let c = parse(&format!(
            "{TENANT}[eta]\nroad_speed_factor = 0.7\nreplan_seconds = 120\noff_route_m = 80\n"
        ))
        .unwrap();
        assert!((c.eta.road_speed_factor - 0.7).abs() < 1e-9);
        assert_eq!(c.eta.replan_ms, 120_000);
        assert!((c.eta.off_route_m - 80.0).abs() < 1e-9);
    }

    #[test]
    fn roads_and_display_names() {
        let c = parse(&format!("roads = \"bundled:kotka\"\n{TENANT}")).unwrap();
        assert_eq!(c.roads, Some(RoadsSource::Bundled("kotka")));
        let c = parse(&format!("roads = \"maps/city.osm.pbf\"\n{TENANT}")).unwrap();
        assert_eq!(
            c.roads,
            Some(RoadsSource::File("/etc/rxtrack/maps/city.osm.pbf".into()))
        );
        assert!(parse(TENANT).unwrap().roads.is_none());
        for bad in ["\"bundled:\"", "\"\"", "\"bundled:../etc\""] {
            assert!(
                err(&format!("roads = {bad}\n{TENANT}")).contains("`roads`"),
                "{bad}"
            );
        }
        let named = parse(&format!("{TENANT}display_name = \" Apteekki Kallio \"\n")).unwrap();
        assert_eq!(
            named.tenants[0].display_name.as_deref(),
            Some("Apteekki Kallio")
        );
        let long = "x".repeat(MAX_DISPLAY_NAME_CHARS + 1);
        for bad in ["\"\"", "\"  \"", "\"a\\nb\"", &format!("\"{long}\"")] {
            assert!(
                err(&format!("{TENANT}display_name = {bad}\n")).contains("tenants[0].display_name"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_minimal_config_parses_with_defaults() {
        let c = parse(TENANT).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, Path::new("/etc/rxtrack/rxtrack-data"));
        assert_eq!(c.tenants[0].id.as_str(), "acme");
        assert_eq!(c.limits.max_message_bytes, 192 * 1024);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err(&format!("listen = \"nowhere\"\n{TENANT}")).contains("`listen`"));
        assert!(err(&format!("public_url = \"ftp://x\"\n{TENANT}")).contains("`public_url`"));
        assert!(err("").contains("`tenants`"));
        assert!(err("lisen = \"127.0.0.1:1\"").contains("lisen"));
        assert!(
            err(&format!(
                "{TENANT}[[tenants]]\nid = \"acme\"\nhs256_secret_env = \"ACME_JWT\"\n"
            ))
            .contains("listed twice")
        );
        assert!(err("[[tenants]]\nid = \"acme\"\n").contains("has no key"));
        assert!(
            err("[[tenants]]\nid = \"a b\"\nhs256_secret_env = \"ACME_JWT\"\n")
                .contains("tenants[0].id")
        );
        assert!(
            err("[[tenants]]\nid = \"acme\"\nhs256_secret_env = \"MISSING\"\n")
                .contains("MISSING is not set")
        );
        assert!(
            err("[[tenants]]\nid = \"acme\"\ned25519_public_keys = [\"AAAA\"]\n")
                .contains("ed25519_public_keys[0]")
        );
        assert!(
            err(&format!("{TENANT}[limits]\nmax_message_kib = 100000\n"))
                .contains("limits.max_message_kib")
        );
        assert!(
            err(&format!("{TENANT}[limits]\npings_per_second = -1\n"))
                .contains("limits.pings_per_second")
        );
        assert!(err(&format!("{TENANT}[eta]\ncircuity = 0.5\n")).contains("eta.circuity"));
        assert!(
            err(&format!(
                "{TENANT}[eta]\nmin_speed_kmh = 90\nmax_speed_kmh = 50\n"
            ))
            .contains("eta.min_speed_kmh")
        );
        assert!(
            err(&format!("{TENANT}[eta]\nwindow_minutes = 0\n")).contains("eta.window_minutes")
        );
        assert!(err(&format!("{TENANT}[eta]\nwarp = 9\n")).contains("warp"));
        let c = parse(&format!(
            "{TENANT}[eta]\ncircuity = 1.2\nwindow_minutes = 10\nmax_speed_kmh = 72\n"
        ))
        .unwrap();
        assert!(
            (c.eta.circuity - 1.2).abs() < 1e-9
                && c.eta.round_ms == 600_000
                && (c.eta.max_speed_mps - 20.0).abs() < 1e-9
        );
        assert!(
            err(&format!("{TENANT}[limits]\nheartbeat_ms = 1\n")).contains("limits.heartbeat_ms")
        );
        assert!(
            err(&format!("{TENANT}[limits]\nlink_grace_s = -1\n")).contains("limits.link_grace_s")
        );
        assert!(
            err(&format!("{TENANT}[limits]\nlink_lookup_burst = 0\n"))
                .contains("limits.link_lookup_burst")
        );
        assert!(
            err(&format!(
                "{TENANT}[limits]\nheader_timeout_ms = 999999999\n"
            ))
            .contains("limits.header_timeout_ms")
        );
        assert!(
            err(&format!("{TENANT}[redis]\nurl = \"redis://127.0.0.1\"\n")).contains("`redis`")
        );
        assert!(err("listen = 5").contains("rxtrack.toml"));
        assert!(
            err(&format!(
                "map_tile_url = \"ftp://x/{{z}}/{{x}}/{{y}}\"\n{TENANT}"
            ))
            .contains("map_tile_url")
        );
        assert!(
            err(&format!(
                "map_tile_url = \"https://t.example/a.png\"\n{TENANT}"
            ))
            .contains("{z}")
        );
        assert!(
            err(&format!(
                "map_tile_url = \"https://t.example/{{z}}/{{x}}/{{y}}.png?a=<b>\"\n{TENANT}"
            ))
            .contains("plain URL")
        );
        let c = parse(&format!(
            "map_tile_url = \"https://tile.example.org:8443/{{z}}/{{x}}/{{y}}.png\"\n{TENANT}"
        ))
        .unwrap();
        assert_eq!(c.map_tiles.unwrap().origin, "https://tile.example.org:8443");
    }

    #[test]
    fn short_secrets_are_refused() {
        let e = Config::parse(
            "[[tenants]]\nid = \"acme\"\nhs256_secret_env = \"S\"\n",
            Path::new("x.toml"),
            |_| Some("short".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("at least 32 bytes"), "{e}");
    }

    #[test]
    fn demo_creates_its_secret_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = Config::demo(dir.path()).unwrap();
        let b = Config::demo(dir.path()).unwrap();
        assert_eq!(a.tenants[0].hs256_secret, b.tenants[0].hs256_secret);
        assert_eq!(a.tenants[0].hs256_secret.as_ref().unwrap().len(), 64);
    }
}
