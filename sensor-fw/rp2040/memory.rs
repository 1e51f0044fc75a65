// Included by the bootloader's and the application's build scripts: writes the linker's
// memory.x from `outpost_node::boot::layout`, the one place the flash layout is written, so the
// image, the bootloader's partitions, the simulator and the gateway's size cap cannot disagree.

use outpost_node::boot::layout::{self, Region, XIP_BASE};

/// What the image is linked into: the bootloader at the start of flash (after BOOT2), the
/// application into ACTIVE.
pub enum Image {
    Bootloader,
    Application,
}

pub fn write_memory_x(image: Image) {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let xip = |region: Region| XIP_BASE + region.offset;
    let (flash_origin, flash_len) = match image {
        // BOOT2 is the first 256 bytes of the bootloader's region.
        Image::Bootloader => (XIP_BASE + 0x100, layout::BOOTLOADER.size - 0x100),
        Image::Application => (xip(layout::ACTIVE), layout::ACTIVE.size),
    };
    // embassy-boot-rp's `from_linkerfile_blocking` reads these symbols: offsets from the start
    // of flash.
    let symbols = [
        ("state", layout::BOOTLOADER_STATE),
        ("active", layout::ACTIVE),
        ("dfu", layout::DFU),
    ]
    .iter()
    .map(|(name, region)| {
        format!(
            "__bootloader_{name}_start = {:#x};\n__bootloader_{name}_end = {:#x};\n",
            region.offset,
            region.end()
        )
    })
    .collect::<String>();
    let memory = format!(
        "/* Written by build.rs from outpost_node::boot::layout; do not edit. */\n\
         MEMORY\n{{\n\
         \x20 BOOT2 : ORIGIN = {XIP_BASE:#x}, LENGTH = 0x100\n\
         \x20 FLASH : ORIGIN = {flash_origin:#x}, LENGTH = {flash_len:#x}\n\
         \x20 RAM   : ORIGIN = 0x20000000, LENGTH = 256K\n}}\n{symbols}"
    );
    std::fs::write(out.join("memory.x"), memory).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
}
