//! What the diagnostics bundle reads from the store: its statistics and the node tables that
//! trace a unit's life (registry, reset history, firmware transitions). Read-only, on a reader.
//!
//! None of these tables holds a secret: nodes' public keys, uids, versions, reasons, times.

use rusqlite::types::ValueRef;
use serde_json::{Map, Value};

use super::{Reader, StoreError};

/// The store at a glance, for the bundle.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStatistics {
    /// The database file and its write-ahead log, bytes.
    pub size_bytes: u64,
    pub page_size: i64,
    pub page_count: i64,
    pub freelist_pages: i64,
    /// Rows of every table, by name.
    pub rows: Map<String, Value>,
    pub outbox: super::outbox::OutboxTotals,
}

/// Tables whose rows the bundle counts.
const COUNTED: [&str; 13] = [
    "nodes",
    "readings",
    "batches",
    "health",
    "node_resets",
    "node_firmware",
    "command_audit",
    "enrollment_waiting",
    "rollouts",
    "rollout_nodes",
    "ota_events",
    "uplink_usage",
    "series",
];

impl Reader {
    /// Sizes, row counts and the outbox's depth.
    pub fn statistics(&self) -> Result<StoreStatistics, StoreError> {
        let pragma = |name: &str| -> Result<i64, StoreError> {
            Ok(self
                .conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?)
        };
        let mut rows = Map::new();
        for table in COUNTED {
            // A table this store does not have (yet) is left out, not an error.
            let count: Result<i64, _> =
                self.conn
                    .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0));
            if let Ok(count) = count {
                rows.insert(table.to_owned(), count.into());
            }
        }
        Ok(StoreStatistics {
            size_bytes: self.size_bytes(),
            page_size: pragma("page_size")?,
            page_count: pragma("page_count")?,
            freelist_pages: pragma("freelist_count")?,
            rows,
            outbox: self.outbox()?,
        })
    }

    /// Every node's reset history (`node_resets`), newest first, at most `limit` rows.
    pub fn reset_history(&self, limit: u32) -> Result<Vec<Value>, StoreError> {
        self.rows_as_json(
            "SELECT uid, boot_id, at_ms, reason, expected, fw_version, lot
             FROM node_resets ORDER BY id DESC LIMIT ?1",
            limit,
        )
    }

    /// Every node's firmware transitions (`node_firmware`), newest first, at most `limit`.
    pub fn firmware_transitions(&self, limit: u32) -> Result<Vec<Value>, StoreError> {
        self.rows_as_json(
            "SELECT uid, at_ms, from_version, to_version, outcome, rollout
             FROM node_firmware ORDER BY id DESC LIMIT ?1",
            limit,
        )
    }

    /// Rows as JSON objects by column name; blobs as lower-case hex.
    fn rows_as_json(&self, sql: &str, limit: u32) -> Result<Vec<Value>, StoreError> {
        let mut stmt = self.conn.prepare(sql)?;
        let names: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        let rows = stmt.query_map([limit], |row| {
            let mut object = Map::new();
            for (i, name) in names.iter().enumerate() {
                let value = match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => n.into(),
                    ValueRef::Real(f) => f.into(),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                    ValueRef::Blob(b) => outpost_core::hex::encode(b).into(),
                };
                object.insert(name.clone(), value);
            }
            Ok(Value::Object(object))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    #[test]
    fn the_bundle_reads_reset_history_and_firmware_newest_first_and_counts_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(Store::open(&path).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO node_resets (uid, boot_id, at_ms, reason, expected, fw_version, lot)
                 VALUES ('a1', 1, 100, 'power_on', 1, '1.0.0', 'L1'),
                        ('a1', 2, 200, 'watchdog', 0, '1.0.0', 'L1'),
                        ('b2', 9, 300, 'hard_fault', 0, '1.1.0', 'L2');
             INSERT INTO node_firmware (uid, at_ms, from_version, to_version, outcome, rollout)
                 VALUES ('a1', 150, '0.9.0', '1.0.0', 'confirmed', 3);",
        )
        .unwrap();
        let reader = Reader::open(&path).unwrap();
        let resets = reader.reset_history(2).unwrap();
        assert_eq!(resets.len(), 2, "the limit holds");
        assert_eq!(resets[0]["uid"], "b2");
        assert_eq!(resets[0]["reason"], "hard_fault");
        assert_eq!(resets[0]["expected"], 0);
        assert_eq!(resets[1]["boot_id"], 2);
        let firmware = reader.firmware_transitions(10).unwrap();
        assert_eq!(firmware.len(), 1);
        assert_eq!(firmware[0]["to_version"], "1.0.0");
        assert_eq!(firmware[0]["rollout"], 3);
        let stats = reader.statistics().unwrap();
        assert_eq!(stats.rows["node_resets"], 3);
        assert_eq!(stats.rows["node_firmware"], 1);
        assert_eq!(stats.rows["readings"], 0);
        assert!(stats.size_bytes > 0 && stats.page_count > 0);
    }
}
