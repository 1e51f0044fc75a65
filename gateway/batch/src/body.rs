//! The columnar body (before zstd): sources, their shared timestamp column, their channels.
//!
//! ```text
//! body    = uvarint(source count) source*              sources by name, strictly ascending
//! source  = name uvarint(sample count) timestamps uvarint(channel count) channel*
//! channel = name encoding [exp i8] [presence bitmap] values   channels by name, strictly ascending
//! name    = uvarint(len 1..=255) UTF-8 bytes
//! ```
//!
//! See `docs/batch-format.md` §3 for every field. Both directions live here so they cannot drift.

use crate::MAX_NAME_LEN;
use crate::error::DecodeError;
use crate::gorilla;
use crate::header::BatchHeader;
use crate::varint::{BodyError, Reader, put_svarint, put_uvarint, svarint_len, uvarint_len};

/// Column encodings (the low 7 bits of a channel's encoding byte).
const DECIMAL_DELTA: u8 = 0;
const DECIMAL_DELTA_OF_DELTA: u8 = 1;
const FLOAT_XOR: u8 = 2;
/// Set in the encoding byte when a presence bitmap follows.
const HAS_PRESENCE: u8 = 0x80;

/// The values of one channel, in sample order, present samples only.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Column {
    Decimal { exp: i8, raw: Vec<i64> },
    Float(Vec<f64>),
}

impl Column {
    pub(crate) fn len(&self) -> usize {
        match self {
            Column::Decimal { raw, .. } => raw.len(),
            Column::Float(v) => v.len(),
        }
    }
}

/// A decoded source: its samples' timestamps and its channels.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Source {
    pub(crate) name: String,
    pub(crate) timestamps: Vec<i64>,
    pub(crate) channels: Vec<Channel>,
}

/// A decoded channel. `presence` is `None` when the channel has a value in every sample.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Channel {
    pub(crate) name: String,
    pub(crate) presence: Option<Vec<u8>>,
    pub(crate) values: Column,
}

pub(crate) fn is_present(bitmap: &[u8], sample: usize) -> bool {
    bitmap[sample / 8] & (1 << (sample % 8)) != 0
}

// ---------------------------------------------------------------------------------------------
// Encoding

pub(crate) fn put_name(out: &mut Vec<u8>, name: &str) {
    put_uvarint(out, name.len() as u64);
    out.extend_from_slice(name.as_bytes());
}

/// Writes a source's name, sample count and timestamp column: the first timestamp as an offset
/// from the batch's first timestamp, then the first delta, then deltas of deltas.
pub(crate) fn put_source_head(out: &mut Vec<u8>, name: &str, timestamps: &[i64], first_ts_ms: i64) {
    put_name(out, name);
    put_uvarint(out, timestamps.len() as u64);
    let mut prev = first_ts_ms;
    let mut prev_delta = 0i64;
    for (i, &ts) in timestamps.iter().enumerate() {
        let delta = ts.wrapping_sub(prev);
        match i {
            0 => put_uvarint(out, delta as u64),
            1 => put_svarint(out, delta),
            _ => put_svarint(out, delta.wrapping_sub(prev_delta)),
        }
        prev = ts;
        prev_delta = delta;
    }
}

/// Writes one channel. `samples[i]` is the index of the sample that holds value `i`.
pub(crate) fn put_channel(
    out: &mut Vec<u8>,
    name: &str,
    sample_count: usize,
    samples: &[u32],
    column: &Column,
) {
    put_name(out, name);
    let sparse = samples.len() < sample_count;
    let presence = if sparse { HAS_PRESENCE } else { 0 };
    match column {
        Column::Decimal { exp, raw } => {
            let encoding = if delta_of_delta_is_smaller(raw) {
                DECIMAL_DELTA_OF_DELTA
            } else {
                DECIMAL_DELTA
            };
            out.push(encoding | presence);
            out.push(*exp as u8);
            if sparse {
                put_bitmap(out, sample_count, samples);
            }
            put_decimals(out, raw, encoding == DECIMAL_DELTA_OF_DELTA);
        }
        Column::Float(values) => {
            out.push(FLOAT_XOR | presence);
            if sparse {
                put_bitmap(out, sample_count, samples);
            }
            gorilla::encode(values, out);
        }
    }
}

fn put_bitmap(out: &mut Vec<u8>, sample_count: usize, samples: &[u32]) {
    let at = out.len();
    out.resize(at + sample_count.div_ceil(8), 0);
    for &s in samples {
        out[at + s as usize / 8] |= 1 << (s % 8);
    }
}

/// Delta coding suits random walks; delta of delta suits counters and ramps. Pick the shorter,
/// delta on a tie, so the choice is a pure function of the values.
fn delta_of_delta_is_smaller(raw: &[i64]) -> bool {
    let (mut delta_len, mut dod_len) = (0usize, 0usize);
    let mut prev_delta = 0i64;
    for w in raw.windows(2) {
        let delta = w[1].wrapping_sub(w[0]);
        delta_len += svarint_len(delta);
        dod_len += svarint_len(delta.wrapping_sub(prev_delta));
        prev_delta = delta;
    }
    dod_len < delta_len
}

fn put_decimals(out: &mut Vec<u8>, raw: &[i64], delta_of_delta: bool) {
    let mut prev = 0i64;
    let mut prev_delta = 0i64;
    for (i, &v) in raw.iter().enumerate() {
        let delta = v.wrapping_sub(prev);
        if i >= 2 && delta_of_delta {
            put_svarint(out, delta.wrapping_sub(prev_delta));
        } else {
            put_svarint(out, delta);
        }
        prev = v;
        prev_delta = delta;
    }
}

/// Bytes of a name as `put_name` writes it.
pub(crate) fn name_len(name: &str) -> usize {
    uvarint_len(name.len() as u64) + name.len()
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Parses a whole decompressed body and checks it against its header: reading count, time range,
/// names in ascending order, every sample holding at least one value, no trailing bytes.
pub(crate) fn parse(raw: &[u8], header: &BatchHeader) -> Result<Vec<Source>, DecodeError> {
    let mut r = Reader::new(raw);
    let corrupt = |e: BodyError| DecodeError::CorruptBody {
        offset: e.offset,
        problem: e.problem,
    };
    let declared = header.reading_count as usize;
    // Readings not yet accounted for: every count below is bounded by it, so a hostile count
    // cannot reserve more than the header (itself bounded by MAX_READINGS) allows.
    let mut budget = declared;
    let source_count = r
        .count(
            1,
            budget as u64,
            "source count is 0 or exceeds the reading count",
        )
        .map_err(corrupt)?;
    let mut sources: Vec<Source> = Vec::with_capacity(source_count.min(r.remaining()));
    let mut min_ts = i64::MAX;
    let mut max_ts = i64::MIN;
    for _ in 0..source_count {
        let name = parse_name(&mut r, Named::Source).map_err(corrupt)?;
        if sources
            .last()
            .is_some_and(|prev| prev.name.as_bytes() >= name.as_bytes())
        {
            return Err(corrupt(
                r.error("source names are not in strictly ascending order"),
            ));
        }
        let sample_count = r
            .count(
                1,
                budget as u64,
                "sample count is 0 or exceeds the readings left",
            )
            .map_err(corrupt)?;
        let timestamps =
            parse_timestamps(&mut r, sample_count, header.first_ts_ms).map_err(corrupt)?;
        for &ts in &timestamps {
            min_ts = min_ts.min(ts);
            max_ts = max_ts.max(ts);
        }
        let channel_count = r
            .count(
                1,
                budget as u64,
                "channel count is 0 or exceeds the readings left",
            )
            .map_err(corrupt)?;
        let mut channels: Vec<Channel> = Vec::with_capacity(channel_count.min(r.remaining()));
        for _ in 0..channel_count {
            let channel_name = parse_name(&mut r, Named::Channel).map_err(corrupt)?;
            if channels
                .last()
                .is_some_and(|prev| prev.name.as_bytes() >= channel_name.as_bytes())
            {
                return Err(corrupt(
                    r.error("channel names are not in strictly ascending order"),
                ));
            }
            let channel =
                parse_channel(&mut r, channel_name, sample_count, budget).map_err(|e| {
                    DecodeError::CorruptColumn {
                        source_name: name.clone(),
                        channel: e.1,
                        offset: e.0.offset,
                        problem: e.0.problem,
                    }
                })?;
            budget -= channel.values.len();
            channels.push(channel);
        }
        if !every_sample_has_a_value(&channels, sample_count) {
            return Err(corrupt(r.error("a sample holds no value in any channel")));
        }
        sources.push(Source {
            name,
            timestamps,
            channels,
        });
    }
    if r.remaining() != 0 {
        return Err(corrupt(r.error("bytes after the last source")));
    }
    let mismatch = |field, header, body| DecodeError::HeaderMismatch {
        field,
        header,
        body,
    };
    if budget != 0 {
        let held = (declared - budget) as i64;
        return Err(mismatch(
            "reading count",
            i64::from(header.reading_count),
            held,
        ));
    }
    if min_ts != header.first_ts_ms {
        return Err(mismatch("first timestamp", header.first_ts_ms, min_ts));
    }
    if max_ts != header.last_ts_ms {
        return Err(mismatch("last timestamp", header.last_ts_ms, max_ts));
    }
    Ok(sources)
}

/// What a name names, for the error messages.
#[derive(Clone, Copy)]
enum Named {
    Source,
    Channel,
}

fn parse_name(r: &mut Reader<'_>, what: Named) -> Result<String, BodyError> {
    let (bad_len, bad_text) = match what {
        Named::Source => (
            "source name length is 0 or above 255",
            "source name is not UTF-8",
        ),
        Named::Channel => (
            "channel name length is 0 or above 255",
            "channel name is not UTF-8",
        ),
    };
    let len = r.count(1, MAX_NAME_LEN as u64, bad_len)?;
    let start = r.pos();
    let bytes = r.bytes(len)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| BodyError {
        offset: start,
        problem: bad_text,
    })
}

fn parse_timestamps(r: &mut Reader<'_>, n: usize, first_ts_ms: i64) -> Result<Vec<i64>, BodyError> {
    // Each timestamp takes at least one byte.
    let mut ts = Vec::with_capacity(n.min(r.remaining()));
    let mut prev = first_ts_ms;
    let mut prev_delta = 0i64;
    for i in 0..n {
        let delta = match i {
            0 => r.uvarint()? as i64,
            1 => r.svarint()?,
            _ => prev_delta.wrapping_add(r.svarint()?),
        };
        let t = prev.wrapping_add(delta);
        ts.push(t);
        prev = t;
        prev_delta = delta;
    }
    Ok(ts)
}

fn parse_channel(
    r: &mut Reader<'_>,
    name: String,
    sample_count: usize,
    budget: usize,
) -> Result<Channel, (BodyError, String)> {
    let encoding = match r.u8() {
        Ok(e) => e,
        Err(e) => return Err((e, name)),
    };
    match parse_channel_values(r, encoding, sample_count, budget) {
        Ok((presence, values)) => Ok(Channel {
            name,
            presence,
            values,
        }),
        Err(e) => Err((e, name)),
    }
}

fn parse_channel_values(
    r: &mut Reader<'_>,
    encoding: u8,
    sample_count: usize,
    budget: usize,
) -> Result<(Option<Vec<u8>>, Column), BodyError> {
    let exp = match encoding & !HAS_PRESENCE {
        DECIMAL_DELTA | DECIMAL_DELTA_OF_DELTA => Some(r.u8()? as i8),
        FLOAT_XOR => None,
        _ => return Err(r.error("unknown column encoding")),
    };
    let (presence, present) = if encoding & HAS_PRESENCE != 0 {
        let bitmap = r.bytes(sample_count.div_ceil(8))?;
        let tail = sample_count % 8;
        if tail != 0 && bitmap[bitmap.len() - 1] >> tail != 0 {
            return Err(r.error("presence bitmap padding bits are not zero"));
        }
        let present: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
        if present == 0 {
            return Err(r.error("presence bitmap is empty: a channel holds at least one value"));
        }
        if present == sample_count {
            return Err(r.error("presence bitmap is full: it must be omitted"));
        }
        (Some(bitmap.to_vec()), present)
    } else {
        (None, sample_count)
    };
    if present > budget {
        return Err(r.error("column holds more values than the header's reading count"));
    }
    let values = match exp {
        Some(exp) => Column::Decimal {
            exp,
            raw: parse_decimals(
                r,
                present,
                encoding & !HAS_PRESENCE == DECIMAL_DELTA_OF_DELTA,
            )?,
        },
        None => Column::Float(gorilla::decode(r, present)?),
    };
    Ok((presence, values))
}

fn parse_decimals(
    r: &mut Reader<'_>,
    n: usize,
    delta_of_delta: bool,
) -> Result<Vec<i64>, BodyError> {
    // Each value takes at least one byte.
    let mut raw = Vec::with_capacity(n.min(r.remaining()));
    let mut prev = 0i64;
    let mut prev_delta = 0i64;
    for i in 0..n {
        let coded = r.svarint()?;
        let delta = if i >= 2 && delta_of_delta {
            prev_delta.wrapping_add(coded)
        } else {
            coded
        };
        let v = prev.wrapping_add(delta);
        raw.push(v);
        prev = v;
        prev_delta = delta;
    }
    Ok(raw)
}

fn every_sample_has_a_value(channels: &[Channel], sample_count: usize) -> bool {
    let mut covered = vec![0u8; sample_count.div_ceil(8)];
    for c in channels {
        match &c.presence {
            None => return true,
            Some(bitmap) => {
                for (acc, b) in covered.iter_mut().zip(bitmap) {
                    *acc |= b;
                }
            }
        }
    }
    let full = sample_count / 8;
    covered[..full].iter().all(|&b| b == 0xff)
        && (sample_count % 8 == 0 || covered[full] == (1u8 << (sample_count % 8)) - 1)
}
