//! The uplink usage ledger: per UTC day, the bytes the uplink sent and received (TLS and MQTT
//! framing included, as the meter counts them) and the readings the cloud acknowledged. The data
//! budget (`io::uplink::cost`, `outpost_core::budget`) reads it back to project the month.
//!
//! The ledger only ever adds: the cost task sends each tally since the last one as
//! [`StoreCommand::RecordUsage`](super::writer::StoreCommand::RecordUsage), and the writer adds it
//! to the day's row (`uplink_usage`). Nobody waits for a tally: it is committed within the relaxed
//! commit window, and a failed commit or a power cut loses it; none is ever counted twice.

use rusqlite::params;

use super::{Reader, StoreError, Tx};

/// Uplink traffic as the data budget sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes both ways on `day`.
    pub bytes_today: u64,
    /// Bytes both ways in the month so far, `day` included.
    pub bytes_month: u64,
    /// Readings the cloud acknowledged in the month so far.
    pub readings_month: u64,
}

impl Tx<'_> {
    /// Adds uplink traffic to a day's tally (`day`: `YYYY-MM-DD`, UTC).
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
}

impl Reader {
    /// Uplink traffic on `day` and in the month whose days start with `month_prefix`
    /// (`YYYY-MM-`).
    pub fn usage(&self, day: &str, month_prefix: &str) -> Result<Usage, StoreError> {
        let bytes_today: u64 = self.conn.query_row(
            "SELECT coalesce(sum(sent + received), 0) FROM uplink_usage WHERE day = ?1",
            [day],
            |r| r.get(0),
        )?;
        let (bytes_month, readings_month): (u64, u64) = self.conn.query_row(
            "SELECT coalesce(sum(sent + received), 0), coalesce(sum(readings), 0) FROM uplink_usage WHERE day LIKE ?1 || '%'",
            [month_prefix],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Usage {
            bytes_today,
            bytes_month,
            readings_month,
        })
    }

    /// Uplink bytes (both directions) of each of the `days` days up to `today` (`YYYY-MM-DD`),
    /// oldest first; days without traffic are absent.
    pub fn daily_usage(&self, today: &str, days: u32) -> Result<Vec<(String, u64)>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT day, sent + received FROM uplink_usage WHERE day <= ?1 ORDER BY day DESC LIMIT ?2",
        )?;
        let mut rows = statement
            .query_map(rusqlite::params![today, days], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<Vec<(String, u64)>, _>>()?;
        rows.reverse();
        Ok(rows)
    }

    /// The latest day the ledger holds (`YYYY-MM-DD`), if any: the data budget never counts on
    /// an earlier one, whatever the wall clock says.
    pub fn last_usage_day(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT max(day) FROM uplink_usage", [], |r| r.get(0))?)
    }
}
