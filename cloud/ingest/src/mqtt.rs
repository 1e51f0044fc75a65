//! The broker side: one MQTT 5 connection with this replica's own certificate and a persistent
//! session, subscribed to `$share/{group}/outpost/+/batch`, so the broker hands each batch to one
//! replica of the group. A batch's PUBACK goes back only once it is stored or dead-lettered; until
//! then the broker keeps it for this session (redelivered after a crash, a restart or a lost
//! connection). The gateway's `{"upto": N}` is published after the commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::Transport;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::config::Mqtt;
use crate::core::topic;
use crate::metrics::Counters;
use crate::tls_link::TlsLink;
use crate::worker::{Job, Outcome};

/// Largest batch the ingest takes from the broker (a batch is at most a few MiB).
const MAX_PACKET: u32 = 32 << 20;

/// The TLS client configuration: the broker's CA, this service's certificate and key.
pub fn tls_config(mqtt: &Mqtt) -> anyhow::Result<rustls::ClientConfig> {
    crate::tls::client_config(&mqtt.ca_file, Some((&mqtt.cert_file, &mqtt.key_file)))
}

/// Runs the subscription until `stop` turns true, then lets the batches in hand finish (their
/// PUBACKs and acks go out) and disconnects.
pub async fn run(
    mqtt: Mqtt,
    replica: String,
    jobs: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (host, port) = mqtt
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("mqtt.broker {:?} is not host:port", mqtt.broker))?;
    let link = TlsLink::bind().context("cannot make the broker link's socket")?;
    let mut options = MqttOptions::new(
        replica.clone(),
        link.socket_path().to_string_lossy().into_owned(),
        0,
    );
    tokio::spawn(link.run(host, port, Arc::new(tls_config(&mqtt)?)));
    options
        .set_transport(Transport::Unix)
        .set_keep_alive(mqtt.keepalive)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(mqtt.session_expiry.as_secs() as u32))
        // The broker sends at most this many batches before the first PUBACK.
        .set_receive_maximum(Some(mqtt.receive_maximum))
        .set_max_packet_size(Some(MAX_PACKET))
        .set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let filter = topic::shared_batch_filter(&mqtt.group);
    let mut in_hand: JoinSet<()> = JoinSet::new();
    let mut wait = Duration::from_millis(250);
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = stop.changed() => break,
        };
        while in_hand.try_join_next().is_some() {}
        match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                counters.broker_connections.fetch_add(1, Ordering::Relaxed);
                wait = Duration::from_millis(250);
                tracing::info!(
                    message = "Connected to the broker.",
                    session_present = connack.session_present
                );
                // Every time, session or not: Mosquitto 2.0 does not restore a shared
                // subscription from its persistence after a restart (the session comes back
                // without it), and subscribing again to the same filter only replaces it.
                client.subscribe(filter.clone(), QoS::AtLeastOnce).await?;
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let gateway = std::str::from_utf8(&publish.topic)
                    .ok()
                    .and_then(topic::batch_topic_gateway)
                    .map(str::to_owned);
                let Some(gateway) = gateway else {
                    // Not a batch topic (the subscription is only to batch topics).
                    client.ack(&publish).await?;
                    continue;
                };
                let (reply, outcome) = oneshot::channel();
                let job = Job {
                    gateway: gateway.clone(),
                    bytes: publish.payload.clone(),
                    reply,
                };
                // While the workers wait for the database the queue stays full: a stop must
                // still be heard (the batch is not PUBACKed, so the broker keeps it).
                tokio::select! {
                    sent = jobs.send(job) => if sent.is_err() { break },
                    _ = stop.changed() => break,
                }
                let client = client.clone();
                let counters = counters.clone();
                in_hand.spawn(async move {
                    let Ok(outcome) = outcome.await else {
                        return;
                    };
                    match outcome {
                        Outcome::Stored { acked_upto } => {
                            if acked_upto > 0 {
                                let sent = client
                                    .publish(
                                        topic::ack_topic(&gateway),
                                        QoS::AtLeastOnce,
                                        false,
                                        topic::ack_payload(acked_upto),
                                    )
                                    .await;
                                if sent.is_ok() {
                                    counters.acks_sent.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            let _ = client.ack(&publish).await;
                        }
                        // Handled for good: kept aside, so the broker may forget it.
                        Outcome::DeadLettered => {
                            let _ = client.ack(&publish).await;
                        }
                        // Not stored: no PUBACK, so the broker delivers it again.
                        Outcome::Abandoned => {}
                    }
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(message = "Broker connection lost; reconnecting.", error = %e, retry_in = ?wait);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break,
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
    // Stopping: leave the group first, or the broker keeps handing this session its share of the
    // batches while it is away (until the session expires). Then the batches in hand finish and
    // their acknowledgements go out while the event loop still runs; then a clean DISCONNECT.
    let _ = client.unsubscribe(filter.clone()).await;
    let drain = async {
        while in_hand.join_next().await.is_some() {}
        let _ = client.disconnect().await;
    };
    let poll = async {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::select! {
            () = drain => {}
            () = poll => {}
        }
    })
    .await;
    // Give the DISCONNECT a moment on the wire.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    Ok(())
}
