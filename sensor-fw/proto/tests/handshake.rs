//! The handshake and sealing, byte by byte as docs/node-link.md documents them (fixtures), and
//! the replay window against any order of delivery (properties).

use ed25519_dalek::SigningKey;
use outpost_proto::frame::{MAX_FRAME_LEN, encode_raw_frame};
use outpost_proto::session::{Ephemeral, GatewayHandshake, node_answer};
use outpost_proto::*;
use proptest::collection::vec;
use proptest::prelude::*;

mod common;
use common::{BOOT_ID, UID, fixture};

fn clear(m: &Message) -> String {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode_frame(m, &mut buf).unwrap();
    hex::encode(&buf[..n])
}

fn sealed(m: &Message, sealer: &mut Sealer) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode_sealed_frame(m, sealer, &mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn the_handshake_bytes_match_the_documented_layout() {
    let f = fixture();
    // docs/node-link.md §2.1: every frame of the handshake, keys from fixed bytes.
    assert_eq!(
        clear(&Message::Hello(f.hello.clone())),
        "000e020101020304050607080201042f01020304024c370201047b0d47d93427f8311160781c7c733fd8\
         9f88970aef490d8aa0ee19a4cb8a1b142fe9d68a00"
    );
    assert_eq!(
        clear(&Message::Enroll(f.enroll.clone())),
        "002f02020102030405060708a09aa5f47a6759802ff955f8dc2d2a14a5c99d23be97f864127ff9383455\
         a4f0c9592c7300"
    );
    assert_eq!(
        clear(&Message::Challenge(f.challenge)),
        "0079020a01020304ff2ee45601ec1b67310c7790404585ae697331eee1c1f8cf2419731c1fff3e6bd04a\
         b232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737f1a6e23d9040a70f3163728a\
         4f74c27b0cf31b722751a24eaf31ee216bbd385e068801e90b739878bbd3bff201783e6382b9126fbe1e\
         fed313503926aac4f9011f1e9bc900"
    );
    assert_eq!(
        clear(&Message::Proof(f.proof)),
        "0032020b01020304050607080102030431b877c58c2219c99f5b78c32a5f5bde243e88e5113faf2a013e\
         26d42d673c2621966d21fdb4841d420d1349fca7634203df9e462f19fd68fc5322833e0a9501bfee0a4300"
    );
    assert_eq!(
        hex::encode(f.th),
        "fb12ec3fe83dba0c9bbd2b950712ecde6a6af2f96bd3be5302a8ac4e28b7de46"
    );
}

#[test]
fn sealed_frames_match_the_documented_layout() {
    let f = fixture();
    let (mut gateway, _) = f.keys.gateway();
    let (mut node, _) = f.keys.node();
    let accept = Message::Accept(Accept {
        boot_id: BOOT_ID,
        ack_upto: 0,
    });
    // ACCEPT, the gateway's first sealed message: counter 1.
    assert_eq!(
        hex::encode(sealed(&accept, &mut gateway)),
        "00070203010203040101010e01be07e93312af2a2e543b0e1100"
    );
    let ack = Message::Ack(Ack {
        boot_id: BOOT_ID,
        upto: 0x102,
    });
    // Counter 2.
    assert_eq!(
        hex::encode(sealed(&ack, &mut gateway)),
        "00090205010203040201010e02303bbb47b091a7857f70debf00"
    );
    let telemetry = Message::Telemetry(Telemetry {
        seq: 300,
        window_start: 290,
        age_ms: 1500,
        readings: [
            Reading {
                channel: ChannelId::TEMPERATURE,
                value: 2150,
            },
            Reading {
                channel: ChannelId::SEQ,
                value: 300,
            },
        ]
        .into_iter()
        .collect(),
    });
    // The node's first sealed message: counter 1.
    assert_eq!(
        hex::encode(sealed(&telemetry, &mut node)),
        "000b0204ac020adc0b0166080104042c01010e01653d95ec347321289a2322be00"
    );
}

#[test]
fn a_challenge_or_proof_from_another_handshake_does_not_verify() {
    let f = fixture();
    let node = SigningKey::from_bytes(&[0x22; 32]);
    // The node said HELLO again with a fresh ephemeral: the recorded CHALLENGE is for the old one.
    let fresh = Ephemeral::from_random([0x55; 32]);
    assert_eq!(
        node_answer(&node, UID, BOOT_ID, &fresh, &f.challenge, None).unwrap_err(),
        HandshakeError::BadSignature
    );
    // Another gateway key than the pinned one.
    let old_eph = Ephemeral::from_random([0x33; 32]);
    assert_eq!(
        node_answer(&node, UID, BOOT_ID, &old_eph, &f.challenge, Some(&[7; 32])).unwrap_err(),
        HandshakeError::UnknownGateway
    );
    // The gateway challenged again: the recorded PROOF is for the old challenge.
    let gateway = SigningKey::from_bytes(&[0x11; 32]);
    let (_, again) = GatewayHandshake::challenge(
        &gateway,
        &Ephemeral::from_random([0x66; 32]),
        &f.hello,
        &f.enroll.public_key,
    )
    .unwrap();
    assert_eq!(
        again.finish(&f.proof).unwrap_err(),
        HandshakeError::BadSignature
    );
    // A PROOF not signed by the key enrolled (a spoofed uid): the impostor signs with its own.
    let impostor = SigningKey::from_bytes(&[0x77; 32]);
    let impostor_proof = Proof {
        signature: ed25519_dalek::Signer::sign(&impostor, &f.th).to_bytes(),
        ..f.proof
    };
    let (_, handshake) = GatewayHandshake::challenge(
        &gateway,
        &Ephemeral::from_random([0x44; 32]),
        &f.hello,
        &f.enroll.public_key,
    )
    .unwrap();
    assert_eq!(
        handshake.finish(&impostor_proof).unwrap_err(),
        HandshakeError::BadSignature
    );
    assert!(handshake.finish(&f.proof).is_ok());
}

#[test]
fn a_low_order_ephemeral_is_refused() {
    let f = fixture();
    let gateway = SigningKey::from_bytes(&[0x11; 32]);
    let hello = Hello {
        ephemeral: [0; 32], // the identity point: the shared secret would be all zeros
        ..f.hello
    };
    assert_eq!(
        GatewayHandshake::challenge(
            &gateway,
            &Ephemeral::from_random([0x44; 32]),
            &hello,
            &f.enroll.public_key
        )
        .unwrap_err(),
        HandshakeError::WeakEphemeral
    );
}

/// What happens to one sealed frame on its way.
#[derive(Debug, Clone)]
enum Fate {
    Deliver,
    Drop,
    /// Delivered, then delivered again later (a replay, or a duplicate on the line).
    Duplicate,
    /// Delivered with one bit flipped (and the CRC recomputed: an attacker, not noise).
    Flip(usize, u8),
    /// Held back and delivered after the next one.
    Delay,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        6 => Just(Fate::Deliver),
        1 => Just(Fate::Drop),
        1 => Just(Fate::Duplicate),
        1 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Fate::Flip(at, bit)),
        1 => Just(Fate::Delay),
    ]
}

proptest! {
    /// Against drops, duplicates, delays and bit flips: every message taken is genuine, taken at
    /// most once, in increasing counter order; a flipped one is never taken; and after any of it
    /// the next frame delivered intact is taken again as long as fewer than 256 were lost.
    #[test]
    fn the_replay_window_takes_each_genuine_message_once_and_nothing_else(
        fates in vec(fate(), 1..300),
    ) {
        let f = fixture();
        let (mut sealer, _) = f.keys.node();
        let (_, mut opener) = f.keys.gateway();
        let mut line: Vec<(u32, Vec<u8>, bool)> = Vec::new(); // (seq, frame, genuine)
        let mut delayed: Option<(u32, Vec<u8>)> = None;
        for (i, fate) in fates.iter().enumerate() {
            let seq = i as u32 + 1;
            let m = Message::Ack(Ack { boot_id: 1, upto: seq });
            let frame = sealed(&m, &mut sealer);
            match fate {
                Fate::Deliver => line.push((seq, frame, true)),
                Fate::Drop => {}
                Fate::Duplicate => {
                    line.push((seq, frame.clone(), true));
                    line.push((seq, frame, true));
                }
                Fate::Flip(at, bit) => {
                    // Re-frame the message bytes with one bit flipped and a good CRC.
                    let mut raw = frame_body(&frame);
                    let i = at % raw.len();
                    raw[i] ^= 1 << bit;
                    let mut buf = [0u8; MAX_FRAME_LEN];
                    let n = encode_raw_frame(&raw, &mut buf).unwrap();
                    line.push((seq, buf[..n].to_vec(), false));
                }
                Fate::Delay => {
                    if let Some((s, fr)) = delayed.take() {
                        line.push((s, fr, true));
                    }
                    delayed = Some((seq, frame));
                    continue;
                }
            }
            if let Some((s, fr)) = delayed.take() {
                line.push((s, fr, true));
            }
        }
        let mut d = FrameDecoder::new();
        let mut last_taken = 0u32;
        for (seq, frame, genuine) in line {
            for received in frame.iter().filter_map(|&b| d.push(b)) {
                let Ok(received) = received else { continue };
                if let Ok(Message::Ack(ack)) = received.open(&mut opener) {
                    prop_assert!(genuine, "a tampered frame was taken");
                    prop_assert_eq!(ack.upto, seq);
                    prop_assert!(seq > last_taken, "taken twice or out of order");
                    last_taken = seq;
                }
            }
        }
        // The session still works: a fresh frame is taken.
        let m = Message::Ack(Ack { boot_id: 1, upto: 0 });
        let frame = sealed(&m, &mut sealer);
        let received = frame.iter().filter_map(|&b| d.push(b)).next().unwrap().unwrap();
        prop_assert!(received.open(&mut opener).is_ok());
    }
}

/// The message bytes inside a frame (COBS decoded, CRC removed).
fn frame_body(frame: &[u8]) -> Vec<u8> {
    let mut encoded = frame[1..frame.len() - 1].to_vec();
    let n = outpost_proto::cobs::decode_in_place(&mut encoded).unwrap();
    encoded.truncate(n - 4);
    encoded
}

#[test]
fn a_replayed_frame_is_told_apart_from_a_forged_one() {
    let f = fixture();
    let (mut sealer, _) = f.keys.node();
    let (_, mut opener) = f.keys.gateway();
    let first = sealed(
        &Message::Ack(Ack {
            boot_id: 1,
            upto: 1,
        }),
        &mut sealer,
    );
    let second = sealed(
        &Message::Ack(Ack {
            boot_id: 1,
            upto: 2,
        }),
        &mut sealer,
    );
    let open = |frame: &[u8], opener: &mut Opener| {
        let mut d = FrameDecoder::new();
        let received = frame
            .iter()
            .filter_map(|&b| d.push(b))
            .next()
            .unwrap()
            .unwrap();
        received.open(opener).map(|_| ())
    };
    assert_eq!(open(&first, &mut opener), Ok(()));
    assert_eq!(open(&second, &mut opener), Ok(()));
    assert_eq!(open(&first, &mut opener), Err(AuthError::Replayed));
    assert_eq!(open(&second, &mut opener), Err(AuthError::Replayed));
    // Another session's frame: forged, whatever its counter.
    let (mut other, _) = SessionKeysFromAnotherHandshake::keys().node();
    let _ = sealed(
        &Message::Ack(Ack {
            boot_id: 1,
            upto: 3,
        }),
        &mut other,
    );
    let third = sealed(
        &Message::Ack(Ack {
            boot_id: 1,
            upto: 3,
        }),
        &mut other,
    );
    assert_eq!(open(&third, &mut opener), Err(AuthError::Forged));
}

struct SessionKeysFromAnotherHandshake;

impl SessionKeysFromAnotherHandshake {
    fn keys() -> SessionKeys {
        let f = fixture();
        let gateway = SigningKey::from_bytes(&[0x11; 32]);
        let node = SigningKey::from_bytes(&[0x22; 32]);
        let node_eph = Ephemeral::from_random([0x99; 32]);
        let hello = Hello {
            ephemeral: node_eph.public(),
            ..f.hello
        };
        let (challenge, _) = GatewayHandshake::challenge(
            &gateway,
            &Ephemeral::from_random([0x98; 32]),
            &hello,
            &f.enroll.public_key,
        )
        .unwrap();
        node_answer(&node, UID, BOOT_ID, &node_eph, &challenge, None)
            .unwrap()
            .1
    }
}
