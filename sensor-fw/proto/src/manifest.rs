//! A node's own check of a firmware manifest, before it takes a single chunk of the image.
//!
//! The manifest is the one `outpost firmware sign` writes and the gateway admits
//! (`outpost_core::firmware`, `docs/ota.md`): a text of `name value` lines in a fixed order, the
//! last one an Ed25519 signature over every byte above it. The gateway checks it first (and also
//! its expiry, which a node without a wall clock cannot); the node checks it again against the
//! fleet firmware keys built into its image, so a gateway that is not trusted cannot flash it.
//!
//! The node holds raw Ed25519 public keys; a key is named in the manifest by its id, the first
//! eight bytes of the SHA-256 of the key, in lowercase hex. No allocation, no panic on any input:
//! the text is walked line by line in place. `outpost-core`'s tests hold this checker and the
//! gateway's to the same answers on every manifest they generate.

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::wire::{FwVersion, MAX_MANIFEST_LEN};

/// The `package` of every node firmware manifest.
pub const PACKAGE: &str = "outpost-node";

/// What a verified firmware manifest vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareManifest {
    pub size: u32,
    pub sha256: [u8; 32],
    pub version: FwVersion,
    /// Once a node runs this image, it takes nothing below this.
    pub floor: FwVersion,
    pub hw_rev: u8,
}

/// Why a node refuses a manifest. The names are the gateway's (`docs/ota.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestRefusal {
    /// Not in the manifest format, not signed by one of the node's firmware keys in the role
    /// `firmware`, or a changed byte.
    BadSignature,
    /// Signed, but not as node firmware: another role or package, or a version or board not in
    /// the firmware's form.
    NotFirmware,
    /// The manifest's floor is above its own version.
    BelowFloor,
}

impl ManifestRefusal {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ManifestRefusal::BadSignature => "bad-signature",
            ManifestRefusal::NotFirmware => "not-firmware",
            ManifestRefusal::BelowFloor => "below-floor",
        }
    }
}

/// The fields of a manifest, in their one allowed order.
const FIELDS: [&str; 12] = [
    "outpost-manifest",
    "role",
    "key",
    "file",
    "size",
    "sha256",
    "package",
    "version",
    "architecture",
    "floor",
    "expires",
    "signature",
];

/// Checks `manifest` against the node's firmware `keys`: the signature first (nothing in the
/// text is believed before it verifies), then that it is node firmware. The board, the floor in
/// force and the slot size are the caller's to compare: they are the node's facts.
pub fn check(manifest: &[u8], keys: &[[u8; 32]]) -> Result<FirmwareManifest, ManifestRefusal> {
    use ManifestRefusal::{BadSignature, BelowFloor, NotFirmware};
    if manifest.len() > MAX_MANIFEST_LEN {
        return Err(BadSignature);
    }
    let mut values: [&[u8]; 12] = [&[]; 12];
    let mut rest = manifest;
    let mut signed_len = 0;
    for (i, name) in FIELDS.iter().enumerate() {
        let end = rest.iter().position(|&b| b == b'\n').ok_or(BadSignature)?;
        let line = &rest[..end];
        let value = line
            .strip_prefix(name.as_bytes())
            .and_then(|v| v.strip_prefix(b" "))
            .ok_or(BadSignature)?;
        if value.is_empty() || value.iter().any(|&b| !b.is_ascii_graphic()) {
            return Err(BadSignature);
        }
        values[i] = value;
        if i + 1 < FIELDS.len() {
            signed_len += end + 1;
        }
        rest = &rest[end + 1..];
    }
    if !rest.is_empty() || values[0] != b"2" {
        return Err(BadSignature);
    }
    let key_id = hex::<8>(values[2]).ok_or(BadSignature)?;
    let signature = hex::<64>(values[11]).ok_or(BadSignature)?;
    let key = keys
        .iter()
        .find(|k| Sha256::digest(k.as_slice())[..8] == key_id)
        .and_then(|k| VerifyingKey::from_bytes(k).ok())
        .ok_or(BadSignature)?;
    key.verify_strict(&manifest[..signed_len], &Signature::from_bytes(&signature))
        .map_err(|_| BadSignature)?;

    // Signed: from here on the text is the signer's. A key of the fleet signing in another
    // role is not a firmware signature, as at the gateway (keys are role-bound).
    if values[1] != b"firmware" {
        return Err(BadSignature);
    }
    if values[6] != PACKAGE.as_bytes() {
        return Err(NotFirmware);
    }
    let size = decimal(values[4]).ok_or(NotFirmware)?;
    let sha256 = hex::<32>(values[5]).ok_or(NotFirmware)?;
    let version = version_of(values[7]).ok_or(NotFirmware)?;
    let floor = version_of(values[9]).ok_or(NotFirmware)?;
    let hw_rev = values[8]
        .strip_prefix(b"rp2040-hw")
        .and_then(decimal)
        .and_then(|r| u8::try_from(r).ok())
        .ok_or(NotFirmware)?;
    if floor > version {
        return Err(BelowFloor);
    }
    Ok(FirmwareManifest {
        size,
        sha256,
        version,
        floor,
        hw_rev,
    })
}

/// `MAJOR.MINOR.PATCH`, each 0–255 without leading zeros.
fn version_of(text: &[u8]) -> Option<FwVersion> {
    let mut parts = text.split(|&b| b == b'.');
    let mut part = || {
        parts
            .next()
            .and_then(decimal)
            .and_then(|v| u8::try_from(v).ok())
    };
    let (major, minor, patch) = (part()?, part()?, part()?);
    parts.next().is_none().then_some(FwVersion {
        major,
        minor,
        patch,
    })
}

/// A decimal u32 in canonical form (no sign, no leading zero).
fn decimal(text: &[u8]) -> Option<u32> {
    if text.is_empty() || (text.len() > 1 && text[0] == b'0') {
        return None;
    }
    text.iter().try_fold(0u32, |n, &b| {
        let digit = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

/// `N` bytes from exactly `2N` lowercase hex digits.
fn hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}
