//! Any byte stream into the frame decoder: never panics, and every clear message it yields
//! re-encodes into a frame that decodes to the same message (a sealed one cannot be re-sealed
//! without its session: it must only never panic).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_proto::frame::MAX_FRAME_LEN;
use outpost_proto::{FrameDecoder, encode_frame};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new();
    for &byte in data {
        if let Some(Ok(received)) = decoder.push(byte) {
            let Some(message) = received.into_clear() else {
                continue;
            };
            let mut buf = [0u8; MAX_FRAME_LEN];
            let n = encode_frame(&message, &mut buf).expect("a decoded message always re-encodes");
            let mut again = FrameDecoder::new();
            let back: Vec<_> = buf[..n]
                .iter()
                .filter_map(|&b| again.push(b))
                .map(|r| r.map(|r| r.into_unverified()))
                .collect();
            assert_eq!(back, vec![Ok(message)]);
        }
    }
});
