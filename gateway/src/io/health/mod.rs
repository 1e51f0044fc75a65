//! The gateway's own health: the task that samples it, publishes it on `outpost/{id}/health`
//! and shows it in `/api/v1/status` and on the status page (docs/health.md).
//!
//! Every `health.sample_interval` the task reads the gauges ([`gauges`]: `/proc`, the data
//! directory's file system), the outbox (a store reader), the uplink (the telemetry snapshot)
//! and the modem ([`modem`]: ModemManager on D-Bus), and asks
//! `outpost_core::health::HealthSchedule` whether a report goes out now. The report goes to
//! telemetry at every sample, and to the uplink (a watch: only the newest counts) when the
//! schedule says so; the uplink publishes it at once, never behind batches. The task also
//! refreshes the run-state file's heartbeat ([`run_state`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use outpost_core::config::health::HealthConfig;
use outpost_core::health::run_end::{EndReason, PreviousRun};
use outpost_core::health::{
    HEALTH_VERSION, HealthReport, HealthSchedule, LinkHealth, OutboxHealth, Watched, disk_low,
};
use outpost_core::telemetry::Event;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::io::store::Readers;
use crate::io::telemetry::TelemetryHub;

pub mod gauges;
pub mod modem;
pub mod run_state;

/// The run-state file's heartbeat is rewritten at most this often.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);

/// What the health task needs from the rest of the daemon.
#[derive(Debug)]
pub struct HealthIo {
    pub config: HealthConfig,
    pub data_dir: PathBuf,
    pub readers: Readers,
    pub telemetry: TelemetryHub,
    /// When the daemon started (for `up_s`).
    pub started: Instant,
    /// Reports to publish, to the uplink; `None` without an MQTT uplink.
    pub reports: Option<watch::Sender<Vec<u8>>>,
}

/// Samples, reports and publishes until `shutdown`.
pub async fn run(io: HealthIo, shutdown: CancellationToken) {
    let previous = run_state::previous()
        .cloned()
        .unwrap_or_else(|| PreviousRun {
            reason: EndReason::Unknown,
            kind: None,
            detail: "not recorded: this process is not the daemon (`outpost run`)".into(),
            since_ms: None,
            last_alive_ms: None,
        });
    let mut schedule = HealthSchedule::new(io.config.interval);
    let mut gauges = gauges::Gauges::new(&io.data_dir);
    let mut modem = modem::ModemWatch::new(io.config.modem_bus.clone());
    let mut low = false;
    let mut modem_said: Option<(&'static str, Option<String>)> = None;
    let mut heartbeat_at = Instant::now();
    let mut ticker = tokio::time::interval(io.config.sample_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let (cpu, mem, mut disk) = gauges.sample(now);
        if let Some(free_pct) = disk.free_pct {
            let was_low = low;
            low = disk_low(low, free_pct, io.config.disk_low_percent);
            // INFO, not WARN: a gauge crossing a mark is news for the cloud (the report goes at
            // once), not a failure; a store that cannot write is its own alert.
            if low && !was_low {
                tracing::info!(message = "The data directory's disk is low.", free_pct, free_bytes = ?disk.free,
                    low_percent = io.config.disk_low_percent);
            } else if was_low && !low {
                tracing::info!(
                    message = "The data directory's disk is no longer low.",
                    free_pct
                );
            }
        }
        disk.low = low;
        let outbox = match io.readers.read(|r| r.outbox()).await {
            Ok(outbox) => {
                let now_ms = crate::io::wall_clock::unix_ms();
                OutboxHealth {
                    batches: outbox.batches,
                    bytes: outbox.bytes,
                    unsealed: outbox.unsealed_readings,
                    oldest_s: outbox
                        .oldest_unsent_ms
                        .map(|at| u64::try_from((now_ms - at).max(0) / 1000).unwrap_or(0)),
                }
            }
            Err(error) => {
                tracing::debug!(message = "Cannot read the outbox for the health report.", %error);
                OutboxHealth::default()
            }
        };
        let link = io.telemetry.with(|t| {
            t.uplink().map(|board| LinkHealth {
                up: board.session.connected,
                since: board.since_ms,
            })
        });
        let modem = modem.sample().await;
        let said = (modem.state, modem.why.clone());
        if modem_said.as_ref() != Some(&said) {
            tracing::info!(message = "Cellular modem.", state = modem.state, why = ?modem.why,
                signal = ?modem.signal, operator = ?modem.operator);
            modem_said = Some(said);
        }
        let watched = Watched {
            uplink_up: link.map(|l| l.up),
            modem: modem.link(),
            disk_low: low,
        };
        let since_start = u64::try_from(io.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let why = schedule.handle_sample(since_start, watched);
        let report = HealthReport {
            v: HEALTH_VERSION,
            at: crate::io::wall_clock::unix_ms(),
            why,
            up_s: io.started.elapsed().as_secs(),
            prev: previous.clone(),
            cpu,
            mem,
            disk,
            link,
            outbox,
            modem,
        };
        if now.duration_since(heartbeat_at) >= HEARTBEAT_EVERY {
            heartbeat_at = now;
            run_state::heartbeat(report.at);
        }
        if let (Some(why), Some(reports)) = (why, &io.reports) {
            match serde_json::to_vec(&report) {
                Ok(bytes) => {
                    tracing::debug!(message = "Health report.", ?why, bytes = bytes.len());
                    reports.send_replace(bytes);
                }
                Err(error) => tracing::warn!(message = "Cannot encode the health report.", %error),
            }
        }
        io.telemetry.record(Event::Health(Box::new(report)));
    }
}
