//! Store ingest throughput: Outpost's group commit against one transaction per reading.
//!
//! `cargo bench -p outpost --bench store_ingest` — both in the same run, on the same disk, with
//! the same durability (WAL, synchronous = FULL: every commit is on stable storage). A third line
//! measures Modbus device readings (named points, half decimals, half floats) with group commit.

use std::time::Instant;

use outpost::io::store::{Sample, SeriesReading, Store};
use outpost_batch::Value;
use outpost_proto::{ChannelId, FwVersion, Hello, Reading};
use rusqlite::params;

const NODES: u32 = 4;
const CHANNELS: usize = 4;
/// Readings per group commit: what `max_commit_readings` allows by default.
const GROUP_READINGS: usize = 8192;
const DEVICES: usize = 4;
/// Points per device poll.
const POINTS: usize = 32;

fn sample(seq: u32) -> Sample {
    let readings = (0..CHANNELS as u8)
        .map(|c| Reading {
            channel: ChannelId(c + 1),
            value: 2000 + (seq as i32 % 97),
        })
        .collect();
    Sample {
        seq,
        window_start: 1,
        ts_ms: 1_764_000_000_000 + i64::from(seq) * 100,
        max_lost: u32::MAX,
        readings,
    }
}

fn hello(node: u32) -> Hello {
    Hello {
        uid: [node as u8; 8],
        hw_rev: 1,
        fw: FwVersion::default(),
        boot_id: node,
        lot: heapless::String::new(),
        channels: heapless::Vec::new(),
        ephemeral: [0; 32],
    }
}

fn batched(readings: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("bench.db")).unwrap();
    let ids: Vec<i64> = (0..NODES)
        .map(|n| {
            store
                .transaction(|tx| tx.register(0, "bench", &hello(n), &[1; 32], true))
                .unwrap()
                .unwrap()
                .node_id
        })
        .collect();
    let samples_per_node_per_commit = GROUP_READINGS / CHANNELS / NODES as usize;
    let commits = readings / GROUP_READINGS;
    let start = Instant::now();
    for commit in 0..commits {
        let first = (commit * samples_per_node_per_commit) as u32 + 1;
        let batch: Vec<Sample> = (first..first + samples_per_node_per_commit as u32)
            .map(sample)
            .collect();
        store
            .transaction(|tx| {
                for (n, &id) in ids.iter().enumerate() {
                    let got = tx.ingest(id, n as u32, &batch, 0)?;
                    assert_eq!(got.admitted as usize, batch.len());
                }
                Ok(())
            })
            .unwrap();
    }
    (commits * GROUP_READINGS) as f64 / start.elapsed().as_secs_f64()
}

fn devices(readings: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("devices.db")).unwrap();
    let names: Vec<String> = (0..DEVICES).map(|d| format!("meter-{d}")).collect();
    let poll = |n: usize| -> Vec<SeriesReading> {
        (0..POINTS)
            .map(|p| SeriesReading {
                channel: format!("point_{p}"),
                value: if p % 2 == 0 {
                    Value::decimal(2300 + (n % 97) as i64, -1)
                } else {
                    Value::float(49.9 + (n % 13) as f64 / 100.0)
                },
            })
            .collect()
    };
    let polls_per_device_per_commit = GROUP_READINGS / POINTS / DEVICES;
    let commits = readings / GROUP_READINGS;
    let start = Instant::now();
    for commit in 0..commits {
        let first = commit * polls_per_device_per_commit;
        let polls: Vec<Vec<SeriesReading>> = (first..first + polls_per_device_per_commit)
            .map(poll)
            .collect();
        store
            .transaction(|tx| {
                for (i, readings) in polls.iter().enumerate() {
                    let ts_ms = 1_764_000_000_000 + ((first + i) * 1000) as i64;
                    for name in &names {
                        tx.ingest_series(name, ts_ms, readings)?;
                    }
                }
                Ok(())
            })
            .unwrap();
    }
    (commits * GROUP_READINGS) as f64 / start.elapsed().as_secs_f64()
}

fn naive(readings: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("naive.db");
    drop(Store::open(&path).unwrap()); // same schema and pragmas
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    let start = Instant::now();
    for i in 0..readings {
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO readings (series_id, ts_ms, value, node_id, boot_id, channel) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![1, i as i64, 2000, 1, 1, 1],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    readings as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo test --benches` runs this with --test-threads etc.: do a tiny run then.
    let quick = std::env::args().any(|a| a == "--test" || a.starts_with("--test-threads"));
    let (group_n, naive_n) = if quick {
        (GROUP_READINGS, 50)
    } else {
        (2_000_000, 3_000)
    };
    let naive_rate = naive(naive_n);
    let batched_rate = batched(group_n);
    let devices_rate = devices(group_n);
    println!("store ingest, WAL + synchronous=FULL, {NODES} nodes x {CHANNELS} channels");
    println!("  one transaction per reading: {naive_rate:>12.0} readings/s  ({naive_n} readings)");
    println!(
        "  group commit ({GROUP_READINGS}/txn):    {batched_rate:>12.0} readings/s  ({group_n} readings)"
    );
    println!("  speed-up: {:.0}x", batched_rate / naive_rate);
    println!(
        "  devices, {DEVICES} x {POINTS} points, group commit: {devices_rate:>12.0} readings/s  ({group_n} readings)"
    );
}
