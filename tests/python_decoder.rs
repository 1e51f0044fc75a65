//! The Python package `outpost_batch` (PyO3, cloud/python) decodes every kind of batch exactly as
//! the Rust decoder does: several sources and channels, decimals of every exponent and sign,
//! floats down to their bits (NaN, infinities, -0.0, subnormals), channels missing samples, the
//! unsynchronised flag, a batch of 100,000 readings, and the errors of corrupted ones (the same
//! message, a `DecodeError` that is a `ValueError`).

use outpost_batch::{BatchBuilder, GatewayId, Value};
use outpost_e2e::python::assert_python_decodes_like_rust;

fn builder(seq: u64) -> BatchBuilder {
    BatchBuilder::new(GatewayId::new("site-0007").unwrap(), seq)
}

fn corpus() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // Several sources and channels, decimals of several exponents, a float channel.
    let mut b = builder(1);
    for i in 0..200i64 {
        let ts = 1_796_169_600_000 + i * 1000;
        b.push(
            "e2e0000000000001",
            "temperature",
            ts,
            Value::decimal(2150 - i, -2),
        )
        .unwrap();
        b.push("e2e0000000000001", "seq", ts, Value::integer(i + 1))
            .unwrap();
        b.push(
            "meter-3",
            "l1_voltage",
            ts,
            Value::decimal(2301 + i % 5, -1),
        )
        .unwrap();
        b.push("meter-3", "energy", ts, Value::decimal(-(i * 1_000_003), 3))
            .unwrap();
        b.push(
            "meter-3",
            "power_factor",
            ts,
            Value::float(0.95 + i as f64 * 1e-4),
        )
        .unwrap();
    }
    out.push(b.seal(None).unwrap());
    // Floats at the edges, and a channel that misses samples.
    let mut b = builder(2);
    let specials = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -0.0,
        0.0,
        5e-324,
        f64::MAX,
        -f64::MIN_POSITIVE,
    ];
    for (i, v) in specials.iter().enumerate() {
        let ts = 1_000 + i as i64 * 10;
        b.push("node-a", "f", ts, Value::float(*v)).unwrap();
        if i % 3 == 0 {
            b.push("node-a", "sometimes", ts, Value::decimal(i as i64, -9))
                .unwrap();
        }
    }
    b.push("node-b", "min", -5, Value::decimal(i64::MIN, 0))
        .unwrap();
    b.push("node-b", "max", -5, Value::decimal(i64::MAX, -18))
        .unwrap();
    out.push(b.seal(None).unwrap());
    // The unsynchronised flag, timestamps in 1970.
    let mut b = builder(3).unsynchronised(true);
    b.push("node-c", "t", 12_345, Value::decimal(1, 1)).unwrap();
    out.push(b.seal(None).unwrap());
    // A large batch: 100,000 readings.
    let mut b = builder(4);
    for i in 0..25_000i64 {
        for (c, channel) in ["a", "b", "c", "d"].iter().enumerate() {
            b.push(
                &format!("node-{}", i % 8),
                channel,
                1_796_169_600_000 + i * 250,
                Value::decimal(i * 7 + c as i64, -3),
            )
            .unwrap();
        }
    }
    let large = b.seal(None).unwrap();
    // Corrupted: truncated, a bit flipped in the body, a wrong magic, garbage, empty.
    out.push(large[..large.len() / 2].to_vec());
    let mut flipped = large.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x20;
    out.push(flipped);
    let mut magic = out[0].clone();
    magic[0] = b'X';
    out.push(magic);
    out.push(b"not a batch at all".to_vec());
    out.push(Vec::new());
    out.push(large);
    out
}

#[test]
fn the_python_package_decodes_every_batch_as_the_rust_decoder_does() {
    let batches = corpus();
    assert_python_decodes_like_rust(&batches).unwrap();
}

/// The batches `cloud/python/tests/test_decode.py` reads are the ones the builder seals today
/// (sealing is deterministic). `OUTPOST_WRITE_FIXTURES=1` writes them anew.
#[test]
fn the_python_unit_tests_fixtures_are_what_the_builder_seals() {
    let dir = outpost_e2e::workspace_dir().join("cloud/python/tests/fixtures");
    let corpus = corpus();
    for (name, bytes) in [
        ("mixed.batch", &corpus[0]),
        ("edges.batch", &corpus[1]),
        ("unsynchronised.batch", &corpus[2]),
    ] {
        let path = dir.join(name);
        if std::env::var_os("OUTPOST_WRITE_FIXTURES").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
        assert_eq!(&std::fs::read(&path).unwrap(), bytes, "{}", path.display());
    }
}
