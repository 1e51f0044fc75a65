//! The writer task: the one owner of the store's write connection.
//!
//! Port tasks, device pollers and the API send [`StoreCommand`]s; the writer collects what arrives
//! within `commit_interval` of the first (or up to `max_commit_readings`, counting node and device
//! readings alike), applies it in one transaction on a blocking thread, and only then answers.
//! One fsync covers every node's samples and every device's readings of that window. Between commits it seals batches when the [`Batcher`] says so, and keeps the outbox
//! within `buffer.max_bytes`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_proto::{Health, Hello, Millis};
use tokio::sync::{mpsc, oneshot};

use super::outbox::{AckError, Acked, Dropped};
use super::{Enrolment, Ingested, Registered, Sample, SeriesReading, Store, StoreError};
use outpost_core::batcher::Batcher;

/// Work for the store.
#[derive(Debug)]
pub enum StoreCommand {
    Register {
        port: String,
        hello: Hello,
        public_key: [u8; 32],
        now_ms: i64,
        reply: mpsc::UnboundedSender<StoreReply>,
    },
    Ingest {
        node_id: i64,
        boot_id: u32,
        samples: Vec<Sample>,
        now_ms: i64,
        reply: mpsc::UnboundedSender<StoreReply>,
    },
    /// The readings of one poll of a device, taken at `ts_ms`. No reply: if the commit fails
    /// they are lost (no one holds them for a resend, unlike node samples), and the device's next
    /// poll brings fresh ones.
    DeviceReadings {
        source: String,
        ts_ms: i64,
        readings: Vec<SeriesReading>,
    },
    Health {
        node_id: i64,
        health: Health,
        now_ms: i64,
    },
    LinkErrors {
        node_id: i64,
        count: u32,
    },
    /// The cloud acknowledged every batch up to `upto`.
    AckBatches {
        upto: u64,
        reply: oneshot::Sender<AckReply>,
    },
    /// Uplink traffic to add to `day`'s tally.
    RecordUsage {
        day: String,
        sent: u64,
        received: u64,
        readings: u64,
    },
}

/// The store's answer to a port task.
#[derive(Debug)]
pub enum StoreReply {
    /// `Ok(None)`: the node's key differs from the pinned one; it is refused.
    Registered {
        hello: Hello,
        result: Result<Option<Registered>, Arc<StoreError>>,
    },
    Committed {
        node_id: i64,
        boot_id: u32,
        result: Result<Ingested, Arc<StoreError>>,
    },
}

/// The answer to [`StoreCommand::AckBatches`].
#[derive(Debug)]
pub enum AckReply {
    Acked(Acked),
    /// The acknowledgement itself is wrong (past the newest batch): the caller's error.
    Refused(AckError),
    /// The store could not apply it; nothing changed.
    Failed(Arc<StoreError>),
}

/// An alert about the store or the outbox, for the status page.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Alert {
    pub kind: &'static str,
    pub message: String,
    pub at_ms: i64,
}

/// The store's condition, for the status page.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StoreCondition {
    pub commits: u64,
    pub failed_commits: u64,
    /// The last failure, cleared by the next successful commit.
    pub error: Option<String>,
    pub batches_sealed: u64,
    /// Current batch interval (stretched when the data budget is at risk).
    pub batch_interval_s: u64,
    pub alerts: Vec<Alert>,
}

/// How the writer commits and seals.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub gateway_id: String,
    pub commit_interval: Duration,
    pub max_commit_readings: usize,
    pub batch_interval: Duration,
    pub max_batch_readings: usize,
    pub buffer_max_bytes: u64,
    /// The trained dictionary new batches are sealed with.
    pub dictionary: Option<outpost_batch::Dictionary>,
    /// Where the newest sealed batch's sequence number is announced.
    pub sealed: tokio::sync::watch::Sender<u64>,
}

fn lock(condition: &Mutex<StoreCondition>) -> std::sync::MutexGuard<'_, StoreCondition> {
    condition
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    condition: Arc<Mutex<StoreCondition>>,
) -> Store {
    let started = Instant::now();
    let now = move || Millis(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    let mut batcher = Batcher::new(config.batch_interval, config.max_batch_readings);
    lock(&condition).batch_interval_s = config.batch_interval.as_secs();
    let (mut store, unsealed) =
        blocking(store, |s| s.transaction(|tx| tx.unsealed_readings())).await;
    batcher.handle_committed(now(), unsealed.unwrap_or(0));

    loop {
        let window = batcher
            .poll_timeout()
            .map(|at| Duration::from_millis(at - now()));
        let first = tokio::select! {
            command = commands.recv() => match command {
                Some(command) => Some(command),
                None => break,
            },
            () = tokio::time::sleep(window.unwrap_or(Duration::from_secs(3600))), if window.is_some() => None,
            Ok(()) = batch_interval.changed() => {
                let interval = *batch_interval.borrow_and_update();
                if interval != batcher.interval() {
                    tracing::info!(message = "Batch interval changed by the data budget.", seconds = interval.as_secs());
                    batcher.set_interval(interval);
                    lock(&condition).batch_interval_s = interval.as_secs();
                }
                None
            }
        };
        if let Some(first) = first {
            let batch = collect(first, &mut commands, &config).await;
            let (returned, (batch, outcomes, result)) = blocking(store, move |s| {
                let mut outcomes = Vec::new();
                let result = apply(s, &batch, &mut outcomes);
                (batch, outcomes, result)
            })
            .await;
            store = returned;
            let committed = answer(batch, outcomes, result, &condition);
            batcher.handle_committed(now(), committed);
        }
        if batcher.poll_seal(now()) {
            store = seal(store, &config, &mut batcher, now(), &condition).await;
        }
    }
    store
}

/// How long work nobody waits for (Modbus readings, health reports, usage tallies) may gather
/// before it is committed: a Modbus-only site then costs about one fsync a second instead of one
/// per poll. A command someone waits for (a node's ACK, a batch ack) shortens the window to
/// `commit_interval`. At most this much of such work is lost in a power cut.
pub const RELAXED_COMMIT_WINDOW: Duration = Duration::from_secs(1);

/// Whether a caller waits for the command's commit.
fn awaited(command: &StoreCommand) -> bool {
    matches!(
        command,
        StoreCommand::Register { .. }
            | StoreCommand::Ingest { .. }
            | StoreCommand::AckBatches { .. }
    )
}

/// Gathers what arrives within the commit window after `first`.
async fn collect(
    first: StoreCommand,
    commands: &mut mpsc::Receiver<StoreCommand>,
    config: &WriterConfig,
) -> Vec<StoreCommand> {
    let window = |command: &StoreCommand| {
        let window = if awaited(command) {
            config.commit_interval
        } else {
            RELAXED_COMMIT_WINDOW.max(config.commit_interval)
        };
        tokio::time::Instant::now() + window
    };
    let mut deadline = window(&first);
    let mut readings = readings_in(&first);
    let mut batch = vec![first];
    while readings < config.max_commit_readings {
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => {
                    deadline = deadline.min(window(&command));
                    readings += readings_in(&command);
                    batch.push(command);
                }
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    batch
}

/// Seals every batch that is due, then enforces the buffer bound.
async fn seal(
    store: Store,
    config: &WriterConfig,
    batcher: &mut Batcher,
    now: Millis,
    condition: &Mutex<StoreCondition>,
) -> Store {
    let (gateway_id, max, buffer) = (
        config.gateway_id.clone(),
        config.max_batch_readings,
        config.buffer_max_bytes,
    );
    let dictionary = config.dictionary.clone();
    let (store, result) = blocking(store, move |s| {
        s.transaction(|tx| {
            let (mut sealed, mut newest) = (0u64, None);
            // Everything unsealed: one batch per window, several after a backlog (downtime), or
            // where a series changed kind (a batch ends before the change).
            while let Some(batch) = tx.seal_batch(
                &gateway_id,
                crate::io::wall_clock::unix_ms(),
                max,
                dictionary.as_ref(),
            )? {
                sealed += 1;
                newest = Some(batch.seq);
            }
            let dropped = tx.enforce_buffer(buffer)?;
            Ok((sealed, newest, dropped, tx.unsealed_readings()?))
        })
    })
    .await;
    match result {
        Ok((sealed, newest, dropped, left)) => {
            batcher.handle_sealed(now, left);
            if let Some(newest) = newest {
                // The uplink wakes for it: new batches are signalled, never polled for.
                config.sealed.send_replace(newest);
            }
            let mut c = lock(condition);
            c.batches_sealed += sealed;
            if dropped != Dropped::default() {
                let message = format!(
                    "outbox over buffer.max_bytes: dropped the {} oldest batches ({} readings) to keep the newest data",
                    dropped.batches, dropped.readings
                );
                tracing::warn!(
                    message = "Outbox full; oldest batches dropped.",
                    batches = dropped.batches,
                    readings = dropped.readings
                );
                c.alerts.retain(|a| a.kind != "buffer_full");
                c.alerts.push(Alert {
                    kind: "buffer_full",
                    message,
                    at_ms: crate::io::wall_clock::unix_ms(),
                });
            }
        }
        Err(error) => {
            // Retried at the next window; the readings stay unsealed meanwhile.
            tracing::error!(message = "Sealing a batch failed.", %error);
            batcher.handle_sealed(now, 1);
            lock(condition).error = Some(error.to_string());
        }
    }
    store
}

fn readings_in(command: &StoreCommand) -> usize {
    match command {
        StoreCommand::Ingest { samples, .. } => samples.iter().map(|s| s.readings.len()).sum(),
        StoreCommand::DeviceReadings { readings, .. } => readings.len(),
        _ => 1,
    }
}

/// What one command produced inside the transaction.
#[derive(Debug)]
enum Outcome {
    Registered(Option<Registered>),
    Ingested(Ingested),
    /// Device readings stored.
    Stored(u64),
    Acked(Result<Acked, AckError>),
    None,
}

fn apply(
    store: &mut Store,
    batch: &[StoreCommand],
    outcomes: &mut Vec<Outcome>,
) -> Result<(), StoreError> {
    store.transaction(|tx| {
        outcomes.clear();
        for command in batch {
            let outcome = match command {
                StoreCommand::Register {
                    port,
                    hello,
                    public_key,
                    now_ms,
                    ..
                } => {
                    let registered = tx.register(*now_ms, port, hello)?;
                    match tx.enroll(registered.node_id, public_key)? {
                        Enrolment::KeyMismatch => Outcome::Registered(None),
                        Enrolment::Pinned | Enrolment::Known => {
                            Outcome::Registered(Some(registered))
                        }
                    }
                }
                StoreCommand::Ingest {
                    node_id,
                    boot_id,
                    samples,
                    now_ms,
                    ..
                } => Outcome::Ingested(tx.ingest(*node_id, *boot_id, samples, *now_ms)?),
                StoreCommand::DeviceReadings {
                    source,
                    ts_ms,
                    readings,
                } => Outcome::Stored(tx.ingest_series(source, *ts_ms, readings)?),
                StoreCommand::Health {
                    node_id,
                    health,
                    now_ms,
                } => {
                    tx.health(*node_id, *now_ms, health)?;
                    Outcome::None
                }
                StoreCommand::LinkErrors { node_id, count } => {
                    tx.link_errors(*node_id, *count)?;
                    Outcome::None
                }
                StoreCommand::RecordUsage {
                    day,
                    sent,
                    received,
                    readings,
                } => {
                    tx.record_usage(day, *sent, *received, *readings)?;
                    Outcome::None
                }
                // A refused acknowledgement is the caller's error, not the transaction's.
                StoreCommand::AckBatches { upto, .. } => match tx.ack_batches(*upto) {
                    Err(AckError::Store(e)) => return Err(e),
                    result => Outcome::Acked(result),
                },
            };
            outcomes.push(outcome);
        }
        Ok(())
    })
}

/// Answers every command; returns the readings committed.
fn answer(
    batch: Vec<StoreCommand>,
    outcomes: Vec<Outcome>,
    result: Result<(), StoreError>,
    condition: &Mutex<StoreCondition>,
) -> u64 {
    let failure = result.err().map(Arc::new);
    {
        let mut c = lock(condition);
        match &failure {
            None => {
                c.commits += 1;
                if c.error.take().is_some() {
                    tracing::info!(message = "Store writable again.");
                }
            }
            Some(error) => {
                c.failed_commits += 1;
                if c.error.as_deref() != Some(&error.to_string()) {
                    tracing::error!(message = "Store commit failed; nothing acknowledged, nodes keep their samples.", %error);
                }
                c.error = Some(error.to_string());
            }
        }
    }
    let mut committed = 0;
    let mut outcomes = outcomes.into_iter();
    for command in batch {
        let outcome = outcomes.next();
        // A dropped receiver means its task ended; nothing to tell it.
        match (command, outcome, &failure) {
            (StoreCommand::Register { hello, reply, .. }, _, Some(e)) => {
                let _ = reply.send(StoreReply::Registered {
                    hello,
                    result: Err(Arc::clone(e)),
                });
            }
            (StoreCommand::Register { hello, reply, .. }, Some(Outcome::Registered(r)), None) => {
                let _ = reply.send(StoreReply::Registered {
                    hello,
                    result: Ok(r),
                });
            }
            (
                StoreCommand::Ingest {
                    node_id,
                    boot_id,
                    reply,
                    ..
                },
                _,
                Some(e),
            ) => {
                let _ = reply.send(StoreReply::Committed {
                    node_id,
                    boot_id,
                    result: Err(Arc::clone(e)),
                });
            }
            (
                StoreCommand::Ingest {
                    node_id,
                    boot_id,
                    reply,
                    ..
                },
                Some(Outcome::Ingested(i)),
                None,
            ) => {
                committed += i.readings;
                let _ = reply.send(StoreReply::Committed {
                    node_id,
                    boot_id,
                    result: Ok(i),
                });
            }
            (StoreCommand::DeviceReadings { .. }, Some(Outcome::Stored(n)), None) => {
                committed += n;
            }
            (StoreCommand::AckBatches { reply, .. }, _, Some(e)) => {
                let _ = reply.send(AckReply::Failed(Arc::clone(e)));
            }
            (StoreCommand::AckBatches { reply, .. }, Some(Outcome::Acked(r)), None) => {
                let _ = reply.send(match r {
                    Ok(acked) => AckReply::Acked(acked),
                    Err(refused) => AckReply::Refused(refused),
                });
            }
            (
                StoreCommand::DeviceReadings { .. }
                | StoreCommand::Health { .. }
                | StoreCommand::LinkErrors { .. }
                | StoreCommand::RecordUsage { .. },
                _,
                _,
            ) => {}
            (_, _, None) => unreachable!("every command has its outcome after a commit"),
        }
    }
    committed
}
