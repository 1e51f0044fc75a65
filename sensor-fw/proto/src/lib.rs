//! # outpost-proto: the node link
//!
//! The wire protocol between an Outpost gateway and its RP2040 sensor nodes over a serial line.
//! The same crate is compiled into the firmware (`thumbv6m-none-eabi`, no heap) and into the
//! gateway, so both ends agree by construction.
//!
//! What this crate is:
//! - [`wire`]: the messages ([`Message`]) and their byte layout (`parse` / `emit`);
//! - [`frame`]: framing on a byte stream: COBS, CRC-32 and a `0x00` delimiter, and a
//!   [`FrameDecoder`] that survives line noise, truncated and oversized frames; small frames
//!   (at most 141 bytes on the line) and, gateway → node, bulk frames for firmware chunks (at
//!   most 1,052);
//! - [`session`]: the authenticated session: the signed X25519 handshake and the sealing
//!   (counter and truncated HMAC) of every later message;
//! - [`manifest`]: a node's own check of a signed firmware manifest (the gateway's format);
//! - [`time`]: the [`Millis`] newtype both sides use for time.
//!
//! What it never does: I/O, allocation, clocks, panics on input. Every decoder takes arbitrary
//! bytes and returns either a message or a typed error; the next valid frame after any garbage is
//! decoded (see `docs/node-link.md`).

#![no_std]
#![forbid(unsafe_code)]

pub mod cobs;
pub mod diag;
pub mod frame;
pub mod manifest;
pub mod session;
pub mod time;
pub mod wire;

pub use frame::{
    AnyFrame, BulkFrameDecoder, FrameDecoder, FrameError, LinkCounters, Received, ReceivedBulk,
    encode_frame, encode_sealed_bulk, encode_sealed_frame,
};
pub use session::{AuthError, HandshakeError, Opener, Sealer, SessionKeys};
pub use time::Millis;
pub use wire::{
    Accept, Ack, Challenge, ChannelId, Command, DecodeError, EncodeError, Enroll, FwVersion,
    Health, Hello, Message, Nack, Proof, Reading, ResetReason, Response, Telemetry, WINDOW,
};
pub use wire::{
    Bulk, ChunkSize, ImageTag, OtaChunk, OtaControl, OtaOffer, OtaOp, OtaPhase, OtaRefusal,
    OtaStatus, RevertCause,
};

/// Version of the message layout. A decoder rejects any other version with
/// [`DecodeError::UnsupportedVersion`] rather than guessing.
pub const PROTOCOL_VERSION: u8 = 2;
