//! `[health]`: the gateway's own health report on `outpost/{id}/health` (docs/health.md).

use std::time::Duration;

use serde::Deserialize;

/// `[health]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    /// How often the report is published when nothing changes (10s to 24h). A change of the
    /// uplink, the modem's registration or the disk's low mark sends one at once.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How often the gauges are read and the watched states checked (1s to `interval`).
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    /// The data directory's file system counts as low below this percent free (0 to 99).
    pub disk_low_percent: f64,
    /// Where ModemManager is asked about a cellular modem: `system` (the system D-Bus), `off`,
    /// or a D-Bus address (`unix:path=/run/dbus/system_bus_socket`).
    pub modem_bus: String,
}

impl Default for RawHealth {
    fn default() -> RawHealth {
        RawHealth {
            interval: DEFAULT_INTERVAL,
            sample_interval: DEFAULT_SAMPLE_INTERVAL,
            disk_low_percent: DEFAULT_DISK_LOW_PERCENT,
            modem_bus: "system".into(),
        }
    }
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_DISK_LOW_PERCENT: f64 = 10.0;

/// Where ModemManager is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModemBus {
    /// The system bus (`$DBUS_SYSTEM_BUS_ADDRESS`, or its well-known socket).
    System,
    /// A D-Bus address.
    Address(String),
    /// Not asked: the report says so.
    Off,
}

/// `[health]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub interval: Duration,
    pub sample_interval: Duration,
    pub disk_low_percent: f64,
    pub modem_bus: ModemBus,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            interval: DEFAULT_INTERVAL,
            sample_interval: DEFAULT_SAMPLE_INTERVAL,
            disk_low_percent: DEFAULT_DISK_LOW_PERCENT,
            modem_bus: ModemBus::System,
        }
    }
}

/// Checks `[health]`; each problem is reported through `problem` with its key.
pub fn compile(raw: &RawHealth, problem: &mut dyn FnMut(&str, String)) -> HealthConfig {
    let mut config = HealthConfig::default();
    if (Duration::from_secs(10)..=Duration::from_secs(86_400)).contains(&raw.interval) {
        config.interval = raw.interval;
    } else {
        problem("health.interval", "must be between 10s and 24h".into());
    }
    if raw.sample_interval >= Duration::from_secs(1) && raw.sample_interval <= raw.interval {
        config.sample_interval = raw.sample_interval;
    } else {
        problem(
            "health.sample_interval",
            "must be at least 1s and at most health.interval".into(),
        );
    }
    if (0.0..=99.0).contains(&raw.disk_low_percent) {
        config.disk_low_percent = raw.disk_low_percent;
    } else {
        problem(
            "health.disk_low_percent",
            format!("must be between 0 and 99, not {}", raw.disk_low_percent),
        );
    }
    config.modem_bus = match raw.modem_bus.trim() {
        "system" => ModemBus::System,
        "off" => ModemBus::Off,
        address if address.contains(':') && !address.chars().any(char::is_whitespace) => {
            ModemBus::Address(address.to_owned())
        }
        other => {
            problem(
                "health.modem_bus",
                format!(
                    "`{other}` is not `system`, `off` or a D-Bus address (unix:path=/run/dbus/system_bus_socket)"
                ),
            );
            ModemBus::System
        }
    };
    config
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::config::tests::Machine;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigErrors> {
        Config::parse(
            Path::new("/etc/outpost/outpost.toml"),
            text,
            &Machine::default(),
        )
    }

    #[test]
    fn health_has_defaults_and_takes_a_private_bus_address() {
        let config = parse("").unwrap();
        assert_eq!(config.health, HealthConfig::default());
        assert_eq!(config.health.interval, Duration::from_secs(300));
        let config = parse(
            "[health]\ninterval = \"1m\"\nsample_interval = \"2s\"\ndisk_low_percent = 5\nmodem_bus = \"unix:path=/tmp/bus\"\n",
        )
        .unwrap();
        assert_eq!(config.health.interval, Duration::from_secs(60));
        assert_eq!(config.health.sample_interval, Duration::from_secs(2));
        assert!((config.health.disk_low_percent - 5.0).abs() < f64::EPSILON);
        assert_eq!(
            config.health.modem_bus,
            ModemBus::Address("unix:path=/tmp/bus".into())
        );
        assert_eq!(
            parse("[health]\nmodem_bus = \"off\"\n")
                .unwrap()
                .health
                .modem_bus,
            ModemBus::Off
        );
    }

    #[test]
    fn every_bad_health_value_is_reported_with_its_key_and_line() {
        let errors = parse(
            "[health]\ninterval = \"1s\"\nsample_interval = \"0s\"\ndisk_low_percent = 120\nmodem_bus = \"the bus\"\n",
        )
        .unwrap_err()
        .0;
        let located: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            located,
            [
                ("health.interval", Some(2)),
                ("health.sample_interval", Some(3)),
                ("health.disk_low_percent", Some(4)),
                ("health.modem_bus", Some(5)),
            ],
            "{errors:?}"
        );
        let unknown = parse("[health]\nintervall = \"1m\"\n").unwrap_err().0;
        assert_eq!(unknown.len(), 1, "{unknown:?}");
        assert_eq!(unknown[0].line, Some(2));
    }
}
