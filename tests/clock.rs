//! End-to-end: a gateway without a real-time clock. The real `outpost run` runs under libfaketime
//! (Debian's `libfaketime`): its wall clock starts in 1970 or in the past and jumps at run time
//! (the timestamp file is re-read on every call), while CLOCK_MONOTONIC and CLOCK_BOOTTIME stay
//! real. Simulated nodes stream throughout. What must hold (docs/reliability.md, "Time"):
//! readings taken before the clock is trusted are held, then stamped with their real time; every
//! sample is stored and sealed exactly once, batches in order; the data budget counts no traffic
//! on a day the clock only pretended it was.
//!
//! Needs libfaketime; the test fails (it does not skip) when the library is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use outpost_batch::{Dictionaries, Value};
use outpost_e2e::broker::{Broker, Pki};
use outpost_e2e::{NodeSpec, Proc, Site, assert_contiguous, bin, wait_for};

/// 2020-01-01T00:00Z: anything before is not a time this test's gateway may stamp.
const SANE_MS: i64 = 1_577_836_800_000;

fn real_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|p| p.exists());
    found.expect("libfaketime.so.1 not found: install Debian's `libfaketime` (and `faketime`)")
}

/// The gateway's fake wall clock: `set` moves it at once, seen by the running daemon.
struct FakeClock {
    file: PathBuf,
}

impl FakeClock {
    fn new(dir: &Path) -> FakeClock {
        FakeClock {
            file: dir.join("faketime"),
        }
    }

    /// Puts the gateway's wall clock at `to_ms` (Unix ms) from now on, running at real speed.
    fn set(&self, to_ms: i64) {
        let offset_s = (to_ms - real_ms()) / 1000;
        let spec = if offset_s >= 0 {
            format!("+{offset_s}")
        } else {
            format!("{offset_s}")
        };
        // Written whole, then renamed: the daemon reads the file on every clock call.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, spec).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }

    /// The real time from now on.
    fn real(&self) {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, "+0").unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }
}

/// Starts the site's gateway with its wall clock under `clock`.
fn start_gateway(site: &mut Site, clock: &FakeClock) -> Result<()> {
    let mut cmd = Command::new(bin("outpost"));
    cmd.arg("run")
        .arg("--config")
        .arg(site.config_path())
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME_TIMESTAMP_FILE", &clock.file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    site.gateway = Some(Proc::spawn("gateway", &mut cmd)?);
    let api = site.api;
    wait_for(Duration::from_secs(20), "the gateway's API", || {
        outpost_e2e::http_get_json(api, "/api/v1/status").ok()
    })?;
    Ok(())
}

fn open(store: &Path) -> Result<rusqlite::Connection> {
    let conn =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// (readings, of them held for a trusted clock, batches) in the store now.
fn counts(store: &Path) -> Result<(u64, u64, u64)> {
    let conn = open(store)?;
    Ok(conn.query_row(
        "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM readings WHERE clock IS NOT NULL),
                (SELECT count(*) FROM batches)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?)
}

/// Per node uid: (seq, ts_ms) of its `seq` channel, in store order.
fn stored_times(store: &Path) -> Result<BTreeMap<String, Vec<(i64, i64)>>> {
    let conn = open(store)?;
    let mut stmt = conn.prepare(
        "SELECT n.uid, r.value, r.ts_ms FROM readings r JOIN nodes n ON n.id = r.node_id
         WHERE r.channel = 4 ORDER BY r.id",
    )?;
    let mut out: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
        let (uid, seq, ts): (String, i64, i64) = row?;
        out.entry(uid).or_default().push((seq, ts));
    }
    Ok(out)
}

/// A sealed batch as the cloud would see it.
#[derive(Debug)]
struct Sealed {
    seq: u64,
    unsynchronised: bool,
    first_ts_ms: i64,
    last_ts_ms: i64,
    /// Per node uid: (seq, ts_ms) of its `seq` channel.
    samples: BTreeMap<String, Vec<(i64, i64)>>,
}

fn sealed_batches(store: &Path) -> Result<Vec<Sealed>> {
    let conn = open(store)?;
    let mut stmt = conn.prepare("SELECT bytes FROM batches ORDER BY seq")?;
    let rows: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for bytes in rows {
        let batch = outpost_batch::decode(&bytes, &Dictionaries::new()).context("decode")?;
        let header = batch.header();
        let mut samples: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        for r in batch.readings().filter(|r| r.channel == "seq") {
            let Value::Decimal { raw, .. } = r.value else {
                panic!("seq is a decimal")
            };
            samples
                .entry(r.source.to_owned())
                .or_default()
                .push((raw, r.ts_ms));
        }
        out.push(Sealed {
            seq: header.seq,
            unsynchronised: header.unsynchronised,
            first_ts_ms: header.first_ts_ms,
            last_ts_ms: header.last_ts_ms,
            samples,
        });
    }
    Ok(out)
}

/// Checks what was sealed: batches in sequence order, none marked, each node's samples exactly
/// once in order across them, every timestamp within `[from_ms, to_ms]` (real time), and the
/// batches' time ranges in order (within `slack_ms`: nodes' samples interleave).
fn assert_sealed_in_order(store: &Path, nodes: &[NodeSpec], from_ms: i64, to_ms: i64) {
    let batches = sealed_batches(store).unwrap();
    assert!(batches.len() >= 2, "{} batches", batches.len());
    let mut per_node: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let slack_ms = 2_000;
    let mut newest_first = i64::MIN;
    for (i, b) in batches.iter().enumerate() {
        if i > 0 {
            assert_eq!(b.seq, batches[i - 1].seq + 1, "batch sequence");
        }
        assert!(!b.unsynchronised, "batch {} marked unsynchronised", b.seq);
        assert!(
            (from_ms..=to_ms).contains(&b.first_ts_ms) && (from_ms..=to_ms).contains(&b.last_ts_ms),
            "batch {}: {}..{} outside the real capture window {from_ms}..{to_ms}",
            b.seq,
            b.first_ts_ms,
            b.last_ts_ms
        );
        assert!(
            b.first_ts_ms >= newest_first.saturating_sub(slack_ms),
            "batch {} starts at {}, before batch {}'s start {newest_first}",
            b.seq,
            b.first_ts_ms,
            b.seq - 1
        );
        newest_first = newest_first.max(b.first_ts_ms);
        for (uid, samples) in &b.samples {
            per_node
                .entry(uid.clone())
                .or_default()
                .extend(samples.iter().map(|&(seq, _)| seq));
        }
    }
    for spec in nodes {
        assert_contiguous(&spec.uid, &per_node[&spec.uid], 20);
    }
}

/// Checks every stored sample's time is its real capture time: within `[from_ms, to_ms]`, and
/// one period of its node after the previous sample (within `jitter_ms`): a sample stamped by a
/// wrong clock, or re-stamped wrongly, breaks the run where held and trusted samples meet.
fn assert_stamped_in_real_time(store: &Path, nodes: &[NodeSpec], from_ms: i64, to_ms: i64) {
    let times = stored_times(store).unwrap();
    for spec in nodes {
        let samples = &times[&spec.uid];
        let period = 1000.0 / spec.rate_hz;
        let jitter_ms = 250.0;
        for (i, &(seq, ts)) in samples.iter().enumerate() {
            assert!(
                (from_ms..=to_ms).contains(&ts),
                "{} seq {seq}: {ts} outside the real capture window {from_ms}..{to_ms}",
                spec.uid
            );
            if i > 0 {
                let (prev_seq, prev_ts) = samples[i - 1];
                let expected = prev_ts as f64 + (seq - prev_seq) as f64 * period;
                assert!(
                    (ts as f64 - expected).abs() <= jitter_ms,
                    "{} seq {seq}: stamped {ts}, {:.0} ms off one period after seq {prev_seq}",
                    spec.uid,
                    ts as f64 - expected
                );
            }
        }
    }
}

fn nodes(n: usize, rate_hz: f64) -> Vec<NodeSpec> {
    (0..n)
        .map(|i| NodeSpec {
            rate_hz,
            ..NodeSpec::new(i)
        })
        .collect()
}

#[test]
fn a_cold_boot_in_1970_holds_readings_and_stamps_them_exactly_after_the_first_sync() {
    let from_ms = real_ms();
    let specs = nodes(2, 10.0);
    let mut site = Site::with_config(specs.clone(), "[uplink]\nbatch_interval = \"1s\"\n").unwrap();
    let clock = FakeClock::new(site.dir.path());
    // Booted a minute ago, in 1970.
    clock.set(60_000);
    start_gateway(&mut site, &clock).unwrap();

    // Streaming in 1970: stored, acknowledged (the nodes move on), held out of batches.
    site.wait_for_samples(40, Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_secs(3)); // several batch intervals
    let (readings, held, batches) = counts(&site.store_path()).unwrap();
    assert!(readings > 0);
    assert_eq!(held, readings, "every reading taken in 1970 is held");
    assert_eq!(batches, 0, "nothing sealed with a 1970 time");
    let times = stored_times(&site.store_path()).unwrap();
    assert!(
        times.values().flatten().all(|&(_, ts)| ts < SANE_MS),
        "held readings carry the 1970 clock's time until re-stamped"
    );
    let status = site.get("/api/v1/status").unwrap();
    assert_eq!(status["clock"]["trusted"], false, "{}", status["clock"]);
    assert!(status["clock"]["held_readings"].as_u64().unwrap() > 0);

    // The first time sync: the clock jumps to the real time.
    clock.real();
    wait_for(
        Duration::from_secs(30),
        "held readings re-stamped and sealed",
        || {
            let (readings, held, batches) = counts(&site.store_path()).ok()?;
            (held == 0 && batches >= 2 && readings > 0).then_some(())
        },
    )
    .unwrap();
    let status = site.get("/api/v1/status").unwrap();
    assert_eq!(status["clock"]["trusted"], true, "{}", status["clock"]);
    assert_eq!(status["clock"]["held_readings"], 0);
    assert!(status["clock"]["steps"].as_u64().unwrap() >= 1);
    // Some more, then a clean stop (which seals nothing more; the store is read as it is).
    let before = site.stored_seqs().unwrap()[0].1.len();
    site.wait_for_samples(before + 30, Duration::from_secs(30))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    site.gateway
        .take()
        .unwrap()
        .terminate(Duration::from_secs(10))
        .unwrap();
    let to_ms = real_ms();

    assert_stamped_in_real_time(&site.store_path(), &specs, from_ms, to_ms);
    let (_, held, _) = counts(&site.store_path()).unwrap();
    assert_eq!(held, 0);
    assert_sealed_in_order(&site.store_path(), &specs, from_ms, to_ms);
    // Every stored sample is in a batch but those after the last seal.
    let sealed: usize = sealed_batches(&site.store_path())
        .unwrap()
        .iter()
        .map(|b| b.samples.values().map(Vec::len).sum::<usize>())
        .sum();
    assert!(sealed >= 2 * 60, "{sealed} samples sealed");
}

/// The `[uplink]` config for the site's gateway, identity `e2e-site`.
fn mqtt_config(broker: &Broker, pki: &Pki) -> String {
    let files = pki.client("e2e-site").unwrap();
    format!(
        "[uplink]\nbatch_interval = \"1s\"\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkeepalive = \"5s\"\n",
        broker.port(),
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    )
}

/// Days in the uplink usage ledger, with their bytes.
fn ledger(store: &Path) -> Result<Vec<(String, u64)>> {
    let conn = open(store)?;
    let mut stmt = conn.prepare("SELECT day, sent + received FROM uplink_usage ORDER BY day")?;
    Ok(stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

fn day_of(ms: i64) -> String {
    let secs = ms / 1000;
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Only a step shows a synchronisation (`clock.trust = "step"`, as where `date` sets the time): the
/// clock starts two days in the past (fake-hwclock's time), is trusted only once it steps to the
/// real time, then goes back to 1970 for a while (a bad time source) with the uplink busy, and
/// comes back. Readings of both untrusted stretches get their real time; the budget counts every
/// byte on today, and never opens a 1970 day.
#[test]
fn a_clock_in_the_past_then_back_in_1970_neither_misstamps_readings_nor_moves_the_budgets_month() {
    let from_ms = real_ms();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let broker = Broker::start(&dir.path().join("broker"), &pki).unwrap();
    let specs = nodes(2, 10.0);
    let config = format!(
        "{}\n[clock]\ntrust = \"step\"\n",
        mqtt_config(&broker, &pki)
    );
    let mut site = Site::with_config(specs.clone(), &config).unwrap();
    let clock = FakeClock::new(site.dir.path());
    clock.set(real_ms() - 2 * 86_400_000);
    start_gateway(&mut site, &clock).unwrap();
    site.wait_for_samples(30, Duration::from_secs(30)).unwrap();
    let (readings, held, batches) = counts(&site.store_path()).unwrap();
    assert_eq!((held, batches), (readings, 0), "two days in the past: held");

    // The time service steps the clock to the real time: trusted, the uplink runs.
    clock.real();
    let today = day_of(real_ms());
    wait_for(
        Duration::from_secs(40),
        "traffic counted on today's row of the ledger",
        || {
            let days = ledger(&site.store_path()).ok()?;
            days.iter()
                .any(|(day, bytes)| *day == today && *bytes > 0)
                .then_some(())
        },
    )
    .unwrap();
    let (_, held, _) = counts(&site.store_path()).unwrap();
    assert_eq!(held, 0, "re-stamped once trusted");
    let today_before = ledger(&site.store_path()).unwrap();

    // Back to 1970 for longer than the budget's tally period (10 s), the uplink still connected.
    clock.set(86_400_000);
    let back_at = Instant::now();
    wait_for(Duration::from_secs(30), "readings held again", || {
        let (_, held, _) = counts(&site.store_path()).ok()?;
        (held > 0).then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(22).saturating_sub(back_at.elapsed()));
    clock.real();
    wait_for(Duration::from_secs(30), "held readings re-stamped", || {
        let (_, held, _) = counts(&site.store_path()).ok()?;
        (held == 0).then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(12)); // one more tally at the real time
    site.gateway
        .take()
        .unwrap()
        .terminate(Duration::from_secs(10))
        .unwrap();
    let to_ms = real_ms();

    assert_stamped_in_real_time(&site.store_path(), &specs, from_ms, to_ms);
    assert_sealed_in_order(&site.store_path(), &specs, from_ms, to_ms);
    let days = ledger(&site.store_path()).unwrap();
    let today_after = day_of(to_ms);
    assert!(
        days.iter()
            .all(|(day, _)| *day == today || *day == today_after),
        "the ledger counts only real days: {days:?}"
    );
    let bytes = |rows: &[(String, u64)]| rows.iter().map(|(_, b)| b).sum::<u64>();
    assert!(
        bytes(&days) > bytes(&today_before),
        "traffic while the clock was in 1970 is counted on today: {today_before:?} → {days:?}"
    );
}
