//! Behaviour of sealing and decoding, in the gateway's and the cloud's terms.

use std::collections::BTreeMap;

use outpost_batch::*;

const NODE_A: &str = "e2e0000000000001";
const NODE_B: &str = "e2e0000000000002";
const T0: i64 = 1_764_000_000_000;

fn gw() -> GatewayId {
    GatewayId::new("gw-test").unwrap()
}

fn none() -> Dictionaries {
    Dictionaries::new()
}

/// Readings per series (source, channel), in order.
type Series = BTreeMap<(String, String), Vec<(i64, Value)>>;

fn series_of(batch: &DecodedBatch) -> Series {
    let mut s = Series::new();
    for r in batch.readings() {
        s.entry((r.source.to_owned(), r.channel.to_owned()))
            .or_default()
            .push((r.ts_ms, r.value));
    }
    s
}

fn series_pushed(readings: &[(&str, &str, i64, Value)]) -> Series {
    let mut s = Series::new();
    for &(src, ch, ts, v) in readings {
        s.entry((src.to_owned(), ch.to_owned()))
            .or_default()
            .push((ts, v));
    }
    s
}

fn build(readings: &[(&str, &str, i64, Value)]) -> BatchBuilder {
    let mut b = BatchBuilder::new(gw(), 7);
    for &(src, ch, ts, v) in readings {
        b.push(src, ch, ts, v).unwrap();
    }
    b
}

/// One node, 4 channels, `n` samples at 1 Hz, pushed sample by sample.
fn node_readings(node: &'static str, n: i64) -> Vec<(&'static str, &'static str, i64, Value)> {
    let mut out = Vec::new();
    for i in 0..n {
        let ts = T0 + i * 1000 + (i % 3);
        out.push((node, "temperature", ts, Value::decimal(2150 + i % 4, -2)));
        out.push((node, "humidity", ts, Value::decimal(4500 - i % 5, -2)));
        out.push((node, "pressure", ts, Value::integer(101_325 + i % 7)));
        out.push((node, "seq", ts, Value::integer(1000 + i)));
    }
    out
}

/// Recomputes the CRC after a test edits a sealed batch on purpose.
fn fix_crc(batch: &mut [u8]) {
    let n = batch.len() - 4;
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&batch[..n]);
    batch[n..].copy_from_slice(&crc.to_le_bytes());
}

/// A batch around a hand-made raw body, as docs/batch-format.md §2 lays it out.
fn wrap(raw: &[u8], reading_count: u32, first: i64, last: i64) -> Vec<u8> {
    let body = zstd::bulk::compress(raw, 3).unwrap();
    let mut b = b"OPBT\x01\x00\x02gw".to_vec();
    b.extend_from_slice(&9u64.to_le_bytes());
    b.extend_from_slice(&first.to_le_bytes());
    b.extend_from_slice(&last.to_le_bytes());
    b.extend_from_slice(&reading_count.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(&body);
    b.extend_from_slice(&[0; 4]);
    fix_crc(&mut b);
    b
}

#[test]
fn a_sealed_batch_decodes_to_the_readings_pushed() {
    let mut readings = node_readings(NODE_A, 60);
    readings.extend(node_readings(NODE_B, 60));
    let batch = build(&readings).seal(None).unwrap();
    let decoded = decode(&batch, &none()).unwrap();
    assert_eq!(series_of(&decoded), series_pushed(&readings));
    assert_eq!(decoded.readings().len(), 480);
    let h = decoded.header();
    assert_eq!(h.gateway_id.as_str(), "gw-test");
    assert_eq!(h.seq, 7);
    assert_eq!(h.reading_count, 480);
    assert_eq!(h.first_ts_ms, T0);
    assert_eq!(h.last_ts_ms, T0 + 59_000 + 59 % 3);
    assert_eq!(h.dictionary_id, None);
    assert_eq!(h.batch_len, batch.len());
}

#[test]
fn readings_come_out_source_by_source_and_sample_by_sample() {
    let readings = [
        (NODE_B, "seq", T0, Value::integer(1)),
        (NODE_A, "temperature", T0, Value::decimal(2150, -2)),
        (NODE_A, "seq", T0, Value::integer(5)),
        (NODE_A, "temperature", T0 + 1000, Value::decimal(2151, -2)),
        (NODE_A, "seq", T0 + 1000, Value::integer(6)),
    ];
    let decoded = decode(&build(&readings).seal(None).unwrap(), &none()).unwrap();
    let order: Vec<(&str, &str, i64)> = decoded
        .readings()
        .map(|r| (r.source, r.channel, r.ts_ms))
        .collect();
    assert_eq!(
        order,
        [
            (NODE_A, "seq", T0),
            (NODE_A, "temperature", T0),
            (NODE_A, "seq", T0 + 1000),
            (NODE_A, "temperature", T0 + 1000),
            (NODE_B, "seq", T0),
        ]
    );
}

#[test]
fn sealing_twice_gives_identical_bytes() {
    let b = build(&node_readings(NODE_A, 60));
    assert_eq!(b.seal(None).unwrap(), b.seal(None).unwrap());
    assert_eq!(b.seal(None).unwrap(), b.clone().seal(None).unwrap());
}

#[test]
fn sample_by_sample_and_channel_by_channel_pushes_seal_the_same_bytes() {
    let by_sample = node_readings(NODE_A, 30);
    let mut by_channel = by_sample.clone();
    by_channel.sort_by_key(|&(_, ch, ts, _)| (ch, ts)); // stable: each series keeps its order
    let mut interleaved = node_readings(NODE_A, 30);
    interleaved.extend(node_readings(NODE_B, 30));
    let mut other_order = node_readings(NODE_B, 30);
    other_order.extend(node_readings(NODE_A, 30));
    assert_eq!(
        build(&by_sample).seal(None).unwrap(),
        build(&by_channel).seal(None).unwrap()
    );
    assert_eq!(
        build(&interleaved).seal(None).unwrap(),
        build(&other_order).seal(None).unwrap()
    );
}

#[test]
fn a_channel_missing_some_samples_round_trips() {
    let mut readings = Vec::new();
    for i in 0..20 {
        let ts = T0 + i * 1000;
        readings.push((NODE_A, "seq", ts, Value::integer(i)));
        if i % 3 == 0 {
            readings.push((NODE_A, "humidity", ts, Value::decimal(4000 + i, -2)));
        }
    }
    let decoded = decode(&build(&readings).seal(None).unwrap(), &none()).unwrap();
    assert_eq!(series_of(&decoded), series_pushed(&readings));
}

#[test]
fn timestamps_going_backwards_or_repeating_keep_each_series_in_push_order() {
    let readings = [
        (NODE_A, "seq", T0 + 5000, Value::integer(1)),
        (NODE_A, "seq", T0, Value::integer(2)), // the clock stepped back
        (NODE_A, "seq", T0, Value::integer(3)), // the same timestamp twice
        (NODE_A, "temperature", T0, Value::decimal(-40, -2)),
        (NODE_A, "temperature", T0 + 5000, Value::decimal(-41, -2)),
        (NODE_A, "seq", i64::MIN, Value::integer(i64::MAX)),
        (NODE_A, "seq", i64::MAX, Value::integer(i64::MIN)),
    ];
    let decoded = decode(&build(&readings).seal(None).unwrap(), &none()).unwrap();
    assert_eq!(series_of(&decoded), series_pushed(&readings));
    assert_eq!(decoded.header().first_ts_ms, i64::MIN);
    assert_eq!(decoded.header().last_ts_ms, i64::MAX);
}

#[test]
fn float_series_round_trip_bit_exactly() {
    let values = [230.1, 230.1, 229.875, f64::NAN, -0.0, 1e-300, f64::INFINITY];
    let readings: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| ("pump-1", "voltage_l1", T0 + i as i64 * 500, Value::float(v)))
        .collect();
    let decoded = decode(&build(&readings).seal(None).unwrap(), &none()).unwrap();
    assert_eq!(series_of(&decoded), series_pushed(&readings));
}

#[test]
fn a_push_of_another_kind_is_refused_and_leaves_the_batch_unchanged() {
    let mut b = build(&node_readings(NODE_A, 3));
    let before = b.seal(None).unwrap();
    assert_eq!(
        b.push(NODE_A, "temperature", T0 + 9000, Value::decimal(215, -1)),
        Err(PushError::KindMismatch {
            source_name: NODE_A.into(),
            channel: "temperature".into(),
            series: ValueKind::Decimal { exp: -2 },
            pushed: ValueKind::Decimal { exp: -1 },
        })
    );
    let err = b
        .push(NODE_A, "seq", T0 + 9000, Value::float(4.0))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "series e2e0000000000001/seq holds decimal ×10^0 values, not float"
    );
    assert_eq!(b.reading_count(), 12);
    assert_eq!(b.seal(None).unwrap(), before);
}

#[test]
fn empty_and_overlong_names_are_refused() {
    let mut b = BatchBuilder::new(gw(), 1);
    let long = "x".repeat(256);
    assert_eq!(
        b.push("", "seq", T0, Value::integer(1)),
        Err(PushError::SourceName { len: 0 })
    );
    assert_eq!(
        b.push(&long, "seq", T0, Value::integer(1)),
        Err(PushError::SourceName { len: 256 })
    );
    assert_eq!(
        b.push(NODE_A, "", T0, Value::integer(1)),
        Err(PushError::ChannelName { len: 0 })
    );
    assert_eq!(
        b.push(NODE_A, &long, T0, Value::integer(1)),
        Err(PushError::ChannelName { len: 256 })
    );
    assert!(b.is_empty());
    b.push(&long[..255], &long[..255], T0, Value::integer(1))
        .unwrap();
    assert_eq!(
        decode(&b.seal(None).unwrap(), &none())
            .unwrap()
            .readings()
            .len(),
        1
    );
}

#[test]
fn gateway_ids_are_1_to_64_bytes() {
    assert_eq!(GatewayId::new(""), Err(GatewayIdError { len: 0 }));
    assert_eq!(
        "x".repeat(65).parse::<GatewayId>(),
        Err(GatewayIdError { len: 65 })
    );
    assert!(GatewayId::new("x".repeat(64)).is_ok());
}

#[test]
fn an_empty_batch_cannot_be_sealed() {
    assert!(matches!(
        BatchBuilder::new(gw(), 1).seal(None),
        Err(SealError::Empty)
    ));
}

#[test]
fn a_full_batch_refuses_more_readings() {
    let mut b = BatchBuilder::new(gw(), 1);
    for i in 0..i64::from(MAX_READINGS) {
        b.push(NODE_A, "seq", T0 + i, Value::integer(i)).unwrap();
    }
    assert_eq!(
        b.push(NODE_A, "seq", T0, Value::integer(0)),
        Err(PushError::Full)
    );
    let batch = b.seal(None).unwrap();
    assert_eq!(read_header(&batch).unwrap().reading_count, MAX_READINGS);
    assert!(batch.len() <= b.encoded_size_estimate());
}

#[test]
fn the_size_estimate_is_never_below_the_sealed_size() {
    let mut b = BatchBuilder::new(gw(), 1);
    for (i, (src, ch, ts, v)) in node_readings(NODE_A, 60).into_iter().enumerate() {
        b.push(src, ch, ts, v).unwrap();
        b.push("pump-1", "flow", ts, Value::float(i as f64 / 7.0))
            .unwrap();
        let sealed = b.seal(None).unwrap().len();
        assert!(
            sealed <= b.encoded_size_estimate(),
            "{sealed} > {}",
            b.encoded_size_estimate()
        );
    }
}

#[test]
fn read_header_gives_the_header_without_decompressing() {
    let batch = build(&node_readings(NODE_A, 10)).seal(None).unwrap();
    let header = read_header(&batch).unwrap();
    assert_eq!(&header, decode(&batch, &none()).unwrap().header());
    let json = serde_json::to_value(&header).unwrap();
    assert_eq!(json["gateway_id"], "gw-test");
    assert_eq!(json["seq"], 7);
    assert_eq!(json["reading_count"], 40);
    assert_eq!(json["dictionary_id"], serde_json::Value::Null);
}

#[test]
fn json_lines_have_the_documented_shape_and_exact_decimals() {
    let readings = [
        (NODE_A, "temperature", T0, Value::decimal(2150, -2)),
        (NODE_A, "pressure", T0, Value::integer(101_325)),
        ("pump \"1\"", "flow", T0 + 1, Value::float(0.1)),
        ("pump \"1\"", "flow", T0 + 2, Value::float(f64::NAN)),
    ];
    let decoded = decode(&build(&readings).seal(None).unwrap(), &none()).unwrap();
    assert_eq!(
        decoded.to_json_lines(),
        concat!(
            r#"{"source":"e2e0000000000001","channel":"pressure","ts_ms":1764000000000,"value":101325}"#,
            "\n",
            r#"{"source":"e2e0000000000001","channel":"temperature","ts_ms":1764000000000,"value":21.5}"#,
            "\n",
            r#"{"source":"pump \"1\"","channel":"flow","ts_ms":1764000000001,"value":0.1}"#,
            "\n",
            r#"{"source":"pump \"1\"","channel":"flow","ts_ms":1764000000002,"value":null}"#,
            "\n",
        )
    );
    for line in decoded.to_json_lines().lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Damaged and hostile batches

fn sealed() -> Vec<u8> {
    build(&node_readings(NODE_A, 60)).seal(None).unwrap()
}

#[test]
fn a_truncated_batch_says_where_it_was_cut() {
    let batch = sealed();
    let cut = &batch[..batch.len() - 10];
    let err = decode(cut, &none()).unwrap_err();
    assert!(
        matches!(err, DecodeError::Truncated { len, needed } if len == cut.len() && needed == batch.len())
    );
    assert_eq!(
        err.to_string(),
        format!(
            "batch truncated at byte {}: {} bytes needed",
            cut.len(),
            batch.len()
        )
    );
    assert!(matches!(
        decode(&batch[..3], &none()),
        Err(DecodeError::Truncated { len: 3, .. })
    ));
    assert!(matches!(
        read_header(&[]),
        Err(DecodeError::Truncated { len: 0, .. })
    ));
}

#[test]
fn a_flipped_bit_is_a_checksum_mismatch() {
    let mut batch = sealed();
    let at = batch.len() / 2;
    batch[at] ^= 0x10;
    let err = decode(&batch, &none()).unwrap_err();
    assert!(matches!(err, DecodeError::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().starts_with("checksum mismatch: stored 0x"));
}

#[test]
fn bytes_after_the_batch_are_refused() {
    let mut batch = sealed();
    batch.push(b'\n');
    assert!(matches!(
        decode(&batch, &none()),
        Err(DecodeError::TrailingBytes { extra: 1, .. })
    ));
}

#[test]
fn other_files_and_other_versions_are_refused_by_name() {
    let err = decode(b"{\"source\":\"x\"}", &none()).unwrap_err();
    assert!(matches!(err, DecodeError::BadMagic { found } if &found == b"{\"so"));
    let mut v2 = sealed();
    v2[4] = 2;
    fix_crc(&mut v2);
    let err = decode(&v2, &none()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported batch format version 2; this decoder reads version 1"
    );
}

#[test]
fn a_hostile_reading_count_with_a_valid_checksum_is_refused_without_allocating_for_it() {
    let mut batch = sealed();
    let count_at = 7 + "gw-test".len() + 24;
    batch[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    fix_crc(&mut batch);
    assert!(matches!(
        decode(&batch, &none()),
        Err(DecodeError::InvalidHeader(_))
    ));
    batch[count_at..count_at + 4].copy_from_slice(&MAX_READINGS.to_le_bytes());
    fix_crc(&mut batch);
    assert!(matches!(
        decode(&batch, &none()),
        Err(DecodeError::HeaderMismatch { field: "reading count", header, body: 240 }) if header == i64::from(MAX_READINGS)
    ));
}

#[test]
fn a_hostile_sample_count_in_the_body_is_refused() {
    // 1 source "a", claiming a million samples, with one timestamp byte.
    let raw = [0x01, 0x01, b'a', 0x80, 0x80, 0x40, 0x00];
    let err = decode(&wrap(&raw, 1, T0, T0), &none()).unwrap_err();
    assert!(
        matches!(err, DecodeError::CorruptBody { offset: 3, problem } if problem.contains("sample count")),
        "{err}"
    );
}

#[test]
fn a_body_that_contradicts_its_header_is_refused() {
    // 1 source "a", 1 sample at first_ts + 0, 1 channel "c": decimal delta, exp 0, value 5.
    let raw = [
        0x01, 0x01, b'a', 0x01, 0x00, 0x01, 0x01, b'c', 0x00, 0x00, 0x0a,
    ];
    assert_eq!(
        decode(&wrap(&raw, 1, T0, T0), &none())
            .unwrap()
            .readings()
            .len(),
        1
    );
    let err = decode(&wrap(&raw, 1, T0, T0 + 1), &none()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "last timestamp is {} in the header but {T0} in the body",
            T0 + 1
        )
    );
    let mut unsorted = raw.to_vec();
    unsorted.splice(
        1..1,
        [0x01, b'b', 0x01, 0x00, 0x01, 0x01, b'c', 0x00, 0x00, 0x0a],
    );
    unsorted[0] = 2;
    let err = decode(&wrap(&unsorted, 2, T0, T0), &none()).unwrap_err();
    assert!(
        err.to_string()
            .contains("source names are not in strictly ascending order"),
        "{err}"
    );
    let mut unknown = raw;
    unknown[8] = 0x07;
    let err = decode(&wrap(&unknown, 1, T0, T0), &none()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "corrupt column a/c at byte 9 (decompressed): unknown column encoding"
    );
}

// ---------------------------------------------------------------------------------------------
// Dictionaries

fn history(batches: u64) -> Vec<Vec<u8>> {
    (0..batches)
        .map(|seq| {
            let mut b = BatchBuilder::new(gw(), seq);
            for node in [NODE_A, NODE_B] {
                for (i, (src, ch, ts, v)) in node_readings(node, 60).into_iter().enumerate() {
                    let v = match v {
                        Value::Decimal { raw, exp } => {
                            Value::decimal(raw + (seq as i64 * 7 + i as i64) % 11, exp)
                        }
                        v => v,
                    };
                    b.push(src, ch, ts + seq as i64 * 60_000, v).unwrap();
                }
            }
            b.seal(None).unwrap()
        })
        .collect()
}

fn trained() -> Dictionary {
    let bodies: Vec<Vec<u8>> = history(40)
        .iter()
        .map(|b| raw_body(b, &none()).unwrap())
        .collect();
    train_dictionary(&bodies).unwrap()
}

#[test]
fn a_batch_sealed_with_a_dictionary_names_it_and_decodes_only_with_it() {
    let dict = trained();
    let readings = node_readings(NODE_A, 60);
    let b = build(&readings);
    let with = b.seal(Some(&dict)).unwrap();
    assert!(with.len() < b.seal(None).unwrap().len());
    assert_eq!(read_header(&with).unwrap().dictionary_id, Some(dict.id()));
    let decoded = decode(&with, &Dictionaries::from(dict.clone())).unwrap();
    assert_eq!(series_of(&decoded), series_pushed(&readings));
    let err = decode(&with, &none()).unwrap_err();
    assert!(
        matches!(err, DecodeError::UnknownDictionary { id, known: 0 } if id == dict.id().get())
    );
    assert!(
        err.to_string()
            .starts_with(&format!("unknown dictionary id {}", dict.id()))
    );
}

#[test]
fn training_is_deterministic_and_a_dictionary_reloads_from_its_bytes() {
    let dict = trained();
    assert_eq!(trained(), dict);
    let again = Dictionary::from_bytes(dict.as_bytes().to_vec()).unwrap();
    assert_eq!(again.id(), dict.id());
    let b = build(&node_readings(NODE_A, 60));
    assert_eq!(b.seal(Some(&again)).unwrap(), b.seal(Some(&dict)).unwrap());
}

#[test]
fn too_little_history_is_a_clear_training_error() {
    let bodies: Vec<Vec<u8>> = history(3)
        .iter()
        .map(|b| raw_body(b, &none()).unwrap())
        .collect();
    assert!(matches!(
        train_dictionary(&bodies),
        Err(TrainError::TooFewSamples { got: 3 })
    ));
}

#[test]
fn a_different_dictionary_under_a_known_id_is_refused() {
    let dict = trained();
    let mut set = Dictionaries::from(dict.clone());
    assert_eq!(set.insert(dict.clone()), Ok(()));
    let mut forged = dict.as_bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 0xff; // content bytes: same id, different dictionary
    let forged = Dictionary::from_bytes(forged).unwrap();
    assert_eq!(set.insert(forged), Err(DictionaryIdClash { id: dict.id() }));
    assert_eq!(set.len(), 1);
}

#[test]
fn bytes_that_are_not_a_dictionary_are_refused() {
    assert!(matches!(
        Dictionary::from_bytes(b"not a dictionary".to_vec()),
        Err(DictionaryError::NotZstdDictionary)
    ));
    let zero_id = [0x37, 0xA4, 0x30, 0xEC, 0, 0, 0, 0, 1, 2, 3];
    assert!(matches!(
        Dictionary::from_bytes(zero_id.to_vec()),
        Err(DictionaryError::ZeroId)
    ));
}

#[test]
fn the_unsynchronised_flag_round_trips_and_unknown_flags_are_refused() {
    let readings = node_readings(NODE_A, 5);
    let plain = build(&readings).seal(None).unwrap();
    assert_eq!(plain[5], 0);
    assert!(!decode(&plain, &none()).unwrap().header().unsynchronised);
    let marked = build(&readings).unsynchronised(true).seal(None).unwrap();
    assert_eq!(marked[5], outpost_batch::FLAG_UNSYNCHRONISED);
    let decoded = decode(&marked, &none()).unwrap();
    assert!(decoded.header().unsynchronised);
    assert_eq!(series_of(&decoded), series_pushed(&readings));
    // Only the flag byte differs (and the CRC over it).
    assert_eq!(plain.len(), marked.len());
    let differ: Vec<usize> = (0..plain.len())
        .filter(|&i| plain[i] != marked[i])
        .collect();
    assert!(differ[0] == 5 && differ[1..].iter().all(|&i| i >= plain.len() - 4));
    let mut unknown = marked.clone();
    unknown[5] = 0x02;
    fix_crc(&mut unknown);
    assert!(decode(&unknown, &none()).is_err());
}
