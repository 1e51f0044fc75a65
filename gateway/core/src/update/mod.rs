//! Gateway self-update, the IO-free part: signing keys with a role and the signed manifest
//! ([`signing`], shared by `outpost-sign` and node firmware), the state machine of one attempt
//! ([`agent`]), what it leaves behind ([`report`]) and the version rule ([`version`]). The root
//! agent that carries it out is `outpost::io::update`; docs/self-update.md is the operator's guide.

pub mod agent;
pub mod report;
pub mod signing;
pub mod version;

pub use report::{Outcome, UpdateReport};

/// The largest artifact the daemon takes into its spool and the root agent copies out of it (a
/// gateway .deb is ~3 MB).
pub const MAX_ARTIFACT_BYTES: u64 = 64 * 1024 * 1024;
