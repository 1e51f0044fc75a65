//! [`BootFlash`] over embassy-boot's blocking updater, generic over `NorFlash`: the RP2040 board
//! gives it embassy-rp's DFU and STATE partitions, the simulator regions of its flash file.

use embassy_boot::{
    AlignedBuffer, BlockingFirmwareState, BlockingFirmwareUpdater, FirmwareUpdaterConfig,
    FirmwareUpdaterError, State,
};
use embedded_storage::nor_flash::{NorFlash, NorFlashErrorKind};

use super::{BootFlash, BootFlashError, BootState, SECTOR, Sector, layout};

/// The largest STATE `WRITE_SIZE` handled; embassy-boot aligns its buffers to 32 bytes too.
const MAX_STATE_WRITE: usize = 32;

/// [`BootFlash`] on embassy-boot 0.7's `BlockingFirmwareUpdater` and `BlockingFirmwareState`
/// (built without embassy-boot's signature features: the node verifies Outpost's own signed
/// manifest, docs/ota-design.md §3.4).
///
/// Design: the adapter keeps the two partitions and no updater. Every call makes a fresh
/// updater over `&mut` borrows of them. embassy-boot's `write_firmware` erases a sector only the
/// first time a write enters it and remembers only the last one, in the updater (risk R12); an
/// updater that lives for one call has never erased anything, so every
/// [`write_sector`](BootFlash::write_sector) erases its sector first, and writing the same
/// sector twice in a row is as safe as writing it once.
#[derive(Debug)]
pub struct EmbassyBoot<DFU, STATE> {
    dfu: DFU,
    state: STATE,
    slot_size: u32,
}

impl<DFU: NorFlash, STATE: NorFlash> EmbassyBoot<DFU, STATE> {
    /// The adapter for the layout of [`layout`]: an ACTIVE slot of `layout::ACTIVE.size`.
    ///
    /// # Panics
    /// If DFU is not at least one sector larger than the slot: a wrong board layout.
    pub fn new(dfu: DFU, state: STATE) -> Self {
        Self::with_slot_size(dfu, state, layout::ACTIVE.size)
    }

    /// The adapter for an ACTIVE slot of `slot_size` bytes (the board may take it from its
    /// linker symbols).
    ///
    /// # Panics
    /// If `slot_size` is not a whole number of sectors, or DFU is not at least one sector
    /// larger: embassy-boot's swap needs both (`assert_partitions`).
    pub fn with_slot_size(dfu: DFU, state: STATE, slot_size: u32) -> Self {
        const {
            assert!(STATE::WRITE_SIZE <= MAX_STATE_WRITE);
            // A sector write must not erase a neighbour.
            assert!(SECTOR % DFU::ERASE_SIZE == 0);
        }
        assert!(
            slot_size % SECTOR as u32 == 0,
            "the slot must be whole sectors"
        );
        assert!(
            dfu.capacity() as u64 >= u64::from(slot_size) + SECTOR as u64,
            "DFU must be the slot plus one sector"
        );
        EmbassyBoot {
            dfu,
            state,
            slot_size,
        }
    }

    /// The partitions back.
    pub fn into_inner(self) -> (DFU, STATE) {
        (self.dfu, self.state)
    }

    /// Runs `f` on a fresh updater (see the type's design note).
    fn with_updater<T>(
        &mut self,
        f: impl FnOnce(
            &mut BlockingFirmwareUpdater<'_, &mut DFU, &mut STATE>,
        ) -> Result<T, FirmwareUpdaterError>,
    ) -> Result<T, BootFlashError> {
        let mut aligned = AlignedBuffer([0u8; MAX_STATE_WRITE]);
        let config = FirmwareUpdaterConfig {
            dfu: &mut self.dfu,
            state: &mut self.state,
        };
        let mut updater = BlockingFirmwareUpdater::new(config, &mut aligned.0[..STATE::WRITE_SIZE]);
        f(&mut updater).map_err(updater_error)
    }

    /// Runs `f` on embassy-boot's STATE alone.
    fn with_state<T>(
        &mut self,
        f: impl FnOnce(&mut BlockingFirmwareState<'_, &mut STATE>) -> Result<T, FirmwareUpdaterError>,
    ) -> Result<T, BootFlashError> {
        let mut aligned = AlignedBuffer([0u8; MAX_STATE_WRITE]);
        let mut state =
            BlockingFirmwareState::new(&mut self.state, &mut aligned.0[..STATE::WRITE_SIZE]);
        f(&mut state).map_err(updater_error)
    }
}

fn updater_error(error: FirmwareUpdaterError) -> BootFlashError {
    match error {
        FirmwareUpdaterError::Flash(kind) => BootFlashError::Flash(kind),
        FirmwareUpdaterError::BadState => BootFlashError::InTrial,
        // Only `verify_and_mark_updated` reports it, which this build never compiles in.
        FirmwareUpdaterError::Signature(_) => BootFlashError::Flash(NorFlashErrorKind::Other),
    }
}

impl From<State> for BootState {
    fn from(state: State) -> Self {
        match state {
            State::Boot => BootState::Boot,
            State::Swap => BootState::Swap,
            State::Revert => BootState::Revert,
            State::DfuDetach => BootState::DfuDetach,
        }
    }
}

impl<DFU: NorFlash, STATE: NorFlash> BootFlash for EmbassyBoot<DFU, STATE> {
    fn slot_size(&self) -> u32 {
        self.slot_size
    }

    fn boot_state(&mut self) -> Result<BootState, BootFlashError> {
        self.with_state(|state| state.get_state())
            .map(BootState::from)
    }

    fn write_sector(&mut self, index: u32, data: &Sector) -> Result<(), BootFlashError> {
        if index >= self.slot_size / SECTOR as u32 {
            return Err(BootFlashError::SectorOutOfRange { index });
        }
        // `write_firmware` refuses with `BadState` while STATE is `Swap`.
        let offset = index as usize * SECTOR;
        self.with_updater(|updater| updater.write_firmware(offset, data))
    }

    fn read_dfu(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), BootFlashError> {
        let end = offset as u64 + buf.len() as u64;
        if end > self.dfu.capacity() as u64 {
            return Err(BootFlashError::OutOfBounds);
        }
        self.with_updater(|updater| updater.read_dfu(offset, buf))
    }

    fn mark_updated(&mut self) -> Result<(), BootFlashError> {
        // In a trial STATE already says SWAP: embassy-boot would change nothing and the next
        // boot would revert, not install. Refuse, as a DFU write is refused.
        if self.boot_state()? == BootState::Swap {
            return Err(BootFlashError::InTrial);
        }
        self.with_state(|state| state.mark_updated())
    }

    fn mark_booted(&mut self) -> Result<(), BootFlashError> {
        self.with_state(|state| state.mark_booted())
    }
}
