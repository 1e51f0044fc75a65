use outpost_proto::session::node_answer;
use outpost_proto::{Challenge, ChannelId, Enroll, FwVersion, Reading, ResetReason, Telemetry};
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;

use super::*;
use crate::node_request::{NodeAnswer, NodeRequest, NodeRequestError};

/// The gateway's node-link key in these tests.
fn secrets() -> LinkSecrets {
    LinkSecrets {
        signing_key: SigningKey::from_bytes(&[0xCD; 32]),
        entropy: [0x5E; 32],
    }
}

fn session(port: &str, max_frames_per_sec: u32, now: Millis) -> PortSession {
    PortSession::new(port, max_frames_per_sec, secrets(), now)
}

/// A node's Ed25519 key from one byte.
fn node_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

thread_local! {
    /// The session keys of the node the test speaks for (each test runs on its own thread):
    /// `telemetry`, `health` and friends seal with them, `sent` opens with them.
    static NODE: RefCell<Option<(Sealer, Opener)>> = const { RefCell::new(None) };
}

fn install(keys: &SessionKeys) {
    NODE.with(|n| *n.borrow_mut() = Some(keys.node()));
}

/// A message from the node the test speaks for, sealed with its session.
fn sealed(m: &Message) -> Vec<u8> {
    NODE.with(|n| {
        let mut n = n.borrow_mut();
        let (sealer, _) = n.as_mut().expect("no node session installed");
        let mut buf = [0u8; MAX_FRAME_LEN];
        let len = encode_sealed_frame(m, sealer, &mut buf).unwrap();
        buf[..len].to_vec()
    })
}

/// HELLO + ENROLL for `uid`/`boot_id` with the key from `key`, then the PROOF to the gateway's
/// CHALLENGE. The node's session keys, if the gateway challenged it.
fn handshake(s: &mut PortSession, now: Millis, hello: Hello, key: u8) -> Option<SessionKeys> {
    let ephemeral = Ephemeral::from_random([hello.boot_id as u8 ^ key ^ 0x80; 32]);
    let hello = Hello {
        ephemeral: ephemeral.public(),
        ..hello
    };
    let mut bytes = frame(&Message::Hello(hello.clone()));
    bytes.extend(frame(&Message::Enroll(Enroll {
        uid: hello.uid,
        public_key: node_key(key).verifying_key().to_bytes(),
    })));
    s.handle_bytes(now, 0, &bytes);
    let challenge = challenge_sent(s)?;
    let (proof, keys) = node_answer(
        &node_key(key),
        hello.uid,
        hello.boot_id,
        &ephemeral,
        &challenge,
        None,
    )
    .unwrap();
    s.handle_bytes(now, 0, &frame(&Message::Proof(proof)));
    Some(keys)
}

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
        ephemeral: [0; 32],
    }
}

fn frame(m: &Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode_frame(m, &mut buf).unwrap();
    buf[..n].to_vec()
}

fn telemetry(seq: u32, window_start: u32) -> Vec<u8> {
    telemetry_aged(seq, window_start, 250)
}

fn telemetry_aged(seq: u32, window_start: u32, age_ms: u32) -> Vec<u8> {
    sealed(&Message::Telemetry(Telemetry {
        seq,
        window_start,
        age_ms,
        readings: [Reading {
            channel: ChannelId::SEQ,
            value: seq as i32,
        }]
        .into_iter()
        .collect(),
    }))
}

/// The CHALLENGE among what the gateway sent; sealed frames (for whichever node is attached)
/// are passed over unopened.
fn challenge_sent(session: &mut PortSession) -> Option<Challenge> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let mut decoder = FrameDecoder::new();
    let mut challenge = None;
    while let Some(n) = session.poll_transmit(&mut buf) {
        for received in buf[..n].iter().filter_map(|&b| decoder.push(b)) {
            if let Some(Message::Challenge(c)) = received.unwrap().into_clear() {
                challenge = Some(c);
            }
        }
    }
    challenge
}

/// A TELEMETRY in the shape of a sealed one, but with a tag nobody computed.
fn outsider_telemetry(seq: u32, tag_byte: u8) -> Vec<u8> {
    let t = Message::Telemetry(Telemetry {
        seq,
        window_start: seq,
        age_ms: 0,
        readings: heapless::Vec::new(),
    });
    let mut raw = [0u8; outpost_proto::wire::MAX_MESSAGE_LEN];
    let len = t.emit(&mut raw).unwrap();
    raw[len..len + outpost_proto::wire::SEAL_LEN].fill(tag_byte);
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = outpost_proto::frame::encode_raw_frame(
        &raw[..len + outpost_proto::wire::SEAL_LEN],
        &mut buf,
    )
    .unwrap();
    buf[..n].to_vec()
}

/// What the gateway sent, sealed messages opened with the installed node's session (a seal
/// that does not open fails the test).
fn sent(session: &mut PortSession) -> Vec<Message> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    while let Some(n) = session.poll_transmit(&mut buf) {
        for received in buf[..n].iter().filter_map(|&b| decoder.push(b)) {
            let received = received.unwrap();
            out.push(if received.is_sealed() {
                NODE.with(|node| {
                    let mut node = node.borrow_mut();
                    let (_, opener) = node.as_mut().expect("no node session installed");
                    received
                        .open(opener)
                        .expect("the gateway seals with the session")
                })
            } else {
                received.into_clear().unwrap()
            });
        }
    }
    out
}

fn actions(session: &mut PortSession) -> Vec<Action> {
    std::iter::from_fn(|| session.poll_action()).collect()
}

/// A session with node 42, boot 7 attached, resuming after `ack_upto`.
fn attached(ack_upto: u32) -> PortSession {
    attached_limited(1000, ack_upto)
}

/// [`attached`] on a port limited to `max_frames_per_sec` (HELLO, ENROLL and PROOF took three
/// frames).
fn attached_limited(max_frames_per_sec: u32, ack_upto: u32) -> PortSession {
    let mut s = session("/dev/ttyACM0", max_frames_per_sec, Millis(0));
    let keys = handshake(&mut s, Millis(0), hello(7), 1).expect("challenged");
    install(&keys);
    assert!(matches!(
        actions(&mut s).as_slice(),
        [Action::Register { .. }]
    ));
    s.handle_registered(
        &hello(7),
        Ok(Registered {
            node_id: 42,
            ack_upto,
            newcomer: false,
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
    let mut s = session("p", 1000, Millis(0));
    s.handle_bytes(Millis(0), 0, &outsider_telemetry(1, 0x11));
    assert!(actions(&mut s).is_empty());
    assert!(sent(&mut s).is_empty());
    assert_eq!(s.counters().unauthenticated, 1);
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
    let mut s = session("p", 50, Millis(0));
    let bytes: Vec<u8> = (1..=500)
        .flat_map(|i| outsider_telemetry(i, 0x11))
        .collect();
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
    // A new handshake (the node lost our ACCEPT, or timed out): new keys, no store round.
    let keys = handshake(&mut s, Millis(300), hello(7), 1).expect("challenged");
    install(&keys);
    assert!(
        actions(&mut s).is_empty(),
        "an attached boot is not registered again"
    );
    assert_eq!(
        sent(&mut s),
        vec![Message::Accept(Accept {
            boot_id: 7,
            ack_upto: 1
        })]
    );
    // The old session's frames no longer open; the new one's do.
    s.handle_bytes(Millis(310), 0, &telemetry(2, 1));
    assert_eq!(ingested_seqs(&mut s), vec![2]);
}

#[test]
fn a_refused_node_gets_no_accept() {
    let mut s = session("p", 1000, Millis(0));
    let keys = handshake(&mut s, Millis(0), hello(7), 1).expect("challenged");
    install(&keys);
    actions(&mut s);
    s.handle_registered(&hello(7), Err(Refusal::KeyMismatch));
    assert!(sent(&mut s).is_empty());
    s.handle_bytes(Millis(10), 0, &telemetry(1, 1));
    assert!(actions(&mut s).is_empty());
    assert_eq!(s.counters().refused, 1);
    assert_eq!(
        s.counters().unauthenticated,
        1,
        "no session: its frames do not open"
    );
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

fn health(uptime_s: u32) -> Vec<u8> {
    sealed(&Message::Health(Health {
        uptime_s,
        reset_reason: ResetReason::PowerOn,
        fw: FwVersion {
            major: 1,
            minor: 0,
            patch: 0,
        },
        stack_free_min: 1000,
        rx_frames: 0,
        rx_errors: 0,
        tx_frames: 0,
        retransmits: 0,
        dropped_samples: 0,
        chip_temp_centi: 2500,
    }))
}

/// A node `uid` (boot `boot_id`, holding key `key`) completes a handshake on the port.
fn hello_enroll(s: &mut PortSession, now: Millis, uid: [u8; 8], boot_id: u32, key: u8) {
    let hello = Hello {
        uid,
        hw_rev: 66,
        ..hello(boot_id)
    };
    handshake(s, now, hello, key);
}

/// The attached node, its boot, handed over, committed, last capture.
type LinkState = (i64, u32, Option<u32>, Option<u32>, Option<Millis>);

/// The attached node's link state, as a refused frame must leave it.
fn link_state(s: &PortSession) -> Option<LinkState> {
    s.node.as_ref().map(|n| {
        (
            n.node_id,
            n.boot_id,
            n.handed_over,
            n.committed,
            n.last_capture,
        )
    })
}

fn ingested(actions: &[Action]) -> Vec<&Sample> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Ingest { samples, .. } => Some(samples.iter()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn an_impostors_refused_enroll_leaves_the_attached_node_on_the_line() {
    let mut s = attached(0);
    s.handle_bytes(Millis(10), 0, &telemetry(1, 1));
    actions(&mut s);
    let before = link_state(&s);
    // The victim's uid, another boot, another key.
    hello_enroll(&mut s, Millis(300), [9; 8], 99, 0xee);
    let got = actions(&mut s);
    let [Action::Register { hello: h, .. }] = got.as_slice() else {
        panic!("{got:?}")
    };
    s.handle_registered(h, Err(Refusal::KeyMismatch));
    assert_eq!(
        link_state(&s),
        before,
        "a refused ENROLL changes no session state"
    );
    assert_eq!(s.counters().refused, 1);
    assert!(sent(&mut s).is_empty(), "no ACCEPT for the impostor");
    // The real node goes on, unaware.
    s.handle_bytes(Millis(30), 0, &telemetry(2, 1));
    let got = actions(&mut s);
    assert!(
        matches!(got.as_slice(), [Action::Ingest { node_id: 42, boot_id: 7, samples }] if samples[0].seq == 2),
        "{got:?}"
    );
}

#[test]
fn a_sample_claiming_to_be_older_than_its_node_is_clamped_to_the_nodes_uptime_and_counted() {
    let mut s = attached(0);
    s.handle_bytes(Millis(1000), 0, &health(60));
    let wall = 1_800_000_000_000;
    s.handle_bytes(Millis(3000), wall, &telemetry_aged(1, 1, u32::MAX));
    let got = actions(&mut s);
    let samples = ingested(&got);
    assert_eq!(samples.len(), 1, "the reading is kept: {got:?}");
    // Uptime 60 s at t=1 s, so 62 s at t=3 s, and a second of slack.
    assert_eq!(samples[0].ts_ms, wall - 63_000);
    assert_eq!(s.counters().ages_clamped, 1);
    assert!(got.iter().any(|a| matches!(
        a,
        Action::Anomalies {
            node_id: 42,
            ages_clamped: 1,
            gaps_refused: 0,
            auth_failed: 0,
            replayed: 0,
        }
    )));
    // A plausible age is taken as it is.
    s.handle_bytes(Millis(4000), wall, &telemetry_aged(2, 1, 5_000));
    assert_eq!(ingested(&actions(&mut s))[0].ts_ms, wall - 5_000);
    assert_eq!(s.counters().ages_clamped, 1);
}

#[test]
fn without_an_uptime_the_age_is_bounded_by_max_sample_age() {
    let mut s = attached(0);
    let wall = 1_800_000_000_000;
    s.handle_bytes(Millis(3000), wall, &telemetry_aged(1, 1, u32::MAX));
    let max = LinkLimits::default().max_sample_age.as_millis() as i64;
    assert_eq!(ingested(&actions(&mut s))[0].ts_ms, wall - max);
    assert_eq!(s.counters().ages_clamped, 1);
}

#[test]
fn a_forged_gap_is_refused_counted_and_the_nodes_next_sample_still_follows() {
    let mut s = attached(0);
    s.handle_bytes(Millis(0), 0, &health(10));
    for seq in 1..=3 {
        s.handle_bytes(Millis(u64::from(seq) * 100), 0, &telemetry(seq, 1));
    }
    actions(&mut s);
    let before = link_state(&s);
    s.handle_bytes(Millis(400), 0, &telemetry_aged(0xFFFF_FFF0, 0xFFFF_FFF0, 0));
    let got = actions(&mut s);
    assert!(ingested(&got).is_empty(), "{got:?}");
    assert_eq!(
        link_state(&s),
        before,
        "a refused sample changes no session state"
    );
    assert_eq!(s.counters().gaps_refused, 1);
    assert!(got.iter().any(|a| matches!(
        a,
        Action::Anomalies {
            gaps_refused: 1,
            ..
        }
    )));
    s.handle_bytes(Millis(500), 0, &telemetry(4, 1));
    let got = actions(&mut s);
    assert_eq!(
        ingested(&got).iter().map(|s| s.seq).collect::<Vec<_>>(),
        vec![4]
    );
}

#[test]
fn a_real_ring_overflow_is_admitted_as_a_gap() {
    let mut s = attached(0);
    s.handle_bytes(Millis(0), 0, &health(1));
    s.handle_bytes(Millis(100), 0, &telemetry_aged(1, 1, 0));
    // 100 s later at 10 Hz: about 1000 samples taken, 976 of them lost to a 24-sample ring.
    s.handle_bytes(Millis(100_100), 0, &telemetry_aged(978, 978, 2_400));
    let got = actions(&mut s);
    assert_eq!(
        ingested(&got).iter().map(|s| s.seq).collect::<Vec<_>>(),
        vec![1, 978]
    );
    assert_eq!(s.counters().gaps_refused, 0);
}

#[test]
fn newcomers_beyond_the_ports_budget_are_refused_and_the_budget_refills() {
    let limits = LinkLimits {
        newcomers_burst: 2,
        newcomers_per_hour: 60,
        ..LinkLimits::default()
    };
    let mut s = PortSession::with_limits("p", limits, secrets(), Millis(0));
    let mut allowed = Vec::new();
    let mut now = Millis(0);
    for uid in 1..=4u8 {
        now = now + 10;
        now = now + 1000;
        hello_enroll(&mut s, now, [uid; 8], u32::from(uid), uid);
        let got = actions(&mut s);
        let [
            Action::Register {
                hello: h,
                newcomer_allowed,
                ..
            },
        ] = got.as_slice()
        else {
            panic!("{got:?}")
        };
        allowed.push(*newcomer_allowed);
        let answer = if *newcomer_allowed {
            Ok(Registered {
                node_id: i64::from(uid),
                ack_upto: 0,
                newcomer: true,
            })
        } else {
            Err(Refusal::NewcomerLimited)
        };
        s.handle_registered(h, answer);
    }
    assert_eq!(allowed, vec![true, true, false, false]);
    assert_eq!(s.counters().newcomers_refused, 2);
    assert!(s.refusing_newcomers(now));
    assert!(!s.refusing_newcomers(now + REFUSING_FOR));
    // A minute later (60 an hour) there is room for one more.
    now = now + 60_000;
    hello_enroll(&mut s, now, [5; 8], 5, 5);
    assert!(matches!(
        actions(&mut s).as_slice(),
        [Action::Register {
            newcomer_allowed: true,
            ..
        }]
    ));
}

#[test]
fn the_enrolment_rule_refuses_before_anything_is_written() {
    let key = [1; 32];
    assert_eq!(enrolment(Some(&key), &key, false, 10, 1), Ok(Enrol::Known));
    assert_eq!(
        enrolment(Some(&key), &[2; 32], true, 0, 10),
        Err(Refusal::KeyMismatch)
    );
    assert_eq!(
        enrolment(None, &key, false, 0, 10),
        Err(Refusal::NewcomerLimited)
    );
    assert_eq!(
        enrolment(None, &key, true, 10, 10),
        Err(Refusal::RegistryFull)
    );
    assert_eq!(enrolment(None, &key, true, 9, 10), Ok(Enrol::Newcomer));
}

/// Something on the line: the real node's next sample, a real ring overflow, or a hostile
/// writer's frame.
#[derive(Debug, Clone)]
enum Op {
    /// The node takes a sample after `dt` ms (at most 10 Hz) and sends it.
    Sample { dt: u16, age: u16 },
    /// The node's ring overflowed: `lost` samples taken over at least `lost` × 100 ms are gone.
    Overflow { lost: u16 },
    /// A forged TELEMETRY.
    Forged {
        seq: u32,
        window_start: u32,
        age_ms: u32,
    },
    /// A forged HELLO + ENROLL: the victim's uid or another, some key.
    Enrol {
        victim: bool,
        uid: u8,
        key: u8,
        boot: u32,
    },
    /// A TELEMETRY sealed by someone outside the session (any key but the session's).
    Outsider { seq: u32, key: u8 },
    /// A frame the node sent earlier, sent again by someone who recorded the line.
    Replay(prop::sample::Index),
    /// The store commits what it was handed.
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (100u16..2000, 0u16..100).prop_map(|(dt, age)| Op::Sample { dt, age }),
        1 => (1u16..500).prop_map(|lost| Op::Overflow { lost }),
        2 => (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(seq, window_start, age_ms)| Op::Forged { seq, window_start, age_ms }),
        1 => (0u32..4).prop_map(|d| Op::Forged { seq: d, window_start: d, age_ms: 0 }),
        // A gap claim: seq = window_start, anywhere.
        2 => (any::<u32>(), any::<u32>()).prop_map(|(x, age_ms)| Op::Forged { seq: x, window_start: x, age_ms }),
        // Someone else's key (the victim's is 1: holding it is the stolen-node case).
        1 => (any::<bool>(), 1u8..5, 2u8..5, 0u32..3).prop_map(|(victim, uid, key, boot)| Op::Enrol { victim, uid, key, boot }),
        1 => (any::<u32>(), any::<u8>()).prop_map(|(seq, key)| Op::Outsider { seq, key }),
        1 => any::<prop::sample::Index>().prop_map(Op::Replay),
        2 => Just(Op::Commit),
    ]
}

/// The store's side, as `io::store` does it: the enrolment rule over a registry, and the
/// admission rule with each sample's own bound.
#[derive(Debug, Clone, Default, PartialEq)]
struct Registry {
    /// uid → (key, hw_rev, node id).
    rows: BTreeMap<[u8; 8], ([u8; 32], u8, i64)>,
}

struct World {
    session: PortSession,
    registry: Registry,
    last: BTreeMap<(i64, u32), u32>,
    lost: BTreeMap<(i64, u32), u64>,
    /// The highest seq the session handed to the store, per boot.
    handed: BTreeMap<(i64, u32), u32>,
    in_flight: Vec<Action>,
    now: Millis,
    /// Every frame the node sent, as someone recording the line has them.
    captured: Vec<Vec<u8>>,
}

impl World {
    fn send(&mut self, bytes: Vec<u8>) {
        self.session.handle_bytes(self.now, 0, &bytes);
        self.captured.push(bytes);
    }

    const MAX_NODES: u64 = 3;

    fn new(uptime_s: u32) -> World {
        let mut registry = Registry::default();
        registry
            .rows
            .insert([9; 8], (node_key(1).verifying_key().to_bytes(), 1, 42));
        let mut session = attached(0);
        session.handle_bytes(Millis(0), 0, &health(uptime_s));
        let mut world = World {
            session,
            registry,
            last: BTreeMap::new(),
            lost: BTreeMap::new(),
            handed: BTreeMap::new(),
            in_flight: Vec::new(),
            now: Millis(0),
            captured: Vec::new(),
        };
        world.pump();
        world
    }

    /// Carries out the session's actions: registrations at once, ingests at the next commit.
    fn pump(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Register {
                    hello,
                    public_key,
                    newcomer_allowed,
                } => {
                    let pinned = self.registry.rows.get(&hello.uid).map(|r| r.0);
                    let answer = enrolment(
                        pinned.as_ref(),
                        &public_key,
                        newcomer_allowed,
                        self.registry.rows.len() as u64,
                        Self::MAX_NODES,
                    )
                    .map(|enrol| {
                        let next = self.registry.rows.len() as i64 + 100;
                        let row = self.registry.rows.entry(hello.uid).or_insert((
                            public_key,
                            hello.hw_rev,
                            next,
                        ));
                        row.1 = hello.hw_rev;
                        let node_id = row.2;
                        Registered {
                            node_id,
                            ack_upto: self
                                .last
                                .get(&(node_id, hello.boot_id))
                                .copied()
                                .unwrap_or(0),
                            newcomer: enrol == Enrol::Newcomer,
                        }
                    });
                    self.session.handle_registered(&hello, answer);
                }
                Action::Ingest {
                    node_id,
                    boot_id,
                    samples,
                } => {
                    let handed = self.handed.entry((node_id, boot_id)).or_default();
                    *handed = samples.iter().map(|s| s.seq).fold(*handed, u32::max);
                    self.in_flight.push(Action::Ingest {
                        node_id,
                        boot_id,
                        samples,
                    });
                }
                _ => {}
            }
        }
    }

    fn commit(&mut self) {
        for action in std::mem::take(&mut self.in_flight) {
            let Action::Ingest {
                node_id,
                boot_id,
                samples,
            } = action
            else {
                continue;
            };
            let key = (node_id, boot_id);
            let mut last = self.last.get(&key).copied();
            for sample in &samples {
                match admit_within(last, sample.seq, sample.window_start, sample.max_lost) {
                    Admission::Next => {}
                    Admission::AfterGap { lost } => {
                        *self.lost.entry(key).or_default() += u64::from(lost);
                    }
                    Admission::Stale | Admission::Implausible { .. } => continue,
                }
                last = Some(sample.seq);
            }
            if let Some(last) = last {
                self.last.insert(key, last);
                self.session.handle_committed(node_id, boot_id, last, 0);
            }
        }
    }

    fn refusals(&self) -> u64 {
        let c = self.session.counters();
        c.refused
            + c.newcomers_refused
            + c.gaps_refused
            + c.auth_failed
            + c.replayed
            + c.unauthenticated
            + c.proofs_failed
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever a hostile writer puts on the line among the real node's frames: every frame the
    /// gateway refuses (an enrolment, a gap, a seal that does not open, a replay) leaves the
    /// session and the registry as they were, and no boot is booked more lost samples than the
    /// node can have taken in its life.
    #[test]
    fn refused_frames_change_nothing_and_losses_stay_physically_possible(
        uptime_s in 1u32..100_000,
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        let count = ops.len() as u64;
        let mut w = World::new(uptime_s);
        let rate = u64::from(LinkLimits::default().max_sample_rate_hz);
        let mut seq = 0u32;
        for op in ops {
            let before = (link_state(&w.session), w.registry.clone(), w.refusals());
            match op {
                Op::Sample { dt, age } => {
                    w.now = w.now + u64::from(dt);
                    seq += 1;
                    w.send(telemetry_aged(seq, seq, u32::from(age).min(dt.into())));
                }
                Op::Overflow { lost } => {
                    w.now = w.now + u64::from(lost) * 100 + 100;
                    seq += u32::from(lost) + 1;
                    w.send(telemetry_aged(seq, seq, 0));
                }
                Op::Forged { seq, window_start, age_ms } => {
                    // The node itself misreports (a bug, or a node whose key was stolen): the
                    // seal is good, the bounds still hold.
                    w.send(telemetry_aged(seq, window_start, age_ms));
                }
                Op::Outsider { seq, key } => {
                    w.session.handle_bytes(w.now, 0, &outsider_telemetry(seq, key));
                }
                Op::Replay(index) => {
                    if !w.captured.is_empty() {
                        let bytes = w.captured[index.index(w.captured.len())].clone();
                        w.session.handle_bytes(w.now, 0, &bytes);
                    }
                }
                Op::Enrol { victim, uid, key, boot } => {
                    let uid = if victim { [9; 8] } else { [uid; 8] };
                    hello_enroll(&mut w.session, w.now, uid, boot, key);
                }
                Op::Commit => w.commit(),
            }
            w.pump();
            if w.refusals() > before.2 {
                prop_assert_eq!(&link_state(&w.session), &before.0, "a refused frame changed the session");
                prop_assert_eq!(&w.registry, &before.1, "a refused frame changed the registry");
            }
        }
        w.commit();
        // The node (42, boot 7) reported booting uptime_s before t=0: it cannot have taken
        // more samples than that time allows at the fastest rate (one second of slack for the
        // uptime's rounding). (A boot that never reported its uptime is bounded by
        // max_sample_age per gap instead.)
        let life_ms = u64::from(uptime_s) * 1000 + w.now.0 + SLACK_MS;
        let possible = life_ms * rate / 1000 + 1;
        let lost = w.lost.get(&(42, 7)).copied().unwrap_or(0);
        prop_assert!(lost <= possible, "{} lost, at most {} possible", lost, possible);
        // The session itself hands over no seq beyond that either (each frame may add one:
        // a forged successor is indistinguishable from the real one without authentication).
        let handed = u64::from(w.handed.get(&(42, 7)).copied().unwrap_or(0));
        prop_assert!(handed <= possible + count, "seq {} handed over, at most {} possible", handed, possible + count);
    }

    /// A real node's gaps (ring overflows) are never taken for forged ones.
    #[test]
    fn a_real_nodes_gaps_are_never_refused(
        uptime_s in 1u32..100_000,
        ops in proptest::collection::vec(prop_oneof![
            3 => (100u16..2000, 0u16..100).prop_map(|(dt, age)| Op::Sample { dt, age }),
            1 => (1u16..500).prop_map(|lost| Op::Overflow { lost }),
            1 => Just(Op::Commit),
        ], 0..100),
    ) {
        let mut w = World::new(uptime_s);
        let mut seq = 0u32;
        let mut expected_lost = 0u64;
        for op in ops {
            match op {
                Op::Sample { dt, age } => {
                    w.now = w.now + u64::from(dt);
                    seq += 1;
                    w.session.handle_bytes(w.now, 0, &telemetry_aged(seq, 1, u32::from(age).min(dt.into())));
                }
                Op::Overflow { lost } => {
                    w.now = w.now + u64::from(lost) * 100 + 100;
                    seq += u32::from(lost) + 1;
                    expected_lost += u64::from(lost);
                    w.session.handle_bytes(w.now, 0, &telemetry_aged(seq, seq, 0));
                }
                _ => w.commit(),
            }
            w.pump();
        }
        w.commit();
        prop_assert_eq!(w.session.counters().gaps_refused, 0);
        prop_assert_eq!(w.lost.get(&(42, 7)).copied().unwrap_or(0), expected_lost);
        prop_assert_eq!(w.last.get(&(42, 7)).copied().unwrap_or(0), seq);
    }
}

fn ingested_seqs(session: &mut PortSession) -> Vec<u32> {
    actions(session)
        .into_iter()
        .flat_map(|a| match a {
            Action::Ingest { samples, .. } => samples.into_iter().map(|s| s.seq).collect(),
            _ => Vec::new(),
        })
        .collect()
}

fn nack(from: u32, to: u32) -> Message {
    Message::Nack(Nack {
        boot_id: 7,
        from,
        to,
    })
}

#[test]
fn a_sample_after_a_missing_one_is_held_and_the_missing_one_asked_for_at_once() {
    let mut s = attached(0);
    s.handle_bytes(Millis(10), 0, &telemetry(1, 1));
    assert_eq!(ingested_seqs(&mut s), [1]);
    // 2 and 3 were lost; 4 and 5 arrive.
    s.handle_bytes(Millis(20), 0, &telemetry(4, 1));
    assert!(
        ingested_seqs(&mut s).is_empty(),
        "held, not stored out of order"
    );
    assert_eq!(sent(&mut s), [nack(2, 3)]);
    s.handle_bytes(Millis(25), 0, &telemetry(5, 1));
    assert!(sent(&mut s).is_empty(), "asked for a moment ago: not again");
    // The node sends exactly 2 and 3 again: everything held follows them, in order.
    s.handle_bytes(Millis(30), 0, &telemetry(2, 1));
    assert_eq!(ingested_seqs(&mut s), [2]);
    s.handle_bytes(Millis(31), 0, &telemetry(3, 1));
    assert_eq!(ingested_seqs(&mut s), [3, 4, 5]);
    let c = s.counters();
    assert_eq!((c.reordered, c.nacks, c.duplicates), (2, 1, 0));
}

#[test]
fn a_second_hole_behind_the_first_is_asked_for_when_the_first_is_filled() {
    let mut s = attached(0);
    let mut bytes = telemetry(1, 1);
    bytes.extend(telemetry(3, 1)); // 2 lost
    bytes.extend(telemetry(5, 1)); // 4 lost
    s.handle_bytes(Millis(10), 0, &bytes);
    assert_eq!(ingested_seqs(&mut s), [1]);
    assert_eq!(sent(&mut s), [nack(2, 2)]);
    s.handle_bytes(Millis(20), 0, &telemetry(2, 1));
    assert_eq!(ingested_seqs(&mut s), [2, 3]);
    assert_eq!(sent(&mut s), [nack(4, 4)]);
    s.handle_bytes(Millis(30), 0, &telemetry(4, 1));
    assert_eq!(ingested_seqs(&mut s), [4, 5]);
}

#[test]
fn a_missing_sample_is_asked_for_again_only_after_a_pause() {
    let mut s = attached(0);
    s.handle_bytes(Millis(0), 0, &telemetry(2, 1));
    assert_eq!(sent(&mut s), [nack(1, 1)]);
    s.handle_bytes(Millis(NACK_REPEAT_MS - 1), 0, &telemetry(3, 1));
    assert!(sent(&mut s).is_empty());
    // The NACK or the resend was lost too: later frames keep coming, so ask again.
    s.handle_bytes(Millis(NACK_REPEAT_MS), 0, &telemetry(4, 1));
    assert_eq!(sent(&mut s), [nack(1, 1)]);
}

#[test]
fn frames_held_are_bounded_by_the_window_and_a_resend_of_a_held_one_is_a_duplicate() {
    let mut s = attached(0);
    for seq in 2..=WINDOW + 10 {
        s.handle_bytes(Millis(10), 0, &telemetry(seq, 1));
    }
    // 2..=WINDOW are within a window of the missing 1; beyond it nothing is held.
    assert_eq!(s.counters().reordered, u64::from(WINDOW - 1));
    s.handle_bytes(Millis(20), 0, &telemetry(3, 1));
    assert_eq!(s.counters().duplicates, 10 + 1);
    s.handle_bytes(Millis(30), 0, &telemetry(1, 1));
    assert_eq!(ingested_seqs(&mut s), (1..=WINDOW).collect::<Vec<_>>());
}

#[test]
fn a_rate_limited_frame_costs_one_resend_not_the_frames_after_it() {
    // A limit of 32 frames a second (the bucket's smallest burst), all spent by the frames
    // before (HELLO, ENROLL and PROOF included): the next one is dropped, the one after it
    // arrives when a token has refilled.
    let mut s = attached_limited(32, 0);
    for seq in 1..=29 {
        s.handle_bytes(Millis(0), 0, &telemetry(seq, 1));
    }
    assert_eq!(ingested_seqs(&mut s), (1..=29).collect::<Vec<_>>());
    // The node sealed it, the gateway dropped it before opening it: the node resends it, the
    // resend is sealed anew (a new counter), and it opens.
    s.handle_bytes(Millis(0), 0, &telemetry(30, 1));
    assert_eq!(s.counters().rate_limited, 1);
    s.handle_bytes(Millis(40), 0, &telemetry(31, 1));
    assert_eq!(sent(&mut s), [nack(30, 30)]);
    s.handle_bytes(Millis(80), 0, &telemetry(30, 1));
    assert_eq!(ingested_seqs(&mut s), [30, 31]);
}

#[test]
fn the_smallest_node_frame_is_what_the_default_limit_assumes() {
    let _session = attached(0);
    let empty = Message::Telemetry(Telemetry {
        seq: 1,
        window_start: 1,
        age_ms: 0,
        readings: heapless::Vec::new(),
    });
    assert_eq!(sealed(&empty).len() as u32, SMALLEST_NODE_FRAME);
    assert_eq!(line_frame_capacity(115_200), 548);
}

#[test]
fn a_uid_claimed_with_its_copied_public_key_but_not_its_secret_gets_nothing() {
    let mut s = attached(0);
    s.handle_bytes(Millis(10), 0, &telemetry(1, 1));
    actions(&mut s);
    let before = link_state(&s);
    // The impostor copied the node's ENROLL from the line (uid and public key), but signs with
    // its own key: it cannot sign for the enrolled one.
    let ephemeral = Ephemeral::from_random([0x42; 32]);
    let spoofed = Hello {
        ephemeral: ephemeral.public(),
        ..hello(99)
    };
    let mut bytes = frame(&Message::Hello(spoofed.clone()));
    bytes.extend(frame(&Message::Enroll(Enroll {
        uid: [9; 8],
        public_key: node_key(1).verifying_key().to_bytes(),
    })));
    s.handle_bytes(Millis(300), 0, &bytes);
    let challenge = challenge_sent(&mut s).expect("challenged");
    // Its best effort: a PROOF over the real transcript, signed with its own key.
    let th = outpost_proto::session::Transcript {
        uid: [9; 8],
        boot_id: 99,
        node_key: node_key(1).verifying_key().to_bytes(),
        node_ephemeral: ephemeral.public(),
        gateway_key: challenge.gateway_key,
        gateway_ephemeral: challenge.ephemeral,
    }
    .hash();
    let proof = Proof {
        uid: [9; 8],
        boot_id: 99,
        signature: ed25519_dalek::Signer::sign(&node_key(0xEE), &th).to_bytes(),
    };
    s.handle_bytes(Millis(300), 0, &frame(&Message::Proof(proof)));
    assert_eq!(
        actions(&mut s),
        vec![Action::ProofFailed { uid: [9; 8] }],
        "counted on the uid, never registered"
    );
    assert_eq!(s.counters().proofs_failed, 1);
    assert_eq!(link_state(&s), before);
    // The real node goes on.
    s.handle_bytes(Millis(310), 0, &telemetry(2, 1));
    assert_eq!(ingested_seqs(&mut s), vec![2]);
}

#[test]
fn a_replayed_or_bit_flipped_frame_is_dropped_and_counted_for_the_node() {
    let mut s = attached(0);
    let first = telemetry(1, 1);
    s.handle_bytes(Millis(10), 0, &first);
    assert_eq!(ingested_seqs(&mut s), vec![1]);
    s.handle_committed(42, 7, 1, 0);
    sent(&mut s);
    // Replayed as recorded.
    s.handle_bytes(Millis(20), 0, &first);
    // A genuine frame with one bit flipped and the CRC redone (what an attacker does; noise
    // would fail the CRC).
    let mut body = {
        let mut encoded = telemetry(2, 1)[1..].to_vec();
        encoded.pop();
        let n = outpost_proto::cobs::decode_in_place(&mut encoded).unwrap();
        encoded.truncate(n - 4);
        encoded
    };
    body[4] ^= 0x01;
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = outpost_proto::frame::encode_raw_frame(&body, &mut buf).unwrap();
    s.handle_bytes(Millis(30), 0, &buf[..n]);
    let c = s.counters();
    assert_eq!((c.replayed, c.auth_failed), (1, 1));
    let got = actions(&mut s);
    assert!(ingested(&got).is_empty(), "{got:?}");
    let reported: (u32, u32) = got
        .iter()
        .filter_map(|a| match a {
            Action::Anomalies {
                auth_failed,
                replayed,
                ..
            } => Some((*auth_failed, *replayed)),
            _ => None,
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(reported, (1, 1), "counted per node too");
    // Nothing acknowledged for them, and the node's next frame is taken.
    assert!(sent(&mut s).is_empty());
    s.handle_bytes(Millis(40), 0, &telemetry(2, 1));
    assert_eq!(ingested_seqs(&mut s), vec![2]);
}

#[test]
fn a_flood_of_hellos_is_answered_at_most_once_per_interval() {
    let mut s = session("p", 1000, Millis(0));
    for i in 0..10u32 {
        hello_enroll(&mut s, Millis(u64::from(i) * 10), [3; 8], i, 3);
    }
    assert_eq!(s.counters().handshakes, 1);
    assert_eq!(s.counters().handshakes_refused, 9);
    hello_enroll(
        &mut s,
        Millis(HANDSHAKE_MIN_INTERVAL_MS + 90),
        [3; 8],
        11,
        3,
    );
    assert_eq!(s.counters().handshakes, 2);
}

#[test]
fn the_policy_holds_back_newcomers_never_enrolled_nodes_and_a_revoked_node_always() {
    let (key, other) = ([1; 32], [2; 32]);
    let candidate = |pinned: Option<&'static [u8; 32]>, revoked: bool, listed| Candidate {
        pinned,
        revoked,
        key: &[1; 32],
        hw_rev: 3,
        listed,
    };
    let gate = |policy, window_open| Gate {
        policy,
        window_open,
        newcomer_allowed: true,
        enrolled: 0,
        max_nodes: 10,
    };
    use EnrollmentPolicy::{Allowlist, Closed, Open, Window};
    // A known node with its key passes every policy; revoked, it passes none.
    for policy in [Window, Allowlist, Closed, Open] {
        assert_eq!(
            admit_enrolment(
                &candidate(Some(&[1; 32]), false, None),
                &gate(policy, false)
            ),
            Ok(Enrol::Known)
        );
        assert_eq!(
            admit_enrolment(&candidate(Some(&[1; 32]), true, None), &gate(policy, true)),
            Err(Refusal::Revoked)
        );
    }
    let newcomer = candidate(None, false, None);
    assert_eq!(
        admit_enrolment(&newcomer, &gate(Window, false)),
        Err(Refusal::NotEnrolling)
    );
    assert_eq!(
        admit_enrolment(&newcomer, &gate(Window, true)),
        Ok(Enrol::Newcomer)
    );
    assert_eq!(
        admit_enrolment(&newcomer, &gate(Closed, true)),
        Err(Refusal::NotEnrolling)
    );
    assert_eq!(
        admit_enrolment(&newcomer, &gate(Open, false)),
        Ok(Enrol::Newcomer)
    );
    assert_eq!(
        admit_enrolment(&newcomer, &gate(Allowlist, true)),
        Err(Refusal::NotListed)
    );
    // Listed with its key and board: in; with another key or board: out.
    let listed = Candidate {
        listed: Some((&key, 3)),
        ..newcomer
    };
    assert_eq!(
        admit_enrolment(&listed, &gate(Allowlist, false)),
        Ok(Enrol::Newcomer)
    );
    let other_key = Candidate {
        listed: Some((&other, 3)),
        ..newcomer
    };
    assert_eq!(
        admit_enrolment(&other_key, &gate(Allowlist, false)),
        Err(Refusal::NotListed)
    );
    let other_board = Candidate {
        listed: Some((&key, 4)),
        ..newcomer
    };
    assert_eq!(
        admit_enrolment(&other_board, &gate(Allowlist, false)),
        Err(Refusal::NotListed)
    );
    // The budget and the cap still hold under an open gate.
    let spent = Gate {
        newcomer_allowed: false,
        ..gate(Open, false)
    };
    assert_eq!(
        admit_enrolment(&newcomer, &spent),
        Err(Refusal::NewcomerLimited)
    );
    assert!(
        Refusal::NotEnrolling.waits_for_enrollment() && Refusal::NotListed.waits_for_enrollment()
    );
    assert!(!Refusal::Revoked.waits_for_enrollment());
}

// ---- requests to the node ----

fn answers(actions: &[Action]) -> Vec<(u64, Result<NodeAnswer, NodeRequestError>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Answer { token, result } => Some((*token, result.clone())),
            _ => None,
        })
        .collect()
}

fn command_sent(s: &mut PortSession) -> outpost_proto::Command {
    match sent(s).as_slice() {
        [Message::Command(c)] => c.clone(),
        other => panic!("expected one COMMAND, the gateway sent {other:?}"),
    }
}

fn response(id: u16, status: u8, body: &[u8]) -> Vec<u8> {
    sealed(&Message::Response(outpost_proto::Response {
        id,
        status,
        body: heapless::Vec::from_slice(body).unwrap(),
    }))
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn a_request_goes_out_sealed_and_its_response_comes_back_by_id() {
    let mut s = attached(0);
    s.handle_request(Millis(10), 100, [9; 8], NodeRequest::ResetHistory, TIMEOUT);
    s.handle_request(Millis(10), 101, [9; 8], NodeRequest::Reboot, TIMEOUT);
    let mut buf = [0u8; MAX_FRAME_LEN];
    let mut decoder = FrameDecoder::new();
    let mut commands = Vec::new();
    while let Some(n) = s.poll_transmit(&mut buf) {
        for received in buf[..n].iter().filter_map(|&b| decoder.push(b)) {
            let received = received.unwrap();
            assert!(
                received.is_sealed(),
                "a COMMAND never goes out in the clear"
            );
            let message = NODE.with(|node| {
                let mut node = node.borrow_mut();
                received.open(&mut node.as_mut().unwrap().1).unwrap()
            });
            let Message::Command(c) = message else {
                panic!("not a COMMAND")
            };
            commands.push(c);
        }
    }
    assert_eq!(commands.len(), 2);
    assert_eq!(commands[0].code, outpost_proto::diag::code::RESET_HISTORY);
    assert_eq!(commands[1].code, outpost_proto::diag::code::REBOOT);
    assert_ne!(commands[0].id, commands[1].id);
    // Answered out of order: each goes to its own caller.
    s.handle_bytes(Millis(20), 0, &response(commands[1].id, 0, &[]));
    s.handle_bytes(Millis(21), 0, &response(commands[0].id, 0, &[0]));
    assert_eq!(
        answers(&actions(&mut s)),
        vec![
            (101, Ok(NodeAnswer::Rebooting)),
            (
                100,
                Ok(NodeAnswer::ResetHistory(
                    outpost_proto::diag::ResetHistory::default()
                ))
            ),
        ]
    );
    assert_eq!(s.poll_timeout(), None, "nothing left to time");
}

#[test]
fn a_request_for_a_node_not_on_the_port_fails_at_once() {
    let mut s = attached(0);
    s.handle_request(Millis(10), 7, [1; 8], NodeRequest::HealthNow, TIMEOUT);
    assert_eq!(
        answers(&actions(&mut s)),
        vec![(7, Err(NodeRequestError::NotLinked))]
    );
    assert!(sent(&mut s).is_empty());
    let mut empty = session("/dev/ttyACM1", 1000, Millis(0));
    empty.handle_request(Millis(0), 8, [9; 8], NodeRequest::HealthNow, TIMEOUT);
    assert_eq!(
        answers(&actions(&mut empty)),
        vec![(8, Err(NodeRequestError::NotLinked))]
    );
}

#[test]
fn an_unanswered_request_times_out_on_the_time_given_and_a_late_answer_is_dropped() {
    let mut s = attached(0);
    s.handle_request(Millis(1000), 5, [9; 8], NodeRequest::HealthNow, TIMEOUT);
    let command = command_sent(&mut s);
    assert_eq!(s.poll_timeout(), Some(Millis(6000)));
    s.handle_timeout(Millis(5999));
    assert!(answers(&actions(&mut s)).is_empty());
    s.handle_timeout(Millis(6000));
    assert_eq!(
        answers(&actions(&mut s)),
        vec![(5, Err(NodeRequestError::TimedOut))]
    );
    s.handle_bytes(Millis(6100), 0, &response(command.id, 0, &[]));
    assert!(answers(&actions(&mut s)).is_empty());
}

#[test]
fn an_unknown_command_or_bad_arguments_is_the_nodes_refusal_and_the_session_goes_on() {
    let mut s = attached(0);
    s.handle_request(
        Millis(0),
        1,
        [9; 8],
        NodeRequest::LogRead { from: 0 },
        TIMEOUT,
    );
    let first = command_sent(&mut s);
    assert_eq!(first.args.as_slice(), &[0, 0, 0, 0]);
    s.handle_bytes(Millis(1), 0, &response(first.id, 1, &[]));
    s.handle_request(Millis(2), 2, [9; 8], NodeRequest::HealthNow, TIMEOUT);
    let second = command_sent(&mut s);
    s.handle_bytes(Millis(3), 0, &response(second.id, 2, &[]));
    assert_eq!(
        answers(&actions(&mut s)),
        vec![
            (1, Err(NodeRequestError::Unsupported)),
            (2, Err(NodeRequestError::Refused { status: 2 })),
        ]
    );
    assert_eq!(s.node_uid(), Some([9; 8]));
}

#[test]
fn requests_in_flight_fail_when_the_port_resets_and_their_number_is_bounded() {
    let mut s = attached(0);
    for token in 0..MAX_REQUESTS_IN_FLIGHT as u64 + 1 {
        s.handle_request(Millis(0), token, [9; 8], NodeRequest::HealthNow, TIMEOUT);
    }
    assert_eq!(
        answers(&actions(&mut s)),
        vec![(MAX_REQUESTS_IN_FLIGHT as u64, Err(NodeRequestError::Busy))]
    );
    s.handle_port_reset();
    let failed = answers(&actions(&mut s));
    assert_eq!(failed.len(), MAX_REQUESTS_IN_FLIGHT);
    assert!(
        failed
            .iter()
            .all(|(_, r)| *r == Err(NodeRequestError::LinkLost))
    );
}
