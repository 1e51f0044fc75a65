//! The C allocator's settings for a daemon that must stay small for months.
//!
//! glibc's malloc gives each thread that allocates its own arena and keeps what is freed in it;
//! and once a large block is freed it raises its mmap threshold to that size, so the next large
//! blocks come from an arena too. A gateway whose writer seals a batch every minute (a
//! compressor context, the batch's columns, its bytes) then keeps every arena at the high-water
//! mark of every seal: measured, resident memory stepped up at each seal (docs/BENCHMARKS.md,
//! "Modbus site"). So: at most two arenas, blocks of 128 KiB and more always mapped on their
//! own (returned to the kernel when freed), and free memory at the top of the heap returned
//! above 256 KiB. [`release_free_memory`] after a sealing round gives back what is free inside
//! the arenas as well.

/// Applies the settings; call once, before other threads start.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
    }
}

/// Returns free pages of every arena to the kernel (a few hundred microseconds; once a seal).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases memory no allocation holds.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
