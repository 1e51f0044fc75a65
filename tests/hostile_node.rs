//! End-to-end: a hostile device on the serial bus. A real `outpost` daemon, a real simulated
//! node, and frames crafted with `outpost-proto` written where a device on the bus could write
//! them: into the enrolled node's own line (a bus the test relays, injecting between the node's
//! frames) and on lines of their own.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use outpost_e2e::{Proc, Site, assert_contiguous, bin, http_get_json, wait_for};
use outpost_proto::frame::MAX_FRAME_LEN;
use outpost_proto::{
    ChannelId, Enroll, FrameDecoder, FwVersion, Health, Hello, Message, Reading, ResetReason,
    Telemetry, encode_frame,
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

/// HELLO + ENROLL for `uid` with `key`, claiming another board than the victim's.
fn hello_enroll(uid: [u8; 8], boot_id: u32, key: [u8; 32]) -> Vec<u8> {
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
    }));
    bytes.extend(frame(&Message::Enroll(Enroll {
        uid,
        public_key: key,
    })));
    bytes
}

fn telemetry(seq: u32, window_start: u32, age_ms: u32) -> Vec<u8> {
    frame(&Message::Telemetry(Telemetry {
        seq,
        window_start,
        age_ms,
        readings: [Reading {
            channel: ChannelId::SEQ,
            value: seq as i32,
        }]
        .into_iter()
        .collect(),
    }))
}

fn health(uptime_s: u32) -> Vec<u8> {
    frame(&Message::Health(Health {
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
    }))
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

    /// Reads what the daemon sent, decoded.
    fn drain(&mut self) -> Vec<Message> {
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend(buf[..n].iter().filter_map(|&b| decoder.push(b)?.ok()));
        }
        out
    }
}

/// The enrolled node's line, as a bus: the simulator's pty on one side, the daemon's on the
/// other, every byte relayed both ways, and the hostile device's frames put on the wire between
/// two of the node's frames.
struct Bus {
    inject: mpsc::Sender<Vec<u8>>,
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
                    at_boundary = buf[n - 1] == 0;
                }
                if gateway_ready && let Ok(n) = gateway.master.read(&mut buf) {
                    let _ = node.write_all(&buf[..n]);
                }
            }
        });
        Bus {
            inject,
            stop,
            relay: Some(relay),
        }
    }

    fn inject(&self, bytes: Vec<u8>) {
        self.inject.send(bytes).unwrap();
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
    let _ = std::fs::remove_file(link);
    let mut cmd = Command::new(bin("outpost-node-sim"));
    cmd.arg("--pty")
        .arg(link)
        .args(["--uid", uid, "--seed", "7", "--rate", &rate_hz.to_string()]);
    let node = Proc::spawn("victim node", &mut cmd).unwrap();
    wait_for(Duration::from_secs(10), "the node's pty link", || {
        link.exists().then_some(())
    })
    .unwrap();
    node
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
    // The victim's uid and another key: on the victim's own bus, and on a line of its own.
    h.bus
        .inject(hello_enroll(uid(VICTIM), 0x0bad_0001, [0xee; 32]));
    h.own
        .write(&hello_enroll(uid(VICTIM), 0x0bad_0002, [0xee; 32]));
    wait_for(MINUTE, "both refusals counted", || {
        (port(site, 0)["refused"] == 1 && port(site, 1)["refused"] == 1).then_some(())
    })
    .unwrap();
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

#[test]
fn a_sample_claiming_to_be_49_days_old_is_not_stored_49_days_back() {
    let mut h = Hostile::start();
    // A node of the hostile device's own, up for 30 s by its HEALTH, claims age 0xFFFFFFFF ms.
    let hostile = "0bad0bad0bad0bad";
    h.own
        .write(&hello_enroll(uid(hostile), 0x0bad_0003, [0x0b; 32]));
    wait_for(MINUTE, "the hostile node's ACCEPT", || {
        h.own
            .drain()
            .iter()
            .any(|m| matches!(m, Message::Accept(_)))
            .then_some(())
    })
    .unwrap();
    h.own.write(&health(30));
    let sent_at = unix_ms();
    h.own.write(&telemetry(1, 1, u32::MAX));
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
    let h = Hostile::start();
    let site = &h.site;
    let before = board(&node(site, VICTIM));
    // Between two of the victim's frames: "seq = window_start = 0xFFFFFFF0".
    let at_gap = victim_seqs(site).len();
    h.bus.inject(telemetry(0xFFFF_FFF0, 0xFFFF_FFF0, 0));
    wait_for(MINUTE, "the victim's samples after the forged gap", || {
        (victim_seqs(site).len() >= at_gap + 60).then_some(())
    })
    .unwrap();
    assert_contiguous(VICTIM, &victim_seqs(site), at_gap + 60);
    let row = node(site, VICTIM);
    println!(
        "victim after the forged gap: samples_lost {}",
        row["samples_lost"]
    );
    assert_eq!(row["samples_lost"], 0, "{row}");
    wait_for(MINUTE, "the forged gap counted", || {
        (port(site, 0)["gaps_refused"] == 1 && node(site, VICTIM)["anomalies"]["gaps_refused"] == 1)
            .then_some(())
    })
    .unwrap();
    assert_eq!(board(&node(site, VICTIM)), before);
}

#[test]
fn a_flood_of_new_uids_is_capped_counted_and_alerted_and_the_registry_stays_small() {
    let mut site = Site::with_config(Vec::new(), "").unwrap();
    let dir = site.dir.path().to_owned();
    let node_link = dir.join("ttyVICTIM");
    let flood_link = dir.join("ttyFLOOD");
    site.extra_config = format!(
        "[[serial]]\npath = \"{}\"\n\n[[serial]]\npath = \"{}\"\n# The flood is not held back by the frame rate: the newcomer budget must do it.\nmax_frames_per_sec = 10000\n",
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

    const UIDS: u32 = 5000;
    let started = Instant::now();
    for i in 0..UIDS {
        let uid = format!("f1{i:014x}");
        flood.write(&hello_enroll(self::uid(&uid), i, [0xf1; 32]));
        flood.drain();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    println!(
        "flood: {UIDS} new uids written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Every uid's ENROLL is refused by the store, ignored while another registration is in
    // flight, or dropped over the frame rate: each counted.
    let (refused, busy) = wait_for(MINUTE, "refusals counted", || {
        let port = port(&site, 1);
        let refused = port["newcomers_refused"].as_u64()?;
        let busy = port["enrolls_busy"].as_u64()? + port["rate_limited"].as_u64()? / 2;
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
        "flood: {flooders} of {UIDS} uids enrolled, {refused} refused by the store, {busy} ignored while busy or over the frame rate, {} nodes in the registry",
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
