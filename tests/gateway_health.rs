//! End-to-end: the gateway's own health on `outpost/{id}/health`, through a real Mosquitto with
//! TLS and the shipped pattern ACL, from a real `outpost run`.
//!
//! - The report arrives with sane values, and the next run tells how the previous one ended:
//!   `kill -9` → `crash` (`killed`); SIGTERM → `clean`; the unit's `ExecStopPost=` (`outpost
//!   record-exit`) with `SERVICE_RESULT=watchdog` → `watchdog`; a run-state file left `running`
//!   on another boot → `power_loss`.
//! - The modem: a private `dbus-daemon` with, or without, a fake ModemManager served by zbus
//!   (ObjectManager + the Modem and Modem3gpp interfaces' properties).
//! - Hostile input: a corrupt or truncated run-state file is one clear log line and `unknown`,
//!   and the gateway runs.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use outpost_e2e::broker::{Broker, Cloud, Pki};
use outpost_e2e::{Proc, Site, bin, wait_for};
use serde_json::Value;

const GATEWAY: &str = "e2e-site"; // the Site's gateway.id
const MINUTE: Duration = Duration::from_secs(60);

fn health_config(broker: &Broker, pki: &Pki, modem_bus: &str) -> String {
    let files = pki.client(GATEWAY).unwrap();
    format!(
        "[uplink]\nbatch_interval = \"1s\"\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkeepalive = \"5s\"\n\n[health]\ninterval = \"10s\"\nsample_interval = \"1s\"\nmodem_bus = \"{modem_bus}\"\n",
        broker.port(),
        files.ca.display(),
        files.cert.display(),
        files.key.display(),
    )
}

/// A broker with TLS and the shipped pattern ACL, and the cloud subscribed to the health topic.
fn setup() -> (tempfile::TempDir, Pki, Broker, Cloud) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let broker = Broker::start(&dir.path().join("broker"), &pki).unwrap();
    let cloud = Cloud::connect(&broker, &pki).unwrap();
    cloud
        .subscribe(&format!("outpost/{GATEWAY}/health"))
        .unwrap();
    (dir, pki, broker, cloud)
}

/// Every health report the cloud received, in arrival order.
fn reports(cloud: &Cloud) -> Vec<Value> {
    let topic = format!("outpost/{GATEWAY}/health");
    cloud
        .messages()
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| serde_json::from_slice(&m.payload).expect("a health report is JSON"))
        .collect()
}

/// The first report after the `seen`th that satisfies `want`.
fn report_after(cloud: &Cloud, seen: usize, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    wait_for(MINUTE, what, || {
        reports(cloud).into_iter().skip(seen).find(|r| want(r))
    })
    .unwrap()
}

/// Starts the gateway with its log (standard output and error) appended to `log`.
fn start_logged(site: &mut Site, log: &Path) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(bin("outpost"));
    cmd.arg("run")
        .arg("--config")
        .arg(site.config_path())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    site.gateway = Some(Proc::spawn("gateway", &mut cmd).unwrap());
    wait_for(Duration::from_secs(20), "the gateway's API", || {
        site.get("/api/v1/status").ok()
    })
    .unwrap();
}

fn run_state_path(site: &Site) -> PathBuf {
    site.dir.path().join("data/run-state.json")
}

fn run_state(site: &Site) -> Value {
    serde_json::from_slice(&std::fs::read(run_state_path(site)).unwrap()).unwrap()
}

/// Restarts the gateway after its run ended, and the first report of the new run (the one whose
/// previous run started when the ended one did: no late report of the old run is taken for it).
fn restart_and_report(site: &mut Site, cloud: &Cloud, log: &Path, what: &str) -> Value {
    let since = run_state(site)["since_ms"].clone();
    start_logged(site, log);
    report_after(cloud, 0, what, |r| r["prev"]["since_ms"] == since)
}

fn previous_reason(report: &Value) -> (String, Option<String>) {
    (
        report["prev"]["reason"].as_str().unwrap().to_owned(),
        report["prev"]["kind"].as_str().map(str::to_owned),
    )
}

#[test]
fn the_report_reaches_the_broker_and_each_run_tells_how_the_previous_one_ended() {
    let (dir, pki, broker, cloud) = setup();
    // A bus address where nothing listens: no modem, said plainly.
    let no_bus = format!("unix:path={}", dir.path().join("no-bus").display());
    let mut site = Site::with_config(Vec::new(), &health_config(&broker, &pki, &no_bus)).unwrap();
    let log = dir.path().join("gateway.log");

    // First run: a report with the uplink up and sane values.
    start_logged(&mut site, &log);
    let first = report_after(&cloud, 0, "a report with the uplink up", |r| {
        r["link"]["up"] == true
    });
    assert_eq!(first["v"], 1, "{first}");
    let bytes = cloud
        .messages()
        .iter()
        .find(|m| m.topic.ends_with("/health"))
        .map(|m| m.payload.len())
        .unwrap();
    println!("health report: {bytes} bytes of JSON");
    assert!(bytes < 1024, "a report is compact: {bytes} bytes");
    assert_eq!(
        previous_reason(&first),
        ("first_run".into(), None),
        "{first}"
    );
    let rss = first["mem"]["rss"].as_u64().unwrap();
    assert!(
        (1 << 20..1 << 30).contains(&rss),
        "resident set {rss}: {first}"
    );
    assert!(first["mem"]["avail"].as_u64().unwrap() <= first["mem"]["total"].as_u64().unwrap());
    assert!(first["disk"]["free"].as_u64().unwrap() > 0, "{first}");
    let free_pct = first["disk"]["free_pct"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&free_pct), "{first}");
    assert_eq!(first["disk"]["low"], free_pct < 10.0, "{first}");
    assert_eq!(first["modem"]["state"], "none", "{first}");
    assert!(
        first["modem"]["why"].as_str().unwrap().contains("no D-Bus"),
        "{first}"
    );
    assert!(first["outbox"]["batches"].is_u64(), "{first}");
    assert!(first["at"].as_i64().unwrap() > 1_600_000_000_000);
    // CPU figures come from two samples: a later report has them.
    let later = report_after(&cloud, 0, "a report with CPU figures", |r| {
        r["cpu"]["sys"].is_f64() || r["cpu"]["sys"].is_u64()
    });
    assert!((0.0..=100.0).contains(&later["cpu"]["sys"].as_f64().unwrap()));
    assert!(later["cpu"]["proc"].as_f64().unwrap() >= 0.0);
    // The same report on the local API.
    let status = site.get("/api/v1/status").unwrap();
    assert_eq!(status["health"]["prev"]["reason"], "first_run", "{status}");
    assert_eq!(run_state(&site)["state"], "running");

    // kill -9: nothing recorded the end, same boot → crash (killed).
    site.gateway.as_mut().unwrap().kill_hard();
    assert_eq!(run_state(&site)["state"], "running");
    let after_kill = restart_and_report(&mut site, &cloud, &log, "the report after kill -9");
    assert_eq!(
        previous_reason(&after_kill),
        ("crash".into(), Some("killed".into())),
        "{after_kill}"
    );

    // SIGTERM: a clean stop.
    let status = site
        .gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(20))
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(run_state(&site)["state"], "stopped");
    let after_term = restart_and_report(&mut site, &cloud, &log, "the report after SIGTERM");
    assert_eq!(
        previous_reason(&after_term),
        ("clean".into(), None),
        "{after_term}"
    );

    // The watchdog: systemd sends SIGABRT, then runs ExecStopPost= with SERVICE_RESULT=watchdog.
    let gateway = site.gateway.as_mut().unwrap();
    nix::sys::signal::kill(gateway.pid(), nix::sys::signal::Signal::SIGABRT).unwrap();
    wait_for(Duration::from_secs(10), "the gateway to abort", || {
        gateway.try_wait()
    })
    .unwrap();
    let recorded = Command::new(bin("outpost"))
        .args(["record-exit", "--config"])
        .arg(site.config_path())
        .env("SERVICE_RESULT", "watchdog")
        .env("EXIT_CODE", "dumped")
        .env("EXIT_STATUS", "ABRT")
        .output()
        .unwrap();
    assert!(
        recorded.status.success(),
        "{}",
        String::from_utf8_lossy(&recorded.stderr)
    );
    assert_eq!(run_state(&site)["exit"]["service_result"], "watchdog");
    let after_watchdog =
        restart_and_report(&mut site, &cloud, &log, "the report after the watchdog");
    assert_eq!(
        previous_reason(&after_watchdog),
        ("watchdog".into(), None),
        "{after_watchdog}"
    );

    // Power loss: the record says `running` on a boot that is not this one, with no exit record.
    site.gateway.as_mut().unwrap().kill_hard();
    let mut state = run_state(&site);
    state["boot_id"] = "00000000-0000-4000-8000-000000000000".into();
    let alive = state["heartbeat_ms"].as_i64().unwrap();
    std::fs::write(run_state_path(&site), state.to_string()).unwrap();
    let after_power = restart_and_report(&mut site, &cloud, &log, "the report after a power loss");
    assert_eq!(
        previous_reason(&after_power),
        ("power_loss".into(), None),
        "{after_power}"
    );
    assert_eq!(after_power["prev"]["last_alive_ms"], alive);

    // The log said why, in words.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("The previous run did not end cleanly.") && text.contains("power_loss"),
        "{text}"
    );
    drop(site);
}

#[test]
fn a_corrupt_or_truncated_run_state_file_is_one_log_line_and_unknown_and_the_gateway_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut site = Site::with_config(
        Vec::new(),
        "[health]\ninterval = \"10s\"\nsample_interval = \"1s\"\nmodem_bus = \"off\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(site.dir.path().join("data")).unwrap();
    let log = dir.path().join("gateway.log");
    let good = br#"{"v":1,"state":"running","since_ms":1,"pid":7,"boot_id":"b","heartbeat_ms":2}"#;
    let cases: [(&str, Vec<u8>); 4] = [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("binary", vec![0xff, 0x00, 0xfe, 0x7b, 0x22]),
        ("empty", Vec::new()),
        (
            "wrong types",
            br#"{"v":1,"state":"running","since_ms":"yesterday","pid":-1,"boot_id":5,"heartbeat_ms":2}"#.to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        std::fs::write(run_state_path(&site), &bytes).unwrap();
        start_logged(&mut site, &log);
        let health = wait_for(MINUTE, "the health report on the API", || {
            let status = site.get("/api/v1/status").ok()?;
            (!status["health"].is_null()).then(|| status["health"].clone())
        })
        .unwrap();
        assert_eq!(health["prev"]["reason"], "unknown", "{what}: {health}");
        assert!(
            health["prev"]["detail"]
                .as_str()
                .unwrap()
                .contains("run-state"),
            "{what}: {health}"
        );
        assert_eq!(health["modem"]["state"], "none");
        // Its own record replaced the bad one.
        assert_eq!(run_state(&site)["state"], "running", "{what}");
        site.gateway
            .as_mut()
            .unwrap()
            .terminate(Duration::from_secs(20))
            .unwrap();
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("The run-state file is unreadable").count(),
        4,
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

/// A private bus: `dbus-daemon --session` on a socket in `dir`, stopped by PID when dropped.
fn private_bus(dir: &Path) -> (Proc, String) {
    let socket = dir.join("bus");
    let mut cmd = Command::new("dbus-daemon");
    cmd.args(["--session", "--nofork", "--print-address"])
        .arg(format!("--address=unix:path={}", socket.display()))
        .stdout(Stdio::piped());
    let mut bus = Proc::spawn("dbus-daemon", &mut cmd).expect("dbus-daemon (package dbus-daemon)");
    let stdout = bus.take_stdout().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let address = line.trim().to_owned();
    assert!(address.starts_with("unix:"), "{address}");
    (bus, address)
}

/// A minimal ModemManager: its ObjectManager, and one modem with the Modem and Modem3gpp
/// interfaces' properties the gateway reads.
mod fake_modem_manager {
    pub struct Modem;

    #[zbus::interface(name = "org.freedesktop.ModemManager1.Modem")]
    impl Modem {
        #[zbus(property)]
        fn state(&self) -> i32 {
            8 // MM_MODEM_STATE_REGISTERED
        }
        #[zbus(property)]
        fn signal_quality(&self) -> (u32, bool) {
            (72, true)
        }
        #[zbus(property)]
        fn access_technologies(&self) -> u32 {
            1 << 14 // MM_MODEM_ACCESS_TECHNOLOGY_LTE
        }
    }

    pub struct Modem3gpp;

    #[zbus::interface(name = "org.freedesktop.ModemManager1.Modem.Modem3gpp")]
    impl Modem3gpp {
        #[zbus(property)]
        fn operator_name(&self) -> String {
            "Outpost Test Net".into()
        }
    }

    pub async fn serve(address: &str) -> zbus::Result<zbus::Connection> {
        zbus::connection::Builder::address(address)?
            .name("org.freedesktop.ModemManager1")?
            .serve_at("/org/freedesktop/ModemManager1/Modem/0", Modem)?
            .serve_at("/org/freedesktop/ModemManager1/Modem/0", Modem3gpp)?
            .serve_at("/org/freedesktop/ModemManager1", zbus::fdo::ObjectManager)?
            .build()
            .await
    }
}

#[test]
fn the_modem_signal_comes_from_modemmanager_on_dbus_and_no_modemmanager_is_no_modem() {
    let (dir, pki, broker, cloud) = setup();
    let (_bus, address) = private_bus(dir.path());
    let mut site = Site::with_config(Vec::new(), &health_config(&broker, &pki, &address)).unwrap();
    let log = dir.path().join("gateway.log");
    start_logged(&mut site, &log);

    // The bus is there, ModemManager is not.
    let without = report_after(
        &cloud,
        0,
        "a report with the uplink up, without ModemManager",
        |r| r["modem"]["state"] == "none" && r["link"]["up"] == true,
    );
    assert_eq!(
        without["modem"]["why"], "ModemManager is not running",
        "{without}"
    );

    // ModemManager appears with a registered modem: a report at once, with its signal.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let service = runtime
        .block_on(fake_modem_manager::serve(&address))
        .unwrap();
    let seen = reports(&cloud).len();
    let with = report_after(&cloud, seen, "a report with the modem", |r| {
        r["modem"]["state"] == "registered"
    });
    assert_eq!(with["why"], "modem", "{with}");
    assert_eq!(with["modem"]["signal"], 72, "{with}");
    assert_eq!(with["modem"]["recent"], true);
    assert_eq!(with["modem"]["tech"], "lte");
    assert_eq!(with["modem"]["operator"], "Outpost Test Net");
    let status = site.get("/api/v1/status").unwrap();
    assert_eq!(status["health"]["modem"]["signal"], 72, "{status}");

    // It goes away again: no modem, said at once.
    drop(service);
    drop(runtime);
    let seen = reports(&cloud).len();
    let gone = report_after(&cloud, seen, "a report after ModemManager left", |r| {
        r["modem"]["state"] == "none"
    });
    assert_eq!(gone["why"], "modem", "{gone}");
    let text = std::fs::read_to_string(&log).unwrap();
    // One line per change of the modem's state, not one per sample.
    assert!(text.matches("Cellular modem.").count() <= 4, "{text}");
}
