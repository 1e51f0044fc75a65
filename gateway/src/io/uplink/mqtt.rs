//! MQTT push of sealed batches, with the cloud's end-to-end acknowledgement.
//!
//! Topics (all under the gateway's own prefix, so a per-identity ACL can hold it there):
//! - `outpost/{id}/batch`: each sealed batch, QoS 1, the stored bytes exactly;
//! - `outpost/{id}/ack`: the cloud's `{"upto": SEQ}`; only then do batches leave the outbox
//!   (or on the broker's PUBACK, with `ack = "broker"`);
//! - `outpost/{id}/status`: `online` (retained) on connect; `offline` (retained) as Last Will;
//! - `outpost/{id}/alert`: each alert as JSON when it is raised, not held for a batch.
//!
//! At most `max_unacked` batches are out without an acknowledgement, so a backlog after an
//! outage drains oldest first at the pace the cloud confirms, and live batches queue behind it
//! instead of flooding the link.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS, Transport};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use outpost_core::config::{AckMode, MqttConfig};

use super::link::TlsLink;
use super::meter::Meter;
use crate::io::store::Reader;
use crate::io::store::writer::{AckReply, StoreCommand, StoreCondition};

/// The uplink as the status page shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UplinkStatus {
    pub connected: bool,
    pub connects: u64,
    pub batches_published: u64,
    pub acked_upto: u64,
    /// Why the uplink is not working, if it is not (TLS, refused topic, broker gone).
    pub last_error: Option<String>,
    /// The broker refused this gateway a topic of its own: its certificate's identity does
    /// not match `gateway.id`. Nothing will get through until that is fixed.
    pub refused: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Whether the broker lets this identity use the gateway's own topics.
///
/// Mosquitto 2.0 grants every SUBSCRIBE and, with MQTT 3.1.1, PUBACKs a publish its ACL denies
/// (then drops it): neither answer tells. So on each connection the gateway subscribes to its
/// own status topic and publishes "online" to it; only if that comes back are batches sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Waiting { since: Instant },
    Passed,
    Refused,
}

/// How long the own-status echo may take before the topics count as refused.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Stands for a publish that is not a batch (the status message) in [`PublishTracker`].
const NOT_A_BATCH: u64 = 0;

/// Matches batches to the packet ids rumqttc gives their PUBLISHes.
///
/// rumqttc 0.25 `AsyncClient::publish` returns `()`; the packet id shows up later as
/// `Outgoing::Publish(pkid)`, in the order the requests were queued. Replays of an unacked
/// publish after a reconnect come out with their old packet id. Keep this the one place that
/// knows, so a rumqttc that returns the id from `publish` is a local change.
#[derive(Debug, Default)]
struct PublishTracker {
    requested: VecDeque<u64>,
    by_pkid: HashMap<u16, u64>,
}

impl PublishTracker {
    fn requested(&mut self, seq: u64) {
        self.requested.push_back(seq);
    }

    /// A PUBLISH went out with `pkid`: the next requested batch, or a replay of a known one.
    fn outgoing(&mut self, pkid: u16) -> Option<u64> {
        if let Some(&seq) = self.by_pkid.get(&pkid) {
            return Some(seq);
        }
        let seq = self.requested.pop_front()?;
        self.by_pkid.insert(pkid, seq);
        Some(seq)
    }

    /// The broker acknowledged `pkid`.
    fn puback(&mut self, pkid: u16) -> Option<u64> {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The next batch after `after`, with its bytes, from the outbox.
async fn next_batch(store_path: PathBuf, after: u64) -> Option<(u64, Vec<u8>)> {
    tokio::task::spawn_blocking(move || {
        let reader = Reader::open(&store_path).ok()?;
        let info = reader.batches_after(after, 1).ok()?.into_iter().next()?;
        Some((info.seq, reader.batch_bytes(info.seq).ok()??))
    })
    .await
    .ok()?
}

async fn acknowledge(
    store_tx: &mpsc::Sender<StoreCommand>,
    meter: &Meter,
    upto: u64,
) -> Option<u64> {
    let (reply, answer) = oneshot::channel();
    store_tx
        .send(StoreCommand::AckBatches { upto, reply })
        .await
        .ok()?;
    match answer.await.ok()? {
        AckReply::Acked(acked) => {
            meter.add_delivered(acked.readings);
            Some(acked.acked_upto)
        }
        AckReply::Refused(why) => {
            tracing::warn!(message = "Cloud acknowledgement refused.", upto, %why);
            None
        }
        AckReply::Failed(error) => {
            tracing::error!(message = "Cannot record the cloud's acknowledgement.", upto, %error);
            None
        }
    }
}

/// Runs the MQTT uplink until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: MqttConfig,
    tls: Arc<rustls::ClientConfig>,
    gateway_id: String,
    run_dir: PathBuf,
    store_path: PathBuf,
    store_tx: mpsc::Sender<StoreCommand>,
    status: Arc<Mutex<UplinkStatus>>,
    meter: Arc<Meter>,
    condition: Arc<Mutex<StoreCondition>>,
    shutdown: CancellationToken,
) {
    let link = match TlsLink::bind(&run_dir) {
        Ok(link) => link,
        Err(error) => {
            tracing::error!(message = "Cannot create the uplink socket; uplink off.", dir = %run_dir.display(), %error);
            lock(&status).last_error = Some(format!(
                "cannot create uplink socket in {}: {error}",
                run_dir.display()
            ));
            return;
        }
    };
    let socket = link.socket_path().to_string_lossy().into_owned();
    let link_error = Arc::new(Mutex::new(None));
    tokio::spawn(link.run(
        config.host.clone(),
        config.port,
        tls,
        Arc::clone(&meter),
        Arc::clone(&link_error),
        shutdown.clone(),
    ));

    let topic = |leaf: &str| format!("outpost/{gateway_id}/{leaf}");
    let (batch_topic, ack_topic, status_topic) = (topic("batch"), topic("ack"), topic("status"));
    let mut options = MqttOptions::new(format!("outpost-{gateway_id}"), socket, 0);
    options
        .set_transport(Transport::Unix)
        .set_keep_alive(config.keepalive)
        .set_clean_session(false)
        .set_max_packet_size(64 * 1024, 64 * 1024 * 1024)
        .set_last_will(LastWill::new(
            &status_topic,
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    let (client, mut eventloop) = AsyncClient::new(options, 64);

    let mut acked_upto = match tokio::task::spawn_blocking({
        let path = store_path.clone();
        move || Reader::open(&path).and_then(|r| r.outbox())
    })
    .await
    {
        Ok(Ok(outbox)) => outbox.acked_upto,
        _ => 0,
    };
    lock(&status).acked_upto = acked_upto;
    let mut published_upto = acked_upto; // last batch handed to the MQTT client
    let mut connected = false;
    let mut tracker = PublishTracker::default();
    let mut broker_acks = ContiguousAcks::default();
    let mut last_progress = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut probe = Probe::Waiting {
        since: Instant::now(),
    };
    let alert_topic = topic("alert");
    let mut alerts_sent_upto = 0i64;
    let mut pump = tokio::time::interval(Duration::from_millis(250));
    pump.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Incoming::ConnAck(connack))) => {
                    connected = true;
                    backoff = Duration::from_millis(200);
                    {
                        let mut s = lock(&status);
                        s.connected = true;
                        s.connects += 1;
                        s.last_error = None;
                    }
                    tracing::info!(message = "Uplink connected.", session_present = connack.session_present);
                    if !connack.session_present {
                        // Nothing in flight survived: send again everything not acknowledged.
                        tracker.reset();
                        published_upto = acked_upto;
                    }
                    // The status subscription is the probe: our own "online" must come back.
                    // QoS 0: acknowledgements are cumulative and idempotent, so a lost one is
                    // covered by the next (or by `resend_after`); QoS 1 would cost a PUBACK each.
                    let _ = client.try_subscribe(&ack_topic, QoS::AtMostOnce);
                    let _ = client.try_subscribe(&status_topic, QoS::AtLeastOnce);
                    if client.try_publish(&status_topic, QoS::AtLeastOnce, true, "online").is_ok() {
                        tracker.requested(NOT_A_BATCH);
                    }
                    probe = Probe::Waiting { since: Instant::now() };
                }
                // A live echo of our own status: this identity may use our topics (a retained
                // copy delivered on subscribe proves nothing, it may be from an earlier session).
                Ok(Event::Incoming(Incoming::Publish(publish))) if publish.topic == status_topic => {
                    if !publish.retain && publish.payload.as_ref() == b"online" && probe != Probe::Passed {
                        probe = Probe::Passed;
                        if lock(&status).refused.take().is_some() {
                            tracing::info!(message = "Uplink topics granted again.");
                        }
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(suback))) => {
                    if suback.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                        let why = format!(
                            "the broker refused subscription to {ack_topic}: this gateway's certificate does not \
                             grant topics under outpost/{gateway_id}/ (does gateway.id match the certificate's identity?)"
                        );
                        if lock(&status).refused.is_none() {
                            tracing::error!(message = "Uplink refused by the broker.", reason = %why);
                        }
                        lock(&status).refused = Some(why);
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) if publish.topic == ack_topic => {
                    match serde_json::from_slice::<serde_json::Value>(&publish.payload).ok().and_then(|v| v["upto"].as_u64()) {
                        Some(upto) if upto > acked_upto => {
                            if config.ack == AckMode::EndToEnd {
                                if let Some(now_acked) = acknowledge(&store_tx, &meter, upto).await {
                                    acked_upto = now_acked;
                                    last_progress = Instant::now();
                                    lock(&status).acked_upto = acked_upto;
                                }
                            }
                        }
                        Some(_) => {}
                        None => tracing::warn!(message = "Malformed acknowledgement ignored.", topic = %publish.topic),
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    tracker.outgoing(pkid);
                }
                Ok(Event::Incoming(Incoming::PubAck(puback))) => {
                    if let Some(seq) = tracker.puback(puback.pkid).filter(|&seq| seq != NOT_A_BATCH) {
                        if config.ack == AckMode::Broker {
                            let upto = broker_acks.ack(acked_upto, seq);
                            if upto > acked_upto {
                                if let Some(now_acked) = acknowledge(&store_tx, &meter, upto).await {
                                    acked_upto = now_acked;
                                    last_progress = Instant::now();
                                    lock(&status).acked_upto = acked_upto;
                                }
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    let detail = lock(&link_error).take();
                    let message = detail.unwrap_or_else(|| error.to_string());
                    if connected || lock(&status).last_error.as_deref() != Some(&message) {
                        tracing::warn!(message = "Uplink disconnected; retrying.", reason = %message);
                    }
                    connected = false;
                    {
                        let mut s = lock(&status);
                        s.connected = false;
                        s.last_error = Some(message);
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            },
            _ = pump.tick() => {
                if !connected {
                    continue;
                }
                if let Probe::Waiting { since } = probe {
                    if since.elapsed() < PROBE_TIMEOUT {
                        continue;
                    }
                    let why = format!(
                        "the broker accepts this gateway's publishes to outpost/{gateway_id}/ but never delivers them: \
                         its certificate's identity is not allowed those topics (does gateway.id match the certificate?)"
                    );
                    if lock(&status).refused.is_none() {
                        tracing::error!(message = "Uplink refused by the broker; batches held.", reason = %why);
                    }
                    lock(&status).refused = Some(why);
                    probe = Probe::Refused;
                }
                if probe == Probe::Refused {
                    continue; // every batch would be silently dropped: keep them, and the bytes
                }
                // Alerts go out as they are raised, never waiting for a batch.
                let new_alerts: Vec<_> =
                    lock(&condition).alerts.iter().filter(|a| a.at_ms > alerts_sent_upto).cloned().collect();
                for alert in new_alerts {
                    let payload = serde_json::to_vec(&alert).unwrap_or_default();
                    if client.try_publish(&alert_topic, QoS::AtLeastOnce, false, payload).is_ok() {
                        tracker.requested(NOT_A_BATCH);
                        alerts_sent_upto = alerts_sent_upto.max(alert.at_ms);
                    }
                }
                if published_upto > acked_upto && last_progress.elapsed() > config.resend_after {
                    tracing::info!(message = "No acknowledgement; publishing again from the oldest unacked batch.", acked_upto);
                    published_upto = acked_upto;
                    last_progress = Instant::now();
                }
                // Flow control: at most `max_unacked` batches out without an acknowledgement.
                while published_upto.saturating_sub(acked_upto) < config.max_unacked as u64 {
                    let Some((seq, bytes)) = next_batch(store_path.clone(), published_upto).await else { break };
                    if client.try_publish(&batch_topic, QoS::AtLeastOnce, false, bytes).is_err() {
                        break; // the client's queue is full; next tick
                    }
                    tracker.requested(seq);
                    published_upto = seq;
                    lock(&status).batches_published += 1;
                }
            }
        }
        {
            let mut s = lock(&status);
            s.bytes_sent = meter.sent();
            s.bytes_received = meter.received();
        }
    }
    // A clean stop says so, rather than leaving the Last Will to the broker's keepalive timeout.
    let _ = client.try_publish(&status_topic, QoS::AtLeastOnce, true, "offline");
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_are_matched_to_batches_in_request_order_and_replays_keep_theirs() {
        let mut t = PublishTracker::default();
        t.requested(7);
        t.requested(8);
        assert_eq!(t.outgoing(1), Some(7));
        assert_eq!(t.outgoing(2), Some(8));
        assert_eq!(
            t.outgoing(1),
            Some(7),
            "a replay after reconnect keeps its packet id"
        );
        assert_eq!(t.puback(2), Some(8));
        assert_eq!(t.puback(2), None, "a duplicate PUBACK acknowledges nothing");
        assert_eq!(t.puback(1), Some(7));
        assert_eq!(
            t.outgoing(3),
            None,
            "a publish nobody requested (the status message) is not a batch"
        );
    }

    #[test]
    fn out_of_order_broker_acks_advance_only_to_the_first_gap() {
        let mut acks = ContiguousAcks::default();
        assert_eq!(acks.ack(10, 12), 10);
        assert_eq!(acks.ack(10, 13), 10);
        assert_eq!(acks.ack(10, 11), 13);
        assert_eq!(acks.ack(13, 14), 14);
    }
}
