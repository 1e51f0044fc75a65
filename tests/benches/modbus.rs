//! Modbus benchmarks (docs/BENCHMARKS.md):
//!
//! - `rtu`: one full poll cycle of a 200-register map at 19,200 baud 8E1, against tokio-modbus's
//!   RTU server behind a line emulator with the timing of a real line, compared with the
//!   theoretical minimum (frame bytes × 11 bits / baud plus the 3.5-character silences) and with
//!   tokio-modbus's own RTU client reading the same registers on the same line.
//! - `tcp`: CPU of the release gateway polling 100 Modbus TCP devices × 50 registers every second,
//!   compared with the same gateway polling nothing, in the same run.
//!
//! ```text
//! cargo bench -p outpost-e2e --bench modbus            # both
//! cargo bench -p outpost-e2e --bench modbus -- rtu     # one
//! OUTPOST_BENCH_SECONDS=60 cargo bench -p outpost-e2e --bench modbus -- tcp
//! ```

use std::collections::BTreeMap;
use std::future::{Ready, ready};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost::io::modbus::poller::DeviceRuntime;
use outpost::io::modbus::rtu::{RtuLine, poll};
use outpost::io::telemetry::TelemetryHub;
use outpost_core::config::modbus::{BusConfig, DeviceConfig, Parity, Transport};
use outpost_core::modbus::map::parse_map;
use outpost_core::modbus::plan::CostModel;
use outpost_core::modbus::rtu::{RtuRequest, request_len, response_len};
use outpost_e2e::modbus_peer::{Bank, PeerConfig, RtuPeer};
use outpost_e2e::{Proc, bin, cpu_seconds, free_port, http_get_json, wait_for};
use tokio::net::TcpListener;
use tokio_modbus::client::Reader as _;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if wants("rtu") {
        runtime.block_on(rtu_cycle());
    }
    if wants("tcp") {
        tcp_cpu(&runtime);
    }
}

/// 100 f32 input registers pairs: 200 registers, two reads (125 + 75).
fn map_of_f32(count: u16, table: &str) -> String {
    (0..count)
        .map(|i| {
            format!(
                "[[point]]\nname = \"p{i}\"\ntable = \"{table}\"\naddress = {}\ntype = \"f32\"\n",
                2 * i
            )
        })
        .collect()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

async fn rtu_cycle() {
    const BAUD: u32 = 19_200;
    const CYCLES: usize = 30;
    let map =
        Arc::new(parse_map(Path::new("bench-200.toml"), &map_of_f32(100, "input")).expect("map"));
    let mut slave = Bank::default();
    for a in 0..200u16 {
        slave.input.insert(a, a.wrapping_mul(7919));
    }
    let peer = RtuPeer::start(PeerConfig {
        units: BTreeMap::from([(1, slave)]),
        baud: Some(BAUD),
        ..PeerConfig::default()
    })
    .expect("peer");
    let bus = BusConfig {
        path: peer.path().to_owned(),
        baud: BAUD,
        parity: Parity::Even,
        stop_bits: 1,
    };
    let device = DeviceConfig {
        name: "bench".into(),
        transport: Transport::Rtu(0),
        unit: 1,
        poll_interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        retries: 0,
        map_path: "bench-200.toml".into(),
        map: Arc::clone(&map),
    };
    let runtime = DeviceRuntime::new(
        device,
        &CostModel::RTU,
        &TelemetryHub::new(outpost_core::telemetry::Telemetry::new(
            &[],
            false,
            std::time::Duration::ZERO,
        )),
    );
    let mut line = RtuLine::new(&bus).expect("line");
    let timing = *line.timing();
    let theoretical: Duration = runtime
        .plan
        .requests()
        .iter()
        .map(|r| {
            let r = RtuRequest::try_from(r).expect("in limits");
            timing.transaction_min(request_len(&r), response_len(&r))
        })
        .sum();

    let mut ours = Vec::new();
    for _ in 0..CYCLES {
        let started = Instant::now();
        let outcome = poll(&mut line, &runtime).await;
        ours.push(started.elapsed());
        assert!(outcome.complete(), "{outcome:?}");
    }
    drop(line);
    let early_ours = peer.bus().early_requests;

    // tokio-modbus's RTU client on the same line, the same two reads.
    let port =
        tokio_serial::SerialStream::open(&tokio_serial::new(peer.path().to_string_lossy(), BAUD))
            .expect("open");
    let mut client = tokio_modbus::client::rtu::attach_slave(port, tokio_modbus::Slave(1));
    let mut theirs = Vec::new();
    for _ in 0..CYCLES {
        let started = Instant::now();
        for r in runtime.plan.requests() {
            client
                .read_input_registers(r.start(), r.quantity())
                .await
                .expect("io")
                .expect("no exception");
        }
        theirs.push(started.elapsed());
    }
    let early_theirs = peer.bus().early_requests - early_ours;
    let (ours, theirs) = (median(ours), median(theirs));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "RTU poll cycle, 200 registers ({} requests), {BAUD} baud 8E1, median of {CYCLES}:",
        runtime.plan.requests().len()
    );
    println!(
        "  theoretical minimum (frames + 2 × t3.5 each): {:8.2} ms",
        ms(theoretical)
    );
    println!(
        "  Outpost RTU bus adapter:                     {:8.2} ms  ({:+.1} %, {early_ours} requests before t3.5)",
        ms(ours),
        100.0 * (ms(ours) / ms(theoretical) - 1.0)
    );
    println!(
        "  tokio-modbus RTU client, same reads:         {:8.2} ms  ({:+.1} %, {early_theirs} requests before t3.5)",
        ms(theirs),
        100.0 * (ms(theirs) / ms(theoretical) - 1.0)
    );
    println!(
        "  line emulator's worst lateness: {:?}",
        peer.bus().max_lateness
    );
}

#[derive(Clone)]
struct Image(Arc<Vec<u16>>);

impl tokio_modbus::server::Service for Image {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        ready(match request.request {
            Request::ReadHoldingRegisters(a, n) => {
                let (a, n) = (usize::from(a), usize::from(n));
                self.0
                    .get(a..a + n)
                    .map(|w| Response::ReadHoldingRegisters(w.to_vec()))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// Runs the release gateway with `devices` Modbus TCP devices at `server` for `seconds`; returns
/// (CPU % of one core, polls per second observed).
fn gateway_cpu(
    devices: usize,
    server: std::net::SocketAddr,
    map: &Path,
    seconds: u64,
) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("dir");
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut toml = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = \"{}\"\n[api]\nlisten = \"{api}\"\n[log]\nlevel = \"warn\"\n",
        dir.path().join("data").display()
    );
    for i in 0..devices {
        toml += &format!(
            "[[modbus.device]]\nname = \"dev-{i}\"\nmap = \"{}\"\ntransport = \"tcp\"\naddress = \"{server}\"\nunit = {}\npoll_interval = \"1s\"\ntimeout = \"500ms\"\n",
            map.display(),
            i % 247 + 1
        );
    }
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, toml).expect("config");
    let mut gateway = Proc::spawn(
        "gateway",
        Command::new(bin("outpost"))
            .arg("run")
            .arg("--config")
            .arg(&config),
    )
    .expect("gateway");
    wait_for(Duration::from_secs(20), "the API", || {
        http_get_json(api, "/api/v1/status").ok()
    })
    .expect("api");
    let polls = || -> u64 {
        http_get_json(api, "/api/v1/modbus")
            .map(|d| {
                d.as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["health"]["polls"].as_u64().unwrap())
                    .sum()
            })
            .unwrap_or(0)
    };
    std::thread::sleep(Duration::from_secs(3)); // every device connected and staggered
    let pid = gateway.pid().as_raw();
    let (t0, p0, started) = (cpu_seconds(pid), polls(), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (t1, p1, elapsed) = (cpu_seconds(pid), polls(), started.elapsed().as_secs_f64());
    gateway.terminate(Duration::from_secs(10)).expect("stops");
    let cpu = 100.0 * (t1 - t0) / elapsed;
    (cpu, (p1 - p0) as f64 / elapsed)
}

fn tcp_cpu(runtime: &tokio::runtime::Runtime) {
    let seconds: u64 = std::env::var("OUTPOST_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let image = Image(Arc::new((0..50u16).map(|a| a.wrapping_mul(31)).collect()));
    let server = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let on_connected = move |stream, socket_addr| {
                let image = image.clone();
                async move {
                    accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(image.clone())))
                }
            };
            Server::new(listener).serve(&on_connected, |_| {}).await
        });
        addr
    });
    let dir = tempfile::tempdir().expect("dir");
    let map = dir.path().join("bench-50.toml");
    std::fs::write(&map, map_of_f32(25, "holding")).expect("map");
    let (idle_cpu, _) = gateway_cpu(0, server, &map, seconds);
    let (cpu, polls) = gateway_cpu(100, server, &map, seconds);
    println!("Modbus TCP, release gateway, {seconds} s window, CPU % of one core:");
    println!("  100 devices × 50 registers, 1 s interval: {cpu:5.2} %  ({polls:.1} polls/s)");
    println!("  no devices (same gateway, same run):      {idle_cpu:5.2} %");
}
