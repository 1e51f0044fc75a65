//! The node registry as an RMA record (`outpost nodes export`): every node ever registered,
//! with its hardware revision, lot, first and last contact, every firmware transition (rollouts'
//! outcomes and versions seen at boot outside any rollout) and every boot the gateway heard of.
//! Read-only; docs/rma.md describes the fields.

use rusqlite::params;
use serde::Serialize;

use super::{Reader, StoreError};

/// One node's record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RmaNode {
    pub uid: String,
    pub hw_rev: i64,
    /// As the node reports it: untrusted text, at most 16 bytes.
    pub lot: String,
    /// The firmware it last reported.
    pub fw_version: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub port: Option<String>,
    /// Its key is pinned (it enrolled); `false` for a row whose key was forgotten (`rekey`).
    pub enrolled: bool,
    pub revoked_ms: Option<i64>,
    /// Oldest first.
    pub firmware: Vec<RmaFirmware>,
    /// Oldest first.
    pub resets: Vec<RmaReset>,
}

/// A firmware transition (`node_firmware`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RmaFirmware {
    pub at_ms: i64,
    pub from_version: String,
    pub to_version: String,
    /// `confirmed`, `reverted (cause)`, `finalized` (a rollout's); `booted` (a rollout's image
    /// seen at boot), `booted_outside_rollout` (another version seen at boot that no rollout
    /// explains: flashed by hand, or a board swapped under the uid).
    pub outcome: String,
    pub rollout: Option<i64>,
}

/// A boot of the node (`node_resets`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RmaReset {
    pub boot_id: u32,
    /// When the gateway heard of it (the boot's first HEALTH).
    pub at_ms: i64,
    /// Why the node reset into this boot (`power_on`, `hard_fault`, `watchdog`, …).
    pub reason: String,
    /// Someone asked for it (power-on, a requested reboot, an update applied).
    pub expected: bool,
    pub fw_version: String,
}

impl Reader {
    /// Every node of the registry, in uid order, with its history.
    pub fn rma_nodes(&self) -> Result<Vec<RmaNode>, StoreError> {
        let mut nodes = self
            .conn
            .prepare(
                "SELECT uid, hw_rev, lot, fw_version, first_seen_ms, last_seen_ms, port,
                        public_key IS NOT NULL, revoked_ms
                 FROM nodes ORDER BY uid",
            )?
            .query_map([], |r| {
                Ok(RmaNode {
                    uid: r.get(0)?,
                    hw_rev: r.get(1)?,
                    lot: r.get(2)?,
                    fw_version: r.get(3)?,
                    first_seen_ms: r.get(4)?,
                    last_seen_ms: r.get(5)?,
                    port: r.get(6)?,
                    enrolled: r.get(7)?,
                    revoked_ms: r.get(8)?,
                    firmware: Vec::new(),
                    resets: Vec::new(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut firmware = self.conn.prepare(
            "SELECT at_ms, from_version, to_version, outcome, rollout
             FROM node_firmware WHERE uid = ?1 ORDER BY at_ms, id",
        )?;
        let mut resets = self.conn.prepare(
            "SELECT boot_id, at_ms, reason, expected, fw_version
             FROM node_resets WHERE uid = ?1 ORDER BY at_ms, id",
        )?;
        for node in &mut nodes {
            node.firmware = firmware
                .query_map(params![node.uid], |r| {
                    Ok(RmaFirmware {
                        at_ms: r.get(0)?,
                        from_version: r.get(1)?,
                        to_version: r.get(2)?,
                        outcome: r.get(3)?,
                        rollout: r.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            node.resets = resets
                .query_map(params![node.uid], |r| {
                    Ok(RmaReset {
                        boot_id: r.get(0)?,
                        at_ms: r.get(1)?,
                        reason: r.get(2)?,
                        expected: r.get(3)?,
                        fw_version: r.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
        }
        Ok(nodes)
    }
}
