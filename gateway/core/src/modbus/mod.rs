//! Modbus master core: register maps, value codecs and read planning, with no IO.
//!
//! Design: everything here is plain data in, plain data out. The core never opens a serial port
//! or socket, never reads a clock and never retries; the adapters (`outpost::io::modbus`: tokio-modbus
//! for TCP, Outpost's own bus task for RTU) own transport and timing, and call into these modules:
//!
//! - [`map`]: a device's register map, from the text of a `config/devices/*.toml` file
//!   ([`map::parse_map`]), validated in two stages with every problem located by file, line and key;
//! - [`value`]: a point's registers or bits to a typed, scaled [`value::Value`], and back for
//!   writes, with type and range checks;
//! - [`plan`]: the cheapest set of read requests covering every point of a device under the
//!   protocol limits, with a documented cost model ([`plan::CostModel`]);
//! - [`rtu`]: Modbus RTU framing for the serial bus adapter: request ADUs, a response decoder
//!   that reports CRC, header and garbage errors apart, and the line's t1.5/t3.5 timing;
//! - [`health`]: per-device counters, back-off and the offline decision, from each poll's
//!   [`health::PollSummary`];
//! - [`priority`]: which readings of a poll are sent at once (a `priority` point's change).
//!
//! The adapter's loop, per device:
//!
//! ```text
//! map  = map::parse_map(path, &text)?                               // once, at config load
//! plan = plan::ReadPlan::for_map(&map, &plan::CostModel::RTU)      // once
//! every poll, for request in plan.requests():
//!     read request.function() at request.start(), request.quantity()   (tokio-modbus)
//!     for (point, reading) in request.readings(map.points(), Raw::Registers(&words)):
//!         store (device name, point.name, reading)   or count the DecodeError
//! a command: value::encode(point, &value)? -> Encoded, written with Encoded::function()
//! ```
//!
//! Invariants the adapter may rely on:
//! - a compiled [`map::RegisterMap`] has unique names, no overlapping points in a table, every
//!   point inside 0..=65535 and no longer than one read;
//! - a [`plan::ReadPlan`] covers every point exactly once, its requests are sorted by table and
//!   start, never overlap, never exceed Modbus Application Protocol v1.1b limits (125 registers,
//!   2000 bits) nor the device's own `max_read_registers`;
//! - a writable point fits one write (123 registers, v1.1b §6.12).
//!
//! Not here, by design: transport errors versus device exceptions (tokio-modbus's two-layer
//! `Result`), timeouts and retries, RTU bus scheduling and the 3.5-character silence, poll
//! staggering. Those belong to the adapter, which can size its timings from
//! [`plan::CostModel::rtu_time`] and asks [`health::DeviceHealth`] when to poll next.

pub mod health;
pub mod map;
pub mod plan;
pub mod priority;
pub mod rtu;
pub mod value;

#[cfg(test)]
pub(crate) mod tests;
