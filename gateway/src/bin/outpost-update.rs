//! `outpost-update`: the gateway's self-update agent, run as root by `outpost-update.service`
//! when `outpost-update.path` sees a manifest in the spool. It trusts nothing the daemon
//! dropped there: it verifies the artifact itself, installs it, and keeps it only if the new
//! version proves healthy in time (`outpost::io::update`; guide: docs/self-update.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use outpost::io::config as config_files;
use outpost::io::update::apply::{self, Settings};
use outpost::io::update::system::System;
use outpost::io::update::{PUBKEYS, STATE_DIR, last_report};
use outpost_core::update::agent::AgentConfig;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-update",
    version,
    about = "Outpost gateway self-update agent (root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The agent's own folder: report.json, the in-progress marker, the package to roll back to.
    #[arg(long, default_value = STATE_DIR)]
    state_dir: PathBuf,
    /// The package that updates itself.
    #[arg(long, default_value = "outpost")]
    package: String,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Finish an interrupted update, then verify and apply every artifact in the spool.
    Apply {
        #[command(flatten)]
        common: Common,
        /// The gateway's configuration: where the spool is ([gateway] data_dir) and where the
        /// API answers ([api] listen).
        #[arg(long, default_value = "/etc/outpost/outpost.toml")]
        config: PathBuf,
        /// The spool [default: DATA_DIR/updates/incoming from the configuration].
        #[arg(long)]
        spool: Option<PathBuf>,
        /// The daemon's API [default: [api] listen from the configuration].
        #[arg(long)]
        api: Option<SocketAddr>,
        /// The trusted gateway-update public keys.
        #[arg(long, default_value = PUBKEYS)]
        pubkey: PathBuf,
        /// The daemon's systemd unit.
        #[arg(long, default_value = "outpost.service")]
        service: String,
        /// How long a new version has to become ready and healthy, from the start of dpkg.
        #[arg(long, default_value = "120s", value_parser = duration)]
        deadline: Duration,
        /// How long it must then stay healthy to be confirmed.
        #[arg(long, default_value = "10s", value_parser = duration)]
        settle: Duration,
    },
    /// Make DEB, the installed version's package, the one a failed update rolls back to (needed
    /// once, for the first update of a gateway installed by hand, unless dpkg-repack is there).
    Keep {
        #[command(flatten)]
        common: Common,
        deb: PathBuf,
    },
    /// Print the last update's report (JSON).
    Report {
        #[command(flatten)]
        common: Common,
    },
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // To stderr, which systemd hands to the journal; it adds the time.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("outpost-update: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::Apply {
            common,
            config,
            spool,
            api,
            pubkey,
            service,
            deadline,
            settle,
        } => {
            let mut unusable_config = None;
            let (spool, api) = match (spool, api) {
                (Some(spool), Some(api)) => (spool, api),
                (spool, api) => match config_files::load(&config) {
                    Ok(config) => (
                        spool.unwrap_or_else(|| {
                            outpost::io::update::incoming::incoming_dir(&config.data_dir)
                        }),
                        api.unwrap_or(config.api_listen),
                    ),
                    // Nothing is installed, but every artifact is refused with a report and
                    // taken out of the spool the path unit watches (the packaged one).
                    Err(errors) => {
                        let why = format!("{}: {errors}", config.display());
                        tracing::error!(message = "The gateway's configuration cannot be used; refusing every update.", %why);
                        unusable_config = Some(why);
                        let defaults = outpost_core::config::RawGateway::default();
                        (
                            spool.unwrap_or_else(|| {
                                outpost::io::update::incoming::incoming_dir(&defaults.data_dir)
                            }),
                            api.unwrap_or_else(|| {
                                outpost_core::config::RawApi::default()
                                    .listen
                                    .parse()
                                    .expect("the default listen address parses")
                            }),
                        )
                    }
                },
            };
            let settings = Settings {
                spool,
                state_dir: common.state_dir,
                pubkeys: pubkey,
                package: common.package,
                agent: AgentConfig {
                    deadline,
                    settle,
                    ..AgentConfig::default()
                },
                unusable_config,
            };
            let dpkg_log = settings.state_dir.join("work").join("dpkg.log");
            let mut system = System::new(&service, api, dpkg_log);
            let reports = apply::apply(&settings, &mut system)?;
            if reports.is_empty() {
                tracing::info!(message = "Nothing to apply.", spool = %settings.spool.display());
            }
            // Every outcome, refusals and rollbacks too, is a handled one: it is in the report
            // and the journal. A failure exit is kept for the agent itself failing to run.
            Ok(())
        }
        Cmd::Keep { common, deb } => {
            let settings = Settings {
                spool: PathBuf::new(),
                state_dir: common.state_dir,
                pubkeys: PathBuf::new(),
                package: common.package,
                agent: AgentConfig::default(),
                unusable_config: None,
            };
            let mut system = System::new(
                "outpost.service",
                ([127, 0, 0, 1], 0).into(),
                PathBuf::new(),
            );
            let kept = apply::keep(&settings, &mut system, &deb)?;
            println!("kept {} as the package to roll back to", kept.display());
            Ok(())
        }
        Cmd::Report { common } => {
            let report = last_report(&common.state_dir)
                .with_context(|| format!("no readable report in {}", common.state_dir.display()))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
