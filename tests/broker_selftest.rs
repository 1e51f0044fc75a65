//! The broker harness against the real Mosquitto, and the Mosquitto behaviour Outpost's uplink
//! relies on: these tests fail if an upgrade changes it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use outpost_e2e::broker::{Broker, ClientFiles, Cloud, Pki, Relay, tls_config_without_client_cert};
use outpost_e2e::wait_for;
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode as V5SubCode};
use rumqttc::{
    Event, Incoming, LastWill, MqttOptions, Outgoing, QoS, SubscribeReasonCode, TlsConfiguration,
    Transport,
};

const WAIT: Duration = Duration::from_secs(10);

/// A broker with its CA. Dropped in order: the broker, then the PKI, then the directory.
struct Setup {
    broker: Broker,
    pki: Pki,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("outpost-broker-")
        .tempdir()
        .unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let broker = Broker::start(&dir.path().join("broker"), &pki).unwrap();
    Setup { broker, pki, dir }
}

/// Events of a test client's connection, in order; an error ends the recording (no reconnect).
type Log<T> = Arc<Mutex<Vec<Result<T, String>>>>;

fn record<T: Send + 'static>(
    mut next: impl FnMut() -> Option<Result<T, String>> + Send + 'static,
) -> Log<T> {
    let log: Log<T> = Arc::default();
    let out = log.clone();
    std::thread::spawn(move || {
        while let Some(event) = next() {
            let failed = event.is_err();
            out.lock().unwrap().push(event);
            if failed {
                break;
            }
        }
    });
    log
}

/// Waits until `f` finds what it looks for in the log.
fn wait_in<T, R>(log: &Log<T>, what: &str, f: impl Fn(&[Result<T, String>]) -> Option<R>) -> R
where
    T: std::fmt::Debug,
{
    wait_for(WAIT, what, || f(&log.lock().unwrap()))
        .unwrap_or_else(|e| panic!("{e:#}; events: {:#?}", log.lock().unwrap()))
}

/// A gateway-side MQTT 3.1.1 client.
struct Gw {
    client: rumqttc::Client,
    log: Log<Event>,
}

impl Gw {
    fn connect(port: u16, transport: Transport, tweak: impl FnOnce(&mut MqttOptions)) -> Gw {
        let mut options = MqttOptions::new("gw-probe", "127.0.0.1", port);
        options.set_transport(transport);
        tweak(&mut options);
        let (client, mut connection) = rumqttc::Client::new(options, 16);
        let log = record(move || {
            connection
                .recv()
                .ok()
                .map(|e| e.map_err(|e| format!("{e:?}")))
        });
        Gw { client, log }
    }

    fn with_identity(port: u16, files: &ClientFiles) -> Gw {
        let gw = Gw::connect(port, files.transport().unwrap(), |_| {});
        gw.wait_connected();
        gw
    }

    fn wait_connected(&self) {
        wait_in(&self.log, "CONNACK", |events| {
            events.iter().find_map(|e| match e {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => Some(()),
                Err(e) => panic!("connection failed: {e}"),
                _ => None,
            })
        });
    }

    /// The first error, after checking that no CONNACK came before it.
    fn wait_refused(&self) -> String {
        wait_in(&self.log, "the connection to fail", |events| {
            events.iter().find_map(|e| match e {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => panic!("connected: {ack:?}"),
                Err(e) => Some(e.clone()),
                _ => None,
            })
        })
    }

    /// Publishes QoS 1 and waits for the PUBACK of that packet id.
    fn publish_acked(&self, topic: &str, payload: &str, retain: bool) {
        let before = self.log.lock().unwrap().len();
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .unwrap();
        wait_in(&self.log, &format!("PUBACK for {topic}"), |events| {
            let pkid = events[before..].iter().find_map(|e| match e {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Some(*pkid),
                _ => None,
            })?;
            events[before..].iter().find_map(|e| match e {
                Ok(Event::Incoming(Incoming::PubAck(ack))) if ack.pkid == pkid => Some(()),
                Err(e) => panic!("connection failed: {e}"),
                _ => None,
            })
        });
    }

    fn suback(&self, filter: &str) -> Vec<SubscribeReasonCode> {
        let before = self.log.lock().unwrap().len();
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        wait_in(&self.log, &format!("SUBACK for {filter}"), |events| {
            events[before..].iter().find_map(|e| match e {
                Ok(Event::Incoming(Incoming::SubAck(ack))) => Some(ack.return_codes.clone()),
                _ => None,
            })
        })
    }

    fn received(&self) -> Vec<(String, Vec<u8>)> {
        let events = self.log.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    Some((p.topic.clone(), p.payload.to_vec()))
                }
                _ => None,
            })
            .collect()
    }

    fn connacks(&self) -> usize {
        let events = self.log.lock().unwrap();
        events
            .iter()
            .filter(|e| matches!(e, Ok(Event::Incoming(Incoming::ConnAck(_)))))
            .count()
    }
}

/// A gateway-side MQTT 5 client.
struct GwV5 {
    client: rumqttc::v5::Client,
    log: Log<rumqttc::v5::Event>,
}

impl GwV5 {
    fn with_identity(port: u16, files: &ClientFiles) -> GwV5 {
        use rumqttc::v5::{Event, Incoming};
        let mut options = rumqttc::v5::MqttOptions::new("gw-probe-v5", "127.0.0.1", port);
        options.set_transport(files.transport().unwrap());
        let (client, mut connection) = rumqttc::v5::Client::new(options, 16);
        let log = record(move || {
            connection
                .recv()
                .ok()
                .map(|e| e.map_err(|e| format!("{e:?}")))
        });
        wait_in(&log, "CONNACK (v5)", |events| {
            events.iter().find_map(|e| match e {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => Some(()),
                Err(e) => panic!("connection failed: {e}"),
                _ => None,
            })
        });
        GwV5 { client, log }
    }

    /// Publishes QoS 1 and returns the reason code of its PUBACK.
    fn publish_acked(&self, topic: &str, payload: &str) -> PubAckReason {
        use rumqttc::v5::{Event, Incoming};
        let before = self.log.lock().unwrap().len();
        self.client
            .publish(topic, V5QoS::AtLeastOnce, false, payload.to_owned())
            .unwrap();
        wait_in(&self.log, &format!("PUBACK for {topic}"), |events| {
            events[before..].iter().find_map(|e| match e {
                Ok(Event::Incoming(Incoming::PubAck(ack))) => Some(ack.reason),
                Err(e) => panic!("connection failed: {e}"),
                _ => None,
            })
        })
    }

    fn suback(&self, filter: &str) -> Vec<V5SubCode> {
        use rumqttc::v5::{Event, Incoming};
        let before = self.log.lock().unwrap().len();
        self.client.subscribe(filter, V5QoS::AtLeastOnce).unwrap();
        wait_in(&self.log, &format!("SUBACK for {filter}"), |events| {
            events[before..].iter().find_map(|e| match e {
                Ok(Event::Incoming(Incoming::SubAck(ack))) => Some(ack.return_codes.clone()),
                _ => None,
            })
        })
    }
}

fn payloads_on(messages: &[outpost_e2e::broker::Message], topic: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

fn has(messages: &[outpost_e2e::broker::Message], topic: &str, payload: &str) -> bool {
    messages
        .iter()
        .any(|m| m.topic == topic && m.payload == payload.as_bytes())
}

#[test]
fn a_gateway_and_the_cloud_exchange_messages_over_tls() {
    let s = setup();
    let cloud = Cloud::connect(&s.broker, &s.pki).unwrap();
    let gw = Gw::with_identity(s.broker.port(), &s.pki.client("gw-a").unwrap());
    assert_eq!(
        gw.suback("outpost/gw-a/ack"),
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    gw.publish_acked("outpost/gw-a/batch", "batch 1", false);
    let messages = cloud
        .wait_for_messages(|m| has(m, "outpost/gw-a/batch", "batch 1"), WAIT)
        .unwrap();
    assert_eq!(messages[0].qos, QoS::AtLeastOnce);
    assert!(!messages[0].retain);

    // A topic beyond the cloud's two default filters.
    cloud.subscribe("outpost/+/alerts").unwrap();
    gw.publish_acked("outpost/gw-a/alerts", "disk full", false);
    cloud
        .wait_for_messages(|m| has(m, "outpost/gw-a/alerts", "disk full"), WAIT)
        .unwrap();

    cloud
        .publish("outpost/gw-a/ack", "1", QoS::AtLeastOnce, false)
        .unwrap();
    wait_for(WAIT, "the ack at the gateway", || {
        gw.received()
            .contains(&("outpost/gw-a/ack".into(), b"1".to_vec()))
            .then_some(())
    })
    .unwrap();
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let s = setup();
    let tls = tls_config_without_client_cert(&s.pki.ca_path()).unwrap();
    let transport = Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls)));
    let gw = Gw::connect(s.broker.port(), transport, |_| {});
    let error = gw.wait_refused();
    // TLS 1.3: the client finishes its handshake first; the broker's alert ends the connection.
    assert!(error.contains("CertificateRequired"), "{error}");
    assert!(
        s.broker.log().contains("peer did not return a certificate"),
        "{}",
        s.broker.log()
    );
}

#[test]
fn a_client_with_a_certificate_from_another_ca_is_refused() {
    let s = setup();
    let other = Pki::new(&s.dir.path().join("other-pki")).unwrap();
    let files = other.client("gw-a").unwrap();
    // The client trusts the real CA (so the server is accepted) but presents the other CA's cert.
    let forged = ClientFiles {
        ca: s.pki.ca_path(),
        ..files
    };
    let gw = Gw::connect(s.broker.port(), forged.transport().unwrap(), |_| {});
    let error = gw.wait_refused();
    assert!(error.contains("UnknownCA"), "{error}");
    assert!(
        s.broker.log().contains("certificate verify failed"),
        "{}",
        s.broker.log()
    );
}

#[test]
fn with_mqtt_3_1_1_a_publish_to_another_gateways_topic_is_pubacked_but_never_delivered() {
    let s = setup();
    let cloud = Cloud::connect(&s.broker, &s.pki).unwrap();
    let gw = Gw::with_identity(s.broker.port(), &s.pki.client("gw-a").unwrap());

    // The PUBACK comes as for an accepted message: 3.1.1 has no way to say otherwise.
    gw.publish_acked("outpost/gw-b/batch", "forged", false);
    // Mosquitto handles one connection's packets in order: once the marker (sent after the
    // forged batch) has reached the cloud, the forged batch would have too.
    gw.publish_acked("outpost/gw-a/batch", "marker", false);
    let messages = cloud
        .wait_for_messages(|m| has(m, "outpost/gw-a/batch", "marker"), WAIT)
        .unwrap();
    assert!(payloads_on(&messages, "outpost/gw-b/batch").is_empty());
    assert_eq!(gw.connacks(), 1, "the broker kept the connection open");
    assert!(
        s.broker
            .log()
            .contains("Denied PUBLISH from gw-probe (d0, q1, r0, m1, 'outpost/gw-b/batch'"),
        "{}",
        s.broker.log()
    );
}

#[test]
fn with_mqtt_5_a_publish_to_another_gateways_topic_is_pubacked_not_authorized() {
    let s = setup();
    let cloud = Cloud::connect(&s.broker, &s.pki).unwrap();
    let gw = GwV5::with_identity(s.broker.port(), &s.pki.client("gw-a").unwrap());

    // Reason code 0x87.
    assert_eq!(
        gw.publish_acked("outpost/gw-b/batch", "forged"),
        PubAckReason::NotAuthorized
    );
    // The connection stays up (the marker goes through) and nothing was delivered.
    assert_eq!(
        gw.publish_acked("outpost/gw-a/batch", "marker"),
        PubAckReason::Success
    );
    let messages = cloud
        .wait_for_messages(|m| has(m, "outpost/gw-a/batch", "marker"), WAIT)
        .unwrap();
    assert!(payloads_on(&messages, "outpost/gw-b/batch").is_empty());
}

#[test]
fn a_gateways_subscription_to_another_gateways_topics_is_granted_but_delivers_nothing() {
    let s = setup();
    let cloud = Cloud::connect(&s.broker, &s.pki).unwrap();
    let files = s.pki.client("gw-a").unwrap();
    let gw = Gw::with_identity(s.broker.port(), &files);
    // Mosquitto 2.0 does not check the ACL at SUBSCRIBE time: 3.1.1 return code 0x01 (granted
    // QoS 1), not 0x80. The ACL is applied to each message on delivery instead.
    for filter in ["outpost/gw-b/ack", "outpost/+/ack", "outpost/#"] {
        assert_eq!(
            gw.suback(filter),
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            "{filter}"
        );
    }
    // MQTT 5 likewise: reason code 0x01 (granted QoS 1), not 0x87.
    let gw5 = GwV5::with_identity(s.broker.port(), &files);
    assert_eq!(
        gw5.suback("outpost/gw-b/ack"),
        [V5SubCode::Success(V5QoS::AtLeastOnce)]
    );

    cloud
        .publish("outpost/gw-b/ack", "for gw-b", QoS::AtLeastOnce, false)
        .unwrap();
    cloud
        .publish("outpost/gw-a/ack", "marker", QoS::AtLeastOnce, false)
        .unwrap();
    // The cloud's publishes reach gw-a in order: once the marker is in, gw-b's ack would be too.
    // The marker matches two of gw-a's filters (outpost/+/ack, outpost/#); Mosquitto sends one
    // copy per matching subscription.
    let received = wait_for(WAIT, "the marker at gw-a", || {
        let received = gw.received();
        received
            .iter()
            .any(|(_, p)| p == b"marker")
            .then_some(received)
    })
    .unwrap();
    assert!(
        received
            .iter()
            .all(|(topic, _)| topic == "outpost/gw-a/ack"),
        "{received:?}"
    );
}

#[test]
fn the_certificate_not_the_connect_username_decides_the_identity() {
    let s = setup();
    let cloud = Cloud::connect(&s.broker, &s.pki).unwrap();
    let files = s.pki.client("gw-a").unwrap();
    let gw = Gw::connect(s.broker.port(), files.transport().unwrap(), |o| {
        o.set_credentials("cloud", "");
    });
    gw.wait_connected();
    gw.publish_acked("outpost/gw-b/batch", "forged", false);
    gw.publish_acked("outpost/gw-a/batch", "marker", false);
    let messages = cloud
        .wait_for_messages(|m| has(m, "outpost/gw-a/batch", "marker"), WAIT)
        .unwrap();
    assert!(payloads_on(&messages, "outpost/gw-b/batch").is_empty());
}

/// Connects gw-a through `relay` with Last Will `outpost/gw-a/status` = "offline" (QoS 1,
/// retained), then publishes "online" retained.
fn gateway_with_will(relay: &Relay, files: &ClientFiles, keep_alive: Duration) -> Gw {
    let gw = Gw::connect(relay.port(), files.transport().unwrap(), |o| {
        o.set_keep_alive(keep_alive).set_last_will(LastWill::new(
            "outpost/gw-a/status",
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    });
    gw.wait_connected();
    gw.publish_acked("outpost/gw-a/status", "online", true);
    gw
}

#[test]
fn a_retained_will_says_offline_when_the_gateways_connection_dies_and_late_subscribers_see_it() {
    let s = setup();
    let relay = Relay::start(s.broker.port()).unwrap();
    let _gw = gateway_with_will(
        &relay,
        &s.pki.client("gw-a").unwrap(),
        Duration::from_secs(30),
    );

    // A cloud subscribing after the fact gets the retained "online", flagged retained.
    let cloud = Cloud::connect(&s.broker, &s.pki).unwrap();
    let messages = cloud
        .wait_for_messages(|m| has(m, "outpost/gw-a/status", "online"), WAIT)
        .unwrap();
    assert!(messages[0].retain);

    // The TCP connection ends without DISCONNECT: the broker publishes the will at once,
    // forwarded live (so with retain == false) to the subscribed cloud.
    relay.reset();
    let messages = cloud
        .wait_for_messages(|m| has(m, "outpost/gw-a/status", "offline"), WAIT)
        .unwrap();
    assert!(!messages.last().unwrap().retain);
    cloud.disconnect().unwrap();

    // And it replaced the retained "online" for whoever subscribes next.
    let cloud = Cloud::connect(&s.broker, &s.pki).unwrap();
    let messages = cloud
        .wait_for_messages(|m| has(m, "outpost/gw-a/status", "offline"), WAIT)
        .unwrap();
    assert_eq!(payloads_on(&messages, "outpost/gw-a/status"), ["offline"]);
    assert!(messages[0].retain);
}

#[test]
fn the_will_is_published_when_a_silent_link_lets_the_keepalive_lapse() {
    let s = setup();
    let cloud = Cloud::connect(&s.broker, &s.pki).unwrap();
    let relay = Relay::start(s.broker.port()).unwrap();
    let _gw = gateway_with_will(
        &relay,
        &s.pki.client("gw-a").unwrap(),
        Duration::from_secs(2),
    );
    cloud
        .wait_for_messages(|m| has(m, "outpost/gw-a/status", "online"), WAIT)
        .unwrap();

    // No FIN, no RST: only the missing PINGREQs tell the broker. Mosquitto 2.0 drops a client
    // silent for more than 1.5 × keepalive (whole seconds), checking about every 6 s: here the
    // will came 5.2 to 5.6 s after the cut.
    relay.cut();
    let cut_at = std::time::Instant::now();
    cloud
        .wait_for_messages(
            |m| has(m, "outpost/gw-a/status", "offline"),
            Duration::from_secs(15),
        )
        .unwrap();
    let after = cut_at.elapsed();
    assert!(
        after >= Duration::from_secs(2),
        "the will came {after:?} after the cut: before the keepalive could lapse"
    );
    assert!(
        s.broker
            .log()
            .contains("Client gw-probe has exceeded timeout, disconnecting."),
        "{}",
        s.broker.log()
    );
}

#[test]
fn the_broker_restarts_on_the_same_port_and_a_persistent_session_gets_the_messages_queued_meanwhile()
 {
    let mut s = setup();
    let port = s.broker.port();
    let cloud = Cloud::connect(&s.broker, &s.pki).unwrap();
    assert_eq!(cloud.connacks(), [false], "a fresh broker has no session");
    cloud.disconnect().unwrap();

    let files = s.pki.client("gw-a").unwrap();
    let gw = Gw::with_identity(port, &files);
    gw.publish_acked("outpost/gw-a/batch", "before restart", false);
    s.broker.restart().unwrap();
    assert_eq!(s.broker.port(), port);
    let gw = {
        drop(gw);
        Gw::with_identity(port, &files)
    };
    // The cloud's subscriptions survived the restart too: this one is queued for it as well.
    gw.publish_acked("outpost/gw-a/batch", "after restart", false);

    let cloud = Cloud::connect(&s.broker, &s.pki).unwrap();
    assert_eq!(cloud.connacks(), [true], "the session survived the restart");
    let messages = cloud
        .wait_for_messages(|m| payloads_on(m, "outpost/gw-a/batch").len() >= 2, WAIT)
        .unwrap();
    assert_eq!(
        payloads_on(&messages, "outpost/gw-a/batch"),
        ["before restart", "after restart"]
    );
    assert!(messages.iter().all(|m| m.qos == QoS::AtLeastOnce));
}

#[test]
fn a_broker_killed_with_sigkill_forgets_the_sessions_and_messages_it_had_not_saved() {
    let mut s = setup();
    Cloud::connect(&s.broker, &s.pki)
        .unwrap()
        .disconnect()
        .unwrap();
    let gw = Gw::with_identity(s.broker.port(), &s.pki.client("gw-a").unwrap());
    gw.publish_acked("outpost/gw-a/batch", "queued", false);

    // No save since the start (autosave_interval is 1800 s): the session and its queue are gone.
    s.broker.kill_hard();
    s.broker.restart().unwrap();
    let cloud = Cloud::connect(&s.broker, &s.pki).unwrap();
    assert_eq!(cloud.connacks(), [false], "a session survived SIGKILL");
    drop(gw);
    let gw = Gw::with_identity(s.broker.port(), &s.pki.client("gw-a").unwrap());
    gw.publish_acked("outpost/gw-a/batch", "marker", false);
    let messages = cloud
        .wait_for_messages(|m| has(m, "outpost/gw-a/batch", "marker"), WAIT)
        .unwrap();
    assert_eq!(payloads_on(&messages, "outpost/gw-a/batch"), ["marker"]);
}

#[test]
fn the_cloud_reconnects_by_itself_after_a_broker_restart_and_keeps_its_subscriptions() {
    let mut s = setup();
    let cloud = Cloud::connect(&s.broker, &s.pki).unwrap();
    s.broker.stop().unwrap();
    assert!(!s.broker.is_running());
    s.broker.restart().unwrap();
    // The cloud did not subscribe again: the broker's persisted session carries its filters.
    assert_eq!(cloud.wait_for_connacks(2, WAIT).unwrap(), [false, true]);

    let gw = Gw::with_identity(s.broker.port(), &s.pki.client("gw-b").unwrap());
    gw.publish_acked("outpost/gw-b/batch", "after restart", false);
    cloud
        .wait_for_messages(|m| has(m, "outpost/gw-b/batch", "after restart"), WAIT)
        .unwrap();
}

#[test]
fn the_broker_log_records_what_happened() -> Result<()> {
    let s = setup();
    let _cloud = Cloud::connect(&s.broker, &s.pki)?;
    let log = s.broker.log();
    assert!(log.contains("New client connected"), "{log}");
    assert!(log.contains("u'cloud'"), "{log}");
    Ok(())
}

/// A bare MQTT client over rustls, for the exact bytes the broker answers with (rumqttc parses a
/// 3.1.1 PUBACK with or without a reason code alike).
struct Raw(rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>);

impl Raw {
    fn connect(port: u16, files: &ClientFiles) -> Raw {
        use rustls::pki_types::ServerName;
        let tls = rustls::ClientConnection::new(
            Arc::new(files.tls_config().unwrap()),
            ServerName::try_from("127.0.0.1").unwrap(),
        )
        .unwrap();
        let socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        Raw(rustls::StreamOwned::new(tls, socket))
    }

    /// Sends `packet`, returns the next packet received (fixed header included).
    fn exchange(&mut self, packet: &[u8]) -> Vec<u8> {
        use std::io::{Read, Write};
        self.0.write_all(packet).unwrap();
        self.0.flush().unwrap();
        let mut out = vec![0u8];
        self.0.read_exact(&mut out).unwrap();
        // Remaining length: a varint of up to 4 bytes.
        let mut len = 0usize;
        for shift in (0..4).map(|i| 7 * i) {
            let mut byte = [0u8];
            self.0.read_exact(&mut byte).unwrap();
            out.push(byte[0]);
            len |= usize::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let start = out.len();
        out.resize(start + len, 0);
        self.0.read_exact(&mut out[start..]).unwrap();
        out
    }
}

#[test]
fn the_broker_answers_a_forbidden_publish_and_subscribe_with_these_exact_bytes() {
    let s = setup();
    let files = s.pki.client("gw-a").unwrap();

    // MQTT 3.1.1.
    let mut raw = Raw::connect(s.broker.port(), &files);
    #[rustfmt::skip]
    let connack = raw.exchange(&[
        0x10, 19, // CONNECT, remaining length
        0, 4, b'M', b'Q', b'T', b'T', // protocol name
        4,    // protocol level: 3.1.1
        0x02, // flags: clean session
        0, 60, // keepalive 60 s
        0, 7, b'g', b'w', b'-', b'r', b'a', b'w', b'4', // client id
    ]);
    assert_eq!(connack, [0x20, 2, 0x00, 0x00]); // CONNACK: no session, accepted
    #[rustfmt::skip]
    let puback = raw.exchange(&[
        0x32, 23, // PUBLISH, QoS 1, remaining length
        0, 18, b'o', b'u', b't', b'p', b'o', b's', b't', b'/', b'g', b'w', b'-', b'b', b'/',
        b'b', b'a', b't', b'c', b'h', // topic outpost/gw-b/batch
        0, 1, // packet id 1
        b'x', // payload
    ]);
    // PUBACK for packet id 1, no reason code: the same bytes as for an accepted publish.
    assert_eq!(puback, [0x40, 2, 0, 1]);
    #[rustfmt::skip]
    let suback = raw.exchange(&[
        0x82, 21, // SUBSCRIBE, remaining length
        0, 2, // packet id 2
        0, 16, b'o', b'u', b't', b'p', b'o', b's', b't', b'/', b'g', b'w', b'-', b'b', b'/',
        b'a', b'c', b'k', // filter outpost/gw-b/ack
        1, // requested QoS 1
    ]);
    // SUBACK for packet id 2: 0x01, granted QoS 1 (not 0x80, failure).
    assert_eq!(suback, [0x90, 3, 0, 2, 0x01]);

    // MQTT 5.
    let mut raw = Raw::connect(s.broker.port(), &files);
    #[rustfmt::skip]
    let connack = raw.exchange(&[
        0x10, 20, // CONNECT, remaining length
        0, 4, b'M', b'Q', b'T', b'T', // protocol name
        5,    // protocol level: 5
        0x02, // flags: clean start
        0, 60, // keepalive 60 s
        0,     // no properties
        0, 7, b'g', b'w', b'-', b'r', b'a', b'w', b'5', // client id
    ]);
    assert_eq!(connack[..4], [0x20, connack[1], 0x00, 0x00]); // CONNACK: success (+ properties)
    #[rustfmt::skip]
    let puback = raw.exchange(&[
        0x32, 24, // PUBLISH, QoS 1, remaining length
        0, 18, b'o', b'u', b't', b'p', b'o', b's', b't', b'/', b'g', b'w', b'-', b'b', b'/',
        b'b', b'a', b't', b'c', b'h', // topic outpost/gw-b/batch
        0, 1, // packet id 1
        0,    // no properties
        b'x', // payload
    ]);
    // PUBACK for packet id 1, reason code 0x87: not authorized.
    assert_eq!(puback, [0x40, 3, 0, 1, 0x87]);
    #[rustfmt::skip]
    let suback = raw.exchange(&[
        0x82, 22, // SUBSCRIBE, remaining length
        0, 2, // packet id 2
        0,    // no properties
        0, 16, b'o', b'u', b't', b'p', b'o', b's', b't', b'/', b'g', b'w', b'-', b'b', b'/',
        b'a', b'c', b'k', // filter outpost/gw-b/ack
        1, // options: QoS 1
    ]);
    // SUBACK for packet id 2, no properties, reason code 0x01: granted QoS 1 (not 0x87).
    assert_eq!(suback, [0x90, 4, 0, 2, 0, 0x01]);
}
