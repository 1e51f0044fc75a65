//! One Modbus TCP device over tokio-modbus's client.
//!
//! Design: [`ModbusDevice`] owns one client connection and nothing else. It carries out the plan
//! the IO-free core made and reports a [`PollOutcome`]; it never sleeps or decides when to poll
//! next (that is [`super::DeviceHealth`]). A transport error drops the connection; the next call
//! reconnects.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_modbus::client::{Client, Context};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

use super::{PollOutcome, RequestOutcome, TransportError, WriteError, point_readings};
use outpost_core::modbus::map::{Point, RegisterMap, Table};
use outpost_core::modbus::plan::{ReadPlan, ReadRequest};
use outpost_core::modbus::value::{self, Encoded, Raw, Value};

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

    /// Sends every request of `plan` (made from `map`), each answered within `timeout` or sent
    /// again up to `retries` times, and decodes the answers. Never fails as a whole: what went
    /// wrong is in the outcome.
    pub async fn poll(
        &mut self,
        map: &RegisterMap,
        plan: &ReadPlan,
        timeout: Duration,
        retries: u8,
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
                    earlier_failures: Vec::new(),
                    result: Err(TransportError::NotSent),
                });
                continue;
            }
            let mut earlier_failures = Vec::new();
            let (result, response_time) = loop {
                let started = Instant::now();
                let result = self.read(request, timeout).await;
                let response_time = result.is_ok().then(|| started.elapsed());
                match result {
                    Err(e @ TransportError::Timeout(_))
                        if earlier_failures.len() < usize::from(retries) =>
                    {
                        earlier_failures.push(e);
                    }
                    result => break (result, response_time),
                }
            };
            let result = match result {
                Ok(Ok(data)) => {
                    let raw = match &data {
                        Data::Bits(bits) => Raw::Bits(bits),
                        Data::Words(words) => Raw::Registers(words),
                    };
                    outcome.readings.extend(point_readings(map, request, raw));
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
                earlier_failures,
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
                // More than the padding: the reply is to some other request (a stale reply, a
                // confused bridge), so none of it is trusted.
                if bits.len() > usize::from(quantity).div_ceil(8) * 8 {
                    self.context = None;
                    return Err(TransportError::Oversized {
                        asked: quantity,
                        got: bits.len(),
                    });
                }
                bits.truncate(usize::from(quantity));
                Data::Bits(bits)
            }
            (Table::Holding, Response::ReadHoldingRegisters(words))
            | (Table::Input, Response::ReadInputRegisters(words)) => {
                if words.len() > usize::from(quantity) {
                    self.context = None;
                    return Err(TransportError::Oversized {
                        asked: quantity,
                        got: words.len(),
                    });
                }
                Data::Words(words)
            }
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
