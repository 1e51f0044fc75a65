//! Framing of messages on a serial byte stream.
//!
//! ```text
//! 0x00 | COBS( message bytes | CRC-32(message bytes), little-endian ) | 0x00
//! ```
//!
//! The CRC is CRC-32/ISO-HDLC (the Ethernet/zlib CRC). The leading `0x00` ends any garbage a
//! receiver may hold, so a frame sent after line noise is never lost to it; an empty frame
//! (two `0x00` in a row) is idle line and ignored.
//!
//! [`FrameDecoder`] takes bytes one at a time and keeps a fixed buffer: a frame longer than any
//! valid one is dropped up to its next `0x00` and counted, never buffered.
//!
//! Two classes of frame share the framing. Small messages ([`Message`]) fit [`MAX_FRAME_LEN`];
//! bulk messages ([`Bulk`]: firmware offers and chunks, gateway → node only) fit
//! [`MAX_BULK_FRAME_LEN`]. A decoder's capacity decides which it can hold: the gateway's holds
//! only small frames ([`FrameDecoder`]), a node's holds both ([`BulkFrameDecoder`]), still one
//! fixed buffer. Whatever the capacity, a small type is never longer than [`MAX_MESSAGE_LEN`].

use core::fmt;

use crc::{CRC_32_ISO_HDLC, Crc};
use heapless::Vec;

use crate::cobs;
use crate::session::{AuthError, Opener, Sealer, TAG_LEN};
use crate::wire::{
    Bulk, DecodeError, EncodeError, MAX_BULK_MESSAGE_LEN, MAX_MESSAGE_LEN, Message, SEAL_LEN,
    is_bulk_type, is_sealed_type,
};

const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);
const CRC_LEN: usize = 4;

/// Largest COBS block between two delimiters that can hold a valid frame.
pub const MAX_ENCODED_LEN: usize = cobs::max_encoded_len(MAX_MESSAGE_LEN + CRC_LEN);
/// Largest frame on the line, delimiters included: size transmit buffers with it.
pub const MAX_FRAME_LEN: usize = MAX_ENCODED_LEN + 2;
/// Largest COBS block of a bulk frame.
pub const MAX_BULK_ENCODED_LEN: usize = cobs::max_encoded_len(MAX_BULK_MESSAGE_LEN + CRC_LEN);
/// Largest bulk frame on the line, delimiters included.
pub const MAX_BULK_FRAME_LEN: usize = MAX_BULK_ENCODED_LEN + 2;

/// Writes a clear `message` (HELLO, ENROLL, CHALLENGE, PROOF) as one complete frame into `out`;
/// returns the frame's length. Every other message must be sealed: [`encode_sealed_frame`].
pub fn encode_frame(message: &Message, out: &mut [u8]) -> Result<usize, EncodeError> {
    if message.is_sealed() {
        return Err(EncodeError);
    }
    let mut raw = [0u8; MAX_MESSAGE_LEN + CRC_LEN];
    let len = message.emit(&mut raw)?;
    frame_bytes(&mut raw, len, out)
}

/// Writes a message of an open session, sealed by `sealer` (counter and tag), as one complete
/// frame into `out`. Fails when `out` is too small or the sealer's counter is spent.
pub fn encode_sealed_frame(
    message: &Message,
    sealer: &mut Sealer,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    if !message.is_sealed() {
        return Err(EncodeError);
    }
    let mut raw = [0u8; MAX_MESSAGE_LEN + CRC_LEN];
    let len = message.emit(&mut raw[..MAX_MESSAGE_LEN - SEAL_LEN])?;
    if out.len() < cobs::max_encoded_len(len + SEAL_LEN + CRC_LEN) + 2 {
        return Err(EncodeError); // checked before the counter is spent
    }
    let len = sealer.seal(&mut raw, len).map_err(|_| EncodeError)?;
    frame_bytes(&mut raw, len, out)
}

/// Writes a bulk message (firmware offer or chunk), sealed by `sealer`, as one complete frame
/// into `out` (at most [`MAX_BULK_FRAME_LEN`] bytes); returns the frame's length.
pub fn encode_sealed_bulk(
    bulk: &Bulk<'_>,
    sealer: &mut Sealer,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let mut raw = [0u8; MAX_BULK_MESSAGE_LEN + CRC_LEN];
    let len = bulk.emit(&mut raw[..MAX_BULK_MESSAGE_LEN - SEAL_LEN])?;
    if out.len() < cobs::max_encoded_len(len + SEAL_LEN + CRC_LEN) + 2 {
        return Err(EncodeError); // checked before the counter is spent
    }
    let len = sealer.seal(&mut raw, len).map_err(|_| EncodeError)?;
    frame_bytes(&mut raw, len, out)
}

/// Frames arbitrary message bytes (CRC, COBS, delimiters), whatever they hold: for tests and
/// tools that must put exactly these bytes on a line.
pub fn encode_raw_frame(message_bytes: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    let mut raw = [0u8; MAX_BULK_MESSAGE_LEN + CRC_LEN];
    let len = message_bytes.len();
    if len > MAX_BULK_MESSAGE_LEN {
        return Err(EncodeError);
    }
    raw[..len].copy_from_slice(message_bytes);
    frame_bytes(&mut raw, len, out)
}

/// `raw[..len]` is a message: appends its CRC and writes the COBS block between delimiters.
fn frame_bytes(raw: &mut [u8], len: usize, out: &mut [u8]) -> Result<usize, EncodeError> {
    let crc = CRC.checksum(&raw[..len]);
    raw[len..len + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    if out.len() < cobs::max_encoded_len(len + CRC_LEN) + 2 {
        return Err(EncodeError);
    }
    out[0] = 0;
    let encoded = cobs::encode(&raw[..len + CRC_LEN], &mut out[1..]).ok_or(EncodeError)?;
    out[1 + encoded] = 0;
    Ok(encoded + 2)
}

/// A frame as decoded: its message and, when it is sealed, what opening it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    message: Message,
    seal: Option<Seal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seal {
    /// The message bytes the tag covers: fields and the counter's low byte.
    authenticated: Vec<u8, MAX_MESSAGE_LEN>,
    tag: [u8; TAG_LEN],
}

impl Received {
    /// The message, not yet opened: trust nothing in a sealed one before [`Received::open`].
    #[must_use]
    pub fn message(&self) -> &Message {
        &self.message
    }

    #[must_use]
    pub fn is_sealed(&self) -> bool {
        self.seal.is_some()
    }

    /// A clear message (HELLO, ENROLL, CHALLENGE, PROOF); `None` for a sealed one.
    #[must_use]
    pub fn into_clear(self) -> Option<Message> {
        self.seal.is_none().then_some(self.message)
    }

    /// Opens a sealed message with the session's `opener`: the message if its seal verifies
    /// under a counter above the last one taken.
    pub fn open(self, opener: &mut Opener) -> Result<Message, AuthError> {
        let seal = self.seal.ok_or(AuthError::Forged)?;
        opener.open(&seal.authenticated, &seal.tag)?;
        Ok(self.message)
    }

    /// The message without checking any seal: for tools that only look (and tests).
    #[must_use]
    pub fn into_unverified(self) -> Message {
        self.message
    }
}

/// A bulk frame as decoded: a view into the decoder's buffer, valid until its next byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedBulk<'a> {
    message: Bulk<'a>,
    /// The message bytes the tag covers: fields and the counter's low byte.
    authenticated: &'a [u8],
    tag: [u8; TAG_LEN],
}

impl<'a> ReceivedBulk<'a> {
    /// Opens the message with the session's `opener`: the message if its seal verifies under a
    /// counter above the last one taken.
    pub fn open(self, opener: &mut Opener) -> Result<Bulk<'a>, AuthError> {
        opener.open(self.authenticated, &self.tag)?;
        Ok(self.message)
    }

    /// The message without checking its seal: for tools that only look (and tests).
    #[must_use]
    pub fn into_unverified(self) -> Bulk<'a> {
        self.message
    }
}

/// A frame of either class, from [`FrameDecoder::push_any`].
// No heap on a node to box the small variant in; the enum lives on the stack for one frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyFrame<'a> {
    Small(Received),
    Bulk(ReceivedBulk<'a>),
}

/// Why a delimited frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// More bytes than any valid frame before the next delimiter.
    Oversize,
    /// The COBS encoding is broken (a byte was lost or changed on the line).
    Cobs,
    /// Too short to carry a CRC.
    Runt,
    /// The CRC does not match: a bit flipped on the line.
    Crc,
    /// Intact frame, but not a message this version understands.
    Malformed(DecodeError),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Oversize => f.write_str("oversized frame"),
            FrameError::Cobs => f.write_str("broken COBS encoding"),
            FrameError::Runt => f.write_str("frame too short"),
            FrameError::Crc => f.write_str("CRC mismatch"),
            FrameError::Malformed(e) => write!(f, "malformed message: {e}"),
        }
    }
}

/// What a [`FrameDecoder`] has seen since it was made. Counters wrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Frames decoded into messages.
    pub frames: u32,
    /// Frames dropped, by any [`FrameError`].
    pub errors: u32,
    /// Of `errors`: CRC mismatches.
    pub crc_errors: u32,
    /// Bytes thrown away with dropped frames.
    pub discarded_bytes: u32,
}

/// Splits a byte stream into messages. Holds at most one frame of up to `CAP` encoded bytes;
/// never allocates. The default capacity holds every small frame; [`BulkFrameDecoder`] also
/// holds bulk ones.
#[derive(Debug)]
pub struct FrameDecoder<const CAP: usize = MAX_ENCODED_LEN> {
    buf: [u8; CAP],
    len: usize,
    /// The current frame outgrew the buffer: drop bytes until the next delimiter.
    overflowed: bool,
    counters: LinkCounters,
}

/// A decoder that holds bulk frames too: a node's.
pub type BulkFrameDecoder = FrameDecoder<MAX_BULK_ENCODED_LEN>;

impl<const CAP: usize> Default for FrameDecoder<CAP> {
    fn default() -> Self {
        Self::empty()
    }
}

impl FrameDecoder {
    /// A decoder of small frames (the gateway's).
    #[must_use]
    pub const fn new() -> Self {
        Self::empty()
    }
}

impl BulkFrameDecoder {
    /// A decoder of small and bulk frames (a node's).
    #[must_use]
    pub const fn bulk() -> Self {
        Self::empty()
    }
}

impl<const CAP: usize> FrameDecoder<CAP> {
    const AT_LEAST_SMALL: () = assert!(CAP >= MAX_ENCODED_LEN);

    const fn empty() -> Self {
        let () = Self::AT_LEAST_SMALL;
        FrameDecoder {
            buf: [0; CAP],
            len: 0,
            overflowed: false,
            counters: LinkCounters {
                frames: 0,
                errors: 0,
                crc_errors: 0,
                discarded_bytes: 0,
            },
        }
    }

    #[must_use]
    pub fn counters(&self) -> LinkCounters {
        self.counters
    }

    /// Forgets a partial frame, e.g. after the port was reopened.
    pub fn reset(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    /// Takes one byte; returns a small frame or an error when it ends one. A bulk frame is an
    /// error here ([`DecodeError::Misplaced`]): use [`FrameDecoder::push_any`] where they are
    /// taken.
    pub fn push(&mut self, byte: u8) -> Option<Result<Received, FrameError>> {
        let len = match self.take(byte)? {
            Ok(len) => len,
            Err(e) => return Some(Err(e)),
        };
        let result = match Self::decode(&mut self.buf[..len]) {
            Ok(Decoded::Small(received)) => Ok(received),
            // The type byte: `decode` left the message at the start of the buffer.
            Ok(Decoded::Bulk { .. }) => {
                Err(FrameError::Malformed(DecodeError::Misplaced(self.buf[1])))
            }
            Err(e) => Err(e),
        };
        Some(self.count(result, len))
    }

    /// Takes one byte; returns a frame of either class, or an error, when it ends one. A bulk
    /// frame borrows the decoder's buffer until the next byte.
    pub fn push_any(&mut self, byte: u8) -> Option<Result<AnyFrame<'_>, FrameError>> {
        let len = match self.take(byte)? {
            Ok(len) => len,
            Err(e) => return Some(Err(e)),
        };
        match Self::decode(&mut self.buf[..len]) {
            Ok(Decoded::Small(received)) => Some(self.count(Ok(AnyFrame::Small(received)), len)),
            Ok(Decoded::Bulk { body_len }) => {
                self.counters.frames = self.counters.frames.wrapping_add(1);
                let body = &self.buf[..body_len];
                let (authenticated, tag) = body.split_at(body_len - TAG_LEN);
                // Cannot fail: `decode` parsed these same bytes.
                let message = Bulk::parse(&authenticated[..authenticated.len() - 1]).ok()?;
                let mut seal = [0; TAG_LEN];
                seal.copy_from_slice(tag);
                Some(Ok(AnyFrame::Bulk(ReceivedBulk {
                    message,
                    authenticated,
                    tag: seal,
                })))
            }
            Err(e) => Some(Err(self.fail(e, len))),
        }
    }

    /// Buffers one byte. At a delimiter: the length of the frame it ends, or the error of an
    /// oversized one; `None` in between and on idle line.
    fn take(&mut self, byte: u8) -> Option<Result<usize, FrameError>> {
        if byte != 0 {
            if self.overflowed {
                self.counters.discarded_bytes = self.counters.discarded_bytes.wrapping_add(1);
            } else if self.len == self.buf.len() {
                self.overflowed = true;
                self.counters.discarded_bytes = self
                    .counters
                    .discarded_bytes
                    .wrapping_add(self.len as u32 + 1);
                self.len = 0;
            } else {
                self.buf[self.len] = byte;
                self.len += 1;
            }
            return None;
        }
        if self.overflowed {
            self.overflowed = false;
            return Some(Err(self.fail(FrameError::Oversize, 0)));
        }
        if self.len == 0 {
            return None; // idle line between frames
        }
        Some(Ok(core::mem::take(&mut self.len)))
    }

    fn count<T>(&mut self, result: Result<T, FrameError>, len: usize) -> Result<T, FrameError> {
        match result {
            Ok(frame) => {
                self.counters.frames = self.counters.frames.wrapping_add(1);
                Ok(frame)
            }
            Err(e) => Err(self.fail(e, len)),
        }
    }

    fn fail(&mut self, error: FrameError, bytes: usize) -> FrameError {
        let c = &mut self.counters;
        c.errors = c.errors.wrapping_add(1);
        c.discarded_bytes = c.discarded_bytes.wrapping_add(bytes as u32);
        if error == FrameError::Crc {
            c.crc_errors = c.crc_errors.wrapping_add(1);
        }
        error
    }

    /// Decodes the COBS block in place and checks it. A small message is copied out whole; a
    /// bulk one stays in the buffer, its first `body_len` bytes (message and seal).
    fn decode(encoded: &mut [u8]) -> Result<Decoded, FrameError> {
        let len = cobs::decode_in_place(encoded).map_err(|_| FrameError::Cobs)?;
        if len < CRC_LEN + 2 {
            return Err(FrameError::Runt);
        }
        let (body, crc) = encoded[..len].split_at(len - CRC_LEN);
        let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if CRC.checksum(body) != expected {
            return Err(FrameError::Crc);
        }
        if is_bulk_type(body[1]) {
            if body.len() < 2 + SEAL_LEN {
                return Err(FrameError::Malformed(DecodeError::Truncated));
            }
            Bulk::parse(&body[..body.len() - SEAL_LEN]).map_err(FrameError::Malformed)?;
            return Ok(Decoded::Bulk {
                body_len: body.len(),
            });
        }
        if body.len() > MAX_MESSAGE_LEN {
            return Err(FrameError::Malformed(DecodeError::TooLong));
        }
        if !is_sealed_type(body[1]) {
            let message = Message::parse(body).map_err(FrameError::Malformed)?;
            return Ok(Decoded::Small(Received {
                message,
                seal: None,
            }));
        }
        if body.len() < 2 + SEAL_LEN {
            return Err(FrameError::Malformed(DecodeError::Truncated));
        }
        let (authenticated, tag) = body.split_at(body.len() - TAG_LEN);
        let message = Message::parse(&authenticated[..authenticated.len() - 1])
            .map_err(FrameError::Malformed)?;
        let mut seal = Seal {
            authenticated: Vec::new(),
            tag: [0; TAG_LEN],
        };
        // Cannot fail: the whole body fits MAX_MESSAGE_LEN, checked above.
        let _ = seal.authenticated.extend_from_slice(authenticated);
        seal.tag.copy_from_slice(tag);
        Ok(Decoded::Small(Received {
            message,
            seal: Some(seal),
        }))
    }
}

/// What [`FrameDecoder::decode`] found.
#[allow(clippy::large_enum_variant)] // as AnyFrame
enum Decoded {
    Small(Received),
    Bulk { body_len: usize },
}
