//! Thin adapters between the IO-free cores (`outpost-core`) and the outside world. Each one moves
//! bytes and carries out what its core decides; none of them makes a protocol or policy decision
//! of its own.

pub mod alerting;
pub mod allocator;
pub mod api;
pub mod commands;
pub mod config;
pub mod diagnostics;
pub mod dictionaries;
pub mod files;
pub mod firmware;
pub mod gpio;
pub mod health;
pub mod modbus;
pub mod node_key;
pub mod node_requests;
pub mod ota;
pub mod remedy;
pub mod restart;
pub mod rma;
pub mod serial;
pub mod signing_files;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod update;
pub mod uplink;
pub mod wall_clock;
