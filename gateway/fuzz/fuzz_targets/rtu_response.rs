//! Any bytes as the response to a fuzzer-chosen request: never panics; the result does not
//! depend on how the bytes are chunked; what decodes has the shape the request asked for and
//! accounts for every byte. Input: unit, request kind, start (2 bytes, big-endian), quantity
//! (2 bytes), chunk size (0: one push), then the bytes the line delivered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_core::modbus::map::Table;
use outpost_core::modbus::rtu::{
    BROADCAST, Progress, ResponseDecoder, RtuRequest, RtuResponse, encode_request, request_len,
    response_len,
};

const HEADER: usize = 7;

/// The request the header names, its quantity folded into the function's limits so that every
/// input reaches the decoder.
fn request(kind: u8, start: u16, quantity: u16) -> RtuRequest {
    let fit = |max: u16| {
        let q = 1 + quantity % max;
        let start = (u32::from(start) % (0x1_0000 - u32::from(q) + 1)) as u16;
        (start, q)
    };
    let tables = [
        Table::Coil,
        Table::DiscreteInput,
        Table::Holding,
        Table::Input,
    ];
    match kind % 8 {
        k @ 0..=3 => {
            let table = tables[usize::from(k)];
            // The unfolded values exercise the limit checks.
            let _ = RtuRequest::read(table, start, quantity);
            let (start, q) = fit(if table.is_bits() { 2000 } else { 125 });
            RtuRequest::read(table, start, q).expect("folded into the limits")
        }
        4 => RtuRequest::write_coil(start, quantity & 1 == 1),
        5 => RtuRequest::write_register(start, quantity),
        6 => {
            let (start, q) = fit(1968);
            RtuRequest::write_coils(start, vec![true; usize::from(q)]).expect("folded")
        }
        _ => {
            let (start, q) = fit(123);
            RtuRequest::write_registers(start, vec![0xA5A5; usize::from(q)]).expect("folded")
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let (header, line) = data.split_at(HEADER);
    let unit = header[0];
    let request = request(
        header[1],
        u16::from_be_bytes([header[2], header[3]]),
        u16::from_be_bytes([header[4], header[5]]),
    );
    assert_eq!(encode_request(unit, &request).len(), request_len(&request));

    let mut whole = ResponseDecoder::new(unit, &request);
    let whole_progress = whole.push(line);
    let whole_silence = whole.on_silence();

    let chunk = usize::from(header[6]).max(1);
    let mut chunked = ResponseDecoder::new(unit, &request);
    let mut progress = Progress::NeedMore;
    for piece in line.chunks(chunk) {
        progress = chunked.push(piece);
    }
    if line.is_empty() {
        progress = chunked.push(&[]);
    }
    assert_eq!(progress, whole_progress);
    assert_eq!(chunked.on_silence(), whole_silence);
    assert_eq!(chunked.garbage_bytes(), whole.garbage_bytes());
    assert_eq!(chunked.trailing_bytes(), whole.trailing_bytes());

    if unit == BROADCAST {
        assert_eq!(whole_progress, Progress::NeedMore);
        assert_eq!(whole_silence, None);
        assert_eq!(whole.garbage_bytes(), line.len());
        return;
    }
    // Silence always ends a transaction that expects a reply.
    assert!(matches!(whole_progress, Progress::Complete(_)) || whole_silence.is_some());

    if let Progress::Complete(Ok(response)) = whole_progress {
        let q = usize::from(request.quantity());
        let frame_len = match &response {
            RtuResponse::Bits(bits) => {
                assert_eq!(bits.len(), q);
                response_len(&request)
            }
            RtuResponse::Registers(words) => {
                assert_eq!(words.len(), q);
                response_len(&request)
            }
            RtuResponse::Written => {
                assert!(request.function() >= 0x05);
                response_len(&request)
            }
            RtuResponse::Exception(_) => 5,
        };
        // Every byte is garbage, frame or trailing.
        assert_eq!(
            whole.garbage_bytes() + frame_len + whole.trailing_bytes(),
            line.len()
        );
    }
});
