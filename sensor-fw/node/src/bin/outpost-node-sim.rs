//! `outpost-node-sim`: one simulated Outpost sensor node on a serial port or a pseudo-terminal.
//!
//! A thin wrapper around `outpost_node::sim`: parse flags, start the node, wait for SIGINT or
//! SIGTERM, stop it (which removes the published pty link). The subcommands make simulator
//! firmware images and flash files, and run one simulated boot (docs/ota.md).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Parser, Subcommand};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use outpost_node::boot::state_page::StatePage;
use outpost_node::sim::bootloader::Bootloader;
use outpost_node::sim::flash::{FlashFile, FlashOptions, FlashTiming, OnPowerCut, PowerCut};
use outpost_node::sim::image::{Behaviour, SimImage, parse_size};
use outpost_node::sim::{self, SimConfig, SimNode};
use outpost_proto::{ChannelId, FwVersion, ResetReason};

/// A simulated Outpost sensor node (RP2040 + SHT31 + barometer) speaking the node link.
#[derive(Debug, Parser)]
#[command(version, group(ArgGroup::new("line").required(true).args(["port", "pty"])),
          subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    tool: Option<Tool>,
    /// Open this existing serial device or pty slave (raw, 115200 8N1).
    #[arg(long, value_name = "PATH")]
    port: Option<PathBuf>,
    /// Create a pseudo-terminal and publish its slave as a symlink at LINK.
    #[arg(long, value_name = "LINK")]
    pty: Option<PathBuf>,
    /// The node's unique id, 16 hex digits.
    #[arg(long, value_name = "HEX16", value_parser = sim::parse_uid, required = true)]
    uid: Option<[u8; 8]>,
    /// Seed of the simulated sensor values and of the node's key.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Samples per second.
    #[arg(long, value_name = "HZ", default_value_t = 1.0)]
    rate: f64,
    /// Channels to sample: comma-separated names.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = channel,
          default_value = "temperature,humidity,pressure,seq")]
    channels: Vec<ChannelId>,
    /// Stop sampling after N samples; keep running to deliver them.
    #[arg(long, value_name = "N")]
    samples: Option<u32>,
    /// Samples held for the gateway at most (oldest dropped beyond).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    ring: usize,
    /// Seconds between HEALTH reports.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    health_interval: f64,
    /// Firmware version reported.
    #[arg(long, value_name = "X.Y.Z", value_parser = sim::parse_fw, default_value = "0.1.0")]
    fw: FwVersion,
    /// Manufacturing lot reported (at most 16 bytes).
    #[arg(long, value_name = "STR", default_value = "")]
    lot: String,
    /// Hardware revision reported.
    #[arg(long, value_name = "N", default_value_t = 1)]
    hw_rev: u8,
    /// Why the node says its first boot started (without `--flash`): power_on, watchdog,
    /// software, brownout, external_pin, debugger, ota_revert, hard_fault, ota_apply. Boots after
    /// a reset inside this run report their own reason.
    #[arg(long, value_name = "REASON", value_parser = reset_reason, default_value = "power_on")]
    reset_reason: ResetReason,
    /// Fault injection: after every N-th sample, write random bytes, a truncated frame and an
    /// over-long run without delimiter onto the line, and damage the next real frame (lost, resent).
    #[arg(long, value_name = "N")]
    inject_garbage_every: Option<u32>,
    /// The UART's baud: frames go out no faster than the line carries them (8N1). 0: as fast as
    /// the pty takes them, like a USB CDC link.
    #[arg(long, value_name = "N", default_value_t = 115_200)]
    baud: u32,
    /// Fault injection: a dirty line that loses each byte, both ways, with this probability in
    /// millionths (1000 = 0.1 %).
    #[arg(long, value_name = "PPM", default_value_t = 0)]
    line_loss: u32,
    /// The gateway's node-link key (64 hex digits, as `outpost identity show` prints it): the
    /// node refuses any other gateway. Without it the first gateway to complete a handshake is
    /// pinned until the node restarts.
    #[arg(long, value_name = "HEX64", value_parser = gateway_key)]
    gateway_key: Option<[u8; 32]>,
    /// Boot from this flash file (see `make-flash`) and take firmware updates: the image in
    /// its ACTIVE slot decides the firmware version, hardware revision and behaviour, and a
    /// reset boots again through the bootloader (swap, revert), in this process.
    #[arg(long, value_name = "FILE", requires = "fleet_key")]
    flash: Option<PathBuf>,
    /// The fleet's firmware public key file (`outpost firmware keygen`'s firmware.pub): the
    /// node takes only images signed by it. Repeat for a rotation (at most two keys).
    #[arg(long, value_name = "FILE")]
    fleet_key: Vec<PathBuf>,
    /// Fault injection (with --flash): the first N flash operations complete, the next one is
    /// torn, then the process exits with code 75 as a node losing power.
    #[arg(long, value_name = "N", requires = "flash")]
    power_cut_after_ops: Option<u64>,
    /// Seeds the bytes a torn operation leaves.
    #[arg(long, value_name = "N", default_value_t = 0)]
    power_cut_seed: u64,
    /// How long flash operations take: instant, or w25q16 (45 ms a sector erase, 0.4 ms a page
    /// program).
    #[arg(long, value_name = "MODEL", default_value = "instant")]
    flash_timing: FlashTiming,
    /// Fault injection (without --flash): crash (a hard fault) SECS after every boot and boot
    /// again; each boot after a crash reports `hard_fault` as its reset reason.
    #[arg(long, value_name = "SECS", conflicts_with = "flash")]
    crash_every: Option<f64>,
    /// With --crash-every: only the first N boots crash; the next one runs on.
    #[arg(long, value_name = "N", requires = "crash_every")]
    crash_boots: Option<u32>,
}

/// Exit code of `boot` when ACTIVE holds no whole image: a bricked node.
const BRICKED_EXIT_CODE: i32 = 3;

#[derive(Debug, Subcommand)]
enum Tool {
    /// Write a firmware image the simulator can boot: a header it interprets, then filler.
    MakeImage {
        /// Firmware version, MAJOR.MINOR.PATCH.
        #[arg(long, value_name = "X.Y.Z", value_parser = sim::parse_fw)]
        version: FwVersion,
        /// Hardware revision the image is built for.
        #[arg(long, value_name = "R", default_value_t = 1)]
        hw_rev: u8,
        /// The image never confirms its trial (it is reverted at its next reset).
        #[arg(long, group = "behaviour")]
        never_confirms: bool,
        /// The image resets soon after every boot.
        #[arg(long, group = "behaviour")]
        crash_loop: bool,
        /// The image stops answering.
        #[arg(long, group = "behaviour")]
        hang: bool,
        /// The image's whole size: bytes, or with K or M (at most the 512K ACTIVE slot).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: usize,
        out: PathBuf,
    },
    /// Create a node's 2 MiB flash file as it leaves the factory: IMAGE in ACTIVE.
    MakeFlash {
        #[arg(long, value_name = "IMG")]
        image: PathBuf,
        out: PathBuf,
    },
    /// Power the node on once: run the bootloader (swap, revert) on the flash file and say what
    /// boots. Exit code 3 if no whole image does, 75 if the power is cut.
    Boot {
        #[command(flatten)]
        flash: FlashArgs,
    },
}

/// The node's flash file and what it does.
#[derive(Debug, clap::Args)]
struct FlashArgs {
    /// The node's flash: a 2 MiB file in the RP2040 layout (see `make-flash`).
    #[arg(long, value_name = "FILE")]
    flash: PathBuf,
    /// Fault injection: the first N flash operations (sector erases and programs) complete,
    /// the next one is torn, then the process exits with code 75 as a node losing power.
    #[arg(long, value_name = "N")]
    power_cut_after_ops: Option<u64>,
    /// Seeds the bytes a torn operation leaves.
    #[arg(long, value_name = "N", default_value_t = 0)]
    power_cut_seed: u64,
    /// How long flash operations take: instant, or w25q16 (45 ms a sector erase, 0.4 ms a page
    /// program).
    #[arg(long, value_name = "MODEL", default_value = "instant")]
    flash_timing: FlashTiming,
}

impl FlashArgs {
    fn open(&self) -> Result<FlashFile> {
        let options = FlashOptions {
            power_cut: self.power_cut_after_ops.map(|after_ops| PowerCut {
                after_ops,
                torn: true,
            }),
            on_power_cut: OnPowerCut::ExitProcess,
            timing: self.flash_timing,
            seed: self.power_cut_seed,
        };
        FlashFile::open(&self.flash, options)
            .with_context(|| format!("opening the flash file {}", self.flash.display()))
    }
}

fn run_tool(tool: Tool) -> Result<()> {
    match tool {
        Tool::MakeImage {
            version,
            hw_rev,
            never_confirms,
            crash_loop,
            hang,
            size,
            out,
        } => {
            let behaviour = match (never_confirms, crash_loop, hang) {
                (true, _, _) => Behaviour::NeverConfirms,
                (_, true, _) => Behaviour::CrashLoop,
                (_, _, true) => Behaviour::Hang,
                _ => Behaviour::Normal,
            };
            let image = SimImage::new(version, hw_rev, behaviour, size)?;
            std::fs::write(&out, image.build())
                .with_context(|| format!("writing {}", out.display()))?;
        }
        Tool::MakeFlash { image, out } => {
            let bytes =
                std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
            SimImage::parse(&bytes)
                .with_context(|| format!("{} is not a simulator image", image.display()))?;
            FlashFile::create_with_image(&out, &bytes)
                .with_context(|| format!("creating {}", out.display()))?;
        }
        Tool::Boot { flash } => {
            let report = Bootloader::default().boot(&flash.open()?)?;
            if report.state_page == StatePage::FinishedTornErase {
                println!("outpost-node-sim: the bootloader finished a torn STATE erase");
            }
            let state = format!("{:?}", report.state).to_lowercase();
            match report.image {
                Ok(image) => println!(
                    "outpost-node-sim: state {state}, version {}.{}.{}, hw_rev {}, behaviour {}, {} bytes",
                    image.version.major,
                    image.version.minor,
                    image.version.patch,
                    image.hw_rev,
                    image.behaviour.name(),
                    image.len
                ),
                Err(error) => {
                    println!("outpost-node-sim: state {state}, bricked: {error}");
                    std::process::exit(BRICKED_EXIT_CODE);
                }
            }
        }
    }
    Ok(())
}

fn gateway_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("expected 64 hex digits, got {text:?}"));
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(key)
}

fn channel(name: &str) -> Result<ChannelId, String> {
    ChannelId::from_name(name.trim()).ok_or_else(|| format!("unknown channel {name:?}"))
}

fn seconds(name: &str, secs: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{name} must be a positive number of seconds, not {secs}"))
}

fn config(args: &Args) -> Result<SimConfig> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!(
            "--rate must be a positive number of samples per second, not {}",
            args.rate
        );
    }
    let Some(uid) = args.uid else {
        bail!("--uid is required");
    };
    let mut config = SimConfig::new(uid);
    config.seed = args.seed;
    config.sample_interval = seconds("--rate", 1.0 / args.rate)?;
    config.channels.clone_from(&args.channels);
    config.sample_limit = args.samples;
    config.ring = args.ring;
    config.health_interval = seconds("--health-interval", args.health_interval)?;
    config.fw = args.fw;
    config.lot.clone_from(&args.lot);
    config.hw_rev = args.hw_rev;
    config.reset_reason = args.reset_reason;
    config.inject_garbage_every = args.inject_garbage_every;
    config.baud = (args.baud > 0).then_some(args.baud);
    config.line_loss_per_million = args.line_loss;
    config.gateway_key = args.gateway_key;
    if let Some(every) = args.crash_every {
        config.crash_every = Some(seconds("--crash-every", every)?);
        config.crash_boots = args.crash_boots;
    }
    if let Some(path) = &args.flash {
        let mut fleet_keys = Vec::new();
        for key in &args.fleet_key {
            let text = std::fs::read_to_string(key)
                .with_context(|| format!("reading the fleet key {}", key.display()))?;
            fleet_keys.extend(
                sim::parse_fleet_keys(&text)
                    .map_err(|why| anyhow::anyhow!("{}: {why}", key.display()))?,
            );
        }
        if fleet_keys.len() > outpost_node::ota::MAX_FLEET_KEYS {
            bail!(
                "--fleet-key: a node carries at most {} fleet keys",
                outpost_node::ota::MAX_FLEET_KEYS
            );
        }
        config.flash = Some(sim::SimFlash {
            path: path.clone(),
            fleet_keys,
            options: FlashOptions {
                power_cut: args.power_cut_after_ops.map(|after_ops| PowerCut {
                    after_ops,
                    torn: true,
                }),
                on_power_cut: OnPowerCut::ExitProcess,
                timing: args.flash_timing,
                seed: args.power_cut_seed,
            },
        });
    }
    if let Err(errors) = config.validate() {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!("invalid configuration: {}", text.join("; "));
    }
    Ok(config)
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if let Some(tool) = args.tool.take() {
        return run_tool(tool);
    }
    let config = config(&args)?;

    // Block the stop signals before the node thread starts (it inherits the mask), then read
    // them from a signalfd: no signal handler, no unsafe code.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking SIGINT/SIGTERM")?;
    let signal_fd = SignalFd::new(&signals).context("creating a signalfd")?;

    let node = match (&args.port, &args.pty) {
        (Some(port), _) => SimNode::spawn_on_port(config, port)
            .with_context(|| format!("opening {}", port.display()))?,
        (None, Some(link)) => SimNode::spawn_on_pty(config, link)
            .with_context(|| format!("creating a pty linked at {}", link.display()))?,
        (None, None) => unreachable!("clap requires --port or --pty"),
    };
    eprintln!(
        "outpost-node-sim: uid {} boot_id {:08x} on {}{}",
        hex(&node.uid()),
        node.boot_id(),
        node.slave_path().display(),
        node.link_path()
            .map(|l| format!(" (linked at {})", l.display()))
            .unwrap_or_default(),
    );

    loop {
        let mut fds = [PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
        // Wakes now and then to notice a node thread that ended on a fatal line error.
        let _ = poll(&mut fds, PollTimeout::from(500u16));
        if let Ok(Some(info)) = signal_fd.read_signal() {
            eprintln!("outpost-node-sim: signal {}, stopping", info.ssi_signo);
            break;
        }
        if !node.is_running() {
            break;
        }
    }
    let status = node
        .stop_with_status()
        .context("node stopped with an error")?;
    eprintln!(
        "outpost-node-sim: {} samples, {} held, {} dropped, {} retransmits",
        status.counters.samples,
        status.held,
        status.counters.dropped_samples,
        status.counters.retransmits
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn reset_reason(s: &str) -> Result<ResetReason, String> {
    (0..=8)
        .map(ResetReason::from_code)
        .find(|r| r.as_str() == s)
        .ok_or_else(|| format!("unknown reset reason {s:?}"))
}
