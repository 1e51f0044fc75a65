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

use outpost_batch::{BatchBuilder, Dictionary, GatewayId, Value};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

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

fn meta_u64(tx: &rusqlite::Connection, key: &str) -> Result<u64, StoreError> {
    let value: String =
        tx.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))?;
    value
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("meta {key} = {value:?} is not a number")))
}

fn set_meta(tx: &rusqlite::Connection, key: &str, value: u64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE meta SET value = ?2 WHERE key = ?1",
        params![key, value.to_string()],
    )?;
    Ok(())
}

/// Decimal exponent of a node channel's stored integers (hundredths: -2).
fn exponent(channel: u8) -> i8 {
    match outpost_proto::ChannelId(channel).scale() {
        100 => -2,
        10 => -1,
        _ => 0,
    }
}

fn channel_name(channel: u8) -> String {
    outpost_proto::ChannelId(channel)
        .name()
        .map_or_else(|| format!("ch{channel}"), str::to_owned)
}

/// A reading as a batch takes it: (reading id, source uid, channel, ts_ms, raw value).
pub type BatchRow = (u64, String, u8, i64, i64);

/// Up to `limit` readings with `id > after`, in id order.
fn rows_after(
    conn: &rusqlite::Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<BatchRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT r.id, n.uid, r.channel, r.ts_ms, r.value FROM readings r JOIN nodes n ON n.id = r.node_id
         WHERE r.id > ?1 ORDER BY r.id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit as u64], |row| {
        Ok((
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Seals rows into batch bytes: the one place readings become a batch, so the outbox and
/// dictionary training see the same bodies.
pub fn build_batch(
    gateway_id: &str,
    seq: u64,
    rows: &[BatchRow],
    dictionary: Option<&Dictionary>,
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let mut builder = BatchBuilder::new(GatewayId::new(gateway_id)?, seq);
    for (_, uid, channel, ts_ms, value) in rows {
        builder.push(
            uid,
            &channel_name(*channel),
            *ts_ms,
            Value::decimal(*value, exponent(*channel)),
        )?;
    }
    Ok(builder.seal(dictionary)?)
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
        let readings = rows_after(&self.tx, after, max_readings)?;
        let (Some(first), Some(last)) = (readings.first(), readings.last()) else {
            return Ok(None);
        };
        let (first_id, last_id) = (first.0, last.0);

        // The row first, so the batch carries its own sequence number.
        self.tx.execute(
            "INSERT INTO batches (first_reading_id, last_reading_id, first_ts_ms, last_ts_ms, reading_count,
                 dictionary_id, sealed_ms, size_bytes, bytes) VALUES (?1, ?2, 0, 0, 0, 0, ?3, 0, x'')",
            params![first_id, last_id, now_ms],
        )?;
        let seq = u64::try_from(self.tx.last_insert_rowid()).unwrap_or_default();
        let cannot = |e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("cannot seal batch {seq}: {e}"))
        };
        let bytes = build_batch(gateway_id, seq, &readings, dictionary).map_err(|e| cannot(&e))?;
        let header = outpost_batch::read_header(&bytes).map_err(|e| cannot(&e))?;
        self.tx.execute(
            "UPDATE batches SET first_ts_ms = ?2, last_ts_ms = ?3, reading_count = ?4, dictionary_id = ?5,
                 size_bytes = ?6, bytes = ?7 WHERE seq = ?1",
            params![
                seq,
                header.first_ts_ms,
                header.last_ts_ms,
                header.reading_count,
                header.dictionary_id.map_or(0, std::num::NonZeroU32::get),
                bytes.len() as u64,
                bytes
            ],
        )?;
        set_meta(&self.tx, "batches.last_reading_id", last_id)?;
        Ok(Some(Sealed {
            seq,
            readings: readings.len() as u64,
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

    /// Adds uplink traffic to a day's tally.
    pub fn record_usage(
        &mut self,
        day: &str,
        sent: u64,
        received: u64,
        readings: u64,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO uplink_usage (day, sent, received, readings) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (day) DO UPDATE SET sent = sent + ?2, received = received + ?3, readings = readings + ?4",
            params![day, sent, received, readings],
        )?;
        Ok(())
    }

    /// Committed readings not yet in a batch.
    pub fn unsealed_readings(&mut self) -> Result<u64, StoreError> {
        unsealed(&self.tx)
    }
}

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
        let mut stmt = self.conn.prepare(
            "SELECT r.id, n.uid, r.channel, r.ts_ms, r.value FROM readings r JOIN nodes n ON n.id = r.node_id
             WHERE r.ts_ms > ?1 ORDER BY r.id",
        )?;
        let rows = stmt.query_map([from], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?;
        let mut windows_rows: std::collections::BTreeMap<i64, Vec<BatchRow>> =
            std::collections::BTreeMap::new();
        for row in rows {
            let row: BatchRow = row?;
            windows_rows
                .entry((row.3 - from) / window_ms)
                .or_default()
                .push(row);
        }
        let no_dictionaries = outpost_batch::Dictionaries::new();
        let mut bodies = Vec::new();
        for (i, rows) in windows_rows.values().enumerate() {
            let bytes = build_batch(gateway_id, i as u64 + 1, rows, None)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            bodies.push(
                outpost_batch::raw_body(&bytes, &no_dictionaries)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
        }
        Ok(bodies)
    }

    /// Up to `limit` batches with `seq > after`, oldest first.
    pub fn batches_after(&self, after: u64, limit: u64) -> Result<Vec<BatchInfo>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, size_bytes, first_ts_ms, last_ts_ms, reading_count, dictionary_id FROM batches
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

    /// Uplink traffic: (bytes today, bytes this month, readings acknowledged this month).
    pub fn usage(&self, day: &str, month_prefix: &str) -> Result<(u64, u64, u64), StoreError> {
        let today: u64 = self.conn.query_row(
            "SELECT coalesce(sum(sent + received), 0) FROM uplink_usage WHERE day = ?1",
            [day],
            |r| r.get(0),
        )?;
        let (month, readings): (u64, u64) = self.conn.query_row(
            "SELECT coalesce(sum(sent + received), 0), coalesce(sum(readings), 0) FROM uplink_usage WHERE day LIKE ?1 || '%'",
            [month_prefix],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((today, month, readings))
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
        })
    }
}
