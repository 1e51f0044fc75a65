//! The registry as `/metrics` shows it: every node with its last HEALTH and its reset history
//! counted by reason, in two queries (no per-node round trip).

use std::collections::HashMap;
use std::time::Duration;

use outpost_core::metrics::NodeFacts;
use outpost_core::site;

use super::{Reader, StoreError};

impl Reader {
    /// Every node in uid order, with its state at `now_ms` (`offline_after` of the port it was
    /// last seen on). The registry is bounded by `store.max_nodes`, so this is too.
    pub fn node_facts(
        &self,
        now_ms: i64,
        offline_after: impl Fn(&str) -> Option<Duration>,
    ) -> Result<Vec<NodeFacts>, StoreError> {
        let mut resets: HashMap<String, Vec<(String, u64)>> = HashMap::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT uid, reason, count(*) FROM node_resets GROUP BY uid, reason ORDER BY uid, reason",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, u64>(2)?,
            ))
        })?;
        for row in rows {
            let (uid, reason, count) = row?;
            resets.entry(uid).or_default().push((reason, count));
        }
        // The newest HEALTH of each node through `health_by_node` (node_id, ts_ms).
        let mut stmt = self.conn.prepare_cached(
            "SELECT n.uid, n.hw_rev, n.fw_version, n.lot, n.port, n.public_key IS NOT NULL,
                    n.revoked_ms IS NOT NULL, n.last_seen_ms, n.uptime_s, n.readings_received,
                    n.samples_lost, n.gateway_rx_errors, n.node_rx_errors, n.ages_clamped,
                    n.gaps_refused, n.auth_failed, n.replayed,
                    h.retransmits, h.chip_temp_centi, h.stack_free_min
             FROM nodes n
             LEFT JOIN health h ON h.id = (SELECT id FROM health WHERE node_id = n.id
                                           ORDER BY ts_ms DESC, id DESC LIMIT 1)
             ORDER BY n.uid",
        )?;
        let rows = stmt.query_map([], |row| {
            let uid: String = row.get(0)?;
            let port: Option<String> = row.get(4)?;
            let enrolled: bool = row.get(5)?;
            let last_seen_ms: i64 = row.get(7)?;
            let after = port
                .as_deref()
                .and_then(&offline_after)
                .unwrap_or(site::DEFAULT_OFFLINE_AFTER);
            Ok(NodeFacts {
                resets: resets.remove(&uid).unwrap_or_default(),
                uid,
                hw_rev: row.get(1)?,
                firmware: row.get(2)?,
                lot: row.get(3)?,
                port,
                state: site::node_state(enrolled, last_seen_ms, now_ms, after),
                revoked: row.get(6)?,
                last_seen_ms,
                uptime_s: row.get(8)?,
                readings: row.get(9)?,
                samples_lost: row.get(10)?,
                gateway_rx_errors: row.get(11)?,
                node_rx_errors: row.get(12)?,
                ages_clamped: row.get(13)?,
                gaps_refused: row.get(14)?,
                auth_failed: row.get(15)?,
                replayed: row.get(16)?,
                retransmits: row.get(17)?,
                chip_temp_centi: row.get(18)?,
                stack_free_min: row.get(19)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use outpost_core::site::NodeState;
    use outpost_proto::{FwVersion, Health, Hello, ResetReason};

    use super::*;
    use crate::io::store::Store;

    fn hello(uid: u8, boot_id: u32, lot: &str) -> Hello {
        Hello {
            uid: [uid; 8],
            hw_rev: 3,
            fw: FwVersion {
                major: 1,
                minor: 4,
                patch: 0,
            },
            boot_id,
            lot: heapless::String::try_from(lot).unwrap(),
            channels: heapless::Vec::new(),
            ephemeral: [0; 32],
        }
    }

    fn health(reset_reason: ResetReason, chip_temp_centi: i16) -> Health {
        Health {
            uptime_s: 77,
            reset_reason,
            fw: FwVersion {
                major: 1,
                minor: 4,
                patch: 0,
            },
            stack_free_min: 1800,
            rx_frames: 0,
            rx_errors: 5,
            tx_frames: 0,
            retransmits: 9,
            dropped_samples: 0,
            chip_temp_centi,
        }
    }

    #[test]
    fn every_node_comes_with_its_newest_health_and_its_resets_by_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        let a = store
            .transaction(|tx| {
                tx.register(
                    1_000,
                    "/dev/ttyA",
                    &hello(0xaa, 1, "a\"b\nc"),
                    &[7; 32],
                    true,
                )
            })
            .unwrap()
            .unwrap();
        store
            .transaction(|tx| {
                tx.register(1_000, "/dev/ttyB", &hello(0xbb, 1, "L2"), &[8; 32], true)
            })
            .unwrap()
            .unwrap();
        for (boot, at, reason, temp) in [
            (1, 2_000, ResetReason::PowerOn, 2_000),
            (2, 3_000, ResetReason::Watchdog, 2_100),
            (2, 4_000, ResetReason::Watchdog, 2_200), // the same boot's next report
            (3, 5_000, ResetReason::Watchdog, 2_345),
        ] {
            store
                .transaction(|tx| tx.health(a.node_id, boot, at, &health(reason, temp)))
                .unwrap();
        }
        let reader = store.reader().unwrap();
        // Port A's nodes are offline after 1 s; B keeps the default (30 s).
        let offline_after = |port: &str| (port == "/dev/ttyA").then_some(Duration::from_secs(1));
        let nodes = reader.node_facts(10_000, offline_after).unwrap();
        assert_eq!(nodes.len(), 2);
        let (a, b) = (&nodes[0], &nodes[1]);
        assert_eq!(a.uid, "aaaaaaaaaaaaaaaa");
        assert_eq!(a.lot, "a\"b\nc", "the lot as the node sent it");
        assert_eq!((a.firmware.as_str(), a.hw_rev), ("1.4.0", 3));
        assert_eq!(a.chip_temp_centi, Some(2_345), "the newest HEALTH");
        assert_eq!(
            (a.retransmits, a.stack_free_min, a.uptime_s),
            (Some(9), Some(1800), Some(77))
        );
        assert_eq!(a.node_rx_errors, 5);
        assert_eq!(
            a.resets,
            [("power_on".to_owned(), 1), ("watchdog".to_owned(), 2)]
        );
        assert_eq!(a.state, NodeState::Offline, "silent 5 s, offline after 1 s");
        assert_eq!(b.state, NodeState::Online, "silent 9 s of the default 30 s");
        assert!(b.resets.is_empty() && b.chip_temp_centi.is_none());
    }
}
