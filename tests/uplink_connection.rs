//! End-to-end: the uplink's connection hygiene against a real Mosquitto (TLS 1.3, client
//! certificates, per-identity ACL): one connection at start, back within about a second of the
//! broker's return, one log line per change of state, and a clean stop.
//!
//! MQTT 5 is checked through [`MqttFront`], a TLS front that records what the gateway put on the
//! wire (protocol level, session expiry, topic names and aliases) and can play a broker that
//! only speaks 3.1.1.
//!
//! The gateway's log goes to a file in the site's directory (text, no colours), and the broker's
//! log (`connection_messages true`) is the record of every connection the broker accepted.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use outpost_e2e::broker::{Broker, Cloud, Pki};
use outpost_e2e::mqtt_front::{MqttFront, Seen};
use outpost_e2e::{NodeSpec, Proc, Site, bin, wait_for};

const GATEWAY: &str = "e2e-site"; // the Site's gateway.id

fn setup(dir: &Path) -> (Pki, Broker, Cloud) {
    let pki = Pki::new(&dir.join("pki")).unwrap();
    let broker = Broker::start(&dir.join("broker"), &pki).unwrap();
    let cloud = Cloud::connect(&broker, &pki).unwrap();
    (pki, broker, cloud)
}

/// A site with one node whose gateway pushes to `broker` every second.
fn site(broker: &Broker, pki: &Pki) -> Site {
    site_via(broker.port(), pki)
}

/// A site with one node whose gateway pushes every second to the broker at `port` on loopback.
fn site_via(port: u16, pki: &Pki) -> Site {
    site_with(port, pki, "")
}

/// [`site_via`] with more `[uplink.mqtt]` keys.
fn site_with(port: u16, pki: &Pki, mqtt_keys: &str) -> Site {
    let files = pki.client(GATEWAY).unwrap();
    let config = format!(
        "[uplink]\nbatch_interval = \"1s\"\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkeepalive = \"5s\"\n{mqtt_keys}",
        port,
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    );
    let specs = vec![NodeSpec {
        rate_hz: 10.0,
        ..NodeSpec::new(0)
    }];
    Site::with_config(specs, &config).unwrap()
}

/// Starts the gateway with its log (stdout and stderr, as text) in `gateway.log`.
fn start_gateway(site: &mut Site) -> PathBuf {
    let log = site.dir.path().join("gateway.log");
    let file = fs::File::create(&log).unwrap();
    let mut cmd = Command::new(bin("outpost"));
    cmd.arg("run")
        .arg("--config")
        .arg(site.config_path())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    site.gateway = Some(Proc::spawn("gateway", &mut cmd).unwrap());
    wait_for(Duration::from_secs(20), "the gateway's API", || {
        site.get("/api/v1/status").ok()
    })
    .unwrap();
    log
}

/// The gateway's log lines, without colour codes.
fn log_lines(log: &Path) -> Vec<String> {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines().map(strip_ansi).collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `tracing`'s text format: `<time>  WARN <message> <fields>`.
fn level_of(line: &str) -> Option<&str> {
    line.split_whitespace()
        .nth(1)
        .filter(|l| ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(l))
}

fn uplink_connected(site: &Site) -> bool {
    site.get("/api/v1/status")
        .is_ok_and(|s| s["uplink"]["connected"] == true)
}

/// Waits until the cloud has a batch from the gateway: connected, and the probe passed.
fn wait_for_a_batch(cloud: &Cloud, from: usize) {
    cloud
        .wait_for_messages(
            |m| {
                m[from.min(m.len())..]
                    .iter()
                    .any(|m| m.topic == format!("outpost/{GATEWAY}/batch"))
            },
            Duration::from_secs(60),
        )
        .unwrap();
}

/// Connections the broker accepted from the gateway's client id.
fn gateway_connections(broker: &Broker) -> usize {
    broker
        .log()
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(&format!("outpost-{GATEWAY}")))
        .count()
}

/// A loopback TCP relay to `127.0.0.1:upstream` that delivers every chunk `delay` after it
/// arrived, in order, in both directions: a link with a cellular round trip. Its threads end
/// with the connections (and the accept thread with the process).
fn slow_relay(upstream: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            for (from, to) in [(&client, &server), (&server, &client)] {
                let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                    continue;
                };
                delayed_pump(from, to, delay);
            }
        }
    });
    port
}

fn delayed_pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` ends the writer once it has delivered the rest.
    });
    std::thread::spawn(move || {
        for (at, bytes) in rx {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        std::thread::sleep(delay);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Over a link with a 1.4 s round trip, the TLS handshake and CONNECT take about 3 s, and
/// batches are sealed (and the uplink woken) every second meanwhile: the handshake must still
/// be the only one.
#[test]
fn the_gateway_opens_exactly_one_connection_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, cloud) = setup(dir.path());
    let relay = slow_relay(broker.port(), Duration::from_millis(700));
    let mut site = site_via(relay, &pki);
    let log = start_gateway(&mut site);
    wait_for_a_batch(&cloud, 0);
    // Time for a throw-away first connection's successor to show up.
    std::thread::sleep(Duration::from_secs(3));
    let connections = gateway_connections(&broker);
    let lines = log_lines(&log);
    assert_eq!(
        connections,
        1,
        "one TLS handshake and one MQTT session at start\n{}\n--- gateway\n{}",
        broker.log(),
        lines.join("\n")
    );
    let status = site.get("/api/v1/status").unwrap();
    assert_eq!(status["uplink"]["connects"], 1, "{}", status["uplink"]);
    assert!(
        !lines.iter().any(|l| l.contains("Broken pipe")),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn after_each_outage_the_gateway_is_back_within_seconds_of_the_broker_with_one_warn_and_one_info() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, mut broker, cloud) = setup(dir.path());
    let mut site = site(&broker, &pki);
    let log = start_gateway(&mut site);
    wait_for_a_batch(&cloud, 0);

    // Long enough that a back-off doubling from 200 ms would be asleep for over 12 s when the
    // broker comes back.
    let outage = Duration::from_secs(13);
    let mut back_after = Vec::new();
    for round in 0..3 {
        let lines_before = log_lines(&log).len();
        broker.stop().unwrap();
        wait_for(
            Duration::from_secs(30),
            "the gateway to see the broker gone",
            || (!uplink_connected(&site)).then_some(()),
        )
        .unwrap();
        std::thread::sleep(outage);
        broker.restart().unwrap(); // returns once the port accepts connections
        let returned = Instant::now();
        wait_for(Duration::from_secs(60), "the gateway back", || {
            uplink_connected(&site).then_some(())
        })
        .unwrap();
        let took = returned.elapsed();
        println!("round {round}: connected {took:?} after the broker listened again");
        back_after.push(took);

        // The outage in the journal: one WARN when the link was lost, one INFO when it came back
        // (the status page shows connected once the CONNACK is in; the line follows it).
        let lines = wait_for(
            Duration::from_secs(5),
            "the INFO line of the return",
            || {
                let lines = log_lines(&log)[lines_before..].to_vec();
                lines
                    .iter()
                    .any(|l| level_of(l) == Some("INFO") && l.contains("Uplink back"))
                    .then_some(lines)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", log_lines(&log)[lines_before..].join("\n")));
        let warns: Vec<&String> = lines
            .iter()
            .filter(|l| matches!(level_of(l), Some("WARN" | "ERROR")))
            .collect();
        assert_eq!(
            warns.len(),
            1,
            "one WARN per outage, got:\n{}",
            lines.join("\n")
        );
        assert!(warns[0].contains("Uplink lost"), "{}", warns[0]);
        let uplink_infos = lines
            .iter()
            .filter(|l| level_of(l) == Some("INFO") && l.contains("Uplink"))
            .count();
        assert_eq!(uplink_infos, 1, "{}", lines.join("\n"));
    }
    back_after.sort();
    let median = back_after[back_after.len() / 2];
    println!("reconnect after the broker returns: median {median:?} of {back_after:?}");
    for took in &back_after {
        assert!(
            *took < Duration::from_secs(5),
            "back {took:?} after the broker (want about 1 s; 5 s is the generous bound)"
        );
    }
}

#[test]
fn a_sigterm_says_offline_disconnects_cleanly_and_logs_no_warn() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, cloud) = setup(dir.path());
    let mut site = site(&broker, &pki);
    let log = start_gateway(&mut site);
    wait_for_a_batch(&cloud, 0);
    let seen = cloud.messages().len();
    let lines_before = log_lines(&log).len();

    let status = site
        .gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(20))
        .unwrap();
    assert!(status.success(), "{status}");

    // `offline` reached the cloud...
    let offline = cloud
        .wait_for_messages(
            |m| {
                m[seen..].iter().any(|m| {
                    m.topic == format!("outpost/{GATEWAY}/status") && m.payload == b"offline"
                })
            },
            Duration::from_secs(10),
        )
        .is_ok();
    assert!(offline, "the gateway said offline");
    // ...and the broker saw an MQTT DISCONNECT, not a dropped socket: so it was the gateway's
    // own word, not its Last Will.
    let broker_log = broker.log();
    assert!(
        broker_log.contains(&format!("Client outpost-{GATEWAY} disconnected.")),
        "{broker_log}"
    );
    let lines = log_lines(&log)[lines_before..].to_vec();
    let warns: Vec<&String> = lines
        .iter()
        .filter(|l| matches!(level_of(l), Some("WARN" | "ERROR")))
        .collect();
    assert!(warns.is_empty(), "WARN at shutdown:\n{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| level_of(l) == Some("INFO") && l.contains("Uplink stopped")),
        "{}",
        lines.join("\n")
    );
}

/// The batch PUBLISHes the front saw, as (connection, topic, alias).
fn batch_publishes(front: &MqttFront) -> Vec<(usize, String, Option<u16>)> {
    front
        .seen()
        .into_iter()
        .filter_map(|seen| match seen {
            Seen::Publish {
                connection,
                topic,
                alias,
                ..
            } if topic.is_empty() || topic.ends_with("/batch") => Some((connection, topic, alias)),
            _ => None,
        })
        .collect()
}

fn status_field(site: &Site, key: &str) -> serde_json::Value {
    site.get("/api/v1/status")
        .map(|s| s["uplink"][key].clone())
        .unwrap_or_default()
}

#[test]
fn with_mqtt_5_batches_travel_as_a_topic_alias_and_those_replayed_after_a_drop_carry_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, cloud) = setup(dir.path());
    let front = MqttFront::start(&broker, &pki, GATEWAY).unwrap();
    // The broker's PUBACK acknowledges: while PUBACKs are held, batches stay in flight, and
    // rumqttc replays them on the next connection.
    let mut site = site_with(front.port(), &pki, "ack = \"broker\"\n");
    let log = start_gateway(&mut site);
    let batch_topic = format!("outpost/{GATEWAY}/batch");
    wait_for(
        Duration::from_secs(60),
        "three batches on the first connection",
        || (batch_publishes(&front).len() >= 3).then_some(()),
    )
    .unwrap();
    assert_eq!(status_field(&site, "protocol"), "5");
    let first = batch_publishes(&front);
    assert_eq!(
        first[0],
        (0, batch_topic.clone(), Some(1)),
        "named and aliased once"
    );
    assert!(
        first[1..].iter().all(|p| *p == (0, String::new(), Some(1))),
        "then the alias alone: {first:?}"
    );
    assert!(matches!(
        front.seen()[0],
        Seen::Connect {
            level: 5,
            session_expiry: Some(3600),
            ..
        }
    ));

    // PUBACKs stop reaching the gateway; batches go out on the alias and stay unacknowledged.
    front.stall_downstream(true);
    let stalled_from = batch_publishes(&front).len();
    wait_for(
        Duration::from_secs(30),
        "two batches sent while PUBACKs are held",
        || (batch_publishes(&front).len() >= stalled_from + 2).then_some(()),
    )
    .unwrap();
    front.cut();
    front.stall_downstream(false);
    let cloud_seen = cloud.messages().len();
    wait_for(
        Duration::from_secs(60),
        "three batches on a later connection",
        || (batch_publishes(&front).iter().filter(|p| p.0 >= 1).count() >= 3).then_some(()),
    )
    .unwrap();
    wait_for_a_batch(&cloud, cloud_seen);

    let publishes = batch_publishes(&front);
    let violations = front.alias_violations();
    assert!(
        violations.is_empty(),
        "a publish carried an alias its connection never defined: {violations:?}\nall: {publishes:?}\n--- broker\n{}",
        broker.log()
    );
    let later = publishes.iter().find(|p| p.0 >= 1).unwrap();
    assert_eq!(
        later.1, batch_topic,
        "the first batch of a new connection names its topic"
    );
    assert!(!broker.log().contains("protocol error"), "{}", broker.log());
    assert_eq!(
        front.connections(),
        2,
        "no reconnection loop\n{}",
        log_lines(&log).join("\n")
    );
    assert!(
        cloud
            .messages()
            .iter()
            .filter(|m| m.topic.ends_with("/batch"))
            .all(|m| m.topic == batch_topic),
        "the broker resolved every alias for the cloud"
    );
}

#[test]
fn a_broker_that_only_speaks_3_1_1_gets_3_1_1_after_one_attempt_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, cloud) = setup(dir.path());
    let front = MqttFront::start(&broker, &pki, GATEWAY).unwrap();
    front.refuse_v5(true);
    let mut site = site_with(front.port(), &pki, "");
    let log = start_gateway(&mut site);
    wait_for_a_batch(&cloud, 0);
    assert_eq!(status_field(&site, "protocol"), "3.1.1");
    assert_eq!(status_field(&site, "connects"), 1);

    // A dropped connection comes back in 3.1.1 at once: no second MQTT 5 attempt in this run.
    front.cut();
    let cloud_seen = cloud.messages().len();
    wait_for(Duration::from_secs(30), "the second connection", || {
        (status_field(&site, "connects") == 2).then_some(())
    })
    .unwrap();
    wait_for_a_batch(&cloud, cloud_seen);
    let seen = front.seen();
    let connects: Vec<&Seen> = seen
        .iter()
        .filter(|s| matches!(s, Seen::Connect { .. } | Seen::RefusedV5 { .. }))
        .collect();
    assert!(
        matches!(
            connects.as_slice(),
            [
                Seen::RefusedV5 { connection: 0 },
                Seen::Connect {
                    connection: 1,
                    level: 4,
                    session_expiry: None
                },
                Seen::Connect {
                    connection: 2,
                    level: 4,
                    ..
                },
            ]
        ),
        "{connects:?}"
    );
    assert!(
        batch_publishes(&front).iter().all(|p| p.2.is_none()),
        "no alias with 3.1.1"
    );
    let lines = log_lines(&log);
    let fallback: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("did not take this MQTT version"))
        .collect();
    assert_eq!(fallback.len(), 1, "{}", lines.join("\n"));
    assert_eq!(level_of(fallback[0]), Some("INFO"));
    let before_cut: Vec<&String> = lines
        .iter()
        .take_while(|l| !l.contains("Uplink lost"))
        .filter(|l| matches!(level_of(l), Some("WARN" | "ERROR")))
        .collect();
    assert!(
        before_cut.is_empty(),
        "a 3.1.1 broker is not an outage: {before_cut:?}"
    );
}

#[test]
fn a_gateway_told_to_speak_mqtt_5_does_not_fall_back_and_says_why_it_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, _cloud) = setup(dir.path());
    let front = MqttFront::start(&broker, &pki, GATEWAY).unwrap();
    front.refuse_v5(true);
    let mut site = site_with(front.port(), &pki, "protocol = \"5\"\n");
    start_gateway(&mut site);
    wait_for(Duration::from_secs(30), "three refused attempts", || {
        (front.connections() >= 3).then_some(())
    })
    .unwrap();
    assert!(
        front
            .seen()
            .iter()
            .all(|s| matches!(s, Seen::RefusedV5 { .. })),
        "{:?}",
        front.seen()
    );
    assert_eq!(status_field(&site, "connected"), false);
    let error = status_field(&site, "last_error");
    assert!(error.as_str().is_some_and(|e| !e.is_empty()), "{error}");
}
