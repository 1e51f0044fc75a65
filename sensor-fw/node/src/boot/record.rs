//! [`RecordFlash`] over any `NorFlash` partition: the board gives it embassy-rp's OTA_RECORD
//! partition, the simulator a region of its flash file.

use embedded_storage::nor_flash::{NorFlash, NorFlashError};

use super::{RecordError, RecordFlash, SECTOR};

/// The first [`SECTOR`] bytes of a `NorFlash` partition, as the OTA record's sector.
#[derive(Debug)]
pub struct RecordSector<F> {
    flash: F,
}

impl<F: NorFlash> RecordSector<F> {
    /// # Panics
    /// If the partition is smaller than one sector, or its erase unit does not divide a sector:
    /// a wrong board layout, not a runtime condition.
    pub fn new(flash: F) -> Self {
        assert!(
            flash.capacity() >= SECTOR,
            "the OTA record needs one whole sector"
        );
        assert!(
            SECTOR % F::ERASE_SIZE == 0,
            "the record's sector must erase alone"
        );
        RecordSector { flash }
    }

    /// The partition back.
    pub fn into_inner(self) -> F {
        self.flash
    }
}

fn in_sector(offset: u32, len: usize) -> Result<(), RecordError> {
    match (offset as usize).checked_add(len) {
        Some(end) if end <= SECTOR => Ok(()),
        _ => Err(RecordError::OutOfBounds),
    }
}

fn flash_error(error: impl NorFlashError) -> RecordError {
    RecordError::Flash(error.kind())
}

impl<F: NorFlash> RecordFlash for RecordSector<F> {
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), RecordError> {
        in_sector(offset, buf.len())?;
        self.flash.read(offset, buf).map_err(flash_error)
    }

    fn program(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RecordError> {
        in_sector(offset, bytes.len())?;
        // NOR programs by clearing bits: a byte that needs a 1 where flash holds a 0 would be
        // silently wrong after the write, so refuse before writing anything.
        let mut current = [0u8; 64];
        let mut at = 0;
        while at < bytes.len() {
            let len = (bytes.len() - at).min(current.len());
            let chunk_offset = offset + at as u32;
            self.flash
                .read(chunk_offset, &mut current[..len])
                .map_err(flash_error)?;
            for (i, (&old, &new)) in current[..len].iter().zip(&bytes[at..at + len]).enumerate() {
                if new & !old != 0 {
                    return Err(RecordError::SetsBits {
                        offset: chunk_offset + i as u32,
                    });
                }
            }
            at += len;
        }
        self.flash.write(offset, bytes).map_err(flash_error)
    }

    fn erase(&mut self) -> Result<(), RecordError> {
        self.flash.erase(0, SECTOR as u32).map_err(flash_error)
    }
}
