//! Gateway self-update: a signed .deb, dropped in the spool by the unprivileged daemon, verified
//! and installed by a root one-shot (`outpost-update apply`, started by `outpost-update.path`),
//! kept only if the new version proves healthy within a deadline, otherwise replaced by the
//! previous version again. The outcome is left in [`report::UpdateReport`] for the daemon to show
//! and send upstream ([`last_report`]). docs/self-update.md is the operator's guide.
//!
//! - [`signing`]: keys with a role, the signed manifest (`ARTIFACT.sig`), sign and verify: the
//!   `outpost-sign` tool's core, shared with node firmware (role `firmware`).
//! - [`agent`]: the IO-free state machine of one attempt (verified → installing → awaiting
//!   health → confirmed, or rolling back → rolled back / failed).
//! - [`report`]: `report.json` and the in-progress marker `pending.json`.
//! - [`spool`]: taking artifacts out of the daemon's spool without trusting it.
//! - [`apply`]: the adapter that verifies, plans and pumps the agent over a [`apply::Host`];
//!   [`system`]: the real host (dpkg, systemctl, the daemon's API).
//! - [`version`]: the upstream part of a Debian version, which the daemon reports.

pub mod agent;
pub mod apply;
pub mod report;
pub mod signing;
pub mod spool;
pub mod system;
pub mod version;

pub use report::{Outcome, UpdateReport, last_report};

/// Root's folder for the update agent: report, marker, the package to roll back to.
pub const STATE_DIR: &str = "/var/lib/outpost-update";
/// The trusted `gateway-update` public keys.
pub const PUBKEYS: &str = "/etc/outpost/keys/gateway-update.pub";
