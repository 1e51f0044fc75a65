//! The `outpost` binary as systemd and the package use it: `check --self-test`, `man`, and
//! `run` under a notify socket (READY=1 only once the API answers, WATCHDOG=1 pings, STOPPING=1).

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_e2e::{Proc, free_port, http_get_json};

fn outpost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
}

#[test]
fn self_test_prints_one_ok_line_per_check_and_exits_zero() {
    let start = Instant::now();
    let out = outpost().args(["check", "--self-test"]).output().unwrap();
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["store", "zstd", "tls", "serial"], "{stdout}");
    for line in &lines {
        assert_eq!(line.split_whitespace().nth(1), Some("OK"), "{line}");
    }
    // Well under a second in itself; the bound leaves room for a loaded test machine.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn self_test_with_a_config_checks_the_config_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, "[gateway]\nid = \"cli-test\"\nbogus = 1\n").unwrap();
    let out = outpost()
        .args(["check", "--self-test", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bogus"), "{stderr}");
}

#[test]
fn man_prints_one_roff_page_with_every_command() {
    let out = outpost().arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH outpost 1"), "{page}");
    for command in [
        "outpost run",
        "outpost check",
        "outpost demo",
        "outpost batch decode",
        "outpost dict train",
    ] {
        assert!(page.contains(&format!(".SS {command}\n")), "no {command}");
    }
    assert!(
        page.contains("self\\-test"),
        "the check options are described"
    );
    assert!(
        !page.contains("outpost man"),
        "the man command stays hidden"
    );
    assert!(
        !page.contains("outpost\\-run(1)"),
        "no references to pages not shipped"
    );
}

#[test]
fn man_is_not_listed_in_help() {
    let out = outpost().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        !help.lines().any(|l| l.trim_start().starts_with("man ")),
        "{help}"
    );
}

/// A gateway config with no ports: the API on `api`, the store under `dir`.
fn write_config(dir: &Path, api: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("outpost.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nid = \"cli-test\"\ndata_dir = \"{}\"\n\n[api]\nlisten = \"{api}\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// The next datagram on `socket`, as text, or `None` after `timeout`.
fn next_notification(socket: &UnixDatagram, timeout: Duration) -> Option<String> {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn run_says_ready_only_once_the_api_answers_then_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).unwrap();
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = write_config(dir.path(), api);

    let mut cmd = outpost();
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null());
    let mut gateway = Proc::spawn("gateway", &mut cmd).unwrap();

    // Everything before READY=1 is a status line; READY=1 comes with the API answering.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = next_notification(&socket, left).expect("READY=1 within 30 s");
        if message.lines().any(|l| l == "READY=1") {
            break message;
        }
        assert!(
            message.lines().all(|l| l.starts_with("STATUS=")),
            "before READY=1: {message:?}"
        );
    };
    let status = http_get_json(api, "/api/v1/status").expect("the API answers at READY=1");
    assert_eq!(status["gateway_id"], "cli-test");
    assert!(
        ready.contains(&format!(
            "STATUS=API on {api}; polling 0 serial ports, 0 Modbus devices"
        )),
        "{ready:?}"
    );

    // WATCHDOG_USEC=200000: a ping every 100 ms. Over 2 s, allow for a loaded machine.
    let window = Instant::now() + Duration::from_secs(2);
    let (mut pings, mut others) = (0, Vec::new());
    while Instant::now() < window {
        match next_notification(&socket, Duration::from_millis(500)) {
            Some(m) if m == "WATCHDOG=1\n" => pings += 1,
            // A tick made late by a loaded machine withholds its ping and says why.
            Some(m) => others.push(m),
            None => break,
        }
    }
    assert!(
        pings >= 10,
        "{pings} watchdog pings in 2 s; also {others:?}"
    );

    nix::sys::signal::kill(gateway.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopping = loop {
        let m = next_notification(&socket, Duration::from_secs(10)).expect("STOPPING=1");
        if m.lines().any(|l| l == "STOPPING=1") {
            break m;
        }
    };
    assert!(stopping.contains("STATUS=stopping"), "{stopping:?}");
    let exit = gateway.terminate(Duration::from_secs(15)).unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// Runs the gateway until its API answers, then stops it; returns what it wrote to stdout and
/// stderr.
fn run_briefly(dir: &Path, env: &[(&str, String)], stderr: std::fs::File) -> (String, String) {
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = write_config(dir, api);
    let (stdout_path, stderr_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut cmd = outpost();
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("JOURNAL_STREAM")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(stderr);
    let mut gateway = Proc::spawn("gateway", &mut cmd).unwrap();
    outpost_e2e::wait_for(Duration::from_secs(30), "the API", || {
        http_get_json(api, "/api/v1/status").ok()
    })
    .unwrap();
    let exit = gateway.terminate(Duration::from_secs(15)).unwrap();
    assert!(exit.success(), "{exit:?}");
    (
        std::fs::read_to_string(stdout_path).unwrap(),
        std::fs::read_to_string(stderr_path).unwrap_or_default(),
    )
}

#[test]
fn run_without_systemd_logs_text_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    // A JOURNAL_STREAM inherited from a parent whose stderr was the journal: not ours.
    let (stdout, stderr) = run_briefly(dir.path(), &[("JOURNAL_STREAM", "1:1".into())], stderr);
    assert!(stdout.contains("Outpost starting."), "{stdout}");
    assert!(!stderr.contains("journald"), "{stderr}");
}

#[test]
fn run_logs_to_journald_when_stderr_is_the_journal_stream() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let meta = stderr.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let (stdout, stderr) = run_briefly(dir.path(), &[("JOURNAL_STREAM", stream)], stderr);
    if Path::new("/run/systemd/journal/socket").exists() {
        assert!(
            !stdout.contains("Outpost starting."),
            "went to the journal: {stdout}"
        );
    } else {
        // No journald on this machine: detected, tried, and said so before logging as text.
        assert!(stderr.contains("cannot reach journald"), "{stderr}");
        assert!(stdout.contains("Outpost starting."), "{stdout}");
    }
}
