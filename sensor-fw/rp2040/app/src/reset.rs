//! Why the chip reset, from its own registers, and how the firmware resets it.
//!
//! The RP2040 says little by itself: `WATCHDOG.REASON` tells a watchdog timeout from a forced
//! watchdog reset, `VREG_AND_CHIP_RESET.CHIP_RESET` a power-on, the RUN pin and a debugger's
//! rescue. Every reset the firmware asks for goes through the watchdog (`trigger_reset`) with
//! the cause in `WATCHDOG.SCRATCH0`, which a watchdog reset keeps and a power-on clears; so the
//! next boot tells a requested reboot, an install and a caught fault apart. (SCRATCH4–7 belong
//! to the boot ROM's watchdog-reboot vector and are never used.)

use embassy_rp::pac;
use embassy_rp::watchdog::{ResetReason as WatchdogReason, Watchdog};
use outpost_node::LastReset;
use outpost_proto::{ResetReason, RevertCause};

/// `SCRATCH0`'s top half while it holds a cause: anything else there is not Outpost's.
const CAUSE_MAGIC: u32 = 0x0057_0000;
const CAUSE_MASK: u32 = 0xFFFF_0000;

/// Why the firmware resets the chip, kept across the reset in `SCRATCH0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The gateway asked (REBOOT).
    Requested,
    /// The updater marked an image for the bootloader to swap in.
    Install,
    /// A trial image gives up: the bootloader reverts it. The cause the gateway is told.
    Revert(RevertCause),
    /// A panic or a HardFault, caught.
    Fault,
}

impl Cause {
    fn encode(self) -> u32 {
        CAUSE_MAGIC
            | match self {
                Cause::Requested => 0x01,
                Cause::Install => 0x02,
                Cause::Fault => 0x03,
                Cause::Revert(cause) => 0x100 | cause as u32,
            }
    }

    fn decode(word: u32) -> Option<Cause> {
        if word & CAUSE_MASK != CAUSE_MAGIC {
            return None;
        }
        Some(match word & 0xFFFF {
            0x01 => Cause::Requested,
            0x02 => Cause::Install,
            0x03 => Cause::Fault,
            code if code & 0xFF00 == 0x100 => {
                Cause::Revert(RevertCause::from_code((code & 0xFF) as u8))
            }
            _ => return None,
        })
    }
}

/// How the previous boot ended, as the link reports it and as the updater needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousBoot {
    /// What HEALTH and the reset history say (the updater may still make it `ota_revert` or
    /// `ota_apply`).
    pub reason: ResetReason,
    /// What the updater needs to name a revert's cause.
    pub last_reset: LastReset,
}

/// Reads the reset registers and the cause the previous boot left, and clears the cause so a
/// later power-on or timeout is not taken for it.
pub fn take(watchdog: &mut Watchdog) -> PreviousBoot {
    let cause = Cause::decode(watchdog.get_scratch(0));
    watchdog.set_scratch(0, 0);
    let chip = pac::VREG_AND_CHIP_RESET.chip_reset().read();
    let (reason, last_reset) = match watchdog.reset_reason() {
        Some(WatchdogReason::TimedOut) => (ResetReason::Watchdog, LastReset::Watchdog),
        Some(WatchdogReason::Forced) => match cause {
            Some(Cause::Requested) | None => (
                ResetReason::Software,
                LastReset::Requested {
                    cause: RevertCause::Unknown,
                },
            ),
            Some(Cause::Install) => (
                ResetReason::OtaApply,
                LastReset::Requested {
                    cause: RevertCause::Unknown,
                },
            ),
            Some(Cause::Revert(cause)) => (ResetReason::Software, LastReset::Requested { cause }),
            Some(Cause::Fault) => (ResetReason::HardFault, LastReset::Crash),
        },
        None if chip.had_por() => (ResetReason::PowerOn, LastReset::PowerOn),
        None if chip.had_run() => (ResetReason::ExternalPin, LastReset::Other),
        None if chip.had_psm_restart() => (ResetReason::Debugger, LastReset::Other),
        // A system reset request (AIRCR), e.g. from the bootloader's fault handler.
        None => (ResetReason::Other(0xFF), LastReset::Other),
    };
    PreviousBoot { reason, last_reset }
}

/// Resets the chip through the watchdog, leaving `cause` for the next boot.
pub fn reset(watchdog: &mut Watchdog, cause: Cause) -> ! {
    watchdog.set_scratch(0, cause.encode());
    watchdog.trigger_reset();
    loop {
        cortex_m::asm::nop();
    }
}

/// For the fault handlers, which own nothing: the same as [`reset`] on the registers directly.
pub fn reset_after_fault() -> ! {
    pac::WATCHDOG.scratch0().write_value(Cause::Fault.encode());
    pac::WATCHDOG.ctrl().write(|w| w.set_trigger(true));
    loop {
        cortex_m::asm::nop();
    }
}
