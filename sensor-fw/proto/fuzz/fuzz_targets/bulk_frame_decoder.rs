//! Any byte stream into a node's decoder, which also holds bulk frames (firmware offers and
//! chunks): never panics, never holds more than its fixed buffer, and every bulk message it
//! yields parses back from its own emitted bytes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_proto::wire::MAX_BULK_MESSAGE_LEN;
use outpost_proto::{AnyFrame, Bulk, BulkFrameDecoder};

fuzz_target!(|data: &[u8]| {
    let mut decoder = BulkFrameDecoder::bulk();
    for &byte in data {
        if let Some(Ok(AnyFrame::Bulk(received))) = decoder.push_any(byte) {
            let bulk = received.into_unverified();
            let mut buf = [0u8; MAX_BULK_MESSAGE_LEN];
            let n = bulk.emit(&mut buf).expect("a decoded bulk message always re-emits");
            assert_eq!(Bulk::parse(&buf[..n]), Ok(bulk));
        }
    }
});
