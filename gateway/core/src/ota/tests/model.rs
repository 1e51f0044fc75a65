//! A model node: the node's side of `docs/ota-design.md` §4.3, faithful enough to drive the
//! transfer against (credit, sector writes, reports), with its flash kept across a reset and
//! its RAM lost.

use std::collections::{BTreeMap, VecDeque};

use outpost_proto::{
    ChunkSize, FwVersion, ImageTag, Millis, OtaControl, OtaOp, OtaPhase, OtaRefusal, OtaStatus,
    RevertCause,
};
use sha2::{Digest as _, Sha256};

/// A DFU sector (the RP2040's erase size) and the sectors a node holds in RAM beyond flash.
pub(super) const SECTOR: usize = 4096;
pub(super) const RAM_SECTORS: usize = 4;
/// The node's slot (ACTIVE).
const SLOT: usize = 512 * 1024;
/// A node reports a hole at most this often (like NACK).
const HOLE_REPORT_MS: u64 = 50;

/// A frame from the gateway, as the node reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Down {
    Offer {
        image: ImageTag,
        chunk: ChunkSize,
        manifest: Vec<u8>,
    },
    Chunk {
        image: ImageTag,
        index: u16,
        data: Vec<u8>,
    },
    Control(OtaControl),
}

/// The test manifest: magic, size, SHA-256, version. The model "verifies" it by its magic; a
/// real node checks the signed text.
pub(super) fn manifest(image: &[u8], version: FwVersion) -> Vec<u8> {
    let mut m = b"OTAM".to_vec();
    m.extend((image.len() as u32).to_le_bytes());
    m.extend(Sha256::digest(image));
    m.extend([version.major, version.minor, version.patch]);
    // About the length of a real signed manifest.
    m.resize(380, b' ');
    m
}

#[derive(Debug, Clone)]
struct Record {
    tag: ImageTag,
    size: usize,
    sha256: [u8; 32],
    version: FwVersion,
    chunk: ChunkSize,
    /// Which sectors are in flash (the record's sector map).
    sectors: Vec<bool>,
    phase: OtaPhase,
}

impl Record {
    fn chunks_per_sector(&self) -> usize {
        SECTOR / self.chunk.bytes()
    }
    fn total(&self) -> usize {
        self.size.div_ceil(self.chunk.bytes())
    }
    fn first_unwritten(&self) -> usize {
        self.sectors
            .iter()
            .position(|w| !w)
            .unwrap_or(self.sectors.len())
    }
    fn flashed(&self) -> usize {
        (self.first_unwritten() * self.chunks_per_sector()).min(self.total())
    }
    /// (first sector not in flash + 4) × chunks per sector: not capped at the image (the
    /// transfer must do that).
    fn credit(&self) -> usize {
        (self.first_unwritten() + RAM_SECTORS) * self.chunks_per_sector()
    }
}

/// The node: its flash (record, DFU slot, floor, running version) survives [`ModelNode::reset`];
/// its RAM (chunks not yet in a sector, report timers) does not.
#[derive(Debug)]
pub(super) struct ModelNode {
    record: Option<Record>,
    dfu: Vec<u8>,
    floor: FwVersion,
    running: FwVersion,
    ram: BTreeMap<usize, Vec<u8>>,
    hole_reported_at: Option<Millis>,
    /// STATUS frames to send, oldest first.
    out: VecDeque<OtaStatus>,
    /// A revert to report once, then idle.
    reverted: Option<(ImageTag, RevertCause)>,
    /// Chunks the transfer should never have sent: beyond the credit or beyond the image.
    pub(super) violations: Vec<String>,
    pub(super) strays: u64,
    pub(super) duplicates: u64,
    pub(super) sectors_written: u64,
    /// Fresh records (an OFFER of an image the node held no progress of): more than one in a
    /// run means the transfer started over.
    pub(super) records_started: u64,
}

impl ModelNode {
    pub(super) fn new(running: FwVersion) -> ModelNode {
        ModelNode {
            record: None,
            dfu: vec![0xFF; SLOT],
            floor: FwVersion::default(),
            running,
            ram: BTreeMap::new(),
            hole_reported_at: None,
            out: VecDeque::new(),
            reverted: None,
            violations: Vec::new(),
            strays: 0,
            duplicates: 0,
            sectors_written: 0,
            records_started: 0,
        }
    }

    pub(super) fn poll_status(&mut self) -> Option<OtaStatus> {
        self.out.pop_front()
    }

    pub(super) fn phase(&self) -> OtaPhase {
        self.record.as_ref().map_or(OtaPhase::Idle, |r| r.phase)
    }

    pub(super) fn running(&self) -> FwVersion {
        self.running
    }

    pub(super) fn floor(&self) -> FwVersion {
        self.floor
    }

    /// The slot's first `len` bytes.
    pub(super) fn dfu(&self, len: usize) -> &[u8] {
        &self.dfu[..len]
    }

    /// Chunks held in RAM.
    pub(super) fn ram_chunks(&self) -> usize {
        self.ram.len()
    }

    /// What the node would say now.
    pub(super) fn status(&self) -> OtaStatus {
        if let Some((tag, cause)) = self.reverted {
            return OtaStatus {
                image: tag,
                phase: OtaPhase::Reverted,
                detail: cause as u8,
                flashed: 0,
                have: 0,
                credit: 0,
                chunk: ChunkSize::B1024,
                floor: self.floor,
            };
        }
        let Some(r) = &self.record else {
            return OtaStatus {
                image: ImageTag::default(),
                phase: OtaPhase::Idle,
                detail: 0,
                flashed: 0,
                have: 0,
                credit: 0,
                chunk: ChunkSize::B1024,
                floor: self.floor,
            };
        };
        let flashed = r.flashed();
        let receiving = r.phase == OtaPhase::Receiving;
        let mut have = 0u64;
        for bit in 0..64 {
            if receiving && self.ram.contains_key(&(flashed + bit)) {
                have |= 1 << bit;
            }
        }
        // Outside Receiving the node takes no chunk: its credit is what it has in flash.
        let credit = if receiving { r.credit() } else { flashed };
        OtaStatus {
            image: r.tag,
            phase: r.phase,
            detail: 0,
            flashed: flashed as u16,
            have,
            credit: credit.min(usize::from(u16::MAX)) as u16,
            chunk: r.chunk,
            floor: self.floor,
        }
    }

    fn report(&mut self) {
        let status = self.status();
        self.out.push_back(status);
        if self.reverted.take().is_some() {
            self.record = None; // reported once, then idle
        }
    }

    fn refuse(&mut self, image: ImageTag, why: OtaRefusal) {
        self.out.push_back(OtaStatus {
            image,
            phase: OtaPhase::Refused,
            detail: why as u8,
            flashed: 0,
            have: 0,
            credit: 0,
            chunk: ChunkSize::B1024,
            floor: self.floor,
        });
    }

    /// A new session opened (after ACCEPT): the node says where it is.
    pub(super) fn handle_accept(&mut self) {
        self.report();
    }

    /// The node resets: RAM is lost, flash kept. An install swaps into the trial.
    pub(super) fn reset(&mut self) {
        self.ram.clear();
        self.hole_reported_at = None;
        self.out.clear();
        if let Some(r) = &mut self.record
            && r.phase == OtaPhase::Installing
        {
            r.phase = OtaPhase::Trial;
            self.running = r.version;
        }
    }

    /// The trial image confirms its health.
    pub(super) fn confirm(&mut self) {
        if let Some(r) = &mut self.record
            && r.phase == OtaPhase::Trial
        {
            r.phase = OtaPhase::Confirmed;
            self.report();
        }
    }

    /// The trial image fails: reset, back to `previous`, report the revert once.
    pub(super) fn revert(&mut self, previous: FwVersion, cause: RevertCause) {
        if let Some(r) = &self.record
            && r.phase == OtaPhase::Trial
        {
            self.reverted = Some((r.tag, cause));
            self.running = previous;
            self.ram.clear();
            self.out.clear();
        }
    }

    pub(super) fn handle(&mut self, now: Millis, frame: Down) {
        match frame {
            Down::Offer {
                image,
                chunk,
                manifest,
            } => self.handle_offer(image, chunk, &manifest),
            Down::Chunk { image, index, data } => self.handle_chunk(now, image, index, &data),
            Down::Control(c) => self.handle_control(c),
        }
    }

    /// Like `Updater::handle_offer`: a refusal is reported, then the node's own STATUS.
    fn handle_offer(&mut self, tag: ImageTag, chunk: ChunkSize, manifest: &[u8]) {
        if let Some(why) = self.take_offer(tag, chunk, manifest) {
            self.refuse(tag, why);
        }
        self.report();
    }

    fn take_offer(
        &mut self,
        tag: ImageTag,
        chunk: ChunkSize,
        manifest: &[u8],
    ) -> Option<OtaRefusal> {
        if matches!(self.phase(), OtaPhase::Installing | OtaPhase::Trial) {
            return Some(OtaRefusal::Busy);
        }
        if manifest.len() < 4 + 4 + 32 + 3 || &manifest[..4] != b"OTAM" {
            return Some(OtaRefusal::BadSignature);
        }
        let size = u32::from_le_bytes(manifest[4..8].try_into().unwrap()) as usize;
        let sha256: [u8; 32] = manifest[8..40].try_into().unwrap();
        let version = FwVersion {
            major: manifest[40],
            minor: manifest[41],
            patch: manifest[42],
        };
        if ImageTag::of(&sha256) != tag || size == 0 {
            return Some(OtaRefusal::NotFirmware);
        }
        if version < self.floor {
            return Some(OtaRefusal::BelowFloor);
        }
        if version == self.running {
            return Some(OtaRefusal::SameVersion);
        }
        if size > SLOT {
            return Some(OtaRefusal::TooLarge);
        }
        match &mut self.record {
            Some(r)
                if r.tag == tag && matches!(r.phase, OtaPhase::Receiving | OtaPhase::Verified) =>
            {
                // The same image again: the sectors stay; chunks in RAM only if they count in
                // the same size.
                if r.chunk != chunk {
                    r.chunk = chunk;
                    self.ram.clear();
                }
            }
            _ => {
                self.ram.clear();
                self.records_started += 1;
                self.record = Some(Record {
                    tag,
                    size,
                    sha256,
                    version,
                    chunk,
                    sectors: vec![false; size.div_ceil(SECTOR)],
                    phase: OtaPhase::Receiving,
                });
            }
        }
        None
    }

    fn handle_chunk(&mut self, now: Millis, tag: ImageTag, index: u16, data: &[u8]) {
        let Some(r) = &self.record else {
            self.strays += 1;
            return;
        };
        if r.tag != tag || r.phase != OtaPhase::Receiving {
            self.strays += 1;
            return;
        }
        let index = usize::from(index);
        let offset = index * r.chunk.bytes();
        let expected = r.chunk.bytes().min(r.size.saturating_sub(offset));
        if data.len() != expected || expected == 0 {
            // Another chunk size (sent before a re-offer), or beyond the image.
            if offset >= r.size {
                self.violations
                    .push(format!("chunk {index} beyond the image ({} bytes)", r.size));
            }
            self.strays += 1;
            return;
        }
        let flashed = r.flashed();
        if index >= r.credit() || index < flashed {
            if index >= r.credit() {
                self.violations
                    .push(format!("chunk {index} beyond the credit {}", r.credit()));
            } else {
                self.duplicates += 1;
            }
            // Like the node: the gateway's view is stale, say where it is (rate-limited).
            if self.hole_report_due(now) {
                self.report();
            }
            return;
        }
        if self.ram.contains_key(&index) {
            self.duplicates += 1;
            return;
        }
        self.ram.insert(index, data.to_vec());
        // A hole below the newest chunk: say so now (at most every 50 ms), as the node does.
        let hole = (flashed..index).any(|i| !self.ram.contains_key(&i));
        let hole_report = hole && self.hole_report_due(now);
        let written = self.write_sectors();
        let r = self.record.as_mut().expect("held above");
        if r.sectors.iter().all(|&w| w) {
            let hash: [u8; 32] = Sha256::digest(&self.dfu[..r.size]).into();
            if hash == r.sha256 {
                r.phase = OtaPhase::Verified;
            } else {
                // The bytes in the slot are not the image: start over, and say why.
                let tag = r.tag;
                self.record = None;
                self.refuse(tag, OtaRefusal::Damaged);
            }
            self.report();
        } else if written || hole_report {
            self.report();
        }
    }

    /// Whether a STATUS for a hole (or a stale chunk) may go now; if so, the next waits 50 ms.
    fn hole_report_due(&mut self, now: Millis) -> bool {
        let due = self
            .hole_reported_at
            .is_none_or(|at| now.saturating_since(at) >= HOLE_REPORT_MS);
        if due {
            self.hole_reported_at = Some(now);
        }
        due
    }

    /// Writes every complete sector from the first one not in flash, in order.
    fn write_sectors(&mut self) -> bool {
        let r = self.record.as_mut().expect("a record");
        let cps = r.chunks_per_sector();
        let total = r.total();
        let mut written = false;
        loop {
            let sector = r.first_unwritten();
            if sector == r.sectors.len() {
                return written;
            }
            let chunks = sector * cps..((sector + 1) * cps).min(total);
            if !chunks.clone().all(|i| self.ram.contains_key(&i)) {
                return written;
            }
            for i in chunks {
                let data = self.ram.remove(&i).expect("checked");
                let at = i * r.chunk.bytes();
                self.dfu[at..at + data.len()].copy_from_slice(&data);
            }
            r.sectors[sector] = true;
            self.sectors_written += 1;
            written = true;
        }
    }

    /// Like `Updater::handle_control`: every control is answered with the node's STATUS; a
    /// QUERY about any image just gets it (idle, or the image the node holds), another control
    /// about an image the node does not hold is refused `unknown-image` first.
    fn handle_control(&mut self, c: OtaControl) {
        let held = self.record.as_ref().is_some_and(|r| r.tag == c.image);
        if c.op != OtaOp::Query && !held {
            self.refuse(c.image, OtaRefusal::UnknownImage);
            return self.report();
        }
        match c.op {
            OtaOp::Query => {}
            OtaOp::Install => {
                let r = self.record.as_mut().expect("held");
                if r.phase == OtaPhase::Verified {
                    r.phase = OtaPhase::Installing;
                }
            }
            // Installing or on trial, the node cannot forget the image: it says where it is.
            OtaOp::Abort => {
                if !matches!(self.phase(), OtaPhase::Installing | OtaPhase::Trial) {
                    self.record = None;
                    self.ram.clear();
                }
            }
            OtaOp::Finalize => {
                let r = self.record.as_ref().expect("held");
                if r.phase == OtaPhase::Confirmed {
                    self.floor = self.floor.max(r.version);
                    self.record = None;
                }
            }
        }
        self.report();
    }
}
