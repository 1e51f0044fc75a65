//! # outpost-core
//!
//! Every protocol and policy of the Outpost gateway as a plain, synchronous state machine: events
//! and the time go in (`handle_*`), actions come out as data (`poll_*`). Nothing here opens a
//! file, a port or a socket, reads a clock or spawns a task; the `outpost` crate's adapters do
//! that and carry out what these cores decide. Cargo enforces the rule: this crate depends on no
//! IO crate (tokio, rusqlite, rumqttc, tokio-serial, tokio-modbus, axum).
//!
//! - [`auth`]: the local API's token scopes and the failed-authentication throttle;
//! - [`listener`]: the local API's connection cap and the `Host:` names it answers;
//! - [`link`]: the gateway's end of the node link on one serial port, and the admission rule
//!   that keeps the store free of gaps and duplicates;
//! - [`batcher`] and [`budget`]: when to seal a batch (the first of a run and a priority reading
//!   early), and how long to make the interval so readings arrive as soon as the month's budget
//!   allows and its traffic stays within it;
//! - [`uplink`]: the MQTT uplink session (probe, flow control, resend, acknowledgements);
//! - [`modbus`]: register maps, value codecs, read planning, RTU framing and device health;
//! - [`telemetry`]: the gateway's status, counters and alerts, one snapshot for every reader;
//! - [`technician`]: technician sessions and their one-use CSRF tokens;
//! - [`metrics`]: the snapshot, the registry and the outbox as Prometheus text (`/metrics`);
//! - [`site`]: the site at a glance for the technician's page: node states and the verdict line;
//! - [`watchdog`]: when the daemon may tell systemd it is alive;
//! - [`health`]: the gateway's own health report, when it is published, and why the previous
//!   run ended (clean stop, crash, watchdog, power loss);
//! - [`update`]: signing, and the state machine of one self-update attempt;
//! - [`rollout`]: one staged rollout of node firmware: stages, gates, halt and rollback, restart;
//! - [`config`]: the configuration compiled from text to typed values, every problem located
//!   (the adapter reads the files and hands their text in through [`config::Sources`]).

pub mod alerting;
pub mod auth;
pub mod batcher;
pub mod budget;
pub mod clock;
pub mod command;
pub mod config;
pub mod diagnostics;
pub mod enrollment;
pub mod firmware;
pub mod health;
pub mod hex;
pub mod link;
pub mod listener;
pub mod metrics;
pub mod modbus;
pub mod node_request;
pub mod ota;
pub mod provisioning;
pub mod rollout;
pub mod site;
pub mod technician;
pub mod telemetry;
pub mod update;
pub mod uplink;
pub mod watchdog;

pub use outpost_proto::Millis;
