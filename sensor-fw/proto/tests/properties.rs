//! Property tests of the node link's wire format and framing.

use ed25519_dalek::SigningKey;
use outpost_proto::frame::MAX_FRAME_LEN;
use outpost_proto::wire::{MAX_CHANNELS, MAX_COMMAND_BODY, MAX_READINGS, age_on_wire};
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
            vec(any::<u8>(), 0..=MAX_CHANNELS),
            any::<[u8; 32]>(),
        )
            .prop_map(
                |(uid, hw_rev, fw, boot_id, lot, ch, ephemeral)| Message::Hello(Hello {
                    uid,
                    hw_rev,
                    fw,
                    boot_id,
                    lot: heapless::String::try_from(lot.as_str()).unwrap(),
                    channels: ch.into_iter().map(ChannelId).collect(),
                    ephemeral,
                })
            ),
        (
            any::<u32>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<[[u8; 32]; 2]>()
        )
            .prop_map(|(boot_id, ephemeral, gateway_key, sig)| Message::Challenge(
                Challenge {
                    boot_id,
                    ephemeral,
                    gateway_key,
                    signature: signature(sig),
                }
            )),
        (any::<[u8; 8]>(), any::<u32>(), any::<[[u8; 32]; 2]>()).prop_map(|(uid, boot_id, sig)| {
            Message::Proof(Proof {
                uid,
                boot_id,
                signature: signature(sig),
            })
        }),
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
                    // An age the wire carries exactly (see the age properties below).
                    age_ms: age_on_wire(age_ms),
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
        (
            any::<[u8; 4]>(),
            0u8..=7,
            any::<u8>(),
            any::<(u16, u64, u16)>(),
            any::<bool>(),
            fw()
        )
            .prop_map(
                |(image, phase, detail, (flashed, have, credit), big, floor)| {
                    Message::OtaStatus(OtaStatus {
                        image: ImageTag(image),
                        phase: OtaPhase::from_code(phase).unwrap(),
                        detail,
                        flashed,
                        have,
                        credit,
                        chunk: if big {
                            ChunkSize::B1024
                        } else {
                            ChunkSize::B512
                        },
                        floor,
                    })
                }
            ),
        (any::<[u8; 4]>(), 1u8..=4, any::<u16>()).prop_map(|(image, op, arg)| {
            Message::OtaControl(OtaControl {
                image: ImageTag(image),
                op: OtaOp::from_code(op).unwrap(),
                arg,
            })
        }),
    ]
}

fn signature([a, b]: [[u8; 32]; 2]) -> [u8; 64] {
    let mut s = [0u8; 64];
    s[..32].copy_from_slice(&a);
    s[32..].copy_from_slice(&b);
    s
}

/// A session's keys from a real handshake with fixed keys.
fn session_keys() -> SessionKeys {
    let gateway = SigningKey::from_bytes(&[1; 32]);
    let node = SigningKey::from_bytes(&[2; 32]);
    let node_eph = session::Ephemeral::from_random([3; 32]);
    let hello = Hello {
        uid: [9; 8],
        hw_rev: 1,
        fw: FwVersion::default(),
        boot_id: 7,
        lot: heapless::String::new(),
        channels: heapless::Vec::new(),
        ephemeral: node_eph.public(),
    };
    let node_key = node.verifying_key().to_bytes();
    let gw_eph = session::Ephemeral::from_random([4; 32]);
    let (challenge, handshake) =
        session::GatewayHandshake::challenge(&gateway, &gw_eph, &hello, &node_key).unwrap();
    let (proof, keys) =
        session::node_answer(&node, [9; 8], 7, &node_eph, &challenge, None).unwrap();
    assert_eq!(handshake.finish(&proof).unwrap(), keys);
    keys
}

/// Frames `m`, sealed with a fresh session's gateway sealer when it travels sealed.
fn frame_of(m: &Message) -> Vec<u8> {
    let (mut sealer, _) = session_keys().gateway();
    frame_with(m, &mut sealer)
}

fn frame_with(m: &Message, sealer: &mut Sealer) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = if m.is_sealed() {
        encode_sealed_frame(m, sealer, &mut buf).unwrap()
    } else {
        encode_frame(m, &mut buf).unwrap()
    };
    buf[..n].to_vec()
}

fn decode_all(bytes: &[u8]) -> (Vec<Message>, FrameDecoder) {
    let mut d = FrameDecoder::new();
    let messages = bytes
        .iter()
        .filter_map(|&b| d.push(b))
        .filter_map(Result::ok)
        .map(Received::into_unverified)
        .collect();
    (messages, d)
}

proptest! {
    #[test]
    fn every_message_round_trips_through_emit_and_parse(m in message()) {
        let mut buf = [0u8; wire::MAX_MESSAGE_LEN];
        let n = m.emit(&mut buf).unwrap();
        prop_assert_eq!(n, m.buffer_len());
        prop_assert_eq!(Message::parse(&buf[..n]), Ok(m));
    }

    #[test]
    fn every_message_round_trips_through_framing(ms in vec(message(), 1..8)) {
        let (mut sealer, mut opener) = session_keys().gateway();
        let (_, mut node_opener) = session_keys().node();
        let stream: Vec<u8> = ms.iter().flat_map(|m| frame_with(m, &mut sealer)).collect();
        let mut d = FrameDecoder::new();
        let mut decoded = Vec::new();
        for received in stream.iter().filter_map(|&b| d.push(b)) {
            let received = received.unwrap();
            decoded.push(if received.is_sealed() {
                // Sealed by the gateway: only the node's opener takes it.
                prop_assert_eq!(received.clone().open(&mut opener), Err(AuthError::Forged));
                received.open(&mut node_opener).unwrap()
            } else {
                received.into_clear().unwrap()
            });
        }
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
    fn an_age_comes_back_exact_when_young_and_at_most_7_ms_younger_when_old(
        age_ms in prop_oneof![0u32..20_000, any::<u32>()],
        seq in any::<u32>(),
    ) {
        let t = Telemetry { seq, window_start: seq, age_ms, readings: Default::default() };
        let mut buf = [0u8; wire::MAX_MESSAGE_LEN];
        let n = Message::Telemetry(t.clone()).emit(&mut buf).unwrap();
        let Ok(Message::Telemetry(back)) = Message::parse(&buf[..n]) else {
            panic!("a TELEMETRY parses");
        };
        prop_assert_eq!(back.age_ms, age_on_wire(age_ms));
        prop_assert!(back.age_ms <= age_ms && age_ms - back.age_ms < 8);
        if age_ms < 8192 {
            prop_assert_eq!(back.age_ms, age_ms);
        }
        // Never a longer varint than the age itself as one.
        let exact = 2 + varint_len(seq) + 1 + varint_len(age_ms);
        prop_assert!(n <= exact);
    }

    /// Every TELEMETRY the decoder takes is the one encoding of its message: no second,
    /// non-canonical spelling of the same sample gets through.
    #[test]
    fn every_telemetry_parsed_is_emitted_back_to_the_same_bytes(
        body in vec(any::<u8>(), 0..50),
    ) {
        let mut bytes = vec![2u8, 0x04];
        bytes.extend(body);
        if let Ok(m) = Message::parse(&bytes) {
            let mut buf = [0u8; wire::MAX_MESSAGE_LEN];
            let n = m.emit(&mut buf).unwrap();
            prop_assert_eq!(&buf[..n], &bytes[..]);
        }
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

fn varint_len(v: u32) -> usize {
    (1..5).find(|&n| v < 1 << (7 * n)).unwrap_or(5)
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
