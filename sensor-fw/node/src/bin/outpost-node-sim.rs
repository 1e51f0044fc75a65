//! `outpost-node-sim`: one simulated Outpost sensor node on a serial port or a pseudo-terminal.
//!
//! A thin wrapper around `outpost_node::sim`: parse flags, start the node, wait for SIGINT or
//! SIGTERM, stop it (which removes the published pty link).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Parser};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use outpost_node::sim::{self, SimConfig, SimNode};
use outpost_proto::{ChannelId, FwVersion};

/// A simulated Outpost sensor node (RP2040 + SHT31 + barometer) speaking the node link.
#[derive(Debug, Parser)]
#[command(version, group(ArgGroup::new("line").required(true).args(["port", "pty"])))]
struct Args {
    /// Open this existing serial device or pty slave (raw, 115200 8N1).
    #[arg(long, value_name = "PATH")]
    port: Option<PathBuf>,
    /// Create a pseudo-terminal and publish its slave as a symlink at LINK.
    #[arg(long, value_name = "LINK")]
    pty: Option<PathBuf>,
    /// The node's unique id, 16 hex digits.
    #[arg(long, value_name = "HEX16", value_parser = sim::parse_uid)]
    uid: [u8; 8],
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
    let mut config = SimConfig::new(args.uid);
    config.seed = args.seed;
    config.sample_interval = seconds("--rate", 1.0 / args.rate)?;
    config.channels.clone_from(&args.channels);
    config.sample_limit = args.samples;
    config.ring = args.ring;
    config.health_interval = seconds("--health-interval", args.health_interval)?;
    config.fw = args.fw;
    config.lot.clone_from(&args.lot);
    config.hw_rev = args.hw_rev;
    config.inject_garbage_every = args.inject_garbage_every;
    config.baud = (args.baud > 0).then_some(args.baud);
    config.line_loss_per_million = args.line_loss;
    config.gateway_key = args.gateway_key;
    if let Err(errors) = config.validate() {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!("invalid configuration: {}", text.join("; "));
    }
    Ok(config)
}

fn main() -> Result<()> {
    let args = Args::parse();
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
