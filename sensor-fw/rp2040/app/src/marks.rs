//! Cycle marks for the emulator's benchmarks (feature `cycle-marks`, development images only):
//! `BKPT #0x70` before and `BKPT #0x71` after a piece of the core's work, with the tag in r0
//! and a value in r1; the emulator counts the cycles between them (sensor-fw/emu). Without the
//! feature they compile to nothing.

/// `App::handle_bytes`: the handshake's work and every received message. Value: bytes.
pub const BYTES_IN: u32 = 1;
/// Due timers (a sample) and the frames they produce. Value: frames sent.
pub const TIMERS_OUT: u32 = 2;

#[cfg(feature = "cycle-marks")]
#[inline(always)]
pub fn start(tag: u32) {
    // SAFETY: a breakpoint the emulator handles and steps past; nothing else changes.
    unsafe { core::arch::asm!("bkpt #0x70", in("r0") tag) }
}

#[cfg(feature = "cycle-marks")]
#[inline(always)]
pub fn end(tag: u32, value: u32) {
    // SAFETY: as in `start`.
    unsafe { core::arch::asm!("bkpt #0x71", in("r0") tag, in("r1") value) }
}

#[cfg(not(feature = "cycle-marks"))]
#[inline(always)]
pub fn start(_tag: u32) {}

#[cfg(not(feature = "cycle-marks"))]
#[inline(always)]
pub fn end(_tag: u32, _value: u32) {}
