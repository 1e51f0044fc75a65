//! Thin adapters between the IO-free cores and the outside world.

pub mod api;
pub mod dictionaries;
pub mod modbus;
pub mod serial;
pub mod updates;
pub mod uplink;
