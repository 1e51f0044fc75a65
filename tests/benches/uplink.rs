//! Bytes on the uplink socket per reading, MQTT and TLS framing included, at steady state:
//! 4 nodes × 4 channels at 1 Hz, 60 s batches, against a real Mosquitto over TLS.
//!
//! `cargo bench -p outpost-e2e --bench uplink` (OUTPOST_BENCH_MINUTES, default 6).
//!
//! In the same run, the readings the cloud received are sent again over the same kind of metered
//! TLS connection to the same broker, as a typical gateway would send them: one JSON message per
//! reading, and one gzip'ed JSON array per 60 s window. All three are TCP payload bytes counted
//! on the socket, both directions (PUBACKs, pings and the cloud's acknowledgements included), TLS
//! handshakes excluded.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost::io::uplink::link::{TlsLink, client_config};
use outpost::io::uplink::meter::Meter;
use outpost_e2e::broker::{Broker, Cloud, Pki};
use outpost_e2e::{NodeSpec, Site, wait_for};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, Transport};
use tokio_util::sync::CancellationToken;

const GATEWAY: &str = "e2e-site";

struct Received {
    seq: u64,
    readings: Vec<(String, String, i64, f64)>,
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` builds this; the measurement runs minutes
    }
    let minutes: u64 = std::env::var("OUTPOST_BENCH_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let broker = Broker::start(&dir.path().join("broker"), &pki).unwrap();
    let cloud = Cloud::connect(&broker, &pki).unwrap();
    let files = pki.client(GATEWAY).unwrap();
    let config = format!(
        "[uplink]\nbatch_interval = \"60s\"\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        broker.port(),
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    );
    let specs = (0..4)
        .map(|i| NodeSpec {
            rate_hz: 1.0,
            ..NodeSpec::new(i)
        })
        .collect();
    let mut site = Site::with_config(specs, &config).unwrap();
    site.start_gateway().unwrap();

    // The cloud, on its own thread for the whole run: decode each new batch and acknowledge it.
    let cloud = Arc::new(cloud);
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let cloud_thread = std::thread::spawn({
        let (cloud, received, stop) =
            (Arc::clone(&cloud), Arc::clone(&received), Arc::clone(&stop));
        move || {
            let mut seen = 0;
            while !stop.load(Ordering::Relaxed) {
                let messages = cloud.messages();
                for m in messages[seen..]
                    .iter()
                    .filter(|m| m.topic == format!("outpost/{GATEWAY}/batch"))
                {
                    let batch =
                        outpost_batch::decode(&m.payload, &outpost_batch::Dictionaries::new())
                            .unwrap();
                    let seq = batch.header().seq;
                    let mut received = received.lock().unwrap();
                    if received.iter().any(|r| r.seq == seq) {
                        continue;
                    }
                    let readings = batch
                        .readings()
                        .map(|r| {
                            (
                                r.source.to_owned(),
                                r.channel.to_owned(),
                                r.ts_ms,
                                r.value.as_f64(),
                            )
                        })
                        .collect();
                    received.push(Received { seq, readings });
                    let ack = format!("{{\"upto\": {seq}}}");
                    cloud
                        .publish(
                            &format!("outpost/{GATEWAY}/ack"),
                            ack,
                            QoS::AtLeastOnce,
                            false,
                        )
                        .unwrap();
                }
                seen = messages.len();
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let batches = || received.lock().unwrap().len();
    let meter = |site: &Site| {
        let status = site.get("/api/v1/status").unwrap();
        status["uplink"]["bytes_sent"].as_u64().unwrap()
            + status["uplink"]["bytes_received"].as_u64().unwrap()
    };

    // Steady state starts once the first full batch is acknowledged (handshake and startup behind).
    wait_for(Duration::from_secs(150), "the first two batches", || {
        (batches() >= 2).then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(2)); // its acknowledgement reaches the gateway
    let (bytes_start, batches_start) = (meter(&site), batches());
    eprintln!("steady state after {batches_start} batches; measuring {minutes} min");
    std::thread::sleep(Duration::from_secs(minutes * 60 - 30));
    wait_for(Duration::from_secs(120), "the window's batches", || {
        (batches() >= batches_start + minutes as usize - 1).then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(2)); // the last acknowledgement reaches the gateway
    let bytes_end = meter(&site);
    stop.store(true, Ordering::Relaxed);
    cloud_thread.join().unwrap();
    let received = std::mem::take(&mut *received.lock().unwrap());
    let window = &received[batches_start..];
    let readings: usize = window.iter().map(|r| r.readings.len()).sum();
    let ours = (bytes_end - bytes_start) as f64 / readings as f64;

    // The same readings the way a typical gateway sends them, over the same metered TLS.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let json_files = pki.client("gw-json").unwrap();
    let per_reading: Vec<Vec<u8>> = window
        .iter()
        .flat_map(|b| b.readings.iter())
        .map(|(source, channel, ts, value)| {
            serde_json::to_vec(&serde_json::json!({"source": source, "channel": channel, "ts_ms": ts, "value": value})).unwrap()
        })
        .collect();
    let gzip_batches: Vec<Vec<u8>> = window
        .iter()
        .map(|b| {
            let array: Vec<_> = b
                .readings
                .iter()
                .map(|(source, channel, ts, value)| serde_json::json!({"source": source, "channel": channel, "ts_ms": ts, "value": value}))
                .collect();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&serde_json::to_vec(&array).unwrap()).unwrap();
            gz.finish().unwrap()
        })
        .collect();
    let json = runtime.block_on(publish_metered(
        &broker,
        &json_files,
        dir.path(),
        &per_reading,
    )) as f64
        / readings as f64;
    let gzip = runtime.block_on(publish_metered(
        &broker,
        &json_files,
        dir.path(),
        &gzip_batches,
    )) as f64
        / readings as f64;

    println!(
        "uplink bytes per reading, 4 nodes x 4 channels at 1 Hz, 60 s batches, {} batches, {readings} readings",
        window.len()
    );
    println!("  one JSON message per reading (MQTT QoS 1, TLS): {json:>9.3}");
    println!("  gzip'ed JSON array per 60 s batch (same):      {gzip:>9.3}");
    println!("  Outpost batches (same, incl. acks and pings):  {ours:>9.3}");
    site.gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(10))
        .unwrap();
}

/// Publishes `payloads` QoS 1 through a metered TLS link; returns socket bytes after the
/// handshake and CONNECT, until every PUBACK is in.
async fn publish_metered(
    broker: &Broker,
    files: &outpost_e2e::broker::ClientFiles,
    dir: &std::path::Path,
    payloads: &[Vec<u8>],
) -> u64 {
    let tls = Arc::new(client_config(&files.ca, &files.cert, &files.key).unwrap());
    let run_dir = tempfile::tempdir_in(dir).unwrap();
    let link = TlsLink::bind(run_dir.path()).unwrap();
    let socket = link.socket_path().to_string_lossy().into_owned();
    let meter = Arc::new(Meter::default());
    let shutdown = CancellationToken::new();
    let errors = Arc::new(outpost::io::uplink::link::LinkReport::default());
    tokio::spawn(link.run(
        "127.0.0.1".into(),
        broker.port(),
        tls,
        Arc::clone(&meter),
        errors,
        shutdown.clone(),
    ));
    let mut options = MqttOptions::new(format!("bench-{}", payloads.len()), socket, 0);
    options
        .set_transport(Transport::Unix)
        .set_keep_alive(Duration::from_secs(120))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    loop {
        if let Ok(Event::Incoming(Incoming::ConnAck(_))) = eventloop.poll().await {
            break;
        }
    }
    let start = meter.sent() + meter.received();
    let topic = format!("outpost/{}/batch", files.identity);
    let sender = tokio::spawn({
        let payloads = payloads.to_vec();
        async move {
            for p in payloads {
                client
                    .publish(&topic, QoS::AtLeastOnce, false, p)
                    .await
                    .unwrap();
            }
            client
        }
    });
    let mut acked = 0;
    while acked < payloads.len() {
        if let Ok(Event::Incoming(Incoming::PubAck(_))) = eventloop.poll().await {
            acked += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bytes = meter.sent() + meter.received() - start;
    drop(sender.await);
    shutdown.cancel();
    bytes
}
