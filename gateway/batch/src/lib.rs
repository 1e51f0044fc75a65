//! # outpost-batch: the batch format
//!
//! How an Outpost gateway packs the readings of a time window for the cellular uplink, and how the
//! cloud unpacks them. The gateway seals batches with it; the cloud embeds it to decode them. The
//! format itself is specified in `docs/batch-format.md`, which a decoder in another language can
//! be written from.
//!
//! A batch is an uncompressed header (gateway id, batch sequence, time range, reading count,
//! dictionary id), a zstd-compressed columnar body and a CRC-32 over everything before it. In the
//! body each source (a node uid, a Modbus device) has one timestamp column shared by its channels
//! (delta-of-delta, zigzag varints); decimal channels are delta or delta-of-delta varints of the
//! raw integer, float channels are Gorilla XOR coded, and a presence bitmap appears only for a
//! channel that misses some samples.
//!
//! What it is:
//! - [`BatchBuilder`]: `push` readings, then `seal` them into bytes. Deterministic: the same
//!   readings pushed in the same order seal to the same bytes, so a resend is byte-identical and
//!   the cloud dedupes by (gateway id, batch sequence).
//! - [`read_header`]: the [`BatchHeader`] of a batch, checksum-verified, without decompressing.
//! - [`decode`]: a [`DecodedBatch`], whose [`readings`](DecodedBatch::readings) iterate
//!   [`Reading`]s and whose [`write_json_lines`](DecodedBatch::write_json_lines) prints them.
//! - [`train_dictionary`], [`Dictionary`], [`Dictionaries`]: an optional zstd dictionary trained
//!   from the site's own past batches ([`raw_body`]); its id travels in the header.
//! - [`Value`]: a decimal (`raw × 10^exp`) or a float.
//!
//! What it never does: I/O beyond the writer a caller hands to `write_json_lines`, clocks, threads,
//! async, storage. It never panics on any input: every malformed, truncated or bit-flipped batch
//! is a [`DecodeError`] saying what is wrong, and no input makes it allocate beyond the format's
//! limits ([`MAX_READINGS`], [`MAX_RAW_BODY_LEN`]).

#![forbid(unsafe_code)]

mod body;
mod builder;
mod decode;
mod dictionary;
mod error;
mod gorilla;
mod header;
mod value;
mod varint;

pub use builder::{BatchBuilder, PushError, SealError};
pub use decode::{DecodeError, DecodedBatch, Reading, Readings, decode, raw_body, read_header};
pub use dictionary::{
    Dictionaries, Dictionary, DictionaryError, DictionaryIdClash, MAX_DICTIONARY_LEN,
    MIN_TRAINING_SAMPLES, TrainError, train_dictionary,
};
pub use header::{BatchHeader, GatewayId, GatewayIdError, MAX_GATEWAY_ID_LEN};
pub use value::{Value, ValueKind};

/// The first four bytes of every batch.
pub const MAGIC: [u8; 4] = *b"OPBT";

/// The format version this crate writes and reads. A decoder rejects any other version with
/// [`DecodeError::UnsupportedVersion`] rather than guessing.
pub const FORMAT_VERSION: u8 = 1;

/// Header flag (byte 5, bit 0): every timestamp in the batch was taken from the gateway's wall
/// clock while it was not synchronised, and could not be corrected (its kernel boot ended, or it
/// waited the gateway's `clock.max_hold`). Order and spacing are right, absolute time is not.
pub const FLAG_UNSYNCHRONISED: u8 = 0x01;
/// Every header flag this crate knows; a decoder rejects any other.
pub const KNOWN_FLAGS: u8 = FLAG_UNSYNCHRONISED;

/// Most readings in one batch. A gateway with 32 nodes × 4 channels at 10 Hz fills it in 13
/// minutes. It bounds the decoder's memory: 16 bytes per reading for the decoded columns (a
/// timestamp per sample, a value per reading), plus the decompressed body.
pub const MAX_READINGS: u32 = 1 << 20;

/// Longest decompressed body, and so the most a decoder ever asks zstd to produce. A batch whose
/// body would be longer does not seal ([`SealError::TooLarge`]); keep batches well below it with
/// [`BatchBuilder::encoded_size_estimate`].
pub const MAX_RAW_BODY_LEN: u32 = 32 << 20;

/// Longest source or channel name, in bytes (names are 1 to 255 bytes of UTF-8).
pub const MAX_NAME_LEN: usize = 255;

/// The zstd level of every batch (see `docs/BENCHMARKS.md` for why this one). Part of the
/// determinism promise: changing it changes sealed bytes, never their meaning.
pub const ZSTD_LEVEL: i32 = 19;

/// The zstd window of every batch, as a power of two (128 KiB): what level 19 would choose for
/// a body of that size. Bounds the compressor's memory for larger bodies (its hash and chain
/// tables are half the window each); part of the determinism promise like [`ZSTD_LEVEL`].
pub const ZSTD_WINDOW_LOG: u32 = 17;
