//! Any bytes as a message: never panics; what parses emits back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_proto::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::parse(data) {
        let mut buf = [0u8; outpost_proto::wire::MAX_MESSAGE_LEN];
        let n = message.emit(&mut buf).expect("a parsed message always emits");
        assert_eq!(&buf[..n], data);
    }
});
