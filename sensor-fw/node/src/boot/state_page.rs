//! What Outpost's bootloader checks in embassy-boot's STATE page before `prepare_boot`: a torn
//! erase of STATE (risk R6 of docs/ota-design.md).
//!
//! embassy-boot 0.7 (`boot_loader.rs`, `firmware_updater/blocking.rs`) keeps in STATE, in
//! units of the flash's `WRITE_SIZE` (one byte on the RP2040):
//!
//! | unit | what |
//! |---|---|
//! | 0 | magic: `SWAP` 0xF0, `BOOT` 0xD0, `REVERT` 0xC0, `DFU_DETACH` 0xE0; anything else reads `Boot` |
//! | 1 | progress validity: erased = valid, programmed = invalid ("every step done") |
//! | 2 … | swap then revert progress: unit 2 + i is programmed once step i's copy is done |
//!
//! It erases STATE in exactly two places, `set_magic` (behind `mark_updated` and
//! `mark_booted`) and the end of a revert, and both first program unit 1 (progress invalid), so
//! that a cut erase leaves "progress invalid", under which the bootloader copies nothing. That
//! holds only if a cut erase leaves unit 1 programmed. A NOR erase cut short leaves cells
//! anywhere between programmed and erased: unit 1 may read erased, unit 0 may read `SWAP`, and
//! the progress units are noise. The bootloader then takes it for a swap or revert in progress
//! and resumes it from whatever step the noise names, mixing pages of two images in ACTIVE: a
//! node that no longer boots.
//!
//! The check: progress that embassy-boot wrote is always a run of programmed units followed by
//! erased units to the end of the page (steps are marked in order, and a program cut short
//! leaves its unit programmed or erased, never a gap). A page with `SWAP` and valid progress
//! that is not such a run can only be a torn erase, which happened after progress was
//! invalidated, when ACTIVE already held a whole image. Finishing the erase boots that image
//! (state `Boot`), exactly as if the cut had come just after the erase. Every state
//! embassy-boot itself writes passes the check unchanged, whatever point a program was cut at.
//!
//! What the check cannot see: a torn erase that happens to leave a well-formed page (`SWAP`,
//! valid progress, a clean run). For the RP2040's one-byte units that needs unit 0 to read
//! exactly 0xF0, unit 1 exactly 0xFF and every later unit to fall in line.

use embedded_storage::nor_flash::NorFlash;

/// embassy-boot's `SWAP_MAGIC` (`embassy-boot/src/lib.rs`, 0.7.0).
pub const SWAP_MAGIC: u8 = 0xF0;
/// embassy-boot's `BOOT_MAGIC`.
pub const BOOT_MAGIC: u8 = 0xD0;
/// embassy-boot's `REVERT_MAGIC`.
pub const REVERT_MAGIC: u8 = 0xC0;
/// embassy-boot's `DFU_DETACH_MAGIC`.
pub const DFU_DETACH_MAGIC: u8 = 0xE0;
/// What an erased NOR byte reads (embassy-boot's `STATE_ERASE_VALUE` without `flash-erase-zero`).
pub const ERASED: u8 = 0xFF;

/// The largest `WRITE_SIZE` the check handles (embassy-boot's `AlignedBuffer` alignment).
const MAX_UNIT: usize = 32;

/// What [`finish_torn_erase`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatePage {
    /// A page embassy-boot wrote (or one under which it copies nothing): left as it is.
    Intact,
    /// A torn erase that would have made the bootloader copy pages: STATE was erased again and
    /// now reads `Boot`.
    FinishedTornErase,
}

/// Checks STATE (the whole partition) and finishes a torn erase; see the module docs. Run it in
/// the bootloader, before `prepare_boot`, on the same partition.
///
/// # Errors
/// The flash's own errors, from reading or erasing STATE.
pub fn finish_torn_erase<S: NorFlash>(state: &mut S) -> Result<StatePage, S::Error> {
    const { assert!(S::WRITE_SIZE <= MAX_UNIT) };
    let unit = S::WRITE_SIZE;
    let units = state.capacity() / unit;
    let mut buf = [0u8; MAX_UNIT];
    let word = &mut buf[..unit];

    // Without SWAP and valid progress, the bootloader copies nothing: whatever else the page
    // holds cannot mix images.
    state.read(0, word)?;
    if word.iter().any(|&b| b != SWAP_MAGIC) {
        return Ok(StatePage::Intact);
    }
    state.read(unit as u32, word)?;
    if word.iter().any(|&b| b != ERASED) {
        return Ok(StatePage::Intact);
    }

    let mut seen_erased = false;
    for index in 2..units {
        state.read((index * unit) as u32, word)?;
        let erased = word.iter().all(|&b| b == ERASED);
        if erased {
            seen_erased = true;
        } else if seen_erased {
            // A step marked after an unmarked one: embassy-boot never writes that.
            state.erase(0, state.capacity() as u32)?;
            return Ok(StatePage::FinishedTornErase);
        }
    }
    Ok(StatePage::Intact)
}
