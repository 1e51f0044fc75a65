//! Byte fixtures from the Modbus documents, then property tests against a slave written here
//! independently of the codec (its own bitwise CRC and its own request parser).

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::modbus::plan::{CostModel, ReadPlan};
use crate::modbus::tests::load_map;

/// CRC-16/MODBUS bit by bit (Serial Line v1.02 §6.2.2), low byte first.
fn crc_bytes(bytes: &[u8]) -> [u8; 2] {
    let mut crc: u16 = 0xFFFF;
    for &byte in bytes {
        crc ^= u16::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc.to_le_bytes()
}

fn with_crc(bytes: &[u8]) -> Vec<u8> {
    let mut adu = bytes.to_vec();
    adu.extend_from_slice(&crc_bytes(bytes));
    adu
}

fn decode(unit: u8, request: &RtuRequest, bytes: &[u8]) -> Progress {
    ResponseDecoder::new(unit, request).push(bytes)
}

fn ok(response: RtuResponse) -> Progress {
    Progress::Complete(Ok(response))
}

fn err(error: RtuError) -> Progress {
    Progress::Complete(Err(error))
}

fn holding(start: u16, quantity: u16) -> RtuRequest {
    RtuRequest::read(Table::Holding, start, quantity).unwrap()
}

// ---- Fixtures: the examples of Modbus Application Protocol v1.1b §6, on slave 17 (0x11) as the
// ---- Modicon and Simply Modbus references frame them. Their CRCs are the published ones.

#[test]
fn reading_ten_holding_registers_from_unit_1_ends_in_c5_cd() {
    assert_eq!(
        encode_request(1, &holding(0, 10)),
        [
            0x01, // unit
            0x03, // read holding registers
            0x00, 0x00, // start
            0x00, 0x0A, // quantity
            0xC5, 0xCD, // CRC, low byte first
        ]
    );
}

#[test]
fn reading_three_holding_registers_matches_the_reference_transaction() {
    let request = holding(0x006B, 3);
    assert_eq!(
        encode_request(0x11, &request),
        [0x11, 0x03, 0x00, 0x6B, 0x00, 0x03, 0x76, 0x87]
    );
    let response = [
        0x11, // unit
        0x03, // function
        0x06, // byte count
        0xAE, 0x41, // register 0x006B
        0x56, 0x52, // 0x006C
        0x43, 0x40, // 0x006D
        0x49, 0xAD, // CRC
    ];
    assert_eq!(response.len(), response_len(&request));
    assert_eq!(
        decode(0x11, &request, &response),
        ok(RtuResponse::Registers(vec![0xAE41, 0x5652, 0x4340]))
    );
}

#[test]
fn reading_coils_unpacks_least_significant_bit_first_and_drops_the_padding() {
    let request = RtuRequest::read(Table::Coil, 0x0013, 37).unwrap();
    assert_eq!(
        encode_request(0x11, &request),
        [0x11, 0x01, 0x00, 0x13, 0x00, 0x25, 0x0E, 0x84]
    );
    let response = [
        0x11, 0x01, 0x05, // unit, function, byte count
        0xCD, // coils 27..=20: 1100 1101
        0x6B, 0xB2, 0x0E, // coils 28..=51
        0x1B, // coils 56..=52 in the low five bits, three bits of padding
        0x45, 0xE6, // CRC
    ];
    let Progress::Complete(Ok(RtuResponse::Bits(bits))) = decode(0x11, &request, &response) else {
        panic!("the reference response decodes");
    };
    assert_eq!(bits.len(), 37);
    assert_eq!(
        &bits[..8],
        &[true, false, true, true, false, false, true, true]
    );
    assert_eq!(&bits[32..], &[true, true, false, true, true]);
}

#[test]
fn reading_discrete_inputs_matches_the_reference_transaction() {
    let request = RtuRequest::read(Table::DiscreteInput, 0x00C4, 22).unwrap();
    assert_eq!(
        encode_request(0x11, &request),
        [0x11, 0x02, 0x00, 0xC4, 0x00, 0x16, 0xBA, 0xA9]
    );
    let response = [0x11, 0x02, 0x03, 0xAC, 0xDB, 0x35, 0x20, 0x18];
    let Progress::Complete(Ok(RtuResponse::Bits(bits))) = decode(0x11, &request, &response) else {
        panic!("the reference response decodes");
    };
    // 0x35 = 0011 0101: inputs 213..=218 are the low six bits.
    assert_eq!(&bits[16..], &[true, false, true, false, true, true]);
}

#[test]
fn reading_an_input_register_matches_the_reference_transaction() {
    let request = RtuRequest::read(Table::Input, 0x0008, 1).unwrap();
    assert_eq!(
        encode_request(0x11, &request),
        [0x11, 0x04, 0x00, 0x08, 0x00, 0x01, 0xB2, 0x98]
    );
    assert_eq!(
        decode(0x11, &request, &[0x11, 0x04, 0x02, 0x00, 0x0A, 0xF8, 0xF4]),
        ok(RtuResponse::Registers(vec![10]))
    );
}

#[test]
fn writes_match_the_reference_transactions_and_accept_their_echo() {
    let cases: [(RtuRequest, &[u8], &[u8]); 4] = [
        (
            RtuRequest::write_coil(0x00AC, true),
            &[0x11, 0x05, 0x00, 0xAC, 0xFF, 0x00, 0x4E, 0x8B],
            &[0x11, 0x05, 0x00, 0xAC, 0xFF, 0x00, 0x4E, 0x8B],
        ),
        (
            RtuRequest::write_register(0x0001, 0x0003),
            &[0x11, 0x06, 0x00, 0x01, 0x00, 0x03, 0x9A, 0x9B],
            &[0x11, 0x06, 0x00, 0x01, 0x00, 0x03, 0x9A, 0x9B],
        ),
        (
            // Coils 20..=29: 1011 0011, then 01 (v1.1b §6.11).
            RtuRequest::write_coils(
                0x0013,
                [1, 0, 1, 1, 0, 0, 1, 1, 1, 0].map(|b| b == 1).to_vec(),
            )
            .unwrap(),
            &[
                0x11, 0x0F, 0x00, 0x13, 0x00, 0x0A, // unit, function, start, quantity
                0x02, 0xCD, 0x01, // byte count, coils
                0xBF, 0x0B, // CRC
            ],
            &[0x11, 0x0F, 0x00, 0x13, 0x00, 0x0A, 0x26, 0x99],
        ),
        (
            RtuRequest::write_registers(0x0001, vec![0x000A, 0x0102]).unwrap(),
            &[
                0x11, 0x10, 0x00, 0x01, 0x00, 0x02, // unit, function, start, quantity
                0x04, 0x00, 0x0A, 0x01, 0x02, // byte count, registers
                0xC6, 0xF0, // CRC
            ],
            &[0x11, 0x10, 0x00, 0x01, 0x00, 0x02, 0x12, 0x98],
        ),
    ];
    for (request, adu, echo) in cases {
        assert_eq!(encode_request(0x11, &request), adu, "{request:?}");
        assert_eq!(adu.len(), request_len(&request));
        assert_eq!(echo.len(), response_len(&request));
        assert_eq!(decode(0x11, &request, echo), ok(RtuResponse::Written));
    }
}

#[test]
fn an_exception_is_a_response_not_a_line_error() {
    let request = RtuRequest::read(Table::Coil, 0x04A1, 1).unwrap();
    assert_eq!(
        decode(10, &request, &[0x0A, 0x81, 0x02, 0xB0, 0x53]),
        ok(RtuResponse::Exception(0x02))
    );
    assert_eq!(exception_name(0x02), "illegal data address");
}

// ---- Garbage, foreign frames and header errors.

#[test]
fn stray_bytes_before_the_reply_are_skipped_and_counted() {
    let request = holding(0x006B, 3);
    let mut decoder = ResponseDecoder::new(0x11, &request);
    let reply = [
        0x11, 0x03, 0x06, 0xAE, 0x41, 0x56, 0x52, 0x43, 0x40, 0x49, 0xAD,
    ];
    assert_eq!(decoder.push(&[0x00, 0xFF, 0x42]), Progress::NeedMore);
    assert_eq!(
        decoder.push(&reply),
        ok(RtuResponse::Registers(vec![0xAE41, 0x5652, 0x4340]))
    );
    assert_eq!(decoder.garbage_bytes(), 3);
    assert_eq!(decoder.trailing_bytes(), 0);
}

#[test]
fn a_reply_from_another_unit_is_reported_as_wrong_unit() {
    let request = holding(0x006B, 3);
    // Unit 0x12 answering function 3: an address conflict, or a late reply.
    let foreign = with_crc(&[0x12, 0x03, 0x06, 1, 2, 3, 4, 5, 6]);
    let mut decoder = ResponseDecoder::new(0x11, &request);
    assert_eq!(
        decoder.push(&foreign),
        err(RtuError::WrongUnit {
            expected: 0x11,
            got: 0x12
        })
    );
    assert_eq!(decoder.garbage_bytes(), 0);
    assert_eq!(decoder.trailing_bytes(), foreign.len() - 2);
}

#[test]
fn a_stray_byte_before_unit_3s_reply_to_function_3_is_not_taken_for_another_unit() {
    // Unit id and function code are both 3: the pair (0x05, 0x03) could be unit 5 answering, but
    // the 0x03 is also our unit id, and ours wins.
    let request = holding(0, 1);
    let reply = with_crc(&[0x03, 0x03, 0x02, 0x12, 0x34]);
    let mut decoder = ResponseDecoder::new(3, &request);
    assert_eq!(decoder.push(&[0x05]), Progress::NeedMore);
    assert_eq!(
        decoder.push(&reply),
        ok(RtuResponse::Registers(vec![0x1234]))
    );
    assert_eq!(decoder.garbage_bytes(), 1);
}

#[test]
fn a_wrong_function_is_reported_at_the_second_byte() {
    let mut decoder = ResponseDecoder::new(1, &holding(0, 2));
    assert_eq!(
        decoder.push(&[0x01, 0x04]),
        err(RtuError::WrongFunction {
            expected: 0x03,
            got: 0x04
        })
    );
}

#[test]
fn a_wrong_byte_count_is_reported_at_the_third_byte() {
    let mut decoder = ResponseDecoder::new(1, &holding(0, 2));
    assert_eq!(
        decoder.push(&[0x01, 0x03, 0x02]),
        err(RtuError::ByteCountMismatch {
            expected: 4,
            got: 2
        })
    );
}

#[test]
fn a_flipped_bit_in_the_data_is_a_crc_mismatch() {
    let request = holding(0x006B, 3);
    let mut reply = [
        0x11, 0x03, 0x06, 0xAE, 0x41, 0x56, 0x52, 0x43, 0x40, 0x49, 0xAD,
    ];
    reply[4] ^= 0x01;
    assert!(matches!(
        decode(0x11, &request, &reply),
        Progress::Complete(Err(RtuError::CrcMismatch {
            received: 0xAD49,
            ..
        }))
    ));
}

#[test]
fn an_echo_that_differs_from_the_write_is_an_echo_mismatch() {
    let request = RtuRequest::write_register(0x0001, 0x0003);
    let echo = with_crc(&[0x11, 0x06, 0x00, 0x01, 0x00, 0x04]);
    assert_eq!(
        decode(0x11, &request, &echo),
        err(RtuError::EchoMismatch {
            expected: [0x0001, 0x0003],
            got: [0x0001, 0x0004]
        })
    );
}

#[test]
fn silence_mid_frame_is_a_short_frame_and_before_it_no_response() {
    let request = holding(0, 2);
    let mut cut = ResponseDecoder::new(1, &request);
    assert_eq!(cut.push(&[0x01, 0x03, 0x04, 0x00]), Progress::NeedMore);
    assert_eq!(cut.on_silence(), Some(RtuError::ShortFrame { got: 4 }));
    assert_eq!(cut.on_silence(), None, "reported once");
    assert_eq!(cut.push(&[0x01]), err(RtuError::ShortFrame { got: 4 }));

    let mut quiet = ResponseDecoder::new(1, &request);
    assert_eq!(quiet.push(&[0xFF, 0xFF]), Progress::NeedMore);
    assert_eq!(
        quiet.on_silence(),
        Some(RtuError::NoResponse { garbage: 2 })
    );
}

#[test]
fn a_broadcast_write_is_never_answered_and_its_silence_is_no_error() {
    let request = RtuRequest::write_register(0x0010, 7);
    assert_eq!(
        encode_request(BROADCAST, &request),
        with_crc(&[0x00, 0x06, 0x00, 0x10, 0x00, 0x07])
    );
    let mut decoder = ResponseDecoder::new(BROADCAST, &request);
    assert!(!decoder.expects_response());
    assert_eq!(
        decoder.push(&with_crc(&[0x00, 0x06, 0x00, 0x10, 0x00, 0x07])),
        Progress::NeedMore
    );
    assert_eq!(decoder.garbage_bytes(), 8);
    assert_eq!(decoder.on_silence(), None);
}

#[test]
fn bytes_after_the_frame_are_trailing_and_do_not_change_the_result() {
    let request = RtuRequest::read(Table::Input, 0x0008, 1).unwrap();
    let mut decoder = ResponseDecoder::new(0x11, &request);
    let mut bytes = vec![0x11, 0x04, 0x02, 0x00, 0x0A, 0xF8, 0xF4];
    bytes.extend_from_slice(&[0x11, 0x04]);
    assert_eq!(decoder.push(&bytes), ok(RtuResponse::Registers(vec![10])));
    assert_eq!(decoder.push(&[0x00]), ok(RtuResponse::Registers(vec![10])));
    assert_eq!(decoder.trailing_bytes(), 3);
    assert_eq!(decoder.on_silence(), None);
}

// ---- Requests.

#[test]
fn requests_outside_the_v1_1b_limits_are_refused() {
    let too_many = |function, quantity, max| {
        Err(RequestError::QuantityOutOfRange {
            function,
            quantity,
            max,
        })
    };
    assert_eq!(
        RtuRequest::read(Table::Holding, 0, 0),
        too_many(0x03, 0, 125)
    );
    assert_eq!(
        RtuRequest::read(Table::Input, 0, 126),
        too_many(0x04, 126, 125)
    );
    assert_eq!(
        RtuRequest::read(Table::Coil, 0, 2001),
        too_many(0x01, 2001, 2000)
    );
    assert!(RtuRequest::read(Table::DiscreteInput, 0, 2000).is_ok());
    assert_eq!(
        RtuRequest::write_registers(0, vec![0; 124]),
        too_many(0x10, 124, 123)
    );
    assert_eq!(
        RtuRequest::write_registers(0, vec![]),
        too_many(0x10, 0, 123)
    );
    assert_eq!(
        RtuRequest::write_coils(0, vec![true; 1969]),
        too_many(0x0F, 1969, 1968)
    );
    assert_eq!(
        RtuRequest::read(Table::Holding, 65_530, 7),
        Err(RequestError::PastLastAddress {
            start: 65_530,
            quantity: 7
        })
    );
    assert!(RtuRequest::read(Table::Holding, 65_530, 6).is_ok());
}

#[test]
fn the_largest_requests_and_responses_fit_one_adu() {
    let largest = [
        RtuRequest::read(Table::Coil, 0, 2000).unwrap(),
        holding(0, 125),
        RtuRequest::write_coils(0, vec![true; 1968]).unwrap(),
        RtuRequest::write_registers(0, vec![0xFFFF; 123]).unwrap(),
    ];
    for request in &largest {
        assert!(encode_request(247, request).len() <= MAX_ADU_LEN);
        assert!(response_len(request) <= MAX_ADU_LEN);
    }
}

#[test]
fn a_catalogue_plan_becomes_rtu_requests_of_the_same_shape() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config/devices/eastron-sdm230.toml");
    let map = load_map(&path);
    let plan = ReadPlan::for_map(&map, &CostModel::RTU);
    for read in plan.requests() {
        let request = RtuRequest::try_from(read).unwrap();
        assert_eq!(
            (
                request.table(),
                request.start(),
                request.quantity(),
                request.function()
            ),
            (read.table(), read.start(), read.quantity(), read.function())
        );
        // The planner's byte count of a transaction is both frames plus 7 characters of silence.
        assert_eq!(
            CostModel::RTU.bytes(read.table(), read.quantity()) as usize,
            request_len(&request) + response_len(&request) + 7
        );
    }
}

#[test]
fn an_encoded_point_value_becomes_the_write_its_function_names() {
    for encoded in [
        Encoded::Bit(true),
        Encoded::Registers(vec![7]),
        Encoded::Registers(vec![1, 2]),
    ] {
        let request = RtuRequest::write(0x0100, &encoded).unwrap();
        assert_eq!(request.function(), encoded.function());
        assert_eq!(request.start(), 0x0100);
    }
}

// ---- Line timing.

#[test]
fn at_9600_baud_8e1_a_character_is_11_bits_and_t3_5_about_4_ms() {
    let line = LineTiming::new(9600, Parity::Even, 1).unwrap();
    assert_eq!(line.char_bits(), 11);
    assert_eq!(line.char_time(), Duration::from_nanos(1_145_834));
    assert_eq!(line.t1_5(), Duration::from_nanos(1_718_750));
    assert_eq!(line.t3_5(), Duration::from_nanos(4_010_417));
    assert_eq!(line.frame_time(8), Duration::from_nanos(9_166_667));
}

#[test]
fn character_sizes_follow_parity_and_stop_bits() {
    let bits = |parity, stop| LineTiming::new(9600, parity, stop).unwrap().char_bits();
    assert_eq!(bits(Parity::None, 1), 10);
    assert_eq!(bits(Parity::None, 2), 11);
    assert_eq!(bits(Parity::Odd, 1), 11);
    assert_eq!(bits(Parity::Even, 2), 12);
    assert_eq!(
        LineTiming::new(0, Parity::Even, 1),
        Err(LineTimingError::ZeroBaud)
    );
    assert_eq!(
        LineTiming::new(9600, Parity::Even, 3),
        Err(LineTimingError::StopBits(3))
    );
}

#[test]
fn above_19200_baud_the_silences_are_fixed() {
    let at_19200 = LineTiming::new(19_200, Parity::Even, 1).unwrap();
    assert_eq!(at_19200.t3_5(), Duration::from_nanos(2_005_209));
    let fast = LineTiming::new(115_200, Parity::Even, 1).unwrap();
    assert_eq!(fast.t1_5(), Duration::from_micros(750));
    assert_eq!(fast.t3_5(), Duration::from_micros(1_750));
    assert_eq!(fast.char_time(), Duration::from_nanos(95_487));
}

#[test]
fn a_transaction_takes_both_frames_and_two_silences() {
    let line = LineTiming::new(9600, Parity::Even, 1).unwrap();
    let request = holding(0, 10);
    let min = line.transaction_min(request_len(&request), response_len(&request));
    assert_eq!(
        min,
        line.frame_time(8) + line.frame_time(25) + 2 * line.t3_5()
    );
    // The planner's cost model counts the same characters, to within rounding.
    let planned = CostModel::RTU.rtu_time(Table::Holding, 10, 9600);
    assert!(
        min.abs_diff(planned) < Duration::from_nanos(10),
        "{min:?} {planned:?}"
    );
}

// ---- Properties, against a slave written independently of the codec.

/// A request as the test slave reads it off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Read {
        function: u8,
        start: u16,
        quantity: u16,
    },
    WriteCoil {
        address: u16,
        value: u16,
    },
    WriteRegister {
        address: u16,
        value: u16,
    },
    WriteCoils {
        start: u16,
        values: Vec<bool>,
    },
    WriteRegisters {
        start: u16,
        values: Vec<u16>,
    },
}

fn request_of(op: &Op) -> RtuRequest {
    match op {
        Op::Read {
            function,
            start,
            quantity,
        } => {
            let table = [
                Table::Coil,
                Table::DiscreteInput,
                Table::Holding,
                Table::Input,
            ][usize::from(*function) - 1];
            RtuRequest::read(table, *start, *quantity).unwrap()
        }
        Op::WriteCoil { address, value } => RtuRequest::write_coil(*address, *value == 0xFF00),
        Op::WriteRegister { address, value } => RtuRequest::write_register(*address, *value),
        Op::WriteCoils { start, values } => {
            RtuRequest::write_coils(*start, values.clone()).unwrap()
        }
        Op::WriteRegisters { start, values } => {
            RtuRequest::write_registers(*start, values.clone()).unwrap()
        }
    }
}

fn word(bytes: &[u8], at: usize) -> u16 {
    (u16::from(bytes[at]) << 8) | u16::from(bytes[at + 1])
}

/// The slave's reading of a request ADU: checks the CRC and the byte count, returns unit and op.
fn slave_parse(adu: &[u8]) -> (u8, Op) {
    let (body, crc) = adu.split_at(adu.len() - 2);
    assert_eq!(crc, crc_bytes(body), "request CRC");
    let (unit, function) = (body[0], body[1]);
    let (first, second) = (word(body, 2), word(body, 4));
    let op = match function {
        0x01..=0x04 => {
            assert_eq!(body.len(), 6);
            Op::Read {
                function,
                start: first,
                quantity: second,
            }
        }
        0x05 => Op::WriteCoil {
            address: first,
            value: second,
        },
        0x06 => Op::WriteRegister {
            address: first,
            value: second,
        },
        0x0F => {
            let data = &body[7..];
            assert_eq!(usize::from(body[6]), data.len());
            assert_eq!(data.len(), usize::from(second).div_ceil(8));
            Op::WriteCoils {
                start: first,
                values: (0..usize::from(second))
                    .map(|i| data[i / 8] & (1 << (i % 8)) != 0)
                    .collect(),
            }
        }
        0x10 => {
            let data = &body[7..];
            assert_eq!(usize::from(body[6]), data.len());
            assert_eq!(data.len(), 2 * usize::from(second));
            Op::WriteRegisters {
                start: first,
                values: (0..usize::from(second))
                    .map(|i| word(data, 2 * i))
                    .collect(),
            }
        }
        other => panic!("function {other:#04x}"),
    };
    (unit, op)
}

/// The slave's reply to `op` (data taken from `data`, at least 250 bytes), and what a master
/// should make of it.
fn slave_reply(
    unit: u8,
    op: &Op,
    adu: &[u8],
    exception: Option<u8>,
    data: &[u8],
) -> (Vec<u8>, RtuResponse) {
    let function = adu[1];
    if let Some(code) = exception {
        return (
            with_crc(&[unit, function | 0x80, code]),
            RtuResponse::Exception(code),
        );
    }
    match op {
        Op::Read { quantity, .. } if function <= 0x02 => {
            let q = usize::from(*quantity);
            let mut bytes = data[..q.div_ceil(8)].to_vec();
            if q % 8 != 0 {
                *bytes.last_mut().unwrap() &= (1u8 << (q % 8)) - 1; // zero padding
            }
            let bits = (0..q).map(|i| bytes[i / 8] & (1 << (i % 8)) != 0).collect();
            let mut reply = vec![unit, function, bytes.len() as u8];
            reply.extend_from_slice(&bytes);
            (with_crc(&reply), RtuResponse::Bits(bits))
        }
        Op::Read { quantity, .. } => {
            let bytes = &data[..2 * usize::from(*quantity)];
            let words = (0..usize::from(*quantity))
                .map(|i| word(bytes, 2 * i))
                .collect();
            let mut reply = vec![unit, function, bytes.len() as u8];
            reply.extend_from_slice(bytes);
            (with_crc(&reply), RtuResponse::Registers(words))
        }
        _ => (with_crc(&adu[..6]), RtuResponse::Written),
    }
}

fn op() -> impl Strategy<Value = Op> {
    let start_for = |q: usize| (0..=0x1_0000 - q as u32).prop_map(|s| s as u16);
    let read = (1u8..=4).prop_flat_map(move |function| {
        let max: u16 = if function <= 2 { 2000 } else { 125 };
        (1..=max).prop_flat_map(move |quantity| {
            start_for(usize::from(quantity)).prop_map(move |start| Op::Read {
                function,
                start,
                quantity,
            })
        })
    });
    let write_coils = prop::collection::vec(any::<bool>(), 1..=1968).prop_flat_map(move |values| {
        start_for(values.len()).prop_map(move |start| Op::WriteCoils {
            start,
            values: values.clone(),
        })
    });
    let write_registers =
        prop::collection::vec(any::<u16>(), 1..=123).prop_flat_map(move |values| {
            start_for(values.len()).prop_map(move |start| Op::WriteRegisters {
                start,
                values: values.clone(),
            })
        });
    prop_oneof![
        4 => read,
        1 => (any::<u16>(), prop_oneof![Just(0xFF00u16), Just(0)])
            .prop_map(|(address, value)| Op::WriteCoil { address, value }),
        1 => (any::<u16>(), any::<u16>())
            .prop_map(|(address, value)| Op::WriteRegister { address, value }),
        1 => write_coils,
        1 => write_registers,
    ]
}

/// A request, a unit, and the slave's well-formed reply with what it should decode to.
#[derive(Debug, Clone)]
struct Exchange {
    unit: u8,
    request: RtuRequest,
    reply: Vec<u8>,
    expected: RtuResponse,
}

fn exchange() -> impl Strategy<Value = Exchange> {
    (
        1u8..=247,
        op(),
        prop::option::weighted(0.2, 1u8..=0x0B),
        prop::collection::vec(any::<u8>(), 250),
    )
        .prop_map(|(unit, op, exception, data)| {
            let request = request_of(&op);
            let adu = encode_request(unit, &request);
            assert_eq!(
                slave_parse(&adu),
                (unit, op.clone()),
                "the slave reads the request back"
            );
            let (reply, expected) = slave_reply(unit, &op, &adu, exception, &data);
            Exchange {
                unit,
                request,
                reply,
                expected,
            }
        })
}

/// Pushes `bytes` cut at `cuts`, then reports the silence if still incomplete.
fn run(
    decoder: &mut ResponseDecoder,
    bytes: &[u8],
    cuts: &[Index],
) -> (Progress, Option<RtuError>) {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    let mut progress = Progress::NeedMore;
    for pair in at.windows(2) {
        progress = decoder.push(&bytes[pair[0]..pair[1]]);
    }
    let silence = decoder.on_silence();
    (progress, silence)
}

/// Bytes that the garbage rule always skips before a reply from `unit`: never the unit id, never
/// a function code a reply could start with (so no pair reads as another unit's reply).
fn skippable(unit: u8, function: u8, bytes: Vec<u8>) -> Vec<u8> {
    bytes
        .into_iter()
        .filter(|&b| b != unit && b != function && b != function | 0x80)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_request_round_trips_through_an_independent_slave(x in exchange()) {
        prop_assert_eq!(x.reply.len(), match x.expected {
            RtuResponse::Exception(_) => 5,
            _ => response_len(&x.request),
        });
        let mut decoder = ResponseDecoder::new(x.unit, &x.request);
        prop_assert_eq!(decoder.push(&x.reply), ok(x.expected));
        prop_assert_eq!(decoder.garbage_bytes(), 0);
        prop_assert_eq!(decoder.on_silence(), None);
    }

    #[test]
    fn any_single_byte_corruption_is_caught_never_decoded(
        x in exchange(),
        at in any::<Index>(),
        flip in 1u8..=255,
    ) {
        let mut reply = x.reply.clone();
        let at = at.index(reply.len());
        reply[at] ^= flip;
        let mut decoder = ResponseDecoder::new(x.unit, &x.request);
        match decoder.push(&reply) {
            Progress::Complete(Ok(response)) => {
                prop_assert!(false, "byte {} ^ {:#04x} decoded as {:?}", at, flip, response);
            }
            Progress::Complete(Err(_)) => {}
            Progress::NeedMore => prop_assert!(decoder.on_silence().is_some()),
        }
    }

    #[test]
    fn stray_bytes_then_a_reply_decode_the_same_however_they_are_chunked(
        x in exchange(),
        noise in prop::collection::vec(any::<u8>(), 0..16),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let noise = skippable(x.unit, x.request.function(), noise);
        let mut bytes = noise.clone();
        bytes.extend_from_slice(&x.reply);
        let mut decoder = ResponseDecoder::new(x.unit, &x.request);
        let (progress, silence) = run(&mut decoder, &bytes, &cuts);
        prop_assert_eq!(progress, ok(x.expected));
        prop_assert_eq!(silence, None);
        prop_assert_eq!(decoder.garbage_bytes(), noise.len());
    }

    #[test]
    fn any_bytes_give_one_result_however_they_are_chunked(
        unit in any::<u8>(),
        op in op(),
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let request = request_of(&op);
        let mut whole = ResponseDecoder::new(unit, &request);
        let whole_result = run(&mut whole, &bytes, &[]);
        let mut chunked = ResponseDecoder::new(unit, &request);
        let chunked_result = run(&mut chunked, &bytes, &cuts);
        prop_assert_eq!(&whole_result, &chunked_result);
        prop_assert_eq!(whole.garbage_bytes(), chunked.garbage_bytes());
        prop_assert_eq!(whole.trailing_bytes(), chunked.trailing_bytes());
        prop_assert!(whole.garbage_bytes() + whole.trailing_bytes() <= bytes.len());
        // Silence always ends a transaction that expects a reply.
        let (progress, silence) = whole_result;
        if unit != BROADCAST {
            prop_assert!(matches!(progress, Progress::Complete(_)) || silence.is_some());
        }
        if let Progress::Complete(Ok(response)) = progress {
            let is_read = request.function() <= 0x04;
            match response {
                RtuResponse::Bits(bits) => prop_assert_eq!(bits.len(), usize::from(request.quantity())),
                RtuResponse::Registers(words) => {
                    prop_assert_eq!(words.len(), usize::from(request.quantity()));
                }
                RtuResponse::Written => prop_assert!(!is_read),
                RtuResponse::Exception(_) => {}
            }
        }
    }

    #[test]
    fn a_request_is_as_long_as_request_len_says(op in op(), unit in any::<u8>()) {
        let request = request_of(&op);
        let adu = encode_request(unit, &request);
        prop_assert_eq!(adu.len(), request_len(&request));
        prop_assert!(adu.len() <= MAX_ADU_LEN);
    }
}
