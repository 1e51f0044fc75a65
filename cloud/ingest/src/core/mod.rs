//! The ingest's policy, free of IO: which topic a batch came on and what its ack looks like
//! ([`topic`]), whether a batch may be stored and as which rows ([`check`]), how far a gateway
//! may be acknowledged ([`prefix`]), and which daily partitions hold a batch's readings
//! ([`partition`]). The adapters (`mqtt`, `pull`, `db`) only move bytes around these.

pub mod check;
pub mod partition;
pub mod prefix;
pub mod topic;
