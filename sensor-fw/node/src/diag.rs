//! The node's own diagnostics, as the gateway pulls them over the link (`outpost_proto::diag`):
//! a reset history that survives resets, in one flash sector, and a small RAM ring of log
//! entries.
//!
//! Design: both are plain values with no I/O but through [`RecordFlash`], the same sector
//! abstraction the OTA record uses, so the board, the simulator and the tests share them.
//!
//! # The reset history sector
//!
//! The board calls [`record_boot`] once per boot, before the link starts: it appends one slot
//! to the sector and returns the newest [`MAX_RESET_RECORDS`] boots for the link to answer
//! RESET_HISTORY with. Nothing is written per sample or per message.
//!
//! | bytes of a 12-byte slot | meaning |
//! |---|---|
//! | 0..8 | a [`ResetRecord`] (boot number, reason code, firmware) |
//! | 8..12 | commit mark: `00 00 00 00` once the record is whole |
//!
//! Slots fill the sector from offset 0. A slot is *free* when its 12 bytes read `FF`, *valid*
//! when its commit mark is zero, and *torn* otherwise (the power went while it was written): a
//! torn slot is skipped and never reused. The record is programmed before its mark, so a valid
//! slot is always whole. When no slot is free, the sector is erased and the newest records are
//! written back before the new one: a power cut in that window loses the history (not the node's
//! ability to boot), which at one write per boot and 341 slots happens once every 341 boots.

use heapless::{Deque, Vec};
use outpost_proto::diag::{
    LogEntry, LogEvent, LogPage, MAX_LOG_PAGE, MAX_RESET_RECORDS, RESET_RECORD_LEN, ResetHistory,
    ResetRecord,
};
use outpost_proto::{FwVersion, ResetReason};

use crate::boot::{RecordError, RecordFlash, SECTOR};

/// Bytes of one slot of the reset history sector: a record and its commit mark.
pub const SLOT_LEN: usize = RESET_RECORD_LEN + 4;
/// Slots in the sector.
pub const SLOTS: usize = SECTOR / SLOT_LEN;
const COMMITTED: [u8; 4] = [0; 4];

/// Reads the history the sector holds: its newest boots, newest first, and the number of the
/// newest boot (0 for a blank sector).
pub fn read_history<F: RecordFlash + ?Sized>(
    flash: &mut F,
) -> Result<(ResetHistory, u32), RecordError> {
    let (newest, last_boot, _) = scan(flash)?;
    Ok((history_of(&newest), last_boot))
}

/// Records this boot (why the node reset, the firmware it booted) and returns the history with
/// it, newest first. Call once per boot, before the link starts.
pub fn record_boot<F: RecordFlash + ?Sized>(
    flash: &mut F,
    reason: ResetReason,
    fw: FwVersion,
) -> Result<ResetHistory, RecordError> {
    let (mut newest, last_boot, free) = scan(flash)?;
    let record = ResetRecord {
        boot: last_boot.wrapping_add(1),
        reason,
        fw,
    };
    let slot = match free {
        Some(slot) => slot,
        None => {
            // Full: start the sector again with the records the history still shows.
            flash.erase()?;
            let keep = newest.len().min(MAX_RESET_RECORDS - 1);
            let skip = newest.len() - keep;
            for (slot, old) in newest.iter().skip(skip).enumerate() {
                write_slot(flash, slot, old)?;
            }
            keep
        }
    };
    write_slot(flash, slot, &record)?;
    if newest.is_full() {
        newest.pop_front();
    }
    let _ = newest.push_back(record);
    Ok(history_of(&newest))
}

fn write_slot<F: RecordFlash + ?Sized>(
    flash: &mut F,
    slot: usize,
    record: &ResetRecord,
) -> Result<(), RecordError> {
    // Cannot overflow: slot < SLOTS, and SLOTS * SLOT_LEN <= SECTOR.
    let at = (slot * SLOT_LEN) as u32;
    flash.program(at, &record.to_bytes())?;
    flash.program(at + RESET_RECORD_LEN as u32, &COMMITTED)
}

/// The newest valid records (oldest first), the newest boot number, and the first free slot.
#[allow(clippy::type_complexity)]
fn scan<F: RecordFlash + ?Sized>(
    flash: &mut F,
) -> Result<(Deque<ResetRecord, MAX_RESET_RECORDS>, u32, Option<usize>), RecordError> {
    let mut newest: Deque<ResetRecord, MAX_RESET_RECORDS> = Deque::new();
    let mut last_boot = 0;
    for slot in 0..SLOTS {
        let mut bytes = [0u8; SLOT_LEN];
        flash.read((slot * SLOT_LEN) as u32, &mut bytes)?;
        if bytes.iter().all(|&b| b == 0xFF) {
            return Ok((newest, last_boot, Some(slot)));
        }
        if bytes[RESET_RECORD_LEN..] != COMMITTED {
            continue; // torn: the power went while it was written
        }
        let mut record = [0u8; RESET_RECORD_LEN];
        record.copy_from_slice(&bytes[..RESET_RECORD_LEN]);
        let record = ResetRecord::from_bytes(&record);
        last_boot = record.boot;
        if newest.is_full() {
            newest.pop_front();
        }
        let _ = newest.push_back(record);
    }
    Ok((newest, last_boot, None))
}

fn history_of(oldest_first: &Deque<ResetRecord, MAX_RESET_RECORDS>) -> ResetHistory {
    let mut records = Vec::new();
    for record in oldest_first.iter().rev() {
        let _ = records.push(*record);
    }
    ResetHistory { records }
}

/// A sector of RAM as [`RecordFlash`], with NOR's rules (program clears bits only): for a board
/// without a spare flash sector (the history then lasts while the power does), and for tests.
#[derive(Debug, Clone)]
pub struct RamSector {
    bytes: [u8; SECTOR],
}

impl Default for RamSector {
    fn default() -> Self {
        RamSector {
            bytes: [0xFF; SECTOR],
        }
    }
}

impl RecordFlash for RamSector {
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), RecordError> {
        let range = range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn program(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RecordError> {
        let range = range(offset, bytes.len())?;
        let start = range.start;
        for (i, (old, new)) in self.bytes[range].iter().zip(bytes).enumerate() {
            if new & !old != 0 {
                return Err(RecordError::SetsBits {
                    offset: (start + i) as u32,
                });
            }
        }
        for (old, new) in self.bytes[start..].iter_mut().zip(bytes) {
            *old &= new;
        }
        Ok(())
    }

    fn erase(&mut self) -> Result<(), RecordError> {
        self.bytes.fill(0xFF);
        Ok(())
    }
}

fn range(offset: u32, len: usize) -> Result<core::ops::Range<usize>, RecordError> {
    let start = offset as usize;
    match start.checked_add(len) {
        Some(end) if end <= SECTOR => Ok(start..end),
        _ => Err(RecordError::OutOfBounds),
    }
}

/// Entries the node's log ring holds.
pub const LOG_RING: usize = 32;

/// The node's log: the newest [`LOG_RING`] events of this boot, in RAM. Entries are numbered
/// from 0, one number per entry ever logged, so a reader pages by number and sees what it
/// missed when the ring overwrote it.
#[derive(Debug, Clone, Default)]
pub struct LogRing<const N: usize = LOG_RING> {
    entries: Deque<LogEntry, N>,
    /// The number the next entry gets.
    next: u32,
}

impl<const N: usize> LogRing<N> {
    #[must_use]
    pub fn new() -> Self {
        LogRing {
            entries: Deque::new(),
            next: 0,
        }
    }

    /// Logs `event`. A repeat of the newest entry's auth failure or sensor error adds one to its
    /// count instead, so a flood of forged frames cannot push everything else out of the ring.
    pub fn push(&mut self, uptime_ms: u32, event: LogEvent, arg: u16) {
        if matches!(event, LogEvent::AuthFailed | LogEvent::SensorError)
            && let Some(newest) = self.entries.back_mut()
            && newest.event == event
        {
            newest.arg = newest.arg.saturating_add(1);
            return;
        }
        if self.entries.is_full() {
            self.entries.pop_front();
        }
        let _ = self.entries.push_back(LogEntry {
            event,
            arg,
            uptime_ms,
        });
        self.next = self.next.wrapping_add(1);
    }

    /// The number of the oldest entry held.
    #[must_use]
    pub fn oldest(&self) -> u32 {
        self.next.wrapping_sub(self.entries.len() as u32)
    }

    /// The number the next entry will get.
    #[must_use]
    pub fn next(&self) -> u32 {
        self.next
    }

    /// Up to [`MAX_LOG_PAGE`] entries from number `from` on (from the oldest held, when `from`
    /// was overwritten already).
    #[must_use]
    pub fn page(&self, from: u32) -> LogPage {
        let oldest = self.oldest();
        let first = from.clamp(oldest, self.next);
        let skip = (first - oldest) as usize;
        let mut entries = Vec::new();
        for entry in self.entries.iter().skip(skip).take(MAX_LOG_PAGE) {
            let _ = entries.push(*entry);
        }
        LogPage {
            first,
            next: self.next,
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    const FW1: FwVersion = FwVersion {
        major: 1,
        minor: 0,
        patch: 0,
    };
    const FW2: FwVersion = FwVersion {
        major: 1,
        minor: 1,
        patch: 0,
    };

    #[test]
    fn the_history_survives_a_reset_and_lists_the_newest_boot_first() {
        let mut flash = RamSector::default();
        record_boot(&mut flash, ResetReason::PowerOn, FW1).unwrap();
        record_boot(&mut flash, ResetReason::HardFault, FW1).unwrap();
        // The node resets: RAM is gone, the sector stays.
        let (history, last) = read_history(&mut flash).unwrap();
        assert_eq!(last, 2);
        let after = record_boot(&mut flash, ResetReason::Software, FW2).unwrap();
        assert_eq!(after.records.len(), 3);
        assert_eq!(
            after.records[0],
            ResetRecord {
                boot: 3,
                reason: ResetReason::Software,
                fw: FW2
            }
        );
        assert_eq!(after.records[1..], history.records[..]);
        assert_eq!(after.records[2].reason, ResetReason::PowerOn);
    }

    #[test]
    fn a_full_sector_is_erased_keeping_the_newest_records() {
        let mut flash = RamSector::default();
        for _ in 0..SLOTS {
            record_boot(&mut flash, ResetReason::Watchdog, FW1).unwrap();
        }
        let history = record_boot(&mut flash, ResetReason::PowerOn, FW2).unwrap();
        let boots: std::vec::Vec<u32> = history.records.iter().map(|r| r.boot).collect();
        let n = SLOTS as u32 + 1;
        assert_eq!(boots, (n - 6..=n).rev().collect::<std::vec::Vec<_>>());
        assert_eq!(read_history(&mut flash).unwrap().0, history);
        // And it goes on counting from there.
        let next = record_boot(&mut flash, ResetReason::PowerOn, FW2).unwrap();
        assert_eq!(next.records[0].boot, n + 1);
    }

    #[test]
    fn a_torn_slot_is_skipped_and_not_reused() {
        let mut flash = RamSector::default();
        record_boot(&mut flash, ResetReason::PowerOn, FW1).unwrap();
        // The power went after the record and before its commit mark.
        flash.program(SLOT_LEN as u32, &[9, 0, 0, 0, 1]).unwrap();
        let history = record_boot(&mut flash, ResetReason::Watchdog, FW1).unwrap();
        assert_eq!(history.records.len(), 2);
        assert_eq!(history.records[0].boot, 2);
        assert_eq!(history.records[0].reason, ResetReason::Watchdog);
        let mut third = [0u8; SLOT_LEN];
        flash.read(2 * SLOT_LEN as u32, &mut third).unwrap();
        assert_eq!(&third[RESET_RECORD_LEN..], &COMMITTED);
    }

    #[test]
    fn the_ring_wraps_and_pages_by_entry_number() {
        let mut ring: LogRing<8> = LogRing::new();
        for i in 0..20u16 {
            ring.push(u32::from(i) * 10, LogEvent::LinkUp, i);
        }
        assert_eq!((ring.oldest(), ring.next()), (12, 20));
        let page = ring.page(0);
        assert_eq!(page.first, 12, "entries 0..12 were overwritten");
        assert_eq!(page.entries.len(), MAX_LOG_PAGE);
        assert_eq!(page.entries[0].arg, 12);
        assert!(page.more());
        let rest = ring.page(page.first + page.entries.len() as u32);
        assert_eq!(rest.first, 19);
        assert_eq!(rest.entries.len(), 1);
        assert_eq!(rest.entries[0].arg, 19);
        assert!(!rest.more());
        let beyond = ring.page(1000);
        assert_eq!((beyond.first, beyond.entries.len()), (20, 0));
    }

    proptest::proptest! {
        /// The ring against a model (every entry ever logged, in a plain list): a page from any
        /// number holds exactly the model's entries from there, within what the ring keeps;
        /// reading page by page from 0 yields the newest entries in order.
        #[test]
        fn the_ring_pages_as_a_model_of_every_entry_does(
            events in proptest::collection::vec((0u8..8, proptest::prelude::any::<u16>()), 0..200),
            from in 0u32..220,
        ) {
            let mut ring: LogRing<16> = LogRing::new();
            let mut model: std::vec::Vec<LogEntry> = std::vec::Vec::new();
            for (t, &(code, arg)) in events.iter().enumerate() {
                let event = LogEvent::from_code(code);
                let t = t as u32;
                ring.push(t, event, arg);
                match model.last_mut() {
                    Some(last) if last.event == event
                        && matches!(event, LogEvent::AuthFailed | LogEvent::SensorError) =>
                    {
                        last.arg = last.arg.saturating_add(1);
                    }
                    _ => model.push(LogEntry { event, arg, uptime_ms: t }),
                }
            }
            proptest::prop_assert_eq!(ring.next() as usize, model.len());
            let oldest = model.len().saturating_sub(16);
            let page = ring.page(from);
            let first = (from as usize).clamp(oldest, model.len());
            proptest::prop_assert_eq!(page.first as usize, first);
            let expected = &model[first..(first + MAX_LOG_PAGE).min(model.len())];
            proptest::prop_assert_eq!(&page.entries[..], expected);
            // Paging from 0 reads the newest entries, each once, in order.
            let mut read = std::vec::Vec::new();
            let mut at = 0;
            loop {
                let page = ring.page(at);
                read.extend_from_slice(&page.entries);
                if !page.more() {
                    break;
                }
                at = page.first + page.entries.len() as u32;
            }
            proptest::prop_assert_eq!(&read[..], &model[oldest..]);
        }
    }

    #[test]
    fn repeated_auth_failures_take_one_entry() {
        let mut ring: LogRing<4> = LogRing::new();
        ring.push(1, LogEvent::LinkUp, 1);
        for t in 0..1000 {
            ring.push(t, LogEvent::AuthFailed, 1);
        }
        assert_eq!(ring.next(), 2);
        let page = ring.page(0);
        assert_eq!(page.entries[0].event, LogEvent::LinkUp);
        assert_eq!(page.entries[1].event, LogEvent::AuthFailed);
        assert_eq!(page.entries[1].arg, 1000);
    }
}
