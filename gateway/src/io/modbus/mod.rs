//! Modbus adapters: carry out the plans the IO-free core ([`crate::modbus`]) makes, and report
//! what happened as data.
//!
//! - [`tcp`]: one Modbus TCP device over tokio-modbus's client ([`ModbusDevice`]);
//! - [`rtu`]: one RS-485 bus, its devices polled one transaction at a time with Outpost's own
//!   RTU framing ([`outpost_core::modbus::rtu`]);
//! - device health (counters, back-off, the offline flag) is the IO-free [`DeviceHealth`] of
//!   `outpost_core::modbus::health`, fed each poll's [`PollOutcome::summary`];
//! - [`poller`]: the tasks, what they tell telemetry (`/api/v1/modbus`), staggering and writes;
//!
//! Errors keep two layers apart:
//! - the device **answered** with an exception ([`ExceptionCode`]): the link is fine, only that
//!   request's points are missing; the other requests of the poll still run;
//! - we **could not talk** to it ([`TransportError`]: timeout, socket error, a reply that does not
//!   match the request): the rest of the poll is not sent ([`TransportError::NotSent`]) and the
//!   next poll starts afresh. After a timeout a late reply could still arrive and be taken for
//!   the answer to the next request, so TCP reconnects.

use std::io;
use std::time::Duration;

use outpost_core::modbus::health::{Answer, Failure, PollSummary, RequestSummary};
use outpost_core::modbus::rtu::RtuError;
use tokio_modbus::{ExceptionCode, Response};

use outpost_core::modbus::map::RegisterMap;
use outpost_core::modbus::plan::ReadRequest;
use outpost_core::modbus::value::{DecodeError, EncodeError, Raw, Value};

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
    /// A reply of the right kind carrying more values than were asked for (a short one is left
    /// to the decoder, which names the points it cannot serve).
    #[error("reply carries {got} values for a request of {asked}")]
    Oversized { asked: u16, got: usize },
    /// An RTU response that arrived damaged or did not match the request: CRC, unit, function,
    /// length (the line works, but the frame is unusable).
    #[error("bad frame: {0}")]
    Frame(#[source] RtuError),
    /// An earlier request of the same poll lost the connection; this one was not sent.
    #[error("not sent: the connection was lost earlier in this poll")]
    NotSent,
}

impl TransportError {
    /// What device health counts this as.
    #[must_use]
    pub fn failure(&self) -> Failure {
        match self {
            TransportError::Timeout(_) => Failure::Timeout,
            TransportError::NotSent => Failure::NotSent,
            TransportError::Frame(RtuError::CrcMismatch { .. }) => Failure::Crc,
            TransportError::Frame(_) | TransportError::Oversized { .. } => Failure::Frame,
            TransportError::Connect(_)
            | TransportError::Io(_)
            | TransportError::Protocol(_)
            | TransportError::UnexpectedResponse(_) => Failure::Transport,
        }
    }

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
    /// Why each earlier attempt failed, when the request was sent again (the device's
    /// `retries`); `result` is the last attempt's.
    pub earlier_failures: Vec<TransportError>,
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

/// The readings of the points `request` serves, from its answer `raw`.
pub(crate) fn point_readings<'a>(
    map: &'a RegisterMap,
    request: &'a ReadRequest,
    raw: Raw<'a>,
) -> impl Iterator<Item = PointReading> + 'a {
    request
        .served()
        .iter()
        .zip(request.readings(map.points(), raw))
        .map(|(served, (point, value))| PointReading {
            point: served.point,
            name: point.name.clone(),
            value,
        })
}

/// Everything one poll produced: readings for the points whose request was answered, and the
/// fate of every planned request, in plan order.
#[derive(Debug, Default)]
pub struct PollOutcome {
    pub readings: Vec<PointReading>,
    pub requests: Vec<RequestOutcome>,
    /// RTU: bytes on the line during the poll that belonged to no expected response.
    pub garbage_bytes: u64,
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

    /// The poll as device health counts it.
    #[must_use]
    pub fn summary(&self) -> PollSummary {
        PollSummary {
            requests: self
                .requests
                .iter()
                .map(|r| RequestSummary {
                    response_time: r.response_time,
                    earlier_failures: r
                        .earlier_failures
                        .iter()
                        .map(TransportError::failure)
                        .collect(),
                    answer: match &r.result {
                        Ok(Ok(())) => Answer::Data,
                        Ok(Err(code)) => Answer::Exception(u8::from(*code)),
                        Err(e) => Answer::Failed(e.failure()),
                    },
                })
                .collect(),
            garbage_bytes: self.garbage_bytes,
            decode_errors: self.readings.iter().filter(|r| r.value.is_err()).count() as u64,
        }
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

pub mod poller;
pub mod rtu;
pub mod tcp;

pub use outpost_core::modbus::health::{DeviceHealth, HealthPolicy, LinkState, PollDecision};
pub use tcp::{CONNECT_TIMEOUT, ModbusDevice};
