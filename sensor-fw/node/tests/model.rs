//! Model-based property test of delivery: the node core and a model gateway exchange frames
//! over a line that drops, duplicates, delays (reorders) and corrupts frames in both directions,
//! and the gateway process may restart. Once the line is clean again, the gateway must hold
//! every sample exactly once and in order; with a ring too small to ride out the faults, the
//! only samples missing are ones the node counted as dropped.

mod common;

use common::{GatewayEnd, ModelGateway, TestBank, boot, identity, secrets};
use outpost_node::{App, LinkConfig, Millis, NodeLink, Schedule};
use outpost_proto::frame::MAX_FRAME_LEN;
use outpost_proto::{FrameDecoder, Message};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use std::time::Duration;

/// What the line does to one frame.
#[derive(Debug, Clone)]
enum Fault {
    Deliver,
    Drop,
    Duplicate,
    /// Extra latency, so later frames overtake this one.
    Delay(u64),
    /// One byte flipped.
    Corrupt(Index),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        6 => Just(Fault::Deliver),
        2 => Just(Fault::Drop),
        1 => Just(Fault::Duplicate),
        1 => (1u64..2500).prop_map(Fault::Delay),
        1 => any::<Index>().prop_map(Fault::Corrupt),
    ]
}

const LATENCY_MS: u64 = 2;
const SAMPLE_MS: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum To {
    Node,
    Gateway,
}

struct Line {
    /// Frames on the wire: (arrival time, order sent, direction, bytes).
    in_flight: Vec<(Millis, u64, To, Vec<u8>)>,
    sent: u64,
    faults: std::vec::IntoIter<Fault>,
}

impl Line {
    fn send(&mut self, now: Millis, to: To, frame: &[u8]) {
        let mut frame = frame.to_vec();
        let mut arrivals = vec![now + LATENCY_MS];
        match self.faults.next().unwrap_or(Fault::Deliver) {
            Fault::Deliver => {}
            Fault::Drop => arrivals.clear(),
            Fault::Duplicate => arrivals.push(now + LATENCY_MS + 1),
            Fault::Delay(ms) => arrivals[0] = now + LATENCY_MS + ms,
            Fault::Corrupt(at) => {
                let i = at.index(frame.len());
                frame[i] ^= 0x5A;
            }
        }
        for at in arrivals {
            self.sent += 1;
            self.in_flight.push((at, self.sent, to, frame.clone()));
        }
    }

    fn next_arrival(&self) -> Option<Millis> {
        self.in_flight.iter().map(|f| f.0).min()
    }

    /// Frames due by `now`, in arrival order (ties in the order sent).
    fn take_due(&mut self, now: Millis) -> Vec<(To, Vec<u8>)> {
        self.in_flight.sort_by_key(|f| (f.0, f.1));
        let due = self.in_flight.iter().take_while(|f| f.0 <= now).count();
        self.in_flight
            .drain(..due)
            .map(|(_, _, to, bytes)| (to, bytes))
            .collect()
    }

    fn clean(&self) -> bool {
        self.faults.len() == 0 && self.in_flight.is_empty()
    }
}

struct Outcome {
    /// The line became clean and the node had nothing left to send.
    settled: bool,
    stored: Vec<u32>,
    samples: u32,
    dropped: u32,
    held: usize,
}

fn run<const RING: usize>(
    samples: u32,
    ring: usize,
    faults: Vec<Fault>,
    restart_at: Option<u64>,
) -> Outcome {
    let config = LinkConfig {
        ring_limit: ring,
        ..LinkConfig::default()
    };
    let link = NodeLink::<RING>::new(Millis::ZERO, identity(), secrets(), boot(), config);
    let schedule = Schedule {
        interval: Duration::from_millis(SAMPLE_MS),
        limit: Some(samples),
    };
    let mut node = App::new(Millis::ZERO, link, TestBank, schedule);
    let mut gateway = ModelGateway::default();
    let mut end = GatewayEnd::default();
    let mut gateway_rx = FrameDecoder::new();
    let mut line = Line {
        in_flight: Vec::new(),
        sent: 0,
        faults: faults.into_iter(),
    };
    let mut restart_at = restart_at.map(Millis);
    let mut buf = [0u8; MAX_FRAME_LEN];
    let mut now = Millis::ZERO;
    let mut settled = false;

    for _ in 0..200_000 {
        settled = node.sampling_done() && node.link().held() == 0 && line.clean();
        if settled {
            break;
        }
        let next = [node.poll_timeout(), line.next_arrival(), restart_at]
            .into_iter()
            .flatten()
            .min()
            .expect("the node always has a timer");
        now = now.max(next);

        if restart_at.is_some_and(|at| at <= now) {
            gateway.restart();
            end.restart();
            restart_at = None;
        }
        for (to, bytes) in line.take_due(now) {
            match to {
                To::Node => node.handle_bytes(now, &bytes),
                To::Gateway => {
                    for &byte in &bytes {
                        let Some(Ok(received)) = gateway_rx.push(byte) else {
                            continue;
                        };
                        let (message, answer) = end.receive(received);
                        if let Some(answer) = answer {
                            line.send(now, To::Node, &answer);
                        }
                        // The model gateway only sees what opened: a PROOF the end refused
                        // opens no session.
                        let opened = match &message {
                            Some(Message::Proof(_)) => end.has_session(),
                            Some(_) => true,
                            None => false,
                        };
                        if opened
                            && let Some(message) = message
                            && let Some(reply) = gateway.handle(&message)
                        {
                            line.send(now, To::Node, &end.frame(&reply));
                        }
                    }
                }
            }
        }
        if node.poll_timeout().is_some_and(|at| at <= now) {
            node.handle_timeout(now);
        }
        while let Some(len) = node.poll_transmit(&mut buf) {
            line.send(now, To::Gateway, &buf[..len]);
        }
    }
    if std::env::var_os("MODEL_TRACE").is_some() {
        eprintln!("settled at {now:?}: {:?}", node.link().counters());
    }
    Outcome {
        settled,
        stored: gateway.stored.clone(),
        samples: node.link().counters().samples,
        dropped: node.link().counters().dropped_samples,
        held: node.link().held(),
    }
}

proptest! {
    #[test]
    fn the_gateway_ends_with_every_sample_once_and_in_order_whatever_the_line_did(
        samples in 1u32..80,
        faults in vec(fault(), 0..400),
        restart_at in proptest::option::of(0u64..15_000),
    ) {
        let out = run::<256>(samples, 256, faults, restart_at);
        prop_assert!(out.settled);
        prop_assert_eq!(out.held, 0, "everything acknowledged once the line is clean");
        prop_assert_eq!(out.dropped, 0);
        prop_assert_eq!(out.stored, (1..=samples).collect::<Vec<_>>());
    }

    #[test]
    fn with_a_small_ring_only_samples_the_node_dropped_are_missing(
        samples in 1u32..80,
        faults in vec(fault(), 0..400),
        restart_at in proptest::option::of(0u64..15_000),
    ) {
        let out = run::<8>(samples, 8, faults, restart_at);
        prop_assert!(out.settled);
        prop_assert_eq!(out.held, 0);
        prop_assert_eq!(out.samples, samples);
        prop_assert!(out.stored.windows(2).all(|w| w[0] < w[1]), "no duplicate, in order: {:?}", out.stored);
        prop_assert_eq!(out.stored.last().copied(), Some(samples), "the newest sample arrives");
        let missing = samples - out.stored.len() as u32;
        prop_assert!(missing <= out.dropped, "{} missing but {} dropped", missing, out.dropped);
    }
}
