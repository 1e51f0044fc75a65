//! Soak: the release `outpost run` daemon for N minutes with 64 simulated nodes (outpost-node-sim
//! on ptys, 10 Hz each) and 8 Modbus TCP meters (the demo meter, polled every second), pushing
//! 10 s batches over TLS to a real Mosquitto that flaps: stopped by PID 20 s of every minute
//! (seconds 30–50) and started again on the same port. A cloud client acknowledges end to end.
//!
//! ```text
//! cargo bench -p outpost-e2e --bench soak -- --minutes 30      # default 30
//! ```
//!
//! Every 10 s it samples the daemon's resident memory (/proc/PID/status VmRSS), open descriptors
//! (/proc/PID/fd), store size on disk (outpost.db + outpost.db-wal) and CPU seconds
//! (/proc/PID/stat utime + stime), with the outbox as the status API shows it, into
//! `target/soak/soak.csv`. At the end the nodes are stopped, the outbox drains, and it checks that
//! nothing was lost: every node's `seq` channel is 1..=n in the store and at the cloud, the
//! batches the cloud received are contiguous from 1 (a resend byte-identical), and the Modbus
//! readings at the cloud are as many as in the store. It prints the figures at warm-up end and at
//! the end with the slope per 10 min after warm-up, and draws RSS and store size over time into
//! `docs/soak.png` (`--png PATH` elsewhere).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost::demo::meter;
use outpost_e2e::broker::{Broker, Cloud, Pki};
use outpost_e2e::{NodeSpec, Site, raise_open_file_limit, wait_for, workspace_dir};
use plotters::prelude::*;
use rumqttc::QoS;
use tokio_util::sync::CancellationToken;

#[path = "plot.rs"]
mod plot;
use plot::{encode_png, load_font, target_dir};

const GATEWAY: &str = "e2e-site"; // the Site's gateway.id
const NODES: usize = 64;
const NODE_HZ: f64 = 10.0;
const DEVICES: usize = 8;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The broker is down from second 30 to second 50 of every minute.
const DOWN: std::ops::Range<u64> = 30..50;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` builds this; the soak runs for minutes
    }
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let minutes: f64 = value("--minutes")
        .map(|m| m.parse().expect("--minutes takes a number"))
        .unwrap_or(30.0);
    let png = value("--png").map_or_else(|| workspace_dir().join("docs/soak.png"), PathBuf::from);
    let report = soak(minutes);
    let out = target_dir().join("soak");
    std::fs::create_dir_all(&out).expect("target/soak");
    let csv = out.join("soak.csv");
    std::fs::write(&csv, report.csv()).expect("write the CSV");
    report.plot(&png);
    println!("{}", report.summary());
    println!("samples: {}\nplot:    {}", csv.display(), png.display());
    assert!(
        report.problems.is_empty(),
        "the soak found problems:\n{}",
        report.problems.join("\n")
    );
}

/// One sample of the daemon, every [`SAMPLE_EVERY`].
#[derive(Debug, Clone, Copy)]
struct Sample {
    t_s: f64,
    rss_kib: u64,
    fds: u64,
    store_bytes: u64,
    /// Of `store_bytes`, the write-ahead log.
    wal_bytes: u64,
    cpu_s: f64,
    broker_up: bool,
    outbox_batches: u64,
    outbox_bytes: u64,
    acked_upto: u64,
    cloud_batches: u64,
}

#[derive(Debug)]
struct Report {
    minutes: f64,
    warmup_s: f64,
    samples: Vec<Sample>,
    flaps: u32,
    stored_node_samples: u64,
    stored_device_readings: u64,
    batches: u64,
    resent: u64,
    drain_s: f64,
    problems: Vec<String>,
}

/// What the cloud has received: batch bytes by sequence number, and how far it acknowledged.
#[derive(Debug, Default)]
struct CloudLog {
    batches: BTreeMap<u64, Vec<u8>>,
    /// Batches received again (resent after a reconnect): byte-identical or a problem.
    resent: u64,
    problems: Vec<String>,
    upto: u64,
}

fn soak(minutes: f64) -> Report {
    raise_open_file_limit();
    let dir = tempfile::Builder::new()
        .prefix("outpost-soak-")
        .tempdir()
        .unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let mut broker = Broker::start(&dir.path().join("broker"), &pki).unwrap();
    let cloud = Arc::new(Cloud::connect(&broker, &pki).unwrap());

    // The Modbus meters: tokio-modbus TCP servers in this process, each its own simulated load.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let meters_stop = CancellationToken::new();
    let map = Arc::new(meter::demo_map().unwrap());
    let meters: Vec<_> = (0..DEVICES)
        .map(|i| {
            runtime
                .block_on(meter::serve(
                    Arc::clone(&map),
                    i as u64,
                    meters_stop.clone(),
                ))
                .unwrap()
        })
        .collect();

    let files = pki.client(GATEWAY).unwrap();
    // The gateway's default: readings the cloud has are deleted beyond the newest 100000.
    let mut config = format!(
        "[store]\nkeep_readings = 100000\n\n[uplink]\nbatch_interval = \"10s\"\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkeepalive = \"5s\"\nresend_after = \"20s\"\n",
        broker.port(),
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    );
    let catalogue = workspace_dir().join("config/devices/eastron-sdm630.toml");
    for (i, addr) in meters.iter().enumerate() {
        config += &format!(
            "\n[[modbus.device]]\nname = \"meter-{i}\"\nmap = \"{}\"\ntransport = \"tcp\"\naddress = \"{addr}\"\npoll_interval = \"1s\"\ntimeout = \"500ms\"\n",
            catalogue.display()
        );
    }
    let specs = (0..NODES)
        .map(|i| NodeSpec {
            rate_hz: NODE_HZ,
            ..NodeSpec::new(i)
        })
        .collect();
    let mut site = Site::with_config(specs, &config).unwrap();
    site.start_gateway().unwrap();
    let pid = site.gateway.as_ref().unwrap().pid().as_raw();
    let store = site.store_path();
    eprintln!(
        "soak: gateway PID {pid}, {NODES} nodes at {NODE_HZ} Hz, {DEVICES} Modbus meters, broker on port {} down {}-{} s of every minute, {minutes} min",
        broker.port(),
        DOWN.start,
        DOWN.end
    );

    // The cloud, on its own thread for the whole run: keep each new batch, acknowledge what is
    // contiguous (again every 5 s, in case an acknowledgement went out while the gateway was away).
    let log: Arc<Mutex<CloudLog>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let cloud_thread = std::thread::spawn({
        let (cloud, log, stop) = (Arc::clone(&cloud), Arc::clone(&log), Arc::clone(&stop));
        move || cloud_loop(&cloud, &log, &stop)
    });

    let warmup_s = (minutes * 60.0 / 3.0).min(300.0);
    let run = Duration::from_secs_f64(minutes * 60.0);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut flaps = 0;
    let mut problems = Vec::new();
    loop {
        let t = started.elapsed();
        if let Some(status) = site.gateway.as_mut().unwrap().try_wait() {
            problems.push(format!("the gateway exited at {t:?}: {status}"));
            break;
        }
        if t >= run {
            break;
        }
        let want_up = !DOWN.contains(&(t.as_secs() % 60));
        if want_up && !broker.is_running() {
            broker.restart().unwrap();
            eprintln!(
                "soak: {:>6.1} s broker up again, PID {}",
                t.as_secs_f64(),
                broker.pid().unwrap()
            );
        } else if !want_up && broker.is_running() {
            let was = broker.pid().unwrap();
            broker.stop().unwrap();
            flaps += 1;
            eprintln!("soak: {:>6.1} s broker PID {was} stopped", t.as_secs_f64());
        }
        if t >= next_sample {
            let s = sample(pid, &store, &site, &log, t, broker.is_running());
            eprintln!(
                "soak: {:>6.1} s rss {:>7} KiB  fds {:>4}  store {:>8.1} MiB  cpu {:>7.1} s  outbox {:>4} batches  acked {:>5}  cloud {:>5}",
                s.t_s,
                s.rss_kib,
                s.fds,
                mib(s.store_bytes),
                s.cpu_s,
                s.outbox_batches,
                s.acked_upto,
                s.cloud_batches
            );
            samples.push(s);
            next_sample += SAMPLE_EVERY;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if problems.is_empty() {
        samples.push(sample(
            pid,
            &store,
            &site,
            &log,
            started.elapsed(),
            broker.is_running(),
        ));
    }

    // The end: the broker up, the nodes and meters stopped (the runtime and every meter
    // connection with it), the outbox drained to the cloud.
    if !broker.is_running() {
        broker.restart().unwrap();
    }
    meters_stop.cancel();
    runtime.shutdown_background();
    for node in &mut site.nodes {
        if let Some(mut node) = node.take() {
            let _ = node.terminate(Duration::from_secs(5));
        }
    }
    let drain = Instant::now();
    let drained = wait_for(
        Duration::from_secs(300),
        "the outbox to drain to the cloud",
        || {
            let status = site.get("/api/v1/status").ok()?;
            (status["outbox"]["batches"] == 0 && status["outbox"]["unsealed_readings"] == 0)
                .then_some(())
        },
    );
    if let Err(e) = drained {
        problems.push(format!("{e:#}: {:?}", site.get("/api/v1/status").ok()));
    }
    let drain_s = drain.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    cloud_thread.join().unwrap();
    let mut log = std::mem::take(&mut *log.lock().unwrap());
    problems.append(&mut log.problems);

    // Nothing lost: the store, then the cloud.
    let stored = stored_node_seqs(&store).unwrap();
    if stored.len() != NODES {
        problems.push(format!("{} nodes in the store, not {NODES}", stored.len()));
    }
    for (uid, seqs) in &stored {
        if let Some(p) = contiguity(seqs) {
            problems.push(format!("store, node {uid}: {p}"));
        }
    }
    let stored_device_readings = count_device_readings(&store).unwrap();
    let batches = log.batches.len() as u64;
    if let Some(&last) = log.batches.keys().next_back()
        && (log.batches.keys().next() != Some(&1) || last != batches)
    {
        problems.push(format!(
            "the cloud's batches are not 1..={last}: {batches} received, first {:?}",
            log.batches.keys().next()
        ));
    }
    let mut at_cloud: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut device_readings = 0u64;
    let mut device_points = std::collections::BTreeSet::new();
    for bytes in log.batches.values() {
        let batch = outpost_batch::decode(bytes, &outpost_batch::Dictionaries::new()).unwrap();
        for r in batch.readings() {
            if r.source.starts_with("meter-") {
                device_readings += 1;
                if !device_points.insert((r.source.to_owned(), r.channel.to_owned(), r.ts_ms)) {
                    problems.push(format!(
                        "Modbus: {} {} at {} twice at the cloud",
                        r.source, r.channel, r.ts_ms
                    ));
                }
            } else if r.channel == "seq" {
                at_cloud
                    .entry(r.source.to_owned())
                    .or_default()
                    .push(r.value.as_f64() as i64);
            }
        }
    }
    for (uid, seqs) in &stored {
        match at_cloud.get(uid) {
            Some(cloud) if cloud == seqs => {}
            Some(cloud) => problems.push(format!(
                "node {uid}: {} samples at the cloud, {} in the store{}",
                cloud.len(),
                seqs.len(),
                contiguity(cloud).map_or(String::new(), |p| format!(" ({p} at the cloud)"))
            )),
            None => problems.push(format!("node {uid}: nothing at the cloud")),
        }
    }
    // The store keeps only the newest `store.keep_readings` once the cloud has them: what it
    // still holds of the devices must be at the cloud too.
    if device_readings < stored_device_readings {
        problems.push(format!(
            "Modbus: {device_readings} readings at the cloud, {stored_device_readings} still kept in the store"
        ));
    }
    if device_readings == 0 {
        problems.push("Modbus: no device reading at the cloud".into());
    }
    match site
        .gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(20))
    {
        Ok(status) if status.success() => {}
        Ok(status) => problems.push(format!("the gateway exited with {status} on SIGTERM")),
        Err(e) => problems.push(format!("{e:#}")),
    }
    Report {
        minutes,
        warmup_s,
        samples,
        flaps,
        stored_node_samples: stored.iter().map(|(_, s)| s.len() as u64).sum(),
        stored_device_readings: device_readings,
        batches,
        resent: log.resent,
        drain_s,
        problems,
    }
}

fn cloud_loop(cloud: &Cloud, log: &Mutex<CloudLog>, stop: &AtomicBool) {
    let topic = format!("outpost/{GATEWAY}/batch");
    let mut seen = 0;
    let mut acked = (0, Instant::now());
    while !stop.load(Ordering::Relaxed) {
        let messages = cloud.messages_since(seen);
        seen += messages.len();
        let mut log = log.lock().unwrap();
        for m in messages.into_iter().filter(|m| m.topic == topic) {
            let seq = match outpost_batch::read_header(&m.payload) {
                Ok(header) => header.seq,
                Err(e) => {
                    log.problems.push(format!("an invalid batch: {e}"));
                    continue;
                }
            };
            match log.batches.get(&seq) {
                Some(earlier) if *earlier == m.payload => log.resent += 1,
                Some(_) => log
                    .problems
                    .push(format!("batch {seq} resent with other bytes")),
                None => {
                    log.batches.insert(seq, m.payload);
                }
            }
        }
        while log.batches.contains_key(&(log.upto + 1)) {
            log.upto += 1;
        }
        let upto = log.upto;
        drop(log);
        if upto > acked.0 || (upto > 0 && acked.1.elapsed() > Duration::from_secs(5)) {
            // Queued by rumqttc even while the broker is away; sent on reconnection.
            let _ = cloud.publish(
                &format!("outpost/{GATEWAY}/ack"),
                format!("{{\"upto\": {upto}}}"),
                QoS::AtLeastOnce,
                false,
            );
            acked = (upto, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sample(
    pid: i32,
    store: &Path,
    site: &Site,
    log: &Mutex<CloudLog>,
    t: Duration,
    broker_up: bool,
) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    let size = |suffix: &str| {
        let mut path = store.as_os_str().to_owned();
        path.push(suffix);
        std::fs::metadata(path).map_or(0, |m| m.len())
    };
    let api = site.get("/api/v1/status").ok();
    let outbox = |key: &str| {
        api.as_ref()
            .and_then(|s| s["outbox"][key].as_u64())
            .unwrap_or(0)
    };
    Sample {
        t_s: t.as_secs_f64(),
        rss_kib,
        fds,
        store_bytes: size("") + size("-wal"),
        wal_bytes: size("-wal"),
        cpu_s: cpu_seconds(pid),
        broker_up,
        outbox_batches: outbox("batches"),
        outbox_bytes: outbox("bytes"),
        acked_upto: outbox("acked_upto"),
        cloud_batches: log.lock().unwrap().batches.len() as u64,
    }
}

fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// Every node's last committed `seq` (the store's dedup point), by uid: the store keeps only the
/// newest `store.keep_readings` readings once the cloud has them, so the count is the record.
fn stored_node_seqs(store: &Path) -> anyhow::Result<Vec<(String, Vec<i64>)>> {
    let conn =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = conn.prepare(
        "SELECT n.uid, max(s.last_seq) FROM nodes n JOIN node_sessions s ON s.node_id = n.id GROUP BY n.uid",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(uid, last)| (uid, (1..=last).collect()))
        .collect())
}

/// Every node's `seq` channel in store order, by uid, in one pass over the readings (those
/// still kept).
#[allow(dead_code)]
fn kept_node_seqs(store: &Path) -> anyhow::Result<Vec<(String, Vec<i64>)>> {
    let conn =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut nodes = conn.prepare("SELECT id, uid FROM nodes")?;
    let uids: BTreeMap<i64, String> = nodes
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut seqs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut stmt = conn.prepare(
        "SELECT node_id, value FROM readings WHERE node_id IS NOT NULL AND channel = 4 ORDER BY id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let node: i64 = row.get(0)?;
        let uid = uids.get(&node).cloned().unwrap_or_else(|| node.to_string());
        seqs.entry(uid).or_default().push(row.get(1)?);
    }
    Ok(seqs.into_iter().collect())
}

fn count_device_readings(store: &Path) -> anyhow::Result<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM readings WHERE node_id IS NULL",
        [],
        |r| r.get(0),
    )?)
}

/// `None` if `seqs` is exactly 1..=n with n > 0; else what is wrong.
fn contiguity(seqs: &[i64]) -> Option<String> {
    if seqs.is_empty() {
        return Some("no sample".into());
    }
    seqs.iter()
        .enumerate()
        .find(|&(i, &s)| s != i as i64 + 1)
        .map(|(i, &s)| {
            format!(
                "sample {} of {} holds seq {s}: a gap or a duplicate",
                i + 1,
                seqs.len()
            )
        })
}

/// One figure of a sample, for the summary and the plot.
type Metric = fn(&Sample) -> f64;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Report {
    fn csv(&self) -> String {
        let mut out = String::from(
            "t_s,rss_kib,fds,store_bytes,wal_bytes,cpu_s,broker_up,outbox_batches,outbox_bytes,acked_upto,cloud_batches\n",
        );
        for s in &self.samples {
            let _ = writeln!(
                out,
                "{:.1},{},{},{},{},{:.2},{},{},{},{},{}",
                s.t_s,
                s.rss_kib,
                s.fds,
                s.store_bytes,
                s.wal_bytes,
                s.cpu_s,
                u8::from(s.broker_up),
                s.outbox_batches,
                s.outbox_bytes,
                s.acked_upto,
                s.cloud_batches
            );
        }
        out
    }

    /// CPU % of one core over the minute before each sample (the first minute: since start).
    fn cpu_percent(&self) -> Vec<(f64, f64)> {
        self.samples
            .iter()
            .map(|s| {
                let from = self
                    .samples
                    .iter()
                    .find(|e| e.t_s >= s.t_s - 60.0)
                    .unwrap_or(s);
                let dt = s.t_s - from.t_s;
                let pct = if dt > 0.0 {
                    100.0 * (s.cpu_s - from.cpu_s) / dt
                } else {
                    0.0
                };
                (s.t_s, pct)
            })
            .collect()
    }

    fn summary(&self) -> String {
        let after: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.t_s >= self.warmup_s)
            .collect();
        let cpu = self.cpu_percent();
        let cpu_after: Vec<(f64, f64)> = cpu
            .iter()
            .copied()
            .filter(|(t, _)| *t >= self.warmup_s + 60.0)
            .collect();
        let mut out = format!(
            "soak: {NODES} nodes at {NODE_HZ} Hz + {DEVICES} Modbus meters at 1 s, 10 s batches over MQTT/TLS, broker down 20 s of every minute ({} stops), {} min, warm-up {:.0} min\n",
            self.flaps,
            self.minutes,
            self.warmup_s / 60.0
        );
        let _ = writeln!(
            out,
            "  {:<22} {:>14} {:>14} {:>18}",
            "", "warm-up end", "end", "slope / 10 min"
        );
        let series: [(&str, &str, Metric); 3] = [
            ("resident memory", "MiB", |s| s.rss_kib as f64 / 1024.0),
            ("open descriptors", "", |s| s.fds as f64),
            ("store (db + wal)", "MiB", |s| mib(s.store_bytes)),
        ];
        for (name, unit, f) in &series {
            let points: Vec<(f64, f64)> = after.iter().map(|s| (s.t_s, f(s))).collect();
            if let (Some(first), Some(last)) = (points.first(), points.last()) {
                let _ = writeln!(
                    out,
                    "  {:<22} {:>10.1} {unit:<3} {:>10.1} {unit:<3} {:>+14.2} {unit:<3}",
                    name,
                    first.1,
                    last.1,
                    slope(&points) * 600.0
                );
            }
        }
        if let (Some(first), Some(last)) = (cpu_after.first(), cpu_after.last()) {
            let _ = writeln!(
                out,
                "  {:<22} {:>10.1} {:<3} {:>10.1} {:<3} {:>+14.2} {:<3}",
                "CPU (1 min, one core)",
                first.1,
                "%",
                last.1,
                "%",
                slope(&cpu_after) * 600.0,
                "%"
            );
        }
        if let (Some(first), Some(last)) = (after.first(), after.last()) {
            let _ = writeln!(
                out,
                "  CPU after warm-up: {:.1} s in {:.1} min ({:.1} % of one core)",
                last.cpu_s - first.cpu_s,
                (last.t_s - first.t_s) / 60.0,
                100.0 * (last.cpu_s - first.cpu_s) / (last.t_s - first.t_s).max(1.0)
            );
        }
        let _ = writeln!(
            out,
            "  stored: {} node samples ({} per node), {} Modbus readings at the cloud; {} batches at the cloud, {} resent (byte-identical); outbox drained {:.0} s after the nodes stopped",
            self.stored_node_samples,
            self.stored_node_samples / NODES as u64,
            self.stored_device_readings,
            self.batches,
            self.resent,
            self.drain_s
        );
        if self.problems.is_empty() {
            out += "  nothing lost: every node's seq 1..=n in the store and at the cloud, batches 1..=n at the cloud";
        } else {
            let _ = write!(out, "  PROBLEMS:\n    {}", self.problems.join("\n    "));
        }
        out
    }

    /// RSS and store size over time, the broker's outages shaded, the warm-up marked.
    fn plot(&self, path: &Path) {
        const W: u32 = 1000;
        const H: u32 = 600;
        let text = load_font();
        let mut buf = vec![255u8; (W * H * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
            root.fill(&WHITE).unwrap();
            let (top, bottom) = root.split_vertically(H / 2);
            let end_min = self.samples.last().map_or(1.0, |s| s.t_s / 60.0).max(1.0);
            let panels: [(&DrawingArea<_, _>, &str, RGBColor, Metric); 2] = [
                (
                    &top,
                    "gateway resident memory (MiB)",
                    RGBColor(31, 119, 180),
                    |s| s.rss_kib as f64 / 1024.0,
                ),
                (
                    &bottom,
                    "store on disk, outpost.db + wal (MiB)",
                    RGBColor(214, 39, 40),
                    |s| mib(s.store_bytes),
                ),
            ];
            for (area, title, color, f) in panels {
                let max = self.samples.iter().map(&f).fold(0.0, f64::max).max(1.0) * 1.1;
                let mut builder = ChartBuilder::on(area);
                builder.margin(12);
                if text {
                    builder
                        .caption(title, ("sans-serif", 18))
                        .x_label_area_size(32)
                        .y_label_area_size(56);
                }
                let mut chart = builder.build_cartesian_2d(0.0..end_min, 0.0..max).unwrap();
                // The broker's outages, shaded.
                let mut down_from = None;
                for s in &self.samples {
                    match (s.broker_up, down_from) {
                        (false, None) => down_from = Some(s.t_s / 60.0),
                        (true, Some(from)) => {
                            chart
                                .draw_series([Rectangle::new(
                                    [(from, 0.0), (s.t_s / 60.0, max)],
                                    RGBColor(235, 235, 235).filled(),
                                )])
                                .unwrap();
                            down_from = None;
                        }
                        _ => {}
                    }
                }
                let mut mesh = chart.configure_mesh();
                mesh.light_line_style(RGBColor(245, 245, 245));
                if text {
                    mesh.x_desc("minutes").label_style(("sans-serif", 13));
                } else {
                    mesh.x_labels(0).y_labels(0);
                }
                mesh.draw().unwrap();
                chart
                    .draw_series([PathElement::new(
                        [(self.warmup_s / 60.0, 0.0), (self.warmup_s / 60.0, max)],
                        BLACK.mix(0.4),
                    )])
                    .unwrap();
                chart
                    .draw_series(LineSeries::new(
                        self.samples.iter().map(|s| (s.t_s / 60.0, f(s))),
                        color.stroke_width(2),
                    ))
                    .unwrap();
            }
            root.present().unwrap();
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, encode_png(&buf, W, H)).expect("write the PNG");
    }
}

/// Least-squares slope of y over x (per x unit).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}
