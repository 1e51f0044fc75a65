//! The artifact a transfer sends, held once, and what its frames cost on the line.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use outpost_proto::cobs;
use outpost_proto::wire::{MAX_MANIFEST_LEN, SEAL_LEN};
use outpost_proto::{ChunkSize, FwVersion, ImageTag, OtaChunk, OtaOffer};
use sha2::{Digest as _, Sha256};

use crate::firmware::{Firmware, MAX_IMAGE_BYTES};

/// A frame's CRC-32 (`outpost_proto::frame`).
const CRC_LEN: usize = 4;
/// The two `0x00` delimiters around every frame.
const DELIMITERS: usize = 2;
/// OTA_CHUNK before its data: version, type, image tag, index (`docs/node-link.md` §2.3).
const CHUNK_HEADER_LEN: usize = 2 + 4 + 2;
/// OTA_OFFER before its manifest: version, type, image tag, chunk code, manifest length.
const OFFER_HEADER_LEN: usize = 2 + 4 + 1 + 2;
/// OTA_STATUS, version and type included.
const STATUS_LEN: usize = 2 + 22;
/// OTA_CONTROL, version and type included.
const CONTROL_LEN: usize = 2 + 7;

/// Bytes on the line of a sealed frame holding `message_len` message bytes, at worst: the
/// delimiters and COBS (`n + n/254 + 1`) of the message, its seal and its CRC
/// (`docs/ota-design.md` §4.4). Firmware is full of zeros, which COBS encodes at no extra cost,
/// so a real frame is at most this long.
#[must_use]
pub const fn sealed_line_len(message_len: usize) -> usize {
    DELIMITERS + cobs::max_encoded_len(message_len + SEAL_LEN + CRC_LEN)
}

/// Line bytes of an OTA_CHUNK carrying `data_len` image bytes: 1,052 for a full 1 KiB chunk
/// (`outpost_proto::frame::MAX_BULK_FRAME_LEN`), 538 for 512 bytes.
#[must_use]
pub const fn chunk_line_len(data_len: usize) -> usize {
    sealed_line_len(CHUNK_HEADER_LEN + data_len)
}

/// Line bytes of an OTA_OFFER carrying a manifest of `manifest_len` bytes.
#[must_use]
pub const fn offer_line_len(manifest_len: usize) -> usize {
    sealed_line_len(OFFER_HEADER_LEN + manifest_len)
}

/// Line bytes of an OTA_STATUS (node → gateway): 40.
pub const STATUS_LINE_LEN: usize = sealed_line_len(STATUS_LEN);
/// Line bytes of an OTA_CONTROL (gateway → node): 25.
pub const CONTROL_LINE_LEN: usize = sealed_line_len(CONTROL_LEN);

/// Why an image cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("the image is empty")]
    Empty,
    #[error("the image is {size} bytes, more than a node's slot ({max})", max = MAX_IMAGE_BYTES)]
    TooLarge { size: u64 },
    #[error("the manifest is {len} bytes, more than an OTA_OFFER carries ({max})", max = MAX_MANIFEST_LEN)]
    ManifestTooLong { len: usize },
    #[error("the image's size or SHA-256 is not the admitted one")]
    NotAdmitted,
}

/// A firmware image and its signed manifest, held once and shared: cloning an `Image` clones
/// a pointer, so eight ports updating their nodes at once hold one copy of the bytes.
#[derive(Clone)]
pub struct Image {
    inner: Arc<Inner>,
}

struct Inner {
    bytes: Arc<[u8]>,
    sha256: [u8; 32],
    manifest: Box<[u8]>,
    version: FwVersion,
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("version", &self.inner.version)
            .field("len", &self.inner.bytes.len())
            .field("tag", &self.tag())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Image {
    fn eq(&self, other: &Image) -> bool {
        self.inner.sha256 == other.inner.sha256 && self.inner.manifest == other.inner.manifest
    }
}

impl Eq for Image {}

impl Image {
    /// An image and the manifest that signs it (as `outpost firmware sign` wrote it). Its
    /// SHA-256 is computed here; the manifest's checks are `firmware::admit`'s, done before.
    pub fn new(
        bytes: impl Into<Arc<[u8]>>,
        manifest: &[u8],
        version: FwVersion,
    ) -> Result<Image, ImageError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(ImageError::Empty);
        }
        if bytes.len() as u64 > MAX_IMAGE_BYTES {
            return Err(ImageError::TooLarge {
                size: bytes.len() as u64,
            });
        }
        if manifest.len() > MAX_MANIFEST_LEN {
            return Err(ImageError::ManifestTooLong {
                len: manifest.len(),
            });
        }
        let sha256 = Sha256::digest(&bytes).into();
        Ok(Image {
            inner: Arc::new(Inner {
                bytes,
                sha256,
                manifest: manifest.into(),
                version,
            }),
        })
    }

    /// An image `firmware::admit` passed: refused unless these bytes are the admitted ones.
    pub fn admitted(
        firmware: &Firmware,
        bytes: impl Into<Arc<[u8]>>,
        manifest: &[u8],
    ) -> Result<Image, ImageError> {
        let image = Image::new(bytes, manifest, firmware.version)?;
        if image.len() as u64 != firmware.size || image.sha256() != &firmware.sha256 {
            return Err(ImageError::NotAdmitted);
        }
        Ok(image)
    }

    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.inner.bytes
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.bytes.len()
    }

    /// Never true: an empty image is refused by [`Image::new`].
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inner.bytes.is_empty()
    }

    #[must_use]
    pub fn sha256(&self) -> &[u8; 32] {
        &self.inner.sha256
    }

    /// The tag every OTA message about this image carries.
    #[must_use]
    pub fn tag(&self) -> ImageTag {
        ImageTag::of(&self.inner.sha256)
    }

    #[must_use]
    pub fn manifest(&self) -> &[u8] {
        &self.inner.manifest
    }

    #[must_use]
    pub fn version(&self) -> FwVersion {
        self.inner.version
    }

    /// How many chunks of `chunk` the image is cut into (the last one may be short).
    #[must_use]
    pub fn chunks(&self, chunk: ChunkSize) -> u16 {
        // At most 512 KiB / 512 B = 1024: Image::new refuses larger images.
        u16::try_from(self.len().div_ceil(chunk.bytes())).unwrap_or(u16::MAX)
    }

    /// Where chunk `index` lies in the image, if it is one of its chunks.
    #[must_use]
    pub fn chunk_ref(&self, chunk: ChunkSize, index: u16) -> Option<ChunkRef> {
        let offset = usize::from(index) * chunk.bytes();
        (offset < self.len()).then(|| ChunkRef {
            image: self.tag(),
            index,
            offset,
            len: chunk.bytes().min(self.len() - offset),
        })
    }

    /// The OTA_OFFER of this image in chunks of `chunk`.
    #[must_use]
    pub fn offer(&self, chunk: ChunkSize) -> OtaOffer<'_> {
        OtaOffer {
            image: self.tag(),
            chunk,
            manifest: self.manifest(),
        }
    }

    /// The OTA_CHUNK for `chunk`, borrowing its bytes from the image.
    ///
    /// # Panics
    ///
    /// When `chunk` is not a chunk of this image (a [`ChunkRef`] from another image's transfer):
    /// an adapter bug, never a node's input.
    #[must_use]
    pub fn chunk(&self, chunk: ChunkRef) -> OtaChunk<'_> {
        assert_eq!(chunk.image, self.tag(), "a chunk of another image");
        OtaChunk {
            image: chunk.image,
            index: chunk.index,
            data: &self.bytes()[chunk.range()],
        }
    }
}

/// One chunk to send: its index on the wire and where its bytes are in the image. The adapter
/// seals `Bulk::Chunk(image.chunk(chunk_ref))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub image: ImageTag,
    pub index: u16,
    /// Byte offset in the image: `index × chunk size`.
    pub offset: usize,
    /// Image bytes it carries: a full chunk but for the image's last.
    pub len: usize,
}

impl ChunkRef {
    #[must_use]
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }

    /// Its frame's length on the line, at worst ([`chunk_line_len`]).
    #[must_use]
    pub fn line_len(&self) -> usize {
        chunk_line_len(self.len)
    }
}
