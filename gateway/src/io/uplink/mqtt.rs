//! MQTT push of sealed batches: the adapter around `outpost_core::uplink::UplinkSession`.
//!
//! The session decides (what to publish, what an acknowledgement may delete, whether the broker
//! lets this identity use its topics); this task moves bytes. It owns rumqttc's event loop, one
//! outbox reader (reused for every batch), and the session's timers, in one `select!`. rumqttc
//! speaks MQTT to Outpost's own TLS link over a private Unix socket ([`super::link`]), so every
//! byte on the broker socket is metered.
//!
//! rumqttc's `EventLoop::poll` is not cancel-safe while it connects: dropping it between writing
//! CONNECT and reading CONNACK drops the half-made connection, and the next poll makes another
//! (a second TLS handshake at every start, which is what happened while the poll was a
//! `select!` branch that any other branch could cancel). So each poll runs to completion in a
//! future this task owns ([`PollFuture`]), kept across `select!` rounds, and the event loop is
//! only polled again once that future has returned it.
//!
//! The MQTT version is chosen per attempt by `outpost_core::uplink::protocol::ProtocolChoice`
//! (MQTT 5 unless the broker will not take it); [`super::client`] hides which one rumqttc
//! speaks. With MQTT 5 the batch topic travels as a topic alias after its first publish on
//! each connection ([`TopicAliases`]).
//!
//! Shutdown: this task stops on the daemon's token; the TLS link has a token of its own,
//! cancelled only after the retained `offline` and the MQTT DISCONNECT went through it.

use std::future::Future;
use std::pin::Pin;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_core::config::MqttConfig;
use outpost_core::uplink::protocol::{
    AttemptFailure, MqttVersion, ProtocolChoice, TopicAliases, TopicRef,
};
use outpost_core::uplink::{
    Action, Event, Queued, SessionConfig, StoreAckError, Subscription, UplinkSession,
};
use outpost_proto::Millis;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::client::{self, Client, ClientSettings, Connection, Failure, Wire};
use super::link::{LinkReport, TlsLink};
use super::meter::Meter;
use crate::io::commands::{CommandLink, Incoming};
use crate::io::store::writer::{AckReply, StoreCommand};
use crate::io::store::{Reader, Readers, StoreError};
use crate::io::telemetry::TelemetryHub;
use outpost_core::telemetry::{AlertKey, AlertKind, Event as TelemetryEvent, UplinkBoard};

/// The gateway's topics.
struct Topics {
    batch: String,
    ack: String,
    status: String,
    /// `outpost/{id}/alerts`: every alert change, published at once (never with a batch).
    alerts: String,
    /// `outpost/{id}/ota`: firmware update events, published at once.
    ota: String,
    /// `outpost/{id}/health`: the gateway's health report, published at once.
    health: String,
    /// `outpost/{id}/cmd/+`: signed remote commands.
    commands: String,
    /// `outpost/{id}/cmd/`: a command's topic is this and its verb.
    command_prefix: String,
    /// `outpost/{id}/cmd/result/`: a result's topic is this and its request.
    result_prefix: String,
}

impl Topics {
    fn new(gateway_id: &str) -> Topics {
        let topic = |leaf: &str| format!("outpost/{gateway_id}/{leaf}");
        Topics {
            batch: topic("batch"),
            ack: topic("ack"),
            status: topic("status"),
            alerts: topic("alerts"),
            ota: topic("ota"),
            health: topic("health"),
            commands: topic("cmd/+"),
            command_prefix: topic("cmd/"),
            result_prefix: topic("cmd/result/"),
        }
    }

    /// The verb of a message on the command topic (one level under `cmd/`), if it is one.
    fn command_verb<'t>(&self, topic: &'t [u8]) -> Option<&'t str> {
        let verb = std::str::from_utf8(topic.strip_prefix(self.command_prefix.as_bytes())?).ok()?;
        (!verb.is_empty() && !verb.contains('/')).then_some(verb)
    }
}

/// What the uplink task needs from the rest of the daemon.
#[derive(Debug)]
pub struct UplinkIo {
    /// The outbox, read through reused connections.
    pub readers: Readers,
    pub store_tx: mpsc::Sender<StoreCommand>,
    /// The newest sealed batch, signalled by the store writer.
    pub sealed: watch::Receiver<u64>,
    pub meter: Arc<Meter>,
    /// Where the uplink's state goes, and where raised alerts come from (they go upstream too).
    pub telemetry: TelemetryHub,
    /// The command task's ends, when remote commands are configured (`io::commands`).
    pub commands: Option<CommandLink>,
    /// Firmware update events to publish at once on `outpost/{id}/ota` (`io::ota`).
    pub ota_events: Option<mpsc::Receiver<Vec<u8>>>,
    /// The newest health report to publish at once on `outpost/{id}/health` (`io::health`).
    pub health_reports: Option<watch::Receiver<Vec<u8>>>,
}

/// One `poll` of the event loop, owning it until it returns: dropped only at shutdown.
type PollFuture = Pin<Box<dyn Future<Output = (Connection, Result<Wire, Failure>)> + Send>>;

fn poll_once(mut connection: Connection) -> PollFuture {
    Box::pin(async move {
        let event = connection.poll().await;
        (connection, event)
    })
}

/// How long a clean stop may take to say `offline` and DISCONNECT.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Runs the MQTT uplink until `shutdown`, then says `offline` and disconnects.
pub async fn run(
    config: MqttConfig,
    tls: Arc<rustls::ClientConfig>,
    gateway_id: String,
    run_dir: PathBuf,
    io: &mut UplinkIo,
    shutdown: CancellationToken,
) {
    let link = match TlsLink::bind(&run_dir) {
        Ok(link) => link,
        Err(error) => {
            tracing::error!(message = "Cannot create the uplink socket; uplink off.", dir = %run_dir.display(), %error);
            let mut board = UplinkBoard::default();
            board.session.last_error = Some(format!(
                "cannot create uplink socket in {}: {error}",
                run_dir.display()
            ));
            io.telemetry.record(TelemetryEvent::Uplink {
                board,
                at_ms: crate::io::wall_clock::unix_ms(),
            });
            return;
        }
    };
    let socket = link.socket_path().to_string_lossy().into_owned();
    let report = Arc::new(LinkReport::default());
    // Not the daemon's token: the link carries the goodbye after the daemon was told to stop.
    let link_stop = CancellationToken::new();
    let link_task = tokio::spawn(link.run(
        config.host.clone(),
        config.port,
        tls,
        Arc::clone(&io.meter),
        Arc::clone(&report),
        link_stop.clone(),
    ));

    let topics = Topics::new(&gateway_id);
    let settings = ClientSettings {
        client_id: format!("outpost-{gateway_id}"),
        socket,
        keepalive: config.keepalive,
        will_topic: Some(topics.status.clone()),
        clean_session: false,
        session_expiry: config.session_expiry,
    };
    let mut protocol = ProtocolChoice::new(config.protocol);
    let (mut client, connection) = client::new(protocol.current(), &settings);
    let mut idle = Some(connection);
    let mut polling: Option<PollFuture> = None;
    let mut aliases = TopicAliases::new();
    // The version of the connection that is up, for the status page.
    let mut speaking: Option<MqttVersion> = None;
    let mut handshakes_before = report.handshakes();

    let acked_upto = match io.readers.read(|r| r.outbox()).await {
        Ok(outbox) => outbox.acked_upto,
        Err(error) => {
            tracing::warn!(message = "Cannot read the outbox; resuming after batch 0.", %error);
            0
        }
    };
    let started = Instant::now();
    let now = move || Millis(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    let session_config = SessionConfig {
        ack: config.ack,
        max_unacked: config.max_unacked as u64,
        resend_after: config.resend_after,
    };
    let mut session = UplinkSession::new(session_config, gateway_id.clone(), acked_upto, now())
        .with_jitter_seed(jitter_seed());
    if io.commands.is_some() {
        session = session.with_commands();
    }
    session.handle_sealed(*io.sealed.borrow_and_update());

    let mut store_ack: Option<oneshot::Receiver<AckReply>> = None;
    // Every alert change since start goes up, the ones raised before the uplink ran included.
    let mut alert_changes = io.telemetry.alert_changes();
    let mut alerts_forwarded = 0u64;
    forward_alerts(&io.telemetry, &mut alerts_forwarded, &mut session);

    loop {
        // Carry out what the session asked for, then show where it stands.
        while let Some(action) = session.poll_action() {
            match action {
                Action::Subscribe(which) => {
                    let (topic, at_least_once) = match which {
                        Subscription::Ack => (&topics.ack, false),
                        Subscription::Status => (&topics.status, true),
                        Subscription::Commands => (&topics.commands, true),
                    };
                    match client.try_subscribe(topic, at_least_once) {
                        Ok(()) => session.handle_queued(now(), Queued::Subscription(which)),
                        Err(_) => session.handle_client_full(action),
                    }
                }
                Action::PublishResult { request, payload } => {
                    let topic = format!("{}{request}", topics.result_prefix);
                    match client.try_publish(&topic, TopicRef::Name, false, payload.clone()) {
                        Ok(()) => session.handle_queued(now(), Queued::Result),
                        Err(_) => {
                            session.handle_client_full(Action::PublishResult { request, payload })
                        }
                    }
                }
                Action::PublishOnline => {
                    match client.try_publish(&topics.status, TopicRef::Name, true, "online") {
                        Ok(()) => session.handle_queued(now(), Queued::Status),
                        Err(_) => session.handle_client_full(Action::PublishOnline),
                    }
                }
                Action::PublishAlert(payload) => {
                    match client.try_publish(&topics.alerts, TopicRef::Name, false, payload.clone())
                    {
                        Ok(()) => session.handle_queued(now(), Queued::Alert),
                        Err(_) => session.handle_client_full(Action::PublishAlert(payload)),
                    }
                }
                Action::PublishOta(payload) => {
                    match client.try_publish(&topics.ota, TopicRef::Name, false, payload.clone()) {
                        Ok(()) => session.handle_queued(now(), Queued::Ota),
                        Err(_) => session.handle_client_full(Action::PublishOta(payload)),
                    }
                }
                Action::PublishHealth(report) => {
                    match client.try_publish(&topics.health, TopicRef::Name, false, report.clone())
                    {
                        Ok(()) => session.handle_queued(now(), Queued::Health),
                        Err(_) => session.handle_client_full(Action::PublishHealth(report)),
                    }
                }
                Action::PublishBatch { after } => {
                    let batch = io.readers.read(move |r| next_batch(r, after)).await;
                    match batch.unwrap_or_else(|error| {
                        tracing::warn!(message = "Cannot read the next batch.", after, %error);
                        None
                    }) {
                        Some((seq, bytes)) => {
                            // Batches are the frequent publish: their topic is worth an alias.
                            let reference = aliases.reference(&topics.batch, true);
                            match client.try_publish(&topics.batch, reference, false, bytes) {
                                Ok(()) => {
                                    aliases.queued(&topics.batch, reference);
                                    session.handle_queued(now(), Queued::Batch(seq));
                                }
                                Err(_) => session.handle_client_full(action),
                            }
                        }
                        None => session.handle_no_batch(),
                    }
                }
                Action::AckStore { upto } => {
                    let (reply, answer) = oneshot::channel();
                    if io
                        .store_tx
                        .send(StoreCommand::AckBatches { upto, reply })
                        .await
                        .is_err()
                    {
                        return; // the store is gone: the daemon is stopping
                    }
                    store_ack = Some(answer);
                }
            }
        }
        while let Some(event) = session.poll_event() {
            log_event(&event, speaking, &io.telemetry);
        }
        io.telemetry.record(TelemetryEvent::Uplink {
            board: UplinkBoard {
                session: session.status().clone(),
                protocol: speaking.map(MqttVersion::as_str),
                bytes_sent: io.meter.sent(),
                bytes_received: io.meter.received(),
                since_ms: None,
            },
            at_ms: crate::io::wall_clock::unix_ms(),
        });

        // Named guards: the connection may be polled unless a failure's back-off is running.
        let reconnect_at = session.poll_reconnect_at().filter(|&at| at > now());
        let may_poll_connection = reconnect_at.is_none();
        if may_poll_connection && polling.is_none() {
            polling = idle.take().map(poll_once);
        }
        let timeout = session.poll_timeout();
        let at = |t: Millis| tokio::time::Instant::from_std(started + Duration::from_millis(t.0));
        tokio::select! {
            () = shutdown.cancelled() => break,
            (connection, event) = async { polling.as_mut().expect("guarded").await }, if polling.is_some() => {
                polling = None;
                idle = Some(connection);
                match event {
                Ok(Wire::ConnAck { session_present, topic_alias_max }) => {
                    aliases.connected(topic_alias_max);
                    protocol.connected();
                    speaking = Some(protocol.current());
                    handshakes_before = report.handshakes();
                    session.handle_connected(now(), session_present);
                }
                Ok(Wire::Publish { topic, payload, retain }) => {
                    if topic == topics.status.as_bytes() {
                        session.handle_status_message(&payload, retain);
                    } else if topic == topics.ack.as_bytes() {
                        session.handle_cloud_ack(&payload);
                    } else if let (Some(verb), Some(commands)) = (topics.command_verb(&topic), &io.commands) {
                        let incoming = Incoming { verb: verb.to_owned(), payload: payload.to_vec() };
                        if commands.incoming.try_send(incoming).is_err() {
                            // Counted, and audited by the command task as one entry.
                            commands.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                Ok(Wire::SubAck { refused }) => session.handle_suback(refused),
                Ok(Wire::PubAck { pkid, refused: None }) => session.handle_puback(pkid),
                Ok(Wire::PubAck { pkid, refused: Some(reason) }) => {
                    session.handle_puback_refused(pkid, &reason);
                }
                Ok(Wire::OutgoingPublish { pkid }) => session.handle_outgoing_publish(pkid),
                Ok(Wire::OutgoingDisconnect | Wire::Other) => {}
                Err(_) if shutdown.is_cancelled() => {
                    idle = None; // no new connection just to say goodbye
                    break;
                }
                Err(failure) => {
                    // Aliases die with the connection; what rumqttc will replay gets its names.
                    aliases.lost();
                    speaking = None;
                    if let Some(connection) = idle.as_mut() {
                        connection.name_aliased_publishes(&aliases);
                    }
                    let reached_broker = report.handshakes() > handshakes_before;
                    handshakes_before = report.handshakes();
                    let reason = report.take_error().unwrap_or_else(|| failure.message.clone());
                    let switch = if session.is_connected() {
                        None
                    } else {
                        let kind = if reached_broker { failure.kind } else { AttemptFailure::Unreachable };
                        protocol.failed(kind)
                    };
                    if let Some(switch) = switch {
                        tracing::info!(
                            message = "The broker did not take this MQTT version; trying another.",
                            tried = %switch.to.other(),
                            next = %switch.to,
                            %reason
                        );
                        // Nothing was ever queued on a client that never connected.
                        let (new_client, connection) = client::new(switch.to, &settings);
                        client = new_client;
                        idle = Some(connection);
                        if switch.at_once {
                            continue; // not an outage: the next attempt goes now
                        }
                    }
                    session.handle_connection_lost(now(), reason);
                }
            }},
            () = tokio::time::sleep_until(at(reconnect_at.unwrap_or(Millis::ZERO))), if !may_poll_connection => {}
            () = tokio::time::sleep_until(at(timeout.unwrap_or(Millis::ZERO))), if timeout.is_some() => {
                session.handle_timeout(now());
            }
            Ok(()) = io.sealed.changed() => session.handle_sealed(*io.sealed.borrow_and_update()),
            reply = async { store_ack.as_mut().expect("guarded").await }, if store_ack.is_some() => {
                store_ack = None;
                let result = match reply {
                    Ok(AckReply::Acked(acked)) => {
                        io.meter.add_delivered(acked.readings);
                        Ok(acked.acked_upto)
                    }
                    Ok(AckReply::Refused(why)) => Err(StoreAckError::Refused(why.to_string())),
                    Ok(AckReply::Failed(error)) => Err(StoreAckError::Failed(error.to_string())),
                    Err(_) => Err(StoreAckError::Failed("the store writer stopped".into())),
                };
                session.handle_store_acked(now(), result);
            }
            Some((request, payload)) = async { io.commands.as_mut().expect("guarded").results.recv().await }, if io.commands.is_some() => {
                session.handle_result(request, payload);
            }
            Some(event) = async { io.ota_events.as_mut().expect("guarded").recv().await }, if io.ota_events.is_some() => {
                session.handle_ota(event);
            }
            Ok(()) = async { io.health_reports.as_mut().expect("guarded").changed().await }, if io.health_reports.is_some() => {
                let report = io.health_reports.as_mut().expect("guarded").borrow_and_update().clone();
                session.handle_health(report);
            }
            Ok(()) = alert_changes.changed() => {
                alert_changes.borrow_and_update();
                forward_alerts(&io.telemetry, &mut alerts_forwarded, &mut session);
            }
        }
    }
    let said = if session.is_connected() {
        let poll = polling.or_else(|| idle.map(poll_once));
        say_offline(&client, poll, &topics.status).await
    } else {
        drop(polling);
        false
    };
    drop(client);
    // rumqttc's socket is closed: the link forwards what is left, closes TLS and ends.
    link_stop.cancel();
    let _ = tokio::time::timeout(STOP_GRACE, link_task).await;
    if said {
        tracing::info!(message = "Uplink stopped: said offline and disconnected.");
    } else {
        tracing::info!(
            message = "Uplink stopped while not connected; the broker's Last Will says offline."
        );
    }
}

/// A clean stop says so (retained `offline`, then an MQTT DISCONNECT, so the broker drops the
/// Last Will) rather than leaving it to the broker's keepalive timeout. Whether the DISCONNECT
/// went out.
async fn say_offline(client: &Client, poll: Option<PollFuture>, status_topic: &str) -> bool {
    let Some(mut poll) = poll else {
        return false;
    };
    let _ = client.try_publish(status_topic, TopicRef::Name, true, "offline");
    let _ = client.try_disconnect();
    tokio::time::timeout(STOP_GRACE, async move {
        loop {
            match poll.await {
                (_, Ok(Wire::OutgoingDisconnect)) => return true,
                (connection, Ok(_)) => poll = poll_once(connection),
                (_, Err(_)) => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// A seed for the back-off's jitter, different in each process.
fn jitter_seed() -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// Hands the session every alert that changed since `forwarded`: they go out as they are raised,
/// never waiting for a batch.
fn forward_alerts(telemetry: &TelemetryHub, forwarded: &mut u64, session: &mut UplinkSession) {
    for alert in telemetry.alerts_changed_since(*forwarded) {
        *forwarded = (*forwarded).max(alert.change);
        session.handle_alert(serde_json::to_vec(&alert).unwrap_or_default());
    }
}

fn log_event(event: &Event, speaking: Option<MqttVersion>, telemetry: &TelemetryHub) {
    let mqtt = speaking.map_or("", MqttVersion::as_str);
    match event {
        Event::ExtraRefused { topic, reason } => tracing::error!(
            message = "The broker refused a message on one of this gateway's topics; that message is lost, batches flow on. Its ACL must let the gateway write outpost/<id>/alerts, ota, health and cmd/result/# (docs/install.md).",
            topic = %format!("outpost/<id>/{topic}"),
            reason = %reason
        ),
        Event::CommandsRefused => tracing::error!(
            message = "The broker refused the command topic: remote commands cannot reach this gateway (its ACL must let it read outpost/<id>/cmd/+ and write outpost/<id>/cmd/result/#)."
        ),
        Event::Connected {
            session_present,
            outage: None,
        } => {
            tracing::info!(message = "Uplink connected.", mqtt, session_present);
        }
        Event::Connected {
            session_present,
            outage: Some(outage),
        } => {
            tracing::info!(
                message = "Uplink back.",
                down_for = ?outage.down_for,
                failed_attempts = outage.failures,
                mqtt,
                session_present
            );
        }
        Event::Refused(why) => {
            tracing::error!(message = "Uplink refused by the broker; batches held.", reason = %why);
        }
        Event::Granted => tracing::info!(message = "Uplink topics granted again."),
        Event::Resending { acked_upto } => tracing::info!(
            message = "No acknowledgement; publishing again from the oldest unacked batch.",
            acked_upto
        ),
        Event::AckRefused {
            upto,
            published_upto,
        } => {
            tracing::warn!(
                message = "Cloud acknowledgement refused: it covers batches never published; nothing deleted.",
                upto,
                published_upto
            );
            telemetry.record(TelemetryEvent::Raise {
                at_ms: crate::io::wall_clock::unix_ms(),
                key: AlertKey::gateway(AlertKind::AckRefused),
                message: format!(
                    "an acknowledgement on the ack topic covered batch {upto}, but only batches up to \
                     {published_upto} were published: refused, nothing deleted"
                ),
            });
        }
        Event::AckMalformed => {
            tracing::warn!(
                message = "Malformed acknowledgement ignored (expected {\"upto\": SEQ})."
            );
        }
        Event::Acknowledged { acked_upto } => {
            tracing::debug!(message = "Batches acknowledged.", acked_upto);
        }
        Event::StoreAckFailed { upto, why } => {
            tracing::error!(message = "Cannot record the cloud's acknowledgement.", upto, %why);
        }
        Event::Lost {
            reason,
            was_up: true,
            retry_in,
        } => {
            tracing::warn!(message = "Uplink lost; reconnecting.", %reason, retry_in = ?retry_in);
        }
        Event::Lost {
            reason,
            was_up: false,
            retry_in,
        } => {
            tracing::warn!(message = "Uplink cannot connect; retrying.", %reason, retry_in = ?retry_in);
        }
        Event::RetryFailed {
            failures,
            reason,
            retry_in,
        } => {
            tracing::debug!(message = "Uplink still down.", failures, %reason, retry_in = ?retry_in);
        }
        Event::StillDown {
            down_for,
            failures,
            reason,
        } => {
            tracing::info!(message = "Uplink still down; retrying.", down_for = ?down_for, failures, %reason);
        }
    }
}

/// The oldest batch after `after`, with its bytes.
fn next_batch(reader: &Reader, after: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    let Some(info) = reader.batches_after(after, 1)?.into_iter().next() else {
        return Ok(None);
    };
    Ok(reader.batch_bytes(info.seq)?.map(|bytes| (info.seq, bytes)))
}
