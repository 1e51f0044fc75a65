//! A node's hard reset: the gateway's GPIO wired to the node's RUN pin is pulled low for
//! [`RUN_PULSE`], then released (the pin returns to the mode it had: an input, so the RP2040's
//! own pull-up takes RUN high again and the chip starts from reset).
//!
//! Through `rppal`, which speaks to the Raspberry Pi's GPIO character device. On any other
//! machine (or a Linux box without the Pi's GPIO) `rppal` answers with an error at run time,
//! which [`pulse_run_pin`] returns as a sentence; on a non-Linux build it is not compiled in.

use std::time::Duration;

/// How long RUN is held low. The RP2040 resets on any low level on RUN (datasheet §2.13); 100 ms
/// is far beyond any debounce and short enough not to matter.
pub const RUN_PULSE: Duration = Duration::from_millis(100);

/// Pulls GPIO `pin` (BCM numbering) low for [`RUN_PULSE`] and releases it. Blocking (it sleeps):
/// call it on a blocking thread. `Err` says why the pin could not be driven.
#[cfg(target_os = "linux")]
pub fn pulse_run_pin(pin: u8) -> Result<(), String> {
    let gpio = rppal::gpio::Gpio::new().map_err(|e| format!("no Raspberry Pi GPIO here ({e})"))?;
    let pin = gpio
        .get(pin)
        .map_err(|e| format!("GPIO {pin} cannot be used ({e})"))?;
    // Low while held; on drop the pin goes back to its previous mode (reset_on_drop).
    let held = pin.into_output_low();
    std::thread::sleep(RUN_PULSE);
    drop(held);
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn pulse_run_pin(_pin: u8) -> Result<(), String> {
    Err("GPIO is only driven on Linux (a Raspberry Pi)".into())
}
