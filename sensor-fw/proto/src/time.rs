//! Time as both ends of the link see it: milliseconds on a monotonic clock.
//!
//! Cores never read a clock; the caller passes `now` in. `Millis` is not an `Instant` so it can
//! cross the no_std boundary and be used with virtual clocks in tests.

use core::ops::{Add, Sub};
use core::time::Duration;

/// Milliseconds since an arbitrary epoch (the node's boot, or the gateway's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    pub const ZERO: Millis = Millis(0);

    #[must_use]
    pub const fn from_secs(secs: u64) -> Self {
        Millis(secs * 1000)
    }

    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// `self - earlier`, or zero when `earlier` is later.
    #[must_use]
    pub const fn saturating_since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<u64> for Millis {
    type Output = Millis;
    fn add(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
}

impl Add<Duration> for Millis {
    type Output = Millis;
    fn add(self, d: Duration) -> Millis {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Millis(self.0.saturating_add(ms))
    }
}

impl Sub for Millis {
    type Output = u64;
    fn sub(self, earlier: Millis) -> u64 {
        self.saturating_since(earlier)
    }
}
