//! rumqttc's MQTT 3.1.1 and MQTT 5 clients behind one face, so the uplink adapter speaks either
//! without knowing which: [`Client`] takes requests, [`Connection`] is the event loop, and
//! [`Wire`] is what the adapter needs to know of each event.
//!
//! MQTT 5's topic aliases are carried out here ([`Client::try_publish`] with a [`TopicRef`]) and
//! repaired here: a publish queued with its alias alone and still unacknowledged when the
//! connection drops is replayed by rumqttc on the next connection, where the alias means
//! nothing. [`Connection::name_aliased_publishes`] gives such publishes their topic back
//! (and drops the alias) before the next connection is made.

use std::time::Duration;

use bytes::Bytes;
use outpost_core::uplink::protocol::{AttemptFailure, MqttVersion, TopicAliases, TopicRef};
use rumqttc::v5 as mqtt5;
use rumqttc::v5::mqttbytes::v5 as packets5;
use rumqttc::{Incoming, LastWill, MqttOptions, Outgoing, QoS, Transport};

/// How the client connects, whichever version.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub client_id: String,
    /// rumqttc's Unix socket to Outpost's TLS link.
    pub socket: String,
    pub keepalive: Duration,
    /// `offline`, retained, on this topic when the connection ends without DISCONNECT (none for
    /// the provisioning exchange, which has no status topic).
    pub will_topic: Option<String>,
    /// Start a clean session (the provisioning exchange) rather than resume the broker's.
    pub clean_session: bool,
    /// MQTT 5: how long the broker keeps the session after a connection ends.
    pub session_expiry: Duration,
}

/// The largest packet the gateway takes from the broker (acknowledgements, its own status,
/// commands, and a node firmware bundle on `cmd/firmware-add`: a manifest and a slot-sized
/// image).
const MAX_INCOMING_PACKET: u32 = crate::io::api::ota::MAX_BUNDLE_BYTES as u32 + 4096;
/// Aliases the gateway accepts from the broker for what it receives.
const INCOMING_ALIASES: u16 = 4;
/// Requests the client queues before `try_*` reports it full.
const REQUEST_QUEUE: usize = 64;

/// Makes a client and its event loop for `version`.
pub fn new(version: MqttVersion, settings: &ClientSettings) -> (Client, Connection) {
    match version {
        MqttVersion::V311 => {
            let mut options = MqttOptions::new(&settings.client_id, &settings.socket, 0);
            options
                .set_transport(Transport::Unix)
                .set_keep_alive(settings.keepalive)
                .set_clean_session(settings.clean_session)
                .set_max_packet_size(MAX_INCOMING_PACKET as usize, 64 * 1024 * 1024);
            if let Some(topic) = &settings.will_topic {
                options.set_last_will(LastWill::new(topic, "offline", QoS::AtLeastOnce, true));
            }
            let (client, eventloop) = rumqttc::AsyncClient::new(options, REQUEST_QUEUE);
            (Client::V311(client), Connection::V311(Box::new(eventloop)))
        }
        MqttVersion::V5 => {
            let mut options = mqtt5::MqttOptions::new(&settings.client_id, &settings.socket, 0);
            let expiry = u32::try_from(settings.session_expiry.as_secs()).unwrap_or(u32::MAX);
            options
                .set_transport(Transport::Unix)
                .set_keep_alive(settings.keepalive)
                .set_clean_start(settings.clean_session)
                .set_session_expiry_interval(Some(expiry))
                .set_max_packet_size(Some(MAX_INCOMING_PACKET))
                .set_topic_alias_max(Some(INCOMING_ALIASES));
            if let Some(topic) = &settings.will_topic {
                options.set_last_will(packets5::LastWill::new(
                    topic,
                    "offline",
                    mqtt5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    None,
                ));
            }
            let (client, eventloop) = mqtt5::AsyncClient::new(options, REQUEST_QUEUE);
            (Client::V5(client), Connection::V5(Box::new(eventloop)))
        }
    }
}

/// The request side.
#[derive(Debug, Clone)]
pub enum Client {
    V311(rumqttc::AsyncClient),
    V5(mqtt5::AsyncClient),
}

/// The client's request queue is full (or the event loop is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Client {
    /// Subscribes at QoS 0 (`at_least_once` false) or 1.
    pub fn try_subscribe(&self, filter: &str, at_least_once: bool) -> Result<(), Full> {
        match self {
            Client::V311(client) => client
                .try_subscribe(filter, qos4(at_least_once))
                .map_err(|_| Full),
            Client::V5(client) => client
                .try_subscribe(filter, qos5(at_least_once))
                .map_err(|_| Full),
        }
    }

    /// Publishes at QoS 1, referring to `topic` as `reference` says (MQTT 5 only; with 3.1.1
    /// every publish carries its name).
    pub fn try_publish(
        &self,
        topic: &str,
        reference: TopicRef,
        retain: bool,
        payload: impl Into<Bytes>,
    ) -> Result<(), Full> {
        let payload: Bytes = payload.into();
        match self {
            Client::V311(client) => client
                .try_publish(topic, QoS::AtLeastOnce, retain, payload)
                .map_err(|_| Full),
            Client::V5(client) => {
                let (name, alias) = match reference {
                    TopicRef::Name => (topic, None),
                    TopicRef::NameAndAlias(alias) => (topic, Some(alias)),
                    TopicRef::Alias(alias) => ("", Some(alias)),
                };
                let properties = packets5::PublishProperties {
                    topic_alias: alias,
                    ..packets5::PublishProperties::default()
                };
                client
                    .try_publish_with_properties(
                        name,
                        mqtt5::mqttbytes::QoS::AtLeastOnce,
                        retain,
                        payload,
                        properties,
                    )
                    .map_err(|_| Full)
            }
        }
    }

    pub fn try_disconnect(&self) -> Result<(), Full> {
        match self {
            Client::V311(client) => client.try_disconnect().map_err(|_| Full),
            Client::V5(client) => client.try_disconnect().map_err(|_| Full),
        }
    }
}

fn qos4(at_least_once: bool) -> QoS {
    if at_least_once {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    }
}

fn qos5(at_least_once: bool) -> mqtt5::mqttbytes::QoS {
    if at_least_once {
        mqtt5::mqttbytes::QoS::AtLeastOnce
    } else {
        mqtt5::mqttbytes::QoS::AtMostOnce
    }
}

/// The event loop.
pub enum Connection {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<mqtt5::EventLoop>),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection(MQTT {})", self.version())
    }
}

/// What the uplink needs to know of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// The broker accepted the connection. `topic_alias_max` is 0 with 3.1.1 or a broker that
    /// takes no aliases.
    ConnAck {
        session_present: bool,
        topic_alias_max: u16,
    },
    Publish {
        topic: Bytes,
        payload: Bytes,
        retain: bool,
    },
    SubAck {
        refused: bool,
    },
    /// `refused` holds the reason of an MQTT 5 PUBACK with a failure code (0x80 or more).
    PubAck {
        pkid: u16,
        refused: Option<String>,
    },
    OutgoingPublish {
        pkid: u16,
    },
    OutgoingDisconnect,
    Other,
}

/// A connection attempt or a connection ended.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    /// What it says about the protocol version, if the broker never accepted the connection.
    pub kind: AttemptFailure,
}

impl Connection {
    #[must_use]
    pub fn version(&self) -> MqttVersion {
        match self {
            Connection::V311(_) => MqttVersion::V311,
            Connection::V5(_) => MqttVersion::V5,
        }
    }

    /// The next event; connects first if not connected.
    pub async fn poll(&mut self) -> Result<Wire, Failure> {
        match self {
            Connection::V311(eventloop) => match eventloop.poll().await {
                Ok(event) => Ok(wire4(event)),
                Err(error) => {
                    let kind = match &error {
                        rumqttc::ConnectionError::ConnectionRefused(
                            rumqttc::ConnectReturnCode::RefusedProtocolVersion,
                        ) => AttemptFailure::VersionRefused,
                        rumqttc::ConnectionError::ConnectionRefused(_) => AttemptFailure::Refused,
                        _ => AttemptFailure::NoAnswer,
                    };
                    Err(Failure {
                        message: error.to_string(),
                        kind,
                    })
                }
            },
            Connection::V5(eventloop) => match eventloop.poll().await {
                Ok(event) => Ok(wire5(event)),
                Err(error) => {
                    let kind = match &error {
                        mqtt5::ConnectionError::ConnectionRefused(
                            packets5::ConnectReturnCode::UnsupportedProtocolVersion,
                        ) => AttemptFailure::VersionRefused,
                        mqtt5::ConnectionError::ConnectionRefused(_) => AttemptFailure::Refused,
                        _ => AttemptFailure::NoAnswer,
                    };
                    Err(Failure {
                        message: error.to_string(),
                        kind,
                    })
                }
            },
        }
    }

    /// After a connection ended: publishes waiting to be replayed that carry an alias alone get
    /// their topic name back from the ended connection's table, and lose the alias.
    pub fn name_aliased_publishes(&mut self, aliases: &TopicAliases) {
        let Connection::V5(eventloop) = self else {
            return;
        };
        for request in &mut eventloop.pending {
            let mqtt5::Request::Publish(publish) = request else {
                continue;
            };
            let Some(properties) = publish.properties.as_mut() else {
                continue;
            };
            let Some(alias) = properties.topic_alias.take() else {
                continue;
            };
            if publish.topic.is_empty()
                && let Some(topic) = aliases.previous_topic(alias)
            {
                publish.topic = Bytes::copy_from_slice(topic.as_bytes());
            }
        }
    }
}

fn wire4(event: rumqttc::Event) -> Wire {
    match event {
        rumqttc::Event::Incoming(Incoming::ConnAck(connack)) => Wire::ConnAck {
            session_present: connack.session_present,
            topic_alias_max: 0,
        },
        rumqttc::Event::Incoming(Incoming::Publish(publish)) => Wire::Publish {
            topic: Bytes::from(publish.topic.into_bytes()),
            payload: publish.payload,
            retain: publish.retain,
        },
        rumqttc::Event::Incoming(Incoming::SubAck(suback)) => Wire::SubAck {
            refused: suback
                .return_codes
                .iter()
                .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)),
        },
        rumqttc::Event::Incoming(Incoming::PubAck(puback)) => Wire::PubAck {
            pkid: puback.pkid,
            refused: None,
        },
        rumqttc::Event::Outgoing(Outgoing::Publish(pkid)) => Wire::OutgoingPublish { pkid },
        rumqttc::Event::Outgoing(Outgoing::Disconnect) => Wire::OutgoingDisconnect,
        _ => Wire::Other,
    }
}

fn wire5(event: mqtt5::Event) -> Wire {
    use packets5::{PubAckReason, SubscribeReasonCode};
    match event {
        mqtt5::Event::Incoming(mqtt5::Incoming::ConnAck(connack)) => Wire::ConnAck {
            session_present: connack.session_present,
            topic_alias_max: connack
                .properties
                .and_then(|p| p.topic_alias_max)
                .unwrap_or(0),
        },
        mqtt5::Event::Incoming(mqtt5::Incoming::Publish(publish)) => Wire::Publish {
            topic: publish.topic,
            payload: publish.payload,
            retain: publish.retain,
        },
        mqtt5::Event::Incoming(mqtt5::Incoming::SubAck(suback)) => Wire::SubAck {
            refused: suback
                .return_codes
                .iter()
                .any(|c| !matches!(c, SubscribeReasonCode::Success(_))),
        },
        mqtt5::Event::Incoming(mqtt5::Incoming::PubAck(puback)) => Wire::PubAck {
            pkid: puback.pkid,
            refused: match puback.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                reason => Some(
                    puback
                        .properties
                        .and_then(|p| p.reason_string)
                        .unwrap_or_else(|| format!("{reason:?}")),
                ),
            },
        },
        mqtt5::Event::Outgoing(Outgoing::Publish(pkid)) => Wire::OutgoingPublish { pkid },
        mqtt5::Event::Outgoing(Outgoing::Disconnect) => Wire::OutgoingDisconnect,
        _ => Wire::Other,
    }
}
