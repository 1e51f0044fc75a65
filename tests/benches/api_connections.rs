//! How fast a fresh client gets `/api/v1/status` while 2,000 idle connections are held, and the
//! daemon's resident memory meanwhile, against the same request with no idle connections.
//!
//! `cargo bench -p outpost-e2e --bench api_connections` (OUTPOST_BENCH_REQUESTS, default 50).
//!
//! The release daemon runs with the packaged unit's descriptor limit (LimitNOFILE=4096, set here
//! with setrlimit before exec). Two daemons, one after the other:
//! - `max_connections = 3000`: every one of the 2,000 idle connections (from 127.0.0.2) is held
//!   open by the daemon (one address may hold 2,250);
//! - the default `max_connections = 512`: the flood pushes out its own connections, and each
//!   fresh client (from 127.0.0.1) pushes out one more.
//!
//! Each request is a new TCP connection, `GET /api/v1/status` with `Connection: close`, timed
//! from connect to the end of the response.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_e2e::{Proc, Site, bin, idle_flood, wait_for};

const IDLE: usize = 2000;

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` builds this; the measurement needs the release daemon
    }
    let requests: usize = std::env::var("OUTPOST_BENCH_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    outpost_e2e::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    println!("| case | median | max | daemon RSS | idle connections open in the daemon |");
    println!("|---|---:|---:|---:|---:|");
    {
        let (site, proc) = start("max_connections = 3000");
        report("no idle connections (cap 3000)", &site, &proc, requests);
        let flood = runtime.block_on(idle_flood(site.api, IDLE));
        assert_eq!(flood.len(), IDLE, "every idle connection was accepted");
        std::thread::sleep(Duration::from_millis(500));
        report(
            "2,000 idle connections held (cap 3000)",
            &site,
            &proc,
            requests,
        );
        drop(flood);
        stop(proc);
    }
    {
        let (site, proc) = start("");
        report(
            "no idle connections (default cap 512)",
            &site,
            &proc,
            requests,
        );
        let flood = runtime.block_on(idle_flood(site.api, IDLE));
        std::thread::sleep(Duration::from_millis(500));
        report(
            "2,000 idle connections opened (default cap 512)",
            &site,
            &proc,
            requests,
        );
        drop(flood);
        stop(proc);
    }
}

fn start(api: &str) -> (Site, Proc) {
    let site = Site::with_config(Vec::new(), "").unwrap();
    let dropins = site.dir.path().join("outpost.d");
    std::fs::create_dir_all(&dropins).unwrap();
    std::fs::write(
        dropins.join("10-api.toml"),
        format!("[api]\n{api}\nidle_timeout = \"10m\"\n"),
    )
    .unwrap();
    let log = File::create(site.dir.path().join("gateway.log")).unwrap();
    let mut cmd = Command::new(bin("outpost"));
    cmd.arg("run")
        .arg("--config")
        .arg(site.config_path())
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log));
    outpost_e2e::limit_open_files(&mut cmd, 4096, 4096);
    let proc = Proc::spawn("gateway", &mut cmd).unwrap();
    wait_for(Duration::from_secs(30), "the gateway's API", || {
        fresh_status(site.api).ok()
    })
    .unwrap();
    (site, proc)
}

fn stop(mut proc: Proc) {
    let _ = proc.terminate(Duration::from_secs(20));
}

fn report(case: &str, site: &Site, proc: &Proc, requests: usize) {
    let mut times: Vec<Duration> = (0..requests)
        .map(|_| fresh_status(site.api).expect("the fresh client was answered"))
        .collect();
    times.sort();
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", proc.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let open = status(site.api)["api"]["open"].as_u64().unwrap_or(0);
    println!(
        "| {case} | {:.2} ms | {:.2} ms | {:.1} MiB | {open} |",
        ms(times[times.len() / 2]),
        ms(*times.last().unwrap()),
        rss_kib as f64 / 1024.0
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One fresh client: connect, `GET /api/v1/status`, read to the end; how long it took.
fn fresh_status(addr: SocketAddr) -> std::io::Result<Duration> {
    let start = Instant::now();
    let body = get(addr)?;
    if !body.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(body));
    }
    Ok(start.elapsed())
}

fn status(addr: SocketAddr) -> serde_json::Value {
    let response = get(addr).unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(
        format!("GET /api/v1/status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}
