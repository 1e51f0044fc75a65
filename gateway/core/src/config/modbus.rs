//! The `[modbus]` part of the configuration: RTU buses, devices, and the register map each
//! device is polled through.
//!
//! ```toml
//! [[modbus.bus]]                 # one RS-485 line; its devices are polled one at a time
//! path = "/dev/ttyUSB0"
//! baud = 9600
//! parity = "even"                # none | even | odd
//! stop_bits = 1
//!
//! [[modbus.device]]
//! name = "main-meter"            # the readings' source name
//! map = "devices/eastron-sdm630.toml"   # relative to this file's folder
//! transport = "rtu"              # rtu (bus = a [[modbus.bus]] path) | tcp (address = ip:port)
//! bus = "/dev/ttyUSB0"
//! unit = 1
//! poll_interval = "10s"
//! timeout = "500ms"
//! retries = 1
//! priority = ["alarm"]           # points sent at once when they change (besides the map's own)
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::Environment;
use crate::modbus::map::{self, RegisterMap};
use crate::modbus::plan::{CostModel, ReadPlan};
pub use crate::modbus::rtu::Parity;
use crate::modbus::rtu::{LineTiming, RtuRequest, response_len};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModbus {
    /// One entry per RTU serial line.
    #[serde(default)]
    pub bus: Vec<RawBus>,
    /// One entry per device (RTU unit or TCP device).
    #[serde(default)]
    pub device: Vec<RawDevice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    /// Device path of the RS-485 adapter, e.g. `/dev/ttyUSB0` or a `/dev/serial/by-id/…` link.
    pub path: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `none`, `even` (the Modbus default) or `odd`.
    #[serde(default = "default_parity")]
    pub parity: String,
    /// 1 or 2 (the Modbus rule: 2 when there is no parity).
    pub stop_bits: Option<u8>,
}

fn default_baud() -> u32 {
    9600
}
fn default_parity() -> String {
    "even".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    /// Unique; becomes the source name of its readings (letters, digits, '-', '_', '.').
    pub name: String,
    /// The register map file; a relative path is taken from the config file's folder.
    pub map: PathBuf,
    /// `rtu` or `tcp`.
    pub transport: String,
    /// For `rtu`: the `path` of a `[[modbus.bus]]`.
    pub bus: Option<PathBuf>,
    /// For `tcp`: `ip:port` (502 is the Modbus port).
    pub address: Option<String>,
    /// The unit (slave) id: 1 to 247 on a bus; on TCP usually 1 or 255. Default 1.
    #[serde(default)]
    pub unit: Option<u8>,
    /// How often the device is polled. Default 10 s.
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// How long to wait for each answer. Default: 500 ms, or half the poll interval when that is
    /// shorter, so a device polled every second needs no `timeout` of its own.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// How many times an unanswered request is sent again within one poll.
    #[serde(default = "default_retries")]
    pub retries: u8,
    /// Points of its map sent at once when their value changes, besides those the map marks
    /// `priority` (docs/modbus.md).
    #[serde(default)]
    pub priority: Vec<String>,
}

/// The unit id of a device whose config names none.
pub const DEFAULT_UNIT: u8 = 1;
/// The poll interval of a device whose config names none.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// The answer timeout of a device whose config names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the longest answer to one of `map`'s reads takes on `bus`'s line (its frame on the
/// wire, rounded up to the millisecond), with that read's registers (or bits) and the baud.
fn longest_answer(map: &RegisterMap, bus: &BusConfig) -> Option<(Duration, u16, u32)> {
    let timing = LineTiming::new(bus.baud, bus.parity, bus.stop_bits).ok()?;
    ReadPlan::for_map(map, &CostModel::RTU)
        .requests()
        .iter()
        .filter_map(|r| {
            let request = RtuRequest::read(r.table(), r.start(), r.quantity()).ok()?;
            let on_wire = timing.frame_time(response_len(&request));
            let millis = u64::try_from(on_wire.as_micros().div_ceil(1000)).ok()?;
            Some((Duration::from_millis(millis), r.quantity(), bus.baud))
        })
        .max_by_key(|&(time, ..)| time)
}

fn default_timeout(poll_interval: Duration) -> Duration {
    DEFAULT_TIMEOUT.min(poll_interval / 2)
}
fn default_retries() -> u8 {
    1
}

/// The Modbus part of [`super::Config`].
#[derive(Debug, Clone, Default)]
pub struct ModbusConfig {
    pub buses: Vec<BusConfig>,
    pub devices: Vec<DeviceConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    pub path: PathBuf,
    pub baud: u32,
    pub parity: Parity,
    pub stop_bits: u8,
}

#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub name: String,
    pub transport: Transport,
    pub unit: u8,
    pub poll_interval: Duration,
    pub timeout: Duration,
    pub retries: u8,
    pub map_path: PathBuf,
    pub map: Arc<RegisterMap>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tcp(SocketAddr),
    /// Index into [`ModbusConfig::buses`].
    Rtu(usize),
}

/// Stage two for `[modbus]`; map files are read relative to `config_dir`, through `env`.
pub(super) fn compile(
    raw: RawModbus,
    config_dir: &Path,
    env: &dyn Environment,
    problem: &mut impl FnMut(&str, String),
) -> ModbusConfig {
    let mut buses: Vec<BusConfig> = Vec::new();
    for (i, bus) in raw.bus.into_iter().enumerate() {
        let key = |field: &str| format!("modbus.bus[{i}].{field}");
        if bus.path.as_os_str().is_empty() {
            problem(&key("path"), "must not be empty".into());
        }
        if buses.iter().any(|b| b.path == bus.path) {
            problem(
                &key("path"),
                format!("`{}` is listed twice", bus.path.display()),
            );
        }
        if !(1200..=115_200).contains(&bus.baud) {
            problem(
                &key("baud"),
                format!("{} is outside 1200..=115200", bus.baud),
            );
        }
        let parity = match bus.parity.as_str() {
            "none" => Parity::None,
            "even" => Parity::Even,
            "odd" => Parity::Odd,
            other => {
                problem(
                    &key("parity"),
                    format!("`{other}` is not `none`, `even` or `odd`"),
                );
                Parity::Even
            }
        };
        // Modbus over Serial Line v1.02 §2.5.1: 11 bits a character; no parity takes 2 stop bits.
        let stop_bits = bus
            .stop_bits
            .unwrap_or(if parity == Parity::None { 2 } else { 1 });
        if !(1..=2).contains(&stop_bits) {
            problem(&key("stop_bits"), "must be 1 or 2".into());
        }
        buses.push(BusConfig {
            path: bus.path,
            baud: bus.baud,
            parity,
            stop_bits,
        });
    }

    let mut names = HashSet::new();
    let mut units = HashSet::new();
    let mut devices: Vec<DeviceConfig> = Vec::new();
    for (i, device) in raw.device.into_iter().enumerate() {
        let key = |field: &str| format!("modbus.device[{i}].{field}");
        // Device names become source names in batches and path segments in the API.
        if let Err(why) = super::check_identifier(&device.name) {
            problem(&key("name"), why);
        } else if !names.insert(device.name.clone()) {
            problem(
                &key("name"),
                format!("`{}` is used by another device", device.name),
            );
        }
        let transport = match device.transport.as_str() {
            "tcp" => {
                if device.bus.is_some() {
                    problem(
                        &key("bus"),
                        "is for `rtu` devices; a `tcp` device has an `address`".into(),
                    );
                }
                match device.address.as_deref().map(str::parse::<SocketAddr>) {
                    Some(Ok(addr)) => Some(Transport::Tcp(addr)),
                    Some(Err(e)) => {
                        problem(
                            &key("address"),
                            format!(
                                "`{}` is not ip:port ({e})",
                                device.address.unwrap_or_default()
                            ),
                        );
                        None
                    }
                    None => {
                        problem(
                            &key("transport"),
                            "a `tcp` device needs an `address` (ip:port)".into(),
                        );
                        None
                    }
                }
            }
            "rtu" => {
                if device.address.is_some() {
                    problem(
                        &key("address"),
                        "is for `tcp` devices; an `rtu` device has a `bus`".into(),
                    );
                }
                match &device.bus {
                    Some(path) => match buses.iter().position(|b| &b.path == path) {
                        Some(bus) => Some(Transport::Rtu(bus)),
                        None => {
                            problem(
                                &key("bus"),
                                format!("no [[modbus.bus]] has path `{}`", path.display()),
                            );
                            None
                        }
                    },
                    None => {
                        problem(
                            &key("transport"),
                            "an `rtu` device needs a `bus` (the path of a [[modbus.bus]])".into(),
                        );
                        None
                    }
                }
            }
            other => {
                problem(
                    &key("transport"),
                    format!("`{other}` is neither `rtu` nor `tcp`"),
                );
                None
            }
        };
        // A problem a default causes says so: its key is not in the file, so the line is the
        // device's header, and the message names the default and its value.
        let unit = device.unit.unwrap_or(DEFAULT_UNIT);
        let unit_shown = if device.unit.is_some() {
            format!("unit {unit}")
        } else {
            format!("unit {unit} (the default: this device has no `unit`)")
        };
        match transport {
            Some(Transport::Rtu(bus)) => {
                // Modbus over Serial Line v1.02 §2.2: 0 is broadcast, 248–255 reserved.
                if !(1..=247).contains(&unit) {
                    problem(
                        &key("unit"),
                        format!("{unit} is outside 1..=247 on a serial bus"),
                    );
                } else if !units.insert((bus, unit)) {
                    problem(
                        &key("unit"),
                        format!(
                            "{unit_shown} is used twice on bus `{}`",
                            buses[bus].path.display()
                        ),
                    );
                }
            }
            Some(Transport::Tcp(addr))
                if devices
                    .iter()
                    .any(|d| d.transport == Transport::Tcp(addr) && d.unit == unit) =>
            {
                problem(
                    &key("unit"),
                    format!("{unit_shown} at {addr} is polled twice"),
                );
            }
            Some(Transport::Tcp(_)) | None => {}
        }
        let poll_interval = device.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL);
        let timeout = device
            .timeout
            .unwrap_or_else(|| default_timeout(poll_interval));
        let poll_ok =
            (Duration::from_millis(100)..=Duration::from_secs(24 * 3600)).contains(&poll_interval);
        if !poll_ok {
            problem(
                &key("poll_interval"),
                "must be between 100ms and 24h".into(),
            );
        }
        // The default timeout is half a valid poll interval at most and 50 ms at least, so it
        // only leaves its range with a poll interval already refused above.
        let timeout_ok = match device.timeout {
            None => poll_ok,
            Some(_)
                if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&timeout) =>
            {
                problem(&key("timeout"), "must be between 10ms and 60s".into());
                false
            }
            Some(_) if timeout >= poll_interval => {
                let default = if device.poll_interval.is_none() {
                    format!(
                        " (the default, {})",
                        humantime::format_duration(DEFAULT_POLL_INTERVAL)
                    )
                } else {
                    String::new()
                };
                problem(
                    &key("timeout"),
                    format!("must be shorter than poll_interval{default}"),
                );
                false
            }
            Some(_) => true,
        };
        if device.retries > 5 {
            problem(&key("retries"), "must be between 0 and 5".into());
        }
        let map_path = config_dir.join(&device.map);
        let map = match env
            .read_file(&map_path)
            .map_err(|why| {
                super::ConfigErrors(vec![super::ConfigError::unreadable(&map_path, why)])
            })
            .and_then(|text| map::parse_map(&map_path, &text))
        {
            Ok(map) => Some(Arc::new(map)),
            Err(errors) => {
                let details: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                problem(
                    &key("map"),
                    format!("the map is invalid:\n    {}", details.join("\n    ")),
                );
                None
            }
        };
        if let (Some(Transport::Rtu(bus)), Some(map), true) = (&transport, &map, timeout_ok) {
            if let Some((answer, registers, baud)) = longest_answer(map, &buses[*bus]) {
                if timeout <= answer {
                    let (at, what) = match (device.timeout, device.poll_interval) {
                        (Some(_), _) => (
                            key("timeout"),
                            format!("{}", humantime::format_duration(timeout)),
                        ),
                        // The default follows poll_interval: that is the key to change.
                        (None, Some(_)) => (
                            key("poll_interval"),
                            format!(
                                "the default timeout, {} (half of poll_interval),",
                                humantime::format_duration(timeout)
                            ),
                        ),
                        (None, None) => (
                            key("timeout"),
                            format!(
                                "the default timeout, {},",
                                humantime::format_duration(timeout)
                            ),
                        ),
                    };
                    problem(
                        &at,
                        format!(
                            "{what} is not longer than the {} the device's longest answer ({registers} registers) takes on the line at {baud} baud: no poll could succeed; set a longer `timeout` (and a `poll_interval` above it)",
                            humantime::format_duration(answer)
                        ),
                    );
                }
            }
        }
        let map = match map {
            Some(map) if !device.priority.is_empty() => match map.with_priority(&device.priority) {
                Ok(map) => Some(Arc::new(map)),
                Err(unknown) => {
                    problem(&key("priority"), unknown.join("; "));
                    None
                }
            },
            map => map,
        };
        if let (Some(transport), Some(map)) = (transport, map) {
            devices.push(DeviceConfig {
                name: device.name,
                transport,
                unit,
                poll_interval,
                timeout,
                retries: device.retries,
                map_path,
                map,
            });
        }
    }
    ModbusConfig { buses, devices }
}
