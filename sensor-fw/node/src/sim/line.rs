//! The simulator's serial line: a pseudo-terminal master it creates, or a port it opens.
//!
//! Both are raw (no echo, no line editing, 8-bit clean) and non-blocking. A write that would
//! block is dropped, as a real UART transmits into the void when nobody listens; a pty master
//! whose slave nobody holds open reports POLLHUP and reads fail with EIO, which the caller
//! treats as "no peer" rather than as an error.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::pty::openpty;
use nix::sys::termios::{BaudRate, SetArg, cfmakeraw, cfsetspeed, tcgetattr, tcsetattr};

/// Baud rate set on a real port. Ignored by pseudo-terminals.
const BAUD: BaudRate = BaudRate::B115200;

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// Bytes (possibly none: nothing more to read now).
    Data(usize),
    /// Nobody holds the other end (EIO on a pty master).
    NoPeer,
}

/// One serial line, non-blocking.
#[derive(Debug)]
pub(crate) struct Line {
    file: File,
}

impl Line {
    /// Creates a pty pair, sets the slave raw before anyone can open it, and keeps only the
    /// master: a lingering slave fd here would keep the tty's exclusive-open flag (TIOCEXCL,
    /// set by serial libraries) in force after the gateway closes it. Returns the slave's path.
    pub(crate) fn open_pty() -> io::Result<(Line, PathBuf)> {
        let pty = openpty(None, None)?;
        let mut termios = tcgetattr(&pty.slave)?;
        cfmakeraw(&mut termios);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &termios)?;
        let slave_path = nix::unistd::ttyname(&pty.slave)?;
        drop(pty.slave);
        let file = File::from(pty.master);
        fcntl(&file, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        fcntl(&file, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok((Line { file }, slave_path))
    }

    /// Opens an existing serial device or pty slave, raw, 115200 8N1.
    pub(crate) fn open_port(path: &Path) -> io::Result<Line> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags((OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
            .open(path)?;
        let mut termios = tcgetattr(&file)?;
        cfmakeraw(&mut termios);
        cfsetspeed(&mut termios, BAUD)?;
        tcsetattr(&file, SetArg::TCSANOW, &termios)?;
        Ok(Line { file })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Reads what is there without blocking.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<ReadOutcome> {
        match self.file.read(buf) {
            Ok(n) => Ok(ReadOutcome::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::Data(0)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(ReadOutcome::Data(0)),
            Err(e) if e.raw_os_error() == Some(Errno::EIO as i32) => Ok(ReadOutcome::NoPeer),
            Err(e) => Err(e),
        }
    }

    /// Writes `bytes` as far as the line takes them without blocking; the rest is dropped
    /// (the receiver drops the truncated frame and resynchronises on the next delimiter).
    /// Returns whether everything was written.
    pub(crate) fn write_or_drop(&mut self, mut bytes: &[u8]) -> io::Result<bool> {
        while !bytes.is_empty() {
            match self.file.write(bytes) {
                Ok(0) => return Ok(false),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.raw_os_error() == Some(Errno::EIO as i32) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// The links this process has published and not removed: a process that ends abruptly (a
/// simulated power cut exits at once) removes them first, as an unplugged adapter's name goes
/// before its device does. Left behind, a link names a `/dev/pts` number the kernel soon gives
/// to another pty, and a gateway reopening it would talk to another node.
static PUBLISHED: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());

fn published() -> std::sync::MutexGuard<'static, Vec<(PathBuf, PathBuf)>> {
    PUBLISHED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Points the symlink `link` at `target`, replacing an existing link atomically.
pub(crate) fn publish_link(target: &Path, link: &Path) -> io::Result<()> {
    let mut tmp = link.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    published().push((target.to_owned(), link.to_owned()));
    Ok(())
}

/// Removes `link` if it still points at `target` (a newer simulator may have replaced it).
pub(crate) fn remove_link(target: &Path, link: &Path) {
    published().retain(|(t, l)| !(t == target && l == link));
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        let _ = std::fs::remove_file(link);
    }
}

/// Removes every link this process published: called just before it exits abruptly, while
/// its ptys are still open.
pub(crate) fn remove_published_links() {
    let links = std::mem::take(&mut *published());
    for (target, link) in links {
        if std::fs::read_link(&link).is_ok_and(|t| t == target) {
            let _ = std::fs::remove_file(&link);
        }
    }
}
