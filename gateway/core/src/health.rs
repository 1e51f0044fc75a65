//! The gateway's own health: the report published on `outpost/{id}/health`, when to publish it,
//! and the pure pieces the adapter (`outpost::io::health`) needs to fill it.
//!
//! Design: the adapter samples the machine (`/proc`, the data directory's file system, the
//! telemetry snapshot, the outbox, ModemManager) every `health.sample_interval` and hands what
//! it saw to [`HealthSchedule::handle_sample`] with the time; the schedule answers whether a
//! report goes out now, and why ([`Trigger`]): the first after start (it carries the previous
//! run's end, [`run_end`]), then every `health.interval`, and at once when a watched state
//! changes (uplink up or down, the modem's registration, the disk crossing its low mark). It
//! never reads a clock or a file. The report's keys are short (it may travel over a metered
//! cellular link every few minutes); docs/health.md lists them.

use std::time::Duration;

use serde::Serialize;

pub mod procfs;
pub mod run_end;

pub use run_end::PreviousRun;

/// The report's format version (`v`).
pub const HEALTH_VERSION: u32 = 1;

/// Why a report was sent (`why`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The first report of a run: it carries the previous run's end.
    Start,
    /// `health.interval` passed since the last one.
    Interval,
    /// The uplink came up or went down.
    Uplink,
    /// The modem appeared, went away, registered or lost its registration.
    Modem,
    /// The data directory's free space crossed `health.disk_low_percent`.
    Disk,
}

/// The states whose change sends a report at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Watched {
    /// `None` without an MQTT uplink.
    pub uplink_up: Option<bool>,
    pub modem: ModemLink,
    pub disk_low: bool,
}

/// A modem's registration, coarsely: what a change of is news.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModemLink {
    /// No modem (or no ModemManager, or no bus).
    #[default]
    None,
    /// A modem that is not registered on a network (disabled, searching, locked, failed).
    Unregistered,
    /// Registered, connecting, connected.
    Registered,
}

/// When reports go out. See the module documentation.
#[derive(Debug, Clone)]
pub struct HealthSchedule {
    interval: Duration,
    last_sent_ms: Option<u64>,
    watched: Option<Watched>,
}

impl HealthSchedule {
    #[must_use]
    pub fn new(interval: Duration) -> HealthSchedule {
        HealthSchedule {
            interval,
            last_sent_ms: None,
            watched: None,
        }
    }

    /// A sample taken at `now_ms` (a monotonic clock's ms): whether a report goes out now.
    pub fn handle_sample(&mut self, now_ms: u64, watched: Watched) -> Option<Trigger> {
        let before = self.watched.replace(watched);
        let trigger = match (before, self.last_sent_ms) {
            (None, _) | (_, None) => Some(Trigger::Start),
            (Some(before), Some(last)) => {
                if before.uplink_up != watched.uplink_up {
                    Some(Trigger::Uplink)
                } else if before.modem != watched.modem {
                    Some(Trigger::Modem)
                } else if before.disk_low != watched.disk_low {
                    Some(Trigger::Disk)
                } else if now_ms.saturating_sub(last)
                    >= u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX)
                {
                    Some(Trigger::Interval)
                } else {
                    None
                }
            }
        };
        if trigger.is_some() {
            self.last_sent_ms = Some(now_ms);
        }
        trigger
    }

    /// When the next interval report is due (monotonic ms), if one was sent.
    #[must_use]
    pub fn poll_due(&self) -> Option<u64> {
        self.last_sent_ms.map(|last| {
            last.saturating_add(u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX))
        })
    }
}

/// Whether the disk counts as low: below `low_percent` free, and once low, until it is a point
/// above it again (so a disk hovering at the mark does not send a report at every sample).
#[must_use]
pub fn disk_low(was_low: bool, free_percent: f64, low_percent: f64) -> bool {
    if was_low {
        free_percent < low_percent + 1.0
    } else {
        free_percent < low_percent
    }
}

/// The report on `outpost/{id}/health`, `/api/v1/status` (`health`) and the status page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// [`HEALTH_VERSION`].
    pub v: u32,
    /// When it was taken (Unix ms).
    pub at: i64,
    /// Why it was published; absent on a sample that was not (`/api/v1/status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<Trigger>,
    /// Seconds since the daemon started.
    pub up_s: u64,
    /// How the previous run ended.
    pub prev: PreviousRun,
    pub cpu: CpuHealth,
    pub mem: MemHealth,
    pub disk: DiskHealth,
    /// `None` without an MQTT uplink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkHealth>,
    pub outbox: OutboxHealth,
    pub modem: ModemHealth,
}

/// CPU use since the previous sample, percent; `None` before a second sample or when `/proc`
/// cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct CpuHealth {
    /// This process, as a share of one core (may exceed 100 on several).
    pub proc: Option<f64>,
    /// The whole machine, as a share of all its cores.
    pub sys: Option<f64>,
}

/// Memory, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MemHealth {
    /// This process's resident set.
    pub rss: Option<u64>,
    /// `MemAvailable`: what the machine can still give without swapping.
    pub avail: Option<u64>,
    pub total: Option<u64>,
}

/// The data directory's file system.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct DiskHealth {
    /// Bytes free for the daemon (not root's reserve).
    pub free: Option<u64>,
    /// Percent of the file system free for the daemon.
    pub free_pct: Option<f64>,
    /// Below `health.disk_low_percent` ([`disk_low`]).
    pub low: bool,
}

/// The MQTT uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LinkHealth {
    pub up: bool,
    /// When it last came up or went down (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
}

/// What waits for the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct OutboxHealth {
    /// Sealed batches not acknowledged.
    pub batches: u64,
    pub bytes: u64,
    /// Readings not sealed into a batch yet.
    pub unsealed: u64,
    /// Age of the oldest reading the cloud has not acknowledged, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_s: Option<u64>,
}

/// The cellular modem, as ModemManager reports it; `state: "none"` (and `why`) without one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModemHealth {
    /// `none`, or ModemManager's state name ([`modem_state_name`]).
    pub state: &'static str,
    /// Why there is no modem: no system bus, no ModemManager, no modem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Signal quality, percent (ModemManager's `SignalQuality`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<u32>,
    /// Whether the signal quality is recent (ModemManager's flag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent: Option<bool>,
    /// Access technologies in use (`lte`, `umts`, …), joined with `,`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tech: Option<String>,
    /// The network operator's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
}

impl ModemHealth {
    /// No modem, and why.
    #[must_use]
    pub fn none(why: impl Into<String>) -> ModemHealth {
        ModemHealth {
            state: "none",
            why: Some(why.into()),
            signal: None,
            recent: None,
            tech: None,
            operator: None,
        }
    }

    /// A modem ModemManager reports: its `State`, `SignalQuality`, `AccessTechnologies` and the
    /// 3GPP operator name. Text from the bus is bounded and cleaned like any input.
    #[must_use]
    pub fn present(
        state: i32,
        signal: (u32, bool),
        access_technologies: u32,
        operator: Option<&str>,
    ) -> ModemHealth {
        let tech = access_technology_names(access_technologies);
        ModemHealth {
            state: modem_state_name(state),
            why: None,
            signal: Some(signal.0.min(100)),
            recent: Some(signal.1),
            tech: (!tech.is_empty()).then(|| tech.join(",")),
            operator: operator
                .map(|o| run_end::cut(o).chars().take(64).collect::<String>())
                .filter(|o| !o.trim().is_empty()),
        }
    }

    /// Its registration, for [`Watched`].
    #[must_use]
    pub fn link(&self) -> ModemLink {
        match self.state {
            "none" => ModemLink::None,
            "registered" | "connecting" | "connected" | "disconnecting" => ModemLink::Registered,
            _ => ModemLink::Unregistered,
        }
    }
}

/// ModemManager's `MMModemState` (ModemManager-enums.h) as a name.
#[must_use]
pub fn modem_state_name(state: i32) -> &'static str {
    match state {
        -1 => "failed",
        1 => "initializing",
        2 => "locked",
        3 => "disabled",
        4 => "disabling",
        5 => "enabling",
        6 => "enabled",
        7 => "searching",
        8 => "registered",
        9 => "disconnecting",
        10 => "connecting",
        11 => "connected",
        _ => "unknown",
    }
}

/// ModemManager's `MMModemAccessTechnology` bit flags (ModemManager-enums.h) as names.
#[must_use]
pub fn access_technology_names(flags: u32) -> Vec<&'static str> {
    const NAMES: [(u32, &str); 18] = [
        (1 << 0, "pots"),
        (1 << 1, "gsm"),
        (1 << 2, "gsm_compact"),
        (1 << 3, "gprs"),
        (1 << 4, "edge"),
        (1 << 5, "umts"),
        (1 << 6, "hsdpa"),
        (1 << 7, "hsupa"),
        (1 << 8, "hspa"),
        (1 << 9, "hspa_plus"),
        (1 << 10, "1xrtt"),
        (1 << 11, "evdo0"),
        (1 << 12, "evdoa"),
        (1 << 13, "evdob"),
        (1 << 14, "lte"),
        (1 << 15, "5gnr"),
        (1 << 16, "lte_cat_m"),
        (1 << 17, "lte_nb_iot"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|&(_, name)| name)
        .collect()
}

/// A percentage rounded to one decimal.
#[must_use]
pub fn one_decimal(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    fn watched(up: bool) -> Watched {
        Watched {
            uplink_up: Some(up),
            modem: ModemLink::None,
            disk_low: false,
        }
    }

    #[test]
    fn the_first_sample_sends_the_start_report_then_one_per_interval() {
        let mut schedule = HealthSchedule::new(Duration::from_secs(300));
        assert_eq!(
            schedule.handle_sample(0, watched(false)),
            Some(Trigger::Start)
        );
        assert_eq!(schedule.handle_sample(MINUTE, watched(false)), None);
        assert_eq!(schedule.poll_due(), Some(5 * MINUTE));
        assert_eq!(schedule.handle_sample(5 * MINUTE - 1, watched(false)), None);
        assert_eq!(
            schedule.handle_sample(5 * MINUTE, watched(false)),
            Some(Trigger::Interval)
        );
        assert_eq!(schedule.handle_sample(6 * MINUTE, watched(false)), None);
    }

    #[test]
    fn a_change_of_a_watched_state_sends_at_once_and_restarts_the_interval() {
        let mut schedule = HealthSchedule::new(Duration::from_secs(300));
        schedule.handle_sample(0, watched(false));
        assert_eq!(
            schedule.handle_sample(1_000, watched(true)),
            Some(Trigger::Uplink)
        );
        assert_eq!(schedule.handle_sample(2_000, watched(true)), None);
        let modem = Watched {
            modem: ModemLink::Registered,
            ..watched(true)
        };
        assert_eq!(schedule.handle_sample(3_000, modem), Some(Trigger::Modem));
        let low = Watched {
            disk_low: true,
            ..modem
        };
        assert_eq!(schedule.handle_sample(4_000, low), Some(Trigger::Disk));
        assert_eq!(schedule.handle_sample(4_000 + 5 * MINUTE - 1, low), None);
        assert_eq!(
            schedule.handle_sample(4_000 + 5 * MINUTE, low),
            Some(Trigger::Interval)
        );
    }

    #[test]
    fn the_low_disk_mark_has_a_point_of_hysteresis() {
        assert!(!disk_low(false, 10.0, 10.0));
        assert!(disk_low(false, 9.9, 10.0));
        assert!(disk_low(true, 10.5, 10.0));
        assert!(!disk_low(true, 11.0, 10.0));
    }

    #[test]
    fn modem_states_and_technologies_have_modemmanagers_names() {
        let modem = ModemHealth::present(8, (72, true), (1 << 14) | (1 << 5), Some("Operator"));
        assert_eq!(modem.state, "registered");
        assert_eq!(modem.tech.as_deref(), Some("umts,lte"));
        assert_eq!(modem.link(), ModemLink::Registered);
        assert_eq!(
            ModemHealth::present(7, (0, false), 0, None).link(),
            ModemLink::Unregistered
        );
        assert_eq!(ModemHealth::none("no modem").link(), ModemLink::None);
        assert_eq!(modem_state_name(42), "unknown");
        assert_eq!(
            serde_json::to_string(&ModemHealth::none("no ModemManager")).unwrap(),
            r#"{"state":"none","why":"no ModemManager"}"#
        );
        // A hostile or broken bus: quality clamped, operator cleaned and bounded.
        let odd = ModemHealth::present(11, (250, false), 0, Some(&"\u{7}x".repeat(500)));
        assert_eq!(odd.signal, Some(100));
        let operator = odd.operator.unwrap();
        assert!(operator.chars().count() <= 64 && !operator.chars().any(char::is_control));
    }
}
