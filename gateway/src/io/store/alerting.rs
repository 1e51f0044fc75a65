//! What the fleet alert rules read (`io::alerting`): the registry in brief and the reset
//! history, through the readers' pool.

use rusqlite::params;

use super::{Reader, StoreError};

/// A node of the registry, as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetNode {
    pub uid: String,
    pub fw_version: String,
    pub lot: String,
    pub port: Option<String>,
    /// Its key is pinned: it was accepted once (nodes waiting for enrollment are not).
    pub enrolled: bool,
    pub last_seen_ms: i64,
}

/// One row of `node_resets`, with its id (the reading's cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetRow {
    pub id: i64,
    pub uid: String,
    pub boot_id: i64,
    pub at_ms: i64,
    pub reason: String,
    pub expected: bool,
    pub fw_version: String,
    pub lot: String,
}

impl Reader {
    /// Every node not revoked, in uid order.
    pub fn fleet_nodes(&self) -> Result<Vec<FleetNode>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT uid, fw_version, lot, port, public_key IS NOT NULL, last_seen_ms
             FROM nodes WHERE revoked_ms IS NULL ORDER BY uid",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(FleetNode {
                uid: row.get(0)?,
                fw_version: row.get(1)?,
                lot: row.get(2)?,
                port: row.get(3)?,
                enrolled: row.get(4)?,
                last_seen_ms: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// At most `limit` resets with an id after `after` heard of at `since_ms` or later, oldest
    /// id first.
    pub fn resets_after(
        &self,
        after: i64,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<ResetRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, uid, boot_id, at_ms, reason, expected, fw_version, lot FROM node_resets
             WHERE id > ?1 AND at_ms >= ?2 ORDER BY id LIMIT ?3",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after, since_ms, limit], |row| {
            Ok(ResetRow {
                id: row.get(0)?,
                uid: row.get(1)?,
                boot_id: row.get(2)?,
                at_ms: row.get(3)?,
                reason: row.get(4)?,
                expected: row.get(5)?,
                fw_version: row.get(6)?,
                lot: row.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use outpost_proto::{ChannelId, FwVersion, Health, Hello, ResetReason};

    use crate::io::store::Store;

    fn hello(uid: u8, lot: &str) -> Hello {
        Hello {
            uid: [uid; 8],
            hw_rev: 1,
            fw: FwVersion {
                major: 1,
                minor: 2,
                patch: 0,
            },
            boot_id: 1,
            lot: heapless::String::try_from(lot).unwrap(),
            channels: [ChannelId::SEQ].into_iter().collect(),
            ephemeral: [0; 32],
        }
    }

    fn health(reset_reason: ResetReason) -> Health {
        Health {
            uptime_s: 1,
            reset_reason,
            fw: FwVersion {
                major: 1,
                minor: 2,
                patch: 0,
            },
            stack_free_min: 1800,
            rx_frames: 0,
            rx_errors: 0,
            tx_frames: 0,
            retransmits: 0,
            dropped_samples: 0,
            chip_temp_centi: 3000,
        }
    }

    #[test]
    fn the_rules_read_the_registry_and_the_resets_after_a_cursor_within_a_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        let mut ids = Vec::new();
        for (uid, lot) in [(1, "LOT-A"), (2, "LOT-B")] {
            let node = store
                .transaction(|tx| {
                    tx.register(1_000, "/dev/ttyACM0", &hello(uid, lot), &[7; 32], true)
                })
                .unwrap()
                .unwrap();
            ids.push(node.node_id);
        }
        for (boot, at, reason) in [
            (1, 1_000, ResetReason::PowerOn),
            (2, 2_000, ResetReason::HardFault),
            (3, 3_000, ResetReason::Watchdog),
        ] {
            store
                .transaction(|tx| tx.health(ids[0], boot, at, &health(reason)))
                .unwrap();
        }
        store
            .transaction(|tx| tx.revoke(&"02".repeat(8), 5_000))
            .unwrap();

        let reader = store.reader().unwrap();
        let nodes = reader.fleet_nodes().unwrap();
        assert_eq!(nodes.len(), 1, "a revoked node is not in the fleet");
        assert_eq!(
            (
                nodes[0].fw_version.as_str(),
                nodes[0].lot.as_str(),
                nodes[0].enrolled
            ),
            ("1.2.0", "LOT-A", true)
        );
        let all = reader.resets_after(0, 0, 100).unwrap();
        let reasons: Vec<(&str, bool)> = all
            .iter()
            .map(|r| (r.reason.as_str(), r.expected))
            .collect();
        assert_eq!(
            reasons,
            [
                ("power_on", true),
                ("hard_fault", false),
                ("watchdog", false)
            ]
        );
        let after = reader.resets_after(all[0].id, 0, 1).unwrap();
        assert_eq!(after.len(), 1, "the limit holds");
        assert_eq!(after[0].boot_id, 2);
        let recent = reader.resets_after(0, 2_500, 100).unwrap();
        assert_eq!(recent.len(), 1, "older than the window");
        assert_eq!(recent[0].lot, "LOT-A");
    }
}
