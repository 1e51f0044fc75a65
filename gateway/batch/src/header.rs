//! The uncompressed header, the frame around the body, and the CRC-32 trailer.
//!
//! ```text
//! "OPBT" | version | flags | id len | gateway id | seq u64 | first ts i64 | last ts i64
//!        | readings u32 | dictionary id u32 | raw body len u32 | body len u32 | body | CRC-32 u32
//! ```
//!
//! All integers little-endian; the CRC (CRC-32/ISO-HDLC) covers every byte before it. See
//! `docs/batch-format.md` §2.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use crc::{CRC_32_ISO_HDLC, Crc, Table};
use serde::Serialize;

use crate::error::DecodeError;
use crate::{FORMAT_VERSION, MAGIC, MAX_RAW_BODY_LEN, MAX_READINGS};

/// CRC-32/ISO-HDLC (the Ethernet/zlib CRC, as in the node link), slice-by-16 tables.
pub(crate) const CRC: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISO_HDLC);
pub(crate) const CRC_LEN: usize = 4;

/// Longest gateway id, in bytes.
pub const MAX_GATEWAY_ID_LEN: usize = 64;

/// Bytes of the header before the gateway id: magic, version, flags, id length.
const PREFIX_LEN: usize = 4 + 1 + 1 + 1;
/// Bytes of the header after the gateway id: seq, first ts, last ts, readings, dictionary id,
/// raw body length, body length.
const FIELDS_LEN: usize = 8 + 8 + 8 + 4 + 4 + 4 + 4;

/// Header length for a gateway id of `id_len` bytes.
pub(crate) const fn header_len(id_len: usize) -> usize {
    PREFIX_LEN + id_len + FIELDS_LEN
}

/// The gateway's identity as it travels in every batch: 1 to 64 bytes of UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct GatewayId(String);

/// A gateway id that is empty or longer than [`MAX_GATEWAY_ID_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gateway id must be 1 to {MAX_GATEWAY_ID_LEN} bytes, got {len}")]
pub struct GatewayIdError {
    pub len: usize,
}

impl GatewayId {
    pub fn new(id: impl Into<String>) -> Result<GatewayId, GatewayIdError> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_GATEWAY_ID_LEN {
            return Err(GatewayIdError { len: id.len() });
        }
        Ok(GatewayId(id))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for GatewayId {
    type Err = GatewayIdError;

    fn from_str(s: &str) -> Result<GatewayId, GatewayIdError> {
        GatewayId::new(s)
    }
}

impl AsRef<str> for GatewayId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a batch says about itself before its body is decompressed: enough for the cloud to index,
/// dedupe by (`gateway_id`, `seq`) and pick the dictionary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchHeader {
    /// Format version; this crate writes and reads [`FORMAT_VERSION`].
    pub version: u8,
    /// Header flag [`crate::FLAG_UNSYNCHRONISED`]: the timestamps come from a wall clock that was
    /// never synchronised. Their order and spacing are right; their absolute time is not.
    /// In JSON only when set, so an unflagged header prints as before the flag existed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unsynchronised: bool,
    pub gateway_id: GatewayId,
    /// The gateway's batch sequence number.
    pub seq: u64,
    /// Earliest reading timestamp in the batch, Unix milliseconds.
    pub first_ts_ms: i64,
    /// Latest reading timestamp in the batch, Unix milliseconds.
    pub last_ts_ms: i64,
    /// Number of readings (values) in the batch, 1 to [`MAX_READINGS`].
    pub reading_count: u32,
    /// The trained zstd dictionary the body was compressed with, if any.
    pub dictionary_id: Option<NonZeroU32>,
    /// Length of the body once decompressed.
    pub raw_body_len: u32,
    /// Length of the compressed body as stored in the batch.
    pub body_len: u32,
    /// Length of the whole batch: header, body and checksum.
    pub batch_len: usize,
}

impl BatchHeader {
    /// Offset of the compressed body in the batch.
    pub(crate) fn body_offset(&self) -> usize {
        header_len(self.gateway_id.0.len())
    }
}

/// The header fields the encoder fills in.
pub(crate) struct HeaderFields<'a> {
    pub(crate) gateway_id: &'a GatewayId,
    pub(crate) flags: u8,
    pub(crate) seq: u64,
    pub(crate) first_ts_ms: i64,
    pub(crate) last_ts_ms: i64,
    pub(crate) reading_count: u32,
    pub(crate) dictionary_id: Option<NonZeroU32>,
    pub(crate) raw_body_len: u32,
}

/// Writes header, compressed body and checksum.
pub(crate) fn emit(fields: &HeaderFields<'_>, body: &[u8]) -> Vec<u8> {
    let id = fields.gateway_id.as_str().as_bytes();
    let mut out = Vec::with_capacity(header_len(id.len()) + body.len() + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(fields.flags);
    out.push(id.len() as u8); // GatewayId guarantees 1..=64
    out.extend_from_slice(id);
    out.extend_from_slice(&fields.seq.to_le_bytes());
    out.extend_from_slice(&fields.first_ts_ms.to_le_bytes());
    out.extend_from_slice(&fields.last_ts_ms.to_le_bytes());
    out.extend_from_slice(&fields.reading_count.to_le_bytes());
    out.extend_from_slice(
        &fields
            .dictionary_id
            .map_or(0, NonZeroU32::get)
            .to_le_bytes(),
    );
    out.extend_from_slice(&fields.raw_body_len.to_le_bytes());
    // The caller bounds the raw body by MAX_RAW_BODY_LEN, so its compressed form fits a u32.
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let crc = CRC.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn le<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&bytes[at..at + N]);
    a
}

/// Reads and checks the header of a whole batch (see [`crate::read_header`]).
pub(crate) fn parse(bytes: &[u8]) -> Result<BatchHeader, DecodeError> {
    let truncated = |needed: usize| DecodeError::Truncated {
        len: bytes.len(),
        needed,
    };
    if bytes.len() < PREFIX_LEN {
        // Say "bad magic" rather than "truncated" when even the bytes we have are not ours.
        if bytes.len() >= 4 && bytes[..4] != MAGIC {
            return Err(DecodeError::BadMagic {
                found: le(bytes, 0),
            });
        }
        return Err(truncated(PREFIX_LEN));
    }
    if bytes[..4] != MAGIC {
        return Err(DecodeError::BadMagic {
            found: le(bytes, 0),
        });
    }
    let version = bytes[4];
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let flags = bytes[5];
    let id_len = usize::from(bytes[6]);
    let body_at = header_len(id_len);
    if bytes.len() < body_at {
        return Err(truncated(body_at + CRC_LEN));
    }
    let mut at = PREFIX_LEN + id_len;
    let mut field = |n: usize| {
        let f = at;
        at += n;
        f
    };
    let seq = u64::from_le_bytes(le(bytes, field(8)));
    let first_ts_ms = i64::from_le_bytes(le(bytes, field(8)));
    let last_ts_ms = i64::from_le_bytes(le(bytes, field(8)));
    let reading_count = u32::from_le_bytes(le(bytes, field(4)));
    let dictionary_id = NonZeroU32::new(u32::from_le_bytes(le(bytes, field(4))));
    let raw_body_len = u32::from_le_bytes(le(bytes, field(4)));
    let body_len = u32::from_le_bytes(le(bytes, field(4)));
    let batch_len = body_at
        .saturating_add(body_len as usize)
        .saturating_add(CRC_LEN);
    if bytes.len() < batch_len {
        return Err(truncated(batch_len));
    }
    if bytes.len() > batch_len {
        return Err(DecodeError::TrailingBytes {
            batch_len,
            extra: bytes.len() - batch_len,
        });
    }
    let stored = u32::from_le_bytes(le(bytes, batch_len - CRC_LEN));
    let computed = CRC.checksum(&bytes[..batch_len - CRC_LEN]);
    if stored != computed {
        return Err(DecodeError::ChecksumMismatch { stored, computed });
    }

    // The bytes are as the encoder wrote them; now check that what it wrote is a valid header.
    let invalid = |problem| Err(DecodeError::InvalidHeader(problem));
    if flags & !crate::KNOWN_FLAGS != 0 {
        return invalid("reserved flags are set");
    }
    let Ok(id) = std::str::from_utf8(&bytes[PREFIX_LEN..PREFIX_LEN + id_len]) else {
        return invalid("gateway id is not UTF-8");
    };
    let Ok(gateway_id) = GatewayId::new(id) else {
        return invalid("gateway id is empty or longer than 64 bytes");
    };
    if reading_count == 0 || reading_count > MAX_READINGS {
        return invalid("reading count is 0 or above the format's limit");
    }
    if first_ts_ms > last_ts_ms {
        return invalid("first timestamp is after the last");
    }
    if raw_body_len == 0 || raw_body_len > MAX_RAW_BODY_LEN {
        return invalid("raw body length is 0 or above the format's limit");
    }
    Ok(BatchHeader {
        version,
        unsynchronised: flags & crate::FLAG_UNSYNCHRONISED != 0,
        gateway_id,
        seq,
        first_ts_ms,
        last_ts_ms,
        reading_count,
        dictionary_id,
        raw_body_len,
        body_len,
        batch_len,
    })
}
