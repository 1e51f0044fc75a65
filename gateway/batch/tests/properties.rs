//! Property tests: any readings round-trip; any damage is an error, never a panic and never other
//! readings; sealing is deterministic; the size estimate is a bound.

use std::collections::BTreeMap;

use outpost_batch::*;
use proptest::collection::vec;
use proptest::prelude::*;

/// A series and the kind of value it holds.
#[derive(Debug, Clone)]
struct SeriesSpec {
    source: String,
    channel: String,
    kind: ValueKind,
}

#[derive(Debug, Clone)]
struct Push {
    series: usize,
    ts_ms: i64,
    value: Value,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["e2e0000000000001", "e2e0000000000002", "temperature", "seq", "a", "b"])
            .prop_map(str::to_owned),
        1 => "[a-z0-9_é\"\\\\-]{1,12}",
    ]
}

fn kind() -> impl Strategy<Value = ValueKind> {
    prop_oneof![
        3 => (-4i8..=2).prop_map(|exp| ValueKind::Decimal { exp }),
        1 => any::<i8>().prop_map(|exp| ValueKind::Decimal { exp }),
        2 => Just(ValueKind::Float),
    ]
}

fn value(kind: ValueKind) -> BoxedStrategy<Value> {
    match kind {
        ValueKind::Decimal { exp } => prop_oneof![
            3 => (-3000i64..3000).prop_map(move |raw| Value::decimal(raw, exp)),
            1 => any::<i64>().prop_map(move |raw| Value::decimal(raw, exp)),
        ]
        .boxed(),
        ValueKind::Float => prop_oneof![
            2 => (-100i32..100).prop_map(|i| Value::float(f64::from(i) * 0.25)),
            1 => any::<u64>().prop_map(|bits| Value::float(f64::from_bits(bits))),
        ]
        .boxed(),
    }
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => (0i64..20).prop_map(|s| 1_764_000_000_000 + s * 1000),
        2 => (0i64..20_000).prop_map(|ms| 1_764_000_000_000 + ms),
        1 => any::<i64>(),
    ]
}

/// Some series, then readings of them in any order.
fn readings() -> impl Strategy<Value = (Vec<SeriesSpec>, Vec<Push>)> {
    vec((name(), name(), kind()), 1..6)
        .prop_map(|specs| {
            // One kind per series: the first spec of a (source, channel) pair wins.
            let mut seen = BTreeMap::new();
            for (source, channel, kind) in specs {
                seen.entry((source, channel)).or_insert(kind);
            }
            seen.into_iter()
                .map(|((source, channel), kind)| SeriesSpec {
                    source,
                    channel,
                    kind,
                })
                .collect::<Vec<_>>()
        })
        .prop_flat_map(|specs| {
            let n = specs.len();
            let kinds: Vec<ValueKind> = specs.iter().map(|s| s.kind).collect();
            let push = (0..n).prop_flat_map(move |series| {
                (Just(series), timestamp(), value(kinds[series])).prop_map(
                    |(series, ts_ms, value)| Push {
                        series,
                        ts_ms,
                        value,
                    },
                )
            });
            (Just(specs), vec(push, 0..120))
        })
}

type Series = BTreeMap<(String, String), Vec<(i64, Value)>>;

fn build(specs: &[SeriesSpec], pushes: &[Push]) -> BatchBuilder {
    let mut b = BatchBuilder::new(GatewayId::new("gw-prop").unwrap(), 42);
    for p in pushes {
        let s = &specs[p.series];
        b.push(&s.source, &s.channel, p.ts_ms, p.value).unwrap();
    }
    b
}

fn pushed(specs: &[SeriesSpec], pushes: &[Push]) -> Series {
    let mut out = Series::new();
    for p in pushes {
        let s = &specs[p.series];
        out.entry((s.source.clone(), s.channel.clone()))
            .or_default()
            .push((p.ts_ms, p.value));
    }
    out
}

fn decoded(batch: &DecodedBatch) -> Series {
    let mut out = Series::new();
    for r in batch.readings() {
        out.entry((r.source.to_owned(), r.channel.to_owned()))
            .or_default()
            .push((r.ts_ms, r.value));
    }
    out
}

/// A small fixed dictionary for the properties that use one (trained once, not per case).
fn dictionary() -> &'static Dictionary {
    static DICT: std::sync::OnceLock<Dictionary> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        let bodies: Vec<Vec<u8>> = (0..30)
            .map(|k| {
                let mut b = BatchBuilder::new(GatewayId::new("gw-prop").unwrap(), k);
                for i in 0..60 {
                    let ts = 1_764_000_000_000 + i * 1000;
                    b.push(
                        "e2e0000000000001",
                        "temperature",
                        ts,
                        Value::decimal(2000 + (i * k as i64) % 13, -2),
                    )
                    .unwrap();
                    b.push("e2e0000000000001", "seq", ts, Value::integer(i))
                        .unwrap();
                }
                raw_body(&b.seal(None).unwrap(), &Dictionaries::new()).unwrap()
            })
            .collect();
        train_dictionary(&bodies).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_readings_round_trip_in_per_series_order((specs, pushes) in readings(), use_dict in any::<bool>()) {
        let b = build(&specs, &pushes);
        let dict = use_dict.then(dictionary);
        let dicts = dict.cloned().map(Dictionaries::from).unwrap_or_default();
        match b.seal(dict) {
            Err(SealError::Empty) => prop_assert!(pushes.is_empty()),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
            Ok(batch) => {
                let d = decode(&batch, &dicts).unwrap();
                prop_assert_eq!(decoded(&d), pushed(&specs, &pushes));
                prop_assert_eq!(d.readings().len(), pushes.len());
                prop_assert_eq!(d.header().reading_count as usize, pushes.len());
                prop_assert_eq!(d.header().first_ts_ms, pushes.iter().map(|p| p.ts_ms).min().unwrap());
                prop_assert_eq!(d.header().last_ts_ms, pushes.iter().map(|p| p.ts_ms).max().unwrap());
                prop_assert_eq!(d.to_json_lines().lines().count(), pushes.len());
            }
        }
    }

    #[test]
    fn sealing_twice_and_rebuilding_give_identical_bytes((specs, pushes) in readings()) {
        prop_assume!(!pushes.is_empty());
        let b = build(&specs, &pushes);
        let first = b.seal(None).unwrap();
        prop_assert_eq!(&first, &b.seal(None).unwrap());
        prop_assert_eq!(&first, &build(&specs, &pushes).seal(None).unwrap());
        let d = dictionary();
        prop_assert_eq!(b.seal(Some(d)).unwrap(), build(&specs, &pushes).seal(Some(d)).unwrap());
    }

    #[test]
    fn the_size_estimate_bounds_the_sealed_size((specs, pushes) in readings()) {
        prop_assume!(!pushes.is_empty());
        let b = build(&specs, &pushes);
        prop_assert!(b.seal(None).unwrap().len() <= b.encoded_size_estimate());
        prop_assert!(b.seal(Some(dictionary())).unwrap().len() <= b.encoded_size_estimate());
    }

    #[test]
    fn any_truncation_is_an_error((specs, pushes) in readings(), cut in any::<prop::sample::Index>()) {
        prop_assume!(!pushes.is_empty());
        let batch = build(&specs, &pushes).seal(None).unwrap();
        let len = cut.index(batch.len());
        prop_assert!(read_header(&batch[..len]).is_err());
        prop_assert!(decode(&batch[..len], &Dictionaries::new()).is_err());
    }

    #[test]
    fn any_single_bit_flip_is_an_error((specs, pushes) in readings(), bit in any::<prop::sample::Index>(), use_dict in any::<bool>()) {
        prop_assume!(!pushes.is_empty());
        let dict = use_dict.then(dictionary);
        let dicts = dict.cloned().map(Dictionaries::from).unwrap_or_default();
        let mut batch = build(&specs, &pushes).seal(dict).unwrap();
        let bit = bit.index(batch.len() * 8);
        batch[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(read_header(&batch).is_err());
        prop_assert!(decode(&batch, &dicts).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..300), magic in any::<bool>()) {
        let mut bytes = bytes;
        if magic && bytes.len() >= 5 {
            bytes[..5].copy_from_slice(b"OPBT\x01");
        }
        let _ = decode(&bytes, &Dictionaries::new());
    }

    #[test]
    fn pushing_the_decoded_readings_again_seals_the_same_bytes((specs, pushes) in readings()) {
        prop_assume!(!pushes.is_empty());
        let batch = build(&specs, &pushes).seal(None).unwrap();
        let first = decode(&batch, &Dictionaries::new()).unwrap();
        let mut again = BatchBuilder::new(first.header().gateway_id.clone(), first.header().seq);
        for r in first.readings() {
            again.push(r.source, r.channel, r.ts_ms, r.value).unwrap();
        }
        // Readings come out sample by sample, which the builder regroups into the same samples.
        prop_assert_eq!(again.seal(None).unwrap(), batch);
    }
}
