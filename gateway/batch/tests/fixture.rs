//! The tiny batch of docs/batch-format.md §6, byte for byte. If this test fails, the format or
//! the encoder changed: update the document with it (and bump the version if old batches no longer
//! decode), or find out why sealing is no longer deterministic (a zstd upgrade).

use outpost_batch::*;

const T0: i64 = 1_764_000_000_000;

fn tiny() -> BatchBuilder {
    let n = "e2e0000000000001";
    let mut b = BatchBuilder::new(GatewayId::new("gw-1").unwrap(), 7);
    // Sample 0: all three channels.
    b.push(n, "temperature", T0, Value::decimal(2150, -2))
        .unwrap();
    b.push(n, "humidity", T0, Value::decimal(4500, -2)).unwrap();
    b.push(n, "seq", T0, Value::integer(41)).unwrap();
    // Sample 1: no humidity.
    b.push(n, "temperature", T0 + 1000, Value::decimal(2151, -2))
        .unwrap();
    b.push(n, "seq", T0 + 1000, Value::integer(42)).unwrap();
    // Sample 2: 2 ms late.
    b.push(n, "temperature", T0 + 2002, Value::decimal(2149, -2))
        .unwrap();
    b.push(n, "humidity", T0 + 2002, Value::decimal(4498, -2))
        .unwrap();
    b.push(n, "seq", T0 + 2002, Value::integer(43)).unwrap();
    // A Modbus device with a float register.
    b.push("plc-1", "flow", T0 + 500, Value::float(12.5))
        .unwrap();
    b.push("plc-1", "flow", T0 + 1500, Value::float(12.5))
        .unwrap();
    b
}

#[rustfmt::skip]
const RAW_BODY: [u8; 93] = [
    0x02,                               // 2 sources
    // source "e2e0000000000001"
    0x10, b'e', b'2', b'e', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'1',
    0x03,                               // 3 samples
    0x00,                               // ts[0] − first_ts = 0 (uvarint)
    0xd0, 0x0f,                         // ts[1] − ts[0] = +1000 (svarint: zigzag 2000)
    0x04,                               // (ts[2] − ts[1]) − (ts[1] − ts[0]) = +2 (zigzag 4)
    0x03,                               // 3 channels
    0x08, b'h', b'u', b'm', b'i', b'd', b'i', b't', b'y',
    0x80,                               // decimal, delta | presence bitmap follows
    0xfe,                               // exponent −2
    0x05,                               // bitmap 0b101: samples 0 and 2
    0xa8, 0x46,                         // 4500 (zigzag 9000)
    0x03,                               // −2 → 4498
    0x03, b's', b'e', b'q',
    0x00,                               // decimal, delta (delta of delta is not shorter)
    0x00,                               // exponent 0
    0x52, 0x02, 0x02,                   // 41, +1, +1
    0x0b, b't', b'e', b'm', b'p', b'e', b'r', b'a', b't', b'u', b'r', b'e',
    0x00,                               // decimal, delta
    0xfe,                               // exponent −2
    0xcc, 0x21, 0x02, 0x03,             // 2150, +1, −2
    // source "plc-1"
    0x05, b'p', b'l', b'c', b'-', b'1',
    0x02,                               // 2 samples
    0xf4, 0x03,                         // ts[0] − first_ts = 500
    0xd0, 0x0f,                         // +1000
    0x01,                               // 1 channel
    0x04, b'f', b'l', b'o', b'w',
    0x02,                               // float, Gorilla XOR
    0x40, 0x29, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 12.5, IEEE-754 bits, big-endian bit order
    0x00,                               // `0`: same value; 7 padding bits
];

#[rustfmt::skip]
const BATCH: [u8; 153] = [
    b'O', b'P', b'B', b'T',             // magic
    0x01,                               // format version 1
    0x00,                               // flags
    0x04, b'g', b'w', b'-', b'1',       // gateway id "gw-1"
    0x07, 0, 0, 0, 0, 0, 0, 0,          // batch sequence 7
    0x00, 0xe8, 0x97, 0xb6, 0x9a, 0x01, 0x00, 0x00, // first ts 1 764 000 000 000
    0xd2, 0xef, 0x97, 0xb6, 0x9a, 0x01, 0x00, 0x00, // last ts  1 764 000 002 002
    0x0a, 0x00, 0x00, 0x00,             // 10 readings
    0x00, 0x00, 0x00, 0x00,             // dictionary id 0: none
    0x5d, 0x00, 0x00, 0x00,             // raw body 93 bytes
    0x62, 0x00, 0x00, 0x00,             // compressed body 98 bytes
    // zstd frame: magic, descriptor 0x20 (single segment, no checksum, no dictionary id),
    // content size 93, then one compressed block
    0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x5d,
    0xcd, 0x02, 0x00, 0x24, 0x05, 0x02, 0x10, 0x65, 0x32, 0x65, 0x30, 0x31, 0x03, 0x00, 0xd0, 0x0f,
    0x04, 0x03, 0x08, 0x68, 0x75, 0x6d, 0x69, 0x64, 0x69, 0x74, 0x79, 0x80, 0xfe, 0x05, 0xa8, 0x46,
    0x03, 0x03, 0x73, 0x65, 0x71, 0x00, 0x00, 0x52, 0x02, 0x02, 0x0b, 0x74, 0x65, 0x6d, 0x70, 0x65,
    0x72, 0x61, 0x74, 0x75, 0x72, 0x65, 0x00, 0xfe, 0xcc, 0x21, 0x02, 0x03, 0x05, 0x70, 0x6c, 0x63,
    0x2d, 0x31, 0x02, 0xf4, 0x03, 0xd0, 0x0f, 0x01, 0x04, 0x66, 0x6c, 0x6f, 0x77, 0x02, 0x40, 0x29,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x28, 0x02,
    0x7d, 0x7c, 0xe9, 0x7f,             // CRC-32/ISO-HDLC of the 149 bytes before: 0x7fe97c7d
];

const JSON_LINES: &str = r#"{"source":"e2e0000000000001","channel":"humidity","ts_ms":1764000000000,"value":45}
{"source":"e2e0000000000001","channel":"seq","ts_ms":1764000000000,"value":41}
{"source":"e2e0000000000001","channel":"temperature","ts_ms":1764000000000,"value":21.5}
{"source":"e2e0000000000001","channel":"seq","ts_ms":1764000001000,"value":42}
{"source":"e2e0000000000001","channel":"temperature","ts_ms":1764000001000,"value":21.51}
{"source":"e2e0000000000001","channel":"humidity","ts_ms":1764000002002,"value":44.98}
{"source":"e2e0000000000001","channel":"seq","ts_ms":1764000002002,"value":43}
{"source":"e2e0000000000001","channel":"temperature","ts_ms":1764000002002,"value":21.49}
{"source":"plc-1","channel":"flow","ts_ms":1764000000500,"value":12.5}
{"source":"plc-1","channel":"flow","ts_ms":1764000001500,"value":12.5}
"#;

#[test]
fn the_documented_batch_is_what_the_encoder_seals() {
    assert_eq!(tiny().seal(None).unwrap(), BATCH);
}

#[test]
fn the_documented_raw_body_is_inside_the_documented_batch() {
    assert_eq!(raw_body(&BATCH, &Dictionaries::new()).unwrap(), RAW_BODY);
}

#[test]
fn the_documented_checksum_is_crc_32_iso_hdlc_over_everything_before_it() {
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    assert_eq!(crc.checksum(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc.checksum(&BATCH[..149]), 0x7fe9_7c7d);
}

#[test]
fn the_documented_batch_decodes_to_the_documented_json_lines() {
    let batch = decode(&BATCH, &Dictionaries::new()).unwrap();
    assert_eq!(batch.to_json_lines(), JSON_LINES);
    let h = batch.header();
    assert_eq!(
        serde_json::to_string(h).unwrap(),
        r#"{"version":1,"gateway_id":"gw-1","seq":7,"first_ts_ms":1764000000000,"last_ts_ms":1764000002002,"reading_count":10,"dictionary_id":null,"raw_body_len":93,"body_len":98,"batch_len":153}"#
    );
}
