//! The RP2040 node's flash layout (docs/ota-design.md §2), the one place it is written down.
//!
//! Offsets are from the start of flash; the XIP address of an offset is [`XIP_BASE`] + offset.
//! The board's `memory.x`, the bootloader's partitions, the simulator's flash file and the
//! gateway's image size cap all follow these numbers.
//!
//! | region | offset | size |
//! |---|---|---|
//! | [`BOOTLOADER`] (BOOT2 + embassy-boot-rp) | `0x000000` | 24 KiB |
//! | [`BOOTLOADER_STATE`] | `0x006000` | 4 KiB |
//! | [`ACTIVE`] | `0x007000` | 512 KiB |
//! | [`DFU`] | `0x087000` | 516 KiB |
//! | reserved | `0x108000` | 972 KiB |
//! | [`RESET_HISTORY`] | `0x1FB000` | 4 KiB |
//! | [`NODE_CONFIG_A`], [`NODE_CONFIG_B`] | `0x1FC000` | 2 × 4 KiB |
//! | [`OTA_RECORD`] | `0x1FE000` | 4 KiB |
//! | [`FLOOR_LOG`] | `0x1FF000` | 4 KiB |

/// Size of the node's flash: a W25Q16JV, 2 MiB.
pub const FLASH_SIZE: u32 = 2 * 1024 * 1024;

/// The erase unit: embassy-rp's `ERASE_SIZE`, one 4 KiB sector erase of the W25Q16JV. It is
/// also embassy-boot's page (the larger erase size of ACTIVE and DFU).
pub const SECTOR: usize = 4096;

/// Where flash appears in the RP2040's address space (XIP, cached).
pub const XIP_BASE: u32 = 0x1000_0000;

/// A contiguous range of flash, in bytes from the start of flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub offset: u32,
    pub size: u32,
}

impl Region {
    #[must_use]
    pub const fn new(offset: u32, size: u32) -> Self {
        Region { offset, size }
    }

    /// The first byte after the region.
    #[must_use]
    pub const fn end(&self) -> u32 {
        self.offset + self.size
    }

    /// The number of whole sectors in the region.
    #[must_use]
    pub const fn sectors(&self) -> u32 {
        self.size / SECTOR as u32
    }

    /// Whether the region starts and ends on sector boundaries (needed to erase it alone).
    #[must_use]
    pub const fn is_sector_aligned(&self) -> bool {
        self.offset % SECTOR as u32 == 0 && self.size % SECTOR as u32 == 0
    }
}

const KIB: u32 = 1024;

/// BOOT2 (256 B, the W25Q080 second stage) and the embassy-boot-rp bootloader after it.
pub const BOOTLOADER: Region = Region::new(0x00_0000, 24 * KIB);
/// embassy-boot's STATE partition: its magic and the swap/revert progress.
pub const BOOTLOADER_STATE: Region = Region::new(0x00_6000, 4 * KIB);
/// The slot the application runs from (linked here with `boot2-none`). Also the largest image a
/// node can take.
pub const ACTIVE: Region = Region::new(0x00_7000, 512 * KIB);
/// Where an image is received: ACTIVE plus the one page embassy-boot's swap needs.
pub const DFU: Region = Region::new(0x08_7000, 516 * KIB);
/// The node's reset history (`crate::diag`): one slot appended per boot.
pub const RESET_HISTORY: Region = Region::new(0x1F_B000, 4 * KIB);
/// The node's own settings, copy A (identity key, pinned gateway key, floor in force).
pub const NODE_CONFIG_A: Region = Region::new(0x1F_C000, 4 * KIB);
/// The node's own settings, copy B, written alternately with A.
pub const NODE_CONFIG_B: Region = Region::new(0x1F_D000, 4 * KIB);
/// The node's OTA transfer record (docs/ota-design.md §3.3).
pub const OTA_RECORD: Region = Region::new(0x1F_E000, 4 * KIB);
/// The anti-rollback floor in force, as an append-only log (`ota::Updater`): a sector of its own
/// because the record is erased with every new image and the floor must outlive it.
pub const FLOOR_LOG: Region = Region::new(0x1F_F000, 4 * KIB);

/// The pages embassy-boot swaps: always the whole ACTIVE partition, whatever the image's size.
pub const ACTIVE_PAGES: u32 = ACTIVE.sectors();

/// The write units embassy-boot 0.7 needs in STATE (`assert_partitions` in `boot_loader.rs`):
/// magic, progress validity, then two progress units per page for the swap and two for the
/// revert. With the RP2040's `WRITE_SIZE` of 1 a unit is one byte.
pub const STATE_UNITS_NEEDED: u32 = 2 + 4 * ACTIVE_PAGES;

/// Every named region, in flash order.
pub const REGIONS: [Region; 9] = [
    BOOTLOADER,
    BOOTLOADER_STATE,
    ACTIVE,
    DFU,
    RESET_HISTORY,
    NODE_CONFIG_A,
    NODE_CONFIG_B,
    OTA_RECORD,
    FLOOR_LOG,
];

// The layout's rules, checked when the crate compiles.
const _: () = {
    // embassy-boot's swap needs one spare page in DFU.
    assert!(DFU.size >= ACTIVE.size + SECTOR as u32);
    // embassy-boot-rp writes STATE one byte at a time (`WRITE_SIZE` 1).
    assert!(STATE_UNITS_NEEDED <= BOOTLOADER_STATE.size);
    // Every region is sector aligned, in order, without overlap, and inside the flash.
    let mut i = 0;
    while i < REGIONS.len() {
        assert!(REGIONS[i].is_sector_aligned());
        assert!(REGIONS[i].size > 0);
        assert!(REGIONS[i].end() <= FLASH_SIZE);
        if i > 0 {
            assert!(REGIONS[i - 1].end() <= REGIONS[i].offset);
        }
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_the_one_the_design_note_draws() {
        assert_eq!(BOOTLOADER_STATE.offset, 0x6000);
        assert_eq!(ACTIVE.offset, 0x7000);
        assert_eq!(ACTIVE.end(), DFU.offset);
        assert_eq!(DFU.end(), 0x10_8000);
        assert_eq!(ACTIVE_PAGES, 128);
        assert_eq!(STATE_UNITS_NEEDED, 514);
        assert_eq!(OTA_RECORD.end(), FLOOR_LOG.offset);
        assert_eq!(FLOOR_LOG.end(), FLASH_SIZE);
        assert_eq!(RESET_HISTORY.end(), NODE_CONFIG_A.offset);
    }
}
