//! The writer task: the one owner of the store's write connection.
//!
//! Port tasks, device pollers and the API send [`StoreCommand`]s; the writer collects what arrives
//! within `commit_interval` of the first (or up to `max_commit_readings`, counting node and device
//! readings alike), applies it in one transaction on a blocking thread, and only then answers
//! each command's caller (`command.rs`: how an answer travels with its command). One fsync covers
//! every node's samples and every device's readings of that window. Between commits, when the
//! [`Batcher`] says a batch is due, it runs a sealing round (`sealer.rs`): a whole batch interval
//! after a window's first reading, soon after the first reading of the run, or right after the
//! commit of a priority reading (at most once per `priority_min_interval`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_proto::Millis;
use tokio::sync::mpsc;

use super::command::{self, Job};
pub use super::command::{AckReply, AuditOp, OtaStoreOp, StoreCommand, StoreReply};
use super::sealer::{Round, Sealer};
use super::{Store, StoreError};
use crate::io::telemetry::TelemetryHub;
use outpost_core::batcher::Batcher;
use outpost_core::telemetry::{AlertKey, AlertKind, Event};

/// Tells telemetry how a group commit ended, with a journal line and the `store_failing` alert
/// when the store's condition changes (failing, or writable again).
pub(super) fn record_commit(telemetry: &TelemetryHub, failure: Option<&StoreError>, at_ms: i64) {
    let was = telemetry.with(|t| t.store().error.clone());
    let key = AlertKey::gateway(AlertKind::StoreFailing);
    match failure {
        None => {
            if was.is_some() {
                tracing::info!(message = "Store writable again.");
                telemetry.record(Event::Resolve { at_ms, key });
            }
            telemetry.record(Event::Committed);
        }
        Some(error) => {
            let error = error.to_string();
            if was.as_deref() != Some(&error) {
                tracing::error!(message = "Store commit failed; nothing acknowledged, nodes keep their samples.", %error);
                telemetry.record(Event::Raise {
                    at_ms,
                    key,
                    message: format!(
                        "store commits fail: {error}; nothing is acknowledged, nodes keep their samples"
                    ),
                });
            }
            telemetry.record(Event::CommitFailed(error));
        }
    }
}

/// Tells telemetry how a sealing round ended: batches sealed, or its error; and raises the
/// `buffer_full` alert when the cap dropped batches.
pub(super) fn record_round(
    telemetry: &TelemetryHub,
    round: &Result<Round, StoreError>,
    at_ms: i64,
) {
    match round {
        Ok(round) => {
            telemetry.record(Event::Sealed {
                batches: round.sealed,
            });
            if let Some(message) = round.alert_message() {
                tracing::warn!(
                    message = "Outbox full; oldest batches dropped.",
                    batches = round.dropped.batches,
                    readings = round.dropped.readings
                );
                telemetry.record(Event::Raise {
                    at_ms,
                    key: AlertKey::gateway(AlertKind::BufferFull),
                    message,
                });
            }
        }
        Err(error) => {
            tracing::error!(message = "Sealing a batch failed.", %error);
            telemetry.record(Event::SealFailed(error.to_string()));
        }
    }
}

/// How the writer commits and seals.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub gateway_id: String,
    pub commit_interval: Duration,
    pub max_commit_readings: usize,
    pub batch_interval: Duration,
    pub max_batch_readings: usize,
    /// The least time between two batches sealed early for priority readings
    /// (`uplink.priority_min_interval`).
    pub priority_min_interval: Duration,
    pub buffer_max_bytes: u64,
    /// Readings kept after the cloud has them (`store.keep_readings`).
    pub keep_readings: u64,
    /// The trained dictionary new batches are sealed with.
    pub dictionary: Option<outpost_batch::Dictionary>,
    /// Where the newest sealed batch's sequence number is announced.
    pub sealed: tokio::sync::watch::Sender<u64>,
    /// Judges the wall clock for the sealing rounds (re-stamp or release held readings).
    pub clock: crate::io::wall_clock::WallClock,
}

/// Runs `f` on the store on a blocking thread, handing the store back.
async fn blocking<T: Send + 'static>(
    store: Store,
    f: impl FnOnce(&mut Store) -> T + Send + 'static,
) -> (Store, T) {
    tokio::task::spawn_blocking(move || {
        let mut store = store;
        let out = f(&mut store);
        (store, out)
    })
    .await
    .expect("store writer thread panicked")
}

/// Runs until every sender is dropped.
pub async fn run(
    store: Store,
    mut commands: mpsc::Receiver<StoreCommand>,
    mut batch_interval: tokio::sync::watch::Receiver<Duration>,
    config: WriterConfig,
    telemetry: TelemetryHub,
) -> Store {
    let started = Instant::now();
    let now = move || Millis(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    let mut batcher = Batcher::new(config.batch_interval, config.max_batch_readings)
        .with_priority_min_interval(config.priority_min_interval);
    let sealer = Arc::new(Sealer::new(&config));
    telemetry.record(Event::BatchInterval(config.batch_interval));
    let (mut store, unsealed) =
        blocking(store, |s| s.transaction(|tx| tx.unsealed_readings())).await;
    batcher.handle_committed(now(), unsealed.unwrap_or(0));

    loop {
        let window = batcher
            .poll_timeout()
            .map(|at| Duration::from_millis(at - now()));
        let first = tokio::select! {
            command = commands.recv() => match command {
                Some(command) => Some(command.into_job()),
                None => break,
            },
            () = tokio::time::sleep(window.unwrap_or(Duration::from_secs(3600))), if window.is_some() => None,
            Ok(()) = batch_interval.changed() => {
                let interval = *batch_interval.borrow_and_update();
                if interval != batcher.interval() {
                    tracing::info!(message = "Batch interval changed by the data budget's pace.", seconds = interval.as_secs_f64());
                    batcher.set_interval(interval);
                    telemetry.record(Event::BatchInterval(interval));
                }
                None
            }
        };
        if let Some(first) = first {
            let jobs = collect(first, &mut commands, &config).await;
            let priority = jobs.iter().any(|job| job.priority());
            let seal_requested = jobs.iter().any(|job| job.seal_now());
            let (returned, settled) = blocking(store, move |s| command::apply(s, jobs)).await;
            store = returned;
            record_commit(
                &telemetry,
                settled.error().map(|e| &**e),
                crate::io::wall_clock::unix_ms(),
            );
            let committed = settled.answer();
            let at = now();
            batcher.handle_committed(at, committed);
            if priority && committed > 0 {
                batcher.handle_priority(at);
            }
            if seal_requested {
                batcher.handle_seal_requested(at);
            }
        }
        let due_at = now();
        if batcher.poll_seal(due_at) {
            let sealer = Arc::clone(&sealer);
            let clock = config.clock.clone();
            let (returned, round) = blocking(store, move |s| {
                let round = sealer.round(s, crate::io::wall_clock::unix_ms(), &clock);
                // A seal's columns and compressor are free now: give their pages back.
                crate::io::allocator::release_free_memory();
                round
            })
            .await;
            store = returned;
            if let Ok(round) = &round {
                if round.restamped > 0 {
                    tracing::info!(
                        message = "Readings held for a trusted clock got their exact time.",
                        readings = round.restamped
                    );
                }
                if round.released > 0 {
                    tracing::warn!(
                        message = "Readings held for a trusted clock waited clock.max_hold; sealed marked unsynchronised.",
                        readings = round.released
                    );
                }
            }
            // A failed round is retried at the next window; its readings stay unsealed meanwhile.
            // Held readings do not count towards a full batch: they wait for the clock, and the
            // next window looks at them again.
            let left = round
                .as_ref()
                .map_or(1, |round| round.left - round.held.readings.min(round.left));
            batcher.handle_sealed(due_at, left);
            if let Some(newest) = round.as_ref().ok().and_then(|round| round.newest) {
                config.sealed.send_replace(newest);
            }
            record_round(&telemetry, &round, crate::io::wall_clock::unix_ms());
        }
    }
    store
}

/// How long work nobody waits for (Modbus readings, health reports, usage tallies) may gather
/// before it is committed: a Modbus-only site then costs about one fsync a second instead of one
/// per poll. A command someone waits for (a node's ACK, a batch ack) shortens the window to
/// `commit_interval`. At most this much of such work is lost in a power cut.
pub const RELAXED_COMMIT_WINDOW: Duration = Duration::from_secs(1);

/// Gathers what arrives within the commit window after `first`; a priority reading shortens it
/// to `commit_interval` like work someone waits for.
async fn collect(
    first: Box<dyn Job>,
    commands: &mut mpsc::Receiver<StoreCommand>,
    config: &WriterConfig,
) -> Vec<Box<dyn Job>> {
    let window = |job: &dyn Job| {
        let window = if job.awaited() || job.priority() {
            config.commit_interval
        } else {
            RELAXED_COMMIT_WINDOW.max(config.commit_interval)
        };
        tokio::time::Instant::now() + window
    };
    let mut deadline = window(&*first);
    let mut readings = first.readings();
    let mut jobs = vec![first];
    while readings < config.max_commit_readings {
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => {
                    let job = command.into_job();
                    deadline = deadline.min(window(&*job));
                    readings += job.readings();
                    jobs.push(job);
                }
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    jobs
}
