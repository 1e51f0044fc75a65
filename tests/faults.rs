//! Fault injection, end to end, each test bounded in time and printing its figure
//! (`figure: …` on standard error; `cargo test -p outpost-e2e --test faults -- --nocapture`):
//!
//! - the gateway SIGKILLed 50 times at random moments under load from simulated nodes, Modbus
//!   meters and the MQTT uplink to a real Mosquitto (TLS);
//! - the file system under the store turning read-only while nodes stream (ext4 on a loop device,
//!   `errors=remount-ro`, as an SD card's error turns it);
//! - a USB serial adapter unplugged and plugged again, under the same name and under another one,
//!   while the node behind it keeps running, the configuration naming its `/dev/serial/by-id` link.
//!
//! The broker flapping for ten minutes is `tests/flapping.rs`, its own binary so it can run beside
//! the rest. Needs root (mounts) and Mosquitto, as CI and scripts/test.sh run.

#[path = "faults_common.rs"]
mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    CloudView, Rng, assert_cloud_has_exactly_what_was_sealed, broker_and_cloud,
    device_reading_counts, duplicate_device_readings, median_max, mqtt_config, spawn_node_logged,
    stop_node,
};
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::openpty;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use outpost::demo::meter;
use outpost_e2e::{NodeSpec, Site, assert_contiguous, wait_for};
use tokio_util::sync::CancellationToken;

const MINUTE: Duration = Duration::from_secs(60);

fn catalogue(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/devices")
        .join(file)
}

/// Replaces the Site's node simulators with ones whose report is kept in `dir/node{i}.log`.
fn logged_nodes(site: &mut Site) -> Vec<PathBuf> {
    let mut logs = Vec::new();
    for i in 0..site.specs.len() {
        drop(site.nodes[i].take());
        let log = site.dir.path().join(format!("node{i}.log"));
        site.nodes[i] = Some(spawn_node_logged(site, i, &log).unwrap());
        logs.push(log);
    }
    logs
}

/// Sleeps `d` while the cloud takes what arrives and acknowledges it.
fn serve_cloud_for(view: &mut CloudView, cloud: &outpost_e2e::broker::Cloud, d: Duration) {
    let end = Instant::now() + d;
    loop {
        view.update(cloud);
        view.ack(cloud);
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(500)));
    }
}

#[test]
fn fifty_sigkills_under_load_lose_and_duplicate_nothing() {
    const KILLS: usize = 50;
    let (mut rng, seed) = Rng::from_env("OUTPOST_FAULTS_SEED");
    eprintln!("faults: seed {seed} (OUTPOST_FAULTS_SEED={seed} replays this schedule)");
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, cloud) = broker_and_cloud(dir.path());
    // Two Modbus TCP meters, served by this process: they outlive every gateway.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = CancellationToken::new();
    let map = Arc::new(meter::demo_map().unwrap());
    let mut extra = mqtt_config(&broker, &pki, "1s");
    for n in 1..=2 {
        let addr = runtime
            .block_on(meter::serve(Arc::clone(&map), n, shutdown.clone()))
            .unwrap();
        extra += &format!(
            "\n[[modbus.device]]\nname = \"meter-{n}\"\nmap = \"{}\"\ntransport = \"tcp\"\naddress = \"{addr}\"\npoll_interval = \"250ms\"\ntimeout = \"200ms\"\n",
            catalogue("eastron-sdm630.toml").display()
        );
    }
    let specs = (0..4)
        .map(|i| NodeSpec {
            rate_hz: 50.0,
            ..NodeSpec::new(i)
        })
        .collect();
    let mut site = Site::with_config(specs, &extra).unwrap();
    let logs = logged_nodes(&mut site);
    site.start_gateway().unwrap();
    site.wait_for_samples(50, MINUTE).unwrap();

    let mut view = CloudView::default();
    let mut to_api = Vec::new();
    let mut stored_at_kill = Vec::new();
    for kill in 0..KILLS {
        serve_cloud_for(
            &mut view,
            &cloud,
            rng.duration(Duration::from_secs(1), Duration::from_secs(4)),
        );
        let gateway = site.gateway.as_mut().unwrap();
        assert!(
            gateway.try_wait().is_none(),
            "the gateway exited by itself before kill {kill}"
        );
        gateway.kill_hard();
        stored_at_kill.push(
            site.stored_seqs()
                .unwrap()
                .iter()
                .map(|(_, s)| s.len())
                .sum::<usize>(),
        );
        let restart = Instant::now();
        site.start_gateway()
            .unwrap_or_else(|e| panic!("restart after kill {kill}: {e:#}"));
        to_api.push(restart.elapsed());
        let status = site.get("/api/v1/status").unwrap();
        assert!(
            status["store"]["error"].is_null(),
            "the store opened with an error after kill {kill}: {}",
            status["store"]
        );
    }
    // A node resumes after its HELLO is answered, so a kill soon after a restart may land
    // before anything new was stored; over the run the nodes deliver all along.
    assert!(
        stored_at_kill.windows(2).all(|w| w[0] <= w[1]),
        "stored samples never go back: {stored_at_kill:?}"
    );
    let progressed = stored_at_kill.windows(2).filter(|w| w[0] < w[1]).count();
    assert!(
        progressed >= KILLS / 3,
        "the nodes delivered between only {progressed} of {KILLS} kills: {stored_at_kill:?}"
    );

    // The last gateway runs on: stop the nodes and let everything reach the cloud.
    serve_cloud_for(&mut view, &cloud, Duration::from_secs(3));
    let mut reports = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        reports.push(stop_node(site.nodes[i].as_mut().unwrap(), log).unwrap());
    }
    // And the meters: the runtime's end closes their connections, so the gateway's polls fail
    // from now on and nothing new is committed once the last poll's readings are (within 1 s).
    shutdown.cancel();
    drop(runtime);
    serve_cloud_for(&mut view, &cloud, Duration::from_secs(2));
    wait_for(2 * MINUTE, "every reading at the cloud", || {
        view.update(&cloud);
        view.ack(&cloud);
        let status = site.get("/api/v1/status").ok()?;
        (status["outbox"]["batches"] == 0 && status["outbox"]["unsealed_readings"] == 0)
            .then_some(())
    })
    .unwrap();
    site.gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(10))
        .unwrap();

    // Nodes: every acknowledged sample stored once, in order, nothing else.
    let seqs = site.stored_seqs().unwrap();
    assert_eq!(seqs.len(), 4);
    for ((uid, s), report) in seqs.iter().zip(&reports) {
        assert_eq!(
            report.dropped, 0,
            "node {uid}: its ring overflowed: {report:?}"
        );
        assert_contiguous(uid, s, report.acknowledged() as usize);
        assert!(
            s.len() as u64 <= report.samples,
            "node {uid}: more stored than sampled: {} > {report:?}",
            s.len()
        );
    }
    // Modbus: no reading twice, both meters polled all along.
    let store = site.store_path();
    let duplicates = duplicate_device_readings(&store).unwrap();
    assert!(
        duplicates.is_empty(),
        "device readings stored twice: {duplicates:?}"
    );
    let devices = device_reading_counts(&store).unwrap();
    assert_eq!(devices.len(), 2, "{devices:?}");
    // The cloud: exactly what the store sealed, once each, in order.
    assert_cloud_has_exactly_what_was_sealed(&view, &store);

    let (median, max) = median_max(&to_api);
    let per_node: Vec<usize> = seqs.iter().map(|(_, s)| s.len()).collect();
    eprintln!(
        "figure: {KILLS} SIGKILLs (seed {seed}, 1-4 s apart) under 4 nodes at 50 Hz, 2 Modbus meters at 4 Hz and MQTT/TLS: \
         samples stored between {progressed} of {} pairs of kills; \
         0 acknowledged samples lost, 0 duplicated; node samples stored {per_node:?}, device readings {devices:?}; \
         {} batches at the cloud ({} deliveries with resends), contiguous, no reading twice; \
         restart to API answering: median {median:?}, max {max:?}; test took {:?}",
        KILLS - 1,
        view.batches.len(),
        view.received,
        started.elapsed()
    );
}

/// An ext4 file system in an image file, loop-mounted with `errors=remount-ro` (the kernel turns
/// it read-only at its first error, as on an SD card going bad). Unmounted when dropped.
struct LoopExt4 {
    image: PathBuf,
    at: PathBuf,
}

impl LoopExt4 {
    fn create(image: &Path, at: &Path, size_mib: u64) -> LoopExt4 {
        std::fs::create_dir_all(at).unwrap();
        let file = std::fs::File::create(image).unwrap();
        file.set_len(size_mib << 20).unwrap();
        run("mkfs.ext4", &["-q", "-F", &image.display().to_string()]);
        let disk = LoopExt4 {
            image: image.to_owned(),
            at: at.to_owned(),
        };
        disk.mount();
        disk
    }

    fn mount(&self) {
        let status = Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(&self.image)
            .arg(&self.at)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "this test loop-mounts an ext4 image: run it as root (scripts/test.sh does)"
        );
    }

    /// The kernel's own error path: what ext4 does when the medium fails under it.
    fn fail(&self) {
        let source = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.at)
            .output()
            .unwrap();
        let source = String::from_utf8(source.stdout).unwrap();
        let device = Path::new(source.trim()).file_name().unwrap().to_owned();
        let trigger = Path::new("/sys/fs/ext4")
            .join(device)
            .join("trigger_fs_error");
        std::fs::write(&trigger, "outpost e2e: simulated medium error")
            .unwrap_or_else(|e| panic!("{}: {e}", trigger.display()));
    }

    fn read_only(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&self.at.to_str().unwrap())
                && f.get(3)
                    .is_some_and(|o| o.split(',').any(|o| o == "ro" || o == "emergency_ro"))
        })
    }

    /// What an operator does: unmount, check, mount again.
    fn repair(&self) {
        run("umount", &[&self.at.display().to_string()]);
        // e2fsck exits 1 when it corrected errors: the error the kernel recorded.
        let status = Command::new("e2fsck")
            .args(["-f", "-y"])
            .stdout(std::process::Stdio::null())
            .arg(&self.image)
            .status()
            .unwrap();
        assert!(status.code().is_some_and(|c| c <= 1), "e2fsck: {status}");
        self.mount();
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        // Lazily: a test that failed may still have the gateway running on it.
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "{program} {args:?}: {status:?}"
    );
}

#[test]
fn a_store_whose_file_system_turns_read_only_acknowledges_nothing_and_says_so() {
    // 10 Hz: a node's ring of 1024 samples holds 100 s, longer than the outage and the repair.
    let specs = (0..2)
        .map(|i| NodeSpec {
            rate_hz: 10.0,
            ..NodeSpec::new(i)
        })
        .collect();
    let mut site = Site::with_config(specs, "[uplink]\nbatch_interval = \"2s\"\n").unwrap();
    let logs = logged_nodes(&mut site);
    let disk = LoopExt4::create(
        &site.dir.path().join("store.img"),
        &site.dir.path().join("data"),
        32,
    );
    site.start_gateway().unwrap();
    site.wait_for_samples(30, MINUTE).unwrap();

    disk.fail();
    assert!(
        disk.read_only(),
        "the kernel made the file system read-only"
    );
    let failed_at = Instant::now();
    let status = wait_for(
        Duration::from_secs(30),
        "the store to report the read-only file system",
        || {
            let status = site.get("/api/v1/status").ok()?;
            status["store"]["error"]
                .as_str()
                .is_some()
                .then_some(status)
        },
    )
    .unwrap();
    let noticed = failed_at.elapsed();
    let error = status["store"]["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("read-only"),
        "the error names the cause: {error}"
    );
    let alerts = status["store"]["alerts"].as_array().unwrap();
    let alert = alerts
        .iter()
        .find(|a| a["kind"] == "store_failing")
        .unwrap_or_else(|| panic!("a read-only store is an alert: {alerts:?}"));
    assert!(
        alert["message"].as_str().unwrap().contains("read-only"),
        "{alert}"
    );

    // While read-only: it runs, serves, and stores (so acknowledges) nothing.
    let stored: Vec<usize> = site
        .stored_seqs()
        .unwrap()
        .iter()
        .map(|(_, s)| s.len())
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        site.gateway.as_mut().unwrap().try_wait().is_none(),
        "the gateway keeps running"
    );
    assert!(site.get("/api/v1/nodes").is_ok());
    let still: Vec<usize> = site
        .stored_seqs()
        .unwrap()
        .iter()
        .map(|(_, s)| s.len())
        .collect();
    assert_eq!(
        stored, still,
        "nothing is stored on a read-only file system"
    );
    let status = site.get("/api/v1/status").unwrap();
    assert!(
        status["store"]["failed_commits"].as_u64().unwrap() > 0,
        "{}",
        status["store"]
    );

    // An ext4 turned read-only by an error stays so until it is unmounted and checked: stop
    // the gateway (it must exit on SIGTERM with its store failing), repair, start it again.
    let stop = Instant::now();
    site.gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(15))
        .unwrap();
    let stopped_in = stop.elapsed();
    disk.repair();
    site.start_gateway().unwrap();
    let target: Vec<usize> = stored.iter().map(|n| n + 300).collect();
    wait_for(
        2 * MINUTE,
        "the nodes' rings delivered after the repair",
        || {
            let seqs = site.stored_seqs().ok()?;
            seqs.iter()
                .zip(&target)
                .all(|((_, s), &t)| s.len() >= t)
                .then_some(())
        },
    )
    .unwrap();
    let outage = failed_at.elapsed();
    let status = site.get("/api/v1/status").unwrap();
    assert!(status["store"]["error"].is_null(), "{}", status["store"]);
    site.gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(10))
        .unwrap();
    for (i, log) in logs.iter().enumerate() {
        let report = stop_node(site.nodes[i].as_mut().unwrap(), log).unwrap();
        assert_eq!(
            report.dropped, 0,
            "node {i}: its ring covered the outage: {report:?}"
        );
        let seqs = site.stored_seqs().unwrap();
        let (uid, s) = &seqs[i];
        assert_contiguous(uid, s, report.acknowledged() as usize);
    }
    eprintln!(
        "figure: read-only store (ext4 errors=remount-ro): reported on /api/v1/status after {noticed:?} as {error:?}; \
         0 samples stored or acknowledged while read-only; SIGTERM exit in {stopped_in:?}; \
         after unmount, e2fsck and mount the nodes' rings delivered everything, contiguous \
         (outage to caught up: {outage:?})"
    );
}

/// A USB serial adapter between the gateway and a node that keeps running (its own power): the
/// node's side is a pty the simulator opens with `--port`; the gateway's side is a pty that is
/// unplugged (its master closed: the gateway's reads end, `/dev/pts/N` disappears) and plugged
/// again as a new pty, under a `ttyUSB`-style name the test chooses and a by-id link to it.
struct Adapter {
    node_path: PathBuf,
    /// The gateway's side while plugged in: master and slave (held so the master never reports
    /// a hang-up before the gateway opens it; this process never reads it).
    host: Arc<Mutex<Option<(OwnedFd, OwnedFd)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _node_slave: OwnedFd,
}

fn raw_pty() -> (OwnedFd, OwnedFd, PathBuf) {
    let pty = openpty(None, None).unwrap();
    let mut termios = tcgetattr(&pty.slave).unwrap();
    cfmakeraw(&mut termios);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &termios).unwrap();
    let path = nix::unistd::ttyname(&pty.slave).unwrap();
    fcntl(&pty.master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    // Not inherited by the processes the test starts: a gateway holding a copy of the master
    // would keep the adapter plugged in.
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
    }
    (pty.master, pty.slave, path)
}

impl Adapter {
    fn new() -> Adapter {
        let (node_master, node_slave, node_path) = raw_pty();
        let host: Arc<Mutex<Option<(OwnedFd, OwnedFd)>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let host = Arc::clone(&host);
            let stop = Arc::clone(&stop);
            move || pump(&node_master, &host, &stop)
        });
        Adapter {
            node_path,
            host,
            stop,
            thread: Some(thread),
            _node_slave: node_slave,
        }
    }

    /// Plugs the adapter in: a new pty, published at `name` (as udev names `ttyUSB0`), and
    /// `by_id` pointing to `name` (as udev's `/dev/serial/by-id` links do).
    fn plug(&self, name: &Path, by_id: &Path) {
        let (master, slave, path) = raw_pty();
        let _ = std::fs::remove_file(name);
        std::os::unix::fs::symlink(&path, name).unwrap();
        let _ = std::fs::remove_file(by_id);
        std::os::unix::fs::symlink(name, by_id).unwrap();
        *self.host.lock().unwrap() = Some((master, slave));
    }

    /// Unplugs it: the pty goes away and udev removes both names.
    fn unplug(&self, name: &Path, by_id: &Path) {
        // The names go first: once the pty closes, its number is free for another test's pty,
        // which a gateway reopening a stale name would then read.
        let _ = std::fs::remove_file(by_id);
        let _ = std::fs::remove_file(name);
        *self.host.lock().unwrap() = None;
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Moves bytes both ways between the node's pty and the host's, while plugged; while unplugged
/// the node's bytes fall on the floor, as on a cable with nothing at its end.
fn pump(node: &OwnedFd, host: &Mutex<Option<(OwnedFd, OwnedFd)>>, stop: &AtomicBool) {
    let mut to_host: Vec<u8> = Vec::new();
    let mut to_node: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        // A copy of the host's master for this round (the lock is not held while polling, so
        // unplugging never waits; the copy closes at the end of the round).
        let host_master = host
            .lock()
            .unwrap()
            .as_ref()
            .map(|(m, _)| m.try_clone().unwrap());
        if host_master.is_none() {
            to_host.clear();
        }
        let mut fds = vec![PollFd::new(node.as_fd(), PollFlags::POLLIN)];
        if let Some(m) = &host_master {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, PollTimeout::from(10u8));
        drop(fds);
        if let Ok(n) = nix::unistd::read(node, &mut buf)
            && host_master.is_some()
            && to_host.len() < 1 << 16
        {
            to_host.extend_from_slice(&buf[..n]);
        }
        if let Some(m) = &host_master {
            if let Ok(n) = nix::unistd::read(m, &mut buf) {
                to_node.extend_from_slice(&buf[..n]);
            }
            if !to_host.is_empty()
                && let Ok(n) = nix::unistd::write(m, &to_host)
            {
                to_host.drain(..n);
            }
        }
        if !to_node.is_empty()
            && let Ok(n) = nix::unistd::write(node, &to_node)
        {
            to_node.drain(..n);
        }
    }
}

#[test]
fn a_usb_adapter_replugged_under_the_same_or_another_name_is_reopened_through_its_by_id_link() {
    let dir = tempfile::tempdir().unwrap();
    let by_id_dir = dir.path().join("serial/by-id");
    std::fs::create_dir_all(&by_id_dir).unwrap();
    let by_id = by_id_dir.join("usb-Outpost_Node_E6614103E7-if00");
    let usb0 = dir.path().join("ttyUSB0");
    let usb1 = dir.path().join("ttyUSB1");

    let adapter = Adapter::new();
    adapter.plug(&usb0, &by_id);
    let node_log = dir.path().join("node.log");
    let mut node = outpost_e2e::Proc::spawn(
        "node",
        Command::new(outpost_e2e::bin("outpost-node-sim"))
            .arg("--port")
            .arg(&adapter.node_path)
            .args(["--uid", "e2e00000000000a1", "--rate", "50"])
            .stderr(std::fs::File::create(&node_log).unwrap()),
    )
    .unwrap();
    let mut site = Site::with_config(
        Vec::new(),
        &format!("[[serial]]\npath = \"{}\"\n", by_id.display()),
    )
    .unwrap();
    site.start_gateway().unwrap();
    let stored = |site: &Site| {
        site.stored_seqs()
            .ok()
            .and_then(|s| s.first().map(|(_, s)| s.len()))
            .unwrap_or(0)
    };
    wait_for(MINUTE, "the node's first samples", || {
        (stored(&site) >= 100).then_some(())
    })
    .unwrap();

    let mut reopen = Vec::new();
    let mut caught_up = Vec::new();
    for (round, name) in [(1u64, &usb0), (2, &usb1)] {
        adapter.unplug(&usb0, &by_id);
        adapter.unplug(&usb1, &by_id);
        wait_for(
            Duration::from_secs(20),
            "the gateway to see the port gone",
            || {
                let status = site.get("/api/v1/status").ok()?;
                (status["ports"][0]["open"] == false).then_some(())
            },
        )
        .unwrap();
        // The node samples on into its ring; what the port handed to the writer before it
        // ended may still commit in the first moments.
        std::thread::sleep(Duration::from_secs(1));
        let before = stored(&site);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(stored(&site), before, "nothing arrives while unplugged");
        // Back: round 1 as ttyUSB0 again, round 2 as ttyUSB1 (ttyUSB0 is gone for good).
        adapter.plug(name, &by_id);
        let plugged = Instant::now();
        wait_for(Duration::from_secs(30), "the port reopened", || {
            let status = site.get("/api/v1/status").ok()?;
            (status["ports"][0]["open"] == true && status["ports"][0]["opens"].as_u64()? > round)
                .then_some(())
        })
        .unwrap();
        reopen.push(plugged.elapsed());
        wait_for(Duration::from_secs(30), "the node's held samples", || {
            (stored(&site) > before + 150).then_some(())
        })
        .unwrap();
        caught_up.push(plugged.elapsed());
    }
    assert!(!usb0.exists(), "the adapter now lives at ttyUSB1 only");

    site.gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(10))
        .unwrap();
    let report = stop_node(&mut node, &node_log).unwrap();
    let seqs = site.stored_seqs().unwrap();
    assert_eq!(seqs.len(), 1);
    let (uid, s) = &seqs[0];
    // The same boot throughout: nothing lost, nothing twice, across both replugs.
    assert_eq!(report.dropped, 0, "{report:?}");
    assert_contiguous(uid, s, report.acknowledged() as usize);
    let conn = rusqlite::Connection::open(site.store_path()).unwrap();
    let boots: i64 = conn
        .query_row(
            "SELECT count(DISTINCT boot_id) FROM readings WHERE node_id IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(boots, 1, "the node never restarted");
    eprintln!(
        "figure: USB adapter unplugged 3 s and replugged (as ttyUSB0, then as ttyUSB1), config naming the by-id link: \
         port open again {reopen:?} after each replug, the 3 s held in the node's ring stored {caught_up:?} after it; \
         {} samples, contiguous, one boot, 0 lost",
        s.len()
    );
}
