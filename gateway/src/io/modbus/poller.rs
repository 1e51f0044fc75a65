//! The Modbus pollers: one task per TCP device, one per RTU bus ([`super::rtu`]), and what they
//! share: the per-device state ([`DeviceRuntime`]), what each poll tells telemetry (the device
//! list `/api/v1/modbus` reads), the write handle, and the start offsets that stagger polls.
//!
//! ```text
//! config ─► DeviceRuntime (map, plan, health) ─┬─ run_tcp_device (one task per TCP device)
//!                                             └─ rtu::run_bus (one task per RS-485 line)
//! each poll: PollOutcome ─► DeviceRuntime::finish_poll ─► StoreCommand::DeviceReadings ─► writer
//!                                                      │   (priority: a priority point changed)
//!                                                      └─► telemetry: Event::Polled
//! ModbusWriter::write(device, point, value) ─► the device's task, between two polls
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use outpost_proto::Millis;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::tcp::ModbusDevice;
use super::{PollOutcome, TransportError, WriteError};
use crate::io::store::SeriesReading;
use crate::io::store::writer::StoreCommand;
use crate::io::telemetry::TelemetryHub;
use crate::io::wall_clock::{self, WallClock};
use outpost_core::config::modbus::{DeviceConfig, Transport};
use outpost_core::modbus::health::{DeviceHealth, HealthPolicy, LinkState};
use outpost_core::modbus::map::{Point, RegisterMap};
use outpost_core::modbus::plan::{CostModel, ReadPlan};
use outpost_core::modbus::priority::PriorityWatch;
use outpost_core::modbus::value::{self, Value};
use outpost_core::telemetry::{DeviceStatus, Event, PointValue, Polled};

/// Writes queued to one device (or bus) before callers wait.
const WRITE_QUEUE: usize = 16;

/// A device's state between polls: its config, plan and health, and where its status goes.
#[derive(Debug)]
pub struct DeviceRuntime {
    pub config: DeviceConfig,
    pub plan: ReadPlan,
    pub health: DeviceHealth,
    /// The last values of its `priority` points.
    priority: PriorityWatch,
    /// Index of this device in telemetry's device list.
    slot: usize,
    /// Decimal points that have read as a float (a 64-bit raw past the decimal's range):
    /// logged once each.
    float_fallbacks: HashSet<usize>,
    telemetry: TelemetryHub,
}

impl DeviceRuntime {
    /// Plans the device's reads under `cost` and adds it to telemetry.
    #[must_use]
    pub fn new(config: DeviceConfig, cost: &CostModel, telemetry: &TelemetryHub) -> DeviceRuntime {
        let plan = ReadPlan::for_map(&config.map, cost);
        let health = DeviceHealth::new(HealthPolicy::new(config.poll_interval));
        let info = config.map.device();
        let model = match (&info.manufacturer, &info.model) {
            (Some(m), Some(n)) => Some(format!("{m} {n}")),
            (None, Some(n)) => Some(n.clone()),
            (Some(m), None) => Some(m.clone()),
            (None, None) => None,
        };
        let transport = match &config.transport {
            Transport::Tcp(addr) => format!("tcp {addr}"),
            Transport::Rtu(_) => "rtu".to_owned(),
        };
        let status = DeviceStatus {
            name: config.name.clone(),
            transport,
            unit: config.unit,
            model,
            map: config.map_path.display().to_string(),
            poll_interval_ms: millis(config.poll_interval),
            requests_per_poll: plan.requests().len(),
            readings: 0,
            last_error: None,
            last_error_at: None,
            health: health.clone(),
            values: BTreeMap::new(),
            writable: config
                .map
                .points()
                .iter()
                .filter(|p| p.writable)
                .map(|p| p.name.clone())
                .collect(),
        };
        // Devices are added one by one at start, before any task runs: the index is its own.
        telemetry.record(Event::DeviceAdded(Box::new(status)));
        let slot = telemetry.with(|t| t.devices().len()) - 1;
        DeviceRuntime {
            priority: PriorityWatch::new(&config.map),
            config,
            plan,
            health,
            slot,
            float_fallbacks: HashSet::new(),
            telemetry: telemetry.clone(),
        }
    }

    /// Names the transport on the status page (an RTU bus is only known by path at spawn).
    pub fn set_transport_label(&self, label: String) {
        self.telemetry.record(Event::DeviceTransport {
            index: self.slot,
            label,
        });
    }

    #[must_use]
    pub fn map(&self) -> &RegisterMap {
        &self.config.map
    }

    /// A point of the device's map, by name.
    pub fn point(&self, name: &str) -> Result<&Point, WriteFailure> {
        self.config
            .map
            .point(name)
            .ok_or_else(|| WriteFailure::UnknownPoint {
                device: self.config.name.clone(),
                point: name.to_owned(),
            })
    }

    /// Counts a poll that started at `started` (its readings' timestamp) and ended at `now`;
    /// returns the readings for the store, when to poll next, and whether a `priority` point
    /// changed (the readings are then sent at once).
    pub fn finish_poll(
        &mut self,
        started: Millis,
        now: Millis,
        outcome: &PollOutcome,
    ) -> (Vec<SeriesReading>, Duration, bool) {
        let was = self.health.state();
        let decision = self.health.handle_poll_result(now, &outcome.summary());
        let map = Arc::clone(&self.config.map);
        let mut readings = Vec::with_capacity(outcome.readings.len());
        let mut values = Vec::with_capacity(outcome.readings.len());
        let mut last_error = None;
        for reading in &outcome.readings {
            match &reading.value {
                Ok(value) => {
                    if let (Value::Float(_), Some(point)) = (value, map.points().get(reading.point))
                    {
                        if value::decimal_scaling(point).is_some()
                            && self.float_fallbacks.insert(reading.point)
                        {
                            tracing::warn!(
                                message = "Modbus reading past the range of its decimal; sent as a float (logged once per point).",
                                device = %self.config.name, point = %point.name,
                            );
                        }
                    }
                    if let Some(v) = to_batch_value(value) {
                        readings.push(SeriesReading {
                            channel: reading.name.clone(),
                            value: v,
                        });
                    }
                    let unit = map.points().get(reading.point).and_then(|p| p.unit.clone());
                    values.push((reading.name.clone(), to_json(value), unit));
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        for request in &outcome.requests {
            match &request.result {
                Ok(Ok(())) | Err(TransportError::NotSent) => {}
                Ok(Err(code)) => {
                    last_error = Some(format!(
                        "exception {code:?} to function 0x{:02x} at {} (+{})",
                        request.function, request.start, request.quantity
                    ));
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        let priority = self.priority.handle_poll(
            &map,
            outcome
                .readings
                .iter()
                .filter_map(|r| r.value.as_ref().ok().map(|v| (r.point, v))),
        );
        let name = &self.config.name;
        match (was, self.health.state()) {
            (LinkState::Offline, LinkState::Online) => {
                tracing::info!(message = "Modbus device answers again.", device = %name);
            }
            (before, LinkState::Offline) if before != LinkState::Offline => {
                tracing::warn!(message = "Modbus device offline; polling it with back-off.", device = %name,
                    error = last_error.as_deref().unwrap_or("no answer"));
            }
            _ => {
                if let Some(error) = &last_error {
                    tracing::debug!(message = "Modbus poll error.", device = %name, %error);
                }
            }
        }
        self.telemetry.record(Event::Polled(Box::new(Polled {
            index: self.slot,
            readings: readings.len() as u64,
            health: self.health.clone(),
            values: values
                .into_iter()
                .map(|(name, value, unit)| {
                    let at = started.as_u64();
                    (name, PointValue { value, unit, at })
                })
                .collect(),
            error: last_error.map(|e| (e, now.as_u64())),
        })));
        (
            readings,
            Duration::from_millis(decision.next_poll_at - now),
            priority,
        )
    }
}

/// A Modbus value as the batch carries it. Strings (serial numbers, model names) are not time
/// series: they show on the status page only.
fn to_batch_value(value: &Value) -> Option<outpost_batch::Value> {
    Some(match value {
        Value::Bool(b) => outpost_batch::Value::decimal(i64::from(*b), 0),
        Value::Int(i) => outpost_batch::Value::decimal(*i, 0),
        Value::Uint(u) => match i64::try_from(*u) {
            Ok(i) => outpost_batch::Value::decimal(i, 0),
            // Above 2^63 only a float can carry it; it keeps 53 bits.
            Err(_) => outpost_batch::Value::Float(*u as f64),
        },
        Value::Decimal { mantissa, exp } => outpost_batch::Value::decimal(*mantissa, *exp),
        Value::Float(f) => outpost_batch::Value::Float(*f),
        Value::Text(_) => return None,
    })
}

fn to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Uint(u) => (*u).into(),
        Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        // The nearest f64 of the exact decimal, which JSON prints as the decimal's own digits
        // (`44.9`) up to 15 significant digits: every 16- and 32-bit register at any catalogue
        // scale. The batch carries every decimal exactly.
        Value::Decimal { mantissa, exp } => {
            let nearest = value::decimal_to_f64(i128::from(*mantissa), i32::from(*exp));
            serde_json::Number::from_f64(nearest).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Text(t) => t.clone().into(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// When device `index` of `count` sharing a schedule first polls: spread evenly over one
/// interval, so a site's devices do not all poll in the same instant.
#[must_use]
pub fn stagger(interval: Duration, index: usize, count: usize) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    interval / count * index
}

/// A write waiting for its device's task.
#[derive(Debug)]
pub struct WriteCommand {
    pub device: String,
    pub point: String,
    pub value: Value,
    pub reply: oneshot::Sender<Result<(), WriteFailure>>,
}

/// Why a write was not done.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailure {
    #[error("no Modbus device is named `{0}`")]
    UnknownDevice(String),
    #[error("device `{device}` has no point `{point}`")]
    UnknownPoint { device: String, point: String },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("the device refused the write: exception {0:?}")]
    Exception(tokio_modbus::ExceptionCode),
    #[error("the poller is not running")]
    Stopped,
    #[error(transparent)]
    Request(#[from] outpost_core::modbus::rtu::RequestError),
}

/// Writes a point of a device through the task that polls it, so a write never interleaves
/// with a poll on the same connection or bus.
#[derive(Debug, Clone, Default)]
pub struct ModbusWriter {
    queues: HashMap<String, mpsc::Sender<WriteCommand>>,
}

impl ModbusWriter {
    /// Only points declared `writable` are written, after type and range checks.
    pub async fn write(&self, device: &str, point: &str, value: Value) -> Result<(), WriteFailure> {
        let queue = self
            .queues
            .get(device)
            .ok_or_else(|| WriteFailure::UnknownDevice(device.to_owned()))?;
        let (reply, answer) = oneshot::channel();
        queue
            .send(WriteCommand {
                device: device.to_owned(),
                point: point.to_owned(),
                value,
                reply,
            })
            .await
            .map_err(|_| WriteFailure::Stopped)?;
        answer.await.map_err(|_| WriteFailure::Stopped)?
    }

    /// A queue for `devices`, served by one task.
    pub fn add_queue(
        &mut self,
        devices: impl IntoIterator<Item = String>,
    ) -> mpsc::Receiver<WriteCommand> {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        for device in devices {
            self.queues.insert(device, tx.clone());
        }
        rx
    }
}

/// Polls one TCP device until `shutdown`, first after `first_poll_in`; serves its writes between
/// polls.
pub async fn run_tcp_device(
    mut device: DeviceRuntime,
    store_tx: mpsc::Sender<StoreCommand>,
    mut writes: mpsc::Receiver<WriteCommand>,
    first_poll_in: Duration,
    clock: WallClock,
    shutdown: CancellationToken,
) {
    let Transport::Tcp(addr) = device.config.transport else {
        return;
    };
    let mut client = ModbusDevice::new(addr, device.config.unit);
    let mut next_poll = tokio::time::Instant::now() + first_poll_in;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(write) = writes.recv() => {
                let result = write_point(&mut client, &device, &write.point, &write.value).await;
                let _ = write.reply.send(result);
                continue;
            }
            () = tokio::time::sleep_until(next_poll) => {}
        }
        // The readings' time: trusted wall time, or held with its monotonic time.
        let stamp = clock.now();
        let started = Millis(u64::try_from(stamp.wall_ms).unwrap_or(0));
        let polled_at = tokio::time::Instant::now();
        let outcome = client
            .poll(
                device.map(),
                &device.plan,
                device.config.timeout,
                device.config.retries,
            )
            .await;
        let (readings, delay, priority) =
            device.finish_poll(started, wall_clock::unix_millis(), &outcome);
        // From the poll's start, so a device keeps its rate however long its polls take.
        next_poll = polled_at + delay;
        if !readings.is_empty() {
            let command = StoreCommand::DeviceReadings {
                source: device.config.name.clone(),
                ts_ms: stamp.wall_ms,
                basis: stamp.basis,
                readings,
                priority,
            };
            if store_tx.send(command).await.is_err() {
                return;
            }
        }
    }
}

async fn write_point(
    client: &mut ModbusDevice,
    device: &DeviceRuntime,
    point: &str,
    value: &Value,
) -> Result<(), WriteFailure> {
    let point = device.point(point)?;
    match client.write(point, value, device.config.timeout).await? {
        Ok(()) => Ok(()),
        Err(code) => Err(WriteFailure::Exception(code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_core::modbus::map::parse_map;
    use outpost_core::modbus::value::{Raw, decode};

    /// Sealed bytes of a 60 s batch of 10 devices × 10 holding registers polled every second,
    /// each reading converted as the poller converts it (`convert`), the registers following a
    /// random walk (the same for every map).
    fn batch_bytes(
        map_extra: &str,
        convert: impl Fn(&Point, &[u16]) -> outpost_batch::Value,
    ) -> usize {
        let text: String = (0..10)
            .map(|i| {
                format!(
                    "[[point]]\nname = \"r{i}\"\ntable = \"holding\"\naddress = {i}\ntype = \"u16\"\n{map_extra}"
                )
            })
            .collect();
        let map = parse_map(std::path::Path::new("bench.toml"), &text).unwrap();
        let mut builder =
            outpost_batch::BatchBuilder::new(outpost_batch::GatewayId::new("gw").unwrap(), 1);
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut registers: Vec<[u16; 10]> = (0..10u16)
            .map(|d| std::array::from_fn(|i| 2300 + 37 * i as u16 + 11 * d))
            .collect();
        for second in 0..60i64 {
            for (d, regs) in registers.iter_mut().enumerate() {
                for (point, reg) in map.points().iter().zip(regs.iter_mut()) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *reg = reg.wrapping_add((x % 11) as u16).wrapping_sub(5);
                    builder
                        .push(
                            &format!("device-{d}"),
                            &point.name,
                            1_700_000_000_000 + second * 1000,
                            convert(point, &[*reg]),
                        )
                        .unwrap();
                }
            }
        }
        builder.seal(None).unwrap().len()
    }

    fn as_the_poller_does(point: &Point, words: &[u16]) -> outpost_batch::Value {
        to_batch_value(&decode(point, Raw::Registers(words)).unwrap()).unwrap()
    }

    #[test]
    fn registers_in_tenths_cost_the_bytes_of_the_same_registers_unscaled() {
        let unscaled = batch_bytes("", as_the_poller_does);
        let tenths = batch_bytes("scale = 0.1\n", as_the_poller_does);
        // What scaling in f64 cost: Gorilla floats of raw × 0.1.
        let floats = batch_bytes("scale = 0.1\n", |_, words| {
            outpost_batch::Value::Float(f64::from(words[0]) * 0.1)
        });
        eprintln!(
            "60 s batch, 10 devices × 10 u16 registers at 1 s: unscaled {unscaled} B, scale 0.1 as decimals {tenths} B, scale 0.1 as f64 {floats} B"
        );
        assert!(tenths <= unscaled + unscaled / 50, "{tenths} vs {unscaled}");
        assert!(floats > 2 * unscaled, "{floats} vs {unscaled}");
    }
}
