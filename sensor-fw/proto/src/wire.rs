//! Messages of the node link and their byte layout.
//!
//! Every message starts with `[PROTOCOL_VERSION, type]` followed by its fields, little-endian,
//! fixed width, in declaration order, except TELEMETRY's three varints. Lists carry a one-byte
//! count, except TELEMETRY's readings, which fill the message to its end. The layout of each
//! message is tabled in `docs/node-link.md`; keep the two in step.
//!
//! Guarantees, in the manner of smoltcp's `wire`: `parse` never panics and never reads past its
//! input; `emit` writes exactly `buffer_len` bytes; `parse(emit(m)) == m` for every `m` whose
//! TELEMETRY age is one the wire carries exactly (see [`age_on_wire`]; any other age comes back
//! rounded down to it); every input `parse` accepts is the one `emit` writes for its message.

use core::fmt;
use heapless::{String, Vec};

use crate::PROTOCOL_VERSION;

mod ota;
use ota::OTA_STATUS_LEN;
pub use ota::{
    Bulk, ChunkSize, ImageTag, MAX_BULK_MESSAGE_LEN, MAX_CHUNK_LEN, MAX_MANIFEST_LEN, OtaChunk,
    OtaControl, OtaOffer, OtaOp, OtaPhase, OtaRefusal, OtaStatus, RevertCause,
};

/// Most channel readings one TELEMETRY frame carries (one sample of every channel).
pub const MAX_READINGS: usize = 8;
/// Most channels a node announces.
pub const MAX_CHANNELS: usize = 8;
/// Longest manufacturing lot string, in bytes of UTF-8.
pub const MAX_LOT_LEN: usize = 16;
/// Longest COMMAND argument or RESPONSE body.
pub const MAX_COMMAND_BODY: usize = 64;
/// Most TELEMETRY frames a node has sent and not yet seen acknowledged. The gateway holds at
/// most this many frames that arrived after a missing one (see [`Nack`]).
pub const WINDOW: u32 = 32;
/// Bytes a sealed message carries after its fields: the low byte of its counter and its tag
/// (see [`crate::session`]).
pub const SEAL_LEN: usize = 1 + crate::session::TAG_LEN;
/// Largest message on the wire (before framing), seal included: the CHALLENGE.
pub const MAX_MESSAGE_LEN: usize = 2 + 4 + 32 + 32 + 64;
const _: () = {
    // Every other message fits: a sealed COMMAND/RESPONSE with a full body, a HELLO with the
    // longest lot and every channel, a sealed TELEMETRY with every reading and the longest
    // varints, a PROOF.
    assert!(2 + 2 + 1 + 1 + MAX_COMMAND_BODY + SEAL_LEN <= MAX_MESSAGE_LEN);
    assert!(2 + 8 + 1 + 3 + 4 + 1 + MAX_LOT_LEN + 1 + MAX_CHANNELS + 32 <= MAX_MESSAGE_LEN);
    assert!(2 + 3 * 5 + 5 * MAX_READINGS + SEAL_LEN <= MAX_MESSAGE_LEN);
    assert!(2 + 8 + 4 + 64 <= MAX_MESSAGE_LEN);
};

/// A channel of a node. Ids below 128 have a fixed meaning and unit; 128 and up are
/// site-specific and carry raw integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelId(pub u8);

impl ChannelId {
    /// Air temperature, hundredths of a degree Celsius.
    pub const TEMPERATURE: ChannelId = ChannelId(1);
    /// Relative humidity, hundredths of a percent.
    pub const HUMIDITY: ChannelId = ChannelId(2);
    /// Barometric pressure, pascals.
    pub const PRESSURE: ChannelId = ChannelId(3);
    /// A counter that increases by exactly one per sample: loss and duplication show end to end.
    pub const SEQ: ChannelId = ChannelId(4);
    /// The node's own die temperature, hundredths of a degree Celsius.
    pub const CHIP_TEMPERATURE: ChannelId = ChannelId(5);

    /// The channel's name as the gateway stores and shows it, for the fixed ids.
    #[must_use]
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            1 => Some("temperature"),
            2 => Some("humidity"),
            3 => Some("pressure"),
            4 => Some("seq"),
            5 => Some("chip_temperature"),
            _ => None,
        }
    }

    /// Inverse of [`ChannelId::name`].
    #[must_use]
    pub fn from_name(name: &str) -> Option<ChannelId> {
        (1..=5).map(ChannelId).find(|c| c.name() == Some(name))
    }

    /// How many stored units make one display unit (100 for hundredths).
    #[must_use]
    pub const fn scale(self) -> u32 {
        match self.0 {
            1 | 2 | 5 => 100,
            _ => 1,
        }
    }
}

/// Firmware version, semantic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FwVersion {
    pub major: u8,
    pub minor: u8,
    pub patch: u8,
}

impl fmt::Display for FwVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why the node last reset, as its reset controller reports it.
///
/// Fleet health splits them in two ([`ResetReason::is_expected`]): resets someone asked for
/// (power applied, a requested reboot, the RUN pin, a debugger, a new image being applied) and
/// resets that are a symptom (watchdog, hard fault, brown-out, a reverted update, anything
/// unknown). Alert rules count only the second kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetReason {
    PowerOn,
    Watchdog,
    /// A reboot the firmware asked for (a reboot command, a user's request).
    Software,
    Brownout,
    /// The RUN pin was pulled: a button, or the gateway's hard reboot.
    ExternalPin,
    Debugger,
    /// The node booted its previous image because a new one did not confirm its health in
    /// time, crashed or hung during its trial boot (see [`OtaStatus`] for the cause).
    OtaRevert,
    /// The firmware caught a fault (HardFault handler, panic) and reset itself.
    HardFault,
    /// The node reset to boot a newly written image (its trial boot).
    OtaApply,
    /// A code this version does not know; kept, not rejected, so newer firmware still reports.
    Other(u8),
}

impl ResetReason {
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            ResetReason::PowerOn => 0,
            ResetReason::Watchdog => 1,
            ResetReason::Software => 2,
            ResetReason::Brownout => 3,
            ResetReason::ExternalPin => 4,
            ResetReason::Debugger => 5,
            ResetReason::OtaRevert => 6,
            ResetReason::HardFault => 7,
            ResetReason::OtaApply => 8,
            ResetReason::Other(c) => c,
        }
    }

    #[must_use]
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => ResetReason::PowerOn,
            1 => ResetReason::Watchdog,
            2 => ResetReason::Software,
            3 => ResetReason::Brownout,
            4 => ResetReason::ExternalPin,
            5 => ResetReason::Debugger,
            6 => ResetReason::OtaRevert,
            7 => ResetReason::HardFault,
            8 => ResetReason::OtaApply,
            c => ResetReason::Other(c),
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ResetReason::PowerOn => "power_on",
            ResetReason::Watchdog => "watchdog",
            ResetReason::Software => "software",
            ResetReason::Brownout => "brownout",
            ResetReason::ExternalPin => "external_pin",
            ResetReason::Debugger => "debugger",
            ResetReason::OtaRevert => "ota_revert",
            ResetReason::HardFault => "hard_fault",
            ResetReason::OtaApply => "ota_apply",
            ResetReason::Other(_) => "other",
        }
    }

    /// Whether someone asked for this reset (power-on, a requested reboot, the RUN pin, a
    /// debugger, applying an update) rather than the node failing (watchdog, hard fault,
    /// brown-out, a reverted update, a reason this version does not know).
    #[must_use]
    pub const fn is_expected(self) -> bool {
        match self {
            ResetReason::PowerOn
            | ResetReason::Software
            | ResetReason::ExternalPin
            | ResetReason::Debugger
            | ResetReason::OtaApply => true,
            ResetReason::Watchdog
            | ResetReason::Brownout
            | ResetReason::OtaRevert
            | ResetReason::HardFault
            | ResetReason::Other(_) => false,
        }
    }
}

/// Node → gateway, until accepted: who the node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The RP2040's unique flash id: the node's identity for life.
    pub uid: [u8; 8],
    pub hw_rev: u8,
    pub fw: FwVersion,
    /// Random at every boot. Sequence numbers restart at 1 with each boot; `(uid, boot_id, seq)`
    /// names one sample for ever.
    pub boot_id: u32,
    /// Manufacturing lot, empty if unknown (RMA traceability).
    pub lot: String<MAX_LOT_LEN>,
    pub channels: Vec<ChannelId, MAX_CHANNELS>,
    /// The node's X25519 public key for this handshake: fresh for every HELLO.
    pub ephemeral: [u8; 32],
}

/// Node → gateway, after HELLO: the node's own Ed25519 public key, pinned by the gateway on first
/// enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enroll {
    pub uid: [u8; 8],
    pub public_key: [u8; 32],
}

/// Gateway → node: the HELLO is accepted; everything up to `ack_upto` of this boot is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    pub boot_id: u32,
    /// Cumulative: every sample with `seq <= ack_upto` is committed. 0 when none is.
    pub ack_upto: u32,
}

/// Gateway → node, answer to HELLO + ENROLL: the gateway's half of the key agreement, signed with
/// its node-link key over the transcript (see [`crate::session`]). Sent in the clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// The HELLO's boot_id.
    pub boot_id: u32,
    /// The gateway's X25519 public key for this handshake: fresh for every CHALLENGE.
    pub ephemeral: [u8; 32],
    /// The gateway's node-link Ed25519 public key.
    pub gateway_key: [u8; 32],
    pub signature: [u8; 64],
}

/// Node → gateway, answer to CHALLENGE: the node's signature over the same transcript, with the
/// key it enrolled. Proves possession of that key; sent in the clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    pub uid: [u8; 8],
    pub boot_id: u32,
    pub signature: [u8; 64],
}

/// TELEMETRY ages below this many ms travel exact, to the ms.
pub const AGE_EXACT_BELOW_MS: u32 = 8192;
/// From [`AGE_EXACT_BELOW_MS`] on, TELEMETRY ages travel in units of this many ms, rounded down.
pub const AGE_COARSE_UNIT_MS: u32 = 8;
const _: () =
    assert!(AGE_COARSE_UNIT_MS.is_power_of_two() && AGE_EXACT_BELOW_MS % AGE_COARSE_UNIT_MS == 0);

/// The age a TELEMETRY carries for a sample `age_ms` old: exact below 8,192 ms, from there on
/// rounded down to a multiple of 8 ms (never older than the sample is, and at most 7 ms younger,
/// under 0.1 % of its age). In exchange an age is never a longer varint than exact, and one
/// byte shorter from 16,384 ms to 73,727 ms (2 bytes, not 3: a catch-up's old samples), from
/// 35 min to 4.6 h (3, not 4) and from 3.1 to 24.8 days (4, not 5).
#[must_use]
pub const fn age_on_wire(age_ms: u32) -> u32 {
    if age_ms < AGE_EXACT_BELOW_MS {
        age_ms
    } else {
        age_ms & !(AGE_COARSE_UNIT_MS - 1)
    }
}

/// The varint value TELEMETRY carries for an age: the age itself below [`AGE_EXACT_BELOW_MS`],
/// then one step per [`AGE_COARSE_UNIT_MS`].
const fn age_code(age_ms: u32) -> u32 {
    if age_ms < AGE_EXACT_BELOW_MS {
        age_ms
    } else {
        AGE_EXACT_BELOW_MS + (age_ms - AGE_EXACT_BELOW_MS) / AGE_COARSE_UNIT_MS
    }
}

/// Inverse of [`age_code`]; `None` for a code beyond the largest age (no `age_code` gives it).
const fn age_from_code(code: u32) -> Option<u32> {
    if code < AGE_EXACT_BELOW_MS {
        return Some(code);
    }
    match (code - AGE_EXACT_BELOW_MS).checked_mul(AGE_COARSE_UNIT_MS) {
        Some(steps) => steps.checked_add(AGE_EXACT_BELOW_MS),
        None => None,
    }
}

/// One channel's value in a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub channel: ChannelId,
    pub value: i32,
}

/// Node → gateway: one sample of every channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    /// Sample number in this boot, from 1, increasing by one per sample.
    pub seq: u32,
    /// The oldest sample the node still holds. When it is past the gateway's last committed
    /// sample + 1, the node's ring overflowed while the gateway was away and the samples in
    /// between are gone: the gateway records the gap instead of waiting for them for ever.
    pub window_start: u32,
    /// How long ago, in ms, the sample was taken when this frame was sent. The gateway stamps
    /// the sample `received_at - age_ms`, so the node needs no wall clock. Exact below 8,192 ms;
    /// from there on the wire rounds it down to a multiple of 8 ms ([`age_on_wire`]).
    pub age_ms: u32,
    pub readings: Vec<Reading, MAX_READINGS>,
}

/// Gateway → node: every sample of `boot_id` with `seq <= upto` is committed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub boot_id: u32,
    pub upto: u32,
}

/// Gateway → node: the samples `from..=to` of `boot_id` did not arrive, and later ones did (the
/// gateway holds those). The node sends exactly these again, at once, instead of waiting for its
/// retransmit timer and sending everything after them too. A hint, not a fact about the disk:
/// nothing is dropped from the node's ring on a NACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack {
    pub boot_id: u32,
    pub from: u32,
    pub to: u32,
}

/// Node → gateway, periodically: the node's own health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub uptime_s: u32,
    pub reset_reason: ResetReason,
    pub fw: FwVersion,
    /// Least free stack seen since boot, bytes (the stack high-water mark).
    pub stack_free_min: u32,
    pub rx_frames: u32,
    pub rx_errors: u32,
    pub tx_frames: u32,
    pub retransmits: u32,
    /// Samples lost because the node's ring was full.
    pub dropped_samples: u32,
    /// Die temperature, hundredths of a degree Celsius.
    pub chip_temp_centi: i16,
}

/// Gateway → node: a command, answered by a [`Response`] with the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: u16,
    pub code: u8,
    pub args: Vec<u8, MAX_COMMAND_BODY>,
}

/// Node → gateway: the answer to [`Command`] `id`. `status` 0 is success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub status: u8,
    pub body: Vec<u8, MAX_COMMAND_BODY>,
}

/// A message of the node link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Enroll(Enroll),
    Accept(Accept),
    Telemetry(Telemetry),
    Ack(Ack),
    Health(Health),
    Command(Command),
    Response(Response),
    Nack(Nack),
    Challenge(Challenge),
    Proof(Proof),
    OtaStatus(OtaStatus),
    OtaControl(OtaControl),
}

impl Message {
    /// Whether this message travels sealed (counter and tag, see [`crate::session`]): every
    /// message of an open session. Only the handshake (HELLO, ENROLL, CHALLENGE, PROOF) is clear.
    #[must_use]
    pub fn is_sealed(&self) -> bool {
        is_sealed_type(self.type_code())
    }

    /// The message's type byte.
    #[must_use]
    pub fn type_code(&self) -> u8 {
        match self {
            Message::Hello(_) => tag::HELLO,
            Message::Enroll(_) => tag::ENROLL,
            Message::Accept(_) => tag::ACCEPT,
            Message::Telemetry(_) => tag::TELEMETRY,
            Message::Ack(_) => tag::ACK,
            Message::Health(_) => tag::HEALTH,
            Message::Command(_) => tag::COMMAND,
            Message::Response(_) => tag::RESPONSE,
            Message::Nack(_) => tag::NACK,
            Message::Challenge(_) => tag::CHALLENGE,
            Message::Proof(_) => tag::PROOF,
            Message::OtaStatus(_) => tag::OTA_STATUS,
            Message::OtaControl(_) => tag::OTA_CONTROL,
        }
    }
}

/// Whether messages of type `code` travel sealed.
#[must_use]
pub const fn is_sealed_type(code: u8) -> bool {
    !matches!(code, tag::HELLO | tag::ENROLL | tag::CHALLENGE | tag::PROOF)
}

mod tag {
    pub(super) const HELLO: u8 = 0x01;
    pub(super) const ENROLL: u8 = 0x02;
    pub(super) const ACCEPT: u8 = 0x03;
    pub(super) const TELEMETRY: u8 = 0x04;
    pub(super) const ACK: u8 = 0x05;
    pub(super) const HEALTH: u8 = 0x06;
    pub(super) const COMMAND: u8 = 0x07;
    pub(super) const RESPONSE: u8 = 0x08;
    pub(super) const NACK: u8 = 0x09;
    pub(super) const CHALLENGE: u8 = 0x0A;
    pub(super) const PROOF: u8 = 0x0B;
    pub(super) const OTA_OFFER: u8 = 0x0C;
    pub(super) const OTA_CHUNK: u8 = 0x0D;
    pub(super) const OTA_STATUS: u8 = 0x0E;
    pub(super) const OTA_CONTROL: u8 = 0x0F;
}

/// Whether messages of type `code` belong to the bulk class ([`Bulk`]): longer than
/// [`MAX_MESSAGE_LEN`], gateway → node only.
#[must_use]
pub const fn is_bulk_type(code: u8) -> bool {
    matches!(code, tag::OTA_OFFER | tag::OTA_CHUNK)
}

/// Why bytes are not a message. "Too short" is an error here, not "incomplete": framing has
/// already delimited the message, so a short one is corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    UnsupportedVersion(u8),
    UnknownType(u8),
    /// A list count above the protocol's limit.
    TooMany,
    /// The lot is not UTF-8.
    BadText,
    /// Bytes left over after the last field.
    TrailingBytes,
    /// A variable-length integer longer than its type, or not in its shortest form; or a
    /// TELEMETRY age code beyond the largest age (see [`age_on_wire`]).
    BadVarint,
    /// Longer than any message of its type can be: a small message above [`MAX_MESSAGE_LEN`],
    /// or a bulk one above [`MAX_BULK_MESSAGE_LEN`].
    TooLong,
    /// A field holds a value its type does not allow (an OTA chunk size code, operation or
    /// phase this version does not know; an empty chunk).
    BadValue,
    /// A bulk message ([`Bulk`]) where this end takes none: nodes never send them.
    Misplaced(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("message truncated"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            DecodeError::UnknownType(t) => write!(f, "unknown message type 0x{t:02x}"),
            DecodeError::TooMany => f.write_str("list longer than the protocol allows"),
            DecodeError::BadText => f.write_str("text field is not UTF-8"),
            DecodeError::TrailingBytes => f.write_str("bytes after the last field"),
            DecodeError::BadVarint => {
                f.write_str("variable-length integer too long or not minimal")
            }
            DecodeError::TooLong => f.write_str("message longer than its type allows"),
            DecodeError::BadValue => f.write_str("field value out of range"),
            DecodeError::Misplaced(t) => {
                write!(f, "bulk message type 0x{t:02x} where none is taken")
            }
        }
    }
}

/// The output buffer is smaller than [`Message::buffer_len`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeError;

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("output buffer too small")
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    /// An unsigned LEB128 integer in its shortest form (so every value has one encoding).
    fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let byte = self.u8()?;
            let bits = u32::from(byte & 0x7f);
            if i == 4 && bits > 0x0f {
                return Err(DecodeError::BadVarint); // beyond 32 bits
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    return Err(DecodeError::BadVarint); // a needless trailing zero group
                }
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint)
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_le_bytes(self.array()?))
    }
    fn fw(&mut self) -> Result<FwVersion, DecodeError> {
        let [major, minor, patch] = self.array()?;
        Ok(FwVersion {
            major,
            minor,
            patch,
        })
    }
    /// A one-byte count, then that many bytes.
    fn bytes<const N: usize>(&mut self) -> Result<Vec<u8, N>, DecodeError> {
        let len = self.u8()? as usize;
        if len > N {
            return Err(DecodeError::TooMany);
        }
        Ok(Vec::from_slice(self.take(len)?).unwrap_or_default())
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        // `emit` checked the length against `buffer_len` up front.
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn fw(&mut self, v: FwVersion) {
        self.put(&[v.major, v.minor, v.patch]);
    }
    fn varint(&mut self, mut v: u32) {
        while v >= 0x80 {
            self.u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.u8(v as u8);
    }
    fn counted(&mut self, bytes: &[u8]) {
        // Every list's capacity is below 256, so the count fits a byte.
        self.u8(bytes.len() as u8);
        self.put(bytes);
    }
}

impl Message {
    /// Parses one message (without framing).
    pub fn parse(bytes: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader { bytes };
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let message = match r.u8()? {
            tag::HELLO => {
                let uid = r.array()?;
                let hw_rev = r.u8()?;
                let fw = r.fw()?;
                let boot_id = r.u32()?;
                let lot_bytes = r.bytes::<MAX_LOT_LEN>()?;
                let lot = String::from_utf8(lot_bytes).map_err(|_| DecodeError::BadText)?;
                let ids = r.bytes::<MAX_CHANNELS>()?;
                let channels = ids.iter().map(|&c| ChannelId(c)).collect();
                Message::Hello(Hello {
                    uid,
                    hw_rev,
                    fw,
                    boot_id,
                    lot,
                    channels,
                    ephemeral: r.array()?,
                })
            }
            tag::ENROLL => Message::Enroll(Enroll {
                uid: r.array()?,
                public_key: r.array()?,
            }),
            tag::ACCEPT => Message::Accept(Accept {
                boot_id: r.u32()?,
                ack_upto: r.u32()?,
            }),
            tag::TELEMETRY => {
                let seq = r.varint()?;
                let window_start = seq.wrapping_sub(r.varint()?);
                let age_ms = age_from_code(r.varint()?).ok_or(DecodeError::BadVarint)?;
                // No count: the readings, 5 bytes each, fill the rest of the message.
                let rest = r.bytes.len();
                if rest > READING_LEN * MAX_READINGS {
                    return Err(DecodeError::TooMany);
                }
                if rest % READING_LEN != 0 {
                    return Err(DecodeError::Truncated);
                }
                let mut readings = Vec::new();
                for _ in 0..rest / READING_LEN {
                    let reading = Reading {
                        channel: ChannelId(r.u8()?),
                        value: r.i32()?,
                    };
                    // Cannot fail: rest / READING_LEN <= capacity.
                    let _ = readings.push(reading);
                }
                Message::Telemetry(Telemetry {
                    seq,
                    window_start,
                    age_ms,
                    readings,
                })
            }
            tag::ACK => Message::Ack(Ack {
                boot_id: r.u32()?,
                upto: r.u32()?,
            }),
            tag::HEALTH => Message::Health(Health {
                uptime_s: r.u32()?,
                reset_reason: ResetReason::from_code(r.u8()?),
                fw: r.fw()?,
                stack_free_min: r.u32()?,
                rx_frames: r.u32()?,
                rx_errors: r.u32()?,
                tx_frames: r.u32()?,
                retransmits: r.u32()?,
                dropped_samples: r.u32()?,
                chip_temp_centi: r.i16()?,
            }),
            tag::COMMAND => Message::Command(Command {
                id: r.u16()?,
                code: r.u8()?,
                args: r.bytes()?,
            }),
            tag::RESPONSE => Message::Response(Response {
                id: r.u16()?,
                status: r.u8()?,
                body: r.bytes()?,
            }),
            tag::NACK => Message::Nack(Nack {
                boot_id: r.u32()?,
                from: r.u32()?,
                to: r.u32()?,
            }),
            tag::CHALLENGE => Message::Challenge(Challenge {
                boot_id: r.u32()?,
                ephemeral: r.array()?,
                gateway_key: r.array()?,
                signature: r.array()?,
            }),
            tag::PROOF => Message::Proof(Proof {
                uid: r.array()?,
                boot_id: r.u32()?,
                signature: r.array()?,
            }),
            tag::OTA_STATUS => Message::OtaStatus(OtaStatus {
                image: ImageTag(r.array()?),
                phase: OtaPhase::from_code(r.u8()?).ok_or(DecodeError::BadValue)?,
                detail: r.u8()?,
                flashed: r.u16()?,
                have: u64::from_le_bytes(r.array()?),
                credit: r.u16()?,
                chunk: ChunkSize::from_code(r.u8()?).ok_or(DecodeError::BadValue)?,
                floor: r.fw()?,
            }),
            tag::OTA_CONTROL => Message::OtaControl(OtaControl {
                image: ImageTag(r.array()?),
                op: OtaOp::from_code(r.u8()?).ok_or(DecodeError::BadValue)?,
                arg: r.u16()?,
            }),
            other if is_bulk_type(other) => return Err(DecodeError::Misplaced(other)),
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(message)
    }

    /// Bytes [`Message::emit`] writes.
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        2 + match self {
            Message::Hello(h) => 8 + 1 + 3 + 4 + 1 + h.lot.len() + 1 + h.channels.len() + 32,
            Message::Enroll(_) => 8 + 32,
            Message::Accept(_) | Message::Ack(_) => 8,
            Message::Nack(_) => 12,
            Message::Telemetry(t) => {
                varint_len(t.seq)
                    + varint_len(t.seq.wrapping_sub(t.window_start))
                    + varint_len(age_code(t.age_ms))
                    + READING_LEN * t.readings.len()
            }
            Message::Challenge(_) => 4 + 32 + 32 + 64,
            Message::Proof(_) => 8 + 4 + 64,
            Message::Health(_) => 4 + 1 + 3 + 4 * 6 + 2,
            Message::Command(c) => 3 + 1 + c.args.len(),
            Message::Response(r) => 3 + 1 + r.body.len(),
            Message::OtaStatus(_) => OTA_STATUS_LEN,
            Message::OtaControl(_) => 4 + 1 + 2,
        }
    }

    /// Writes the message into `buf`, returning the length written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let len = self.buffer_len();
        if buf.len() < len {
            return Err(EncodeError);
        }
        let mut w = Writer { buf, at: 0 };
        w.u8(PROTOCOL_VERSION);
        match self {
            Message::Hello(h) => {
                w.u8(tag::HELLO);
                w.put(&h.uid);
                w.u8(h.hw_rev);
                w.fw(h.fw);
                w.put(&h.boot_id.to_le_bytes());
                w.counted(h.lot.as_bytes());
                w.u8(h.channels.len() as u8);
                for c in &h.channels {
                    w.u8(c.0);
                }
                w.put(&h.ephemeral);
            }
            Message::Enroll(e) => {
                w.u8(tag::ENROLL);
                w.put(&e.uid);
                w.put(&e.public_key);
            }
            Message::Accept(a) => {
                w.u8(tag::ACCEPT);
                w.put(&a.boot_id.to_le_bytes());
                w.put(&a.ack_upto.to_le_bytes());
            }
            Message::Telemetry(t) => {
                w.u8(tag::TELEMETRY);
                w.varint(t.seq);
                w.varint(t.seq.wrapping_sub(t.window_start));
                w.varint(age_code(t.age_ms));
                for r in &t.readings {
                    w.u8(r.channel.0);
                    w.put(&r.value.to_le_bytes());
                }
            }
            Message::Ack(a) => {
                w.u8(tag::ACK);
                w.put(&a.boot_id.to_le_bytes());
                w.put(&a.upto.to_le_bytes());
            }
            Message::Health(h) => {
                w.u8(tag::HEALTH);
                w.put(&h.uptime_s.to_le_bytes());
                w.u8(h.reset_reason.code());
                w.fw(h.fw);
                for v in [
                    h.stack_free_min,
                    h.rx_frames,
                    h.rx_errors,
                    h.tx_frames,
                    h.retransmits,
                    h.dropped_samples,
                ] {
                    w.put(&v.to_le_bytes());
                }
                w.put(&h.chip_temp_centi.to_le_bytes());
            }
            Message::Command(c) => {
                w.u8(tag::COMMAND);
                w.put(&c.id.to_le_bytes());
                w.u8(c.code);
                w.counted(&c.args);
            }
            Message::Response(r) => {
                w.u8(tag::RESPONSE);
                w.put(&r.id.to_le_bytes());
                w.u8(r.status);
                w.counted(&r.body);
            }
            Message::Nack(n) => {
                w.u8(tag::NACK);
                w.put(&n.boot_id.to_le_bytes());
                w.put(&n.from.to_le_bytes());
                w.put(&n.to.to_le_bytes());
            }
            Message::Challenge(c) => {
                w.u8(tag::CHALLENGE);
                w.put(&c.boot_id.to_le_bytes());
                w.put(&c.ephemeral);
                w.put(&c.gateway_key);
                w.put(&c.signature);
            }
            Message::Proof(p) => {
                w.u8(tag::PROOF);
                w.put(&p.uid);
                w.put(&p.boot_id.to_le_bytes());
                w.put(&p.signature);
            }
            Message::OtaStatus(o) => {
                w.u8(tag::OTA_STATUS);
                w.put(&o.image.0);
                w.u8(o.phase as u8);
                w.u8(o.detail);
                w.put(&o.flashed.to_le_bytes());
                w.put(&o.have.to_le_bytes());
                w.put(&o.credit.to_le_bytes());
                w.u8(o.chunk as u8);
                w.fw(o.floor);
            }
            Message::OtaControl(c) => {
                w.u8(tag::OTA_CONTROL);
                w.put(&c.image.0);
                w.u8(c.op as u8);
                w.put(&c.arg.to_le_bytes());
            }
        }
        debug_assert_eq!(w.at, len);
        Ok(w.at)
    }
}

/// Bytes of one TELEMETRY reading: channel id and i32 value.
const READING_LEN: usize = 5;

/// Bytes of `v` as an unsigned LEB128 varint.
const fn varint_len(v: u32) -> usize {
    match v {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        0x4000..0x20_0000 => 3,
        0x20_0000..0x1000_0000 => 4,
        _ => 5,
    }
}
