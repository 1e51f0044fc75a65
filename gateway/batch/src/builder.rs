//! Collecting readings and sealing them into a batch.

use std::collections::HashMap;
use std::io;

use zstd::bulk::Compressor;
use zstd::zstd_safe::CParameter;

use crate::body::{self, Column};
use crate::dictionary::Dictionary;
use crate::gorilla;
use crate::header::{self, CRC_LEN, GatewayId, HeaderFields};
use crate::value::{Value, ValueKind};
use crate::varint::{MAX_VARINT_LEN, svarint_len, uvarint_len};
use crate::{MAX_NAME_LEN, MAX_RAW_BODY_LEN, MAX_READINGS, ZSTD_LEVEL, ZSTD_WINDOW_LOG};

/// Longest `uvarint` of a count up to [`MAX_READINGS`] (2^20 < 2^21: three 7-bit groups).
const COUNT_VARINT_LEN: usize = 3;
const _: () = assert!(uvarint_len(MAX_READINGS as u64) <= COUNT_VARINT_LEN);

/// Collects the readings of one time window, then seals them into a batch.
///
/// Design: a plain value with no clock, no I/O and no hidden state; [`BatchBuilder::seal`] is a
/// pure function of the readings pushed (and their order), the gateway id, the sequence number and
/// the dictionary, so sealing again gives the same bytes. It never iterates a hash map: sources
/// and channels are written sorted by name.
///
/// Readings are grouped per source into *samples* that share one timestamp: a reading joins the
/// earliest sample after its channel's previous reading that has the same timestamp and no value
/// yet for its channel, otherwise it starts a new sample. So readings of one source pushed
/// sample by sample, or channel by channel, share a timestamp column, and every series (source,
/// channel) keeps the order its readings were pushed in, even if timestamps go backwards.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    gateway_id: GatewayId,
    seq: u64,
    sources: Vec<SourceBuilder>,
    source_index: HashMap<String, usize>,
    /// The source of the last push: readings usually come in runs of one source.
    last_source: usize,
    readings: u32,
    first_ts_ms: i64,
    last_ts_ms: i64,
    /// Upper bound of the raw body in bits, without presence bitmaps (`raw_body_bound` adds them).
    /// Bits, so a float stream's 1-bit codes are not rounded up one by one.
    raw_bound_bits: u64,
    /// Header flags ([`crate::FLAG_UNSYNCHRONISED`]).
    flags: u8,
}

#[derive(Debug, Clone)]
struct SourceBuilder {
    name: String,
    timestamps: Vec<i64>,
    channels: Vec<ChannelBuilder>,
    channel_index: HashMap<String, usize>,
    /// The channel after the last one pushed: readings usually come round-robin.
    next_channel: usize,
}

#[derive(Debug, Clone)]
struct ChannelBuilder {
    name: String,
    /// `samples[i]` is the index of the sample holding value `i`; strictly increasing.
    samples: Vec<u32>,
    column: Column,
    /// Float columns: the Gorilla coder, run as values arrive to track the column's size.
    gorilla: gorilla::Encoder,
}

/// Why a reading was not added. The builder is unchanged by a refused push.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("source name must be 1 to {MAX_NAME_LEN} bytes, got {len}")]
    SourceName { len: usize },
    #[error("channel name must be 1 to {MAX_NAME_LEN} bytes, got {len}")]
    ChannelName { len: usize },
    /// A series holds one kind of value: decimals with one exponent, or floats. Seal the batch and
    /// start a new one to change it.
    #[error("series {source_name}/{channel} holds {series} values, not {pushed}")]
    KindMismatch {
        source_name: String,
        channel: String,
        series: ValueKind,
        pushed: ValueKind,
    },
    #[error("the batch is full: {MAX_READINGS} readings")]
    Full,
}

/// Why a batch could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("an empty batch cannot be sealed")]
    Empty,
    #[error("the batch's body is {raw_len} bytes, above the format's limit of {MAX_RAW_BODY_LEN}")]
    TooLarge { raw_len: usize },
    #[error("zstd failed to compress the body: {0}")]
    Compress(#[source] io::Error),
}

impl BatchBuilder {
    #[must_use]
    pub fn new(gateway_id: GatewayId, seq: u64) -> BatchBuilder {
        BatchBuilder {
            gateway_id,
            seq,
            sources: Vec::new(),
            source_index: HashMap::new(),
            last_source: 0,
            readings: 0,
            first_ts_ms: i64::MAX,
            last_ts_ms: i64::MIN,
            raw_bound_bits: 8 * COUNT_VARINT_LEN as u64,
            flags: 0,
        }
    }

    /// Marks the batch's timestamps as taken from a wall clock that was never synchronised
    /// (header flag [`crate::FLAG_UNSYNCHRONISED`], `docs/batch-format.md` §2).
    #[must_use]
    pub fn unsynchronised(mut self, unsynchronised: bool) -> BatchBuilder {
        if unsynchronised {
            self.flags |= crate::FLAG_UNSYNCHRONISED;
        } else {
            self.flags &= !crate::FLAG_UNSYNCHRONISED;
        }
        self
    }

    #[must_use]
    pub fn gateway_id(&self) -> &GatewayId {
        &self.gateway_id
    }

    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Adds one reading of `channel` of `source` taken at `ts_ms` (Unix milliseconds).
    pub fn push(
        &mut self,
        source: &str,
        channel: &str,
        ts_ms: i64,
        value: Value,
    ) -> Result<(), PushError> {
        if self.readings >= MAX_READINGS {
            return Err(PushError::Full);
        }
        let source_at = self.find_source(source);
        if source_at.is_none() && !(1..=MAX_NAME_LEN).contains(&source.len()) {
            return Err(PushError::SourceName { len: source.len() });
        }
        let channel_at = source_at.and_then(|s| self.sources[s].find_channel(channel));
        match (source_at, channel_at) {
            (Some(s), Some(c)) => {
                let series = self.sources[s].channels[c].kind();
                if series != value.kind() {
                    return Err(PushError::KindMismatch {
                        source_name: source.to_owned(),
                        channel: channel.to_owned(),
                        series,
                        pushed: value.kind(),
                    });
                }
            }
            _ if !(1..=MAX_NAME_LEN).contains(&channel.len()) => {
                return Err(PushError::ChannelName { len: channel.len() });
            }
            _ => {}
        }

        // Checked: from here on the push succeeds.
        let s = match source_at {
            Some(s) => s,
            None => self.add_source(source),
        };
        self.last_source = s;
        let c = match channel_at {
            Some(c) => c,
            None => self.add_channel(s, channel, value.kind()),
        };
        let src = &mut self.sources[s];
        src.next_channel = c + 1;
        let sample = match src.channels[c].find_sample(&src.timestamps, ts_ms) {
            Some(sample) => sample,
            None => {
                self.raw_bound_bits += 8 * src.append_sample(ts_ms) as u64;
                src.timestamps.len() - 1
            }
        };
        self.raw_bound_bits += src.channels[c].push(sample, value);
        self.readings += 1;
        self.first_ts_ms = self.first_ts_ms.min(ts_ms);
        self.last_ts_ms = self.last_ts_ms.max(ts_ms);
        Ok(())
    }

    /// Readings pushed so far.
    #[must_use]
    pub fn reading_count(&self) -> u32 {
        self.readings
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.readings == 0
    }

    /// An upper bound on the length of the sealed batch (with or without a dictionary), in
    /// O(sources) time: use it to seal before a size cap is reached. It counts the uncompressed
    /// body exactly or nearly so, plus zstd's worst case, so on ordinary telemetry it is several
    /// times the sealed size.
    #[must_use]
    pub fn encoded_size_estimate(&self) -> usize {
        let raw = self.raw_body_bound();
        header::header_len(self.gateway_id.as_str().len())
            + zstd::zstd_safe::compress_bound(raw)
            + CRC_LEN
    }

    fn raw_body_bound(&self) -> usize {
        let bitmaps: usize = self
            .sources
            .iter()
            .map(|s| s.channels.len() * s.timestamps.len().div_ceil(8))
            .sum();
        self.raw_bound_bits.div_ceil(8) as usize + bitmaps
    }

    /// Seals the readings into a batch, compressed with `dictionary` if given. Sealing the same
    /// readings again gives the same bytes (with the same zstd library: see `docs/batch-format.md`).
    pub fn seal(&self, dictionary: Option<&Dictionary>) -> Result<Vec<u8>, SealError> {
        if self.readings == 0 {
            return Err(SealError::Empty);
        }
        let raw = self.encode_body();
        if raw.len() > MAX_RAW_BODY_LEN as usize {
            return Err(SealError::TooLarge { raw_len: raw.len() });
        }
        let body = compress(&raw, dictionary).map_err(SealError::Compress)?;
        Ok(header::emit(
            &HeaderFields {
                gateway_id: &self.gateway_id,
                flags: self.flags,
                seq: self.seq,
                first_ts_ms: self.first_ts_ms,
                last_ts_ms: self.last_ts_ms,
                reading_count: self.readings,
                dictionary_id: dictionary.map(Dictionary::id),
                raw_body_len: raw.len() as u32,
            },
            &body,
        ))
    }

    /// The uncompressed body, sources and channels sorted by name.
    fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw_body_bound());
        crate::varint::put_uvarint(&mut out, self.sources.len() as u64);
        let mut sources: Vec<&SourceBuilder> = self.sources.iter().collect();
        sources.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        for src in sources {
            body::put_source_head(&mut out, &src.name, &src.timestamps, self.first_ts_ms);
            crate::varint::put_uvarint(&mut out, src.channels.len() as u64);
            let mut channels: Vec<&ChannelBuilder> = src.channels.iter().collect();
            channels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            for ch in channels {
                body::put_channel(
                    &mut out,
                    &ch.name,
                    src.timestamps.len(),
                    &ch.samples,
                    &ch.column,
                );
            }
        }
        out
    }

    fn find_source(&self, name: &str) -> Option<usize> {
        match self.sources.get(self.last_source) {
            Some(s) if s.name == name => Some(self.last_source),
            _ => self.source_index.get(name).copied(),
        }
    }

    fn add_source(&mut self, name: &str) -> usize {
        let s = self.sources.len();
        self.sources.push(SourceBuilder {
            name: name.to_owned(),
            timestamps: Vec::new(),
            channels: Vec::new(),
            channel_index: HashMap::new(),
            next_channel: 0,
        });
        self.source_index.insert(name.to_owned(), s);
        // Name, sample count, channel count.
        self.raw_bound_bits += 8 * (body::name_len(name) + 2 * COUNT_VARINT_LEN) as u64;
        s
    }

    fn add_channel(&mut self, s: usize, name: &str, kind: ValueKind) -> usize {
        let src = &mut self.sources[s];
        let c = src.channels.len();
        src.channels.push(ChannelBuilder {
            name: name.to_owned(),
            samples: Vec::new(),
            column: match kind {
                ValueKind::Decimal { exp } => Column::Decimal {
                    exp,
                    raw: Vec::new(),
                },
                ValueKind::Float => Column::Float(Vec::new()),
            },
            gorilla: gorilla::Encoder::default(),
        });
        src.channel_index.insert(name.to_owned(), c);
        // Name, encoding byte, and the exponent or the float stream's padding.
        self.raw_bound_bits += 8 * (body::name_len(name) + 2) as u64;
        c
    }
}

impl SourceBuilder {
    fn find_channel(&self, name: &str) -> Option<usize> {
        match self.channels.get(self.next_channel) {
            Some(c) if c.name == name => Some(self.next_channel),
            _ => self.channel_index.get(name).copied(),
        }
    }

    /// Appends a sample; returns the bytes its timestamp takes in the body.
    fn append_sample(&mut self, ts_ms: i64) -> usize {
        let t = &self.timestamps;
        let len = match t.len() {
            // Offset from the batch's first timestamp, which is not known yet.
            0 => MAX_VARINT_LEN,
            1 => svarint_len(ts_ms.wrapping_sub(t[0])),
            n => svarint_len(
                ts_ms
                    .wrapping_sub(t[n - 1])
                    .wrapping_sub(t[n - 1].wrapping_sub(t[n - 2])),
            ),
        };
        self.timestamps.push(ts_ms);
        len
    }
}

impl ChannelBuilder {
    fn kind(&self) -> ValueKind {
        match self.column {
            Column::Decimal { exp, .. } => ValueKind::Decimal { exp },
            Column::Float(_) => ValueKind::Float,
        }
    }

    /// The earliest sample after this channel's last value whose timestamp is `ts_ms`.
    fn find_sample(&self, timestamps: &[i64], ts_ms: i64) -> Option<usize> {
        let from = self.samples.last().map_or(0, |&s| s as usize + 1);
        timestamps[from..]
            .iter()
            .position(|&t| t == ts_ms)
            .map(|i| from + i)
    }

    /// Adds a value of the channel's kind; returns the bits it adds to the body, or a bound:
    /// delta-of-delta is only chosen when shorter, so the delta coding's length bounds decimals.
    fn push(&mut self, sample: usize, value: Value) -> u64 {
        // Samples are at most MAX_READINGS, so their index fits a u32.
        self.samples.push(sample as u32);
        match (&mut self.column, value) {
            (Column::Decimal { raw, .. }, Value::Decimal { raw: v, .. }) => {
                let delta = v.wrapping_sub(raw.last().copied().unwrap_or(0));
                raw.push(v);
                8 * svarint_len(delta) as u64
            }
            (Column::Float(values), Value::Float(v)) => {
                values.push(v);
                self.gorilla.step(v).bit_len()
            }
            // `push` checked the kind before calling.
            _ => 0,
        }
    }
}

/// Compresses the body: one zstd frame at [`ZSTD_LEVEL`] with the content size, without zstd's
/// own checksum (the batch's CRC covers the body) and without the dictionary id (the header
/// carries it).
fn compress(raw: &[u8], dictionary: Option<&Dictionary>) -> io::Result<Vec<u8>> {
    let mut c = match dictionary {
        Some(d) => Compressor::with_prepared_dictionary(d.encoder())?,
        None => Compressor::new(ZSTD_LEVEL)?,
    };
    // Level 19's own tables for a large body are 2–5 MiB of context; a batch body is rarely
    // over 128 KiB, and these bounds cost it nothing measurable (docs/BENCHMARKS.md) while
    // keeping a seal's transient memory near 1.5 MiB on a gateway with 100 devices.
    c.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
    c.set_parameter(CParameter::HashLog(ZSTD_WINDOW_LOG - 1))?;
    c.set_parameter(CParameter::ChainLog(ZSTD_WINDOW_LOG - 1))?;
    c.set_parameter(CParameter::ChecksumFlag(false))?;
    c.set_parameter(CParameter::ContentSizeFlag(true))?;
    c.set_parameter(CParameter::DictIdFlag(false))?;
    c.compress(raw)
}
