//! The pace of a transfer's chunks on one line, so telemetry keeps its share of the downlink.

use std::time::Duration;

use outpost_proto::Millis;

/// The share of the gateway → node line a transfer's chunks may use unless configured
/// (`[ota] share`).
pub const DEFAULT_OTA_SHARE: f64 = 0.95;
/// The most a configured share is taken as: telemetry's ACKs, NACKs and commands keep at least
/// the other 5 % of the downlink whatever the configuration says.
pub const MAX_OTA_SHARE: f64 = 0.95;
/// The least a configured share is taken as (a transfer that never ends helps nobody).
pub const MIN_OTA_SHARE: f64 = 0.01;
/// The rate a line without one is paced at: USB CDC reports `baud` 0 and moves bytes far faster
/// than any UART, so chunks go at the pace of a 921,600-baud line (a 256 KiB image in about
/// 3 s), which the node's flash can follow (docs/ota-design.md Q8).
pub const DEFAULT_NOMINAL_BAUD: u32 = 921_600;

/// How early, in the whole millisecond `now` names, a chunk may go: the adapter's clock counts
/// whole milliseconds, so the true time is up to 999 µs later than `now` says. Without this the
/// pace would lose the fraction of a millisecond at every chunk.
const LATE_CREDIT_US: u64 = 999;

/// How late after a chunk's time the adapter may ask for it and still be charged from that
/// time: a timer wake-up on a busy machine, not a pause in the transfer.
const LATE_WAKE_US: u64 = 5_000;

/// A token bucket over the bytes chunks put on the line.
///
/// Design: chunks are paced at `ota_share` of the line's byte rate (`baud / 10`: 8N1 is ten
/// bits a byte), counting each chunk's framed length on the line, with a burst of one chunk. It
/// is kept in its "theoretical arrival time" form (GCRA, the same bucket): the time from which
/// the bucket holds the next chunk's bytes again. A chunk goes only once the previous ones have
/// had their time on the line at the paced rate, so the port's transmit buffer never holds more
/// than about one chunk, and a telemetry ACK written behind it waits at most that chunk's time
/// on the line (11.4 ms for 1 KiB at 921,600 baud, 91 ms at 115,200; plus up to 1 ms for the
/// whole-millisecond clock), below the node's `RTO_MIN` (200 ms). Over any stretch of time the
/// chunks use at most `ota_share` of the line plus one chunk, so the rest (at least 5 %: 4.6 KB/s
/// at 921,600 baud, about 177 ACKs a second; 22 a second at 115,200) stays for telemetry's
/// ACKs, NACKs and commands. Controls (QUERY, INSTALL) are not paced: like ACKs they go first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pacer {
    /// The line's byte rate and the share of it chunks get, in bytes per second.
    line_rate: u64,
    rate: u64,
    /// The bucket holds the next chunk's bytes from this time on (µs on the session's clock).
    ready_us: u64,
}

impl Pacer {
    /// A pacer for a line at `baud` (0: USB CDC, paced as [`DEFAULT_NOMINAL_BAUD`]) giving chunks
    /// `ota_share` of it (clamped to [`MIN_OTA_SHARE`]..=[`MAX_OTA_SHARE`]; not a number:
    /// [`DEFAULT_OTA_SHARE`]).
    #[must_use]
    pub fn new(baud: u32, ota_share: f64) -> Pacer {
        Pacer::with_nominal(baud, ota_share, DEFAULT_NOMINAL_BAUD)
    }

    /// [`Pacer::new`], with the rate a line of `baud` 0 is paced at.
    #[must_use]
    pub fn with_nominal(baud: u32, ota_share: f64, nominal_baud: u32) -> Pacer {
        let baud = if baud == 0 { nominal_baud } else { baud };
        let line_rate = u64::from(baud / 10).max(1);
        let share = if ota_share.is_nan() {
            DEFAULT_OTA_SHARE
        } else {
            ota_share.clamp(MIN_OTA_SHARE, MAX_OTA_SHARE)
        };
        // At most 429 MB/s: exact in an f64, and the product rounds to a whole byte rate.
        let rate = ((line_rate as f64 * share).round() as u64).max(1);
        Pacer {
            line_rate,
            rate,
            ready_us: 0,
        }
    }

    /// The line's rate in bytes per second.
    #[must_use]
    pub fn line_bytes_per_sec(&self) -> u64 {
        self.line_rate
    }

    /// The rate chunks are paced at, in bytes per second.
    #[must_use]
    pub fn bytes_per_sec(&self) -> u64 {
        self.rate
    }

    /// How long `line_bytes` take on the line itself (the most an ACK waits behind them).
    #[must_use]
    pub fn line_time(&self, line_bytes: usize) -> Duration {
        Duration::from_micros((line_bytes as u64 * 1_000_000).div_ceil(self.line_rate))
    }

    /// How long `line_bytes` take at the paced rate.
    #[must_use]
    pub fn paced_time(&self, line_bytes: usize) -> Duration {
        Duration::from_micros(self.cost_us(line_bytes))
    }

    fn cost_us(&self, line_bytes: usize) -> u64 {
        (line_bytes as u64 * 1_000_000).div_ceil(self.rate)
    }

    /// Whether a frame of `line_bytes` may go now; if so its bytes are taken from the bucket.
    pub fn try_send(&mut self, now: Millis, line_bytes: usize) -> bool {
        // `now` is a whole millisecond: the true time may be up to 999 µs later.
        let now_us = now.as_u64().saturating_mul(1000);
        if now_us.saturating_add(LATE_CREDIT_US) < self.ready_us {
            return false;
        }
        self.charge(now, line_bytes);
        true
    }

    /// Takes `line_bytes` from the bucket whatever it holds (an OFFER, which goes before chunks
    /// but uses the line as much): the next chunk waits for them.
    pub fn charge(&mut self, now: Millis, line_bytes: usize) {
        let now_us = now.as_u64().saturating_mul(1000);
        // A chunk asked for a little after its time (the adapter's timer woke late) is charged
        // from its time, so the lateness is not lost at every chunk; after a longer pause the
        // bucket starts from now and holds no credit for the idle time.
        let from = if now_us.saturating_sub(self.ready_us) <= LATE_WAKE_US {
            self.ready_us
        } else {
            now_us
        };
        self.ready_us = from.saturating_add(self.cost_us(line_bytes));
    }

    /// The first millisecond at which [`Pacer::try_send`] succeeds.
    #[must_use]
    pub fn ready_at(&self) -> Millis {
        Millis(self.ready_us.saturating_sub(LATE_CREDIT_US).div_ceil(1000))
    }
}
