//! The RP2040 firmware under test: the images, built once per run with `sensor-fw/build.sh` for a
//! fleet key made for the run; flash files composed by the emulator (`sensor-fw/emu`); and an
//! emulated node: rp2040js running the real image, its UART0 on a pseudo-terminal that the
//! gateway opens like any serial port.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::sys::termios::{self, SetArg};
use nix::unistd::Pid;

use crate::{bin, run_ok, workspace_dir};

/// Versions the tests build: a production image to start from and update to, and a
/// development image whose trial never confirms.
pub const FIRST: &str = "0.1.0";
pub const SECOND: &str = "0.2.0";
pub const NEVER_CONFIRMS: &str = "0.3.0";

/// The fleet key and the images built with it, in `target/fw-test` (kept between runs: the
/// images are rebuilt only when the firmware's sources changed, which cargo decides).
#[derive(Debug)]
pub struct Firmware {
    pub dir: PathBuf,
}

impl Firmware {
    /// Builds the images on first use in this test process; later calls return the same.
    pub fn get() -> Result<&'static Firmware> {
        static BUILT: OnceLock<Result<Firmware, String>> = OnceLock::new();
        BUILT
            .get_or_init(|| Firmware::build().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("building the RP2040 firmware failed: {e}"))
    }

    fn build() -> Result<Firmware> {
        let dir = workspace_dir().join("target/fw-test");
        let keys = dir.join("keys");
        if !keys.join("firmware.pub").exists() {
            let _ = std::fs::remove_dir_all(&keys);
            run_ok(
                Command::new(bin("outpost"))
                    .args(["firmware", "keygen", "--out"])
                    .arg(&keys),
            )?;
        }
        let firmware = Firmware { dir };
        for (version, profile, features) in [
            (FIRST, "prod", ""),
            (SECOND, "prod", ""),
            (NEVER_CONFIRMS, "dev", "test-never-confirm"),
        ] {
            let mut build = Command::new(workspace_dir().join("sensor-fw/build.sh"));
            build
                .arg("--fleet-keys")
                .arg(firmware.public_key())
                .args(["--version", version, "--profile", profile])
                .arg("--out")
                .arg(firmware.dir.join("images"));
            if !features.is_empty() {
                build.args(["--features", features]);
            }
            run_ok(&mut build).with_context(|| format!("sensor-fw/build.sh for {version}"))?;
        }
        Ok(firmware)
    }

    /// Another image for benchmarks, built into `images/NAME/` (and rebuilt when asked again
    /// after other variants: the build's inputs are environment variables). Returns its ELF.
    pub fn variant(
        &self,
        name: &str,
        version: &str,
        features: &str,
        sample_interval_ms: u32,
    ) -> Result<PathBuf> {
        let out = self.dir.join("images").join(name);
        let mut build = Command::new(workspace_dir().join("sensor-fw/build.sh"));
        build
            .arg("--fleet-keys")
            .arg(self.public_key())
            .args(["--version", version])
            .args(["--sample-interval-ms", &sample_interval_ms.to_string()])
            .arg("--out")
            .arg(&out);
        if features.is_empty() {
            build.args(["--profile", "prod"]);
        } else {
            build.args(["--profile", "dev", "--features", features]);
        }
        run_ok(&mut build).with_context(|| format!("sensor-fw/build.sh for {name}"))?;
        let suffix = if features.is_empty() { "" } else { "-dev" };
        Ok(out.join(format!("outpost-node-{version}{suffix}.elf")))
    }

    pub fn public_key(&self) -> PathBuf {
        self.dir.join("keys/firmware.pub")
    }

    pub fn private_key(&self) -> PathBuf {
        self.dir.join("keys/firmware.key")
    }

    pub fn bootloader(&self) -> PathBuf {
        self.dir.join("images/outpost-bootloader.elf")
    }

    /// The application image of `version`, as ELF (`ext` "elf") or BIN ("bin").
    pub fn app(&self, version: &str, ext: &str) -> PathBuf {
        let suffix = if version == NEVER_CONFIRMS {
            "-dev"
        } else {
            ""
        };
        self.dir
            .join(format!("images/outpost-node-{version}{suffix}.{ext}"))
    }

    /// A copy of the BIN of `version` in `dir`, signed with the fleet key for hardware
    /// revision 1 (`IMAGE.sig` beside it), as an operator hands it to a rollout.
    pub fn signed_image(&self, version: &str, dir: &Path) -> Result<PathBuf> {
        let image = dir.join(format!("node-{version}.bin"));
        std::fs::copy(self.app(version, "bin"), &image)?;
        run_ok(
            Command::new(bin("outpost"))
                .args(["firmware", "sign", "--key"])
                .arg(self.private_key())
                .args(["--version", version, "--hw-rev", "1"])
                .arg(&image),
        )?;
        Ok(image)
    }

    /// A node's flash as it leaves the factory: the bootloader and `version` in ACTIVE.
    pub fn factory_flash(&self, version: &str, path: &Path) -> Result<()> {
        self.flash_with(&self.app(version, "elf"), path)
    }

    /// A node's flash with the bootloader and the application `elf` in ACTIVE.
    pub fn flash_with(&self, elf: &Path, path: &Path) -> Result<()> {
        let _ = std::fs::remove_file(path);
        run_ok(
            emulator()?
                .args(["compose", "--out"])
                .arg(path)
                .arg(self.bootloader())
                .arg(elf),
        )?;
        Ok(())
    }
}

/// A site whose gateway has a 115,200-baud serial port at each of `ports` (emulated nodes'
/// ptys) besides the simulated nodes `sims`, takes updates signed by the test fleet's key, and
/// gives the technician `token`.
pub fn site(
    firmware: &Firmware,
    ports: &[&Path],
    sims: Vec<crate::NodeSpec>,
    token: &str,
) -> Result<crate::Site> {
    let mut extra = String::new();
    for port in ports {
        extra += &format!(
            "[[serial]]\npath = \"{}\"\nbaud = 115200\nreopen_backoff_max = \"1s\"\n\n",
            port.display()
        );
    }
    extra += &format!(
        "[ota]\nfirmware_keys = [\"{}\"]\n",
        firmware.public_key().display()
    );
    let mut site = crate::Site::with_config(sims, &extra)?;
    site.set_technician_token(token)?;
    Ok(site)
}

/// `node sensor-fw/emu/run.js`, with its npm packages installed once per run.
pub fn emulator() -> Result<Command> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = workspace_dir().join("sensor-fw/emu");
    INSTALLED
        .get_or_init(|| {
            if dir.join("node_modules/rp2040js").exists() {
                return Ok(());
            }
            run_ok(
                Command::new("npm")
                    .args(["ci", "--silent", "--no-audit", "--no-fund", "--prefix"])
                    .arg(&dir),
            )
            .map(drop)
            .map_err(|e| format!("npm ci in sensor-fw/emu: {e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut command = Command::new("node");
    command.arg(dir.join("run.js"));
    Ok(command)
}

/// An emulated node: the emulator on a flash file, its UART0 bridged to a pseudo-terminal
/// published at `link`. Dropping it is a power cut: the process is killed, the link removed and
/// the pty closed.
#[derive(Debug)]
pub struct EmulatedNode {
    child: Child,
    stop: Arc<AtomicBool>,
    bridges: Vec<JoinHandle<()>>,
    log: PathBuf,
    exit: Option<ExitStatus>,
    /// Bytes the node sent, for tests that look at the line itself.
    pub sent: Arc<Mutex<u64>>,
}

impl EmulatedNode {
    /// Powers the node on from `flash`, with the flash chip's unique id `uid` (16 hex digits),
    /// its UART0 at `link`; the emulator's own lines are appended to `log`. `extra`: more
    /// options for `run.js run` (e.g. `--power-cut-after-flash-ops 40`).
    pub fn start(
        flash: &Path,
        uid: &str,
        link: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Result<EmulatedNode> {
        // Both ends close-on-exec from the moment they exist (openpty(3) leaves them
        // inheritable, and a later fcntl races with the other tests' threads spawning): else a
        // gateway or an emulator started meanwhile holds this pty's master open, and the
        // gateway never sees the line hang up when this node's power is cut.
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .context("posix_openpt")?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let slave_path = PathBuf::from(ptsname_r(&master)?);
        let slave = nix::fcntl::open(
            &slave_path,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .context("open the pty's slave")?;
        let mut raw = termios::tcgetattr(&slave)?;
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&slave, SetArg::TCSANOW, &raw)?;
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&slave_path, link)?;

        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| log.display().to_string())?;
        let mut child = emulator()?
            .args(["run", "--flash"])
            .arg(flash)
            .args(["--uid", uid])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("cannot start the emulator (node)")?;
        let mut to_node = child.stdin.take().context("emulator stdin")?;
        let mut from_node = child.stdout.take().context("emulator stdout")?;

        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(0u64));
        let master = File::from(OwnedFd::from(master));
        // The slave stays open here too, so the master never reads EIO while the gateway has
        // the port closed (it reopens it after a hang-up).
        let mut master_in = master.try_clone()?;
        let mut master_out = master;
        let stop_in = Arc::clone(&stop);
        let line_in = std::thread::spawn(move || {
            let _slave = slave;
            let mut buf = [0u8; 4096];
            while !stop_in.load(Ordering::Relaxed) {
                let mut fds = [PollFd::new(master_in.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0) == 0 {
                    continue;
                }
                match master_in.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to_node.write_all(&buf[..n]).is_err() {
                            break; // the emulator is gone
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let sent_count = Arc::clone(&sent);
        let stop_out = Arc::clone(&stop);
        let link = link.to_owned();
        let line_out = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from_node.read(&mut buf) {
                if n == 0 || master_out.write_all(&buf[..n]).is_err() {
                    break;
                }
                *sent_count.lock().unwrap_or_else(|e| e.into_inner()) += n as u64;
            }
            // The emulator is gone (a power cut it made, or a kill): the line goes dead at once,
            // as a board's USB port does, and the gateway sees it hang up. Its name goes first,
            // while the pty is still open: once closed, its number is free for the next pty
            // opened on this machine (another test's node), which a gateway reopening a stale
            // name would read.
            if std::fs::read_link(&link).is_ok_and(|target| target == slave_path) {
                let _ = std::fs::remove_file(&link);
            }
            stop_out.store(true, Ordering::Relaxed);
        });
        Ok(EmulatedNode {
            child,
            stop,
            bridges: vec![line_in, line_out],
            log: log.to_owned(),
            exit: None,
            sent,
        })
    }

    /// The emulator's lines so far (this node's and earlier runs' on the same log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the emulator to exit by itself (e.g. a power cut it was told to make).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit.or(self.child.try_wait()?) {
                self.exit = Some(status);
                return Ok(status);
            }
            if start.elapsed() > timeout {
                bail!(
                    "the emulator did not exit within {timeout:?}; its log:\n{}",
                    tail(&self.log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the emulator still runs.
    pub fn running(&mut self) -> bool {
        self.exit.is_none() && self.child.try_wait().ok().flatten().is_none()
    }

    /// SIGTERM: the emulator stops at the end of its current step and prints its closing lines
    /// (`--stats`); waits for it.
    pub fn stop(mut self) -> Result<String> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(10))?;
        self.shutdown();
        Ok(self.log())
    }

    /// SIGKILL: the power goes at whatever cycle the chip is in.
    pub fn power_cut(mut self) -> Result<()> {
        self.shutdown();
        ensure!(self.exit.is_some(), "the emulator did not stop");
        Ok(())
    }

    fn shutdown(&mut self) {
        if self.exit.is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            self.exit = self.child.wait().ok();
        }
        self.stop.store(true, Ordering::Relaxed);
        for bridge in self.bridges.drain(..) {
            let _ = bridge.join();
        }
    }
}

impl Drop for EmulatedNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
