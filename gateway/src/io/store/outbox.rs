//! The outbox: sealed batches waiting for the cloud's acknowledgement.
//!
//! Invariants, which the uplinks (MQTT push, HTTP pull) and the cloud rely on:
//! 1. Batch sequence numbers are given at sealing, strictly increasing, and never reused, even
//!    after every batch was deleted (`AUTOINCREMENT`).
//! 2. A batch is written in the same transaction that moves `batches.last_reading_id` past its
//!    last reading: every committed reading goes into exactly one batch (or is counted dropped),
//!    never two, whatever crash comes between.
//! 3. A batch's bytes are fixed at sealing and stored; every (re)send is those bytes, so the cloud
//!    dedupes by (gateway id, batch sequence).
//! 4. A batch row is deleted only (a) once the cloud acknowledged it, or (b) when the outbox holds
//!    more than `buffer.max_bytes`: then the oldest go first, counted in `batches.dropped`.
//! 5. `batches.acked_upto` never decreases, and an acknowledgement past the newest sealed batch
//!    is refused: the cloud cannot acknowledge what it cannot have received.
//! 7. A batch holds only readings with trusted timestamps, or only readings whose timestamps
//!    are final but unsynchronised (header flag `FLAG_UNSYNCHRONISED`); sealing stops before a
//!    reading still held for a trusted clock (`clock.rs`), so readings are sealed in id order.
//! 6. Sealing never fails for what the readings are: a batch holds one kind of value per
//!    (source, channel), so a batch ends before the first reading that would bring a second kind
//!    (a device point whose kind a config edit changed), and that reading opens the next batch.

use outpost_batch::{BatchBuilder, Dictionary, GatewayId, PushError, Value};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::series::stored_value;
use super::{Reader, StoreError, Tx};

/// A batch as the index shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BatchInfo {
    pub seq: u64,
    pub size_bytes: u64,
    pub first_ts_ms: i64,
    pub last_ts_ms: i64,
    pub reading_count: u64,
    pub dictionary_id: u32,
    /// The batch's timestamps come from a clock never synchronised (header flag).
    pub unsynchronised: bool,
}

/// What sealing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    pub seq: u64,
    pub readings: u64,
    pub size_bytes: u64,
}

/// What enforcing the buffer bound did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dropped {
    pub batches: u64,
    pub readings: u64,
}

/// The outbox at a glance.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct OutboxTotals {
    pub batches: u64,
    pub bytes: u64,
    pub oldest_seq: Option<u64>,
    pub newest_seq: Option<u64>,
    pub acked_upto: u64,
    /// Batches dropped, oldest first, because the outbox outgrew `buffer.max_bytes`.
    pub dropped_batches: u64,
    pub dropped_readings: u64,
    /// Readings committed but not sealed into a batch yet.
    pub unsealed_readings: u64,
    /// The time (Unix ms) of the oldest reading the cloud has not acknowledged: the oldest
    /// batch's first, or the first unsealed one's when every batch is acknowledged.
    pub oldest_unsent_ms: Option<i64>,
}

/// Why an acknowledgement was refused.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("batch {upto} has not been sealed yet (newest is {newest})")]
    BeyondNewest { upto: u64, newest: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Acked {
    pub acked_upto: u64,
    pub deleted: u64,
    /// Readings in the deleted batches.
    pub readings: u64,
}

pub(super) fn meta_u64(tx: &rusqlite::Connection, key: &str) -> Result<u64, StoreError> {
    let value: String =
        tx.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))?;
    value
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("meta {key} = {value:?} is not a number")))
}

pub(super) fn set_meta(tx: &rusqlite::Connection, key: &str, value: u64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE meta SET value = ?2 WHERE key = ?1",
        params![key, value.to_string()],
    )?;
    Ok(())
}

/// A reading as a batch takes it, owned (dictionary training groups them by window).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRow {
    /// `readings.id`.
    pub id: u64,
    pub source: String,
    pub channel: String,
    pub ts_ms: i64,
    pub value: Value,
    /// `readings.clock` is set: the timestamp is not trusted wall time (held or final, by id).
    pub untrusted: bool,
}

/// A reading as a batch takes it, borrowed from the statement's current row: sealing streams
/// rows into the builder, so a batch of 100,000 readings never holds 100,000 names at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowRef<'a> {
    pub id: u64,
    pub source: &'a str,
    pub channel: &'a str,
    pub ts_ms: i64,
    pub value: Value,
    pub untrusted: bool,
}

impl BatchRow {
    fn as_ref(&self) -> RowRef<'_> {
        RowRef {
            id: self.id,
            source: &self.source,
            channel: &self.channel,
            ts_ms: self.ts_ms,
            value: self.value,
            untrusted: self.untrusted,
        }
    }
}

/// Rows in id order, one at a time (a lending iterator: each row borrows from the source).
pub trait Rows {
    fn next_row(&mut self) -> Result<Option<RowRef<'_>>, StoreError>;
}

impl Rows for std::slice::Iter<'_, BatchRow> {
    fn next_row(&mut self) -> Result<Option<RowRef<'_>>, StoreError> {
        Ok(self.next().map(BatchRow::as_ref))
    }
}

impl Rows for rusqlite::Rows<'_> {
    fn next_row(&mut self) -> Result<Option<RowRef<'_>>, StoreError> {
        match self.next()? {
            Some(row) => Ok(Some(batch_row_ref(row)?)),
            None => Ok(None),
        }
    }
}

/// The columns [`batch_row_ref`] reads, from `readings r JOIN series s`.
const BATCH_ROW_COLUMNS: &str =
    "r.id, s.source, s.channel, s.exp, r.ts_ms, r.value, r.clock IS NOT NULL";

fn batch_row_ref<'a>(row: &'a rusqlite::Row<'_>) -> rusqlite::Result<RowRef<'a>> {
    let stored = row.get_ref(5)?;
    let value = stored_value(row.get(3)?, stored).map_err(|why| {
        rusqlite::Error::FromSqlConversionFailure(5, stored.data_type(), why.into())
    })?;
    let text = |i: usize| -> rusqlite::Result<&'a str> {
        row.get_ref(i)?.as_str().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
        })
    };
    Ok(RowRef {
        id: row.get(0)?,
        source: text(1)?,
        channel: text(2)?,
        ts_ms: row.get(4)?,
        value,
        untrusted: row.get(6)?,
    })
}

impl RowRef<'_> {
    fn to_owned_row(self) -> BatchRow {
        BatchRow {
            id: self.id,
            source: self.source.to_owned(),
            channel: self.channel.to_owned(),
            ts_ms: self.ts_ms,
            value: self.value,
            untrusted: self.untrusted,
        }
    }
}

/// Rows up to (not including) the first one still held for a trusted clock: held readings wait,
/// and everything after them with them (invariant 7).
struct UntilHeld<R> {
    rows: R,
    final_upto: u64,
}

impl<R: Rows> Rows for UntilHeld<R> {
    fn next_row(&mut self) -> Result<Option<RowRef<'_>>, StoreError> {
        let final_upto = self.final_upto;
        Ok(self
            .rows
            .next_row()?
            .filter(|r| !(r.untrusted && r.id > final_upto)))
    }
}

/// A sealed batch and the rows it holds.
#[derive(Debug)]
pub struct Built {
    pub bytes: Vec<u8>,
    pub taken: usize,
    pub first_id: u64,
    pub last_id: u64,
}

/// Seals the longest prefix of `rows` one batch can hold into batch bytes; `None` if `rows` has
/// none. The prefix ends before the first row whose series already holds another kind of value
/// in it (invariant 6), and before the first row whose timestamp is trusted if the first one's
/// is not, or the other way round (invariant 7); that row is read but not taken. The one place
/// readings become a batch, so the outbox and dictionary training see the same bodies.
pub fn build_batch(
    gateway_id: &str,
    seq: u64,
    rows: &mut dyn Rows,
    dictionary: Option<&Dictionary>,
) -> Result<Option<Built>, Box<dyn std::error::Error + Send + Sync>> {
    let Some(first) = rows.next_row()? else {
        return Ok(None);
    };
    let unsynchronised = first.untrusted;
    let (first_id, mut last_id) = (first.id, first.id);
    let mut builder =
        BatchBuilder::new(GatewayId::new(gateway_id)?, seq).unsynchronised(unsynchronised);
    builder.push(first.source, first.channel, first.ts_ms, first.value)?;
    let mut taken = 1;
    while let Some(row) = rows.next_row()? {
        if row.untrusted != unsynchronised {
            break;
        }
        match builder.push(row.source, row.channel, row.ts_ms, row.value) {
            Ok(()) => {
                taken += 1;
                last_id = row.id;
            }
            Err(PushError::KindMismatch { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(Built {
        bytes: builder.seal(dictionary)?,
        taken,
        first_id,
        last_id,
    }))
}

impl Tx<'_> {
    /// Seals up to `max_readings` unsealed readings, oldest first, into the next batch.
    /// Returns `None` when there is nothing to seal.
    pub fn seal_batch(
        &mut self,
        gateway_id: &str,
        now_ms: i64,
        max_readings: usize,
        dictionary: Option<&Dictionary>,
    ) -> Result<Option<Sealed>, StoreError> {
        let after = meta_u64(&self.tx, "batches.last_reading_id")?;
        let final_upto = meta_u64(&self.tx, "clock.final_upto")?;
        // The sequence number AUTOINCREMENT gives the row written below, so the batch carries it.
        let seq: u64 = self.tx.query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'batches'), 0) + 1",
            [],
            |r| r.get(0),
        )?;
        let built = {
            let mut stmt = self.tx.prepare_cached(&format!(
                "SELECT {BATCH_ROW_COLUMNS} FROM readings r JOIN series s ON s.id = r.series_id
                 WHERE r.id > ?1 ORDER BY r.id LIMIT ?2"
            ))?;
            let mut rows = UntilHeld {
                rows: stmt.query(params![after, max_readings as u64])?,
                final_upto,
            };
            build_batch(gateway_id, seq, &mut rows, dictionary)
                .map_err(|e| StoreError::Corrupt(format!("cannot seal batch {seq}: {e}")))?
        };
        let Some(Built {
            bytes,
            taken,
            first_id,
            last_id,
        }) = built
        else {
            return Ok(None);
        };
        let cannot = |e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("cannot seal batch {seq}: {e}"))
        };
        let header = outpost_batch::read_header(&bytes).map_err(|e| cannot(&e))?;
        self.tx.execute(
            "INSERT INTO batches (seq, first_reading_id, last_reading_id, first_ts_ms, last_ts_ms,
                 reading_count, dictionary_id, sealed_ms, size_bytes, bytes, unsynchronised)
                 VALUES (?1, ?10, ?2, ?3, ?4, ?5, ?6, ?11, ?7, ?8, ?9)",
            params![
                seq,
                last_id,
                header.first_ts_ms,
                header.last_ts_ms,
                header.reading_count,
                header.dictionary_id.map_or(0, std::num::NonZeroU32::get),
                bytes.len() as u64,
                bytes,
                header.unsynchronised,
                first_id,
                now_ms
            ],
        )?;
        set_meta(&self.tx, "batches.last_reading_id", last_id)?;
        Ok(Some(Sealed {
            seq,
            readings: taken as u64,
            size_bytes: bytes.len() as u64,
        }))
    }

    /// Drops the oldest batches until the outbox holds at most `max_bytes`.
    pub fn enforce_buffer(&mut self, max_bytes: u64) -> Result<Dropped, StoreError> {
        let mut dropped = Dropped::default();
        let mut total: u64 = self.tx.query_row(
            "SELECT coalesce(sum(size_bytes), 0) FROM batches",
            [],
            |r| r.get(0),
        )?;
        while total > max_bytes {
            let oldest: Option<(u64, u64, u64)> = self
                .tx
                .query_row(
                    "SELECT seq, size_bytes, reading_count FROM batches ORDER BY seq LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((seq, size, readings)) = oldest else {
                break;
            };
            self.release_readings_of_batches(seq)?;
            self.tx
                .execute("DELETE FROM batches WHERE seq = ?1", [seq])?;
            total -= size;
            dropped.batches += 1;
            dropped.readings += readings;
        }
        if dropped.batches > 0 {
            let batches = meta_u64(&self.tx, "batches.dropped")? + dropped.batches;
            let readings = meta_u64(&self.tx, "batches.dropped_readings")? + dropped.readings;
            set_meta(&self.tx, "batches.dropped", batches)?;
            set_meta(&self.tx, "batches.dropped_readings", readings)?;
        }
        Ok(dropped)
    }

    /// The cloud has every batch up to `upto`: delete them.
    pub fn ack_batches(&mut self, upto: u64) -> Result<Acked, AckError> {
        let newest: u64 = self
            .tx
            .query_row(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'batches'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(StoreError::from)?;
        if upto > newest {
            return Err(AckError::BeyondNewest { upto, newest });
        }
        let acked_upto = meta_u64(&self.tx, "batches.acked_upto")?.max(upto);
        set_meta(&self.tx, "batches.acked_upto", acked_upto)?;
        let readings: u64 = self
            .tx
            .query_row(
                "SELECT coalesce(sum(reading_count), 0) FROM batches WHERE seq <= ?1",
                [upto],
                |r| r.get(0),
            )
            .map_err(StoreError::from)?;
        self.release_readings_of_batches(upto)?;
        let deleted = self
            .tx
            .execute("DELETE FROM batches WHERE seq <= ?1", [upto])
            .map_err(StoreError::from)?;
        Ok(Acked {
            acked_upto,
            deleted: deleted as u64,
            readings,
        })
    }

    /// The readings of the batches up to `seq` leave the outbox (acknowledged or dropped): they
    /// may be deleted ([`Tx::prune_readings`]).
    fn release_readings_of_batches(&mut self, seq: u64) -> Result<(), StoreError> {
        let newest: Option<u64> = self.tx.query_row(
            "SELECT max(last_reading_id) FROM batches WHERE seq <= ?1",
            [seq],
            |r| r.get(0),
        )?;
        if let Some(newest) = newest {
            let released = meta_u64(&self.tx, "readings.released_upto")?.max(newest);
            set_meta(&self.tx, "readings.released_upto", released)?;
        }
        Ok(())
    }

    /// Deletes released readings (see [`Tx::ack_batches`], [`Tx::enforce_buffer`]), oldest first
    /// and at most `limit` (and [`PRUNE_CHUNK`]) per call so a transaction stays short, always
    /// keeping the newest `keep` readings for local inspection. Returns how many were deleted.
    pub fn prune_readings(&mut self, keep: u64, limit: u64) -> Result<u64, StoreError> {
        let released = meta_u64(&self.tx, "readings.released_upto")?;
        let (oldest, newest): (Option<u64>, Option<u64>) =
            self.tx
                .query_row("SELECT min(id), max(id) FROM readings", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        let (Some(oldest), Some(newest)) = (oldest, newest) else {
            return Ok(0);
        };
        // Never the newest reading: its id must not be reused.
        let upto = released
            .min(newest.saturating_sub(keep.max(1)))
            .min(oldest.saturating_add(limit.max(PRUNE_CHUNK) - 1));
        if upto < oldest {
            return Ok(0);
        }
        let deleted = self
            .tx
            .execute("DELETE FROM readings WHERE id <= ?1", [upto])?;
        Ok(deleted as u64)
    }

    /// Committed readings not yet in a batch.
    pub fn unsealed_readings(&mut self) -> Result<u64, StoreError> {
        unsealed(&self.tx)
    }
}

/// Readings [`Tx::prune_readings`] may always delete in one transaction, however little the
/// round sealed.
pub const PRUNE_CHUNK: u64 = 20_000;

fn unsealed(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    let after = meta_u64(conn, "batches.last_reading_id")?;
    Ok(conn.query_row(
        "SELECT count(*) FROM readings WHERE id > ?1",
        [after],
        |r| r.get(0),
    )?)
}

impl Reader {
    /// Bodies of pseudo-batches cut from the newest readings, `window_ms` of readings each, at most
    /// `windows` of them: training material for a zstd dictionary that fits this site's data.
    pub fn training_bodies(
        &self,
        gateway_id: &str,
        window_ms: i64,
        windows: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let newest: Option<i64> =
            self.conn
                .query_row("SELECT max(ts_ms) FROM readings", [], |r| r.get(0))?;
        let Some(newest) = newest else {
            return Ok(Vec::new());
        };
        let from = newest - window_ms * windows as i64;
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {BATCH_ROW_COLUMNS} FROM readings r JOIN series s ON s.id = r.series_id
             WHERE r.ts_ms > ?1 ORDER BY r.id"
        ))?;
        let mut rows = stmt.query([from])?;
        let mut windows_rows: std::collections::BTreeMap<i64, Vec<BatchRow>> =
            std::collections::BTreeMap::new();
        while let Some(row) = rows.next_row()? {
            let row = row.to_owned_row();
            windows_rows
                .entry((row.ts_ms - from) / window_ms)
                .or_default()
                .push(row);
        }
        let no_dictionaries = outpost_batch::Dictionaries::new();
        let mut bodies = Vec::new();
        for rows in windows_rows.values() {
            // A window whose series changed kind gives more than one body, as sealing would.
            let mut rest = rows.as_slice();
            while let Some(built) =
                build_batch(gateway_id, bodies.len() as u64 + 1, &mut rest.iter(), None)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?
            {
                bodies.push(
                    outpost_batch::raw_body(&built.bytes, &no_dictionaries)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                );
                rest = &rest[built.taken..];
            }
        }
        Ok(bodies)
    }

    /// Up to `limit` batches with `seq > after`, oldest first.
    pub fn batches_after(&self, after: u64, limit: u64) -> Result<Vec<BatchInfo>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, size_bytes, first_ts_ms, last_ts_ms, reading_count, dictionary_id, unsynchronised FROM batches
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit], |r| {
            Ok(BatchInfo {
                seq: r.get(0)?,
                size_bytes: r.get(1)?,
                first_ts_ms: r.get(2)?,
                last_ts_ms: r.get(3)?,
                reading_count: r.get(4)?,
                dictionary_id: r.get(5)?,
                unsynchronised: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A batch's bytes, exactly as sealed.
    pub fn batch_bytes(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT bytes FROM batches WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn outbox(&self) -> Result<OutboxTotals, StoreError> {
        let (batches, bytes, oldest_seq, newest_seq) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(size_bytes), 0), min(seq), max(seq) FROM batches",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        Ok(OutboxTotals {
            batches,
            bytes,
            oldest_seq,
            newest_seq,
            acked_upto: meta_u64(&self.conn, "batches.acked_upto")?,
            dropped_batches: meta_u64(&self.conn, "batches.dropped")?,
            dropped_readings: meta_u64(&self.conn, "batches.dropped_readings")?,
            unsealed_readings: unsealed(&self.conn)?,
            oldest_unsent_ms: self.oldest_unsent_ms()?,
        })
    }

    fn oldest_unsent_ms(&self) -> Result<Option<i64>, StoreError> {
        let in_batches: Option<i64> =
            self.conn
                .query_row("SELECT min(first_ts_ms) FROM batches", [], |r| r.get(0))?;
        if in_batches.is_some() {
            return Ok(in_batches);
        }
        let after = meta_u64(&self.conn, "batches.last_reading_id")?;
        Ok(self
            .conn
            .query_row(
                "SELECT ts_ms FROM readings WHERE id > ?1 ORDER BY id LIMIT 1",
                [after],
                |r| r.get(0),
            )
            .optional()?)
    }
}
