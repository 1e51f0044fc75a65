//! # Outpost gateway
//!
//! The daemon that provisions and relays for a site's sensor nodes, Modbus devices and the cloud.
//! Every protocol and policy it follows is an IO-free core in `outpost-core`; this crate is the
//! adapters around them and the binaries:
//! - [`io`]: the adapters, each moving bytes between one outside thing and its core: serial
//!   ports, Modbus, the SQLite store, the MQTT uplink, the local HTTP API, systemd, the
//!   configuration files, the self-update spool and agent;
//! - [`topology`]: the one place where tasks and channels are created;
//! - [`demo`]: a simulated site on pseudo-terminals;
//! - [`selftest`]: `outpost check --self-test`, the machine's fitness tried in a temp directory.
//!
//! See `docs/ARCHITECTURE.md` for the crate graph and the data path.

pub mod demo;
pub mod io;
pub mod selftest;
pub mod topology;
