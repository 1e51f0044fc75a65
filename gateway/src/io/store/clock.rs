//! Readings stamped while the wall clock was not trusted (`outpost_core::clock`): held out of
//! batches, re-stamped exactly once the clock is trusted, or made final and sealed marked.
//!
//! Invariants:
//! 1. A reading with `readings.clock` set and `id > clock.final_upto` (held) is never sealed:
//!    sealing stops before it (`outbox`), so batches keep the readings' commit order and a held
//!    reading waits in place.
//! 2. Held readings are of the current kernel boot: [`Tx::begin_boot`] makes every held reading
//!    of an earlier boot final (its monotonic time means nothing in this boot). So a re-stamp,
//!    `ts_ms = clock + (wall − mono)` at a trusted moment, is exact.
//! 3. Re-stamping, releasing and sealing happen in one sealing round's transaction: a crash
//!    leaves a reading held or re-stamped, never half of it, and never in two batches.
//! 4. `clock.high_water_ms` only grows, and is written only from a trusted wall time.

use outpost_core::clock::{Basis, Remembered};
use rusqlite::{OptionalExtension, params};

use super::outbox::{meta_u64, set_meta};
use super::{StoreError, Tx};

/// `readings.clock` for a reading stamped `ts_ms` on `basis`.
pub(super) fn mono_column(basis: Basis, ts_ms: i64) -> Option<i64> {
    match basis {
        Basis::Trusted => None,
        Basis::Untrusted { offset_ms } => Some(ts_ms.saturating_sub(offset_ms)),
    }
}

/// The readings held for a trusted clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    pub readings: u64,
    /// The monotonic time of the oldest.
    pub oldest_mono_ms: Option<i64>,
}

/// Readings past this id may be held; at or before it none is.
pub(super) fn held_after(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    Ok(meta_u64(conn, "batches.last_reading_id")?.max(meta_u64(conn, "clock.final_upto")?))
}

impl Tx<'_> {
    /// Starts a run in kernel boot `boot_id`: if the last run was in another boot, its held
    /// readings become final (sealed marked unsynchronised). Returns what the clock policy
    /// remembers.
    pub fn begin_boot(&mut self, boot_id: &str) -> Result<Remembered, StoreError> {
        let last: String = self.tx.query_row(
            "SELECT value FROM meta WHERE key = 'clock.boot_id'",
            [],
            |r| r.get(0),
        )?;
        let same = !boot_id.is_empty() && last == boot_id;
        if !same {
            let newest: u64 =
                self.tx
                    .query_row("SELECT coalesce(max(id), 0) FROM readings", [], |r| {
                        r.get(0)
                    })?;
            let final_upto = meta_u64(&self.tx, "clock.final_upto")?.max(newest);
            set_meta(&self.tx, "clock.final_upto", final_upto)?;
            self.tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'clock.boot_id'",
                [boot_id],
            )?;
            set_meta(&self.tx, "clock.boot_trusted", 0)?;
        }
        Ok(Remembered {
            high_water_ms: i64::try_from(meta_u64(&self.tx, "clock.high_water_ms")?).unwrap_or(0),
            boot_trusted: same && meta_u64(&self.tx, "clock.boot_trusted")? == 1,
        })
    }

    /// The readings held now.
    pub fn held(&mut self) -> Result<Held, StoreError> {
        let after = held_after(&self.tx)?;
        let (readings, oldest_mono_ms) = self.tx.query_row(
            "SELECT count(*), min(clock) FROM readings WHERE id > ?1 AND clock IS NOT NULL",
            [after],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Held {
            readings,
            oldest_mono_ms,
        })
    }

    /// The clock is trusted with `offset_ms = wall − mono` at `wall_ms`: every held reading gets
    /// its exact time, and the store remembers the trusted time. Returns the readings re-stamped.
    pub fn restamp_held(&mut self, offset_ms: i64, wall_ms: i64) -> Result<u64, StoreError> {
        let after = held_after(&self.tx)?;
        let restamped = self.tx.execute(
            "UPDATE readings SET ts_ms = clock + ?2, clock = NULL WHERE id > ?1 AND clock IS NOT NULL",
            params![after, offset_ms],
        )?;
        let high = meta_u64(&self.tx, "clock.high_water_ms")?;
        set_meta(
            &self.tx,
            "clock.high_water_ms",
            high.max(u64::try_from(wall_ms).unwrap_or(0)),
        )?;
        set_meta(&self.tx, "clock.boot_trusted", 1)?;
        Ok(restamped as u64)
    }

    /// Held readings waited `clock.max_hold` for a trusted clock: make them final, to be sealed
    /// marked unsynchronised with the time they have. Returns how many.
    pub fn release_held(&mut self) -> Result<u64, StoreError> {
        let held = self.held()?;
        let newest: Option<u64> = self
            .tx
            .query_row("SELECT max(id) FROM readings", [], |r| r.get(0))
            .optional()?
            .flatten();
        if let Some(newest) = newest {
            let final_upto = meta_u64(&self.tx, "clock.final_upto")?.max(newest);
            set_meta(&self.tx, "clock.final_upto", final_upto)?;
        }
        Ok(held.readings)
    }
}

impl super::Reader {
    /// Readings held for a trusted clock now (for the status page).
    pub fn held_readings(&self) -> Result<u64, StoreError> {
        let after = held_after(&self.conn)?;
        Ok(self.conn.query_row(
            "SELECT count(*) FROM readings WHERE id > ?1 AND clock IS NOT NULL",
            [after],
            |r| r.get(0),
        )?)
    }
}
