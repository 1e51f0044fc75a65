use std::sync::Arc;

use outpost_proto::frame::{MAX_BULK_FRAME_LEN, encode_raw_frame};
use outpost_proto::wire::SEAL_LEN;
use outpost_proto::{
    ChunkSize, FwVersion, ImageTag, Millis, OtaControl, OtaOp, OtaPhase, OtaRefusal, OtaStatus,
    RevertCause,
};
use proptest::prelude::*;

use super::*;

mod model;
mod sim;

use model::{ModelNode, RAM_SECTORS, SECTOR};
use sim::{Disruption, Faults, Sim};

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

/// Firmware-like bytes: runs of zeros between varied bytes.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if (i / 64) % 3 == 0 {
                0
            } else {
                (i as u8).wrapping_mul(31).wrapping_add(seed)
            }
        })
        .collect()
}

fn image_of(len: usize, seed: u8) -> Image {
    let bytes = bytes(len, seed);
    let manifest = model::manifest(&bytes, V2);
    Image::new(bytes, &manifest, V2).unwrap()
}

fn image(len: usize) -> Image {
    image_of(len, 7)
}

/// A pacer that never holds a chunk back (for the rules that are not about pace).
fn unpaced() -> Pacer {
    Pacer::new(4_000_000_000, MAX_OTA_SHARE)
}

fn ms(t: u64) -> Millis {
    Millis(t)
}

fn start(image: &Image) -> Transfer {
    Transfer::start(ms(0), image.clone(), ChunkSize::B1024, unpaced())
}

fn status(image: &Image, phase: OtaPhase, flashed: u16, have: u64, credit: u16) -> OtaStatus {
    OtaStatus {
        image: image.tag(),
        phase,
        detail: 0,
        flashed,
        have,
        credit,
        chunk: ChunkSize::B1024,
        floor: V1,
    }
}

fn receiving(image: &Image, flashed: u16, have: u64, credit: u16) -> OtaStatus {
    status(image, OtaPhase::Receiving, flashed, have, credit)
}

fn refused(image: &Image, why: OtaRefusal) -> OtaStatus {
    OtaStatus {
        detail: why as u8,
        ..status(image, OtaPhase::Refused, 0, 0, 0)
    }
}

fn idle() -> OtaStatus {
    OtaStatus {
        image: ImageTag::default(),
        phase: OtaPhase::Idle,
        detail: 0,
        flashed: 0,
        have: 0,
        credit: 0,
        chunk: ChunkSize::B1024,
        floor: V1,
    }
}

/// More than any drain can rightly give at once (an image has at most 1,024 chunks): a
/// transfer that keeps answering fails the test instead of hanging it.
const DRAIN_LIMIT: usize = 2048;

fn controls(t: &mut Transfer, now: u64) -> Vec<Control> {
    let out: Vec<_> = std::iter::from_fn(|| t.poll_control(ms(now)))
        .take(DRAIN_LIMIT)
        .collect();
    assert!(out.len() < DRAIN_LIMIT, "poll_control never ran dry");
    out
}

fn chunks(t: &mut Transfer, now: u64) -> Vec<u16> {
    let out: Vec<_> = std::iter::from_fn(|| t.poll_chunk(ms(now)))
        .take(DRAIN_LIMIT)
        .map(|c| c.index)
        .collect();
    assert!(out.len() < DRAIN_LIMIT, "poll_chunk never ran dry");
    out
}

fn events(t: &mut Transfer) -> Vec<TransferEvent> {
    let out: Vec<_> = std::iter::from_fn(|| t.poll_event())
        .take(DRAIN_LIMIT)
        .collect();
    assert!(out.len() < DRAIN_LIMIT, "poll_event never ran dry");
    out
}

fn op(image: &Image, op: OtaOp, arg: u16) -> Control {
    Control::Control(OtaControl {
        image: image.tag(),
        op,
        arg,
    })
}

fn query(image: &Image) -> Control {
    op(image, OtaOp::Query, 0)
}

fn offer(image: &Image) -> Control {
    Control::Offer {
        image: image.tag(),
        chunk: ChunkSize::B1024,
    }
}

/// A transfer of `image` (1 KiB chunks) to a node that took the offer and grants `credit`.
fn receiving_transfer(image: &Image, credit: u16) -> Transfer {
    let mut t = start(image);
    t.handle_status(ms(0), &receiving(image, 0, 0, credit));
    assert!(controls(&mut t, 0).is_empty(), "no question, no offer");
    events(&mut t);
    t
}

// ---- the image ------------------------------------------------------------------------------

#[test]
fn an_image_is_held_once_and_shared_by_every_transfer() {
    let bytes: Arc<[u8]> = bytes(10_000, 1).into();
    let image = Image::new(bytes.clone(), b"manifest", V2).unwrap();
    let a = Transfer::start(ms(0), image.clone(), ChunkSize::B1024, unpaced());
    let b = Transfer::start(ms(0), image.clone(), ChunkSize::B512, unpaced());
    assert!(std::ptr::eq(a.image().bytes(), bytes.as_ref()));
    assert!(std::ptr::eq(b.image().bytes(), bytes.as_ref()));
    // The caller's Arc, the image's, and nothing else: no copy.
    assert_eq!(Arc::strong_count(&bytes), 2);
    assert_eq!(image.tag(), ImageTag::of(image.sha256()));
}

#[test]
fn an_image_that_cannot_be_sent_is_refused() {
    assert_eq!(Image::new(Vec::new(), b"m", V2), Err(ImageError::Empty));
    assert_eq!(
        Image::new(vec![0; 512 * 1024 + 1], b"m", V2),
        Err(ImageError::TooLarge {
            size: 512 * 1024 + 1
        })
    );
    assert_eq!(
        Image::new(vec![0; 10], &[b'm'; 901], V2),
        Err(ImageError::ManifestTooLong { len: 901 })
    );
    let image = image(5000);
    let admitted = crate::firmware::Firmware {
        file: "node.bin".into(),
        size: 5000,
        sha256: *image.sha256(),
        version: V2,
        floor: V1,
        hw_rev: 1,
        expires_unix_s: 0,
    };
    assert!(Image::admitted(&admitted, image.bytes().to_vec(), image.manifest()).is_ok());
    let other = bytes(5000, 99);
    assert_eq!(
        Image::admitted(&admitted, other, image.manifest()),
        Err(ImageError::NotAdmitted)
    );
}

#[test]
fn chunks_cover_the_image_exactly_and_the_last_is_short() {
    let image = image(5 * 1024 + 100);
    assert_eq!(image.chunks(ChunkSize::B1024), 6);
    assert_eq!(image.chunks(ChunkSize::B512), 11);
    let last = image.chunk_ref(ChunkSize::B1024, 5).unwrap();
    assert_eq!(last.range(), 5120..5220);
    assert_eq!(image.chunk(last).data, &image.bytes()[5120..5220]);
    assert_eq!(image.chunk_ref(ChunkSize::B1024, 6), None);
}

#[test]
fn frame_lengths_on_the_line_are_the_designs() {
    // docs/ota-design.md §4.4: 1,052 and 538 bytes a chunk; OTA_STATUS 40 bytes sealed.
    assert_eq!(chunk_line_len(1024), 1052);
    assert_eq!(chunk_line_len(1024), MAX_BULK_FRAME_LEN);
    assert_eq!(chunk_line_len(512), 538);
    assert_eq!(STATUS_LINE_LEN, 40);
    assert_eq!(CONTROL_LINE_LEN, 25);
    // A real frame is at most that long: the worst case, message bytes without a zero.
    for len in [1, 100, 512, 1000, 1024] {
        let message = vec![0x5A; 8 + len + SEAL_LEN];
        let mut out = [0u8; MAX_BULK_FRAME_LEN];
        let framed = encode_raw_frame(&message, &mut out).unwrap();
        assert!(framed <= chunk_line_len(len), "{len}: {framed}");
        assert!(framed + 1 >= chunk_line_len(len), "{len}: {framed}");
    }
}

// ---- the pacer ------------------------------------------------------------------------------

#[test]
fn chunks_are_paced_at_the_share_of_the_line() {
    let mut pacer = Pacer::new(921_600, 0.95);
    assert_eq!(pacer.line_bytes_per_sec(), 92_160);
    assert_eq!(pacer.bytes_per_sec(), 87_552);
    // One second of asking every millisecond: what goes is 95 % of the line, give or take a
    // chunk.
    let mut sent = 0;
    for t in 0..1000 {
        while pacer.try_send(ms(t), 1052) {
            sent += 1052;
        }
    }
    assert!((87_552 - 1052..=87_552 + 1052).contains(&sent), "{sent}");
}

#[test]
fn the_pacer_allows_a_burst_of_one_chunk() {
    let mut pacer = Pacer::new(115_200, 0.95);
    assert!(pacer.try_send(ms(10_000), 1052));
    assert!(!pacer.try_send(ms(10_000), 1052), "a second chunk at once");
    // 1052 bytes at 95 % of 11,520 B/s: 96.1 ms.
    assert_eq!(pacer.paced_time(1052).as_micros(), 96_126);
    assert_eq!(pacer.ready_at(), ms(10_096));
    assert!(!pacer.try_send(ms(10_095), 1052));
    assert!(pacer.try_send(ms(10_096), 1052));
}

#[test]
fn a_timer_that_wakes_a_little_late_does_not_slow_the_pace() {
    // The port task asks 2 ms after each chunk's time: the pace must not lose 2 ms a chunk.
    let mut pacer = Pacer::new(921_600, 0.95);
    let mut now = ms(0);
    for _ in 0..256 {
        now = now.max(pacer.ready_at() + 2);
        assert!(pacer.try_send(now, 1052));
    }
    assert_eq!(now, ms(3064 + 2));
    // After a pause the bucket holds no credit for it: one chunk, then the paced rate.
    let later = ms(10_000);
    assert!(pacer.try_send(later, 1052));
    assert!(!pacer.try_send(later, 1052));
    assert_eq!(pacer.ready_at(), ms(10_012));
}

#[test]
fn a_millisecond_clock_does_not_slow_the_pace() {
    // The adapter wakes at poll_timeout, a whole millisecond after the bucket allows: over 256
    // chunks the pace must not lose that fraction each time.
    let mut pacer = Pacer::new(921_600, 0.95);
    let mut now = ms(0);
    for _ in 0..256 {
        now = now.max(pacer.ready_at());
        assert!(pacer.try_send(now, 1052));
    }
    // The 256th chunk goes 255 paced chunks after the first: 255 × 12.016 ms = 3.064 s.
    assert_eq!(now, ms(3064));
}

#[test]
fn usb_cdc_is_paced_at_a_nominal_rate() {
    assert_eq!(Pacer::new(0, 0.95).line_bytes_per_sec(), 92_160);
    assert_eq!(
        Pacer::with_nominal(0, 0.95, 3_000_000).line_bytes_per_sec(),
        300_000
    );
}

#[test]
fn telemetry_keeps_at_least_five_percent_of_the_downlink() {
    // A share above 0.95 is taken as 0.95; a share that is not a number as the default.
    assert_eq!(Pacer::new(921_600, 1.0).bytes_per_sec(), 87_552);
    assert_eq!(Pacer::new(921_600, f64::NAN).bytes_per_sec(), 87_552);
    assert_eq!(Pacer::new(921_600, 0.5).bytes_per_sec(), 46_080);
    for baud in [115_200, 921_600] {
        let pacer = Pacer::new(baud, 1.0);
        let left = pacer.line_bytes_per_sec() - pacer.bytes_per_sec();
        assert!(
            left * 20 >= pacer.line_bytes_per_sec(),
            "{baud}: {left} B/s left"
        );
    }
    // What is left is 4.6 KB/s at 921,600: 177 ACKs (26 bytes on the line) a second.
    let pacer = Pacer::new(921_600, 0.95);
    assert_eq!(
        (pacer.line_bytes_per_sec() - pacer.bytes_per_sec()) / 26,
        177
    );
}

#[test]
fn an_ack_waits_at_most_one_chunk_on_the_line() {
    // The pacer lets one chunk onto the line at a time, so an ACK written behind it waits at
    // most that chunk's time: docs/ota-design.md §4.3's figures, all below RTO_MIN (200 ms).
    let fast = Pacer::new(921_600, 0.95);
    let slow = Pacer::new(115_200, 0.95);
    assert_eq!(fast.line_time(1052).as_micros(), 11_415);
    assert_eq!(slow.line_time(1052).as_micros(), 91_320);
    assert_eq!(slow.line_time(538).as_micros(), 46_702);
    // And chunks go no faster than the line empties: each waits at least its own line time.
    assert!(fast.paced_time(1052) > fast.line_time(1052));
    assert!(slow.paced_time(538) > slow.line_time(538));
}

// ---- starting: ask, then offer --------------------------------------------------------------

#[test]
fn a_transfer_asks_first_and_offers_only_to_a_node_without_the_image() {
    let image = image(20 * 1024);
    let mut t = start(&image);
    assert_eq!(t.stage(), Stage::Probing);
    assert_eq!(controls(&mut t, 0), [query(&image)]);
    assert!(
        chunks(&mut t, 0).is_empty(),
        "nothing before the node took an offer"
    );
    t.handle_status(ms(20), &refused(&image, OtaRefusal::UnknownImage));
    assert_eq!(controls(&mut t, 20), [offer(&image)]);
    assert_eq!(t.stage(), Stage::Offering);
    assert!(
        chunks(&mut t, 20).is_empty(),
        "nothing before the node took the offer"
    );
    t.handle_status(ms(60), &receiving(&image, 0, 0, 16));
    assert_eq!(chunks(&mut t, 60), (0..16).collect::<Vec<_>>());
    assert_eq!(
        events(&mut t),
        [
            TransferEvent::Offered {
                chunk: ChunkSize::B1024,
                again: false
            },
            TransferEvent::Progress {
                flashed: 0,
                size: 20 * 1024
            }
        ]
    );
    assert_eq!(t.stage(), Stage::Receiving);
}

#[test]
fn a_node_that_holds_the_image_resumes_where_it_is_without_an_offer() {
    // The session hands in the STATUS the node sent at ACCEPT: sectors 0 and 1 in flash,
    // chunks 8, 9 and 11 in RAM.
    let image = image(40 * 1024);
    let mut t = start(&image);
    t.handle_status(ms(0), &receiving(&image, 8, 0b1011, 24));
    assert!(controls(&mut t, 0).is_empty(), "neither QUERY nor OFFER");
    assert_eq!(
        chunks(&mut t, 0),
        [10, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]
    );
    assert_eq!(
        events(&mut t),
        [TransferEvent::Progress {
            flashed: 8 * 1024,
            size: 40 * 1024
        }]
    );
}

// ---- sending --------------------------------------------------------------------------------

#[test]
fn chunks_go_in_order_within_the_credit_and_never_beyond_the_image() {
    let image = image(5 * 1024 + 512);
    let mut t = receiving_transfer(&image, 3);
    assert_eq!(chunks(&mut t, 0), [0, 1, 2]);
    // More credit than the image has chunks: the node's window, not the image's length.
    t.handle_status(ms(10), &receiving(&image, 0, 0b111, 16));
    let sent: Vec<_> = std::iter::from_fn(|| t.poll_chunk(ms(10))).collect();
    assert_eq!(sent.iter().map(|c| c.index).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(sent[2].range(), 5120..5632);
    assert!(chunks(&mut t, 10).is_empty());
}

#[test]
fn only_the_holes_a_status_shows_are_sent_again() {
    let image = image(64 * 1024);
    let mut t = receiving_transfer(&image, 16);
    assert_eq!(chunks(&mut t, 0), (0..16).collect::<Vec<_>>());
    // 0, 1, 3, 5 and 6 arrived: 2 and 4 are holes; 7.. are not known lost (still on the way).
    t.handle_status(ms(20), &receiving(&image, 0, 0b110_1011, 16));
    assert_eq!(chunks(&mut t, 20), [2, 4]);
    assert!(chunks(&mut t, 20).is_empty());
    assert_eq!(t.status().chunks_resent, 2);
}

#[test]
fn a_resent_hole_is_not_sent_again_on_a_status_older_than_the_resend() {
    let image = image(64 * 1024);
    let mut t = receiving_transfer(&image, 16);
    chunks(&mut t, 0);
    t.handle_status(ms(20), &receiving(&image, 0, 0b1011, 16));
    assert_eq!(chunks(&mut t, 20), [2]);
    // Reports that left the node before the resent 2 arrived: 2 still missing, but nothing
    // sent after the resend is held yet.
    t.handle_status(ms(22), &receiving(&image, 0, 0b1011, 16));
    t.handle_status(ms(24), &receiving(&image, 0, 0b1111_1011, 16));
    assert!(chunks(&mut t, 24).is_empty());
    // The node writes nothing without 2; a chunk sent after the resend arrives (and with it,
    // on an in-order line, 8..15, sent before it) and 2 is still missing: the resend was lost
    // too, and only it goes again.
    t.handle_status(ms(30), &receiving(&image, 0, 0b1111_1011, 20));
    assert_eq!(chunks(&mut t, 30), [16, 17, 18, 19]);
    t.handle_status(ms(40), &receiving(&image, 0, 1 << 16 | 0xFFFB, 20));
    assert_eq!(chunks(&mut t, 40), [2]);
    // Had 8..15 not arrived while 16 did, they would be holes like any other.
    let mut u = receiving_transfer(&image, 16);
    chunks(&mut u, 0);
    u.handle_status(ms(20), &receiving(&image, 0, 0b1011, 16));
    assert_eq!(chunks(&mut u, 20), [2]);
    u.handle_status(ms(30), &receiving(&image, 0, 0b1111_1011, 20));
    assert_eq!(chunks(&mut u, 30), [16, 17, 18, 19]);
    u.handle_status(ms(40), &receiving(&image, 0, 1 << 16 | 0b1111_1011, 20));
    assert_eq!(
        chunks(&mut u, 40),
        [2, 8, 9, 10, 11, 12, 13, 14, 15],
        "a 0 below the highest 1 is a hole"
    );
}

#[test]
fn a_chunk_sent_twice_counts_from_its_first_send() {
    let image = image(64 * 1024);
    let mut t = receiving_transfer(&image, 5);
    assert_eq!(chunks(&mut t, 0), [0, 1, 2, 3, 4]);
    // 2 was held up on the way and 3 overtook it: a hole.
    t.handle_status(ms(20), &receiving(&image, 0, 0b1011, 5));
    assert_eq!(chunks(&mut t, 20), [2]);
    // The late original completes sector 0 before the resend arrives; 4 is still on its way
    // (the STATUS left the node before it came). Which copy of 2 arrived is not known, so only
    // its first send says what went before it: 4, sent after that, is not a hole.
    t.handle_status(ms(25), &receiving(&image, 4, 0, 20));
    assert_eq!(chunks(&mut t, 25), (5..20).collect::<Vec<_>>());
    assert_eq!(
        t.status().srtt_ms,
        None,
        "no round trip on a chunk sent twice"
    );
    // 4 did go missing: a chunk sent after it shows it.
    t.handle_status(ms(40), &receiving(&image, 4, 0b10, 20));
    assert_eq!(chunks(&mut t, 40), [4]);
}

#[test]
fn a_lost_tail_is_sent_again_once_a_query_is_answered() {
    let image = image(64 * 1024);
    let mut t = receiving_transfer(&image, 16);
    chunks(&mut t, 0);
    // 0..11 arrived and are in flash; 12..15 never arrived, and nothing after them shows it.
    t.handle_status(ms(10), &receiving(&image, 12, 0, 28));
    assert_eq!(chunks(&mut t, 10), (16..28).collect::<Vec<_>>());
    // Nothing more comes: after the STATUS timeout, a QUERY.
    let deadline = t.poll_timeout().unwrap();
    assert_eq!(deadline, ms(10) + RTO_MIN);
    t.handle_timeout(deadline);
    assert_eq!(controls(&mut t, deadline.0), [query(&image)]);
    // The answer: 12.. never arrived. Each goes again, once.
    t.handle_status(deadline + 15, &receiving(&image, 12, 0, 28));
    assert_eq!(
        chunks(&mut t, deadline.0 + 15),
        (12..28).collect::<Vec<_>>()
    );
    assert!(chunks(&mut t, deadline.0 + 15).is_empty());
}

// ---- the timeout and the stall --------------------------------------------------------------

#[test]
fn no_status_within_the_timeout_sends_a_query_and_doubles_the_timeout() {
    let image = image(8 * 1024);
    let mut t = start(&image);
    let mut asked = Vec::new();
    assert_eq!(controls(&mut t, 0), [query(&image)]);
    asked.push(0);
    while let Some(at) = t.poll_timeout() {
        if at > ms(20_000) {
            break;
        }
        t.handle_timeout(at);
        if !controls(&mut t, at.0).is_empty() {
            asked.push(at.0);
        }
        if asked.len() > 8 {
            break;
        }
    }
    // 1 s, then doubling up to 2 s; five QUERYs, the probe included, then the stall and one
    // QUERY every 5 s.
    assert_eq!(asked, [0, 1000, 3000, 5000, 7000, 14_000, 19_000]);
    assert_eq!(
        events(&mut t),
        [TransferEvent::Stalled {
            queries: MAX_UNANSWERED_QUERIES
        }]
    );
    assert!(t.status().stalled);
}

#[test]
fn a_stalled_transfer_sends_no_chunk_until_the_node_is_heard() {
    let image = image(64 * 1024);
    let mut t = receiving_transfer(&image, 16);
    chunks(&mut t, 0);
    // An adapter with a silent node: wake at each timeout, send what is asked. Bounded in
    // simulated time, and every wake-up must move the clock on.
    let mut now = ms(0);
    while !t.status().stalled {
        let at = t
            .poll_timeout()
            .expect("a transfer waiting for its node has a timeout");
        assert!(
            at > now,
            "poll_timeout {at:?} does not move on from {now:?}"
        );
        assert!(at <= ms(60_000), "no stall within a minute of silence");
        now = at;
        t.handle_timeout(now);
        controls(&mut t, now.0);
        assert!(
            chunks(&mut t, now.0).is_empty(),
            "a chunk beyond the credit"
        );
    }
    assert_eq!(t.status().queries, MAX_UNANSWERED_QUERIES);
    assert!(chunks(&mut t, now.0 + 10_000).is_empty());
    // The node is heard again: it holds 0..7 in flash and nothing else.
    t.handle_status(now + 10_000, &receiving(&image, 8, 0, 24));
    assert!(!t.status().stalled);
    // 8 in flash 21 s after it went is the QUERYs' wait, not a round trip (Karn).
    assert_eq!(t.status().srtt_ms, None);
    assert_eq!(
        events(&mut t),
        [
            TransferEvent::Stalled { queries: 5 },
            TransferEvent::Resumed,
            TransferEvent::Progress {
                flashed: 8 * 1024,
                size: 64 * 1024
            }
        ]
    );
    assert_eq!(chunks(&mut t, now.0 + 10_000), (8..24).collect::<Vec<_>>());
}

#[test]
fn the_timeout_follows_status_round_trips_within_300_ms_and_2_s() {
    let image = image(8 * 1024);
    let mut t = start(&image);
    assert_eq!(t.status().rto_ms, 1000, "before any measure");
    controls(&mut t, 0);
    // A 40 ms round trip: 40 + 4 × 20 = 120 ms, held at 300.
    t.handle_status(ms(40), &refused(&image, OtaRefusal::UnknownImage));
    assert_eq!(t.status().srtt_ms, Some(40));
    assert_eq!(t.status().rto_ms, 300);
    controls(&mut t, 40); // the OFFER
    // Slow answers raise it, never above 2 s.
    for rtt in [900, 1500, 3000, 3000] {
        let at = t.poll_timeout().unwrap();
        t.handle_timeout(at);
        assert_eq!(controls(&mut t, at.0), [query(&image)], "at {at:?}");
        t.handle_status(at + rtt, &refused(&image, OtaRefusal::UnknownImage));
        controls(&mut t, at.0 + rtt);
        assert!((300..=2000).contains(&t.status().rto_ms));
    }
    assert_eq!(t.status().rto_ms, 2000);
}

// ---- the node lost or never took the offer --------------------------------------------------

#[test]
fn idle_or_another_image_while_offering_means_offer_again() {
    let image = image(8 * 1024);
    let mut t = start(&image);
    controls(&mut t, 0);
    t.handle_status(ms(10), &idle());
    assert_eq!(controls(&mut t, 10), [offer(&image)]);
    // A STATUS within a timeout of the OFFER may predate it: no second OFFER yet.
    t.handle_status(ms(20), &idle());
    assert!(controls(&mut t, 20).is_empty());
    // The OFFER was lost: the timeout asks, the node is on another image.
    let at = t.poll_timeout().unwrap();
    t.handle_timeout(at);
    assert_eq!(controls(&mut t, at.0), [query(&image)]);
    let other = image_of(4096, 1);
    t.handle_status(at + 10, &receiving(&other, 2, 0, 8));
    assert_eq!(controls(&mut t, at.0 + 10), [offer(&image)]);
    assert_eq!(t.status().offers, 2);
}

#[test]
fn a_node_that_forgot_the_image_after_a_reset_is_offered_it_again() {
    let image = image(16 * 1024);
    let mut t = receiving_transfer(&image, 16);
    chunks(&mut t, 0);
    t.handle_link_lost(ms(5));
    t.handle_link_up(ms(300));
    t.handle_status(ms(301), &idle());
    assert_eq!(controls(&mut t, 301), [offer(&image)]);
}

#[test]
fn a_node_that_went_idle_mid_session_is_believed_once_it_says_so_to_a_query() {
    let image = image(64 * 1024);
    let mut t = receiving_transfer(&image, 16);
    chunks(&mut t, 0);
    t.handle_status(ms(20), &receiving(&image, 4, 0, 20));
    chunks(&mut t, 20);
    // Out of the blue, in the same session: a copy or an overtaken frame, ignored.
    t.handle_status(ms(25), &idle());
    assert!(controls(&mut t, 25).is_empty());
    assert_eq!(t.status().stale_statuses, 1);
    // Asked a timeout later, the node says it again: it did forget.
    let at = t.poll_timeout().unwrap();
    t.handle_timeout(at);
    assert_eq!(controls(&mut t, at.0), [query(&image)]);
    t.handle_status(at + 5, &refused(&image, OtaRefusal::UnknownImage));
    assert_eq!(controls(&mut t, at.0 + 5), [offer(&image)]);
}

#[test]
fn a_node_counting_in_another_chunk_size_is_offered_this_one() {
    let image = image(16 * 1024);
    let mut t = start(&image);
    t.handle_status(
        ms(0),
        &OtaStatus {
            chunk: ChunkSize::B512,
            ..receiving(&image, 8, 0b11, 40)
        },
    );
    assert_eq!(controls(&mut t, 0), [offer(&image)]);
    assert!(chunks(&mut t, 0).is_empty(), "its counts are in 512 B");
    // The node keeps its sectors and counts in 1 KiB now.
    t.handle_status(ms(15), &receiving(&image, 4, 0, 12));
    assert_eq!(chunks(&mut t, 15), (4..12).collect::<Vec<_>>());
}

// ---- refusals -------------------------------------------------------------------------------

#[test]
fn a_refusal_ends_the_transfer_with_its_reason_and_nothing_more_is_sent() {
    for why in [
        OtaRefusal::BadSignature,
        OtaRefusal::BelowFloor,
        OtaRefusal::Busy,
        OtaRefusal::Damaged,
    ] {
        let image = image(16 * 1024);
        let mut t = receiving_transfer(&image, 16);
        chunks(&mut t, 0);
        t.handle_status(ms(10), &refused(&image, why));
        assert_eq!(t.outcome(), Some(Outcome::Refused(Some(why))));
        assert_eq!(
            events(&mut t),
            [TransferEvent::Ended(Outcome::Refused(Some(why)))]
        );
        assert_eq!(t.status().detail, Some(why.as_str()));
        assert!(chunks(&mut t, 1000).is_empty());
        assert!(controls(&mut t, 1000).is_empty());
        assert_eq!(t.poll_timeout(), None, "never retried");
        // Later STATUS change nothing.
        t.handle_status(ms(2000), &receiving(&image, 0, 0, 16));
        assert_eq!(t.outcome(), Some(Outcome::Refused(Some(why))));
        assert_eq!(
            t.install(90),
            Err(TransferError::Ended(Outcome::Refused(Some(why))))
        );
    }
}

#[test]
fn unknown_image_is_the_answer_to_a_question_not_a_refusal() {
    let image = image(16 * 1024);
    let mut t = start(&image);
    controls(&mut t, 0);
    t.handle_status(ms(10), &refused(&image, OtaRefusal::UnknownImage));
    assert_eq!(t.outcome(), None);
    assert_eq!(controls(&mut t, 10), [offer(&image)]);
}

#[test]
fn a_refusal_about_another_image_does_not_end_this_transfer() {
    let image = image(16 * 1024);
    let other = image_of(4096, 3);
    let mut t = start(&image);
    controls(&mut t, 0);
    t.handle_status(ms(10), &refused(&other, OtaRefusal::BelowFloor));
    assert_eq!(t.outcome(), None);
    assert_eq!(controls(&mut t, 10), [offer(&image)]);
}

// ---- resuming -------------------------------------------------------------------------------

#[test]
fn after_a_link_drop_the_transfer_resumes_at_flashed_skipping_what_the_node_holds() {
    let image = image(64 * 1024);
    let mut t = receiving_transfer(&image, 16);
    assert_eq!(chunks(&mut t, 0).len(), 16);
    t.handle_link_lost(ms(10));
    assert!(
        chunks(&mut t, 20).is_empty(),
        "nothing while the link is down"
    );
    assert_eq!(t.poll_timeout(), None);
    t.handle_link_up(ms(3000));
    assert!(
        chunks(&mut t, 3000).is_empty(),
        "not before the node says where it is"
    );
    // Sector 0 in flash; 5, 6 and 9 in RAM (the node did not reset).
    t.handle_status(ms(3001), &receiving(&image, 4, 0b10_0110, 20));
    assert!(
        controls(&mut t, 3001).is_empty(),
        "no OFFER: the node holds the image"
    );
    assert_eq!(
        chunks(&mut t, 3001),
        [4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    );
}

#[test]
fn a_lost_status_at_accept_is_asked_for() {
    let image = image(64 * 1024);
    let mut t = receiving_transfer(&image, 16);
    chunks(&mut t, 0);
    t.handle_link_lost(ms(10));
    t.handle_link_up(ms(3000));
    let at = t.poll_timeout().unwrap();
    assert!(at <= ms(3000) + RTO_MAX);
    t.handle_timeout(at);
    assert_eq!(controls(&mut t, at.0), [query(&image)]);
}

#[test]
fn stale_and_duplicate_statuses_change_nothing() {
    let image = image(64 * 1024);
    let mut t = receiving_transfer(&image, 16);
    chunks(&mut t, 0);
    t.handle_status(ms(30), &receiving(&image, 8, 0b11, 24));
    assert_eq!(chunks(&mut t, 30), (16..24).collect::<Vec<_>>());
    // Older reports arrive late, and a copy of the latest: flashed does not go back, nothing
    // held is forgotten, nothing is sent again, no OFFER.
    for old in [
        receiving(&image, 4, 0, 20),
        receiving(&image, 0, 0xFFFF, 16),
        receiving(&image, 8, 0b11, 24),
        receiving(&image, 8, 0, 24),
        idle(),
    ] {
        t.handle_status(ms(32), &old);
        assert!(chunks(&mut t, 32).is_empty(), "{old:?}");
        assert!(controls(&mut t, 32).is_empty(), "{old:?}");
    }
    assert_eq!(t.flashed_bytes(), 8 * 1024);
    assert_eq!(t.status().held, 2);
    assert_eq!(t.status().stale_statuses, 3);
    // A verified node's late Receiving report does not send a chunk either.
    t.handle_status(ms(40), &status(&image, OtaPhase::Verified, 64, 0, 64));
    t.handle_status(ms(41), &receiving(&image, 60, 0, 64));
    assert!(chunks(&mut t, 41).is_empty());
    assert_eq!(t.stage(), Stage::Verified);
}

// ---- phases, install, finalize, abort -------------------------------------------------------

/// A transfer and a model node on a clean line, driven to the node's verified image.
fn verified_sim(len: usize) -> Sim {
    let image = image(len);
    let mut sim = Sim::new(
        image,
        ChunkSize::B1024,
        921_600,
        0.95,
        ModelNode::new(V1),
        Faults::CLEAN,
        1,
    );
    assert!(sim.run_to_verified(60_000_000));
    sim
}

fn phases(sim: &Sim) -> Vec<TransferEvent> {
    sim.events
        .iter()
        .map(|&(_, e)| e)
        .filter(|e| {
            !matches!(
                e,
                TransferEvent::Progress { .. } | TransferEvent::Offered { .. }
            )
        })
        .collect()
}

#[test]
fn install_trial_confirm_and_finalize_follow_the_node() {
    let mut sim = verified_sim(20 * 1024);
    assert_eq!(sim.node.dfu(20 * 1024), sim.image.bytes());
    sim.transfer.install(90).unwrap();
    // The stage says installing from the INSTALL on; the node's own word (its STATUS, sent
    // while it drains its samples) is what the reset must follow.
    assert_eq!(sim.transfer.stage(), Stage::Installing);
    assert!(sim.run_until(sim.now_us + 5_000_000, |s| s.node.phase()
        == OtaPhase::Installing
        && s.transfer.status().node_phase == Some("installing")));
    // The node drains, resets and swaps: its session ends; it comes back on trial.
    sim.disrupt(sim.now_us + 1000, Disruption::NodeReset, 13_000_000);
    let t0 = sim.now_us;
    assert!(sim.run_until(t0 + 30_000_000, |s| s.transfer.stage() == Stage::Trial));
    assert_eq!(sim.node.running(), V2);
    sim.node.confirm();
    assert!(sim.run_until(sim.now_us + 5_000_000, |s| s.transfer.stage()
        == Stage::Confirmed));
    assert_eq!(sim.transfer.finalize(), Ok(()));
    assert!(sim.run_until(sim.now_us + 5_000_000, |s| s.transfer.is_ended()));
    assert_eq!(sim.transfer.outcome(), Some(Outcome::Finalized));
    assert_eq!(sim.node.floor(), V2);
    assert_eq!(
        phases(&sim),
        [
            TransferEvent::Verified,
            TransferEvent::Installing,
            TransferEvent::Trial,
            TransferEvent::Confirmed,
            TransferEvent::Ended(Outcome::Finalized)
        ]
    );
    // While the node swapped, it was asked at most every 5 s, and the transfer did not stall.
    assert_eq!(sim.transfer.status().stalls, 0);
}

#[test]
fn a_revert_ends_the_transfer_with_its_cause() {
    let mut sim = verified_sim(12 * 1024);
    sim.transfer.install(90).unwrap();
    sim.disrupt(sim.now_us + 20_000, Disruption::NodeReset, 13_000_000);
    assert!(
        sim.run_until(sim.now_us + 30_000_000, |s| s.transfer.stage()
            == Stage::Trial)
    );
    sim.node.revert(V1, RevertCause::Watchdog);
    sim.disrupt(sim.now_us + 1000, Disruption::Silence, 500_000);
    assert!(sim.run_until(sim.now_us + 10_000_000, |s| s.transfer.is_ended()));
    assert_eq!(
        sim.transfer.outcome(),
        Some(Outcome::Reverted(RevertCause::Watchdog))
    );
    assert_eq!(sim.transfer.status().detail, Some("watchdog"));
    assert_eq!(sim.node.running(), V1);
}

#[test]
fn an_install_that_did_not_take_is_sent_again() {
    let image = image(8 * 1024);
    let mut t = start(&image);
    t.handle_status(ms(0), &status(&image, OtaPhase::Verified, 8, 0, 8));
    // The progress bar ends full, then the phase.
    assert_eq!(
        events(&mut t),
        [
            TransferEvent::Progress {
                flashed: 8192,
                size: 8192
            },
            TransferEvent::Verified
        ]
    );
    assert_eq!(t.poll_timeout(), None, "nothing asked of the node");
    t.install(90).unwrap();
    assert_eq!(controls(&mut t, 100), [op(&image, OtaOp::Install, 90)]);
    t.handle_status(ms(110), &status(&image, OtaPhase::Installing, 8, 0, 8));
    // A reset cut `mark_updated` short: the node is back, verified, not installing.
    t.handle_link_lost(ms(500));
    t.handle_link_up(ms(2500));
    t.handle_status(ms(2501), &status(&image, OtaPhase::Verified, 8, 0, 8));
    assert_eq!(controls(&mut t, 2501), [op(&image, OtaOp::Install, 90)]);
    assert_eq!(
        events(&mut t),
        [TransferEvent::Installing, TransferEvent::Verified]
    );
}

#[test]
fn install_and_finalize_wait_for_the_nodes_word() {
    let image = image(8 * 1024);
    let mut t = receiving_transfer(&image, 8);
    assert_eq!(t.install(90), Err(TransferError::NotVerified));
    assert_eq!(t.finalize(), Err(TransferError::NotConfirmed));
    t.handle_status(ms(10), &status(&image, OtaPhase::Verified, 8, 0, 8));
    assert_eq!(t.finalize(), Err(TransferError::NotConfirmed));
    assert_eq!(t.install(90), Ok(()));
}

#[test]
fn a_new_transfer_after_a_gateway_restart_follows_the_node_in_its_trial() {
    let image = image(8 * 1024);
    let mut t = start(&image);
    t.handle_status(ms(0), &status(&image, OtaPhase::Trial, 8, 0, 8));
    assert_eq!(t.stage(), Stage::Trial);
    assert!(
        controls(&mut t, 0).is_empty(),
        "no OFFER to a node on trial"
    );
    // It asks now and then, as the node's trial takes its time.
    assert_eq!(t.poll_timeout(), Some(ms(0) + SLOW_QUERY_INTERVAL));
    t.handle_status(ms(30_000), &status(&image, OtaPhase::Confirmed, 8, 0, 8));
    assert_eq!(
        events(&mut t),
        [TransferEvent::Trial, TransferEvent::Confirmed]
    );
    assert_eq!(t.poll_timeout(), None, "waiting for finalize");
}

#[test]
fn a_node_that_no_longer_holds_the_image_after_its_trial_is_lost() {
    let image = image(8 * 1024);
    let mut t = start(&image);
    t.handle_status(ms(0), &status(&image, OtaPhase::Trial, 8, 0, 8));
    t.handle_link_lost(ms(1000));
    t.handle_link_up(ms(20_000));
    t.handle_status(ms(20_001), &idle());
    assert_eq!(t.outcome(), Some(Outcome::Lost));
    assert!(
        controls(&mut t, 20_001).is_empty(),
        "never offered again by itself"
    );
}

#[test]
fn abort_while_receiving_tells_the_node_and_ends_when_it_forgot() {
    let image = image(16 * 1024);
    let mut t = receiving_transfer(&image, 16);
    chunks(&mut t, 0);
    t.abort().unwrap();
    assert_eq!(t.stage(), Stage::Aborting);
    assert!(chunks(&mut t, 5).is_empty());
    assert_eq!(controls(&mut t, 5), [op(&image, OtaOp::Abort, 0)]);
    // A report from before the ABORT: sent again only a timeout later.
    t.handle_status(ms(6), &receiving(&image, 4, 0, 20));
    assert!(controls(&mut t, 6).is_empty());
    t.handle_status(ms(20), &idle());
    assert_eq!(t.outcome(), Some(Outcome::Aborted));
}

#[test]
fn abort_during_a_trial_leaves_the_node_to_confirm_or_revert() {
    let image = image(8 * 1024);
    let mut t = start(&image);
    t.handle_status(ms(0), &status(&image, OtaPhase::Trial, 8, 0, 8));
    t.abort().unwrap();
    assert_eq!(t.outcome(), Some(Outcome::Aborted));
    assert!(
        controls(&mut t, 0).is_empty(),
        "a node on trial refuses ABORT"
    );
}

#[test]
fn the_status_snapshot_names_the_stage_and_the_reason() {
    let image = image(16 * 1024);
    let mut t = receiving_transfer(&image, 16);
    chunks(&mut t, 0);
    t.handle_status(ms(30), &receiving(&image, 8, 0b1, 24));
    let s = t.status();
    assert_eq!(s.stage, Stage::Receiving);
    assert_eq!(
        (s.flashed, s.size, s.held, s.chunks_sent),
        (8192, 16_384, 1, 16)
    );
    assert_eq!(s.node_phase, Some("receiving"));
    assert_eq!(s.floor.as_deref(), Some("1.0.0"));
    t.handle_status(ms(40), &refused(&image, OtaRefusal::WrongHardware));
    let json = serde_json::to_value(t.status()).unwrap();
    assert_eq!(json["stage"], "ended");
    assert_eq!(json["outcome"], "refused");
    assert_eq!(json["detail"], "wrong-hardware");
}

// ---- the whole transfer on a line -----------------------------------------------------------

#[test]
fn on_a_clean_line_at_least_nine_tenths_of_the_bytes_are_the_image() {
    // Every byte on the line both ways counts: QUERY, OFFER (a 380-byte manifest), chunks,
    // STATUS.
    for (chunk, floor) in [(ChunkSize::B1024, 0.95), (ChunkSize::B512, 0.92)] {
        let image = image(256 * 1024);
        let mut sim = Sim::new(
            image,
            chunk,
            921_600,
            0.95,
            ModelNode::new(V1),
            Faults::CLEAN,
            2,
        );
        assert!(sim.run_to_verified(20_000_000));
        let line = sim.stats.down_bytes + sim.stats.up_bytes;
        let efficiency = (256.0 * 1024.0) / line as f64;
        println!(
            "{} B chunks: {} line bytes ({} down, {} up), efficiency {efficiency:.3}",
            chunk.bytes(),
            line,
            sim.stats.down_bytes,
            sim.stats.up_bytes
        );
        assert!(efficiency >= 0.9 && efficiency >= floor, "{efficiency}");
        assert_eq!(sim.stats.resent(), 0);
        assert_eq!((sim.stats.offers, sim.stats.queries), (1, 1));
    }
}

#[test]
fn a_256_kib_image_takes_about_3_08_s_at_921600_baud() {
    let image = image(256 * 1024);
    let mut sim = Sim::new(
        image,
        ChunkSize::B1024,
        921_600,
        0.95,
        ModelNode::new(V1),
        Faults::CLEAN,
        3,
    );
    assert!(sim.run_to_verified(20_000_000));
    let first = sim.stats.first_chunk_us.unwrap();
    let verified = sim.stats.verified_us.unwrap();
    let paced = (verified - first) as f64 / 1e6;
    let total = verified as f64 / 1e6;
    println!("256 KiB at 921,600: chunks {paced:.3} s, start to verified {total:.3} s");
    // 256 chunks of 1,052 bytes at 87,552 B/s: 3.076 s, the design's 3.08 s.
    assert!((3.06..3.10).contains(&paced), "{paced}");
    assert!(total < 3.5, "{total}");
}

/// Bytes sent again on a faulty line are bounded by what the line did: a chunk frame lost or
/// overtaken costs at most one resend (only the holes a STATUS shows go again, and a resent
/// chunk only after something sent later arrived), and each disruption at most the node's
/// credit window (4 sectors): what was in flight or in the node's RAM, all of it below the
/// credit and above `flashed`, which never goes back. The window is what a disruption can cost;
/// "+ one sector" in the design's bound is for a sector write cut by a power loss, which the
/// model node's atomic writes never leave behind.
fn resend_bound(sim: &Sim, chunk: ChunkSize) -> u64 {
    let window = (RAM_SECTORS * SECTOR / chunk.bytes()) as u64;
    sim.stats.chunks_dropped + sim.stats.chunks_reordered + sim.stats.disruptions * window
}

fn disruption() -> impl Strategy<Value = Disruption> {
    prop_oneof![
        Just(Disruption::LinkDrop),
        Just(Disruption::Silence),
        Just(Disruption::NodeReset),
        any::<bool>().prop_map(|hand_in| Disruption::GatewayRestart { hand_in }),
    ]
}

proptest! {
    // A case is a few milliseconds of CPU (debug build): simulated time, no sleeps. Shrinking
    // is bounded too, so even a failure ends in seconds.
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 1024,
        ..ProptestConfig::default()
    })]

    #[test]
    fn over_a_faulty_line_the_image_always_arrives_whole_and_verified(
        len in 1usize..48 * 1024,
        seed in any::<u64>(),
        big in any::<bool>(),
        slow in prop::bool::weighted(0.25),
        drop in 0.0f64..0.3,
        dup in 0.0f64..0.2,
        reorder in 0.0f64..0.3,
        jitter_ms in 1u64..60,
        disruptions in prop::collection::vec(
            (0.0f64..1.5, disruption(), 1u64..4000), 0..4),
    ) {
        let chunk = if big { ChunkSize::B1024 } else { ChunkSize::B512 };
        let baud = if slow { 115_200 } else { 921_600 };
        let image = image_of(len, seed as u8);
        let faults = Faults { drop, dup, reorder, jitter_ms };
        let mut sim = Sim::new(image.clone(), chunk, baud, 0.95, ModelNode::new(V1), faults, seed);
        // Disruptions during the transfer: at a share of its time on a clean line.
        let clean_us = (len as u64 * 11 * 1_000_000) / u64::from(baud) + 20_000;
        for (at, what, down_ms) in disruptions {
            sim.disrupt((at * clean_us as f64) as u64, what, down_ms * 1000);
        }
        let done = sim.run_to_verified(1_800_000_000);
        prop_assert!(done, "not verified: {:?}, node {:?}", sim.transfer.status(), sim.node.phase());
        prop_assert_eq!(sim.transfer.outcome(), None);
        prop_assert_eq!(sim.node.phase(), OtaPhase::Verified);
        prop_assert!(sim.node.dfu(len) == image.bytes(), "the slot differs from the image");
        prop_assert!(sim.node.violations.is_empty(), "{:?}", sim.node.violations);
        prop_assert_eq!(sim.transfer.flashed_bytes(), len as u64);
        prop_assert_eq!(sim.node.ram_chunks(), 0, "every chunk taken is in flash");
        // Never started over: the node's flash keeps its progress across every disruption here,
        // so one record for the whole run and each sector written once.
        prop_assert_eq!(sim.node.records_started, 1, "the transfer started over");
        prop_assert!(sim.not_resumed.is_empty(), "{:?}", sim.not_resumed);
        prop_assert_eq!(sim.node.sectors_written, len.div_ceil(SECTOR) as u64);
        let bound = resend_bound(&sim, chunk);
        prop_assert!(
            sim.stats.resent() <= bound,
            "resent {} > bound {}: {:?}", sim.stats.resent(), bound, sim.stats
        );
    }
}
