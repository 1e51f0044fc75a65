//! The uplink session on a virtual clock, with a small stand-in for the adapter: an outbox of
//! sealed batches, a client that numbers packets, and a store that records acknowledgements.

use proptest::prelude::*;

use super::*;

const RESEND: Duration = Duration::from_secs(300);

fn config(ack: AckMode, max_unacked: u64) -> SessionConfig {
    SessionConfig {
        ack,
        max_unacked,
        resend_after: RESEND,
    }
}

/// What went on the wire, as the broker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wire {
    Online,
    Batch(u64),
    Alert(Vec<u8>),
    Result(String),
    Ota(Vec<u8>),
    Health(Vec<u8>),
}

struct Site {
    session: UplinkSession,
    now: Millis,
    /// Sealed batches still in the outbox.
    outbox: Vec<u64>,
    acked_upto: u64,
    wire: Vec<(u16, Wire)>,
    next_pkid: u16,
    subscriptions: Vec<Subscription>,
    store_acks: Vec<u64>,
    /// Answer store acknowledgements at once (otherwise they wait in `pending_store_ack`).
    store_answers: bool,
    pending_store_ack: Option<u64>,
    /// The client's queue takes no more publishes.
    client_full: bool,
}

impl Site {
    fn new(ack: AckMode, max_unacked: u64, sealed: u64) -> Site {
        let mut site = Site {
            session: UplinkSession::new(config(ack, max_unacked), "gw-1", 0, Millis::ZERO),
            now: Millis::ZERO,
            outbox: (1..=sealed).collect(),
            acked_upto: 0,
            wire: Vec::new(),
            next_pkid: 1,
            subscriptions: Vec::new(),
            store_acks: Vec::new(),
            store_answers: true,
            pending_store_ack: None,
            client_full: false,
        };
        site.session.handle_sealed(sealed);
        site
    }

    /// Connects and passes the probe.
    fn online(ack: AckMode, max_unacked: u64, sealed: u64) -> Site {
        let mut site = Site::new(ack, max_unacked, sealed);
        site.connect(true);
        site.echo();
        site
    }

    fn connect(&mut self, session_present: bool) {
        self.session.handle_connected(self.now, session_present);
        self.pump();
    }

    fn echo(&mut self) {
        self.session.handle_status_message(b"online", false);
        self.pump();
    }

    fn seal(&mut self, newest: u64) {
        let from = self.outbox.last().copied().unwrap_or(self.acked_upto) + 1;
        self.outbox.extend(from..=newest);
        self.session.handle_sealed(newest);
        self.pump();
    }

    fn cloud_ack(&mut self, upto: u64) {
        self.session
            .handle_cloud_ack(format!("{{\"upto\": {upto}}}").as_bytes());
        self.pump();
    }

    fn puback(&mut self, pkid: u16) {
        self.session.handle_puback(pkid);
        self.pump();
    }

    fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
        self.session.handle_timeout(self.now);
        self.pump();
    }

    /// Carries out every action, as the adapter does after each input.
    fn pump(&mut self) {
        let mut rounds = 0;
        while let Some(action) = self.session.poll_action() {
            rounds += 1;
            assert!(rounds < 10_000, "the session keeps asking: {action:?}");
            let sent = match action {
                Action::Subscribe(s) => {
                    self.subscriptions.push(s);
                    self.session
                        .handle_queued(self.now, Queued::Subscription(s));
                    None
                }
                Action::AckStore { upto } => {
                    self.store_acks.push(upto);
                    if self.store_answers {
                        self.apply_store_ack(upto);
                    } else {
                        self.pending_store_ack = Some(upto);
                    }
                    None
                }
                action if self.client_full => {
                    self.session.handle_client_full(action);
                    None
                }
                Action::PublishOnline => {
                    self.session.handle_queued(self.now, Queued::Status);
                    Some(Wire::Online)
                }
                Action::PublishAlert(alert) => {
                    self.session.handle_queued(self.now, Queued::Alert);
                    Some(Wire::Alert(alert))
                }
                Action::PublishResult { request, .. } => {
                    self.session.handle_queued(self.now, Queued::Result);
                    Some(Wire::Result(request))
                }
                Action::PublishOta(event) => {
                    self.session.handle_queued(self.now, Queued::Ota);
                    Some(Wire::Ota(event))
                }
                Action::PublishHealth(report) => {
                    self.session.handle_queued(self.now, Queued::Health);
                    Some(Wire::Health(report))
                }
                Action::PublishBatch { after } => {
                    match self.outbox.iter().copied().find(|&s| s > after) {
                        Some(seq) => {
                            self.session.handle_queued(self.now, Queued::Batch(seq));
                            Some(Wire::Batch(seq))
                        }
                        None => {
                            self.session.handle_no_batch();
                            None
                        }
                    }
                }
            };
            if let Some(packet) = sent {
                let pkid = self.next_pkid;
                self.next_pkid += 1;
                self.session.handle_outgoing_publish(pkid);
                self.wire.push((pkid, packet));
            }
        }
    }

    fn apply_store_ack(&mut self, upto: u64) {
        self.outbox.retain(|&s| s > upto);
        self.acked_upto = self.acked_upto.max(upto);
        self.session
            .handle_store_acked(self.now, Ok(self.acked_upto));
    }

    fn batches_on_wire(&self) -> Vec<u64> {
        self.wire
            .iter()
            .filter_map(|(_, w)| match w {
                Wire::Batch(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn pkid_of(&self, seq: u64) -> u16 {
        self.wire
            .iter()
            .rev()
            .find(|(_, w)| *w == Wire::Batch(seq))
            .expect("batch was sent")
            .0
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.session.poll_event()).collect()
    }
}

#[test]
fn a_connection_subscribes_publishes_online_and_holds_batches_until_the_echo() {
    let mut site = Site::new(AckMode::EndToEnd, 4, 3);
    site.connect(true);
    assert_eq!(
        site.subscriptions,
        [Subscription::Ack, Subscription::Status]
    );
    assert_eq!(site.wire, [(1, Wire::Online)]);
    site.session.handle_status_message(b"online", true);
    site.pump();
    assert!(
        site.batches_on_wire().is_empty(),
        "a retained echo may be an earlier session's: it proves nothing"
    );
    site.echo();
    assert_eq!(site.batches_on_wire(), [1, 2, 3]);
}

#[test]
fn without_the_echo_the_identity_is_refused_and_everything_is_held() {
    let mut site = Site::new(AckMode::EndToEnd, 4, 3);
    site.connect(true);
    site.session.handle_alert(b"{\"kind\":\"disk\"}".to_vec());
    assert_eq!(
        site.session.poll_timeout(),
        Some(Millis::ZERO + PROBE_TIMEOUT)
    );
    site.advance(PROBE_TIMEOUT);
    let refused = site.session.status().refused.clone().expect("refused");
    assert!(refused.contains("outpost/gw-1/"), "{refused}");
    assert!(matches!(
        site.events().as_slice(),
        [Event::Connected { .. }, Event::Refused(_)]
    ));
    assert_eq!(site.wire, [(1, Wire::Online)], "no batch, no alert");
    // A late echo (the ACL was fixed) lets everything through.
    site.echo();
    assert_eq!(site.session.status().refused, None);
    assert_eq!(site.events(), [Event::Granted]);
    assert_eq!(
        site.wire[1..],
        [
            (2, Wire::Alert(b"{\"kind\":\"disk\"}".to_vec())),
            (3, Wire::Batch(1)),
            (4, Wire::Batch(2)),
            (5, Wire::Batch(3))
        ]
    );
}

#[test]
fn a_refused_subscription_refuses_the_identity() {
    let mut site = Site::new(AckMode::EndToEnd, 4, 1);
    site.connect(true);
    site.session.handle_suback(true);
    site.echo();
    assert!(site.session.status().refused.is_some());
    assert!(site.batches_on_wire().is_empty());
}

#[test]
fn at_most_max_unacked_batches_are_out_and_each_ack_lets_more_go() {
    let mut site = Site::online(AckMode::EndToEnd, 4, 10);
    assert_eq!(site.batches_on_wire(), [1, 2, 3, 4]);
    site.cloud_ack(2);
    assert_eq!(site.store_acks, [2]);
    assert_eq!(site.batches_on_wire(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(site.session.status().acked_upto, 2);
    site.cloud_ack(2);
    assert_eq!(
        site.store_acks,
        [2],
        "a repeated acknowledgement is nothing new"
    );
    site.cloud_ack(10);
    assert_eq!(site.store_acks, [2], "batches 7 to 10 never left");
    site.cloud_ack(6);
    assert_eq!(site.batches_on_wire(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
}

#[test]
fn new_batches_go_out_as_they_are_sealed() {
    let mut site = Site::online(AckMode::EndToEnd, 4, 0);
    assert!(site.batches_on_wire().is_empty());
    site.seal(1);
    site.seal(2);
    assert_eq!(site.batches_on_wire(), [1, 2]);
}

#[test]
fn a_cloud_ack_for_batches_never_published_is_refused_counted_and_deletes_nothing() {
    // The review's case: max_unacked 1, only batch 1 out, {"upto": 8} on the ack topic.
    let mut site = Site::online(AckMode::EndToEnd, 1, 8);
    assert_eq!(site.batches_on_wire(), [1]);
    site.events();
    site.cloud_ack(8);
    assert!(site.store_acks.is_empty(), "the store is not asked");
    assert_eq!(site.outbox, (1..=8).collect::<Vec<_>>());
    assert_eq!(site.session.status().acks_refused, 1);
    assert_eq!(
        site.events(),
        [Event::AckRefused {
            upto: 8,
            published_upto: 1
        }]
    );
    // The genuine acknowledgement still works.
    site.cloud_ack(1);
    assert_eq!(site.store_acks, [1]);
    assert_eq!(site.batches_on_wire(), [1, 2]);
}

#[test]
fn a_malformed_ack_is_reported_and_ignored() {
    let mut site = Site::online(AckMode::EndToEnd, 4, 2);
    site.events();
    for payload in [
        &b"upto=2"[..],
        b"{\"upto\": -1}",
        b"{\"upto\": \"2\"}",
        b"{}",
    ] {
        site.session.handle_cloud_ack(payload);
        site.pump();
    }
    assert!(site.store_acks.is_empty());
    assert_eq!(site.events(), vec![Event::AckMalformed; 4]);
}

#[test]
fn with_no_ack_progress_for_resend_after_batches_go_out_again_from_the_oldest_unacked() {
    let mut site = Site::online(AckMode::EndToEnd, 2, 3);
    assert_eq!(site.batches_on_wire(), [1, 2]);
    assert_eq!(site.session.poll_timeout(), Some(Millis::ZERO + RESEND));
    site.advance(RESEND - Duration::from_millis(1));
    assert_eq!(site.batches_on_wire(), [1, 2]);
    site.advance(Duration::from_millis(1));
    assert_eq!(site.batches_on_wire(), [1, 2, 1, 2]);
    site.cloud_ack(1);
    assert_eq!(site.batches_on_wire(), [1, 2, 1, 2, 3]);
}

#[test]
fn a_batch_sealed_after_a_quiet_spell_longer_than_resend_after_is_sent_once() {
    // Batches every 6 minutes, resend_after 5: each is acknowledged, the next goes out once.
    let mut site = Site::online(AckMode::EndToEnd, 4, 1);
    assert_eq!(site.batches_on_wire(), [1]);
    site.cloud_ack(1);
    for seq in 2..=4 {
        site.advance(RESEND + Duration::from_secs(60));
        site.seal(seq);
        site.advance(Duration::from_millis(100)); // the timer looks before the cloud's ack
        site.cloud_ack(seq);
    }
    assert_eq!(site.batches_on_wire(), [1, 2, 3, 4]);
}

#[test]
fn a_session_lost_by_the_broker_sends_again_everything_unacknowledged() {
    let mut site = Site::online(AckMode::EndToEnd, 4, 3);
    site.cloud_ack(1);
    site.session
        .handle_connection_lost(site.now, "broker gone".into());
    site.pump();
    site.now = site.now + Duration::from_secs(1);
    site.connect(false);
    site.echo();
    assert_eq!(site.batches_on_wire(), [1, 2, 3, 2, 3]);
}

#[test]
fn a_session_the_broker_kept_is_not_sent_again() {
    let mut site = Site::online(AckMode::EndToEnd, 4, 3);
    site.session.handle_connection_lost(site.now, "link".into());
    site.connect(true);
    site.echo();
    assert_eq!(
        site.batches_on_wire(),
        [1, 2, 3],
        "rumqttc replays its own in-flight"
    );
}

#[test]
fn a_reconnection_to_a_kept_session_whose_subscriptions_were_granted_does_not_subscribe_again() {
    let mut site = Site::new(AckMode::EndToEnd, 4, 1);
    site.connect(false);
    site.session.handle_suback(false);
    site.session.handle_suback(false);
    site.echo();
    assert_eq!(site.subscriptions.len(), 2);
    site.session.handle_connection_lost(site.now, "link".into());
    site.connect(true);
    assert_eq!(site.subscriptions.len(), 2, "the session holds them");
    assert_eq!(
        site.wire.last(),
        Some(&(3, Wire::Online)),
        "the probe still runs"
    );
    site.echo();
    // A session the broker lost needs them again.
    site.session
        .handle_connection_lost(site.now, "broker restarted".into());
    site.connect(false);
    assert_eq!(site.subscriptions.len(), 4);
}

#[test]
fn subscriptions_without_both_subacks_are_made_again_even_in_a_kept_session() {
    let mut site = Site::new(AckMode::EndToEnd, 4, 1);
    site.connect(false);
    site.session.handle_suback(false); // the second SUBACK never came: the link dropped
    site.session.handle_connection_lost(site.now, "link".into());
    site.connect(true);
    assert_eq!(site.subscriptions.len(), 4);
}

#[test]
fn a_batch_the_broker_refuses_in_its_puback_is_not_acknowledged_and_refuses_the_identity() {
    let mut site = Site::online(AckMode::Broker, 8, 2);
    let (p1, p2) = (site.pkid_of(1), site.pkid_of(2));
    site.session.handle_puback_refused(p1, "not authorized");
    site.pump();
    site.puback(p2);
    assert!(
        site.store_acks.is_empty(),
        "batch 1 was dropped by the broker"
    );
    let refused = site.session.status().refused.clone().expect("refused");
    assert!(refused.contains("batch 1 (not authorized)"), "{refused}");
    assert!(refused.contains("outpost/gw-1/"), "{refused}");
    // Held until a connection's probe passes; then batch 1 goes out again.
    site.seal(3);
    assert_eq!(site.batches_on_wire(), [1, 2]);
    site.session.handle_connection_lost(site.now, "link".into());
    site.connect(true);
    site.echo();
    assert_eq!(site.batches_on_wire(), [1, 2, 1, 2, 3]);
}

#[test]
fn out_of_order_pubacks_acknowledge_only_up_to_the_first_gap_in_broker_mode() {
    let mut site = Site::online(AckMode::Broker, 8, 4);
    let (p1, p2, p3, p4) = (
        site.pkid_of(1),
        site.pkid_of(2),
        site.pkid_of(3),
        site.pkid_of(4),
    );
    site.puback(p2);
    site.puback(p3);
    assert!(site.store_acks.is_empty(), "batch 1 is not confirmed yet");
    site.puback(p1);
    assert_eq!(site.store_acks, [3]);
    site.puback(p4);
    assert_eq!(site.store_acks, [3, 4]);
    site.puback(p4);
    assert_eq!(
        site.store_acks,
        [3, 4],
        "a duplicate PUBACK acknowledges nothing"
    );
    // The cloud's acknowledgements play no part in broker mode.
    site.cloud_ack(4);
    assert_eq!(site.store_acks, [3, 4]);
}

#[test]
fn a_puback_for_the_status_or_an_alert_is_not_a_batch() {
    let mut site = Site::online(AckMode::Broker, 8, 0);
    site.session.handle_alert(b"{}".to_vec());
    site.pump();
    for (pkid, _) in site.wire.clone() {
        site.puback(pkid);
    }
    assert!(site.store_acks.is_empty());
}

#[test]
fn one_store_ack_at_a_time_and_the_newest_wins() {
    let mut site = Site::online(AckMode::EndToEnd, 8, 6);
    site.store_answers = false;
    site.cloud_ack(2);
    site.cloud_ack(4);
    site.cloud_ack(3);
    assert_eq!(site.store_acks, [2], "the first is still being written");
    let pending = site.pending_store_ack.take().unwrap();
    site.store_answers = true;
    site.apply_store_ack(pending);
    site.pump();
    assert_eq!(site.store_acks, [2, 4]);
    assert_eq!(site.session.status().acked_upto, 4);
}

#[test]
fn a_store_that_cannot_write_is_asked_again_after_a_second() {
    let mut site = Site::online(AckMode::EndToEnd, 8, 3);
    site.store_answers = false;
    site.cloud_ack(2);
    site.pending_store_ack = None;
    site.session
        .handle_store_acked(site.now, Err(StoreAckError::Failed("disk full".into())));
    site.pump();
    assert_eq!(site.store_acks, [2]);
    assert_eq!(site.session.poll_timeout(), Some(site.now + STORE_RETRY));
    site.store_answers = true;
    site.advance(STORE_RETRY);
    assert_eq!(site.store_acks, [2, 2]);
    assert_eq!(site.session.status().acked_upto, 2);
}

#[test]
fn an_ack_the_outbox_refuses_is_forgotten_and_the_data_kept() {
    let mut site = Site::online(AckMode::EndToEnd, 8, 3);
    site.store_answers = false;
    site.cloud_ack(3);
    site.session.handle_store_acked(
        site.now,
        Err(StoreAckError::Refused("beyond newest".into())),
    );
    site.pump();
    assert_eq!(site.session.status().acked_upto, 0);
    site.store_answers = true;
    site.cloud_ack(2);
    assert_eq!(site.store_acks, [3, 2], "a smaller, valid one goes through");
}

#[test]
fn a_full_client_queue_is_retried_after_the_next_packet_not_in_a_loop() {
    let mut site = Site::online(AckMode::EndToEnd, 4, 0);
    site.client_full = true;
    site.seal(2);
    assert!(site.batches_on_wire().is_empty());
    site.client_full = false;
    site.session.handle_outgoing_publish(999);
    site.pump();
    assert_eq!(site.batches_on_wire(), [1, 2]);
}

#[test]
fn alerts_wait_for_the_probe_and_the_oldest_are_dropped_beyond_the_bound() {
    let mut site = Site::new(AckMode::EndToEnd, 4, 0);
    for i in 0..MAX_QUEUED_ALERTS + 2 {
        site.session.handle_alert(i.to_string().into_bytes());
    }
    site.connect(true);
    assert_eq!(site.wire, [(1, Wire::Online)]);
    site.echo();
    let alerts: Vec<Vec<u8>> = site
        .wire
        .iter()
        .filter_map(|(_, w)| match w {
            Wire::Alert(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(alerts.len(), MAX_QUEUED_ALERTS);
    assert_eq!(alerts[0], b"2");
    assert_eq!(site.session.status().alerts_dropped, 2);
}

#[test]
fn firmware_events_go_out_before_batches_once_the_probe_passed_and_a_flood_keeps_the_newest() {
    let mut site = Site::new(AckMode::EndToEnd, 4, 0);
    site.outbox = vec![1, 2];
    site.session.handle_sealed(2);
    for i in 0..MAX_QUEUED_ALERTS + 3 {
        site.session.handle_ota(i.to_string().into_bytes());
    }
    site.connect(true);
    assert_eq!(site.wire, [(1, Wire::Online)], "nothing before the probe");
    site.echo();
    let sent: Vec<&Wire> = site.wire.iter().map(|(_, w)| w).skip(1).collect();
    let first_batch = sent.iter().position(|w| matches!(w, Wire::Batch(_)));
    let last_ota = sent.iter().rposition(|w| matches!(w, Wire::Ota(_)));
    assert!(last_ota < first_batch, "{sent:?}");
    let events: Vec<&Vec<u8>> = sent
        .iter()
        .filter_map(|w| match w {
            Wire::Ota(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), MAX_QUEUED_ALERTS);
    assert_eq!(events[0].as_slice(), b"3");
    assert_eq!(site.session.status().ota_dropped, 3);
}

#[test]
fn an_outage_is_one_lost_event_retries_within_a_second_and_one_connected_event_with_its_length() {
    let mut site = Site::online(AckMode::EndToEnd, 4, 0);
    site.events();
    let mut waits = Vec::new();
    for _ in 0..10 {
        site.session
            .handle_connection_lost(site.now, "refused".into());
        let at = site.session.poll_reconnect_at().unwrap();
        waits.push(at - site.now);
        site.now = at;
    }
    assert!(
        waits.iter().all(|&w| (100..=1000).contains(&w)),
        "{waits:?}"
    );
    let events = site.events();
    assert!(
        matches!(&events[0], Event::Lost { reason, was_up: true, .. } if reason == "refused"),
        "{events:?}"
    );
    assert_eq!(events.len(), 10, "{events:?}");
    assert!(
        events[1..]
            .iter()
            .all(|e| matches!(e, Event::RetryFailed { .. })),
        "{events:?}"
    );
    let down_for = site.now - Millis::ZERO;
    site.connect(true);
    assert_eq!(site.session.poll_reconnect_at(), None);
    assert_eq!(
        site.events(),
        [Event::Connected {
            session_present: true,
            outage: Some(Outage {
                down_for: Duration::from_millis(down_for),
                failures: 10
            })
        }]
    );
    // The connection reset the back-off: the next loss starts again from 200 ms.
    site.session
        .handle_connection_lost(site.now, "refused".into());
    let wait = site.session.poll_reconnect_at().unwrap() - site.now;
    assert!((100..=200).contains(&wait), "{wait}");
}

#[test]
fn a_gateway_that_cannot_connect_at_start_says_so_once_then_at_growing_intervals() {
    let mut site = Site::new(AckMode::EndToEnd, 4, 0);
    let mut still_down = Vec::new();
    let mut lost = 0;
    while site.now < Millis::from_secs(600) {
        site.session
            .handle_connection_lost(site.now, "refused".into());
        for event in site.events() {
            match event {
                Event::Lost { was_up: false, .. } => lost += 1,
                Event::StillDown { down_for, .. } => still_down.push(down_for.as_secs()),
                Event::RetryFailed { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        site.now = site.session.poll_reconnect_at().unwrap();
    }
    assert_eq!(lost, 1);
    assert_eq!(still_down.len(), 3, "{still_down:?}");
    assert!((60..62).contains(&still_down[0]), "{still_down:?}");
    assert!((180..200).contains(&still_down[1]), "{still_down:?}");
    assert!((420..460).contains(&still_down[2]), "{still_down:?}");
    // Past the recent outage, the waits grew.
    site.session
        .handle_connection_lost(site.now, "refused".into());
    let wait = site.session.poll_reconnect_at().unwrap() - site.now;
    assert!(wait > 10_000, "{wait}");
    site.connect(false);
    assert!(matches!(
        site.events()[..],
        [Event::RetryFailed { .. }, Event::Connected { outage: Some(Outage { failures, .. }), .. }] if failures > 100
    ));
}

/// One step of a random run.
#[derive(Debug, Clone)]
enum Step {
    Seal(u8),
    CloudAck(u8),
    PubackOldest,
    Reconnect { session_present: bool },
    Advance(u32),
    Alert,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1u8..4).prop_map(Step::Seal),
        3 => (0u8..40).prop_map(Step::CloudAck),
        2 => Just(Step::PubackOldest),
        1 => any::<bool>().prop_map(|session_present| Step::Reconnect { session_present }),
        2 => (0u32..400_000).prop_map(Step::Advance),
        1 => Just(Step::Alert),
    ]
}

proptest! {
    /// Whatever the cloud, the broker and the clock do: an acknowledgement never covers a batch
    /// that was not on the wire, never more than `max_unacked` are out, the acknowledgement
    /// point only grows, and every sealed batch is eventually sent.
    #[test]
    fn the_session_keeps_its_promises_under_any_order_of_events(
        ack in prop_oneof![Just(AckMode::EndToEnd), Just(AckMode::Broker)],
        max_unacked in 1u64..6,
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let mut site = Site::online(ack, max_unacked, 0);
        let mut sealed = 0u64;
        let mut last_acked = 0;
        let mut pubacked: std::collections::BTreeSet<u16> = std::collections::BTreeSet::new();
        for step in steps {
            match step {
                Step::Seal(n) => {
                    sealed += u64::from(n);
                    site.seal(sealed);
                }
                Step::CloudAck(upto) => site.cloud_ack(u64::from(upto)),
                Step::PubackOldest => {
                    let oldest = site.wire.iter().map(|(p, _)| *p).find(|p| !pubacked.contains(p));
                    if let Some(pkid) = oldest {
                        pubacked.insert(pkid);
                        site.puback(pkid);
                    }
                }
                Step::Reconnect { session_present } => {
                    site.session.handle_connection_lost(site.now, "gone".into());
                    site.pump();
                    site.connect(session_present);
                    site.echo();
                }
                Step::Advance(ms) => site.advance(Duration::from_millis(u64::from(ms))),
                Step::Alert => {
                    site.session.handle_alert(b"{}".to_vec());
                    site.pump();
                }
            }
            let sent_max = site.batches_on_wire().into_iter().max().unwrap_or(0);
            for &upto in &site.store_acks {
                prop_assert!(upto <= sent_max, "ack {upto} beyond what went out ({sent_max})");
            }
            let status = site.session.status();
            prop_assert!(status.acked_upto >= last_acked);
            last_acked = status.acked_upto;
            prop_assert!(site.session.published_upto - site.session.acked_upto <= max_unacked);
        }
        // Settle: the cloud acknowledges everything it got, until the outbox is empty.
        for _ in 0..200 {
            let sent_max = site.batches_on_wire().into_iter().max().unwrap_or(0);
            if ack == AckMode::EndToEnd {
                site.cloud_ack(sent_max);
            } else {
                for (pkid, _) in site.wire.clone() {
                    site.puback(pkid);
                }
            }
            if site.acked_upto == sealed {
                break;
            }
            site.advance(RESEND);
        }
        prop_assert_eq!(site.acked_upto, sealed, "every sealed batch was delivered");
    }
}

#[test]
fn a_refused_command_topic_leaves_batches_flowing_and_says_so() {
    let mut site = Site::new(AckMode::EndToEnd, 4, 2);
    site.session =
        UplinkSession::new(config(AckMode::EndToEnd, 4), "gw-1", 0, Millis::ZERO).with_commands();
    site.session.handle_sealed(2);
    site.connect(false);
    assert_eq!(
        site.subscriptions,
        [
            Subscription::Ack,
            Subscription::Status,
            Subscription::Commands
        ]
    );
    assert_eq!(site.session.status().commands, Some("subscribing"));
    site.session.handle_suback(false);
    site.session.handle_suback(false);
    site.session.handle_suback(true); // the ACL lacks outpost/gw-1/cmd/+
    site.echo();
    assert!(site.session.status().refused.is_none());
    assert_eq!(
        site.session.status().commands,
        Some("refused by the broker")
    );
    assert_eq!(site.batches_on_wire(), [1, 2]);
    assert!(std::iter::from_fn(|| site.session.poll_event()).any(|e| e == Event::CommandsRefused));
    // Not granted in full: a kept session subscribes again (the ACL may have been fixed).
    site.session.handle_connection_lost(site.now, "link".into());
    site.connect(true);
    assert_eq!(site.subscriptions.len(), 6);
    site.session.handle_suback(false);
    site.session.handle_suback(false);
    site.session.handle_suback(false);
    assert_eq!(site.session.status().commands, Some("subscribed"));
}

#[test]
fn results_wait_for_the_topics_and_go_out_before_batches() {
    let mut site = Site::new(AckMode::EndToEnd, 4, 1);
    site.session.handle_result("r-1".into(), b"{}".to_vec());
    site.pump();
    assert!(site.wire.is_empty(), "not connected");
    site.connect(false);
    site.session.handle_result("r-2".into(), b"{}".to_vec());
    site.pump();
    assert_eq!(site.wire.len(), 1, "only the probe before the echo");
    site.echo();
    assert_eq!(
        site.wire[1..],
        [
            (2, Wire::Result("r-1".into())),
            (3, Wire::Result("r-2".into())),
            (4, Wire::Batch(1))
        ]
    );
}

#[test]
fn a_health_report_waits_for_the_probe_goes_out_before_batches_and_only_the_newest_waits() {
    let mut site = Site::new(AckMode::EndToEnd, 4, 0);
    site.outbox = vec![1, 2];
    site.session.handle_sealed(2);
    site.session.handle_health(b"start".to_vec());
    site.session.handle_health(b"uplink".to_vec());
    site.connect(true);
    assert_eq!(site.wire, [(1, Wire::Online)], "nothing before the probe");
    site.echo();
    let sent: Vec<&Wire> = site.wire.iter().map(|(_, w)| w).skip(1).collect();
    assert_eq!(
        sent.first(),
        Some(&&Wire::Health(b"uplink".to_vec())),
        "the newest report first, before batches: {sent:?}"
    );
    assert_eq!(
        sent.iter().filter(|w| matches!(w, Wire::Health(_))).count(),
        1,
        "a replaced report never goes out: {sent:?}"
    );
    assert!(sent.iter().any(|w| matches!(w, Wire::Batch(_))), "{sent:?}");
}

#[test]
fn a_message_on_a_topic_the_acl_predates_is_reported_once_and_batches_flow_on() {
    let mut site = Site::new(AckMode::Broker, 8, 0);
    site.outbox = vec![1, 2];
    site.session.handle_sealed(2);
    site.session.handle_health(b"h1".to_vec());
    site.session.handle_alert(b"a1".to_vec());
    site.connect(true);
    site.echo();
    site.events();
    let pkid_of = |site: &Site, wanted: &Wire| {
        site.wire
            .iter()
            .find(|(_, w)| w == wanted)
            .map(|(p, _)| *p)
            .unwrap()
    };
    let health = pkid_of(&site, &Wire::Health(b"h1".to_vec()));
    let alert = pkid_of(&site, &Wire::Alert(b"a1".to_vec()));
    // An ACL written before the health topic: that PUBACK says not authorized.
    site.session.handle_puback_refused(health, "not authorized");
    site.puback(alert);
    let (b1, b2) = (site.pkid_of(1), site.pkid_of(2));
    site.puback(b1);
    site.puback(b2);
    assert_eq!(site.store_acks, [1, 2], "batches are acknowledged as ever");
    assert_eq!(site.session.status().refused, None, "the identity is fine");
    assert_eq!(
        site.session
            .status()
            .extras_refused
            .get("health")
            .map(String::as_str),
        Some("not authorized")
    );
    assert_eq!(
        site.events(),
        [
            Event::ExtraRefused {
                topic: "health",
                reason: "not authorized".into()
            },
            Event::Acknowledged { acked_upto: 1 },
            Event::Acknowledged { acked_upto: 2 }
        ]
    );
    // The next refusal on the same topic is not news; an accepted one clears it.
    site.session.handle_health(b"h2".to_vec());
    site.pump();
    let h2 = pkid_of(&site, &Wire::Health(b"h2".to_vec()));
    site.session.handle_puback_refused(h2, "not authorized");
    assert!(site.events().is_empty());
    site.session.handle_health(b"h3".to_vec());
    site.pump();
    let h3 = pkid_of(&site, &Wire::Health(b"h3".to_vec()));
    site.puback(h3);
    assert!(site.session.status().extras_refused.is_empty());
}
