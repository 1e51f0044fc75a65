//! Line noise on purpose, for testing the gateway's decoder and the link's recovery
//! (`--inject-garbage-every`).

use outpost_proto::frame::encode_raw_frame;
use outpost_proto::frame::{MAX_ENCODED_LEN, MAX_FRAME_LEN};
use outpost_proto::wire::{MAX_MESSAGE_LEN, SEAL_LEN};
use outpost_proto::{Message, Telemetry};
use rand::Rng;
use rand::rngs::SmallRng;

/// One burst of everything a noisy line does, in this order: random bytes (which may contain
/// delimiters), a frame cut off in the middle, and a run without any delimiter that is longer
/// than any valid frame. The burst ends without a delimiter: the next real frame's leading
/// `0x00` ends it, so a receiver counts errors and loses no real frame.
pub(crate) fn garbage_burst(rng: &mut SmallRng) -> Vec<u8> {
    let mut burst: Vec<u8> = (0..rng.random_range(8..64)).map(|_| rng.random()).collect();

    let victim = Message::Telemetry(Telemetry {
        seq: rng.random(),
        window_start: 0,
        age_ms: 0,
        readings: heapless::Vec::new(),
    });
    // A TELEMETRY with a seal of random bytes: it is cut off, so it never reaches a seal check.
    let mut message = [0u8; MAX_MESSAGE_LEN];
    let mut frame = [0u8; MAX_FRAME_LEN];
    if let Ok(len) = victim.emit(&mut message) {
        rng.fill(&mut message[len..len + SEAL_LEN]);
        let len = encode_raw_frame(&message[..len + SEAL_LEN], &mut frame).unwrap_or(0);
        // Keep the leading delimiter and at least one byte, drop at least the trailing one.
        let cut = rng.random_range(2..len - 1);
        burst.extend_from_slice(&frame[..cut]);
    }
    burst.push(0);

    let run = MAX_ENCODED_LEN + rng.random_range(1..64);
    burst.extend((0..run).map(|_| rng.random_range(1..=255u8)));
    burst
}

/// Flips one bit inside a frame's body (never a delimiter), as a noisy line does: the receiver
/// drops the frame on its CRC and the node has to send it again.
pub(crate) fn damage(frame: &mut [u8], rng: &mut SmallRng) {
    if frame.len() > 2 {
        let at = rng.random_range(1..frame.len() - 1);
        frame[at] ^= 1 << rng.random_range(0..8);
    }
}

#[cfg(test)]
mod tests {
    use outpost_proto::{Enroll, FrameDecoder, encode_frame};
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_burst_costs_errors_but_never_the_next_frame() {
        let mut rng = SmallRng::seed_from_u64(9);
        let ack = Message::Enroll(Enroll {
            uid: [1; 8],
            public_key: [2; 32],
        });
        let mut frame = [0u8; MAX_FRAME_LEN];
        let len = encode_frame(&ack, &mut frame).unwrap();
        for _ in 0..200 {
            let mut decoder = FrameDecoder::new();
            let mut decoded = Vec::new();
            let stream = garbage_burst(&mut rng)
                .into_iter()
                .chain(frame[..len].to_vec());
            for byte in stream {
                if let Some(Ok(m)) = decoder.push(byte) {
                    decoded.push(m.into_unverified());
                }
            }
            assert_eq!(decoded, vec![ack.clone()]);
            // At least the truncated frame and the over-long run.
            assert!(decoder.counters().errors >= 2);
        }
    }
}
