//! The simulated node's flash: a 2 MiB file in the layout of [`crate::boot::layout`], behind
//! embedded-storage's `NorFlash` traits so embassy-boot runs on it unchanged.
//!
//! It behaves like the RP2040's W25Q16JV as embassy-rp drives it: `ERASE_SIZE` 4096 (one
//! sector erase each), `WRITE_SIZE` and `READ_SIZE` 1, and a program only clears bits (flash
//! ends up as `old & new`, as NOR does). Every erased sector and every program call is one
//! *operation*, counted from 1 for each [`FlashFile::open`], embassy-boot's STATE writes and the
//! bootloader's swap included.
//!
//! **Power cuts.** With [`FlashOptions::power_cut`], the first `after_ops` operations complete
//! and the next one is torn: an erase leaves its sector holding random bytes, a program leaves
//! a random prefix of its bytes programmed (or, untorn, the operation does not start). Then the
//! power is gone: the file keeps what the cut left, and
//! - [`OnPowerCut::ExitProcess`] ends the process at once with exit code
//!   [`POWER_CUT_EXIT_CODE`] (what `outpost-node-sim` does: nothing after the cut runs);
//! - [`OnPowerCut::Fail`] returns [`FlashError::PowerCut`] from that operation and from every
//!   later one, reads included (what in-process tests use; [`FlashFile::power_was_cut`] tells).
//!
//! **Timing.** [`FlashTiming::W25q16`] sleeps the W25Q16JV's typical times (datasheet, tSE and
//! tPP): 45 ms a sector erase, 0.4 ms a 256-byte page program. By default flash is instant.
//!
//! The whole chip is kept in memory and every operation is written through to the file before
//! it returns, so the next process (the next "power on") sees exactly what the last one left.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::boot::layout::{self, FLASH_SIZE, Region, SECTOR};
use crate::boot::{EmbassyBoot, RecordSector};

/// The exit code of a simulator process whose power was cut ([`OnPowerCut::ExitProcess`]).
/// 75 is `EX_TEMPFAIL` in sysexits.h: try again, here by powering the node on again.
pub const POWER_CUT_EXIT_CODE: i32 = 75;

/// The W25Q16JV's program page: a program takes its time per page it touches.
const PROGRAM_PAGE: usize = 256;
/// W25Q16JV datasheet, tSE typical (4 KiB sector erase).
const SECTOR_ERASE_TIME: Duration = Duration::from_millis(45);
/// W25Q16JV datasheet, tPP typical (256-byte page program).
const PAGE_PROGRAM_TIME: Duration = Duration::from_micros(400);

/// How long erases and programs take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FlashTiming {
    /// No delay.
    #[default]
    Instant,
    /// The W25Q16JV's typical times: 45 ms a sector erase, 0.4 ms a page program.
    W25q16,
}

impl FromStr for FlashTiming {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "instant" => Ok(FlashTiming::Instant),
            "w25q16" => Ok(FlashTiming::W25q16),
            other => Err(format!("unknown flash timing {other:?} (instant, w25q16)")),
        }
    }
}

/// What happens once the power is cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnPowerCut {
    /// Every operation from the cut on fails with [`FlashError::PowerCut`].
    #[default]
    Fail,
    /// The process exits at once with [`POWER_CUT_EXIT_CODE`].
    ExitProcess,
}

/// Where the power is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerCut {
    /// Operations that complete before the cut.
    pub after_ops: u64,
    /// Whether operation `after_ops + 1` is torn (true) or never starts (false).
    pub torn: bool,
}

/// How a [`FlashFile`] behaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlashOptions {
    pub power_cut: Option<PowerCut>,
    pub on_power_cut: OnPowerCut,
    pub timing: FlashTiming,
    /// Seeds what a torn operation leaves.
    pub seed: u64,
}

/// Why a flash operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashError {
    /// The power was cut at this operation or an earlier one.
    PowerCut,
    OutOfBounds,
    NotAligned,
    /// The file could not be written.
    Io(io::ErrorKind),
}

impl NorFlashError for FlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            FlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            FlashError::NotAligned => NorFlashErrorKind::NotAligned,
            FlashError::PowerCut | FlashError::Io(_) => NorFlashErrorKind::Other,
        }
    }
}

impl std::fmt::Display for FlashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlashError::PowerCut => f.write_str("the power was cut"),
            FlashError::OutOfBounds => f.write_str("out of the flash's bounds"),
            FlashError::NotAligned => f.write_str("not aligned to a sector"),
            FlashError::Io(kind) => write!(f, "flash file: {kind}"),
        }
    }
}

impl std::error::Error for FlashError {}

/// The chip: its bytes, the file they persist to, and the operation counter.
#[derive(Debug)]
struct Chip {
    file: File,
    bytes: Vec<u8>,
    ops: u64,
    options: FlashOptions,
    rng: SmallRng,
    cut: bool,
}

/// What the next operation does.
enum Op {
    Complete,
    Torn,
    NotStarted,
}

impl Chip {
    fn live(&self) -> Result<(), FlashError> {
        if self.cut {
            Err(FlashError::PowerCut)
        } else {
            Ok(())
        }
    }

    fn next_op(&mut self) -> Op {
        self.ops += 1;
        match self.options.power_cut {
            Some(cut) if self.ops == cut.after_ops + 1 => {
                if cut.torn {
                    Op::Torn
                } else {
                    Op::NotStarted
                }
            }
            _ => Op::Complete,
        }
    }

    fn persist(&mut self, from: usize, to: usize) -> Result<(), FlashError> {
        self.file
            .write_all_at(&self.bytes[from..to], from as u64)
            .map_err(|e| FlashError::Io(e.kind()))
    }

    /// The power goes: after this nothing of this chip works.
    fn cut_power(&mut self) -> FlashError {
        self.cut = true;
        if self.options.on_power_cut == OnPowerCut::ExitProcess {
            // The node's pty goes with the process: its name goes first.
            super::line::remove_published_links();
            eprintln!(
                "outpost-node-sim: power cut during flash operation {}",
                self.ops
            );
            std::process::exit(POWER_CUT_EXIT_CODE);
        }
        FlashError::PowerCut
    }

    fn read(&self, offset: u32, buf: &mut [u8]) -> Result<(), FlashError> {
        self.live()?;
        let from = offset as usize;
        let to = from.checked_add(buf.len()).ok_or(FlashError::OutOfBounds)?;
        buf.copy_from_slice(self.bytes.get(from..to).ok_or(FlashError::OutOfBounds)?);
        Ok(())
    }

    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        self.live()?;
        if from > to || to > FLASH_SIZE {
            return Err(FlashError::OutOfBounds);
        }
        if from as usize % SECTOR != 0 || to as usize % SECTOR != 0 {
            return Err(FlashError::NotAligned);
        }
        // embassy-rp erases sector by sector (the ROM's 4 KiB erase): one operation each.
        for start in (from as usize..to as usize).step_by(SECTOR) {
            let sector = start..start + SECTOR;
            match self.next_op() {
                Op::Complete => {
                    self.bytes[sector].fill(0xFF);
                    self.persist(start, start + SECTOR)?;
                    if self.options.timing == FlashTiming::W25q16 {
                        std::thread::sleep(SECTOR_ERASE_TIME);
                    }
                }
                Op::Torn => {
                    // Cells anywhere between programmed and erased: noise.
                    let rng = &mut self.rng;
                    rng.fill(&mut self.bytes[sector]);
                    self.persist(start, start + SECTOR)?;
                    return Err(self.cut_power());
                }
                Op::NotStarted => return Err(self.cut_power()),
            }
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), FlashError> {
        self.live()?;
        let from = offset as usize;
        let to = from
            .checked_add(data.len())
            .ok_or(FlashError::OutOfBounds)?;
        if to > self.bytes.len() {
            return Err(FlashError::OutOfBounds);
        }
        if data.is_empty() {
            return Ok(());
        }
        let programmed = match self.next_op() {
            Op::Complete => data.len(),
            Op::Torn => self.rng.random_range(0..data.len()),
            Op::NotStarted => return Err(self.cut_power()),
        };
        // NOR programs by clearing bits.
        for (cell, &byte) in self.bytes[from..from + programmed].iter_mut().zip(data) {
            *cell &= byte;
        }
        self.persist(from, to)?;
        if programmed < data.len() {
            return Err(self.cut_power());
        }
        if self.options.timing == FlashTiming::W25q16 {
            let pages = (to - 1) / PROGRAM_PAGE - from / PROGRAM_PAGE + 1;
            std::thread::sleep(PAGE_PROGRAM_TIME * pages as u32);
        }
        Ok(())
    }
}

/// The simulated flash chip over its file. Cloning gives another handle on the same chip (as
/// embassy-rp's partitions share one `Flash`).
#[derive(Debug, Clone)]
pub struct FlashFile {
    chip: Arc<Mutex<Chip>>,
}

impl FlashFile {
    /// Creates a new flash file at `path`, every byte erased (`0xFF`), as a blank chip. Fails
    /// if the file exists.
    ///
    /// # Errors
    /// The file system's.
    pub fn create(path: &Path) -> io::Result<()> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        file.write_all_at(&vec![0xFF; FLASH_SIZE as usize], 0)?;
        file.sync_all()
    }

    /// Creates a new flash file at `path` as a node leaves the factory: blank, with `image`
    /// programmed at the start of ACTIVE (STATE erased: the next boot boots it). Fails if the
    /// file exists.
    ///
    /// # Errors
    /// The file system's, or `InvalidInput` for an image larger than ACTIVE.
    pub fn create_with_image(path: &Path, image: &[u8]) -> io::Result<()> {
        if image.len() > layout::ACTIVE.size as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a {}-byte image does not fit the {}-byte ACTIVE slot",
                    image.len(),
                    layout::ACTIVE.size
                ),
            ));
        }
        Self::create(path)?;
        let file = OpenOptions::new().write(true).open(path)?;
        file.write_all_at(image, u64::from(layout::ACTIVE.offset))?;
        file.sync_all()
    }

    /// Opens an existing flash file (exactly `layout::FLASH_SIZE` bytes): the chip at power on.
    ///
    /// # Errors
    /// The file system's, or `InvalidData` if the file is not a flash image.
    pub fn open(path: &Path, options: FlashOptions) -> io::Result<FlashFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut bytes = vec![0; FLASH_SIZE as usize];
        let len = file.metadata()?.len();
        if len != u64::from(FLASH_SIZE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is {len} bytes, not a {FLASH_SIZE}-byte flash file",
                    path.display()
                ),
            ));
        }
        file.read_exact_at(&mut bytes, 0)?;
        let rng = SmallRng::seed_from_u64(options.seed);
        Ok(FlashFile {
            chip: Arc::new(Mutex::new(Chip {
                file,
                bytes,
                ops: 0,
                options,
                rng,
                cut: false,
            })),
        })
    }

    fn chip(&self) -> MutexGuard<'_, Chip> {
        self.chip.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Erases and programs counted since this file was opened.
    #[must_use]
    pub fn ops(&self) -> u64 {
        self.chip().ops
    }

    /// Whether the power was cut (with [`OnPowerCut::Fail`]).
    #[must_use]
    pub fn power_was_cut(&self) -> bool {
        self.chip().cut
    }

    /// One region of the chip as a `NorFlash` of its own (offsets from the region's start).
    #[must_use]
    pub fn region(&self, region: Region) -> FlashRegion {
        FlashRegion {
            chip: Arc::clone(&self.chip),
            region,
        }
    }

    /// The node's [`BootFlash`](crate::boot::BootFlash): embassy-boot's updater over this
    /// file's DFU and STATE.
    #[must_use]
    pub fn boot_flash(&self) -> SimBootFlash {
        EmbassyBoot::new(
            self.region(layout::DFU),
            self.region(layout::BOOTLOADER_STATE),
        )
    }

    /// The node's [`RecordFlash`](crate::boot::RecordFlash): the OTA_RECORD sector.
    #[must_use]
    pub fn record(&self) -> RecordSector<FlashRegion> {
        RecordSector::new(self.region(layout::OTA_RECORD))
    }

    /// The floor log's sector (`layout::FLOOR_LOG`).
    #[must_use]
    pub fn floor_log(&self) -> RecordSector<FlashRegion> {
        RecordSector::new(self.region(layout::FLOOR_LOG))
    }
}

/// The simulator's [`BootFlash`](crate::boot::BootFlash).
pub type SimBootFlash = EmbassyBoot<FlashRegion, FlashRegion>;

/// A region of a [`FlashFile`], as a `NorFlash` (what embassy-boot's partitions are).
#[derive(Debug, Clone)]
pub struct FlashRegion {
    chip: Arc<Mutex<Chip>>,
    region: Region,
}

impl FlashRegion {
    fn chip(&self) -> MutexGuard<'_, Chip> {
        self.chip.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn absolute(&self, offset: u32, len: usize) -> Result<u32, FlashError> {
        let end = u64::from(offset) + len as u64;
        if end > u64::from(self.region.size) {
            return Err(FlashError::OutOfBounds);
        }
        Ok(self.region.offset + offset)
    }
}

impl ErrorType for FlashRegion {
    type Error = FlashError;
}

impl ReadNorFlash for FlashRegion {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashError> {
        let at = self.absolute(offset, bytes.len())?;
        self.chip().read(at, bytes)
    }

    fn capacity(&self) -> usize {
        self.region.size as usize
    }
}

impl NorFlash for FlashRegion {
    const WRITE_SIZE: usize = 1;
    const ERASE_SIZE: usize = SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        if from > to {
            return Err(FlashError::OutOfBounds);
        }
        let at = self.absolute(from, (to - from) as usize)?;
        self.chip().erase(at, at + (to - from))
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
        let at = self.absolute(offset, bytes.len())?;
        self.chip().write(at, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(dir: &tempfile::TempDir, options: FlashOptions) -> FlashFile {
        let path = dir.path().join("flash.bin");
        FlashFile::create(&path).unwrap();
        FlashFile::open(&path, options).unwrap()
    }

    #[test]
    fn a_program_only_clears_bits_and_an_erase_sets_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let flash = blank(&dir, FlashOptions::default());
        let mut record = flash.region(layout::OTA_RECORD);
        record.write(10, &[0b1010_1010]).unwrap();
        record.write(10, &[0b0110_0110]).unwrap();
        let mut byte = [0];
        record.read(10, &mut byte).unwrap();
        assert_eq!(byte[0], 0b0010_0010);
        record.erase(0, 4096).unwrap();
        record.read(10, &mut byte).unwrap();
        assert_eq!(byte[0], 0xFF);
        assert_eq!(flash.ops(), 3);
    }

    #[test]
    fn what_one_process_writes_the_next_one_reads() {
        let dir = tempfile::tempdir().unwrap();
        let flash = blank(&dir, FlashOptions::default());
        flash.region(layout::DFU).write(5000, b"kept").unwrap();
        drop(flash);
        let path = dir.path().join("flash.bin");
        let flash = FlashFile::open(&path, FlashOptions::default()).unwrap();
        let mut bytes = [0; 4];
        flash.region(layout::DFU).read(5000, &mut bytes).unwrap();
        assert_eq!(&bytes, b"kept");
    }

    #[test]
    fn a_torn_program_leaves_a_prefix_and_nothing_works_after_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let options = FlashOptions {
            power_cut: Some(PowerCut {
                after_ops: 1,
                torn: true,
            }),
            seed: 3,
            ..FlashOptions::default()
        };
        let flash = blank(&dir, options);
        let mut dfu = flash.region(layout::DFU);
        dfu.erase(0, 4096).unwrap();
        assert_eq!(dfu.write(0, &[0u8; 100]), Err(FlashError::PowerCut));
        assert!(flash.power_was_cut());
        assert_eq!(dfu.read(0, &mut [0; 1]), Err(FlashError::PowerCut));

        let reopened = FlashFile::open(&dir.path().join("flash.bin"), FlashOptions::default());
        let mut bytes = [0; 100];
        reopened
            .unwrap()
            .region(layout::DFU)
            .read(0, &mut bytes)
            .unwrap();
        let programmed = bytes.iter().take_while(|&&b| b == 0).count();
        assert!(programmed < 100);
        assert!(bytes[programmed..].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn a_torn_erase_leaves_noise_in_its_sector_only() {
        let dir = tempfile::tempdir().unwrap();
        let options = FlashOptions {
            power_cut: Some(PowerCut {
                after_ops: 0,
                torn: true,
            }),
            ..FlashOptions::default()
        };
        let flash = blank(&dir, options);
        let mut dfu = flash.region(layout::DFU);
        assert_eq!(dfu.erase(4096, 3 * 4096), Err(FlashError::PowerCut));
        let reopened =
            FlashFile::open(&dir.path().join("flash.bin"), FlashOptions::default()).unwrap();
        let mut sector = vec![0; 3 * 4096];
        reopened.region(layout::DFU).read(0, &mut sector).unwrap();
        assert!(sector[..4096].iter().all(|&b| b == 0xFF));
        assert!(sector[4096..8192].iter().any(|&b| b != 0xFF));
        assert!(sector[8192..].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn regions_keep_to_their_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let flash = blank(&dir, FlashOptions::default());
        let mut state = flash.region(layout::BOOTLOADER_STATE);
        assert_eq!(state.write(4095, &[0, 0]), Err(FlashError::OutOfBounds));
        assert_eq!(state.erase(0, 8192), Err(FlashError::OutOfBounds));
        assert_eq!(state.erase(1, 4096), Err(FlashError::NotAligned));
        assert_eq!(flash.ops(), 0);
    }
}
