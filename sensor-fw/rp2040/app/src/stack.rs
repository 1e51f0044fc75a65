//! The least free stack since boot, for HEALTH (`stack_free_min`) and for the board's own
//! check before a trial image confirms: the free RAM between the statics and the stack is
//! painted at boot, and the painted words still intact are counted.

const PAINT: u32 = 0x5AFE_C0DE;
/// Painting stops this far below the stack pointer of the caller, to leave its own frame alone.
const MARGIN: usize = 256;

unsafe extern "C" {
    /// cortex-m-rt: the first byte after the statics (where a heap would start).
    static __sheap: u32;
}

fn bottom() -> *mut u32 {
    // Only the symbol's address is taken; the linker script defines it.
    core::ptr::addr_of!(__sheap).cast_mut()
}

/// Paints the free stack. Call once, early in `main`.
pub fn paint() {
    let top = cortex_m::register::msp::read() as usize - MARGIN;
    let mut word = bottom();
    while (word as usize) < top {
        // SAFETY: between the statics and the live stack (less a margin): RAM nothing uses yet.
        unsafe {
            word.write_volatile(PAINT);
            word = word.add(1);
        }
    }
}

/// Bytes of stack never used since [`paint`].
pub fn free_min() -> u32 {
    let mut word = bottom();
    let mut free = 0u32;
    // SAFETY: reads of RAM between the statics and the stack; the count stops at the first
    // word the stack has touched, which is below the live stack pointer.
    unsafe {
        while word.read_volatile() == PAINT {
            free += 4;
            word = word.add(1);
        }
    }
    free
}
