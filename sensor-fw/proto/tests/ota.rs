//! The firmware update messages and the bulk frame class: byte by byte as docs/node-link.md
//! documents them (fixtures), and bounded, allocation-free decoding of anything (properties).

use outpost_proto::frame::{
    MAX_BULK_FRAME_LEN, MAX_FRAME_LEN, encode_raw_frame, encode_sealed_bulk,
};
use outpost_proto::wire::{MAX_BULK_MESSAGE_LEN, MAX_CHUNK_LEN, MAX_MANIFEST_LEN};
use outpost_proto::*;
use proptest::collection::vec;
use proptest::prelude::*;

mod common;
use common::fixture;

const IMAGE: ImageTag = ImageTag([0xde, 0xad, 0xbe, 0xef]);

fn sealed(m: &Message, sealer: &mut Sealer) -> String {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode_sealed_frame(m, sealer, &mut buf).unwrap();
    hex::encode(&buf[..n])
}

fn sealed_bulk(b: &Bulk<'_>, sealer: &mut Sealer) -> Vec<u8> {
    let mut buf = [0u8; MAX_BULK_FRAME_LEN];
    let n = encode_sealed_bulk(b, sealer, &mut buf).unwrap();
    buf[..n].to_vec()
}

/// Every frame `bytes` holds, as a node's decoder gives them, bulk ones opened.
fn node_receives(bytes: &[u8], opener: &mut Opener) -> Vec<Result<String, FrameError>> {
    let mut decoder = BulkFrameDecoder::bulk();
    let mut out = Vec::new();
    for &b in bytes {
        match decoder.push_any(b) {
            None => {}
            Some(Ok(AnyFrame::Bulk(bulk))) => out.push(Ok(format!("{:?}", bulk.open(opener)))),
            Some(Ok(AnyFrame::Small(small))) => out.push(Ok(format!("{:?}", small.open(opener)))),
            Some(Err(e)) => out.push(Err(e)),
        }
    }
    out
}

#[test]
fn ota_frames_match_the_documented_layout() {
    let f = fixture();
    let (mut gateway, _) = f.keys.gateway();
    let (mut node, _) = f.keys.node();
    // docs/node-link.md "Firmware updates": the gateway's first four sealed messages.
    let offer = Bulk::Offer(OtaOffer {
        image: IMAGE,
        chunk: ChunkSize::B1024,
        manifest: b"outpost-manifest 2\n",
    });
    assert_eq!(
        hex::encode(sealed_bulk(&offer, &mut gateway)),
        "0009020cdeadbeef0113216f7574706f73742d6d616e696665737420320a011666cdd88a1fb1f5388a15d900"
    );
    let chunk = Bulk::Chunk(OtaChunk {
        image: IMAGE,
        index: 0x0102,
        data: &[0, 1, 2, 3, 0, 0, 0xff],
    });
    assert_eq!(
        hex::encode(sealed_bulk(&chunk, &mut gateway)),
        "0009020ddeadbeef020104010203010fff02745ead24ca49df68526acc7000"
    );
    let install = Message::OtaControl(OtaControl {
        image: IMAGE,
        op: OtaOp::Install,
        arg: 90,
    });
    assert_eq!(
        sealed(&install, &mut gateway),
        "0009020fdeadbeef025a0e03aebc9681bcc40e979853162100"
    );
    let status = Message::OtaStatus(OtaStatus {
        image: IMAGE,
        phase: OtaPhase::Receiving,
        detail: 0,
        flashed: 4,
        have: 0b1011,
        credit: 32,
        chunk: ChunkSize::B1024,
        floor: FwVersion {
            major: 1,
            minor: 2,
            patch: 0,
        },
    });
    // The node's first sealed message: counter 1.
    assert_eq!(
        sealed(&status, &mut node),
        "0008020edeadbeef010204020b0101010101010220040101020e011b038c27f1d39f0efed908f400"
    );
}

#[test]
fn a_full_chunk_fills_the_largest_bulk_frame_and_nothing_larger_is_sent() {
    let f = fixture();
    let (mut gateway, _) = f.keys.gateway();
    let (_, mut opener) = f.keys.node();
    // No zero byte anywhere: COBS's worst case, one extra byte per 254.
    let data = [0x5a; MAX_CHUNK_LEN];
    let chunk = Bulk::Chunk(OtaChunk {
        image: IMAGE,
        index: 255,
        data: &data,
    });
    let frame = sealed_bulk(&chunk, &mut gateway);
    assert!(frame.len() <= MAX_BULK_FRAME_LEN);
    assert_eq!(MAX_BULK_FRAME_LEN, 1052);
    let received = node_receives(&frame, &mut opener);
    assert_eq!(
        received,
        vec![Ok(format!("{:?}", Ok::<_, AuthError>(chunk)))]
    );

    let too_long = [0x5a; MAX_CHUNK_LEN + 1];
    let mut buf = [0u8; 2 * MAX_BULK_FRAME_LEN];
    let chunk = Bulk::Chunk(OtaChunk {
        image: IMAGE,
        index: 0,
        data: &too_long,
    });
    assert!(encode_sealed_bulk(&chunk, &mut gateway, &mut buf).is_err());
    let manifest = [b'm'; MAX_MANIFEST_LEN + 1];
    let offer = Bulk::Offer(OtaOffer {
        image: IMAGE,
        chunk: ChunkSize::B512,
        manifest: &manifest,
    });
    assert!(encode_sealed_bulk(&offer, &mut gateway, &mut buf).is_err());
}

#[test]
fn the_gateways_decoder_takes_no_bulk_frame_and_loses_no_frame_after_one() {
    let f = fixture();
    let (mut gateway, _) = f.keys.gateway();
    let short = Bulk::Chunk(OtaChunk {
        image: IMAGE,
        index: 0,
        data: &[1, 2, 3],
    });
    let long = Bulk::Chunk(OtaChunk {
        image: IMAGE,
        index: 1,
        data: &[7; 600],
    });
    let ack = Message::Ack(Ack {
        boot_id: 1,
        upto: 2,
    });
    let mut line = sealed_bulk(&short, &mut gateway);
    line.extend(sealed_bulk(&long, &mut gateway));
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode_sealed_frame(&ack, &mut gateway, &mut buf).unwrap();
    line.extend(&buf[..n]);

    let mut decoder = FrameDecoder::new();
    let out: Vec<_> = line
        .iter()
        .filter_map(|&b| decoder.push(b))
        .map(|r| r.map(Received::into_unverified))
        .collect();
    assert_eq!(
        out,
        vec![
            Err(FrameError::Malformed(DecodeError::Misplaced(0x0d))),
            Err(FrameError::Oversize),
            Ok(ack),
        ]
    );
    assert_eq!(decoder.counters().errors, 2);
}

#[test]
fn a_small_type_longer_than_a_small_message_is_refused_by_the_bulk_decoder() {
    // A HEALTH padded to 200 bytes fits a node's buffer but no HEALTH is that long.
    let mut message = vec![PROTOCOL_VERSION, 0x06];
    message.resize(200, 0x33);
    let mut buf = [0u8; MAX_BULK_FRAME_LEN];
    let n = encode_raw_frame(&message, &mut buf).unwrap();
    let mut decoder = BulkFrameDecoder::bulk();
    let out: Vec<_> = buf[..n]
        .iter()
        .filter_map(|&b| decoder.push_any(b).map(|r| r.map(|_| ())))
        .collect();
    assert_eq!(out, vec![Err(FrameError::Malformed(DecodeError::TooLong))]);
}

#[test]
fn bad_field_values_are_refused() {
    let with = |bytes: &[u8]| Message::parse(bytes);
    // OTA_STATUS with phase 8, OTA_CONTROL with op 0 and op 5.
    let mut status = vec![PROTOCOL_VERSION, 0x0e, 0, 0, 0, 0, 8];
    status.resize(2 + 22, 0);
    assert_eq!(with(&status), Err(DecodeError::BadValue));
    assert_eq!(
        with(&[PROTOCOL_VERSION, 0x0f, 0, 0, 0, 0, 0, 0, 0]),
        Err(DecodeError::BadValue)
    );
    assert_eq!(
        with(&[PROTOCOL_VERSION, 0x0f, 0, 0, 0, 0, 5, 0, 0]),
        Err(DecodeError::BadValue)
    );
    // A chunk with no data; an offer with chunk code 2; an offer whose manifest is longer than
    // its bytes.
    assert_eq!(
        Bulk::parse(&[PROTOCOL_VERSION, 0x0d, 0, 0, 0, 0, 1, 0]),
        Err(DecodeError::BadValue)
    );
    assert_eq!(
        Bulk::parse(&[PROTOCOL_VERSION, 0x0c, 0, 0, 0, 0, 2, 0, 0]),
        Err(DecodeError::BadValue)
    );
    assert_eq!(
        Bulk::parse(&[PROTOCOL_VERSION, 0x0c, 0, 0, 0, 0, 1, 3, 0, b'a']),
        Err(DecodeError::Truncated)
    );
    // A bulk type through the small parser.
    assert_eq!(
        with(&[PROTOCOL_VERSION, 0x0c]),
        Err(DecodeError::Misplaced(0x0c))
    );
}

fn bulk_parts() -> impl Strategy<Value = (bool, [u8; 4], u16, Vec<u8>)> {
    (
        any::<bool>(),
        any::<[u8; 4]>(),
        any::<u16>(),
        prop_oneof![
            vec(any::<u8>(), 1..=MAX_MANIFEST_LEN),
            // Firmware is full of zero runs and 0xff fill.
            vec(
                prop_oneof![Just(0u8), Just(0xff), any::<u8>()],
                1..=MAX_CHUNK_LEN
            ),
        ],
    )
}

fn bulk_of((offer, image, index, bytes): &(bool, [u8; 4], u16, Vec<u8>)) -> Bulk<'_> {
    if *offer && bytes.len() <= MAX_MANIFEST_LEN {
        Bulk::Offer(OtaOffer {
            image: ImageTag(*image),
            chunk: if index % 2 == 0 {
                ChunkSize::B512
            } else {
                ChunkSize::B1024
            },
            manifest: bytes,
        })
    } else {
        Bulk::Chunk(OtaChunk {
            image: ImageTag(*image),
            index: *index,
            data: bytes,
        })
    }
}

proptest! {
    #[test]
    fn every_bulk_message_round_trips_sealed_through_a_nodes_decoder(
        parts in vec(bulk_parts(), 1..4)
    ) {
        let f = fixture();
        let (mut gateway, _) = f.keys.gateway();
        let (_, mut opener) = f.keys.node();
        let mut line = Vec::new();
        for p in &parts {
            let frame = sealed_bulk(&bulk_of(p), &mut gateway);
            prop_assert!(frame.len() <= MAX_BULK_FRAME_LEN);
            line.extend(frame);
        }
        let received = node_receives(&line, &mut opener);
        let expected: Vec<_> = parts
            .iter()
            .map(|p| Ok(format!("{:?}", Ok::<_, AuthError>(bulk_of(p)))))
            .collect();
        prop_assert_eq!(received, expected);
    }

    #[test]
    fn every_bulk_message_parsed_is_emitted_back_to_the_same_bytes(
        bytes in vec(any::<u8>(), 0..MAX_BULK_MESSAGE_LEN)
    ) {
        if let Ok(bulk) = Bulk::parse(&bytes) {
            let mut out = vec![0u8; bulk.buffer_len()];
            prop_assert_eq!(bulk.emit(&mut out), Ok(bytes.len()));
            prop_assert_eq!(out, bytes);
        }
    }

    #[test]
    fn garbage_never_panics_a_nodes_decoder_and_the_next_frame_decodes(
        garbage in vec(any::<u8>(), 0..3000),
        part in bulk_parts(),
    ) {
        let f = fixture();
        let (mut gateway, _) = f.keys.gateway();
        let (_, mut opener) = f.keys.node();
        let mut line = garbage;
        line.extend(sealed_bulk(&bulk_of(&part), &mut gateway));
        let received = node_receives(&line, &mut opener);
        let expected = Ok(format!("{:?}", Ok::<_, AuthError>(bulk_of(&part))));
        prop_assert_eq!(received.last(), Some(&expected));
    }

    #[test]
    fn a_changed_byte_in_a_bulk_frame_never_opens(
        part in bulk_parts(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let f = fixture();
        let (mut gateway, _) = f.keys.gateway();
        let (_, mut opener) = f.keys.node();
        let mut frame = sealed_bulk(&bulk_of(&part), &mut gateway);
        let i = 1 + at.index(frame.len() - 2);
        frame[i] ^= flip;
        let expected = Ok(format!("{:?}", Ok::<_, AuthError>(bulk_of(&part))));
        prop_assert!(!node_receives(&frame, &mut opener).contains(&expected));
    }
}
