//! Any bytes as a batch: never panics; what decodes is consistent and re-seals to the same
//! readings. Mutations rarely survive the CRC: `decode_body` fuzzes what lies behind it.
#![no_main]

mod check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check::check(data));
