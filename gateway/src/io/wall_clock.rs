//! The one place the adapters read wall-clock time. Cores never do: they take time as an argument.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (0 for a clock set before 1970).
#[must_use]
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// [`unix_ms`] as the cores' [`outpost_proto::Millis`].
#[must_use]
pub fn unix_millis() -> outpost_proto::Millis {
    outpost_proto::Millis(u64::try_from(unix_ms()).unwrap_or(0))
}
