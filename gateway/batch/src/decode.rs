//! Reading a batch: its header alone, or the whole batch into readings.

use std::io::{self, Write};

use zstd::bulk::Decompressor;

use crate::body::{self, Column, Source, is_present};
use crate::dictionary::Dictionaries;
pub use crate::error::DecodeError;
use crate::header::{self, BatchHeader};
use crate::value::Value;

/// Reads and checks a batch's header without decompressing its body: magic, version, length,
/// checksum over the whole batch, and the header's own fields.
pub fn read_header(batch: &[u8]) -> Result<BatchHeader, DecodeError> {
    header::parse(batch)
}

/// The decompressed body of a batch: what [`crate::train_dictionary`] trains on.
pub fn raw_body(batch: &[u8], dictionaries: &Dictionaries) -> Result<Vec<u8>, DecodeError> {
    let header = header::parse(batch)?;
    decompress(batch, &header, dictionaries)
}

/// Decodes a whole batch. `dictionaries` must hold the dictionary the batch names, if any.
pub fn decode(batch: &[u8], dictionaries: &Dictionaries) -> Result<DecodedBatch, DecodeError> {
    let header = header::parse(batch)?;
    let raw = decompress(batch, &header, dictionaries)?;
    let sources = body::parse(&raw, &header)?;
    Ok(DecodedBatch { header, sources })
}

fn decompress(
    batch: &[u8],
    header: &BatchHeader,
    dictionaries: &Dictionaries,
) -> Result<Vec<u8>, DecodeError> {
    let at = header.body_offset();
    let compressed = &batch[at..at + header.body_len as usize];
    let mut d = match header.dictionary_id {
        None => Decompressor::new(),
        Some(id) => {
            let dict = dictionaries.get(id).ok_or(DecodeError::UnknownDictionary {
                id: id.get(),
                known: dictionaries.len(),
            })?;
            Decompressor::with_prepared_dictionary(dict.decoder())
        }
    }
    .map_err(DecodeError::Decompress)?;
    // The body is exactly one zstd frame.
    match zstd::zstd_safe::find_frame_compressed_size(compressed) {
        Ok(n) if n == compressed.len() => {}
        _ => {
            return Err(DecodeError::Decompress(io::Error::new(
                io::ErrorKind::InvalidData,
                "the body is not exactly one zstd frame",
            )));
        }
    }
    // Capacity is the declared length, itself at most MAX_RAW_BODY_LEN: zstd writes no further.
    let raw = d
        .decompress(compressed, header.raw_body_len as usize)
        .map_err(DecodeError::Decompress)?;
    if raw.len() != header.raw_body_len as usize {
        return Err(DecodeError::BodyLength {
            declared: header.raw_body_len,
            actual: raw.len(),
        });
    }
    Ok(raw)
}

/// A decoded batch: its header and its readings, kept in columns.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedBatch {
    header: BatchHeader,
    sources: Vec<Source>,
}

/// One reading of a decoded batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading<'a> {
    pub source: &'a str,
    pub channel: &'a str,
    /// Unix milliseconds.
    pub ts_ms: i64,
    pub value: Value,
}

impl DecodedBatch {
    #[must_use]
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The readings: sources by name, then samples in order, then channels by name. Each series
    /// (source, channel) comes in the order its readings were pushed.
    #[must_use]
    pub fn readings(&self) -> Readings<'_> {
        Readings {
            sources: &self.sources,
            source: 0,
            sample: 0,
            channel: 0,
            cursors: vec![0; self.sources.first().map_or(0, |s| s.channels.len())],
            remaining: self.header.reading_count as usize,
        }
    }

    /// Writes one JSON object per reading and line:
    /// `{"source":"…","channel":"…","ts_ms":…,"value":…}`. Decimal values are exact JSON numbers
    /// (`2150 × 10^-2` is `21.5`); non-finite floats are `null`.
    pub fn write_json_lines<W: Write>(&self, mut out: W) -> io::Result<()> {
        // Lines gather in `buf`, written out in chunks of about 64 KiB.
        let mut buf = Vec::with_capacity(64 * 1024);
        for source in &self.sources {
            let prefix = format!("{{\"source\":{},\"channel\":", json_string(&source.name));
            let channels: Vec<String> = source
                .channels
                .iter()
                .map(|c| format!("{},\"ts_ms\":", json_string(&c.name)))
                .collect();
            let mut cursors = vec![0usize; source.channels.len()];
            for (i, &ts) in source.timestamps.iter().enumerate() {
                for (c, channel) in source.channels.iter().enumerate() {
                    let Some(value) = value_at(channel, i, &mut cursors[c]) else {
                        continue;
                    };
                    buf.extend_from_slice(prefix.as_bytes());
                    buf.extend_from_slice(channels[c].as_bytes());
                    write!(buf, "{ts}")?;
                    buf.extend_from_slice(b",\"value\":");
                    value.write_json(&mut buf);
                    buf.extend_from_slice(b"}\n");
                }
                if buf.len() >= 60 * 1024 {
                    out.write_all(&buf)?;
                    buf.clear();
                }
            }
        }
        out.write_all(&buf)
    }

    /// [`DecodedBatch::write_json_lines`] into a string.
    #[must_use]
    pub fn to_json_lines(&self) -> String {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = self.write_json_lines(&mut out);
        // Names are UTF-8 (checked when decoded) and everything else is ASCII.
        String::from_utf8(out).unwrap_or_default()
    }
}

fn json_string(s: &str) -> String {
    // Serialising a &str cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

/// The value of `channel` at sample `i`, advancing the channel's cursor when present.
fn value_at(channel: &body::Channel, i: usize, cursor: &mut usize) -> Option<Value> {
    if let Some(bitmap) = &channel.presence {
        if !is_present(bitmap, i) {
            return None;
        }
    }
    let k = *cursor;
    *cursor += 1;
    Some(match &channel.values {
        Column::Decimal { exp, raw } => Value::Decimal {
            raw: raw[k],
            exp: *exp,
        },
        Column::Float(v) => Value::Float(v[k]),
    })
}

/// Iterator over a decoded batch's readings; see [`DecodedBatch::readings`].
#[derive(Debug, Clone)]
pub struct Readings<'a> {
    sources: &'a [Source],
    source: usize,
    sample: usize,
    channel: usize,
    /// Per channel of the current source: index of its next value.
    cursors: Vec<usize>,
    remaining: usize,
}

impl<'a> Iterator for Readings<'a> {
    type Item = Reading<'a>;

    fn next(&mut self) -> Option<Reading<'a>> {
        loop {
            let source = self.sources.get(self.source)?;
            if self.sample == source.timestamps.len() {
                self.source += 1;
                self.sample = 0;
                self.channel = 0;
                self.cursors.clear();
                self.cursors.resize(
                    self.sources
                        .get(self.source)
                        .map_or(0, |s| s.channels.len()),
                    0,
                );
                continue;
            }
            if self.channel == source.channels.len() {
                self.sample += 1;
                self.channel = 0;
                continue;
            }
            let c = self.channel;
            self.channel += 1;
            let channel = &source.channels[c];
            if let Some(value) = value_at(channel, self.sample, &mut self.cursors[c]) {
                self.remaining = self.remaining.saturating_sub(1);
                return Some(Reading {
                    source: &source.name,
                    channel: &channel.name,
                    ts_ms: source.timestamps[self.sample],
                    value,
                });
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Readings<'_> {}
