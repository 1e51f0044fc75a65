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
    },
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
            } => {
                init_tracing("info");
                demo::run(
                    demo::DemoOptions {
                        nodes,
                        listen,
                        rate,
                    },
                    shutdown_on_signal(),
                )
                .await
            }
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
