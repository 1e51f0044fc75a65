//! Connectivity cost: tallies the uplink's bytes per day in the store, projects the month, and
//! tells the writer how long to make batches (see [`outpost_core::budget`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::meter::Meter;
use crate::io::store::Reader;
use crate::io::store::writer::StoreCommand;
use outpost_core::budget::{self, Date, Projection};

/// How often usage is written down and the budget looked at.
const TALLY_EVERY: Duration = Duration::from_secs(10);

/// Cost as the status page shows it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CostStatus {
    pub bytes_today: u64,
    pub bytes_month: u64,
    pub projected_month: u64,
    /// `uplink.monthly_budget_bytes`; 0 when none is set.
    pub budget: u64,
    /// Uplink bytes (both directions) per reading the cloud acknowledged, this month.
    pub bytes_per_reading: Option<f64>,
    pub batch_interval_s: u64,
    pub over_budget: bool,
}

/// The budget policy's settings.
#[derive(Debug, Clone, Copy)]
pub struct CostConfig {
    pub monthly_budget_bytes: u64,
    pub batch_interval: Duration,
    pub max_batch_interval: Duration,
}

/// Runs until `shutdown`, then records the last tally.
pub async fn run(
    config: CostConfig,
    meter: Arc<Meter>,
    store_path: std::path::PathBuf,
    store_tx: mpsc::Sender<StoreCommand>,
    interval_tx: watch::Sender<Duration>,
    status: Arc<Mutex<CostStatus>>,
    shutdown: CancellationToken,
) {
    let mut counted = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(TALLY_EVERY);
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let now = crate::io::wall_clock::unix_ms();
        let date = Date::from_unix_ms(now);
        let total = (meter.sent(), meter.received(), meter.delivered());
        let delta = (
            total.0 - counted.0,
            total.1 - counted.1,
            total.2 - counted.2,
        );
        if delta != (0, 0, 0) {
            let command = StoreCommand::RecordUsage {
                day: date.key(),
                sent: delta.0,
                received: delta.1,
                readings: delta.2,
            };
            if store_tx.send(command).await.is_ok() {
                counted = total;
            }
        }
        if stopping {
            break;
        }
        let (day, month) = (date.key(), date.month_prefix());
        let usage = tokio::task::spawn_blocking({
            let path = store_path.clone();
            move || Reader::open(&path).and_then(|r| r.usage(&day, &month))
        })
        .await;
        let Ok(Ok(usage)) = usage else {
            continue;
        };
        let projection: Projection = budget::project(
            now,
            usage.bytes_today,
            usage.bytes_month,
            config.monthly_budget_bytes,
        );
        let interval = budget::batch_interval(
            &projection,
            config.batch_interval,
            config.max_batch_interval,
        );
        interval_tx.send_if_modified(|current| std::mem::replace(current, interval) != interval);
        let mut s = status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let over_budget = projection.budget > 0 && projection.projected_month > projection.budget;
        if over_budget && !s.over_budget {
            tracing::warn!(
                message = "Uplink traffic projected over the monthly budget; batches stretched.",
                projected = projection.projected_month,
                budget = projection.budget,
                interval_s = interval.as_secs()
            );
        }
        *s = CostStatus {
            bytes_today: projection.bytes_today,
            bytes_month: projection.bytes_month,
            projected_month: projection.projected_month,
            budget: projection.budget,
            bytes_per_reading: (usage.readings_month > 0)
                .then(|| usage.bytes_month as f64 / usage.readings_month as f64),
            batch_interval_s: interval.as_secs(),
            over_budget,
        };
    }
}
