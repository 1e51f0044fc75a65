use outpost_proto::{ChannelId, Enroll, FwVersion, Reading, Telemetry};
use proptest::prelude::*;

use super::*;

fn hello(boot_id: u32) -> Hello {
    Hello {
        uid: [9; 8],
        hw_rev: 1,
        fw: FwVersion {
            major: 1,
            minor: 0,
            patch: 0,
        },
        boot_id,
        lot: heapless::String::new(),
        channels: [ChannelId::SEQ].into_iter().collect(),
    }
}

fn frame(m: &Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode_frame(m, &mut buf).unwrap();
    buf[..n].to_vec()
}

fn telemetry(seq: u32, window_start: u32) -> Vec<u8> {
    frame(&Message::Telemetry(Telemetry {
        seq,
        window_start,
        age_ms: 250,
        readings: [Reading {
            channel: ChannelId::SEQ,
            value: seq as i32,
        }]
        .into_iter()
        .collect(),
    }))
}

fn sent(session: &mut PortSession) -> Vec<Message> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    while let Some(n) = session.poll_transmit(&mut buf) {
        out.extend(
            buf[..n]
                .iter()
                .filter_map(|&b| decoder.push(b))
                .map(Result::unwrap),
        );
    }
    out
}

fn actions(session: &mut PortSession) -> Vec<Action> {
    std::iter::from_fn(|| session.poll_action()).collect()
}

/// A session with node 42, boot 7 attached, resuming after `ack_upto`.
fn attached(ack_upto: u32) -> PortSession {
    let mut s = PortSession::new("/dev/ttyACM0", 1000, Millis(0));
    let mut bytes = frame(&Message::Hello(hello(7)));
    bytes.extend(frame(&Message::Enroll(Enroll {
        uid: [9; 8],
        public_key: [1; 32],
    })));
    s.handle_bytes(Millis(0), 0, &bytes);
    assert!(matches!(
        actions(&mut s).as_slice(),
        [Action::Register { .. }]
    ));
    s.handle_registered(
        &hello(7),
        Some(Registered {
            node_id: 42,
            ack_upto,
        }),
    );
    assert_eq!(
        sent(&mut s),
        vec![Message::Accept(Accept {
            boot_id: 7,
            ack_upto
        })]
    );
    s
}

#[test]
fn admission_keeps_each_boot_contiguous() {
    assert_eq!(admit(None, 1, 1), Admission::Next);
    assert_eq!(admit(None, 5, 5), Admission::AfterGap { lost: 4 });
    assert_eq!(admit(None, 5, 3), Admission::Stale);
    assert_eq!(admit(Some(4), 5, 1), Admission::Next);
    assert_eq!(admit(Some(4), 4, 1), Admission::Stale);
    assert_eq!(admit(Some(4), 6, 1), Admission::Stale);
    assert_eq!(admit(Some(4), 9, 9), Admission::AfterGap { lost: 4 });
}

#[test]
fn telemetry_before_hello_is_ignored_until_the_node_registers() {
    let mut s = PortSession::new("p", 1000, Millis(0));
    s.handle_bytes(Millis(0), 0, &telemetry(1, 1));
    assert!(actions(&mut s).is_empty());
    assert!(sent(&mut s).is_empty());
}

#[test]
fn samples_go_to_the_store_and_are_acked_only_after_commit() {
    let mut s = attached(0);
    let mut bytes = telemetry(1, 1);
    bytes.extend(telemetry(2, 1));
    s.handle_bytes(Millis(10), 1_000_000, &bytes);
    let got = actions(&mut s);
    let [
        Action::Ingest {
            node_id: 42,
            boot_id: 7,
            samples,
        },
    ] = got.as_slice()
    else {
        panic!("{got:?}")
    };
    assert_eq!(
        samples.iter().map(|s| (s.seq, s.ts_ms)).collect::<Vec<_>>(),
        vec![(1, 999_750), (2, 999_750)]
    );
    assert!(sent(&mut s).is_empty(), "no ACK before the commit");
    s.handle_committed(42, 7, 2, 0);
    assert_eq!(
        sent(&mut s),
        vec![Message::Ack(Ack {
            boot_id: 7,
            upto: 2
        })]
    );
}

#[test]
fn a_resent_sample_already_committed_is_acked_again_not_stored() {
    let mut s = attached(5);
    s.handle_bytes(Millis(10), 0, &telemetry(5, 1));
    assert!(actions(&mut s).is_empty());
    assert_eq!(
        sent(&mut s),
        vec![Message::Ack(Ack {
            boot_id: 7,
            upto: 5
        })]
    );
    assert_eq!(s.counters().duplicates, 1);
}

#[test]
fn after_a_failed_commit_the_resent_samples_are_taken_again() {
    let mut s = attached(0);
    s.handle_bytes(Millis(10), 0, &telemetry(1, 1));
    assert_eq!(actions(&mut s).len(), 1);
    s.handle_commit_failed(42, 7);
    assert!(sent(&mut s).is_empty());
    s.handle_bytes(Millis(1010), 0, &telemetry(1, 1));
    assert!(
        matches!(actions(&mut s).as_slice(), [Action::Ingest { samples, .. }] if samples[0].seq == 1)
    );
}

#[test]
fn garbage_on_the_line_is_counted_against_the_node_and_the_next_frame_decodes() {
    let mut s = attached(0);
    // A burst of noise, a delimiter inside it, then a stray byte right before the frame:
    // two broken frames, and the real one after them.
    let mut bytes = vec![0x13, 0x37, 0xff, 0x00, 0x42];
    bytes.extend(telemetry(1, 1));
    s.handle_bytes(Millis(10), 0, &bytes);
    let got = actions(&mut s);
    assert!(
        got.iter()
            .any(|a| matches!(a, Action::Ingest { samples, .. } if samples[0].seq == 1))
    );
    assert!(got.iter().any(|a| matches!(
        a,
        Action::LinkErrors {
            node_id: 42,
            count: 2
        }
    )));
    assert_eq!(s.counters().frame_errors, 2);
}

#[test]
fn a_flooding_node_is_held_to_its_frame_rate() {
    let mut s = PortSession::new("p", 50, Millis(0));
    let bytes: Vec<u8> = (1..=500).flat_map(|i| telemetry(i, 1)).collect();
    s.handle_bytes(Millis(0), 0, &bytes);
    // The burst allowance (at least 32 frames) passes, the rest waits for the node to resend.
    assert_eq!(s.counters().rate_limited, 500 - 50);
}

#[test]
fn a_hello_of_the_same_boot_is_answered_with_where_it_stands() {
    let mut s = attached(0);
    s.handle_bytes(Millis(10), 0, &telemetry(1, 1));
    actions(&mut s);
    s.handle_committed(42, 7, 1, 0);
    sent(&mut s);
    s.handle_bytes(Millis(20), 0, &frame(&Message::Hello(hello(7))));
    assert_eq!(
        sent(&mut s),
        vec![Message::Accept(Accept {
            boot_id: 7,
            ack_upto: 1
        })]
    );
}

#[test]
fn a_refused_node_gets_no_accept() {
    let mut s = PortSession::new("p", 1000, Millis(0));
    let mut bytes = frame(&Message::Hello(hello(7)));
    bytes.extend(frame(&Message::Enroll(Enroll {
        uid: [9; 8],
        public_key: [1; 32],
    })));
    s.handle_bytes(Millis(0), 0, &bytes);
    actions(&mut s);
    s.handle_registered(&hello(7), None);
    assert!(sent(&mut s).is_empty());
    s.handle_bytes(Millis(10), 0, &telemetry(1, 1));
    assert!(actions(&mut s).is_empty());
    assert_eq!(s.counters().refused, 1);
}

proptest! {
    /// Whatever the line does to the node's frames (loss, duplication, reordering), what the
    /// session hands to the store is contiguous and free of duplicates.
    #[test]
    fn handed_over_samples_stay_contiguous_under_any_delivery_order(
        deliveries in proptest::collection::vec(1u32..40, 0..200),
    ) {
        let mut s = attached(0);
        let mut stored: Vec<u32> = Vec::new();
        for seq in deliveries {
            s.handle_bytes(Millis(0), 0, &telemetry(seq, 1));
            for action in actions(&mut s) {
                if let Action::Ingest { samples, .. } = action {
                    stored.extend(samples.iter().map(|s| s.seq));
                }
            }
        }
        let expected: Vec<u32> = (1..=stored.len() as u32).collect();
        prop_assert_eq!(stored, expected);
    }
}
