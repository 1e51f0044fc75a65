//! Node diagnostics over the link: the COMMAND codes a node answers, the RESPONSE statuses, and
//! the bodies of RESET_HISTORY and LOG_READ (`docs/node-link.md` §2, COMMAND and RESPONSE).
//!
//! Every body fits one RESPONSE ([`MAX_COMMAND_BODY`] bytes); the log is read in pages, by
//! entry number. Same guarantees as [`crate::wire`]: `parse` never panics, never reads past its
//! input and accepts exactly what `emit` writes; `emit` writes `buffer_len` bytes.

use heapless::Vec;

use crate::wire::{DecodeError, EncodeError, FwVersion, MAX_COMMAND_BODY, ResetReason};

/// COMMAND codes.
pub mod code {
    /// Answered with status OK and the arguments echoed.
    pub const PING: u8 = 0x01;
    /// The node answers OK, then resets; its next boot reports reason `software`.
    pub const REBOOT: u8 = 0x02;
    /// The node sends a HEALTH at once, then answers OK (empty body).
    pub const HEALTH_NOW: u8 = 0x03;
    /// The node answers with its [`super::ResetHistory`], newest first.
    pub const RESET_HISTORY: u8 = 0x04;
    /// Arguments a [`super::LogRead`]; the node answers with a [`super::LogPage`].
    pub const LOG_READ: u8 = 0x05;
}

/// RESPONSE statuses.
pub mod status {
    /// The command ran; the body is its answer.
    pub const OK: u8 = 0;
    /// This node does not know the command code (older firmware): the session goes on.
    pub const UNSUPPORTED: u8 = 1;
    /// The command is known but its arguments are not what it takes.
    pub const BAD_ARGUMENTS: u8 = 2;
}

/// Bytes of one [`ResetRecord`] on the wire.
pub const RESET_RECORD_LEN: usize = 8;
/// Most resets a RESET_HISTORY answer carries (and a node keeps): one count byte and seven
/// records fill a RESPONSE body.
pub const MAX_RESET_RECORDS: usize = (MAX_COMMAND_BODY - 1) / RESET_RECORD_LEN;
/// Bytes of one [`LogEntry`] on the wire.
pub const LOG_ENTRY_LEN: usize = 7;
/// Bytes of a [`LogPage`] before its entries: first, next, count.
const LOG_PAGE_HEADER: usize = 4 + 4 + 1;
/// Most log entries one LOG_READ answer carries.
pub const MAX_LOG_PAGE: usize = (MAX_COMMAND_BODY - LOG_PAGE_HEADER) / LOG_ENTRY_LEN;

/// One boot of the node, as it recorded it in flash when it started: why the previous run
/// ended, the firmware that booted, and the boot's number in the node's life. Consecutive
/// numbers with no missing one mean no boot went unrecorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetRecord {
    /// Boots counted since the history was first written (1 for the first).
    pub boot: u32,
    /// Why the node reset into this boot.
    pub reason: ResetReason,
    /// The firmware that booted.
    pub fw: FwVersion,
}

impl ResetRecord {
    /// `[boot u32 LE][reason][fw major, minor, patch]`.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; RESET_RECORD_LEN] {
        let b = self.boot.to_le_bytes();
        [
            b[0],
            b[1],
            b[2],
            b[3],
            self.reason.code(),
            self.fw.major,
            self.fw.minor,
            self.fw.patch,
        ]
    }

    #[must_use]
    pub fn from_bytes(bytes: &[u8; RESET_RECORD_LEN]) -> Self {
        ResetRecord {
            boot: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            reason: ResetReason::from_code(bytes[4]),
            fw: FwVersion {
                major: bytes[5],
                minor: bytes[6],
                patch: bytes[7],
            },
        }
    }
}

/// The answer to RESET_HISTORY: the node's last resets, newest first. Body:
/// `[n][n × ResetRecord]`, `n <= MAX_RESET_RECORDS`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResetHistory {
    pub records: Vec<ResetRecord, MAX_RESET_RECORDS>,
}

impl ResetHistory {
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        1 + RESET_RECORD_LEN * self.records.len()
    }

    pub fn emit(&self, out: &mut Vec<u8, MAX_COMMAND_BODY>) -> Result<(), EncodeError> {
        out.clear();
        // At most 7: `records` cannot hold more.
        out.push(self.records.len() as u8)
            .map_err(|_| EncodeError)?;
        for record in &self.records {
            out.extend_from_slice(&record.to_bytes())
                .map_err(|_| EncodeError)?;
        }
        Ok(())
    }

    pub fn parse(body: &[u8]) -> Result<Self, DecodeError> {
        let (&n, rest) = body.split_first().ok_or(DecodeError::Truncated)?;
        let n = usize::from(n);
        if n > MAX_RESET_RECORDS {
            return Err(DecodeError::TooMany);
        }
        match rest.len().cmp(&(n * RESET_RECORD_LEN)) {
            core::cmp::Ordering::Less => return Err(DecodeError::Truncated),
            core::cmp::Ordering::Greater => return Err(DecodeError::TrailingBytes),
            core::cmp::Ordering::Equal => {}
        }
        let mut records = Vec::new();
        for chunk in rest.chunks_exact(RESET_RECORD_LEN) {
            let mut bytes = [0u8; RESET_RECORD_LEN];
            bytes.copy_from_slice(chunk);
            // Cannot overflow: n <= MAX_RESET_RECORDS was checked.
            let _ = records.push(ResetRecord::from_bytes(&bytes));
        }
        Ok(ResetHistory { records })
    }
}

/// What a log entry records. Codes are stable; an unknown one is kept as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogEvent {
    /// A session opened; arg: sessions opened this boot (low 16 bits).
    LinkUp,
    /// The gateway went silent for the link timeout; arg: samples held.
    LinkDown,
    /// Sealed frames that did not open (forged, replayed); arg: how many in a row, coalesced.
    AuthFailed,
    /// A sample failed to read; arg: how many in a row, coalesced.
    SensorError,
    /// The firmware update moved to a phase; arg: the OTA_STATUS phase code.
    OtaPhase,
    /// The main loop came close to the watchdog's deadline; arg: ms left when it was fed.
    WatchdogNearMiss,
    /// The node is about to reset because the gateway asked (REBOOT).
    RebootRequested,
    Other(u8),
}

impl LogEvent {
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            LogEvent::LinkUp => 1,
            LogEvent::LinkDown => 2,
            LogEvent::AuthFailed => 3,
            LogEvent::SensorError => 4,
            LogEvent::OtaPhase => 5,
            LogEvent::WatchdogNearMiss => 6,
            LogEvent::RebootRequested => 7,
            LogEvent::Other(c) => c,
        }
    }

    #[must_use]
    pub const fn from_code(code: u8) -> Self {
        match code {
            1 => LogEvent::LinkUp,
            2 => LogEvent::LinkDown,
            3 => LogEvent::AuthFailed,
            4 => LogEvent::SensorError,
            5 => LogEvent::OtaPhase,
            6 => LogEvent::WatchdogNearMiss,
            7 => LogEvent::RebootRequested,
            c => LogEvent::Other(c),
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            LogEvent::LinkUp => "link_up",
            LogEvent::LinkDown => "link_down",
            LogEvent::AuthFailed => "auth_failed",
            LogEvent::SensorError => "sensor_error",
            LogEvent::OtaPhase => "ota_phase",
            LogEvent::WatchdogNearMiss => "watchdog_near_miss",
            LogEvent::RebootRequested => "reboot_requested",
            LogEvent::Other(_) => "other",
        }
    }
}

/// One entry of the node's log ring: `[event][arg u16 LE][uptime_ms u32 LE]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEntry {
    pub event: LogEvent,
    pub arg: u16,
    /// Time since boot, ms (wraps after 49.7 days).
    pub uptime_ms: u32,
}

impl LogEntry {
    #[must_use]
    pub fn to_bytes(&self) -> [u8; LOG_ENTRY_LEN] {
        let a = self.arg.to_le_bytes();
        let t = self.uptime_ms.to_le_bytes();
        [self.event.code(), a[0], a[1], t[0], t[1], t[2], t[3]]
    }

    #[must_use]
    pub fn from_bytes(bytes: &[u8; LOG_ENTRY_LEN]) -> Self {
        LogEntry {
            event: LogEvent::from_code(bytes[0]),
            arg: u16::from_le_bytes([bytes[1], bytes[2]]),
            uptime_ms: u32::from_le_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]),
        }
    }
}

/// LOG_READ's arguments: `[from u32 LE]`, the number of the first entry wanted (entries are
/// numbered from 0 at boot, one per entry ever logged; the ring keeps the newest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRead {
    pub from: u32,
}

impl LogRead {
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 4] {
        self.from.to_le_bytes()
    }

    pub fn parse(args: &[u8]) -> Result<Self, DecodeError> {
        match <[u8; 4]>::try_from(args) {
            Ok(bytes) => Ok(LogRead {
                from: u32::from_le_bytes(bytes),
            }),
            Err(_) if args.len() < 4 => Err(DecodeError::Truncated),
            Err(_) => Err(DecodeError::TrailingBytes),
        }
    }
}

/// The answer to LOG_READ: `[first u32 LE][next u32 LE][n][n × LogEntry]`. `first` is the
/// number of the first entry returned (above the `from` asked for when older ones were
/// overwritten: the difference is lost), `next` the number the next entry logged will get.
/// More to read while `first + n < next`: ask again from `first + n`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogPage {
    pub first: u32,
    pub next: u32,
    pub entries: Vec<LogEntry, MAX_LOG_PAGE>,
}

impl LogPage {
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        LOG_PAGE_HEADER + LOG_ENTRY_LEN * self.entries.len()
    }

    /// Whether entries after this page remain.
    #[must_use]
    pub fn more(&self) -> bool {
        self.next.wrapping_sub(self.first) > self.entries.len() as u32
    }

    pub fn emit(&self, out: &mut Vec<u8, MAX_COMMAND_BODY>) -> Result<(), EncodeError> {
        out.clear();
        out.extend_from_slice(&self.first.to_le_bytes())
            .map_err(|_| EncodeError)?;
        out.extend_from_slice(&self.next.to_le_bytes())
            .map_err(|_| EncodeError)?;
        out.push(self.entries.len() as u8)
            .map_err(|_| EncodeError)?;
        for entry in &self.entries {
            out.extend_from_slice(&entry.to_bytes())
                .map_err(|_| EncodeError)?;
        }
        Ok(())
    }

    pub fn parse(body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() < LOG_PAGE_HEADER {
            return Err(DecodeError::Truncated);
        }
        let first = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
        let next = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
        let n = usize::from(body[8]);
        if n > MAX_LOG_PAGE {
            return Err(DecodeError::TooMany);
        }
        let rest = &body[LOG_PAGE_HEADER..];
        match rest.len().cmp(&(n * LOG_ENTRY_LEN)) {
            core::cmp::Ordering::Less => return Err(DecodeError::Truncated),
            core::cmp::Ordering::Greater => return Err(DecodeError::TrailingBytes),
            core::cmp::Ordering::Equal => {}
        }
        // A page cannot hold more entries than were ever logged from `first` on.
        if (next.wrapping_sub(first) as usize) < n {
            return Err(DecodeError::BadValue);
        }
        let mut entries = Vec::new();
        for chunk in rest.chunks_exact(LOG_ENTRY_LEN) {
            let mut bytes = [0u8; LOG_ENTRY_LEN];
            bytes.copy_from_slice(chunk);
            // Cannot overflow: n <= MAX_LOG_PAGE was checked.
            let _ = entries.push(LogEntry::from_bytes(&bytes));
        }
        Ok(LogPage {
            first,
            next,
            entries,
        })
    }
}

const _: () = {
    assert!(RESET_RECORD_LEN * MAX_RESET_RECORDS < MAX_COMMAND_BODY);
    assert!(LOG_PAGE_HEADER + LOG_ENTRY_LEN * MAX_LOG_PAGE <= MAX_COMMAND_BODY);
    assert!(MAX_RESET_RECORDS == 7 && MAX_LOG_PAGE == 7);
};
