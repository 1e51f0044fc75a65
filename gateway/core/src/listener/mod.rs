//! The local API's connection policy: which connections it keeps when there are too many
//! ([`admission`]) and which `Host:` names it answers ([`host`]). The adapter is
//! `outpost::io::api::listener`, which accepts, times out and closes connections as these decide.

pub mod admission;
pub mod host;
