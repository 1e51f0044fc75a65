//! The node's firmware slots and update state, as the OTA core sees them.
//!
//! Design: the OTA core (IO-free, like [`NodeLink`](crate::NodeLink)) touches flash only through
//! the two small traits here, so the same core runs on the RP2040, in the simulator and in tests
//! with a fake. [`BootFlash`] is embassy-boot's updater method for method; [`RecordFlash`] is
//! the one sector where the node keeps its transfer record. Nothing here decides anything about
//! an update: that is the core's job (docs/ota-design.md §3).
//!
//! - [`layout`]: the RP2040 flash layout, the one place its numbers are written;
//! - [`RecordSector`]: [`RecordFlash`] over any `NorFlash` partition;
//! - [`state_page`]: what Outpost's bootloader checks in embassy-boot's STATE page before
//!   `prepare_boot` (a torn erase, risk R6);
//! - `EmbassyBoot` (feature `embassy-boot`): [`BootFlash`] over embassy-boot's blocking
//!   updater, generic over `NorFlash`, for the board and the simulator alike.
//!
//! The state a boot leaves (embassy-boot 0.7, docs/ota-design.md §2.1):
//!
//! | STATE holds | [`BootState`] | the next boot |
//! |---|---|---|
//! | `BOOT`, erased or anything else | `Boot` | boots ACTIVE |
//! | `SWAP`, swap not complete | `Swap` (the old image, after `mark_updated`) | swaps, boots the new image |
//! | `SWAP`, swap complete | `Swap` (the new image, on trial) | reverts, writes `REVERT` |
//! | `REVERT` | `Revert` | boots ACTIVE (the old image) |
//! | `DFU_DETACH` | `DfuDetach` | boots ACTIVE; Outpost never writes it |

use embedded_storage::nor_flash::NorFlashErrorKind;

pub mod layout;
mod record;
pub mod state_page;

#[cfg(feature = "embassy-boot")]
mod embassy;

#[cfg(feature = "embassy-boot")]
pub use self::embassy::EmbassyBoot;
pub use self::layout::SECTOR;
pub use self::record::RecordSector;

/// One DFU sector's worth of image bytes: the unit [`BootFlash::write_sector`] writes.
pub type Sector = [u8; SECTOR];

/// What embassy-boot's STATE page says, as the running application reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootState {
    /// Normal running (STATE holds `BOOT`, is erased, or holds anything that is no other magic).
    Boot,
    /// `mark_updated` was called: in the old image, the next boot swaps; in the new image
    /// (swap complete), this boot is a trial and any reset before `mark_booted` reverts.
    Swap,
    /// The bootloader reverted a trial that ended without `mark_booted`. Also seen by a new image
    /// whose `mark_booted` was cut short (docs/ota-design.md §2.2): compare versions.
    Revert,
    /// embassy-boot's request to stay in a DFU mode; Outpost never sets it.
    DfuDetach,
}

/// Why a [`BootFlash`] call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFlashError {
    /// The flash driver failed. In the simulator this is also what a power cut looks like to
    /// code that keeps running (see `sim::flash`).
    Flash(NorFlashErrorKind),
    /// A DFU write or `mark_updated` while the state is `Swap`: a trial (or an install that has
    /// not rebooted yet) is in progress, and embassy-boot refuses to touch DFU then.
    InTrial,
    /// A sector index at or beyond the slot's last sector.
    SectorOutOfRange { index: u32 },
    /// A read that ends beyond the DFU partition.
    OutOfBounds,
}

impl core::fmt::Display for BootFlashError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootFlashError::Flash(kind) => write!(f, "flash error: {kind}"),
            BootFlashError::InTrial => f.write_str("an update is installing or on trial"),
            BootFlashError::SectorOutOfRange { index } => {
                write!(f, "sector {index} is beyond the firmware slot")
            }
            BootFlashError::OutOfBounds => f.write_str("read beyond the DFU partition"),
        }
    }
}

/// The firmware slots and embassy-boot's state, as the OTA core uses them (docs/ota-design.md
/// §3.1).
///
/// Rules for callers, from how embassy-boot works:
/// - a sector is written whole, and is read back before it counts as written;
/// - nothing is written while [`boot_state`](BootFlash::boot_state) is `Swap`
///   ([`BootFlashError::InTrial`]);
/// - `mark_updated` only after the image in DFU was verified; the next reset installs it.
pub trait BootFlash {
    /// Bytes in the ACTIVE slot: the largest image the node can take.
    fn slot_size(&self) -> u32;

    /// What STATE says now.
    fn boot_state(&mut self) -> Result<BootState, BootFlashError>;

    /// Erases DFU sector `index` and programs `data` into it. Writing the same sector again is
    /// safe: it is erased again first.
    fn write_sector(&mut self, index: u32, data: &Sector) -> Result<(), BootFlashError>;

    /// Reads DFU from `offset` (bytes from the start of DFU) into `buf`.
    fn read_dfu(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), BootFlashError>;

    /// Asks the bootloader to swap DFU into ACTIVE at the next boot (STATE `SWAP`).
    fn mark_updated(&mut self) -> Result<(), BootFlashError>;

    /// Confirms the running image (STATE `BOOT`): ends a trial, or acknowledges a revert.
    fn mark_booted(&mut self) -> Result<(), BootFlashError>;
}

/// Why a [`RecordFlash`] call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The flash driver failed (in the simulator, also a power cut).
    Flash(NorFlashErrorKind),
    /// The range ends beyond the record's sector.
    OutOfBounds,
    /// A program would have to turn a 0 bit back into 1, which only an erase does.
    SetsBits { offset: u32 },
}

impl core::fmt::Display for RecordError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RecordError::Flash(kind) => write!(f, "flash error: {kind}"),
            RecordError::OutOfBounds => f.write_str("beyond the OTA record's sector"),
            RecordError::SetsBits { offset } => {
                write!(f, "programming byte {offset} would need an erase first")
            }
        }
    }
}

/// The one 4 KiB sector that holds the node's OTA transfer record (layout::OTA_RECORD,
/// docs/ota-design.md §3.3). Fields are written once each, 1 → 0, and the sector is erased
/// only when a new image is offered.
pub trait RecordFlash {
    /// Reads `buf.len()` bytes from `offset` (bytes from the start of the sector).
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), RecordError>;

    /// Programs `bytes` at `offset`: bits can only go from 1 to 0, and a program that would
    /// need a 0 to become 1 is refused before anything is written.
    fn program(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RecordError>;

    /// Erases the whole sector (every byte reads `0xFF`).
    fn erase(&mut self) -> Result<(), RecordError>;
}
