//! Booting the Debian package in a real system: a minimal Debian root made by debootstrap once
//! (cached under target/nspawn-cache/, ~45 s, ~240 MB), a throwaway copy per test, booted with
//! systemd-nspawn. Shared by tests/install.rs and tests/self_update.rs.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
#[must_use]
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// Runs a command, panicking with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Why this machine cannot boot a container from `root` with `extra` nspawn options, if it
/// cannot.
#[must_use]
pub fn unavailable(root: &Path, extra: &[&str]) -> Option<String> {
    let probe = Command::new("systemd-nspawn")
        .args(["-q", "--register=no", "--keep-unit"])
        .args(extra)
        .arg("-D")
        .arg(root)
        .arg("/bin/true")
        .stdin(Stdio::null())
        .output();
    match probe {
        Err(e) => Some(format!(
            "systemd-nspawn cannot be run ({e}): apt-get install systemd-container"
        )),
        Ok(o) if !o.status.success() => Some(format!(
            "systemd-nspawn cannot start a container here ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// target/nspawn-cache/bookworm-amd64 (or `$OUTPOST_NSPAWN_CACHE`): made by debootstrap on first
/// use, reused after. Several test processes may ask at once: the first builds, the others wait
/// on the lock file.
#[must_use]
pub fn cached_root() -> PathBuf {
    let cache = std::env::var_os("OUTPOST_NSPAWN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/nspawn-cache"));
    std::fs::create_dir_all(&cache).unwrap();
    let root = cache.join("bookworm-amd64");
    let lock = std::fs::File::create(cache.join("bookworm-amd64.lock")).unwrap();
    lock.lock().unwrap();
    if !root.join("usr/bin/dpkg").exists() {
        let partial = cache.join("bookworm-amd64.partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).unwrap();
        }
        let started = Instant::now();
        run(Command::new("debootstrap")
            .args([
                "--variant=minbase",
                "--include=systemd,systemd-sysv,dbus,adduser",
                "bookworm",
            ])
            .arg(&partial)
            .arg("http://deb.debian.org/debian"));
        std::fs::rename(&partial, &root).unwrap();
        eprintln!(
            "debootstrap: minimal bookworm root made in {:.1?}",
            started.elapsed()
        );
    }
    root
}

/// A throwaway copy of the cached root under target/nspawn-runs/ (not a tmpfs /tmp: it is
/// ~240 MB): the folder that holds it (deleted on drop) and the root's path.
#[must_use]
pub fn fresh_root() -> (tempfile::TempDir, PathBuf) {
    let cached = cached_root();
    let runs = repo().join("target/nspawn-runs");
    std::fs::create_dir_all(&runs).unwrap();
    let dir = tempfile::tempdir_in(&runs).unwrap();
    let path = dir.path().join("root");
    let started = Instant::now();
    run(Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&cached)
        .arg(&path));
    eprintln!("root copied in {:.1?}", started.elapsed());
    (dir, path)
}

/// Boots `root` (with `extra` nspawn options) until it powers itself off: its exit status, or
/// `None` if it had not after `limit` (it is then halted), and its console.
pub fn boot(root: &Path, extra: &[&str], limit: Duration) -> (Option<ExitStatus>, String) {
    let mut nspawn = Command::new("systemd-nspawn")
        .args(["-q", "--register=no", "--keep-unit"])
        .args(extra)
        .args(["-b", "--console=pipe", "-D"])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start systemd-nspawn");
    // Drained on threads so a chatty boot cannot block on its console.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(nspawn.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(nspawn.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = nspawn.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            // This container only, by its PID; cleanly, so none of it is left behind.
            crate::halt_container(&mut nspawn);
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let console = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    (status, console)
}
