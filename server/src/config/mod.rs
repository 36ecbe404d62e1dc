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

mod limits;
#[cfg(test)]
mod tests;

use crate::types::TenantId;
pub use limits::Limits;
use limits::{RawEta, RawLimits, check_range, parse_eta, parse_limits};

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

pub(super) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
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
    postgres: Option<RawPostgres>,
    map_tile_url: Option<String>,
    proximity: Option<bool>,
    #[serde(default)]
    eta: RawEta,
    roads: Option<String>,
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
struct RawPostgres {
    url: Option<String>,
    url_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Option<String>,
    cluster: Option<Vec<String>>,
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
    /// The delivery log in PostgreSQL (`[postgres]`); none: the embedded log.
    pub postgres: Option<SecretUrl>,
    /// The bus across nodes (`[redis]`); none: one node's own.
    pub redis: Option<RedisTarget>,
}

/// Where the bus across nodes lives.
#[derive(Clone, Debug)]
pub enum RedisTarget {
    /// One Redis (`url`): classic pub/sub.
    One(SecretUrl),
    /// A Redis Cluster (`cluster = [...]`, seed nodes): sharded pub/sub.
    Cluster(Vec<SecretUrl>),
}

/// Most seed nodes a cluster may name.
const MAX_CLUSTER_SEEDS: usize = 64;

fn redis_url(field: &'static str, u: &str) -> Result<SecretUrl, ConfigError> {
    if u.starts_with("redis://") || u.starts_with("rediss://") {
        Ok(SecretUrl(u.to_owned()))
    } else {
        Err(invalid(field, "must start with redis:// or rediss://"))
    }
}

fn parse_redis(r: &RawRedis) -> Result<RedisTarget, ConfigError> {
    match (&r.url, &r.cluster) {
        (Some(u), None) => Ok(RedisTarget::One(redis_url("redis.url", u)?)),
        (None, Some(seeds)) if seeds.is_empty() || seeds.len() > MAX_CLUSTER_SEEDS => Err(invalid(
            "redis.cluster",
            format!("name between 1 and {MAX_CLUSTER_SEEDS} seed nodes of the cluster"),
        )),
        (None, Some(seeds)) => Ok(RedisTarget::Cluster(
            seeds
                .iter()
                .map(|u| redis_url("redis.cluster", u))
                .collect::<Result<_, _>>()?,
        )),
        _ => Err(invalid(
            "redis",
            "give url (one Redis) or cluster = [...] (seed nodes of a Redis Cluster), not both",
        )),
    }
}

/// A connection URL (PostgreSQL, Redis): it may hold a password, so it never prints.
#[derive(Clone)]
pub struct SecretUrl(String);

impl SecretUrl {
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    #[cfg(test)]
    #[must_use]
    pub fn for_tests(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretUrl(<redacted>)")
    }
}

fn parse_postgres(
    r: &RawPostgres,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<SecretUrl, ConfigError> {
    let url = match (&r.url, &r.url_env) {
        (Some(u), None) => u.clone(),
        (None, Some(var)) => env(var).ok_or_else(|| {
            invalid(
                "postgres.url_env",
                format!("environment variable {var} is not set"),
            )
        })?,
        _ => {
            return Err(invalid(
                "postgres",
                "give url or url_env (one of them): the connection URL of the log of record",
            ));
        }
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid(
            "postgres.url",
            "must start with postgres:// or postgresql://",
        ));
    }
    Ok(SecretUrl(url))
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
            postgres: raw
                .postgres
                .as_ref()
                .map(|p| parse_postgres(p, &env))
                .transpose()?,
            redis: raw.redis.as_ref().map(parse_redis).transpose()?,
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
            postgres: None,
            redis: None,
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
