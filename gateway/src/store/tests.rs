use outpost_proto::{ChannelId, FwVersion, ResetReason};

use super::*;

fn hello(uid: u8, boot_id: u32) -> Hello {
    Hello {
        uid: [uid; 8],
        hw_rev: 2,
        fw: FwVersion {
            major: 1,
            minor: 4,
            patch: 0,
        },
        boot_id,
        lot: heapless::String::try_from("L2026-11").unwrap(),
        channels: [ChannelId::TEMPERATURE, ChannelId::SEQ]
            .into_iter()
            .collect(),
    }
}

fn sample(seq: u32, window_start: u32) -> Sample {
    Sample {
        seq,
        window_start,
        ts_ms: 1_700_000_000_000 + i64::from(seq) * 1000,
        readings: [
            Reading {
                channel: ChannelId::TEMPERATURE,
                value: 2150,
            },
            Reading {
                channel: ChannelId::SEQ,
                value: seq as i32,
            },
        ]
        .into_iter()
        .collect(),
    }
}

fn seqs(path: &Path, node_id: i64) -> Vec<u32> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT value FROM readings WHERE node_id = ?1 AND channel = 4 ORDER BY id")
        .unwrap();
    stmt.query_map([node_id], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn samples_are_admitted_in_order_and_retransmissions_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outpost.db");
    let mut store = Store::open(&path).unwrap();
    let node = store
        .transaction(|tx| tx.register(0, "/dev/ttyACM0", &hello(1, 77)))
        .unwrap();
    assert_eq!(node.ack_upto, 0);

    let first = store
        .transaction(|tx| tx.ingest(node.node_id, 77, &[sample(1, 1), sample(2, 1)], 0))
        .unwrap();
    assert_eq!((first.upto, first.admitted), (2, 2));
    // The ACK was lost: the node resends 1..=3.
    let again = store
        .transaction(|tx| {
            tx.ingest(
                node.node_id,
                77,
                &[sample(1, 1), sample(2, 1), sample(3, 1)],
                0,
            )
        })
        .unwrap();
    assert_eq!((again.upto, again.admitted, again.duplicates), (3, 1, 2));
    // Out of order (4 missing): not admitted.
    let ahead = store
        .transaction(|tx| tx.ingest(node.node_id, 77, &[sample(5, 1)], 0))
        .unwrap();
    assert_eq!((ahead.upto, ahead.admitted), (3, 0));
    assert_eq!(seqs(&path, node.node_id), vec![1, 2, 3]);
}

#[test]
fn a_gap_the_node_reports_is_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let node = store
        .transaction(|tx| tx.register(0, "p", &hello(1, 5)))
        .unwrap();
    store
        .transaction(|tx| tx.ingest(node.node_id, 5, &[sample(1, 1)], 0))
        .unwrap();
    // The node's ring overflowed: it holds 10.. only.
    let r = store
        .transaction(|tx| tx.ingest(node.node_id, 5, &[sample(10, 10), sample(11, 10)], 0))
        .unwrap();
    assert_eq!((r.upto, r.lost), (11, 8));
    let nodes = store.reader().unwrap().nodes().unwrap();
    assert_eq!(nodes[0].samples_lost, 8);
}

#[test]
fn the_dedup_point_survives_reopening_and_a_new_boot_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let mut store = Store::open(&path).unwrap();
        let node = store
            .transaction(|tx| tx.register(0, "p", &hello(1, 5)))
            .unwrap();
        store
            .transaction(|tx| tx.ingest(node.node_id, 5, &[sample(1, 1), sample(2, 1)], 0))
            .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    let again = store
        .transaction(|tx| tx.register(0, "p", &hello(1, 5)))
        .unwrap();
    assert_eq!(again.ack_upto, 2);
    let rebooted = store
        .transaction(|tx| tx.register(0, "p", &hello(1, 6)))
        .unwrap();
    assert_eq!((rebooted.node_id, rebooted.ack_upto), (again.node_id, 0));
}

#[test]
fn a_failed_transaction_commits_nothing_and_forgets_its_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = Store::open(&path).unwrap();
    let node = store
        .transaction(|tx| tx.register(0, "p", &hello(1, 5)))
        .unwrap();
    let failed: Result<(), _> = store.transaction(|tx| {
        tx.ingest(node.node_id, 5, &[sample(1, 1)], 0)?;
        Err(StoreError::DiskFull)
    });
    assert!(failed.is_err());
    assert!(seqs(&path, node.node_id).is_empty());
    let retried = store
        .transaction(|tx| tx.ingest(node.node_id, 5, &[sample(1, 1)], 0))
        .unwrap();
    assert_eq!(retried.admitted, 1);
}

#[test]
fn a_different_key_for_a_pinned_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let node = store
        .transaction(|tx| tx.register(0, "p", &hello(1, 5)))
        .unwrap();
    assert_eq!(
        store
            .transaction(|tx| tx.enroll(node.node_id, &[7; 32]))
            .unwrap(),
        Enrolment::Pinned
    );
    assert_eq!(
        store
            .transaction(|tx| tx.enroll(node.node_id, &[7; 32]))
            .unwrap(),
        Enrolment::Known
    );
    assert_eq!(
        store
            .transaction(|tx| tx.enroll(node.node_id, &[8; 32]))
            .unwrap(),
        Enrolment::KeyMismatch
    );
}

#[test]
fn health_updates_the_registry_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let node = store
        .transaction(|tx| tx.register(10, "p", &hello(0xab, 5)))
        .unwrap();
    let h = Health {
        uptime_s: 3600,
        reset_reason: ResetReason::Watchdog,
        fw: FwVersion {
            major: 1,
            minor: 4,
            patch: 0,
        },
        stack_free_min: 1800,
        rx_frames: 100,
        rx_errors: 3,
        tx_frames: 120,
        retransmits: 4,
        dropped_samples: 0,
        chip_temp_centi: 3120,
    };
    store
        .transaction(|tx| tx.health(node.node_id, 20, &h))
        .unwrap();
    store
        .transaction(|tx| tx.link_errors(node.node_id, 2))
        .unwrap();
    let row = &store.reader().unwrap().nodes().unwrap()[0];
    assert_eq!(row.uid, "abababababababab");
    assert_eq!(row.uptime_s, Some(3600));
    assert_eq!(row.reset_reason.as_deref(), Some("watchdog"));
    assert_eq!(
        row.link_errors,
        LinkErrors {
            gateway_rx: 2,
            node_rx: 3
        }
    );
    assert_eq!(row.channels, vec!["temperature", "seq"]);
    assert_eq!((row.first_seen_ms, row.last_seen_ms), (10, 20));
}

#[test]
fn a_store_written_by_a_newer_outpost_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    drop(Store::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));
}

mod outbox {
    use super::*;
    use crate::store::outbox::AckError;

    fn store_with_samples(n: u32) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let node = store
            .transaction(|tx| tx.register(0, "p", &hello(1, 5)))
            .unwrap();
        let samples: Vec<Sample> = (1..=n).map(|s| sample(s, 1)).collect();
        store
            .transaction(|tx| tx.ingest(node.node_id, 5, &samples, 0))
            .unwrap();
        (dir, store)
    }

    #[test]
    fn sealing_takes_every_unsealed_reading_once_in_order() {
        let (_dir, mut store) = store_with_samples(30);
        let first = store
            .transaction(|tx| tx.seal_batch("gw-1", 0, 40, None))
            .unwrap()
            .unwrap();
        assert_eq!((first.seq, first.readings), (1, 40));
        let second = store
            .transaction(|tx| tx.seal_batch("gw-1", 0, 40, None))
            .unwrap()
            .unwrap();
        assert_eq!((second.seq, second.readings), (2, 20));
        assert_eq!(
            store
                .transaction(|tx| tx.seal_batch("gw-1", 0, 40, None))
                .unwrap(),
            None
        );

        let reader = store.reader().unwrap();
        let mut seqs = Vec::new();
        for info in reader.batches_after(0, 10).unwrap() {
            let bytes = reader.batch_bytes(info.seq).unwrap().unwrap();
            let batch =
                outpost_batch::decode(&bytes, &outpost_batch::Dictionaries::default()).unwrap();
            assert_eq!(batch.header().seq, info.seq);
            assert_eq!(batch.header().gateway_id.as_str(), "gw-1");
            seqs.extend(
                batch
                    .readings()
                    .filter(|r| r.channel == "seq")
                    .map(|r| r.value.as_f64() as u32),
            );
        }
        assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    }

    #[test]
    fn temperatures_travel_with_their_decimals() {
        let (_dir, mut store) = store_with_samples(1);
        store
            .transaction(|tx| tx.seal_batch("gw-1", 0, 100, None))
            .unwrap();
        let bytes = store.reader().unwrap().batch_bytes(1).unwrap().unwrap();
        let batch = outpost_batch::decode(&bytes, &outpost_batch::Dictionaries::default()).unwrap();
        let t = batch
            .readings()
            .find(|r| r.channel == "temperature")
            .unwrap();
        assert!((t.value.as_f64() - 21.5).abs() < 1e-9, "{:?}", t.value);
        assert_eq!(t.source, "0101010101010101");
    }

    #[test]
    fn acknowledged_batches_are_deleted_and_sequence_numbers_never_reused() {
        let (_dir, mut store) = store_with_samples(30);
        for _ in 0..3 {
            store
                .transaction(|tx| tx.seal_batch("gw", 0, 20, None))
                .unwrap();
        }
        let acked = store
            .transaction(|tx| {
                tx.ack_batches(2).map_err(|e| match e {
                    AckError::Store(e) => e,
                    other => panic!("{other}"),
                })
            })
            .unwrap();
        assert_eq!((acked.acked_upto, acked.deleted), (2, 2));
        store
            .transaction(|tx| tx.ack_batches(3).map_err(|_| StoreError::DiskFull))
            .unwrap();
        let node = store
            .transaction(|tx| tx.register(0, "p", &hello(1, 5)))
            .unwrap();
        store
            .transaction(|tx| tx.ingest(node.node_id, 5, &[sample(31, 1)], 0))
            .unwrap();
        let next = store
            .transaction(|tx| tx.seal_batch("gw", 0, 20, None))
            .unwrap()
            .unwrap();
        assert_eq!(
            next.seq, 4,
            "an emptied outbox does not restart the sequence"
        );
    }

    #[test]
    fn an_ack_past_the_newest_batch_is_refused_and_changes_nothing() {
        let (_dir, mut store) = store_with_samples(5);
        store
            .transaction(|tx| tx.seal_batch("gw", 0, 100, None))
            .unwrap();
        let refused = store.transaction(|tx| Ok(tx.ack_batches(9))).unwrap();
        assert!(matches!(
            refused,
            Err(AckError::BeyondNewest { upto: 9, newest: 1 })
        ));
        let totals = store.reader().unwrap().outbox().unwrap();
        assert_eq!((totals.batches, totals.acked_upto), (1, 0));
    }

    #[test]
    fn the_buffer_bound_drops_the_oldest_batches_and_counts_them() {
        let (_dir, mut store) = store_with_samples(400); // 800 readings
        let mut sizes = Vec::new();
        while let Some(b) = store
            .transaction(|tx| tx.seal_batch("gw", 0, 100, None))
            .unwrap()
        {
            sizes.push(b.size_bytes);
        }
        assert_eq!(sizes.len(), 8);
        let keep_last_three: u64 = sizes[5..].iter().sum();
        let dropped = store
            .transaction(|tx| tx.enforce_buffer(keep_last_three))
            .unwrap();
        assert_eq!(dropped.batches, 5);
        assert_eq!(dropped.readings, 500);
        let totals = store.reader().unwrap().outbox().unwrap();
        assert_eq!((totals.oldest_seq, totals.newest_seq), (Some(6), Some(8)));
        assert_eq!((totals.dropped_batches, totals.dropped_readings), (5, 500));
        assert!(totals.bytes <= keep_last_three);
    }
}
