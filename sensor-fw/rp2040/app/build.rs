//! Writes memory.x (the application is linked into ACTIVE) and `build_config.rs`: the version,
//! hardware revision and fleet firmware keys this image carries, from the environment
//! sensor-fw/build.sh sets:
//!
//! - `OUTPOST_FW_VERSION`: `MAJOR.MINOR.PATCH` (default: the package version);
//! - `OUTPOST_FW_HW_REV`: the board revision the image is for (default 1);
//! - `OUTPOST_FW_SAMPLE_INTERVAL_MS`: time between samples (default 1000);
//! - `OUTPOST_FW_FLEET_KEYS`: a `firmware.pub` file from `outpost firmware keygen` (one or two
//!   keys); required: an image that trusts no key could never be updated.

include!("../memory.rs");

use std::fmt::Write as _;

fn main() {
    write_memory_x(Image::Application);
    println!("cargo:rerun-if-changed=../memory.rs");
    for var in [
        "OUTPOST_FW_VERSION",
        "OUTPOST_FW_HW_REV",
        "OUTPOST_FW_FLEET_KEYS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let version = std::env::var("OUTPOST_FW_VERSION")
        .unwrap_or_else(|_| std::env::var("CARGO_PKG_VERSION").expect("CARGO_PKG_VERSION"));
    let parts: Vec<u8> = version
        .split('.')
        .map(|p| p.parse::<u8>())
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    let [major, minor, patch] = parts[..] else {
        fail(&format!(
            "OUTPOST_FW_VERSION={version:?} is not MAJOR.MINOR.PATCH (each 0-255)"
        ));
    };
    let hw_rev: u8 = std::env::var("OUTPOST_FW_HW_REV")
        .unwrap_or_else(|_| "1".into())
        .parse()
        .unwrap_or_else(|_| fail("OUTPOST_FW_HW_REV is not a number 0-255"));

    let sample_interval_ms: u32 = std::env::var("OUTPOST_FW_SAMPLE_INTERVAL_MS")
        .unwrap_or_else(|_| "1000".into())
        .parse()
        .ok()
        .filter(|&ms| ms >= 1)
        .unwrap_or_else(|| fail("OUTPOST_FW_SAMPLE_INTERVAL_MS is not a whole number of ms >= 1"));

    let Ok(keys_path) = std::env::var("OUTPOST_FW_FLEET_KEYS") else {
        fail(
            "OUTPOST_FW_FLEET_KEYS is not set: name the fleet's firmware.pub \
             (`outpost firmware keygen`); sensor-fw/build.sh --fleet-keys FILE sets it",
        );
    };
    println!("cargo:rerun-if-changed={keys_path}");
    let text = std::fs::read_to_string(&keys_path)
        .unwrap_or_else(|e| fail(&format!("cannot read {keys_path}: {e}")));
    let keys: Vec<[u8; 32]> = outpost_node::ota::fleet_keys(&text)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| fail(&format!("{keys_path}: {e}")));
    if keys.is_empty() || keys.len() > outpost_node::ota::MAX_FLEET_KEYS {
        fail(&format!(
            "{keys_path}: {} firmware keys; an image carries 1 or {}",
            keys.len(),
            outpost_node::ota::MAX_FLEET_KEYS
        ));
    }

    let mut config = String::new();
    let _ = writeln!(
        config,
        "/// This image's version, as HELLO and the manifest say it.\n\
         pub const VERSION: FwVersion = FwVersion {{ major: {major}, minor: {minor}, patch: {patch} }};\n\
         /// The board revision the image is built for (the manifest's `rp2040-hw{{R}}`).\n\
         pub const HW_REV: u8 = {hw_rev};\n\
         /// Time between samples.\n\
         pub const SAMPLE_INTERVAL_MS: u64 = {sample_interval_ms};\n\
         /// The fleet's firmware public keys: an update must be signed by one of them.\n\
         pub const FLEET_KEYS: [[u8; 32]; {}] = {keys:?};",
        keys.len()
    );
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("build_config.rs"), config).expect("write build_config.rs");
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
