//! The node's side of a firmware update, as an IO-free state machine (docs/ota.md).
//!
//! [`Updater`] takes the gateway's OTA messages (an OFFER, CHUNKs, CONTROLs), the session's
//! progress (ACCEPT, acknowledged samples) and time, and answers with OTA_STATUS messages and
//! [`OtaAction`]s (reset into the new image, or out of a failed trial). It touches flash only
//! through [`BootFlash`] (embassy-boot's slots and state) and two [`RecordFlash`] sectors: the
//! transfer record and the floor log.
//!
//! Rules:
//! - **Nothing is taken before the manifest verifies** (`outpost_proto::manifest::check` against
//!   the fleet keys built into the image), is for this board, is at or above the floor in force,
//!   is not the running version and fits the slot. A refusal is reported with its name.
//! - **The node is the source of truth for what it has.** It grants a window (`credit`) of
//!   [`WINDOW_SECTORS`] sectors beyond what is in flash, keeps chunks in RAM until their sector is
//!   whole, writes sectors in increasing order, reads each back before marking it in the record,
//!   and reports `flashed` and `have`. After a reset it resumes at the first sector not marked:
//!   at most the RAM window is sent again.
//! - **After a reset the phase is derived, not trusted**: from embassy-boot's state, the running
//!   version and the record's marks (docs/ota-design.md §3.2).
//! - **A trial image must prove itself** within `confirm_within` seconds of its boot: a session
//!   opened, [`CONFIRM_SAMPLES`] samples acknowledged by the gateway, the board's own checks,
//!   all still true after half that time (at most [`CONFIRM_DWELL_MAX`]). Only then is `mark_booted` called; otherwise the node resets and the bootloader reverts.
//! - **The floor rises only at FINALIZE**, after the whole rollout passed, so a rollback within a
//!   rollout is never refused by it.

use core::time::Duration;

use outpost_proto::manifest::{self, FirmwareManifest, ManifestRefusal};
use outpost_proto::{
    Bulk, ChunkSize, FwVersion, ImageTag, Millis, OtaChunk, OtaControl, OtaOffer, OtaOp, OtaPhase,
    OtaRefusal, OtaStatus, RevertCause,
};
use sha2::{Digest, Sha256};

use crate::boot::{BootFlash, BootState, RecordFlash, SECTOR, Sector};

/// Sectors beyond the last one in flash the node takes chunks for: its RAM (4 × 4 KiB) and the
/// transfer's window (16 chunks of 1 KiB, 182 ms of line at 921,600 baud).
pub const WINDOW_SECTORS: usize = 4;
/// Samples the gateway must acknowledge in a trial boot before the image confirms.
pub const CONFIRM_SAMPLES: u32 = 3;
/// The longest a trial image must stay healthy before it confirms: half its `confirm_within`,
/// at most this. A crash loop or a hang that shows within that time reverts.
pub const CONFIRM_DWELL_MAX: Duration = Duration::from_secs(30);
/// The trial's deadline when the record does not say (an INSTALL always does).
pub const DEFAULT_CONFIRM_WITHIN_S: u16 = 90;
/// Least time between two OTA_STATUS sent because a chunk arrived after a missing one.
pub const HOLE_REPORT_EVERY: Duration = Duration::from_millis(50);
/// The most image sectors a record can mark: the ACTIVE slot's.
pub const MAX_SECTORS: usize = 128;

/// What the board must do for the updater.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtaAction {
    /// The verified image is marked for a trial boot: stop sampling, wait (at most 2 s) until
    /// the gateway acknowledged every sample held, then reset. The bootloader swaps it in.
    ResetToInstall,
    /// The trial failed (`cause`): reset now, so the bootloader reverts to the previous image.
    /// The board keeps `cause` across the reset (a watchdog scratch register) and hands it back
    /// to [`Updater::new`] as [`LastReset::Requested`].
    ResetToRevert { cause: RevertCause },
}

/// Why the previous boot ended, as the board knows it: the chip's reset reason, or the cause
/// the board kept for a reset it made itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastReset {
    PowerOn,
    Watchdog,
    /// The firmware crashed (panic, hard fault).
    Crash,
    /// The firmware asked for it: [`OtaAction`] or another software reset.
    Requested {
        cause: RevertCause,
    },
    Other,
}

impl LastReset {
    fn revert_cause(self) -> RevertCause {
        match self {
            LastReset::PowerOn => RevertCause::PowerLoss,
            LastReset::Watchdog => RevertCause::Watchdog,
            LastReset::Crash => RevertCause::Crash,
            LastReset::Requested { cause } => cause,
            LastReset::Other => RevertCause::Unknown,
        }
    }
}

/// Fleet firmware keys a node carries: the current one, and the next during a rotation.
pub const MAX_FLEET_KEYS: usize = 2;

/// A firmware key block of a key file that is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileError {
    /// A `role firmware` block without a `public` line.
    NoPublicLine,
    /// A `public` value that is not 64 hex digits.
    NotHex,
}

impl core::fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            KeyFileError::NoPublicLine => "a firmware key block without a `public` line",
            KeyFileError::NotHex => "a firmware key's `public` value is not 64 hex digits",
        })
    }
}

/// The firmware public keys of a key file as `outpost firmware keygen` writes it (blocks of
/// `outpost-key 1`, `role`, `id`, `public <64 hex>`, separated by a blank line): the `public`
/// of every block whose role is `firmware`, in file order. The board's build script builds them
/// into the image; the simulator reads them at start.
pub fn fleet_keys(text: &str) -> impl Iterator<Item = Result<[u8; 32], KeyFileError>> + '_ {
    text.split("\n\n").filter_map(|block| {
        let field = |name: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        };
        if field("role") != Some("firmware") {
            return None;
        }
        let Some(public) = field("public") else {
            return Some(Err(KeyFileError::NoPublicLine));
        };
        Some(parse_key_hex(public.trim()))
    })
}

fn parse_key_hex(hex: &str) -> Result<[u8; 32], KeyFileError> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return Err(KeyFileError::NotHex);
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Ok(d - b'0'),
        b'a'..=b'f' => Ok(d - b'a' + 10),
        b'A'..=b'F' => Ok(d - b'A' + 10),
        _ => Err(KeyFileError::NotHex),
    };
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = (nibble(digits[2 * i])? << 4) | nibble(digits[2 * i + 1])?;
    }
    Ok(key)
}

/// The node's facts the updater holds an offer to.
#[derive(Debug, Clone)]
pub struct OtaConfig {
    /// The fleet's firmware public keys, built into the image.
    pub keys: heapless::Vec<[u8; 32], MAX_FLEET_KEYS>,
    pub hw_rev: u8,
    /// The version this image is.
    pub running: FwVersion,
    /// The lowest floor this image enforces even with an empty floor log.
    pub built_in_floor: FwVersion,
}

/// Counters for HEALTH and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OtaCounters {
    pub chunks: u32,
    /// Chunks for a sector already in flash, already held, beyond the window, of another image,
    /// or of the wrong length.
    pub chunks_dropped: u32,
    pub sectors_written: u32,
    pub offers_refused: u32,
    pub flash_errors: u32,
}

/// The OTA transfer record's layout in its sector (docs/ota.md, "The node's record"). Every
/// field is programmed once, 1 → 0; the sector is erased only when a new image is offered.
mod record {
    /// `OTA1`, programmed last of the header: a header cut short has none.
    pub(super) const MAGIC_AT: u32 = 0;
    pub(super) const MAGIC: [u8; 4] = *b"OTA1";
    pub(super) const MANIFEST_LEN_AT: u32 = 4;
    pub(super) const MANIFEST_AT: u32 = 6;
    /// Byte `i` is 0x00 once image sector `i` is in DFU and read back equal.
    pub(super) const SECTOR_MAP_AT: u32 = 1024;
    /// One byte each, 0x00 once reached.
    pub(super) const MARKS_AT: u32 = 1152;
    pub(super) const CONFIRM_WITHIN_AT: u32 = 1160;
    pub(super) const REVERT_CAUSE_AT: u32 = 1162;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mark {
    Verified = 0,
    Marked = 1,
    Trial = 2,
    Confirmed = 3,
    Reverted = 4,
}

/// The image the node holds a record of.
#[derive(Debug, Clone, Copy)]
struct Held {
    tag: ImageTag,
    manifest: FirmwareManifest,
    sectors: u32,
}

impl Held {
    /// Bytes of image sector `index` (the last one may be short).
    fn sector_len(&self, index: u32) -> usize {
        let start = index as usize * SECTOR;
        (self.manifest.size as usize - start).min(SECTOR)
    }
}

/// The trial of a new image in this boot.
#[derive(Debug, Clone, Copy)]
struct Trial {
    deadline: Millis,
    /// Not confirmed before this (`None` once it passed): an image that crashes or hangs a few
    /// seconds after boot must not get the time to mark itself good.
    dwell_until: Option<Millis>,
    session: bool,
    acked: u32,
}

/// The node's OTA core. See the module docs for the rules.
#[derive(Debug)]
pub struct Updater<B, R, F> {
    boot: B,
    record: R,
    floor_log: F,
    config: OtaConfig,
    floor: FwVersion,
    phase: OtaPhase,
    detail: u8,
    held: Option<Held>,
    chunk: ChunkSize,
    /// The first image sector not in flash.
    flashed_sectors: u32,
    /// RAM for the window: sector `s` lives in `buffers[s % WINDOW_SECTORS]`.
    buffers: [Sector; WINDOW_SECTORS],
    /// Bit `i`: chunk `flashed_chunks() + i` is held in RAM.
    have: u64,
    trial: Option<Trial>,
    /// A refusal to report once, about `ImageTag` (an offer, or the held image); the held
    /// transfer's own phase is left as it is.
    refusal: Option<(ImageTag, OtaRefusal)>,
    status_due: bool,
    last_hole_report: Option<Millis>,
    action: Option<OtaAction>,
    /// This boot is the first after a revert: HEALTH reports `ota_revert`.
    reverted_boot: bool,
    counters: OtaCounters,
}

impl<B: BootFlash, R: RecordFlash, F: RecordFlash> Updater<B, R, F> {
    /// The updater of a node that has just booted at `now`. Reads the floor log and the record,
    /// asks embassy-boot's state, and derives where the node is (docs/ota-design.md §3.2):
    /// resuming a transfer, waiting to install, on trial, reverted, or confirmed.
    pub fn new(
        now: Millis,
        boot: B,
        record: R,
        floor_log: F,
        config: OtaConfig,
        last_reset: LastReset,
    ) -> Self {
        let mut updater = Updater {
            boot,
            record,
            floor_log,
            config,
            floor: FwVersion::default(),
            phase: OtaPhase::Idle,
            detail: 0,
            held: None,
            chunk: ChunkSize::B1024,
            flashed_sectors: 0,
            buffers: [[0xFF; SECTOR]; WINDOW_SECTORS],
            have: 0,
            trial: None,
            refusal: None,
            status_due: true,
            last_hole_report: None,
            action: None,
            reverted_boot: false,
            counters: OtaCounters::default(),
        };
        updater.floor = updater.config.built_in_floor;
        if let Some(logged) = floor_log::read(&mut updater.floor_log) {
            updater.floor = updater.floor.max(logged);
        }
        updater.derive(now, last_reset);
        updater
    }

    fn derive(&mut self, now: Millis, last_reset: LastReset) {
        let state = match self.boot.boot_state() {
            Ok(state) => state,
            Err(_) => {
                self.counters.flash_errors += 1;
                return;
            }
        };
        self.held = self.read_held();
        let Some(held) = self.held else {
            // No record (or one that no longer verifies). A state left by a transfer whose
            // record is gone is settled so the next boot is a plain one.
            match state {
                BootState::Revert => {
                    self.reverted_boot = true;
                    let _ = self.boot.mark_booted();
                }
                BootState::Swap => self.start_trial(now, DEFAULT_CONFIRM_WITHIN_S),
                BootState::Boot | BootState::DfuDetach => {}
            }
            return;
        };
        let on_new_image = held.manifest.version == self.config.running;
        match (state, on_new_image) {
            (BootState::Swap, true) => {
                self.mark(Mark::Trial);
                let within = self.confirm_within();
                self.start_trial(now, within);
            }
            (BootState::Swap, false) => {
                // Marked for install, not yet rebooted into it.
                self.phase = OtaPhase::Installing;
                self.action = Some(OtaAction::ResetToInstall);
            }
            (BootState::Revert, false) if !self.marked(Mark::Marked) => {
                // Nothing was installed from this record: a torn STATE erase can read as
                // REVERT. Settle it, and carry on as a plain boot.
                let _ = self.boot.mark_booted();
                self.derive_plain_boot(held);
            }
            (BootState::Revert, false) => {
                let cause = if self.marked(Mark::Reverted) {
                    self.revert_cause()
                } else {
                    let cause = last_reset.revert_cause();
                    let _ = self.record.program(record::REVERT_CAUSE_AT, &[cause as u8]);
                    self.mark(Mark::Reverted);
                    cause
                };
                self.reverted_boot = true;
                if self.boot.mark_booted().is_err() {
                    self.counters.flash_errors += 1;
                }
                self.phase = OtaPhase::Reverted;
                self.detail = cause as u8;
            }
            (BootState::Revert, true) => {
                // A confirm cut short between "progress invalid" and the STATE erase: the
                // bootloader "reverted" without copying anything. This image is confirmed.
                self.confirm();
            }
            (BootState::Boot | BootState::DfuDetach, true) => {
                self.mark(Mark::Confirmed);
                self.phase = OtaPhase::Confirmed;
            }
            (BootState::Boot | BootState::DfuDetach, false) => self.derive_plain_boot(held),
        }
    }

    /// The old image runs normally: the record says how far the transfer got.
    fn derive_plain_boot(&mut self, held: Held) {
        if self.marked(Mark::Reverted) {
            self.phase = OtaPhase::Reverted;
            self.detail = self.revert_cause() as u8;
        } else if self.marked(Mark::Verified) {
            // Verified, maybe marked for install too: an install that did not take (cut
            // during `mark_updated`) waits for the gateway's next INSTALL.
            self.phase = OtaPhase::Verified;
            self.flashed_sectors = held.sectors;
        } else {
            self.phase = OtaPhase::Receiving;
            self.flashed_sectors = self.first_unmarked_sector(held.sectors);
            self.after_flash_progress();
        }
    }

    // ---- inputs ----

    /// A bulk message from the gateway, its seal verified.
    pub fn handle_bulk(&mut self, now: Millis, bulk: Bulk<'_>) {
        match bulk {
            Bulk::Offer(offer) => self.handle_offer(offer),
            Bulk::Chunk(chunk) => self.handle_chunk(now, chunk),
        }
    }

    /// An OTA_CONTROL from the gateway, its seal verified.
    pub fn handle_control(&mut self, control: OtaControl) {
        self.status_due = true;
        let ours = self.held.is_some_and(|h| h.tag == control.image);
        if control.op == OtaOp::Query {
            return;
        }
        if !ours {
            self.refusal = Some((control.image, OtaRefusal::UnknownImage));
            return;
        }
        match control.op {
            OtaOp::Query => {}
            OtaOp::Install => self.install(control.arg),
            OtaOp::Abort => {
                if !matches!(self.phase, OtaPhase::Installing | OtaPhase::Trial) {
                    self.forget();
                }
            }
            OtaOp::Finalize => {
                if self.phase == OtaPhase::Confirmed
                    && let Some(held) = self.held
                {
                    let floor = held.manifest.floor;
                    if floor > self.floor && floor_log::append(&mut self.floor_log, floor).is_ok() {
                        self.floor = floor;
                    }
                    self.forget();
                }
            }
        }
    }

    /// A session opened (a sealed ACCEPT in this boot): the gateway hears the node again.
    pub fn handle_session_up(&mut self, _now: Millis) {
        self.status_due = true;
        if let Some(trial) = &mut self.trial {
            trial.session = true;
        }
    }

    /// The gateway acknowledged every sample of this boot up to `upto`.
    pub fn handle_acked(&mut self, _now: Millis, upto: u32) {
        if let Some(trial) = &mut self.trial {
            trial.acked = trial.acked.max(upto);
        }
    }

    /// Runs the trial: confirms the image when it has proved itself and `board_ok` (the board's
    /// own checks: watchdog running, stack sane); asks for a revert when its time is up.
    pub fn handle_timeout(&mut self, now: Millis, board_ok: bool) {
        let Some(trial) = &mut self.trial else { return };
        if trial.dwell_until.is_some_and(|until| now >= until) {
            trial.dwell_until = None;
        }
        let trial = *trial;
        let proven = trial.session && trial.acked >= CONFIRM_SAMPLES && trial.dwell_until.is_none();
        if proven && board_ok {
            self.confirm();
        } else if now >= trial.deadline && self.action.is_none() {
            self.action = Some(OtaAction::ResetToRevert {
                cause: RevertCause::Deadline,
            });
        }
    }

    // ---- outputs ----

    /// The OTA_STATUS to send now, if one is due.
    pub fn poll_status(&mut self) -> Option<OtaStatus> {
        if let Some((image, refusal)) = self.refusal.take() {
            return Some(OtaStatus {
                image,
                phase: OtaPhase::Refused,
                detail: refusal as u8,
                flashed: 0,
                have: 0,
                credit: 0,
                chunk: self.chunk,
                floor: self.floor,
            });
        }
        if !core::mem::take(&mut self.status_due) {
            return None;
        }
        Some(self.status())
    }

    /// What the board must do now.
    pub fn poll_action(&mut self) -> Option<OtaAction> {
        self.action.take()
    }

    /// When [`Updater::handle_timeout`] must next be called: the trial's deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.trial.map(|t| t.dwell_until.unwrap_or(t.deadline))
    }

    // ---- accessors ----

    /// The status the node would report now.
    #[must_use]
    pub fn status(&self) -> OtaStatus {
        let cps = self.chunks_per_sector();
        let (tag, total) = match self.held {
            Some(h) => (h.tag, self.total_chunks(&h)),
            None => (ImageTag::default(), 0),
        };
        let flashed = (self.flashed_sectors * cps).min(total);
        let credit = ((self.flashed_sectors + WINDOW_SECTORS as u32) * cps).min(total);
        OtaStatus {
            image: tag,
            phase: self.phase,
            detail: self.detail,
            flashed: clamp_u16(flashed),
            have: if self.phase == OtaPhase::Receiving {
                self.have
            } else {
                0
            },
            credit: if self.phase == OtaPhase::Receiving {
                clamp_u16(credit)
            } else {
                clamp_u16(flashed)
            },
            chunk: self.chunk,
            floor: self.floor,
        }
    }

    #[must_use]
    pub fn phase(&self) -> OtaPhase {
        self.phase
    }

    #[must_use]
    pub fn floor(&self) -> FwVersion {
        self.floor
    }

    /// This boot followed a revert: the board reports reset reason `ota_revert`.
    #[must_use]
    pub fn reverted_boot(&self) -> bool {
        self.reverted_boot
    }

    /// In a trial boot: the image has not confirmed yet.
    #[must_use]
    pub fn on_trial(&self) -> bool {
        self.trial.is_some()
    }

    #[must_use]
    pub fn counters(&self) -> OtaCounters {
        self.counters
    }

    /// The flash adapters back (the simulator keeps its file across simulated boots).
    pub fn into_parts(self) -> (B, R, F) {
        (self.boot, self.record, self.floor_log)
    }

    // ---- the offer ----

    fn handle_offer(&mut self, offer: OtaOffer<'_>) {
        self.status_due = true;
        let refuse = |this: &mut Self, refusal| {
            this.counters.offers_refused += 1;
            this.refusal = Some((offer.image, refusal));
        };
        if matches!(self.phase, OtaPhase::Installing | OtaPhase::Trial)
            || self.boot.boot_state() == Ok(BootState::Swap)
        {
            return refuse(self, OtaRefusal::Busy);
        }
        let checked = match manifest::check(offer.manifest, &self.config.keys) {
            Ok(m) => m,
            Err(refusal) => {
                return refuse(
                    self,
                    match refusal {
                        ManifestRefusal::BadSignature => OtaRefusal::BadSignature,
                        ManifestRefusal::NotFirmware => OtaRefusal::NotFirmware,
                        ManifestRefusal::BelowFloor => OtaRefusal::BelowFloor,
                    },
                );
            }
        };
        let refusal = if ImageTag::of(&checked.sha256) != offer.image || checked.size == 0 {
            Some(OtaRefusal::NotFirmware)
        } else if checked.hw_rev != self.config.hw_rev {
            Some(OtaRefusal::WrongHardware)
        } else if checked.version < self.floor {
            Some(OtaRefusal::BelowFloor)
        } else if checked.version == self.config.running {
            Some(OtaRefusal::SameVersion)
        } else if checked.size > self.boot.slot_size() {
            Some(OtaRefusal::TooLarge)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return refuse(self, refusal);
        }
        if self
            .held
            .is_some_and(|h| h.manifest.sha256 == checked.sha256)
            && matches!(self.phase, OtaPhase::Receiving | OtaPhase::Verified)
        {
            // The same image again: resume. A new chunk size keeps the sectors in flash (the
            // record counts sectors) and drops only what RAM held.
            if self.chunk != offer.chunk {
                self.chunk = offer.chunk;
                self.have = 0;
            }
            return;
        }
        // A new image: the old record goes, the new one is written header first, magic last.
        if self.write_header(offer.manifest).is_err() {
            self.counters.flash_errors += 1;
            self.held = None;
            self.phase = OtaPhase::Idle;
            return refuse(self, OtaRefusal::FlashError);
        }
        let sectors = checked.size.div_ceil(SECTOR as u32);
        self.held = Some(Held {
            tag: offer.image,
            manifest: checked,
            sectors,
        });
        self.chunk = offer.chunk;
        self.flashed_sectors = 0;
        self.have = 0;
        self.phase = OtaPhase::Receiving;
        self.detail = 0;
    }

    fn write_header(&mut self, manifest: &[u8]) -> Result<(), crate::boot::RecordError> {
        self.record.erase()?;
        // At most MAX_MANIFEST_LEN (900): `manifest::check` refused anything longer.
        let len = manifest.len() as u16;
        self.record
            .program(record::MANIFEST_LEN_AT, &len.to_le_bytes())?;
        self.record.program(record::MANIFEST_AT, manifest)?;
        self.record.program(record::MAGIC_AT, &record::MAGIC)
    }

    // ---- chunks ----

    fn handle_chunk(&mut self, now: Millis, chunk: OtaChunk<'_>) {
        self.counters.chunks = self.counters.chunks.wrapping_add(1);
        let Some(held) = self.held.filter(|h| h.tag == chunk.image) else {
            return self.drop_chunk();
        };
        if self.phase != OtaPhase::Receiving {
            return self.drop_chunk();
        }
        let cps = self.chunks_per_sector();
        let index = u32::from(chunk.index);
        let flashed = self.flashed_sectors * cps;
        let credit =
            ((self.flashed_sectors + WINDOW_SECTORS as u32) * cps).min(self.total_chunks(&held));
        if index < flashed || index >= credit {
            // Already in flash, or beyond the window: the gateway's view is stale.
            self.report_hole(now);
            return self.drop_chunk();
        }
        let bit = index - flashed;
        let start = index as usize * self.chunk.bytes();
        let expected = (held.manifest.size as usize - start).min(self.chunk.bytes());
        if chunk.data.len() != expected || self.have & (1 << bit) != 0 {
            return self.drop_chunk();
        }
        let sector = start / SECTOR;
        let within = start % SECTOR;
        self.buffers[sector % WINDOW_SECTORS][within..within + expected]
            .copy_from_slice(chunk.data);
        self.have |= 1 << bit;
        // A hole below the newest chunk: say so now (at most every 50 ms), not at a timeout.
        if self.have & ((1u64 << bit) - 1) != (1u64 << bit) - 1 {
            self.report_hole(now);
        }
        self.flush_sectors();
    }

    fn drop_chunk(&mut self) {
        self.counters.chunks_dropped = self.counters.chunks_dropped.wrapping_add(1);
    }

    fn report_hole(&mut self, now: Millis) {
        if self
            .last_hole_report
            .is_none_or(|at| now >= at + HOLE_REPORT_EVERY)
        {
            self.last_hole_report = Some(now);
            self.status_due = true;
        }
    }

    /// Writes every whole sector at the front of the window, in order.
    fn flush_sectors(&mut self) {
        let Some(held) = self.held else { return };
        let cps = self.chunks_per_sector();
        while self.flashed_sectors < held.sectors {
            let sector = self.flashed_sectors;
            let chunks = self.chunks_in_sector(&held, sector);
            let mask = (1u64 << chunks) - 1;
            if self.have & mask != mask {
                return;
            }
            let len = held.sector_len(sector);
            let buffer = &mut self.buffers[sector as usize % WINDOW_SECTORS];
            // The tail of a short last sector is erased flash.
            buffer[len..].fill(0xFF);
            if self.write_and_check(sector).is_err() {
                // Reported; the sector stays unmarked and is sent and written again.
                self.counters.flash_errors += 1;
                self.have &= !mask;
                self.refusal = Some((held.tag, OtaRefusal::FlashError));
                return;
            }
            let _ = self.record.program(record::SECTOR_MAP_AT + sector, &[0x00]);
            self.counters.sectors_written += 1;
            self.flashed_sectors += 1;
            self.have >>= cps;
            self.status_due = true;
            self.after_flash_progress();
        }
    }

    fn write_and_check(&mut self, sector: u32) -> Result<(), ()> {
        let buffer = &self.buffers[sector as usize % WINDOW_SECTORS];
        self.boot.write_sector(sector, buffer).map_err(|_| ())?;
        let mut back = [0u8; 256];
        for (i, expected) in buffer.chunks(back.len()).enumerate() {
            let offset = sector * SECTOR as u32 + (i * back.len()) as u32;
            self.boot.read_dfu(offset, &mut back).map_err(|_| ())?;
            if back != *expected {
                return Err(());
            }
        }
        Ok(())
    }

    /// After a sector reached flash (or at boot): once every sector is there, verify.
    fn after_flash_progress(&mut self) {
        let Some(held) = self.held else { return };
        if self.phase != OtaPhase::Receiving || self.flashed_sectors < held.sectors {
            return;
        }
        self.status_due = true;
        if self.image_hash_matches(&held) {
            self.mark(Mark::Verified);
            self.phase = OtaPhase::Verified;
        } else {
            // The bytes in DFU are not the signed image: start over.
            self.forget();
            self.refusal = Some((held.tag, OtaRefusal::Damaged));
        }
    }

    fn image_hash_matches(&mut self, held: &Held) -> bool {
        let mut hasher = Sha256::new();
        let mut buf = [0u8; 256];
        let size = held.manifest.size;
        let mut at = 0;
        while at < size {
            let len = (size - at).min(buf.len() as u32) as usize;
            if self.boot.read_dfu(at, &mut buf[..len]).is_err() {
                self.counters.flash_errors += 1;
                return false;
            }
            hasher.update(&buf[..len]);
            at += len as u32;
        }
        <[u8; 32]>::from(hasher.finalize()) == held.manifest.sha256
    }

    // ---- install, trial, confirm ----

    fn install(&mut self, confirm_within_s: u16) {
        let Some(held) = self.held else { return };
        if self.phase != OtaPhase::Verified {
            return;
        }
        // Checked again right before it counts: flash can change under a node.
        if !self.image_hash_matches(&held) {
            self.forget();
            self.refusal = Some((held.tag, OtaRefusal::Damaged));
            return;
        }
        let within = if confirm_within_s == 0 {
            DEFAULT_CONFIRM_WITHIN_S
        } else {
            confirm_within_s
        };
        let _ = self
            .record
            .program(record::CONFIRM_WITHIN_AT, &within.to_le_bytes());
        self.mark(Mark::Marked);
        if self.boot.mark_updated().is_err() {
            self.counters.flash_errors += 1;
            self.refusal = Some((held.tag, OtaRefusal::FlashError));
            return;
        }
        self.phase = OtaPhase::Installing;
        self.action = Some(OtaAction::ResetToInstall);
    }

    fn start_trial(&mut self, now: Millis, within_s: u16) {
        self.phase = OtaPhase::Trial;
        let within = Duration::from_secs(u64::from(within_s));
        self.trial = Some(Trial {
            deadline: now + within,
            dwell_until: Some(now + (within / 2).min(CONFIRM_DWELL_MAX)),
            session: false,
            acked: 0,
        });
    }

    fn confirm(&mut self) {
        if self.boot.mark_booted().is_err() {
            self.counters.flash_errors += 1;
            return;
        }
        self.trial = None;
        self.mark(Mark::Confirmed);
        self.phase = OtaPhase::Confirmed;
        self.detail = 0;
        self.status_due = true;
    }

    /// Drops the transfer and its record.
    fn forget(&mut self) {
        if self.record.erase().is_err() {
            self.counters.flash_errors += 1;
        }
        self.held = None;
        self.flashed_sectors = 0;
        self.have = 0;
        self.phase = OtaPhase::Idle;
        self.detail = 0;
        self.status_due = true;
    }

    // ---- the record ----

    fn read_held(&mut self) -> Option<Held> {
        let mut magic = [0u8; 4];
        self.record.read(record::MAGIC_AT, &mut magic).ok()?;
        if magic != record::MAGIC {
            return None;
        }
        let mut len = [0u8; 2];
        self.record.read(record::MANIFEST_LEN_AT, &mut len).ok()?;
        let len = usize::from(u16::from_le_bytes(len));
        let mut text = [0u8; outpost_proto::wire::MAX_MANIFEST_LEN];
        let text = text.get_mut(..len)?;
        self.record.read(record::MANIFEST_AT, text).ok()?;
        // Checked again: the record is flash a power cut or a bit flip can touch.
        let manifest = manifest::check(text, &self.config.keys).ok()?;
        Some(Held {
            tag: ImageTag::of(&manifest.sha256),
            manifest,
            sectors: manifest.size.div_ceil(SECTOR as u32),
        })
    }

    fn first_unmarked_sector(&mut self, sectors: u32) -> u32 {
        let mut map = [0xFFu8; MAX_SECTORS];
        if self.record.read(record::SECTOR_MAP_AT, &mut map).is_err() {
            return 0;
        }
        // Sectors are written in order: the map is a prefix of zeros.
        map.iter()
            .take(sectors as usize)
            .position(|&b| b != 0x00)
            .map_or(sectors, |i| i as u32)
    }

    fn mark(&mut self, mark: Mark) {
        if !self.marked(mark)
            && self
                .record
                .program(record::MARKS_AT + mark as u32, &[0x00])
                .is_err()
        {
            self.counters.flash_errors += 1;
        }
    }

    fn marked(&mut self, mark: Mark) -> bool {
        let mut byte = [0xFF];
        self.record
            .read(record::MARKS_AT + mark as u32, &mut byte)
            .is_ok()
            && byte[0] == 0x00
    }

    fn confirm_within(&mut self) -> u16 {
        let mut bytes = [0xFF; 2];
        let _ = self.record.read(record::CONFIRM_WITHIN_AT, &mut bytes);
        match u16::from_le_bytes(bytes) {
            0 | 0xFFFF => DEFAULT_CONFIRM_WITHIN_S,
            s => s,
        }
    }

    fn revert_cause(&mut self) -> RevertCause {
        let mut byte = [0xFF];
        let _ = self.record.read(record::REVERT_CAUSE_AT, &mut byte);
        RevertCause::from_code(byte[0])
    }

    // ---- sizes ----

    fn chunks_per_sector(&self) -> u32 {
        (SECTOR / self.chunk.bytes()) as u32
    }

    fn total_chunks(&self, held: &Held) -> u32 {
        held.manifest.size.div_ceil(self.chunk.bytes() as u32)
    }

    fn chunks_in_sector(&self, held: &Held, sector: u32) -> u32 {
        (held.sector_len(sector) as u32).div_ceil(self.chunk.bytes() as u32)
    }
}

impl<B: BootFlash, R: RecordFlash, F: RecordFlash> crate::link::OtaHandler for Updater<B, R, F> {
    fn handle_bulk(&mut self, now: Millis, bulk: Bulk<'_>) {
        Updater::handle_bulk(self, now, bulk);
    }
    fn handle_control(&mut self, control: OtaControl) {
        Updater::handle_control(self, control);
    }
    fn handle_session_up(&mut self, now: Millis) {
        Updater::handle_session_up(self, now);
    }
    fn handle_acked(&mut self, now: Millis, upto: u32) {
        Updater::handle_acked(self, now, upto);
    }
    fn poll_status(&mut self) -> Option<OtaStatus> {
        Updater::poll_status(self)
    }
    fn handle_timeout(&mut self, now: Millis, board_ok: bool) {
        Updater::handle_timeout(self, now, board_ok);
    }
    fn poll_timeout(&self) -> Option<Millis> {
        Updater::poll_timeout(self)
    }
    fn poll_action(&mut self) -> Option<OtaAction> {
        Updater::poll_action(self)
    }
    fn phase_code(&self) -> Option<u8> {
        Some(self.phase() as u8)
    }
}

fn clamp_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// The floor in force, kept in a sector of its own as an append-only log: each entry is the
/// version's three bytes, then a 0x00 that makes it count (programmed last, so a cut entry does
/// not). The floor is the highest entry. The sector is erased only when full (1,024 floors),
/// then the floor is written first thing.
mod floor_log {
    use super::{FwVersion, RecordFlash, SECTOR};
    use crate::boot::RecordError;

    const ENTRY: usize = 4;

    pub(super) fn read<F: RecordFlash>(log: &mut F) -> Option<FwVersion> {
        let mut best: Option<FwVersion> = None;
        let mut entry = [0u8; ENTRY];
        for i in 0..SECTOR / ENTRY {
            log.read((i * ENTRY) as u32, &mut entry).ok()?;
            if entry == [0xFF; ENTRY] {
                break;
            }
            if entry[3] == 0x00 {
                let v = FwVersion {
                    major: entry[0],
                    minor: entry[1],
                    patch: entry[2],
                };
                best = Some(best.map_or(v, |b| b.max(v)));
            }
        }
        best
    }

    pub(super) fn append<F: RecordFlash>(log: &mut F, floor: FwVersion) -> Result<(), RecordError> {
        let mut entry = [0u8; ENTRY];
        let mut free = None;
        for i in 0..SECTOR / ENTRY {
            log.read((i * ENTRY) as u32, &mut entry)?;
            if entry == [0xFF; ENTRY] {
                free = Some(i);
                break;
            }
        }
        let at = match free {
            Some(i) => (i * ENTRY) as u32,
            None => {
                log.erase()?;
                0
            }
        };
        log.program(at, &[floor.major, floor.minor, floor.patch])?;
        log.program(at + 3, &[0x00])
    }
}

#[cfg(test)]
mod tests;
