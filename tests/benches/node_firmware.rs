//! The RP2040 images (docs/BENCHMARKS.md, "RP2040 node firmware"):
//!
//! - **flash and RAM** of the bootloader and the application (`llvm-size`), and the share of
//!   the application's flash taken by the cryptography (its symbols, by crate: curve25519,
//!   ed25519, sha2, hkdf/hmac, chacha; with LTO much of the rest is inlined into the main task);
//! - **cycles** per TELEMETRY frame and for the handshake, counted by the emulator between the
//!   BKPT marks of a development image built with `cycle-marks`, running against the release
//!   gateway; the same cycles at the RP2040's 125 MHz as sample-to-frame latency;
//! - **samples per second on a 115,200-baud line**: an image sampling every millisecond (more
//!   than the line carries) against the gateway, beside the host simulator asked for 1,000 Hz on
//!   a second port at the same baud, in the same run: what each delivers into the store;
//! - **OTA**: the time a signed update of the image takes from `rollout start` to the node's
//!   `verified`, and the image bytes per second that makes.
//!
//! `cargo bench -p outpost-e2e --bench node_firmware` (about 5 minutes once the images are
//! built).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use outpost_e2e::board::{self, EmulatedNode, FIRST, Firmware, SECOND, tail};
use outpost_e2e::{NodeSpec, Site, bin, run_ok, wait_for};

const TOKEN: &str = "rp2040-bench-technician-token-0123456789";
const UID: &str = "e2ef00000000b001";
/// The RP2040's nominal clock: cycles per microsecond.
const MHZ: f64 = 125.0;

fn main() -> Result<()> {
    // The release binaries first: an emulated node started while they build would sample with
    // no gateway, and the figures would count its backlog.
    bin("outpost");
    let firmware = Firmware::get()?;
    sizes(firmware)?;
    cycles(firmware)?;
    throughput(firmware)?;
    ota(firmware)?;
    Ok(())
}

fn llvm(tool: &str, args: &[&str], file: &Path) -> Result<String> {
    let out = run_ok(Command::new(format!("{tool}-22")).args(args).arg(file))?;
    Ok(String::from_utf8(out.stdout)?)
}

/// `llvm-size -A`: (flash, ram) bytes. Flash: what is loaded from flash (text, rodata, the
/// vector table, .data's initial values); RAM: .data, .bss, .uninit.
fn flash_and_ram(elf: &Path) -> Result<(u64, u64)> {
    let text = llvm("llvm-size", &["-A"], elf)?;
    let (mut flash, mut ram) = (0, 0);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(name), Some(size), Some(addr)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (Ok(size), Ok(addr)) = (size.parse::<u64>(), addr.parse::<u64>()) else {
            continue;
        };
        if name.starts_with(".debug") || addr == 0 {
            continue;
        }
        if (0x1000_0000..0x2000_0000).contains(&addr) {
            flash += size;
        } else if (0x2000_0000..0x3000_0000).contains(&addr) {
            ram += size;
            if name == ".data" {
                flash += size;
            }
        }
    }
    Ok((flash, ram))
}

fn sizes(firmware: &Firmware) -> Result<()> {
    let (boot_flash, boot_ram) = flash_and_ram(&firmware.bootloader())?;
    let app = firmware.app(FIRST, "elf");
    let (app_flash, app_ram) = flash_and_ram(&app)?;
    println!("== flash and RAM (llvm-size -A), production images ==");
    println!("figure: bootloader flash {boot_flash} B, RAM {boot_ram} B");
    println!("figure: application flash {app_flash} B, RAM {app_ram} B (ACTIVE slot 524288 B)");

    // The application's symbols in flash, by what they belong to.
    let symbols = llvm(
        "llvm-nm",
        &["--print-size", "--size-sort", "--demangle", "--radix=d"],
        &app,
    )?;
    let mut groups: BTreeMap<&str, u64> = BTreeMap::new();
    let mut biggest: Vec<(u64, String)> = Vec::new();
    for line in symbols.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(addr), Some(size), Some(_kind), Some(name)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let (Ok(addr), Ok(size)) = (addr.parse::<u64>(), size.parse::<u64>()) else {
            continue;
        };
        if !(0x1000_0000..0x2000_0000).contains(&addr) {
            continue;
        }
        *groups.entry(group_of(name)).or_default() += size;
        biggest.push((size, name.to_owned()));
    }
    let named: u64 = groups.values().sum();
    for (group, bytes) in &groups {
        println!(
            "figure: application {group}: {bytes} B ({:.1} % of its flash)",
            100.0 * *bytes as f64 / app_flash as f64
        );
    }
    println!("figure: application flash in named symbols: {named} B of {app_flash} B");
    biggest.sort();
    for (size, name) in biggest.iter().rev().take(8) {
        println!(
            "  {size:>7} B  {}",
            name.chars().take(110).collect::<String>()
        );
    }
    Ok(())
}

fn group_of(symbol: &str) -> &'static str {
    const CRYPTO: &[&str] = &[
        "curve25519",
        "ed25519",
        "x25519",
        "sha2::",
        "Sha256",
        "Sha512",
        "hkdf",
        "hmac",
        "chacha",
        "ChaCha",
        "subtle",
        "zeroize",
        "digest",
        "block_buffer",
    ];
    if CRYPTO.iter().any(|c| symbol.contains(c)) {
        "cryptography (curve25519/ed25519, sha2, hkdf/hmac, chacha)"
    } else if symbol.contains("outpost_proto") {
        "outpost-proto (framing, messages, session)"
    } else if symbol.contains("outpost_node_rp2040") {
        "board and the inlined core (main task, statics)"
    } else if symbol.contains("outpost_node") {
        "outpost-node (not inlined)"
    } else if ["embassy", "rp_pac", "cortex_m", "critical_section"]
        .iter()
        .any(|c| symbol.contains(c))
    {
        "embassy-rp, cortex-m"
    } else {
        "core, compiler builtins, other"
    }
}

fn site(firmware: &Firmware, ports: &[&Path], sims: Vec<NodeSpec>) -> Result<Site> {
    board::site(firmware, ports, sims, TOKEN)
}

/// `emu: mark TAG cycles=N value=V` lines: (tag, cycles, value).
fn marks(log: &str) -> Vec<(u32, u64, u64)> {
    log.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("emu: mark ")?;
            let mut f = rest.split_whitespace();
            let tag = f.next()?.parse().ok()?;
            let cycles = f.next()?.strip_prefix("cycles=")?.parse().ok()?;
            let value = f.next()?.strip_prefix("value=")?.parse().ok()?;
            Some((tag, cycles, value))
        })
        .collect()
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn cycles(firmware: &Firmware) -> Result<()> {
    let elf = firmware.variant("cycle-marks", FIRST, "cycle-marks", 1000)?;
    let tmp = tempfile::tempdir()?;
    let flash = tmp.path().join("flash.bin");
    let link = tmp.path().join("ttyNODE");
    let log = tmp.path().join("emulator.log");
    firmware.flash_with(&elf, &flash)?;
    let node = EmulatedNode::start(&flash, UID, &link, &log, &[])?;
    let mut site = site(firmware, &[&link], Vec::new())?;
    site.start_gateway()?;
    let linked = site
        .wait_for_node_samples(UID, 1, Duration::from_secs(120))
        .with_context(|| tail(&node.log(), 30))?;
    site.wait_for_node_samples(UID, linked + 30, Duration::from_secs(120))?;
    let all = marks(&node.log());
    drop(node);
    site.gateway.take();

    // Tag 1 (bytes in): the handshake is the costliest call (the node's X25519 and its
    // signature happen in the one call that takes the CHALLENGE). Tag 2 (timers and frames out)
    // with value 1: one sample taken and its TELEMETRY sealed and handed to the UART.
    let handshake = all
        .iter()
        .filter(|m| m.0 == 1)
        .map(|m| m.1)
        .max()
        .context("no bytes-in mark")?;
    let bytes_in = median(all.iter().filter(|m| m.0 == 1).map(|m| m.1).collect());
    let telemetry: Vec<u64> = all
        .iter()
        .filter(|m| m.0 == 2 && m.2 == 1)
        .map(|m| m.1)
        .collect();
    ensure!(!telemetry.is_empty(), "no telemetry mark");
    let per_frame = median(telemetry.clone());
    // The costliest timer round: a HELLO with its fresh X25519 ephemeral, if the node makes it
    // there.
    let timers_max = all
        .iter()
        .filter(|m| m.0 == 2)
        .map(|m| m.1)
        .max()
        .unwrap_or(0);
    println!("== cycles in the emulator (rp2040js, cycle-marks image, 125 MHz) ==");
    println!(
        "figure: handshake (the call that answers the CHALLENGE) {handshake} cycles = {:.1} ms",
        handshake as f64 / MHZ / 1000.0
    );
    println!(
        "figure: a sample taken, its TELEMETRY sealed and queued: median {per_frame} cycles = {:.0} µs (sample-to-frame latency), {} samples",
        per_frame as f64 / MHZ,
        telemetry.len()
    );
    println!("figure: any other received message (an ACK): median {bytes_in} cycles");
    println!(
        "figure: the costliest timer round (a HELLO with its ephemeral key): {timers_max} cycles = {:.1} ms",
        timers_max as f64 / MHZ / 1000.0
    );
    Ok(())
}

fn throughput(firmware: &Firmware) -> Result<()> {
    let elf = firmware.variant("fast", FIRST, "", 1)?;
    println!("== samples per second on a 115,200-baud line, into the store ==");
    println!(
        "(the image samples every 1 ms, the simulator is asked for 1,000 Hz: both more than the line carries)"
    );
    for (what, sensor) in [
        (
            "the RP2040 image with its SHT3x (a 15 ms clock-stretched measurement per sample)",
            &[][..],
        ),
        (
            "the RP2040 image without an SHT3x (chip temperature and seq only)",
            &["--no-sht3x"][..],
        ),
    ] {
        let tmp = tempfile::tempdir()?;
        let flash = tmp.path().join("flash.bin");
        let link = tmp.path().join("ttyNODE");
        let log = tmp.path().join("emulator.log");
        firmware.flash_with(&elf, &flash)?;
        let mut args = vec!["--stats"];
        args.extend_from_slice(sensor);
        let node = EmulatedNode::start(&flash, UID, &link, &log, &args)?;
        let mut sim = NodeSpec::new(0);
        sim.rate_hz = 1000.0;
        sim.sim_args = vec!["--baud".into(), "115200".into()];
        sim.port_config = "baud = 115200".into();
        let mut site = site(firmware, &[&link], vec![sim])?;
        site.start_gateway()?;
        wait_for(Duration::from_secs(120), "both nodes' samples", || {
            let seqs = site.stored_seqs().ok()?;
            (seqs.len() == 2 && seqs.iter().all(|(_, s)| s.len() > 100)).then_some(())
        })?;
        let count = |site: &Site| -> Result<BTreeMap<String, usize>> {
            Ok(site
                .stored_seqs()?
                .into_iter()
                .map(|(uid, s)| (uid, s.len()))
                .collect())
        };
        let start = Instant::now();
        let before = count(&site)?;
        std::thread::sleep(Duration::from_secs(30));
        let after = count(&site)?;
        let wall = start.elapsed().as_secs_f64();
        let log = node.stop()?;
        site.gateway.take();
        // How fast the emulator ran: samples per emulated second are what a board would do.
        let speed = emulated_speed(&log);
        for (uid, n) in &after {
            let got = (n - before.get(uid).copied().unwrap_or(0)) as f64;
            if uid == UID {
                let per_emulated = speed.map_or(String::new(), |r| {
                    format!(
                        "; the emulator ran at {:.0} % of real time, so {:.1} samples per emulated second",
                        100.0 * r,
                        got / wall / r
                    )
                });
                println!(
                    "figure: {what}: {got} samples in {wall:.1} s = {:.1} samples/s{per_emulated}",
                    got / wall
                );
            } else {
                println!(
                    "figure: the host simulator beside it (4 channels): {got} samples in {wall:.1} s = {:.1} samples/s",
                    got / wall
                );
            }
        }
    }
    Ok(())
}

/// The emulator's `--stats` line (`emulated=S s wall=S s`): emulated seconds per wall second.
fn emulated_speed(log: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.starts_with("emu: stats "))?;
    let field = |name: &str| -> Option<f64> {
        let at = line.find(name)? + name.len();
        line[at..].split('s').next()?.parse().ok()
    };
    Some(field("emulated=")? / field("wall=")?)
}

fn ota(firmware: &Firmware) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let flash = tmp.path().join("flash.bin");
    let link = tmp.path().join("ttyNODE");
    let log = tmp.path().join("emulator.log");
    firmware.factory_flash(FIRST, &flash)?;
    let node = EmulatedNode::start(&flash, UID, &link, &log, &[])?;
    let mut site = site(firmware, &[&link], Vec::new())?;
    site.start_gateway()?;
    site.wait_for_node_samples(UID, 3, Duration::from_secs(120))?;
    let image = firmware.signed_image(SECOND, tmp.path())?;
    let bytes = std::fs::metadata(&image)?.len();
    let start = Instant::now();
    let mut rollout = Command::new(bin("outpost"))
        .args(["rollout", "start", "--config"])
        .arg(site.config_path())
        .args([
            "--node",
            UID,
            "--soak",
            "1s",
            "--confirm-within",
            "20s",
            "--no-wait",
        ])
        .arg("--artifact")
        .arg(&image)
        .spawn()?;
    rollout.wait()?;
    let verified = wait_for(Duration::from_secs(600), "the node's verified", || {
        let view = site.get("/api/v1/rollout").ok()?;
        let node = view["rollout"]["nodes"].as_array()?.first()?.clone();
        matches!(
            node["phase"].as_str(),
            Some("verified" | "installing" | "trial" | "confirmed" | "finalized")
        )
        .then(|| start.elapsed())
    })?;
    drop(node);
    site.gateway.take();
    println!("== OTA of the production image over 115,200 baud (emulated node) ==");
    println!(
        "figure: {bytes} B from rollout start to verified in {:.1} s = {:.0} image B/s ({:.0} % of the line's 11,520 B/s)",
        verified.as_secs_f64(),
        bytes as f64 / verified.as_secs_f64(),
        100.0 * bytes as f64 / verified.as_secs_f64() / 11_520.0
    );
    Ok(())
}
