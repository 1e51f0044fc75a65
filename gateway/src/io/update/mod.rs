//! Gateway self-update, the adapters: a signed .deb is dropped in the spool by the unprivileged
//! daemon ([`incoming`], `PUT /api/v1/updates/{file}`), then verified and installed by a root
//! one-shot (`outpost-update apply`, started by `outpost-update.path`), kept only if the new
//! version proves healthy within a deadline, otherwise replaced by the previous version again. The
//! outcome is left in `report.json` for the daemon to show and send upstream ([`last_report`]).
//! docs/self-update.md is the operator's guide; the IO-free parts (signing, the attempt's state
//! machine, the report's shape) are `outpost_core::update`.
//!
//! - [`incoming`]: the daemon's side: writing uploaded artifacts into the spool.
//! - [`spool`]: the root agent's side: taking artifacts out of the spool without trusting it.
//! - [`report`]: reading and writing `report.json` and the in-progress marker `pending.json`.
//! - [`apply`]: the adapter that verifies, plans and pumps the agent over a [`apply::Host`];
//!   [`system`]: the real host (dpkg, systemctl, the daemon's API).

pub mod apply;
pub mod incoming;
pub mod report;
pub mod spool;
pub mod system;

pub use report::last_report;

/// Root's folder for the update agent: report, marker, the package to roll back to.
pub const STATE_DIR: &str = "/var/lib/outpost-update";
/// The trusted `gateway-update` public keys.
pub const PUBKEYS: &str = "/etc/outpost/keys/gateway-update.pub";
