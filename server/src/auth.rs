//! Token verification and roles.
//!
//! The tenant's own backend mints JSON Web Tokens; rxtrack only verifies them.
//! Each configured key is bound to exactly one algorithm (an HS256 secret or
//! an Ed25519 public key), so there is no algorithm switching and `none` is
//! never accepted. The tenant comes only from a verified token.
//!
//! We verify JWTs with `ring` directly rather than through a JWT crate: we
//! need two algorithms with strict key binding, and `ring` already gives us
//! HMAC, Ed25519, AES-GCM, SHA-256 and a CSPRNG in one audited dependency.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{hmac, signature};
use serde::{Deserialize, Serialize};

use crate::types::{DeviceId, SubjectId, TenantId, UnixMillis};

/// Longest token we look at, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// The audience every token must carry.
pub const AUDIENCE: &str = "rxtrack";
pub use crate::domain::{LEEWAY_S, PRIVILEGED_MAX_AGE_S, Principal, Role};

/// Why a token was refused. The `Display` text is safe to send to the client:
/// it never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send Authorization: Bearer or the bearer.<token> subprotocol")]
    Missing,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token audience must be \"rxtrack\"")]
    Audience,
    #[error("token lifetime {lifetime_s}s exceeds the {max_s}s allowed for role {role}")]
    LifetimeTooLong {
        lifetime_s: i64,
        max_s: i64,
        role: &'static str,
    },
    #[error("token claim {0} is missing or invalid")]
    Claim(&'static str),
}

impl AuthError {
    /// A short label for metrics (no token content).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Algorithm(_) => "algorithm",
            AuthError::BadSignature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Audience => "audience",
            AuthError::LifetimeTooLong { .. } => "lifetime",
            AuthError::Claim(_) => "claim",
        }
    }
}

/// Longest token lifetime (`exp - iat`) accepted per role, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct LifetimeCaps {
    pub staff_s: i64,
    pub driver_s: i64,
}

impl Default for LifetimeCaps {
    fn default() -> Self {
        Self {
            staff_s: 3600,
            driver_s: 12 * 3600,
        }
    }
}

/// The verification keys of one tenant.
#[derive(Clone)]
pub struct TenantKeys {
    hs256: Option<hmac::Key>,
    ed25519: Vec<[u8; 32]>,
    caps: LifetimeCaps,
}

impl std::fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKeys")
            .field("hs256", &self.hs256.is_some())
            .field("ed25519", &self.ed25519.len())
            .finish()
    }
}

impl TenantKeys {
    #[must_use]
    pub fn new(hs256_secret: Option<&[u8]>, ed25519: Vec<[u8; 32]>, caps: LifetimeCaps) -> Self {
        Self {
            hs256: hs256_secret.map(|s| hmac::Key::new(hmac::HMAC_SHA256, s)),
            ed25519,
            caps,
        }
    }
}

/// Verifies tokens against the configured tenants.
#[derive(Debug, Default)]
pub struct Verifier {
    tenants: HashMap<TenantId, TenantKeys>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawClaims {
    tid: Option<String>,
    sub: Option<String>,
    role: Option<String>,
    aud: Option<Audience>,
    iat: Option<i64>,
    exp: Option<i64>,
    nbf: Option<i64>,
    did: Option<String>,
    auth_time: Option<i64>,
}

/// The claims rxtrack reads and `rxtrack token` writes.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    pub tid: String,
    pub sub: String,
    pub role: Role,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub did: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

fn b64(part: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)
}

impl Verifier {
    #[must_use]
    pub fn new(tenants: HashMap<TenantId, TenantKeys>) -> Self {
        Self { tenants }
    }

    /// Verifies a compact JWT and returns who holds it.
    ///
    /// The order matters: the signature is checked before any claim is
    /// judged, so an unsigned token learns nothing about what we expect.
    pub fn verify(&self, token: &str, now: UnixMillis) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: Header = serde_json::from_slice(&b64(h)?).map_err(|_| AuthError::Malformed)?;
        let claims: RawClaims =
            serde_json::from_slice(&b64(p)?).map_err(|_| AuthError::Malformed)?;
        let sig = b64(s)?;
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];

        // The tenant named in the (still unverified) payload picks the keys;
        // a wrong or unknown tenant then fails the signature check.
        let keys = claims
            .tid
            .as_deref()
            .and_then(|t| TenantId::parse(t).ok())
            .and_then(|t| self.tenants.get(&t))
            .ok_or(AuthError::BadSignature)?;
        match header.alg.as_str() {
            "HS256" => {
                let key = keys.hs256.as_ref().ok_or(AuthError::BadSignature)?;
                hmac::verify(key, signed, &sig).map_err(|_| AuthError::BadSignature)?;
            }
            "EdDSA" => {
                let ok = keys.ed25519.iter().any(|pk| {
                    signature::UnparsedPublicKey::new(&signature::ED25519, pk)
                        .verify(signed, &sig)
                        .is_ok()
                });
                if !ok {
                    return Err(AuthError::BadSignature);
                }
            }
            other => {
                let shown: String = other.chars().take(16).collect();
                return Err(AuthError::Algorithm(shown));
            }
        }
        judge(&claims, keys.caps, now)
    }
}

fn judge(c: &RawClaims, caps: LifetimeCaps, now: UnixMillis) -> Result<Principal, AuthError> {
    let now_s = now.as_secs();
    let aud_ok = match &c.aud {
        Some(Audience::One(a)) => a == AUDIENCE,
        Some(Audience::Many(v)) => v.iter().any(|a| a == AUDIENCE),
        None => false,
    };
    if !aud_ok {
        return Err(AuthError::Audience);
    }
    let exp = c.exp.ok_or(AuthError::Claim("exp"))?;
    let iat = c.iat.ok_or(AuthError::Claim("iat"))?;
    if exp <= now_s - LEEWAY_S {
        return Err(AuthError::Expired);
    }
    if iat > now_s + LEEWAY_S || c.nbf.is_some_and(|nbf| nbf > now_s + LEEWAY_S) {
        return Err(AuthError::NotYetValid);
    }
    let role = c
        .role
        .as_deref()
        .and_then(Role::parse)
        .ok_or(AuthError::Claim("role"))?;
    let max_s = if role == Role::Driver {
        caps.driver_s
    } else {
        caps.staff_s
    };
    let lifetime_s = exp.saturating_sub(iat);
    if lifetime_s > max_s {
        return Err(AuthError::LifetimeTooLong {
            lifetime_s,
            max_s,
            role: role.as_str(),
        });
    }
    let tenant = c
        .tid
        .as_deref()
        .and_then(|t| TenantId::parse(t).ok())
        .ok_or(AuthError::Claim("tid"))?;
    let sub = c
        .sub
        .as_deref()
        .and_then(|s| SubjectId::parse(s).ok())
        .ok_or(AuthError::Claim("sub"))?;
    let device = match (role, c.did.as_deref()) {
        (Role::Driver, Some(d)) => Some(DeviceId::parse(d).map_err(|_| AuthError::Claim("did"))?),
        (Role::Driver, None) => return Err(AuthError::Claim("did")),
        (_, _) => None,
    };
    Ok(Principal {
        tenant,
        sub,
        role,
        device,
        exp,
        auth_time: c.auth_time,
    })
}

/// Signs claims with an HS256 secret (for `rxtrack token`, demos and tests).
///
/// # Panics
/// Never: serialising these claims cannot fail.
#[must_use]
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(claims).expect("claims are plain strings and integers"));
    let signed = format!("{header}.{payload}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&key, signed.as_bytes()).as_ref());
    format!("{signed}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair as _;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: UnixMillis = UnixMillis(1_764_072_000_000);

    fn claims(role: Role) -> Claims {
        Claims {
            tid: "acme".into(),
            sub: "u1".into(),
            role,
            aud: AUDIENCE.into(),
            iat: NOW.as_secs() - 10,
            exp: NOW.as_secs() + 600,
            did: (role == Role::Driver).then(|| "phone-7".into()),
            auth_time: Some(NOW.as_secs() - 10),
        }
    }

    fn verifier(ed: Vec<[u8; 32]>) -> Verifier {
        let mut t = HashMap::new();
        t.insert(
            TenantId::parse("acme").unwrap(),
            TenantKeys::new(Some(SECRET), ed, LifetimeCaps::default()),
        );
        t.insert(
            TenantId::parse("other").unwrap(),
            TenantKeys::new(
                Some(b"another-tenant-secret-0123456789"),
                vec![],
                LifetimeCaps::default(),
            ),
        );
        Verifier::new(t)
    }

    fn sign_with_alg(alg: &str, claims: &serde_json::Value, secret: &[u8]) -> String {
        let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
        let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
        let signed = format!("{h}.{p}");
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let s = URL_SAFE_NO_PAD.encode(hmac::sign(&key, signed.as_bytes()).as_ref());
        format!("{signed}.{s}")
    }

    #[test]
    fn a_good_token_verifies() {
        let p = verifier(vec![])
            .verify(&mint_hs256(SECRET, &claims(Role::Driver)), NOW)
            .unwrap();
        assert_eq!(p.tenant.as_str(), "acme");
        assert_eq!(p.role, Role::Driver);
        assert_eq!(p.device.unwrap().as_str(), "phone-7");
        assert!(p.auth_time.is_some());
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let v = verifier(vec![]);
        let c = serde_json::to_value(claims(Role::Admin)).unwrap();
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(
            v.verify(&format!("{h}.{p}."), NOW).unwrap_err(),
            AuthError::Algorithm("none".into())
        );
        assert_eq!(
            v.verify(&sign_with_alg("HS512", &c, SECRET), NOW)
                .unwrap_err(),
            AuthError::Algorithm("HS512".into())
        );
        // The HS256 secret used as if it were an Ed25519 key: no switching.
        assert_eq!(
            v.verify(&sign_with_alg("EdDSA", &c, SECRET), NOW)
                .unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn wrong_keys_and_tenants_are_refused() {
        let v = verifier(vec![]);
        assert_eq!(
            v.verify(
                &mint_hs256(b"wrong-secret-wrong-secret-wrong!", &claims(Role::Admin)),
                NOW
            )
            .unwrap_err(),
            AuthError::BadSignature
        );
        // Signed with tenant "other"'s key but claiming tenant "acme".
        assert_eq!(
            v.verify(
                &mint_hs256(b"another-tenant-secret-0123456789", &claims(Role::Admin)),
                NOW
            )
            .unwrap_err(),
            AuthError::BadSignature
        );
        let mut c = claims(Role::Admin);
        c.tid = "nobody".into();
        assert_eq!(
            v.verify(&mint_hs256(SECRET, &c), NOW).unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn time_audience_and_lifetime_are_enforced() {
        let v = verifier(vec![]);
        let mut c = claims(Role::Admin);
        c.exp = NOW.as_secs() - 60;
        c.iat = c.exp - 600;
        assert_eq!(
            v.verify(&mint_hs256(SECRET, &c), NOW).unwrap_err(),
            AuthError::Expired
        );
        let mut c = claims(Role::Admin);
        c.iat = NOW.as_secs() + 120;
        c.exp = c.iat + 600;
        assert_eq!(
            v.verify(&mint_hs256(SECRET, &c), NOW).unwrap_err(),
            AuthError::NotYetValid
        );
        let mut c = claims(Role::Admin);
        c.aud = "someone-else".into();
        assert_eq!(
            v.verify(&mint_hs256(SECRET, &c), NOW).unwrap_err(),
            AuthError::Audience
        );
        let mut c = claims(Role::Dispatcher);
        c.exp = c.iat + 3601;
        assert!(matches!(
            v.verify(&mint_hs256(SECRET, &c), NOW).unwrap_err(),
            AuthError::LifetimeTooLong { max_s: 3600, .. }
        ));
        let mut c = claims(Role::Driver);
        c.exp = c.iat + 12 * 3600;
        assert!(v.verify(&mint_hs256(SECRET, &c), NOW).is_ok());
        let mut c = claims(Role::Driver);
        c.did = None;
        assert_eq!(
            v.verify(&mint_hs256(SECRET, &c), NOW).unwrap_err(),
            AuthError::Claim("did")
        );
    }

    #[test]
    fn ed25519_tokens_verify_with_a_configured_key() {
        let rng = SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pk: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        let v = verifier(vec![pk]);
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#);
        let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(Role::Viewer)).unwrap());
        let signed = format!("{h}.{p}");
        let s = URL_SAFE_NO_PAD.encode(pair.sign(signed.as_bytes()).as_ref());
        let token = format!("{signed}.{s}");
        assert_eq!(v.verify(&token, NOW).unwrap().role, Role::Viewer);
        // The same token against a tenant without that key.
        assert_eq!(
            verifier(vec![]).verify(&token, NOW).unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let v = verifier(vec![]);
        for t in [
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.???.***",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(v.verify(t, NOW).unwrap_err(), AuthError::Malformed, "{t}");
        }
    }

    #[test]
    fn privileged_needs_recent_auth_time() {
        let p = verifier(vec![])
            .verify(&mint_hs256(SECRET, &claims(Role::Admin)), NOW)
            .unwrap();
        assert!(p.freshly_authenticated(NOW));
        assert!(!p.freshly_authenticated(UnixMillis(NOW.0 + 6 * 60 * 1000)));
    }
}
