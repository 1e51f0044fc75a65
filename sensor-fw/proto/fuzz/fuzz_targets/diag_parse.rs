//! Any RESPONSE body as a reset history or a log page: never panics; what parses emits back to
//! the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_proto::diag::{LogPage, LogRead, ResetHistory};

fuzz_target!(|data: &[u8]| {
    if let Ok(history) = ResetHistory::parse(data) {
        let mut out = heapless::Vec::new();
        history.emit(&mut out).expect("a parsed history always emits");
        assert_eq!(&out[..], data);
    }
    if let Ok(page) = LogPage::parse(data) {
        let mut out = heapless::Vec::new();
        page.emit(&mut out).expect("a parsed page always emits");
        assert_eq!(&out[..], data);
    }
    let _ = LogRead::parse(data);
});
