//! Pair test of the node link: the real gateway end ([`outpost_core::link::PortSession`]) against the
//! real node end ([`outpost_node::NodeLink`]), in the style of quinn-proto's `Pair`: two
//! IO-free endpoints, one virtual clock, and a faulty line between them.
//!
//! - **The line** (`pair/line.rs`) carries bytes both ways and, frame by frame, drops,
//!   duplicates, delays (so frames overtake each other), flips a byte, cuts a frame short, puts
//!   noise before it, or splits it across two reads. Frames arriving together come in one read,
//!   so the gateway also sees several samples per `handle_bytes` (one `Ingest` of many).
//! - **The port** is a real `PortSession` with a frame rate limit, mostly the default 200/s,
//!   sometimes below what the node sends.
//! - **The store** (`pair/store.rs`) is an in-memory model of `store::writer` + `store::Tx`: it
//!   registers nodes (pinning the key, answering `ack_upto` = the last committed seq of that
//!   boot), admits samples with the real `link::admit` inside its transaction, and answers only
//!   when a group commit is durable, `commit_interval` + fsync time after its first command. A
//!   commit may fail (disk full), which `handle_commit_failed` must recover from.
//! - **Restarts**: the gateway process (a new `PortSession`; the store's disk survives, its
//!   queue does not, and the transaction being committed is on disk or not), the port
//!   (`handle_port_reset`), and the node (a new boot id; its ring of unacknowledged samples is
//!   lost, which is counted as lost by restart, not as a violation).
//! - **The clock** jumps to the next thing due: a frame's arrival, the node's `poll_timeout`,
//!   the next sample, the store's next group or commit, the next restart.
//!
//! The rules, checked against a record the pair keeps from outside both ends
//! ([`world::Pair::check`] lists them): per `(node, boot)` the store holds each seq at most
//! once and in order, with the readings the node produced and a plausible timestamp; no sample
//! the node dropped on an ACK or ACCEPT is missing (checked at the very moment it leaves the
//! ring, and again at the end); and once the line and the disk behave, everything of the
//! current boot gets committed but exactly the samples the node pushed out of its full ring,
//! which the store must have recorded as a gap.
//!
//! # Against the node tests' model gateway
//!
//! `sensor-fw/node/tests/model.rs` runs the same `NodeLink` against `ModelGateway`
//! (`sensor-fw/node/tests/common/mod.rs`). This test is stronger in that:
//! - the gateway is the real `PortSession`: it decodes bytes (noise, cut and split frames
//!   included), rate-limits frames, registers a node through the store, keeps "handed over" and
//!   "committed" apart, re-ACKs stale resends, and ACKs **only after a commit** that takes real
//!   (virtual) time, whereas `ModelGateway` stores and ACKs every TELEMETRY at once;
//! - the store can fail a commit, and a gateway can die with a commit in flight;
//! - the node can reboot: `ModelGateway` keeps one `last` for every boot, so model.rs cannot
//!   restart the node at all; here each boot is its own sequence;
//! - the port can be reset under a running session;
//! - the oracle is exact: which seqs the node pushed out of its ring, not only how many; every
//!   ACK is checked against the store when the node acts on it; readings and timestamps are
//!   compared, not only seqs; the store's recorded gaps must match the missing samples; and the
//!   run must settle within a bound, not merely within a step budget.
//!
//! The model gateway is not redundant for the node crate: it is what `tests/link.rs` drives the
//! node against in its scenario tests (`Site::with_gateway`), and model.rs keeps the node's
//! delivery property checkable without the gateway crate.
//!
//! # What the pair found
//!
//! Three bugs in `PortSession` (`gateway/core/src/link.rs`):
//! - **fixed**: `a_disk_slower_than_link_timeout_delays_delivery_but_does_not_stop_it`, a
//!   livelock with commits slower than the node's LINK_TIMEOUT: a HELLO kept while a boot
//!   registered later registered the attached boot again, detaching it for a commit's time,
//!   over and over. The session now never re-registers an attached boot and drops a kept
//!   HELLO of the boot a registration answered;
//! - **fixed by authenticated sessions (protocol version 2)**:
//!   `a_late_telemetry_frame_of_the_previous_boot_is_not_taken_for_the_new_boots` (acknowledged
//!   samples lost, a sample stored under the wrong boot) and
//!   `a_stale_hello_of_the_previous_boot_does_not_capture_the_new_boots_samples` (a boot's
//!   samples stored under the previous boot). Both need a frame sent before a node reboot to
//!   reach the gateway after the new boot's frames (a transport that reorders: radio with
//!   retries, UDP). Every frame is now sealed with the keys of its boot's session: a late
//!   TELEMETRY of the previous boot does not open in the new one, and a stale HELLO cannot
//!   complete a handshake (the node no longer holds that HELLO's ephemeral key).
//!   `with_frames_of_a_previous_boot_arriving_late_no_sample_is_misattributed_or_lost` explores
//!   the whole space, late frames across reboots included.
//!
//! Two properties keep frames in order across a reboot (`IN_ORDER_ACROSS_REBOOTS`), one lets them
//! arrive late (`EVERYTHING`); all include disks slower than LINK_TIMEOUT.
//!
//! # Knobs
//!
//! `PROPTEST_CASES=N` (256 per property by default: a few seconds in a debug build);
//! `PAIR_TRACE=1`: every frame sent (with the fault the line applied), store answer and event,
//! for one test at a time; `PAIR_SUMMARY=1`: one line per proptest case.

#[path = "pair/line.rs"]
mod line;
#[path = "pair/store.rs"]
mod store;
#[path = "pair/world.rs"]
mod world;

use outpost_core::link::LinkLimits;
use outpost_node::{LINK_TIMEOUT, LinkState, RTO};
use outpost_proto::Millis;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use line::{Dir, Fault, MAX_DELAY_MS, MAX_DUPLICATE_GAP_MS};
use store::Disk;
use world::{ByTime, Event, Pair, Scripted, Setup};

/// Something the line does to a frame.
fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        3 => Just(Fault::Drop),
        1 => (1..=MAX_DUPLICATE_GAP_MS).prop_map(Fault::Duplicate),
        2 => (1..=MAX_DELAY_MS).prop_map(Fault::Delay),
        1 => (any::<Index>(), 1..=255u8).prop_map(|(at, mask)| Fault::Corrupt(at, mask)),
        1 => any::<Index>().prop_map(Fault::Truncate),
        1 => vec(any::<u8>(), 1..24).prop_map(Fault::Noise),
        1 => any::<Index>().prop_map(Fault::Split),
        1 => (any::<u64>(), 0u32..=50_000, vec(any::<u8>(), 0..=64)).prop_map(
            |(seed, lose_per_million, noise)| Fault::Dirty { seed, lose_per_million, noise }
        ),
    ]
}

/// Group commit window and fsync time: mostly a healthy disk, sometimes one slower than the
/// node's RTO and its HELLO interval, up to `slowest_fsync_ms`.
fn disk(slowest_fsync_ms: u64) -> impl Strategy<Value = Disk> {
    (
        1u64..=50,
        prop_oneof![6 => 0u64..=40, 2 => 100u64..=1200, 1 => 1500..=slowest_fsync_ms],
    )
        .prop_map(|(commit_interval_ms, fsync_ms)| Disk {
            commit_interval_ms,
            fsync_ms,
            // The smallest the config allows, so groups also close on size.
            max_commit_readings: 64,
        })
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => any::<bool>().prop_map(|durable| Event::GatewayRestart { durable }),
        1 => Just(Event::PortReset),
        1 => Just(Event::NodeRestart),
    ]
}

/// The port's frame rate limit: mostly the default, sometimes one the node's traffic exceeds.
fn rate_limit() -> impl Strategy<Value = u32> {
    prop_oneof![3 => Just(LinkLimits::default().max_frames_per_sec), 1 => 8u32..=60]
}

/// Where the open gateway bugs are (see the ignored tests below): frames of a previous boot
/// reaching the gateway after the new boot's, which an in-order line (UART, USB CDC) never does.
/// The properties that must pass stay out of that corner; the ignored one does not.
#[derive(Debug, Clone, Copy)]
struct Corners {
    late_frames_across_reboots: bool,
    slowest_fsync_ms: u64,
}

/// Frames in order across a node reboot, as on every serial line; disks up to 4 s per commit,
/// slower than the node's LINK_TIMEOUT (3 s).
const IN_ORDER_ACROSS_REBOOTS: Corners = Corners {
    late_frames_across_reboots: false,
    slowest_fsync_ms: 4_000,
};

const EVERYTHING: Corners = Corners {
    late_frames_across_reboots: true,
    slowest_fsync_ms: 4_000,
};

/// A run: how often the node samples and for how long, its ring, the disk, the port's rate
/// limit, the restarts (during sampling), faults for each direction and disk-full episodes
/// (during sampling).
fn run(
    every_ms: std::ops::RangeInclusive<u64>,
    ring_limit: impl Strategy<Value = usize>,
    corners: Corners,
) -> impl Strategy<Value = (Setup, Scripted)> {
    (
        every_ms,
        2_000u64..=20_000,
        ring_limit,
        disk(corners.slowest_fsync_ms),
        rate_limit(),
        any::<u32>(),
        // Mostly a line as fast as needed, sometimes a UART from 9600 to 115200 baud.
        prop_oneof![2 => Just(None), 1 => (960u64..=11_520).prop_map(Some)],
    )
        .prop_flat_map(|(every, sampling, ring_limit, disk, rate, boot_id, line)| {
            (
                Just((every, sampling, ring_limit, disk, rate, boot_id, line)),
                vec((0..sampling, event()), 0..=4),
                // Up to 200 faults per direction, a fault every 8 frames on average.
                vec((0u32..16, fault()), 0..200),
                vec((0u32..16, fault()), 0..200),
                // Up to 6 disk-full episodes of up to 5 failed commits each.
                vec((0u32..40, 1u32..6), 0..=6),
            )
        })
        .prop_map(
            move |(
                (every, sampling, ring_limit, disk, rate, first_boot_id, line_bytes_per_sec),
                events,
                up,
                down,
                fails,
            )| {
                let setup = Setup {
                    sample_every_ms: every,
                    sampling_until: Millis(sampling),
                    ring_limit,
                    disk,
                    max_frames_per_sec: rate,
                    line_bytes_per_sec,
                    first_boot_id,
                    events: events.into_iter().map(|(at, e)| (Millis(at), e)).collect(),
                    faults_until: Millis(sampling),
                    late_frames_across_reboots: corners.late_frames_across_reboots,
                };
                let faults = Scripted {
                    to_gateway: up.into(),
                    to_node: down.into(),
                    disk_full: fails.into(),
                };
                (setup, faults)
            },
        )
}

/// How long after the calm moment delivery may take: the longest a frame is delayed, a
/// LINK_TIMEOUT and a HELLO, then a full ring at one window (16 samples) per commit cycle.
fn patience(disk: &Disk) -> u64 {
    60_000 + 24 * (disk.commit_interval_ms + disk.fsync_ms)
}

/// Runs to the calm moment and past it until everything is delivered, and judges the run.
fn settle_and_check(pair: &mut Pair, disk: &Disk) -> Result<(), String> {
    let settled = pair.settle(patience(disk));
    if let Some(violation) = pair.violation() {
        return Err(violation.to_owned());
    }
    let checked = pair.check();
    if !settled {
        return Err(format!(
            "not settled {} ms after the calm moment ({} ms): {pair:?}; {}",
            patience(disk),
            pair.calm_at.as_u64(),
            checked.err().unwrap_or_default(),
        ));
    }
    checked
}

fn seqs_of_current_boot(pair: &Pair) -> Vec<u32> {
    let boot_id = pair.current_boot().boot_id;
    pair.store
        .samples
        .iter()
        .filter(|((_, b), _)| *b == boot_id)
        .flat_map(|(_, s)| s.iter().map(|s| s.seq))
        .collect()
}

/// 256 cases per property (PROPTEST_CASES overrides, for a longer search).
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config
}

/// With PAIR_SUMMARY set, one line per case: what the run went through.
fn summarize(pair: &Pair) {
    if std::env::var_os("PAIR_SUMMARY").is_some() {
        eprintln!(
            "boots {} produced {} dropped {} lost_by_restart {} | line hurt {:?} | commits {} \
             failed {} crashed {} | gateway restarts {} port resets {} | hellos {} telemetry {} \
             acks {} | port {:?} | settled at {} ms",
            pair.boots.len(),
            pair.boots.iter().map(|b| b.produced.len()).sum::<usize>(),
            pair.tally.dropped,
            pair.tally.lost_by_restart,
            pair.line.hurt,
            pair.store.commits,
            pair.store.failed_commits,
            pair.store.crashed_commits,
            pair.tally.gateway_restarts,
            pair.tally.port_resets,
            pair.tally.hellos,
            pair.tally.telemetry,
            pair.tally.acks,
            pair.port_counters(),
            pair.now.as_u64(),
        );
    }
}

/// The rules every run must keep, plus: the newest sample of the current boot is stored.
fn check_run(setup: Setup, faults: Scripted) -> Result<Pair, TestCaseError> {
    let disk = setup.disk;
    let mut pair = Pair::new(setup, faults);
    let outcome = settle_and_check(&mut pair, &disk);
    summarize(&pair);
    prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    let produced = pair.current_boot().produced.len() as u32;
    if produced > 0 {
        prop_assert_eq!(
            seqs_of_current_boot(&pair).last().copied(),
            Some(produced),
            "the newest sample arrives"
        );
    }
    prop_assert_eq!(pair.port_counters().refused, 0, "the node keeps its key");
    Ok(pair)
}

proptest! {
    #![proptest_config(config())]

    /// The ring holds every sample a boot can take here (at most 250 < 256), so nothing may be
    /// missing from the current boot.
    #[test]
    fn with_room_in_the_ring_the_last_boot_is_stored_whole_and_nothing_acknowledged_is_lost(
        (setup, faults) in run(80..=500, Just(world::RING), IN_ORDER_ACROSS_REBOOTS),
    ) {
        let pair = check_run(setup, faults)?;
        prop_assert_eq!(pair.tally.dropped, 0);
        let produced = pair.current_boot().produced.len() as u32;
        prop_assert_eq!(seqs_of_current_boot(&pair), (1..=produced).collect::<Vec<_>>());
    }

    /// A ring too small to ride out the faults: the only samples missing are ones the node
    /// pushed out of it (or held when it rebooted), and the store recorded them as a gap.
    #[test]
    fn with_a_small_ring_only_samples_the_node_dropped_or_rebooted_with_are_missing(
        (setup, faults) in run(10..=200, 2usize..=16, IN_ORDER_ACROSS_REBOOTS),
    ) {
        check_run(setup, faults)?;
    }

    /// The rules over the whole space: frames the node sent before a reboot may reach the
    /// gateway after the new boot's, and commits may take up to 4 s.
    #[test]

    fn with_frames_of_a_previous_boot_arriving_late_no_sample_is_misattributed_or_lost(
        (setup, faults) in run(10..=500, prop_oneof![Just(world::RING), 2usize..=16], EVERYTHING),
    ) {
        check_run(setup, faults)?;
    }
}

fn healthy_disk() -> Disk {
    Disk {
        commit_interval_ms: 20,
        fsync_ms: 5,
        max_commit_readings: 8192,
    }
}

fn setup(every_ms: u64, sampling_ms: u64, disk: Disk) -> Setup {
    Setup {
        sample_every_ms: every_ms,
        sampling_until: Millis(sampling_ms),
        ring_limit: world::RING,
        disk,
        max_frames_per_sec: LinkLimits::default().max_frames_per_sec,
        line_bytes_per_sec: None,
        first_boot_id: 0x5EED_0001,
        events: Vec::new(),
        faults_until: Millis(sampling_ms),
        late_frames_across_reboots: false,
    }
}

fn no_faults() -> Scripted {
    Scripted::default()
}

/// Every sample of every boot is stored, once each, and the run settles.
fn assert_all_delivered(pair: &mut Pair, disk: &Disk) {
    settle_and_check(pair, disk).unwrap();
    let produced = pair.current_boot().produced.len() as u32;
    assert_eq!(
        seqs_of_current_boot(pair),
        (1..=produced).collect::<Vec<_>>()
    );
}

#[test]
fn a_clean_line_delivers_every_sample_once_with_one_hello() {
    let disk = healthy_disk();
    let mut pair = Pair::new(setup(100, 10_000, disk), no_faults());
    assert_all_delivered(&mut pair, &disk);
    assert_eq!(pair.current_boot().produced.len(), 100);
    assert_eq!(pair.tally.hellos, 1);
    assert_eq!(pair.current_boot().counters.retransmits, 0);
    assert_eq!(pair.port_counters().duplicates, 0);
}

#[test]
fn every_ack_lost_for_ten_seconds_costs_retransmits_and_hellos_but_no_sample() {
    let disk = healthy_disk();
    let lost = 2_000..12_000;
    let faults = ByTime {
        fault: {
            let lost = lost.clone();
            move |now: Millis, dir| {
                if dir == Dir::ToNode && lost.contains(&now.as_u64()) {
                    Fault::Drop
                } else {
                    Fault::Deliver
                }
            }
        },
        commit_fails: |_| false,
    };
    let mut pair = Pair::new(setup(100, 15_000, disk), faults);
    pair.run_until(Millis(lost.end - 1));
    // Nothing was acknowledged for ten seconds: the node holds all it took since (bar the ACKs
    // in flight when the line went deaf), and went back to saying HELLO.
    assert!(pair.node.held() >= 95, "held {}", pair.node.held());
    assert_eq!(pair.node.state(), LinkState::Unaccepted);
    // HELLO at boot, then one a second from LINK_TIMEOUT after the last ACK heard.
    assert!(pair.tally.hellos >= 6, "{} HELLOs", pair.tally.hellos);
    assert_all_delivered(&mut pair, &disk);
    assert!(pair.current_boot().counters.retransmits > 0);
    assert!(
        pair.port_counters().duplicates > 0,
        "the resends reached the gateway and were dropped there"
    );
    assert_eq!(pair.tally.dropped, 0);
}

#[test]
fn a_gateway_killed_mid_commit_loses_no_acknowledged_sample_and_stores_none_twice() {
    for durable in [false, true] {
        // A slow disk, so that a commit is in flight most of the time.
        let disk = Disk {
            commit_interval_ms: 20,
            fsync_ms: 400,
            max_commit_readings: 8192,
        };
        let mut pair = Pair::new(setup(50, 10_000, disk), no_faults());
        assert!(
            pair.run_until_that(Millis(10_000), |p| p.now >= Millis(3_000)
                && p.store.is_committing())
        );
        let stored_before = seqs_of_current_boot(&pair).len();
        let acked_before = pair.current_boot().acked.len();
        pair.happen(Event::GatewayRestart { durable });
        assert_eq!(pair.store.crashed_commits, 1);
        if durable {
            assert!(
                seqs_of_current_boot(&pair).len() > stored_before,
                "the commit made it"
            );
        } else {
            assert_eq!(seqs_of_current_boot(&pair).len(), stored_before);
        }
        // The new session ignores the node's TELEMETRY until it says HELLO again, after
        // LINK_TIMEOUT of silence.
        let hellos = pair.tally.hellos;
        pair.run_until(pair.now + LINK_TIMEOUT.as_millis() as u64 + 2 * RTO.as_millis() as u64);
        assert!(pair.tally.hellos > hellos, "durable {durable}");
        assert!(pair.current_boot().acked.len() > acked_before);
        assert_all_delivered(&mut pair, &disk);
        assert_eq!(pair.tally.gateway_restarts, 1);
        assert_eq!(pair.current_boot().produced.len(), 200);
    }
}

#[test]
fn a_full_disk_acknowledges_nothing_until_it_clears_then_everything_arrives_once() {
    let disk = healthy_disk();
    let full = 3_000..8_000;
    let faults = ByTime {
        fault: |_, _| Fault::Deliver,
        commit_fails: {
            let full = full.clone();
            move |now: Millis| full.contains(&now.as_u64())
        },
    };
    let mut pair = Pair::new(setup(100, 12_000, disk), faults);
    pair.run_until(Millis(full.end));
    assert!(
        pair.store.failed_commits >= 3,
        "{}",
        pair.store.failed_commits
    );
    let boot = pair.current_boot();
    let acked_late = boot
        .acked
        .iter()
        .filter(|&&seq| boot.produced[seq as usize - 1].taken_at >= Millis(full.start))
        .count();
    assert_eq!(
        acked_late, 0,
        "a sample taken while the disk was full was acknowledged"
    );
    assert!(pair.node.held() >= 45, "held {}", pair.node.held());
    assert_all_delivered(&mut pair, &disk);
    assert_eq!(pair.tally.dropped, 0);
}

#[test]
fn a_node_reboot_loses_only_what_it_held_and_its_new_boot_starts_from_one() {
    let disk = healthy_disk();
    // The gateway hears the node but the node hears nothing from 3 s: at its reboot at 5 s it
    // holds two seconds of samples the store has (the ACKs were lost) and a few it has not.
    let faults = ByTime {
        fault: |now: Millis, dir| match dir {
            Dir::ToNode if now >= Millis(3_000) => Fault::Drop,
            Dir::ToGateway if now >= Millis(4_500) => Fault::Drop,
            _ => Fault::Deliver,
        },
        commit_fails: |_| false,
    };
    let mut setup = setup(100, 10_000, disk);
    setup.events = vec![(Millis(5_000), Event::NodeRestart)];
    setup.faults_until = Millis(5_000);
    let mut pair = Pair::new(setup, faults);
    assert_all_delivered(&mut pair, &disk);
    assert_eq!(pair.boots.len(), 2);
    let first = &pair.boots[0];
    assert_eq!(first.produced.len(), 50);
    assert!(first.held_at_restart.len() >= 20);
    // The samples sent before 4.5 s are stored though the node never heard so; the rest of what
    // it held is lost by the restart.
    assert!(
        pair.tally.lost_by_restart >= 3 && pair.tally.lost_by_restart <= 6,
        "{:?}",
        pair.tally
    );
    assert_eq!(pair.current_boot().produced.len(), 50);
}

#[test]
fn a_port_reset_mid_stream_is_repaired_by_the_nodes_next_hello() {
    let disk = healthy_disk();
    let mut setup = setup(100, 10_000, disk);
    setup.events = vec![(Millis(4_321), Event::PortReset)];
    let mut pair = Pair::new(setup, no_faults());
    pair.run_until(Millis(4_321));
    assert_eq!(pair.session.node_id(), None);
    assert_all_delivered(&mut pair, &disk);
    assert_eq!(pair.tally.port_resets, 1);
    assert!(pair.tally.hellos >= 2);
}

/// Fixed (reproduction of a bug of protocol version 1). A HELLO + ENROLL of boot A that reach the gateway after
/// boot B is registered make `PortSession` register A again and attach it: a HELLO of another
/// boot than the attached one always replaces it. B, accepted and sending, has its TELEMETRY
/// (which names no boot) admitted into A's sequence: B's sample 11, whose `window_start` is 11
/// since B's 1..=10 are acknowledged, is a gap after A's nothing and is stored as A's seq 11,
/// with B's readings. B's samples go on being stored as A's until B's LINK_TIMEOUT, and then
/// once more under B: stored twice, once under the wrong boot. Same root cause and fix as the
/// late TELEMETRY below: with its boot id in each TELEMETRY, B's frames are not admitted while A
/// is attached, and B's LINK_TIMEOUT HELLO re-attaches B. Version 2 fixes it without a boot id
/// in TELEMETRY: A's late HELLO cannot complete a handshake, and B's frames are sealed with B's
/// keys.
#[test]
fn a_stale_hello_of_the_previous_boot_does_not_capture_the_new_boots_samples() {
    let disk = healthy_disk();
    // Boot A is never accepted (every ACCEPT lost until 2.5 s), so it says HELLO + ENROLL each
    // second; the pair it sends at 2 s is delayed 1.5 s on the line. The node reboots at 2.5 s
    // (boot B), is accepted, and delivers; then A's old HELLO + ENROLL arrive at 3.5 s.
    let faults = ByTime {
        fault: |now: Millis, dir| match dir {
            Dir::ToNode if now < Millis(2_500) => Fault::Drop,
            Dir::ToGateway if now == Millis(2_000) => Fault::Delay(1_500),
            _ => Fault::Deliver,
        },
        commit_fails: |_| false,
    };
    let mut setup = setup(100, 8_000, disk);
    setup.events = vec![(Millis(2_500), Event::NodeRestart)];
    setup.faults_until = Millis(2_600);
    setup.late_frames_across_reboots = true;
    let mut pair = Pair::new(setup, faults);
    let outcome = settle_and_check(&mut pair, &disk);
    assert!(
        outcome.is_ok(),
        "{}\n{:#?}",
        outcome.unwrap_err(),
        pair.store.samples.keys()
    );
}

/// Fixed (reproduction of a bug of protocol version 1). TELEMETRY names no boot, so `PortSession` admits a late
/// frame of boot A into the attached boot B: A's seq 50 (`window_start` 50) arrives when B has
/// committed 1..=9, passes `admit` as a gap after 9, and is stored as B's seq 50. The ACK for
/// 50 makes B drop its own 10..=50 unstored: B's 10 at once (the pair stops there: "told sample
/// 10 ... is committed ... the store does not hold it"), and 11..=50 as it takes and sends
/// them, since the gateway answers each with the ACK for 50 again. B's 10..=49 are acknowledged
/// and never stored; B's 50 is acknowledged and the store holds A's 50 in its place.
///
/// Version 2 fixes it on the wire: A's frame is sealed with A's session keys and does not open
/// in B's session (counted as `auth_failed`).
#[test]
fn a_late_telemetry_frame_of_the_previous_boot_is_not_taken_for_the_new_boots() {
    let disk = healthy_disk();
    // A clean line but for one TELEMETRY sent at 4.9 s (boot A's seq 50, everything before it
    // acknowledged, so window_start 50), which is delayed 1 s. The node reboots at 5 s (boot B)
    // and is accepted at once; A's frame arrives at 5.902 s.
    let faults = ByTime {
        fault: |now: Millis, dir| match dir {
            Dir::ToGateway if now == Millis(4_900) => Fault::Delay(1_000),
            _ => Fault::Deliver,
        },
        commit_fails: |_| false,
    };
    let mut setup = setup(100, 10_000, disk);
    setup.events = vec![(Millis(5_000), Event::NodeRestart)];
    setup.faults_until = Millis(5_000);
    setup.late_frames_across_reboots = true;
    let mut pair = Pair::new(setup, faults);
    let outcome = settle_and_check(&mut pair, &disk);
    assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
}

/// Known gateway bug (reproduction): a livelock with a slow disk and a clean line. Minimal case
/// the proptest found: 25 samples 80 ms apart, commits durable 28 + 3973 ms after their first
/// command, no fault at all.
///
/// 1. The registration at 0 s takes 4 s; the node, unaccepted, says HELLO + ENROLL at 1, 2, 3
///    and 4 s. Each ENROLL finds `registering` set, so `PortSession` keeps that HELLO in
///    `self.hello` ("retried on next HELLO"), and `handle_registered` never clears it.
/// 2. Samples 1..=16 take 4 s to commit: the node hears nothing for LINK_TIMEOUT and says HELLO
///    and ENROLL at 7 s. The HELLO is the attached boot's, so it is answered with ACCEPT, but the
///    ENROLL takes the kept HELLO and registers the same boot again: `node = None` for 4 s.
/// 3. The commit of 1..=16 lands at 8 s, inside that window: `handle_committed` finds no node and
///    sends no ACK; TELEMETRY is ignored. The node times out again during the registration,
///    its HELLO is kept again, and each ACCEPT's ENROLL starts the next registration: steps 2-3
///    repeat every 4 s and seq 17..=25 are never stored.
///
/// Fix (in `gateway/core/src/link.rs`, checked against this test and the properties with commits up
/// to 4 s, not applied here): in the ENROLL arm, after taking the kept HELLO, return if
/// `self.node` is attached with that HELLO's `boot_id` (it was answered with ACCEPT already);
/// and in `handle_registered`, drop a kept HELLO of the boot just registered
/// (`self.hello = self.hello.take().filter(|h| h.boot_id != hello.boot_id)`). Either one ends
/// the livelock; the first is the general rule: never detach an attached boot to register it
/// again.
#[test]
fn a_disk_slower_than_link_timeout_delays_delivery_but_does_not_stop_it() {
    let disk = Disk {
        commit_interval_ms: 28,
        fsync_ms: 3_973,
        max_commit_readings: 64,
    };
    let mut pair = Pair::new(setup(80, 2_000, disk), no_faults());
    let outcome = settle_and_check(&mut pair, &disk);
    assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    assert_eq!(pair.store.registrations, 1, "one boot, one registration");
}

/// A sweep rather than a sample: each kind of restart at every 10 ms of the first 1.5 s (the
/// first registration, the first commits, ACKs in flight), over a disk slow enough (300 ms) for
/// every moment to fall inside something.
#[test]
fn a_restart_of_either_end_at_any_moment_of_registration_or_commit_keeps_every_rule() {
    let disk = Disk {
        commit_interval_ms: 20,
        fsync_ms: 300,
        max_commit_readings: 64,
    };
    let kinds = [
        Event::GatewayRestart { durable: false },
        Event::GatewayRestart { durable: true },
        Event::PortReset,
        Event::NodeRestart,
    ];
    for at in (0..1_500).step_by(10) {
        for event in kinds {
            let mut setup = setup(100, 4_000, disk);
            setup.events = vec![(Millis(at), event)];
            let mut pair = Pair::new(setup, no_faults());
            if let Err(e) = settle_and_check(&mut pair, &disk) {
                panic!("{event:?} at {at} ms: {e}");
            }
        }
    }
}

// ---- Reliability figures (docs/BENCHMARKS.md, "Node link under faults") ----
//
// Virtual time on a line with a UART's capacity: exact and repeatable, so the figures are also
// asserted. `cargo test -p outpost-core --test pair figures -- --nocapture` prints them.

/// Bytes on the line of one of the pair's TELEMETRY frames (three readings), sealed, with the
/// varints as long as in a catch-up: seq past 16 383 (3 bytes), a ring's depth behind it and an
/// age of seconds (2 bytes each).
fn telemetry_frame_len() -> u64 {
    let mut buf = [0u8; outpost_proto::frame::MAX_FRAME_LEN];
    let mut raw = [0u8; outpost_proto::wire::MAX_MESSAGE_LEN];
    let message = outpost_proto::Message::Telemetry(outpost_proto::Telemetry {
        seq: 20_000,
        window_start: 20_000 - 1000,
        age_ms: 10_000,
        readings: [0u8, 1, 2]
            .iter()
            .map(|&c| outpost_proto::Reading {
                channel: outpost_proto::ChannelId(200 + c),
                value: 0x0101_0101,
            })
            .collect(),
    });
    // The seal's bytes do not change the length: COBS costs one byte per 254 whatever they are.
    let len = message.emit(&mut raw).unwrap() + outpost_proto::wire::SEAL_LEN;
    outpost_proto::frame::encode_raw_frame(&raw[..len], &mut buf).unwrap() as u64
}

/// A 20 Hz node on a 115200-baud line that loses 0.1 % of its bytes both ways and gets a burst
/// of 64 bytes of noise written into a frame every 2 s, for two minutes. Go-back-N after a fixed
/// 1 s timer resent 62 % as many frames as samples on such a line.
#[test]
fn figures_on_a_dirty_line_resends_cost_at_most_a_tenth_of_the_samples() {
    let disk = healthy_disk();
    let mut seed = 0x00D1_47E5_u64;
    let mut bursts = 0u64;
    let faults = ByTime {
        fault: move |now: Millis, dir| {
            let noise = if dir == Dir::ToGateway && now.as_u64() / 2000 > bursts {
                bursts = now.as_u64() / 2000;
                (0..64).map(|_| line::splitmix(&mut seed) as u8).collect()
            } else {
                Vec::new()
            };
            Fault::Dirty {
                seed: line::splitmix(&mut seed),
                lose_per_million: 1_000,
                noise,
            }
        },
        commit_fails: |_| false,
    };
    let mut setup = setup(50, 120_000, disk);
    setup.line_bytes_per_sec = Some(11_520);
    let mut pair = Pair::new(setup, faults);
    assert_all_delivered(&mut pair, &disk);
    let stored = seqs_of_current_boot(&pair).len() as f64;
    let counters = pair.current_boot().counters;
    let ratio = f64::from(counters.retransmits) / stored;
    eprintln!(
        "figure: dirty line, 20 Hz: {} samples stored, {} frames resent ({:.1} %), {} NACKs, {} timer expiries, frames hurt {:?}",
        stored,
        counters.retransmits,
        100.0 * ratio,
        pair.port_counters().nacks,
        counters.timeouts,
        pair.line.hurt,
    );
    assert!(ratio <= 0.10, "{:.1} % resent", 100.0 * ratio);
}

/// How long after a 60 s outage a node sampling at `percent` % of what its line carries takes
/// to drain its full ring (1024 samples), beside the line's theoretical drain time; and that it
/// loses nothing after that.
fn catch_up(percent: u64) -> (f64, f64) {
    let disk = healthy_disk();
    // 250 frames a second: whole-millisecond sample periods at 50 % and 80 %.
    let capacity = 250;
    let every_ms = 100_000 / (capacity * percent);
    let (outage_from, outage_to) = (10_000u64, 70_000u64);
    let faults = ByTime {
        fault: move |now: Millis, _| {
            if (outage_from..outage_to).contains(&now.as_u64()) {
                Fault::Drop
            } else {
                Fault::Deliver
            }
        },
        commit_fails: |_| false,
    };
    let mut setup = setup(every_ms, outage_to + 60_000, disk);
    setup.line_bytes_per_sec = Some(telemetry_frame_len() * capacity);
    setup.faults_until = Millis(outage_to);
    let mut pair = Pair::new(setup, faults);
    pair.run_until(Millis(outage_to));
    let held = pair.node.held() as f64;
    assert_eq!(held as usize, world::RING, "the outage filled the ring");
    let caught_up = pair.run_until_that(Millis(outage_to + 60_000), |p| {
        p.node.held() <= outpost_node::WINDOW as usize
    });
    assert!(caught_up, "{percent} %: still {} held", pair.node.held());
    let took = (pair.now.as_u64() - outage_to) as f64 / 1000.0;
    let dropped = pair.node.counters().dropped_samples;
    // Everything but the outage's overflow is stored (`check` knows which seqs were dropped).
    settle_and_check(&mut pair, &disk).unwrap();
    assert_eq!(
        pair.node.counters().dropped_samples,
        dropped,
        "{percent} %: lost samples after catching up"
    );
    let rate = 1000.0 / every_ms as f64;
    let theoretical = held / (capacity as f64 - rate);
    eprintln!(
        "figure: catch-up after a 60 s outage at {percent} % of the line ({rate} Hz, line {capacity} frames/s): {took:.1} s; the line drains {held} samples in {theoretical:.1} s; lost {dropped} (the outage's overflow)"
    );
    (took, theoretical)
}

#[test]
fn figures_after_a_long_outage_a_node_at_half_the_line_catches_up_near_the_lines_pace() {
    let (took, theoretical) = catch_up(50);
    // The HELLO that finds the gateway again comes up to a second after the outage.
    assert!(
        took <= theoretical * 1.2 + 1.5,
        "{took} s vs {theoretical} s"
    );
}

#[test]
fn figures_after_a_long_outage_a_node_at_four_fifths_of_the_line_catches_up_near_the_lines_pace() {
    let (took, theoretical) = catch_up(80);
    assert!(
        took <= theoretical * 1.2 + 1.5,
        "{took} s vs {theoretical} s"
    );
}
