//! The wall clock: the one place the server reads it. The pure domain
//! takes time as an argument instead.

use crate::types::UnixMillis;

/// Milliseconds since the epoch, now.
#[must_use]
pub fn now() -> UnixMillis {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UnixMillis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
