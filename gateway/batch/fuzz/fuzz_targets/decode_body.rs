//! Any bytes as a decompressed body, wrapped in a valid header, compression and CRC so that the
//! body parser itself is fuzzed. Input: reading count u32, first ts i64, last ts i64 (all
//! little-endian), then the raw body.
#![no_main]

mod check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 20 {
        return;
    }
    let (fields, raw) = data.split_at(20);
    let Ok(body) = zstd::bulk::compress(raw, 1) else {
        return;
    };
    let mut batch = b"OPBT\x01\x00\x07gw-fuzz".to_vec();
    batch.extend_from_slice(&0u64.to_le_bytes()); // seq
    batch.extend_from_slice(&fields[4..20]); // first ts, last ts
    batch.extend_from_slice(&fields[..4]); // reading count
    batch.extend_from_slice(&0u32.to_le_bytes()); // no dictionary
    batch.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    batch.extend_from_slice(&(body.len() as u32).to_le_bytes());
    batch.extend_from_slice(&body);
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&batch);
    batch.extend_from_slice(&crc.to_le_bytes());
    check::check(&batch);
});
