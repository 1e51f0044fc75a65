//! The real [`Host`]: dpkg, systemctl and the daemon's local API, one command or request per
//! method. Run as root by `outpost-update.service`.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outpost_proto::Millis;

use super::apply::{DebFields, Host};
use outpost_core::update::agent::Probe;

/// How long one API request may take (connect, and each read).
const API_TIMEOUT: Duration = Duration::from_secs(3);

/// This machine.
#[derive(Debug)]
pub struct System {
    started: Instant,
    /// The systemd unit of the daemon, e.g. `outpost.service`.
    service: String,
    /// Where the daemon's API answers.
    api: SocketAddr,
    /// dpkg's output goes here (one file per run, appended).
    dpkg_log: PathBuf,
}

/// A running `dpkg -i`.
#[derive(Debug)]
pub struct DpkgRun {
    child: Child,
    /// Where the log of this run begins.
    log_from: u64,
}

impl System {
    /// `api` is the daemon's `[api] listen` address; an unspecified one (`0.0.0.0`, `::`) is
    /// reached on loopback.
    #[must_use]
    pub fn new(service: &str, api: SocketAddr, dpkg_log: PathBuf) -> System {
        let ip = match api.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        System {
            started: Instant::now(),
            service: service.to_owned(),
            api: SocketAddr::new(ip, api.port()),
            dpkg_log,
        }
    }

    fn systemctl(&self, args: &[&str]) {
        let output = Command::new("systemctl")
            .args(args)
            .arg(&self.service)
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(o) if o.status.success() => {}
            Ok(o) => tracing::warn!(message = "systemctl failed.", ?args, status = %o.status,
                stderr = %String::from_utf8_lossy(&o.stderr).trim()),
            Err(error) => tracing::warn!(message = "Cannot run systemctl.", ?args, %error),
        }
    }

    /// `GET /api/v1/status` → its `version`.
    fn api_version(&self) -> Result<String, String> {
        let mut stream = TcpStream::connect_timeout(&self.api, API_TIMEOUT)
            .map_err(|e| format!("{}: {e}", self.api))?;
        stream
            .set_read_timeout(Some(API_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let request = format!(
            "GET /api/v1/status HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
            self.api
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("sending the request: {e}"))?;
        let mut response = Vec::new();
        stream
            .take(1024 * 1024)
            .read_to_end(&mut response)
            .map_err(|e| format!("reading the answer: {e}"))?;
        parse_status_version(&response)
    }
}

/// The `version` in an HTTP response to `GET /api/v1/status`.
fn parse_status_version(response: &[u8]) -> Result<String, String> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP answer")?;
    let head = String::from_utf8_lossy(&response[..end]);
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("status {status}"));
    }
    let body: serde_json::Value =
        serde_json::from_slice(&response[end + 4..]).map_err(|e| format!("not JSON: {e}"))?;
    body.get("version")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "no version in the status".to_owned())
}

fn command_output(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8(output.stdout).map_err(|_| format!("{program}: output is not UTF-8"))
}

/// The last `n` lines of `path` from byte `from` on.
fn log_tail(path: &Path, from: u64, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(0).min(text.len());
    let text = String::from_utf8_lossy(&text[from..]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

impl Host for System {
    type Install = DpkgRun;

    fn now(&self) -> Millis {
        Millis(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn sleep(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn installed_version(&mut self, package: &str) -> Option<String> {
        let out = command_output(
            "dpkg-query",
            &["-W", "-f=${db:Status-Abbrev}|${Version}", package],
        )
        .ok()?;
        let (status, version) = out.split_once('|')?;
        // "ii ": wanted install, installed (configured), no error.
        (status.trim_end() == "ii" && !version.is_empty()).then(|| version.to_owned())
    }

    fn architecture(&mut self) -> Result<String, String> {
        command_output("dpkg", &["--print-architecture"]).map(|s| s.trim().to_owned())
    }

    fn is_newer(&mut self, version: &str, than: &str) -> bool {
        Command::new("dpkg")
            .args(["--compare-versions", version, "gt", than])
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn deb_fields(&mut self, deb: &Path) -> Result<DebFields, String> {
        let path = deb.to_str().ok_or("the path is not UTF-8")?;
        let out = command_output(
            "dpkg-deb",
            &["-f", path, "Package", "Version", "Architecture"],
        )?;
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                .map(str::to_owned)
                .ok_or_else(|| format!("no {name} field"))
        };
        Ok(DebFields {
            package: field("Package")?,
            version: field("Version")?,
            architecture: field("Architecture")?,
        })
    }

    fn repack(&mut self, package: &str, dir: &Path) -> Result<PathBuf, String> {
        let before: Vec<PathBuf> = list(dir);
        let status = Command::new("dpkg-repack")
            .arg(package)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => "dpkg-repack is not installed".to_owned(),
                _ => format!("cannot run dpkg-repack: {e}"),
            })?;
        if !status.status.success() {
            return Err(format!(
                "dpkg-repack failed: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            ));
        }
        list(dir)
            .into_iter()
            .find(|p| !before.contains(p) && p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| "dpkg-repack made no .deb".to_owned())
    }

    fn start_install(&mut self, deb: &Path) -> Result<DpkgRun, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.dpkg_log)
            .map_err(|e| format!("cannot open {}: {e}", self.dpkg_log.display()))?;
        let log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let err = log.try_clone().map_err(|e| e.to_string())?;
        // Unattended: the installer's edited conffiles are kept (confold), new defaults taken
        // where nothing was edited (confdef); no prompts.
        let child = Command::new("dpkg")
            .args(["--force-confdef", "--force-confold", "-i"])
            .arg(deb)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run dpkg: {e}"))?;
        Ok(DpkgRun { child, log_from })
    }

    fn poll_install(&mut self, install: &mut DpkgRun) -> Option<Result<(), String>> {
        match install.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) if status.success() => Some(Ok(())),
            Ok(Some(status)) => Some(Err(format!(
                "{status}: {}",
                log_tail(&self.dpkg_log, install.log_from, 6)
            ))),
            Err(e) => Some(Err(format!("cannot wait for dpkg: {e}"))),
        }
    }

    fn probe(&mut self) -> Probe {
        let show = command_output(
            "systemctl",
            &[
                "show",
                "--property=ActiveState",
                "--property=InvocationID",
                &self.service,
            ],
        )
        .unwrap_or_default();
        let property = |name: &str| {
            show.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_default()
                .to_owned()
        };
        let active_state = match property("ActiveState") {
            s if s.is_empty() => "unknown".to_owned(),
            s => s,
        };
        Probe {
            active_state,
            invocation: property("InvocationID"),
            api: self.api_version(),
        }
    }

    fn hold_service(&mut self) {
        // Masked for this boot only (/run): a reboot cannot leave the gateway without its
        // daemon. Then stopped, which cancels the start dpkg's postinst waits for.
        self.systemctl(&["mask", "--runtime"]);
        self.systemctl(&["stop", "--no-block"]);
    }

    fn release_service(&mut self) {
        self.systemctl(&["unmask", "--runtime"]);
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_a_status_answer() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"gateway_id\":\"g\",\"version\":\"0.2.0\"}";
        assert_eq!(parse_status_version(ok), Ok("0.2.0".into()));
        let busy = b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"error\":\"store\"}";
        assert_eq!(parse_status_version(busy), Err("status 503".into()));
        assert!(parse_status_version(b"HTTP/1.1 200 OK\r\n\r\n{}").is_err());
        assert!(parse_status_version(b"garbage").is_err());
    }

    #[test]
    fn an_unspecified_api_address_is_probed_on_loopback() {
        let system = System::new(
            "outpost.service",
            "0.0.0.0:8080".parse().unwrap(),
            "/x".into(),
        );
        assert_eq!(system.api, "127.0.0.1:8080".parse().unwrap());
        let system = System::new("outpost.service", "[::]:9000".parse().unwrap(), "/x".into());
        assert_eq!(system.api, "[::1]:9000".parse().unwrap());
    }

    #[test]
    fn the_tail_of_a_dpkg_log_is_its_last_lines_of_this_run() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dpkg.log");
        std::fs::write(&log, "old run\n\nSelecting\nUnpacking\nerror: disk full\n").unwrap();
        assert_eq!(log_tail(&log, 8, 2), "Unpacking | error: disk full");
    }
}
