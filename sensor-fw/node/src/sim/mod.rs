//! The node simulator: the real node core ([`App`] over [`NodeLink`]) with simulated sensors,
//! behind a pseudo-terminal it creates or a serial port it opens. One std thread per node, no
//! async runtime; the gateway's `outpost demo` runs several in-process, the
//! `outpost-node-sim` binary runs one.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use outpost_node::sim::{SimConfig, SimNode};
//! let node = SimNode::spawn_on_pty(SimConfig::new(*b"\x01\x02\x03\x04\x05\x06\x07\x08"),
//!                                  std::path::Path::new("/tmp/node1"))?;
//! // the gateway opens node.slave_path() (or /tmp/node1) ...
//! node.stop()?;
//! # Ok(()) }
//! ```
//!
//! The pump is one loop: poll(2) on the line (and a stop pipe) with the core's `poll_timeout`
//! as the timeout; after every input, run due timers and drain `poll_transmit`.

pub mod bootloader;
mod fault;
pub mod flash;
pub mod image;
mod line;
mod sensors;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use heapless::{String as HString, Vec as HVec};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use outpost_proto::frame::MAX_FRAME_LEN;
use outpost_proto::wire::{MAX_CHANNELS, MAX_LOT_LEN};
use outpost_proto::{
    Bulk, ChannelId, FwVersion, LinkCounters, Millis, OtaControl, OtaPhase, OtaStatus, ResetReason,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use self::bootloader::Bootloader;
use self::flash::{FlashFile, FlashOptions, FlashRegion, SimBootFlash};
use self::image::Behaviour;
use self::line::{Line, ReadOutcome};
pub use self::sensors::{SimBank, SimSht3x};
use crate::app::{App, Schedule};
use crate::boot::{RecordFlash, RecordSector, layout};
use crate::diag::RamSector;
use crate::link::{
    BoardStatus, Boot, Identity, LinkConfig, LinkState, NodeCounters, NodeLink, OtaHandler, Secrets,
};
use crate::ota::{LastReset, OtaAction, OtaConfig, Updater};

/// Capacity of the simulator's sample ring; `SimConfig::ring` may only lower it.
pub const MAX_RING: usize = 4096;

/// Free stack the simulator reports in HEALTH: a plausible RP2040 high-water mark.
const SIM_STACK_FREE_MIN: u32 = 5 * 1024;
/// How long to wait before looking again for a peer on a line nobody holds open.
const NO_PEER_RETRY: Duration = Duration::from_millis(50);

type SimApp = App<SimBank, MAX_RING, SimOta>;

/// How soon after its boot a crash-looping or hanging image misbehaves.
const MISBEHAVE_AFTER: Duration = Duration::from_millis(500);
/// The watchdog that resets a hanging image (the bootloader starts it at 8 s on the RP2040).
pub const WATCHDOG: Duration = Duration::from_secs(8);

/// The updater of a simulated node with a flash file.
pub type SimUpdater = Updater<SimBootFlash, RecordSector<FlashRegion>, RecordSector<FlashRegion>>;

/// A node's firmware updates: none (no flash file), or the real updater over the file.
#[derive(Debug)]
enum SimOta {
    None,
    Flash(Box<SimUpdater>),
}

impl OtaHandler for SimOta {
    fn handle_bulk(&mut self, now: Millis, bulk: Bulk<'_>) {
        if let SimOta::Flash(u) = self {
            u.handle_bulk(now, bulk);
        }
    }
    fn handle_control(&mut self, control: OtaControl) {
        if let SimOta::Flash(u) = self {
            u.handle_control(control);
        }
    }
    fn handle_session_up(&mut self, now: Millis) {
        if let SimOta::Flash(u) = self {
            u.handle_session_up(now);
        }
    }
    fn handle_acked(&mut self, now: Millis, upto: u32) {
        if let SimOta::Flash(u) = self {
            u.handle_acked(now, upto);
        }
    }
    fn poll_status(&mut self) -> Option<OtaStatus> {
        match self {
            SimOta::Flash(u) => u.poll_status(),
            SimOta::None => None,
        }
    }
    fn handle_timeout(&mut self, now: Millis, board_ok: bool) {
        if let SimOta::Flash(u) = self {
            u.handle_timeout(now, board_ok);
        }
    }
    fn poll_timeout(&self) -> Option<Millis> {
        match self {
            SimOta::Flash(u) => u.poll_timeout(),
            SimOta::None => None,
        }
    }
    fn poll_action(&mut self) -> Option<OtaAction> {
        match self {
            SimOta::Flash(u) => u.poll_action(),
            SimOta::None => None,
        }
    }
    fn phase_code(&self) -> Option<u8> {
        match self {
            SimOta::Flash(u) => u.phase_code(),
            SimOta::None => None,
        }
    }
}

/// A node with a flash file: it boots whatever its ACTIVE slot holds (a simulator image,
/// `make-image`), through embassy-boot's bootloader, and takes firmware updates.
#[derive(Debug, Clone, PartialEq)]
pub struct SimFlash {
    /// A 2 MiB file in the RP2040 layout (`make-flash`).
    pub path: PathBuf,
    /// The fleet firmware keys the image carries (at most two).
    pub fleet_keys: Vec<[u8; 32]>,
    pub options: FlashOptions,
}

/// Everything that makes one simulated node. Build with [`SimConfig::new`] and override fields.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// The node's unique id (the RP2040 flash id).
    pub uid: [u8; 8],
    /// Seeds the sensor values and the node's key; the same seed replays the same values.
    pub seed: u64,
    /// Time between samples.
    pub sample_interval: Duration,
    /// Channels sampled, in order; ids 1 to 5 (temperature, humidity, pressure, seq,
    /// chip_temperature).
    pub channels: Vec<ChannelId>,
    /// Stop sampling after this many samples, and keep running to deliver them.
    pub sample_limit: Option<u32>,
    /// Samples held for the gateway at most (1 to [`MAX_RING`]).
    pub ring: usize,
    pub hello_interval: Duration,
    pub health_interval: Duration,
    pub fw: FwVersion,
    pub lot: String,
    pub hw_rev: u8,
    /// After every n-th sample, write a burst of line noise (see `fault::garbage_burst`) and
    /// damage the next real frame, which the node must then resend.
    pub inject_garbage_every: Option<u32>,
    /// This boot's id; `None` draws a random one from the OS, as a real node does at boot.
    pub boot_id: Option<u32>,
    /// A dirty line: each byte, both ways, is lost with this probability in millionths.
    pub line_loss_per_million: u32,
    /// The UART's speed: frames go out no faster than a line at this baud (8N1, ten bits a
    /// byte) carries them, and the node core hands out the next frame only when the line is
    /// free, as firmware feeding a UART does. `None`: as fast as the pty takes them (a USB CDC
    /// link).
    pub baud: Option<u32>,
    pub reset_reason: ResetReason,
    /// The gateway node-link key this node is tied to (`outpost identity show` prints it);
    /// `None`: the first gateway that completes a handshake is pinned for the boot.
    pub gateway_key: Option<[u8; 32]>,
    /// Boot from a flash file and take firmware updates; `fw` and `hw_rev` are then the
    /// booted image's.
    pub flash: Option<SimFlash>,
    /// A crash loop without a flash file: each boot crashes (a hard fault) this long after it
    /// starts, and the next boot reports `hard_fault` in its HEALTH.
    pub crash_every: Option<Duration>,
    /// With `crash_every`: only the first this many boots crash; the next runs on.
    pub crash_boots: Option<u32>,
}

impl SimConfig {
    /// Defaults: seed 0, 1 Hz, channels temperature, humidity, pressure and seq, no sample
    /// limit, ring 1024, HELLO every 1 s, HEALTH every 10 s, firmware 0.1.0, hardware rev 1.
    #[must_use]
    pub fn new(uid: [u8; 8]) -> Self {
        SimConfig {
            uid,
            seed: 0,
            sample_interval: Duration::from_secs(1),
            channels: vec![
                ChannelId::TEMPERATURE,
                ChannelId::HUMIDITY,
                ChannelId::PRESSURE,
                ChannelId::SEQ,
            ],
            sample_limit: None,
            ring: 1024,
            hello_interval: LinkConfig::default().hello_interval,
            health_interval: LinkConfig::default().health_interval,
            fw: FwVersion {
                major: 0,
                minor: 1,
                patch: 0,
            },
            lot: String::new(),
            hw_rev: 1,
            inject_garbage_every: None,
            boot_id: None,
            line_loss_per_million: 0,
            reset_reason: ResetReason::PowerOn,
            baud: Some(115_200),
            gateway_key: None,
            flash: None,
            crash_every: None,
            crash_boots: None,
        }
    }

    /// Checks every field; returns every problem found, not only the first.
    pub fn validate(&self) -> Result<(), Vec<SimConfigError>> {
        let mut errors = Vec::new();
        if self.channels.is_empty() || self.channels.len() > MAX_CHANNELS {
            errors.push(SimConfigError::ChannelCount(self.channels.len()));
        }
        for (i, &c) in self.channels.iter().enumerate() {
            if c.name().is_none() {
                errors.push(SimConfigError::UnknownChannel(c.0));
            } else if self.channels[..i].contains(&c) {
                errors.push(SimConfigError::DuplicateChannel(c.0));
            }
        }
        if self.lot.len() > MAX_LOT_LEN {
            errors.push(SimConfigError::LotTooLong(self.lot.len()));
        }
        if !(1..=MAX_RING).contains(&self.ring) {
            errors.push(SimConfigError::Ring(self.ring));
        }
        for (name, d) in [
            ("sample interval", self.sample_interval),
            ("hello interval", self.hello_interval),
            ("health interval", self.health_interval),
        ] {
            if d < Duration::from_millis(1) {
                errors.push(SimConfigError::Interval(name));
            }
        }
        if self.inject_garbage_every == Some(0) {
            errors.push(SimConfigError::GarbageEvery);
        }
        if self.line_loss_per_million >= 1_000_000 {
            errors.push(SimConfigError::LineLoss);
        }
        if self.baud.is_some_and(|b| !(300..=4_000_000).contains(&b)) {
            errors.push(SimConfigError::Baud);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The node's Ed25519 key, derived from uid and seed (only the public half is sent).
    #[must_use]
    pub fn signing_key(&self) -> SigningKey {
        // A hash-free expansion (splitmix64) is enough: the key only has to be stable per
        // (uid, seed) and distinct between simulated nodes; it protects nothing real.
        let mut state = u64::from_le_bytes(self.uid) ^ self.seed.rotate_left(29);
        let mut secret = [0u8; 32];
        for chunk in secret.chunks_exact_mut(8) {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        SigningKey::from_bytes(&secret)
    }

    fn identity(&self) -> Identity {
        Identity {
            uid: self.uid,
            hw_rev: self.hw_rev,
            fw: self.fw,
            // Both fit: `validate` checked the lengths.
            lot: HString::try_from(self.lot.as_str()).unwrap_or_default(),
            channels: HVec::from_slice(&self.channels).unwrap_or_default(),
        }
    }
}

/// A field of [`SimConfig`] out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimConfigError {
    ChannelCount(usize),
    UnknownChannel(u8),
    DuplicateChannel(u8),
    LotTooLong(usize),
    Ring(usize),
    Interval(&'static str),
    GarbageEvery,
    Baud,
    LineLoss,
}

impl fmt::Display for SimConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimConfigError::ChannelCount(n) => {
                write!(f, "{n} channels; a node has 1 to {MAX_CHANNELS}")
            }
            SimConfigError::UnknownChannel(c) => write!(f, "channel id {c} is not simulated"),
            SimConfigError::DuplicateChannel(c) => write!(f, "channel id {c} listed twice"),
            SimConfigError::LotTooLong(n) => {
                write!(f, "lot is {n} bytes; at most {MAX_LOT_LEN}")
            }
            SimConfigError::Ring(n) => write!(f, "ring of {n} samples; 1 to {MAX_RING}"),
            SimConfigError::Interval(name) => write!(f, "{name} must be at least 1 ms"),
            SimConfigError::GarbageEvery => f.write_str("garbage injection every 0 samples"),
            SimConfigError::Baud => f.write_str("baud outside 300..=4000000"),
            SimConfigError::LineLoss => f.write_str("line loss of a million per million or more"),
        }
    }
}

impl std::error::Error for SimConfigError {}

/// Parses a uid written as 16 hex digits.
pub fn parse_uid(s: &str) -> Result<[u8; 8], String> {
    let s = s.trim();
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("uid {s:?} is not 16 hex digits"));
    }
    let mut uid = [0u8; 8];
    for (i, byte) in uid.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(uid)
}

/// The firmware public keys of a key file (see [`crate::ota::fleet_keys`]); a file with none is
/// an error: a node must not start trusting nothing by mistake.
pub fn parse_fleet_keys(text: &str) -> Result<Vec<[u8; 32]>, String> {
    let keys = crate::ota::fleet_keys(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if keys.is_empty() {
        return Err("no firmware public key (role firmware) in the file".into());
    }
    Ok(keys)
}

/// Parses `X.Y.Z`.
pub fn parse_fw(s: &str) -> Result<FwVersion, String> {
    let parts: Vec<&str> = s.trim().split('.').collect();
    let [major, minor, patch] = parts[..] else {
        return Err(format!("firmware version {s:?} is not X.Y.Z"));
    };
    let num = |p: &str| {
        p.parse::<u8>()
            .map_err(|e| format!("firmware version {s:?}: {e}"))
    };
    Ok(FwVersion {
        major: num(major)?,
        minor: num(minor)?,
        patch: num(patch)?,
    })
}

/// A snapshot of a running simulated node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimStatus {
    pub state: LinkState,
    pub counters: NodeCounters,
    /// What the node's frame decoder has seen.
    pub decoder: LinkCounters,
    /// Samples waiting for an acknowledgement.
    pub held: usize,
    /// The sample limit is reached.
    pub sampling_done: bool,
    /// Someone holds the other end of the line.
    pub peer: bool,
    /// Frames dropped because the line would block or nobody listened.
    pub frames_lost_on_line: u32,
    /// The current boot's id and firmware, and how many boots this node has had.
    pub boot_id: u32,
    pub fw: FwVersion,
    pub boots: u32,
    /// Where its firmware update is (`None` without a flash file).
    pub ota_phase: Option<OtaPhase>,
}

/// A simulated node running on its own thread. Dropping it stops the thread and removes the
/// published link.
#[derive(Debug)]
pub struct SimNode {
    slave_path: PathBuf,
    link_path: Option<PathBuf>,
    uid: [u8; 8],
    boot_id: u32,
    public_key: [u8; 32],
    status: Arc<Mutex<SimStatus>>,
    /// Write end of the stop pipe: closing it wakes the thread's poll and ends it.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl SimNode {
    /// Creates a pseudo-terminal, publishes its slave as the symlink `link_path` (replacing an
    /// existing link) and runs the node on the master.
    pub fn spawn_on_pty(config: SimConfig, link_path: &Path) -> io::Result<SimNode> {
        let (line, slave_path) = Line::open_pty()?;
        line::publish_link(&slave_path, link_path)?;
        let spawned = Self::spawn(config, line, slave_path.clone(), Some(link_path.into()));
        if spawned.is_err() {
            line::remove_link(&slave_path, link_path);
        }
        spawned
    }

    /// Opens an existing serial device or pty slave and runs the node on it.
    pub fn spawn_on_port(config: SimConfig, path: &Path) -> io::Result<SimNode> {
        let line = Line::open_port(path)?;
        Self::spawn(config, line, path.into(), None)
    }

    fn spawn(
        config: SimConfig,
        line: Line,
        slave_path: PathBuf,
        link_path: Option<PathBuf>,
    ) -> io::Result<SimNode> {
        config.validate().map_err(|errors| {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            io::Error::new(io::ErrorKind::InvalidInput, text.join("; "))
        })?;
        let boot_id = match config.boot_id {
            Some(id) => id,
            None => random_boot_id()?,
        };
        let identity = config.identity();
        let public_key = config.signing_key().verifying_key().to_bytes();
        let status = Arc::new(Mutex::new(SimStatus {
            state: LinkState::Unaccepted,
            counters: NodeCounters::default(),
            decoder: LinkCounters::default(),
            held: 0,
            sampling_done: false,
            peer: false,
            frames_lost_on_line: 0,
            boot_id,
            fw: config.fw,
            boots: 0,
            ota_phase: None,
        }));
        let (stop_rx, stop_tx) = nix::unistd::pipe()?;
        let pump = Pump {
            config: config.clone(),
            identity,
            boot_id,
            boots: 0,
            fw_now: config.fw,
            logged_phase: None,
            line,
            stop_rx,
            status: Arc::clone(&status),
            history: HistorySector::Ram(Box::default()),
        };
        let thread = std::thread::Builder::new()
            .name(format!("node-{}", hex(&config.uid)))
            // The ring lives in a Box, but is built on the stack first in debug builds.
            .stack_size(16 << 20)
            .spawn(move || pump.run())?;
        Ok(SimNode {
            slave_path,
            link_path,
            uid: config.uid,
            boot_id,
            public_key,
            status,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The tty the gateway opens (the pty slave, or the port given).
    #[must_use]
    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }

    /// The symlink published by [`SimNode::spawn_on_pty`].
    #[must_use]
    pub fn link_path(&self) -> Option<&Path> {
        self.link_path.as_deref()
    }

    #[must_use]
    pub fn uid(&self) -> [u8; 8] {
        self.uid
    }

    /// The first boot's id ([`SimStatus::boot_id`] is the current one).
    #[must_use]
    pub fn boot_id(&self) -> u32 {
        self.boot_id
    }

    /// The Ed25519 public key the node sends in ENROLL.
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    #[must_use]
    pub fn status(&self) -> SimStatus {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The node thread is still running (it ends only on `stop` or a fatal line error).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the node, removes the published link and returns the thread's fatal error, if any.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    /// [`SimNode::stop`], then the node's final status: read once its thread has ended, so it
    /// counts every sample the node took and every frame it sent (a status read before the stop
    /// can miss the last sample, sent in between).
    pub fn stop_with_status(mut self) -> io::Result<SimStatus> {
        self.shutdown()?;
        Ok(self.status())
    }

    fn shutdown(&mut self) -> io::Result<()> {
        drop(self.stop.take());
        let result = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("node thread panicked")),
            None => Ok(()),
        };
        if let Some(link) = self.link_path.take() {
            line::remove_link(&self.slave_path, &link);
        }
        result
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A boot id as a real node gets it: random at every start, independent of the seed.
fn random_boot_id() -> io::Result<u32> {
    Ok(u32::from_le_bytes(random_bytes()?))
}

/// Bytes from the OS's random source, as a real node takes them from its ring oscillator.
fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The thread body: owns the node and its line.
struct Pump {
    config: SimConfig,
    identity: Identity,
    boot_id: u32,
    boots: u32,
    /// The firmware this boot runs.
    fw_now: FwVersion,
    /// The update phase last written to stderr.
    logged_phase: Option<OtaPhase>,
    line: Line,
    stop_rx: OwnedFd,
    status: Arc<Mutex<SimStatus>>,
    /// Where the node keeps its reset history: the RESET_HISTORY sector of its flash file, or
    /// RAM for a node without one (then it lasts as long as the simulator runs).
    history: HistorySector,
}

/// The reset history's sector of a simulated node.
#[derive(Debug)]
enum HistorySector {
    Ram(Box<RamSector>),
    /// Through a handle of its own on the flash file, so the history write at every boot does
    /// not shift the operation count `--power-cut-after-ops` aims at in an update.
    File(RecordSector<FlashRegion>),
}

impl HistorySector {
    fn flash(&mut self) -> &mut dyn RecordFlash {
        match self {
            HistorySector::Ram(sector) => sector.as_mut(),
            HistorySector::File(sector) => sector,
        }
    }
}

/// How one boot of a simulated node ended.
enum BootEnd {
    Stopped,
    /// The node reset (or lost power); it boots again.
    Reset(LastReset),
}

impl Pump {
    /// Boots the node, and again after every reset, until stopped.
    fn run(mut self) -> io::Result<()> {
        let mut flash = self.open_flash()?;
        if let Some(f) = &self.config.flash {
            let own = FlashFile::open(&f.path, FlashOptions::default())?;
            self.history =
                HistorySector::File(RecordSector::new(own.region(layout::RESET_HISTORY)));
        }
        let mut last_reset = LastReset::PowerOn;
        loop {
            match self.run_boot(flash.as_ref(), last_reset)? {
                BootEnd::Stopped => return Ok(()),
                BootEnd::Reset(why) => {
                    if flash.as_ref().is_some_and(FlashFile::power_was_cut) {
                        // Power back on: the chip as the cut left it, and no more cuts.
                        flash = self.open_flash_after_cut()?;
                    }
                    last_reset = why;
                    self.boot_id = random_boot_id()?;
                }
            }
        }
    }

    fn open_flash(&self) -> io::Result<Option<FlashFile>> {
        self.config
            .flash
            .as_ref()
            .map(|f| FlashFile::open(&f.path, f.options.clone()))
            .transpose()
    }

    fn open_flash_after_cut(&self) -> io::Result<Option<FlashFile>> {
        self.config
            .flash
            .as_ref()
            .map(|f| {
                let options = FlashOptions {
                    power_cut: None,
                    ..f.options.clone()
                };
                FlashFile::open(&f.path, options)
            })
            .transpose()
    }

    /// One boot: from the bootloader to a reset or a stop.
    fn run_boot(
        &mut self,
        flash: Option<&FlashFile>,
        last_reset: LastReset,
    ) -> io::Result<BootEnd> {
        let Some((mut app, behaviour)) = self.build(Millis(0), flash, last_reset)? else {
            return Ok(BootEnd::Reset(LastReset::PowerOn)); // the power was cut while booting
        };
        // The application's clock starts when it runs, after the bootloader: a swap takes
        // seconds on a real flash, and a trial's deadline counts from the image's start.
        let started = Instant::now();
        let now = || Millis(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        self.boots += 1;
        let misbehave_at = matches!(behaviour, Behaviour::CrashLoop | Behaviour::Hang)
            .then(|| now() + MISBEHAVE_AFTER);
        // `crash_every`: a crash loop without a flash file (fleet-health tests).
        let crash_at = self
            .config
            .crash_every
            .filter(|_| self.config.crash_boots.is_none_or(|n| self.boots <= n))
            .map(|every| now() + every);
        let mut garbage_rng = SmallRng::seed_from_u64(self.config.seed.wrapping_add(1));
        let mut garbage_after = self.config.inject_garbage_every.map(|n| (n, n));
        // After a burst, the next real frame is damaged too, so it is lost and must be resent.
        let mut damage_next_frame = false;
        let mut lost: u32 = 0;
        let mut frame = [0u8; MAX_FRAME_LEN];
        let mut rx = [0u8; 1024];
        let mut wait = Duration::ZERO;
        let mut uart = Uart::new(self.config.baud);
        let mut loss_rng = SmallRng::seed_from_u64(self.config.seed.wrapping_add(2));
        let loss = self.config.line_loss_per_million;
        let mut lose = move |bytes: &mut Vec<u8>| {
            if loss > 0 {
                bytes.retain(|_| loss_rng.random_range(0..1_000_000) >= loss);
            }
        };
        loop {
            // Wait for bytes, the next timer, or stop.
            let mut fds = [
                PollFd::new(self.stop_rx.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.line.fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, poll_timeout(wait)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            if fds[0].any().unwrap_or(false) {
                return Ok(BootEnd::Stopped); // the stop pipe closed
            }
            let line_events = fds[1].revents().unwrap_or(PollFlags::empty());
            // POLLHUP on a pty master: nobody holds the slave open (yet, or any more).
            let mut peer = !line_events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
            if line_events.contains(PollFlags::POLLIN) {
                loop {
                    match self.line.read(&mut rx)? {
                        ReadOutcome::Data(0) => break,
                        ReadOutcome::Data(n) if loss > 0 => {
                            let mut bytes = rx[..n].to_vec();
                            lose(&mut bytes);
                            app.handle_bytes(now(), &bytes);
                        }
                        ReadOutcome::Data(n) => app.handle_bytes(now(), &rx[..n]),
                        ReadOutcome::NoPeer => {
                            peer = false;
                            break;
                        }
                    }
                }
            }
            if !peer && self.pause_for_peer(wait)? {
                return Ok(BootEnd::Stopped);
            }

            let t = now();
            if app.poll_timeout().is_some_and(|at| at <= t) {
                let taken = app.samples_taken();
                app.handle_timeout(t);
                let chip_temp_centi = app.bank().chip_temp_centi();
                app.link_mut().set_board_status(BoardStatus {
                    stack_free_min: SIM_STACK_FREE_MIN,
                    chip_temp_centi,
                });
                if let Some((every, left)) = garbage_after.as_mut()
                    && app.samples_taken() != taken
                {
                    *left -= 1;
                    if *left == 0 {
                        *left = *every;
                        if peer {
                            let burst = fault::garbage_burst(&mut garbage_rng);
                            uart.sent(burst.len());
                            self.line.write_or_drop(&burst)?;
                            // Only telemetry: damaging every HELLO would keep the node out.
                            damage_next_frame = app.link().state() == LinkState::Accepted;
                        }
                    }
                }
            }
            // Drain frames as fast as the line carries them; with nobody listening they go into
            // the void.
            while uart.is_free() {
                let Some(len) = app.poll_transmit(&mut frame) else {
                    break;
                };
                if std::mem::take(&mut damage_next_frame) {
                    fault::damage(&mut frame[..len], &mut garbage_rng);
                }
                uart.sent(len);
                let mut bytes = frame[..len].to_vec();
                lose(&mut bytes);
                if !(peer && self.line.write_or_drop(&bytes)?) {
                    lost = lost.wrapping_add(1);
                }
            }
            self.publish(&app, peer, lost);
            self.log_ota_phase(&app, flash);
            if flash.is_some_and(FlashFile::power_was_cut) {
                return Ok(BootEnd::Reset(LastReset::PowerOn));
            }
            if app.poll_reboot() {
                // The gateway asked; its answer is on the line.
                return Ok(BootEnd::Reset(LastReset::Requested {
                    cause: outpost_proto::RevertCause::Unknown,
                }));
            }
            if let Some(action) = app.poll_reset(now()) {
                return Ok(BootEnd::Reset(LastReset::Requested {
                    cause: match action {
                        OtaAction::ResetToRevert { cause } => cause,
                        OtaAction::ResetToInstall => outpost_proto::RevertCause::Unknown,
                    },
                }));
            }
            if misbehave_at.is_some_and(|at| now() >= at) {
                if behaviour == Behaviour::Hang {
                    // Nothing serviced until the watchdog bites (a stop still ends it).
                    if self.sleep_unless_stopped(WATCHDOG)? {
                        return Ok(BootEnd::Stopped);
                    }
                    return Ok(BootEnd::Reset(LastReset::Watchdog));
                }
                return Ok(BootEnd::Reset(LastReset::Crash));
            }
            if crash_at.is_some_and(|at| now() >= at) {
                return Ok(BootEnd::Reset(LastReset::Crash));
            }
            wait = app.poll_timeout().map_or(Duration::from_secs(1), |at| {
                Duration::from_millis(at - now())
            });
            if let Some(at) = misbehave_at.into_iter().chain(crash_at).min() {
                wait = wait.min(Duration::from_millis(at - now()));
            }
            if let Some(busy) = uart.busy_for() {
                wait = wait.min(busy);
            }
        }
    }

    /// The node as it boots: without a flash file, the configured firmware; with one, the
    /// bootloader runs first and the image in ACTIVE decides the firmware and its behaviour.
    /// `None` when the power was cut during the boot.
    fn build(
        &mut self,
        now: Millis,
        flash: Option<&FlashFile>,
        last_reset: LastReset,
    ) -> io::Result<Option<(Box<SimApp>, Behaviour)>> {
        let mut c = self.config.clone();
        let mut behaviour = Behaviour::Normal;
        let mut ota = SimOta::None;
        let mut reset_reason = c.reset_reason;
        // Without a flash file, a boot after a `crash_every` crash reports the fault.
        if flash.is_none() && last_reset == LastReset::Crash {
            reset_reason = ResetReason::HardFault;
        }
        if let (Some(flash), Some(sim_flash)) = (flash, &self.config.flash) {
            let report = match Bootloader::default().boot(flash) {
                Ok(report) => report,
                Err(bootloader::BootFailure::PowerCut) => return Ok(None),
                Err(e) => return Err(io::Error::other(format!("the node does not boot: {e}"))),
            };
            let image = report.image.map_err(|e| {
                io::Error::other(format!("bricked: ACTIVE holds no whole image ({e})"))
            })?;
            c.fw = image.version;
            c.hw_rev = image.hw_rev;
            behaviour = image.behaviour;
            let keys = heapless::Vec::from_slice(
                &sim_flash.fleet_keys[..sim_flash.fleet_keys.len().min(2)],
            )
            .unwrap_or_default();
            let updater = Updater::new(
                now,
                flash.boot_flash(),
                flash.record(),
                flash.floor_log(),
                OtaConfig {
                    keys,
                    hw_rev: image.hw_rev,
                    running: image.version,
                    built_in_floor: FwVersion::default(),
                },
                last_reset,
            );
            reset_reason = if updater.reverted_boot() {
                ResetReason::OtaRevert
            } else if updater.on_trial() {
                // The reset that swapped a new image in.
                ResetReason::OtaApply
            } else {
                reset_reason_of(last_reset)
            };
            ota = SimOta::Flash(Box::new(updater));
            self.identity = c.identity();
        }
        if flash.is_none() && self.boots > 0 {
            // A restart inside this run (a requested reboot): the configured reason was the
            // first boot's.
            reset_reason = reset_reason_of(last_reset);
        }
        // Once per boot, before the link starts: the one flash write the history costs.
        let history = match crate::diag::record_boot(self.history.flash(), reset_reason, c.fw) {
            Ok(history) => history,
            Err(e) => {
                eprintln!("outpost-node-sim: reset history not written: {e}");
                crate::diag::read_history(self.history.flash())
                    .map(|(h, _)| h)
                    .unwrap_or_default()
            }
        };
        let secrets = Secrets {
            signing_key: c.signing_key(),
            gateway_key: c.gateway_key,
            entropy: random_bytes()?,
        };
        let link = NodeLink::with_ota(
            now,
            self.identity.clone(),
            secrets,
            Boot {
                boot_id: self.boot_id,
                reset_reason,
            },
            LinkConfig {
                hello_interval: c.hello_interval,
                health_interval: c.health_interval,
                ring_limit: c.ring,
            },
            ota,
        );
        let bank = SimBank::new(&c.channels, c.seed ^ u64::from_le_bytes(c.uid));
        let schedule = Schedule {
            interval: c.sample_interval,
            limit: c.sample_limit,
        };
        let mut app = Box::new(App::new(now, link, bank, schedule));
        app.link_mut().set_reset_history(history);
        // An image that never confirms: the board's own checks never pass.
        app.set_board_ok(behaviour != Behaviour::NeverConfirms);
        self.fw_now = c.fw;
        Ok(Some((app, behaviour)))
    }

    /// Sleeps `how_long`, waking early on stop; whether stop was requested.
    fn sleep_unless_stopped(&self, how_long: Duration) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.stop_rx.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(how_long)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(fds[0].any().unwrap_or(false)),
            Err(e) => Err(e.into()),
        }
    }

    /// Nobody listens: sleep a little (or until the next timer), waking early on stop.
    /// Returns whether stop was requested.
    fn pause_for_peer(&self, wait: Duration) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.stop_rx.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(wait.min(NO_PEER_RETRY))) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(fds[0].any().unwrap_or(false)),
            Err(e) => Err(e.into()),
        }
    }

    /// Says on stderr when the update's phase changes, with the flash operations done so far in
    /// this process: where a `--power-cut-after-ops` lands in an update.
    fn log_ota_phase(&mut self, app: &SimApp, flash: Option<&FlashFile>) {
        let (SimOta::Flash(updater), Some(flash)) = (app.link().ota(), flash) else {
            return;
        };
        let phase = updater.phase();
        if self.logged_phase != Some(phase) {
            self.logged_phase = Some(phase);
            eprintln!(
                "outpost-node-sim: ota phase {} at flash operation {}",
                phase.as_str(),
                flash.ops()
            );
        }
    }

    fn publish(&self, app: &SimApp, peer: bool, lost: u32) {
        let link = app.link();
        let status = SimStatus {
            state: link.state(),
            counters: link.counters(),
            decoder: link.decoder_counters(),
            held: link.held(),
            sampling_done: app.sampling_done(),
            peer,
            frames_lost_on_line: lost,
            boot_id: self.boot_id,
            fw: self.fw_now,
            boots: self.boots,
            ota_phase: match link.ota() {
                SimOta::Flash(u) => Some(u.phase()),
                SimOta::None => None,
            },
        };
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }
}

/// The reason a simulated node reports for how its previous boot ended.
fn reset_reason_of(last_reset: LastReset) -> ResetReason {
    match last_reset {
        LastReset::PowerOn => ResetReason::PowerOn,
        LastReset::Watchdog => ResetReason::Watchdog,
        // The simulated image's crash is a fault the firmware caught (a panic, a HardFault).
        LastReset::Crash => ResetReason::HardFault,
        LastReset::Requested { .. } => ResetReason::Software,
        LastReset::Other => ResetReason::Other(0xff),
    }
}

/// How late a wake-up may come for frames to still go out back to back.
const FIFO_SLACK: Duration = Duration::from_millis(2);

/// The transmit side of a UART at a given baud: when the line is free for the next frame.
#[derive(Debug)]
struct Uart {
    /// Time on the line per byte (8N1: ten bits); `None` for a link without a baud.
    per_byte: Option<Duration>,
    free_at: Instant,
}

impl Uart {
    fn new(baud: Option<u32>) -> Self {
        Uart {
            per_byte: baud.map(|b| Duration::from_nanos(10_000_000_000 / u64::from(b.max(1)))),
            free_at: Instant::now(),
        }
    }

    fn is_free(&self) -> bool {
        self.per_byte.is_none() || Instant::now() >= self.free_at
    }

    /// `bytes` went out: the line is busy for their time, after whatever it was still sending.
    fn sent(&mut self, bytes: usize) {
        if let Some(per_byte) = self.per_byte {
            // Back to back when the line freed a moment ago (a wake-up comes a little late;
            // a UART's FIFO would have kept sending), from now when it has been idle.
            let now = Instant::now();
            let start = if now <= self.free_at + FIFO_SLACK {
                self.free_at
            } else {
                now
            };
            self.free_at = start + per_byte * u32::try_from(bytes).unwrap_or(u32::MAX);
        }
    }

    /// How long until the line is free, when it is busy.
    fn busy_for(&self) -> Option<Duration> {
        self.per_byte?;
        let left = self.free_at.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

fn poll_timeout(wait: Duration) -> PollTimeout {
    // Round up so a timer is never polled for a moment too early, spinning.
    let ms = wait.as_millis() + u128::from(wait.subsec_nanos() % 1_000_000 != 0);
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}
