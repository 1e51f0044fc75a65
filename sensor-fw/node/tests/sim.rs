//! The simulator end to end: a `SimNode` on a real pseudo-terminal, and a minimal gateway in
//! the test on the other end of it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use outpost_node::LinkState;
use outpost_node::sim::{SimConfig, SimNode};
use outpost_proto::{Accept, Ack, ChannelId, FrameDecoder, Message, Reading, Telemetry};

mod common;
use common::GatewayEnd;

const UID: [u8; 8] = [0x5E, 0x50, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01];

/// A fresh path for a pty link, removed by the test.
fn link_path(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("outpost-sim-{}-{n}-{name}", std::process::id()))
}

fn fast(samples: u32) -> SimConfig {
    let mut config = SimConfig::new(UID);
    config.seed = 11;
    config.sample_interval = Duration::from_millis(20);
    config.sample_limit = Some(samples);
    config
}

/// The gateway's side of the contract, just enough for these tests: answer HELLO with
/// ACCEPT, store TELEMETRY with `seq == last + 1`, ACK cumulatively.
struct MiniGateway {
    port: File,
    decoder: FrameDecoder,
    session: Option<u32>,
    last: u32,
    stored: Vec<Telemetry>,
    public_key: Option<[u8; 32]>,
    /// The handshake and the seals, as the real gateway does them.
    end: GatewayEnd,
}

impl MiniGateway {
    fn open(path: &Path) -> MiniGateway {
        let port = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags((OFlag::O_NOCTTY | OFlag::O_NONBLOCK).bits())
            .open(path)
            .unwrap();
        let mut termios = tcgetattr(&port).unwrap();
        cfmakeraw(&mut termios);
        tcsetattr(&port, SetArg::TCSANOW, &termios).unwrap();
        MiniGateway::on(port)
    }

    fn on(port: File) -> MiniGateway {
        MiniGateway {
            port,
            decoder: FrameDecoder::new(),
            session: None,
            last: 0,
            stored: Vec::new(),
            public_key: None,
            end: GatewayEnd::default(),
        }
    }

    /// A gateway process that restarts: same database (`last`), new port and session.
    fn reopen(self, path: &Path) -> MiniGateway {
        let last = self.last;
        let stored = self.stored;
        drop(self.port);
        MiniGateway {
            last,
            stored,
            ..MiniGateway::open(path)
        }
    }

    fn send(&mut self, message: &Message) {
        let frame = self.end.frame(message);
        self.port.write_all(&frame).unwrap();
    }

    /// Serves the line until `done` holds or `timeout` passes; returns whether `done` held.
    fn serve(&mut self, timeout: Duration, done: impl Fn(&MiniGateway) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        while !done(self) {
            if Instant::now() > deadline {
                return false;
            }
            let mut fds = [PollFd::new(self.port.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(50u8)).unwrap();
            let n = match self.port.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("reading the pty: {e}"),
            };
            for &byte in &buf[..n] {
                if let Some(Ok(received)) = self.decoder.push(byte) {
                    let (message, answer) = self.end.receive(received);
                    if let Some(answer) = answer {
                        self.port.write_all(&answer).unwrap();
                    }
                    if let Some(message) = message {
                        self.handle(message);
                    }
                }
            }
        }
        true
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Hello(hello) => assert_eq!(hello.uid, UID),
            Message::Proof(proof) if self.end.has_session() => {
                self.session = Some(proof.boot_id);
                self.send(&Message::Accept(Accept {
                    boot_id: proof.boot_id,
                    ack_upto: self.last,
                }));
            }
            Message::Enroll(enroll) => self.public_key = Some(enroll.public_key),
            Message::Telemetry(t) => {
                let Some(boot_id) = self.session else { return };
                if t.seq == self.last + 1 {
                    self.last = t.seq;
                    self.stored.push(t);
                }
                self.send(&Message::Ack(Ack {
                    boot_id,
                    upto: self.last,
                }));
            }
            _ => {}
        }
    }

    fn seqs(&self) -> Vec<u32> {
        self.stored.iter().map(|t| t.seq).collect()
    }
}

fn value(t: &Telemetry, channel: ChannelId) -> i32 {
    let reading: &Reading = t.readings.iter().find(|r| r.channel == channel).unwrap();
    reading.value
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_simulated_node_on_a_pty_delivers_plausible_samples_contiguously() {
    let link = link_path("deliver");
    std::os::unix::fs::symlink("/dev/null/stale", &link).unwrap(); // left by a killed run
    let node = SimNode::spawn_on_pty(fast(25), &link).unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), node.slave_path());

    let mut gateway = MiniGateway::open(&link);
    assert!(gateway.serve(Duration::from_secs(20), |g| g.last == 25));
    assert_eq!(gateway.seqs(), (1..=25).collect::<Vec<_>>());
    assert_eq!(gateway.public_key, Some(node.public_key()));
    for t in &gateway.stored {
        let celsius = f64::from(value(t, ChannelId::TEMPERATURE)) / 100.0;
        assert!((-40.0..=125.0).contains(&celsius), "temperature {celsius}");
        let humidity = f64::from(value(t, ChannelId::HUMIDITY)) / 100.0;
        assert!((0.0..=100.0).contains(&humidity), "humidity {humidity}");
        assert!((87_000..=108_500).contains(&value(t, ChannelId::PRESSURE)));
        assert_eq!(value(t, ChannelId::SEQ), t.seq as i32);
    }

    wait_for("the ring to drain", Duration::from_secs(5), || {
        node.status().held == 0
    });
    let status = node.status();
    assert_eq!(status.state, LinkState::Accepted);
    assert!(status.sampling_done && status.peer, "{status:?}");
    node.stop().unwrap();
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the link is removed on stop"
    );
}

#[test]
fn a_gateway_that_closes_and_reopens_the_port_gets_the_rest_without_gap() {
    let link = link_path("reopen");
    let node = SimNode::spawn_on_pty(fast(150), &link).unwrap();
    sleep(Duration::from_millis(200)); // nobody listens yet: the node talks into the void

    let gateway = {
        let mut gateway = MiniGateway::open(&link);
        assert!(gateway.serve(Duration::from_secs(10), |g| g.last >= 20));
        gateway
    };
    // The gateway goes away (port closed) and comes back as a new process: it ignores
    // TELEMETRY until the node, timed out, says HELLO again.
    let mut gateway = {
        let closed = gateway;
        sleep(Duration::from_millis(300));
        closed.reopen(&link)
    };
    assert!(gateway.serve(Duration::from_secs(20), |g| g.last == 150));
    assert_eq!(gateway.seqs(), (1..=150).collect::<Vec<_>>());
    drop(node);
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "Drop removes the link"
    );
}

#[test]
fn a_simulated_node_runs_on_an_existing_port() {
    // The test holds a pty master as "the far end of the cable"; the node opens the slave.
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave_path = nix::unistd::ttyname(&pty.slave).unwrap();
    let master = File::from(pty.master);
    nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let node = SimNode::spawn_on_port(fast(10), &slave_path).unwrap();
    drop(pty.slave);
    assert_eq!(node.slave_path(), slave_path);
    assert_eq!(node.link_path(), None);

    let mut gateway = MiniGateway::on(master);
    assert!(gateway.serve(Duration::from_secs(20), |g| g.last == 10));
    assert_eq!(gateway.seqs(), (1..=10).collect::<Vec<_>>());
    node.stop().unwrap();
}

#[test]
fn injected_garbage_costs_the_gateway_decode_errors_but_no_sample() {
    let link = link_path("garbage");
    let mut config = fast(30);
    config.inject_garbage_every = Some(4);
    let node = SimNode::spawn_on_pty(config, &link).unwrap();
    let mut gateway = MiniGateway::open(&link);
    assert!(gateway.serve(Duration::from_secs(20), |g| g.last == 30));
    assert_eq!(gateway.seqs(), (1..=30).collect::<Vec<_>>());
    assert!(
        gateway.decoder.counters().errors >= 2 * 7,
        "{:?}",
        gateway.decoder.counters()
    );
    node.stop().unwrap();
}

#[test]
fn the_binary_publishes_its_pty_and_removes_the_link_on_sigterm() {
    let link = link_path("binary");
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost-node-sim"))
        .arg("--pty")
        .arg(&link)
        .args([
            "--uid",
            "5e50000000000001",
            "--rate",
            "50",
            "--samples",
            "10",
        ])
        .args([
            "--channels",
            "temperature,seq",
            "--fw",
            "2.3.4",
            "--lot",
            "L-9",
        ])
        .spawn()
        .unwrap();
    wait_for("the pty link", Duration::from_secs(10), || {
        std::fs::symlink_metadata(&link).is_ok()
    });
    let mut gateway = MiniGateway::open(&link);
    assert!(gateway.serve(Duration::from_secs(20), |g| g.last == 10));
    assert!(gateway.stored.iter().all(|t| t.readings.len() == 2));

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(std::fs::symlink_metadata(&link).is_err());
}

#[test]
fn the_binary_rejects_a_bad_uid_and_names_the_problem() {
    let output = Command::new(env!("CARGO_BIN_EXE_outpost-node-sim"))
        .args(["--pty", "/nonexistent/x", "--uid", "12345"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("16 hex digits"), "{stderr}");
}
