//! The documented handshake of docs/node-link.md, every key from fixed bytes: the session the
//! fixture tests seal their frames with.

#![allow(dead_code)] // each test file uses its own part

use ed25519_dalek::SigningKey;
use outpost_proto::session::{Ephemeral, GatewayHandshake, Transcript, node_answer};
use outpost_proto::*;

pub(crate) const UID: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
pub(crate) const BOOT_ID: u32 = 0x0403_0201;

pub(crate) struct Fixture {
    pub(crate) hello: Hello,
    pub(crate) enroll: Enroll,
    pub(crate) challenge: Challenge,
    pub(crate) proof: Proof,
    pub(crate) th: [u8; 32],
    pub(crate) keys: SessionKeys,
}

/// The documented handshake: every key from fixed bytes.
pub(crate) fn fixture() -> Fixture {
    let gateway = SigningKey::from_bytes(&[0x11; 32]);
    let node = SigningKey::from_bytes(&[0x22; 32]);
    let node_eph = Ephemeral::from_random([0x33; 32]);
    let gateway_eph = Ephemeral::from_random([0x44; 32]);
    let hello = Hello {
        uid: UID,
        hw_rev: 2,
        fw: FwVersion {
            major: 1,
            minor: 4,
            patch: 0,
        },
        boot_id: BOOT_ID,
        lot: heapless::String::try_from("L7").unwrap(),
        channels: [ChannelId::TEMPERATURE, ChannelId::SEQ]
            .into_iter()
            .collect(),
        ephemeral: node_eph.public(),
    };
    let enroll = Enroll {
        uid: UID,
        public_key: node.verifying_key().to_bytes(),
    };
    let (challenge, handshake) =
        GatewayHandshake::challenge(&gateway, &gateway_eph, &hello, &enroll.public_key).unwrap();
    let (proof, keys) = node_answer(&node, UID, BOOT_ID, &node_eph, &challenge, None).unwrap();
    let th = Transcript {
        uid: UID,
        boot_id: BOOT_ID,
        node_key: enroll.public_key,
        node_ephemeral: node_eph.public(),
        gateway_key: gateway.verifying_key().to_bytes(),
        gateway_ephemeral: gateway_eph.public(),
    }
    .hash();
    assert_eq!(handshake.transcript().hash(), th);
    assert_eq!(handshake.finish(&proof).unwrap(), keys);
    Fixture {
        hello,
        enroll,
        challenge,
        proof,
        th,
        keys,
    }
}
