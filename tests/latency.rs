//! Latency when the budget allows, end to end: the real `outpost` binary polls a real Modbus TCP
//! device (tokio-modbus's server on loopback, registers the test sets) with `batch_interval =
//! 60s`, and the cloud's view is the HTTP pull API.
//!
//! - The first batch is available within seconds of the start, not a whole interval later.
//! - A change of a `priority` point (an alarm register) is sealed into a batch at once, while
//!   ordinary readings wait for the interval; a second change soon after waits for
//!   `uplink.priority_min_interval`, so a chattering point cannot multiply the batches.
//!
//! Bounds are generous (the machine is shared); the measured figures are printed.

use std::collections::BTreeMap;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_e2e::{Site, wait_for};
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "e2e-pull-token-latency-0123456789";

const MAP: &str = r#"
[device]
manufacturer = "Outpost tests"
model = "Alarm panel"
documentation = "two holding registers: a level and an alarm"

[[point]]
name = "level"
table = "holding"
address = 0
type = "u16"

[[point]]
name = "alarm"
table = "holding"
address = 1
type = "u16"
priority = true
"#;

/// Holding registers the test sets and the gateway polls.
type Holding = Arc<Mutex<BTreeMap<u16, u16>>>;

#[derive(Clone)]
struct Panel(Holding);

impl tokio_modbus::server::Service for Panel {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let holding = self.0.lock().unwrap();
        ready(match request.request {
            Request::ReadHoldingRegisters(start, n) => Ok(Response::ReadHoldingRegisters(
                (start..start + n)
                    .map(|a| holding.get(&a).copied().unwrap_or(0))
                    .collect(),
            )),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

async fn serve(holding: Holding, shutdown: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(listener);
    let service = Panel(holding);
    let on_connected = move |stream, socket_addr| {
        let service = service.clone();
        async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(service.clone()))) }
    };
    tokio::spawn(async move {
        let _ = server
            .serve_until(&on_connected, |_| {}, shutdown.cancelled_owned())
            .await;
    });
    addr
}

/// A pulled batch: its seq and its readings as (channel, value).
type Pulled = (u64, Vec<(String, f64)>);

/// Every batch the cloud can pull.
fn pulled(site: &Site) -> Option<Vec<Pulled>> {
    let mut batches = Vec::new();
    for (seq, bytes) in site.pulled_batches(TOKEN)? {
        let batch = outpost_batch::decode(&bytes, &outpost_batch::Dictionaries::new()).unwrap();
        let readings = batch
            .readings()
            .map(|r| (r.channel.to_owned(), r.value.as_f64()))
            .collect();
        batches.push((seq, readings));
    }
    Some(batches)
}

/// Waits (polling every 100 ms) for a batch after `after` holding a reading of `channel` equal
/// to `value`; returns its seq and when it was seen.
fn wait_for_batch_with(
    site: &Site,
    after: u64,
    channel: &str,
    value: f64,
    timeout: Duration,
) -> anyhow::Result<(u64, Instant)> {
    wait_for(
        timeout,
        &format!("a batch after {after} with {channel} = {value}"),
        || {
            let batches = pulled(site)?;
            batches
                .iter()
                .find(|(seq, readings)| {
                    *seq > after && readings.iter().any(|(c, v)| c == channel && *v == value)
                })
                .map(|(seq, _)| (*seq, Instant::now()))
        },
    )
}

#[test]
fn the_first_batch_comes_within_seconds_and_a_priority_change_at_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = CancellationToken::new();
    let holding: Holding = Arc::new(Mutex::new([(0, 100), (1, 0)].into()));
    let addr = runtime.block_on(serve(Arc::clone(&holding), shutdown.clone()));

    let dir = tempfile::tempdir().unwrap();
    let map_path = dir.path().join("alarm-panel.toml");
    std::fs::write(&map_path, MAP).unwrap();
    let extra = format!(
        "[uplink]\nbatch_interval = \"60s\"\npriority_min_interval = \"20s\"\n[uplink.pull]\ntoken = \"{TOKEN}\"\n\n\
         [[modbus.device]]\nname = \"panel\"\nmap = \"{}\"\ntransport = \"tcp\"\naddress = \"{addr}\"\npoll_interval = \"500ms\"\n",
        map_path.display(),
    );
    let mut site = Site::with_config(Vec::new(), &extra).unwrap();

    // (a) The first batch: within seconds of the start, with a 60 s batch interval. (The
    // binaries are built before the clock starts.)
    outpost_e2e::bin("outpost");
    let start = Instant::now();
    site.start_gateway().unwrap();
    let (first_seq, seen) =
        wait_for_batch_with(&site, 0, "level", 100.0, Duration::from_secs(40)).unwrap();
    let first_after = seen - start;
    println!(
        "first batch (seq {first_seq}) pullable {:.2} s after the gateway was started (batch_interval 60 s)",
        first_after.as_secs_f64()
    );
    assert!(
        first_after < Duration::from_secs(15),
        "first batch after {first_after:?}"
    );

    // (b) Ordinary readings wait: the level changes, and no batch holds it for a while.
    holding.lock().unwrap().insert(0, 101);
    std::thread::sleep(Duration::from_secs(3));
    let newest = |site: &Site| {
        pulled(site)
            .unwrap()
            .iter()
            .map(|(seq, _)| *seq)
            .max()
            .unwrap_or(0)
    };
    assert_eq!(
        newest(&site),
        first_seq,
        "an ordinary change was sealed early"
    );

    // The alarm rises: a batch holding it, and the level readings pending with it, at once.
    holding.lock().unwrap().insert(1, 1);
    let raised = Instant::now();
    let (alarm_seq, seen) =
        wait_for_batch_with(&site, first_seq, "alarm", 1.0, Duration::from_secs(40)).unwrap();
    let alarm_after = seen - raised;
    println!(
        "priority change (alarm 0 → 1) in batch {alarm_seq}, pullable {:.2} s after the register changed",
        alarm_after.as_secs_f64()
    );
    assert!(
        alarm_after < Duration::from_secs(10),
        "priority change sealed after {alarm_after:?}"
    );
    let batches = pulled(&site).unwrap();
    let alarm_batch = &batches.iter().find(|(seq, _)| *seq == alarm_seq).unwrap().1;
    assert!(
        alarm_batch.iter().any(|(c, v)| c == "level" && *v == 101.0),
        "the pending ordinary readings go with it"
    );

    // The alarm chatters: the next change waits for priority_min_interval (20 s) after the last
    // early seal, and is still sealed well before the 60 s interval.
    holding.lock().unwrap().insert(1, 0);
    let cleared = Instant::now();
    let (clear_seq, seen) =
        wait_for_batch_with(&site, alarm_seq, "alarm", 0.0, Duration::from_secs(70)).unwrap();
    let clear_after = seen - cleared;
    let since_raise_seal = seen - (raised + alarm_after);
    println!(
        "second priority change (alarm 1 → 0) in batch {clear_seq}, {:.2} s after the register changed, {:.2} s after the previous early seal (priority_min_interval 20 s)",
        clear_after.as_secs_f64(),
        since_raise_seal.as_secs_f64()
    );
    assert!(
        since_raise_seal >= Duration::from_secs(18),
        "rate limit: {since_raise_seal:?}"
    );
    assert!(
        clear_after < Duration::from_secs(50),
        "second change after {clear_after:?}"
    );
    let batches = pulled(&site).unwrap();
    assert!(
        batches.iter().all(|(seq, _)| *seq <= clear_seq),
        "nothing else sealed in between: {:?}",
        batches.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    assert_eq!(clear_seq, alarm_seq + 1);

    site.gateway.take();
    shutdown.cancel();
}
