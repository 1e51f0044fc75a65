//! The tokio-modbus adapter: polls one Modbus TCP device by its [`ReadPlan`] and writes its
//! writable points.
//!
//! Design: [`ModbusDevice`] owns one client connection and nothing else. It carries out the plan
//! the IO-free core made ([`crate::modbus`]) and reports what happened as data, a
//! [`PollOutcome`]; it never retries, sleeps or decides when to poll next. That decision is
//! [`DeviceHealth::handle_poll_result`], which does no IO and takes the time as an argument, so
//! back-off and the offline flag are tested without a network or a clock.
//!
//! Errors keep tokio-modbus's two layers apart:
//! - the device **answered** with an exception ([`ExceptionCode`]): the link is fine, only that
//!   request's points are missing; the other requests of the poll still run;
//! - we **could not talk** to it ([`TransportError`]: timeout, socket error, a reply that does not
//!   match the request): the connection is dropped, the rest of the poll is not sent
//!   ([`TransportError::NotSent`]) and the next poll reconnects. After a timeout a late reply
//!   could still arrive and be taken for the answer to the next request, so a fresh connection
//!   is the only safe continuation.
//!
//! Not here yet: wiring into the topology and store, RTU bus scheduling (one transaction at a
//! time, 3.5-character silence) and staggering.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use outpost_proto::Millis;
use serde::{Serialize, Serializer};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

use crate::modbus::map::{Point, RegisterMap, Table};
use crate::modbus::plan::{ReadPlan, ReadRequest};
use crate::modbus::value::{self, DecodeError, EncodeError, Encoded, Raw, Value};

/// Why a request got no answer from the device (the outer layer of tokio-modbus's `Result`).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Io(#[source] io::Error),
    /// The reply did not match the request (transaction id, unit or function code).
    #[error("reply does not match the request: {0}")]
    Protocol(#[source] tokio_modbus::ProtocolError),
    /// The reply was a valid frame of the wrong kind for the request.
    #[error("unexpected reply {0:?}")]
    UnexpectedResponse(Box<Response>),
    /// An earlier request of the same poll lost the connection; this one was not sent.
    #[error("not sent: the connection was lost earlier in this poll")]
    NotSent,
}

impl TransportError {
    fn from_modbus(error: tokio_modbus::Error) -> TransportError {
        match error {
            tokio_modbus::Error::Transport(e) => TransportError::Io(e),
            tokio_modbus::Error::Protocol(e) => TransportError::Protocol(e),
        }
    }
}

/// What became of one planned request.
#[derive(Debug)]
pub struct RequestOutcome {
    /// Read function code, 0x01–0x04.
    pub function: u8,
    pub start: u16,
    pub quantity: u16,
    /// How long the device took to answer (data or exception), including a reconnect if the
    /// request needed one; `None` without an answer.
    pub response_time: Option<Duration>,
    /// Two layers, as tokio-modbus: the outer error is the link, the inner one the device.
    pub result: Result<Result<(), ExceptionCode>, TransportError>,
}

/// One point's reading from a poll.
#[derive(Debug, Clone, PartialEq)]
pub struct PointReading {
    /// The point's index in the map's points.
    pub point: usize,
    pub name: String,
    pub value: Result<Value, DecodeError>,
}

/// Everything one poll produced: readings for the points whose request was answered, and the
/// fate of every planned request, in plan order.
#[derive(Debug, Default)]
pub struct PollOutcome {
    pub readings: Vec<PointReading>,
    pub requests: Vec<RequestOutcome>,
}

impl PollOutcome {
    /// Whether any request reached the device and got an answer (data or exception).
    #[must_use]
    pub fn answered(&self) -> bool {
        self.requests.iter().any(|r| r.result.is_ok())
    }

    /// Whether the link failed during the poll (a timeout or other transport error).
    #[must_use]
    pub fn link_failed(&self) -> bool {
        self.requests.iter().any(|r| r.result.is_err())
    }

    /// Whether every request returned data and every point decoded.
    #[must_use]
    pub fn complete(&self) -> bool {
        self.requests.iter().all(|r| matches!(r.result, Ok(Ok(()))))
            && self.readings.iter().all(|r| r.value.is_ok())
    }
}

/// Why a write did not reach the device.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Refused before any IO: not writable, wrong type, out of range.
    #[error(transparent)]
    Refused(#[from] EncodeError),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// How long [`ModbusDevice::connect`] waits for the TCP handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One Modbus TCP device (a unit id behind an address) and its client connection.
pub struct ModbusDevice {
    addr: SocketAddr,
    unit: u8,
    /// `None` until connected, and again after a transport error: the next call reconnects.
    context: Option<Context>,
}

impl fmt::Debug for ModbusDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModbusDevice")
            .field("addr", &self.addr)
            .field("unit", &self.unit)
            .field("connected", &self.context.is_some())
            .finish()
    }
}

impl ModbusDevice {
    /// A device not yet connected; the first poll or write connects.
    #[must_use]
    pub fn new(addr: SocketAddr, unit: u8) -> ModbusDevice {
        ModbusDevice {
            addr,
            unit,
            context: None,
        }
    }

    /// Connects now, so that a wrong address shows at start-up; gives up after
    /// [`CONNECT_TIMEOUT`] (a host that drops SYNs would otherwise hold the caller for the
    /// kernel's minutes-long connect timeout). Polls and writes reconnect within their own
    /// timeout.
    pub async fn connect(addr: SocketAddr, unit: u8) -> io::Result<ModbusDevice> {
        let connect = tokio_modbus::client::tcp::connect_slave(addr, Slave(unit));
        let context = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "Modbus TCP connect timed out")
            })??;
        Ok(ModbusDevice {
            addr,
            unit,
            context: Some(context),
        })
    }

    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    #[must_use]
    pub fn unit(&self) -> u8 {
        self.unit
    }

    /// Whether a connection is open (false after a transport error until the next call).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.context.is_some()
    }

    /// Sends every request of `plan` (made from `map`), each answered within `timeout`, and
    /// decodes the answers. Never fails as a whole: what went wrong is in the outcome.
    pub async fn poll(
        &mut self,
        map: &RegisterMap,
        plan: &ReadPlan,
        timeout: Duration,
    ) -> PollOutcome {
        let mut outcome = PollOutcome::default();
        // Set by the first transport error: the rest of the poll is not sent (see module docs).
        let mut link_lost = false;
        for request in plan.requests() {
            if link_lost {
                outcome.requests.push(RequestOutcome {
                    function: request.function(),
                    start: request.start(),
                    quantity: request.quantity(),
                    response_time: None,
                    result: Err(TransportError::NotSent),
                });
                continue;
            }
            let started = Instant::now();
            let result = self.read(request, timeout).await;
            let response_time = result.is_ok().then(|| started.elapsed());
            let result = match result {
                Ok(Ok(data)) => {
                    let raw = match &data {
                        Data::Bits(bits) => Raw::Bits(bits),
                        Data::Words(words) => Raw::Registers(words),
                    };
                    let points = map.points();
                    outcome.readings.extend(
                        request
                            .served()
                            .iter()
                            .zip(request.readings(points, raw))
                            .map(|(served, (point, value))| PointReading {
                                point: served.point,
                                name: point.name.clone(),
                                value,
                            }),
                    );
                    Ok(Ok(()))
                }
                Ok(Err(code)) => Ok(Err(code)),
                Err(e) => {
                    link_lost = true;
                    Err(e)
                }
            };
            outcome.requests.push(RequestOutcome {
                function: request.function(),
                start: request.start(),
                quantity: request.quantity(),
                response_time,
                result,
            });
        }
        outcome
    }

    /// Writes `value` to `point` (a point of this device's map). A point not declared writable,
    /// or a value it cannot hold, is refused before any IO.
    pub async fn write(
        &mut self,
        point: &Point,
        value: &Value,
        timeout: Duration,
    ) -> Result<Result<(), ExceptionCode>, WriteError> {
        let encoded = value::encode(point, value)?;
        let request = match &encoded {
            Encoded::Bit(bit) => Request::WriteSingleCoil(point.address, *bit),
            Encoded::Registers(words) if encoded.function() == 0x06 => {
                Request::WriteSingleRegister(point.address, words[0])
            }
            Encoded::Registers(words) => {
                Request::WriteMultipleRegisters(point.address, words.clone().into())
            }
        };
        Ok(self.call(request, timeout).await.map(|r| r.map(drop))?)
    }

    /// One read, its answer cut to the requested quantity.
    async fn read(
        &mut self,
        request: &ReadRequest,
        timeout: Duration,
    ) -> Result<Result<Data, ExceptionCode>, TransportError> {
        let (start, quantity) = (request.start(), request.quantity());
        let call = match request.table() {
            Table::Coil => Request::ReadCoils(start, quantity),
            Table::DiscreteInput => Request::ReadDiscreteInputs(start, quantity),
            Table::Holding => Request::ReadHoldingRegisters(start, quantity),
            Table::Input => Request::ReadInputRegisters(start, quantity),
        };
        let response = match self.call(call, timeout).await? {
            Ok(response) => response,
            Err(code) => return Ok(Err(code)),
        };
        // Bits come padded to whole bytes; a short answer is left short for the decoder to name
        // the points it cannot serve.
        let data = match (request.table(), response) {
            (Table::Coil, Response::ReadCoils(mut bits))
            | (Table::DiscreteInput, Response::ReadDiscreteInputs(mut bits)) => {
                bits.truncate(usize::from(quantity));
                Data::Bits(bits)
            }
            (Table::Holding, Response::ReadHoldingRegisters(words))
            | (Table::Input, Response::ReadInputRegisters(words)) => Data::Words(words),
            (_, other) => {
                self.context = None;
                return Err(TransportError::UnexpectedResponse(Box::new(other)));
            }
        };
        Ok(Ok(data))
    }

    /// One transaction within `timeout`, connecting first if needed (the connect has its own
    /// `timeout`). A transport error drops the connection.
    async fn call(
        &mut self,
        request: Request<'_>,
        timeout: Duration,
    ) -> Result<Result<Response, ExceptionCode>, TransportError> {
        let context = match &mut self.context {
            Some(context) => context,
            None => {
                let connect = tokio_modbus::client::tcp::connect_slave(self.addr, Slave(self.unit));
                let context = match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok(context)) => context,
                    Ok(Err(e)) => return Err(TransportError::Connect(e)),
                    Err(_) => return Err(TransportError::Timeout(timeout)),
                };
                self.context.insert(context)
            }
        };
        match tokio::time::timeout(timeout, context.call(request)).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => {
                self.context = None;
                Err(TransportError::from_modbus(e))
            }
            Err(_) => {
                self.context = None;
                Err(TransportError::Timeout(timeout))
            }
        }
    }
}

enum Data {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

/// When to poll and when to give up: the device's poll interval, the longest back-off, and how
/// many polls in a row must fail before the device is reported offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    pub interval: Duration,
    /// The back-off doubles per failed poll up to this.
    pub max_backoff: Duration,
    /// Consecutive polls without any answer before the device is offline (at least 1).
    pub offline_after: u32,
}

impl HealthPolicy {
    #[must_use]
    pub fn new(interval: Duration) -> HealthPolicy {
        HealthPolicy {
            interval,
            max_backoff: Duration::from_secs(300).max(interval),
            offline_after: 3,
        }
    }
}

/// Whether the device answers, as the status page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Not polled yet.
    Unknown,
    Online,
    Offline,
}

/// What to do after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollDecision {
    pub next_poll_at: Millis,
    pub offline: bool,
}

/// Per-device health: counters for the status page and `/api/v1/modbus`, and the back-off
/// decision.
///
/// Design: owns counters and the consecutive-failure streak; never reads a clock or does IO.
/// The adapter feeds it every [`PollOutcome`] with the time and sleeps until the returned
/// [`PollDecision::next_poll_at`]. A failed poll is one where the link failed (a timeout or
/// other transport error); exceptions mean the device is there and answering, so they are
/// counted but never back off or take it offline. After `n` failed polls in a row the next poll
/// is `interval × 2^n` away, capped at `max_backoff`; the first answer resets the streak.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceHealth {
    #[serde(skip)]
    policy: HealthPolicy,
    state: LinkState,
    polls: u64,
    timeouts: u64,
    transport_errors: u64,
    /// By exception code (0x02 illegal data address, …).
    exceptions: BTreeMap<u8, u64>,
    decode_errors: u64,
    #[serde(serialize_with = "millis_opt")]
    last_response_at: Option<Millis>,
    /// The slowest answer of the last poll that got any, in milliseconds.
    last_response_ms: Option<u64>,
    /// The last poll in which every request returned data and every point decoded.
    #[serde(serialize_with = "millis_opt")]
    last_good_poll_at: Option<Millis>,
    consecutive_failures: u32,
    #[serde(serialize_with = "millis_opt")]
    next_poll_at: Option<Millis>,
}

fn millis_opt<S: Serializer>(t: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    t.map(Millis::as_u64).serialize(s)
}

impl DeviceHealth {
    #[must_use]
    pub fn new(policy: HealthPolicy) -> DeviceHealth {
        DeviceHealth {
            policy,
            state: LinkState::Unknown,
            polls: 0,
            timeouts: 0,
            transport_errors: 0,
            exceptions: BTreeMap::new(),
            decode_errors: 0,
            last_response_at: None,
            last_response_ms: None,
            last_good_poll_at: None,
            consecutive_failures: 0,
            next_poll_at: None,
        }
    }

    /// Counts a poll finished at `now` and decides when to poll next and whether the device is
    /// offline.
    pub fn handle_poll_result(&mut self, now: Millis, outcome: &PollOutcome) -> PollDecision {
        self.polls += 1;
        for request in &outcome.requests {
            match &request.result {
                Ok(Ok(())) => {}
                Ok(Err(code)) => *self.exceptions.entry(u8::from(*code)).or_default() += 1,
                Err(TransportError::Timeout(_)) => self.timeouts += 1,
                Err(TransportError::NotSent) => {}
                Err(_) => self.transport_errors += 1,
            }
        }
        self.decode_errors += outcome.readings.iter().filter(|r| r.value.is_err()).count() as u64;
        let slowest = outcome
            .requests
            .iter()
            .filter_map(|r| r.response_time)
            .max();
        if let Some(slowest) = slowest {
            self.last_response_at = Some(now);
            self.last_response_ms = Some(u64::try_from(slowest.as_millis()).unwrap_or(u64::MAX));
        }
        if outcome.complete() && !outcome.requests.is_empty() {
            self.last_good_poll_at = Some(now);
        }
        let delay = if outcome.link_failed() {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.consecutive_failures >= self.policy.offline_after.max(1) {
                self.state = LinkState::Offline;
            }
            self.backoff()
        } else {
            self.consecutive_failures = 0;
            self.state = LinkState::Online;
            self.policy.interval
        };
        let next_poll_at = now + delay;
        self.next_poll_at = Some(next_poll_at);
        PollDecision {
            next_poll_at,
            offline: self.state == LinkState::Offline,
        }
    }

    /// `interval × 2^failures`, capped.
    fn backoff(&self) -> Duration {
        let factor = 1u32
            .checked_shl(self.consecutive_failures)
            .unwrap_or(u32::MAX);
        self.policy
            .interval
            .checked_mul(factor)
            .map_or(self.policy.max_backoff, |d| d.min(self.policy.max_backoff))
    }

    #[must_use]
    pub fn state(&self) -> LinkState {
        self.state
    }

    #[must_use]
    pub fn polls(&self) -> u64 {
        self.polls
    }

    #[must_use]
    pub fn timeouts(&self) -> u64 {
        self.timeouts
    }

    #[must_use]
    pub fn transport_errors(&self) -> u64 {
        self.transport_errors
    }

    /// Exceptions answered, by code.
    #[must_use]
    pub fn exceptions(&self) -> &BTreeMap<u8, u64> {
        &self.exceptions
    }

    #[must_use]
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    #[must_use]
    pub fn last_response_at(&self) -> Option<Millis> {
        self.last_response_at
    }

    #[must_use]
    pub fn last_good_poll_at(&self) -> Option<Millis> {
        self.last_good_poll_at
    }

    #[must_use]
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn request(result: Result<Result<(), ExceptionCode>, TransportError>) -> RequestOutcome {
        let response_time = result.is_ok().then_some(Duration::from_millis(7));
        RequestOutcome {
            function: 0x03,
            start: 0,
            quantity: 2,
            response_time,
            result,
        }
    }

    fn outcome(results: Vec<Result<Result<(), ExceptionCode>, TransportError>>) -> PollOutcome {
        PollOutcome {
            readings: Vec::new(),
            requests: results.into_iter().map(request).collect(),
        }
    }

    fn timed_out() -> PollOutcome {
        outcome(vec![
            Err(TransportError::Timeout(SECOND)),
            Err(TransportError::NotSent),
        ])
    }

    #[test]
    fn a_device_is_unknown_until_its_first_poll_and_online_after_an_answer() {
        let mut health = DeviceHealth::new(HealthPolicy::new(SECOND));
        assert_eq!(health.state(), LinkState::Unknown);
        let decision = health.handle_poll_result(Millis(500), &outcome(vec![Ok(Ok(()))]));
        assert_eq!(
            decision,
            PollDecision {
                next_poll_at: Millis(1500),
                offline: false
            }
        );
        assert_eq!(health.state(), LinkState::Online);
        assert_eq!(health.last_good_poll_at(), Some(Millis(500)));
        assert_eq!(health.last_response_at(), Some(Millis(500)));
    }

    #[test]
    fn timeouts_back_off_exponentially_up_to_the_cap_and_take_the_device_offline() {
        let policy = HealthPolicy {
            interval: SECOND,
            max_backoff: Duration::from_secs(6),
            offline_after: 3,
        };
        let mut health = DeviceHealth::new(policy);
        let mut now = Millis::ZERO;
        let mut delays = Vec::new();
        let mut offline = Vec::new();
        for _ in 0..5 {
            let decision = health.handle_poll_result(now, &timed_out());
            delays.push(decision.next_poll_at - now);
            offline.push(decision.offline);
            now = decision.next_poll_at;
        }
        assert_eq!(delays, [2000, 4000, 6000, 6000, 6000]);
        assert_eq!(offline, [false, false, true, true, true]);
        assert_eq!(
            health.timeouts(),
            5,
            "the requests not sent are not timeouts"
        );
        assert_eq!(health.transport_errors(), 0);
        assert_eq!(health.last_response_at(), None);
    }

    #[test]
    fn one_answer_brings_an_offline_device_back_to_its_interval() {
        let mut health = DeviceHealth::new(HealthPolicy {
            offline_after: 1,
            ..HealthPolicy::new(SECOND)
        });
        assert!(health.handle_poll_result(Millis(0), &timed_out()).offline);
        let decision = health.handle_poll_result(Millis(2000), &outcome(vec![Ok(Ok(()))]));
        assert_eq!(decision.next_poll_at, Millis(3000));
        assert!(!decision.offline);
        assert_eq!(health.consecutive_failures(), 0);
    }

    #[test]
    fn exceptions_are_counted_by_code_but_never_back_off_nor_make_a_poll_good() {
        let mut health = DeviceHealth::new(HealthPolicy::new(SECOND));
        let decision = health.handle_poll_result(
            Millis(0),
            &outcome(vec![Ok(Ok(())), Ok(Err(ExceptionCode::IllegalDataAddress))]),
        );
        assert_eq!(decision.next_poll_at, Millis(1000));
        assert_eq!(health.state(), LinkState::Online);
        assert_eq!(health.exceptions(), &BTreeMap::from([(0x02, 1)]));
        assert_eq!(health.last_good_poll_at(), None);
        assert_eq!(health.last_response_at(), Some(Millis(0)));
    }

    #[test]
    fn health_serializes_times_as_milliseconds_and_exceptions_by_code() {
        let mut health = DeviceHealth::new(HealthPolicy::new(SECOND));
        health.handle_poll_result(
            Millis(42),
            &outcome(vec![Ok(Err(ExceptionCode::ServerDeviceBusy))]),
        );
        let json = serde_json::to_value(&health).expect("serializes");
        assert_eq!(json["state"], "online");
        assert_eq!(json["last_response_at"], 42);
        assert_eq!(json["last_response_ms"], 7);
        assert_eq!(json["exceptions"]["6"], 1);
        assert_eq!(json["last_good_poll_at"], serde_json::Value::Null);
        assert_eq!(json["next_poll_at"], 1042);
    }
}
