//! `outpost`: the Outpost gateway daemon and its tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use outpost::io::config::{self as config_files, DEFAULT_PATH as DEFAULT_CONFIG};
use outpost::io::systemd;
use outpost::{demo, selftest, topology};

mod rollout_cli;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "Edge gateway for industrial field sites"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway daemon.
    ///
    /// Under systemd (Type=notify) it reports ready once the store is open and the API listens,
    /// pings the watchdog (WatchdogSec=) and logs to the journal with structured fields.
    Run {
        /// The configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file and report every problem in it; or try this machine.
    ///
    /// With --self-test: the store, zstd, TLS and a serial port, tried the way the gateway uses
    /// them, in a temporary directory and without network.
    Check {
        /// The configuration file [default: /etc/outpost/outpost.toml, unless --self-test is
        /// given alone].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Try the store, zstd, TLS and a serial port (a pseudo-terminal) in a temporary
        /// directory, with no network; one line per check, exit status 1 if any fails.
        #[arg(long)]
        self_test: bool,
    },
    /// Run a simulated site: nodes on pseudo-terminals, the gateway, the API. No hardware, no root.
    Demo {
        /// Simulated nodes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Address of the local API.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Samples per second per node.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Bearer token for the HTTP pull of batches (default: a random one, printed).
        #[arg(long)]
        pull_token: Option<String>,
        /// How long readings gather before a batch is sealed, e.g. 10s.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        batch_interval: std::time::Duration,
        /// Add a simulated Modbus TCP energy meter on loopback, polled through the built-in
        /// Eastron SDM630 map.
        #[arg(long)]
        modbus: bool,
    },
    /// Work with sealed batches.
    Batch {
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Batch compression dictionaries.
    Dict {
        #[command(subcommand)]
        command: DictCommand,
    },
    /// The technician's login on the status page.
    Technician {
        #[command(subcommand)]
        command: TechnicianCommand,
    },
    /// The site's nodes: the enrollment window, revocation, a new key after repair.
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// The gateway's own identity: its certificate, or where provisioning by claim stands.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Node firmware images: the fleet's key, signing an image, verifying one as the gateway
    /// does before a byte of it goes to a node.
    Firmware {
        #[command(subcommand)]
        command: FirmwareCommand,
    },
    /// Node firmware rollouts on the running gateway: a canary, then waves, health-gated; or
    /// one node (`--node`). Talks to the gateway's local API with the technician token.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// The audit log of remote commands: every command that reached this gateway, who signed
    /// it and how it ended (newest first).
    Audit {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Record how the daemon's run ended, from systemd's $SERVICE_RESULT, $EXIT_CODE and
    /// $EXIT_STATUS: the unit's ExecStopPost=. The next start reports it on the health topic
    /// (clean stop, crash, watchdog, power loss; docs/health.md).
    RecordExit {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the man page (roff), generated from this command line, for packaging.
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Start a rollout and follow it with a progress bar per node until it ends (exit status 1
    /// when it halts).
    Start {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The image: a file (with its .sig beside it; added to the gateway's library), or the
        /// file name or SHA-256 of an image already in the library.
        #[arg(long)]
        artifact: String,
        /// Nodes updated first, alone (default 1).
        #[arg(long)]
        canary: Option<usize>,
        /// Cumulative shares of all nodes after the canary (default 25%,100%).
        #[arg(long)]
        waves: Option<String>,
        /// How long each stage is watched before the next (default 10m).
        #[arg(long)]
        soak: Option<String>,
        /// How long a new image has to confirm its health (default 90s).
        #[arg(long)]
        confirm_within: Option<String>,
        /// Update this one node (16 hex digits) alone: field support.
        #[arg(long, conflicts_with_all = ["canary", "waves"])]
        node: Option<String>,
        /// Return once started instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Where the rollout stands, node by node.
    Status {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// Follow it live until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Stop the rollout: nothing new starts, transfers are aborted; with --rollback, nodes that
    /// took the new image get their previous one back.
    Halt {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        rollback: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TechnicianCommand {
    /// Set the technician password: asked twice without echo on a terminal, else the first line
    /// of standard input. Only its Argon2id hash is stored (`technician.argon2` in the data
    /// directory, owned like the directory, mode 0600); the running gateway uses it at the next
    /// login.
    SetPassword {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum NodesCommand {
    /// Open the enrollment window (policy `window`): nodes never enrolled may join until it
    /// closes by itself. `--window 0s` closes it now. The running gateway sees it at once.
    Enroll {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// How long, e.g. 10m (at most a day).
        #[arg(long, value_parser = humantime::parse_duration)]
        window: std::time::Duration,
    },
    /// Revoke a node for good: its session ends at its next commit, its samples are refused
    /// and its HELLO too, across restarts. Every other node keeps working.
    Revoke {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The node's uid, 16 hex digits.
        uid: String,
    },
    /// Forget the key pinned for a node (a board back from repair with a new key): its next
    /// enrolment pins the key it proves, under the policy like a newcomer's.
    Rekey {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        uid: String,
    },
    /// The registry as an RMA record, to stdout: every node's hardware revision, lot, first
    /// contact, firmware transitions and resets (docs/rma.md). Reads the store; the gateway may
    /// be running.
    Export {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// `json`: one object per node and line; `csv`: one row per event, for a spreadsheet.
        #[arg(long, value_enum)]
        format: ExportFormat,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
enum FirmwareCommand {
    /// Make the fleet's firmware key pair in DIR: firmware.key (secret, mode 0600; keep it off
    /// the gateways) and firmware.pub (for the gateways and the node images).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign IMAGE for nodes of one hardware revision: writes IMAGE.sig.
    Sign {
        /// The firmware private key (mode 0600 or stricter).
        #[arg(long)]
        key: PathBuf,
        /// The image's version, MAJOR.MINOR.PATCH (what the node reports in HELLO).
        #[arg(long = "version")]
        version: String,
        /// The hardware revision the image is built for (0-255).
        #[arg(long)]
        hw_rev: u8,
        /// Anti-rollback: nodes that took this image take nothing below FLOOR [default: the
        /// image's version].
        #[arg(long)]
        floor: Option<String>,
        /// How long the signature holds.
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        valid_for: std::time::Duration,
        image: PathBuf,
    },
    /// Verify IMAGE and IMAGE.sig as a gateway does before sending it: signature by a fleet key,
    /// the board, the floor, the expiry. Exit status 1 with the reason if refused.
    Verify {
        /// Fleet firmware public key files.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// The nodes' hardware revision [default: any].
        #[arg(long)]
        hw_rev: Option<u8>,
        /// The floor already in force, MAJOR.MINOR.PATCH [default: none].
        #[arg(long)]
        floor: Option<String>,
        image: PathBuf,
    },
    /// Check IMAGE (and IMAGE.sig) against `[ota] firmware_keys` and keep both in the gateway's
    /// firmware library, within `ota.library_max_bytes`.
    Add {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        image: PathBuf,
    },
    /// The images in the gateway's firmware library, each checked again.
    List {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Remove FILE and its manifest from the gateway's firmware library.
    Remove {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        file: String,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Print the gateway's certificate (subject, issuer, SHA-256 fingerprint, validity, when it
    /// is renewed), or that it is not provisioned yet and whether a claim certificate is there.
    /// The private key is never printed.
    Show {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BatchCommand {
    /// Print a batch's header, then one JSON line per reading.
    Decode {
        /// The batch file; `-` or nothing reads standard input.
        file: Option<PathBuf>,
        /// A dictionary the batch may have been sealed with (repeatable).
        #[arg(long)]
        dictionary: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum DictCommand {
    /// Train a zstd dictionary from this site's own readings and make it the one new batches
    /// are sealed with (from the next start of the gateway).
    Train {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Batch windows of history to learn from (the newest).
        #[arg(long, default_value_t = 200)]
        windows: usize,
    },
}

fn set_technician_password(config: &std::path::Path) -> anyhow::Result<()> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let config = config_files::load(config)?;
    let read_line = || -> anyhow::Result<String> {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    let password = if std::io::stdin().is_terminal() {
        let ask = |prompt: &str| -> anyhow::Result<String> {
            eprint!("{prompt}");
            std::io::stderr().flush()?;
            let _echo_off = EchoOff::new()?;
            let line = read_line()?;
            eprintln!();
            Ok(line)
        };
        let first = ask("Technician password: ")?;
        anyhow::ensure!(
            ask("Again: ")? == first,
            "the two passwords differ; nothing changed"
        );
        first
    } else {
        read_line()?
    };
    let path = outpost::io::api::technician::set_password(&config.data_dir, &password)?;
    // The daemon runs as the data directory's owner and must read the hash.
    let owner = std::fs::metadata(&config.data_dir)?;
    {
        use std::os::unix::fs::MetadataExt as _;
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid()))?;
    }
    println!(
        "technician password set ({}): use it at the status page's login",
        path.display()
    );
    Ok(())
}

/// The terminal's echo off until dropped.
struct EchoOff(nix::sys::termios::Termios);

impl EchoOff {
    fn new() -> anyhow::Result<EchoOff> {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet)?;
        Ok(EchoOff(saved))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

/// `outpost nodes export`: read-only, like `outpost audit`.
fn export_nodes(config: &std::path::Path, format: ExportFormat) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = config_files::load(config)?;
    let store = outpost::topology::store_path(&config);
    let reader = outpost::io::store::Reader::open(&store)
        .with_context(|| format!("cannot open store {}", store.display()))?;
    let nodes = reader.rma_nodes()?;
    let mut out = std::io::stdout().lock();
    match format {
        ExportFormat::Json => outpost::io::rma::write_json(&mut out, &nodes),
        ExportFormat::Csv => outpost::io::rma::write_csv(&mut out, &nodes),
    }
}

fn nodes(command: NodesCommand) -> anyhow::Result<()> {
    use anyhow::{Context as _, bail};
    let config = match &command {
        NodesCommand::Export { config, format } => return export_nodes(config, *format),
        NodesCommand::Enroll { config, .. }
        | NodesCommand::Revoke { config, .. }
        | NodesCommand::Rekey { config, .. } => config,
    };
    let config = config_files::load(config)?;
    let path = outpost::topology::store_path(&config);
    let mut store = outpost::io::store::Store::open(&path)
        .with_context(|| format!("cannot open store {}", path.display()))?;
    let now_ms = outpost::io::wall_clock::unix_ms();
    let uid_of = |uid: &str| -> anyhow::Result<String> {
        let uid = uid.trim().to_ascii_lowercase();
        if uid.len() != 16 || !uid.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("`{uid}` is not a node uid (16 hex digits)");
        }
        Ok(uid)
    };
    match command {
        NodesCommand::Enroll { window, .. } => {
            if window > std::time::Duration::from_secs(24 * 3600) {
                bail!("--window is at most a day (24h)");
            }
            if config.enrollment.policy != outpost_core::link::EnrollmentPolicy::Window {
                bail!(
                    "the enrollment policy is `{}` ([enrollment] policy): a window only matters under `window`",
                    config.enrollment.policy.as_str()
                );
            }
            let until = if window.is_zero() {
                0
            } else {
                now_ms.saturating_add(i64::try_from(window.as_millis()).unwrap_or(i64::MAX))
            };
            store.transaction(|tx| tx.set_enrollment_window(until))?;
            if until == 0 {
                println!("enrollment window closed");
            } else {
                println!(
                    "enrollment window open for {} (until Unix ms {until}): nodes never enrolled may join",
                    humantime::format_duration(window)
                );
            }
        }
        NodesCommand::Revoke { uid, .. } => {
            let uid = uid_of(&uid)?;
            if !store.transaction(|tx| tx.revoke(&uid, now_ms))? {
                bail!("no node {uid} in the registry");
            }
            println!("node {uid} revoked: kept out for good");
        }
        NodesCommand::Export { .. } => unreachable!("answered above"),
        NodesCommand::Rekey { uid, .. } => {
            let uid = uid_of(&uid)?;
            if !store.transaction(|tx| tx.unpin(&uid))? {
                bail!("no node {uid} in the registry");
            }
            println!(
                "node {uid}: its pinned key is forgotten; its next enrolment pins the key it proves (policy `{}`)",
                config.enrollment.policy.as_str()
            );
        }
    }
    Ok(())
}

/// The gateway's node-link key, as nodes may pin it (`outpost-node-sim --gateway-key`): the
/// public half only.
fn node_link_identity(data_dir: &std::path::Path) -> String {
    let path = outpost::io::node_key::path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => match outpost_core::update::signing::SigningKey::parse(&text) {
            Ok(key) => format!(
                "node-link key: {} (key id {}, {})\n",
                outpost_core::hex::encode(key.ed25519().verifying_key().as_bytes()),
                key.public().id(),
                path.display()
            ),
            Err(e) => format!("node-link key: {} is not a key file: {e}\n", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "node-link key: none yet (made at the first start with a serial port)\n".into()
        }
        Err(e) => format!("node-link key: cannot read {}: {e}\n", path.display()),
    }
}

/// `outpost firmware …`: the fleet's firmware key, signing and verifying node images.
fn rollout(command: RolloutCommand) -> anyhow::Result<()> {
    use rollout_cli::Api;
    match command {
        RolloutCommand::Start {
            config,
            artifact,
            canary,
            waves,
            soak,
            confirm_within,
            node,
            no_wait,
        } => {
            let api = Api::from_config(&config_files::load(&config)?)?;
            let done = rollout_cli::start(
                &api,
                rollout_cli::StartArgs {
                    artifact,
                    canary,
                    waves,
                    soak,
                    confirm_within,
                    node,
                    wait: !no_wait,
                },
            )?;
            anyhow::ensure!(done, "the rollout halted");
            Ok(())
        }
        RolloutCommand::Status {
            config,
            json,
            watch,
        } => {
            let api = Api::from_config(&config_files::load(&config)?)?;
            if watch {
                let done = rollout_cli::follow(&api)?;
                anyhow::ensure!(done, "the rollout halted");
                Ok(())
            } else {
                rollout_cli::status(&api, json)
            }
        }
        RolloutCommand::Halt { config, rollback } => {
            let api = Api::from_config(&config_files::load(&config)?)?;
            rollout_cli::halt(&api, rollback)
        }
    }
}

fn firmware(command: FirmwareCommand) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use outpost::io::signing_files::{hash_file, keygen, private_key, public_keys, sig_path};
    use outpost_core::firmware::{Expect, PACKAGE, admit, board, parse_version};
    use outpost_core::update::signing::{Artifact, Role, SignedManifest, Validity};
    let now_ms = outpost::io::wall_clock::unix_ms();
    match command {
        FirmwareCommand::Keygen { out } => keygen(Role::Firmware, &out),
        FirmwareCommand::Sign {
            key: key_path,
            version,
            hw_rev,
            floor,
            valid_for,
            image,
        } => {
            let key = private_key(&key_path)?;
            anyhow::ensure!(
                key.role() == Role::Firmware,
                "{} is a {} key: images are signed with a firmware key (`outpost firmware keygen`)",
                key_path.display(),
                key.role()
            );
            let parsed = parse_version(&version).map_err(anyhow::Error::msg)?;
            let floor = floor.unwrap_or_else(|| version.clone());
            let floor_parsed = parse_version(&floor).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                (floor_parsed.major, floor_parsed.minor, floor_parsed.patch)
                    <= (parsed.major, parsed.minor, parsed.patch),
                "the floor {floor} is above the version {version}"
            );
            let found = hash_file(&image)?;
            anyhow::ensure!(
                found.size <= outpost_core::firmware::MAX_IMAGE_BYTES,
                "{} is {} bytes, more than a slot holds ({})",
                image.display(),
                found.size,
                outpost_core::firmware::MAX_IMAGE_BYTES
            );
            let artifact = Artifact {
                file: found.file.clone(),
                size: found.size,
                sha256: found.sha256,
                package: PACKAGE.into(),
                version,
                architecture: board(hw_rev),
            };
            artifact.check()?;
            let validity = Validity {
                floor,
                expires_unix_s: u64::try_from(now_ms / 1000).unwrap_or(0) + valid_for.as_secs(),
            };
            let signed = key.sign(artifact, validity);
            let sig = sig_path(&image);
            std::fs::write(&sig, signed.emit())
                .with_context(|| format!("cannot write {}", sig.display()))?;
            let m = signed.manifest();
            println!(
                "{}: firmware {} for {} signed by key {}, floor {}, expires {}",
                sig.display(),
                m.artifact.version,
                m.artifact.architecture,
                m.key,
                m.validity.floor,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(m.validity.expires_unix_s)
                )
            );
            Ok(())
        }
        FirmwareCommand::Verify {
            keys,
            hw_rev,
            floor,
            image,
        } => {
            let keys = public_keys(&keys)?;
            let floor = floor
                .map(|f| parse_version(&f))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let sig = sig_path(&image);
            let bytes =
                std::fs::read(&sig).with_context(|| format!("cannot read {}", sig.display()))?;
            let signed =
                SignedManifest::parse(&bytes).with_context(|| format!("{}", sig.display()))?;
            let found = hash_file(&image)?;
            let expect = Expect {
                keys: &keys,
                hw_rev,
                floor,
                now_unix_ms: now_ms,
            };
            let firmware = admit(&signed, &found, &expect).map_err(|why| {
                anyhow::anyhow!("{} refused ({}): {why}", image.display(), why.as_str())
            })?;
            println!(
                "verified: firmware {} for hardware revision {}, {} bytes, sha256 {}, floor {}, signed by key {}",
                firmware.version,
                firmware.hw_rev,
                firmware.size,
                outpost_core::hex::encode(&firmware.sha256),
                firmware.floor,
                signed.manifest().key
            );
            Ok(())
        }
        FirmwareCommand::Add { config, image } => {
            let config = config_files::load(&config)?;
            anyhow::ensure!(
                !config.ota.firmware_keys.is_empty(),
                "no fleet firmware key: name one in [ota] firmware_keys"
            );
            let expect = Expect {
                keys: &config.ota.firmware_keys,
                hw_rev: None,
                floor: None,
                now_unix_ms: now_ms,
            };
            let dir = outpost::io::firmware::dir(&config.data_dir);
            let firmware =
                outpost::io::firmware::add(&dir, &image, &expect, config.ota.library_max_bytes)
                    .with_context(|| format!("{} not added", image.display()))?;
            println!(
                "added {}: firmware {} for hardware revision {}, {} bytes, floor {}",
                firmware.file, firmware.version, firmware.hw_rev, firmware.size, firmware.floor
            );
            Ok(())
        }
        FirmwareCommand::List { config } => {
            let config = config_files::load(&config)?;
            let dir = outpost::io::firmware::dir(&config.data_dir);
            let entries = outpost::io::firmware::list(&dir, &config.ota.firmware_keys, now_ms);
            if entries.is_empty() {
                println!("the firmware library ({}) is empty", dir.display());
            }
            for entry in entries {
                match entry.checked {
                    Ok(f) => println!(
                        "{}  firmware {} for hardware revision {}, {} bytes, floor {}",
                        entry.file, f.version, f.hw_rev, f.size, f.floor
                    ),
                    Err(why) => println!("{}  refused: {why}", entry.file),
                }
            }
            Ok(())
        }
        FirmwareCommand::Remove { config, file } => {
            let config = config_files::load(&config)?;
            let dir = outpost::io::firmware::dir(&config.data_dir);
            if outpost::io::firmware::remove(&dir, &file)? {
                println!("removed {file}");
                Ok(())
            } else {
                anyhow::bail!("{file} is not in the firmware library ({})", dir.display())
            }
        }
    }
}

/// `outpost audit`: the remote commands' audit log, newest first.
fn audit(config: &std::path::Path, limit: u32, json: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let config = config_files::load(config)?;
    let store = outpost::topology::store_path(&config);
    let reader = outpost::io::store::Reader::open(&store)
        .with_context(|| format!("cannot open store {}", store.display()))?;
    let entries = reader.command_audit(limit)?;
    let mut out = std::io::stdout().lock();
    if json {
        for entry in &entries {
            writeln!(out, "{}", serde_json::to_string(entry)?)?;
        }
        return Ok(());
    }
    if entries.is_empty() {
        writeln!(out, "no remote command has reached this gateway")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24}  {:<14}  {:<20}  {:<16}  {:<11}  detail",
        "received (UTC)", "verb", "request", "key", "outcome"
    )?;
    for e in &entries {
        writeln!(
            out,
            "{:<24}  {:<14}  {:<20}  {:<16}  {:<11}  {}",
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(u64::try_from(e.received_ms).unwrap_or(0))
            ),
            e.verb,
            e.request.as_deref().unwrap_or("-"),
            e.key_id.as_deref().unwrap_or("-"),
            e.outcome,
            e.detail
        )?;
    }
    Ok(())
}

fn train_dictionary(config: &std::path::Path, windows: usize) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = config_files::load(config)?;
    let store = outpost::topology::store_path(&config);
    let reader = outpost::io::store::Reader::open(&store)
        .with_context(|| format!("cannot open store {}", store.display()))?;
    let window_ms = i64::try_from(config.batch_interval.as_millis()).unwrap_or(i64::MAX);
    let bodies = reader.training_bodies(&config.gateway_id, window_ms, windows)?;
    let dictionary = outpost_batch::train_dictionary(&bodies)
        .with_context(|| format!("cannot train from {} windows of history", bodies.len()))?;
    let dir = outpost::io::dictionaries::dir(&config.data_dir);
    let path = outpost::io::dictionaries::save_active(&dir, &dictionary)?;
    println!(
        "dictionary {} ({} bytes, from {} windows) written to {}",
        dictionary.id(),
        dictionary.as_bytes().len(),
        bodies.len(),
        path.display()
    );
    println!(
        "restart the gateway to seal new batches with it; the cloud fetches it from /api/v1/dictionaries/{}",
        dictionary.id()
    );
    Ok(())
}

/// A bearer token from the operating system's cryptographic random source.
fn random_token() -> String {
    use rand::{Rng as _, TryRngCore as _};
    let mut rng = rand::rngs::OsRng.unwrap_err();
    (0..32)
        .map(|_| char::from(b"abcdefghijkmnpqrstuvwxyz23456789"[rng.random_range(0..32)]))
        .collect()
}

fn decode_batch(file: Option<PathBuf>, dictionaries: &[PathBuf]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::{Read as _, Write as _};
    let mut bytes = Vec::new();
    match file.as_deref() {
        None => std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?,
        Some(p) if p.as_os_str() == "-" => std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?,
        Some(p) => std::fs::File::open(p)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", p.display()))?,
    };
    let dictionaries = outpost::io::dictionaries::load_files(dictionaries)?;
    let batch =
        outpost_batch::decode(&bytes, &dictionaries).context("not a valid Outpost batch")?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(out, "{}", serde_json::to_string(batch.header())?)?;
    batch.write_json_lines(&mut out)?;
    out.flush()?;
    Ok(())
}

/// outpost(1): clap_mangen's page for `outpost`, with each command's synopsis, description and
/// options in a COMMANDS section (one page for the package to ship, rather than references to
/// an `outpost-run(1)` and the like).
fn write_man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    fn commands<'a>(cmd: &'a clap::Command, leaves: &mut Vec<&'a clap::Command>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.has_subcommands() {
                commands(sub, leaves);
            } else {
                leaves.push(sub);
            }
        }
    }
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let man = clap_mangen::Man::new(cli.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    let mut leaves = Vec::new();
    commands(&cli, &mut leaves);
    for command in leaves {
        let name = command.get_bin_name().unwrap_or_else(|| command.get_name());
        writeln!(out, ".SS {name}")?;
        let page = clap_mangen::Man::new(command.clone());
        let mut section = Vec::new();
        page.render_synopsis_section(&mut section)?;
        page.render_description_section(&mut section)?;
        page.render_options_section(&mut section)?;
        // The command's own sections become paragraphs of its subsection.
        for line in String::from_utf8_lossy(&section).lines() {
            if line.starts_with(".SH ") {
                writeln!(out, ".PP")?;
            } else {
                writeln!(out, "{line}")?;
            }
        }
    }
    man.render_version_section(out)
}

/// `outpost check`: the configuration (every problem, located), the self-test, or both.
async fn check(config: Option<PathBuf>, self_test: bool) -> anyhow::Result<()> {
    let config = match (config, self_test) {
        (Some(path), _) => Some(path),
        (None, false) => Some(PathBuf::from(DEFAULT_CONFIG)),
        (None, true) => None,
    };
    if let Some(config) = config {
        let loaded = config_files::load(&config).map_err(anyhow::Error::new)?;
        for warning in &loaded.warnings {
            println!("warning: {warning}");
        }
        println!("{}: ok", config.display());
    }
    if self_test {
        let outcomes = selftest::run().await;
        for outcome in &outcomes {
            println!("{outcome}");
        }
        let failed = outcomes.iter().filter(|o| !o.passed()).count();
        if failed > 0 {
            anyhow::bail!("self-test: {failed} of {} checks failed", outcomes.len());
        }
    }
    Ok(())
}

/// `outpost run`: the daemon, telling systemd how it goes (a no-op outside a notify unit).
async fn run(config: &std::path::Path) -> anyhow::Result<()> {
    let config = config_files::load(config)
        .inspect_err(|errors| systemd::status(&format!("failed: {errors}")))?;
    init_tracing(&config.log_level);
    tracing::info!(message = "Outpost starting.", version = env!("CARGO_PKG_VERSION"),
        gateway_id = %config.gateway_id, ports = config.serial.len());
    for warning in &config.warnings {
        tracing::warn!(message = "Configuration warning.", %warning);
    }
    // How the previous run ended, before this one overwrites its record.
    if let Err(error) = std::fs::create_dir_all(&config.data_dir) {
        tracing::warn!(message = "Cannot create the data directory.", dir = %config.data_dir.display(), %error);
    }
    outpost::io::health::run_state::begin(
        &config.data_dir,
        outpost::io::wall_clock::unix_ms(),
        &outpost::io::wall_clock::kernel_boot_id(),
    );
    systemd::status("starting: opening the store");
    let shutdown = shutdown_on_signal();
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        systemd::stopping("stopping: committing what is queued");
    });
    let (ports, devices) = (config.serial.len(), config.modbus.devices.len());
    let watchdog_stop = shutdown.clone();
    let result = topology::run(config, shutdown, move |addr, writer| {
        tracing::info!(message = "API listening.", %addr);
        let running = systemd::ready_status(addr, ports, devices);
        systemd::ready(&running);
        if let Some(period) = systemd::watchdog_period() {
            tracing::info!(
                message = "Watchdog on.",
                period_ms = period.as_millis() as u64
            );
            tokio::spawn(systemd::run_watchdog(
                period,
                Some(writer),
                running,
                watchdog_stop,
            ));
        }
    })
    .await;
    if let Err(error) = &result {
        systemd::status(&format!("failed: {error:#}"));
    }
    outpost::io::health::run_state::end(
        outpost::io::wall_clock::unix_ms(),
        result.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")),
    );
    result
}

/// `outpost record-exit`: systemd's account of the run, added to the run-state file.
fn record_exit(config: &std::path::Path) -> anyhow::Result<()> {
    use outpost::io::health::run_state;
    let config = config_files::load(config)?;
    let record = run_state::exit_record_from(
        |name| std::env::var(name).ok(),
        outpost::io::wall_clock::unix_ms(),
    )
    .ok_or_else(|| {
        anyhow::anyhow!(
            "$SERVICE_RESULT is not set: this is the unit's ExecStopPost=, run by systemd after the daemon"
        )
    })?;
    println!("{}", run_state::record_exit(&config.data_dir, record)?);
    Ok(())
}

/// Logs to journald, with each event's fields as journal fields (`OUTPOST_PORT=…`), when
/// systemd connected stderr to the journal; otherwise as text.
fn init_tracing(level: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    if systemd::stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(journal.with_field_prefix(Some("OUTPOST".into())))
                    .init();
                return;
            }
            Err(error) => eprintln!("outpost: cannot reach journald ({error}); logging as text"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// Cancelled on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!(message = "Shutting down.");
        cancel.cancel();
    });
    token
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    outpost::io::allocator::tune();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // The store writer holds one for good; SQLite readers and file work share the rest
        // (more reads wait for a thread). packaging/outpost.service's TasksMax=64 counts on it.
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("outpost: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Check { config, self_test } => check(config, self_test).await,
            Command::Run { config } => run(&config).await,
            Command::Man => match write_man_page(&mut std::io::stdout().lock()) {
                // `outpost man | head`: the reader had enough.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                result => result.map_err(anyhow::Error::from),
            },
            Command::Demo {
                nodes,
                listen,
                rate,
                pull_token,
                batch_interval,
                modbus,
            } => {
                init_tracing("info");
                let pull_token = pull_token.unwrap_or_else(random_token);
                let options = demo::DemoOptions {
                    nodes,
                    listen,
                    rate,
                    pull_token,
                    batch_interval,
                    modbus,
                };
                demo::run(options, shutdown_on_signal()).await
            }
            Command::Batch {
                command: BatchCommand::Decode { file, dictionary },
            } => decode_batch(file, &dictionary),
            Command::Dict {
                command: DictCommand::Train { config, windows },
            } => train_dictionary(&config, windows),
            Command::Technician {
                command: TechnicianCommand::SetPassword { config },
            } => set_technician_password(&config),
            Command::Nodes { command } => nodes(command),
            Command::Identity {
                command: IdentityCommand::Show { config },
            } => config_files::load(&config)
                .map(|config| {
                    let now_s = outpost::io::wall_clock::unix_ms() / 1000;
                    print!(
                        "{}",
                        outpost::io::uplink::identity::describe(&config, now_s)
                    );
                    print!("{}", node_link_identity(&config.data_dir));
                })
                .map_err(anyhow::Error::from),
            Command::Firmware { command } => firmware(command),
            Command::RecordExit { config } => record_exit(&config),
            Command::Rollout { command } => rollout(command),
            Command::Audit {
                config,
                limit,
                json,
            } => audit(&config, limit, json).or_else(|e| {
                // `outpost audit | head`: the reader had enough.
                match e.downcast_ref::<std::io::Error>() {
                    Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                    _ => Err(e),
                }
            }),
        }
    });
    match result {
        // A remote `gateway-restart`: the unit restarts on this status (RestartForceExitStatus).
        Ok(()) if outpost::io::restart::requested() => {
            ExitCode::from(outpost::io::restart::RESTART_EXIT_STATUS)
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain: "cannot open store …: the disk … is full".
            eprintln!("outpost: {error:#}");
            ExitCode::FAILURE
        }
    }
}
