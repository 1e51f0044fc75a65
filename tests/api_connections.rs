//! End-to-end: the local API under a hostile client, on the real daemon. Idle connections beyond
//! the cap do not keep a fresh client out (the flood's own connections are closed for it, counted
//! and logged); a request head sent by halves is cut off after `api.header_timeout`; with few file
//! descriptors the daemon raises its limit, caps connections below it and still answers; only the
//! gateway's own names are answered in `Host:` (DNS rebinding).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_e2e::{Proc, Site, bin, wait_for};

/// A gateway with no nodes, `api` settings in a drop-in, its log in a file.
struct Gateway {
    site: Site,
    proc: Option<Proc>,
}

impl Gateway {
    fn start(api: &str, limit: Option<(u64, u64)>) -> Gateway {
        let site = Site::with_config(Vec::new(), "").unwrap();
        let dropins = site.dir.path().join("outpost.d");
        std::fs::create_dir_all(&dropins).unwrap();
        std::fs::write(dropins.join("10-api.toml"), format!("[api]\n{api}\n")).unwrap();
        let log = File::create(site.dir.path().join("gateway.log")).unwrap();
        let mut cmd = Command::new(bin("outpost"));
        cmd.arg("run")
            .arg("--config")
            .arg(site.config_path())
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if let Some((soft, hard)) = limit {
            outpost_e2e::limit_open_files(&mut cmd, soft, hard);
        }
        let proc = Proc::spawn("gateway", &mut cmd).unwrap();
        let gateway = Gateway {
            site,
            proc: Some(proc),
        };
        wait_for(Duration::from_secs(20), "the gateway's API", || {
            (gateway
                .get("/api/v1/status", Some(&gateway.site.api.to_string()))
                .0
                == 200)
                .then_some(())
        })
        .unwrap();
        gateway
    }

    fn addr(&self) -> SocketAddr {
        self.site.api
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.site.dir.path().join("gateway.log")).unwrap_or_default()
    }

    fn get(&self, path: &str, host: Option<&str>) -> (u16, String) {
        request(self.addr(), &format!("GET {path} HTTP/1.1"), host, "")
    }

    fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/api/v1/status", Some(&self.addr().to_string()));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            let _ = proc.terminate(Duration::from_secs(20));
        }
    }
}

/// One request with `Connection: close` (and the `Host:` given, if any): status and body.
fn request(addr: SocketAddr, line: &str, host: Option<&str>, extra: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut text = format!("{line}\r\n");
    if let Some(host) = host {
        text += &format!("Host: {host}\r\n");
    }
    text += extra;
    text += "Connection: close\r\n\r\n";
    if stream.write_all(text.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `n` connections from 127.0.0.2 that never send a byte, opened concurrently (those the
/// daemon never accepts time out after 10 s and are not returned).
fn idle_flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    outpost_e2e::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(outpost_e2e::idle_flood(addr, n))
}

/// How many of `streams` the daemon closed (EOF or reset), after waiting a little.
fn closed_by_server(streams: &[TcpStream]) -> usize {
    std::thread::sleep(Duration::from_millis(500));
    streams
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 1];
            match (&mut &**s).read(&mut byte) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != ErrorKind::WouldBlock,
            }
        })
        .count()
}

/// A fresh client from 127.0.0.1: `/api/v1/status` and how long it took.
fn fresh_client(gateway: &Gateway) -> (u16, Duration) {
    let start = Instant::now();
    let (code, body) = gateway.get("/api/v1/status", Some(&gateway.addr().to_string()));
    assert!(code == 200 || code == 0, "{code}: {body}");
    (code, start.elapsed())
}

#[test]
fn idle_connections_beyond_the_cap_do_not_keep_a_fresh_client_out() {
    let gateway = Gateway::start("max_connections = 64\nidle_timeout = \"5m\"", None);
    let flood = idle_flood(gateway.addr(), 64 * 4);
    assert_eq!(flood.len(), 256, "every flood connection was accepted");

    let (code, took) = fresh_client(&gateway);
    assert_eq!(code, 200, "the fresh client was not answered");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // The flood only pushed out its own: at most its share (48 of 64) is left open.
    let closed = closed_by_server(&flood);
    assert!(
        closed >= 256 - 48,
        "{closed} of 256 flood connections closed"
    );
    let api = &gateway.status()["api"];
    assert_eq!(api["max_connections"], 64, "{api}");
    assert!(api["open"].as_u64().unwrap() <= 64, "{api}");
    assert!(api["evicted"].as_u64().unwrap() >= 256 - 48, "{api}");
    let log = gateway.log();
    assert!(
        log.contains("an idle connection was closed for a new one"),
        "{log}"
    );
    drop(flood);
}

#[test]
fn a_request_head_sent_by_halves_is_cut_off_after_the_header_timeout() {
    let gateway = Gateway::start("header_timeout = \"2s\"", None);
    let mut slow = TcpStream::connect(gateway.addr()).unwrap();
    slow.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    let ended = slow.read_to_end(&mut rest);
    let took = start.elapsed();
    assert!(
        ended.is_ok()
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "still open after {took:?}: {ended:?}"
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let api = &gateway.status()["api"];
    assert_eq!(api["header_timeouts"], 1, "{api}");
    assert!(gateway.log().contains("did not arrive in time"));
}

#[test]
fn with_few_descriptors_the_daemon_caps_connections_below_them_and_still_answers() {
    // Soft and hard limit both 256: nothing to raise, the cap sizes itself under it.
    let gateway = Gateway::start("", Some((256, 256)));
    let flood = idle_flood(gateway.addr(), 1100);
    let (code, took) = fresh_client(&gateway);
    assert_eq!(code, 200, "the fresh client was not answered");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let api = &gateway.status()["api"];
    let cap = api["max_connections"].as_u64().unwrap();
    assert!((128..256).contains(&cap), "{api}");
    assert!(api["open"].as_u64().unwrap() <= cap, "{api}");
    assert!(api["evicted"].as_u64().unwrap() > 0, "{api}");
    let log = gateway.log();
    assert!(
        log.contains("capped below api.max_connections by the open-file limit"),
        "{log}"
    );
    drop(flood);
}

#[test]
fn the_daemon_raises_its_soft_descriptor_limit_to_the_hard_one_and_says_so() {
    let gateway = Gateway::start("", Some((256, 4096)));
    let log = gateway.log();
    let line = log
        .lines()
        .find(|l| l.contains("Open-file limit."))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("soft_at_start=256")
            && line.contains("soft=4096")
            && line.contains("hard=4096"),
        "{line}"
    );
    let api = &gateway.status()["api"];
    assert_eq!(api["max_connections"], 512, "{api}");
}

#[test]
fn only_the_gateways_own_names_are_answered() {
    let gateway = Gateway::start("allowed_hosts = [\"gw.site.example\"]", None);
    let port = gateway.addr().port();
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "gw.site.example".to_owned(),
        format!("GW.Site.Example:{port}"),
    ] {
        let (code, body) = gateway.get("/api/v1/status", Some(&host));
        assert_eq!(code, 200, "Host: {host}: {body}");
    }
    // A page on evil.example whose name now resolves to the gateway, read by a browser.
    let (code, body) = request(
        gateway.addr(),
        "GET /api/v1/status HTTP/1.1",
        Some(&format!("evil.example:{port}")),
        &format!(
            "User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: */*\r\nOrigin: http://evil.example:{port}\r\nReferer: http://evil.example:{port}/\r\n"
        ),
    );
    assert_eq!(code, 421, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("allowed_hosts"),
        "{error}"
    );
    assert!(!body.contains("gateway_id"), "{body}");
    // Every endpoint, and a request without Host (HTTP/1.0).
    for (line, host) in [
        ("GET /api/v1/nodes HTTP/1.1", Some("evil.example")),
        ("GET /api/v1/batches HTTP/1.1", Some("evil.example")),
        ("GET /api/v1/status HTTP/1.1", Some("192.168.1.20")),
        ("GET /api/v1/status HTTP/1.0", None),
        (
            "GET http://evil.example/api/v1/status HTTP/1.1",
            Some("localhost"),
        ),
    ] {
        let (code, body) = request(gateway.addr(), line, host, "");
        assert_eq!(code, 421, "{line} Host {host:?}: {body}");
    }
    let api = &gateway.status()["api"];
    assert_eq!(api["misdirected"], 6, "{api}");
    assert!(gateway.log().contains("Host is not a name of this gateway"));
}
