//! End-to-end: a hostile device on the serial bus. A real `outpost` daemon, a real simulated
//! node, and frames crafted with `outpost-proto` written where a device on the bus could write
//! them: into the enrolled node's own line (a bus the test relays, injecting between the node's
//! frames and recording them) and on lines of their own. The device has keys of its own and
//! completes handshakes with them; it has everything it recorded from the line; it does not have
//! the enrolled node's key.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use outpost_e2e::{Proc, Site, assert_contiguous, bin, http_get_json, wait_for};
use outpost_proto::frame::{MAX_FRAME_LEN, encode_raw_frame};
use outpost_proto::session::{Ephemeral, Transcript, node_answer};
use outpost_proto::{
    Challenge, ChannelId, Enroll, FrameDecoder, FwVersion, Health, Hello, Message, Proof, Reading,
    Received, ResetReason, Sealer, Telemetry, encode_frame, encode_sealed_frame,
};
use serde_json::Value;

const MINUTE: Duration = Duration::from_secs(60);
const VICTIM: &str = "e2e0000000000a11";

fn frame(message: &Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode_frame(message, &mut buf).expect("every test message fits a frame");
    buf[..n].to_vec()
}

fn uid(hex: &str) -> [u8; 8] {
    let mut uid = [0u8; 8];
    for (i, byte) in uid.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    uid
}

/// HELLO (with `ephemeral`) + ENROLL for `uid` with `public_key`, claiming another board than
/// the victim's.
fn hello_enroll(uid: [u8; 8], boot_id: u32, ephemeral: [u8; 32], public_key: [u8; 32]) -> Vec<u8> {
    let mut bytes = frame(&Message::Hello(Hello {
        uid,
        hw_rev: 99,
        fw: FwVersion {
            major: 6,
            minor: 6,
            patch: 6,
        },
        boot_id,
        lot: "EVIL".try_into().unwrap(),
        channels: [ChannelId::PRESSURE].into_iter().collect(),
        ephemeral,
    }));
    bytes.extend(frame(&Message::Enroll(Enroll { uid, public_key })));
    bytes
}

fn telemetry(seq: u32, window_start: u32, age_ms: u32) -> Message {
    Message::Telemetry(Telemetry {
        seq,
        window_start,
        age_ms,
        readings: [Reading {
            channel: ChannelId::SEQ,
            value: seq as i32,
        }]
        .into_iter()
        .collect(),
    })
}

fn health(uptime_s: u32) -> Message {
    Message::Health(Health {
        uptime_s,
        reset_reason: ResetReason::PowerOn,
        fw: FwVersion {
            major: 6,
            minor: 6,
            patch: 6,
        },
        stack_free_min: 0,
        rx_frames: 0,
        rx_errors: 0,
        tx_frames: 0,
        retransmits: 0,
        dropped_samples: 0,
        chip_temp_centi: 0,
    })
}

fn sealed(message: &Message, sealer: &mut Sealer) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode_sealed_frame(message, sealer, &mut buf).unwrap();
    buf[..n].to_vec()
}

/// The frames in a byte stream, decoded (not opened).
fn frames_in(bytes: &[u8]) -> Vec<(Received, Vec<u8>)> {
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == 0 {
            if let Some(Ok(received)) = decoder.push(b) {
                out.push((received, [&[0u8][..], &bytes[start..=i]].concat()));
            }
            start = i + 1;
        } else {
            decoder.push(b);
        }
    }
    out
}

/// A TELEMETRY frame with one bit of its last reading's value flipped and the CRC made good
/// again: what an attacker writes to change a reading (noise would fail the CRC).
fn flipped(frame: &[u8], bit: usize) -> Vec<u8> {
    let mut encoded = frame[1..frame.len() - 1].to_vec();
    let n = outpost_proto::cobs::decode_in_place(&mut encoded).unwrap();
    let mut body = encoded[..n - 4].to_vec();
    let at = body.len() - outpost_proto::wire::SEAL_LEN - 1 - bit / 8 % 3;
    body[at] ^= 1 << (bit % 8);
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode_raw_frame(&body, &mut buf).unwrap();
    buf[..n].to_vec()
}

/// A device of the attacker's that completed a handshake with the gateway, with its own key.
struct Rogue {
    sealer: Sealer,
}

impl Rogue {
    /// Says HELLO + ENROLL as `uid` on `pty` with its own key (seed `key`), answers the
    /// CHALLENGE, and waits for the ACCEPT.
    fn enrol(pty: &mut Pty, uid: [u8; 8], boot_id: u32, key: u8) -> Rogue {
        let key = SigningKey::from_bytes(&[key; 32]);
        let ephemeral = Ephemeral::from_random([boot_id as u8 ^ 0x5A; 32]);
        pty.write(&hello_enroll(
            uid,
            boot_id,
            ephemeral.public(),
            key.verifying_key().to_bytes(),
        ));
        let challenge = wait_for(MINUTE, "the gateway's CHALLENGE", || {
            pty.drain().into_iter().find_map(|m| match m {
                Message::Challenge(c) if c.boot_id == boot_id => Some(c),
                _ => None,
            })
        })
        .unwrap();
        let (proof, keys) = node_answer(&key, uid, boot_id, &ephemeral, &challenge, None).unwrap();
        pty.write(&frame(&Message::Proof(proof)));
        let (sealer, mut opener) = keys.node();
        wait_for(MINUTE, "the gateway's ACCEPT", || {
            pty.drain_raw()
                .into_iter()
                .filter_map(|(r, _)| r.open(&mut opener).ok())
                .any(|m| matches!(m, Message::Accept(_)))
                .then_some(())
        })
        .unwrap();
        Rogue { sealer }
    }

    fn send(&mut self, pty: &mut Pty, message: &Message) {
        let bytes = sealed(message, &mut self.sealer);
        pty.write(&bytes);
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A pseudo-terminal the test writes into as a device on the line: the daemon opens the slave
/// (published as `link`), the test holds the master.
struct Pty {
    master: File,
    /// Held so the line stays up; never read (the daemon reads the slave).
    _slave: File,
}

impl Pty {
    fn open(link: &Path) -> Pty {
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut termios = tcgetattr(&pty.slave).unwrap();
        cfmakeraw(&mut termios);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &termios).unwrap();
        let slave_path = nix::unistd::ttyname(&pty.slave).unwrap();
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&slave_path, link).unwrap();
        let master = File::from(pty.master);
        fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        Pty {
            master,
            _slave: File::from(pty.slave),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.master.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.drain();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("writing to the pty: {e}"),
            }
        }
    }

    /// Reads what the daemon sent: its messages, sealed ones not opened.
    fn drain(&mut self) -> Vec<Message> {
        self.drain_raw()
            .into_iter()
            .map(|(r, _)| r.into_unverified())
            .collect()
    }

    /// Reads what the daemon sent, as frames.
    fn drain_raw(&mut self) -> Vec<(Received, Vec<u8>)> {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.master.read(&mut buf) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        frames_in(&bytes)
    }
}

/// The enrolled node's line, as a bus: the simulator's pty on one side, the daemon's on the
/// other, every byte relayed both ways, and the hostile device's frames put on the wire between
/// two of the node's frames.
struct Bus {
    inject: mpsc::Sender<Vec<u8>>,
    /// Everything the node wrote to the gateway, as someone tapping the line records it.
    recorded: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    relay: Option<JoinHandle<()>>,
}

impl Bus {
    /// Relays between the simulator's line `node_link` and a new pty published as `gateway_link`.
    fn start(node_link: &Path, gateway_link: &Path) -> Bus {
        let mut gateway = Pty::open(gateway_link);
        let mut node = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(node_link)
            .unwrap();
        let mut termios = tcgetattr(&node).unwrap();
        cfmakeraw(&mut termios);
        tcsetattr(&node, SetArg::TCSANOW, &termios).unwrap();
        fcntl(&node, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let (inject, injected) = mpsc::channel::<Vec<u8>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let recording = Arc::clone(&recorded);
        let relay = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Whether the last byte passed to the daemon ended a frame: the place to inject.
            let mut at_boundary = true;
            let mut queued: Vec<Vec<u8>> = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                queued.extend(injected.try_iter());
                if at_boundary {
                    for bytes in queued.drain(..) {
                        gateway.write(&bytes);
                    }
                }
                let mut fds = [
                    PollFd::new(node.as_fd(), PollFlags::POLLIN),
                    PollFd::new(gateway.master.as_fd(), PollFlags::POLLIN),
                ];
                let _ = poll(&mut fds, PollTimeout::from(20u16));
                let node_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
                let gateway_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
                if node_ready
                    && let Ok(n) = node.read(&mut buf)
                    && n > 0
                {
                    gateway.write(&buf[..n]);
                    recording.lock().unwrap().extend_from_slice(&buf[..n]);
                    at_boundary = buf[n - 1] == 0;
                }
                if gateway_ready && let Ok(n) = gateway.master.read(&mut buf) {
                    let _ = node.write_all(&buf[..n]);
                }
            }
        });
        Bus {
            inject,
            recorded,
            stop,
            relay: Some(relay),
        }
    }

    fn inject(&self, bytes: Vec<u8>) {
        self.inject.send(bytes).unwrap();
    }

    /// The node's frames recorded so far.
    fn recorded(&self) -> Vec<(Received, Vec<u8>)> {
        frames_in(&self.recorded.lock().unwrap())
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(relay) = self.relay.take() {
            let _ = relay.join();
        }
    }
}

fn spawn_sim(uid: &str, link: &Path, rate_hz: u32) -> Proc {
    let mut cmd = Command::new(bin("outpost-node-sim"));
    cmd.arg("--pty")
        .arg(link)
        .args(["--uid", uid, "--seed", "7", "--rate", &rate_hz.to_string()]);
    Proc::spawn_on_link("victim node", &mut cmd, link).unwrap()
}

/// Every node, from every page of `/api/v1/nodes`.
fn all_nodes(site: &Site) -> Vec<Value> {
    let mut nodes = Vec::new();
    let mut path = "/api/v1/nodes?limit=2".to_owned();
    loop {
        let page = site.get(&path).unwrap();
        nodes.extend(page["nodes"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/nodes?limit=2&after={next}"),
            None => return nodes,
        }
    }
}

fn node(site: &Site, uid: &str) -> Value {
    all_nodes(site)
        .into_iter()
        .find(|n| n["uid"] == uid)
        .unwrap_or_else(|| panic!("node {uid} is not in the registry"))
}

/// What a node's row says about the board: what an impostor's HELLO claimed otherwise.
fn board(row: &Value) -> Value {
    let keys = [
        "hw_rev",
        "fw_version",
        "lot",
        "channels",
        "port",
        "enrolled",
        "first_seen_ms",
    ];
    keys.iter()
        .map(|k| ((*k).to_owned(), row[*k].clone()))
        .collect()
}

fn port(site: &Site, index: usize) -> Value {
    site.get("/api/v1/status").unwrap()["ports"][index].clone()
}

fn victim_seqs(site: &Site) -> Vec<i64> {
    site.stored_seqs()
        .unwrap()
        .into_iter()
        .find(|(uid, _)| uid == VICTIM)
        .map(|(_, seqs)| seqs)
        .unwrap_or_default()
}

fn vm_hwm_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A daemon with two lines: the victim node's, relayed as a bus the hostile device writes into,
/// and one of the hostile device's own. Returned once the victim has stored 40 samples.
struct Hostile {
    // Dropped in this order: the bus relay, the daemon (in `site`), the victim node.
    bus: Bus,
    own: Pty,
    site: Site,
    _victim: Proc,
}

impl Hostile {
    fn start() -> Hostile {
        let mut site = Site::with_config(Vec::new(), "").unwrap();
        let dir = site.dir.path().to_owned();
        let node_link: PathBuf = dir.join("ttyVICTIM");
        let bus_link = dir.join("ttyBUS");
        let own_link = dir.join("ttyHOSTILE");
        site.extra_config = format!(
            "[[serial]]\npath = \"{}\"\n\n[[serial]]\npath = \"{}\"\n",
            bus_link.display(),
            own_link.display()
        );
        rewrite_config(&site);
        let victim = spawn_sim(VICTIM, &node_link, 20);
        let bus = Bus::start(&node_link, &bus_link);
        let own = Pty::open(&own_link);
        site.start_gateway().unwrap();
        wait_for(MINUTE, "the victim's first 40 samples", || {
            (victim_seqs(&site).len() >= 40).then_some(())
        })
        .unwrap();
        Hostile {
            bus,
            own,
            site,
            _victim: victim,
        }
    }
}

#[test]
fn an_impostors_enroll_is_refused_counted_and_changes_neither_the_row_nor_the_link() {
    let mut h = Hostile::start();
    let site = &h.site;
    let before = board(&node(site, VICTIM));
    // The victim's uid and another key, held by the impostor: it completes the handshake on a
    // line of its own (proving it holds *a* key), and the store refuses the key.
    let impostor = SigningKey::from_bytes(&[0xee; 32]);
    let ephemeral = Ephemeral::from_random([0x0b; 32]);
    h.own.write(&hello_enroll(
        uid(VICTIM),
        0x0bad_0002,
        ephemeral.public(),
        impostor.verifying_key().to_bytes(),
    ));
    let challenge: Challenge = wait_for(MINUTE, "the CHALLENGE", || {
        h.own.drain().into_iter().find_map(|m| match m {
            Message::Challenge(c) => Some(c),
            _ => None,
        })
    })
    .unwrap();
    let (proof, _) = node_answer(
        &impostor,
        uid(VICTIM),
        0x0bad_0002,
        &ephemeral,
        &challenge,
        None,
    )
    .unwrap();
    h.own.write(&frame(&Message::Proof(proof)));
    wait_for(MINUTE, "the refusal counted", || {
        (port(site, 1)["refused"] == 1).then_some(())
    })
    .unwrap();
    assert!(
        !h.own
            .drain()
            .iter()
            .any(|m| matches!(m, Message::Accept(_))),
        "no ACCEPT for the impostor"
    );
    assert_eq!(
        board(&node(site, VICTIM)),
        before,
        "a refused ENROLL must leave the victim's registry row as it was"
    );
    // The victim stays attached: its samples go on, contiguous.
    let at_impostor = victim_seqs(site).len();
    wait_for(MINUTE, "the victim's samples after the impostor", || {
        (victim_seqs(site).len() >= at_impostor + 40).then_some(())
    })
    .unwrap();
    assert_contiguous(VICTIM, &victim_seqs(site), at_impostor + 40);
}

/// Everything a device on the victim's line can do without the victim's key: replay what it
/// recorded, claim the victim's uid with the victim's public key, flip bits in the victim's
/// frames (CRC made good), send sealed-looking frames with no session. None of it reaches the
/// store, each is counted for what it is, and the victim's samples stay contiguous.
#[test]
fn a_rogue_node_replaying_spoofing_or_flipping_bits_gets_nothing_into_the_store() {
    let mut h = Hostile::start();
    let site = &h.site;
    let stored_before = victim_seqs(site).len();
    let recorded = h.bus.recorded();
    let telemetry_frames: Vec<Vec<u8>> = recorded
        .iter()
        .filter(|(r, _)| matches!(r.message(), Message::Telemetry(_)))
        .map(|(_, bytes)| bytes.clone())
        .collect();
    assert!(
        telemetry_frames.len() >= 40,
        "{} recorded",
        telemetry_frames.len()
    );
    let victim_key = recorded
        .iter()
        .find_map(|(r, _)| match r.message() {
            Message::Enroll(e) => Some(e.public_key),
            _ => None,
        })
        .expect("the victim's ENROLL was on the line");

    // 1. Replays: ten of the victim's own frames of this session, as recorded.
    for bytes in telemetry_frames.iter().take(10) {
        h.bus.inject(bytes.clone());
    }
    // 2. Bits flipped in ten recorded frames, the CRC made good.
    for (i, bytes) in telemetry_frames.iter().skip(10).take(10).enumerate() {
        h.bus.inject(flipped(bytes, 13 * i + 17));
    }
    wait_for(
        MINUTE,
        "replays and forgeries counted on the victim's line",
        || {
            let p = port(site, 0);
            (p["replayed"].as_u64()? + p["auth_failed"].as_u64()? >= 20).then_some(())
        },
    )
    .unwrap();

    // 3. The victim's uid and public key (copied from its ENROLL) on a line of the rogue's own:
    //    it cannot sign the PROOF.
    let ephemeral = Ephemeral::from_random([0x77; 32]);
    h.own.write(&hello_enroll(
        uid(VICTIM),
        0x0bad_0007,
        ephemeral.public(),
        victim_key,
    ));
    let challenge: Challenge = wait_for(MINUTE, "the CHALLENGE to the spoofed uid", || {
        h.own.drain().into_iter().find_map(|m| match m {
            Message::Challenge(c) => Some(c),
            _ => None,
        })
    })
    .unwrap();
    let th = Transcript {
        uid: uid(VICTIM),
        boot_id: 0x0bad_0007,
        node_key: victim_key,
        node_ephemeral: ephemeral.public(),
        gateway_key: challenge.gateway_key,
        gateway_ephemeral: challenge.ephemeral,
    }
    .hash();
    let rogue_key = SigningKey::from_bytes(&[0x66; 32]);
    h.own.write(&frame(&Message::Proof(Proof {
        uid: uid(VICTIM),
        boot_id: 0x0bad_0007,
        signature: ed25519_dalek::Signer::sign(&rogue_key, &th).to_bytes(),
    })));
    // 4. The victim's frames replayed on the rogue's own line, where no session is open.
    for bytes in telemetry_frames.iter().take(5) {
        h.own.write(bytes);
    }
    wait_for(
        MINUTE,
        "the spoof and the sessionless frames counted",
        || {
            let p = port(site, 1);
            (p["proofs_failed"] == 1 && p["unauthenticated"] == 5).then_some(())
        },
    )
    .unwrap();

    let p0 = port(site, 0);
    let (replayed, forged) = (
        p0["replayed"].as_u64().unwrap(),
        p0["auth_failed"].as_u64().unwrap(),
    );
    println!(
        "victim's line: {replayed} replays, {forged} forged seals; rogue's line: {}",
        port(site, 1)
    );
    assert_eq!(replayed, 10, "every replay is told apart");
    assert_eq!(forged, 10, "every flipped bit fails its seal");
    // Per node, on the victim's row: its session's replays and forgeries and the failed PROOF.
    wait_for(MINUTE, "the victim's row counting them", || {
        let a = node(site, VICTIM)["anomalies"].clone();
        (a["replayed"] == 10 && a["auth_failed"] == 11).then_some(())
    })
    .unwrap();
    // Nothing of it in the store: the victim's samples go on, contiguous, no duplicate.
    wait_for(MINUTE, "the victim's samples after the attack", || {
        (victim_seqs(site).len() >= stored_before + 60).then_some(())
    })
    .unwrap();
    assert_contiguous(VICTIM, &victim_seqs(site), stored_before + 60);
    assert_eq!(all_nodes(site).len(), 1, "no row for anyone else");
}

#[test]
fn a_sample_claiming_to_be_49_days_old_is_not_stored_49_days_back() {
    let mut h = Hostile::start();
    // A node of the hostile device's own (its own key: it is enrolled as a newcomer), up for 30 s
    // by its HEALTH, claims age 0xFFFFFFFF ms.
    let hostile = "0bad0bad0bad0bad";
    let mut rogue = Rogue::enrol(&mut h.own, uid(hostile), 0x0bad_0003, 0x0b);
    rogue.send(&mut h.own, &health(30));
    let sent_at = unix_ms();
    rogue.send(&mut h.own, &telemetry(1, 1, u32::MAX));
    let site = &h.site;
    let conn = rusqlite::Connection::open(site.store_path()).unwrap();
    let ts: i64 = wait_for(MINUTE, "the hostile node's reading", || {
        conn.query_row(
            "SELECT r.ts_ms FROM readings r JOIN nodes n ON n.id = r.node_id WHERE n.uid = ?1",
            [hostile],
            |r| r.get(0),
        )
        .ok()
    })
    .unwrap();
    let days_back = (sent_at - ts) as f64 / 86_400_000.0;
    println!("forged age 0xFFFFFFFF ms: stored {days_back:.5} days back");
    assert!(
        sent_at - ts <= 35_000,
        "a node up for 30 s cannot send a sample {days_back:.1} days old"
    );
    wait_for(MINUTE, "the clamped age counted", || {
        (port(site, 1)["ages_clamped"] == 1
            && node(site, hostile)["anomalies"]["ages_clamped"] == 1)
            .then_some(())
    })
    .unwrap();
}

#[test]
fn a_forged_gap_is_refused_counted_and_the_nodes_later_samples_are_stored_contiguous() {
    let mut h = Hostile::start();
    // An enrolled node that misreports (its own key, its own session): between its samples it
    // claims "seq = window_start = 0xFFFFFFF0".
    let hostile = "0bad0bad0bad0bb1";
    let mut rogue = Rogue::enrol(&mut h.own, uid(hostile), 0x0bad_0004, 0x0c);
    rogue.send(&mut h.own, &health(3600));
    for seq in 1..=10 {
        rogue.send(&mut h.own, &telemetry(seq, 1, 0));
    }
    rogue.send(&mut h.own, &telemetry(0xFFFF_FFF0, 0xFFFF_FFF0, 0));
    for seq in 11..=20 {
        rogue.send(&mut h.own, &telemetry(seq, 1, 0));
    }
    let site = &h.site;
    let seqs = |site: &Site| {
        site.stored_seqs()
            .unwrap()
            .into_iter()
            .find(|(u, _)| u == hostile)
            .map(|(_, s)| s)
            .unwrap_or_default()
    };
    wait_for(MINUTE, "the node's samples after the forged gap", || {
        (seqs(site).len() >= 20).then_some(())
    })
    .unwrap();
    assert_contiguous(hostile, &seqs(site), 20);
    let row = node(site, hostile);
    assert_eq!(row["samples_lost"], 0, "{row}");
    wait_for(MINUTE, "the forged gap counted", || {
        (port(site, 1)["gaps_refused"] == 1
            && node(site, hostile)["anomalies"]["gaps_refused"] == 1)
            .then_some(())
    })
    .unwrap();
    // And a forged gap on the victim's line, by someone without its key, does not even open.
    let at_gap = victim_seqs(site).len();
    let mut outsider = {
        let mut buf = [0u8; outpost_proto::wire::MAX_MESSAGE_LEN];
        let n = telemetry(0xFFFF_FFF0, 0xFFFF_FFF0, 0)
            .emit(&mut buf)
            .unwrap();
        buf[n..n + outpost_proto::wire::SEAL_LEN].fill(0x42);
        let mut out = [0u8; MAX_FRAME_LEN];
        let len = encode_raw_frame(&buf[..n + outpost_proto::wire::SEAL_LEN], &mut out).unwrap();
        out[..len].to_vec()
    };
    h.bus.inject(std::mem::take(&mut outsider));
    wait_for(MINUTE, "the victim's samples after it", || {
        (victim_seqs(site).len() >= at_gap + 40).then_some(())
    })
    .unwrap();
    assert_contiguous(VICTIM, &victim_seqs(site), at_gap + 40);
    assert_eq!(
        port(site, 0)["gaps_refused"],
        0,
        "it never got as far as the gap rule"
    );
    assert_eq!(port(site, 0)["auth_failed"], 1);
    assert_eq!(node(site, VICTIM)["samples_lost"], 0);
}

#[test]
fn a_flood_of_new_uids_is_capped_counted_and_alerted_and_the_registry_stays_small() {
    let mut site = Site::with_config(Vec::new(), "").unwrap();
    let dir = site.dir.path().to_owned();
    let node_link = dir.join("ttyVICTIM");
    let flood_link = dir.join("ttyFLOOD");
    site.extra_config = format!(
        "[[serial]]\npath = \"{}\"\n\n[[serial]]\npath = \"{}\"\n# The flood is not held back by the frame rate: the handshake rate and the newcomer budget must do it.\nmax_frames_per_sec = 10000\n",
        node_link.display(),
        flood_link.display()
    );
    rewrite_config(&site);
    let _victim = spawn_sim(VICTIM, &node_link, 20);
    let mut flood = Pty::open(&flood_link);
    site.start_gateway().unwrap();
    wait_for(MINUTE, "the site's node enrolled", || {
        (victim_seqs(&site).len() >= 20).then_some(())
    })
    .unwrap();

    // The flooder holds a key for every uid it makes up, and answers every CHALLENGE it gets.
    let key = SigningKey::from_bytes(&[0xf1; 32]);
    let mut ephemerals: HashMap<u32, ([u8; 8], Ephemeral)> = HashMap::new();
    let mut answered = 0u32;
    const UIDS: u32 = 5000;
    let started = Instant::now();
    let mut answer = |flood: &mut Pty, ephemerals: &mut HashMap<u32, ([u8; 8], Ephemeral)>| {
        for message in flood.drain() {
            if let Message::Challenge(c) = message
                && let Some((uid, ephemeral)) = ephemerals.remove(&c.boot_id)
                && let Ok((proof, _)) = node_answer(&key, uid, c.boot_id, &ephemeral, &c, None)
            {
                flood.write(&frame(&Message::Proof(proof)));
                answered += 1;
            }
        }
    };
    for i in 0..UIDS {
        let uid = self::uid(&format!("f1{i:014x}"));
        let ephemeral = Ephemeral::from_random([(i % 251) as u8 + 1; 32]);
        flood.write(&hello_enroll(
            uid,
            i,
            ephemeral.public(),
            key.verifying_key().to_bytes(),
        ));
        ephemerals.insert(i, (uid, ephemeral));
        answer(&mut flood, &mut ephemerals);
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        answer(&mut flood, &mut ephemerals);
    }
    println!(
        "flood: {UIDS} new uids written in {:.1} s, {answered} challenges answered",
        started.elapsed().as_secs_f64()
    );
    // Every uid is held back by the handshake rate, refused by the store, ignored while another
    // registration is in flight, or dropped over the frame rate: each counted.
    let (refused, busy) = wait_for(MINUTE, "refusals counted", || {
        let port = port(&site, 1);
        let refused = port["newcomers_refused"].as_u64()?;
        let busy = port["enrolls_busy"].as_u64()?
            + port["handshakes_refused"].as_u64()?
            + port["rate_limited"].as_u64()? / 2;
        (refused >= 1 && refused + busy >= u64::from(UIDS) / 2).then_some((refused, busy))
    })
    .unwrap();
    let status = site.get("/api/v1/status").unwrap();
    let alerts = status["store"]["alerts"].as_array().unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a["kind"] == "newcomers_refused" && a["state"] == "firing"),
        "{alerts:?}"
    );

    let nodes = all_nodes(&site);
    let flooders = nodes
        .iter()
        .filter(|n| n["uid"].as_str().unwrap().starts_with("f1"))
        .count();
    println!(
        "flood: {flooders} of {UIDS} uids enrolled, {refused} refused by the store, {busy} held back by the handshake rate, busy or over the frame rate, {} nodes in the registry",
        nodes.len()
    );
    assert!(
        flooders <= 5,
        "only the newcomer budget: {flooders} enrolled"
    );
    assert_eq!(status["node_count"], nodes.len());
    assert!(nodes.iter().any(|n| n["uid"] == VICTIM));

    // The site's own node goes on.
    let at_flood = victim_seqs(&site).len();
    wait_for(MINUTE, "the site's node's samples after the flood", || {
        (victim_seqs(&site).len() >= at_flood + 20).then_some(())
    })
    .unwrap();
    assert_contiguous(VICTIM, &victim_seqs(&site), at_flood + 20);

    // A page is small, and bounded whatever the client asks.
    let (status, body) =
        outpost_e2e::http(site.api, "GET", "/api/v1/nodes?limit=1000000", None, None).unwrap();
    assert_eq!(status, 200);
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert!(page["nodes"].as_array().unwrap().len() <= 500);
    println!("GET /api/v1/nodes?limit=1000000: {} bytes", body.len());
    assert!(body.len() < 64 * 1024, "{} bytes", body.len());
    let first = http_get_json(site.api, "/api/v1/nodes?limit=1").unwrap();
    assert_eq!(first["nodes"].as_array().unwrap().len(), 1);
    assert!(first["next"].is_string(), "{first}");

    let pid = site.gateway.as_ref().unwrap().pid();
    let hwm = vm_hwm_kib(pid);
    println!("daemon VmHWM after the flood: {hwm} kB");
    assert!(hwm < 64 * 1024, "daemon peak RSS {hwm} kB");
}

/// Appends the site's `extra_config` to its config file.
fn rewrite_config(site: &Site) {
    let text = std::fs::read_to_string(site.config_path()).unwrap();
    std::fs::write(site.config_path(), format!("{text}\n{}", site.extra_config)).unwrap();
}
