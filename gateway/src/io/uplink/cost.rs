//! Connectivity cost: tallies the uplink's bytes per day in the store, projects the month, and
//! tells the writer how long to make batches: the pace of the month's traffic against its budget
//! chooses, between `uplink.min_batch_interval` and `uplink.max_batch_interval` (see
//! [`outpost_core::budget::Pacer`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::meter::Meter;
use crate::io::store::Readers;
use crate::io::store::writer::StoreCommand;
use crate::io::telemetry::TelemetryHub;
use crate::io::wall_clock::WallClock;
use outpost_core::budget::{self, Date, Pacer, Pacing, Projection};
use outpost_core::telemetry::{CostStatus, Event};

/// How often usage is written down and the budget looked at.
const TALLY_EVERY: Duration = Duration::from_secs(10);

/// The budget policy's settings.
#[derive(Debug, Clone)]
pub struct CostConfig {
    /// The budget and the batch interval's bounds.
    pub pacing: Pacing,
    /// Which day traffic counts on (`outpost_core::clock::Clock::budget_day`).
    pub clock: WallClock,
}

/// Runs until `shutdown`, then records the last tally.
pub async fn run(
    config: CostConfig,
    meter: Arc<Meter>,
    readers: Readers,
    store_tx: mpsc::Sender<StoreCommand>,
    interval_tx: watch::Sender<Duration>,
    telemetry: TelemetryHub,
    shutdown: CancellationToken,
) {
    let clock = config.clock.clone();
    let started = Instant::now();
    let mut pacer = Pacer::new(config.pacing);
    let mut counted = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(TALLY_EVERY);
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        // The day to count on: today by a trusted clock, never a day before the ledger's last
        // (a clock in the past must not open an old month); while the clock is untrusted, the
        // ledger's last day, or none yet: then the traffic is counted once a day is known.
        let _ = clock.now();
        let last_day = readers
            .read(|r| r.last_usage_day())
            .await
            .ok()
            .flatten()
            .and_then(|day| Date::from_key(&day));
        let (date, now) = clock.with(|c| (c.budget_day(last_day), c.budget_now(last_day)));
        let total = (meter.sent(), meter.received(), meter.delivered());
        let delta = (
            total.0 - counted.0,
            total.1 - counted.1,
            total.2 - counted.2,
        );
        if let (Some(date), true) = (date, delta != (0, 0, 0)) {
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
        // Projected only at a trusted time on the ledger's latest day or after; otherwise the
        // interval stays as last decided.
        let mono_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let metered = total.0 + total.1;
        let (Some(date), Some(now)) = (date, now) else {
            pacer.handle_usage(mono_ms, metered, None);
            continue;
        };
        let (day, month) = (date.key(), date.month_prefix());
        let usage = readers.read(move |r| r.usage(&day, &month)).await;
        let Ok(usage) = usage else {
            continue;
        };
        let projection: Projection = budget::project(
            now,
            usage.bytes_today,
            usage.bytes_month,
            config.pacing.budget,
        );
        let interval = pacer.handle_usage(mono_ms, metered, Some((now, usage.bytes_month)));
        interval_tx.send_if_modified(|current| std::mem::replace(current, interval) != interval);
        let was_over = telemetry.with(|t| t.cost().over_budget);
        let over_budget = projection.budget > 0 && projection.projected_month > projection.budget;
        if over_budget && !was_over {
            tracing::warn!(
                message = "Uplink traffic projected over the monthly budget; batches paced longer.",
                projected = projection.projected_month,
                budget = projection.budget,
                interval_s = interval.as_secs_f64()
            );
        }
        telemetry.record(Event::Cost(CostStatus {
            bytes_today: projection.bytes_today,
            bytes_month: projection.bytes_month,
            projected_month: projection.projected_month,
            budget: projection.budget,
            bytes_per_reading: (usage.readings_month > 0)
                .then(|| usage.bytes_month as f64 / usage.readings_month as f64),
            batch_interval_s: interval.as_secs(),
            over_budget,
        }));
    }
}
