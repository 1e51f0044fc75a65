use outpost_proto::{ChannelId, FwVersion, Reading, ResetReason};

use super::*;
use crate::io::wall_clock::WallClock;

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
        ephemeral: [0; 32],
    }
}

fn sample(seq: u32, window_start: u32) -> Sample {
    Sample {
        seq,
        window_start,
        ts_ms: 1_700_000_000_000 + i64::from(seq) * 1000,
        max_lost: u32::MAX,
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

/// Enrols `hello` as a newcomer with a fixed key: the node as the store accepts it.
fn register(
    tx: &mut Tx<'_>,
    now_ms: i64,
    port: &str,
    hello: &Hello,
) -> Result<Registered, StoreError> {
    Ok(tx
        .register(now_ms, port, hello, &[7; 32], true)?
        .expect("a newcomer with room is accepted"))
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
        .transaction(|tx| register(tx, 0, "/dev/ttyACM0", &hello(1, 77)))
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
        .transaction(|tx| register(tx, 0, "p", &hello(1, 5)))
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
            .transaction(|tx| register(tx, 0, "p", &hello(1, 5)))
            .unwrap();
        store
            .transaction(|tx| tx.ingest(node.node_id, 5, &[sample(1, 1), sample(2, 1)], 0))
            .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    let again = store
        .transaction(|tx| register(tx, 0, "p", &hello(1, 5)))
        .unwrap();
    assert_eq!(again.ack_upto, 2);
    let rebooted = store
        .transaction(|tx| register(tx, 0, "p", &hello(1, 6)))
        .unwrap();
    assert_eq!((rebooted.node_id, rebooted.ack_upto), (again.node_id, 0));
}

#[test]
fn a_failed_transaction_commits_nothing_and_forgets_its_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = Store::open(&path).unwrap();
    let node = store
        .transaction(|tx| register(tx, 0, "p", &hello(1, 5)))
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
fn a_different_key_for_a_pinned_node_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let first = store
        .transaction(|tx| tx.register(10, "p", &hello(1, 5), &[7; 32], true))
        .unwrap()
        .unwrap();
    assert!(first.newcomer);
    let again = store
        .transaction(|tx| tx.register(20, "p", &hello(1, 6), &[7; 32], false))
        .unwrap()
        .unwrap();
    assert_eq!(again.node_id, first.node_id);
    assert!(!again.newcomer, "a known node needs no newcomer budget");
    let before = store.reader().unwrap().nodes().unwrap();

    // An impostor: the victim's uid, another key, and everything else different.
    let mut forged = hello(1, 99);
    forged.hw_rev = 9;
    forged.lot = heapless::String::try_from("EVIL").unwrap();
    forged.channels = [ChannelId::PRESSURE].into_iter().collect();
    assert_eq!(
        store
            .transaction(|tx| tx.register(30, "/dev/evil", &forged, &[8; 32], true))
            .unwrap(),
        Err(Refusal::KeyMismatch)
    );
    assert_eq!(
        store.reader().unwrap().nodes().unwrap(),
        before,
        "a refused enrolment must not touch the victim's row"
    );
}

#[test]
fn newcomers_are_written_only_when_accepted_and_never_beyond_max_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    store.set_max_nodes(2);
    assert_eq!(
        store
            .transaction(|tx| tx.register(0, "p", &hello(1, 5), &[1; 32], false))
            .unwrap(),
        Err(Refusal::NewcomerLimited)
    );
    assert!(
        store.reader().unwrap().nodes().unwrap().is_empty(),
        "no row for a refused uid"
    );
    for uid in [1, 2] {
        store
            .transaction(|tx| tx.register(0, "p", &hello(uid, 5), &[uid; 32], true))
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        store
            .transaction(|tx| tx.register(0, "p", &hello(3, 5), &[3; 32], true))
            .unwrap(),
        Err(Refusal::RegistryFull)
    );
    // Full, but the site's own nodes still come back.
    store
        .transaction(|tx| tx.register(0, "p", &hello(2, 6), &[2; 32], false))
        .unwrap()
        .unwrap();
    assert_eq!(store.reader().unwrap().nodes().unwrap().len(), 2);
}

#[test]
fn the_registry_is_read_in_pages_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    for uid in 1..=5 {
        store
            .transaction(|tx| tx.register(0, "p", &hello(uid, 5), &[uid; 32], true))
            .unwrap()
            .unwrap();
    }
    let reader = store.reader().unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = reader.node_page(after.as_deref(), 2).unwrap();
        assert!(page.nodes.len() <= 2);
        seen.extend(page.nodes.iter().map(|n| n.uid.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let all: Vec<String> = reader.nodes().unwrap().into_iter().map(|n| n.uid).collect();
    assert_eq!(seen, all);
    assert_eq!(seen.len(), 5);
    assert_eq!(
        reader.node_page(None, 1_000_000).unwrap().nodes.len(),
        5,
        "a huge limit is capped, not refused"
    );
}

#[test]
fn the_dedup_cache_is_bounded_and_a_dropped_entry_is_read_back_without_loss_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = Store::open(&path).unwrap();
    store.set_max_nodes(2);
    let mut ids = Vec::new();
    for uid in 1..=2u8 {
        ids.push(
            store
                .transaction(|tx| register(tx, 0, "p", &hello(uid, 5)))
                .unwrap()
                .node_id,
        );
    }
    // Two nodes with two boots each: four dedup points, in a cache of two.
    for seq in 1..=20u32 {
        for &node in &ids {
            for boot in [5, 6] {
                // Every sample twice: the second is a retransmission.
                for _ in 0..2 {
                    store
                        .transaction(|tx| tx.ingest(node, boot, &[sample(seq, 1)], 0))
                        .unwrap();
                }
                assert!(store.cached_sessions() <= 2);
            }
        }
    }
    for &node in &ids {
        let stored = seqs(&path, node);
        let expected: Vec<u32> = (1..=20).flat_map(|s| [s, s]).collect();
        assert_eq!(
            stored, expected,
            "boots 5 and 6 interleaved, each once per seq"
        );
    }
}

#[test]
fn the_first_health_of_each_boot_enters_the_reset_history_once_with_its_firmware_and_lot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = Store::open(&path).unwrap();
    let node = store
        .transaction(|tx| register(tx, 10, "p", &hello(0xab, 5)))
        .unwrap();
    let health = |reset_reason, minor| Health {
        uptime_s: 10,
        reset_reason,
        fw: FwVersion {
            major: 1,
            minor,
            patch: 0,
        },
        stack_free_min: 1800,
        rx_frames: 0,
        rx_errors: 0,
        tx_frames: 0,
        retransmits: 0,
        dropped_samples: 0,
        chip_temp_centi: 3000,
    };
    for (boot, at, reason, minor) in [
        (5, 100, ResetReason::PowerOn, 4),
        (5, 200, ResetReason::PowerOn, 4), // the same boot's next report
        (6, 300, ResetReason::Watchdog, 4),
        (7, 400, ResetReason::OtaApply, 5),
    ] {
        store
            .transaction(|tx| tx.health(node.node_id, boot, at, &health(reason, minor)))
            .unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: Vec<(u32, i64, String, bool, String, String)> = conn
        .prepare(
            "SELECT boot_id, at_ms, reason, expected, fw_version, lot FROM node_resets ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let lot = rows[0].5.clone();
    assert_eq!(
        rows,
        vec![
            (5, 100, "power_on".into(), true, "1.4.0".into(), lot.clone()),
            (
                6,
                300,
                "watchdog".into(),
                false,
                "1.4.0".into(),
                lot.clone()
            ),
            (7, 400, "ota_apply".into(), true, "1.5.0".into(), lot),
        ]
    );
}

#[test]
fn health_updates_the_registry_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let node = store
        .transaction(|tx| register(tx, 10, "p", &hello(0xab, 5)))
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
        .transaction(|tx| tx.health(node.node_id, 1, 20, &h))
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
    use crate::io::store::outbox::AckError;

    fn store_with_samples(n: u32) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let node = store
            .transaction(|tx| register(tx, 0, "p", &hello(1, 5)))
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
            .transaction(|tx| register(tx, 0, "p", &hello(1, 5)))
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

mod ledger {
    use super::*;
    use crate::io::store::ledger::Usage;

    #[test]
    fn usage_adds_up_per_day_and_per_month() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .transaction(|tx| {
                tx.record_usage("2026-02-28", 1000, 100, 10)?;
                tx.record_usage("2026-03-01", 200, 20, 2)?;
                tx.record_usage("2026-03-02", 300, 30, 3)?;
                tx.record_usage("2026-03-02", 400, 40, 4)
            })
            .unwrap();
        let reader = store.reader().unwrap();
        assert_eq!(
            reader.usage("2026-03-02", "2026-03-").unwrap(),
            Usage {
                bytes_today: 770,
                bytes_month: 990,
                readings_month: 9
            }
        );
        assert_eq!(
            reader.usage("2026-04-01", "2026-04-").unwrap(),
            Usage::default(),
            "a month without traffic"
        );
    }
}

mod series {
    use super::*;
    use outpost_batch::{BatchBuilder, Dictionaries, GatewayId, Value};

    const T0: i64 = 1_764_000_000_000;

    fn point(channel: &str, value: Value) -> SeriesReading {
        SeriesReading {
            channel: channel.to_owned(),
            value,
        }
    }

    /// (source, channel, ts_ms, value) of every reading in the outbox's batches, batch by batch.
    fn outbox_readings(store: &Store) -> Vec<Vec<(String, String, i64, Value)>> {
        let reader = store.reader().unwrap();
        reader
            .batches_after(0, 100)
            .unwrap()
            .iter()
            .map(|info| {
                let bytes = reader.batch_bytes(info.seq).unwrap().unwrap();
                let batch = outpost_batch::decode(&bytes, &Dictionaries::new()).unwrap();
                batch
                    .readings()
                    .map(|r| (r.source.to_owned(), r.channel.to_owned(), r.ts_ms, r.value))
                    .collect()
            })
            .collect()
    }

    fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
        let mut v = v.to_vec();
        v.sort();
        v
    }

    /// `Value` is not `Ord` (floats); compare readings by their exact text and bits.
    fn key(r: &(String, String, i64, Value)) -> (String, String, i64, String) {
        let bits = match r.3 {
            Value::Float(v) => format!("f{:016x}", v.to_bits()),
            Value::Decimal { raw, exp } => format!("d{raw}e{exp}"),
        };
        (r.0.clone(), r.1.clone(), r.2, bits)
    }

    #[test]
    fn device_readings_travel_exactly_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let polls = [
            (
                T0,
                vec![
                    point("voltage_l1", Value::decimal(2301, -1)),
                    point("energy_total", Value::integer(123_456_789_012)),
                    point("frequency", Value::float(49.98)),
                    point("power_factor", Value::float(-0.0)),
                    point("tiny", Value::float(f64::MIN_POSITIVE / 3.0)), // subnormal
                    point("whole", Value::float(230.0)), // an integral float stays a float
                    point("max", Value::float(f64::MAX)),
                    point("underflow", Value::float(f64::NEG_INFINITY)),
                ],
            ),
            (
                T0 + 1000,
                vec![
                    point("voltage_l1", Value::decimal(-2299, -1)),
                    point("energy_total", Value::integer(i64::MAX)),
                    point("frequency", Value::float(0.1 + 0.2)),
                    point("power_factor", Value::float(0.0)),
                    point("tiny", Value::float(-f64::MIN_POSITIVE)),
                    point("whole", Value::float(231.0)),
                    point("max", Value::float(f64::MIN)),
                    point("underflow", Value::float(f64::INFINITY)),
                ],
            ),
        ];
        for (ts_ms, readings) in &polls {
            let stored = store
                .transaction(|tx| tx.ingest_series("meter-1", *ts_ms, readings))
                .unwrap();
            assert_eq!(stored, 8);
        }
        let sealed = store
            .transaction(|tx| tx.seal_batch("gw", 0, 100, None))
            .unwrap()
            .unwrap();
        assert_eq!(sealed.readings, 16);

        let expected: Vec<_> = polls
            .iter()
            .flat_map(|(ts_ms, readings)| {
                readings
                    .iter()
                    .map(|r| ("meter-1".to_owned(), r.channel.clone(), *ts_ms, r.value))
            })
            .collect();
        let batches = outbox_readings(&store);
        assert_eq!(batches.len(), 1);
        assert_eq!(
            sorted(&batches[0].iter().map(key).collect::<Vec<_>>()),
            sorted(&expected.iter().map(key).collect::<Vec<_>>())
        );
    }

    #[test]
    fn a_nan_comes_back_as_a_nan() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .transaction(|tx| {
                tx.ingest_series("meter-1", T0, &[point("cos_phi", Value::float(f64::NAN))])
            })
            .unwrap();
        store
            .transaction(|tx| tx.seal_batch("gw", 0, 100, None))
            .unwrap();
        let batches = outbox_readings(&store);
        let Value::Float(v) = batches[0][0].3 else {
            panic!("{:?}", batches[0][0])
        };
        assert!(v.is_nan());
    }

    #[test]
    fn node_and_device_readings_share_a_batch_in_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let node = store
            .transaction(|tx| register(tx, 0, "p", &hello(1, 5)))
            .unwrap();
        store
            .transaction(|tx| {
                tx.ingest(node.node_id, 5, &[sample(1, 1)], 0)?;
                tx.ingest_series(
                    "meter-1",
                    T0,
                    &[
                        point("voltage_l1", Value::decimal(2301, -1)),
                        point("frequency", Value::float(50.01)),
                    ],
                )
            })
            .unwrap();
        store
            .transaction(|tx| tx.ingest(node.node_id, 5, &[sample(2, 1)], 0))
            .unwrap();
        let sealed = store
            .transaction(|tx| tx.seal_batch("gw", 0, 100, None))
            .unwrap()
            .unwrap();
        assert_eq!(sealed.readings, 6);

        let batches = outbox_readings(&store);
        let uid = "0101010101010101".to_owned();
        let t = |seq: i64| 1_700_000_000_000 + seq * 1000;
        let expected = [
            (
                uid.clone(),
                "temperature".to_owned(),
                t(1),
                Value::decimal(2150, -2),
            ),
            (uid.clone(), "seq".to_owned(), t(1), Value::integer(1)),
            (
                "meter-1".to_owned(),
                "voltage_l1".to_owned(),
                T0,
                Value::decimal(2301, -1),
            ),
            (
                "meter-1".to_owned(),
                "frequency".to_owned(),
                T0,
                Value::float(50.01),
            ),
            (
                uid.clone(),
                "temperature".to_owned(),
                t(2),
                Value::decimal(2150, -2),
            ),
            (uid, "seq".to_owned(), t(2), Value::integer(2)),
        ];
        assert_eq!(
            sorted(&batches[0].iter().map(key).collect::<Vec<_>>()),
            sorted(&expected.iter().map(key).collect::<Vec<_>>())
        );

        let totals = store.reader().unwrap().totals().unwrap();
        assert_eq!(
            totals,
            Totals {
                nodes: 1,
                readings_stored: 6,
                device_readings: 2
            }
        );
    }

    #[test]
    fn a_point_that_changes_kind_becomes_a_new_series_and_ends_the_batch_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        // The config edit comes between the first and second poll: voltage gains a decimal,
        // current becomes a float register.
        let polls = [
            vec![
                point("voltage_l1", Value::decimal(2301, -1)),
                point("current_l1", Value::integer(12)),
            ],
            vec![
                point("voltage_l1", Value::decimal(23012, -2)),
                point("current_l1", Value::float(12.4)),
            ],
            vec![
                point("voltage_l1", Value::decimal(23013, -2)),
                point("current_l1", Value::float(12.5)),
            ],
        ];
        for (i, readings) in polls.iter().enumerate() {
            store
                .transaction(|tx| tx.ingest_series("meter-1", T0 + i as i64 * 1000, readings))
                .unwrap();
        }
        let series: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM series", [], |r| r.get(0))
            .unwrap();
        assert_eq!(series, 4, "two kinds of two points");

        let first = store
            .transaction(|tx| tx.seal_batch("gw", 0, 100, None))
            .unwrap()
            .unwrap();
        assert_eq!(first.readings, 2, "ends before voltage in hundredths");
        let second = store
            .transaction(|tx| tx.seal_batch("gw", 0, 100, None))
            .unwrap()
            .unwrap();
        assert_eq!(second.readings, 4);
        assert_eq!(
            store
                .transaction(|tx| tx.seal_batch("gw", 0, 100, None))
                .unwrap(),
            None
        );

        let batches = outbox_readings(&store);
        let values = |batch: &[(String, String, i64, Value)], channel: &str| -> Vec<Value> {
            batch
                .iter()
                .filter(|r| r.1 == channel)
                .map(|r| r.3)
                .collect()
        };
        assert_eq!(
            values(&batches[0], "voltage_l1"),
            [Value::decimal(2301, -1)]
        );
        assert_eq!(values(&batches[0], "current_l1"), [Value::integer(12)]);
        assert_eq!(
            values(&batches[1], "voltage_l1"),
            [Value::decimal(23012, -2), Value::decimal(23013, -2)]
        );
        assert_eq!(
            values(&batches[1], "current_l1"),
            [Value::float(12.4), Value::float(12.5)]
        );
    }

    #[test]
    fn a_kind_change_splits_dictionary_training_windows_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .transaction(|tx| {
                tx.ingest_series("meter-1", T0, &[point("v", Value::decimal(2301, -1))])?;
                tx.ingest_series("meter-1", T0 + 1, &[point("v", Value::float(230.1))])?;
                tx.ingest_series("meter-1", T0 + 30_000, &[point("w", Value::integer(1))])
            })
            .unwrap();
        // One window from T0 - 30 s holds both kinds of `v`; the newest reading starts the next.
        let bodies = store
            .reader()
            .unwrap()
            .training_bodies("gw", 60_000, 1)
            .unwrap();
        assert_eq!(bodies.len(), 3);
    }

    #[test]
    fn a_rolled_back_transaction_forgets_the_series_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let readings = [point("voltage_l1", Value::decimal(2301, -1))];
        let failed: Result<(), _> = store.transaction(|tx| {
            tx.ingest_series("meter-1", T0, &readings)?;
            Err(StoreError::DiskFull)
        });
        assert!(failed.is_err());
        store
            .transaction(|tx| tx.ingest_series("meter-1", T0, &readings))
            .unwrap();
        store
            .transaction(|tx| tx.seal_batch("gw", 0, 100, None))
            .unwrap();
        let batches = outbox_readings(&store);
        assert_eq!(batches[0].len(), 1);
        assert_eq!(batches[0][0].1, "voltage_l1");
        assert_eq!(store.reader().unwrap().totals().unwrap().device_readings, 1);
    }

    #[test]
    fn a_name_no_batch_can_carry_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let long = "x".repeat(outpost_batch::MAX_NAME_LEN + 1);
        let stored = store
            .transaction(|tx| {
                Ok((
                    tx.ingest_series(
                        "meter-1",
                        T0,
                        &[point("", Value::integer(1)), point("ok", Value::integer(2))],
                    )?,
                    tx.ingest_series(&long, T0, &[point("ok", Value::integer(3))])?,
                ))
            })
            .unwrap();
        assert_eq!(stored, (1, 0));
        let sealed = store
            .transaction(|tx| tx.seal_batch("gw", 0, 100, None))
            .unwrap()
            .unwrap();
        assert_eq!(sealed.readings, 1);
    }

    /// A store as Outpost 0.x (schema 3) left it: two nodes' readings, the first two sealed.
    fn store_at_version_3(path: &Path) {
        let conn = Connection::open(path).unwrap();
        for sql in &schema::MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(
            "INSERT INTO nodes (id, uid, hw_rev, fw_version, lot, channels, first_seen_ms, last_seen_ms, readings_received)
                 VALUES (1, '0101010101010101', 2, '1.4.0', 'L1', '1,4', 0, 0, 4),
                        (2, 'abababababababab', 2, '1.4.0', 'L1', '1,2,9', 0, 0, 4);
             INSERT INTO node_sessions (node_id, boot_id, last_seq) VALUES (1, 5, 2), (2, 9, 2);
             INSERT INTO readings (id, node_id, boot_id, seq, channel, ts_ms, value) VALUES
                 (1, 1, 5, 1, 1, 1000, 2150),
                 (2, 1, 5, 1, 4, 1000, 1),
                 (3, 2, 9, 1, 1, 1000, -312),
                 (4, 2, 9, 1, 9, 1000, 77),
                 (5, 1, 5, 2, 1, 2000, 2160),
                 (6, 1, 5, 2, 4, 2000, 2),
                 (7, 2, 9, 2, 2, 2000, 4550),
                 (8, 2, 9, 2, 9, 2000, 78);
             INSERT INTO batches (first_reading_id, last_reading_id, first_ts_ms, last_ts_ms, reading_count,
                 dictionary_id, sealed_ms, size_bytes, bytes) VALUES (1, 2, 1000, 1000, 2, 0, 0, 1, x'00');
             UPDATE meta SET value = '2' WHERE key = 'batches.last_reading_id';",
        )
        .unwrap();
    }

    #[test]
    fn a_version_3_store_migrates_and_seals_the_same_bytes_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        store_at_version_3(&path);
        let mut store = Store::open(&path).unwrap();
        let version: usize = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, schema::MIGRATIONS.len());

        // What schema 3's sealing made of readings 3..=8: uid, channel name, decimal at the
        // channel's exponent, in id order.
        let mut before = BatchBuilder::new(GatewayId::new("gw").unwrap(), 2);
        for (source, channel, ts_ms, raw, exp) in [
            ("abababababababab", "temperature", 1000, -312, -2),
            ("abababababababab", "ch9", 1000, 77, 0),
            ("0101010101010101", "temperature", 2000, 2160, -2),
            ("0101010101010101", "seq", 2000, 2, 0),
            ("abababababababab", "humidity", 2000, 4550, -2),
            ("abababababababab", "ch9", 2000, 78, 0),
        ] {
            before
                .push(source, channel, ts_ms, Value::decimal(raw, exp))
                .unwrap();
        }
        let sealed = store
            .transaction(|tx| tx.seal_batch("gw", 0, 100, None))
            .unwrap()
            .unwrap();
        assert_eq!((sealed.seq, sealed.readings), (2, 6));
        assert_eq!(
            store.reader().unwrap().batch_bytes(2).unwrap().unwrap(),
            before.seal(None).unwrap()
        );

        // The nodes go on where they were: same dedup point, same series, ids after the old ones.
        let node = store
            .transaction(|tx| register(tx, 0, "p", &hello(1, 5)))
            .unwrap();
        assert_eq!((node.node_id, node.ack_upto), (1, 2));
        store
            .transaction(|tx| tx.ingest(1, 5, &[sample(3, 1)], 0))
            .unwrap();
        let conn = Connection::open(&path).unwrap();
        let (series, min_new_id): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT count(*) FROM series), min(id) FROM readings WHERE id > 8",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((series, min_new_id), (5, 9));
        assert_eq!(seqs(&path, 1), vec![1, 2, 3]);
        assert_eq!(
            store.reader().unwrap().totals().unwrap(),
            Totals {
                nodes: 2,
                readings_stored: 10,
                device_readings: 0
            }
        );
    }
}

mod writer {

    use std::time::Duration;

    use super::*;
    use crate::io::store::writer::{StoreCommand, WriterConfig, run};
    use crate::io::telemetry::TelemetryHub;
    use outpost_batch::Value;
    use outpost_core::telemetry::Telemetry;

    #[tokio::test]
    async fn device_readings_are_committed_without_a_reply_and_all_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let (commands_tx, commands) = tokio::sync::mpsc::channel(16);
        let (_interval_tx, interval) = tokio::sync::watch::channel(Duration::ZERO);
        let telemetry = TelemetryHub::new(Telemetry::new(&[], false, Duration::ZERO));
        let config = WriterConfig {
            gateway_id: "gw".to_owned(),
            commit_interval: Duration::from_millis(10),
            max_commit_readings: 1000,
            batch_interval: Duration::ZERO,
            max_batch_readings: 1000,
            buffer_max_bytes: 1 << 20,
            keep_readings: 100_000,
            dictionary: None,
            sealed: tokio::sync::watch::channel(0).0,
            priority_min_interval: Duration::MAX,
            clock: crate::io::wall_clock::WallClock::assume_synchronised(),
        };
        for (i, value) in [Value::integer(1), Value::float(1.5), Value::float(2.5)]
            .into_iter()
            .enumerate()
        {
            commands_tx
                .send(StoreCommand::DeviceReadings {
                    basis: outpost_core::clock::Basis::Trusted,
                    source: "meter-1".to_owned(),
                    ts_ms: 1000 * i as i64,
                    readings: vec![SeriesReading {
                        channel: "p".to_owned(),
                        value,
                    }],
                    priority: false,
                })
                .await
                .unwrap();
        }
        drop(commands_tx);
        let store = run(store, commands, interval, config, telemetry.clone()).await;

        let c = telemetry.snapshot().store;
        assert_eq!((c.commits, c.failed_commits), (1, 0));
        assert_eq!(c.batches_sealed, 2, "the kind change splits the batch");
        let reader = store.reader().unwrap();
        assert_eq!(reader.outbox().unwrap().unsealed_readings, 0);
        assert_eq!(reader.totals().unwrap().device_readings, 3);
    }

    /// Runs a writer with an hour's batch interval over one ordinary poll and one more, with
    /// `priority` or not; returns the batches sealed and the readings left unsealed.
    async fn hour_long_window_with(priority: bool) -> (u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let (commands_tx, commands) = tokio::sync::mpsc::channel(16);
        let hour = Duration::from_secs(3600);
        let (_interval_tx, interval) = tokio::sync::watch::channel(hour);
        let telemetry = TelemetryHub::new(Telemetry::new(&[], false, hour));
        let config = WriterConfig {
            gateway_id: "gw".to_owned(),
            commit_interval: Duration::from_millis(10),
            max_commit_readings: 1000,
            batch_interval: hour,
            max_batch_readings: 1000,
            buffer_max_bytes: 1 << 20,
            keep_readings: 100_000,
            dictionary: None,
            sealed: tokio::sync::watch::channel(0).0,
            priority_min_interval: Duration::from_secs(30),
            clock: crate::io::wall_clock::WallClock::assume_synchronised(),
        };
        for (i, priority) in [false, priority].into_iter().enumerate() {
            commands_tx
                .send(StoreCommand::DeviceReadings {
                    basis: outpost_core::clock::Basis::Trusted,
                    source: "panel".to_owned(),
                    ts_ms: 1000 * i as i64,
                    readings: vec![SeriesReading {
                        channel: "alarm".to_owned(),
                        value: Value::integer(i as i64),
                    }],
                    priority,
                })
                .await
                .unwrap();
        }
        drop(commands_tx);
        let store = run(store, commands, interval, config, telemetry.clone()).await;
        let reader = store.reader().unwrap();
        (
            telemetry.snapshot().store.batches_sealed,
            reader.outbox().unwrap().unsealed_readings,
        )
    }

    #[tokio::test]
    async fn a_priority_reading_is_sealed_right_after_its_commit_with_what_is_pending() {
        // Both polls in one batch, sealed before the writer even looks for more work.
        assert_eq!(hour_long_window_with(true).await, (1, 0));
        // Without priority, they wait (for the first batch's second, here never reached).
        assert_eq!(hour_long_window_with(false).await, (0, 2));
    }
}

mod commands {
    //! A group commit answers each command's own caller after the commit, or every caller with
    //! the transaction's error.
    use std::sync::Arc;
    use std::time::Duration;

    use outpost_batch::Value;
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::io::store::command::{self, Job, Reply, Request};
    use crate::io::store::ledger::Usage;
    use crate::io::store::outbox::{AckError, Acked, OutboxTotals};
    use crate::io::store::writer::{AckReply, StoreCommand, StoreReply};
    use crate::io::telemetry::TelemetryHub;
    use outpost_core::telemetry::Telemetry;

    const KEY_A: [u8; 32] = [0xa; 32];
    const KEY_B: [u8; 32] = [0xb; 32];

    /// A site mid-run: node A (uid 1, boot 5) has committed samples 1..=2 and they are sealed
    /// into batch 1; node B (uid 2, boot 9) is enrolled. Returns both node ids.
    fn site() -> (tempfile::TempDir, Store, i64, i64) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let (a, b) = store
            .transaction(|tx| {
                let a = tx
                    .register(0, "/dev/ttyACM0", &hello(1, 5), &KEY_A, true)?
                    .unwrap()
                    .node_id;
                tx.ingest(a, 5, &[sample(1, 1), sample(2, 1)], 0)?;
                tx.seal_batch("gw", 0, 100, None)?;
                let b = tx
                    .register(0, "/dev/ttyACM1", &hello(2, 9), &KEY_B, true)?
                    .unwrap()
                    .node_id;
                Ok((a, b))
            })
            .unwrap();
        (dir, store, a, b)
    }

    /// Who waits for the answers to [`interleaved`].
    struct Callers {
        port_a: mpsc::UnboundedReceiver<StoreReply>,
        port_b: mpsc::UnboundedReceiver<StoreReply>,
        /// The uplink, acknowledging batch 1.
        ack: oneshot::Receiver<AckReply>,
        /// The pull API, acknowledging a batch that was never sealed.
        ack_too_far: oneshot::Receiver<AckReply>,
    }

    /// Commands of every kind from two ports, a Modbus poller, the uplink, the pull API and the
    /// cost task, interleaved as they may arrive in one commit window. Node B's HELLO comes with
    /// another key than the pinned one. One caller (an API request that timed out) hung up.
    fn interleaved(a: i64, b: i64) -> (Vec<StoreCommand>, Callers) {
        let (port_a, port_a_rx) = mpsc::unbounded_channel();
        let (port_b, port_b_rx) = mpsc::unbounded_channel();
        let (ack, ack_rx) = oneshot::channel();
        let (ack_too_far, ack_too_far_rx) = oneshot::channel();
        let (hung_up, _) = oneshot::channel();
        let commands = vec![
            StoreCommand::Register {
                port: "/dev/ttyACM0".to_owned(),
                hello: hello(1, 5),
                public_key: KEY_A,
                newcomer_allowed: false,
                now_ms: 10,
                reply: port_a.clone(),
            },
            StoreCommand::AckBatches {
                upto: 1,
                reply: ack,
            },
            StoreCommand::Ingest {
                basis: outpost_core::clock::Basis::Trusted,
                node_id: a,
                boot_id: 5,
                samples: vec![sample(3, 1), sample(4, 1)],
                now_ms: 11,
                reply: port_a,
            },
            StoreCommand::DeviceReadings {
                basis: outpost_core::clock::Basis::Trusted,
                source: "meter-1".to_owned(),
                ts_ms: 12,
                readings: vec![
                    SeriesReading {
                        channel: "voltage_l1".to_owned(),
                        value: Value::decimal(2301, -1),
                    },
                    SeriesReading {
                        channel: "frequency".to_owned(),
                        value: Value::float(50.01),
                    },
                ],
                priority: false,
            },
            StoreCommand::Register {
                port: "/dev/ttyACM1".to_owned(),
                hello: hello(2, 9),
                public_key: [0xc; 32],
                newcomer_allowed: true,
                now_ms: 13,
                reply: port_b.clone(),
            },
            StoreCommand::AckBatches {
                upto: 1,
                reply: hung_up,
            },
            StoreCommand::Ingest {
                basis: outpost_core::clock::Basis::Trusted,
                node_id: b,
                boot_id: 9,
                samples: vec![sample(1, 1)],
                now_ms: 14,
                reply: port_b,
            },
            StoreCommand::LinkErrors {
                node_id: a,
                count: 3,
            },
            StoreCommand::AckBatches {
                upto: 7,
                reply: ack_too_far,
            },
            StoreCommand::RecordUsage {
                day: "2026-03-02".to_owned(),
                sent: 500,
                received: 50,
                readings: 4,
            },
        ];
        let callers = Callers {
            port_a: port_a_rx,
            port_b: port_b_rx,
            ack: ack_rx,
            ack_too_far: ack_too_far_rx,
        };
        (commands, callers)
    }

    fn jobs(commands: Vec<StoreCommand>) -> Vec<Box<dyn Job>> {
        commands.into_iter().map(StoreCommand::into_job).collect()
    }

    fn drain(port: &mut mpsc::UnboundedReceiver<StoreReply>) -> Vec<StoreReply> {
        std::iter::from_fn(|| port.try_recv().ok()).collect()
    }

    /// Checks the answers to a committed [`interleaved`] group.
    fn assert_answered(callers: &mut Callers, a: i64, b: i64) {
        let replies = drain(&mut callers.port_a);
        let [
            StoreReply::Registered {
                hello: registered,
                result: Ok(Ok(node)),
            },
            StoreReply::Committed {
                node_id,
                boot_id: 5,
                result: Ok(ingested),
            },
        ] = &replies[..]
        else {
            panic!("port A: {replies:?}");
        };
        assert_eq!(registered.uid, [1; 8]);
        assert_eq!((node.node_id, node.ack_upto), (a, 2));
        assert_eq!(*node_id, a);
        assert_eq!(
            (ingested.upto, ingested.admitted, ingested.readings),
            (4, 2, 4)
        );

        let replies = drain(&mut callers.port_b);
        let [
            StoreReply::Registered {
                hello: refused,
                result: Ok(Err(Refusal::KeyMismatch)),
            },
            StoreReply::Committed {
                node_id,
                boot_id: 9,
                result: Ok(ingested),
            },
        ] = &replies[..]
        else {
            panic!("port B: {replies:?}");
        };
        assert_eq!(refused.uid, [2; 8], "the key differs from the pinned one");
        assert_eq!(*node_id, b);
        assert_eq!((ingested.upto, ingested.admitted), (1, 1));

        assert!(matches!(
            callers.ack.try_recv(),
            Ok(AckReply::Acked(Acked {
                acked_upto: 1,
                deleted: 1,
                readings: 4
            }))
        ));
        assert!(matches!(
            callers.ack_too_far.try_recv(),
            Ok(AckReply::Refused(AckError::BeyondNewest {
                upto: 7,
                newest: 1
            }))
        ));
    }

    /// What the store shows of everything the group touches.
    fn shown(store: &Store) -> (Vec<NodeRow>, Totals, OutboxTotals, Usage) {
        let reader = store.reader().unwrap();
        (
            reader.nodes().unwrap(),
            reader.totals().unwrap(),
            reader.outbox().unwrap(),
            reader.usage("2026-03-02", "2026-03-").unwrap(),
        )
    }

    #[test]
    fn each_caller_gets_its_own_answer_when_kinds_interleave_in_one_commit() {
        let (_dir, mut store, a, b) = site();
        let (commands, mut callers) = interleaved(a, b);
        let settled = command::apply(&mut store, jobs(commands));
        assert!(settled.error().is_none());
        assert!(
            callers.port_a.try_recv().is_err() && callers.ack.try_recv().is_err(),
            "nobody is answered before the writer answers"
        );
        assert_eq!(
            settled.answer(),
            4 + 2 + 2,
            "node A's, node B's and the meter's readings"
        );
        assert_answered(&mut callers, a, b);
        let (nodes, totals, outbox, usage) = shown(&store);
        assert_eq!(nodes[0].link_errors.gateway_rx, 3);
        assert_eq!(totals.readings_stored, 4 + 4 + 2 + 2);
        assert_eq!((outbox.batches, outbox.acked_upto), (0, 1));
        assert_eq!(usage.bytes_today, 550);
    }

    #[test]
    fn only_commands_someone_waits_for_shorten_the_commit_window() {
        let (commands, _callers) = interleaved(1, 2);
        let seen: Vec<(bool, usize)> = jobs(commands)
            .iter()
            .map(|job| (job.awaited(), job.readings()))
            .collect();
        assert_eq!(
            seen,
            [
                (true, 1),  // Register
                (true, 1),  // AckBatches
                (true, 4),  // Ingest: 2 samples of 2 readings
                (false, 2), // DeviceReadings: 2 readings
                (true, 1),  // Register
                (true, 1),  // AckBatches, its caller gone: still answered in time
                (true, 2),  // Ingest
                (false, 1), // LinkErrors
                (true, 1),  // AckBatches
                (false, 1), // RecordUsage
            ]
        );
    }

    /// A fake that fails on purpose.
    enum Fault {
        /// The disk fills up while the group is applied.
        DiskFull,
        /// Everything applies, and the COMMIT itself fails (a deferred foreign key: a session of
        /// a node that does not exist).
        AtCommit,
    }

    impl Request for Fault {
        type Outcome = ();
        type Answer = ();

        fn apply(&self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
            match self {
                Fault::DiskFull => Err(StoreError::DiskFull),
                Fault::AtCommit => Ok(tx.tx.execute_batch(
                    "PRAGMA defer_foreign_keys = ON;
                     INSERT INTO node_sessions (node_id, boot_id, last_seq) VALUES (999, 1, 1);",
                )?),
            }
        }

        fn answer(self, _: Result<(), Arc<StoreError>>) {}
    }

    #[test]
    fn a_failed_transaction_answers_every_waiting_caller_with_its_error_and_none_with_success() {
        for fault in [Fault::DiskFull, Fault::AtCommit] {
            let (_dir, mut store, a, b) = site();
            let before = shown(&store);
            let (commands, mut callers) = interleaved(a, b);
            // In the middle: commands before it were applied (and roll back), those after it
            // never were.
            let mut group = jobs(commands);
            group.insert(5, command::job(fault, Reply::Nobody));
            let settled = command::apply(&mut store, group);
            let error = Arc::clone(settled.error().expect("the transaction fails"));
            assert_eq!(settled.answer(), 0, "nothing committed");

            let shared = |e: &Arc<StoreError>| Arc::ptr_eq(e, &error);
            for port in [&mut callers.port_a, &mut callers.port_b] {
                let replies = drain(port);
                assert_eq!(replies.len(), 2, "{replies:?}");
                for reply in &replies {
                    let (StoreReply::Registered { result: Err(e), .. }
                    | StoreReply::Committed { result: Err(e), .. }) = reply
                    else {
                        panic!("answered with success: {reply:?}");
                    };
                    assert!(shared(e), "{e}");
                }
            }
            for ack in [&mut callers.ack, &mut callers.ack_too_far] {
                let answer = ack.try_recv().unwrap();
                assert!(
                    matches!(&answer, AckReply::Failed(e) if shared(e)),
                    "{answer:?}"
                );
            }
            assert_eq!(shown(&store), before, "nothing of the group is stored");

            // The rollback also forgot what the group advanced: sent again, it commits in full.
            let (commands, mut callers) = interleaved(a, b);
            let settled = command::apply(&mut store, jobs(commands));
            assert!(settled.error().is_none());
            assert_eq!(settled.answer(), 8);
            assert_answered(&mut callers, a, b);
        }
    }

    #[tokio::test]
    async fn the_writer_commits_an_interleaved_window_once_and_answers_each_caller() {
        let (_dir, store, a, b) = site();
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let (_interval_tx, interval) = tokio::sync::watch::channel(Duration::from_secs(3600));
        let telemetry = TelemetryHub::new(Telemetry::new(&[], false, Duration::ZERO));
        let config = crate::io::store::writer::WriterConfig {
            gateway_id: "gw".to_owned(),
            commit_interval: Duration::from_millis(50),
            max_commit_readings: 1000,
            batch_interval: Duration::from_secs(3600),
            max_batch_readings: 1000,
            buffer_max_bytes: 1 << 20,
            keep_readings: 100_000,
            dictionary: None,
            sealed: tokio::sync::watch::channel(0).0,
            priority_min_interval: Duration::MAX,
            clock: crate::io::wall_clock::WallClock::assume_synchronised(),
        };
        let (commands, mut callers) = interleaved(a, b);
        for command in commands {
            commands_tx.send(command).await.unwrap();
        }
        drop(commands_tx);
        let store =
            crate::io::store::writer::run(store, commands_rx, interval, config, telemetry.clone())
                .await;

        let c = telemetry.snapshot().store;
        assert_eq!((c.commits, c.failed_commits, c.error), (1, 0, None));
        assert_answered(&mut callers, a, b);
        assert_eq!(
            store.reader().unwrap().outbox().unwrap().unsealed_readings,
            8
        );
    }
}

mod sealer {
    use super::*;
    use crate::io::store::outbox::Dropped;
    use crate::io::store::sealer::{Round, Sealer};
    use crate::io::store::writer::{WriterConfig, record_round};
    use crate::io::telemetry::TelemetryHub;
    use outpost_core::telemetry::{AlertKind, Telemetry};

    fn telemetry() -> TelemetryHub {
        TelemetryHub::new(Telemetry::new(&[], false, std::time::Duration::ZERO))
    }

    fn sealer(gateway_id: &str, max_batch_readings: usize, buffer_max_bytes: u64) -> Sealer {
        Sealer::new(&writer_config(
            gateway_id,
            max_batch_readings,
            buffer_max_bytes,
        ))
    }

    fn writer_config(
        gateway_id: &str,
        max_batch_readings: usize,
        buffer_max_bytes: u64,
    ) -> WriterConfig {
        WriterConfig {
            gateway_id: gateway_id.to_owned(),
            commit_interval: std::time::Duration::ZERO,
            max_commit_readings: 1000,
            batch_interval: std::time::Duration::ZERO,
            max_batch_readings,
            buffer_max_bytes,
            keep_readings: 100_000,
            dictionary: None,
            sealed: tokio::sync::watch::channel(0).0,
            priority_min_interval: std::time::Duration::MAX,
            clock: crate::io::wall_clock::WallClock::assume_synchronised(),
        }
    }

    /// A store holding `n` committed samples of one node (2 readings each), none sealed.
    fn unsealed(n: u32) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .transaction(|tx| {
                let node = register(tx, 0, "p", &hello(1, 5))?.node_id;
                let samples: Vec<Sample> = (1..=n).map(|s| sample(s, 1)).collect();
                tx.ingest(node, 5, &samples, 0)
            })
            .unwrap();
        (dir, store)
    }

    fn readings_left(dir: &tempfile::TempDir) -> (u64, u64) {
        let conn = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
        conn.query_row(
            "SELECT count(*), coalesce(min(id), 0) FROM readings",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    fn keeping(keep_readings: u64, buffer_max_bytes: u64) -> Sealer {
        Sealer::new(&WriterConfig {
            keep_readings,
            ..writer_config("gw", 500, buffer_max_bytes)
        })
    }

    #[test]
    fn readings_the_cloud_has_are_deleted_but_the_newest_kept_and_nothing_unacknowledged() {
        let (dir, mut store) = unsealed(1500); // 3000 readings
        let clock = WallClock::assume_synchronised();
        let round = keeping(1000, 1 << 30).round(&mut store, 0, &clock).unwrap();
        assert_eq!(
            (round.sealed, round.pruned),
            (6, 0),
            "nothing acknowledged yet"
        );
        assert_eq!(readings_left(&dir).0, 3000);
        store
            .transaction(|tx| tx.ack_batches(4).map_err(|_| StoreError::DiskFull))
            .unwrap();
        // 2000 readings acknowledged; the newest 1000 are kept whatever their state.
        let round = keeping(1000, 1 << 30).round(&mut store, 0, &clock).unwrap();
        assert_eq!(round.pruned, 2000);
        assert_eq!(readings_left(&dir), (1000, 2001));
        // The rest acknowledged: still the newest 1000 kept.
        store
            .transaction(|tx| tx.ack_batches(6).map_err(|_| StoreError::DiskFull))
            .unwrap();
        let round = keeping(1000, 1 << 30).round(&mut store, 0, &clock).unwrap();
        assert_eq!(round.pruned, 0);
        // Batches not yet acknowledged are never pruned, whatever `keep` says.
        let (dir, mut store) = unsealed(1500);
        keeping(1000, 1 << 30).round(&mut store, 0, &clock).unwrap();
        store
            .transaction(|tx| tx.ack_batches(1).map_err(|_| StoreError::DiskFull))
            .unwrap();
        let round = keeping(1000, 1 << 30).round(&mut store, 0, &clock).unwrap();
        assert_eq!(round.pruned, 500);
        assert_eq!(readings_left(&dir), (2500, 501));
    }

    #[test]
    fn readings_of_batches_dropped_from_a_full_outbox_are_deleted_too() {
        let (dir, mut store) = unsealed(1500);
        let clock = WallClock::assume_synchronised();
        // An outbox with room for no batch at all: every batch sealed is dropped at once, and
        // its readings will never reach the cloud.
        let round = keeping(1000, 1).round(&mut store, 0, &clock).unwrap();
        assert_eq!((round.dropped.batches, round.dropped.readings), (6, 3000));
        assert_eq!(round.pruned, 2000, "all but the newest 1000");
        assert_eq!(readings_left(&dir), (1000, 2001));
    }

    fn readings_per_batch(store: &Store) -> Vec<u64> {
        let reader = store.reader().unwrap();
        let batches = reader.batches_after(0, 100).unwrap();
        batches.iter().map(|b| b.reading_count).collect()
    }

    #[test]
    fn a_round_seals_everything_due_in_batches_of_at_most_max_batch_readings() {
        let (_dir, mut store) = unsealed(30); // 60 readings: a backlog after downtime
        let round = sealer("gw", 25, 1 << 20)
            .round(&mut store, 0, &WallClock::assume_synchronised())
            .unwrap();
        assert_eq!(
            round,
            Round {
                sealed: 3,
                newest: Some(3),
                dropped: Dropped::default(),
                left: 0,
                held: crate::io::store::Held::default(),
                restamped: 0,
                released: 0,
                pruned: 0,
            }
        );
        assert_eq!(readings_per_batch(&store), [25, 25, 10]);
        assert_eq!(
            round.alert_message(),
            None,
            "nothing dropped, nothing to say"
        );
        let again = sealer("gw", 25, 1 << 20)
            .round(&mut store, 0, &WallClock::assume_synchronised())
            .unwrap();
        assert_eq!((again.sealed, again.left), (0, 0), "nothing left to seal");
    }

    #[test]
    fn the_cap_drops_the_oldest_batches_and_the_alert_says_how_many() {
        let (_dir, mut store) = unsealed(30);
        // Room for the newest of the three batches only: its size, from an identical store.
        let newest = {
            let (_dir, mut probe) = unsealed(30);
            sealer("gw", 20, 1 << 20)
                .round(&mut probe, 0, &WallClock::assume_synchronised())
                .unwrap();
            let reader = probe.reader().unwrap();
            reader.batches_after(2, 1).unwrap()[0].size_bytes
        };
        let round = sealer("gw", 20, newest)
            .round(&mut store, 0, &WallClock::assume_synchronised())
            .unwrap();
        assert_eq!(round.sealed, 3);
        assert_eq!(
            round.dropped,
            Dropped {
                batches: 2,
                readings: 40
            }
        );
        assert_eq!(readings_per_batch(&store), [20], "the newest batch is kept");
        let outbox = store.reader().unwrap().outbox().unwrap();
        assert_eq!((outbox.oldest_seq, outbox.dropped_batches), (Some(3), 2));

        assert_eq!(
            round.alert_message().unwrap(),
            "outbox over buffer.max_bytes: dropped the 2 oldest batches (40 readings) to keep the newest data"
        );
    }

    #[test]
    fn the_status_page_keeps_one_buffer_full_alert_the_newest() {
        let telemetry = telemetry();
        let full = Round {
            sealed: 2,
            newest: Some(2),
            dropped: Dropped {
                batches: 1,
                readings: 20,
            },
            left: 0,
            held: crate::io::store::Held::default(),
            restamped: 0,
            released: 0,
            pruned: 0,
        };
        record_round(&telemetry, &Ok(full), 1000);
        record_round(
            &telemetry,
            &Ok(Round {
                dropped: Dropped::default(),
                ..full
            }),
            2000,
        );
        record_round(&telemetry, &Ok(full), 3000);
        let snapshot = telemetry.snapshot();
        assert_eq!(snapshot.store.batches_sealed, 6);
        let at: Vec<_> = snapshot
            .alerts
            .iter()
            .map(|a| (a.kind, a.at_ms, a.raised_at_ms, a.count))
            .collect();
        assert_eq!(at, [(AlertKind::BufferFull, 3000, 1000, 2)]);
    }

    #[test]
    fn failing_commits_raise_one_store_alert_and_the_next_commit_resolves_it() {
        use crate::io::store::writer::record_commit;
        let telemetry = telemetry();
        record_commit(&telemetry, Some(&StoreError::DiskFull), 1000);
        record_commit(&telemetry, Some(&StoreError::DiskFull), 2000);
        let snapshot = telemetry.snapshot();
        assert_eq!(snapshot.store.failed_commits, 2);
        let firing: Vec<_> = snapshot
            .alerts
            .iter()
            .map(|a| (a.kind, a.raised_at_ms))
            .collect();
        assert_eq!(
            firing,
            [(AlertKind::StoreFailing, 1000)],
            "one alert, not one per commit"
        );
        assert!(
            snapshot.alerts[0]
                .message
                .contains("disk holding the store is full")
        );
        record_commit(&telemetry, None, 3000);
        let snapshot = telemetry.snapshot();
        assert!(snapshot.alerts.is_empty(), "writable again: resolved");
        assert_eq!(snapshot.store.error, None);
        let resolved = telemetry.alerts_changed_since(0);
        assert_eq!(resolved[0].resolved_at_ms, Some(3000));
    }

    #[test]
    fn a_failed_round_seals_nothing_and_shows_its_error() {
        let (_dir, mut store) = unsealed(5);
        // An empty gateway id (the config check refuses one) cannot head a batch.
        let failed =
            sealer("", 100, 1 << 20).round(&mut store, 0, &WallClock::assume_synchronised());
        assert!(matches!(failed, Err(StoreError::Corrupt(_))), "{failed:?}");
        let outbox = store.reader().unwrap().outbox().unwrap();
        assert_eq!((outbox.batches, outbox.unsealed_readings), (0, 10));

        let telemetry = telemetry();
        record_round(&telemetry, &failed, 0);
        let snapshot = telemetry.snapshot();
        assert!(
            snapshot
                .store
                .error
                .unwrap()
                .contains("cannot seal batch 1")
        );
        assert!(snapshot.alerts.is_empty());
    }
}

/// Readings stamped while the wall clock was not trusted (`clock.rs`, migration 6).
mod clock {
    use super::*;
    use crate::io::store::sealer::Sealer;
    use crate::io::store::writer::WriterConfig;
    use outpost_core::clock::{Basis, ClockConfig, Remembered};

    fn sealer() -> Sealer {
        Sealer::new(&WriterConfig {
            gateway_id: "gw".to_owned(),
            commit_interval: std::time::Duration::ZERO,
            max_commit_readings: 1000,
            batch_interval: std::time::Duration::ZERO,
            max_batch_readings: 1000,
            buffer_max_bytes: 1 << 30,
            keep_readings: 100_000,
            dictionary: None,
            sealed: tokio::sync::watch::channel(0).0,
            priority_min_interval: std::time::Duration::MAX,
            clock: WallClock::assume_synchronised(),
        })
    }

    /// A clock that is never trusted (its floor is the end of time), holding for `max_hold`.
    fn never_trusted(max_hold: std::time::Duration) -> WallClock {
        WallClock::new(
            ClockConfig {
                max_hold,
                ..ClockConfig::with_floor(i64::MAX)
            },
            Remembered::default(),
        )
    }

    /// (ts_ms, clock, seq) of a node's readings of `seq`, in id order.
    fn rows(path: &Path) -> Vec<(i64, Option<i64>, i64)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT ts_ms, clock, value FROM readings WHERE channel = 4 ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Every sealed batch: (seq, unsynchronised flag, seq values of the node).
    fn batches(store: &Store) -> Vec<(u64, bool, Vec<i64>)> {
        let reader = store.reader().unwrap();
        reader
            .batches_after(0, 100)
            .unwrap()
            .into_iter()
            .map(|info| {
                let bytes = reader.batch_bytes(info.seq).unwrap().unwrap();
                let batch =
                    outpost_batch::decode(&bytes, &outpost_batch::Dictionaries::new()).unwrap();
                assert_eq!(batch.header().unsynchronised, info.unsynchronised);
                let seqs = batch
                    .readings()
                    .filter(|r| r.channel == "seq")
                    .map(|r| match r.value {
                        outpost_batch::Value::Decimal { raw, .. } => raw,
                        outpost_batch::Value::Float(f) => f as i64,
                    })
                    .collect();
                (info.seq, info.unsynchronised, seqs)
            })
            .collect()
    }

    #[test]
    fn held_readings_wait_in_order_and_get_their_exact_time_once_the_clock_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        let remembered = store.transaction(|tx| tx.begin_boot("boot-a")).unwrap();
        assert_eq!(remembered, Remembered::default());
        let node = store
            .transaction(|tx| register(tx, 0, "/dev/ttyACM0", &hello(1, 7)))
            .unwrap()
            .node_id;
        // Samples 1-2 stamped by a trusted clock; 3-5 by one in 1970 (offset: wall − mono).
        let offset_1970 = -1_000_000;
        // Taken ten seconds ago on the monotonic axis (so well within the hold).
        let base = crate::io::wall_clock::boottime_ms() - 10_000;
        store
            .transaction(|tx| tx.ingest(node, 7, &[sample(1, 1), sample(2, 1)], 0))
            .unwrap();
        let held: Vec<Sample> = (3..=5)
            .map(|s| Sample {
                ts_ms: base + i64::from(s) * 1000 + offset_1970,
                ..sample(s, 1)
            })
            .collect();
        store
            .transaction(|tx| {
                tx.ingest_at(
                    node,
                    7,
                    &held,
                    0,
                    Basis::Untrusted {
                        offset_ms: offset_1970,
                    },
                )
            })
            .unwrap();

        // Untrusted: 1-2 are sealed, 3-5 wait.
        let untrusted = never_trusted(std::time::Duration::from_secs(3600));
        let round = sealer().round(&mut store, 0, &untrusted).unwrap();
        assert_eq!(
            (round.sealed, round.held.readings, round.released),
            (1, 6, 0)
        );
        assert_eq!(batches(&store), vec![(1, false, vec![1, 2])]);
        // A restart in the same kernel boot keeps them held.
        store.transaction(|tx| tx.begin_boot("boot-a")).unwrap();
        let round = sealer().round(&mut store, 0, &untrusted).unwrap();
        assert_eq!((round.sealed, round.held.readings), (0, 6));

        // Trusted: each gets mono + (wall − mono) of now, exactly.
        let trusted = WallClock::assume_synchronised();
        let before = wall_clock_offset();
        let round = sealer().round(&mut store, 0, &trusted).unwrap();
        let after = wall_clock_offset();
        assert_eq!(
            (round.sealed, round.restamped, round.held.readings),
            (1, 6, 0)
        );
        for (ts, clock, seq) in rows(&path).into_iter().skip(2) {
            assert_eq!(clock, None);
            let mono = base + seq * 1000;
            assert!(
                (mono + before.min(after) - 5..=mono + before.max(after) + 5).contains(&ts),
                "seq {seq}: {ts}"
            );
        }
        assert_eq!(
            batches(&store),
            vec![(1, false, vec![1, 2]), (2, false, vec![3, 4, 5])]
        );
        // The trusted time is remembered.
        let remembered = store.transaction(|tx| tx.begin_boot("boot-a")).unwrap();
        assert!(remembered.boot_trusted && remembered.high_water_ms > 1_700_000_000_000);
    }

    fn wall_clock_offset() -> i64 {
        crate::io::wall_clock::unix_ms() - crate::io::wall_clock::boottime_ms()
    }

    #[test]
    fn readings_of_a_boot_that_never_had_a_trusted_clock_are_sealed_marked_and_never_mixed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        store.transaction(|tx| tx.begin_boot("boot-a")).unwrap();
        let node = store
            .transaction(|tx| register(tx, 0, "/dev/ttyACM0", &hello(1, 7)))
            .unwrap()
            .node_id;
        let untrusted = Basis::Untrusted { offset_ms: 5 };
        store
            .transaction(|tx| tx.ingest_at(node, 7, &[sample(1, 1), sample(2, 1)], 0, untrusted))
            .unwrap();
        // The machine reboots; the clock is still not trusted.
        let remembered = store.transaction(|tx| tx.begin_boot("boot-b")).unwrap();
        assert!(!remembered.boot_trusted);
        store
            .transaction(|tx| tx.ingest_at(node, 7, &[sample(3, 1)], 0, untrusted))
            .unwrap();
        let clock = never_trusted(std::time::Duration::from_secs(3600));
        let round = sealer().round(&mut store, 0, &clock).unwrap();
        assert_eq!((round.sealed, round.held.readings), (1, 2));
        assert_eq!(batches(&store), vec![(1, true, vec![1, 2])]);
        // Their time is what the unsynchronised clock said.
        assert_eq!(rows(&path)[0].0, sample(1, 1).ts_ms);

        // Then the clock is trusted: 3 is re-stamped and sealed apart, unmarked.
        store
            .transaction(|tx| tx.ingest(node, 7, &[sample(4, 1)], 0))
            .unwrap();
        let round = sealer()
            .round(&mut store, 0, &WallClock::assume_synchronised())
            .unwrap();
        assert_eq!((round.sealed, round.restamped), (1, 2));
        assert_eq!(
            batches(&store),
            vec![(1, true, vec![1, 2]), (2, false, vec![3, 4])]
        );
    }

    #[test]
    fn held_readings_are_sealed_marked_after_max_hold_without_a_trusted_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        store.transaction(|tx| tx.begin_boot("boot-a")).unwrap();
        let node = store
            .transaction(|tx| register(tx, 0, "/dev/ttyACM0", &hello(1, 7)))
            .unwrap()
            .node_id;
        // Taken just now on the monotonic axis.
        let s = sample(1, 1);
        let basis = Basis::Untrusted {
            offset_ms: s.ts_ms - crate::io::wall_clock::boottime_ms(),
        };
        store
            .transaction(|tx| tx.ingest_at(node, 7, &[s], 0, basis))
            .unwrap();
        let round = sealer()
            .round(
                &mut store,
                0,
                &never_trusted(std::time::Duration::from_secs(3600)),
            )
            .unwrap();
        assert_eq!((round.sealed, round.released), (0, 0));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let round = sealer()
            .round(
                &mut store,
                0,
                &never_trusted(std::time::Duration::from_millis(10)),
            )
            .unwrap();
        assert_eq!(
            (round.sealed, round.released, round.held.readings),
            (1, 2, 0)
        );
        assert_eq!(batches(&store), vec![(1, true, vec![1])]);
    }
}

/// The remote commands' audit log (`store::audit`): a nonce is claimed once, across a reopen.
mod audit {
    use super::*;
    use outpost_core::command::{Command, Verb, Verified};
    use outpost_core::update::signing::KeyId;

    fn verified(nonce: u8, expires: i64) -> Verified {
        Verified {
            command: Command {
                gateway: "gw".into(),
                request: format!("r-{nonce}"),
                nonce: [nonce; 16],
                issued: expires - 60,
                expires,
                verb: Verb::EnrollWindow { minutes: 5 },
            },
            key: KeyId([7; 8]),
        }
    }

    #[test]
    fn a_nonce_is_claimed_once_even_after_a_reopen_and_a_refusal_never_takes_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let mut store = Store::open(&path).unwrap();
            // A refused copy (say, a forged signature) arrives first: it must not use the nonce up.
            store
                .transaction(|tx| {
                    tx.audit_refused(1, "enroll-window", Some("r-1"), None, "bad-signature: …")
                })
                .unwrap();
            let id = store
                .transaction(|tx| tx.claim_command(2, &verified(1, 10_000)))
                .unwrap()
                .expect("first claim");
            store
                .transaction(|tx| tx.finish_command(id, "ok", "{}", 3))
                .unwrap();
            let again = store
                .transaction(|tx| tx.claim_command(4, &verified(1, 10_000)))
                .unwrap();
            assert_eq!(again, None, "a replay");
            // One left running when the gateway stops.
            store
                .transaction(|tx| tx.claim_command(5, &verified(2, 10_000)))
                .unwrap()
                .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(
            store
                .transaction(|tx| tx.claim_command(6, &verified(1, 10_000)))
                .unwrap(),
            None,
            "still a replay after a reopen"
        );
        assert_eq!(
            store
                .transaction(|tx| tx.interrupt_running_commands(7))
                .unwrap(),
            1
        );
        let log = Reader::open(&path).unwrap().command_audit(10).unwrap();
        let outcomes: Vec<&str> = log.iter().map(|e| e.outcome.as_str()).collect();
        assert_eq!(outcomes, ["interrupted", "ok", "refused"]);
        assert_eq!(log[1].key_id.as_deref(), Some("0707070707070707"));
    }

    #[test]
    fn the_log_is_bounded_but_keeps_every_nonce_that_has_not_expired() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        // An old command, expired, and a live one (expires in the far future).
        store
            .transaction(|tx| tx.claim_command(0, &verified(1, 1)))
            .unwrap()
            .unwrap();
        store
            .transaction(|tx| tx.claim_command(0, &verified(2, i64::MAX / 2000)))
            .unwrap()
            .unwrap();
        let flood = usize::try_from(crate::io::store::audit::MAX_AUDIT_ROWS).unwrap() + 50;
        store
            .transaction(|tx| {
                for i in 0..flood {
                    tx.audit_refused(10_000, "x", Some(&format!("r-{i}")), None, "unsigned")?;
                }
                Ok(())
            })
            .unwrap();
        let rows: i64 = rusqlite::Connection::open(dir.path().join("s.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM command_audit", [], |r| r.get(0))
            .unwrap();
        assert!(
            rows <= crate::io::store::audit::MAX_AUDIT_ROWS + 2,
            "{rows} rows"
        );
        assert_eq!(
            store
                .transaction(|tx| tx.claim_command(10_001, &verified(2, i64::MAX / 2000)))
                .unwrap(),
            None,
            "the live nonce is still known"
        );
        assert!(
            store
                .transaction(|tx| tx.claim_command(10_001, &verified(1, 1)))
                .unwrap()
                .is_some(),
            "the expired one was pruned (its command is refused as expired anyway)"
        );
    }
}

mod rollouts {
    use super::*;
    use outpost_core::rollout::{
        Action, Artifact, Mode, Plan, Rollout, Row, Settings, TargetNode, Waves,
    };
    use outpost_proto::FwVersion;

    fn v(minor: u8) -> FwVersion {
        FwVersion {
            major: 1,
            minor,
            patch: 0,
        }
    }

    /// A started rollout's rows, as its core asks for them to be written.
    fn started() -> (Rollout, Vec<Row>) {
        let nodes = (1..=4u8)
            .map(|i| TargetNode {
                uid: [i; 8],
                port: format!("/dev/ttyS{i}"),
                version: v(0),
                online: true,
                boot_id: Some(u32::from(i)),
                rollback: (i % 2 == 0).then_some(Artifact {
                    sha256: [i; 32],
                    version: v(0),
                }),
            })
            .collect();
        let plan = Plan {
            id: 7,
            artifact: Artifact {
                sha256: [9; 32],
                version: v(1),
            },
            nodes,
            settings: Settings {
                mode: Mode::Staged {
                    canary: 1,
                    waves: Waves::parse("50%,100%").unwrap(),
                },
                ..Settings::default()
            },
            started_by: "cli".into(),
        };
        let mut rollout = Rollout::new(plan, outpost_proto::Millis(0)).unwrap();
        let rows = std::iter::from_fn(|| rollout.poll_action())
            .filter_map(|a| match a {
                Action::Persist(row) => Some(row),
                _ => None,
            })
            .collect();
        (rollout, rows)
    }

    #[test]
    fn a_rollouts_rows_come_back_as_written_and_restore_the_same_rollout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (rollout, rows) = started();
        assert!(!rows.is_empty());
        {
            let mut store = Store::open(&path).unwrap();
            assert_eq!(store.transaction(|tx| tx.next_rollout_id()).unwrap(), 1);
            store
                .transaction(|tx| {
                    tx.ota_persist(&rows, &["{\"event\":\"started\"}".into()], 7, 1000)
                })
                .unwrap();
            // Rows written twice (a phase change) are upserts, not copies.
            store
                .transaction(|tx| tx.ota_persist(&rows, &[], 7, 2000))
                .unwrap();
            assert_eq!(store.transaction(|tx| tx.next_rollout_id()).unwrap(), 8);
        }
        let reader = Reader::open(&path).unwrap();
        let back = reader.active_rollout().unwrap().expect("a rollout runs");
        assert_eq!(back.nodes.len(), 4);
        // The last row written for each node is the one kept.
        let mut latest = std::collections::BTreeMap::new();
        for row in &rows {
            if let Row::Node(n) = row {
                latest.insert(n.position, n.clone());
            }
        }
        assert_eq!(back.nodes, latest.into_values().collect::<Vec<_>>());
        let restored = Rollout::restore(back, outpost_proto::Millis(0)).unwrap();
        assert_eq!(
            restored.status(outpost_proto::Millis(0)).nodes.len(),
            rollout.status(outpost_proto::Millis(0)).nodes.len()
        );
        assert_eq!(reader.ota_events(7, 10).unwrap().len(), 1);
        assert_eq!(reader.rollouts(10).unwrap()[0].state, "running");
    }

    #[test]
    fn a_nodes_firmware_history_is_kept_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path).unwrap();
        for (at, outcome) in [
            (1, "reverted (deadline)"),
            (2, "confirmed"),
            (3, "finalized"),
        ] {
            store
                .transaction(|tx| {
                    tx.firmware_transition(&super::super::ota::FirmwareTransition {
                        uid: "0101010101010101".into(),
                        at_ms: at,
                        from_version: "1.0.0".into(),
                        to_version: "1.1.0".into(),
                        outcome: outcome.into(),
                        rollout: Some(7),
                    })
                })
                .unwrap();
        }
        let reader = Reader::open(&path).unwrap();
        let history = reader.firmware_history("0101010101010101").unwrap();
        let outcomes: Vec<_> = history.iter().map(|t| t.outcome.as_str()).collect();
        assert_eq!(outcomes, ["reverted (deadline)", "confirmed", "finalized"]);
    }
}

#[test]
fn a_node_back_with_another_firmware_and_no_rollout_is_recorded_and_exported_with_its_resets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outpost.db");
    let mut store = Store::open(&path).unwrap();
    let first = hello(3, 100);
    let node = store
        .transaction(|tx| register(tx, 1_000, "/dev/ttyACM0", &first))
        .unwrap();
    let health = |reason: ResetReason, minor: u8| Health {
        uptime_s: 1,
        reset_reason: reason,
        fw: FwVersion {
            major: 1,
            minor,
            patch: 0,
        },
        stack_free_min: 1800,
        rx_frames: 0,
        rx_errors: 0,
        tx_frames: 0,
        retransmits: 0,
        dropped_samples: 0,
        chip_temp_centi: 3000,
    };
    store
        .transaction(|tx| tx.health(node.node_id, 100, 1_100, &health(ResetReason::PowerOn, 4)))
        .unwrap();
    // The same firmware after a crash: a reset, no transition.
    store
        .transaction(|tx| register(tx, 2_000, "/dev/ttyACM0", &hello(3, 101)))
        .unwrap();
    store
        .transaction(|tx| tx.health(node.node_id, 101, 2_100, &health(ResetReason::HardFault, 4)))
        .unwrap();
    // Back from the bench, flashed by hand with 1.5.0.
    let flashed = Hello {
        fw: FwVersion {
            major: 1,
            minor: 5,
            patch: 0,
        },
        ..hello(3, 102)
    };
    store
        .transaction(|tx| register(tx, 3_000, "/dev/ttyACM0", &flashed))
        .unwrap();
    store
        .transaction(|tx| tx.health(node.node_id, 102, 3_100, &health(ResetReason::PowerOn, 5)))
        .unwrap();

    let reader = Reader::open(&path).unwrap();
    let nodes = reader.rma_nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    let n = &nodes[0];
    assert_eq!(
        (n.uid.as_str(), n.hw_rev, n.lot.as_str()),
        ("0303030303030303", 2, "L2026-11")
    );
    assert_eq!(n.first_seen_ms, 1_000);
    assert_eq!(n.fw_version, "1.5.0");
    assert_eq!(
        n.firmware,
        [rma::RmaFirmware {
            at_ms: 3_000,
            from_version: "1.4.0".into(),
            to_version: "1.5.0".into(),
            outcome: "booted_outside_rollout".into(),
            rollout: None,
        }]
    );
    let resets: Vec<(&str, bool, &str)> = n
        .resets
        .iter()
        .map(|r| (r.reason.as_str(), r.expected, r.fw_version.as_str()))
        .collect();
    assert_eq!(
        resets,
        [
            ("power_on", true, "1.4.0"),
            ("hard_fault", false, "1.4.0"),
            ("power_on", true, "1.5.0")
        ]
    );
}

#[test]
fn a_version_a_running_rollout_brings_is_recorded_with_the_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outpost.db");
    let mut store = Store::open(&path).unwrap();
    store
        .transaction(|tx| register(tx, 1_000, "p", &hello(4, 1)))
        .unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO rollouts (id, artifact_sha256, artifact_version, mode, canary, waves,
                 soak_ms, confirm_within_ms, offline_threshold_ms, max_per_port, started_by, state,
                 rollback, started_ms, updated_ms)
             VALUES (9, 'aa', '1.5.0', 'staged', 1, '100%', 0, 0, 0, 1, 'test', 'running', 1, 0, 0);
             INSERT INTO rollout_nodes (rollout, uid, position, port, phase, from_version,
                 to_version, attempts, transfer_failures, updated_ms)
             VALUES (9, '0404040404040404', 0, 'p', 'trial', '1.4.0', '1.5.0', 1, 0, 0);",
        )
        .unwrap();
    }
    let trial = Hello {
        fw: FwVersion {
            major: 1,
            minor: 5,
            patch: 0,
        },
        ..hello(4, 2)
    };
    store
        .transaction(|tx| register(tx, 2_000, "p", &trial))
        .unwrap();
    let nodes = Reader::open(&path).unwrap().rma_nodes().unwrap();
    assert_eq!(
        nodes[0].firmware,
        [rma::RmaFirmware {
            at_ms: 2_000,
            from_version: "1.4.0".into(),
            to_version: "1.5.0".into(),
            outcome: "booted".into(),
            rollout: Some(9),
        }]
    );
}
