//! The MQTT uplink session: which batch goes out next, what an acknowledgement may delete, and
//! whether the broker lets this gateway use its topics at all.
//!
//! Topics (all under the gateway's own prefix, so a per-identity ACL can hold it there):
//! - `outpost/{id}/batch`: each sealed batch, QoS 1, the stored bytes exactly;
//! - `outpost/{id}/ack`: the cloud's `{"upto": SEQ}`; only then do batches leave the outbox
//!   (or on the broker's PUBACK, with `ack = "broker"`);
//! - `outpost/{id}/status`: `online` (retained) on connect; `offline` (retained) as Last Will;
//! - `outpost/{id}/alerts`: each alert as JSON when it is raised, not held for a batch.
//!
//! Design: [`UplinkSession`] owns the uplink's policy and never does IO or reads a clock, in the
//! manner of rumqttc's `MqttState` and quinn-proto. The adapter (`outpost::io::uplink::mqtt`)
//! owns the rumqttc event loop and the outbox reader; it feeds the session what happened
//! (`handle_*`, with the time) and carries out what it asks for ([`UplinkSession::poll_action`],
//! [`UplinkSession::poll_event`] for the journal), sleeping until
//! [`UplinkSession::poll_timeout`] in between. Invariants the session keeps:
//!
//! 1. **Nothing is deleted that the cloud cannot have.** An end-to-end acknowledgement is passed
//!    to the store only up to the newest batch whose PUBLISH this process put on the wire. A
//!    larger one (a confused or hostile peer on the ack topic, or an acknowledgement that
//!    overtook a restart) is refused, counted and raised as an alert; the batches stay and are
//!    sent again. The broker's PUBACK is not required: after a reconnect the cloud's ack for a
//!    replayed batch may overtake the replay's PUBACK, and refusing it would only cost a resend.
//! 2. **Flow control.** At most `max_unacked` batches are out without an acknowledgement, so a
//!    backlog after an outage drains oldest first at the pace the cloud confirms, and live
//!    batches queue behind it instead of flooding the link.
//! 3. **Resend.** With batches out and no acknowledgement progress for `resend_after`, or when
//!    the broker lost the session (CONNACK without `session_present`), publishing starts again
//!    from the oldest unacknowledged batch. The cloud dedupes by sequence number.
//! 4. **The probe.** Mosquitto 2.0 grants every SUBSCRIBE and, with MQTT 3.1.1, PUBACKs a
//!    publish its ACL denies (then drops it): neither answer tells whether this identity may
//!    use its topics. So each connection subscribes to its own status topic and publishes
//!    `online` to it; only once that comes back live (not retained) are batches and alerts
//!    sent. Without the echo within [`PROBE_TIMEOUT`] the identity counts as refused and
//!    everything is held, since anything sent would be silently dropped.
//! 5. **Back soon, quietly.** A failed or lost connection is tried again after the [`Backoff`]'s
//!    wait: about a second while the outage is recent, longer only for long ones, jittered, and
//!    reset by a connection. The journal gets one line per change of state: [`Event::Lost`]
//!    (with the reason) when the uplink goes down, [`Event::Connected`] (with how long it was
//!    down) when it is back, [`Event::StillDown`] at growing intervals in between; each failed
//!    attempt is only an [`Event::RetryFailed`] (debug).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use outpost_proto::Millis;
use serde::Serialize;

use crate::config::AckMode;

pub mod backoff;
pub mod protocol;

pub use backoff::{Backoff, BackoffPolicy};

/// How long the own-status echo may take before the topics count as refused.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait before asking the store again after it could not record an acknowledgement.
pub const STORE_RETRY: Duration = Duration::from_secs(1);
/// Alerts waiting for the uplink; beyond this the oldest are dropped (and counted).
pub const MAX_QUEUED_ALERTS: usize = 64;
/// An outage is reported again ([`Event::StillDown`]) after this long, then after twice as long
/// each time, up to [`STILL_DOWN_MAX`].
pub const STILL_DOWN_FIRST: Duration = Duration::from_secs(60);
pub const STILL_DOWN_MAX: Duration = Duration::from_secs(3600);

/// The session's settings, from `[uplink.mqtt]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub ack: AckMode,
    pub max_unacked: u64,
    pub resend_after: Duration,
}

/// A subscription the session wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    /// `outpost/{id}/ack`, QoS 0: acknowledgements are cumulative and idempotent, so a lost one
    /// is covered by the next (or by the resend); QoS 1 would cost a PUBACK each.
    Ack,
    /// `outpost/{id}/status`, QoS 1: the probe's echo comes back on it.
    Status,
    /// `outpost/{id}/cmd/+`, QoS 1: signed remote commands (`crate::command`), only when
    /// operator keys are configured. A broker that refuses it leaves batches flowing.
    Commands,
}

/// Work for the adapter, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Subscribe(Subscription),
    /// Publish `online`, retained, QoS 1, on the status topic (the probe).
    PublishOnline,
    /// Publish the oldest batch in the outbox with a sequence number above `after`, QoS 1; answer
    /// with [`UplinkSession::handle_queued`] (or [`UplinkSession::handle_no_batch`]).
    PublishBatch {
        after: u64,
    },
    /// Publish an alert (JSON) on the alert topic, QoS 1.
    PublishAlert(Vec<u8>),
    /// Publish a firmware update event (JSON) on `outpost/{id}/ota`, QoS 1.
    PublishOta(Vec<u8>),
    /// Publish the gateway's health report (JSON) on `outpost/{id}/health`, QoS 1.
    PublishHealth(Vec<u8>),
    /// Publish a command's result (JSON) on `outpost/{id}/cmd/result/{request}`, QoS 1.
    PublishResult {
        request: String,
        payload: Vec<u8>,
    },
    /// Tell the store the cloud has every batch up to `upto`; answer with
    /// [`UplinkSession::handle_store_acked`].
    AckStore {
        upto: u64,
    },
}

/// Things worth a journal line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The broker refused the command topic: remote commands cannot reach this gateway (its
    /// ACL lacks `outpost/{id}/cmd/+`); batches flow on.
    CommandsRefused,
    /// The broker refused a message on one of the gateway's extra topics (`alerts`, `ota`,
    /// `health`, `cmd/result/…`): its ACL predates the topic. That message is lost; batches
    /// flow on. Said once per topic until a connection's messages there are accepted again.
    ExtraRefused { topic: &'static str, reason: String },
    /// The broker accepted the connection; `outage` is set when it follows failures.
    Connected {
        session_present: bool,
        outage: Option<Outage>,
    },
    /// The broker would not let this identity use its topics; batches are held.
    Refused(String),
    /// The topics work again after a refusal.
    Granted,
    /// No acknowledgement progress: publishing again from the oldest unacknowledged batch.
    Resending { acked_upto: u64 },
    /// An acknowledgement covered batches this gateway has not published; it was ignored.
    AckRefused { upto: u64, published_upto: u64 },
    /// An acknowledgement that is not `{"upto": SEQ}`.
    AckMalformed,
    /// The store recorded an acknowledgement.
    Acknowledged { acked_upto: u64 },
    /// The store refused or failed to record an acknowledgement.
    StoreAckFailed { upto: u64, why: String },
    /// The uplink went down (`was_up`), or the first attempt of an outage failed (at start):
    /// the one warning of an outage.
    Lost {
        reason: String,
        was_up: bool,
        retry_in: Duration,
    },
    /// Another attempt failed while down (debug).
    RetryFailed {
        failures: u32,
        reason: String,
        retry_in: Duration,
    },
    /// Still down: said after [`STILL_DOWN_FIRST`] of an outage, then at doubling intervals.
    StillDown {
        down_for: Duration,
        failures: u32,
        reason: String,
    },
}

/// How long the uplink was down, and how many attempts failed, before a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub down_for: Duration,
    pub failures: u32,
}

/// The uplink as the status page shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UplinkStatus {
    pub connected: bool,
    pub connects: u64,
    pub batches_published: u64,
    pub acked_upto: u64,
    /// Acknowledgements refused because they covered batches never published.
    pub acks_refused: u64,
    /// Alerts dropped because more were waiting than the uplink could hold.
    pub alerts_dropped: u64,
    /// Why the uplink is not working, if it is not (TLS, broker gone).
    pub last_error: Option<String>,
    /// The broker refused this gateway a topic of its own: its certificate's identity does not
    /// match `gateway.id`. Nothing will get through until that is fixed.
    pub refused: Option<String>,
    /// Remote commands: `None` when none are configured, else whether the broker granted the
    /// command topic (`subscribed`, `refused by the broker`, `subscribing`).
    pub commands: Option<&'static str>,
    /// Command results dropped because more were waiting than the uplink could hold.
    pub results_dropped: u64,
    /// Firmware update events dropped from a full queue while the uplink was down.
    pub ota_dropped: u64,
    /// Extra topics (`alerts`, `ota`, `health`, `cmd/result`) the broker refused a message on,
    /// with its reason: the ACL needs a line for each. Batches are not held for these.
    pub extras_refused: BTreeMap<&'static str, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Waiting { since: Millis },
    Passed,
    Refused,
}

/// The uplink session with one broker. See the module documentation for what it promises.
#[derive(Debug)]
pub struct UplinkSession {
    config: SessionConfig,
    gateway_id: String,
    connected: bool,
    probe: Probe,
    /// Last batch the store confirmed deleted by an acknowledgement.
    acked_upto: u64,
    /// Last batch handed to the client in this round (rewound for a resend).
    published_upto: u64,
    /// Newest batch whose PUBLISH went on the wire in this process: the most an end-to-end
    /// acknowledgement may cover.
    sent_max: u64,
    /// Newest batch sealed, as the store signalled.
    newest_sealed: u64,
    /// A batch was asked for and not yet answered.
    batch_requested: bool,
    /// The client's request queue was full; set until a packet goes out.
    client_full: bool,
    /// The broker refused a subscription on this connection: no echo makes up for it.
    subscription_refused: bool,
    /// Whether the command topic is wanted.
    commands: bool,
    /// This connection's SUBSCRIBEs whose SUBACK has not come back, oldest first (a broker
    /// answers one connection's packets in order).
    subacks_awaited: VecDeque<Subscription>,
    /// The broker granted both subscriptions in the session it holds: a reconnection that
    /// finds the session present need not subscribe again.
    subscribed_in_session: bool,
    /// Highest acknowledgement not yet recorded by the store.
    ack_wanted: u64,
    /// An `AckStore` is out; no second one until it is answered.
    store_acking: bool,
    store_retry_at: Option<Millis>,
    last_progress: Millis,
    reconnect_at: Option<Millis>,
    backoff: Backoff,
    /// When to say [`Event::StillDown`] next, and the interval after that.
    still_down: Option<(Millis, Duration)>,
    tracker: PublishTracker,
    broker_acks: ContiguousAcks,
    alerts: VecDeque<Vec<u8>>,
    ota: VecDeque<Vec<u8>>,
    /// The newest health report not yet handed to the client: a newer one replaces it.
    health: Option<Vec<u8>>,
    results: VecDeque<(String, Vec<u8>)>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    status: UplinkStatus,
}

impl UplinkSession {
    /// A session that resumes after `acked_upto`, the outbox's acknowledgement point.
    #[must_use]
    pub fn new(
        config: SessionConfig,
        gateway_id: impl Into<String>,
        acked_upto: u64,
        now: Millis,
    ) -> UplinkSession {
        UplinkSession {
            config,
            gateway_id: gateway_id.into(),
            connected: false,
            probe: Probe::Waiting { since: now },
            acked_upto,
            published_upto: acked_upto,
            sent_max: acked_upto,
            newest_sealed: 0,
            batch_requested: false,
            client_full: false,
            subscription_refused: false,
            commands: false,
            subacks_awaited: VecDeque::new(),
            subscribed_in_session: false,
            ack_wanted: acked_upto,
            store_acking: false,
            store_retry_at: None,
            last_progress: now,
            reconnect_at: None,
            backoff: Backoff::new(BackoffPolicy::default(), 0),
            still_down: None,
            tracker: PublishTracker::default(),
            broker_acks: ContiguousAcks::default(),
            alerts: VecDeque::new(),
            ota: VecDeque::new(),
            health: None,
            results: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            status: UplinkStatus {
                acked_upto,
                ..UplinkStatus::default()
            },
        }
    }

    /// The same session with its back-off's jitter drawn from `seed` (the adapter passes a random
    /// one, so that gateways do not retry in lockstep).
    #[must_use]
    pub fn with_jitter_seed(mut self, seed: u64) -> UplinkSession {
        self.backoff = Backoff::new(*self.backoff.policy(), seed);
        self
    }

    /// The session also subscribes to the command topic (operator keys are configured).
    #[must_use]
    pub fn with_commands(mut self) -> UplinkSession {
        self.commands = true;
        self.status.commands = Some("subscribing");
        self
    }

    #[must_use]
    pub fn status(&self) -> &UplinkStatus {
        &self.status
    }

    /// Whether the connection is up and may be polled: false while waiting out the back-off
    /// after a failure (see [`UplinkSession::poll_reconnect_at`]).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The broker accepted the connection (CONNACK).
    pub fn handle_connected(&mut self, now: Millis, session_present: bool) {
        let outage = self.backoff.down_since().map(|since| Outage {
            down_for: Duration::from_millis(now - since),
            failures: self.backoff.failures(),
        });
        self.connected = true;
        self.reconnect_at = None;
        self.backoff.succeeded();
        self.still_down = None;
        self.status.connected = true;
        self.status.connects += 1;
        self.status.last_error = None;
        self.events.push_back(Event::Connected {
            session_present,
            outage,
        });
        if !session_present {
            // Nothing in flight survived: send again everything not acknowledged.
            self.tracker.reset();
            self.published_upto = self.acked_upto;
        }
        self.batch_requested = false;
        self.last_progress = now;
        // The broker keeps subscriptions with the session (MQTT 5's session expiry, 3.1.1's
        // persistent session): subscribing again would only cost bytes at every reconnection.
        // Only subscriptions whose SUBACK came back count; one in flight when the link dropped
        // may never have reached the broker.
        if !(session_present && self.subscribed_in_session) {
            self.subscribed_in_session = false;
            self.subacks_awaited.clear();
            self.actions.push_back(Action::Subscribe(Subscription::Ack));
            self.actions
                .push_back(Action::Subscribe(Subscription::Status));
            if self.commands {
                self.actions
                    .push_back(Action::Subscribe(Subscription::Commands));
                self.status.commands = Some("subscribing");
            }
        }
        self.actions.push_back(Action::PublishOnline);
        self.probe = Probe::Waiting { since: now };
        self.client_full = false;
        self.subscription_refused = false;
    }

    /// The connection failed or was lost; the adapter polls again at
    /// [`UplinkSession::poll_reconnect_at`].
    pub fn handle_connection_lost(&mut self, now: Millis, reason: String) {
        let first_failure = self.backoff.down_since().is_none();
        let retry_in = self.backoff.failed(now);
        let since = self.backoff.down_since().unwrap_or(now);
        if first_failure {
            self.events.push_back(Event::Lost {
                reason: reason.clone(),
                was_up: self.connected,
                retry_in,
            });
            self.still_down = Some((since + STILL_DOWN_FIRST, STILL_DOWN_FIRST));
        } else {
            self.events.push_back(Event::RetryFailed {
                failures: self.backoff.failures(),
                reason: reason.clone(),
                retry_in,
            });
            if let Some((at, every)) = self.still_down
                && now >= at
            {
                self.events.push_back(Event::StillDown {
                    down_for: Duration::from_millis(now - since),
                    failures: self.backoff.failures(),
                    reason: reason.clone(),
                });
                let every = (every * 2).min(STILL_DOWN_MAX);
                self.still_down = Some((now + every, every));
            }
        }
        self.connected = false;
        self.batch_requested = false;
        self.status.connected = false;
        self.status.last_error = Some(reason);
        self.reconnect_at = Some(now + retry_in);
        // Publishes queued for the old connection never went out.
        self.actions
            .retain(|a| matches!(a, Action::AckStore { .. }));
    }

    /// When the adapter may try the connection again, while it is down.
    #[must_use]
    pub fn poll_reconnect_at(&self) -> Option<Millis> {
        self.reconnect_at
    }

    /// The broker answered a SUBSCRIBE; `refused` when any topic was refused.
    pub fn handle_suback(&mut self, refused: bool) {
        let which = self.subacks_awaited.pop_front();
        if which == Some(Subscription::Commands) {
            // Commands are an extra: batches flow without them.
            self.status.commands = Some(if refused {
                "refused by the broker"
            } else {
                "subscribed"
            });
            if refused {
                self.events.push_back(Event::CommandsRefused);
            }
        }
        if which.is_some() && !refused && self.subacks_awaited.is_empty() {
            self.subscribed_in_session = !self
                .actions
                .iter()
                .any(|a| matches!(a, Action::Subscribe(_)));
        }
        if refused && which != Some(Subscription::Commands) {
            self.subscription_refused = true;
            let why = format!(
                "the broker refused subscription to outpost/{id}/ack: this gateway's certificate does not \
                 grant topics under outpost/{id}/ (does gateway.id match the certificate's identity?)",
                id = self.gateway_id
            );
            self.refuse(why);
        }
    }

    /// A message on the status topic.
    pub fn handle_status_message(&mut self, payload: &[u8], retained: bool) {
        // A retained copy delivered on subscribe proves nothing: it may be an earlier session's.
        if retained
            || payload != b"online"
            || self.probe == Probe::Passed
            || self.subscription_refused
        {
            return;
        }
        self.probe = Probe::Passed;
        if self.status.refused.take().is_some() {
            self.events.push_back(Event::Granted);
        }
    }

    /// A message on the ack topic: the cloud's `{"upto": SEQ}`.
    pub fn handle_cloud_ack(&mut self, payload: &[u8]) {
        let Some(upto) = parse_ack(payload) else {
            self.events.push_back(Event::AckMalformed);
            return;
        };
        if self.config.ack != AckMode::EndToEnd || upto <= self.ack_wanted {
            return; // stale, or acknowledgements come from the broker's PUBACKs
        }
        if upto > self.sent_max {
            self.status.acks_refused += 1;
            self.events.push_back(Event::AckRefused {
                upto,
                published_upto: self.sent_max,
            });
            return;
        }
        self.ack_wanted = upto;
        self.request_store_ack();
    }

    /// rumqttc put a PUBLISH on the wire with packet id `pkid`.
    pub fn handle_outgoing_publish(&mut self, pkid: u16) {
        self.client_full = false;
        if let Some(Tracked::Batch(seq)) = self.tracker.outgoing(pkid) {
            self.sent_max = self.sent_max.max(seq);
        }
    }

    /// The broker refused packet `pkid` in its PUBACK (MQTT 5, a reason code of 0x80 or more:
    /// with Mosquitto, 0x87 when its ACL denies the topic). The publish was dropped: nothing is
    /// acknowledged by it, and the identity counts as refused until a later connection's probe
    /// passes, as when the echo never comes.
    pub fn handle_puback_refused(&mut self, pkid: u16, reason: &str) {
        let Some(tracked) = self.tracker.puback(pkid) else {
            return;
        };
        let what = match tracked {
            Tracked::Status => "the status message".to_owned(),
            Tracked::Batch(seq) => {
                // Dropped by the broker: it goes out again once the topics are granted.
                self.published_upto = self.published_upto.min(self.acked_upto.max(seq - 1));
                format!("batch {seq}")
            }
            Tracked::Extra(topic) => {
                // A topic newer than the site's ACL: say so once, lose that message, go on.
                if !self.status.extras_refused.contains_key(topic) {
                    self.status.extras_refused.insert(topic, reason.to_owned());
                    self.events.push_back(Event::ExtraRefused {
                        topic,
                        reason: reason.to_owned(),
                    });
                }
                return;
            }
        };
        let why = format!(
            "the broker refused {what} ({reason}): this gateway's certificate does not grant topics \
             under outpost/{id}/ (does gateway.id match the certificate's identity?)",
            id = self.gateway_id
        );
        self.refuse(why);
    }

    /// The broker acknowledged packet `pkid` (PUBACK).
    pub fn handle_puback(&mut self, pkid: u16) {
        let seq = match self.tracker.puback(pkid) {
            Some(Tracked::Batch(seq)) => seq,
            Some(Tracked::Extra(topic)) => {
                self.status.extras_refused.remove(topic);
                return;
            }
            Some(Tracked::Status) | None => return,
        };
        if self.config.ack == AckMode::Broker {
            let upto = self.broker_acks.ack(self.ack_wanted, seq);
            if upto > self.ack_wanted {
                self.ack_wanted = upto;
                self.request_store_ack();
            }
        }
    }

    /// The store sealed batches up to `newest`.
    pub fn handle_sealed(&mut self, newest: u64) {
        self.newest_sealed = self.newest_sealed.max(newest);
    }

    /// The client took a publish the session asked for at `now` (it goes on the wire in order).
    pub fn handle_queued(&mut self, now: Millis, queued: Queued) {
        match queued {
            Queued::Status => self.tracker.requested(Tracked::Status),
            Queued::Alert => self.tracker.requested(Tracked::Extra("alerts")),
            Queued::Result => self.tracker.requested(Tracked::Extra("cmd/result")),
            Queued::Ota => self.tracker.requested(Tracked::Extra("ota")),
            Queued::Health => self.tracker.requested(Tracked::Extra("health")),
            Queued::Subscription(which) => self.subacks_awaited.push_back(which),
            Queued::Batch(seq) => {
                // The resend timer runs from the oldest unacknowledged batch's publish: a batch
                // sent after a quiet spell longer than `resend_after` (a long batch interval) is
                // not due again the moment it leaves.
                if self.published_upto <= self.acked_upto {
                    self.last_progress = now;
                }
                self.batch_requested = false;
                self.tracker.requested(Tracked::Batch(seq));
                self.published_upto = self.published_upto.max(seq);
                self.newest_sealed = self.newest_sealed.max(seq);
                self.status.batches_published += 1;
            }
        }
    }

    /// The client's request queue was full: `action` is asked for again once a packet has gone
    /// out.
    pub fn handle_client_full(&mut self, action: Action) {
        self.client_full = true;
        match action {
            Action::PublishBatch { .. } => self.batch_requested = false,
            Action::PublishAlert(alert) => self.alerts.push_front(alert),
            Action::PublishOta(event) => self.ota.push_front(event),
            // Unless a newer report came meanwhile.
            Action::PublishHealth(report) => {
                self.health.get_or_insert(report);
            }
            Action::PublishResult { request, payload } => {
                self.results.push_front((request, payload));
            }
            other => self.actions.push_front(other),
        }
    }

    /// The adapter found no batch after the one asked for: nothing more to send until the store
    /// seals another.
    pub fn handle_no_batch(&mut self) {
        self.batch_requested = false;
        self.newest_sealed = self.newest_sealed.min(self.published_upto);
    }

    /// The store answered an [`Action::AckStore`]: `Ok(acked_upto)` is the outbox's new
    /// acknowledgement point; `Err` says why nothing changed.
    pub fn handle_store_acked(&mut self, now: Millis, result: Result<u64, StoreAckError>) {
        self.store_acking = false;
        match result {
            Ok(acked_upto) => {
                if acked_upto > self.acked_upto {
                    self.acked_upto = acked_upto;
                    self.published_upto = self.published_upto.max(acked_upto);
                    self.last_progress = now;
                    self.status.acked_upto = acked_upto;
                    self.events.push_back(Event::Acknowledged { acked_upto });
                }
                self.request_store_ack();
            }
            Err(StoreAckError::Refused(why)) => {
                // The outbox says the acknowledgement is wrong: forget it, keep the data.
                self.events.push_back(Event::StoreAckFailed {
                    upto: self.ack_wanted,
                    why,
                });
                self.ack_wanted = self.acked_upto;
            }
            Err(StoreAckError::Failed(why)) => {
                // The disk failed; try again shortly, the acknowledgement is still good.
                self.events.push_back(Event::StoreAckFailed {
                    upto: self.ack_wanted,
                    why,
                });
                self.store_retry_at = Some(now + STORE_RETRY);
            }
        }
    }

    /// An alert was raised: it goes out as soon as the topics are known to work.
    pub fn handle_alert(&mut self, payload: Vec<u8>) {
        if self.alerts.len() >= MAX_QUEUED_ALERTS {
            self.alerts.pop_front();
            self.status.alerts_dropped += 1;
        }
        self.alerts.push_back(payload);
    }

    /// A firmware update event: it goes out as soon as the topics are known to work, never held
    /// back for a batch. Past [`MAX_QUEUED_ALERTS`] waiting, the oldest go.
    pub fn handle_ota(&mut self, payload: Vec<u8>) {
        if self.ota.len() >= MAX_QUEUED_ALERTS {
            self.ota.pop_front();
            self.status.ota_dropped += 1;
        }
        self.ota.push_back(payload);
    }

    /// The gateway's health report: it goes out as soon as the topics are known to work, never
    /// held back for a batch. A report is a state, not an event: one still waiting is replaced.
    pub fn handle_health(&mut self, payload: Vec<u8>) {
        self.health = Some(payload);
    }

    /// A command's result: it goes out as soon as the topics are known to work.
    pub fn handle_result(&mut self, request: String, payload: Vec<u8>) {
        if self.results.len() >= MAX_QUEUED_ALERTS {
            self.results.pop_front();
            self.status.results_dropped += 1;
        }
        self.results.push_back((request, payload));
    }

    /// Time passed: the probe's deadline, the resend timer, a store retry.
    pub fn handle_timeout(&mut self, now: Millis) {
        if self
            .store_retry_at
            .is_some_and(|at| now >= at && !self.store_acking)
        {
            self.store_retry_at = None;
            self.request_store_ack();
        }
        if !self.connected {
            return;
        }
        if let Probe::Waiting { since } = self.probe
            && now >= since + PROBE_TIMEOUT
        {
            let why = format!(
                "the broker accepts this gateway's publishes to outpost/{id}/ but never delivers them: \
                 its certificate's identity is not allowed those topics (does gateway.id match the certificate?)",
                id = self.gateway_id
            );
            self.refuse(why);
        }
        if self.published_upto > self.acked_upto
            && now >= self.last_progress + self.config.resend_after
        {
            self.events.push_back(Event::Resending {
                acked_upto: self.acked_upto,
            });
            self.published_upto = self.acked_upto;
            self.last_progress = now;
        }
    }

    /// The next thing to do. Drain until `None` after every `handle_*`.
    pub fn poll_action(&mut self) -> Option<Action> {
        // Named guards, as rumqttc's event loop has them:
        // - the client's queue is full: nothing more until a packet went out;
        // - the broker refuses us (or has not shown it does not): anything sent would be dropped.
        let client_ready = !self.client_full;
        let topics_granted = self.connected && self.probe == Probe::Passed;
        if let Some(index) = self
            .actions
            .iter()
            .position(|a| client_ready || matches!(a, Action::AckStore { .. }))
        {
            return self.actions.remove(index);
        }
        if !client_ready || !topics_granted {
            return None;
        }
        if let Some(alert) = self.alerts.pop_front() {
            return Some(Action::PublishAlert(alert));
        }
        if let Some((request, payload)) = self.results.pop_front() {
            return Some(Action::PublishResult { request, payload });
        }
        if let Some(event) = self.ota.pop_front() {
            return Some(Action::PublishOta(event));
        }
        if let Some(report) = self.health.take() {
            return Some(Action::PublishHealth(report));
        }
        let in_flight = self.published_upto.saturating_sub(self.acked_upto);
        let more_sealed = self.newest_sealed > self.published_upto;
        if !self.batch_requested && more_sealed && in_flight < self.config.max_unacked {
            self.batch_requested = true;
            return Some(Action::PublishBatch {
                after: self.published_upto,
            });
        }
        None
    }

    /// The next journal-worthy event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`UplinkSession::handle_timeout`] has something to do next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        let probe = match self.probe {
            Probe::Waiting { since } if self.connected => Some(since + PROBE_TIMEOUT),
            _ => None,
        };
        let resend = (self.connected && self.published_upto > self.acked_upto)
            .then(|| self.last_progress + self.config.resend_after);
        [probe, resend, self.store_retry_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn refuse(&mut self, why: String) {
        self.probe = Probe::Refused;
        if self.status.refused.is_none() {
            self.events.push_back(Event::Refused(why.clone()));
        }
        self.status.refused = Some(why);
    }

    fn request_store_ack(&mut self) {
        if !self.store_acking && self.store_retry_at.is_none() && self.ack_wanted > self.acked_upto
        {
            self.store_acking = true;
            self.actions.push_back(Action::AckStore {
                upto: self.ack_wanted,
            });
        }
    }
}

/// What the client took from the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// The `online` status message.
    Status,
    Alert,
    /// A firmware update event.
    Ota,
    /// A health report.
    Health,
    /// A command's result.
    Result,
    /// A SUBSCRIBE: its SUBACK is awaited.
    Subscription(Subscription),
    /// The batch with this sequence number.
    Batch(u64),
}

/// Why the store did not record an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAckError {
    /// The outbox refused it (past its newest batch): the acknowledgement is wrong.
    Refused(String),
    /// The store could not write (disk full, read-only): worth trying again.
    Failed(String),
}

/// `{"upto": SEQ}`, with SEQ a non-negative integer; anything else is malformed.
fn parse_ack(payload: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Ack {
        upto: u64,
    }
    serde_json::from_slice::<Ack>(payload).ok().map(|a| a.upto)
}

/// What a QoS 1 PUBLISH carried, for its PUBACK: a refused batch or status message means the
/// identity is refused (nothing will get through); a refused extra is one topic the ACL lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracked {
    Status,
    Batch(u64),
    /// The topic under `outpost/{id}/`.
    Extra(&'static str),
}

/// Matches batches to the packet ids rumqttc gives their PUBLISHes.
///
/// rumqttc 0.25 `AsyncClient::publish` returns `()`; the packet id shows up later as
/// `Outgoing::Publish(pkid)`, in the order the requests were queued. Replays of an unacked
/// publish after a reconnect come out with their old packet id. Keep this the one place that
/// knows, so a rumqttc that returns the id from `publish` is a local change.
#[derive(Debug, Default)]
struct PublishTracker {
    requested: VecDeque<Tracked>,
    by_pkid: HashMap<u16, Tracked>,
}

impl PublishTracker {
    fn requested(&mut self, what: Tracked) {
        self.requested.push_back(what);
    }

    /// A PUBLISH went out with `pkid`: the next requested publish, or a replay of a known one.
    fn outgoing(&mut self, pkid: u16) -> Option<Tracked> {
        if let Some(&what) = self.by_pkid.get(&pkid) {
            return Some(what);
        }
        let what = self.requested.pop_front()?;
        self.by_pkid.insert(pkid, what);
        Some(what)
    }

    /// The broker acknowledged `pkid`.
    fn puback(&mut self, pkid: u16) -> Option<Tracked> {
        self.by_pkid.remove(&pkid)
    }

    fn reset(&mut self) {
        self.requested.clear();
        self.by_pkid.clear();
    }
}

/// Broker acknowledgements may come out of order; the outbox is acknowledged up to the first gap.
#[derive(Debug, Default)]
struct ContiguousAcks {
    done: BTreeSet<u64>,
}

impl ContiguousAcks {
    fn ack(&mut self, acked_upto: u64, seq: u64) -> u64 {
        self.done.insert(seq);
        let mut upto = acked_upto;
        while self.done.remove(&(upto + 1)) {
            upto += 1;
        }
        self.done.retain(|&s| s > upto);
        upto
    }
}

#[cfg(test)]
mod tests;
