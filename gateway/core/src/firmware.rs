//! Node firmware artifacts: what a signed image must say before a single byte of it goes to a
//! node.
//!
//! An image is signed like every Outpost artifact (`update::signing`: the manifest `IMAGE.sig`,
//! role-bound keys), in the role `firmware`, with these conventions:
//!
//! | manifest field | for node firmware |
//! |---|---|
//! | `role` | `firmware` (a gateway-update or operator key cannot sign an image) |
//! | `package` | [`PACKAGE`] |
//! | `version` | the image's version, `MAJOR.MINOR.PATCH`, each 0–255 (what HELLO reports) |
//! | `architecture` | the board it is built for: `rp2040-hw{R}`, R the hardware revision 0–255 |
//! | `floor` | the anti-rollback floor: once a node runs this image, nothing below the floor is taken |
//! | `expires` | after this the gateway refuses the manifest |
//!
//! [`admit`] checks a manifest against the image found beside it, the fleet's firmware keys, the
//! wall time and the floor already in force, and answers the facts a transfer needs or why not,
//! in words a technician can act on. It reads nothing: the adapter hands it bytes and digests.

use std::fmt;

use outpost_proto::FwVersion;

use crate::update::signing::{Found, PublicKey, Role, SignedManifest, VerifyError};

/// The `package` of every node firmware manifest.
pub const PACKAGE: &str = "outpost-node";

/// The largest image taken: the RP2040's ACTIVE slot (512 KiB of its 2 MiB flash, so a swap or a
/// revert takes about 13 s; docs/ota-design.md, "Flash layout").
pub const MAX_IMAGE_BYTES: u64 = 512 * 1024;

/// The manifest's `architecture` for hardware revision `hw_rev`.
#[must_use]
pub fn board(hw_rev: u8) -> String {
    format!("rp2040-hw{hw_rev}")
}

/// The hardware revision a board name is for.
#[must_use]
pub fn hw_rev_of(board: &str) -> Option<u8> {
    let digits = board.strip_prefix("rp2040-hw")?;
    let canonical = !digits.is_empty() && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// `MAJOR.MINOR.PATCH`, each 0–255 without leading zeros.
pub fn parse_version(text: &str) -> Result<FwVersion, String> {
    let part = |p: &str| -> Option<u8> {
        let canonical = !p.is_empty() && (p == "0" || !p.starts_with('0'));
        canonical.then(|| p.parse().ok()).flatten()
    };
    let mut parts = text.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(c), None) => match (part(a), part(b), part(c)) {
            (Some(major), Some(minor), Some(patch)) => Ok(FwVersion {
                major,
                minor,
                patch,
            }),
            _ => Err(format!(
                "`{text}` is not MAJOR.MINOR.PATCH with each 0 to 255"
            )),
        },
        _ => Err(format!("`{text}` is not MAJOR.MINOR.PATCH")),
    }
}

fn ordered(v: FwVersion) -> (u8, u8, u8) {
    (v.major, v.minor, v.patch)
}

/// A signed image the gateway may send to a node of its hardware revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub file: String,
    pub size: u64,
    pub sha256: [u8; 32],
    pub version: FwVersion,
    /// Nothing below this may be taken once this image was.
    pub floor: FwVersion,
    pub hw_rev: u8,
    /// Unix seconds after which the manifest is refused.
    pub expires_unix_s: u64,
}

/// Why an image is refused. Each says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The signature, the key, the role, the file's name, size or digest, or the expiry.
    Signature(VerifyError),
    /// Signed as something other than node firmware.
    NotFirmware { package: String },
    /// The manifest's version or floor is not a node firmware version.
    BadVersion(String),
    /// The board is not `rp2040-hw{R}`.
    BadBoard(String),
    /// Built for another hardware revision than the one asked for.
    WrongHardware { image: u8, wanted: u8 },
    /// Below the floor already in force (anti-rollback).
    BelowFloor {
        version: FwVersion,
        floor: FwVersion,
    },
    /// The manifest's own floor is above its version.
    FloorAboveVersion {
        version: FwVersion,
        floor: FwVersion,
    },
    /// Larger than a slot.
    TooLarge { size: u64 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Signature(e) => write!(f, "{e}"),
            Refusal::NotFirmware { package } => write!(
                f,
                "signed as package `{package}`, not node firmware (`{PACKAGE}`): sign it with `outpost firmware sign`"
            ),
            Refusal::BadVersion(why) => write!(f, "version: {why}"),
            Refusal::BadBoard(board) => write!(
                f,
                "built for board `{board}`, not rp2040-hw<revision>: sign it with `--hw-rev`"
            ),
            Refusal::WrongHardware { image, wanted } => write!(
                f,
                "built for hardware revision {image}, the node is revision {wanted}"
            ),
            Refusal::BelowFloor { version, floor } => write!(
                f,
                "version {version} is below the floor {floor} already in force (anti-rollback): sign a newer version"
            ),
            Refusal::FloorAboveVersion { version, floor } => {
                write!(
                    f,
                    "the manifest's floor {floor} is above its version {version}"
                )
            }
            Refusal::TooLarge { size } => write!(
                f,
                "{size} bytes, more than a slot holds ({MAX_IMAGE_BYTES})"
            ),
        }
    }
}

impl Refusal {
    /// The refusal's name in the API and the audit log.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::Signature(VerifyError::DigestMismatch | VerifyError::SizeMismatch { .. }) => {
                "damaged"
            }
            Refusal::Signature(VerifyError::Expired { .. }) => "expired",
            Refusal::Signature(_) => "bad-signature",
            Refusal::NotFirmware { .. } | Refusal::BadVersion(_) | Refusal::BadBoard(_) => {
                "not-firmware"
            }
            Refusal::WrongHardware { .. } => "wrong-hardware",
            Refusal::BelowFloor { .. } | Refusal::FloorAboveVersion { .. } => "below-floor",
            Refusal::TooLarge { .. } => "too-large",
        }
    }
}

/// What [`admit`] holds an image to.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The fleet's firmware public keys.
    pub keys: &'a [PublicKey],
    /// The hardware revision of the node(s) it is for; `None` to take any board.
    pub hw_rev: Option<u8>,
    /// The floor already in force: the highest floor of an image taken before.
    pub floor: Option<FwVersion>,
    /// Wall time, Unix ms.
    pub now_unix_ms: i64,
}

/// Checks a firmware manifest against the image found beside it.
pub fn admit(
    manifest: &SignedManifest,
    found: &Found,
    expect: &Expect<'_>,
) -> Result<Firmware, Refusal> {
    if found.size > MAX_IMAGE_BYTES {
        return Err(Refusal::TooLarge { size: found.size });
    }
    let m = manifest
        .verify(expect.keys, Role::Firmware, found, expect.now_unix_ms)
        .map_err(Refusal::Signature)?;
    let a = &m.artifact;
    if a.package != PACKAGE {
        return Err(Refusal::NotFirmware {
            package: a.package.clone(),
        });
    }
    let version = parse_version(&a.version).map_err(Refusal::BadVersion)?;
    let floor = parse_version(&m.validity.floor).map_err(Refusal::BadVersion)?;
    // Every field's form first, then what the values say: the node checks in this order too
    // (`outpost_proto::manifest::check`), so both name the same refusal.
    let hw_rev =
        hw_rev_of(&a.architecture).ok_or_else(|| Refusal::BadBoard(a.architecture.clone()))?;
    if ordered(floor) > ordered(version) {
        return Err(Refusal::FloorAboveVersion { version, floor });
    }
    if let Some(wanted) = expect.hw_rev
        && wanted != hw_rev
    {
        return Err(Refusal::WrongHardware {
            image: hw_rev,
            wanted,
        });
    }
    if let Some(kept) = expect.floor
        && ordered(version) < ordered(kept)
    {
        return Err(Refusal::BelowFloor {
            version,
            floor: kept,
        });
    }
    Ok(Firmware {
        file: a.file.clone(),
        size: a.size,
        sha256: a.sha256,
        version,
        floor,
        hw_rev,
        expires_unix_s: m.validity.expires_unix_s,
    })
}

/// An image and its manifest in one message: the manifest's text (`IMAGE.sig`, which ends with
/// its `signature` line), then the image's bytes. How an image travels where there are no file
/// names: on `outpost/{gateway_id}/firmware` and in the local API's upload. The manifest names
/// the file and vouches for the bytes; nothing else about the message is trusted.
pub fn split_bundle(bundle: &[u8]) -> Result<(&[u8], &[u8]), String> {
    const SIGNATURE: &[u8] = b"\nsignature ";
    let search = &bundle[..bundle.len().min(crate::update::signing::MAX_MANIFEST_BYTES)];
    let at = search
        .windows(SIGNATURE.len())
        .position(|w| w == SIGNATURE)
        .ok_or("not a firmware bundle: no manifest `signature` line at its start")?;
    let end = search[at + 1..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| at + 1 + i + 1)
        .ok_or("not a firmware bundle: the manifest's `signature` line does not end")?;
    Ok(bundle.split_at(end))
}

#[cfg(test)]
mod tests;
