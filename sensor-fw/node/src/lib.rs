//! # outpost-node: the sensor node core
//!
//! The application of an Outpost sensor node (RP2040), as plain synchronous code that the
//! firmware, the host simulator and the tests all run unchanged.
//!
//! What this crate is:
//! - [`link`]: [`NodeLink`], the node's end of the node link (HELLO/ENROLL until ACCEPT, a ring
//!   of unacknowledged samples, a TELEMETRY window with cumulative ACK and go-back-N
//!   retransmission, HEALTH, COMMAND/RESPONSE);
//! - [`app`]: [`App`], the link plus a [`SensorBank`] sampled on a [`Schedule`];
//! - [`boot`]: the firmware slots and update state as the OTA core sees them ([`BootFlash`],
//!   [`RecordFlash`]), the RP2040 flash layout, and (feature `embassy-boot`) the adapter over
//!   embassy-boot's updater;
//! - [`ota`]: [`Updater`], the node's side of a firmware update: the offer checked against the
//!   fleet keys, chunks into DFU a sector at a time with a record that survives resets, install,
//!   the trial boot's health confirm, revert causes and the anti-rollback floor;
//! - [`diag`]: the node's reset history (one flash sector, written once per boot) and its log
//!   ring, read by the gateway with the RESET_HISTORY and LOG_READ commands;
//! - [`settings`]: the node's identity key (made once from the board's entropy) and the gateway
//!   it is tied to, in two flash sectors written alternately;
//! - [`sht3x`]: an embedded-hal 1.0 driver for the Sensirion SHT3x temperature/humidity sensor;
//! - `sim` (feature `std`): the same core behind a serial port or a pseudo-terminal, with
//!   simulated sensors; the `outpost-node-sim` binary and the gateway's `outpost demo` use it.
//!
//! What it never does (without `std`): I/O, allocation, reading a clock, drawing random
//! numbers, panicking on input. Time comes in as [`Millis`]; the boot id and the key are inputs.
//! The verbs follow quinn: `handle_*` for inputs, `poll_*` for outputs, drained until `None`.
//!
//! ```text
//! serial bytes ──handle_bytes──► App ──poll_transmit──► serial bytes
//!      timer ──handle_timeout──►  │  ◄──poll_timeout── when to call again
//!                      SensorBank ┘ (read when a sample is due)
//! ```
//!
//! The wire format is `outpost-proto`; the session rules are in `docs/node-link.md`.

#![cfg_attr(not(feature = "std"), no_std)]

pub mod app;
pub mod boot;
pub mod diag;
pub mod link;
pub mod ota;
pub mod settings;
pub mod sht3x;
#[cfg(feature = "std")]
pub mod sim;

pub use app::{App, Schedule, SensorBank};
pub use boot::{BootFlash, BootFlashError, BootState, RecordError, RecordFlash};
pub use link::{
    BoardStatus, Boot, Identity, LINK_TIMEOUT, LinkConfig, LinkState, NodeCounters, NodeLink, RTO,
    RTO_MAX, RTO_MIN, Secrets, WINDOW,
};
pub use ota::{LastReset, OtaAction, OtaConfig, Updater};
pub use outpost_proto::Millis;
