//! # Outpost gateway
//!
//! The daemon that provisions and relays for a site's sensor nodes. Its parts:
//! - [`config`]: the TOML configuration, validated in two stages;
//! - [`link`]: the IO-free gateway end of the node link, one session per serial port;
//! - [`store`]: the SQLite store (node registry, readings, health) and its group-committing writer;
//! - [`io`]: thin adapters: serial ports, the local HTTP API;
//! - [`topology`]: where tasks and channels are created;
//! - [`demo`]: a simulated site on pseudo-terminals;
//! - [`systemd`]: readiness, status and watchdog notifications, journald detection;
//! - [`selftest`]: `outpost check --self-test`, the machine's fitness tried in a temp directory.
//!
//! See `docs/ARCHITECTURE.md` for the data path.

pub mod batcher;
pub mod budget;
pub mod config;
pub mod demo;
pub mod io;
pub mod link;
pub mod modbus;
pub mod selftest;
pub mod store;
pub mod systemd;
pub mod topology;
pub mod update;
pub mod wall_clock;
