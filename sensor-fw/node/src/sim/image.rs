//! Firmware images the simulator can "run". It cannot execute ARM code, so an image is a header
//! the simulator interprets, then deterministic filler up to the image's size. At boot the
//! simulator reads ACTIVE's header; an image whose header or hash is wrong (torn, or pages of
//! two images mixed by a swap gone wrong) is a bricked node.
//!
//! Header, 64 bytes, little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `OPSIMIMG` |
//! | 8 | 1 | format version: 1 |
//! | 9 | 1 | behaviour: 0 normal, 1 never-confirms, 2 crash-loop, 3 hang |
//! | 10 | 3 | firmware version MAJOR, MINOR, PATCH |
//! | 13 | 1 | hardware revision |
//! | 14 | 2 | zero |
//! | 16 | 4 | payload length: the bytes after the header (image size − 64) |
//! | 20 | 12 | zero |
//! | 32 | 32 | SHA-256 of header bytes 0..32 followed by the payload |
//!
//! The payload is pseudo-random bytes (SplitMix64, seeded from the header's fields, so the same
//! command makes the same image) with runs of zeros in about one 64-byte block in eight: it
//! compresses, and COBS-encodes, about as a real firmware image does.

use outpost_proto::FwVersion;
use sha2::{Digest, Sha256};

use crate::boot::layout;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 64;
pub const MAGIC: [u8; 8] = *b"OPSIMIMG";
pub const FORMAT_VERSION: u8 = 1;
const HASHED_HEADER: usize = 32;

/// What a simulated image does once booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Runs, and confirms a trial when healthy.
    Normal,
    /// Runs, but never calls `mark_booted`: its trial ends in a revert.
    NeverConfirms,
    /// Resets soon after every boot, as a firmware that panics.
    CrashLoop,
    /// Stops answering (the watchdog resets it).
    Hang,
}

impl Behaviour {
    fn code(self) -> u8 {
        match self {
            Behaviour::Normal => 0,
            Behaviour::NeverConfirms => 1,
            Behaviour::CrashLoop => 2,
            Behaviour::Hang => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Behaviour::Normal,
            1 => Behaviour::NeverConfirms,
            2 => Behaviour::CrashLoop,
            3 => Behaviour::Hang,
            _ => return None,
        })
    }

    /// The name `make-image` and the docs use.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Normal => "normal",
            Behaviour::NeverConfirms => "never-confirms",
            Behaviour::CrashLoop => "crash-loop",
            Behaviour::Hang => "hang",
        }
    }
}

/// What an image's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimImage {
    pub version: FwVersion,
    pub hw_rev: u8,
    pub behaviour: Behaviour,
    /// The whole image's length, header included.
    pub len: u32,
}

/// Why bytes are not a whole simulator image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageError {
    /// No `OPSIMIMG` at the start: not an image, or a torn first page.
    NoMagic,
    UnknownFormat(u8),
    UnknownBehaviour(u8),
    /// The header claims more bytes than the slot holds.
    TooLong(u32),
    /// The hash does not match: part of the image is missing or from another image.
    HashMismatch,
}

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageError::NoMagic => f.write_str("no simulator image header"),
            ImageError::UnknownFormat(v) => write!(f, "unknown image format {v}"),
            ImageError::UnknownBehaviour(b) => write!(f, "unknown behaviour {b}"),
            ImageError::TooLong(len) => write!(f, "image length {len} exceeds the slot"),
            ImageError::HashMismatch => f.write_str("the image's hash does not match"),
        }
    }
}

impl std::error::Error for ImageError {}

/// Why an image cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MakeImageError {
    /// Shorter than the header, or longer than the ACTIVE slot.
    Size(usize),
}

impl std::fmt::Display for MakeImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MakeImageError::Size(size) => write!(
                f,
                "an image is {HEADER_LEN} to {} bytes, not {size}",
                layout::ACTIVE.size
            ),
        }
    }
}

impl std::error::Error for MakeImageError {}

fn hash(header: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut sha = Sha256::new();
    sha.update(&header[..HASHED_HEADER]);
    sha.update(payload);
    sha.finalize().into()
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, and fixed here, so images never change with a
/// dependency's version.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SplitMix(seed);
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        let draw = rng.next();
        if draw % 8 == 0 {
            // A zero run (padding, zeroed tables), 8 to 135 bytes.
            let run = 8 + (draw >> 8) as usize % 128;
            bytes.resize(bytes.len() + run, 0);
        } else {
            for _ in 0..8 {
                bytes.extend_from_slice(&rng.next().to_le_bytes());
            }
        }
    }
    bytes.truncate(len);
    bytes
}

impl SimImage {
    /// An image of `len` bytes in all.
    ///
    /// # Errors
    /// A length below [`HEADER_LEN`] or above the ACTIVE slot.
    pub fn new(
        version: FwVersion,
        hw_rev: u8,
        behaviour: Behaviour,
        len: usize,
    ) -> Result<Self, MakeImageError> {
        if !(HEADER_LEN..=layout::ACTIVE.size as usize).contains(&len) {
            return Err(MakeImageError::Size(len));
        }
        Ok(SimImage {
            version,
            hw_rev,
            behaviour,
            len: len as u32,
        })
    }

    fn header_fields(&self) -> [u8; HEADER_LEN] {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&MAGIC);
        header[8] = FORMAT_VERSION;
        header[9] = self.behaviour.code();
        header[10] = self.version.major;
        header[11] = self.version.minor;
        header[12] = self.version.patch;
        header[13] = self.hw_rev;
        header[16..20].copy_from_slice(&(self.len - HEADER_LEN as u32).to_le_bytes());
        header
    }

    /// The image's bytes: header, then filler.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut header = self.header_fields();
        let seed = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default())
            ^ u64::from(self.len).rotate_left(40);
        let payload = filler(seed, self.len as usize - HEADER_LEN);
        let digest = hash(&header, &payload);
        header[HASHED_HEADER..].copy_from_slice(&digest);
        let mut image = header.to_vec();
        image.extend_from_slice(&payload);
        image
    }

    /// Reads the image at the start of `slot` (a whole ACTIVE slot, or at least the image).
    ///
    /// # Errors
    /// Whatever makes the bytes not a whole image; see [`ImageError`].
    pub fn parse(slot: &[u8]) -> Result<SimImage, ImageError> {
        if slot.len() < HEADER_LEN || slot[..8] != MAGIC {
            return Err(ImageError::NoMagic);
        }
        if slot[8] != FORMAT_VERSION {
            return Err(ImageError::UnknownFormat(slot[8]));
        }
        let behaviour =
            Behaviour::from_code(slot[9]).ok_or(ImageError::UnknownBehaviour(slot[9]))?;
        let payload_len = u32::from_le_bytes([slot[16], slot[17], slot[18], slot[19]]);
        let len = payload_len.saturating_add(HEADER_LEN as u32);
        if len as usize > slot.len() || len > layout::ACTIVE.size {
            return Err(ImageError::TooLong(len));
        }
        if hash(&slot[..HEADER_LEN], &slot[HEADER_LEN..len as usize])
            != slot[HASHED_HEADER..HEADER_LEN]
        {
            return Err(ImageError::HashMismatch);
        }
        Ok(SimImage {
            version: FwVersion {
                major: slot[10],
                minor: slot[11],
                patch: slot[12],
            },
            hw_rev: slot[13],
            behaviour,
            len,
        })
    }
}

/// Parses a size as `make-image --size` takes it: bytes, or with `K`/`KiB` or `M`/`MiB`.
///
/// # Errors
/// Text that is not such a size.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let number: usize = digits
        .parse()
        .map_err(|_| format!("expected a size such as 256K, got {text:?}"))?;
    let unit = match unit {
        "" => 1,
        "K" | "k" | "KiB" => 1024,
        "M" | "MiB" => 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?} (K, M)")),
    };
    number
        .checked_mul(unit)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u8, minor: u8, patch: u8) -> FwVersion {
        FwVersion {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn an_image_reads_back_as_made_and_is_the_same_every_time() {
        let image = SimImage::new(v(1, 3, 0), 2, Behaviour::CrashLoop, 256 * 1024).unwrap();
        let bytes = image.build();
        assert_eq!(bytes.len(), 256 * 1024);
        assert_eq!(bytes, image.build());
        let mut slot = bytes.clone();
        slot.resize(layout::ACTIVE.size as usize, 0xFF);
        assert_eq!(SimImage::parse(&slot), Ok(image));
    }

    #[test]
    fn any_changed_byte_bricks_the_image() {
        let image = SimImage::new(v(1, 0, 0), 1, Behaviour::Normal, 10_000).unwrap();
        let bytes = image.build();
        for at in [0, 9, 12, 20, 40, 64, 5000, 9999] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(SimImage::parse(&damaged).is_err(), "byte {at}");
        }
    }

    #[test]
    fn the_filler_is_mostly_non_zero_with_zero_runs() {
        let bytes = SimImage::new(v(1, 3, 0), 1, Behaviour::Normal, 256 * 1024)
            .unwrap()
            .build();
        let zeros = bytes.iter().filter(|&&b| b == 0).count();
        let share = zeros as f64 / bytes.len() as f64;
        assert!((0.05..0.30).contains(&share), "zero share {share}");
        let runs = bytes
            .windows(8)
            .filter(|w| w.iter().all(|&b| b == 0))
            .count();
        assert!(runs > 100);
    }

    #[test]
    fn sizes_parse_as_make_image_takes_them() {
        assert_eq!(parse_size("256K"), Ok(256 * 1024));
        assert_eq!(parse_size("1M"), Ok(1024 * 1024));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(SimImage::new(v(1, 0, 0), 1, Behaviour::Normal, 513 * 1024).is_err());
    }
}
