//! Per-tenant data keys: AES-256-GCM sealing of PHI fields at rest.
//!
//! Each tenant has a random 256-bit data key in `<data_dir>/keys/<tenant>.key`
//! (mode 0600). Deleting that file shreds the tenant's PHI: the chain still
//! verifies, but nothing sealed can be read again. Each sealed value has a
//! fresh random 96-bit nonce, and its associated data binds it to its tenant,
//! event number and field, so a sealed value cannot be moved to another event.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::types::TenantId;

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("data key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data key file {0} does not hold a 32-byte key")]
    BadKey(PathBuf),
    #[error("the system random generator failed")]
    Random,
    #[error("a sealed field is not valid base64 or is too short")]
    Malformed,
    #[error("a sealed field failed authentication (wrong key, or the stored bytes were altered)")]
    Open,
}

/// One tenant's data key.
pub struct DataKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// Where a tenant's data key lives.
#[must_use]
pub fn key_path(data_dir: &Path, tenant: &TenantId) -> PathBuf {
    data_dir.join("keys").join(format!("{tenant}.key"))
}

impl DataKey {
    /// Loads the tenant's key, or creates it when `create` is set and none exists.
    /// Returns `Ok(None)` when there is no key and `create` is not set.
    pub fn load(
        data_dir: &Path,
        tenant: &TenantId,
        create: bool,
    ) -> Result<Option<Self>, CryptoError> {
        let path = key_path(data_dir, tenant);
        if !path.exists() {
            if !create {
                return Ok(None);
            }
            let mut raw = [0u8; 32];
            SystemRandom::new()
                .fill(&mut raw)
                .map_err(|_| CryptoError::Random)?;
            crate::fsutil::write_private(&path, &raw).map_err(|source| CryptoError::Io {
                path: path.clone(),
                source,
            })?;
        }
        let raw = std::fs::read(&path).map_err(|source| CryptoError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_bytes(&raw)
            .map(Some)
            .ok_or(CryptoError::BadKey(path))
    }

    /// A key from raw bytes (32 bytes, or `None`).
    #[must_use]
    pub fn from_bytes(raw: &[u8]) -> Option<Self> {
        if raw.len() != 32 {
            return None;
        }
        let key = UnboundKey::new(&AES_256_GCM, raw).ok()?;
        Some(Self {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// Seals `plaintext`, bound to `aad`. Output: base64(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| CryptoError::Random)?;
        let mut buf = Vec::with_capacity(NONCE_LEN + body.len());
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(&body);
        Ok(STANDARD.encode(buf))
    }

    /// Opens a value made by [`Self::seal`] with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut raw = STANDARD
            .decode(sealed)
            .map_err(|_| CryptoError::Malformed)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Malformed);
        }
        let mut body = raw.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&raw).map_err(|_| CryptoError::Malformed)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .map_err(|_| CryptoError::Open)?;
        Ok(plain.to_vec())
    }
}

/// The associated data that binds a sealed field to its place.
#[must_use]
pub fn aad(tenant: &str, seq: u64, field: &str) -> Vec<u8> {
    format!("rxtrack/v1|{tenant}|{seq}|{field}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = DataKey::from_bytes(&[7u8; 32]).unwrap();
        let s = k.seal(b"Anneliese", &aad("acme", 1, "data")).unwrap();
        assert_eq!(k.open(&s, &aad("acme", 1, "data")).unwrap(), b"Anneliese");
        // Moved to another event or field, or opened with another key: refused.
        assert!(matches!(
            k.open(&s, &aad("acme", 2, "data")),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            k.open(&s, &aad("acme", 1, "where")),
            Err(CryptoError::Open)
        ));
        let other = DataKey::from_bytes(&[8u8; 32]).unwrap();
        assert!(matches!(
            other.open(&s, &aad("acme", 1, "data")),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            k.open("!!", &aad("acme", 1, "data")),
            Err(CryptoError::Malformed)
        ));
        assert!(matches!(
            k.open("AAAA", &aad("acme", 1, "data")),
            Err(CryptoError::Malformed)
        ));
        // Same plaintext, fresh nonce: different ciphertext.
        assert_ne!(s, k.seal(b"Anneliese", &aad("acme", 1, "data")).unwrap());
        assert!(!s.contains("Anneliese"));
    }

    #[test]
    fn keys_are_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let t = TenantId::parse("acme").unwrap();
        assert!(DataKey::load(dir.path(), &t, false).unwrap().is_none());
        let a = DataKey::load(dir.path(), &t, true).unwrap().unwrap();
        let b = DataKey::load(dir.path(), &t, true).unwrap().unwrap();
        let s = a.seal(b"x", b"ad").unwrap();
        assert_eq!(b.open(&s, b"ad").unwrap(), b"x");
        let mode = std::fs::metadata(key_path(dir.path(), &t))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
