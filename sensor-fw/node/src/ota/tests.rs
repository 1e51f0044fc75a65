//! The updater against an in-memory flash that keeps embassy-boot's rules (no DFU write during a
//! trial, swap at the boot after `mark_updated`, revert at the boot after a trial that did not
//! `mark_booted`). The real embassy-boot runs under the simulator's tests.

extern crate std;

use super::*;
use crate::boot::{BootFlashError, RecordError};
use ed25519_dalek::{Signer, SigningKey};
use outpost_proto::wire::MAX_CHUNK_LEN;
use std::cell::RefCell;
use std::rc::Rc;
use std::vec::Vec;

const FLEET_SEED: [u8; 32] = [5; 32];
const V1: FwVersion = FwVersion {
    major: 1,
    minor: 0,
    patch: 0,
};
const V2: FwVersion = FwVersion {
    major: 1,
    minor: 1,
    patch: 0,
};

fn fleet_public() -> [u8; 32] {
    SigningKey::from_bytes(&FLEET_SEED)
        .verifying_key()
        .to_bytes()
}

fn hex(bytes: &[u8]) -> std::string::String {
    bytes.iter().map(|b| std::format!("{b:02x}")).collect()
}

/// A firmware manifest as `outpost firmware sign` writes it.
fn manifest(seed: [u8; 32], image: &[u8], version: &str, floor: &str, board: &str) -> Vec<u8> {
    let key = SigningKey::from_bytes(&seed);
    let id = Sha256::digest(key.verifying_key().as_bytes());
    let signed = std::format!(
        "outpost-manifest 2\nrole firmware\nkey {}\nfile node.bin\nsize {}\nsha256 {}\n\
         package outpost-node\nversion {version}\narchitecture {board}\nfloor {floor}\n\
         expires 1900000000\n",
        hex(&id[..8]),
        image.len(),
        hex(&Sha256::digest(image)),
    );
    let signature = key.sign(signed.as_bytes());
    std::format!("{signed}signature {}\n", hex(&signature.to_bytes())).into_bytes()
}

fn image(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| if i % 7 == 0 { 0 } else { (i as u8) ^ salt })
        .collect()
}

/// embassy-boot's rules on a vector: the parts a boot keeps.
#[derive(Debug, Default)]
struct Flash {
    state: Option<BootState>,
    /// Set by `mark_updated`, consumed by the next boot's swap.
    swap_requested: bool,
    dfu: Vec<u8>,
    record: Vec<u8>,
    floor: Vec<u8>,
    /// Versions in the slots: what a boot runs.
    active: FwVersion,
    dfu_version: Option<FwVersion>,
    /// Corrupts the byte at this DFU offset on every read.
    corrupt_at: Option<u32>,
    mark_booted_calls: u32,
}

impl Flash {
    fn new() -> Self {
        Flash {
            state: Some(BootState::Boot),
            dfu: std::vec![0xFF; 516 * 1024],
            record: std::vec![0xFF; SECTOR],
            floor: std::vec![0xFF; SECTOR],
            active: V1,
            ..Flash::default()
        }
    }

    /// What the bootloader does at a reset: swap a marked update in, or revert a trial.
    fn reboot(&mut self) {
        match self.state {
            Some(BootState::Swap) if self.swap_requested => {
                self.swap_requested = false;
                let new = self.dfu_version.take().expect("an image was written");
                self.dfu_version = Some(self.active);
                self.active = new;
            }
            Some(BootState::Swap) => {
                // A trial that did not confirm: back to the old image.
                let old = self.dfu_version.take().expect("the old image is in DFU");
                self.dfu_version = Some(self.active);
                self.active = old;
                self.state = Some(BootState::Revert);
            }
            _ => {}
        }
    }
}

/// The three flash regions the updater sees, over one shared [`Flash`].
#[derive(Clone)]
struct Shared(Rc<RefCell<Flash>>);
struct Boot(Shared);
struct Record(Shared);
struct FloorLog(Shared);

impl BootFlash for Boot {
    fn slot_size(&self) -> u32 {
        512 * 1024
    }
    fn boot_state(&mut self) -> Result<BootState, BootFlashError> {
        Ok(self.0.0.borrow().state.unwrap_or(BootState::Boot))
    }
    fn write_sector(&mut self, index: u32, data: &Sector) -> Result<(), BootFlashError> {
        let mut f = self.0.0.borrow_mut();
        if f.state == Some(BootState::Swap) {
            return Err(BootFlashError::InTrial);
        }
        let at = index as usize * SECTOR;
        f.dfu[at..at + SECTOR].copy_from_slice(data);
        Ok(())
    }
    fn read_dfu(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), BootFlashError> {
        let f = self.0.0.borrow();
        let at = offset as usize;
        buf.copy_from_slice(&f.dfu[at..at + buf.len()]);
        if let Some(bad) = f.corrupt_at
            && (offset..offset + buf.len() as u32).contains(&bad)
        {
            buf[(bad - offset) as usize] ^= 0x40;
        }
        Ok(())
    }
    fn mark_updated(&mut self) -> Result<(), BootFlashError> {
        let mut f = self.0.0.borrow_mut();
        f.state = Some(BootState::Swap);
        f.swap_requested = true;
        Ok(())
    }
    fn mark_booted(&mut self) -> Result<(), BootFlashError> {
        let mut f = self.0.0.borrow_mut();
        f.state = Some(BootState::Boot);
        f.mark_booted_calls += 1;
        Ok(())
    }
}

fn sector_of(f: &mut Flash, floor: bool) -> &mut Vec<u8> {
    if floor { &mut f.floor } else { &mut f.record }
}

fn read(shared: &Shared, floor: bool, offset: u32, buf: &mut [u8]) {
    let mut f = shared.0.borrow_mut();
    let at = offset as usize;
    buf.copy_from_slice(&sector_of(&mut f, floor)[at..at + buf.len()]);
}

fn program(shared: &Shared, floor: bool, offset: u32, bytes: &[u8]) {
    let mut f = shared.0.borrow_mut();
    let sector = sector_of(&mut f, floor);
    for (i, b) in bytes.iter().enumerate() {
        sector[offset as usize + i] &= b;
    }
}

impl RecordFlash for Record {
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), RecordError> {
        read(&self.0, false, offset, buf);
        Ok(())
    }
    fn program(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RecordError> {
        program(&self.0, false, offset, bytes);
        Ok(())
    }
    fn erase(&mut self) -> Result<(), RecordError> {
        self.0.0.borrow_mut().record.fill(0xFF);
        Ok(())
    }
}

impl RecordFlash for FloorLog {
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), RecordError> {
        read(&self.0, true, offset, buf);
        Ok(())
    }
    fn program(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RecordError> {
        program(&self.0, true, offset, bytes);
        Ok(())
    }
    fn erase(&mut self) -> Result<(), RecordError> {
        self.0.0.borrow_mut().floor.fill(0xFF);
        Ok(())
    }
}

type TestUpdater = Updater<Boot, Record, FloorLog>;

/// A node booting over `flash`, running whatever its ACTIVE slot holds.
fn boot(flash: &Shared, last_reset: LastReset) -> TestUpdater {
    let running = flash.0.borrow().active;
    Updater::new(
        Millis(0),
        Boot(flash.clone()),
        Record(flash.clone()),
        FloorLog(flash.clone()),
        OtaConfig {
            keys: heapless::Vec::from_slice(&[fleet_public()]).unwrap(),
            hw_rev: 2,
            running,
            built_in_floor: FwVersion::default(),
        },
        last_reset,
    )
}

fn new_flash() -> Shared {
    Shared(Rc::new(RefCell::new(Flash::new())))
}

fn offer<'a>(manifest: &'a [u8], image: &[u8], chunk: ChunkSize) -> Bulk<'a> {
    Bulk::Offer(OtaOffer {
        image: ImageTag::of(&Sha256::digest(image).into()),
        chunk,
        manifest,
    })
}

fn tag(image: &[u8]) -> ImageTag {
    ImageTag::of(&Sha256::digest(image).into())
}

fn send_chunk(u: &mut TestUpdater, now: Millis, image: &[u8], chunk: ChunkSize, index: u16) {
    let len = chunk.bytes();
    let start = usize::from(index) * len;
    let end = (start + len).min(image.len());
    u.handle_bulk(
        now,
        Bulk::Chunk(OtaChunk {
            image: tag(image),
            index,
            data: &image[start..end],
        }),
    );
}

/// Every STATUS the updater has to say now.
fn statuses(u: &mut TestUpdater) -> Vec<OtaStatus> {
    core::iter::from_fn(|| u.poll_status()).collect()
}

/// Offers `image` as version 1.1.0 and sends every chunk the node grants, in order, until it
/// stops granting: a clean line.
fn transfer(u: &mut TestUpdater, image: &[u8], chunk: ChunkSize) {
    let m = manifest(FLEET_SEED, image, "1.1.0", "1.1.0", "rp2040-hw2");
    u.handle_bulk(Millis(0), offer(&m, image, chunk));
    let total = image.len().div_ceil(chunk.bytes()) as u16;
    let mut next = 0;
    while next < total {
        let status = u.status();
        if status.phase != OtaPhase::Receiving {
            break;
        }
        while next < status.credit {
            send_chunk(u, Millis(0), image, chunk, next);
            next += 1;
        }
    }
}

fn install_and_reboot(flash: &Shared, u: TestUpdater, within: u16) -> TestUpdater {
    let mut u = u;
    let image_tag = u.status().image;
    u.handle_control(OtaControl {
        image: image_tag,
        op: OtaOp::Install,
        arg: within,
    });
    assert_eq!(u.poll_action(), Some(OtaAction::ResetToInstall));
    assert_eq!(u.phase(), OtaPhase::Installing);
    drop(u);
    {
        let mut f = flash.0.borrow_mut();
        f.dfu_version = Some(V2);
        f.reboot();
    }
    boot(
        flash,
        LastReset::Requested {
            cause: RevertCause::Unknown,
        },
    )
}

#[test]
fn a_signed_image_is_received_sector_by_sector_and_verified() {
    let flash = new_flash();
    let mut u = boot(&flash, LastReset::PowerOn);
    let img = image(3 * SECTOR + 100, 1);
    transfer(&mut u, &img, ChunkSize::B1024);
    assert_eq!(u.phase(), OtaPhase::Verified);
    assert_eq!(&flash.0.borrow().dfu[..img.len()], &img[..]);
    assert_eq!(u.counters().sectors_written, 4);
    let last = statuses(&mut u).pop().unwrap();
    assert_eq!(last.phase, OtaPhase::Verified);
    assert_eq!(last.image, tag(&img));
    assert_eq!(last.flashed, 13);
}

#[test]
fn the_window_is_four_sectors_beyond_flash_and_holes_are_reported() {
    let flash = new_flash();
    let mut u = boot(&flash, LastReset::PowerOn);
    let img = image(8 * SECTOR, 2);
    let m = manifest(FLEET_SEED, &img, "1.1.0", "1.1.0", "rp2040-hw2");
    u.handle_bulk(Millis(0), offer(&m, &img, ChunkSize::B1024));
    let s = statuses(&mut u).pop().unwrap();
    assert_eq!(
        (s.phase, s.flashed, s.credit, s.have),
        (OtaPhase::Receiving, 0, 16, 0)
    );
    // Chunk 0 is lost; 1..=3 arrive: a hole, reported at once, and no sector written yet.
    for i in 1..=3 {
        send_chunk(&mut u, Millis(10), &img, ChunkSize::B1024, i);
    }
    let s = statuses(&mut u).pop().unwrap();
    assert_eq!((s.flashed, s.have), (0, 0b1110));
    // Beyond the window: dropped.
    send_chunk(&mut u, Millis(10), &img, ChunkSize::B1024, 16);
    assert_eq!(u.counters().chunks_dropped, 1);
    // The hole filled: sector 0 goes to flash, the window slides by one sector.
    send_chunk(&mut u, Millis(100), &img, ChunkSize::B1024, 0);
    let s = statuses(&mut u).pop().unwrap();
    assert_eq!((s.flashed, s.have, s.credit), (4, 0, 20));
    // A duplicate of a chunk already in flash is dropped.
    send_chunk(&mut u, Millis(200), &img, ChunkSize::B1024, 2);
    assert_eq!(u.counters().chunks_dropped, 2);
}

#[test]
fn a_node_reset_mid_transfer_resumes_at_the_first_sector_not_in_flash() {
    let flash = new_flash();
    let img = image(6 * SECTOR, 3);
    let m = manifest(FLEET_SEED, &img, "1.1.0", "1.1.0", "rp2040-hw2");
    let mut u = boot(&flash, LastReset::PowerOn);
    u.handle_bulk(Millis(0), offer(&m, &img, ChunkSize::B512));
    // Two whole sectors and half of the third.
    for i in 0..20 {
        send_chunk(&mut u, Millis(0), &img, ChunkSize::B512, i);
    }
    drop(u);
    let mut u = boot(&flash, LastReset::PowerOn);
    let s = statuses(&mut u).pop().unwrap();
    assert_eq!(s.phase, OtaPhase::Receiving);
    assert_eq!(s.image, tag(&img));
    // The node does not know the chunk size until offered: it counts in 1 KiB until then.
    assert_eq!((s.chunk, s.flashed), (ChunkSize::B1024, 8));
    // The same offer again: nothing is erased, the chunk size is back to 512 B.
    u.handle_bulk(Millis(0), offer(&m, &img, ChunkSize::B512));
    let s = statuses(&mut u).pop().unwrap();
    assert_eq!((s.chunk, s.flashed), (ChunkSize::B512, 16));
    for i in 16..48 {
        send_chunk(&mut u, Millis(0), &img, ChunkSize::B512, i);
    }
    assert_eq!(u.phase(), OtaPhase::Verified);
    assert_eq!(u.counters().sectors_written, 4);
}

#[test]
fn offers_are_refused_with_their_reason_before_a_chunk_is_taken() {
    let img = image(2 * SECTOR, 4);
    let cases: [(Vec<u8>, OtaRefusal); 5] = [
        (
            manifest([9; 32], &img, "1.1.0", "1.1.0", "rp2040-hw2"),
            OtaRefusal::BadSignature,
        ),
        (
            manifest(FLEET_SEED, &img, "1.1.0", "1.1.0", "rp2040-hw3"),
            OtaRefusal::WrongHardware,
        ),
        (
            manifest(FLEET_SEED, &img, "1.0.0", "1.0.0", "rp2040-hw2"),
            OtaRefusal::SameVersion,
        ),
        (
            manifest(FLEET_SEED, &img, "1.1.0", "1.2.0", "rp2040-hw2"),
            OtaRefusal::BelowFloor,
        ),
        (
            manifest(
                FLEET_SEED,
                &image(600 * 1024, 4),
                "1.1.0",
                "1.1.0",
                "rp2040-hw2",
            ),
            OtaRefusal::TooLarge,
        ),
    ];
    for (m, refusal) in cases {
        let flash = new_flash();
        let mut u = boot(&flash, LastReset::PowerOn);
        let _ = statuses(&mut u);
        let offered = if refusal == OtaRefusal::TooLarge {
            image(600 * 1024, 4)
        } else {
            img.clone()
        };
        u.handle_bulk(Millis(0), offer(&m, &offered, ChunkSize::B1024));
        let s = statuses(&mut u);
        assert_eq!(s[0].phase, OtaPhase::Refused, "{refusal:?}");
        assert_eq!(s[0].detail, refusal as u8);
        send_chunk(&mut u, Millis(0), &offered, ChunkSize::B1024, 0);
        assert_eq!(u.counters().chunks_dropped, 1, "{refusal:?}");
        assert_eq!(flash.0.borrow().record[..4], [0xFF; 4], "nothing recorded");
    }
}

#[test]
fn a_trial_image_confirms_after_a_session_and_three_acknowledged_samples() {
    let flash = new_flash();
    let mut u = boot(&flash, LastReset::PowerOn);
    let img = image(2 * SECTOR, 5);
    transfer(&mut u, &img, ChunkSize::B1024);
    let mut u = install_and_reboot(&flash, u, 60);
    assert_eq!(flash.0.borrow().active, V2);
    assert_eq!(u.phase(), OtaPhase::Trial);
    // First it must stay healthy for half its window.
    assert_eq!(u.poll_timeout(), Some(Millis(30_000)));
    u.handle_session_up(Millis(1000));
    u.handle_acked(Millis(2000), 2);
    u.handle_timeout(Millis(2000), true);
    assert_eq!(u.phase(), OtaPhase::Trial, "two samples are not enough");
    u.handle_acked(Millis(3000), 3);
    u.handle_timeout(Millis(3000), false);
    assert_eq!(u.phase(), OtaPhase::Trial, "the board's own checks failed");
    u.handle_timeout(Millis(3100), true);
    assert_eq!(
        u.phase(),
        OtaPhase::Trial,
        "a crash loop shows within seconds"
    );
    assert_eq!(u.poll_timeout(), Some(Millis(30_000)));
    u.handle_timeout(Millis(30_000), true);
    assert_eq!(u.phase(), OtaPhase::Confirmed);
    assert_eq!(flash.0.borrow().state, Some(BootState::Boot));
    // A reboot keeps it confirmed; FINALIZE raises the floor and forgets the transfer.
    drop(u);
    let mut u = boot(&flash, LastReset::PowerOn);
    assert_eq!(u.phase(), OtaPhase::Confirmed);
    u.handle_control(OtaControl {
        image: tag(&img),
        op: OtaOp::Finalize,
        arg: 0,
    });
    assert_eq!((u.phase(), u.floor()), (OtaPhase::Idle, V2));
    drop(u);
    let u = boot(&flash, LastReset::PowerOn);
    assert_eq!((u.phase(), u.floor()), (OtaPhase::Idle, V2));
}

#[test]
fn a_trial_that_misses_its_deadline_is_reverted_and_says_why() {
    let flash = new_flash();
    let mut u = boot(&flash, LastReset::PowerOn);
    let img = image(SECTOR, 6);
    transfer(&mut u, &img, ChunkSize::B1024);
    let mut u = install_and_reboot(&flash, u, 30);
    u.handle_session_up(Millis(100));
    u.handle_timeout(Millis(30_000), true);
    assert_eq!(
        u.poll_action(),
        Some(OtaAction::ResetToRevert {
            cause: RevertCause::Deadline
        })
    );
    drop(u);
    flash.0.borrow_mut().reboot();
    let mut u = boot(
        &flash,
        LastReset::Requested {
            cause: RevertCause::Deadline,
        },
    );
    assert_eq!(flash.0.borrow().active, V1);
    assert!(u.reverted_boot());
    let s = statuses(&mut u).pop().unwrap();
    assert_eq!(
        (s.phase, s.detail),
        (OtaPhase::Reverted, RevertCause::Deadline as u8)
    );
    assert_eq!(
        flash.0.borrow().state,
        Some(BootState::Boot),
        "the revert is acknowledged"
    );
    // The next boot is a plain one that still knows why.
    drop(u);
    let u = boot(&flash, LastReset::PowerOn);
    assert!(!u.reverted_boot());
    assert_eq!(u.status().detail, RevertCause::Deadline as u8);
}

#[test]
fn a_crash_or_power_cut_in_the_trial_is_the_revert_cause() {
    for (last, cause) in [
        (LastReset::Crash, RevertCause::Crash),
        (LastReset::PowerOn, RevertCause::PowerLoss),
        (LastReset::Watchdog, RevertCause::Watchdog),
    ] {
        let flash = new_flash();
        let mut u = boot(&flash, LastReset::PowerOn);
        transfer(&mut u, &image(SECTOR, 7), ChunkSize::B1024);
        let u = install_and_reboot(&flash, u, 30);
        drop(u);
        flash.0.borrow_mut().reboot();
        let u = boot(&flash, last);
        assert_eq!(u.status().phase, OtaPhase::Reverted);
        assert_eq!(u.status().detail, cause as u8);
    }
}

#[test]
fn a_confirm_cut_short_boots_the_new_image_in_state_revert_and_it_confirms() {
    let flash = new_flash();
    let mut u = boot(&flash, LastReset::PowerOn);
    transfer(&mut u, &image(SECTOR, 8), ChunkSize::B1024);
    let u = install_and_reboot(&flash, u, 30);
    drop(u);
    // embassy-boot "reverted" without copying anything: the new image runs, state Revert.
    flash.0.borrow_mut().state = Some(BootState::Revert);
    let u = boot(&flash, LastReset::PowerOn);
    assert_eq!(u.phase(), OtaPhase::Confirmed);
    assert!(!u.reverted_boot());
    assert_eq!(flash.0.borrow().state, Some(BootState::Boot));
}

#[test]
fn a_damaged_image_is_never_installed() {
    let flash = new_flash();
    let mut u = boot(&flash, LastReset::PowerOn);
    let img = image(2 * SECTOR, 9);
    transfer(&mut u, &img, ChunkSize::B1024);
    assert_eq!(u.phase(), OtaPhase::Verified);
    // A bit flips in DFU before INSTALL.
    flash.0.borrow_mut().corrupt_at = Some(5000);
    u.handle_control(OtaControl {
        image: tag(&img),
        op: OtaOp::Install,
        arg: 30,
    });
    assert_eq!(u.poll_action(), None);
    let s = statuses(&mut u);
    assert_eq!(
        (s[0].phase, s[0].detail),
        (OtaPhase::Refused, OtaRefusal::Damaged as u8)
    );
    assert_eq!(u.phase(), OtaPhase::Idle);
    assert_eq!(flash.0.borrow().state, Some(BootState::Boot));
}

#[test]
fn nothing_is_offered_or_aborted_during_a_trial() {
    let flash = new_flash();
    let mut u = boot(&flash, LastReset::PowerOn);
    let img = image(SECTOR, 10);
    transfer(&mut u, &img, ChunkSize::B1024);
    let mut u = install_and_reboot(&flash, u, 30);
    let other = image(SECTOR, 11);
    let m = manifest(FLEET_SEED, &other, "1.2.0", "1.2.0", "rp2040-hw2");
    u.handle_bulk(Millis(0), offer(&m, &other, ChunkSize::B1024));
    u.handle_control(OtaControl {
        image: tag(&img),
        op: OtaOp::Abort,
        arg: 0,
    });
    let s = statuses(&mut u);
    assert_eq!(
        (s[0].phase, s[0].detail),
        (OtaPhase::Refused, OtaRefusal::Busy as u8)
    );
    assert_eq!(u.phase(), OtaPhase::Trial);
}

#[test]
fn a_chunk_of_the_wrong_length_or_image_is_dropped() {
    let flash = new_flash();
    let mut u = boot(&flash, LastReset::PowerOn);
    let img = image(SECTOR + 10, 12);
    let m = manifest(FLEET_SEED, &img, "1.1.0", "1.1.0", "rp2040-hw2");
    u.handle_bulk(Millis(0), offer(&m, &img, ChunkSize::B1024));
    let short = [1u8; 100];
    u.handle_bulk(
        Millis(0),
        Bulk::Chunk(OtaChunk {
            image: tag(&img),
            index: 0,
            data: &short,
        }),
    );
    let full = [1u8; MAX_CHUNK_LEN];
    u.handle_bulk(
        Millis(0),
        Bulk::Chunk(OtaChunk {
            image: ImageTag([1, 2, 3, 4]),
            index: 0,
            data: &full,
        }),
    );
    assert_eq!(u.counters().chunks_dropped, 2);
    assert_eq!(u.status().have, 0);
}

#[test]
fn a_revert_state_without_an_install_is_not_reported_as_a_revert() {
    // A torn STATE erase can read as REVERT while a transfer is only half received.
    let flash = new_flash();
    let img = image(4 * SECTOR, 13);
    let m = manifest(FLEET_SEED, &img, "1.1.0", "1.1.0", "rp2040-hw2");
    let mut u = boot(&flash, LastReset::PowerOn);
    u.handle_bulk(Millis(0), offer(&m, &img, ChunkSize::B1024));
    for i in 0..8 {
        send_chunk(&mut u, Millis(0), &img, ChunkSize::B1024, i);
    }
    drop(u);
    flash.0.borrow_mut().state = Some(BootState::Revert);
    let u = boot(&flash, LastReset::PowerOn);
    assert!(!u.reverted_boot());
    let s = u.status();
    assert_eq!((s.phase, s.flashed), (OtaPhase::Receiving, 8));
    assert_eq!(flash.0.borrow().state, Some(BootState::Boot));
}

#[test]
fn fleet_keys_are_the_public_halves_of_firmware_blocks_only() {
    let firmware = "ab".repeat(32);
    let operator = "cd".repeat(32);
    let text = std::format!(
        "outpost-key 1\nrole operator\nid op\npublic {operator}\n\n\
         outpost-key 1\nrole firmware\nid fw\npublic {firmware}\n"
    );
    let keys: std::vec::Vec<_> = crate::ota::fleet_keys(&text).collect();
    assert_eq!(keys, [Ok([0xAB; 32])]);
    let short = "outpost-key 1\nrole firmware\npublic abc\n";
    assert_eq!(
        crate::ota::fleet_keys(short).collect::<std::vec::Vec<_>>(),
        [Err(crate::ota::KeyFileError::NotHex)]
    );
    let missing = "outpost-key 1\nrole firmware\nid fw\n";
    assert_eq!(
        crate::ota::fleet_keys(missing).collect::<std::vec::Vec<_>>(),
        [Err(crate::ota::KeyFileError::NoPublicLine)]
    );
}
