//! The fuzz targets' seed corpus (`fuzz/corpus/*/seed-*`) and dictionary (`fuzz/dictionary.bin`):
//! checked to still decode on every test run, regenerated on request with
//! `cargo test -p outpost-batch --test fuzz_corpus -- --ignored`.

use std::fs;
use std::path::PathBuf;

use outpost_batch::*;

const T0: i64 = 1_764_000_000_000;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn gw() -> GatewayId {
    GatewayId::new("gw-fuzz").unwrap()
}

/// A node's minute: 4 channels at 1 Hz with a little jitter.
fn node_minute(b: &mut BatchBuilder, node: &str, minute: i64) {
    for i in 0..60 {
        let ts = T0 + minute * 60_000 + i * 1000 + (i * 7 + minute) % 5 - 2;
        let k = i + minute * 60;
        b.push(
            node,
            "temperature",
            ts,
            Value::decimal(2150 + (k * 13 % 7) - 3, -2),
        )
        .unwrap();
        b.push(
            node,
            "humidity",
            ts,
            Value::decimal(4500 + (k * 5 % 11) - 5, -2),
        )
        .unwrap();
        b.push(
            node,
            "pressure",
            ts,
            Value::integer(101_325 + (k * 3 % 7) - 3),
        )
        .unwrap();
        b.push(node, "seq", ts, Value::integer(k)).unwrap();
    }
}

fn dictionary() -> Dictionary {
    let bodies: Vec<Vec<u8>> = (0..40)
        .map(|minute| {
            let mut b = BatchBuilder::new(gw(), minute as u64);
            node_minute(&mut b, "e2e0000000000001", minute);
            node_minute(&mut b, "e2e0000000000002", minute);
            raw_body(&b.seal(None).unwrap(), &Dictionaries::new()).unwrap()
        })
        .collect();
    train_dictionary(&bodies).unwrap()
}

/// The seed batches, by name.
fn seeds(dict: &Dictionary) -> Vec<(&'static str, Vec<u8>)> {
    let mut node = BatchBuilder::new(gw(), 100);
    node_minute(&mut node, "e2e0000000000001", 100);
    node_minute(&mut node, "e2e0000000000002", 100);

    let mut sparse = BatchBuilder::new(gw(), 101);
    for i in 0..24 {
        sparse
            .push("e2e0000000000003", "seq", T0 + i * 1000, Value::integer(i))
            .unwrap();
        if i % 5 == 0 {
            sparse
                .push(
                    "e2e0000000000003",
                    "chip_temperature",
                    T0 + i * 1000,
                    Value::decimal(3100 + i, -2),
                )
                .unwrap();
        }
    }

    let mut floats = BatchBuilder::new(gw(), 102);
    for i in 0..30 {
        let ts = T0 + i * 500;
        floats
            .push(
                "plc-1",
                "flow",
                ts,
                Value::float(12.5 + (i % 4) as f64 * 0.125),
            )
            .unwrap();
        floats
            .push(
                "plc-1",
                "voltage_l1",
                ts,
                Value::float(230.0 + (i as f64).sin()),
            )
            .unwrap();
        floats
            .push(
                "plc-1",
                "energy_wh",
                ts,
                Value::integer(1_000_000 + i * 1250),
            )
            .unwrap();
    }

    let mut tiny = BatchBuilder::new(GatewayId::new("gw-1").unwrap(), 7);
    tiny.push(
        "e2e0000000000001",
        "temperature",
        T0,
        Value::decimal(2150, -2),
    )
    .unwrap();

    vec![
        ("seed-node-minute", node.seal(None).unwrap()),
        (
            "seed-node-minute-dictionary",
            node.seal(Some(dict)).unwrap(),
        ),
        ("seed-sparse", sparse.seal(None).unwrap()),
        ("seed-floats", floats.seal(None).unwrap()),
        ("seed-tiny", tiny.seal(None).unwrap()),
    ]
}

/// `decode_body` input: reading count u32, first ts i64, last ts i64 (little-endian), raw body.
fn body_input(batch: &[u8], dicts: &Dictionaries) -> Vec<u8> {
    let h = read_header(batch).unwrap();
    let mut out = Vec::new();
    out.extend_from_slice(&h.reading_count.to_le_bytes());
    out.extend_from_slice(&h.first_ts_ms.to_le_bytes());
    out.extend_from_slice(&h.last_ts_ms.to_le_bytes());
    out.extend_from_slice(&raw_body(batch, dicts).unwrap());
    out
}

#[test]
#[ignore = "writes the fuzz seed corpus; run on request"]
fn write_the_fuzz_seed_corpus() {
    let dict = dictionary();
    fs::write(fuzz_dir().join("dictionary.bin"), dict.as_bytes()).unwrap();
    let dicts = Dictionaries::from(dict.clone());
    for (name, batch) in seeds(&dict) {
        fs::write(fuzz_dir().join("corpus/decode").join(name), &batch).unwrap();
        fs::write(
            fuzz_dir().join("corpus/decode_body").join(name),
            body_input(&batch, &dicts),
        )
        .unwrap();
    }
}

#[test]
fn the_committed_fuzz_seeds_are_valid_batches() {
    let dict =
        Dictionary::from_bytes(fs::read(fuzz_dir().join("dictionary.bin")).unwrap()).unwrap();
    let dicts = Dictionaries::from(dict.clone());
    for (name, expected) in seeds(&dict) {
        let batch = fs::read(fuzz_dir().join("corpus/decode").join(name)).unwrap();
        assert_eq!(batch, expected, "{name}");
        decode(&batch, &dicts).unwrap();
        let body = fs::read(fuzz_dir().join("corpus/decode_body").join(name)).unwrap();
        assert_eq!(body, body_input(&batch, &dicts), "{name}");
    }
}
