//! A simulated boot: what Outpost's bootloader (embassy-boot-rp) does at reset, run on the
//! flash file, then a look at what ACTIVE holds.
//!
//! The bootloader here is embassy-boot's own `BootLoader::prepare_boot` over the file's ACTIVE,
//! DFU and STATE regions, with the 4 KiB buffer embassy-boot-rp uses: the simulator runs the
//! real swap and revert code, not a copy of it. Before it, as Outpost's bootloader does, the
//! STATE page is checked for a torn erase ([`crate::boot::state_page`]).

use embassy_boot::{AlignedBuffer, BootError, BootLoader, BootLoaderConfig};
use embedded_storage::nor_flash::{NorFlashError, NorFlashErrorKind, ReadNorFlash};

use super::flash::{FlashError, FlashFile};
use super::image::{ImageError, SimImage};
use crate::boot::layout::{self, SECTOR};
use crate::boot::state_page::{self, StatePage};
use crate::boot::{BootFlash, BootFlashError, BootState};

/// What one simulated boot found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootReport {
    /// What the booted application reads from STATE (`BootFlash::boot_state`): `Swap` in a
    /// trial, `Revert` after a revert.
    pub state: BootState,
    /// What `prepare_boot` returned: the state it found, before acting on it. `Swap` after a
    /// swap and after a revert alike (embassy-boot 0.7 returns the state it read, although a
    /// revert ends by writing `REVERT`).
    pub prepared: BootState,
    /// Whether the bootloader had to finish a torn STATE erase first.
    pub state_page: StatePage,
    /// ACTIVE's image, or why it is not a whole one: a bricked node.
    pub image: Result<SimImage, ImageError>,
}

impl BootReport {
    /// The image that runs, if any.
    #[must_use]
    pub fn running(&self) -> Option<&SimImage> {
        self.image.as_ref().ok()
    }
}

/// Why a simulated boot did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFailure {
    /// The power was cut during the boot (a swap or revert step, or a STATE write).
    PowerCut,
    /// The flash failed otherwise; on the board the bootloader panics and the chip resets.
    Flash(NorFlashErrorKind),
    /// embassy-boot's `BadMagic` (not returned by 0.7's blocking bootloader, kept for
    /// completeness).
    BadMagic,
}

impl std::fmt::Display for BootFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootFailure::PowerCut => f.write_str("the power was cut during the boot"),
            BootFailure::Flash(kind) => write!(f, "flash error during the boot: {kind}"),
            BootFailure::BadMagic => f.write_str("the bootloader found a bad magic"),
        }
    }
}

impl std::error::Error for BootFailure {}

/// The bootloader, as the simulator runs it.
#[derive(Debug, Clone, Copy)]
pub struct Bootloader {
    /// Check STATE for a torn erase before `prepare_boot` (true: what Outpost's bootloader
    /// does). False runs embassy-boot alone, to show what the check prevents.
    pub finish_torn_state_erase: bool,
}

impl Default for Bootloader {
    fn default() -> Self {
        Bootloader {
            finish_torn_state_erase: true,
        }
    }
}

impl Bootloader {
    /// Boots the flash: checks STATE, runs `prepare_boot` (swap, revert or nothing), then
    /// reads ACTIVE's image.
    ///
    /// # Errors
    /// A power cut (with `OnPowerCut::Fail`) or a flash error during the boot.
    pub fn boot(&self, flash: &FlashFile) -> Result<BootReport, BootFailure> {
        let failure = |kind: NorFlashErrorKind| {
            if flash.power_was_cut() {
                BootFailure::PowerCut
            } else {
                BootFailure::Flash(kind)
            }
        };
        let flash_failure = |error: FlashError| failure(error.kind());

        let mut state = flash.region(layout::BOOTLOADER_STATE);
        let state_page = if self.finish_torn_state_erase {
            state_page::finish_torn_erase(&mut state).map_err(flash_failure)?
        } else {
            StatePage::Intact
        };

        let mut bootloader = BootLoader::new(BootLoaderConfig {
            active: flash.region(layout::ACTIVE),
            dfu: flash.region(layout::DFU),
            state,
        });
        // embassy-boot-rp's default buffer: one page, so each swap step is one read and one
        // program of 4 KiB.
        let mut page = Box::new(AlignedBuffer([0u8; SECTOR]));
        let prepared = bootloader
            .prepare_boot(&mut page.0)
            .map_err(|error| match error {
                BootError::Flash(kind) => failure(kind),
                BootError::BadMagic => BootFailure::BadMagic,
            })?;

        let mut slot = vec![0u8; layout::ACTIVE.size as usize];
        flash
            .region(layout::ACTIVE)
            .read(0, &mut slot)
            .map_err(flash_failure)?;
        let state = flash
            .boot_flash()
            .boot_state()
            .map_err(|error| match error {
                BootFlashError::Flash(kind) => failure(kind),
                // Reading STATE has no other failure.
                _ => failure(NorFlashErrorKind::Other),
            })?;
        Ok(BootReport {
            state,
            prepared: prepared.into(),
            state_page,
            image: SimImage::parse(&slot),
        })
    }
}
