//! `outpost`: the Outpost gateway daemon and its tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost::config::Config;
use outpost::{demo, topology};
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
    Run {
        #[arg(long, default_value = "/etc/outpost/outpost.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and report every problem in it.
    Check {
        #[arg(long, default_value = "/etc/outpost/outpost.toml")]
        config: PathBuf,
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
        #[arg(long, default_value = "10s", value_parser = outpost::config::parse_duration)]
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
        #[arg(long, default_value = "/etc/outpost/outpost.toml")]
        config: PathBuf,
        /// Batch windows of history to learn from (the newest).
        #[arg(long, default_value_t = 200)]
        windows: usize,
    },
}

fn train_dictionary(config: &std::path::Path, windows: usize) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = Config::load(config)?;
    let store = outpost::topology::store_path(&config);
    let reader = outpost::store::Reader::open(&store)
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

fn random_token() -> String {
    use rand::Rng as _;
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::from_os_rng();
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

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
            Command::Check { config } => match Config::load(&config) {
                Ok(_) => {
                    println!("{}: ok", config.display());
                    Ok(())
                }
                Err(errors) => Err(anyhow::Error::new(errors)),
            },
            Command::Run { config } => {
                let config = Config::load(&config)?;
                init_tracing(&config.log_level);
                tracing::info!(message = "Outpost starting.", version = env!("CARGO_PKG_VERSION"),
                    gateway_id = %config.gateway_id, ports = config.serial.len());
                topology::run(config, shutdown_on_signal(), |addr| {
                    tracing::info!(message = "API listening.", %addr);
                })
                .await
            }
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
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain: "cannot open store …: the disk … is full".
            eprintln!("outpost: {error:#}");
            ExitCode::FAILURE
        }
    }
}
