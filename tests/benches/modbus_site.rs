//! A Modbus site as a peer gateway was measured on: 10 devices × 10 holding registers (scaled
//! integers: three voltages at 0.1 V, three currents at 0.01 A, three power factors at 0.001 and
//! the frequency at 0.01 Hz, from the demo meter's model) polled every second, QoS 1 batches over
//! TLS 1.3 with a client certificate to a real Mosquitto, a cloud that decodes every batch and
//! acknowledges it end to end. The release `outpost run`, several at once where they do not
//! share anything but the broker and the simulated devices.
//!
//! ```text
//! cargo bench -p outpost-e2e --bench modbus_site -- bytes   [--minutes 6]
//! cargo bench -p outpost-e2e --bench modbus_site -- latency [--minutes 12] [--png PATH] [--intervals 1,5,60]
//! cargo bench -p outpost-e2e --bench modbus_site -- rss     [--minutes 30] [--png PATH] [--devices 100]
//! cargo bench -p outpost-e2e --bench modbus_site -- reconnect [--times 10]
//! ```
//!
//! - `bytes`: IP bytes per reading on the gateway's broker socket (TCP payload — TLS records, MQTT,
//!   PUBACKs, the cloud's acknowledgements, keepalives — plus 52 bytes of IPv4 and TCP header per
//!   segment, both directions, from the kernel's own counters, `ss -ti`), at 60 s and 10 s
//!   batches, for the registers scaled and the same registers unscaled, beside one JSON message
//!   per reading and the order-0 entropy of the quantised deltas; the same scaled registers over
//!   MQTT 3.1.1 beside MQTT 5; and what the timestamps cost (the 60 s batches re-sealed with each
//!   poll's timestamp on the whole second).
//! - `reconnect`: the bytes a dropped connection costs until the gateway is back and its probe
//!   passed (TLS handshake, CONNECT, subscriptions if any, `online` and its echo), MQTT 5 beside
//!   3.1.1, each gateway behind a relay that is reset `--times` times.
//! - `latency`: one gateway per batch interval (1 s … 300 s): each reading's latency (arrival at
//!   the cloud − its timestamp), p50 and p95, and bytes per reading; the curve in a PNG.
//! - `rss`: one gateway with `--devices` devices for `--minutes`: VmRSS every 5 s and VmHWM, and
//!   a PNG of resident memory over time. `OUTPOST_BENCH_WRAPPER="heaptrack -o FILE"` runs the
//!   gateway under a heap profiler (the memory figures are then the profiler's).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost::demo::meter::MeterModel;
use outpost_e2e::broker::{Broker, Cloud, Pki, Relay};
use outpost_e2e::{Proc, bin, free_port, http_get_json, unix_ms, wait_for, workspace_dir};
use plotters::prelude::*;
use rumqttc::QoS;
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

#[path = "plot.rs"]
mod plot;
use plot::{encode_png, load_font, target_dir};

/// The ten holding registers of every device: the meter model's name, and the scale the device
/// applies (register = value / scale, rounded).
const POINTS: [(&str, f64); 10] = [
    ("l1_voltage", 0.1),
    ("l2_voltage", 0.1),
    ("l3_voltage", 0.1),
    ("l1_current", 0.01),
    ("l2_current", 0.01),
    ("l3_current", 0.01),
    ("l1_power_factor", 0.001),
    ("l2_power_factor", 0.001),
    ("l3_power_factor", 0.001),
    ("frequency", 0.01),
];
/// IPv4 (20) and TCP with timestamps (32) per segment.
const IP_TCP_HEADER: u64 = 52;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` builds this; the measurements run for minutes
    }
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let minutes = |default: f64| -> f64 {
        value("--minutes").map_or(default, |m| m.parse().expect("--minutes takes a number"))
    };
    let png =
        |default: &str| value("--png").map_or_else(|| workspace_dir().join(default), PathBuf::from);
    let which = args.first().map(String::as_str).unwrap_or("bytes");
    outpost_e2e::raise_open_file_limit();
    match which {
        "bytes" => bytes(minutes(6.0)),
        "latency" => {
            let intervals: Vec<u64> = value("--intervals").map_or_else(
                || vec![1, 5, 10, 30, 60, 120, 300],
                |list| {
                    list.split(',')
                        .map(|s| s.parse().expect("--intervals 1,60,300"))
                        .collect()
                },
            );
            latency(minutes(12.0), &intervals, &png("docs/modbus-latency.png"));
        }
        "rss" => {
            let devices = value("--devices").map_or(100, |d| d.parse().expect("--devices"));
            rss(minutes(30.0), devices, &png("docs/modbus-rss.png"));
        }
        "reconnect" => reconnect(value("--times").map_or(10, |t| t.parse().expect("--times"))),
        other => panic!("unknown measurement {other:?}: bytes, latency, rss or reconnect"),
    }
}

/// The simulated devices: one tokio-modbus TCP server each, its registers following its own
/// seeded meter model, stepped every second. Several gateways may poll the same device.
struct Devices {
    runtime: tokio::runtime::Runtime,
    addrs: Vec<SocketAddr>,
}

#[derive(Clone)]
struct Image(Arc<Mutex<[u16; 10]>>);

impl tokio_modbus::server::Service for Image {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let words = *self.0.lock().unwrap();
        std::future::ready(match request.request {
            Request::ReadHoldingRegisters(a, n) => {
                let (a, n) = (usize::from(a), usize::from(n));
                words
                    .get(a..a + n)
                    .map(|w| Response::ReadHoldingRegisters(w.to_vec()))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

fn registers(model: &MeterModel) -> [u16; 10] {
    POINTS.map(|(name, scale)| {
        let v = model.value(name).expect("a name the meter model knows");
        (v / scale).round().clamp(0.0, 65535.0) as u16
    })
}

impl Devices {
    fn start(n: usize) -> Devices {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addrs = (0..n)
            .map(|i| {
                runtime.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                    let addr = listener.local_addr().unwrap();
                    let mut model = MeterModel::new(i as u64);
                    let image = Image(Arc::new(Mutex::new(registers(&model))));
                    let stepped = image.clone();
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(Duration::from_secs(1));
                        loop {
                            tick.tick().await;
                            model.step();
                            *stepped.0.lock().unwrap() = registers(&model);
                        }
                    });
                    tokio::spawn(async move {
                        let on_connected = move |stream, socket_addr| {
                            let image = image.clone();
                            async move {
                                accept_tcp_connection(stream, socket_addr, move |_| {
                                    Ok(Some(image.clone()))
                                })
                            }
                        };
                        Server::new(listener).serve(&on_connected, |_| {}).await
                    });
                    addr
                })
            })
            .collect();
        Devices { runtime, addrs }
    }
}

/// The device map: the ten registers as u16 with their scale, or raw (`scaled == false`).
fn write_map(dir: &Path, scaled: bool) -> PathBuf {
    let mut toml =
        String::from("[device]\nmanufacturer = \"Outpost bench\"\nmodel = \"10 registers\"\n");
    for (address, (name, scale)) in POINTS.iter().enumerate() {
        toml += &format!(
            "\n[[point]]\nname = \"{name}\"\ntable = \"holding\"\naddress = {address}\ntype = \"u16\"\n"
        );
        if scaled {
            toml += &format!("scale = {scale}\n");
        }
    }
    let path = dir.join(if scaled { "scaled.toml" } else { "raw.toml" });
    std::fs::write(&path, toml).unwrap();
    path
}

/// One release gateway, its own data directory and API port, sharing the broker.
struct Gateway {
    id: String,
    proc: Proc,
    api: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start(
        id: &str,
        pki: &Pki,
        broker_port: u16,
        devices: &[SocketAddr],
        map: &Path,
        uplink: &str,
        mqtt: &str,
    ) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("outpost-modbus-site-")
            .tempdir()
            .unwrap();
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let files = pki.client(id).unwrap();
        let mut toml = format!(
            "[gateway]\nid = \"{id}\"\ndata_dir = \"{}\"\n\n[api]\nlisten = \"{api}\"\n\n[log]\nlevel = \"warn\"\n\n[uplink]\n{uplink}\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{mqtt}\n",
            dir.path().join("data").display(),
            broker_port,
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        );
        for (i, addr) in devices.iter().enumerate() {
            toml += &format!(
                "\n[[modbus.device]]\nname = \"dev-{i:03}\"\nmap = \"{}\"\ntransport = \"tcp\"\naddress = \"{addr}\"\npoll_interval = \"1s\"\n",
                map.display()
            );
        }
        let config = dir.path().join("outpost.toml");
        std::fs::write(&config, toml).unwrap();
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        // OUTPOST_BENCH_WRAPPER="heaptrack -o /tmp/outpost" runs the gateway under a profiler.
        let mut command = match std::env::var("OUTPOST_BENCH_WRAPPER") {
            Ok(wrapper) => {
                let mut words = wrapper.split_whitespace();
                let mut c = Command::new(words.next().expect("a wrapper command"));
                c.args(words).arg(bin("outpost"));
                c
            }
            Err(_) => Command::new(bin("outpost")),
        };
        let proc = Proc::spawn(
            id,
            command
                .arg("run")
                .arg("--config")
                .arg(&config)
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        wait_for(Duration::from_secs(30), "the gateway's API", || {
            http_get_json(api, "/api/v1/status").ok()
        })
        .unwrap();
        Gateway {
            id: id.to_owned(),
            proc,
            api,
            _dir: dir,
        }
    }

    /// The gateway's broker connection as the kernel counts it: (TCP payload bytes both ways,
    /// segments both ways), or `None` while it has none.
    fn socket(&self, broker_port: u16) -> Option<(u64, u64)> {
        let out = Command::new("ss")
            .args(["-tinpH", "state", "established"])
            .arg(format!("( dport = :{broker_port} )"))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let pid = format!("pid={},", self.gateway_pid());
        // Each socket: a line with the addresses and users:(…), then an indented line of info.
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let info = lines.next().unwrap_or("");
            if !line.contains(&pid) {
                continue;
            }
            let field = |name: &str| -> u64 {
                info.split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            return Some((
                field("bytes_sent:") + field("bytes_received:"),
                field("segs_out:") + field("segs_in:"),
            ));
        }
        None
    }

    /// The gateway's own PID: under `OUTPOST_BENCH_WRAPPER`, the wrapper's descendant that runs
    /// the `outpost` binary.
    fn gateway_pid(&self) -> i32 {
        let mut pid = self.proc.pid().as_raw();
        for _ in 0..4 {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            if exe.file_name().is_some_and(|n| n == "outpost") {
                return pid;
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            match children
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
            {
                Some(child) => pid = child,
                None => break,
            }
        }
        pid
    }

    fn stop(mut self) {
        let gateway = self.gateway_pid();
        if gateway != self.proc.pid().as_raw() {
            // A wrapper does not pass SIGTERM on: stop the gateway itself, the wrapper follows.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(gateway),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        self.proc.terminate(Duration::from_secs(30)).unwrap();
    }
}

/// A batch as the cloud received it.
struct Arrival {
    at_ms: i64,
    /// The batch as it arrived.
    payload: Vec<u8>,
    /// (device, point, ts_ms, value)
    readings: Vec<(String, String, i64, f64)>,
}

/// The cloud: every gateway's batches, decoded, acknowledged as soon as contiguous.
#[derive(Default)]
struct CloudLog {
    batches: HashMap<String, BTreeMap<u64, Arrival>>,
}

fn run_cloud(
    cloud: Arc<Cloud>,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<CloudLog>>, std::thread::JoinHandle<()>) {
    let log: Arc<Mutex<CloudLog>> = Arc::default();
    let thread = std::thread::spawn({
        let log = Arc::clone(&log);
        move || {
            let mut seen = 0;
            let mut acked: HashMap<String, u64> = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                let messages = cloud.messages_since(seen);
                seen += messages.len();
                let at_ms = unix_ms();
                let mut log = log.lock().unwrap();
                for m in messages {
                    let mut parts = m.topic.split('/');
                    let (Some("outpost"), Some(id), Some("batch")) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    let batch =
                        outpost_batch::decode(&m.payload, &outpost_batch::Dictionaries::new())
                            .expect("a batch the decoder reads");
                    let seq = batch.header().seq;
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
                    log.batches
                        .entry(id.to_owned())
                        .or_default()
                        .entry(seq)
                        .or_insert(Arrival {
                            at_ms,
                            payload: m.payload.clone(),
                            readings,
                        });
                }
                for (id, batches) in &log.batches {
                    let mut upto = 0;
                    while batches.contains_key(&(upto + 1)) {
                        upto += 1;
                    }
                    if upto > acked.get(id).copied().unwrap_or(0) {
                        let _ = cloud.publish(
                            &format!("outpost/{id}/ack"),
                            format!("{{\"upto\": {upto}}}"),
                            QoS::AtLeastOnce,
                            false,
                        );
                        acked.insert(id.clone(), upto);
                    }
                }
                drop(log);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    (log, thread)
}

struct World {
    _dir: tempfile::TempDir,
    pki: Pki,
    broker: Broker,
    cloud: Arc<Cloud>,
    log: Arc<Mutex<CloudLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl World {
    fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(&dir.path().join("pki")).unwrap();
        let broker = Broker::start(&dir.path().join("broker"), &pki).unwrap();
        let cloud = Arc::new(Cloud::connect(&broker, &pki).unwrap());
        cloud.subscribe("outpost/+/batch").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (log, thread) = run_cloud(Arc::clone(&cloud), Arc::clone(&stop));
        World {
            _dir: dir,
            pki,
            broker,
            cloud,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn batches(&self, id: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .batches
            .get(id)
            .map_or(0, BTreeMap::len)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = &self.cloud;
    }
}

/// Bytes per reading at 60 s and 10 s batches, scaled and unscaled, with the comparisons.
fn bytes(minutes: f64) {
    let world = World::start();
    let devices = Devices::start(10);
    let maps = tempfile::tempdir().unwrap();
    let (scaled, raw) = (write_map(maps.path(), true), write_map(maps.path(), false));
    // s: scaled, MQTT 5 (the default); t: scaled, MQTT 3.1.1; r: unscaled, MQTT 5.
    let runs = [
        ("s60", &scaled, 60),
        ("s10", &scaled, 10),
        ("t60", &scaled, 60),
        ("t10", &scaled, 10),
        ("r60", &raw, 60),
        ("r10", &raw, 10),
    ];
    let gateways: Vec<Gateway> = runs
        .iter()
        .map(|(id, map, secs)| {
            Gateway::start(
                id,
                &world.pki,
                world.broker.port(),
                &devices.addrs,
                map,
                &format!("batch_interval = \"{secs}s\""),
                if id.starts_with('t') {
                    "protocol = \"3.1.1\""
                } else {
                    ""
                },
            )
        })
        .collect();
    // Steady state: from the second acknowledged batch of each (handshake and start behind).
    wait_for(
        Duration::from_secs(300),
        "two batches from each gateway",
        || {
            gateways
                .iter()
                .all(|g| world.batches(&g.id) >= 2)
                .then_some(())
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let start: Vec<_> = gateways
        .iter()
        .map(|g| {
            (
                world.batches(&g.id),
                g.socket(world.broker.port()).expect("connected"),
            )
        })
        .collect();
    eprintln!("modbus_site bytes: measuring {minutes} min");
    std::thread::sleep(Duration::from_secs_f64(minutes * 60.0));
    // Close the window on a batch boundary of the 60 s gateways: wait for their next batch.
    let counts: Vec<usize> = gateways.iter().map(|g| world.batches(&g.id)).collect();
    wait_for(
        Duration::from_secs(90),
        "the next batch of each gateway",
        || {
            gateways
                .iter()
                .zip(&counts)
                .all(|(g, n)| world.batches(&g.id) > *n)
                .then_some(())
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2)); // the acknowledgements reach the gateways
    println!(
        "Modbus site, 10 devices × 10 holding registers at 1 s, TLS 1.3 to Mosquitto, {minutes} min window"
    );
    println!(
        "{:<44} {:>8} {:>9} {:>10} {:>10}",
        "gateway", "batches", "readings", "payload/r", "IP B/r"
    );
    let log = world.log.lock().unwrap();
    for ((g, (id, _, secs)), (b0, (bytes0, segs0))) in gateways.iter().zip(&runs).zip(&start) {
        let (bytes1, segs1) = g.socket(world.broker.port()).expect("still connected");
        assert!(
            bytes1 >= *bytes0,
            "{id}: the connection was replaced during the window"
        );
        let batches = &log.batches[&g.id];
        let window: Vec<&Arrival> = batches.values().skip(*b0).collect();
        let readings: usize = window.iter().map(|a| a.readings.len()).sum();
        let payload = (bytes1 - bytes0) as f64 / readings as f64;
        let ip = (bytes1 - bytes0 + IP_TCP_HEADER * (segs1 - segs0)) as f64 / readings as f64;
        let label = format!(
            "Outpost, {}, {secs} s batches",
            match id.as_bytes()[0] {
                b's' => "scaled, MQTT 5",
                b't' => "scaled, MQTT 3.1.1",
                _ => "unscaled, MQTT 5",
            }
        );
        println!(
            "{label:<44} {:>8} {readings:>9} {payload:>10.3} {ip:>10.3}",
            window.len()
        );
    }
    // The comparisons, from the readings the 60 s scaled gateway delivered in its window.
    let window: Vec<&Arrival> = log.batches["s60"].values().skip(start[0].0).collect();
    let readings: Vec<&(String, String, i64, f64)> =
        window.iter().flat_map(|a| a.readings.iter()).collect();
    let json_payload: u64 = readings
        .iter()
        .map(|(source, channel, ts, value)| {
            let json = serde_json::to_vec(&serde_json::json!({"source": source, "channel": channel, "ts_ms": ts, "value": value})).unwrap();
            // MQTT PUBLISH QoS 1 (fixed header, topic, packet id) in a TLS 1.3 record (5 header,
            // 1 content type, 16 tag), and its PUBACK (4) in another record.
            let topic = "outpost/s60/telemetry".len() as u64;
            let publish = 1 + 2 + 2 + topic + 2 + json.len() as u64;
            (publish + 22) + (4 + 22)
        })
        .sum();
    // At least two segments per message: the PUBLISH and the PUBACK.
    let json_ip = json_payload + IP_TCP_HEADER * 2 * readings.len() as u64;
    println!(
        "one JSON message per reading, QoS 1, TLS 1.3 (computed, lower bound): payload {:.1}, IP {:.1} B/reading",
        json_payload as f64 / readings.len() as f64,
        json_ip as f64 / readings.len() as f64
    );
    println!(
        "order-0 entropy of the quantised deltas: {:.3} B/reading",
        delta_entropy_bits(&window) / 8.0
    );
    let (same, regular) = resealed(&window);
    let arrived: usize = window.iter().map(|a| a.payload.len()).sum();
    if same != arrived {
        eprintln!("re-sealed from the decoded readings: {same} bytes, as arrived: {arrived}");
    }
    println!(
        "the 60 s batches re-sealed with each poll's timestamp on the whole second: {:.3} B/reading \
         (as sealed: {:.3}; the timestamps' jitter costs {:.3})",
        regular as f64 / readings.len() as f64,
        same as f64 / readings.len() as f64,
        (same - regular) as f64 / readings.len() as f64
    );
    drop(log);
    for g in gateways {
        g.stop();
    }
    drop(devices.runtime);
}

/// The window's batches sealed again from their decoded readings: (bytes as they are, bytes with
/// every timestamp rounded to the whole second).
fn resealed(window: &[&Arrival]) -> (usize, usize) {
    let dictionaries = outpost_batch::Dictionaries::new();
    let mut totals = (0, 0);
    for arrival in window {
        let batch = outpost_batch::decode(&arrival.payload, &dictionaries).unwrap();
        let header = batch.header();
        let mut same = outpost_batch::BatchBuilder::new(header.gateway_id.clone(), header.seq);
        let mut regular = outpost_batch::BatchBuilder::new(header.gateway_id.clone(), header.seq);
        for r in batch.readings() {
            same.push(r.source, r.channel, r.ts_ms, r.value).unwrap();
            let whole_second = (r.ts_ms + 500).div_euclid(1000) * 1000;
            regular
                .push(r.source, r.channel, whole_second, r.value)
                .unwrap();
        }
        totals.0 += same.seal(None).unwrap().len();
        totals.1 += regular.seal(None).unwrap().len();
    }
    totals
}

/// What a dropped connection costs in bytes on the broker socket, MQTT 5 beside 3.1.1: each
/// gateway behind its own relay, reset `times` times between batches (60 s apart); the bytes
/// from just before the reset until the gateway is connected again and its probe has passed
/// (the status page's counters, which meter every byte of the TLS connection).
fn reconnect(times: usize) {
    let world = World::start();
    let devices = Devices::start(10);
    let maps = tempfile::tempdir().unwrap();
    let map = write_map(maps.path(), true);
    let runs = [("c5", ""), ("c3", "protocol = \"3.1.1\"")];
    let relays: Vec<Relay> = runs
        .iter()
        .map(|_| Relay::start(world.broker.port()).unwrap())
        .collect();
    let gateways: Vec<Gateway> = runs
        .iter()
        .zip(&relays)
        .map(|((id, mqtt), relay)| {
            Gateway::start(
                id,
                &world.pki,
                relay.port(),
                &devices.addrs,
                &map,
                "batch_interval = \"60s\"",
                mqtt,
            )
        })
        .collect();
    let uplink = |g: &Gateway| http_get_json(g.api, "/api/v1/status").unwrap()["uplink"].clone();
    let metered = |u: &serde_json::Value| {
        u["bytes_sent"].as_u64().unwrap_or(0) + u["bytes_received"].as_u64().unwrap_or(0)
    };
    wait_for(
        Duration::from_secs(150),
        "a batch from each gateway",
        || {
            gateways
                .iter()
                .all(|g| world.batches(&g.id) >= 1)
                .then_some(())
        },
    )
    .unwrap();
    let mut costs: Vec<Vec<u64>> = vec![Vec::new(); gateways.len()];
    for round in 0..times {
        for ((g, relay), costs) in gateways.iter().zip(&relays).zip(&mut costs) {
            // Just after a batch was acknowledged: the next is about a minute away.
            let n = world.batches(&g.id);
            wait_for(Duration::from_secs(90), "the next batch", || {
                (world.batches(&g.id) > n).then_some(())
            })
            .unwrap();
            std::thread::sleep(Duration::from_secs(2));
            let before = uplink(g);
            relay.reset();
            let after = wait_for(Duration::from_secs(30), "back and granted", || {
                let u = uplink(g);
                (u["connects"].as_u64() > before["connects"].as_u64()
                    && u["connected"] == true
                    && u["refused"].is_null())
                .then_some(u)
            })
            .unwrap();
            // The probe's echo and the SUBACKs are small and quick; let them land.
            std::thread::sleep(Duration::from_secs(2));
            let after = if uplink(g)["batches_published"] == after["batches_published"] {
                uplink(g)
            } else {
                after
            };
            if after["batches_published"] != before["batches_published"] {
                eprintln!(
                    "{} round {round}: a batch went out during the reconnection; skipped",
                    g.id
                );
                continue;
            }
            costs.push(metered(&after) - metered(&before));
        }
    }
    println!(
        "A dropped broker connection, until back with the probe passed (TLS 1.3, client certificate)"
    );
    println!(
        "{:<24} {:>7} {:>12} {:>12} {:>12}",
        "gateway", "drops", "median B", "min B", "max B"
    );
    for ((_, mqtt), costs) in runs.iter().zip(&mut costs) {
        costs.sort_unstable();
        let label = if mqtt.is_empty() {
            "MQTT 5 (auto)"
        } else {
            "MQTT 3.1.1"
        };
        println!(
            "{label:<24} {:>7} {:>12} {:>12} {:>12}",
            costs.len(),
            costs.get(costs.len() / 2).copied().unwrap_or(0),
            costs.first().copied().unwrap_or(0),
            costs.last().copied().unwrap_or(0),
        );
    }
    for g in gateways {
        g.stop();
    }
    drop(devices.runtime);
}

/// The order-0 entropy, in bits per reading, of each series' deltas at the register's
/// resolution (value / scale, rounded), pooled over every series: what an ideal coder of those
/// deltas, knowing their distribution and nothing else (timestamps free), would spend.
fn delta_entropy_bits(window: &[&Arrival]) -> f64 {
    let scale: HashMap<&str, f64> = POINTS.iter().copied().collect();
    let mut last: HashMap<(&str, &str), i64> = HashMap::new();
    let mut counts: HashMap<i64, u64> = HashMap::new();
    for (source, channel, _, value) in window.iter().flat_map(|a| a.readings.iter()) {
        let q = (value / scale[channel.as_str()]).round() as i64;
        if let Some(prev) = last.insert((source, channel), q) {
            *counts.entry(q - prev).or_default() += 1;
        }
    }
    let n: u64 = counts.values().sum();
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.log2()
        })
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Latency and bytes per reading across batch intervals, one gateway per interval, at once.
fn latency(minutes: f64, intervals: &[u64], png: &Path) {
    let world = World::start();
    let devices = Devices::start(10);
    let maps = tempfile::tempdir().unwrap();
    let map = write_map(maps.path(), true);
    bin("outpost"); // built before any gateway's clock starts
    let mut started_ms = Vec::new();
    let gateways: Vec<Gateway> = intervals
        .iter()
        .map(|secs| {
            started_ms.push(unix_ms());
            Gateway::start(
                &format!("i{secs}"),
                &world.pki,
                world.broker.port(),
                &devices.addrs,
                &map,
                &format!(
                    "batch_interval = \"{secs}s\"\nmax_batch_interval = \"{}s\"",
                    (*secs).max(900)
                ),
                "",
            )
        })
        .collect();
    eprintln!("modbus_site latency: {minutes} min, intervals {intervals:?} s");
    let run = Duration::from_secs_f64(minutes * 60.0);
    let t0 = Instant::now();
    // The socket's counters as each batch reached the cloud: bytes per reading are counted
    // from the first batch's arrival to the last one's, over the readings of the batches after
    // the first (so the window is aligned with batches, whatever the interval).
    let mut at_batch: Vec<Vec<(usize, (u64, u64))>> = vec![Vec::new(); gateways.len()];
    while t0.elapsed() < run {
        for (i, g) in gateways.iter().enumerate() {
            let n = world.batches(&g.id);
            if n > at_batch[i].last().map_or(0, |l| l.0)
                && let Some(socket) = g.socket(world.broker.port())
            {
                at_batch[i].push((n, socket));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "Modbus site, 10 devices × 10 registers at 1 s, one gateway per batch interval, {minutes} min"
    );
    println!(
        "{:>9} {:>8} {:>9} {:>9} {:>9} {:>10} {:>8} {:>14}",
        "interval", "batches", "readings", "p50 s", "p95 s", "IP B/r", "pay B/r", "first batch s"
    );
    let log = world.log.lock().unwrap();
    let mut rows = Vec::new();
    for (((g, secs), started_ms), samples) in gateways
        .iter()
        .zip(intervals.iter().copied())
        .zip(&started_ms)
        .zip(&at_batch)
    {
        let Some(batches) = log.batches.get(&g.id) else {
            println!("{secs:>8}s  no batch");
            continue;
        };
        let mut lat: Vec<f64> = batches
            .values()
            .flat_map(|a| a.readings.iter().map(move |r| (a.at_ms - r.2) as f64 / 1e3))
            .collect();
        lat.sort_by(f64::total_cmp);
        let (p50, p95) = (percentile(&lat, 0.5), percentile(&lat, 0.95));
        let (ip, payload) = match (samples.first(), samples.last()) {
            (Some((n0, (bytes0, segs0))), Some((n1, (bytes1, segs1))))
                if n1 > n0 && bytes1 >= bytes0 =>
            {
                let n: usize = batches
                    .values()
                    .skip(*n0)
                    .take(n1 - n0)
                    .map(|a| a.readings.len())
                    .sum();
                (
                    (bytes1 - bytes0 + IP_TCP_HEADER * (segs1 - segs0)) as f64 / n as f64,
                    (bytes1 - bytes0) as f64 / n as f64,
                )
            }
            _ => (f64::NAN, f64::NAN),
        };
        let first = batches.values().next().map(|a| a.at_ms);
        let first_s = first.map_or(f64::NAN, |f| (f - started_ms) as f64 / 1e3);
        println!(
            "{:>8}s {:>8} {:>9} {p50:>9.2} {p95:>9.2} {ip:>10.3} {payload:>8.3} {first_s:>14.1}",
            secs,
            batches.len(),
            lat.len()
        );
        // Connections and publishes as the gateway counts them: a reconnect or a resend shows.
        if let Ok(status) = http_get_json(g.api, "/api/v1/status") {
            let u = &status["uplink"];
            println!(
                "{:>9} connects {}, batches published {}, metered {} B",
                "",
                u["connects"],
                u["batches_published"],
                u["bytes_sent"].as_u64().unwrap_or(0) + u["bytes_received"].as_u64().unwrap_or(0)
            );
        }
        rows.push((secs as f64, p50, p95, ip));
    }
    drop(log);
    for g in gateways {
        g.stop();
    }
    plot_latency(&rows, png);
    println!("plot: {}", png.display());
    drop(devices.runtime);
}

fn plot_latency(rows: &[(f64, f64, f64, f64)], path: &Path) {
    const W: u32 = 1000;
    const H: u32 = 600;
    let text = load_font();
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).unwrap();
        let (top, bottom) = root.split_vertically(H / 2);
        let x = (0.8f64..400.0).log_scale();
        let max_lat = rows.iter().map(|r| r.2).fold(1.0, f64::max) * 1.2;
        let max_bytes = rows
            .iter()
            .map(|r| r.3)
            .filter(|v| v.is_finite())
            .fold(0.1, f64::max)
            * 1.2;
        let mut b = ChartBuilder::on(&top);
        b.margin(12);
        if text {
            b.caption(
                "reading latency at the cloud (s): p50, p95",
                ("sans-serif", 18),
            )
            .x_label_area_size(32)
            .y_label_area_size(56);
        }
        let mut chart = b
            .build_cartesian_2d(x.clone(), (0.5f64..max_lat).log_scale())
            .unwrap();
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("batch interval (s)")
                .label_style(("sans-serif", 13));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().unwrap();
        for (f, color) in [(1usize, RGBColor(31, 119, 180)), (2, RGBColor(214, 39, 40))] {
            let pick = move |r: &(f64, f64, f64, f64)| if f == 1 { r.1 } else { r.2 };
            chart
                .draw_series(LineSeries::new(
                    rows.iter().map(|r| (r.0, pick(r))),
                    color.stroke_width(2),
                ))
                .unwrap();
            chart
                .draw_series(
                    rows.iter()
                        .map(|r| Circle::new((r.0, pick(r)), 4, color.filled())),
                )
                .unwrap();
        }
        let mut b = ChartBuilder::on(&bottom);
        b.margin(12);
        if text {
            b.caption(
                "IP bytes per reading on the broker socket",
                ("sans-serif", 18),
            )
            .x_label_area_size(32)
            .y_label_area_size(56);
        }
        let mut chart = b.build_cartesian_2d(x, 0.0..max_bytes).unwrap();
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("batch interval (s)")
                .label_style(("sans-serif", 13));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().unwrap();
        let color = RGBColor(44, 160, 44);
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.3.is_finite())
            .map(|r| (r.0, r.3))
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .unwrap();
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .unwrap();
        root.present().unwrap();
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, encode_png(&buf, W, H)).expect("write the PNG");
}

/// Resident memory of one gateway with `devices` devices over `minutes`.
fn rss(minutes: f64, n_devices: usize, png: &Path) {
    let world = World::start();
    let devices = Devices::start(n_devices);
    let maps = tempfile::tempdir().unwrap();
    let map = write_map(maps.path(), true);
    let gateway = Gateway::start(
        "rss",
        &world.pki,
        world.broker.port(),
        &devices.addrs,
        &map,
        "batch_interval = \"60s\"",
        "",
    );
    let pid = gateway.gateway_pid();
    let status = |key: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    eprintln!("modbus_site rss: gateway PID {pid}, {n_devices} devices, {minutes} min");
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut csv = String::from("t_s,rss_kib,batches\n");
    let t0 = Instant::now();
    let run = Duration::from_secs_f64(minutes * 60.0);
    while t0.elapsed() < run {
        let t = t0.elapsed().as_secs_f64();
        let rss = status("VmRSS:");
        csv += &format!("{t:.0},{rss},{}\n", world.batches("rss"));
        samples.push((t / 60.0, rss as f64 / 1024.0));
        std::thread::sleep(Duration::from_secs(5));
    }
    let hwm = status("VmHWM:") as f64 / 1024.0;
    let batches = world.batches("rss");
    let out = target_dir().join("modbus-site");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("rss.csv"), csv).unwrap();
    // Steady: the median of the second half of the run.
    let mut late: Vec<f64> = samples[samples.len() / 2..].iter().map(|s| s.1).collect();
    late.sort_by(f64::total_cmp);
    let steady = percentile(&late, 0.5);
    let last = samples.last().map_or(0.0, |s| s.1);
    println!(
        "Modbus site, {n_devices} devices × 10 registers at 1 s, 60 s batches, {minutes} min: {batches} batches"
    );
    println!("  VmRSS steady (median of the second half): {steady:6.1} MiB");
    println!("  VmRSS at the end:                         {last:6.1} MiB");
    println!("  VmHWM (peak over the run):                {hwm:6.1} MiB");
    println!("  samples: {}", out.join("rss.csv").display());
    gateway.stop();
    plot_rss(&samples, png);
    println!("  plot: {}", png.display());
    drop(devices.runtime);
}

fn plot_rss(samples: &[(f64, f64)], path: &Path) {
    const W: u32 = 1000;
    const H: u32 = 360;
    let text = load_font();
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).unwrap();
        let end = samples.last().map_or(1.0, |s| s.0).max(1.0);
        let max = samples.iter().map(|s| s.1).fold(20.0, f64::max) * 1.1;
        let mut b = ChartBuilder::on(&root);
        b.margin(12);
        if text {
            b.caption(
                "gateway resident memory (MiB), 100 Modbus devices",
                ("sans-serif", 18),
            )
            .x_label_area_size(32)
            .y_label_area_size(56);
        }
        let mut chart = b.build_cartesian_2d(0.0..end, 0.0..max).unwrap();
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("minutes").label_style(("sans-serif", 13));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().unwrap();
        // The goals: 16 MiB steady, 20 MiB peak.
        for (goal, color) in [(16.0, RGBColor(44, 160, 44)), (20.0, RGBColor(214, 39, 40))] {
            chart
                .draw_series([PathElement::new([(0.0, goal), (end, goal)], color.mix(0.6))])
                .unwrap();
        }
        chart
            .draw_series(LineSeries::new(
                samples.iter().copied(),
                RGBColor(31, 119, 180).stroke_width(2),
            ))
            .unwrap();
        root.present().unwrap();
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, encode_png(&buf, W, H)).expect("write the PNG");
}
