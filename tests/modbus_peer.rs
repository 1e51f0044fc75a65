//! A real Modbus RTU slave bus for the gateway's tests and benchmarks: tokio-modbus's RTU server
//! on a pseudo-terminal, behind a line emulator with the timing of an RS-485 line and injectable
//! faults.
//!
//! ```text
//!  gateway (master)              line thread                     server thread
//!  opens path() ─ pty A ─ master A ⇄ paced lanes + faults ⇄ master B ─ pty B ─ tokio-modbus
//! ```
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use outpost_e2e::modbus_peer::{Bank, PeerConfig, RtuPeer};
//! let mut meter = Bank::default();
//! meter.holding.insert(0, 2301); // 230.1 V
//! let peer = RtuPeer::start(PeerConfig {
//!     units: [(1, meter), (2, Bank::default())].into(),
//!     baud: Some(19_200),
//!     ..PeerConfig::default()
//! })?;
//! // The gateway opens peer.path() as its serial port. Meanwhile the test changes the devices…
//! peer.bus().unit(2).silent = true;
//! peer.bus().unit(1).faults.corrupt_crc = 3;
//! // …and reads what the line saw and did.
//! assert_eq!(peer.bus().unit(1).injected.crc_corrupted, 0);
//! peer.stop()
//! # }
//! ```
//!
//! Design:
//! - The line is a std thread polling both pty masters with `ppoll` (sub-millisecond timeouts,
//!   1 µs timer slack), not a tokio task. Tokio timers tick in whole milliseconds, and at 19,200
//!   baud a wake-up 0.3 ms late already stretches a gap between two characters beyond t1.5
//!   (0.86 ms), which a master that frames by silence takes for a broken frame. Its own thread
//!   also keeps the line punctual while the test's runtime is busy; only a machine short of CPU
//!   makes it late, by a few ms, and [`Bus::max_lateness`] tells a test that depends on it.
//! - Timing is a schedule, not a series of sleeps: each byte gets a due time when it is read,
//!   `max(read time, due time of the previous byte in its direction, earliest start) + char_time`,
//!   and every wake-up writes all bytes already due, so a late wake-up never accumulates: a
//!   burst of n bytes ends at start + n·char_time. A reply's earliest start is t3.5
//!   (+ `reply_delay`) after the last byte of the request: the slave's end-of-frame detection.
//! - The line is full duplex and never garbles: a master that starts a request less than t3.5
//!   after a reply ended (or during it) is served anyway, and counted in [`Bus::early_requests`].
//! - Faults act on whole reply frames before they are scheduled, so a faulty frame has the
//!   timing of a real one. The server writes each reply in one write; the line cuts frames by
//!   their length.
//! - tokio-modbus ends `serve_forever` when the master sends bytes it cannot decode; a real slave
//!   keeps listening, so the server thread reopens its port and serves again
//!   ([`Bus::server_restarts`]). Its decoder also frames by length, not by silence: a request
//!   with gaps inside is still accepted.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::future::{Ready, ready};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::pty::openpty;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use nix::sys::time::TimeSpec;
use tokio::sync::oneshot;
use tokio_modbus::server::rtu::Server;
use tokio_modbus::{Request, Response, SlaveRequest};
use tokio_serial::SerialStream;

pub use tokio_modbus::ExceptionCode;

const MODBUS_CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);

/// How often the line retries a pty master whose slave nobody holds open: it reports POLLHUP
/// until someone does, so it cannot be waited on.
const HUNG_RETRY: Duration = Duration::from_millis(1);

/// The timing of a serial line: one character on the wire, and the silence that ends a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTiming {
    pub char_time: Duration,
    pub t35: Duration,
}

impl LineTiming {
    /// No pacing: bytes pass as soon as they are read.
    pub const INSTANT: LineTiming = LineTiming {
        char_time: Duration::ZERO,
        t35: Duration::ZERO,
    };

    /// `bits_per_char` counts start, data, parity and stop bits: 11 for 8E1, 10 for 8N1. Above
    /// 19,200 baud t3.5 is fixed at 1.75 ms (Modbus over Serial Line V1.02, §2.5.1.1).
    pub fn new(baud: u32, bits_per_char: u32) -> LineTiming {
        let char_time =
            Duration::from_nanos(u64::from(bits_per_char) * 1_000_000_000 / u64::from(baud));
        let t35 = if baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            char_time * 7 / 2
        };
        LineTiming { char_time, t35 }
    }

    /// Time on the wire of `bytes` characters sent back to back.
    pub fn frame(&self, bytes: u32) -> Duration {
        self.char_time * bytes
    }
}

/// How the peer starts.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The devices on the bus, by unit id (1–247). Requests to other ids get no reply.
    pub units: BTreeMap<u8, Bank>,
    /// Line speed to emulate; `None` passes bytes unpaced (fast tests).
    pub baud: Option<u32>,
    /// Bits per character on the wire: 11 for 8E1 (the Modbus default) or 8N2, 10 for 8N1.
    pub bits_per_char: u32,
    /// The slaves' processing time: added to t3.5 before a reply starts.
    pub reply_delay: Duration,
}

impl Default for PeerConfig {
    fn default() -> PeerConfig {
        PeerConfig {
            units: BTreeMap::new(),
            baud: None,
            bits_per_char: 11,
            reply_delay: Duration::ZERO,
        }
    }
}

/// One device on the bus: its tables, what it refuses, the line faults waiting for its replies,
/// and what it was asked. Unmapped addresses read as zero.
#[derive(Debug, Clone, Default)]
pub struct Bank {
    pub coils: BTreeMap<u16, bool>,
    pub discrete_inputs: BTreeMap<u16, bool>,
    pub holding: BTreeMap<u16, u16>,
    pub input: BTreeMap<u16, u16>,
    /// Swallows every request without answering: a device switched off.
    pub silent: bool,
    /// Requests with this (function code, start address) are answered with the exception,
    /// before any other check.
    pub exceptions: BTreeMap<(u8, u16), ExceptionCode>,
    /// Faults the line applies to this unit's next replies (consumed as applied).
    pub faults: ReplyFaults,
    /// Requests seen, by function code, including refused and unanswered ones.
    pub requests: BTreeMap<u8, usize>,
    /// Write requests applied to the tables.
    pub writes: usize,
    /// Replies the server sent, counted before any fault.
    pub replies: usize,
    /// Faults the line injected into this unit's replies.
    pub injected: Injected,
}

/// Line faults waiting for a unit's next replies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyFaults {
    /// Flip the last CRC byte of this many next replies.
    pub corrupt_crc: usize,
    /// Give the next reply this unit id, with its CRC recomputed: a well-formed reply that seems
    /// to come from another device.
    pub reply_as: Option<u8>,
    /// Send these bytes right before the next reply, with no gap: to a master that frames by
    /// silence they are part of the reply frame.
    pub garbage_before: Vec<u8>,
    /// Cut the next reply to this many bytes.
    pub truncate_to: Option<usize>,
}

/// How many replies of a unit the line damaged, by fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    pub crc_corrupted: usize,
    pub unit_rewritten: usize,
    pub garbage: usize,
    pub truncated: usize,
}

/// Everything shared between the test, the server and the line.
#[derive(Debug, Default)]
pub struct Bus {
    pub units: BTreeMap<u8, Bank>,
    /// Requests to unit ids without a bank, by id: nobody answers them.
    pub absent: BTreeMap<u8, usize>,
    /// Requests whose first byte came less than t3.5 after the last byte of a reply (or during
    /// it): a real slave may not see where they start. Always 0 without pacing.
    pub early_requests: usize,
    /// Times the server gave up on undecodable bytes from the master and was started again.
    pub server_restarts: usize,
    /// The longest any byte was delivered after its due time: how faithful the line's timing
    /// was (the thread was not scheduled in time, e.g. on a loaded machine).
    pub max_lateness: Duration,
}

impl Bus {
    /// The bank of `unit`; panics if the bus has none.
    pub fn unit(&mut self, unit: u8) -> &mut Bank {
        self.units
            .get_mut(&unit)
            .unwrap_or_else(|| panic!("no unit {unit} on this bus"))
    }

    /// Faults injected into the replies of every unit, summed.
    pub fn injected(&self) -> Injected {
        let mut sum = Injected::default();
        for bank in self.units.values() {
            sum.crc_corrupted += bank.injected.crc_corrupted;
            sum.unit_rewritten += bank.injected.unit_rewritten;
            sum.garbage += bank.injected.garbage;
            sum.truncated += bank.injected.truncated;
        }
        sum
    }

    fn handle(
        &mut self,
        unit: u8,
        request: &Request<'_>,
    ) -> Option<Result<Response, ExceptionCode>> {
        if unit == 0 {
            // Broadcast: every device applies a write, nobody answers.
            for bank in self.units.values_mut() {
                let _ = bank.handle(request);
            }
            return None;
        }
        match self.units.get_mut(&unit) {
            Some(bank) => bank.handle(request),
            None => {
                *self.absent.entry(unit).or_default() += 1;
                None
            }
        }
    }
}

impl Bank {
    /// `None`: no reply.
    fn handle(&mut self, request: &Request<'_>) -> Option<Result<Response, ExceptionCode>> {
        let function = request.function_code().value();
        *self.requests.entry(function).or_default() += 1;
        if self.silent {
            return None;
        }
        Some(self.answer(function, request))
    }

    fn answer(&mut self, function: u8, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        use Request as R;
        let (start, count, max) = match request {
            R::ReadCoils(a, n) | R::ReadDiscreteInputs(a, n) => (*a, *n, 2000),
            R::ReadHoldingRegisters(a, n) | R::ReadInputRegisters(a, n) => (*a, *n, 125),
            R::WriteSingleCoil(a, _) | R::WriteSingleRegister(a, _) => (*a, 1, 1),
            R::WriteMultipleCoils(a, bits) => (*a, len(bits), 1968),
            R::WriteMultipleRegisters(a, words) => (*a, len(words), 123),
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        if let Some(exception) = self.exceptions.get(&(function, start)) {
            return Err(*exception);
        }
        if count == 0 || count > max {
            return Err(ExceptionCode::IllegalDataValue);
        }
        if u32::from(start) + u32::from(count) > 0x1_0000 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let addresses = (0..count).map(|i| start + i);
        let bits = |table: &BTreeMap<u16, bool>| -> Vec<bool> {
            addresses
                .clone()
                .map(|a| table.get(&a).copied().unwrap_or(false))
                .collect()
        };
        let words = |table: &BTreeMap<u16, u16>| -> Vec<u16> {
            addresses
                .clone()
                .map(|a| table.get(&a).copied().unwrap_or(0))
                .collect()
        };
        let response = match request {
            R::ReadCoils(..) => Response::ReadCoils(bits(&self.coils)),
            R::ReadDiscreteInputs(..) => Response::ReadDiscreteInputs(bits(&self.discrete_inputs)),
            R::ReadHoldingRegisters(..) => Response::ReadHoldingRegisters(words(&self.holding)),
            R::ReadInputRegisters(..) => Response::ReadInputRegisters(words(&self.input)),
            R::WriteSingleCoil(a, bit) => {
                self.coils.insert(*a, *bit);
                Response::WriteSingleCoil(*a, *bit)
            }
            R::WriteSingleRegister(a, word) => {
                self.holding.insert(*a, *word);
                Response::WriteSingleRegister(*a, *word)
            }
            R::WriteMultipleCoils(a, values) => {
                self.coils
                    .extend(addresses.clone().zip(values.iter().copied()));
                Response::WriteMultipleCoils(*a, count)
            }
            R::WriteMultipleRegisters(a, values) => {
                self.holding
                    .extend(addresses.clone().zip(values.iter().copied()));
                Response::WriteMultipleRegisters(*a, count)
            }
            _ => unreachable!("refused above"),
        };
        if matches!(function, 0x05 | 0x06 | 0x0F | 0x10) {
            self.writes += 1;
        }
        Ok(response)
    }
}

/// Number of values in a write request, saturated (the quantity check refuses so many anyway).
fn len<T>(values: &[T]) -> u16 {
    u16::try_from(values.len()).unwrap_or(u16::MAX)
}

impl ReplyFaults {
    /// Applies the pending faults to one reply frame (unit id … CRC) and counts them.
    fn apply(&mut self, mut frame: Vec<u8>, injected: &mut Injected) -> Vec<u8> {
        let Some(body) = frame.len().checked_sub(2).filter(|&n| n > 0) else {
            return frame;
        };
        if let Some(unit) = self.reply_as.take() {
            frame[0] = unit;
            let crc = MODBUS_CRC.checksum(&frame[..body]);
            frame[body..].copy_from_slice(&crc.to_le_bytes());
            injected.unit_rewritten += 1;
        }
        if self.corrupt_crc > 0 {
            self.corrupt_crc -= 1;
            frame[body + 1] ^= 0xFF;
            injected.crc_corrupted += 1;
        }
        if let Some(keep) = self.truncate_to.take() {
            frame.truncate(keep);
            injected.truncated += 1;
        }
        if !self.garbage_before.is_empty() {
            let mut noisy = std::mem::take(&mut self.garbage_before);
            noisy.extend_from_slice(&frame);
            frame = noisy;
            injected.garbage += 1;
        }
        frame
    }
}

/// Length of the reply frame at the start of `buf` (unit id through CRC), once its header is in.
/// A function our service never answers passes on as whatever was read.
fn reply_len(buf: &[u8]) -> Option<usize> {
    let function = *buf.get(1)?;
    Some(match function {
        0x01..=0x04 | 0x17 => 5 + usize::from(*buf.get(2)?),
        0x05 | 0x06 | 0x0F | 0x10 => 8,
        0x16 => 10,
        0x80.. => 5,
        _ => buf.len(),
    })
}

/// A bus of RTU slaves on a pseudo-terminal, running until [`RtuPeer::stop`] or drop.
#[derive(Debug)]
pub struct RtuPeer {
    path: PathBuf,
    timing: LineTiming,
    bus: Arc<Mutex<Bus>>,
    threads: Option<Threads>,
}

#[derive(Debug)]
struct Threads {
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<io::Result<()>>,
    stop_line: UnixStream,
    line: JoinHandle<io::Result<()>>,
}

impl RtuPeer {
    /// Creates both ptys, starts the server and the line, and returns once the server holds
    /// its port. Needs no runtime: the peer runs on its own two threads.
    pub fn start(config: PeerConfig) -> io::Result<RtuPeer> {
        let timing = config.baud.map_or(LineTiming::INSTANT, |baud| {
            LineTiming::new(baud, config.bits_per_char)
        });
        let bus = Arc::new(Mutex::new(Bus {
            units: config.units,
            ..Bus::default()
        }));
        let (gateway, path) = raw_pty()?;
        let (server, server_path) = raw_pty()?;

        let (ready_tx, ready) = mpsc::channel();
        let (stop_server, stop) = oneshot::channel();
        let served = Arc::clone(&bus);
        let baud = config.baud.unwrap_or(115_200);
        let server_thread = std::thread::Builder::new()
            .name("rtu-peer-server".into())
            .spawn(move || serve(&server_path, baud, &served, &ready_tx, stop))?;
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("the RTU server thread died at start")),
        }

        let (stop_line, stop) = UnixStream::pair()?;
        let line = Line {
            gateway,
            server,
            stop,
            to_server: Lane::default(),
            to_gateway: Lane::default(),
            replies: Vec::new(),
            timing,
            reply_delay: config.reply_delay,
            max_lateness: Duration::ZERO,
            bus: Arc::clone(&bus),
        };
        let line_thread = std::thread::Builder::new()
            .name("rtu-peer-line".into())
            .spawn(move || line.run())?;
        Ok(RtuPeer {
            path,
            timing,
            bus,
            threads: Some(Threads {
                stop_server,
                server: server_thread,
                stop_line,
                line: line_thread,
            }),
        })
    }

    /// The tty the master opens, as if it were /dev/ttyUSB0.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The emulated line's timing ([`LineTiming::INSTANT`] without pacing).
    pub fn timing(&self) -> LineTiming {
        self.timing
    }

    /// The devices, their faults and counters. Hold the guard briefly: the server and the line
    /// take it for every frame.
    pub fn bus(&self) -> MutexGuard<'_, Bus> {
        lock(&self.bus)
    }

    /// Stops the server and the line, and reports how they ended.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        let Some(threads) = self.threads.take() else {
            return Ok(());
        };
        drop(threads.stop_server);
        let server = threads.server.join();
        drop(threads.stop_line);
        let line = threads.line.join();
        let panicked = |what| io::Error::other(format!("the RTU peer's {what} thread panicked"));
        server.map_err(|_| panicked("server"))??;
        line.map_err(|_| panicked("line"))?
    }
}

impl Drop for RtuPeer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn lock(bus: &Mutex<Bus>) -> MutexGuard<'_, Bus> {
    // A test that panicked holding the guard must not take the line down with it.
    bus.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A pty pair whose slave is raw (no echo, 8-bit clean) before anyone opens it. Keeps only the
/// master: a slave fd held here would keep the exclusive-open flag that serial libraries set in
/// force after the master closes the port (as in sensor-fw/node/src/sim/line.rs).
fn raw_pty() -> io::Result<(Port, PathBuf)> {
    let pty = openpty(None, None)?;
    let mut termios = tcgetattr(&pty.slave)?;
    cfmakeraw(&mut termios);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &termios)?;
    let path = nix::unistd::ttyname(&pty.slave)?;
    drop(pty.slave);
    Ok((Port::master(pty.master)?, path))
}

/// The server thread: tokio-modbus on its own runtime, started again whenever it gives up.
fn serve(
    path: &Path,
    baud: u32,
    bus: &Arc<Mutex<Bus>>,
    ready: &mpsc::Sender<io::Result<()>>,
    mut stop: oneshot::Receiver<()>,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    runtime.block_on(async {
        let open = || {
            SerialStream::open(&tokio_serial::new(path.to_string_lossy(), baud))
                .map_err(io::Error::from)
        };
        let mut stream = match open() {
            Ok(stream) => stream,
            Err(e) => {
                let _ = ready.send(Err(e));
                return Ok(());
            }
        };
        let _ = ready.send(Ok(()));
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return Ok(()),
                _ = Server::new(stream).serve_forever(Slaves(Arc::clone(bus))) => {}
            }
            lock(bus).server_restarts += 1;
            stream = open()?;
        }
    })
}

/// The tokio-modbus service: every unit of the bus behind one serial port.
#[derive(Debug)]
struct Slaves(Arc<Mutex<Bus>>);

impl tokio_modbus::server::Service for Slaves {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        ready(
            lock(&self.0)
                .handle(request.slave, &request.request)
                .transpose(),
        )
    }
}

/// One direction of the line: bytes with the time each is due at the far end.
#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<(Instant, u8)>,
    /// Due time of the last byte scheduled: the wire is busy until then.
    busy_until: Option<Instant>,
}

impl Lane {
    /// Schedules `bytes`, read at `now`, back to back after what is queued and no earlier
    /// than `earliest`.
    fn schedule(&mut self, now: Instant, earliest: Instant, char_time: Duration, bytes: &[u8]) {
        let mut t = now.max(earliest).max(self.busy_until.unwrap_or(now));
        for &byte in bytes {
            t += char_time;
            self.queue.push_back((t, byte));
        }
        if !bytes.is_empty() {
            self.busy_until = Some(t);
        }
    }

    fn idle(&self, now: Instant) -> bool {
        self.busy_until.is_none_or(|t| t <= now)
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|&(t, _)| t)
    }

    /// Moves every byte due by `now` to `out`; returns how late the first of them is.
    fn take_due(&mut self, now: Instant, out: &mut Vec<u8>) -> Duration {
        let lateness = self
            .next_due()
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        while let Some(&(t, byte)) = self.queue.front() {
            if t > now {
                break;
            }
            out.push(byte);
            self.queue.pop_front();
        }
        lateness
    }
}

/// A pty master, non-blocking.
#[derive(Debug)]
struct Port {
    file: File,
    /// Nobody holds the slave open: reads fail with EIO and poll reports POLLHUP.
    hung: bool,
}

impl Port {
    fn master(fd: OwnedFd) -> io::Result<Port> {
        let file = File::from(fd);
        fcntl(&file, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        fcntl(&file, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(Port { file, hung: true })
    }

    /// Appends everything there is to read to `out`.
    fn read_into(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let mut buf = [0; 1024];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => {
                    self.hung = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.hung = false;
                    out.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.hung = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(Errno::EIO as i32) => {
                    self.hung = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes as much of `bytes` as the pty takes; the rest is lost, as a UART transmits into the
    /// void when nobody listens.
    fn write_or_drop(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.file.write(bytes) {
                Ok(0) => return Ok(()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(Errno::EIO as i32) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The line thread's state: both pty masters and a lane each way.
#[derive(Debug)]
struct Line {
    /// Master of the pty the gateway opens.
    gateway: Port,
    /// Master of the pty the server holds.
    server: Port,
    /// Readable (end of file) once the peer stops.
    stop: UnixStream,
    to_server: Lane,
    to_gateway: Lane,
    /// Bytes from the server not yet cut into reply frames.
    replies: Vec<u8>,
    timing: LineTiming,
    reply_delay: Duration,
    /// Copy of `Bus::max_lateness`, to take the lock only when it grows.
    max_lateness: Duration,
    bus: Arc<Mutex<Bus>>,
}

impl Line {
    fn run(mut self) -> io::Result<()> {
        // Wake-ups as close to the due time as the kernel can (default slack is 50 µs).
        let _ = nix::sys::prctl::set_timerslack(1_000);
        let mut due = Vec::new();
        loop {
            let now = Instant::now();
            let late = self.to_server.take_due(now, &mut due);
            self.server.write_or_drop(&due)?;
            due.clear();
            let late = late.max(self.to_gateway.take_due(now, &mut due));
            self.gateway.write_or_drop(&due)?;
            due.clear();
            if late > self.max_lateness {
                self.max_lateness = late;
                lock(&self.bus).max_lateness = late;
            }

            let mut timeout = [self.to_server.next_due(), self.to_gateway.next_due()]
                .into_iter()
                .flatten()
                .min()
                .map(|t| t.saturating_duration_since(Instant::now()));
            if self.gateway.hung || self.server.hung {
                timeout = Some(timeout.map_or(HUNG_RETRY, |t| t.min(HUNG_RETRY)));
            }
            let mut fds = vec![PollFd::new(self.stop.as_fd(), PollFlags::POLLIN)];
            for port in [&self.gateway, &self.server] {
                if !port.hung {
                    fds.push(PollFd::new(port.file.as_fd(), PollFlags::POLLIN));
                }
            }
            match ppoll(&mut fds, timeout.map(TimeSpec::from), None) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                return Ok(());
            }
            drop(fds);
            self.pump_requests()?;
            self.pump_replies()?;
        }
    }

    fn pump_requests(&mut self) -> io::Result<()> {
        let mut bytes = Vec::new();
        self.gateway.read_into(&mut bytes)?;
        if bytes.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let reply_end = self.to_gateway.busy_until;
        if self.to_server.idle(now) && reply_end.is_some_and(|end| now < end + self.timing.t35) {
            lock(&self.bus).early_requests += 1;
        }
        self.to_server
            .schedule(now, now, self.timing.char_time, &bytes);
        Ok(())
    }

    fn pump_replies(&mut self) -> io::Result<()> {
        self.server.read_into(&mut self.replies)?;
        while let Some(len) = reply_len(&self.replies).filter(|&len| len <= self.replies.len()) {
            let frame: Vec<u8> = self.replies.drain(..len).collect();
            let frame = match lock(&self.bus).units.get_mut(&frame[0]) {
                Some(bank) => {
                    bank.replies += 1;
                    bank.faults.apply(frame, &mut bank.injected)
                }
                None => frame,
            };
            let now = Instant::now();
            let earliest = self.to_server.busy_until.map_or(now, |request_end| {
                request_end + self.timing.t35 + self.reply_delay
            });
            self.to_gateway
                .schedule(now, earliest, self.timing.char_time, &frame);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_timing_follows_the_serial_line_guide() {
        let t = LineTiming::new(19_200, 11);
        assert_eq!(t.char_time, Duration::from_nanos(572_916));
        assert_eq!(t.t35, Duration::from_nanos(2_005_206));
        let t = LineTiming::new(9_600, 10);
        assert_eq!(t.t35, Duration::from_nanos(3_645_831));
        // Above 19,200 baud the silences are fixed.
        assert_eq!(
            LineTiming::new(115_200, 11).t35,
            Duration::from_micros(1750)
        );
    }

    #[test]
    fn a_burst_is_paced_back_to_back_and_a_later_one_waits_for_the_wire() {
        let c = Duration::from_millis(1);
        let t0 = Instant::now();
        let mut lane = Lane::default();
        lane.schedule(t0, t0, c, &[1, 2, 3]);
        lane.schedule(t0 + c, t0 + c, c, &[4]);
        let due: Vec<_> = lane.queue.iter().map(|&(t, _)| t - t0).collect();
        assert_eq!(due, [c, 2 * c, 3 * c, 4 * c]);
        let mut out = Vec::new();
        lane.take_due(t0 + 2 * c, &mut out);
        assert_eq!(out, [1, 2]);
        assert!(!lane.idle(t0 + 3 * c) && lane.idle(t0 + 4 * c));
        // A burst read after the wire went quiet starts from its own read time, or later.
        lane.schedule(t0 + 10 * c, t0 + 12 * c, c, &[5]);
        assert_eq!(lane.busy_until, Some(t0 + 13 * c));
    }

    #[test]
    fn reply_frames_are_cut_by_their_length() {
        assert_eq!(reply_len(&[0x01]), None);
        assert_eq!(reply_len(&[0x01, 0x03]), None);
        // unit 1, read holding registers, 4 bytes: 1 + 1 + 1 + 4 + CRC 2.
        assert_eq!(reply_len(&[0x01, 0x03, 0x04]), Some(9));
        assert_eq!(reply_len(&[0x01, 0x06]), Some(8));
        assert_eq!(reply_len(&[0x01, 0x83]), Some(5));
    }

    #[test]
    fn faults_are_applied_once_and_counted() {
        // unit 1, read holding registers, 2 bytes, 0x0001, CRC 0x8479 (little-endian on the wire).
        let reply = vec![0x01, 0x03, 0x02, 0x00, 0x01, 0x79, 0x84];
        assert_eq!(MODBUS_CRC.checksum(&reply[..5]), 0x8479);
        let mut faults = ReplyFaults {
            corrupt_crc: 1,
            reply_as: Some(9),
            garbage_before: vec![0xFF],
            truncate_to: Some(6),
        };
        let mut injected = Injected::default();
        let out = faults.apply(reply.clone(), &mut injected);
        let rewritten_crc = MODBUS_CRC.checksum(&[0x09, 0x03, 0x02, 0x00, 0x01]);
        let [lo, _] = rewritten_crc.to_le_bytes();
        assert_eq!(out, [0xFF, 0x09, 0x03, 0x02, 0x00, 0x01, lo]);
        assert_eq!(
            injected,
            Injected {
                crc_corrupted: 1,
                unit_rewritten: 1,
                garbage: 1,
                truncated: 1
            }
        );
        assert_eq!(faults, ReplyFaults::default());
        assert_eq!(faults.apply(reply.clone(), &mut injected), reply);
    }
}
