//! The node's update path on a real flash file, through embassy-boot's own updater and
//! bootloader: power cuts at every flash operation of an update, a trial that ends in a reset,
//! the cut confirm of risk R5, a sector written twice (R12), and a torn STATE erase (R6).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use outpost_node::boot::layout::{self, SECTOR};
use outpost_node::boot::state_page::{ERASED, SWAP_MAGIC, StatePage};
use outpost_node::boot::{BootFlash, BootFlashError, BootState, RecordError, RecordFlash, Sector};
use outpost_node::sim::bootloader::{BootFailure, BootReport, Bootloader};
use outpost_node::sim::flash::{FlashFile, FlashOptions, POWER_CUT_EXIT_CODE, PowerCut};
use outpost_node::sim::image::{Behaviour, SimImage};
use outpost_proto::FwVersion;
use proptest::prelude::*;

const OLD: FwVersion = FwVersion {
    major: 1,
    minor: 2,
    patch: 0,
};
const NEW: FwVersion = FwVersion {
    major: 1,
    minor: 3,
    patch: 0,
};

fn image(version: FwVersion, len: usize) -> Vec<u8> {
    SimImage::new(version, 1, Behaviour::Normal, len)
        .unwrap()
        .build()
}

/// The images of these tests: small, so an update is a few hundred operations (the swap is
/// always the whole 512 KiB slot), and not whole sectors, so the last sector is padded.
fn old_image() -> Vec<u8> {
    image(OLD, 40_000)
}

fn new_image() -> Vec<u8> {
    image(NEW, 60_000)
}

/// A node fresh from the factory: the old image in ACTIVE.
struct Node {
    _dir: tempfile::TempDir,
    path: PathBuf,
    factory: Vec<u8>,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flash.bin");
        FlashFile::create_with_image(&path, &old_image()).unwrap();
        let factory = std::fs::read(&path).unwrap();
        Node {
            _dir: dir,
            path,
            factory,
        }
    }

    /// Makes the file as it is now the state [`reset_to_factory`] goes back to.
    fn snapshot(&mut self) {
        self.factory = std::fs::read(&self.path).unwrap();
    }

    /// Back to the factory state, in place (the same file, so the page cache is reused).
    fn reset_to_factory(&self) {
        std::fs::write(&self.path, &self.factory).unwrap();
    }

    fn power_on(&self) -> FlashFile {
        FlashFile::open(&self.path, FlashOptions::default()).unwrap()
    }

    fn power_on_with_cut(&self, after_ops: u64, torn: bool) -> FlashFile {
        let options = FlashOptions {
            power_cut: Some(PowerCut { after_ops, torn }),
            seed: after_ops.wrapping_mul(0x9E37_79B9) ^ u64::from(torn),
            ..FlashOptions::default()
        };
        FlashFile::open(&self.path, options).unwrap()
    }
}

/// The power went during this life.
#[derive(Debug)]
struct Cut;

/// Torn STATE erases Outpost's bootloader had to finish, over every test.
static FINISHED_TORN_ERASES: AtomicU32 = AtomicU32::new(0);

fn boot(flash: &FlashFile) -> Result<BootReport, Cut> {
    match Bootloader::default().boot(flash) {
        Ok(report) => {
            if report.state_page == StatePage::FinishedTornErase {
                FINISHED_TORN_ERASES.fetch_add(1, Ordering::Relaxed);
            }
            Ok(report)
        }
        Err(BootFailure::PowerCut) => Err(Cut),
        Err(other) => panic!("the boot failed without a power cut: {other}"),
    }
}

fn or_cut<T>(flash: &FlashFile, result: Result<T, BootFlashError>) -> Result<T, Cut> {
    match result {
        Ok(value) => Ok(value),
        Err(_) if flash.power_was_cut() => Err(Cut),
        Err(error) => panic!("flash failed without a power cut: {error}"),
    }
}

fn padded_sector(image: &[u8], index: usize) -> Box<Sector> {
    let mut sector = Box::new([0xFF; SECTOR]);
    let start = index * SECTOR;
    let end = image.len().min(start + SECTOR);
    sector[..end - start].copy_from_slice(&image[start..end]);
    sector
}

/// The running image, which must be a whole one: the old or the new.
fn running(report: &BootReport) -> FwVersion {
    match &report.image {
        Ok(image) if image.version == OLD || image.version == NEW => image.version,
        Ok(image) => panic!("booted an image nobody installed: {image:?}"),
        Err(error) => panic!("bricked: {error} (state {:?})", report.state),
    }
}

/// What a node does to take `new`, from whatever state it powers on in: the decisions of
/// docs/ota-design.md §3.2 (derived from the boot state and the running version), with the
/// transfer record reduced to "the sectors of DFU that already hold the image". Each pass of
/// the loop is one power-on; a cut ends the call.
fn update(flash: &FlashFile, new: &[u8]) -> Result<(), Cut> {
    let sectors = new.len().div_ceil(SECTOR);
    for _life in 0..8 {
        let report = boot(flash)?;
        let version = running(&report);
        let mut boot_flash = flash.boot_flash();
        match (version == NEW, report.state) {
            // Confirmed: done.
            (true, BootState::Boot) => return Ok(()),
            // A trial (health checks pass at once here), or a confirm cut after "progress
            // invalid" (R5): the version says it is ours, so confirm (again).
            (true, BootState::Swap | BootState::Revert) => {
                or_cut(flash, boot_flash.mark_booted())?;
            }
            (true, BootState::DfuDetach) => panic!("Outpost never sets DfuDetach"),
            (false, BootState::Swap) => panic!("the old image booted in state Swap"),
            (false, state) => {
                if state == BootState::Revert {
                    // A trial that ended in a reset: report it, acknowledge it.
                    or_cut(flash, boot_flash.mark_booted())?;
                }
                for index in 0..sectors {
                    let want = padded_sector(new, index);
                    let mut have = Box::new([0u8; SECTOR]);
                    or_cut(
                        flash,
                        boot_flash.read_dfu((index * SECTOR) as u32, &mut *have),
                    )?;
                    if have != want {
                        or_cut(flash, boot_flash.write_sector(index as u32, &want))?;
                    }
                }
                let mut written = vec![0u8; new.len()];
                or_cut(flash, boot_flash.read_dfu(0, &mut written))?;
                assert!(written == new, "DFU holds the image before mark_updated");
                or_cut(flash, boot_flash.mark_updated())?;
            }
        }
    }
    panic!("the update made no progress in 8 boots");
}

fn assert_updated(node: &Node) {
    let flash = node.power_on();
    let report = boot(&flash).unwrap();
    assert_eq!(running(&report), NEW);
    assert_eq!(report.state, BootState::Boot);
}

/// Runs the whole update once for every operation index, cutting the power there, then powers
/// on and finishes it.
fn cut_at_every_operation(torn: bool) {
    let node = Node::new();
    let new = new_image();
    let flash = node.power_on();
    update(&flash, &new).unwrap();
    let total = flash.ops();
    drop(flash);
    assert_updated(&node);
    // The writes, mark_updated, a whole-slot swap (six operations a page), mark_booted.
    assert!(
        total > 6 * u64::from(layout::ACTIVE_PAGES),
        "{total} operations"
    );

    for after_ops in 0..total {
        node.reset_to_factory();
        let flash = node.power_on_with_cut(after_ops, torn);
        assert!(
            update(&flash, &new).is_err(),
            "no cut after {after_ops} ops"
        );
        assert!(flash.power_was_cut());
        drop(flash);
        // The next power-on boots a whole image (checked in `update`), and the update finishes.
        let flash = node.power_on();
        update(&flash, &new).unwrap_or_else(|_| panic!("cut again after {after_ops} ops"));
        drop(flash);
        assert_updated(&node);
    }
    eprintln!(
        "{total} cut points (torn: {torn}); torn STATE erases finished by the bootloader so far: {}",
        FINISHED_TORN_ERASES.load(Ordering::Relaxed)
    );
}

#[test]
fn a_torn_operation_anywhere_in_an_update_leaves_a_node_that_boots_and_finishes_it() {
    cut_at_every_operation(true);
}

#[test]
fn a_cut_between_any_two_operations_of_an_update_leaves_a_node_that_boots_and_finishes_it() {
    cut_at_every_operation(false);
}

/// Installs the new image and boots it into its trial.
fn into_trial(node: &Node) -> FlashFile {
    let new = new_image();
    let flash = node.power_on();
    let mut boot_flash = flash.boot_flash();
    for index in 0..new.len().div_ceil(SECTOR) {
        boot_flash
            .write_sector(index as u32, &padded_sector(&new, index))
            .unwrap();
    }
    boot_flash.mark_updated().unwrap();
    assert_eq!(boot_flash.boot_state(), Ok(BootState::Swap));
    let report = boot(&flash).unwrap();
    assert_eq!(running(&report), NEW);
    assert_eq!(report.state, BootState::Swap);
    flash
}

#[test]
fn a_reset_during_the_trial_reverts_to_the_old_image_in_state_revert() {
    let node = Node::new();
    drop(into_trial(&node));
    // No mark_booted: the reset (crash, watchdog, deadline, power) reverts.
    let flash = node.power_on();
    let report = boot(&flash).unwrap();
    assert_eq!(running(&report), OLD);
    assert_eq!(report.state, BootState::Revert);
    // The old image acknowledges the revert; the next boot is a plain one.
    flash.boot_flash().mark_booted().unwrap();
    let report = boot(&flash).unwrap();
    assert_eq!((running(&report), report.state), (OLD, BootState::Boot));
}

/// A trial that ends in a reset, then the old image acknowledging the revert, cut at every
/// operation (the revert's copies and STATE writes, then `mark_booted`): every power-on boots
/// the old image, whole.
#[test]
fn a_torn_operation_anywhere_in_a_revert_leaves_the_old_image_bootable() {
    fn revert_and_acknowledge(flash: &FlashFile) -> Result<(), Cut> {
        for _life in 0..4 {
            let report = boot(flash)?;
            match (running(&report), report.state) {
                (OLD, BootState::Boot) => return Ok(()),
                (OLD, BootState::Revert) => or_cut(flash, flash.boot_flash().mark_booted())?,
                other => panic!("expected the old image, booted {other:?}"),
            }
        }
        panic!("no progress in 4 boots");
    }

    let mut node = Node::new();
    drop(into_trial(&node));
    node.snapshot();
    let flash = node.power_on();
    revert_and_acknowledge(&flash).unwrap();
    let total = flash.ops();
    drop(flash);
    assert!(
        total > 6 * u64::from(layout::ACTIVE_PAGES),
        "{total} operations"
    );
    for after_ops in 0..total {
        node.reset_to_factory();
        let flash = node.power_on_with_cut(after_ops, true);
        assert!(revert_and_acknowledge(&flash).is_err());
        drop(flash);
        revert_and_acknowledge(&node.power_on())
            .unwrap_or_else(|_| panic!("cut again after {after_ops} ops"));
    }
}

#[test]
fn nothing_is_written_during_a_trial() {
    let node = Node::new();
    let flash = into_trial(&node);
    let mut boot_flash = flash.boot_flash();
    let ops = flash.ops();
    assert_eq!(
        boot_flash.write_sector(0, &[0; SECTOR]),
        Err(BootFlashError::InTrial)
    );
    assert_eq!(boot_flash.mark_updated(), Err(BootFlashError::InTrial));
    assert_eq!(flash.ops(), ops);
    assert_eq!(
        boot_flash.write_sector(layout::ACTIVE_PAGES, &[0; SECTOR]),
        Err(BootFlashError::SectorOutOfRange {
            index: layout::ACTIVE_PAGES
        })
    );
}

/// R5: `mark_booted` in the trial programs "progress invalid", erases STATE, writes `BOOT`. Cut
/// after the first, the bootloader "reverts" with every step read as done: it copies nothing
/// and writes `REVERT`. The new image runs with state `Revert`, and only the version tells the
/// node that this is its own confirm cut short, not a revert.
#[test]
fn a_confirm_cut_before_the_state_erase_boots_the_new_image_in_state_revert() {
    let node = Node::new();
    drop(into_trial(&node));
    let flash = node.power_on_with_cut(1, false);
    assert!(flash.boot_flash().mark_booted().is_err());
    assert!(flash.power_was_cut());
    assert_eq!(
        flash.ops(),
        2,
        "progress invalid written, the erase never started"
    );
    drop(flash);

    let flash = node.power_on();
    let report = boot(&flash).unwrap();
    assert_eq!(running(&report), NEW, "the new image still runs");
    assert_eq!(report.state, BootState::Revert);
    // What the node must do: it runs the version in its record, so it confirms again.
    flash.boot_flash().mark_booted().unwrap();
    let report = boot(&flash).unwrap();
    assert_eq!((running(&report), report.state), (NEW, BootState::Boot));
}

#[test]
fn a_confirm_cut_after_the_state_erase_boots_the_new_image_confirmed() {
    let node = Node::new();
    drop(into_trial(&node));
    let flash = node.power_on_with_cut(2, false);
    assert!(flash.boot_flash().mark_booted().is_err());
    drop(flash);
    let report = boot(&node.power_on()).unwrap();
    assert_eq!((running(&report), report.state), (NEW, BootState::Boot));
}

/// R12: embassy-boot's `write_firmware` erases a sector only when a write enters it for the
/// first time since the updater was made; written again, the sector would hold `old & new`.
/// The adapter makes a new updater for every call, so a rewrite is a whole erase and program.
#[test]
fn the_same_sector_written_twice_in_one_boot_holds_the_second_data() {
    let node = Node::new();
    let flash = node.power_on();
    let mut boot_flash = flash.boot_flash();
    let first = Box::new([0x0F; SECTOR]);
    let second = Box::new([0xF0; SECTOR]);
    boot_flash.write_sector(3, &first).unwrap();
    boot_flash.write_sector(3, &second).unwrap();
    let mut back = Box::new([0; SECTOR]);
    boot_flash.read_dfu(3 * SECTOR as u32, &mut *back).unwrap();
    assert!(back == second);

    // What one long-lived updater would have left.
    let mut aligned = [0u8; 1];
    let mut updater = embassy_boot::BlockingFirmwareUpdater::new(
        embassy_boot::FirmwareUpdaterConfig {
            dfu: flash.region(layout::DFU),
            state: flash.region(layout::BOOTLOADER_STATE),
        },
        &mut aligned,
    );
    updater.write_firmware(5 * SECTOR, &*first).unwrap();
    updater.write_firmware(5 * SECTOR, &*second).unwrap();
    updater.read_dfu(5 * SECTOR as u32, &mut *back).unwrap();
    assert!(
        back.iter().all(|&b| b == 0x00),
        "0x0F & 0xF0: not erased again"
    );
}

#[test]
fn the_record_sector_programs_only_ones_to_zeros_and_refuses_the_rest_before_writing() {
    let node = Node::new();
    let flash = node.power_on();
    let mut record = flash.record();
    record.program(0, b"OTA1").unwrap();
    record.program(1152, &[0x00]).unwrap();
    let mut magic = [0; 4];
    record.read(0, &mut magic).unwrap();
    assert_eq!(&magic, b"OTA1");

    let ops = flash.ops();
    // 'O' is 0x4F: turning it into 0xFF needs an erase.
    assert_eq!(
        record.program(0, &[0xFF, 0x00]),
        Err(RecordError::SetsBits { offset: 0 })
    );
    assert_eq!(record.program(4095, &[0, 0]), Err(RecordError::OutOfBounds));
    assert_eq!(record.read(4096, &mut [0]), Err(RecordError::OutOfBounds));
    assert_eq!(flash.ops(), ops, "a refused program writes nothing");

    // Writing what is already there, or clearing more bits, is fine.
    record.program(0, b"OTA1").unwrap();
    record.program(1152, &[0x00]).unwrap();
    record.erase().unwrap();
    record.read(0, &mut magic).unwrap();
    assert_eq!(magic, [0xFF; 4]);
    // The record is its own sector: DFU and STATE are untouched.
    assert_eq!(boot(&flash).unwrap().running().unwrap().version, OLD);
}

/// Programs a STATE page as a torn erase might leave it when it reads "swap in progress": magic
/// `SWAP`, progress valid, `done` steps marked, and noise further on.
fn tear_state_as_a_swap_at(flash: &FlashFile, done: usize, noise: &[(usize, u8)]) {
    let mut state = flash.region(layout::BOOTLOADER_STATE);
    state.erase(0, SECTOR as u32).unwrap();
    state.write(0, &[SWAP_MAGIC]).unwrap();
    state.write(2, &vec![0u8; done]).unwrap();
    for &(at, byte) in noise {
        state.write(at as u32, &[byte]).unwrap();
    }
    let mut unit = [0];
    state.read(1, &mut unit).unwrap();
    assert_eq!(unit[0], ERASED);
}

/// R6: a torn STATE erase in the trial's `mark_booted` that reads as `SWAP` with valid progress
/// makes embassy-boot resume a swap that never ran, from the step the noise names: pages of two
/// images end up in ACTIVE. Outpost's bootloader finishes the erase first and boots the new
/// image, which was whole.
#[test]
fn a_torn_state_erase_that_reads_as_a_swap_bricks_embassy_boot_alone_but_not_outpost() {
    let noise = [(700, 0x5A), (1900, 0x00), (4000, 0x3C)];

    let node = Node::new();
    drop(into_trial(&node));
    let flash = node.power_on();
    tear_state_as_a_swap_at(&flash, 100, &noise);
    let alone = Bootloader {
        finish_torn_state_erase: false,
    };
    let report = alone.boot(&flash).unwrap();
    assert!(report.image.is_err(), "embassy-boot alone mixed two images");

    node.reset_to_factory();
    drop(into_trial(&node));
    let flash = node.power_on();
    tear_state_as_a_swap_at(&flash, 100, &noise);
    let report = boot(&flash).unwrap();
    assert_eq!(report.state_page, StatePage::FinishedTornErase);
    assert_eq!((running(&report), report.state), (NEW, BootState::Boot));
}

#[test]
fn every_state_embassy_boot_writes_during_a_swap_passes_the_torn_erase_check() {
    let node = Node::new();
    let flash = into_trial(&node);
    // A swap in progress at every step, as the bootloader leaves it after a cut.
    for done in [0, 1, 2, 100, 255, 256, 300, 511, 512] {
        tear_state_as_a_swap_at(&flash, done, &[]);
        let mut state = flash.region(layout::BOOTLOADER_STATE);
        assert_eq!(
            outpost_node::boot::state_page::finish_torn_erase(&mut state),
            Ok(StatePage::Intact),
            "{done} steps done"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever noise a torn STATE erase leaves, after a confirm (new image whole) or after an
    /// install request (old image whole), Outpost's bootloader boots a whole image.
    #[test]
    fn any_torn_state_page_boots_a_whole_image(
        noise in proptest::collection::vec(any::<u8>(), SECTOR),
        in_trial in any::<bool>(),
        reads_as_swap in any::<bool>(),
    ) {
        let node = Node::new();
        let flash = if in_trial { into_trial(&node) } else { node.power_on() };
        let mut page = noise;
        if reads_as_swap {
            page[0] = SWAP_MAGIC;
            page[1] = ERASED;
        }
        let mut state = flash.region(layout::BOOTLOADER_STATE);
        state.erase(0, SECTOR as u32).unwrap();
        state.write(0, &page).unwrap();
        let report = boot(&flash).unwrap();
        let version = running(&report);
        prop_assert_eq!(version, if in_trial { NEW } else { OLD });
    }

    /// Several cuts in one update, anywhere: each power-on boots a whole image and the update
    /// still finishes.
    #[test]
    fn an_update_cut_several_times_still_finishes(
        cuts in proptest::collection::vec((0u64..900, any::<bool>()), 1..4),
    ) {
        let node = Node::new();
        let new = new_image();
        for (after_ops, torn) in cuts {
            let flash = node.power_on_with_cut(after_ops, torn);
            if update(&flash, &new).is_ok() {
                break;
            }
        }
        update(&node.power_on(), &new).unwrap();
        assert_updated(&node);
    }
}

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outpost-node-sim"))
}

fn run(command: &mut Command) -> (i32, String) {
    let output = command.output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Stages `image` in the flash file's DFU slot and asks for the swap, as the OTA core would.
fn stage_update(flash: &Path, image: &[u8]) {
    let file = FlashFile::open(flash, FlashOptions::default()).unwrap();
    let mut boot_flash = file.boot_flash();
    for index in 0..image.len().div_ceil(SECTOR) {
        boot_flash
            .write_sector(index as u32, &padded_sector(image, index))
            .unwrap();
    }
    boot_flash.mark_updated().unwrap();
}

#[test]
fn the_simulator_makes_images_and_flash_files_boots_them_and_exits_75_on_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.img");
    let new = dir.path().join("new.img");
    let flash = dir.path().join("flash.bin");

    let (code, text) = run(sim()
        .args(["make-image", "--version", "1.2.0", "--size", "64K"])
        .arg(&old));
    assert_eq!(code, 0, "{text}");
    let (code, text) = run(sim()
        .args([
            "make-image",
            "--version",
            "1.3.0",
            "--hw-rev",
            "2",
            "--crash-loop",
        ])
        .args(["--size", "100000", arg(&new)]));
    assert_eq!(code, 0, "{text}");
    let bytes = std::fs::read(&new).unwrap();
    assert_eq!(bytes.len(), 100_000);
    let image = SimImage::parse(&bytes).unwrap();
    assert_eq!((image.hw_rev, image.behaviour), (2, Behaviour::CrashLoop));

    let (code, text) = run(sim().args(["make-flash", "--image", arg(&old), arg(&flash)]));
    assert_eq!(code, 0, "{text}");
    let (code, text) =
        run(sim().args(["boot", "--flash", arg(&flash), "--flash-timing", "w25q16"]));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("state boot") && text.contains("version 1.2.0"),
        "{text}"
    );

    stage_update(&flash, &bytes);

    let (code, text) = run(sim().args([
        "boot",
        "--flash",
        arg(&flash),
        "--power-cut-after-ops",
        "40",
    ]));
    assert_eq!(code, POWER_CUT_EXIT_CODE, "{text}");
    let (code, text) = run(sim().args(["boot", "--flash", arg(&flash)]));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("state swap")
            && text.contains("version 1.3.0")
            && text.contains("crash-loop"),
        "{text}"
    );
}

#[test]
fn a_node_whose_power_is_cut_takes_its_pty_link_with_it() {
    // A link left behind names a /dev/pts number the kernel soon gives to another pty: a
    // gateway reopening it would talk to another node (seen in the OTA power-cut test).
    let dir = tempfile::tempdir().unwrap();
    let flash = dir.path().join("flash.bin");
    FlashFile::create_with_image(&flash, &old_image()).unwrap();
    // An update staged and marked: the next boot swaps, and the power goes in the middle.
    stage_update(&flash, &new_image());
    let fleet_key = dir.path().join("firmware.pub");
    std::fs::write(
        &fleet_key,
        format!(
            "outpost-key 1\nrole firmware\nid fw\npublic {}\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();

    let link = dir.path().join("ttyNODE0");
    let (code, text) = run(sim()
        .args([
            "--uid",
            "5e50000000000009",
            "--pty",
            arg(&link),
            "--flash",
            arg(&flash),
        ])
        .args([
            "--fleet-key",
            arg(&fleet_key),
            "--power-cut-after-ops",
            "40",
        ]));
    assert_eq!(code, POWER_CUT_EXIT_CODE, "{text}");
    assert!(text.contains("linked at"), "{text}");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the link outlived the node: {:?}",
        std::fs::read_link(&link)
    );
}
