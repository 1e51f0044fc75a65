//! Shared by the Modbus adapter tests (TCP and RTU): a test device with every type in every word
//! and byte order, its register image written independently of the core's encoder, and every
//! point's expected reading.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;
use std::path::Path;

use outpost::io::modbus::PollOutcome;
use outpost_core::modbus::map::{RegisterMap, parse_map};
use outpost_core::modbus::value::Value;

/// A device's four tables.
#[derive(Debug, Default, Clone)]
pub struct Image {
    pub coils: BTreeMap<u16, bool>,
    pub discrete_inputs: BTreeMap<u16, bool>,
    pub holding: BTreeMap<u16, u16>,
    pub input: BTreeMap<u16, u16>,
}

#[derive(Clone, Copy)]
pub struct Orders {
    suffix: &'static str,
    word: &'static str,
    byte: &'static str,
}

pub const ORDERS: [Orders; 4] = [
    Orders {
        suffix: "abcd",
        word: "big",
        byte: "big",
    },
    Orders {
        suffix: "cdab",
        word: "little",
        byte: "big",
    },
    Orders {
        suffix: "badc",
        word: "big",
        byte: "little",
    },
    Orders {
        suffix: "dcba",
        word: "little",
        byte: "little",
    },
];

/// The registers a device in `orders` puts on the wire for a value whose bytes, most significant
/// first, are `be` (written independently of the core's encoder).
pub fn wire(be: &[u8], orders: Orders, is_text: bool) -> Vec<u16> {
    let mut words: Vec<u16> = be
        .chunks_exact(2)
        .map(|c| match orders.byte {
            "big" => u16::from_be_bytes([c[0], c[1]]),
            _ => u16::from_be_bytes([c[1], c[0]]),
        })
        .collect();
    if orders.word == "little" && !is_text {
        words.reverse();
    }
    words
}

/// A sample of each type: its TOML `type`, bytes on the wire (big-endian), the decoded value.
pub fn samples() -> Vec<(&'static str, Vec<u8>, Value)> {
    vec![
        ("u16", 0xBEEFu16.to_be_bytes().to_vec(), Value::Uint(0xBEEF)),
        (
            "i16",
            (-12345i16).to_be_bytes().to_vec(),
            Value::Int(-12345),
        ),
        (
            "u32",
            0xDEAD_BEEFu32.to_be_bytes().to_vec(),
            Value::Uint(0xDEAD_BEEF),
        ),
        (
            "i32",
            (-123_456_789i32).to_be_bytes().to_vec(),
            Value::Int(-123_456_789),
        ),
        (
            "u64",
            0x0123_4567_89AB_CDEFu64.to_be_bytes().to_vec(),
            Value::Uint(0x0123_4567_89AB_CDEF),
        ),
        (
            "i64",
            (-1_234_567_890_123_456_789i64).to_be_bytes().to_vec(),
            Value::Int(-1_234_567_890_123_456_789),
        ),
        (
            "f32",
            (-273.15f32).to_be_bytes().to_vec(),
            Value::Float(f64::from(-273.15f32)),
        ),
        (
            "f64",
            6.022_140_76e23f64.to_be_bytes().to_vec(),
            Value::Float(6.022_140_76e23),
        ),
        (
            "string",
            b"Outpost!".to_vec(),
            Value::Text("Outpost!".into()),
        ),
    ]
}

pub fn point(toml: &mut String, name: &str, table: &str, address: u16, extra: &str) {
    toml.push_str(&format!(
        "\n[[point]]\nname = \"{name}\"\ntable = \"{table}\"\naddress = {address}\n{extra}"
    ));
}

/// A device with every type in every order in both register tables, scaled points, bits and
/// writable points: its map text, its bank, and every point's expected reading.
pub fn full_device() -> (String, Image, BTreeMap<String, Value>) {
    let mut toml = String::from("[device]\nmanufacturer = \"Outpost\"\nmodel = \"test slave\"\n");
    let mut bank = Image::default();
    let mut expected = BTreeMap::new();
    for table in ["holding", "input"] {
        let mut address = 0u16;
        for orders in ORDERS {
            for (data_type, be, value) in samples() {
                let is_text = data_type == "string";
                let words = wire(&be, orders, is_text);
                let name = format!("{table}_{data_type}_{}", orders.suffix);
                let len = if is_text { "len = 4\n" } else { "" };
                let extra = format!(
                    "type = \"{data_type}\"\n{len}word_order = \"{}\"\nbyte_order = \"{}\"\n",
                    orders.word, orders.byte
                );
                point(&mut toml, &name, table, address, &extra);
                let registers = if table == "holding" {
                    &mut bank.holding
                } else {
                    &mut bank.input
                };
                for w in words {
                    registers.insert(address, w);
                    address += 1;
                }
                expected.insert(name, value);
            }
        }
        assert_eq!(address, 96, "24 registers per order");
    }
    // Scaled input registers, after the 96 above: integers read as exact decimals (in f64,
    // 123456789 × 0.01 would be 1234567.8900000001), a float stays a float.
    let decimal = |mantissa, exp| Value::Decimal { mantissa, exp };
    let scaled: [(&str, &str, &str, Vec<u16>, Value); 4] = [
        (
            "temperature",
            "i16",
            "scale = 0.1\n",
            vec![u16::from_be_bytes((-405i16).to_be_bytes())],
            decimal(-405, -1),
        ),
        (
            "energy",
            "u32",
            "scale = 0.01\nword_order = \"little\"\n",
            vec![0xCD15, 0x075B], // 123456789 = 0x075BCD15, low word first
            decimal(123_456_789, -2),
        ),
        (
            "level",
            "u16",
            "scale = 0.5\noffset = -40.0\n",
            vec![1000],
            decimal(4600, -1), // 1000 × 5 − 400 tenths: 460
        ),
        (
            "flow",
            "f32",
            "scale = 2.0\noffset = 1.0\n",
            wire(&12.5f32.to_be_bytes(), ORDERS[0], false),
            Value::Float(f64::from(12.5f32) * 2.0 + 1.0),
        ),
    ];
    let mut address = 96u16;
    for (name, data_type, extra, words, value) in scaled {
        point(
            &mut toml,
            name,
            "input",
            address,
            &format!("type = \"{data_type}\"\n{extra}"),
        );
        for w in words {
            bank.input.insert(address, w);
            address += 1;
        }
        expected.insert(name.to_owned(), value);
    }
    // Writable holding registers after the 96 ordered ones.
    point(
        &mut toml,
        "setpoint",
        "holding",
        96,
        "type = \"u16\"\nwritable = true\n",
    );
    bank.holding.insert(96, 20);
    expected.insert("setpoint".into(), Value::Uint(20));
    point(
        &mut toml,
        "limit",
        "holding",
        97,
        "type = \"i32\"\nword_order = \"little\"\nwritable = true\n",
    );
    bank.holding.insert(97, 1000);
    bank.holding.insert(98, 0);
    expected.insert("limit".into(), Value::Int(1000));
    // Bits.
    for (i, on) in [true, false, true, true, false].into_iter().enumerate() {
        let address = u16::try_from(i).expect("small");
        let name = format!("relay_{i}");
        let writable = if i == 1 { "writable = true\n" } else { "" };
        point(
            &mut toml,
            &name,
            "coil",
            address,
            &format!("type = \"bool\"\n{writable}"),
        );
        bank.coils.insert(address, on);
        expected.insert(name, Value::Bool(on));
    }
    for (i, on) in [false, true, true].into_iter().enumerate() {
        let address = u16::try_from(i).expect("small");
        let name = format!("alarm_{i}");
        point(
            &mut toml,
            &name,
            "discrete_input",
            address,
            "type = \"bool\"\n",
        );
        bank.discrete_inputs.insert(address, on);
        expected.insert(name, Value::Bool(on));
    }
    (toml, bank, expected)
}

pub fn map(text: &str) -> RegisterMap {
    parse_map(Path::new("tests/test-slave.toml"), text).expect("the test map compiles")
}

pub fn values(outcome: &PollOutcome) -> BTreeMap<String, Value> {
    outcome
        .readings
        .iter()
        .map(|r| (r.name.clone(), r.value.clone().expect("decodes")))
        .collect()
}
