//! The node's side of the node-link handshake and of one sealed frame, on a Cortex-M0+.
//!
//! Bare metal, no runtime: `emu/run.js` loads this ELF into the RP2040's SRAM under rp2040js,
//! sets the stack and jumps to `_start`; each `bkpt #n` marks a point and the runner records the
//! core's cycle count there. What is counted between two marks is documented at each mark and in
//! `README.md`. The keys are those of the fixture in `sensor-fw/proto/tests/handshake.rs`, so the
//! PROOF's signature is checked against the documented one (mark 99 hands it to the runner).

#![no_std]
#![no_main]

use core::arch::asm;
use core::hint::black_box;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use outpost_proto::frame::{MAX_FRAME_LEN, encode_raw_frame};
use outpost_proto::session::{Ephemeral, GatewayHandshake, node_answer};
use outpost_proto::{
    Ack, ChannelId, FrameDecoder, Hello, Message, Reading, Telemetry, encode_sealed_frame,
};
use x25519_dalek::{PublicKey, StaticSecret};

const UID: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const BOOT_ID: u32 = 0x0403_0201;

/// Marks point `$n` for the runner; `$arg` goes in r0 (the runner may read it).
macro_rules! mark {
    ($n:literal) => {
        mark!($n, 0usize)
    };
    ($n:literal, $arg:expr) => {
        // SAFETY: a breakpoint the runner services; it touches no register but PC.
        #[allow(unsafe_code)]
        unsafe {
            asm!(concat!("bkpt #", $n), in("r0") $arg)
        }
    };
}

static mut PROOF_SIGNATURE: [u8; 64] = [0; 64];

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
pub extern "C" fn _start() -> ! {
    // Boot, once per power-up (not per handshake): the node's Ed25519 key from its secret.
    mark!(1);
    let node = SigningKey::from_bytes(black_box(&[0x22; 32]));
    mark!(2, &node as *const _ as usize);

    // HELLO: a fresh X25519 ephemeral (one fixed-base scalar multiplication).
    mark!(3);
    let ephemeral = Ephemeral::from_random(black_box([0x33; 32]));
    mark!(4, &ephemeral as *const _ as usize);

    // The gateway's CHALLENGE to that HELLO (gateway work: not counted for the node).
    let gateway = SigningKey::from_bytes(&[0x11; 32]);
    let hello = Hello {
        uid: UID,
        hw_rev: 2,
        fw: Default::default(),
        boot_id: BOOT_ID,
        lot: heapless::String::new(),
        channels: heapless::Vec::new(),
        ephemeral: ephemeral.public(),
    };
    let node_key = node.verifying_key().to_bytes();
    let Ok((challenge, handshake)) = GatewayHandshake::challenge(
        &gateway,
        &Ephemeral::from_random([0x44; 32]),
        &hello,
        &node_key,
    ) else {
        fail()
    };
    let challenge = black_box(challenge);

    // CHALLENGE → PROOF: transcript hash, Ed25519 verify (strict) of the gateway's signature,
    // X25519 agreement, HKDF, Ed25519 sign.
    mark!(5);
    let answer = node_answer(&node, UID, BOOT_ID, &ephemeral, &challenge, None);
    mark!(6, &answer as *const _ as usize);
    let Ok((proof, keys)) = answer else { fail() };
    if handshake.finish(&proof).as_ref() != Ok(&keys) {
        fail();
    }

    // The primitives one at a time (same inputs).
    let secret = StaticSecret::from(black_box([0x33; 32]));
    mark!(10);
    let public = PublicKey::from(black_box(&secret));
    mark!(11, &public as *const _ as usize);
    let shared = black_box(&secret).diffie_hellman(&PublicKey::from(challenge.ephemeral));
    mark!(12, &shared as *const _ as usize);
    let Ok(gateway_key) = VerifyingKey::from_bytes(&challenge.gateway_key) else {
        fail()
    };
    let message = black_box([0x5a_u8; 51]); // a role label (19..22 bytes) ‖ th (32 bytes)
    let signature = gateway.sign(&message);
    mark!(13);
    let verified = black_box(&gateway_key).verify_strict(&message, black_box(&signature));
    mark!(14, &verified as *const _ as usize);
    let signed: Signature = black_box(&node).sign(&message);
    mark!(15, &signed as *const _ as usize);
    if verified.is_err() {
        fail();
    }

    // One TELEMETRY of the simulator's four channels, framed: sealed (emit, counter, HMAC tag,
    // CRC, COBS) and, for comparison, the same message bytes framed without a seal.
    let (mut sealer, _) = keys.node();
    let (mut gateway_sealer, _) = keys.gateway();
    let (_, mut opener) = keys.node();
    let telemetry = Message::Telemetry(Telemetry {
        seq: 4_000,
        window_start: 3_990,
        age_ms: 40,
        readings: [
            (ChannelId::TEMPERATURE, 2_150),
            (ChannelId::HUMIDITY, 4_520),
            (ChannelId::PRESSURE, 101_325),
            (ChannelId::SEQ, 4_000),
        ]
        .into_iter()
        .map(|(channel, value)| Reading { channel, value })
        .collect(),
    });
    let mut out = [0u8; MAX_FRAME_LEN];
    let mut raw = [0u8; MAX_FRAME_LEN];
    mark!(20);
    let sealed = encode_sealed_frame(black_box(&telemetry), &mut sealer, &mut out);
    mark!(21, &sealed as *const _ as usize);
    mark!(22);
    let clear = black_box(&telemetry)
        .emit(&mut raw)
        .map(|n| encode_raw_frame(&raw[..n], &mut out));
    mark!(23, &clear as *const _ as usize);

    // Receiving an ACK: decode the frame byte by byte (COBS, CRC) and open its seal.
    let ack = Message::Ack(Ack {
        boot_id: BOOT_ID,
        upto: 4_000,
    });
    let Ok(n) = encode_sealed_frame(&ack, &mut gateway_sealer, &mut out) else {
        fail()
    };
    let mut decoder = FrameDecoder::new();
    mark!(24);
    let mut opened = None;
    for &byte in black_box(&out[..n]) {
        if let Some(Ok(received)) = decoder.push(byte) {
            opened = Some(received.open(&mut opener));
        }
    }
    mark!(25, &opened as *const _ as usize);
    if !matches!(opened, Some(Ok(Message::Ack(_)))) {
        fail();
    }

    // SAFETY: single-threaded, no interrupt touches it.
    #[allow(unsafe_code)]
    let signature = unsafe {
        let at = &raw mut PROOF_SIGNATURE;
        (*at).copy_from_slice(&proof.signature);
        at as usize
    };
    mark!(99, signature);
    loop {
        core::hint::spin_loop();
    }
}

fn fail() -> ! {
    mark!(98);
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    fail()
}
