//! Sealing rounds: committed readings become outbox batches, and the outbox is kept within
//! `buffer.max_bytes`.
//!
//! The writer runs a round whenever the IO-free [`Batcher`](outpost_core::batcher::Batcher) says a
//! batch is due. A round is one transaction: it seals everything unsealed (one batch per window,
//! several after downtime, or where a series changed kind), then drops the oldest batches while
//! the outbox is over the cap (outbox invariants 2 and 4). A round that fails leaves the readings
//! unsealed for the next one.

use outpost_batch::Dictionary;

use super::Held;
use super::outbox::Dropped;
use super::writer::WriterConfig;
use super::{Store, StoreError};
use crate::io::wall_clock::WallClock;

/// What sealing needs to know; nothing else.
#[derive(Debug, Clone)]
pub(super) struct Sealer {
    gateway_id: String,
    max_batch_readings: usize,
    buffer_max_bytes: u64,
    keep_readings: u64,
    /// The trained dictionary new batches are sealed with.
    dictionary: Option<Dictionary>,
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Round {
    /// Batches sealed.
    pub(super) sealed: u64,
    /// The newest batch sealed, if any: the uplink is told (it never polls for batches).
    pub(super) newest: Option<u64>,
    /// Batches the cap dropped, oldest first.
    pub(super) dropped: Dropped,
    /// Readings still unsealed after the round.
    pub(super) left: u64,
    /// Of those, readings held for a trusted clock (`clock.rs`).
    pub(super) held: Held,
    /// Held readings given their exact time this round.
    pub(super) restamped: u64,
    /// Held readings made final (sealed marked unsynchronised) this round.
    pub(super) released: u64,
    /// Readings the cloud has, deleted this round (`store.keep_readings`).
    pub(super) pruned: u64,
}

impl Sealer {
    pub(super) fn new(config: &WriterConfig) -> Sealer {
        Sealer {
            gateway_id: config.gateway_id.clone(),
            max_batch_readings: config.max_batch_readings,
            buffer_max_bytes: config.buffer_max_bytes,
            keep_readings: config.keep_readings,
            dictionary: config.dictionary.clone(),
        }
    }

    /// Settles the readings held for a trusted clock (re-stamps them if `clock` is trusted now,
    /// makes them final if they waited `clock.max_hold`), seals every unsealed reading not held
    /// into batches of at most `max_batch_readings`, stamped `now_ms`, then enforces the cap; all
    /// in one transaction.
    pub(super) fn round(
        &self,
        store: &mut Store,
        now_ms: i64,
        clock: &WallClock,
    ) -> Result<Round, StoreError> {
        store.transaction(|tx| {
            let (mut restamped, mut released) = (0, 0);
            let held = tx.held()?;
            let now = clock.now();
            if now.trusted() {
                // Also remembers the trusted time (the high-water mark), held readings or not.
                restamped = tx.restamp_held(now.wall_ms - now.mono_ms, now.wall_ms)?;
            } else if let Some(oldest) = held.oldest_mono_ms {
                if clock.with(|c| c.release_due(oldest, now.mono_ms)) {
                    released = tx.release_held()?;
                }
            }
            let (mut sealed, mut newest, mut readings) = (0, None, 0);
            while let Some(batch) = tx.seal_batch(
                &self.gateway_id,
                now_ms,
                self.max_batch_readings,
                self.dictionary.as_ref(),
            )? {
                sealed += 1;
                newest = Some(batch.seq);
                readings += batch.readings;
            }
            let dropped = tx.enforce_buffer(self.buffer_max_bytes)?;
            // Twice what this round sealed: deletion outpaces ingest, and its transaction stays
            // in proportion to the round's own work.
            let pruned = tx.prune_readings(self.keep_readings, 2 * readings)?;
            Ok(Round {
                pruned,
                sealed,
                newest,
                dropped,
                left: tx.unsealed_readings()?,
                held: tx.held()?,
                restamped,
                released,
            })
        })
    }
}

impl Round {
    /// The `buffer_full` alert's message when the cap dropped batches; `None` when it dropped
    /// nothing. Raised again, it updates the one alert (telemetry keys alerts by kind).
    pub(super) fn alert_message(&self) -> Option<String> {
        let Dropped { batches, readings } = self.dropped;
        (self.dropped != Dropped::default()).then(|| {
            format!(
                "outbox over buffer.max_bytes: dropped the {batches} oldest batches ({readings} readings) to keep the newest data"
            )
        })
    }
}
