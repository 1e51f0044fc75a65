//! Model-based property test of the outbox (`store/outbox.rs`), after Vector's disk buffer model
//! tests (`lib/vector-buffers/src/variants/disk_v2/tests/model/`).
//!
//! A generated sequence of operations runs against the real [`Store`] on a SQLite file in a temp
//! directory and against [`Model`], a plain in-memory outbox: committed readings in commit order,
//! how far they are sealed, the live batches with their reading ranges, the newest sequence
//! number, `acked_upto` and the dropped counters. The operations:
//! - device polls (`Tx::ingest_series`), some points changing kind (decimal exponent, float),
//!   some names no batch can carry; one device is named like a node, so a device point and a
//!   node channel can meet as one (source, channel) of two kinds;
//! - node samples (`Tx::ingest`): contiguous seqs, some retransmitted, some after a reported gap;
//! - sealing with a small `max_readings`, so many batches form, and a kind change ends a batch
//!   (outbox invariant 6); one batch at a time, or all that is unsealed as the writer does;
//! - acknowledgements up to the newest batch, below it, and beyond it (refused, changing nothing);
//! - the buffer bound with small byte caps (oldest batches dropped and counted);
//! - transactions of several of those that commit, that return `Err` midway (everything rolls
//!   back, the store's in-memory caches too: the steps after show whether they did), that panic
//!   (the store's transaction dropped without commit), or that are cut by a kill -9 while open;
//! - closing and reopening the store, and a kill -9 between transactions (the files copied as they
//!   are on disk while the store is open, then restored and opened again).
//!
//! Every step's return value is compared with the model's, and after every operation the
//! observable state: `Reader::outbox` totals, the `Reader::batches_after` index (whole and paged),
//! every live batch's bytes (identical to the bytes the model sealed with
//! `outpost_batch::BatchBuilder` from its readings in commit order, so the same at every read
//! and after every reopen), those bytes decoded (exactly the model's readings of the batch; the
//! format orders readings by source, sample and channel, so "in order" is each series in commit
//! order, and the byte comparison pins down the rest), no bytes for any other sequence number,
//! the reading totals, and the accounting (every committed reading in one live batch, or
//! unsealed, or dropped, or acknowledged). Sequence numbers must grow strictly and never be
//! reused, whatever was acknowledged or dropped, across reopen and crash.
//!
//! Cases: 128 of up to 60 operations by default (about 35 s in a debug build on 2 cores);
//! `PROPTEST_CASES` overrides. A failure is saved in `proptest-regressions/outbox_model.txt`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use outpost::io::store::outbox::{AckError, Acked, BatchInfo, Dropped, OutboxTotals, Sealed};
use outpost::io::store::{Ingested, Reader, Sample, SeriesReading, Store, StoreError, Tx};
use outpost_batch::{BatchBuilder, Dictionaries, GatewayId, Value, ValueKind};
use outpost_proto::{ChannelId, FwVersion, Hello, Reading};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const GATEWAY: &str = "gw-model";
const T0: i64 = 1_764_000_000_000;
/// Two boots of each node (a node that rebooted): seqs restart at 1 in each.
const BOOTS: [u32; 2] = [7, 8];
/// The two nodes' uids are `[1; 8]` and `[2; 8]`.
const NODE_UIDS: [u8; 2] = [1, 2];
/// A device named like node 0: its points share (source, channel) names with the node's channels.
const NODE0_HEX: &str = "0101010101010101";

/// Node channels the samples use: id, name in batches, decimal exponent (`store/series.rs`).
const NODE_CHANNELS: [(u8, &str, i8); 3] =
    [(1, "temperature", -2), (4, "seq", 0), (130, "ch130", 0)];

// ---------------------------------------------------------------------------------------------
// Operations

/// A source or channel name; `TooLong` is one byte past `outpost_batch::MAX_NAME_LEN`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Name {
    Is(&'static str),
    TooLong,
}

impl Name {
    fn text(self) -> String {
        match self {
            Name::Is(s) => s.to_owned(),
            Name::TooLong => "x".repeat(outpost_batch::MAX_NAME_LEN + 1),
        }
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Is(s) => write!(f, "{s:?}"),
            Name::TooLong => f.write_str("<256 bytes>"),
        }
    }
}

/// An acknowledgement, relative to the newest batch sealed so far.
#[derive(Clone, Copy, Debug)]
enum AckTo {
    Newest,
    BelowNewest(u64),
    /// Past the newest: must be refused.
    BeyondNewest(u64),
}

/// A buffer bound.
#[derive(Clone, Copy, Debug)]
enum Cap {
    /// Per mille of the bytes the outbox holds at that point.
    KeepPerMille(u64),
    Bytes(u64),
}

/// One write inside a transaction.
#[derive(Clone, Debug)]
enum Step {
    /// `ingest_series(source, T0 + dt_ms, points)`.
    Poll {
        source: Name,
        dt_ms: i64,
        points: Vec<(Name, Value)>,
    },
    /// Of boot `boot` of node `node`: `resend` samples already committed (retransmissions), then
    /// a sample per element of `new` (channel id, raw value), the first `gap` seqs after the last
    /// committed one skipped (a gap the node reports: its ring overflowed).
    Samples {
        node: usize,
        boot: u32,
        resend: u32,
        gap: u32,
        new: Vec<Vec<(u8, i32)>>,
    },
    Seal {
        max: usize,
    },
    /// As the writer does it: seal batches of at most `max` until nothing is left, then ask how
    /// many readings are unsealed.
    SealAll {
        max: usize,
    },
    Ack(AckTo),
    Enforce(Cap),
}

/// How a transaction of several steps ends.
#[derive(Clone, Copy, Debug)]
enum End {
    Commit,
    /// The closure returns `Err` after its steps.
    Fail,
    /// The closure panics after its steps: the transaction is dropped without commit.
    Panic {
        then_reopen: bool,
    },
    /// The process is killed (kill -9) after the steps, before the commit: the files as they
    /// are on disk at that moment are what the next start opens.
    Crash,
}

#[derive(Clone, Debug)]
enum Op {
    /// One step in a transaction of its own, committed.
    Do(Step),
    Tx(Vec<Step>, End),
    /// Drop the store (closing its connection) and open the file again.
    Reopen,
    /// kill -9 between transactions, then start again.
    Kill,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (-5000i64..5000).prop_map(|raw| Value::decimal(raw, -1)),
        1 => (any::<i64>(), -2i8..=0).prop_map(|(raw, exp)| Value::decimal(raw, exp)),
        3 => (-1000.0f64..1000.0).prop_map(Value::float),
        1 => prop_oneof![
            Just(f64::NAN),
            Just(-f64::NAN),
            Just(-0.0),
            Just(f64::INFINITY),
            Just(f64::MIN_POSITIVE / 4.0),
            any::<f64>(),
        ]
        .prop_map(Value::float),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let source = prop_oneof![
        8 => prop::sample::select(vec![Name::Is("meter-1"), Name::Is("meter-2"), Name::Is(NODE0_HEX)]),
        1 => Just(Name::Is("")),
    ];
    let channel = prop_oneof![
        8 => prop::sample::select(vec![Name::Is("v"), Name::Is("i"), Name::Is("temperature")]),
        1 => prop::sample::select(vec![Name::Is(""), Name::TooLong]),
    ];
    let poll = (source, 0i64..20_000, vec((channel, value()), 1..4)).prop_map(
        |(source, dt_ms, points)| Step::Poll {
            source,
            dt_ms,
            points,
        },
    );
    let node_value = prop_oneof![4 => -3000i32..3000, 1 => any::<i32>()];
    let sample = vec((prop::sample::select(vec![1u8, 4, 130]), node_value), 0..3);
    let samples = (
        0usize..2,
        prop_oneof![4 => Just(BOOTS[0]), 1 => Just(BOOTS[1])],
        prop_oneof![4 => Just(0u32), 1 => 1u32..3],
        prop_oneof![5 => Just(0u32), 1 => 1u32..4],
        vec(sample, 0..3),
    )
        .prop_map(|(node, boot, resend, gap, new)| Step::Samples {
            node,
            boot,
            resend,
            gap,
            new,
        });
    let seal = prop_oneof![
        5 => prop_oneof![5 => 1usize..8, 1 => Just(1000)].prop_map(|max| Step::Seal { max }),
        1 => (1usize..8).prop_map(|max| Step::SealAll { max }),
    ];
    let ack = prop_oneof![
        2 => Just(AckTo::Newest),
        3 => (1u64..6).prop_map(AckTo::BelowNewest),
        1 => (1u64..3).prop_map(AckTo::BeyondNewest),
    ]
    .prop_map(Step::Ack);
    let enforce = prop_oneof![
        2 => (300u64..1000).prop_map(Cap::KeepPerMille),
        1 => (0u64..600).prop_map(Cap::Bytes),
    ]
    .prop_map(Step::Enforce);
    prop_oneof![
        5 => poll,
        4 => samples,
        6 => seal,
        3 => ack,
        2 => enforce,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let end = prop_oneof![
        2 => Just(End::Commit),
        2 => Just(End::Fail),
        1 => any::<bool>().prop_map(|then_reopen| End::Panic { then_reopen }),
        1 => Just(End::Crash),
    ];
    prop_oneof![
        16 => step().prop_map(Op::Do),
        4 => (vec(step(), 1..4), end).prop_map(|(steps, end)| Op::Tx(steps, end)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Kill),
    ]
}

// ---------------------------------------------------------------------------------------------
// The model

/// A committed reading, as a batch must carry it.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    source: String,
    channel: String,
    ts_ms: i64,
    value: Value,
}

#[derive(Clone, Debug)]
struct Batch {
    seq: u64,
    /// Indices into `Model::readings`.
    readings: Range<usize>,
    /// The bytes sealed: `outpost_batch::BatchBuilder` over exactly those readings.
    bytes: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    /// Every committed reading, in commit order.
    readings: Vec<Row>,
    /// `readings[..sealed]` went into batches (live, acknowledged or dropped).
    sealed: usize,
    /// Live batches, oldest first.
    batches: Vec<Batch>,
    /// The newest sequence number ever sealed (and committed).
    last_seq: u64,
    acked_upto: u64,
    dropped_batches: u64,
    dropped_readings: u64,
    acked_readings: u64,
    device_readings: u64,
    /// Per (node, boot), the last committed seq.
    node_last: BTreeMap<(usize, u32), u32>,
}

/// A step with everything relative resolved against the state it runs in.
#[derive(Clone, Debug)]
enum Concrete {
    Poll {
        source: String,
        ts_ms: i64,
        points: Vec<SeriesReading>,
    },
    Samples {
        node: usize,
        boot: u32,
        samples: Vec<Sample>,
    },
    Seal {
        max: usize,
    },
    SealAll {
        max: usize,
    },
    Ack(u64),
    Enforce(u64),
}

/// What a step returned.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Stored(u64),
    Ingested(Ingested),
    Sealed(Option<Sealed>),
    /// The batches sealed, and the readings left unsealed.
    SealedAll(Vec<Sealed>, u64),
    /// `Err((upto, newest))`: refused as beyond the newest batch.
    Acked(Result<Acked, (u64, u64)>),
    Dropped(Dropped),
}

fn fits(name: &str) -> bool {
    (1..=outpost_batch::MAX_NAME_LEN).contains(&name.len())
}

/// SQLite keeps a NaN as NULL; it comes back as the canonical NaN (`store/series.rs`).
fn canonical(value: Value) -> Value {
    match value {
        Value::Float(v) if v.is_nan() => Value::float(f64::NAN),
        other => other,
    }
}

fn node_hex(node: usize) -> String {
    format!("{:02x}", NODE_UIDS[node]).repeat(8)
}

fn node_channel(id: u8) -> (&'static str, i8) {
    let (_, name, exp) = NODE_CHANNELS
        .iter()
        .find(|c| c.0 == id)
        .expect("a channel the generator uses");
    (name, *exp)
}

impl Model {
    fn bytes(&self) -> u64 {
        self.batches.iter().map(|b| b.bytes.len() as u64).sum()
    }

    fn resolve(&self, step: &Step) -> Concrete {
        match step {
            Step::Poll {
                source,
                dt_ms,
                points,
            } => Concrete::Poll {
                source: source.text(),
                ts_ms: T0 + dt_ms,
                points: points
                    .iter()
                    .map(|(channel, value)| SeriesReading {
                        channel: channel.text(),
                        value: *value,
                    })
                    .collect(),
            },
            Step::Samples {
                node,
                boot,
                resend,
                gap,
                new,
            } => {
                let last = self.node_last.get(&(*node, *boot)).copied().unwrap_or(0);
                let sample = |seq: u32, window_start: u32, readings: &[(u8, i32)]| Sample {
                    seq,
                    window_start,
                    ts_ms: T0 + i64::from(seq) * 1000 + *node as i64,
                    max_lost: u32::MAX,
                    readings: readings
                        .iter()
                        .map(|&(channel, value)| Reading {
                            channel: ChannelId(channel),
                            value,
                        })
                        .collect(),
                };
                let mut samples: Vec<Sample> = ((last + 1).saturating_sub(*resend).max(1)..=last)
                    .map(|seq| sample(seq, 1, &[(4, seq as i32)]))
                    .collect();
                let first_new = last + 1 + gap;
                let window_start = if *gap > 0 { first_new } else { 1 };
                samples.extend(
                    new.iter()
                        .zip(first_new..)
                        .map(|(readings, seq)| sample(seq, window_start, readings)),
                );
                Concrete::Samples {
                    node: *node,
                    boot: *boot,
                    samples,
                }
            }
            Step::Seal { max } => Concrete::Seal { max: *max },
            Step::SealAll { max } => Concrete::SealAll { max: *max },
            Step::Ack(to) => Concrete::Ack(match to {
                AckTo::Newest => self.last_seq,
                AckTo::BelowNewest(k) => self.last_seq.saturating_sub(*k),
                AckTo::BeyondNewest(k) => self.last_seq + k,
            }),
            Step::Enforce(cap) => Concrete::Enforce(match cap {
                Cap::KeepPerMille(p) => self.bytes() * p / 1000,
                Cap::Bytes(b) => *b,
            }),
        }
    }

    /// Applies `step`, returning what the store should have returned. `store_seqs` are the
    /// sequence numbers the store gave the batches it sealed in this step: the model takes each
    /// if it is above every one sealed before (invariant 1 asks no more), and the next one
    /// otherwise, so a reused number shows as a difference.
    fn apply(&mut self, step: &Concrete, store_seqs: &[u64]) -> Outcome {
        match step {
            Concrete::Poll {
                source,
                ts_ms,
                points,
            } => {
                let mut stored = 0;
                if fits(source) {
                    for p in points.iter().filter(|p| fits(&p.channel)) {
                        self.readings.push(Row {
                            source: source.clone(),
                            channel: p.channel.clone(),
                            ts_ms: *ts_ms,
                            value: canonical(p.value),
                        });
                        stored += 1;
                    }
                }
                self.device_readings += stored;
                Outcome::Stored(stored)
            }
            Concrete::Samples {
                node,
                boot,
                samples,
            } => {
                // Admitted: the successor of the last committed seq, or (after a gap the node
                // reports) the first one it still holds; anything else is a duplicate.
                let mut last = self.node_last.get(&(*node, *boot)).copied();
                let mut out = Ingested::default();
                for s in samples {
                    let admitted = match last {
                        None => s.seq == 1 || s.seq == s.window_start,
                        Some(l) => s.seq == l + 1 || (s.seq > l && s.seq == s.window_start),
                    };
                    if !admitted {
                        out.duplicates += 1;
                        continue;
                    }
                    out.lost += s.seq - last.unwrap_or(0) - 1;
                    for r in &s.readings {
                        let (channel, exp) = node_channel(r.channel.0);
                        self.readings.push(Row {
                            source: node_hex(*node),
                            channel: channel.to_owned(),
                            ts_ms: s.ts_ms,
                            value: Value::decimal(i64::from(r.value), exp),
                        });
                    }
                    out.admitted += 1;
                    out.readings += s.readings.len() as u64;
                    last = Some(s.seq);
                }
                out.upto = last.unwrap_or(0);
                if let Some(last) = last {
                    self.node_last.insert((*node, *boot), last);
                }
                Outcome::Ingested(out)
            }
            Concrete::Seal { max } => Outcome::Sealed(self.seal(*max, store_seqs.first().copied())),
            Concrete::SealAll { max } => {
                let mut sealed = Vec::new();
                while let Some(s) = self.seal(*max, store_seqs.get(sealed.len()).copied()) {
                    sealed.push(s);
                }
                Outcome::SealedAll(sealed, (self.readings.len() - self.sealed) as u64)
            }
            Concrete::Ack(upto) => {
                let upto = *upto;
                if upto > self.last_seq {
                    return Outcome::Acked(Err((upto, self.last_seq)));
                }
                self.acked_upto = self.acked_upto.max(upto);
                let gone = self.batches.iter().take_while(|b| b.seq <= upto).count();
                let readings: u64 = self
                    .batches
                    .drain(..gone)
                    .map(|b| b.readings.len() as u64)
                    .sum();
                self.acked_readings += readings;
                Outcome::Acked(Ok(Acked {
                    acked_upto: self.acked_upto,
                    deleted: gone as u64,
                    readings,
                }))
            }
            Concrete::Enforce(max_bytes) => {
                let mut dropped = Dropped::default();
                while self.bytes() > *max_bytes {
                    let oldest = self.batches.remove(0);
                    dropped.batches += 1;
                    dropped.readings += oldest.readings.len() as u64;
                }
                self.dropped_batches += dropped.batches;
                self.dropped_readings += dropped.readings;
                Outcome::Dropped(dropped)
            }
        }
    }

    /// The oldest unsealed readings, at most `max`, ending before the first one whose
    /// (source, channel) already holds another kind of value in the batch (invariant 6).
    fn seal(&mut self, max: usize, store_seq: Option<u64>) -> Option<Sealed> {
        let pending = &self.readings[self.sealed..];
        if pending.is_empty() || max == 0 {
            return None;
        }
        let mut kinds: HashMap<(&str, &str), ValueKind> = HashMap::new();
        let taken = pending
            .iter()
            .take(max)
            .take_while(|r| {
                *kinds
                    .entry((r.source.as_str(), r.channel.as_str()))
                    .or_insert(r.value.kind())
                    == r.value.kind()
            })
            .count();
        let seq = store_seq
            .filter(|&s| s > self.last_seq)
            .unwrap_or(self.last_seq + 1);
        let mut builder = BatchBuilder::new(GatewayId::new(GATEWAY).unwrap(), seq);
        for r in &pending[..taken] {
            builder
                .push(&r.source, &r.channel, r.ts_ms, r.value)
                .expect("the model pushes one kind per series");
        }
        let bytes = builder.seal(None).expect("a batch of a few readings seals");
        let sealed = Sealed {
            seq,
            readings: taken as u64,
            size_bytes: bytes.len() as u64,
        };
        self.batches.push(Batch {
            seq,
            readings: self.sealed..self.sealed + taken,
            bytes,
        });
        self.sealed += taken;
        self.last_seq = seq;
        Some(sealed)
    }

    fn totals(&self) -> OutboxTotals {
        OutboxTotals {
            batches: self.batches.len() as u64,
            bytes: self.bytes(),
            oldest_seq: self.batches.first().map(|b| b.seq),
            newest_seq: self.batches.last().map(|b| b.seq),
            acked_upto: self.acked_upto,
            dropped_batches: self.dropped_batches,
            dropped_readings: self.dropped_readings,
            unsealed_readings: (self.readings.len() - self.sealed) as u64,
            // The oldest batch's earliest reading, else the first unsealed one.
            oldest_unsent_ms: self
                .batches
                .iter()
                .filter_map(|b| {
                    self.readings[b.readings.clone()]
                        .iter()
                        .map(|r| r.ts_ms)
                        .min()
                })
                .min()
                .or_else(|| self.readings.get(self.sealed).map(|r| r.ts_ms)),
        }
    }

    fn index(&self) -> Vec<BatchInfo> {
        self.batches
            .iter()
            .map(|b| {
                let rows = &self.readings[b.readings.clone()];
                BatchInfo {
                    seq: b.seq,
                    size_bytes: b.bytes.len() as u64,
                    first_ts_ms: rows.iter().map(|r| r.ts_ms).min().unwrap(),
                    last_ts_ms: rows.iter().map(|r| r.ts_ms).max().unwrap(),
                    reading_count: rows.len() as u64,
                    dictionary_id: 0,
                    unsynchronised: false,
                }
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The store side

fn hello(node: usize, boot_id: u32) -> Hello {
    Hello {
        uid: [NODE_UIDS[node]; 8],
        hw_rev: 2,
        fw: FwVersion {
            major: 1,
            minor: 4,
            patch: 0,
        },
        boot_id,
        lot: heapless::String::try_from("L2026-11").unwrap(),
        channels: NODE_CHANNELS.iter().map(|c| ChannelId(c.0)).collect(),
        ephemeral: [0; 32],
    }
}

fn apply_store(tx: &mut Tx<'_>, nodes: &[i64; 2], step: &Concrete) -> Result<Outcome, StoreError> {
    Ok(match step {
        Concrete::Poll {
            source,
            ts_ms,
            points,
        } => Outcome::Stored(tx.ingest_series(source, *ts_ms, points)?),
        Concrete::Samples {
            node,
            boot,
            samples,
        } => Outcome::Ingested(tx.ingest(nodes[*node], *boot, samples, 0)?),
        Concrete::Seal { max } => Outcome::Sealed(tx.seal_batch(GATEWAY, 0, *max, None)?),
        Concrete::SealAll { max } => {
            let mut sealed = Vec::new();
            while let Some(s) = tx.seal_batch(GATEWAY, 0, *max, None)? {
                sealed.push(s);
                if sealed.len() > 10_000 {
                    break; // the model will tell what went wrong
                }
            }
            Outcome::SealedAll(sealed, tx.unsealed_readings()?)
        }
        Concrete::Ack(upto) => Outcome::Acked(match tx.ack_batches(*upto) {
            Ok(acked) => Ok(acked),
            Err(AckError::BeyondNewest { upto, newest }) => Err((upto, newest)),
            Err(AckError::Store(e)) => return Err(e),
        }),
        Concrete::Enforce(max_bytes) => Outcome::Dropped(tx.enforce_buffer(*max_bytes)?),
    })
}

/// The store's files as they are on disk: what a process killed now leaves behind.
struct Snapshot {
    db: Vec<u8>,
    wal: Option<Vec<u8>>,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

impl Snapshot {
    fn take(path: &Path) -> Snapshot {
        Snapshot {
            db: std::fs::read(path).unwrap(),
            wal: std::fs::read(sibling(path, "-wal")).ok(),
        }
    }

    /// Puts the files back as they were (the shared-memory index is rebuilt from the WAL).
    fn restore(&self, path: &Path) {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(sibling(path, suffix));
        }
        std::fs::write(path, &self.db).unwrap();
        if let Some(wal) = &self.wal {
            std::fs::write(sibling(path, "-wal"), wal).unwrap();
        }
    }
}

/// The payload of the panics `End::Panic` causes; the panic hook keeps quiet about them.
struct Aborted;

fn quiet_aborts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Aborted>().is_none() {
                default(info);
            }
        }));
    });
}

/// The sequence numbers of the batches a step sealed.
fn sealed_seqs(outcome: &Outcome) -> Vec<u64> {
    match outcome {
        Outcome::Sealed(Some(s)) => vec![s.seq],
        Outcome::SealedAll(sealed, _) => sealed.iter().map(|s| s.seq).collect(),
        _ => Vec::new(),
    }
}

/// What the harness must do to the store after a transaction.
enum After {
    Nothing,
    Reopen,
    Restore(Snapshot),
}

/// Runs `steps` in one store transaction and on a copy of the model, compares what each step
/// returned, and keeps the copy if the transaction committed.
fn run_tx(
    store: &mut Store,
    nodes: &[i64; 2],
    model: &mut Model,
    steps: &[Step],
    end: End,
) -> Result<After, TestCaseError> {
    let path = store.path().to_owned();
    let mut staged = model.clone();
    let mut outcomes = Vec::new();
    let mut snapshot = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        store.transaction(|tx| {
            for step in steps {
                let concrete = staged.resolve(step);
                let actual = apply_store(tx, nodes, &concrete)?;
                let expected = staged.apply(&concrete, &sealed_seqs(&actual));
                outcomes.push((concrete, expected, actual));
            }
            match end {
                End::Commit => Ok(()),
                End::Fail => Err(StoreError::DiskFull),
                End::Crash => {
                    snapshot = Some(Snapshot::take(&path));
                    Err(StoreError::DiskFull)
                }
                End::Panic { .. } => std::panic::panic_any(Aborted),
            }
        })
    }));
    for (step, expected, actual) in &outcomes {
        for seq in sealed_seqs(actual) {
            prop_assert!(
                seq > model.last_seq,
                "batch sequence {} reused: {} was sealed before",
                seq,
                model.last_seq
            );
        }
        prop_assert_eq!(actual, expected, "store vs model, step {:?}", step);
    }
    Ok(match (end, result) {
        (End::Commit, Ok(Ok(()))) => {
            *model = staged;
            After::Nothing
        }
        (End::Fail, Ok(Err(StoreError::DiskFull))) => After::Nothing,
        (End::Crash, Ok(Err(StoreError::DiskFull))) => After::Restore(snapshot.expect("taken")),
        (End::Panic { then_reopen }, Err(payload))
            if payload.downcast_ref::<Aborted>().is_some() =>
        {
            if then_reopen {
                After::Reopen
            } else {
                After::Nothing
            }
        }
        (end, Ok(result)) => {
            return Err(TestCaseError::fail(format!(
                "transaction ending {end:?} returned {result:?}"
            )));
        }
        (_, Err(payload)) => std::panic::resume_unwind(payload),
    })
}

/// Registers both nodes in both boots (after every start, as their HELLOs would): their ids
/// stay, and the dedup point each boot is told is the model's.
fn register(
    store: &mut Store,
    model: &Model,
    known: Option<[i64; 2]>,
) -> Result<[i64; 2], TestCaseError> {
    let mut ids = [0; 2];
    for (node, id) in ids.iter_mut().enumerate() {
        for boot in BOOTS {
            let r = store
                .transaction(|tx| {
                    tx.register(0, "/dev/ttyACM0", &hello(node, boot), &[1; 32], true)
                })?
                .expect("the same key is always accepted");
            let last = model.node_last.get(&(node, boot)).copied().unwrap_or(0);
            prop_assert_eq!(
                r.ack_upto,
                last,
                "node {} boot {}'s dedup point",
                node,
                boot
            );
            prop_assert!(*id == 0 || *id == r.node_id, "node {} changed id", node);
            *id = r.node_id;
        }
    }
    if let Some(known) = known {
        prop_assert_eq!(ids, known, "the nodes changed ids");
    }
    Ok(ids)
}

/// `(source, channel)`-major, commit order within a series: what a batch preserves.
fn by_series(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by(|a, b| (&a.source, &a.channel).cmp(&(&b.source, &b.channel)));
    rows
}

/// Compares everything observable through a fresh reader with the model.
fn check(path: &Path, model: &Model) -> Result<(), TestCaseError> {
    let reader = Reader::open(path)?;
    let totals = reader.outbox()?;
    prop_assert_eq!(totals, model.totals(), "outbox totals");

    let index = reader.batches_after(0, 1 << 20)?;
    prop_assert_eq!(&index, &model.index(), "batch index");
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = reader.batches_after(after, 2)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        paged.extend(page);
    }
    prop_assert_eq!(&paged, &index, "the index read two at a time");

    for batch in &model.batches {
        let bytes = reader.batch_bytes(batch.seq)?;
        let Some(bytes) = bytes else {
            return Err(TestCaseError::fail(format!(
                "batch {} has no bytes",
                batch.seq
            )));
        };
        let decoded = outpost_batch::decode(&bytes, &Dictionaries::new())?;
        let header = decoded.header();
        prop_assert_eq!(header.seq, batch.seq);
        prop_assert_eq!(header.gateway_id.as_str(), GATEWAY);
        prop_assert_eq!(header.dictionary_id, None);
        let got: Vec<Row> = decoded
            .readings()
            .map(|r| Row {
                source: r.source.to_owned(),
                channel: r.channel.to_owned(),
                ts_ms: r.ts_ms,
                value: r.value,
            })
            .collect();
        let want = model.readings[batch.readings.clone()].to_vec();
        prop_assert_eq!(
            by_series(got),
            by_series(want),
            "readings of batch {}",
            batch.seq
        );
        prop_assert!(
            bytes == batch.bytes,
            "batch {}'s bytes are not the bytes sealed",
            batch.seq
        );
    }
    for seq in 0..=model.last_seq + 2 {
        if !model.batches.iter().any(|b| b.seq == seq) {
            prop_assert!(
                reader.batch_bytes(seq)?.is_none(),
                "batch {} should not be there",
                seq
            );
        }
    }

    let stored = reader.totals()?;
    prop_assert_eq!(stored.nodes, 2);
    prop_assert_eq!(stored.readings_stored, model.readings.len() as u64);
    prop_assert_eq!(stored.device_readings, model.device_readings);
    // Every committed reading is in one live batch, unsealed, dropped or acknowledged.
    let in_batches: u64 = index.iter().map(|b| b.reading_count).sum();
    prop_assert_eq!(
        in_batches + totals.unsealed_readings + totals.dropped_readings + model.acked_readings,
        stored.readings_stored
    );
    Ok(())
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    quiet_aborts();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("outpost.db");
    let mut model = Model::default();
    let mut store = Store::open(&path)?;
    let nodes = register(&mut store, &model, None)?;
    check(&path, &model)?;
    for (i, op) in ops.iter().enumerate() {
        let at = |e: TestCaseError| TestCaseError::fail(format!("op {i} {op:?}: {e}"));
        let after = match op {
            Op::Do(step) => run_tx(
                &mut store,
                &nodes,
                &mut model,
                std::slice::from_ref(step),
                End::Commit,
            ),
            Op::Tx(steps, end) => run_tx(&mut store, &nodes, &mut model, steps, *end),
            Op::Reopen => Ok(After::Reopen),
            Op::Kill => Ok(After::Restore(Snapshot::take(&path))),
        }
        .map_err(at)?;
        match after {
            After::Nothing => {}
            After::Reopen => {
                drop(store);
                store = Store::open(&path).map_err(|e| at(e.into()))?;
                register(&mut store, &model, Some(nodes)).map_err(at)?;
            }
            After::Restore(snapshot) => {
                drop(store);
                snapshot.restore(&path);
                store = Store::open(&path).map_err(|e| at(e.into()))?;
                register(&mut store, &model, Some(nodes)).map_err(at)?;
            }
        }
        check(&path, &model).map_err(at)?;
    }
    Ok(())
}

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::with_failure_persistence(
        proptest::test_runner::FileFailurePersistence::Direct(
            "proptest-regressions/outbox_model.txt",
        ),
    );
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 128;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_outbox_behaves_like_its_model(ops in vec(op(), 1..60)) {
        run(&ops)?;
    }
}
