//! Property tests of the node link's wire format and framing.

use outpost_proto::frame::MAX_FRAME_LEN;
use outpost_proto::wire::{MAX_CHANNELS, MAX_COMMAND_BODY, MAX_READINGS};
use outpost_proto::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn fw() -> impl Strategy<Value = FwVersion> {
    any::<[u8; 3]>().prop_map(|[major, minor, patch]| FwVersion {
        major,
        minor,
        patch,
    })
}

fn body() -> impl Strategy<Value = heapless::Vec<u8, MAX_COMMAND_BODY>> {
    vec(any::<u8>(), 0..=MAX_COMMAND_BODY).prop_map(|v| heapless::Vec::from_slice(&v).unwrap())
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<[u8; 8]>(),
            any::<u8>(),
            fw(),
            any::<u32>(),
            "[a-zA-Z0-9é-]{0,5}",
            vec(any::<u8>(), 0..=MAX_CHANNELS)
        )
            .prop_map(|(uid, hw_rev, fw, boot_id, lot, ch)| Message::Hello(Hello {
                uid,
                hw_rev,
                fw,
                boot_id,
                lot: heapless::String::try_from(lot.as_str()).unwrap(),
                channels: ch.into_iter().map(ChannelId).collect(),
            })),
        (any::<[u8; 8]>(), any::<[u8; 32]>())
            .prop_map(|(uid, public_key)| Message::Enroll(Enroll { uid, public_key })),
        (any::<u32>(), any::<u32>())
            .prop_map(|(boot_id, ack_upto)| Message::Accept(Accept { boot_id, ack_upto })),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            vec((any::<u8>(), any::<i32>()), 0..=MAX_READINGS)
        )
            .prop_map(
                |(seq, window_start, age_ms, r)| Message::Telemetry(Telemetry {
                    seq,
                    window_start,
                    age_ms,
                    readings: r
                        .into_iter()
                        .map(|(c, value)| Reading {
                            channel: ChannelId(c),
                            value
                        })
                        .collect(),
                })
            ),
        (any::<u32>(), any::<u32>())
            .prop_map(|(boot_id, upto)| Message::Ack(Ack { boot_id, upto })),
        any::<[u32; 3]>().prop_map(|[boot_id, from, to]| Message::Nack(Nack { boot_id, from, to })),
        (any::<[u32; 7]>(), any::<u8>(), fw(), any::<i16>()).prop_map(|(v, reset, fw, t)| {
            Message::Health(Health {
                uptime_s: v[0],
                reset_reason: ResetReason::from_code(reset),
                fw,
                stack_free_min: v[1],
                rx_frames: v[2],
                rx_errors: v[3],
                tx_frames: v[4],
                retransmits: v[5],
                dropped_samples: v[6],
                chip_temp_centi: t,
            })
        }),
        (any::<u16>(), any::<u8>(), body())
            .prop_map(|(id, code, args)| Message::Command(Command { id, code, args })),
        (any::<u16>(), any::<u8>(), body())
            .prop_map(|(id, status, body)| Message::Response(Response { id, status, body })),
    ]
}

fn frame_of(m: &Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode_frame(m, &mut buf).unwrap();
    buf[..n].to_vec()
}

fn decode_all(bytes: &[u8]) -> (Vec<Message>, FrameDecoder) {
    let mut d = FrameDecoder::new();
    let messages = bytes
        .iter()
        .filter_map(|&b| d.push(b))
        .filter_map(Result::ok)
        .collect();
    (messages, d)
}

proptest! {
    #[test]
    fn every_message_round_trips_through_emit_and_parse(m in message()) {
        let mut buf = [0u8; 128];
        let n = m.emit(&mut buf).unwrap();
        prop_assert_eq!(n, m.buffer_len());
        prop_assert_eq!(Message::parse(&buf[..n]), Ok(m));
    }

    #[test]
    fn every_message_round_trips_through_framing(ms in vec(message(), 1..8)) {
        let stream: Vec<u8> = ms.iter().flat_map(frame_of).collect();
        let (decoded, d) = decode_all(&stream);
        prop_assert_eq!(decoded, ms);
        prop_assert_eq!(d.counters().errors, 0);
    }

    #[test]
    fn arbitrary_garbage_never_panics_and_the_next_frame_decodes(
        garbage in vec(any::<u8>(), 0..600),
        m in message(),
    ) {
        let mut stream = garbage;
        stream.extend(frame_of(&m));
        let (decoded, _) = decode_all(&stream);
        // Garbage may by chance hold valid frames; the real one is always the last decoded.
        prop_assert_eq!(decoded.last(), Some(&m));
    }

    #[test]
    fn a_single_corrupted_byte_is_detected_never_misread(m in message(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut frame = frame_of(&m);
        let i = 1 + at.index(frame.len() - 2); // keep the delimiters
        frame[i] ^= flip;
        let (decoded, d) = decode_all(&frame);
        // CRC-32 detects every error confined to one byte, so nothing is decoded and it is counted.
        prop_assert!(decoded.is_empty() || decoded == vec![m]);
        prop_assert!(decoded.is_empty() == (d.counters().errors > 0));
    }

    #[test]
    fn parse_of_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..200)) {
        let _ = Message::parse(&bytes);
    }

    #[test]
    fn truncated_frames_are_dropped_and_counted(m in message(), cut in any::<prop::sample::Index>()) {
        let frame = frame_of(&m);
        let keep = 2 + cut.index(frame.len() - 3); // at least one body byte, never the whole
        let mut stream = frame[..keep].to_vec();
        stream.push(0); // the line then idles or the next frame starts
        stream.extend(frame_of(&m));
        let (decoded, d) = decode_all(&stream);
        prop_assert_eq!(decoded, vec![m]);
        prop_assert_eq!(d.counters().errors, 1);
    }
}

#[test]
fn oversized_frame_is_dropped_up_to_the_next_delimiter() {
    let m = Message::Ack(Ack {
        boot_id: 7,
        upto: 42,
    });
    let mut stream = vec![0u8];
    stream.extend(std::iter::repeat_n(0x55, 5000)); // a node that never sends a delimiter
    stream.extend(frame_of(&m));
    let (decoded, d) = decode_all(&stream);
    assert_eq!(decoded, vec![m]);
    assert_eq!(d.counters().errors, 1);
    assert!(d.counters().discarded_bytes >= 5000);
}

#[test]
fn ack_frame_bytes_match_the_documented_layout() {
    let m = Message::Ack(Ack {
        boot_id: 0x0403_0201,
        upto: 0x0000_0102,
    });
    let frame = frame_of(&m);
    let expected: &[u8] = &[
        0x00, // delimiter: ends any garbage before the frame
        0x09, // COBS code: 8 non-zero bytes follow, then a zero
        0x01, // protocol version 1
        0x05, // type: ACK
        0x01, 0x02, 0x03, 0x04, // boot_id 0x04030201, little-endian
        0x02, 0x01, // upto 0x00000102, low bytes (its first zero high byte is implied)
        0x01, // COBS code: no data bytes, then a zero (upto's last high byte)
        0x05, // COBS code: 4 non-zero bytes follow, frame ends
        0x62, 0x21, 0x35, 0xC5, // CRC-32/ISO-HDLC of the 10 message bytes, little-endian
        0x00, // delimiter
    ];
    assert_eq!(frame, expected);
}

#[test]
fn nack_frame_bytes_match_the_documented_layout() {
    let m = Message::Nack(Nack {
        boot_id: 0x0403_0201,
        from: 0x0000_0111,
        to: 0x0000_0118,
    });
    let frame = frame_of(&m);
    let expected: &[u8] = &[
        0x00, // delimiter
        0x09, // COBS code: 8 non-zero bytes follow, then a zero (from's third byte)
        0x01, // protocol version 1
        0x09, // type: NACK
        0x01, 0x02, 0x03, 0x04, // boot_id 0x04030201, little-endian
        0x11, 0x01, // from 0x00000111, low bytes
        0x01, // COBS code: no data bytes, then a zero (from's high byte)
        0x03, // COBS code: 2 non-zero bytes follow, then a zero (to's third byte)
        0x18, 0x01, // to 0x00000118, low bytes
        0x01, // COBS code: no data bytes, then a zero (to's high byte)
        0x05, // COBS code: 4 non-zero bytes follow, frame ends
        0xBE, 0xA2, 0x3A, 0x3C, // CRC-32/ISO-HDLC of the 14 message bytes, little-endian
        0x00, // delimiter
    ];
    assert_eq!(frame, expected);
}
