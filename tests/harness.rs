//! Test harness for Outpost's end-to-end tests: real binaries, real pseudo-terminals, real SQLite
//! files, everything on loopback, every process stopped by PID.

pub mod board;
pub mod broker;
pub mod browser;
pub mod cloud;
pub mod modbus_peer;
pub mod mqtt_front;
pub mod nspawn;
pub mod operator;
pub mod postgres;
pub mod provisioning_responder;
pub mod python;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The workspace's binaries in the profile this test runs in (debug for tests, release for
/// benchmarks), built once per run.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = target_dir();
    BUILT.get_or_init(|| {
        let release = dir.file_name().is_some_and(|d| d == "release");
        // The same command as scripts/test.sh's build of the binaries, so the suite finds them
        // current: another package selection unifies other features and rebuilds them.
        let status = cargo()
            .args(["build", "--quiet", "--workspace", "--bins"])
            .args(release.then_some("--release"))
            .current_dir(workspace_dir())
            .status()
            .expect("cannot run cargo to build the binaries under test");
        assert!(status.success(), "building the binaries under test failed");
    });
    dir.join(name)
}

/// A `cargo` command without the variables cargo set for this test process (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, …): ring's build script watches some of them, so a build run with them
/// would rebuild ring and everything above it, and the next build from a shell would again.
pub fn cargo() -> Command {
    let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let per_crate = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&key);
        if per_crate {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The workspace's root (this crate is `tests/` inside it).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// target/debug, from this test executable's own path (target/debug/deps/site-…).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/debug/deps layout")
        .to_owned()
}

/// A free TCP port on loopback.
/// Runs `cmd` to its end; its output, or an error with both streams when it failed.
pub fn run_ok(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind loopback")
        .port()
}

/// Polls `f` until it returns `Some`, or fails after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = f() {
            return Ok(value);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process stopped by PID (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    /// The pty link this process published, and which link file it was (see
    /// [`Proc::spawn_on_link`]).
    link: Option<(PathBuf, LinkId)>,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command) -> Result<Proc> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            link: None,
        })
    }

    /// Starts a process that publishes a pseudo-terminal's slave as the symlink `link` (a node
    /// simulator's `--pty`) and waits for the link. However the process ends, the link goes
    /// before it does, as udev removes an unplugged adapter's name: a link left behind points
    /// at a `/dev/pts` number the kernel hands to the next pty, often another test's node, which
    /// a gateway reopening its port would then read (with the same uid and key: every test's node
    /// `i` has the same seed), keeping a node online that was killed, and taking bytes from the
    /// other test's gateway.
    pub fn spawn_on_link(name: &str, command: &mut Command, link: &Path) -> Result<Proc> {
        let _ = std::fs::remove_file(link);
        let mut proc = Proc::spawn(name, command)?;
        let id = wait_for(Duration::from_secs(10), "the node's pty link", || {
            LinkId::of(link)
        })?;
        proc.link = Some((link.to_owned(), id));
        Ok(proc)
    }

    /// Removes the link this process published, if it is still that link file: a newer
    /// process may have published its own there since, to the very same `/dev/pts/N` (the
    /// number this one's pty freed), so where it points says nothing.
    fn unlink(&mut self) {
        if let Some((link, id)) = self.link.take()
            && LinkId::of(&link) == Some(id)
        {
            let _ = std::fs::remove_file(&link);
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// SIGKILL: no chance to flush or clean up, like a power cut to the process.
    pub fn kill_hard(&mut self) {
        self.unlink();
        let _ = kill(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let _ = kill(self.pid(), Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                self.kill_hard();
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its standard output, when it was spawned with `Stdio::piped()`.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }
}

/// One symlink file: its inode and when it was made (an inode number is reused once freed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl LinkId {
    fn of(link: &Path) -> Option<LinkId> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(link).ok()?;
        Some(LinkId {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.unlink();
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(self.pid(), Signal::SIGTERM);
            std::thread::sleep(Duration::from_millis(100));
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// One simulated node's options.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub uid: String,
    pub rate_hz: f64,
    pub samples: Option<u32>,
    pub garbage_every: Option<u32>,
    /// More `outpost-node-sim` flags (e.g. `--baud 0` for a link without a baud, `--ring N`).
    pub sim_args: Vec<String>,
    /// TOML lines for this node's `[[serial]]` table (e.g. `max_frames_per_sec = 200`).
    pub port_config: String,
    /// A file the node's stderr is appended to (else the test's own).
    pub stderr: Option<PathBuf>,
}

impl NodeSpec {
    pub fn new(i: usize) -> NodeSpec {
        NodeSpec {
            uid: format!("e2e00000000000{:02x}", i + 1),
            rate_hz: 50.0,
            samples: None,
            garbage_every: None,
            sim_args: Vec::new(),
            port_config: String::new(),
            stderr: None,
        }
    }
}

/// A site: a temporary directory, simulated nodes on ptys, and the gateway.
#[derive(Debug)]
pub struct Site {
    // Dropped in this order: the gateway, then the nodes, then the directory.
    pub gateway: Option<Proc>,
    pub nodes: Vec<Option<Proc>>,
    pub specs: Vec<NodeSpec>,
    pub api: SocketAddr,
    /// TOML appended to the generated config (e.g. an `[uplink]` table).
    pub extra_config: String,
    /// The technician token [`Site::get`] and [`Site::post`] send, when the config sets one.
    pub bearer: Option<String>,
    /// The gateway's `gateway.id` (`e2e-site` unless made with [`Site::with_gateway_id`]).
    pub gateway_id: String,
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new(specs: Vec<NodeSpec>) -> Result<Site> {
        Self::with_config(specs, "")
    }

    /// A site whose gateway config gets `extra` appended.
    pub fn with_config(specs: Vec<NodeSpec>, extra: &str) -> Result<Site> {
        Self::with_gateway_id(specs, "e2e-site", extra)
    }

    /// A site whose gateway is `gateway_id` (several gateways on one broker), config `extra`.
    pub fn with_gateway_id(specs: Vec<NodeSpec>, gateway_id: &str, extra: &str) -> Result<Site> {
        let dir = tempfile::Builder::new().prefix("outpost-e2e-").tempdir()?;
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut site = Site {
            gateway: None,
            nodes: Vec::new(),
            specs: specs.clone(),
            api,
            extra_config: extra.to_owned(),
            bearer: None,
            gateway_id: gateway_id.to_owned(),
            dir,
        };
        for i in 0..specs.len() {
            let node = site.spawn_node(i)?;
            site.nodes.push(Some(node));
        }
        site.write_config()?;
        Ok(site)
    }

    pub fn link(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("ttyNODE{i}"))
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("data/outpost.db")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("outpost.toml")
    }

    fn write_config(&self) -> Result<()> {
        let mut toml = format!(
            "[gateway]\nid = \"{}\"\ndata_dir = \"{}\"\n\n[api]\nlisten = \"{}\"\n\n[log]\nlevel = \"info\"\n",
            self.gateway_id,
            self.dir.path().join("data").display(),
            self.api
        );
        for i in 0..self.specs.len() {
            toml += &format!(
                "\n[[serial]]\npath = \"{}\"\nreopen_backoff_max = \"1s\"\n{}\n",
                self.link(i).display(),
                self.specs[i].port_config
            );
        }
        toml += "\n";
        if !self.extra_config.contains("[store]") {
            // The tests read the store as the record of what arrived: keep every reading (the
            // gateway deletes readings the cloud has beyond the newest 100000 by default).
            toml += "[store]\nkeep_readings = 100000000\n\n";
        }
        if !self.extra_config.contains("[enrollment]") {
            // The tests' simulated nodes join as soon as they say HELLO (a site's default,
            // `window`, takes newcomers only while a technician has a window open).
            toml += "[enrollment]\npolicy = \"open\"\n\n";
        }
        toml += &self.extra_config;
        std::fs::write(self.config_path(), toml)?;
        Ok(())
    }

    pub fn spawn_node(&self, i: usize) -> Result<Proc> {
        let spec = &self.specs[i];
        let link = self.link(i);
        let mut cmd = Command::new(bin("outpost-node-sim"));
        cmd.arg("--pty")
            .arg(&link)
            .args(["--uid", &spec.uid, "--seed", &i.to_string()]);
        cmd.args(["--rate", &spec.rate_hz.to_string()]);
        if let Some(n) = spec.samples {
            cmd.args(["--samples", &n.to_string()]);
        }
        if let Some(n) = spec.garbage_every {
            cmd.args(["--inject-garbage-every", &n.to_string()]);
        }
        cmd.args(&spec.sim_args);
        if let Some(path) = &spec.stderr {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("{}", path.display()))?;
            cmd.stderr(file);
        }
        Proc::spawn_on_link(&format!("node {i}"), &mut cmd, &link)
    }

    pub fn start_gateway(&mut self) -> Result<()> {
        let mut cmd = Command::new(bin("outpost"));
        cmd.arg("run").arg("--config").arg(self.config_path());
        self.gateway = Some(Proc::spawn("gateway", &mut cmd)?);
        wait_for(Duration::from_secs(20), "the gateway's API", || {
            self.get("/api/v1/status").ok()
        })?;
        Ok(())
    }

    /// Stops the gateway with SIGTERM (20 s to exit cleanly) and starts it again on the same
    /// config and data; the nodes keep running.
    pub fn restart_gateway(&mut self) -> Result<()> {
        if let Some(gateway) = self.gateway.as_mut() {
            gateway.terminate(Duration::from_secs(20))?;
        }
        self.start_gateway()
    }

    /// The technician token in a drop-in (`outpost.d/50-api.toml`), as a site provisions it;
    /// [`Site::get`] and [`Site::post`] send it from then on.
    pub fn set_technician_token(&mut self, token: &str) -> Result<()> {
        let dropins = self.dir.path().join("outpost.d");
        std::fs::create_dir_all(&dropins)?;
        std::fs::write(
            dropins.join("50-api.toml"),
            format!("[api]\ntechnician_token = \"{token}\"\n"),
        )?;
        self.bearer = Some(token.into());
        Ok(())
    }

    /// Every node's stored `seq` values split into boots (a boot starts again at 1): each
    /// boot's must be exactly 1..=n, nothing lost or doubled, also across an update or a
    /// reboot. Returns how many samples that is.
    pub fn assert_seq_contiguous_per_boot(&self) -> Result<usize> {
        let mut total = 0;
        for (uid, seqs) in self.stored_seqs()? {
            let mut boots: Vec<Vec<i64>> = Vec::new();
            for seq in seqs {
                match boots.last_mut() {
                    Some(boot) if seq != 1 => boot.push(seq),
                    _ => boots.push(vec![seq]),
                }
            }
            for (i, boot) in boots.iter().enumerate() {
                let expected: Vec<i64> = (1..=boot.len() as i64).collect();
                anyhow::ensure!(
                    *boot == expected,
                    "node {uid}, boot {i}: seq not 1..={} (first gap near {:?})",
                    boot.len(),
                    boot.iter().zip(&expected).find(|(a, b)| a != b)
                );
                total += boot.len();
            }
        }
        Ok(total)
    }

    /// GET on the gateway's API, parsed as JSON.
    pub fn get(&self, path: &str) -> Result<serde_json::Value> {
        let (status, body) = http(self.api, "GET", path, self.bearer.as_deref(), None)?;
        if status != 200 {
            bail!(
                "GET {path}: status {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// POST of JSON on the gateway's API: the status and the answer as JSON (`null` if none).
    pub fn post(&self, path: &str, json: &str) -> Result<(u16, serde_json::Value)> {
        let (status, body) = http(self.api, "POST", path, self.bearer.as_deref(), Some(json))?;
        Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
    }

    /// Every batch the cloud can pull with `token` (`[uplink.pull]`), oldest first: its seq and
    /// its bytes; `None` while the API does not answer.
    pub fn pulled_batches(&self, token: &str) -> Option<Vec<(u64, Vec<u8>)>> {
        let (status, body) = http(
            self.api,
            "GET",
            "/api/v1/batches?after=0",
            Some(token),
            None,
        )
        .ok()?;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let index: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let mut batches = Vec::new();
        for info in index["batches"].as_array()? {
            let seq = info["seq"].as_u64()?;
            let (status, bytes) = http(
                self.api,
                "GET",
                &format!("/api/v1/batches/{seq}"),
                Some(token),
                None,
            )
            .ok()?;
            assert_eq!(status, 200, "batch {seq}");
            batches.push((seq, bytes));
        }
        Some(batches)
    }

    /// Every node's `seq` channel in store order, keyed by uid.
    pub fn stored_seqs(&self) -> Result<Vec<(String, Vec<i64>)>> {
        stored_seqs(&self.store_path())
    }

    /// Waits until every node has at least `n` samples stored.
    pub fn wait_for_samples(&self, n: usize, timeout: Duration) -> Result<()> {
        let count = self.specs.len();
        wait_for(
            timeout,
            &format!("{n} samples from each of {count} nodes"),
            || {
                let seqs = self.stored_seqs().ok()?;
                (seqs.len() == count && seqs.iter().all(|(_, s)| s.len() >= n)).then_some(())
            },
        )
    }
}

impl Site {
    /// Waits until the store holds at least `n` samples from node `uid` (for nodes that are not
    /// the site's simulated ones, e.g. an emulated board); returns how many it holds.
    pub fn wait_for_node_samples(&self, uid: &str, n: usize, timeout: Duration) -> Result<usize> {
        wait_for(timeout, &format!("{n} samples from node {uid}"), || {
            let seqs = self.stored_seqs().ok()?;
            let held = seqs.iter().find(|(u, _)| u == uid)?.1.len();
            (held >= n).then_some(held)
        })
    }
}

/// `seq` channel values per node uid, in the order the store holds them.
pub fn stored_seqs(store: &Path) -> Result<Vec<(String, Vec<i64>)>> {
    let conn =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut nodes = conn.prepare("SELECT id, uid FROM nodes ORDER BY uid")?;
    let nodes: Vec<(i64, String)> = nodes
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (id, uid) in nodes {
        let mut stmt = conn
            .prepare("SELECT value FROM readings WHERE node_id = ?1 AND channel = 4 ORDER BY id")?;
        let seqs = stmt
            .query_map([id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        out.push((uid, seqs));
    }
    Ok(out)
}

/// One reading as the cloud decoded it: source, channel, time, value (as text, exact: a decimal
/// as `{raw}e{exp}`, a float as its bits in hex).
pub type CloudReading = (String, String, i64, String);

/// Every reading in the store already sealed into a batch, as the cloud decodes it, sorted.
pub fn sealed_readings(store: &Path) -> Result<Vec<CloudReading>> {
    let conn =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = conn.prepare(
        "SELECT s.source, s.channel, s.exp, r.ts_ms, r.value FROM readings r JOIN series s ON s.id = r.series_id
         WHERE r.id <= (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'batches.last_reading_id')",
    )?;
    let mut out: Vec<CloudReading> = stmt
        .query_map([], |r| {
            let exp: Option<i64> = r.get(2)?;
            let value = match exp {
                Some(exp) => format!("{}e{exp}", r.get::<_, i64>(4)?),
                None => format!("{:x}", r.get::<_, f64>(4)?.to_bits()),
            };
            Ok((r.get(0)?, r.get(1)?, r.get(3)?, value))
        })?
        .collect::<Result<_, _>>()?;
    out.sort();
    Ok(out)
}

/// Readings in the store not sealed into a batch (yet): `(node readings, device readings)`.
pub fn unsealed_readings(store: &Path) -> Result<(u64, u64)> {
    let conn =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn.query_row(
        "SELECT count(node_id), count(*) - count(node_id) FROM readings
         WHERE id > (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'batches.last_reading_id')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// Asserts `seqs` is exactly `1..=n` for some n >= `at_least`: no gap, no duplicate, in order.
pub fn assert_contiguous(uid: &str, seqs: &[i64], at_least: usize) {
    assert!(
        seqs.len() >= at_least,
        "node {uid}: only {} samples stored, expected {at_least}",
        seqs.len()
    );
    for (i, &s) in seqs.iter().enumerate() {
        assert_eq!(
            s,
            i as i64 + 1,
            "node {uid}: sample {} holds seq {s}: a gap or a duplicate",
            i + 1
        );
    }
}

/// A minimal HTTP/1.0 GET, enough for the gateway's JSON API.
pub fn http_get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let (status, body) = http(addr, "GET", path, None, None)?;
    if status != 200 {
        bail!(
            "GET {path}: status {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(serde_json::from_slice(&body)?)
}

/// A minimal HTTP/1.0 request: returns the status code and the body bytes.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json: Option<&str>,
) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(token) = bearer {
        request += &format!("Authorization: Bearer {token}\r\n");
    }
    match json {
        Some(body) => {
            request += &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        None => request += "\r\n",
    }
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP header end")?;
    let head = String::from_utf8_lossy(&response[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    Ok((status, response[end + 4..].to_vec()))
}

/// Stops a container that did not power off, by the PID of its systemd-nspawn: SIGTERM first,
/// which halts the container cleanly; SIGKILL only if that takes more than 30 s (killing nspawn
/// outright leaves the container's systemd and everything under it running).
pub fn halt_container(nspawn: &mut std::process::Child) {
    let pid = Pid::from_raw(i32::try_from(nspawn.id()).unwrap_or(i32::MAX));
    let _ = kill(pid, Signal::SIGTERM);
    let asked = std::time::Instant::now();
    while asked.elapsed() < Duration::from_secs(30) {
        if matches!(nspawn.try_wait(), Ok(Some(_)) | Err(_)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nspawn.kill();
    let _ = nspawn.wait();
}

/// `n` TCP connections to `addr` from 127.0.0.2 that never send a byte, opened concurrently
/// (those never accepted time out after 10 s and are not returned): a hostile client's flood.
pub async fn idle_flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind("127.0.0.2:0".parse().unwrap()).ok()?;
            let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
                .await
                .ok()?
                .ok()?;
            stream.into_std().ok()
        }));
    }
    let mut streams = Vec::new();
    for task in tasks {
        if let Ok(Some(stream)) = task.await {
            streams.push(stream);
        }
    }
    streams
}

/// Raises this test process's soft open-file limit to its hard limit (a flood holds thousands
/// of sockets).
pub fn raise_open_file_limit() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// Starts `command` with this open-file limit (what a unit's `LimitNOFILE=` does).
pub fn limit_open_files(command: &mut Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// The newest stored `seq` reading's timestamp (Unix ms), 0 when none.
pub fn newest_reading_ms(store: &Path) -> Result<i64> {
    let conn =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn.query_row(
        "SELECT coalesce(max(ts_ms), 0) FROM readings WHERE channel = 4",
        [],
        |r| r.get(0),
    )?)
}

/// A node's latest HEALTH report as stored: when it arrived, and its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthRow {
    pub ts_ms: i64,
    pub retransmits: i64,
    pub dropped_samples: i64,
}

/// The latest HEALTH of the node `uid`, if it sent one.
pub fn latest_health(store: &Path, uid: &str) -> Result<Option<HealthRow>> {
    use rusqlite::OptionalExtension;
    let conn =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn
        .query_row(
            "SELECT h.ts_ms, h.retransmits, h.dropped_samples FROM health h
             JOIN nodes n ON n.id = h.node_id WHERE n.uid = ?1
             ORDER BY h.ts_ms DESC, h.rowid DESC LIMIT 1",
            [uid],
            |r| {
                Ok(HealthRow {
                    ts_ms: r.get(0)?,
                    retransmits: r.get(1)?,
                    dropped_samples: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// Unix time now, in milliseconds.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// CPU time (user + system) process `pid` has used, in seconds, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz as f64
}

/// [`cpu_seconds`] plus the CPU of the children it has waited for (cutime, cstime).
pub fn cpu_seconds_with_children(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11..15]
        .iter()
        .map(|f| f.parse::<u64>().unwrap())
        .sum();
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz as f64
}

/// `promtool check metrics` on `text`: its complaints, or nothing.
pub fn promtool_check(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian package prometheus, installed by scripts/test.sh)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics refused the exposition ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
