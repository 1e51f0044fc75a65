//! Series: what a stored reading belongs to, `(source, channel, kind)`, as batches carry it.
//!
//! - A node reading's series is the node's uid, its channel's name (`"temperature"`, or `"ch9"`
//!   for an id without a name) and that channel's decimal exponent (hundredths: -2).
//! - A device reading's series is the device name, the point name and the kind of its value:
//!   decimals with one exponent, or floats.
//!
//! Invariants:
//! 1. A series row never changes: readings of another kind (a decimal exponent changed, or
//!    decimal ↔ float, after a config edit) go to a new row. So a stored reading keeps the kind it
//!    was stored with, and `series.exp` tells how to read `readings.value`: an INTEGER `raw`
//!    (`raw × 10^exp`), or, where `exp` is NULL, a REAL, or NULL for a NaN (SQLite stores NaN
//!    as NULL; it comes back as the canonical NaN).
//! 2. A batch holds one kind per (source, channel) (`BatchBuilder::push` refuses a second), so
//!    sealing ends a batch before the first reading of another kind (`outbox::build_batch`).
//! 3. [`SeriesCache`] holds only rows that are committed or written by the open transaction;
//!    the store forgets it when a transaction rolls back.

use std::collections::HashMap;

use outpost_batch::{Value, ValueKind};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, params};

use super::StoreError;

/// One value of one poll of a device: `channel` is the point name.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesReading {
    pub channel: String,
    pub value: Value,
}

/// `series.exp`: the decimal exponent; `None` (NULL) for floats.
pub(super) fn exp_column(kind: ValueKind) -> Option<i8> {
    match kind {
        ValueKind::Decimal { exp } => Some(exp),
        ValueKind::Float => None,
    }
}

/// A value as `readings.value` holds it (see invariant 1).
#[derive(Debug)]
pub(super) struct StoredValue(pub(super) Value);

impl ToSql for StoredValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Decimal { raw, .. } => ToSqlOutput::from(raw),
            Value::Float(v) => ToSqlOutput::from(v),
        })
    }
}

/// Reads `readings.value` back as a value of the series' kind (`exp` as in [`exp_column`]).
pub(super) fn stored_value(exp: Option<i8>, value: ValueRef<'_>) -> Result<Value, String> {
    match (exp, value) {
        (Some(exp), ValueRef::Integer(raw)) => Ok(Value::decimal(raw, exp)),
        (None, ValueRef::Real(v)) => Ok(Value::float(v)),
        (None, ValueRef::Null) => Ok(Value::float(f64::NAN)),
        (None, ValueRef::Integer(v)) => Ok(Value::float(v as f64)),
        (exp, other) => Err(format!(
            "a {:?} value in a series of exponent {exp:?}",
            other.data_type()
        )),
    }
}

/// Decimal exponent of a node channel's stored integers (hundredths: -2).
pub(super) fn node_channel_exp(channel: u8) -> i8 {
    match outpost_proto::ChannelId(channel).scale() {
        100 => -2,
        10 => -1,
        _ => 0,
    }
}

/// A node channel's name in batches.
pub(super) fn node_channel_name(channel: u8) -> String {
    outpost_proto::ChannelId(channel)
        .name()
        .map_or_else(|| format!("ch{channel}"), str::to_owned)
}

/// Whether a batch can carry `name` as a source or channel name.
pub(super) fn name_fits(name: &str) -> bool {
    (1..=outpost_batch::MAX_NAME_LEN).contains(&name.len())
}

/// The id of series `(source, channel, exp)`, created if new.
fn series_id(
    conn: &Connection,
    source: &str,
    channel: &str,
    exp: Option<i8>,
) -> Result<i64, StoreError> {
    let found: Option<i64> = conn
        .prepare_cached("SELECT id FROM series WHERE source = ?1 AND channel = ?2 AND exp IS ?3")?
        .query_row(params![source, channel, exp], |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO series (source, channel, exp) VALUES (?1, ?2, ?3)")?
        .execute(params![source, channel, exp])?;
    Ok(conn.last_insert_rowid())
}

/// Series ids already looked up, so ingest is one INSERT per reading.
///
/// Design: a plain memo of the `series` table. Node series are found by (node id, channel id)
/// without hashing per reading; a device's points by name, with the kind last seen (a kind
/// change is rare: it looks the new series up and replaces the entry).
#[derive(Debug, Default)]
pub(super) struct SeriesCache {
    /// Per node, series ids by channel id; 0 where not looked up yet (rowids start at 1).
    nodes: HashMap<i64, Box<[i64; 256]>>,
    /// Per device, per point: the kind last stored and its series id.
    devices: HashMap<String, HashMap<String, (ValueKind, i64)>>,
}

impl SeriesCache {
    /// The series ids of a node's channels, to look up with [`NodeSeries::id`].
    pub(super) fn node(&mut self, node_id: i64) -> NodeSeries<'_> {
        NodeSeries {
            node_id,
            ids: self
                .nodes
                .entry(node_id)
                .or_insert_with(|| Box::new([0; 256])),
        }
    }

    /// The series ids of a device's points, to look up with [`DeviceSeries::id`].
    pub(super) fn device<'a>(&'a mut self, source: &'a str) -> DeviceSeries<'a> {
        if !self.devices.contains_key(source) {
            self.devices.insert(source.to_owned(), HashMap::new());
        }
        DeviceSeries {
            source,
            points: self.devices.get_mut(source).expect("inserted just above"),
        }
    }
}

/// One node's entry in the [`SeriesCache`].
#[derive(Debug)]
pub(super) struct NodeSeries<'a> {
    node_id: i64,
    ids: &'a mut [i64; 256],
}

impl NodeSeries<'_> {
    pub(super) fn id(&mut self, conn: &Connection, channel: u8) -> Result<i64, StoreError> {
        let cached = self.ids[usize::from(channel)];
        if cached != 0 {
            return Ok(cached);
        }
        let uid: String = conn
            .prepare_cached("SELECT uid FROM nodes WHERE id = ?1")?
            .query_row([self.node_id], |r| r.get(0))?;
        let id = series_id(
            conn,
            &uid,
            &node_channel_name(channel),
            Some(node_channel_exp(channel)),
        )?;
        self.ids[usize::from(channel)] = id;
        Ok(id)
    }
}

/// One device's entry in the [`SeriesCache`].
#[derive(Debug)]
pub(super) struct DeviceSeries<'a> {
    source: &'a str,
    points: &'a mut HashMap<String, (ValueKind, i64)>,
}

impl DeviceSeries<'_> {
    pub(super) fn id(
        &mut self,
        conn: &Connection,
        channel: &str,
        kind: ValueKind,
    ) -> Result<i64, StoreError> {
        if let Some(&(cached, id)) = self.points.get(channel) {
            if cached == kind {
                return Ok(id);
            }
        }
        let id = series_id(conn, self.source, channel, exp_column(kind))?;
        self.points.insert(channel.to_owned(), (kind, id));
        Ok(id)
    }
}
