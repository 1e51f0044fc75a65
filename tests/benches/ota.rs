//! Node firmware transfer (OTA) end to end (docs/BENCHMARKS.md, "Node firmware updates"): the
//! release gateway (`outpost run`) and simulated nodes booting from flash files
//! (`outpost-node-sim --flash`), a 256 KiB image signed with the shipped tools and rolled out
//! with `outpost rollout start`. Between each node and the gateway sits a byte-counting relay
//! (a pty the gateway opens, the node's pty on the other side) that decodes the frames going
//! both ways, so every figure is read off the line itself:
//!
//! - **link efficiency**: image bytes / every byte the gateway wrote on the node's line from the
//!   first byte of its OTA_OFFER to the node's OTA_STATUS `verified` (chunks, the offer, controls
//!   and the telemetry ACKs sent meanwhile), with 1024- and 512-byte chunks;
//! - **time for the image**: from the OFFER to the node's `verified`, at 921,600 and 115,200 baud
//!   (and at 921,600 with the simulator's flash taking the W25Q16JV's datasheet times);
//! - **eight nodes on eight ports at once** (`--canary 8`: the canary stage takes all eight)
//!   against one node: first OFFER to last `verified`, the gateway's CPU time
//!   (`/proc/PID/stat`) and resident memory (VmRSS sampled every 50 ms, VmHWM) over that span,
//!   beside the same span just before the rollout was started (telemetry only);
//! - **telemetry meanwhile**: samples committed per node (the gateway's ACK `upto`, read off the
//!   line) during the transfer against the same span before the rollout was started.
//!
//! `cargo bench -p outpost-e2e --bench ota` (about 5 minutes).
//!
//! The gateway is not changed: its port telemetry has no bytes-written counter, so the bytes
//! are counted on the line. The relays run in this process (their CPU is not the gateway's).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use outpost_e2e::{NodeSpec, Site, bin, cpu_seconds, run_ok, wait_for};
use outpost_proto::cobs;

const TOKEN: &str = "ota-bench-technician-token-0123456789";
const IMAGE_KIB: usize = 256;
const IMAGE_BYTES: usize = IMAGE_KIB * 1024;
/// The nodes' sampling rate.
const RATE_HZ: f64 = 20.0;
/// The share of the line the gateway's pacer gives chunks by default (`[ota] share`).
const SHARE: f64 = 0.95;

// Message types (docs/node-link.md §2).
const TELEMETRY: u8 = 0x04;
const ACK: u8 = 0x05;
const NACK: u8 = 0x09;
const OFFER: u8 = 0x0C;
const CHUNK: u8 = 0x0D;
const STATUS: u8 = 0x0E;
const CONTROL: u8 = 0x0F;
/// OTA_STATUS phases: verified, installing.
const VERIFIED: u32 = 2;
const INSTALLING: u32 = 3;

fn main() -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("outpost-bench-ota-")
        .tempdir()?;
    let fleet = Fleet::new(tmp.path())?;
    let factory = fleet.image("1.0.0")?;
    let next = fleet.image("1.1.0")?;
    println!(
        "image: {} bytes (signed 1.1.0 over factory 1.0.0)",
        IMAGE_BYTES
    );

    let scenarios = [
        Scenario::one("1 node, 921,600 baud, 1024-byte chunks", 921_600, 1024),
        Scenario::one("1 node, 921,600 baud, 512-byte chunks", 921_600, 512),
        Scenario::one("1 node, 115,200 baud, 1024-byte chunks", 115_200, 1024),
        Scenario {
            flash_timing: Some("w25q16"),
            ..Scenario::one(
                "1 node, 921,600 baud, 1024-byte chunks, flash at W25Q16JV times",
                921_600,
                1024,
            )
        },
        Scenario {
            nodes: 8,
            ..Scenario::one(
                "8 nodes on 8 ports, 921,600 baud, 1024-byte chunks",
                921_600,
                1024,
            )
        },
    ];
    let mut results = Vec::new();
    for (k, scenario) in scenarios.iter().enumerate() {
        eprintln!("== {}", scenario.name);
        let measured = measure(&fleet, &factory, &next, scenario, k)?;
        print_one(scenario, &measured);
        results.push(measured);
    }
    print_tables(&scenarios, &results);
    Ok(())
}

/// One measured rollout.
struct Scenario {
    name: &'static str,
    nodes: usize,
    baud: u32,
    chunk: usize,
    /// The simulator's `--flash-timing` (instant unless given).
    flash_timing: Option<&'static str>,
}

impl Scenario {
    fn one(name: &'static str, baud: u32, chunk: usize) -> Scenario {
        Scenario {
            name,
            nodes: 1,
            baud,
            chunk,
            flash_timing: None,
        }
    }

    /// The line's bytes per second (8N1: ten bits a byte).
    fn line_rate(&self) -> f64 {
        f64::from(self.baud) / 10.0
    }

    /// The image's bytes alone at the line's rate.
    fn line_limit_s(&self) -> f64 {
        IMAGE_BYTES as f64 / self.line_rate()
    }

    /// Telemetry before the rollout: at least the transfer's expected time, so the span before
    /// it is as long as the span during it.
    fn preroll(&self) -> Duration {
        Duration::from_secs_f64(self.line_limit_s() * 1.25 + 3.0)
    }
}

/// The fleet's firmware key and the images made with it.
struct Fleet {
    dir: PathBuf,
}

impl Fleet {
    fn new(dir: &Path) -> Result<Fleet> {
        let dir = dir.join("fleet");
        std::fs::create_dir_all(&dir)?;
        run_ok(
            Command::new(bin("outpost"))
                .args(["firmware", "keygen", "--out"])
                .arg(dir.join("keys")),
        )?;
        Ok(Fleet { dir })
    }

    fn public_key(&self) -> PathBuf {
        self.dir.join("keys/firmware.pub")
    }

    /// A 256 KiB simulator image of `version`, signed for hardware revision 1.
    fn image(&self, version: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("node-{version}.bin"));
        run_ok(
            Command::new(bin("outpost-node-sim"))
                .args(["make-image", "--version", version, "--size"])
                .arg(format!("{IMAGE_KIB}K"))
                .arg(&path),
        )?;
        run_ok(
            Command::new(bin("outpost"))
                .args(["firmware", "sign", "--key"])
                .arg(self.dir.join("keys/firmware.key"))
                .args(["--version", version, "--hw-rev", "1"])
                .arg(&path),
        )?;
        Ok(path)
    }

    /// A fresh node flash with `image` in its ACTIVE slot.
    fn flash(&self, image: &Path, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("flash-{name}.bin"));
        let _ = std::fs::remove_file(&path);
        run_ok(
            Command::new(bin("outpost-node-sim"))
                .arg("make-flash")
                .arg("--image")
                .arg(image)
                .arg(&path),
        )?;
        Ok(path)
    }
}

// ---------------------------------------------------------------------------------------------
// The relay: a pty for the gateway, the node's pty on the other side, every frame decoded.

/// One frame seen on the line.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When the relay read its closing delimiter.
    at: Instant,
    kind: u8,
    /// Byte offsets on this direction of the line: its leading delimiter, and past its closing one.
    start: u64,
    end: u64,
    /// OTA_STATUS: the phase; ACK: `upto`; OTA_CHUNK: the index.
    field: u32,
}

impl Seen {
    fn len(&self) -> u64 {
        self.end - self.start
    }
}

#[derive(Debug, Default)]
struct Tap {
    /// Gateway → node.
    down: Vec<Seen>,
    /// Node → gateway.
    up: Vec<Seen>,
}

/// Splits a byte stream into frames (docs/node-link.md §1) and decodes their type.
#[derive(Default)]
struct Parser {
    offset: u64,
    body_start: u64,
    body: Vec<u8>,
}

impl Parser {
    fn push(&mut self, at: Instant, bytes: &[u8], out: &mut Vec<Seen>) {
        for &b in bytes {
            self.offset += 1;
            if b != 0 {
                if self.body.is_empty() {
                    self.body_start = self.offset - 1;
                }
                self.body.push(b);
                continue;
            }
            if self.body.is_empty() {
                continue; // the leading delimiter, or an idle line
            }
            if let Ok(n) = cobs::decode_in_place(&mut self.body)
                && n >= 6
            {
                let m = &self.body[..n - 4]; // without the CRC
                let kind = m[1];
                let field = match kind {
                    STATUS if m.len() > 6 => u32::from(m[6]),
                    ACK if m.len() >= 10 => u32::from_le_bytes([m[6], m[7], m[8], m[9]]),
                    CHUNK if m.len() >= 8 => u32::from(u16::from_le_bytes([m[6], m[7]])),
                    _ => 0,
                };
                out.push(Seen {
                    at,
                    kind,
                    start: self.body_start.saturating_sub(1),
                    end: self.offset,
                    field,
                });
            }
            self.body.clear();
        }
    }
}

struct Relay {
    /// The pty the gateway opens.
    path: PathBuf,
    tap: Arc<Mutex<Tap>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Held open so reads of the master wait for the gateway rather than fail with EIO.
    _slave: OwnedFd,
}

#[derive(Clone, Copy)]
enum Dir {
    Down,
    Up,
}

impl Relay {
    fn new(node_link: &Path) -> Result<Relay> {
        let pty = nix::pty::openpty(None, None)?;
        let mut termios = tcgetattr(&pty.slave)?;
        cfmakeraw(&mut termios);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &termios)?;
        let path = nix::unistd::ttyname(&pty.slave)?;
        let node = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(node_link)
            .with_context(|| format!("open {}", node_link.display()))?;
        let mut termios = tcgetattr(&node)?;
        cfmakeraw(&mut termios);
        tcsetattr(&node, SetArg::TCSANOW, &termios)?;
        let master = File::from(pty.master);
        let tap = Arc::new(Mutex::new(Tap::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = vec![
            pump(
                master.try_clone()?,
                node.try_clone()?,
                Dir::Down,
                &tap,
                &stop,
            ),
            pump(node, master, Dir::Up, &tap, &stop),
        ];
        Ok(Relay {
            path,
            tap,
            stop,
            threads,
            _slave: pty.slave,
        })
    }

    fn frames(&self, dir: Dir) -> Vec<Seen> {
        let tap = self.tap.lock().unwrap_or_else(PoisonError::into_inner);
        match dir {
            Dir::Down => tap.down.clone(),
            Dir::Up => tap.up.clone(),
        }
    }

    /// When the node first said `verified` (or `installing`) after `after`.
    fn verified_after(&self, after: Instant) -> Option<Instant> {
        let tap = self.tap.lock().unwrap_or_else(PoisonError::into_inner);
        tap.up
            .iter()
            .find(|s| s.at >= after && s.kind == STATUS && matches!(s.field, VERIFIED | INSTALLING))
            .map(|s| s.at)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Copies `from` to `to` as bytes come, recording the frames.
fn pump(
    mut from: File,
    mut to: File,
    dir: Dir,
    tap: &Arc<Mutex<Tap>>,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<()> {
    let tap = Arc::clone(tap);
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let mut parser = Parser::default();
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(_) => return,
            }
            let n = match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return, // EIO: the node's end closed
            };
            let at = Instant::now();
            if to.write_all(&buf[..n]).is_err() {
                return;
            }
            parser.push(at, &buf[..n], &mut seen);
            if !seen.is_empty() {
                let mut tap = tap.lock().unwrap_or_else(PoisonError::into_inner);
                match dir {
                    Dir::Down => tap.down.append(&mut seen),
                    Dir::Up => tap.up.append(&mut seen),
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The gateway's CPU and memory, sampled.

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cpu_s: f64,
    bench_cpu_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn proc_status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn sample(pid: i32) -> Sample {
    Sample {
        at: Instant::now(),
        cpu_s: cpu_seconds(pid),
        bench_cpu_s: cpu_seconds(std::process::id() as i32),
        rss_kib: proc_status_kib(pid, "VmRSS:"),
        hwm_kib: proc_status_kib(pid, "VmHWM:"),
    }
}

struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(pid: i32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                samples.push(sample(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            samples.push(sample(pid));
            samples
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}

/// The last sample at or before `t` (the first one if none).
fn sample_at(samples: &[Sample], t: Instant) -> Sample {
    samples
        .iter()
        .rev()
        .find(|s| s.at <= t)
        .or(samples.first())
        .copied()
        .expect("samples")
}

// ---------------------------------------------------------------------------------------------
// One rollout, measured.

/// What one node's line showed.
#[derive(Debug, Clone)]
struct Transfer {
    offer_at: Instant,
    last_chunk_at: Instant,
    verified_at: Instant,
    /// Every byte the gateway wrote from the OFFER's first byte to `verified`.
    bytes: u64,
    chunk_frames: usize,
    chunk_bytes: u64,
    distinct_chunks: usize,
    /// Bytes of the OFFER, OTA_CONTROLs, ACKs and NACKs, and anything else, in the same span.
    offer_bytes: u64,
    control_bytes: u64,
    ack_bytes: u64,
    other_bytes: u64,
    /// Samples committed (ACK `upto`) during the transfer, and over the same span before it.
    committed_during: Option<i64>,
    committed_before: Option<i64>,
    /// TELEMETRY frames the node sent during the transfer, and the same span before.
    telemetry_during: usize,
    telemetry_before: usize,
    /// The median time between two chunks' frames on the line.
    median_chunk_gap: Duration,
}

impl Transfer {
    fn seconds(&self) -> f64 {
        (self.verified_at - self.offer_at).as_secs_f64()
    }

    fn efficiency(&self) -> f64 {
        IMAGE_BYTES as f64 / self.bytes as f64
    }

    /// The image over the transfer's own frames (chunks, OFFER, controls): no ACKs.
    fn framing_efficiency(&self) -> f64 {
        IMAGE_BYTES as f64 / (self.chunk_bytes + self.offer_bytes + self.control_bytes) as f64
    }

    /// The transfer's own frames at the pacer's rate, `share` of the line.
    fn paced_limit_s(&self, scenario: &Scenario) -> f64 {
        (self.chunk_bytes + self.offer_bytes) as f64 / (SHARE * scenario.line_rate())
    }

    /// What one chunk's frame takes at the pacer's rate.
    fn paced_chunk_gap(&self, scenario: &Scenario) -> Duration {
        Duration::from_secs_f64(
            self.chunk_bytes as f64 / self.chunk_frames as f64 / (SHARE * scenario.line_rate()),
        )
    }
}

struct Measured {
    transfers: Vec<Transfer>,
    /// `outpost rollout start` to the first OFFER on a line.
    start_to_offer_s: f64,
    /// `outpost rollout start` to the rollout `done`.
    start_to_done_s: f64,
    final_state: String,
    /// The gateway's CPU seconds from the first OFFER to the last `verified`, and over the same
    /// span just before.
    cpu_during_s: f64,
    cpu_before_s: f64,
    /// This process's CPU (the relays, the sampler) over the same span as `cpu_during_s`.
    bench_cpu_during_s: f64,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    hwm_before_kib: u64,
    hwm_after_kib: u64,
}

impl Measured {
    fn first_offer(&self) -> Instant {
        self.transfers
            .iter()
            .map(|t| t.offer_at)
            .min()
            .expect("a transfer")
    }

    fn last_verified(&self) -> Instant {
        self.transfers
            .iter()
            .map(|t| t.verified_at)
            .max()
            .expect("a transfer")
    }

    fn span_s(&self) -> f64 {
        (self.last_verified() - self.first_offer()).as_secs_f64()
    }
}

/// The `upto` of the last ACK at or before `t`.
fn upto_at(down: &[Seen], t: Instant) -> Option<i64> {
    down.iter()
        .rev()
        .find(|s| s.kind == ACK && s.at <= t)
        .map(|s| i64::from(s.field))
}

fn transfer_of(relay: &Relay, after: Instant) -> Result<Transfer> {
    let down = relay.frames(Dir::Down);
    let up = relay.frames(Dir::Up);
    let offer = *down
        .iter()
        .find(|s| s.at >= after && s.kind == OFFER)
        .context("no OTA_OFFER on the line")?;
    let verified_at = up
        .iter()
        .find(|s| s.at >= offer.at && s.kind == STATUS && matches!(s.field, VERIFIED | INSTALLING))
        .context("no OTA_STATUS verified on the line")?
        .at;
    let window: Vec<&Seen> = down
        .iter()
        .filter(|s| s.start >= offer.start && s.at <= verified_at)
        .collect();
    let bytes = window.last().map_or(0, |s| s.end) - offer.start;
    let sum = |kinds: &[u8]| -> u64 {
        window
            .iter()
            .filter(|s| kinds.contains(&s.kind))
            .map(|s| s.len())
            .sum()
    };
    let chunks: Vec<&&Seen> = window.iter().filter(|s| s.kind == CHUNK).collect();
    let mut indices: Vec<u32> = chunks.iter().map(|s| s.field).collect();
    indices.sort_unstable();
    indices.dedup();
    let last_chunk_at = chunks.last().map_or(offer.at, |s| s.at);
    let mut gaps: Vec<Duration> = chunks.windows(2).map(|w| w[1].at - w[0].at).collect();
    gaps.sort_unstable();
    let median_chunk_gap = gaps.get(gaps.len() / 2).copied().unwrap_or_default();
    // The same span just before the rollout was started (`after`): telemetry alone.
    let span = verified_at - offer.at;
    let before = after.checked_sub(span);
    let committed_during = upto_at(&down, verified_at)
        .zip(upto_at(&down, offer.at))
        .map(|(b, a)| b - a);
    let committed_before = before
        .and_then(|b| upto_at(&down, after).zip(upto_at(&down, b)))
        .map(|(b, a)| b - a);
    let telemetry_in = |from: Instant, to: Instant| {
        up.iter()
            .filter(|s| s.kind == TELEMETRY && s.at >= from && s.at < to)
            .count()
    };
    Ok(Transfer {
        offer_at: offer.at,
        last_chunk_at,
        verified_at,
        bytes,
        chunk_frames: chunks.len(),
        chunk_bytes: sum(&[CHUNK]),
        distinct_chunks: indices.len(),
        offer_bytes: sum(&[OFFER]),
        control_bytes: sum(&[CONTROL]),
        ack_bytes: sum(&[ACK, NACK]),
        other_bytes: window
            .iter()
            .filter(|s| ![CHUNK, OFFER, CONTROL, ACK, NACK].contains(&s.kind))
            .map(|s| s.len())
            .sum(),
        committed_during,
        committed_before,
        telemetry_during: telemetry_in(offer.at, verified_at),
        telemetry_before: before.map_or(0, |b| telemetry_in(b, after)),
        median_chunk_gap,
    })
}

/// A site of `scenario.nodes` nodes on `factory`, each behind a relay.
fn site(
    fleet: &Fleet,
    factory: &Path,
    scenario: &Scenario,
    k: usize,
) -> Result<(Site, Vec<Relay>)> {
    let mut specs = Vec::new();
    for i in 0..scenario.nodes {
        let mut spec = NodeSpec::new(i);
        spec.rate_hz = RATE_HZ;
        spec.sim_args = vec![
            "--flash".into(),
            fleet
                .flash(factory, &format!("{k}-{i}"))?
                .display()
                .to_string(),
            "--fleet-key".into(),
            fleet.public_key().display().to_string(),
            "--baud".into(),
            scenario.baud.to_string(),
        ];
        if let Some(timing) = scenario.flash_timing {
            spec.sim_args
                .extend(["--flash-timing".into(), timing.into()]);
        }
        spec.port_config = format!("baud = {}", scenario.baud);
        specs.push(spec);
    }
    let extra = format!(
        "[ota]\nfirmware_keys = [\"{}\"]\nchunk_bytes = {}\n",
        fleet.public_key().display(),
        scenario.chunk
    );
    let mut site = Site::with_config(specs, &extra)?;
    site.set_technician_token(TOKEN)?;
    // The gateway opens each relay's pty instead of the node's.
    let mut relays = Vec::new();
    let mut config = std::fs::read_to_string(site.config_path())?;
    for i in 0..scenario.nodes {
        let relay = Relay::new(&site.link(i))?;
        let from = format!("path = \"{}\"", site.link(i).display());
        ensure!(config.contains(&from), "{from} not in the config");
        config = config.replace(&from, &format!("path = \"{}\"", relay.path.display()));
        relays.push(relay);
    }
    std::fs::write(site.config_path(), config)?;
    Ok((site, relays))
}

fn measure(
    fleet: &Fleet,
    factory: &Path,
    next: &Path,
    scenario: &Scenario,
    k: usize,
) -> Result<Measured> {
    let (mut site, relays) = site(fleet, factory, scenario, k)?;
    site.start_gateway()?;
    let pid = site.gateway.as_ref().expect("started").pid().as_raw();
    wait_for(Duration::from_secs(30), "every node's OTA status", || {
        let view = site.get("/api/v1/rollout").ok()?;
        (view["nodes"].as_array()?.len() == scenario.nodes).then_some(())
    })?;
    site.wait_for_samples(20, Duration::from_secs(30))?;
    let sampler = Sampler::start(pid);
    std::thread::sleep(scenario.preroll());
    let started = Instant::now();
    run_ok(
        Command::new(bin("outpost"))
            .args(["rollout", "start", "--config"])
            .arg(site.config_path())
            .args(["--canary", &scenario.nodes.to_string()])
            .args(["--waves", "100%", "--soak", "1s", "--confirm-within", "4s"])
            .arg("--no-wait")
            .arg("--artifact")
            .arg(next),
    )?;
    let timeout = Duration::from_secs_f64(scenario.line_limit_s() * 4.0 + 30.0);
    wait_for(timeout, "every node's OTA_STATUS verified", || {
        relays
            .iter()
            .all(|r| r.verified_after(started).is_some())
            .then_some(())
    })?;
    // A moment for the ACKs written just before `verified` to be read.
    std::thread::sleep(Duration::from_millis(200));
    let transfers = relays
        .iter()
        .map(|r| transfer_of(r, started))
        .collect::<Result<Vec<_>>>()?;
    // Then the rest of the rollout: install, trial, confirm, soak, finalize.
    let final_state = wait_for(Duration::from_secs(120), "the rollout's end", || {
        let view = site.get("/api/v1/rollout").ok()?;
        let state = view["rollout"]["state"].as_str()?.to_owned();
        matches!(state.as_str(), "done" | "halted").then_some(state)
    })?;
    let done_at = Instant::now();
    let samples = sampler.finish();
    drop(relays);
    drop(site);

    let first_offer = transfers.iter().map(|t| t.offer_at).min().expect("one");
    let last_verified = transfers.iter().map(|t| t.verified_at).max().expect("one");
    let span = last_verified - first_offer;
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= first_offer && s.at <= last_verified)
        .collect();
    let at_offer = sample_at(&samples, first_offer);
    let at_verified = sample_at(&samples, last_verified);
    // The same span just before the rollout command: telemetry alone.
    let at_started = sample_at(&samples, started);
    let before_from = sample_at(&samples, started.checked_sub(span).unwrap_or(started));
    let before_span = (at_started.at - before_from.at).as_secs_f64().max(1e-3);
    Ok(Measured {
        start_to_offer_s: (first_offer - started).as_secs_f64(),
        start_to_done_s: (done_at - started).as_secs_f64(),
        final_state,
        cpu_during_s: at_verified.cpu_s - at_offer.cpu_s,
        // Scaled to the transfer's span (the samples' 50 ms grid).
        cpu_before_s: (at_started.cpu_s - before_from.cpu_s) * span.as_secs_f64() / before_span,
        bench_cpu_during_s: at_verified.bench_cpu_s - at_offer.bench_cpu_s,
        rss_before_kib: at_started.rss_kib,
        rss_peak_kib: during
            .iter()
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(at_verified.rss_kib),
        hwm_before_kib: at_offer.hwm_kib,
        hwm_after_kib: at_verified.hwm_kib,
        transfers,
    })
}

// ---------------------------------------------------------------------------------------------
// Output.

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| v.to_string())
}

fn print_one(scenario: &Scenario, m: &Measured) {
    println!("\n{}:", scenario.name);
    for (i, t) in m.transfers.iter().enumerate() {
        println!(
            "  node {i}: OFFER → verified {:.3} s (last chunk at {:.3} s; the OFFER and chunks at \
             the pacer's rate: {:.3} s; median chunk spacing {:.2} ms, paced {:.2} ms); gateway \
             wrote {} bytes: chunks {} in {} frames ({} distinct, {} expected), offer {}, \
             controls {}, ACK/NACK {}, other {}; efficiency {:.4} (the transfer's own frames: \
             {:.4}); samples committed {} during, {} the same span before; TELEMETRY frames {} \
             during, {} before",
            t.seconds(),
            (t.last_chunk_at - t.offer_at).as_secs_f64(),
            t.paced_limit_s(scenario),
            t.median_chunk_gap.as_secs_f64() * 1e3,
            t.paced_chunk_gap(scenario).as_secs_f64() * 1e3,
            t.bytes,
            t.chunk_bytes,
            t.chunk_frames,
            t.distinct_chunks,
            IMAGE_BYTES.div_ceil(scenario.chunk),
            t.offer_bytes,
            t.control_bytes,
            t.ack_bytes,
            t.other_bytes,
            t.efficiency(),
            t.framing_efficiency(),
            opt(t.committed_during),
            opt(t.committed_before),
            t.telemetry_during,
            t.telemetry_before,
        );
    }
    println!(
        "  rollout start → first OFFER {:.3} s; first OFFER → last verified {:.3} s; start → {} {:.1} s",
        m.start_to_offer_s,
        m.span_s(),
        m.final_state,
        m.start_to_done_s
    );
    println!(
        "  gateway CPU {:.3} s during ({:.3} s the same span before; the bench's relays {:.3} s); VmRSS {:.1} MiB before, peak {:.1} MiB during; VmHWM {:.1} → {:.1} MiB",
        m.cpu_during_s,
        m.cpu_before_s,
        m.bench_cpu_during_s,
        mib(m.rss_before_kib),
        mib(m.rss_peak_kib),
        mib(m.hwm_before_kib),
        mib(m.hwm_after_kib),
    );
}

fn print_tables(scenarios: &[Scenario], results: &[Measured]) {
    println!(
        "\n| one node | OFFER → verified | its frames at the pacer's 95 % | the image alone at the line's rate | bytes the gateway wrote | of which chunks (frames) | **efficiency** (image ÷ written) | the transfer's frames only | samples committed during / same span before | rollout start → end |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (s, m) in scenarios.iter().zip(results).filter(|(s, _)| s.nodes == 1) {
        let t = &m.transfers[0];
        println!(
            "| {} | **{:.2} s** | {:.2} s | {:.2} s | {} | {} ({}) | **{:.3}** | {:.3} | {} / {} | {:.1} s ({}) |",
            s.name,
            t.seconds(),
            t.paced_limit_s(s),
            s.line_limit_s(),
            t.bytes,
            t.chunk_bytes,
            t.chunk_frames,
            t.efficiency(),
            t.framing_efficiency(),
            opt(t.committed_during),
            opt(t.committed_before),
            m.start_to_done_s,
            m.final_state,
        );
    }
    println!(
        "\n| concurrency | first OFFER → last verified | per node | efficiency (min) | gateway CPU during, % of a core (same span before the rollout) | VmRSS before → peak during | VmHWM before → after | samples committed per node during / before (min–max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (s, m) in scenarios
        .iter()
        .zip(results)
        .filter(|(s, _)| s.baud == 921_600 && s.chunk == 1024 && s.flash_timing.is_none())
    {
        let secs: Vec<f64> = m.transfers.iter().map(Transfer::seconds).collect();
        let lo = secs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = secs.iter().copied().fold(0.0, f64::max);
        let eff = m
            .transfers
            .iter()
            .map(Transfer::efficiency)
            .fold(f64::INFINITY, f64::min);
        let range = |f: fn(&Transfer) -> Option<i64>| {
            let v: Vec<i64> = m.transfers.iter().filter_map(f).collect();
            match (v.iter().min(), v.iter().max()) {
                (Some(a), Some(b)) if a == b => a.to_string(),
                (Some(a), Some(b)) => format!("{a}–{b}"),
                _ => "n/a".into(),
            }
        };
        println!(
            "| {} | **{:.2} s** | {:.2}–{:.2} s | {:.3} | **{:.2} s, {:.1} %** ({:.2} s, {:.1} %) | {:.1} → {:.1} MiB | {:.1} → {:.1} MiB | {} / {} |",
            s.name,
            m.span_s(),
            lo,
            hi,
            eff,
            m.cpu_during_s,
            100.0 * m.cpu_during_s / m.span_s(),
            m.cpu_before_s,
            100.0 * m.cpu_before_s / m.span_s(),
            mib(m.rss_before_kib),
            mib(m.rss_peak_kib),
            mib(m.hwm_before_kib),
            mib(m.hwm_after_kib),
            range(|t| t.committed_during),
            range(|t| t.committed_before),
        );
    }
}
