//! The daemon's side of its systemd unit: readiness and status, the watchdog, the journal.
//!
//! - **Notifications** (`Type=notify`): [`ready`] once the store is open and the API listens,
//!   [`status`] lines for `systemctl status`, [`stopping`] when shutdown begins. Each is one
//!   datagram to `$NOTIFY_SOCKET` (sd-notify, pure Rust) and nothing at all when it is unset, as
//!   when the daemon runs from a shell or in tests.
//! - **Watchdog** (`WatchdogSec=`): [`Watchdog`] (`outpost_core::watchdog`) decides, from times
//!   and observations it is given, whether the daemon is alive enough to say so; [`run_watchdog`]
//!   is the task that feeds it and sends `WATCHDOG=1`. See [`Watchdog`] for what "alive" means.
//! - **Journal**: [`stderr_is_journal`] tells whether systemd connected stderr to journald
//!   (`$JOURNAL_STREAM`), so `main` logs there with structured fields instead of text.

use std::time::Duration;

use outpost_core::watchdog::{Watchdog, WatchdogAction, WriterSnapshot};
use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::io::store::writer::StoreCommand;
use crate::io::telemetry::TelemetryHub;

/// Tells systemd the daemon is ready (`READY=1`), with a status line in the same datagram.
pub fn ready(status_line: &str) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&one_line(status_line)),
    ]);
}

/// A status line for `systemctl status` (`STATUS=`).
pub fn status(status_line: &str) {
    send(&[NotifyState::Status(&one_line(status_line))]);
}

/// Tells systemd shutdown has begun (`STOPPING=1`).
pub fn stopping(status_line: &str) {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status(&one_line(status_line)),
    ]);
}

/// A notification is one `KEY=value` per line: a value's own line breaks would start new keys.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `WATCHDOG=1`: the daemon is alive.
fn watchdog_ping() {
    send(&[NotifyState::Watchdog]);
}

fn send(states: &[NotifyState<'_>]) {
    // A no-op without $NOTIFY_SOCKET. A failure costs systemd's view of us, not our work.
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(message = "Cannot notify systemd.", %error);
    }
}

/// The watchdog period systemd asks for (`$WATCHDOG_USEC`, for this process per
/// `$WATCHDOG_PID`), or `None` when the unit has no `WatchdogSec=`.
#[must_use]
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|p| !p.is_zero())
}

/// The status line sent with `READY=1`, e.g.
/// `API on 127.0.0.1:8080; polling 3 serial ports, 2 Modbus devices`.
#[must_use]
pub fn ready_status(
    api: std::net::SocketAddr,
    serial_ports: usize,
    modbus_devices: usize,
) -> String {
    fn count(n: usize, one: &str, many: &str) -> String {
        format!("{n} {}", if n == 1 { one } else { many })
    }
    format!(
        "API on {api}; polling {}, {}",
        count(serial_ports, "serial port", "serial ports"),
        count(modbus_devices, "Modbus device", "Modbus devices")
    )
}

/// Whether stderr is the journal stream systemd set up (`$JOURNAL_STREAM` is `DEVICE:INODE`
/// of it). Checked on the descriptor itself: a child whose stderr was redirected inherits the
/// variable but not the stream.
#[must_use]
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some(value) = value.to_str() else {
        return false;
    };
    // fstat on a duplicate of fd 2, closed again when the File drops.
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| journal_stream_is(value, m.dev(), m.ino()))
}

/// Whether `$JOURNAL_STREAM` (`DEVICE:INODE`, both decimal) names the file `(dev, ino)`.
#[must_use]
pub fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// What the watchdog sees of the store writer: its progress as telemetry counts it, and its
/// command queue. A weak sender, so the watchdog never keeps the writer from ending at shutdown
/// (it ends when the last sender is gone).
#[derive(Debug, Clone)]
pub struct WriterProbe {
    telemetry: TelemetryHub,
    queue: mpsc::WeakSender<StoreCommand>,
}

impl WriterProbe {
    #[must_use]
    pub fn new(telemetry: TelemetryHub, queue: &mpsc::Sender<StoreCommand>) -> WriterProbe {
        WriterProbe {
            telemetry,
            queue: queue.downgrade(),
        }
    }

    /// `None` once every sender is gone: the writer is finishing, nothing to watch.
    #[must_use]
    pub fn snapshot(&self) -> Option<WriterSnapshot> {
        let queue = self.queue.upgrade()?;
        let queued = queue.max_capacity() - queue.capacity();
        drop(queue);
        Some(WriterSnapshot {
            progress: self.telemetry.with(|t| t.store().progress()),
            queued,
        })
    }
}

/// Pings systemd's watchdog every half `period` while [`Watchdog`] finds the daemon alive,
/// until `shutdown`. Runs on the daemon's runtime: if the runtime wedges, so do the pings.
/// A withheld ping sets the unit's status to the reason; `running_status` restores it.
pub async fn run_watchdog(
    period: Duration,
    writer: Option<WriterProbe>,
    running_status: String,
    shutdown: CancellationToken,
) {
    let mut watchdog = Watchdog::new(tokio::time::Instant::now().into_std(), period);
    // Said once per wedge, not at every withheld tick.
    let mut reported = false;
    loop {
        let due = tokio::time::Instant::from_std(watchdog.poll_timeout());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(due) => {}
        }
        let now = tokio::time::Instant::now().into_std();
        if let Some(seen) = writer.as_ref().and_then(WriterProbe::snapshot) {
            watchdog.handle_writer(now, seen);
        }
        watchdog.handle_timeout(now);
        while let Some(action) = watchdog.poll_action() {
            match action {
                WatchdogAction::Ping => {
                    watchdog_ping();
                    if std::mem::take(&mut reported) {
                        tracing::info!(message = "Watchdog pings resumed.");
                        status(&running_status);
                    }
                }
                WatchdogAction::Withhold(wedge) => {
                    if !std::mem::replace(&mut reported, true) {
                        tracing::error!(message = "Watchdog ping withheld; systemd will restart the daemon if this persists.", %wedge);
                        status(&format!("wedged: {wedge}"));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_reads_the_writer_queue_and_counters() {
        use outpost_core::telemetry::{Event, Telemetry};
        let telemetry = TelemetryHub::new(Telemetry::new(&[], false, Duration::from_secs(60)));
        let (tx, _rx) = mpsc::channel(8);
        let probe = WriterProbe::new(telemetry.clone(), &tx);
        assert_eq!(
            probe.snapshot(),
            Some(WriterSnapshot {
                progress: 0,
                queued: 0
            })
        );
        for _ in 0..3 {
            tx.try_send(StoreCommand::LinkErrors {
                node_id: 1,
                count: 1,
            })
            .unwrap();
        }
        for _ in 0..5 {
            telemetry.record(Event::Committed);
        }
        telemetry.record(Event::CommitFailed("disk full".into()));
        telemetry.record(Event::Sealed { batches: 2 });
        assert_eq!(
            probe.snapshot(),
            Some(WriterSnapshot {
                progress: 8,
                queued: 3
            })
        );
        drop(tx);
        assert_eq!(
            probe.snapshot(),
            None,
            "no sender left: the writer is ending"
        );
    }

    #[test]
    fn journal_stream_matches_only_its_own_device_and_inode() {
        assert!(journal_stream_is("8:12345", 8, 12345));
        assert!(journal_stream_is("8:12345\n", 8, 12345));
        assert!(!journal_stream_is("8:12345", 8, 12346));
        assert!(!journal_stream_is("9:12345", 8, 12345));
        assert!(!journal_stream_is("", 8, 12345));
        assert!(!journal_stream_is("8", 8, 12345));
        assert!(!journal_stream_is("x:y", 8, 12345));
    }

    #[test]
    fn a_status_of_several_lines_is_sent_as_one() {
        assert_eq!(
            one_line("config has 2 problems:\n  a.toml:3: bad\n  a.toml:9: worse\n"),
            "config has 2 problems:; a.toml:3: bad; a.toml:9: worse"
        );
        assert_eq!(one_line("ready"), "ready");
    }

    #[test]
    fn the_ready_status_counts_what_is_polled() {
        let api = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            ready_status(api, 3, 2),
            "API on 127.0.0.1:8080; polling 3 serial ports, 2 Modbus devices"
        );
        assert_eq!(
            ready_status(api, 1, 0),
            "API on 127.0.0.1:8080; polling 1 serial port, 0 Modbus devices"
        );
    }
}
