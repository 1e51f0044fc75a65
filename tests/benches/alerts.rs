//! What evaluating the fleet alert rules costs, for 256 nodes and two reset histories, measured
//! in the same run:
//!
//! - quiet: 100 unexpected resets spread over the last 24 h (the longest default window);
//! - crash loop: the same, and 32 nodes of one firmware resetting every 2 minutes for those
//!   24 h (23,040 more resets in the window).
//!
//! For each: the engine alone (`Engine::observe` + `evaluate` on the registry and a new reset,
//! steady state), and the adapter's whole round (`io::alerting::Round::run`: the store reads on
//! a real SQLite file through the readers' pool, the telemetry, the engine), after its first
//! round, which loads the 24 h history and is timed on its own. CPU is the process's user +
//! system time (`CLOCK_PROCESS_CPUTIME_ID`) over the rounds (the round's store read runs on a blocking thread), divided by
//! the rounds; the share of one core is that over the default `alerts.interval` (5 s).
//!
//! `cargo bench -p outpost-e2e --bench alerts` (OUTPOST_BENCH_ROUNDS, default 1000).

use std::time::{Duration, Instant};

use outpost::io::alerting::{AlertingIo, Round};
use outpost::io::store::{Readers, Store};
use outpost::io::telemetry::TelemetryHub;
use outpost_core::alerting::{Engine, FleetSample, NodeFacts, ResetFacts, Rules};
use outpost_core::telemetry::Telemetry;
use outpost_e2e::unix_ms;
use outpost_proto::{ChannelId, FwVersion, Health, Hello, ResetReason};

const NODES: usize = 256;
const VERSIONS: [(u8, u8); 4] = [(1, 0), (1, 1), (1, 2), (2, 0)];
const LOTS: usize = 8;
const DAY_MS: i64 = 24 * 3_600 * 1_000;

fn uid(i: usize) -> [u8; 8] {
    let mut uid = [0xb0; 8];
    uid[6..].copy_from_slice(&u16::try_from(i).unwrap().to_be_bytes());
    uid
}

fn fw(i: usize) -> FwVersion {
    let (major, minor) = VERSIONS[i % VERSIONS.len()];
    FwVersion {
        major,
        minor,
        patch: 0,
    }
}

fn health(i: usize, reset_reason: ResetReason) -> Health {
    Health {
        uptime_s: 1,
        reset_reason,
        fw: fw(i),
        stack_free_min: 1800,
        rx_frames: 0,
        rx_errors: 0,
        tx_frames: 0,
        retransmits: 0,
        dropped_samples: 0,
        chip_temp_centi: 3000,
    }
}

/// The resets of a history: (node, when), oldest first.
fn history(crash_loop: bool, now_ms: i64) -> Vec<(usize, i64)> {
    let mut resets: Vec<(usize, i64)> = (0..100)
        .map(|k| {
            (
                k * 37 % NODES,
                now_ms - DAY_MS + i64::try_from(k).unwrap() * DAY_MS / 100,
            )
        })
        .collect();
    if crash_loop {
        // 32 nodes of version 2.0 (every fourth node), every 2 minutes.
        for step in 0..720 {
            for n in 0..32 {
                resets.push((
                    n * 4 + 3,
                    now_ms - DAY_MS + step * 120_000 + i64::try_from(n).unwrap(),
                ));
            }
        }
    }
    resets.sort_by_key(|r| r.1);
    resets
}

/// A store with the 256 nodes, each seen now, and the history's resets.
fn store_with(dir: &std::path::Path, resets: &[(usize, i64)], now_ms: i64) -> std::path::PathBuf {
    let path = dir.join("outpost.db");
    let mut store = Store::open(&path).unwrap();
    store.set_max_nodes(1_000);
    let mut ids = Vec::new();
    for i in 0..NODES {
        let hello = Hello {
            uid: uid(i),
            hw_rev: 1,
            fw: fw(i),
            boot_id: 1,
            lot: format!("LOT-{}", i % LOTS).as_str().try_into().unwrap(),
            channels: [ChannelId::SEQ].into_iter().collect(),
            ephemeral: [0; 32],
        };
        let registered = store
            .transaction(|tx| tx.register(now_ms, "/dev/ttyACM0", &hello, &[7; 32], true))
            .unwrap()
            .unwrap();
        ids.push(registered.node_id);
    }
    for (c, chunk) in resets.chunks(2_000).enumerate() {
        store
            .transaction(|tx| {
                for (k, &(node, at)) in chunk.iter().enumerate() {
                    // A boot id of its own (1 is the boot that is running now).
                    let boot = u32::try_from(c * 2_000 + k + 2).unwrap();
                    tx.health(ids[node], boot, at, &health(node, ResetReason::Watchdog))?;
                }
                Ok(())
            })
            .unwrap();
    }
    // Every node heard from now: online.
    store
        .transaction(|tx| {
            for (i, &id) in ids.iter().enumerate() {
                tx.health(id, 1, now_ms, &health(i, ResetReason::PowerOn))?;
            }
            Ok(())
        })
        .unwrap();
    path
}

/// The process's CPU time (user + system, every thread), in seconds, to the nanosecond.
fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The engine alone: loaded with the history, then `rounds` steady-state evaluations with one
/// new reset each. CPU seconds per evaluation.
fn engine_alone(resets: &[(usize, i64)], now_ms: i64, rounds: usize) -> f64 {
    let nodes: Vec<NodeFacts> = (0..NODES)
        .map(|i| NodeFacts {
            uid: format!("{:016x}", u64::from_be_bytes(uid(i))),
            fw_version: fw(i).to_string(),
            lot: format!("LOT-{}", i % LOTS),
            online: true,
        })
        .collect();
    let reset = |(node, at): (usize, i64), boot: i64| ResetFacts {
        uid: nodes[node].uid.clone(),
        boot_id: boot,
        at_ms: at,
        expected: false,
        fw_version: nodes[node].fw_version.clone(),
        lot: nodes[node].lot.clone(),
    };
    let mut engine = Engine::new(Rules::default());
    engine.observe(
        now_ms,
        FleetSample {
            nodes: nodes.clone(),
            new_resets: resets
                .iter()
                .enumerate()
                .map(|(k, &r)| reset(r, i64::try_from(k).unwrap()))
                .collect(),
            ..FleetSample::default()
        },
    );
    engine.evaluate(now_ms);
    let cpu = cpu_now();
    for round in 0..rounds {
        let at = now_ms + i64::try_from(round).unwrap() * 5_000;
        engine.observe(
            at,
            FleetSample {
                nodes: nodes.clone(),
                new_resets: vec![reset(
                    (round % NODES, at),
                    10_000_000 + i64::try_from(round).unwrap(),
                )],
                ..FleetSample::default()
            },
        );
        std::hint::black_box(engine.evaluate(at));
    }
    (cpu_now() - cpu) / rounds as f64
}

/// The adapter's rounds on a real store: (first round's wall time, CPU seconds per later round,
/// resets in the window).
fn adapter_rounds(path: &std::path::Path, rounds: usize) -> (Duration, f64, usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let io = AlertingIo {
        readers: Readers::new(path),
        telemetry: TelemetryHub::new(Telemetry::new(&[], false, Duration::from_secs(60))),
        offline_after: std::collections::HashMap::new(),
    };
    let mut round = Round::new(Rules::default());
    runtime.block_on(async {
        let started = Instant::now();
        round.run(&io).await;
        let first = started.elapsed();
        let cpu = cpu_now();
        for _ in 0..rounds {
            std::hint::black_box(round.run(&io).await);
        }
        (
            first,
            (cpu_now() - cpu) / rounds as f64,
            round.engine().resets_in_window(),
        )
    })
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` builds this; the figures need a release build
    }
    let rounds: usize = std::env::var("OUTPOST_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let interval = Rules::default().interval.as_secs_f64();
    println!(
        "{NODES} nodes, 4 firmware versions, {LOTS} lots, default rules, {rounds} rounds each"
    );
    println!();
    println!(
        "| history | resets in the 24 h window | engine: CPU per evaluation | whole round (store reads + engine): CPU per round | share of one core at `alerts.interval` = 5 s | first round (loads the history) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, crash_loop) in [("quiet", false), ("crash loop", true)] {
        let dir = tempfile::tempdir().unwrap();
        let now_ms = unix_ms();
        let resets = history(crash_loop, now_ms);
        let path = store_with(dir.path(), &resets, now_ms);
        let engine = engine_alone(&resets, now_ms, rounds);
        let (first, per_round, in_window) = adapter_rounds(&path, rounds);
        println!(
            "| {name} | {in_window} | {:.0} µs | {:.2} ms | {:.3} % | {:.0} ms |",
            engine * 1e6,
            per_round * 1e3,
            per_round / interval * 100.0,
            first.as_secs_f64() * 1e3,
        );
    }
}
