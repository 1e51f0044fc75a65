//! What the technician's status page costs: its weight and time to first useful paint in a real
//! headless Chromium, beside the JSON alone; the gateway's CPU with the page open against with
//! no page; and `/api/v1/status` under 50 concurrent clients, with the memory it adds.
//!
//! `cargo bench -p outpost-e2e --bench web_page -- [--minutes M] [--loads N] [--seconds S]`
//! (defaults: 10 minutes each for the CPU comparison, 0 to skip it; 5 cold page loads; 20 s of
//! load).
//!
//! The site is release `outpost demo --nodes 64 --modbus`: 64 simulated nodes at 1 sample/s and
//! the simulated meter, all in the demo's own process, so its CPU includes the simulators; the
//! page's cost is the difference between the two windows.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use outpost_e2e::browser::Browser;
use outpost_e2e::{Proc, bin, cpu_seconds, free_port, http, http_get_json, wait_for};
use serde_json::Value;

const NODES: usize = 64;
const CLIENTS: usize = 50;

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` builds this; the measurement needs the release daemon
    }
    let minutes = arg("--minutes", 10.0);
    let loads = arg("--loads", 5.0) as usize;
    let seconds = arg("--seconds", 20.0);

    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut demo = Proc::spawn(
        "demo",
        Command::new(bin("outpost"))
            .args(["demo", "--nodes", &NODES.to_string(), "--modbus"])
            .args(["--listen", &addr.to_string()]),
    )
    .unwrap();
    let pid = demo.pid().as_raw();
    wait_for(Duration::from_secs(60), "64 nodes online", || {
        let o = http_get_json(addr, "/api/v1/overview").ok()?;
        let online = o["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "online")
            .count();
        (online == NODES).then_some(())
    })
    .unwrap();

    page_loads(addr, loads);
    api_latency(addr, pid, seconds);
    if minutes > 0.0 {
        cpu_with_and_without_the_page(addr, pid, minutes);
    }
    demo.terminate(Duration::from_secs(10)).unwrap();
}

/// Cold loads (the browser's cache cleared before each): bytes on the wire and time to the
/// first render with every node, against loading the overview JSON and `/api/v1/status` alone.
fn page_loads(addr: SocketAddr, loads: usize) {
    let browser = Browser::start(1280, 900).unwrap();
    let mut page = Vec::new();
    let mut json = Vec::new();
    let mut status = Vec::new();
    for _ in 0..loads {
        browser.clear_cache().unwrap();
        browser.goto(&format!("http://{addr}/")).unwrap();
        let m = browser
            .wait_eval(
                Duration::from_secs(30),
                "the first render",
                "const r = performance.getEntriesByName('outpost:first-render')[0];
                 if (!r || document.querySelectorAll('#nodes tbody tr').length < 64) return null;
                 const nav = performance.getEntriesByType('navigation')[0];
                 const res = performance.getEntriesByType('resource');
                 const fcp = performance.getEntriesByName('first-contentful-paint')[0];
                 return {
                   render_ms: r.startTime,
                   fcp_ms: fcp ? fcp.startTime : null,
                   transfer: nav.transferSize + res.reduce((s, e) => s + e.transferSize, 0),
                   body: nav.encodedBodySize + res.reduce((s, e) => s + e.encodedBodySize, 0),
                   decoded: nav.decodedBodySize + res.reduce((s, e) => s + e.decodedBodySize, 0),
                   requests: 1 + res.length };",
            )
            .unwrap();
        page.push(m);
        for (path, into) in [
            ("/api/v1/overview", &mut json),
            ("/api/v1/status", &mut status),
        ] {
            browser.clear_cache().unwrap();
            browser.goto(&format!("http://{addr}{path}")).unwrap();
            let m = browser
                .eval(
                    "const nav = performance.getEntriesByType('navigation')[0];
                     return { render_ms: nav.responseEnd, transfer: nav.transferSize,
                              body: nav.encodedBodySize, decoded: nav.decodedBodySize, requests: 1 };",
                )
                .unwrap();
            into.push(m);
        }
    }
    let median = |v: &[Value], key: &str| {
        let mut xs: Vec<f64> = v.iter().filter_map(|m| m[key].as_f64()).collect();
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!("Status page with {NODES} nodes and a meter, {loads} cold loads each, medians");
    println!(
        "{:<34} {:>9} {:>11} {:>11} {:>13} {:>9}",
        "what", "requests", "on wire B", "body B", "uncompressed", "time ms"
    );
    for (label, v) in [
        ("the page (/, app.js, app.css, overview)", &page),
        ("/api/v1/overview alone", &json),
        ("/api/v1/status alone", &status),
    ] {
        println!(
            "{label:<34} {:>9} {:>11.0} {:>11.0} {:>13.0} {:>9.1}",
            median(v, "requests"),
            median(v, "transfer"),
            median(v, "body"),
            median(v, "decoded"),
            median(v, "render_ms"),
        );
    }
    println!(
        "(time: the page's first render with every node, from navigation start; first contentful paint {:.1} ms; the JSON's response end)",
        median(&page, "fcp_ms")
    );
}

fn status_kib(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The demo's CPU over `minutes` with no page, then over `minutes` with the page open.
fn cpu_with_and_without_the_page(addr: SocketAddr, pid: i32, minutes: f64) {
    let window = Duration::from_secs_f64(minutes * 60.0);
    let share = |seconds: f64| seconds / window.as_secs_f64() * 100.0;
    let before = cpu_seconds(pid);
    std::thread::sleep(window);
    let idle = share(cpu_seconds(pid) - before);

    let browser = Browser::start(1280, 900).unwrap();
    browser.goto(&format!("http://{addr}/")).unwrap();
    // Room for every poll's timing entry (the default buffer holds 250).
    browser
        .eval("performance.setResourceTimingBufferSize(1000000); return null;")
        .unwrap();
    let polls = |b: &Browser| {
        b.eval("return performance.getEntriesByType('resource').filter((e) => e.name.includes('overview')).length;")
            .unwrap()
            .as_u64()
            .unwrap_or(0)
    };
    let before = cpu_seconds(pid);
    let polls_before = polls(&browser);
    std::thread::sleep(window);
    let open = share(cpu_seconds(pid) - before);
    let polled = polls(&browser) - polls_before;
    println!(
        "Demo CPU ({NODES} simulated nodes in-process), {minutes} min each: no page {idle:.2} % of one core, \
         page open {open:.2} % ({polled} overview polls): the page costs {:.2} % of one core",
        open - idle
    );
}

/// `CLIENTS` threads, each a new connection per `GET /api/v1/status`, for `seconds`.
fn api_latency(addr: SocketAddr, pid: i32, seconds: f64) {
    let rss_before = status_kib(pid, "VmRSS:");
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while Instant::now() < until {
            peak = peak.max(status_kib(pid, "VmRSS:"));
            std::thread::sleep(Duration::from_millis(100));
        }
        peak
    });
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut took = Vec::new();
                let mut failed = 0u64;
                while Instant::now() < until {
                    let start = Instant::now();
                    match http(addr, "GET", "/api/v1/status", None, None) {
                        Ok((200, _)) => took.push(start.elapsed()),
                        _ => failed += 1,
                    }
                }
                (took, failed)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut failed = 0;
    for t in threads {
        let (took, f) = t.join().unwrap();
        all.extend(took);
        failed += f;
    }
    let peak = sampler.join().unwrap();
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    println!(
        "/api/v1/status, {CLIENTS} concurrent clients (a connection each request), {seconds} s: {} requests ({:.0}/s), {failed} failed; \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; RSS {:.1} MiB before, peak {:.1} MiB during",
        all.len(),
        all.len() as f64 / seconds,
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        all.last().unwrap().as_secs_f64() * 1000.0,
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0,
    );
}
