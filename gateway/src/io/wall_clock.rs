//! The one place the adapters read wall-clock time. Cores never do: they take time as an argument.
//!
//! Readings are stamped through [`WallClock`]: it reads `CLOCK_BOOTTIME`, `CLOCK_REALTIME` and
//! the kernel's synchronisation flag (`adjtimex`) together, hands them to the IO-free
//! [`outpost_core::clock::Clock`], and answers with a [`Now`]: the wall time and whether it may
//! be trusted. [`unix_ms`] stays for what is not a reading's time (alert times, file names, the
//! update agent's own checks).

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use outpost_core::clock::{
    Basis, Clock, ClockConfig, ClockStatus, KernelSync, Observation, Remembered,
};

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

/// `CLOCK_BOOTTIME` in milliseconds: since the kernel started, counting through suspend, never
/// stepped by anyone.
#[must_use]
#[allow(unsafe_code)] // two libc calls, each with its SAFETY note
pub fn boottime_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer; CLOCK_BOOTTIME exists
    // on every Linux this runs on (2.6.39+).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    if rc != 0 {
        return 0;
    }
    #[allow(clippy::useless_conversion)] // time_t and c_long are 32-bit on armhf
    let (sec, nsec) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
    sec * 1000 + nsec / 1_000_000
}

/// What the kernel says of the wall clock's synchronisation: `adjtimex` with no change asked
/// (`modes = 0`, allowed to anyone): `TIME_ERROR` or `STA_UNSYNC` means unsynchronised.
#[must_use]
#[allow(unsafe_code)] // libc's adjtimex, with its SAFETY note
pub fn kernel_sync() -> KernelSync {
    // SAFETY: a zeroed timex is a valid argument asking for no change.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: adjtimex reads and writes one timex through a valid pointer.
    let state = unsafe { libc::adjtimex(&raw mut tx) };
    if state < 0 {
        KernelSync::Unknown
    } else if state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0 {
        KernelSync::Unsynced
    } else {
        KernelSync::Synced
    }
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): a new one at every boot. Empty if
/// it cannot be read (then every start counts as a new boot).
#[must_use]
pub fn kernel_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The floor: no wall time before this build was made is trusted (Unix ms; from
/// `SOURCE_DATE_EPOCH` when the build sets it).
pub const BUILD_FLOOR_MS: i64 = {
    match i64::from_str_radix(env!("OUTPOST_BUILD_UNIX_S"), 10) {
        Ok(s) => s * 1000,
        Err(_) => 0,
    }
};

/// One look at the clocks, judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// `CLOCK_BOOTTIME` ms.
    pub mono_ms: i64,
    /// Wall time (Unix ms), trusted or not.
    pub wall_ms: i64,
    /// Whether `wall_ms` is trusted, and the offset to undo if not.
    pub basis: Basis,
}

impl Now {
    /// The wall time, as of this look, of an event at monotonic time `mono_ms`.
    #[must_use]
    pub fn wall_at(&self, mono_ms: i64) -> i64 {
        mono_ms.saturating_add(self.wall_ms - self.mono_ms)
    }

    #[must_use]
    pub fn trusted(&self) -> bool {
        self.basis == Basis::Trusted
    }
}

/// The shared judge of the wall clock (one per daemon; cheap to clone).
#[derive(Debug, Clone)]
pub struct WallClock {
    clock: Arc<Mutex<Clock>>,
}

impl WallClock {
    #[must_use]
    pub fn new(config: ClockConfig, remembered: Remembered) -> WallClock {
        let wall = WallClock {
            clock: Arc::new(Mutex::new(Clock::new(config, remembered))),
        };
        let now = wall.now();
        if !now.trusted() {
            tracing::warn!(message = "Wall clock not trusted yet (not synchronised, or before this build's date); readings are held with their monotonic time until it is.",
                wall_ms = now.wall_ms, kernel = ?kernel_sync(), floor_ms = config.floor_ms);
        }
        wall
    }

    /// A clock whose wall time is taken as it is (tests and tools with no store to remember).
    #[must_use]
    pub fn assume_synchronised() -> WallClock {
        WallClock::new(
            ClockConfig::with_floor(0),
            Remembered {
                high_water_ms: 0,
                boot_trusted: true,
            },
        )
    }

    /// Looks at the clocks now.
    #[must_use]
    pub fn now(&self) -> Now {
        let mut clock = self
            .clock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Read inside the lock, so observations reach the core in monotonic order.
        let observation = Observation {
            mono_ms: boottime_ms(),
            wall_ms: unix_ms(),
            kernel: kernel_sync(),
        };
        let was = clock.trusted();
        if let Some(step) = clock.observe(observation) {
            tracing::warn!(
                message = "Wall clock stepped.",
                by_ms = step.by_ms,
                trusted = clock.trusted()
            );
        }
        if clock.trusted() != was {
            if clock.trusted() {
                tracing::info!(
                    message = "Wall clock trusted; held readings get their exact time.",
                    wall_ms = observation.wall_ms
                );
            } else {
                tracing::warn!(
                    message = "Wall clock no longer trusted; readings are held until it is.",
                    wall_ms = observation.wall_ms
                );
            }
        }
        Now {
            mono_ms: observation.mono_ms,
            wall_ms: observation.wall_ms,
            basis: clock.basis(),
        }
    }

    /// Runs `f` on the core (after [`WallClock::now`] for a fresh answer).
    pub fn with<T>(&self, f: impl FnOnce(&Clock) -> T) -> T {
        f(&self
            .clock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    #[must_use]
    pub fn status(&self) -> ClockStatus {
        self.with(Clock::status)
    }
}
