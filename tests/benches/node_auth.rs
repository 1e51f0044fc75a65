//! What authenticating the node link costs (docs/BENCHMARKS.md, "Authenticated node link"):
//!
//! - **bytes per TELEMETRY** of the simulator's four channels on the line, at field values:
//!   protocol version 1 (its fixed layout), version 2 framed without the seal, and version 2
//!   sealed, and the samples per second a 115200-baud 8N1 line carries with each;
//! - **measured**: the real daemon (release) with one simulator node at `--baud 115200` sampling
//!   at 400 Hz, faster than the line: samples stored per second over 20 s, from the store, beside
//!   the computed capacity;
//! - **handshake on the host**: the node's `Ephemeral::from_random` + `node_answer`, the
//!   gateway's `challenge` + `finish`, and one seal and one open (the Cortex-M0+ count of the
//!   node's side is `sensor-fw/bench-m0`).
//!
//! `cargo bench -p outpost-e2e --bench node_auth` (about a minute).

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Result;
use ed25519_dalek::SigningKey;
use outpost_e2e::{NodeSpec, Site, latest_health, stored_seqs, unix_ms, wait_for};
use outpost_proto::frame::{MAX_FRAME_LEN, encode_raw_frame};
use outpost_proto::session::{Ephemeral, GatewayHandshake, node_answer};
use outpost_proto::{
    Challenge, ChannelId, FrameDecoder, FwVersion, Hello, Message, Reading, Sealer, SessionKeys,
    Telemetry, encode_sealed_frame,
};

/// A 115200-baud 8N1 line: ten bits a byte.
const LINE_BYTES_PER_SEC: f64 = 11_520.0;
/// Version 1's TELEMETRY of four readings: 2 + 3 × 4 (seq, window_start, age_ms as u32) + 1 +
/// 4 × 5 = 35 message bytes; + CRC-32 (4) + COBS (1, under 254 bytes) + two delimiters = 42.
const V1_MESSAGE: usize = 35;
const V1_FRAME: usize = V1_MESSAGE + 4 + 1 + 2;
const UID: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const BOOT_ID: u32 = 0x0403_0201;
const MEASURE: Duration = Duration::from_secs(20);
const RATE_HZ: f64 = 400.0;

fn main() -> Result<()> {
    let keys = handshake_keys();
    frame_sizes(&keys);
    handshake_cost();
    seal_cost(&keys);
    measured(&keys)?;
    Ok(())
}

/// The simulator's default channels at field values.
fn telemetry(seq: u32, back: u32, age_ms: u32) -> Telemetry {
    Telemetry {
        seq,
        window_start: seq - back,
        age_ms,
        readings: [
            (ChannelId::TEMPERATURE, 2_150),
            (ChannelId::HUMIDITY, 4_520),
            (ChannelId::PRESSURE, 101_325),
            (ChannelId::SEQ, seq as i32),
        ]
        .into_iter()
        .map(|(channel, value)| Reading { channel, value })
        .collect(),
    }
}

/// (message bytes, bytes on the line) of `t` framed without a seal, and sealed.
fn v2_sizes(t: &Telemetry, sealer: &mut Sealer) -> ((usize, usize), (usize, usize)) {
    let message = Message::Telemetry(t.clone());
    let mut raw = [0u8; MAX_FRAME_LEN];
    let mut out = [0u8; MAX_FRAME_LEN];
    let len = message.emit(&mut raw).expect("fits");
    let unsealed = encode_raw_frame(&raw[..len], &mut out).expect("fits");
    let sealed = encode_sealed_frame(&message, sealer, &mut out).expect("fits");
    (
        (len, unsealed),
        (len + outpost_proto::wire::SEAL_LEN, sealed),
    )
}

fn frame_sizes(keys: &SessionKeys) {
    let (mut sealer, _) = keys.node();
    let per_sec = |frame: usize| LINE_BYTES_PER_SEC / frame as f64;
    let v1 = per_sec(V1_FRAME);
    println!(
        "TELEMETRY, 4 channels, 115200 baud 8N1 ({LINE_BYTES_PER_SEC} bytes/s); version 1: {V1_MESSAGE} message bytes, {V1_FRAME} on the line, {v1:.1} samples/s"
    );
    println!(
        "| case | seq | seq - window_start | age_ms | v2 unsealed: message / line bytes, samples/s | v2 sealed: message / line bytes, samples/s | sealed vs v1 |"
    );
    println!("|---|---|---|---|---|---|---|");
    let cases = [
        ("start of a boot, full rate", 100, 5, 20),
        ("full rate, seq in the thousands", 4_000, 10, 20),
        ("catch-up after an outage, full ring", 4_000, 1_023, 5_000),
        ("catch-up, ages over 16.4 s", 4_000, 1_023, 30_000),
        ("long-lived node, full rate", 5_000_000, 10, 20),
        (
            "long-lived node, catch-up, ages over 16.4 s",
            5_000_000,
            1_023,
            30_000,
        ),
    ];
    for (case, seq, back, age) in cases {
        let ((um, ul), (sm, sl)) = v2_sizes(&telemetry(seq, back, age), &mut sealer);
        println!(
            "| {case} | {seq} | {back} | {age} | {um} / {ul}, {:.1} | {sm} / {sl}, {:.1} | {:+.1} % |",
            per_sec(ul),
            per_sec(sl),
            100.0 * (per_sec(sl) / v1 - 1.0),
        );
    }
}

struct Parties {
    gateway: SigningKey,
    node: SigningKey,
}

fn parties() -> Parties {
    Parties {
        gateway: SigningKey::from_bytes(&[0x11; 32]),
        node: SigningKey::from_bytes(&[0x22; 32]),
    }
}

fn hello(ephemeral: [u8; 32]) -> Hello {
    Hello {
        uid: UID,
        hw_rev: 1,
        fw: FwVersion::default(),
        boot_id: BOOT_ID,
        lot: Default::default(),
        channels: Default::default(),
        ephemeral,
    }
}

fn random(i: u32, salt: u8) -> [u8; 32] {
    let mut bytes = [salt; 32];
    bytes[..4].copy_from_slice(&i.to_le_bytes());
    bytes
}

fn challenge_for(p: &Parties, node_eph: &Ephemeral, i: u32) -> (Challenge, GatewayHandshake) {
    GatewayHandshake::challenge(
        &p.gateway,
        &Ephemeral::from_random(random(i, 0x44)),
        &hello(node_eph.public()),
        &p.node.verifying_key().to_bytes(),
    )
    .expect("challenge")
}

fn handshake_keys() -> SessionKeys {
    let p = parties();
    let eph = Ephemeral::from_random([0x33; 32]);
    let (challenge, _) = challenge_for(&p, &eph, 0);
    node_answer(&p.node, UID, BOOT_ID, &eph, &challenge, None)
        .expect("answer")
        .1
}

fn stats(mut us: Vec<f64>) -> String {
    us.sort_by(f64::total_cmp);
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    format!(
        "median {:.0} µs, mean {mean:.0} µs, min {:.0} µs, max {:.0} µs over {}",
        us[us.len() / 2],
        us[0],
        us[us.len() - 1],
        us.len()
    )
}

fn handshake_cost() {
    let p = parties();
    let rounds = 300;
    let (mut node_us, mut gw_challenge_us, mut gw_finish_us) = (vec![], vec![], vec![]);
    for i in 0..rounds {
        // The node: a fresh ephemeral for its HELLO, then its answer to the CHALLENGE. The
        // gateway's CHALLENGE is made between the two, outside the node's time.
        let start = Instant::now();
        let eph = Ephemeral::from_random(black_box(random(i, 0x33)));
        let hello_us = start.elapsed().as_secs_f64() * 1e6;
        let start = Instant::now();
        let gw_eph = Ephemeral::from_random(random(i, 0x44));
        let (challenge, handshake) = GatewayHandshake::challenge(
            &p.gateway,
            &gw_eph,
            &hello(eph.public()),
            &p.node.verifying_key().to_bytes(),
        )
        .expect("challenge");
        gw_challenge_us.push(start.elapsed().as_secs_f64() * 1e6);
        let start = Instant::now();
        let (proof, keys) =
            node_answer(&p.node, UID, BOOT_ID, &eph, black_box(&challenge), None).expect("answer");
        node_us.push(hello_us + start.elapsed().as_secs_f64() * 1e6);
        let start = Instant::now();
        let gw_keys = handshake.finish(black_box(&proof)).expect("proof");
        gw_finish_us.push(start.elapsed().as_secs_f64() * 1e6);
        assert_eq!(gw_keys, keys);
    }
    println!("handshake on the host (release, one core):");
    println!(
        "  node, Ephemeral::from_random + node_answer: {}",
        stats(node_us)
    );
    println!(
        "  gateway, Ephemeral::from_random + GatewayHandshake::challenge: {}",
        stats(gw_challenge_us)
    );
    println!(
        "  gateway, GatewayHandshake::finish (PROOF verify): {}",
        stats(gw_finish_us)
    );
}

fn seal_cost(keys: &SessionKeys) {
    let (mut sealer, _) = keys.node();
    let (_, mut opener) = keys.gateway();
    let message = Message::Telemetry(telemetry(4_000, 10, 20));
    let mut raw = [0u8; MAX_FRAME_LEN];
    let mut out = [0u8; MAX_FRAME_LEN];
    let rounds = 100_000u32;
    let start = Instant::now();
    for _ in 0..rounds {
        let len = black_box(&message).emit(&mut raw).expect("fits");
        black_box(encode_raw_frame(&raw[..len], &mut out).expect("fits"));
    }
    let clear_ns = start.elapsed().as_secs_f64() * 1e9 / f64::from(rounds);
    let mut frames = Vec::with_capacity(rounds as usize);
    let start = Instant::now();
    for _ in 0..rounds {
        let n = encode_sealed_frame(black_box(&message), &mut sealer, &mut out).expect("fits");
        frames.push(out[..n].to_vec());
    }
    let sealed_ns = start.elapsed().as_secs_f64() * 1e9 / f64::from(rounds);
    let mut decoder = FrameDecoder::new();
    let start = Instant::now();
    let mut opened = 0u32;
    for frame in &frames {
        for &byte in frame {
            if let Some(Ok(received)) = decoder.push(byte) {
                opened += u32::from(received.open(&mut opener).is_ok());
            }
        }
    }
    let open_ns = start.elapsed().as_secs_f64() * 1e9 / f64::from(rounds);
    assert_eq!(opened, rounds);
    println!(
        "one TELEMETRY on the host: framed without a seal {clear_ns:.0} ns, framed and sealed {sealed_ns:.0} ns, decoded and opened {open_ns:.0} ns"
    );
}

/// Stored `seq` readings of the site's one node.
fn stored(site: &Site) -> usize {
    stored_seqs(&site.store_path())
        .ok()
        .and_then(|mut s| s.pop())
        .map_or(0, |(_, seqs)| seqs.len())
}

fn measured(keys: &SessionKeys) -> Result<()> {
    let spec = NodeSpec {
        rate_hz: RATE_HZ,
        sim_args: vec!["--baud".into(), "115200".into()],
        ..NodeSpec::new(0)
    };
    let mut site = Site::new(vec![spec])?;
    site.start_gateway()?;
    site.wait_for_samples(1, Duration::from_secs(60))?;
    // Let the node's ring fill, so the line, not the sampling, sets the pace.
    std::thread::sleep(Duration::from_secs(5));
    let (before, start) = (stored(&site), Instant::now());
    std::thread::sleep(MEASURE);
    let (after, took) = (stored(&site), start.elapsed());
    let rate = (after - before) as f64 / took.as_secs_f64();
    let done = unix_ms();
    let uid = site.specs[0].uid.clone();
    let health = wait_for(Duration::from_secs(30), "a HEALTH report", || {
        latest_health(&site.store_path(), &uid)
            .ok()
            .flatten()
            .filter(|h| h.ts_ms > done)
    })?;
    let port = &site.get("/api/v1/status")?["ports"][0];
    // What the line carries in the frames this node sends: a full ring (1024 samples at 400 Hz)
    // sent from its oldest end, so ages of about 2.56 s and `back` within the window (32), at the
    // seq the run ended with; and a sealed HEALTH every 10 s.
    let last_seq = stored_seqs(&site.store_path())?
        .pop()
        .and_then(|(_, seqs)| seqs.last().copied())
        .unwrap_or(0) as u32;
    let age_ms = (1024.0 / RATE_HZ * 1000.0) as u32;
    let (mut sealer, _) = keys.node();
    let frame = v2_sizes(&telemetry(last_seq, 32, age_ms), &mut sealer).1.1;
    let health_frame = 36 + outpost_proto::wire::SEAL_LEN + 4 + 1 + 2;
    let capacity = (LINE_BYTES_PER_SEC - health_frame as f64 / 10.0) / frame as f64;
    println!(
        "measured: a {RATE_HZ} Hz node at 115200 baud, {:.1} s: {} samples stored, {rate:.1} samples/s, {:.0} % of the line's capacity in its frames ({frame} bytes at seq {last_seq}, age {age_ms} ms, a {health_frame}-byte HEALTH every 10 s: {capacity:.1} samples/s; version 1: {:.1}); the node had dropped {} samples to its full ring; port: {} handshakes, {} refused, {} proofs failed, {} unauthenticated, {} auth_failed, {} replayed, {} frame errors",
        took.as_secs_f64(),
        after - before,
        100.0 * rate / capacity,
        (LINE_BYTES_PER_SEC - (36.0 + 7.0) / 10.0) / V1_FRAME as f64,
        health.dropped_samples,
        port["handshakes"],
        port["handshakes_refused"],
        port["proofs_failed"],
        port["unauthenticated"],
        port["auth_failed"],
        port["replayed"],
        port["frame_errors"],
    );
    Ok(())
}
