//! The development build's debug console on UART1 (GP8 TX, GP9 RX, 115,200 baud): prints the
//! node's identity at boot and every entry of its log ring as it happens, and takes four
//! commands, without any authentication:
//!
//! | command | what |
//! |---|---|
//! | `status` | version, uid, public key, link state, samples held |
//! | `log` | the log ring again, from its oldest entry |
//! | `reboot` | a requested reboot (reason `software` at the next boot) |
//! | `forget-identity` | erases the settings sectors: a new key, so a new identity, at the next boot |
//!
//! Only in images built with `--profile dev` (feature `dev`): a production image has neither
//! this module nor UART1 configured, so the node link is its only way in, and every command
//! there is inside the authenticated session (docs/security.md).

use core::fmt::Write as _;

use embassy_rp::uart::BufferedUart;
use embedded_io_async::{Read, ReadReady, Write};
use heapless::String;
use outpost_node::boot::RecordFlash;

/// What the operator at the console asked for.
pub enum Request {
    None,
    Status,
    Reboot,
}

pub struct Console {
    uart: BufferedUart,
    line: String<32>,
    /// The log entry printed next.
    next_log: u32,
}

impl Console {
    pub fn new(uart: BufferedUart) -> Self {
        Console {
            uart,
            line: String::new(),
            next_log: 0,
        }
    }

    pub async fn print(&mut self, args: core::fmt::Arguments<'_>) {
        let mut text: String<192> = String::new();
        let _ = text.write_fmt(args);
        let _ = text.push_str("\r\n");
        let _ = self.uart.write_all(text.as_bytes()).await;
    }

    /// Prints log entries not printed yet.
    pub async fn print_log(&mut self, log: &outpost_node::diag::LogRing) {
        while self.next_log != log.next() {
            let page = log.page(self.next_log);
            if page.entries.is_empty() {
                break;
            }
            for entry in &page.entries {
                self.print(format_args!(
                    "log {} ms {} {}",
                    entry.uptime_ms,
                    entry.event.as_str(),
                    entry.arg
                ))
                .await;
            }
            self.next_log = page.first + page.entries.len() as u32;
        }
    }

    /// Reads what the operator typed; runs a whole line's command.
    pub async fn poll<A: RecordFlash, B: RecordFlash>(
        &mut self,
        settings: &mut outpost_node::settings::SettingsStore<A, B>,
    ) -> Request {
        let mut byte = [0u8; 1];
        while self.uart.read_ready().unwrap_or(false) {
            if self.uart.read(&mut byte).await.is_err() {
                continue;
            }
            match byte[0] {
                b'\r' | b'\n' => {
                    let line = core::mem::take(&mut self.line);
                    match line.trim() {
                        "" => {}
                        "status" => return Request::Status,
                        "log" => self.next_log = 0,
                        "reboot" => return Request::Reboot,
                        "forget-identity" => {
                            let erased = settings.a.erase().and(settings.b.erase());
                            self.print(format_args!(
                                "identity forgotten: {}",
                                if erased.is_ok() {
                                    "a new key at the next boot"
                                } else {
                                    "erase failed"
                                }
                            ))
                            .await;
                        }
                        other => {
                            self.print(format_args!(
                                "unknown command {other:?}: status, log, reboot, forget-identity"
                            ))
                            .await
                        }
                    }
                }
                b => {
                    if self.line.push(b as char).is_err() {
                        self.line.clear();
                    }
                }
            }
        }
        Request::None
    }
}
