//! Shared by the fault-injection tests (`tests/faults.rs`, `tests/flapping.rs`): the gateway's MQTT
//! uplink config, the cloud's view of the batches it received (checked as it goes: a resend must
//! be byte-identical), the node simulators with their exit report, and a seeded random source.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use outpost_e2e::broker::{Broker, Cloud, Message, Pki};
use outpost_e2e::{Proc, Site, bin};
use rumqttc::QoS;

/// The Site's `gateway.id`.
pub const GATEWAY: &str = "e2e-site";

/// The `[uplink]` config for a gateway pushing to `broker` as [`GATEWAY`].
pub fn mqtt_config(broker: &Broker, pki: &Pki, batch_interval: &str) -> String {
    let files = pki.client(GATEWAY).unwrap();
    format!(
        "[uplink]\nbatch_interval = \"{batch_interval}\"\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkeepalive = \"5s\"\nresend_after = \"20s\"\n",
        broker.port(),
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    )
}

/// A CA, a broker with TLS and client certificates, and the cloud subscribed to it.
pub fn broker_and_cloud(dir: &Path) -> (Pki, Broker, Cloud) {
    let pki = Pki::new(&dir.join("pki")).unwrap();
    let broker = Broker::start(&dir.join("broker"), &pki).unwrap();
    let cloud = Cloud::connect(&broker, &pki).unwrap();
    (pki, broker, cloud)
}

pub use outpost_e2e::{CloudReading, sealed_readings, unsealed_readings};

/// What the cloud has made of the batches it received.
#[derive(Debug, Default)]
pub struct CloudView {
    /// Batch bytes by sequence number.
    pub batches: BTreeMap<u64, Vec<u8>>,
    /// Sequence numbers in the order first received.
    pub arrival: Vec<u64>,
    /// Batch messages received in all, resends included.
    pub received: usize,
    /// Messages of the cloud already looked at.
    seen: usize,
}

impl CloudView {
    /// Takes the messages the cloud received since the last call. Panics on a batch resent with
    /// other bytes.
    pub fn update(&mut self, cloud: &Cloud) {
        let messages = cloud.messages();
        self.take(&messages[self.seen.min(messages.len())..]);
        self.seen = messages.len();
    }

    fn take(&mut self, messages: &[Message]) {
        let topic = format!("outpost/{GATEWAY}/batch");
        for m in messages.iter().filter(|m| m.topic == topic) {
            self.received += 1;
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

    /// The highest sequence number with every one before it received, from 1.
    pub fn contiguous_upto(&self) -> u64 {
        let mut upto = 0;
        while self.batches.contains_key(&(upto + 1)) {
            upto += 1;
        }
        upto
    }

    /// Acknowledges end to end everything received without a hole.
    pub fn ack(&self, cloud: &Cloud) {
        let upto = self.contiguous_upto();
        if upto > 0 {
            cloud
                .publish(
                    &format!("outpost/{GATEWAY}/ack"),
                    format!("{{\"upto\": {upto}}}"),
                    QoS::AtLeastOnce,
                    false,
                )
                .unwrap();
        }
    }

    /// Every reading of every batch received, in batch order.
    pub fn readings(&self) -> Vec<CloudReading> {
        let mut out = Vec::new();
        for bytes in self.batches.values() {
            let batch = outpost_batch::decode(bytes, &outpost_batch::Dictionaries::new()).unwrap();
            for r in batch.readings() {
                let value = match r.value {
                    outpost_batch::Value::Decimal { raw, exp } => format!("{raw}e{exp}"),
                    outpost_batch::Value::Float(v) => format!("{:x}", v.to_bits()),
                };
                out.push((r.source.to_owned(), r.channel.to_owned(), r.ts_ms, value));
            }
        }
        out
    }

    /// The `seq` channel per node, over every batch received, in batch order.
    pub fn node_seqs(&self) -> BTreeMap<String, Vec<i64>> {
        let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (source, channel, _, value) in self.readings() {
            if channel == "seq" {
                let raw = value.split('e').next().unwrap().parse().unwrap();
                out.entry(source).or_default().push(raw);
            }
        }
        out
    }

    /// Panics unless the batches are 1..=n without a hole, first arrived in sequence order, and
    /// no reading is in two of them: a node's sample is known by its `seq` (each node's are
    /// 1..=n, once each); a device's reading by its source, channel and time. (Two samples of a
    /// node may share a time: it is the gateway's receive time less the age the node reports.)
    pub fn assert_exactly_once_in_order(&self) {
        let n = self.batches.len() as u64;
        assert_eq!(
            self.contiguous_upto(),
            n,
            "batches received: a hole in {:?}",
            self.batches.keys().collect::<Vec<_>>()
        );
        assert!(
            self.arrival.windows(2).all(|w| w[0] < w[1]),
            "batches first arrived out of order: {:?}",
            self.arrival
        );
        let nodes = self.node_seqs();
        for (source, seqs) in &nodes {
            for (i, &seq) in seqs.iter().enumerate() {
                assert_eq!(
                    seq,
                    i as i64 + 1,
                    "node {source}: sample {} at the cloud holds seq {seq}: a gap or a duplicate",
                    i + 1
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (source, channel, ts, _) in self.readings() {
            if nodes.contains_key(&source) {
                continue;
            }
            assert!(
                seen.insert((source.clone(), channel.clone(), ts)),
                "{source}/{channel} at {ts} is in two batches"
            );
        }
    }
}

/// Device readings (not from nodes) stored more than once with the same time, per series.
pub fn duplicate_device_readings(store: &Path) -> Result<Vec<(String, String, i64, i64)>> {
    let conn =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = conn.prepare(
        "SELECT s.source, s.channel, r.ts_ms, count(*) FROM readings r JOIN series s ON s.id = r.series_id
         WHERE r.node_id IS NULL GROUP BY r.series_id, r.ts_ms HAVING count(*) > 1",
    )?;
    let out = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    Ok(out)
}

/// Device readings stored, per device.
pub fn device_reading_counts(store: &Path) -> Result<BTreeMap<String, i64>> {
    let conn =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = conn.prepare(
        "SELECT s.source, count(*) FROM readings r JOIN series s ON s.id = r.series_id
         WHERE r.node_id IS NULL GROUP BY s.source",
    )?;
    let out = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(out)
}

/// A node simulator started like [`Site::spawn_node`], its standard error to `log` (where it
/// reports, on SIGTERM, what it sampled, still holds and dropped).
pub fn spawn_node_logged(site: &Site, i: usize, log: &Path) -> Result<Proc> {
    let spec = &site.specs[i];
    let link = site.link(i);
    let log = std::fs::File::create(log)?;
    let mut cmd = Command::new(bin("outpost-node-sim"));
    cmd.arg("--pty")
        .arg(&link)
        .args(["--uid", &spec.uid, "--seed", &i.to_string()])
        .args(["--rate", &spec.rate_hz.to_string()])
        .stdout(Stdio::null())
        .stderr(log);
    Proc::spawn_on_link(&format!("node {i}"), &mut cmd, &link)
}

/// What a node simulator reported when it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeReport {
    pub samples: u64,
    /// Samples not acknowledged when it stopped.
    pub held: u64,
    /// Samples its full ring pushed out.
    pub dropped: u64,
}

impl NodeReport {
    /// Samples the gateway acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.samples - self.held - self.dropped
    }
}

/// Stops a node simulator with SIGTERM and reads its report from its log.
pub fn stop_node(node: &mut Proc, log: &Path) -> Result<NodeReport> {
    node.terminate(Duration::from_secs(10))?;
    let text = std::fs::read_to_string(log)?;
    // "outpost-node-sim: 1234 samples, 5 held, 0 dropped, 7 retransmits"
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains(" samples, "))
        .with_context(|| format!("no report in {}: {text}", log.display()))?;
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let [samples, held, dropped, ..] = numbers[..] else {
        anyhow::bail!("cannot read the report {line:?}");
    };
    Ok(NodeReport {
        samples,
        held,
        dropped,
    })
}

/// A small seeded random source (splitmix64): the fault schedule is reproducible from the seed
/// the test prints.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the environment variable `var` if set, else from the clock.
    pub fn from_env(var: &str) -> (Rng, u64) {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        (Rng(seed), seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration uniformly in `[lo, hi)`, in whole milliseconds.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_millis() as u64;
        lo + Duration::from_millis(self.next_u64() % span.max(1))
    }
}

/// The median and the maximum of some durations.
pub fn median_max(values: &[Duration]) -> (Duration, Duration) {
    let mut sorted = values.to_vec();
    sorted.sort();
    (
        sorted.get(sorted.len() / 2).copied().unwrap_or_default(),
        sorted.last().copied().unwrap_or_default(),
    )
}

/// The cloud got batches 1..n, first arrivals in order, byte-identical when resent, no reading
/// in two; together exactly what the store sealed, with nothing left unsealed; each node's `seq`
/// at the cloud contiguous from 1.
pub fn assert_cloud_has_exactly_what_was_sealed(view: &CloudView, store: &Path) {
    view.assert_exactly_once_in_order();
    let mut received = view.readings();
    received.sort();
    let stored = sealed_readings(store).unwrap();
    assert_eq!(
        unsealed_readings(store).unwrap(),
        (0, 0),
        "readings left unsealed"
    );
    assert_eq!(
        received.len(),
        stored.len(),
        "readings at the cloud vs sealed in the store"
    );
    assert!(
        received == stored,
        "the cloud's readings differ from the store's"
    );
    for (uid, s) in view.node_seqs() {
        outpost_e2e::assert_contiguous(&uid, &s, 1);
    }
}
