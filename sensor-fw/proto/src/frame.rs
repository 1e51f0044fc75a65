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

use core::fmt;

use crc::{CRC_32_ISO_HDLC, Crc};
use heapless::Vec;

use crate::cobs;
use crate::session::{AuthError, Opener, Sealer, TAG_LEN};
use crate::wire::{DecodeError, EncodeError, MAX_MESSAGE_LEN, Message, SEAL_LEN, is_sealed_type};

const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);
const CRC_LEN: usize = 4;

/// Largest COBS block between two delimiters that can hold a valid frame.
pub const MAX_ENCODED_LEN: usize = cobs::max_encoded_len(MAX_MESSAGE_LEN + CRC_LEN);
/// Largest frame on the line, delimiters included: size transmit buffers with it.
pub const MAX_FRAME_LEN: usize = MAX_ENCODED_LEN + 2;

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

/// Frames arbitrary message bytes (CRC, COBS, delimiters), whatever they hold: for tests and
/// tools that must put exactly these bytes on a line.
pub fn encode_raw_frame(message_bytes: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    let mut raw = [0u8; MAX_MESSAGE_LEN + CRC_LEN];
    let len = message_bytes.len();
    if len > MAX_MESSAGE_LEN {
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

/// Splits a byte stream into messages. Holds at most one frame; never allocates.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: [u8; MAX_ENCODED_LEN],
    len: usize,
    /// The current frame outgrew the buffer: drop bytes until the next delimiter.
    overflowed: bool,
    counters: LinkCounters,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    #[must_use]
    pub const fn new() -> Self {
        FrameDecoder {
            buf: [0; MAX_ENCODED_LEN],
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

    /// Takes one byte; returns a frame or an error when it ends one.
    pub fn push(&mut self, byte: u8) -> Option<Result<Received, FrameError>> {
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
            return Some(self.fail(FrameError::Oversize, 0));
        }
        if self.len == 0 {
            return None; // idle line between frames
        }
        let len = core::mem::take(&mut self.len);
        let result = Self::decode(&mut self.buf[..len]);
        Some(match result {
            Ok(message) => {
                self.counters.frames = self.counters.frames.wrapping_add(1);
                Ok(message)
            }
            Err(e) => self.fail(e, len),
        })
    }

    fn fail(&mut self, error: FrameError, bytes: usize) -> Result<Received, FrameError> {
        let c = &mut self.counters;
        c.errors = c.errors.wrapping_add(1);
        c.discarded_bytes = c.discarded_bytes.wrapping_add(bytes as u32);
        if error == FrameError::Crc {
            c.crc_errors = c.crc_errors.wrapping_add(1);
        }
        Err(error)
    }

    fn decode(encoded: &mut [u8]) -> Result<Received, FrameError> {
        let len = cobs::decode_in_place(encoded).map_err(|_| FrameError::Cobs)?;
        if len < CRC_LEN + 2 {
            return Err(FrameError::Runt);
        }
        let (body, crc) = encoded[..len].split_at(len - CRC_LEN);
        let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if CRC.checksum(body) != expected {
            return Err(FrameError::Crc);
        }
        if !is_sealed_type(body[1]) {
            let message = Message::parse(body).map_err(FrameError::Malformed)?;
            return Ok(Received {
                message,
                seal: None,
            });
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
        // Cannot fail: the whole body fits MAX_MESSAGE_LEN, or the buffer would have overflowed.
        let _ = seal.authenticated.extend_from_slice(authenticated);
        seal.tag.copy_from_slice(tag);
        Ok(Received {
            message,
            seal: Some(seal),
        })
    }
}
