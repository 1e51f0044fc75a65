//! Outpost's RP2040 bootloader: embassy-boot-rp's power-fail-safe A/B swap, with one check of
//! Outpost's own before it (docs/firmware.md).
//!
//! At every reset: start the watchdog (8 s, fed by every flash operation of the swap, then by
//! the application), finish a torn erase of the STATE page if the power cut one
//! (`outpost_node::boot::state_page`, risk R6 of docs/ota-design.md), let embassy-boot swap in
//! an update or revert a trial that never confirmed, and jump to ACTIVE. The bootloader checks
//! no signature: the application verified the image against the fleet keys before it asked for
//! the swap (`mark_updated`), and a trial that does not confirm is reverted whatever it is.

#![no_std]
#![no_main]

use core::cell::RefCell;

use cortex_m_rt::{entry, exception};
use embassy_boot_rp::{BootLoader, BootLoaderConfig, WatchdogFlash};
use embassy_rp::flash::FLASH_BASE;
use embassy_sync::blocking_mutex::Mutex;
use embassy_time::Duration;
use outpost_node::boot::{layout, state_page};

const FLASH_SIZE: usize = layout::FLASH_SIZE as usize;

/// The watchdog the swap runs under, and the application's first period: a swap that hangs, or
/// an image that never starts feeding, resets the chip (and a trial is then reverted).
const WATCHDOG: Duration = Duration::from_secs(8);

#[entry]
fn main() -> ! {
    let p = embassy_rp::init(Default::default());
    let flash = WatchdogFlash::<FLASH_SIZE>::start(p.FLASH, p.WATCHDOG, WATCHDOG);
    let flash = Mutex::new(RefCell::new(flash));
    let mut config = BootLoaderConfig::from_linkerfile_blocking(&flash, &flash, &flash);
    // A torn STATE erase would make embassy-boot resume a swap from noise and mix two images:
    // finish the erase first (an error here leaves STATE as it was; embassy-boot decides).
    let _ = state_page::finish_torn_erase(&mut config.state);
    let active_offset = config.active.offset();
    // Swaps or reverts as STATE says; on a flash error it panics, and the panic resets.
    let bootloader: BootLoader = BootLoader::prepare(config);
    // SAFETY: ACTIVE holds an application linked at this address: a whole one, since the swap
    // and the revert are page-atomic and resume after a power cut.
    unsafe { bootloader.load(FLASH_BASE as u32 + active_offset) }
}

#[exception]
unsafe fn HardFault(_frame: &cortex_m_rt::ExceptionFrame) -> ! {
    cortex_m::peripheral::SCB::sys_reset();
}

#[exception]
unsafe fn DefaultHandler(_irq: i16) -> ! {
    cortex_m::peripheral::SCB::sys_reset();
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The watchdog is running: a reset, and the swap resumes where it stopped.
    cortex_m::peripheral::SCB::sys_reset();
}
