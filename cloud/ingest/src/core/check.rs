//! Whether a batch may be stored, and as which rows. A batch is stored only when it decodes
//! (magic, version, CRC, body), names the gateway whose topic it came on, has a sequence number
//! PostgreSQL can hold, and has nothing PostgreSQL would refuse halfway through a transaction (a
//! time outside years 1 to 9999, a NUL in a name). Anything else is rejected with the reason, to
//! be kept in the dead-letter table and never acknowledged: the gateway keeps the batch.

use std::collections::HashMap;

use outpost_batch::{BatchHeader, DecodeError, Dictionaries, Value, ValueKind};

/// Earliest time PostgreSQL's `timestamptz` holds that the ingest accepts (0001-01-01).
pub const MIN_TS_MS: i64 = -62_135_596_800_000;
/// Latest (9999-12-31T23:59:59.999Z).
pub const MAX_TS_MS: i64 = 253_402_300_799_999;

/// A series as the database keys it: one source's channel of one kind (a decimal's exponent is
/// part of its kind, so a rescaled channel becomes a new series rather than a wrong one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub source: String,
    pub channel: String,
    pub kind: SeriesKind,
}

/// How a series' values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeriesKind {
    /// `raw × 10^exp`: `raw` kept exactly, `value` its nearest double.
    Decimal { exp: i8 },
    /// A double, kept as it is (NaN and infinities too).
    Float,
}

impl SeriesKind {
    /// The `series.kind` column.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            SeriesKind::Decimal { .. } => "decimal",
            SeriesKind::Float => "float",
        }
    }

    /// The `series.exp` column (0 for floats).
    #[must_use]
    pub fn exp(self) -> i16 {
        match self {
            SeriesKind::Decimal { exp } => i16::from(exp),
            SeriesKind::Float => 0,
        }
    }
}

/// One reading as a row of the readings table, its series by index into [`Checked::series`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub series: u32,
    pub ts_ms: i64,
    pub value: f64,
    /// The exact integer of a decimal; `None` for a float.
    pub raw: Option<i64>,
}

/// A batch that may be stored: its header, its series and its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub header: BatchHeader,
    pub series: Vec<SeriesKey>,
    pub rows: Vec<Row>,
}

/// Why a batch is kept aside instead of stored.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Undecodable(#[from] DecodeError),
    #[error("the batch names gateway {header:?} but came from gateway {topic:?}")]
    WrongGateway { topic: String, header: String },
    #[error("sequence number {0} is outside 1..=2^63-1")]
    Sequence(u64),
    #[error("a reading of {source_name:?}/{channel:?} is at {ts_ms} ms, outside years 1 to 9999")]
    Time {
        source_name: String,
        channel: String,
        ts_ms: i64,
    },
    #[error("a source or channel name holds a NUL byte ({0:?})")]
    NulInName(String),
    /// Checked, but PostgreSQL refused to store it (not for want of a connection or space).
    #[error("the database refused it: {0}")]
    DatabaseRefused(String),
}

impl Rejection {
    /// A short, fixed label for metrics (`reason="…"`).
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Undecodable(DecodeError::UnknownDictionary { .. }) => "unknown_dictionary",
            Rejection::Undecodable(_) => "undecodable",
            Rejection::WrongGateway { .. } => "wrong_gateway",
            Rejection::Sequence(_) => "sequence",
            Rejection::Time { .. } => "time",
            Rejection::NulInName(_) => "nul_in_name",
            Rejection::DatabaseRefused(_) => "database_refused",
        }
    }
}

/// The sequence number a batch's header claims, read without checking anything else (its
/// checksum may well be wrong): what an operator looks for in the dead-letter table.
#[must_use]
pub fn claimed_seq(bytes: &[u8]) -> Option<u64> {
    if bytes.get(..4)? != outpost_batch::MAGIC {
        return None;
    }
    let at = 7 + usize::from(*bytes.get(6)?);
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Checks a batch that came from `gateway` and turns it into rows.
pub fn check(
    gateway: &str,
    bytes: &[u8],
    dictionaries: &Dictionaries,
) -> Result<Checked, Rejection> {
    let batch = outpost_batch::decode(bytes, dictionaries)?;
    let header = batch.header().clone();
    if header.gateway_id.as_str() != gateway {
        return Err(Rejection::WrongGateway {
            topic: gateway.to_owned(),
            header: header.gateway_id.as_str().to_owned(),
        });
    }
    if header.seq == 0 || i64::try_from(header.seq).is_err() {
        return Err(Rejection::Sequence(header.seq));
    }
    let mut series: Vec<SeriesKey> = Vec::new();
    let mut index: HashMap<(&str, &str, ValueKind), u32> = HashMap::new();
    let mut rows = Vec::with_capacity(header.reading_count as usize);
    for reading in batch.readings() {
        if !(MIN_TS_MS..=MAX_TS_MS).contains(&reading.ts_ms) {
            return Err(Rejection::Time {
                source_name: reading.source.to_owned(),
                channel: reading.channel.to_owned(),
                ts_ms: reading.ts_ms,
            });
        }
        let kind = reading.value.kind();
        let next = series.len() as u32;
        let at = *index
            .entry((reading.source, reading.channel, kind))
            .or_insert(next);
        if at == next {
            for name in [reading.source, reading.channel] {
                if name.contains('\0') {
                    return Err(Rejection::NulInName(name.to_owned()));
                }
            }
            series.push(SeriesKey {
                source: reading.source.to_owned(),
                channel: reading.channel.to_owned(),
                kind: match kind {
                    ValueKind::Decimal { exp } => SeriesKind::Decimal { exp },
                    ValueKind::Float => SeriesKind::Float,
                },
            });
        }
        rows.push(Row {
            series: at,
            ts_ms: reading.ts_ms,
            value: reading.value.as_f64(),
            raw: match reading.value {
                Value::Decimal { raw, .. } => Some(raw),
                Value::Float(_) => None,
            },
        });
    }
    Ok(Checked {
        header,
        series,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use outpost_batch::{BatchBuilder, GatewayId};

    use super::*;

    fn batch(gateway: &str, seq: u64, readings: &[(&str, &str, i64, Value)]) -> Vec<u8> {
        let mut b = BatchBuilder::new(GatewayId::new(gateway).unwrap(), seq);
        for (source, channel, ts, value) in readings {
            b.push(source, channel, *ts, *value).unwrap();
        }
        b.seal(None).unwrap()
    }

    #[test]
    fn rows_keep_decimals_exact_and_series_by_kind() {
        let bytes = batch(
            "gw",
            3,
            &[
                ("n1", "t", 1000, Value::decimal(2150, -2)),
                ("n1", "t", 2000, Value::decimal(-7, -2)),
                ("n1", "f", 1000, Value::float(f64::NAN)),
                ("n2", "t", 1000, Value::decimal(1, 0)),
            ],
        );
        let checked = check("gw", &bytes, &Dictionaries::new()).unwrap();
        assert_eq!(checked.header.seq, 3);
        assert_eq!(checked.rows.len(), 4);
        assert_eq!(checked.series.len(), 3);
        let t = checked.rows.iter().find(|r| r.raw == Some(-7)).unwrap();
        assert_eq!(t.value, -0.07);
        assert_eq!(
            checked.series[t.series as usize].kind,
            SeriesKind::Decimal { exp: -2 }
        );
        assert!(
            checked
                .rows
                .iter()
                .any(|r| r.raw.is_none() && r.value.is_nan())
        );
    }

    #[test]
    fn what_postgres_would_refuse_is_rejected_before_the_transaction() {
        let d = Dictionaries::new();
        let other = batch("gw-b", 1, &[("n", "c", 0, Value::integer(1))]);
        assert_eq!(
            check("gw-a", &other, &d).unwrap_err().label(),
            "wrong_gateway"
        );
        let zero = batch("gw", 0, &[("n", "c", 0, Value::integer(1))]);
        assert_eq!(check("gw", &zero, &d).unwrap_err().label(), "sequence");
        let huge = batch("gw", u64::MAX, &[("n", "c", 0, Value::integer(1))]);
        assert_eq!(check("gw", &huge, &d).unwrap_err().label(), "sequence");
        let far = batch("gw", 1, &[("n", "c", MAX_TS_MS + 1, Value::integer(1))]);
        assert_eq!(check("gw", &far, &d).unwrap_err().label(), "time");
        let nul = batch("gw", 1, &[("n\0x", "c", 0, Value::integer(1))]);
        assert_eq!(check("gw", &nul, &d).unwrap_err().label(), "nul_in_name");
        let mut flipped = batch("gw", 1, &[("n", "c", 0, Value::integer(1))]);
        let at = flipped.len() / 2;
        flipped[at] ^= 0x10;
        assert_eq!(
            check("gw", &flipped, &d).unwrap_err().label(),
            "undecodable"
        );
    }
}
