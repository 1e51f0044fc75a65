//! `outpost-ingest`: the cloud's side of Outpost. See docs/cloud.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_ingest::config::Config;
use outpost_ingest::db;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Outpost's batches into PostgreSQL, exactly once, acknowledged after commit"
)]
struct Cli {
    /// The ingest's config file.
    #[arg(long, short, default_value = "/etc/outpost/ingest.toml", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ingest from the broker and/or the gateways' pull API until SIGTERM.
    Run,
    /// Bring the database schema up to date, then exit.
    Migrate,
    /// Drop the daily partitions past `database.retention_days` now, then exit.
    Retention,
    /// Check the config file, then exit.
    Check,
    /// Declare a gateway's batches up to SEQ lost, so its acknowledgement may pass them (a
    /// gateway that dropped batches from a full buffer, or one first seen mid-sequence).
    Skip {
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        upto: u64,
        #[arg(long)]
        reason: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTPOST_INGEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-ingest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run => outpost_ingest::run::run(config).await,
            Command::Check => {
                println!("{}: ok", cli.config.display());
                Ok(())
            }
            Command::Migrate => {
                let mut client = db::Connector::new(&config.database)?
                    .connect_at_start()
                    .await?;
                let applied = db::migrate(&mut client).await?;
                println!("migrations applied: {applied:?}");
                Ok(())
            }
            Command::Retention => {
                let mut client = db::Connector::new(&config.database)?
                    .connect_at_start()
                    .await?;
                db::migrate(&mut client).await?;
                let dropped = db::enforce_retention(&client, config.window()).await?;
                println!("partitions dropped: {dropped:?}");
                Ok(())
            }
            Command::Skip {
                gateway,
                upto,
                reason,
            } => {
                let mut client = db::Connector::new(&config.database)?
                    .connect_at_start()
                    .await?;
                db::migrate(&mut client).await?;
                let acked = db::skip(&mut client, &gateway, upto, &reason).await?;
                println!("{gateway}: acknowledged up to {acked}");
                Ok(())
            }
        }
    })
}
