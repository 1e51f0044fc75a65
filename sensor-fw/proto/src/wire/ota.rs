//! The firmware update messages of the node link (`docs/node-link.md`, "Firmware updates").
//!
//! Two small messages travel like every other one: OTA_STATUS (node → gateway: what the node
//! holds and where it is) and OTA_CONTROL (gateway → node: query, install, abort, finalize).
//! Two bulk messages carry the image, gateway → node only, and may be longer than
//! [`MAX_MESSAGE_LEN`]: OTA_OFFER (the signed manifest) and OTA_CHUNK (up to
//! [`MAX_CHUNK_LEN`] bytes of the image). A bulk message is parsed as a view into the
//! receiver's frame buffer ([`Bulk`]), never copied: the node holds one 1 KiB frame, not two.

use super::{DecodeError, EncodeError, FwVersion, MAX_MESSAGE_LEN, Reader, SEAL_LEN, Writer, tag};
use crate::PROTOCOL_VERSION;

/// Most image bytes one OTA_CHUNK carries.
pub const MAX_CHUNK_LEN: usize = 1024;
/// Longest signed manifest an OTA_OFFER carries (a firmware manifest is about 380 bytes).
pub const MAX_MANIFEST_LEN: usize = 900;
/// Largest bulk message, seal included: an OTA_CHUNK with a full chunk.
pub const MAX_BULK_MESSAGE_LEN: usize = 2 + 4 + 2 + MAX_CHUNK_LEN + SEAL_LEN;
const _: () = {
    assert!(2 + 4 + 1 + 2 + MAX_MANIFEST_LEN + SEAL_LEN <= MAX_BULK_MESSAGE_LEN);
    assert!(2 + OTA_STATUS_LEN + SEAL_LEN <= MAX_MESSAGE_LEN);
};
/// Bytes of an OTA_STATUS after version and type.
pub(super) const OTA_STATUS_LEN: usize = 4 + 1 + 1 + 2 + 8 + 2 + 1 + 3;

/// Names the image a transfer is about: the first four bytes of its SHA-256. Every OTA message
/// carries it, so a stray chunk or control of another transfer is told apart and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ImageTag(pub [u8; 4]);

impl ImageTag {
    /// The tag of the image whose SHA-256 is `sha256`.
    #[must_use]
    pub fn of(sha256: &[u8; 32]) -> Self {
        ImageTag([sha256[0], sha256[1], sha256[2], sha256[3]])
    }
}

/// The size of a transfer's chunks, chosen by the gateway in its OTA_OFFER. Chunk `i` starts at
/// byte `i × len` of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ChunkSize {
    B512 = 0,
    #[default]
    B1024 = 1,
}

impl ChunkSize {
    #[must_use]
    pub const fn bytes(self) -> usize {
        match self {
            ChunkSize::B512 => 512,
            ChunkSize::B1024 => 1024,
        }
    }

    #[must_use]
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(ChunkSize::B512),
            1 => Some(ChunkSize::B1024),
            _ => None,
        }
    }
}

/// Where a node is with an image (`docs/ota-design.md` §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OtaPhase {
    /// No transfer: nothing held, or the last one finished.
    Idle = 0,
    /// Taking chunks: `flashed`, `have` and `credit` say which.
    Receiving = 1,
    /// The whole image is in the inactive slot and its hash and signature check out.
    Verified = 2,
    /// Told to install: the node is draining its samples, then resets into the new image.
    Installing = 3,
    /// Running the new image on trial: it confirms its health or the next boot reverts.
    Trial = 4,
    /// The new image confirmed its health and is the node's image from now on.
    Confirmed = 5,
    /// The new image failed its trial; the node runs the previous one. `detail` is a
    /// [`RevertCause`].
    Reverted = 6,
    /// The node refused the offer or the image. `detail` is an [`OtaRefusal`].
    Refused = 7,
}

impl OtaPhase {
    #[must_use]
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => OtaPhase::Idle,
            1 => OtaPhase::Receiving,
            2 => OtaPhase::Verified,
            3 => OtaPhase::Installing,
            4 => OtaPhase::Trial,
            5 => OtaPhase::Confirmed,
            6 => OtaPhase::Reverted,
            7 => OtaPhase::Refused,
            _ => return None,
        })
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            OtaPhase::Idle => "idle",
            OtaPhase::Receiving => "receiving",
            OtaPhase::Verified => "verified",
            OtaPhase::Installing => "installing",
            OtaPhase::Trial => "trial",
            OtaPhase::Confirmed => "confirmed",
            OtaPhase::Reverted => "reverted",
            OtaPhase::Refused => "refused",
        }
    }
}

/// Why a node refused an image: OTA_STATUS `detail` with phase [`OtaPhase::Refused`]. The names
/// are the gateway's own refusals where they mean the same (`docs/ota.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OtaRefusal {
    BadSignature = 1,
    NotFirmware = 2,
    WrongHardware = 3,
    BelowFloor = 4,
    SameVersion = 5,
    TooLarge = 6,
    /// In a trial or installing: no new image now.
    Busy = 7,
    /// The received image's SHA-256 is not the manifest's.
    Damaged = 8,
    /// The flash refused a write or read back different bytes.
    FlashError = 9,
    /// A control for an image the node does not hold.
    UnknownImage = 10,
}

impl OtaRefusal {
    #[must_use]
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => OtaRefusal::BadSignature,
            2 => OtaRefusal::NotFirmware,
            3 => OtaRefusal::WrongHardware,
            4 => OtaRefusal::BelowFloor,
            5 => OtaRefusal::SameVersion,
            6 => OtaRefusal::TooLarge,
            7 => OtaRefusal::Busy,
            8 => OtaRefusal::Damaged,
            9 => OtaRefusal::FlashError,
            10 => OtaRefusal::UnknownImage,
            _ => return None,
        })
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            OtaRefusal::BadSignature => "bad-signature",
            OtaRefusal::NotFirmware => "not-firmware",
            OtaRefusal::WrongHardware => "wrong-hardware",
            OtaRefusal::BelowFloor => "below-floor",
            OtaRefusal::SameVersion => "same-version",
            OtaRefusal::TooLarge => "too-large",
            OtaRefusal::Busy => "busy",
            OtaRefusal::Damaged => "damaged",
            OtaRefusal::FlashError => "flash-error",
            OtaRefusal::UnknownImage => "unknown-image",
        }
    }
}

/// Why a trial image was reverted: OTA_STATUS `detail` with phase [`OtaPhase::Reverted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RevertCause {
    /// A reset during the trial that says nothing more.
    Unknown = 0,
    /// The trial's deadline passed before the image confirmed its health.
    Deadline = 1,
    /// The image crashed (panic, hard fault).
    Crash = 2,
    /// The image hung and the watchdog reset it.
    Watchdog = 3,
    /// Power was lost during the trial: a good image may be reverted by it, so the gateway
    /// tries once more.
    PowerLoss = 4,
}

impl RevertCause {
    #[must_use]
    pub const fn from_code(code: u8) -> Self {
        match code {
            1 => RevertCause::Deadline,
            2 => RevertCause::Crash,
            3 => RevertCause::Watchdog,
            4 => RevertCause::PowerLoss,
            _ => RevertCause::Unknown,
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            RevertCause::Unknown => "unknown",
            RevertCause::Deadline => "deadline",
            RevertCause::Crash => "crash",
            RevertCause::Watchdog => "watchdog",
            RevertCause::PowerLoss => "power_loss",
        }
    }
}

/// Node → gateway: where the node is with an image, after each ACCEPT, when a sector reaches
/// flash, when a chunk arrives after a missing one, on QUERY and on every phase change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtaStatus {
    /// The image this is about; zero when the node holds none.
    pub image: ImageTag,
    pub phase: OtaPhase,
    /// An [`OtaRefusal`] or a [`RevertCause`], by phase; 0 otherwise.
    pub detail: u8,
    /// Every chunk below this one is in flash.
    pub flashed: u16,
    /// Bit `i`: chunk `flashed + i` is held (in RAM or in flash). The holes below the highest
    /// set bit are what the gateway sends again.
    pub have: u64,
    /// The node takes chunks with an index below this now: the transfer's window.
    pub credit: u16,
    /// The chunk size `flashed`, `have` and `credit` count in.
    pub chunk: ChunkSize,
    /// The anti-rollback floor in force on the node: it takes no image below it.
    pub floor: FwVersion,
}

/// What an OTA_CONTROL asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OtaOp {
    /// Send an OTA_STATUS now.
    Query = 1,
    /// Check the verified image once more, mark it for a trial boot and reset into it; `arg` is
    /// the seconds the new image has to confirm its health.
    Install = 2,
    /// Forget the transfer (never during a trial).
    Abort = 3,
    /// The rollout passed: raise the floor to the image's and forget the transfer.
    Finalize = 4,
}

impl OtaOp {
    #[must_use]
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => OtaOp::Query,
            2 => OtaOp::Install,
            3 => OtaOp::Abort,
            4 => OtaOp::Finalize,
            _ => return None,
        })
    }
}

/// Gateway → node: act on the transfer of `image`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtaControl {
    pub image: ImageTag,
    pub op: OtaOp,
    /// INSTALL: the trial's deadline in seconds; 0 for the other operations.
    pub arg: u16,
}

/// Gateway → node: an image is on offer. The node checks the manifest (signature, board, version,
/// floor, size) before it takes a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtaOffer<'a> {
    pub image: ImageTag,
    pub chunk: ChunkSize,
    /// The image's signed manifest, as `outpost firmware sign` wrote it (at most
    /// [`MAX_MANIFEST_LEN`] bytes).
    pub manifest: &'a [u8],
}

/// Gateway → node: bytes `index × chunk .. + data.len()` of the image. Every chunk is a full
/// chunk but the image's last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtaChunk<'a> {
    pub image: ImageTag,
    pub index: u16,
    pub data: &'a [u8],
}

/// A message of the bulk class, borrowing its bytes from the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bulk<'a> {
    Offer(OtaOffer<'a>),
    Chunk(OtaChunk<'a>),
}

impl<'a> Bulk<'a> {
    /// Parses one bulk message (without framing and seal).
    pub fn parse(bytes: &'a [u8]) -> Result<Bulk<'a>, DecodeError> {
        if bytes.len() > MAX_BULK_MESSAGE_LEN - SEAL_LEN {
            return Err(DecodeError::TooLong);
        }
        let mut r = Reader { bytes };
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let bulk = match r.u8()? {
            tag::OTA_OFFER => {
                let image = ImageTag(r.array()?);
                let chunk = ChunkSize::from_code(r.u8()?).ok_or(DecodeError::BadValue)?;
                let len = usize::from(r.u16()?);
                if len > MAX_MANIFEST_LEN {
                    return Err(DecodeError::TooLong);
                }
                Bulk::Offer(OtaOffer {
                    image,
                    chunk,
                    manifest: r.take(len)?,
                })
            }
            tag::OTA_CHUNK => {
                let image = ImageTag(r.array()?);
                let index = r.u16()?;
                let data = r.take(r.bytes.len())?;
                if data.is_empty() || data.len() > MAX_CHUNK_LEN {
                    return Err(DecodeError::BadValue);
                }
                Bulk::Chunk(OtaChunk { image, index, data })
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(bulk)
    }

    /// The message's type byte.
    #[must_use]
    pub fn type_code(&self) -> u8 {
        match self {
            Bulk::Offer(_) => tag::OTA_OFFER,
            Bulk::Chunk(_) => tag::OTA_CHUNK,
        }
    }

    /// Bytes [`Bulk::emit`] writes.
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        2 + match self {
            Bulk::Offer(o) => 4 + 1 + 2 + o.manifest.len(),
            Bulk::Chunk(c) => 4 + 2 + c.data.len(),
        }
    }

    /// Writes the message into `buf`, returning the length written. Fails when `buf` is too
    /// small or a field is longer than the wire allows (a manifest above [`MAX_MANIFEST_LEN`],
    /// an empty chunk or one above [`MAX_CHUNK_LEN`]): `parse` would refuse it.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let len = self.buffer_len();
        let fits = match self {
            Bulk::Offer(o) => o.manifest.len() <= MAX_MANIFEST_LEN,
            Bulk::Chunk(c) => !c.data.is_empty() && c.data.len() <= MAX_CHUNK_LEN,
        };
        if !fits || buf.len() < len {
            return Err(EncodeError);
        }
        let mut w = Writer { buf, at: 0 };
        w.u8(PROTOCOL_VERSION);
        w.u8(self.type_code());
        match self {
            Bulk::Offer(o) => {
                w.put(&o.image.0);
                w.u8(o.chunk as u8);
                // Cannot truncate: at most MAX_MANIFEST_LEN, checked above.
                w.put(&(o.manifest.len() as u16).to_le_bytes());
                w.put(o.manifest);
            }
            Bulk::Chunk(c) => {
                w.put(&c.image.0);
                w.put(&c.index.to_le_bytes());
                w.put(c.data);
            }
        }
        debug_assert_eq!(w.at, len);
        Ok(w.at)
    }
}
