//! One RS-485 Modbus RTU bus: a task that owns the serial port and polls the bus's devices one
//! transaction at a time, with the 3.5-character silence between frames.
//!
//! Design: the framing is Outpost's own IO-free codec ([`outpost_core::modbus::rtu`]): tokio-modbus's
//! RTU client drops bytes on a CRC error without saying so and has no notion of the inter-frame
//! silence, and a field technician needs both counted. This module is the thin adapter: it
//! writes a request frame, feeds what comes back to a [`ResponseDecoder`] until it completes or
//! the response timeout passes, then waits until the line has been quiet for t3.5 before the next
//! frame. Every byte that is not part of an expected response is counted as garbage.
//!
//! Scheduling: the device due first is polled next (ties go to the earlier in the config); first
//! polls are staggered over each device's interval, so the bus does not burst. A device that
//! stops answering backs off ([`super::DeviceHealth`]), so its timeouts take less and less of
//! the bus from the others. Writes queued for any device on the bus run between two polls.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::ExceptionCode;
use tokio_serial::{SerialPortBuilderExt as _, SerialStream};
use tokio_util::sync::CancellationToken;

use super::poller::{self, DeviceRuntime, WriteCommand, WriteFailure};
use super::{PollOutcome, RequestOutcome, TransportError, WriteError, point_readings};
use crate::io::store::writer::StoreCommand;
use crate::io::wall_clock::{self, WallClock};
use outpost_core::config::modbus::BusConfig;
use outpost_core::modbus::rtu::{
    self as codec, LineTiming, Parity, Progress, ResponseDecoder, RtuError, RtuRequest, RtuResponse,
};
use outpost_core::modbus::value::{self, Value};
use outpost_proto::Millis;

/// The longest a stream of stray bytes may delay the next request: a babbling device must not
/// stall the bus.
const MAX_SETTLE: Duration = Duration::from_millis(500);

/// What one transaction on the line came to.
#[derive(Debug)]
pub struct Transaction {
    pub result: Result<RtuResponse, TransportError>,
    /// From the end of the request frame to the last byte of the response.
    pub response_time: Option<Duration>,
    /// Bytes on the line that belonged to no expected response.
    pub garbage_bytes: u64,
}

/// The serial port of one bus, opened on demand, and the line's timing.
pub struct RtuLine {
    path: std::path::PathBuf,
    bus: BusConfig,
    timing: LineTiming,
    port: Option<SerialStream>,
}

impl std::fmt::Debug for RtuLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtuLine")
            .field("path", &self.path)
            .field("open", &self.port.is_some())
            .finish_non_exhaustive()
    }
}

impl RtuLine {
    /// A line not yet opened; the first transaction opens it.
    pub fn new(bus: &BusConfig) -> Result<RtuLine, codec::LineTimingError> {
        Ok(RtuLine {
            path: bus.path.clone(),
            timing: LineTiming::new(bus.baud, bus.parity, bus.stop_bits)?,
            bus: bus.clone(),
            port: None,
        })
    }

    #[must_use]
    pub fn timing(&self) -> &LineTiming {
        &self.timing
    }

    fn open(&mut self) -> Result<&mut SerialStream, TransportError> {
        if self.port.is_none() {
            let parity = match self.bus.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            };
            let stop_bits = if self.bus.stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            };
            let port = tokio_serial::new(path_str(&self.path), self.bus.baud)
                .data_bits(tokio_serial::DataBits::Eight)
                .parity(parity)
                .stop_bits(stop_bits)
                .open_native_async()
                .map_err(|e| TransportError::Connect(std::io::Error::other(e)))?;
            self.port = Some(port);
        }
        Ok(self.port.as_mut().expect("opened above"))
    }

    /// Sends `request` to `unit` and reads its response within `timeout` (counted from the end
    /// of the request on the wire), then waits out the inter-frame silence. A broadcast (unit 0)
    /// waits for no response.
    pub async fn transact(
        &mut self,
        unit: u8,
        request: &RtuRequest,
        timeout: Duration,
    ) -> Transaction {
        let frame = codec::encode_request(unit, request);
        let on_wire = self.timing.frame_time(frame.len());
        let t3_5 = self.timing.t3_5();
        let mut garbage = 0u64;
        let port = match self.open() {
            Ok(port) => port,
            Err(e) => {
                return Transaction {
                    result: Err(e),
                    response_time: None,
                    garbage_bytes: 0,
                };
            }
        };
        // Whatever arrived since the last transaction settled is nobody's answer.
        garbage += drain(port).await;
        if let Err(e) = port.write_all(&frame).await {
            self.port = None;
            return Transaction {
                result: Err(TransportError::Io(e)),
                response_time: None,
                garbage_bytes: garbage,
            };
        }
        let sent = Instant::now() + on_wire;
        let deadline = sent + timeout;
        let mut decoder = ResponseDecoder::new(unit, request);
        let mut buf = [0u8; codec::MAX_ADU_LEN];
        let mut last_byte_at = None;
        let result = loop {
            if !decoder.expects_response() {
                tokio::time::sleep_until(sent).await;
                break Ok(RtuResponse::Written);
            }
            match tokio::time::timeout_at(deadline, port.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => {
                    let error = decoder
                        .on_silence()
                        .unwrap_or(RtuError::NoResponse { garbage: 0 });
                    break Err(error);
                }
                Ok(Ok(n)) => {
                    last_byte_at = Some(Instant::now());
                    if let Progress::Complete(result) = decoder.push(&buf[..n]) {
                        break result;
                    }
                }
                Ok(Err(e)) => {
                    self.port = None;
                    return Transaction {
                        result: Err(TransportError::Io(e)),
                        response_time: None,
                        garbage_bytes: garbage + decoder.garbage_bytes() as u64,
                    };
                }
            }
        };
        garbage += (decoder.garbage_bytes() + decoder.trailing_bytes()) as u64;
        // The rest of a damaged or foreign frame may still be coming: the next request waits for
        // t3.5 of quiet.
        garbage += settle(port, t3_5).await;
        let response_time = last_byte_at
            .filter(|_| result.is_ok())
            .map(|at| at.saturating_duration_since(sent));
        Transaction {
            result: result.map_err(|e| match e {
                RtuError::NoResponse { .. } => TransportError::Timeout(timeout),
                other => TransportError::Frame(other),
            }),
            response_time,
            garbage_bytes: garbage,
        }
    }
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Reads what is already waiting, without waiting.
async fn drain(port: &mut SerialStream) -> u64 {
    let mut buf = [0u8; 256];
    let mut count = 0;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, port.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        count += n as u64;
    }
    count
}

/// Waits until the line has been quiet for `silence`; returns the bytes that came meanwhile.
async fn settle(port: &mut SerialStream, silence: Duration) -> u64 {
    let give_up = Instant::now() + MAX_SETTLE;
    let mut buf = [0u8; 256];
    let mut count = 0;
    loop {
        match tokio::time::timeout(silence, port.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                count += n as u64;
                if Instant::now() >= give_up {
                    return count;
                }
            }
            _ => return count,
        }
    }
}

/// Polls every request of `device`'s plan on `line`, each sent again up to `retries` times after
/// a failure on the line.
pub async fn poll(line: &mut RtuLine, device: &DeviceRuntime) -> PollOutcome {
    let (unit, timeout, retries) = (
        device.config.unit,
        device.config.timeout,
        device.config.retries,
    );
    let mut outcome = PollOutcome::default();
    let mut link_lost = false;
    for request in device.plan.requests() {
        let mut record = RequestOutcome {
            function: request.function(),
            start: request.start(),
            quantity: request.quantity(),
            response_time: None,
            earlier_failures: Vec::new(),
            result: Err(TransportError::NotSent),
        };
        if link_lost {
            outcome.requests.push(record);
            continue;
        }
        let rtu_request = match RtuRequest::try_from(request) {
            Ok(r) => r,
            Err(e) => unreachable!("a plan's request is within the protocol limits: {e}"),
        };
        let transaction = loop {
            let transaction = line.transact(unit, &rtu_request, timeout).await;
            outcome.garbage_bytes += transaction.garbage_bytes;
            match transaction.result {
                Err(e)
                    if record.earlier_failures.len() < usize::from(retries)
                        && !matches!(e, TransportError::Connect(_)) =>
                {
                    record.earlier_failures.push(e);
                }
                _ => break transaction,
            }
        };
        record.response_time = transaction.response_time;
        record.result = match transaction.result {
            Ok(RtuResponse::Exception(code)) => Ok(Err(ExceptionCode::new(code))),
            Ok(response) => {
                if let Some(raw) = response.raw() {
                    outcome
                        .readings
                        .extend(point_readings(device.map(), request, raw));
                }
                Ok(Ok(()))
            }
            Err(e) => {
                // A silent or unreachable device: the rest of its poll would only cost bus time.
                link_lost = true;
                Err(e)
            }
        };
        outcome.requests.push(record);
    }
    outcome
}

/// Writes `value` to a writable point of `device`; refused before any IO when the point is not
/// writable or cannot hold the value.
pub async fn write(
    line: &mut RtuLine,
    device: &DeviceRuntime,
    point: &str,
    value: &Value,
) -> Result<(), WriteFailure> {
    let point = device.point(point)?;
    let encoded = value::encode(point, value).map_err(WriteError::from)?;
    let request = RtuRequest::write(point.address, &encoded)?;
    match line
        .transact(device.config.unit, &request, device.config.timeout)
        .await
        .result
    {
        Ok(RtuResponse::Exception(code)) => Err(WriteFailure::Exception(ExceptionCode::new(code))),
        Ok(_) => Ok(()),
        Err(e) => Err(WriteFailure::Write(WriteError::Transport(e))),
    }
}

/// Polls the devices of one bus until `shutdown`; serves their writes between polls.
pub async fn run_bus(
    bus: BusConfig,
    mut devices: Vec<DeviceRuntime>,
    store_tx: mpsc::Sender<StoreCommand>,
    mut writes: mpsc::Receiver<WriteCommand>,
    clock: WallClock,
    shutdown: CancellationToken,
) {
    let mut line = match RtuLine::new(&bus) {
        Ok(line) => line,
        Err(e) => {
            tracing::error!(message = "Modbus bus has no valid line settings.", bus = %bus.path.display(), error = %e);
            return;
        }
    };
    let label = format!("rtu {}", bus.path.display());
    for device in &devices {
        device.set_transport_label(label.clone());
    }
    let start = Instant::now();
    let count = devices.len();
    let mut due: Vec<Instant> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| start + poller::stagger(d.config.poll_interval, i, count))
        .collect();
    loop {
        let Some((next, at)) = due
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|&(i, at)| (at, i))
        else {
            return;
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(write) = writes.recv() => {
                let result = match devices.iter().find(|d| d.config.name == write.device) {
                    Some(device) => self::write(&mut line, device, &write.point, &write.value).await,
                    None => Err(WriteFailure::UnknownDevice(write.device.clone())),
                };
                let _ = write.reply.send(result);
                continue;
            }
            () = tokio::time::sleep_until(at) => {}
        }
        let device = &mut devices[next];
        // The readings' time: trusted wall time, or held with its monotonic time.
        let stamp = clock.now();
        let started = Millis(u64::try_from(stamp.wall_ms).unwrap_or(0));
        let polled_at = Instant::now();
        let outcome = poll(&mut line, device).await;
        let (readings, delay, priority) =
            device.finish_poll(started, wall_clock::unix_millis(), &outcome);
        due[next] = polled_at + delay;
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
