//! Modbus RTU framing: a request's ADU out, its one response ADU in, and the line timing around
//! them (Modbus over Serial Line v1.02 §2.5.1, Modbus Application Protocol v1.1b §6).
//!
//! Design: plain bytes in, plain values out. This module never touches a serial port, never reads
//! a clock and never retries. Outpost frames RTU itself rather than using tokio-modbus's RTU
//! client, which drops bytes on a CRC error with only a log line, cannot count stray bytes or
//! answers from the wrong unit, and knows nothing of the 3.5-character silence. The bus adapter
//! owns the port and the timers, and drives one transaction at a time:
//!
//! ```text
//! adu     = rtu::encode_request(unit, &request)
//! wait timing.t3_5() of line silence, then write adu
//! decoder = ResponseDecoder::new(unit, &request)
//! until the response timeout: read bytes; decoder.push(&bytes)
//!     NeedMore          -> keep reading
//!     Complete(result)  -> done: Ok(response), or Err(error) to count and log
//! on timeout: decoder.on_silence()  -> Some(error) (nothing, or a cut-short frame), or None
//! wait timing.t3_5() again before the next request
//! ```
//!
//! What the decoder accepts, in order, and why:
//! - **Garbage.** Bytes before the frame are examined one pair at a time. A byte equal to the
//!   expected unit id starts the frame. A byte that is a valid answering unit id (1..=247) and is
//!   followed by the expected function code, or its exception form, is another device answering
//!   (an address conflict, or a late reply to an earlier request): the decoder completes with
//!   [`RtuError::WrongUnit`]. Any other byte is skipped and counted in
//!   [`ResponseDecoder::garbage_bytes`]: RS-485 driver turnaround and a line that has just been
//!   connected both put stray bytes before a reply. When the byte after a candidate foreign unit
//!   id is our own unit id (which can also be the function code: unit 3 reading holding
//!   registers), the candidate is garbage and the frame ours. Once the frame has started nothing
//!   more is skipped.
//! - **Header.** The function code must be the request's, or it with the exception bit
//!   ([`RtuError::WrongFunction`] at once otherwise); a read's byte count must be the one its
//!   quantity implies ([`RtuError::ByteCountMismatch`]). Both are checked as they arrive, since a
//!   wrong one leaves the frame's length unknown.
//! - **Length.** Known exactly from there: 5 bytes for an exception, 5 plus the byte count for a
//!   read, 8 for a write's echo ([`response_len`]). Bytes after the frame are not examined; they
//!   are counted in [`ResponseDecoder::trailing_bytes`].
//! - **CRC**, then contents: a write's echo must repeat the request ([`RtuError::EchoMismatch`]).
//!
//! So a response is accepted only whole, from the unit asked, with a good CRC: a corrupted one is
//! reported as a CRC or header error (or, when its unit id is hit, as garbage and then a short
//! frame), never turned into a value. One corruption changes the length the CRC covers: a
//! function byte hit into its exception form makes a 5-byte frame, which then passes only if its
//! last two bytes happen to be the CRC of its first three (1 in 65,536).
//!
//! Broadcast: unit 0 addresses every device and none answers (Serial Line v1.02 §2.1, §2.2), and
//! only writes may be broadcast. A decoder for unit 0 never completes: every byte it receives is
//! garbage, and [`ResponseDecoder::on_silence`] returns `None`, the expected outcome. The adapter
//! waits a turnaround delay instead of a response timeout (§2.4.1: typically 100 to 200 ms).
//!
//! Not here: the inter-character t1.5 check, which needs a clock per byte; the adapter can cut a
//! read at [`LineTiming::t1_5`] gaps if its serial driver reports them. An adapter that echoes
//! its own transmission (some USB RS-485 dongles) must drop the echo before pushing.

use std::time::Duration;

use crc::{CRC_16_MODBUS, Crc};

use crate::modbus::map::{MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_REGISTERS, Table};
use crate::modbus::plan::ReadRequest;
use crate::modbus::value::{Encoded, Raw};

/// The longest RTU ADU: 256 bytes on RS-485, a 253-byte PDU plus unit id and CRC (Modbus
/// Application Protocol v1.1b §4.1). Every valid request and response fits.
pub const MAX_ADU_LEN: usize = 256;

/// The broadcast unit id, answered by no device (Serial Line v1.02 §2.2).
pub const BROADCAST: u8 = 0;

/// The most coils one write may carry: v1.1b §6.11 (0x0F Write Multiple Coils), quantity 1 to
/// 1968 (0x7B0).
pub const MAX_WRITE_BITS: u16 = 1968;

/// Unit ids a device may answer as: 0 is broadcast, 248..=255 reserved (Serial Line v1.02 §2.2).
const ANSWERING_UNITS: std::ops::RangeInclusive<u8> = 1..=247;

const EXCEPTION_BIT: u8 = 0x80;
/// Unit id, function, exception code, CRC ×2 (v1.1b §7).
const EXCEPTION_LEN: usize = 5;
/// Unit id, function, address or start ×2, value or quantity ×2, CRC ×2 (v1.1b §6.5, §6.6,
/// §6.11, §6.12).
const ECHO_LEN: usize = 8;
/// Unit id, function, byte count, CRC ×2 around a read's data (v1.1b §6.1–§6.4).
const READ_OVERHEAD: usize = 5;
/// Unit id, function, start ×2, quantity ×2, byte count, CRC ×2 around a multiple write's data.
const WRITE_MULTIPLE_OVERHEAD: usize = 9;
/// Write Single Coil's values for on and off; anything else is illegal (v1.1b §6.5).
const COIL_ON: u16 = 0xFF00;
const COIL_OFF: u16 = 0x0000;

/// CRC-16/MODBUS (Serial Line v1.02 §6.2.2), sent low byte first.
const CRC: Crc<u16> = Crc::<u16>::new(&CRC_16_MODBUS);

/// One request to one device, valid by construction: every quantity is inside its v1.1b limit
/// and no request runs past address 65535.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtuRequest {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Read {
        table: Table,
        start: u16,
        quantity: u16,
    },
    WriteCoil {
        address: u16,
        on: bool,
    },
    WriteRegister {
        address: u16,
        value: u16,
    },
    WriteCoils {
        start: u16,
        values: Vec<bool>,
    },
    WriteRegisters {
        start: u16,
        values: Vec<u16>,
    },
}

/// Why a request cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(
        "function {function:#04x} moves 1..={max} bits or registers per request, not {quantity} (Modbus v1.1b §6)"
    )]
    QuantityOutOfRange {
        function: u8,
        quantity: usize,
        max: u16,
    },
    #[error("{quantity} bits or registers from address {start} run past the last address, 65535")]
    PastLastAddress { start: u16, quantity: u16 },
}

impl RtuRequest {
    /// Read Coils, Discrete Inputs, Holding or Input Registers (0x01–0x04): 1..=2000 bits or
    /// 1..=125 registers (v1.1b §6.1–§6.4).
    pub fn read(table: Table, start: u16, quantity: u16) -> Result<RtuRequest, RequestError> {
        let max = if table.is_bits() {
            MAX_READ_BITS
        } else {
            MAX_READ_REGISTERS
        };
        let quantity = checked(table.read_function(), start, usize::from(quantity), max)?;
        Ok(RtuRequest {
            kind: Kind::Read {
                table,
                start,
                quantity,
            },
        })
    }

    /// Write Single Coil (0x05, v1.1b §6.5).
    #[must_use]
    pub fn write_coil(address: u16, on: bool) -> RtuRequest {
        RtuRequest {
            kind: Kind::WriteCoil { address, on },
        }
    }

    /// Write Single Register (0x06, v1.1b §6.6).
    #[must_use]
    pub fn write_register(address: u16, value: u16) -> RtuRequest {
        RtuRequest {
            kind: Kind::WriteRegister { address, value },
        }
    }

    /// Write Multiple Coils (0x0F, v1.1b §6.11): 1..=1968 coils from `start`.
    pub fn write_coils(start: u16, values: Vec<bool>) -> Result<RtuRequest, RequestError> {
        checked(0x0F, start, values.len(), MAX_WRITE_BITS)?;
        Ok(RtuRequest {
            kind: Kind::WriteCoils { start, values },
        })
    }

    /// Write Multiple Registers (0x10, v1.1b §6.12): 1..=123 registers from `start`.
    pub fn write_registers(start: u16, values: Vec<u16>) -> Result<RtuRequest, RequestError> {
        checked(0x10, start, values.len(), MAX_WRITE_REGISTERS)?;
        Ok(RtuRequest {
            kind: Kind::WriteRegisters { start, values },
        })
    }

    /// The write of an encoded point value at `address`, with the function
    /// [`Encoded::function`] names: 0x05 for a bit, 0x06 for one register, 0x10 for more.
    pub fn write(address: u16, encoded: &Encoded) -> Result<RtuRequest, RequestError> {
        match encoded {
            Encoded::Bit(on) => Ok(RtuRequest::write_coil(address, *on)),
            Encoded::Registers(words) if words.len() == 1 => {
                Ok(RtuRequest::write_register(address, words[0]))
            }
            Encoded::Registers(words) => RtuRequest::write_registers(address, words.clone()),
        }
    }

    /// The function code, 0x01–0x06, 0x0F or 0x10.
    #[must_use]
    pub fn function(&self) -> u8 {
        match &self.kind {
            Kind::Read { table, .. } => table.read_function(),
            Kind::WriteCoil { .. } => 0x05,
            Kind::WriteRegister { .. } => 0x06,
            Kind::WriteCoils { .. } => 0x0F,
            Kind::WriteRegisters { .. } => 0x10,
        }
    }

    /// The table read or written: coils for 0x05 and 0x0F, holding registers for 0x06 and 0x10.
    #[must_use]
    pub fn table(&self) -> Table {
        match &self.kind {
            Kind::Read { table, .. } => *table,
            Kind::WriteCoil { .. } | Kind::WriteCoils { .. } => Table::Coil,
            Kind::WriteRegister { .. } | Kind::WriteRegisters { .. } => Table::Holding,
        }
    }

    /// The first address read or written.
    #[must_use]
    pub fn start(&self) -> u16 {
        match &self.kind {
            Kind::Read { start, .. }
            | Kind::WriteCoils { start, .. }
            | Kind::WriteRegisters { start, .. } => *start,
            Kind::WriteCoil { address, .. } | Kind::WriteRegister { address, .. } => *address,
        }
    }

    /// Bits or registers read or written: 1 for a single write.
    #[must_use]
    pub fn quantity(&self) -> u16 {
        match &self.kind {
            Kind::Read { quantity, .. } => *quantity,
            Kind::WriteCoil { .. } | Kind::WriteRegister { .. } => 1,
            // Both lengths were checked against limits below 65536 when the request was built.
            Kind::WriteCoils { values, .. } => values.len() as u16,
            Kind::WriteRegisters { values, .. } => values.len() as u16,
        }
    }

    /// The four bytes after the function code, which a write's response repeats.
    fn header_fields(&self) -> [u8; 4] {
        let second = match &self.kind {
            Kind::WriteCoil { on: true, .. } => COIL_ON,
            Kind::WriteCoil { on: false, .. } => COIL_OFF,
            Kind::WriteRegister { value, .. } => *value,
            Kind::Read { .. } | Kind::WriteCoils { .. } | Kind::WriteRegisters { .. } => {
                self.quantity()
            }
        };
        let [a, b] = self.start().to_be_bytes();
        let [c, d] = second.to_be_bytes();
        [a, b, c, d]
    }
}

/// A planned read as a request; fails only for a point larger than the protocol allows, which
/// the planner passes through for the device to refuse.
impl TryFrom<&ReadRequest> for RtuRequest {
    type Error = RequestError;

    fn try_from(read: &ReadRequest) -> Result<RtuRequest, RequestError> {
        RtuRequest::read(read.table(), read.start(), read.quantity())
    }
}

fn checked(function: u8, start: u16, quantity: usize, max: u16) -> Result<u16, RequestError> {
    let out_of_range = RequestError::QuantityOutOfRange {
        function,
        quantity,
        max,
    };
    let Ok(q) = u16::try_from(quantity) else {
        return Err(out_of_range);
    };
    if q == 0 || q > max {
        return Err(out_of_range);
    }
    if u32::from(start) + u32::from(q) > 0x1_0000 {
        return Err(RequestError::PastLastAddress { start, quantity: q });
    }
    Ok(q)
}

/// The request's ADU: unit id, PDU, CRC low byte first. Unit 0 broadcasts, which only writes may
/// do (Serial Line v1.02 §2.1); 248..=255 are reserved, though some devices use them.
#[must_use]
pub fn encode_request(unit: u8, request: &RtuRequest) -> Vec<u8> {
    let mut adu = Vec::with_capacity(request_len(request));
    adu.push(unit);
    adu.push(request.function());
    adu.extend_from_slice(&request.header_fields());
    match &request.kind {
        Kind::Read { .. } | Kind::WriteCoil { .. } | Kind::WriteRegister { .. } => {}
        Kind::WriteCoils { values, .. } => {
            let packed = pack_bits(values);
            // At most 1968 coils: 246 bytes.
            adu.push(packed.len() as u8);
            adu.extend_from_slice(&packed);
        }
        Kind::WriteRegisters { values, .. } => {
            // At most 123 registers: 246 bytes.
            adu.push((2 * values.len()) as u8);
            adu.extend(values.iter().flat_map(|v| v.to_be_bytes()));
        }
    }
    adu.extend_from_slice(&CRC.checksum(&adu).to_le_bytes());
    adu
}

/// Bytes of the request's ADU, as [`encode_request`] builds it.
#[must_use]
pub fn request_len(request: &RtuRequest) -> usize {
    match &request.kind {
        Kind::Read { .. } | Kind::WriteCoil { .. } | Kind::WriteRegister { .. } => ECHO_LEN,
        Kind::WriteCoils { values, .. } => WRITE_MULTIPLE_OVERHEAD + values.len().div_ceil(8),
        Kind::WriteRegisters { values, .. } => WRITE_MULTIPLE_OVERHEAD + 2 * values.len(),
    }
}

/// Bytes of the request's normal (not exception) response ADU.
#[must_use]
pub fn response_len(request: &RtuRequest) -> usize {
    match data_len(request) {
        Some(data) => READ_OVERHEAD + usize::from(data),
        None => ECHO_LEN,
    }
}

/// A read's byte count: 1 per 8 bits, 2 per register (v1.1b §6.1–§6.4); `None` for a write.
fn data_len(request: &RtuRequest) -> Option<u8> {
    let Kind::Read {
        table, quantity, ..
    } = &request.kind
    else {
        return None;
    };
    let bytes = if table.is_bits() {
        quantity.div_ceil(8)
    } else {
        2 * quantity
    };
    // At most 2000 bits or 125 registers: 250 bytes.
    Some(bytes as u8)
}

/// Bits packed eight to a byte, the first in the least significant bit (v1.1b §6.1, §6.11).
fn pack_bits(bits: &[bool]) -> Vec<u8> {
    bits.chunks(8)
        .map(|byte| {
            byte.iter()
                .enumerate()
                .fold(0u8, |acc, (i, &on)| acc | (u8::from(on) << i))
        })
        .collect()
}

fn unpack_bits(bytes: &[u8], quantity: u16) -> Vec<bool> {
    (0..usize::from(quantity))
        .map(|i| (bytes[i / 8] >> (i % 8)) & 1 == 1)
        .collect()
}

/// A well-formed response from the unit asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtuResponse {
    /// A bit read's values, exactly the quantity asked for (the final byte's padding dropped).
    Bits(Vec<bool>),
    /// A register read's values, as the wire carries them: first byte in the high half.
    Registers(Vec<u16>),
    /// A write, its echo checked against the request.
    Written,
    /// The device refused: the exception code (v1.1b §7, see [`exception_name`]).
    Exception(u8),
}

impl RtuResponse {
    /// A read's values, for [`ReadRequest::readings`]; `None` for a write or an exception.
    #[must_use]
    pub fn raw(&self) -> Option<Raw<'_>> {
        match self {
            RtuResponse::Bits(bits) => Some(Raw::Bits(bits)),
            RtuResponse::Registers(words) => Some(Raw::Registers(words)),
            RtuResponse::Written | RtuResponse::Exception(_) => None,
        }
    }
}

/// The meaning of an exception code (v1.1b §7).
#[must_use]
pub fn exception_name(code: u8) -> &'static str {
    match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

/// Why no usable response came back. Every variant means the transaction failed on the line,
/// never that the device refused (that is [`RtuResponse::Exception`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtuError {
    #[error("no response ({garbage} stray bytes)")]
    NoResponse { garbage: usize },
    #[error("the line went quiet after {got} bytes of the response")]
    ShortFrame { got: usize },
    #[error("CRC mismatch: the frame carries {received:#06x}, its bytes give {computed:#06x}")]
    CrcMismatch { computed: u16, received: u16 },
    #[error("unit {got} answered; unit {expected} was asked")]
    WrongUnit { expected: u8, got: u8 },
    #[error("function {got:#04x} in the response to function {expected:#04x}")]
    WrongFunction { expected: u8, got: u8 },
    #[error("byte count {got} in the response; the request implies {expected}")]
    ByteCountMismatch { expected: u8, got: u8 },
    #[error("write echo {got:04x?} differs from the request's {expected:04x?} (address, value)")]
    EchoMismatch { expected: [u16; 2], got: [u16; 2] },
}

/// What a push of received bytes led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The frame is not complete yet: keep reading until the response timeout.
    NeedMore,
    /// The transaction is over, with a response or an error; further bytes are not examined.
    Complete(Result<RtuResponse, RtuError>),
}

/// What a normal response to the request holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Bits { quantity: u16, byte_count: u8 },
    Registers { byte_count: u8 },
    Echo { fields: [u8; 4] },
}

/// Design: decodes the one response to one outstanding request from bytes pushed as they
/// arrive, in chunks of any size, with the same result however they are cut. It owns the bytes
/// of the frame so far and the garbage and trailing counts; it never reads a clock, so the end of
/// a frame cut short is told to it ([`ResponseDecoder::on_silence`]). The module docs give the
/// acceptance rules.
#[derive(Debug, Clone)]
pub struct ResponseDecoder {
    unit: u8,
    function: u8,
    expect: Expect,
    /// The frame from its unit id on; empty until the frame starts.
    frame: Vec<u8>,
    /// A leading byte that is not our unit id, kept until the next byte tells whether it is
    /// garbage or another unit's id.
    undecided: Option<u8>,
    garbage: usize,
    trailing: usize,
    outcome: Option<Result<RtuResponse, RtuError>>,
}

impl ResponseDecoder {
    /// A decoder for the response of `unit` to `request`.
    #[must_use]
    pub fn new(unit: u8, request: &RtuRequest) -> ResponseDecoder {
        let expect = match (&request.kind, data_len(request)) {
            (
                Kind::Read {
                    table, quantity, ..
                },
                Some(byte_count),
            ) if table.is_bits() => Expect::Bits {
                quantity: *quantity,
                byte_count,
            },
            (_, Some(byte_count)) => Expect::Registers { byte_count },
            (_, None) => Expect::Echo {
                fields: request.header_fields(),
            },
        };
        ResponseDecoder {
            unit,
            function: request.function(),
            expect,
            frame: Vec::with_capacity(response_len(request)),
            undecided: None,
            garbage: 0,
            trailing: 0,
            outcome: None,
        }
    }

    /// Whether any response is due: false for a broadcast.
    #[must_use]
    pub fn expects_response(&self) -> bool {
        self.unit != BROADCAST
    }

    /// Feeds received bytes. Once complete, returns the same result again and counts any further
    /// bytes as trailing.
    pub fn push(&mut self, bytes: &[u8]) -> Progress {
        for (i, &byte) in bytes.iter().enumerate() {
            if self.outcome.is_some() {
                self.trailing += bytes.len() - i;
                break;
            }
            self.outcome = self.accept(byte);
        }
        match &self.outcome {
            Some(result) => Progress::Complete(result.clone()),
            None => Progress::NeedMore,
        }
    }

    /// The line went quiet (the adapter's response timeout passed) with the frame incomplete:
    /// [`RtuError::NoResponse`] if it never started, [`RtuError::ShortFrame`] if it did. `None`
    /// once complete, and for a broadcast, whose silence is the expected outcome.
    pub fn on_silence(&mut self) -> Option<RtuError> {
        if self.outcome.is_some() || !self.expects_response() {
            return None;
        }
        if self.undecided.take().is_some() {
            self.garbage += 1;
        }
        let error = if self.frame.is_empty() {
            RtuError::NoResponse {
                garbage: self.garbage,
            }
        } else {
            RtuError::ShortFrame {
                got: self.frame.len(),
            }
        };
        self.outcome = Some(Err(error.clone()));
        Some(error)
    }

    /// Bytes skipped before the frame started (all bytes, for a broadcast).
    #[must_use]
    pub fn garbage_bytes(&self) -> usize {
        self.garbage
    }

    /// Bytes received after the transaction completed, not examined.
    #[must_use]
    pub fn trailing_bytes(&self) -> usize {
        self.trailing
    }

    fn accept(&mut self, byte: u8) -> Option<Result<RtuResponse, RtuError>> {
        if !self.expects_response() {
            self.garbage += 1;
            return None;
        }
        if self.frame.is_empty() {
            return self.look_for_start(byte);
        }
        self.frame.push(byte);
        self.check_frame()
    }

    /// The garbage rule of the module docs.
    fn look_for_start(&mut self, byte: u8) -> Option<Result<RtuResponse, RtuError>> {
        let Some(previous) = self.undecided.take() else {
            if byte == self.unit {
                self.frame.push(byte);
            } else {
                self.undecided = Some(byte);
            }
            return None;
        };
        if byte == self.unit {
            // Ours wins a tie: `previous` may be another unit's id, but this may be our frame.
            self.garbage += 1;
            self.frame.push(byte);
            return None;
        }
        if ANSWERING_UNITS.contains(&previous) && self.is_our_function(byte) {
            return Some(Err(RtuError::WrongUnit {
                expected: self.unit,
                got: previous,
            }));
        }
        self.garbage += 1;
        self.undecided = Some(byte);
        None
    }

    fn is_our_function(&self, byte: u8) -> bool {
        byte == self.function || byte == self.function | EXCEPTION_BIT
    }

    fn check_frame(&self) -> Option<Result<RtuResponse, RtuError>> {
        let frame = &self.frame;
        let is_exception = frame[1] == self.function | EXCEPTION_BIT;
        if frame.len() == 2 && !self.is_our_function(frame[1]) {
            return Some(Err(RtuError::WrongFunction {
                expected: self.function,
                got: frame[1],
            }));
        }
        let expected_len = match self.expect {
            _ if is_exception => EXCEPTION_LEN,
            Expect::Echo { .. } => ECHO_LEN,
            Expect::Bits { byte_count, .. } | Expect::Registers { byte_count } => {
                let &got = frame.get(2)?;
                if got != byte_count {
                    return Some(Err(RtuError::ByteCountMismatch {
                        expected: byte_count,
                        got,
                    }));
                }
                READ_OVERHEAD + usize::from(byte_count)
            }
        };
        (frame.len() == expected_len).then(|| self.decode_whole(is_exception))
    }

    /// The frame is complete and its header checked: CRC, then contents.
    fn decode_whole(&self, is_exception: bool) -> Result<RtuResponse, RtuError> {
        let (body, crc) = self.frame.split_at(self.frame.len() - 2);
        let computed = CRC.checksum(body);
        let received = u16::from_le_bytes([crc[0], crc[1]]);
        if computed != received {
            return Err(RtuError::CrcMismatch { computed, received });
        }
        if is_exception {
            return Ok(RtuResponse::Exception(body[2]));
        }
        match &self.expect {
            Expect::Bits { quantity, .. } => {
                Ok(RtuResponse::Bits(unpack_bits(&body[3..], *quantity)))
            }
            Expect::Registers { .. } => Ok(RtuResponse::Registers(
                body[3..]
                    .chunks_exact(2)
                    .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                    .collect(),
            )),
            Expect::Echo { fields } => {
                let got = [&body[2..4], &body[4..6]];
                if got == [&fields[..2], &fields[2..]] {
                    Ok(RtuResponse::Written)
                } else {
                    let pair = |b: [&[u8]; 2]| {
                        [
                            u16::from_be_bytes([b[0][0], b[0][1]]),
                            u16::from_be_bytes([b[1][0], b[1][1]]),
                        ]
                    };
                    Err(RtuError::EchoMismatch {
                        expected: pair([&fields[..2], &fields[2..]]),
                        got: pair(got),
                    })
                }
            }
        }
    }
}

/// Parity of a serial character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// Why a line setting has no timing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineTimingError {
    #[error("a baud rate of 0 sends nothing")]
    ZeroBaud,
    #[error("{0} stop bits; a serial character has 1 or 2")]
    StopBits(u8),
}

/// Design: the durations of one RTU line setting (Serial Line v1.02 §2.5.1), for the adapter's
/// silences and for benchmarks' theoretical minima. Times are rounded up to the nanosecond, so a
/// silence waited for is never short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTiming {
    baud: u32,
    char_bits: u32,
}

/// Above this baud rate t1.5 and t3.5 are fixed, so that a fast line does not ask for timer
/// resolution a device lacks (Serial Line v1.02 §2.5.1.1).
const FIXED_TIMERS_ABOVE_BAUD: u32 = 19_200;
const FIXED_T1_5: Duration = Duration::from_micros(750);
const FIXED_T3_5: Duration = Duration::from_micros(1_750);

impl LineTiming {
    /// Always 8 data bits, as RTU requires (§2.5.1); the standard 8E1, and the common 8O1, 8N2
    /// and (non-compliant but widespread) 8N1.
    pub fn new(baud: u32, parity: Parity, stop_bits: u8) -> Result<LineTiming, LineTimingError> {
        if baud == 0 {
            return Err(LineTimingError::ZeroBaud);
        }
        if !(1..=2).contains(&stop_bits) {
            return Err(LineTimingError::StopBits(stop_bits));
        }
        let parity_bits = u32::from(parity != Parity::None);
        Ok(LineTiming {
            baud,
            char_bits: 1 + 8 + parity_bits + u32::from(stop_bits),
        })
    }

    #[must_use]
    pub fn baud(&self) -> u32 {
        self.baud
    }

    /// Bits per character on the line: start, 8 data, parity if any, stop bits.
    #[must_use]
    pub fn char_bits(&self) -> u32 {
        self.char_bits
    }

    /// One character's time on the line.
    #[must_use]
    pub fn char_time(&self) -> Duration {
        self.characters(1, 1)
    }

    /// The longest silence allowed inside a frame: 1.5 character times, 750 µs above 19,200 baud.
    #[must_use]
    pub fn t1_5(&self) -> Duration {
        if self.baud > FIXED_TIMERS_ABOVE_BAUD {
            FIXED_T1_5
        } else {
            self.characters(3, 2)
        }
    }

    /// The silence that ends a frame and must precede the next: 3.5 character times, 1.75 ms
    /// above 19,200 baud.
    #[must_use]
    pub fn t3_5(&self) -> Duration {
        if self.baud > FIXED_TIMERS_ABOVE_BAUD {
            FIXED_T3_5
        } else {
            self.characters(7, 2)
        }
    }

    /// Time to send a frame of `bytes` back to back.
    #[must_use]
    pub fn frame_time(&self, bytes: usize) -> Duration {
        self.characters(bytes as u128, 1)
    }

    /// The least one transaction can take: the request frame, a t3.5 silence before the reply,
    /// the reply frame and a t3.5 silence before the next request. The device's own processing
    /// time comes on top.
    #[must_use]
    pub fn transaction_min(&self, request_bytes: usize, response_bytes: usize) -> Duration {
        self.frame_time(request_bytes) + self.frame_time(response_bytes) + 2 * self.t3_5()
    }

    /// `numerator / denominator` character times, rounded up to the nanosecond.
    fn characters(&self, numerator: u128, denominator: u128) -> Duration {
        let bits = numerator * u128::from(self.char_bits);
        let nanos = (bits * 1_000_000_000).div_ceil(denominator * u128::from(self.baud));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests;
