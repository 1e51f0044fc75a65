//! `/metrics` at the size the issue names: 256 nodes and 100 Modbus devices (docs/BENCHMARKS.md,
//! "/metrics").
//!
//! - **render**: `outpost_core::metrics::render` alone, in this process, on facts of 256 nodes
//!   (each with a last HEALTH and three boots in its reset history) and a telemetry snapshot of
//!   100 polled devices: time per rendering, bytes, and the same text gzipped (level 1, what the
//!   API sends to a client that takes gzip) with the time that takes.
//! - **scrape**: the release `outpost run` with a store prefilled with those 256 registered nodes
//!   (their HEALTH and resets) and a config of 100 Modbus TCP devices (the demo meter, one
//!   tokio-modbus server each, in this process) polled every second; once every device is online:
//!   `GET /metrics` (plain, then gzip) and `GET /api/v1/status` of the same gateway, one after the
//!   other, 600 ms apart (so every scrape renders anew: the API reuses a rendering for 500 ms),
//!   each request's time from connect to the last byte, p50 and p95, and the bytes.
//!
//! `cargo bench -p outpost-e2e --bench metrics [-- --scrapes 30]`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost::demo::meter;
use outpost::io::store::Store;
use outpost_core::metrics::{self, Facts, MeterFacts, NodeFacts, StoreFacts};
use outpost_core::modbus::health::{
    Answer, DeviceHealth, HealthPolicy, PollSummary, RequestSummary,
};
use outpost_core::site::NodeState;
use outpost_core::telemetry::{DeviceStatus, Event, Polled, Telemetry};
use outpost_e2e::{Proc, bin, free_port, http_get_json, unix_ms, wait_for};
use outpost_proto::{FwVersion, Health, Hello, Millis, ResetReason};
use tokio_util::sync::CancellationToken;

const NODES: usize = 256;
const DEVICES: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` builds this; the measurement starts a gateway
    }
    let scrapes = args
        .iter()
        .position(|a| a == "--scrapes")
        .and_then(|i| args.get(i + 1))
        .map_or(30, |n| n.parse().expect("--scrapes N"));
    render();
    scrape(scrapes);
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn render() {
    let mut telemetry = Telemetry::new(&[], true, Duration::from_secs(60));
    for d in 0..DEVICES {
        let mut health = DeviceHealth::new(HealthPolicy::new(Duration::from_secs(1)));
        let poll = PollSummary {
            requests: vec![RequestSummary {
                response_time: Some(Duration::from_millis(8)),
                earlier_failures: Vec::new(),
                answer: Answer::Data,
            }],
            garbage_bytes: 0,
            decode_errors: 0,
        };
        health.handle_poll_result(Millis(1000), &poll);
        telemetry.handle(Event::DeviceAdded(Box::new(DeviceStatus {
            name: format!("dev-{d:03}"),
            transport: "tcp 127.0.0.1:502".into(),
            unit: 1,
            model: None,
            map: "meter.toml".into(),
            poll_interval_ms: 1000,
            requests_per_poll: 1,
            readings: 0,
            last_error: None,
            last_error_at: None,
            health: health.clone(),
            values: Default::default(),
            writable: Vec::new(),
        })));
        telemetry.handle(Event::Polled(Box::new(Polled {
            index: d,
            readings: 1234,
            health,
            values: Vec::new(),
            error: None,
        })));
    }
    let snapshot = telemetry.snapshot();
    let now_ms = unix_ms();
    let nodes: Vec<NodeFacts> = (0..NODES)
        .map(|i| NodeFacts {
            uid: format!("{:016x}", 0xe200_0000_0000_0000_u64 + i as u64),
            hw_rev: 2,
            firmware: "1.4.0".into(),
            lot: format!("L2026-{:02}", i % 12),
            port: Some(format!("/dev/ttyUSB{}", i % 8)),
            state: NodeState::Online,
            revoked: false,
            last_seen_ms: now_ms - 3_000,
            uptime_s: Some(86_400),
            readings: 1_000_000,
            samples_lost: 3,
            gateway_rx_errors: 2,
            node_rx_errors: 1,
            retransmits: Some(17),
            ages_clamped: 0,
            gaps_refused: 0,
            auth_failed: 0,
            replayed: 0,
            chip_temp_centi: Some(2_950),
            stack_free_min: Some(1_800),
            resets: vec![("power_on".into(), 1), ("watchdog".into(), 2)],
        })
        .collect();
    let facts = Facts {
        now_ms,
        version: "0.1.0",
        uptime: Duration::from_secs(3600),
        clock_trusted: true,
        clock_steps: 0,
        telemetry: &snapshot,
        store: StoreFacts::default(),
        meter: MeterFacts::default(),
        nodes: &nodes,
        rollout: None,
    };
    let text = metrics::render(&facts);
    let rounds = 200;
    let start = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(metrics::render(std::hint::black_box(&facts)));
    }
    let per_render = start.elapsed().as_secs_f64() / f64::from(rounds);
    let start = Instant::now();
    let mut compressed = Vec::new();
    for _ in 0..20 {
        compressed = gzip(text.as_bytes());
    }
    let per_gzip = start.elapsed().as_secs_f64() / 20.0;
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "render: {NODES} nodes, {DEVICES} devices (outpost_core::metrics::render, in process)"
    );
    println!(
        "  {:.2} ms per rendering, {} bytes, {series} series; gzip level 1: {} bytes in {:.2} ms",
        per_render * 1e3,
        text.len(),
        compressed.len(),
        per_gzip * 1e3
    );
}

/// 256 registered nodes, each with its last HEALTH and three boots (power-on, two watchdogs).
fn prefill(store_path: &Path) {
    let mut store = Store::open(store_path).unwrap();
    let now = unix_ms();
    for i in 0..NODES {
        let mut uid = [0xe2, 0, 0, 0, 0, 0, 0, 0];
        uid[6..].copy_from_slice(&(i as u16).to_be_bytes());
        let hello = Hello {
            uid,
            hw_rev: 2,
            fw: FwVersion {
                major: 1,
                minor: 4,
                patch: 0,
            },
            boot_id: 1,
            lot: format!("L2026-{:02}", i % 12).as_str().try_into().unwrap(),
            channels: Default::default(),
            ephemeral: [0; 32],
        };
        let port = format!("/dev/ttyUSB{}", i % 8);
        let node = store
            .transaction(|tx| tx.register(now, &port, &hello, &[i as u8; 32], true))
            .unwrap()
            .expect("room for 256 nodes");
        for (boot, reason) in [
            (1, ResetReason::PowerOn),
            (2, ResetReason::Watchdog),
            (3, ResetReason::Watchdog),
        ] {
            let health = Health {
                uptime_s: 86_400,
                reset_reason: reason,
                fw: hello.fw,
                stack_free_min: 1_800,
                rx_frames: 10_000,
                rx_errors: 1,
                tx_frames: 10_000,
                retransmits: 17,
                dropped_samples: 0,
                chip_temp_centi: 2_950,
            };
            store
                .transaction(|tx| tx.health(node.node_id, boot, now, &health))
                .unwrap();
        }
    }
}

/// One GET: the time from connect to the last byte, and the body's bytes.
fn timed_get(addr: SocketAddr, path: &str, gzip: bool) -> (f64, usize) {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if gzip {
        request += "Accept-Encoding: gzip\r\n";
    }
    request += "\r\n";
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let took = start.elapsed().as_secs_f64();
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header");
    let head = String::from_utf8_lossy(&response[..end]);
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert_eq!(
        gzip,
        head.to_ascii_lowercase().contains("content-encoding: gzip"),
        "{path}: {head}"
    );
    (took, response.len() - end - 4)
}

fn scrape(scrapes: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let map = Arc::new(meter::demo_map().unwrap());
    let addrs: Vec<SocketAddr> = (0..DEVICES)
        .map(|i| {
            runtime
                .block_on(meter::serve(Arc::clone(&map), i as u64, shutdown.clone()))
                .unwrap()
        })
        .collect();
    let dir = tempfile::Builder::new()
        .prefix("outpost-metrics-bench-")
        .tempdir()
        .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    prefill(&data.join("outpost.db"));
    let map_path = dir.path().join("meter.toml");
    std::fs::write(&map_path, meter::DEMO_MAP_TEXT).unwrap();
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut toml = format!(
        "[gateway]\nid = \"metrics-bench\"\ndata_dir = \"{}\"\n\n[api]\nlisten = \"{api}\"\n\n[log]\nlevel = \"warn\"\n",
        data.display()
    );
    for (i, addr) in addrs.iter().enumerate() {
        toml += &format!(
            "\n[[modbus.device]]\nname = \"dev-{i:03}\"\nmap = \"{}\"\ntransport = \"tcp\"\naddress = \"{addr}\"\npoll_interval = \"1s\"\n",
            map_path.display()
        );
    }
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, toml).unwrap();
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let _gateway = Proc::spawn(
        "gateway",
        Command::new(bin("outpost"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .unwrap();
    wait_for(Duration::from_secs(60), "every device online", || {
        let status = http_get_json(api, "/api/v1/status").ok()?;
        (status["modbus"]["online"].as_u64()? == DEVICES as u64
            && status["node_count"].as_u64()? == NODES as u64)
            .then_some(())
    })
    .unwrap();

    let mut rows: Vec<(&str, &str, bool, Vec<f64>, usize)> = vec![
        ("/metrics", "/metrics", false, Vec::new(), 0),
        ("/metrics (gzip)", "/metrics", true, Vec::new(), 0),
        ("/api/v1/status", "/api/v1/status", false, Vec::new(), 0),
    ];
    for _ in 0..scrapes {
        for (_, path, gzip, times, bytes) in &mut rows {
            // Past the API's reuse window: every scrape reads the store and renders.
            std::thread::sleep(Duration::from_millis(600));
            let (took, n) = timed_get(api, path, *gzip);
            times.push(took);
            *bytes = n;
        }
    }
    println!(
        "scrape: release `outpost run`, {NODES} registered nodes, {DEVICES} Modbus TCP devices polled every 1 s, {scrapes} requests each, 600 ms apart"
    );
    for (name, _, _, mut times, bytes) in rows {
        times.sort_by(f64::total_cmp);
        println!(
            "  {name:<16} p50 {:6.2} ms  p95 {:6.2} ms  {bytes:>7} bytes",
            percentile(&times, 0.5) * 1e3,
            percentile(&times, 0.95) * 1e3
        );
    }
    shutdown.cancel();
}
