//! The node link, node side, driven on a virtual clock against a scripted or model gateway.

mod common;

use std::time::Duration;

use common::*;
use outpost_node::{LinkConfig, LinkState, Millis, Schedule, WINDOW};
use outpost_proto::frame::MAX_FRAME_LEN;
use outpost_proto::{Ack, ChannelId, Command, Message, Reading, ResetReason, Response};

fn limited(ms: u64, limit: u32) -> Schedule {
    Schedule {
        interval: Duration::from_millis(ms),
        limit: Some(limit),
    }
}

fn ring_of(limit: usize) -> LinkConfig {
    LinkConfig {
        ring_limit: limit,
        ..LinkConfig::default()
    }
}

#[test]
fn a_fresh_node_says_hello_and_enroll_at_once_and_every_second_until_accepted() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000)));
    site.run_until(Millis::ZERO);
    let sent = site.take_sent();
    // The site's gateway end answers the handshake at once: the PROOF follows.
    let [
        Message::Hello(hello),
        Message::Enroll(enroll),
        Message::Proof(proof),
    ] = &sent[..]
    else {
        panic!("expected HELLO, ENROLL, PROOF, got {sent:?}");
    };
    assert_eq!((proof.uid, proof.boot_id), (UID, BOOT_ID));
    assert_eq!(hello.uid, UID);
    assert_eq!(hello.boot_id, BOOT_ID);
    assert_eq!((hello.hw_rev, hello.fw), (2, FW));
    assert_eq!(hello.lot.as_str(), "LOT-7");
    assert_eq!(hello.channels, [ChannelId::TEMPERATURE, ChannelId::SEQ]);
    assert_eq!(enroll.uid, UID);
    assert_eq!(enroll.public_key, node_key().verifying_key().to_bytes());

    site.run_until(Millis(2500));
    let sent = site.take_sent();
    assert_eq!(hellos(&sent), 2, "HELLO again at 1 s and 2 s");
    assert!(seqs(&sent).is_empty(), "no TELEMETRY before ACCEPT");
    assert_eq!(site.node.link().held(), 3, "sampling runs while unaccepted");
}

#[test]
fn once_accepted_the_node_reports_health_then_sends_held_samples_in_seq_order() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000)));
    site.run_until(Millis(2500));
    site.take_sent();

    site.deliver(&accept(0));
    let sent = site.take_sent();
    assert!(matches!(sent[0], Message::Health(_)), "HEALTH right away");
    let frames = telemetry(&sent);
    assert_eq!(seqs(&sent), [1, 2, 3]);
    assert!(frames.iter().all(|t| t.window_start == 1));
    let ages: Vec<u32> = frames.iter().map(|t| t.age_ms).collect();
    assert_eq!(
        ages,
        [2500, 1500, 500],
        "age is the time since the sample was taken"
    );
    assert_eq!(
        frames[1].readings,
        [
            Reading {
                channel: ChannelId::TEMPERATURE,
                value: 2002
            },
            Reading {
                channel: ChannelId::SEQ,
                value: 2
            },
        ]
    );
    assert_eq!(site.node.link().state(), LinkState::Accepted);

    site.run_for(2000);
    assert_eq!(hellos(&site.take_sent()), 0, "no HELLO once accepted");
}

#[test]
fn an_accepted_node_streams_every_sample_and_acks_keep_its_ring_empty() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000))).with_gateway();
    site.run_until(Millis(10_500));
    let gateway = site.gateway.as_ref().unwrap();
    assert_eq!(gateway.stored, (1..=11).collect::<Vec<_>>());
    assert_eq!(site.node.link().held(), 0);
    assert_eq!(site.node.link().counters().retransmits, 0);
    assert_eq!(hellos(&site.take_sent()), 1);
}

#[test]
fn cumulative_acks_free_the_ring_up_to_their_seq() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000)));
    site.run_until(Millis(4500));
    site.deliver(&accept(0));
    assert_eq!(site.node.link().held(), 5);

    site.deliver(&ack(3));
    assert_eq!(site.node.link().held(), 2);
    assert_eq!(site.node.link().oldest_held(), Some(4));

    site.deliver(&ack(2)); // stale, overtaken by the one before
    assert_eq!(site.node.link().held(), 2);

    site.take_sent();
    site.run_until(Millis(5000));
    let sent = site.take_sent();
    let frames = telemetry(&sent);
    // 4 and 5 again when the timer expires (RTO_MIN after the instant round trip), then 6.
    assert_eq!(
        frames
            .iter()
            .map(|t| (t.seq, t.window_start))
            .collect::<Vec<_>>(),
        [(4, 4), (5, 4), (6, 4)]
    );
}

#[test]
fn no_more_than_a_window_of_frames_is_in_flight() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(10)));
    site.run_until(Millis(395));
    assert_eq!(site.node.link().held(), 40);
    site.take_sent();

    site.deliver(&accept(0));
    assert_eq!(seqs(&site.take_sent()), (1..=WINDOW).collect::<Vec<_>>());

    site.deliver(&ack(4));
    assert_eq!(
        seqs(&site.take_sent()),
        [WINDOW + 1, WINDOW + 2, WINDOW + 3, WINDOW + 4],
        "each ACKed frame opens one slot"
    );
}

#[test]
fn unacknowledged_frames_are_sent_again_from_the_oldest_after_the_rto() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), limited(100, 3)));
    site.run_until(Millis(250));
    site.deliver(&accept(0));
    assert_eq!(seqs(&site.take_sent()), [1, 2, 3]);

    site.run_until(Millis(1249));
    assert!(seqs(&site.take_sent()).is_empty());
    site.run_until(Millis(1250));
    assert_eq!(
        seqs(&site.take_sent()),
        [1, 2, 3],
        "go-back-N from the oldest held"
    );
    assert_eq!(site.node.link().counters().retransmits, 3);
}

#[test]
fn ack_progress_restarts_the_retransmit_timer() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), limited(100, 3)));
    site.run_until(Millis(250));
    site.deliver(&accept(0)); // 1, 2, 3 sent at 250: RTO due at 1250
    site.run_until(Millis(850));
    site.deliver(&ack(1)); // progress at 850: RTO now due at 1850
    site.take_sent();

    site.run_until(Millis(1849));
    assert!(seqs(&site.take_sent()).is_empty());
    site.run_until(Millis(1850));
    assert_eq!(seqs(&site.take_sent()), [2, 3]);

    site.deliver(&ack(1)); // a duplicate ACK is no progress
    site.run_until(Millis(2849));
    assert!(seqs(&site.take_sent()).is_empty());
    site.run_until(Millis(2850));
    assert_eq!(seqs(&site.take_sent()), [2, 3]);
}

#[test]
fn a_full_ring_drops_the_oldest_sample_and_window_start_reports_the_gap() {
    let mut site = Site::<64>::new(node(ring_of(4), every(1000))).with_gateway();
    site.gateway.as_mut().unwrap().mute = true; // the gateway is not there yet
    site.run_until(Millis(9500));
    let counters = site.node.link().counters();
    assert_eq!((counters.samples, counters.dropped_samples), (10, 6));
    assert_eq!(site.node.link().oldest_held(), Some(7));

    site.gateway.as_mut().unwrap().mute = false;
    site.take_sent();
    // At 10 s sample 11 pushes out 7, then the HELLO is answered with ACCEPT(0).
    site.run_until(Millis(10_000));
    assert_eq!(site.node.link().counters().dropped_samples, 7);
    let sent = site.take_sent();
    let first = telemetry(&sent)[0];
    assert_eq!((first.seq, first.window_start), (8, 8));
    site.run_until(Millis(14_000));
    let gateway = site.gateway.as_ref().unwrap();
    assert_eq!(
        gateway.stored,
        (8..=15).collect::<Vec<_>>(),
        "1..=7 are a final gap"
    );
}

#[test]
fn samples_overwritten_while_in_flight_make_window_start_jump() {
    let mut site = Site::<64>::new(node(ring_of(4), every(100))).with_gateway();
    site.run_until(Millis::ZERO); // HELLO → ACCEPT, sample 1 delivered
    site.gateway.as_mut().unwrap().mute = true;
    site.run_until(Millis(950)); // samples 2..=10 sent, none acknowledged
    let sent = site.take_sent();
    // First sends only: a resend (the timer expires in between) carries the window as it is then.
    let mut seen = std::collections::BTreeSet::new();
    for t in telemetry(&sent)
        .iter()
        .filter(|t| t.seq > 1 && seen.insert(t.seq))
    {
        assert_eq!(
            t.window_start,
            t.seq.saturating_sub(3).max(2),
            "seq {}",
            t.seq
        );
    }
    assert_eq!(site.node.link().counters().dropped_samples, 5);

    site.gateway.as_mut().unwrap().mute = false;
    site.run_until(Millis(3000)); // the RTO resends from the oldest held, past the gap
    let gateway = site.gateway.as_ref().unwrap();
    let total = site.node.link().counters().samples;
    let dropped = site.node.link().counters().dropped_samples;
    assert_eq!(gateway.stored[0], 1);
    assert!(gateway.stored.windows(2).skip(1).all(|w| w[1] == w[0] + 1));
    assert_eq!(gateway.last(), total);
    assert_eq!(gateway.stored.len() as u32 + dropped, total);
}

#[test]
fn silence_from_the_gateway_for_three_seconds_sends_the_node_back_to_hello() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000))).with_gateway();
    site.run_until(Millis(2000)); // 1..=3 acknowledged
    site.gateway.as_mut().unwrap().mute = true;
    site.take_sent();

    // Sample 4 starts the wait at 3000; RTO resends in between are not answered.
    site.run_until(Millis(5999));
    assert_eq!(site.node.link().state(), LinkState::Accepted);
    assert!(site.node.link().counters().retransmits > 0);
    assert_eq!(hellos(&site.take_sent()), 0);

    site.run_until(Millis(6000));
    assert_eq!(site.node.link().state(), LinkState::Unaccepted);
    let sent = site.take_sent();
    assert_eq!(hellos(&sent), 1);
    assert!(matches!(sent.last(), Some(Message::Enroll(_))));

    site.run_until(Millis(8000));
    assert!(
        seqs(&site.take_sent()).is_empty(),
        "no TELEMETRY until accepted again"
    );
}

#[test]
fn a_node_with_nothing_to_send_stays_accepted_through_silence() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), limited(1000, 2))).with_gateway();
    site.run_until(Millis(60_000));
    assert_eq!(site.node.link().state(), LinkState::Accepted);
    let sent = site.take_sent();
    assert_eq!(hellos(&sent), 1);
    let healths = sent
        .iter()
        .filter(|m| matches!(m, Message::Health(_)))
        .count();
    assert_eq!(healths, 7, "at ACCEPT, then every 10 s");
}

#[test]
fn a_restarted_gateway_accepts_the_node_again_and_delivery_resumes_without_gap() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000))).with_gateway();
    site.run_until(Millis(4500));
    assert_eq!(site.gateway.as_ref().unwrap().stored, [1, 2, 3, 4, 5]);

    // It ignores TELEMETRY until the node says HELLO; ACCEPT carries what it committed.
    site.gateway.as_mut().unwrap().restart();
    site.run_until(Millis(20_500));
    let gateway = site.gateway.as_ref().unwrap();
    assert_eq!(gateway.stored, (1..=21).collect::<Vec<_>>());
    assert_eq!(hellos(&site.take_sent()), 2);
    assert_eq!(site.node.link().held(), 0);
}

#[test]
fn a_new_accept_drops_what_the_gateway_already_committed() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000)));
    site.run_until(Millis(4500));
    site.deliver(&accept(0)); // 1..=5 sent, every ACK lost
    site.run_until(Millis(7500)); // link timeout: HELLO again
    assert_eq!(site.node.link().state(), LinkState::Unaccepted);
    site.take_sent();

    site.deliver(&accept(3)); // the gateway had committed 1..=3 before it went away
    let sent = site.take_sent();
    let frames = telemetry(&sent);
    assert_eq!(frames[0].seq, 4);
    assert!(frames.iter().all(|t| t.window_start == 4));
    assert_eq!(seqs(&sent), [4, 5, 6, 7, 8]);
}

#[test]
fn garbage_between_frames_is_counted_and_survived() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000)));
    site.run_until(Millis(500)); // sample 1 held
    let accept_frame = site.end.frame(&accept(0));
    let ack_frame = site.end.frame(&ack(1));
    let mut line = vec![0x13, 0x37, 0xC0, 0xFF, 0xEE]; // noise as the gateway's UART powers up
    line.extend(accept_frame); // its leading 0x00 ends the noise: error 1
    line.extend(&ack_frame[..6]); // an ACK cut off mid-frame ...
    line.push(0x00); // ... by a delimiter: error 2
    line.extend([0x55; 300]); // longer than any frame ...
    line.extend(&ack_frame); // ... ended by the real ACK's leading 0x00: error 3

    site.deliver_bytes(&line);
    let link = site.node.link();
    assert_eq!(link.state(), LinkState::Accepted);
    assert_eq!(link.held(), 0, "the ACK after the garbage was applied");
    assert_eq!(
        (link.counters().rx_frames, link.counters().rx_errors),
        (3, 3),
        "the CHALLENGE, the ACCEPT and the ACK"
    );
    assert!(link.decoder_counters().discarded_bytes >= 300);
}

#[test]
fn messages_for_another_boot_are_ignored() {
    let other = BOOT_ID ^ 1;
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000)));
    site.run_until(Millis(500));
    site.deliver(&Message::Ack(Ack {
        boot_id: other,
        upto: 1,
    }));
    site.deliver(&outpost_proto::Message::Accept(outpost_proto::Accept {
        boot_id: other,
        ack_upto: 1,
    }));
    assert_eq!(site.node.link().state(), LinkState::Unaccepted);
    assert_eq!(site.node.link().held(), 1);

    site.deliver(&accept(0));
    // ACKs for another boot neither free samples nor keep the session alive.
    for t in (1000..=3400).step_by(400) {
        site.run_until(Millis(t));
        site.deliver(&Message::Ack(Ack {
            boot_id: other,
            upto: 100,
        }));
        assert_eq!(site.node.link().oldest_held(), Some(1));
    }
    site.run_until(Millis(3500));
    assert_eq!(site.node.link().state(), LinkState::Unaccepted);
}

#[test]
fn ping_is_echoed_and_unknown_commands_are_refused_in_a_session() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000))).with_gateway();
    site.run_until(Millis(100));
    site.take_sent();
    let command = |id, code, args: &[u8]| {
        Message::Command(Command {
            id,
            code,
            args: heapless::Vec::from_slice(args).unwrap(),
        })
    };
    site.deliver(&command(7, 0x01, &[1, 2, 3]));
    site.deliver(&command(8, 0x42, &[9]));
    let response = |id, status, body: &[u8]| {
        Message::Response(Response {
            id,
            status,
            body: heapless::Vec::from_slice(body).unwrap(),
        })
    };
    assert_eq!(
        site.take_sent(),
        [response(7, 0, &[1, 2, 3]), response(8, 1, &[])]
    );
}

#[test]
fn health_reports_uptime_reset_reason_board_status_and_link_counters() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000))).with_gateway();
    site.node
        .link_mut()
        .set_board_status(outpost_node::BoardStatus {
            stack_free_min: 4096,
            chip_temp_centi: 3125,
        });
    site.run_until(Millis(25_000));
    let sent = site.take_sent();
    let (position, health) = sent
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, m)| match m {
            Message::Health(h) => Some((i, *h)),
            _ => None,
        })
        .unwrap();
    assert_eq!(health.uptime_s, 20);
    assert_eq!(health.reset_reason, ResetReason::Watchdog);
    assert_eq!(health.fw, FW);
    assert_eq!(
        (health.stack_free_min, health.chip_temp_centi),
        (4096, 3125)
    );
    assert_eq!(
        health.tx_frames as usize, position,
        "frames sent before this one"
    );
    let acked = seqs(&sent[..position]).len() as u32;
    assert_eq!(
        health.rx_frames,
        2 + acked,
        "the CHALLENGE, the ACCEPT and one ACK per TELEMETRY"
    );
    assert_eq!((health.rx_errors, health.retransmits), (0, 0));
    assert_eq!(health.dropped_samples, 0);
}

#[test]
fn a_frame_that_does_not_fit_the_transmit_buffer_is_dropped_and_counted() {
    let mut app = node::<8>(LinkConfig::default(), every(1000));
    app.handle_timeout(Millis::ZERO); // HELLO and ENROLL queued
    let mut small = [0u8; 8];
    assert_eq!(app.poll_transmit(&mut small), None);
    assert_eq!(app.link().counters().tx_dropped, 2);
    assert_eq!(
        app.poll_transmit(&mut [0u8; MAX_FRAME_LEN]),
        None,
        "dropped, not retried"
    );
}

#[test]
fn responses_beyond_the_transmit_queue_are_dropped_and_counted_never_blocking() {
    let mut site = Site::<8>::new(node(LinkConfig::default(), every(1000))).with_gateway();
    site.run_until(Millis(100));
    site.take_sent();
    let mut bytes = Vec::new();
    for id in 0..20 {
        let ping = Command {
            id,
            code: 0x01,
            args: heapless::Vec::new(),
        };
        bytes.extend(site.end.frame(&Message::Command(ping)));
    }
    let app = &mut site.node;
    app.handle_bytes(Millis(100), &bytes);
    assert_eq!(app.link().counters().tx_dropped, 12);
    let mut buf = [0u8; MAX_FRAME_LEN];
    let mut sent = 0;
    while app.poll_transmit(&mut buf).is_some() {
        sent += 1;
    }
    assert_eq!(sent, 8);
}

#[test]
fn samples_follow_a_fractional_rate_without_drift_and_stop_at_the_limit() {
    let schedule = Schedule {
        interval: Duration::from_secs(1) / 3,
        limit: Some(7),
    };
    let mut site = Site::<64>::new(node(LinkConfig::default(), schedule));
    // Delivered while every age is below 8,192 ms, which the wire carries to the ms.
    site.run_until(Millis(5_000));
    assert!(site.node.sampling_done());
    assert_eq!(site.node.samples_taken(), 7);
    site.deliver(&accept(0));
    let sent = site.take_sent();
    let ages: Vec<u32> = telemetry(&sent).iter().map(|t| t.age_ms).collect();
    // Sample k is taken at k × 333.333333 ms, floored: the rounding of one sample never adds
    // up over the next ones.
    assert_eq!(ages, [5_000, 4_667, 4_334, 4_001, 3_667, 3_334, 3_001]);
}

#[test]
fn a_late_caller_skips_missed_sampling_ticks_instead_of_bursting() {
    let mut app = node::<8>(LinkConfig::default(), every(1000));
    app.handle_timeout(Millis::ZERO);
    app.handle_timeout(Millis(5500)); // woken late: one sample now, not five
    assert_eq!(app.samples_taken(), 2);
    app.handle_timeout(Millis(5999));
    assert_eq!(app.samples_taken(), 2);
    app.handle_timeout(Millis(6000));
    assert_eq!(app.samples_taken(), 3);
}

fn nack(from: u32, to: u32) -> Message {
    Message::Nack(outpost_proto::Nack {
        boot_id: BOOT_ID,
        from,
        to,
    })
}

#[test]
fn a_nack_resends_exactly_the_named_samples_before_anything_new() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(100)));
    site.run_until(Millis(450));
    site.deliver(&accept(0));
    assert_eq!(seqs(&site.take_sent()), [1, 2, 3, 4, 5]);

    site.deliver(&nack(2, 3));
    assert_eq!(seqs(&site.take_sent()), [2, 3], "only the missing ones");
    let counters = site.node.link().counters();
    assert_eq!((counters.retransmits, counters.nacks), (2, 1));
    site.run_until(Millis(500));
    assert_eq!(seqs(&site.take_sent()), [6], "then new samples again");
}

#[test]
fn a_nack_is_clipped_to_what_is_held_and_was_sent_and_ignored_for_another_boot() {
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(100)));
    site.run_until(Millis(450));
    site.deliver(&accept(0));
    site.take_sent();
    site.deliver(&ack(3));
    // 1..=3 are acknowledged and gone, 6.. not sent yet: only 4 and 5 can be resent.
    site.deliver(&nack(1, 99));
    assert_eq!(seqs(&site.take_sent()), [4, 5]);
    site.deliver(&Message::Nack(outpost_proto::Nack {
        boot_id: BOOT_ID ^ 1,
        from: 4,
        to: 5,
    }));
    assert!(site.take_sent().is_empty());
}

#[test]
fn the_retransmit_timer_follows_the_round_trip_and_backs_off_when_it_expires() {
    use outpost_node::{RTO_MAX, RTO_MIN};
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(100)));
    site.run_until(Millis(0));
    site.deliver(&accept(0));
    assert_eq!(
        site.node.link().retransmit_timeout(),
        RTO_MAX,
        "nothing measured yet"
    );
    // Every sample acknowledged 30 ms after it was sent.
    for i in 1..=20u32 {
        site.run_until(Millis(u64::from(i) * 100 + 30));
        site.deliver(&ack(i + 1));
    }
    assert_eq!(site.node.link().retransmit_timeout(), RTO_MIN);
    // The gateway goes quiet: the first resend comes RTO_MIN after the last send, the next one
    // twice as long after that.
    site.take_sent();
    let last_sent = 2100;
    site.run_until(Millis(last_sent + 199));
    assert_eq!(site.node.link().counters().timeouts, 0);
    site.run_until(Millis(last_sent + 200));
    assert_eq!(site.node.link().counters().timeouts, 1);
    assert_eq!(site.node.link().retransmit_timeout(), 2 * RTO_MIN);
}

fn command(id: u16, code: u8, args: &[u8]) -> Message {
    Message::Command(Command {
        id,
        code,
        args: heapless::Vec::from_slice(args).unwrap(),
    })
}

fn responses(sent: &[Message]) -> Vec<&Response> {
    sent.iter()
        .filter_map(|m| match m {
            Message::Response(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[test]
fn reboot_is_answered_before_the_node_asks_the_board_to_reset() {
    use outpost_proto::diag::{code, status};
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000))).with_gateway();
    site.run_until(Millis(100));
    site.take_sent();
    assert!(!site.node.poll_reboot());
    site.deliver(&command(3, code::REBOOT, &[]));
    let sent = site.take_sent();
    assert_eq!(responses(&sent)[0].id, 3);
    assert_eq!(responses(&sent)[0].status, status::OK);
    assert!(site.node.poll_reboot(), "the answer is out: reset now");
    // Arguments REBOOT does not take are refused, and do not reboot.
    let mut other = Site::<64>::new(node(LinkConfig::default(), every(1000))).with_gateway();
    other.run_until(Millis(100));
    other.deliver(&command(4, code::REBOOT, &[1]));
    assert_eq!(
        responses(&other.take_sent())[0].status,
        status::BAD_ARGUMENTS
    );
    assert!(!other.node.poll_reboot());
}

#[test]
fn health_now_sends_a_health_at_once_then_answers() {
    use outpost_proto::diag::code;
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000))).with_gateway();
    site.run_until(Millis(100));
    site.take_sent();
    site.run_until(Millis(2500));
    site.take_sent();
    site.deliver(&command(9, code::HEALTH_NOW, &[]));
    let sent = site.take_sent();
    let health = sent
        .iter()
        .position(|m| matches!(m, Message::Health(h) if h.uptime_s == 2))
        .expect("a HEALTH at once, not at the next interval");
    let answer = sent
        .iter()
        .position(|m| matches!(m, Message::Response(r) if r.id == 9 && r.status == 0))
        .expect("answered");
    assert!(health < answer);
}

#[test]
fn reset_history_and_log_pages_are_answered_from_the_node_state() {
    use outpost_node::diag::{RamSector, record_boot};
    use outpost_proto::diag::{LogEvent, LogPage, LogRead, ResetHistory, code, status};
    let fw = outpost_proto::FwVersion {
        major: 1,
        minor: 2,
        patch: 3,
    };
    let mut flash = RamSector::default();
    record_boot(&mut flash, ResetReason::PowerOn, fw).unwrap();
    let history = record_boot(&mut flash, ResetReason::HardFault, fw).unwrap();
    let mut site = Site::<64>::new(node(LinkConfig::default(), every(1000))).with_gateway();
    site.node.link_mut().set_reset_history(history.clone());
    site.run_until(Millis(100));
    site.take_sent();
    site.deliver(&command(1, code::RESET_HISTORY, &[]));
    let sent = site.take_sent();
    let answer = responses(&sent)[0];
    assert_eq!(answer.status, status::OK);
    let pulled = ResetHistory::parse(&answer.body).unwrap();
    assert_eq!(pulled, history);
    assert_eq!(pulled.records[0].reason, ResetReason::HardFault);

    // The log holds the session coming up; log enough to need two pages.
    for i in 0..10 {
        site.node
            .link_mut()
            .log_event(LogEvent::WatchdogNearMiss, i);
    }
    site.deliver(&command(2, code::LOG_READ, &LogRead { from: 0 }.to_bytes()));
    let sent = site.take_sent();
    let first = LogPage::parse(&responses(&sent)[0].body).unwrap();
    assert_eq!(first.first, 0);
    assert_eq!(first.entries[0].event, LogEvent::LinkUp);
    assert!(first.more());
    let from = first.first + first.entries.len() as u32;
    site.deliver(&command(3, code::LOG_READ, &LogRead { from }.to_bytes()));
    let sent = site.take_sent();
    let second = LogPage::parse(&responses(&sent)[0].body).unwrap();
    assert_eq!(second.first, from);
    assert_eq!(second.entries.len(), 4);
    assert!(!second.more());
    assert_eq!(second.entries[3].arg, 9);
    // A LOG_READ without its offset is refused, the session goes on.
    site.deliver(&command(4, code::LOG_READ, &[]));
    assert_eq!(
        responses(&site.take_sent())[0].status,
        status::BAD_ARGUMENTS
    );
    assert_eq!(site.node.link().state(), LinkState::Accepted);
}
