//! # outpost-ingest: Outpost's batches into PostgreSQL, exactly once
//!
//! Batches arrive from a broker's shared subscription (`mqtt`: every replica in one group, so
//! the broker splits the fleet's batches between them) or from gateways' pull API (`pull`).
//! Each goes to a [`worker`] with its own database connection, which checks it
//! ([`core::check`]) and stores it ([`db::Store::store`]): the batch's `(gateway, seq)` row and
//! its readings in one transaction, so a batch delivered twice is stored once. Only after the
//! commit is the gateway acknowledged, and only up to its contiguous committed prefix
//! ([`core::prefix`]), which lives in the database so that every replica agrees on it. A batch
//! that fails its checks is kept in the dead-letter table, counted, and never acknowledged.
//!
//! The broker's own acknowledgement (PUBACK) of a batch is sent only once the batch is stored
//! or dead-lettered: a replica killed mid-batch gets it again from its persistent session.

#![forbid(unsafe_code)]

pub mod config;
pub mod core;
pub mod db;
pub mod metrics;
pub mod mqtt;
pub mod pull;
pub mod run;
pub mod tls;
pub mod tls_link;
pub mod worker;

/// Every reason a batch is dead-lettered for, as `/metrics` labels them.
pub const REJECTION_LABELS: [&str; 7] = [
    "undecodable",
    "unknown_dictionary",
    "wrong_gateway",
    "sequence",
    "time",
    "nul_in_name",
    "database_refused",
];
