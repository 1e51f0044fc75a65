//! End-to-end: the gateway pushes sealed batches over MQTT/TLS to a real Mosquitto broker (client
//! certificates, per-identity ACL); a cloud client decodes them and acknowledges end to end.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use outpost_e2e::broker::{Broker, Cloud, Message, Pki};
use outpost_e2e::{NodeSpec, Site, assert_contiguous, wait_for};
use rumqttc::QoS;

const GATEWAY: &str = "e2e-site"; // the Site's gateway.id

/// The `[uplink]` config for a gateway whose certificate is for `identity`.
fn mqtt_config(broker: &Broker, pki: &Pki, identity: &str) -> String {
    let files = pki.client(identity).unwrap();
    format!(
        "[uplink]\nbatch_interval = \"1s\"\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkeepalive = \"5s\"\nresend_after = \"20s\"\n",
        broker.port(),
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    )
}

/// What the cloud has made of the batches it received.
#[derive(Debug, Default)]
struct CloudView {
    /// Batch bytes by sequence number (a resend must be byte-identical).
    batches: BTreeMap<u64, Vec<u8>>,
    /// Sequence numbers in the order first received.
    arrival: Vec<u64>,
}

impl CloudView {
    fn take(&mut self, messages: &[Message]) {
        for m in messages
            .iter()
            .filter(|m| m.topic == format!("outpost/{GATEWAY}/batch"))
        {
            let header =
                outpost_batch::read_header(&m.payload).expect("the cloud only gets valid batches");
            match self.batches.get(&header.seq) {
                Some(earlier) => assert_eq!(
                    earlier, &m.payload,
                    "batch {} resent with other bytes",
                    header.seq
                ),
                None => {
                    self.batches.insert(header.seq, m.payload.clone());
                    self.arrival.push(header.seq);
                }
            }
        }
    }

    /// The highest sequence number with every one before it received.
    fn contiguous_upto(&self) -> u64 {
        let mut upto = self.batches.keys().next().map_or(0, |first| first - 1);
        while self.batches.contains_key(&(upto + 1)) {
            upto += 1;
        }
        upto
    }

    /// `seq` channel per source, over every batch received, in batch order.
    fn seqs(&self) -> BTreeMap<String, Vec<i64>> {
        let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for bytes in self.batches.values() {
            let batch = outpost_batch::decode(bytes, &outpost_batch::Dictionaries::new()).unwrap();
            for r in batch.readings().filter(|r| r.channel == "seq") {
                out.entry(r.source.to_owned())
                    .or_default()
                    .push(r.value.as_f64() as i64);
            }
        }
        out
    }
}

fn ack(cloud: &Cloud, upto: u64) {
    cloud
        .publish(
            &format!("outpost/{GATEWAY}/ack"),
            format!("{{\"upto\": {upto}}}"),
            QoS::AtLeastOnce,
            false,
        )
        .unwrap();
}

fn setup(dir: &Path) -> (Pki, Broker, Cloud) {
    let pki = Pki::new(&dir.join("pki")).unwrap();
    let broker = Broker::start(&dir.join("broker"), &pki).unwrap();
    let cloud = Cloud::connect(&broker, &pki).unwrap();
    (pki, broker, cloud)
}

/// Runs the cloud until every source has `n` samples, acknowledging as it goes.
fn receive_all(cloud: &Cloud, view: &mut CloudView, sources: usize, n: usize, timeout: Duration) {
    let mut seen = 0;
    wait_for(
        timeout,
        &format!("{n} samples of {sources} sources at the cloud"),
        || {
            let messages = cloud.messages();
            view.take(&messages[seen..]);
            seen = messages.len();
            let upto = view.contiguous_upto();
            if upto > 0 {
                ack(cloud, upto);
            }
            let seqs = view.seqs();
            (seqs.len() == sources && seqs.values().all(|s| s.len() >= n)).then_some(())
        },
    )
    .unwrap();
}

#[test]
fn readings_decoded_at_the_cloud_equal_those_in_the_store_and_acks_empty_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, cloud) = setup(dir.path());
    let specs = (0..2)
        .map(|i| NodeSpec {
            rate_hz: 50.0,
            samples: Some(300),
            ..NodeSpec::new(i)
        })
        .collect();
    let mut site = Site::with_config(specs, &mqtt_config(&broker, &pki, GATEWAY)).unwrap();
    site.start_gateway().unwrap();

    let mut view = CloudView::default();
    receive_all(&cloud, &mut view, 2, 300, Duration::from_secs(90));
    for (source, s) in view.seqs() {
        assert_contiguous(&source, &s, 300);
        assert_eq!(s.len(), 300, "{source}: a sample twice at the cloud");
    }

    // Every reading in the store reached the cloud with the same time and value.
    let conn = rusqlite::Connection::open(site.store_path()).unwrap();
    let mut stmt = conn
        .prepare("SELECT n.uid, r.channel, r.ts_ms, r.value FROM readings r JOIN nodes n ON n.id = r.node_id")
        .unwrap();
    let mut stored: Vec<(String, String, i64, i64)> = stmt
        .query_map([], |r| {
            let channel: u8 = r.get(1)?;
            Ok((r.get(0)?, outpost_proto_name(channel), r.get(2)?, r.get(3)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut received: Vec<(String, String, i64, i64)> = Vec::new();
    for bytes in view.batches.values() {
        let batch = outpost_batch::decode(bytes, &outpost_batch::Dictionaries::new()).unwrap();
        for r in batch.readings() {
            let outpost_batch::Value::Decimal { raw, .. } = r.value else {
                panic!("node readings are decimals")
            };
            received.push((r.source.to_owned(), r.channel.to_owned(), r.ts_ms, raw));
        }
    }
    stored.sort();
    received.sort();
    assert_eq!(received.len(), 2 * 300 * 4);
    assert_eq!(stored, received);

    // The cloud's acknowledgements emptied the outbox; the gateway said it is online.
    wait_for(Duration::from_secs(20), "the outbox to empty", || {
        let status = site.get("/api/v1/status").ok()?;
        (status["outbox"]["batches"] == 0 && status["outbox"]["unsealed_readings"] == 0)
            .then_some(())
    })
    .unwrap();
    let status = site.get("/api/v1/status").unwrap();
    assert_eq!(status["uplink"]["connected"], true);
    assert_eq!(status["uplink"]["acked_upto"], view.contiguous_upto());
    assert!(status["uplink"]["bytes_sent"].as_u64().unwrap() > 0);
    let online = cloud
        .messages()
        .iter()
        .any(|m| m.topic == format!("outpost/{GATEWAY}/status") && m.payload == b"online");
    assert!(online, "the gateway announced itself online");
}

fn outpost_proto_name(channel: u8) -> String {
    [
        "",
        "temperature",
        "humidity",
        "pressure",
        "seq",
        "chip_temperature",
    ][channel as usize]
        .to_owned()
}

#[test]
fn with_the_broker_down_for_a_minute_everything_is_delivered_in_order_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, mut broker, cloud) = setup(dir.path());
    let specs = (0..2)
        .map(|i| NodeSpec {
            rate_hz: 20.0,
            ..NodeSpec::new(i)
        })
        .collect();
    let mut site = Site::with_config(specs, &mqtt_config(&broker, &pki, GATEWAY)).unwrap();
    site.start_gateway().unwrap();
    let mut view = CloudView::default();
    receive_all(&cloud, &mut view, 2, 40, Duration::from_secs(60));

    broker.stop().unwrap();
    wait_for(
        Duration::from_secs(30),
        "the gateway to see the broker gone",
        || (site.get("/api/v1/status").ok()?["uplink"]["connected"] == false).then_some(()),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(60));
    let status = site.get("/api/v1/status").unwrap();
    assert!(
        status["outbox"]["batches"].as_u64().unwrap() > 10,
        "batches wait in the store: {}",
        status["outbox"]
    );
    let stored_at_restart: Vec<usize> = site
        .stored_seqs()
        .unwrap()
        .iter()
        .map(|(_, s)| s.len())
        .collect();

    broker.restart().unwrap();
    receive_all(
        &cloud,
        &mut view,
        2,
        *stored_at_restart.iter().max().unwrap(),
        Duration::from_secs(120),
    );
    for (source, s) in view.seqs() {
        assert_contiguous(&source, &s, 1);
    }
    // Oldest first: batches first arrived in sequence order, outage or not.
    assert!(
        view.arrival.windows(2).all(|w| w[0] < w[1]),
        "arrival order {:?}",
        view.arrival
    );
}

#[test]
fn a_gateway_killed_between_publish_and_ack_loses_nothing_and_its_last_will_says_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, cloud) = setup(dir.path());
    let specs = (0..2)
        .map(|i| NodeSpec {
            rate_hz: 50.0,
            samples: Some(800),
            ..NodeSpec::new(i)
        })
        .collect();
    let mut site = Site::with_config(specs, &mqtt_config(&broker, &pki, GATEWAY)).unwrap();
    site.start_gateway().unwrap();

    // The cloud receives but does not acknowledge yet: everything published is unacked.
    let mut view = CloudView::default();
    wait_for(
        Duration::from_secs(60),
        "three batches at the cloud",
        || {
            view.take(&cloud.messages()[..]);
            (view.batches.len() >= 3).then_some(())
        },
    )
    .unwrap();
    site.gateway.as_mut().unwrap().kill_hard();
    let offline = cloud.wait_for_messages(
        |m| {
            m.iter()
                .any(|m| m.topic == format!("outpost/{GATEWAY}/status") && m.payload == b"offline")
        },
        Duration::from_secs(30),
    );
    assert!(offline.is_ok(), "the broker published the Last Will");

    let mut view = CloudView::default(); // the cloud keeps its messages; dedupe starts over
    site.start_gateway().unwrap();
    receive_all(&cloud, &mut view, 2, 800, Duration::from_secs(120));
    for (source, s) in view.seqs() {
        assert_contiguous(&source, &s, 800);
        assert_eq!(
            s.len(),
            800,
            "{source}: duplicates after dedupe by batch sequence"
        );
    }
}

#[test]
fn a_gateway_whose_certificate_is_for_another_id_is_refused_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, cloud) = setup(dir.path());
    let specs = vec![NodeSpec {
        rate_hz: 20.0,
        ..NodeSpec::new(0)
    }];
    // The certificate says "gw-other"; the config says gateway.id = "e2e-site".
    let mut site = Site::with_config(specs, &mqtt_config(&broker, &pki, "gw-other")).unwrap();
    site.start_gateway().unwrap();
    let status = wait_for(
        Duration::from_secs(30),
        "the refusal on the status page",
        || {
            let status = site.get("/api/v1/status").ok()?;
            status["uplink"]["refused"]
                .as_str()
                .is_some()
                .then_some(status)
        },
    )
    .unwrap();
    let refused = status["uplink"]["refused"].as_str().unwrap();
    assert!(
        refused.contains(&format!("outpost/{GATEWAY}/")),
        "{refused}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let leaked = cloud
        .messages()
        .iter()
        .filter(|m| m.topic == format!("outpost/{GATEWAY}/batch"))
        .count();
    assert_eq!(leaked, 0, "the ACL kept gw-other out of outpost/{GATEWAY}/");
    // Nothing was acknowledged, so nothing left the outbox.
    let outbox = &site.get("/api/v1/status").unwrap()["outbox"];
    assert_eq!(outbox["acked_upto"], 0);
}

#[test]
fn a_full_buffer_alert_reaches_the_cloud_at_once_without_waiting_for_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, cloud) = setup(dir.path());
    cloud.subscribe("outpost/+/alerts").unwrap();
    let specs = (0..3)
        .map(|i| NodeSpec {
            rate_hz: 150.0,
            ..NodeSpec::new(i)
        })
        .collect();
    // Long batches would hold an alert for a minute if alerts went with them; the cloud never
    // acknowledges, so the outbox fills up.
    let config = mqtt_config(&broker, &pki, GATEWAY).replace(
        "batch_interval = \"1s\"",
        "batch_interval = \"60s\"\nmax_batch_readings = 100",
    ) + "\n[buffer]\nmax_bytes = 65536\n";
    let mut site = Site::with_config(specs, &config).unwrap();
    site.start_gateway().unwrap();
    let messages = cloud
        .wait_for_messages(
            |m| {
                m.iter()
                    .any(|m| m.topic == format!("outpost/{GATEWAY}/alerts"))
            },
            Duration::from_secs(90),
        )
        .unwrap();
    let alert = messages
        .iter()
        .find(|m| m.topic == format!("outpost/{GATEWAY}/alerts"))
        .unwrap();
    let alert: serde_json::Value = serde_json::from_slice(&alert.payload).unwrap();
    assert_eq!(alert["kind"], "buffer_full", "{alert}");
    let status = site.get("/api/v1/status").unwrap();
    assert!(status["outbox"]["dropped_batches"].as_u64().unwrap() > 0);
}

#[test]
fn with_broker_acknowledgement_batches_leave_the_outbox_on_puback() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, cloud) = setup(dir.path());
    let specs = (0..2)
        .map(|i| NodeSpec {
            rate_hz: 50.0,
            samples: Some(200),
            ..NodeSpec::new(i)
        })
        .collect();
    let config = mqtt_config(&broker, &pki, GATEWAY) + "ack = \"broker\"\n";
    let mut site = Site::with_config(specs, &config).unwrap();
    site.start_gateway().unwrap();
    // The cloud never acknowledges; the broker's PUBACKs do.
    let status = wait_for(
        Duration::from_secs(60),
        "every batch acknowledged by the broker",
        || {
            let status = site.get("/api/v1/status").ok()?;
            let outbox = &status["outbox"];
            (site.stored_seqs().ok()?.iter().all(|(_, s)| s.len() == 200)
                && outbox["unsealed_readings"] == 0
                && outbox["batches"] == 0
                && outbox["acked_upto"].as_u64()? > 0)
                .then_some(status)
        },
    )
    .unwrap();
    let mut view = CloudView::default();
    view.take(&cloud.messages());
    assert_eq!(
        view.contiguous_upto(),
        status["outbox"]["acked_upto"].as_u64().unwrap()
    );
    for (source, s) in view.seqs() {
        assert_contiguous(&source, &s, 200);
    }
}
