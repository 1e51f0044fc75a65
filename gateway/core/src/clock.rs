//! The wall clock, judged: whether its time can stamp readings, and what wall time an event seen
//! at a given monotonic time had. IO-free: observations in, answers out.
//!
//! A gateway without a real-time clock (a Raspberry Pi) starts in 1970, or at the time
//! fake-hwclock saved at the last shutdown, and jumps at its first time synchronisation. Its
//! monotonic clock (`CLOCK_BOOTTIME`: it counts from the kernel's start and keeps counting
//! through suspend) never jumps. So every event is first placed on the monotonic axis, and turned
//! into wall time with the offset `wall − mono` of a moment when the wall clock is trusted:
//! `wall(T) = mono(T) + (wall_now − mono_now)`. Within one kernel boot this is exact, whatever
//! the wall clock did between `T` and now.
//!
//! # When the wall clock is trusted
//!
//! Two questions, both must be yes:
//!
//! 1. **Is it plausible?** Never before the floor (the build date): a clock before the software
//!    running on it was built is wrong. And never more than [`ClockConfig::step_tolerance_ms`]
//!    before the latest wall time this gateway ever trusted (kept in the store), unless the
//!    kernel says it is synchronised: so a clock that goes back to the past (fake-hwclock's
//!    time after a crash, a bad time source) is not trusted until it is back in the present.
//! 2. **Has it been synchronised?** Asked as [`ClockConfig::trust`] says:
//!    - [`Trust::Plausible`]: not asked. For machines whose clock is right from boot (an RTC, a
//!      VM) whether or not a time service keeps the kernel's flag.
//!    - [`Trust::Synchronised`]: the kernel says so (`adjtimex`: `STA_UNSYNC` clear, no
//!      `TIME_ERROR`; `systemd-timesyncd`, `chrony` and `ntpd` keep that flag), or this process
//!      saw the clock step (a time service set it), or an earlier run of the daemon in this
//!      same kernel boot had it trusted (a restart of the daemon, not of the machine). For a
//!      Raspberry Pi without RTC: fake-hwclock's time, plausible after a clean shutdown, waits
//!      for the time service.
//!    - [`Trust::Step`]: as `Synchronised` without the kernel's word, where the time is set by
//!      `date` (a script, a GPS receiver) and nobody keeps the flag.
//!
//! # Invariants
//!
//! 1. [`Clock::trusted`] is false whenever the last observed wall time is below the floor.
//! 2. Without the kernel's word, trusted wall time never goes back by more than the step
//!    tolerance: [`Clock::high_water_ms`] only grows, and a wall time below it (less the
//!    tolerance) is not trusted.
//! 3. [`Clock::wall_at`] of a monotonic time is `mono + offset` of the latest observation, so
//!    two events keep their monotonic order and spacing in wall time.
//! 4. A step (the offset `wall − mono` changing by more than the tolerance between two
//!    observations) is reported once, by the observation that sees it.

use std::time::Duration;

use crate::budget::Date;

/// What the kernel says of the wall clock's synchronisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelSync {
    /// `adjtimex` answered `TIME_OK` (or another state but `TIME_ERROR`) without `STA_UNSYNC`.
    Synced,
    /// `STA_UNSYNC` set, or `TIME_ERROR`: no time service disciplines the clock (yet).
    Unsynced,
    /// The kernel could not be asked.
    Unknown,
}

/// What shows the wall clock was synchronised (`clock.trust`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// Nothing needed: a plausible clock is trusted.
    Plausible,
    /// The kernel's flag, a step seen, or an earlier run in this kernel boot.
    Synchronised,
    /// A step seen, or an earlier run in this kernel boot.
    Step,
}

/// The clock policy's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockConfig {
    /// A wall time before this (Unix ms; the build date) is never trusted.
    pub floor_ms: i64,
    /// What shows the clock was synchronised (`clock.trust`).
    pub trust: Trust,
    /// A change of `wall − mono` larger than this between two observations is a step, and wall
    /// time this far below the high-water mark is still plausible (slew, NTP's small steps).
    pub step_tolerance_ms: i64,
    /// Readings taken while the clock is not trusted are held this long (monotonic time) for a
    /// synchronisation to re-stamp them; then they are sealed marked unsynchronised
    /// (`clock.max_hold`).
    pub max_hold: Duration,
}

impl ClockConfig {
    /// Defaults around a floor.
    #[must_use]
    pub fn with_floor(floor_ms: i64) -> ClockConfig {
        ClockConfig {
            floor_ms,
            trust: Trust::Plausible,
            step_tolerance_ms: DEFAULT_STEP_TOLERANCE_MS,
            max_hold: DEFAULT_MAX_HOLD,
        }
    }
}

/// See [`ClockConfig::step_tolerance_ms`].
pub const DEFAULT_STEP_TOLERANCE_MS: i64 = 1_000;
/// See [`ClockConfig::max_hold`].
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(3600);

/// What the store remembers of earlier runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Remembered {
    /// The latest wall time ever trusted (Unix ms; 0: none).
    pub high_water_ms: i64,
    /// An earlier run in this kernel boot had the clock trusted.
    pub boot_trusted: bool,
}

/// One look at the clocks, taken together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// `CLOCK_BOOTTIME` in ms: never steps, counts from the kernel's start.
    pub mono_ms: i64,
    /// `CLOCK_REALTIME` in Unix ms.
    pub wall_ms: i64,
    pub kernel: KernelSync,
}

/// The wall clock moved differently from the monotonic one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Monotonic time of the observation that saw it.
    pub at_mono_ms: i64,
    /// How far the wall clock stepped (positive: forward).
    pub by_ms: i64,
}

/// How a reading's timestamp relates to true time, as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The timestamp is trusted wall time.
    Trusted,
    /// The timestamp is `mono + offset_ms` with an untrusted offset: the store holds the
    /// reading's monotonic time (`ts_ms − offset_ms`) to re-stamp it once the clock is trusted.
    Untrusted { offset_ms: i64 },
}

/// Why the clock is trusted, for the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// [`Trust::Plausible`]: none asked.
    Plausible,
    Kernel,
    Step,
    EarlierRun,
}

/// The clock at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ClockStatus {
    pub trusted: bool,
    pub evidence: Option<Evidence>,
    pub kernel: KernelSync,
    pub wall_ms: i64,
    pub floor_ms: i64,
    pub high_water_ms: i64,
    pub steps: u64,
}

/// Design: keeps the latest observation, whether a step was seen, and the high-water mark;
/// every answer is a function of those. It never reads a clock.
#[derive(Debug, Clone)]
pub struct Clock {
    config: ClockConfig,
    high_water_ms: i64,
    boot_trusted: bool,
    step_seen: bool,
    steps: u64,
    last: Option<Observation>,
    trusted: bool,
    untrusted_since: Option<i64>,
}

impl Clock {
    #[must_use]
    pub fn new(config: ClockConfig, remembered: Remembered) -> Clock {
        Clock {
            config,
            high_water_ms: remembered.high_water_ms,
            boot_trusted: remembered.boot_trusted,
            step_seen: false,
            steps: 0,
            last: None,
            trusted: false,
            untrusted_since: None,
        }
    }

    #[must_use]
    pub fn config(&self) -> &ClockConfig {
        &self.config
    }

    /// Takes a look at the clocks; returns the step it reveals, if any. An observation older
    /// (on the monotonic axis) than the last one is ignored.
    pub fn observe(&mut self, o: Observation) -> Option<Step> {
        let mut step = None;
        if let Some(last) = self.last {
            if o.mono_ms < last.mono_ms {
                return None;
            }
            let by_ms = (o.wall_ms - o.mono_ms).saturating_sub(last.wall_ms - last.mono_ms);
            if by_ms.abs() > self.config.step_tolerance_ms {
                self.step_seen = true;
                self.steps += 1;
                step = Some(Step {
                    at_mono_ms: o.mono_ms,
                    by_ms,
                });
            }
        }
        self.last = Some(o);
        self.trusted = self.evidence().is_some() && self.plausible(o);
        if self.trusted {
            self.high_water_ms = self.high_water_ms.max(o.wall_ms);
            self.boot_trusted = true;
            self.untrusted_since = None;
        } else {
            self.untrusted_since.get_or_insert(o.mono_ms);
        }
        step
    }

    fn kernel_says_synced(&self) -> bool {
        self.config.trust != Trust::Step
            && self.last.is_some_and(|o| o.kernel == KernelSync::Synced)
    }

    fn evidence(&self) -> Option<Evidence> {
        if self.config.trust == Trust::Plausible {
            Some(Evidence::Plausible)
        } else if self.kernel_says_synced() {
            Some(Evidence::Kernel)
        } else if self.step_seen {
            Some(Evidence::Step)
        } else if self.boot_trusted {
            Some(Evidence::EarlierRun)
        } else {
            None
        }
    }

    fn plausible(&self, o: Observation) -> bool {
        o.wall_ms >= self.config.floor_ms
            && (self.kernel_says_synced()
                || o.wall_ms >= self.high_water_ms - self.config.step_tolerance_ms)
    }

    /// Whether the wall clock, as last observed, may stamp readings.
    #[must_use]
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// `wall − mono` of the last observation (0 before any).
    #[must_use]
    pub fn offset_ms(&self) -> i64 {
        self.last.map_or(0, |o| o.wall_ms - o.mono_ms)
    }

    /// The wall time of an event seen at monotonic time `mono_ms`: exact once trusted, for any
    /// event of this kernel boot.
    #[must_use]
    pub fn wall_at(&self, mono_ms: i64) -> i64 {
        mono_ms.saturating_add(self.offset_ms())
    }

    /// How a reading stamped now relates to true time.
    #[must_use]
    pub fn basis(&self) -> Basis {
        if self.trusted {
            Basis::Trusted
        } else {
            Basis::Untrusted {
                offset_ms: self.offset_ms(),
            }
        }
    }

    /// The latest wall time trusted, this run or before (0: none).
    #[must_use]
    pub fn high_water_ms(&self) -> i64 {
        self.high_water_ms
    }

    /// Whether readings held since monotonic time `oldest_held_mono_ms` have waited their
    /// `max_hold` at `mono_now` without the clock becoming trusted: then they are released, marked.
    #[must_use]
    pub fn release_due(&self, oldest_held_mono_ms: i64, mono_now: i64) -> bool {
        !self.trusted
            && mono_now.saturating_sub(oldest_held_mono_ms)
                >= i64::try_from(self.config.max_hold.as_millis()).unwrap_or(i64::MAX)
    }

    /// The UTC day the data budget counts now's traffic on, given the latest day it recorded:
    /// today when trusted, never before `last_recorded`; `last_recorded` while untrusted; `None`
    /// while untrusted with nothing recorded yet (the traffic waits for a trusted day).
    #[must_use]
    pub fn budget_day(&self, last_recorded: Option<Date>) -> Option<Date> {
        let today = self
            .last
            .filter(|_| self.trusted)
            .map(|o| Date::from_unix_ms(o.wall_ms));
        match (today, last_recorded) {
            (Some(today), Some(last)) => Some(today.max(last)),
            (today, last) => today.or(last),
        }
    }

    /// The wall time to project the budget's month at: now when trusted and not before the last
    /// recorded day; `None` otherwise (keep the last decision).
    #[must_use]
    pub fn budget_now(&self, last_recorded: Option<Date>) -> Option<i64> {
        let o = self.last.filter(|_| self.trusted)?;
        let today = Date::from_unix_ms(o.wall_ms);
        last_recorded
            .is_none_or(|last| today >= last)
            .then_some(o.wall_ms)
    }

    #[must_use]
    pub fn status(&self) -> ClockStatus {
        ClockStatus {
            trusted: self.trusted,
            evidence: self.trusted.then(|| self.evidence()).flatten(),
            kernel: self.last.map_or(KernelSync::Unknown, |o| o.kernel),
            wall_ms: self.last.map_or(0, |o| o.wall_ms),
            floor_ms: self.config.floor_ms,
            high_water_ms: self.high_water_ms,
            steps: self.steps,
        }
    }
}

#[cfg(test)]
mod tests;
