//! The uplink to the cloud: MQTT over TLS with end-to-end acknowledgement, every byte metered.

pub mod client;
pub mod cost;
pub mod identity;
pub mod link;
pub mod meter;
pub mod mqtt;
pub mod provision;
