//! The RTU peer against tokio-modbus's own RTU client as the master: several units on one line,
//! the timing of a real 19,200 baud 8E1 line, and each injected fault seen by the client the way
//! a real line's would be, and counted.

use std::time::{Duration, Instant};

use outpost_e2e::modbus_peer::{Bank, ExceptionCode, LineTiming, PeerConfig, RtuPeer};
use tokio::time::timeout;
use tokio_modbus::client::{Context, rtu};
use tokio_modbus::prelude::{Reader, SlaveContext, Writer};
use tokio_modbus::{Error, ProtocolError, Slave};

/// Long enough for any reply of these tests at 19,200 baud (≤ 153 ms), short enough to keep
/// each test well under a second.
const REPLY_TIMEOUT: Duration = Duration::from_millis(400);

fn bank(holding: &[(u16, u16)]) -> Bank {
    let mut bank = Bank::default();
    bank.holding.extend(holding.iter().copied());
    bank
}

fn paced(units: impl IntoIterator<Item = (u8, Bank)>) -> PeerConfig {
    PeerConfig {
        units: units.into_iter().collect(),
        baud: Some(19_200),
        ..PeerConfig::default()
    }
}

/// The master: tokio-modbus's RTU client on the peer's tty, addressing `unit`.
fn master(peer: &RtuPeer, unit: u8) -> Context {
    let port = tokio_serial::new(peer.path().to_string_lossy(), 19_200);
    let serial = tokio_serial::SerialStream::open(&port).expect("open the peer's tty");
    rtu::attach_slave(serial, Slave(unit))
}

async fn read(master: &mut Context, start: u16, count: u16) -> Vec<u16> {
    timeout(REPLY_TIMEOUT, master.read_holding_registers(start, count))
        .await
        .expect("a reply in time")
        .expect("no transport error")
        .expect("no exception")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_units_on_one_line_answer_from_their_own_banks() {
    let peer = RtuPeer::start(paced([
        (1, bank(&[(0, 11), (1, 12)])),
        (2, bank(&[(0, 21)])),
    ]))
    .expect("start the peer");
    let mut master = master(&peer, 1);
    assert_eq!(
        read(&mut master, 0, 3).await,
        [11, 12, 0],
        "unmapped reads as 0"
    );
    master.set_slave(Slave(2));
    assert_eq!(read(&mut master, 0, 1).await, [21]);

    // The test changes a value while the peer runs; the master writes one.
    peer.bus().unit(2).holding.insert(0, 22);
    assert_eq!(read(&mut master, 0, 1).await, [22]);
    master
        .write_single_register(5, 0xBEEF)
        .await
        .expect("no transport error")
        .expect("no exception");

    let mut bus = peer.bus();
    assert_eq!(bus.unit(2).holding.get(&5), Some(&0xBEEF));
    assert_eq!(bus.unit(2).writes, 1);
    assert_eq!(bus.unit(2).requests, [(0x03, 2), (0x06, 1)].into());
    assert_eq!(bus.unit(1).requests, [(0x03, 1)].into());
    assert_eq!(bus.unit(1).replies, 1);
    assert!(bus.absent.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_unit_times_out_while_the_other_answers() {
    let mut quiet = bank(&[(0, 2)]);
    quiet.silent = true;
    let peer = RtuPeer::start(paced([(1, bank(&[(0, 1)])), (2, quiet)])).expect("start");
    let mut master = master(&peer, 2);
    let silent = timeout(REPLY_TIMEOUT, master.read_holding_registers(0, 1)).await;
    assert!(silent.is_err(), "the silent unit answered: {silent:?}");
    master.set_slave(Slave(1));
    assert_eq!(read(&mut master, 0, 1).await, [1]);
    // And a unit id with no device behind it is as quiet, and counted.
    master.set_slave(Slave(7));
    let absent = timeout(REPLY_TIMEOUT, master.read_holding_registers(0, 1)).await;
    assert!(absent.is_err(), "unit 7 answered: {absent:?}");

    let mut bus = peer.bus();
    assert_eq!(bus.unit(2).requests, [(0x03, 1)].into());
    assert_eq!(bus.unit(2).replies, 0);
    assert_eq!(bus.absent, [(7, 1)].into());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_125_register_read_takes_the_time_of_a_19200_baud_8e1_line() {
    let peer = RtuPeer::start(paced([(1, Bank::default())])).expect("start");
    let timing = peer.timing();
    assert_eq!(timing, LineTiming::new(19_200, 11));
    // Request 8 bytes, t3.5, reply 5 + 250 bytes.
    let theory = timing.frame(8) + timing.t35 + timing.frame(255);
    let mut master = master(&peer, 1);
    let mut took = Vec::new();
    for _ in 0..5 {
        // The master waits t3.5 after each reply before its next request, as the line requires.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let start = Instant::now();
        assert_eq!(read(&mut master, 0, 125).await.len(), 125);
        took.push(start.elapsed());
    }
    eprintln!(
        "theory {theory:?}, measured {took:?}, line thread late by up to {:?}",
        peer.bus().max_lateness
    );
    // The line thread records how late the scheduler woke it: time the machine took, not the
    // emulator. Beyond that lateness the emulator itself may add no more than a millisecond.
    let late = peer.bus().max_lateness;
    for t in &took {
        assert!(
            *t >= theory,
            "{t:?} is faster than the line allows ({theory:?})"
        );
        assert!(
            *t < theory + late + Duration::from_millis(20),
            "{t:?} vs {theory:?} (line thread late by up to {late:?})"
        );
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < theory + late + Duration::from_millis(1),
        "median {median:?} is more than 1 ms slower than {theory:?} beyond the line thread's lateness ({late:?})"
    );
    assert_eq!(peer.bus().early_requests, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_sent_back_to_back_with_the_previous_reply_is_counted_early() {
    // At 1200 baud t3.5 is 32 ms: no scheduling hiccup makes the client that late.
    let peer = RtuPeer::start(PeerConfig {
        baud: Some(1200),
        ..paced([(1, Bank::default())])
    })
    .expect("start");
    let mut master = master(&peer, 1);
    // tokio-modbus's client does not wait t3.5 between a reply and its next request.
    read(&mut master, 0, 1).await;
    read(&mut master, 0, 1).await;
    tokio::time::sleep(peer.timing().t35).await;
    read(&mut master, 0, 1).await;
    assert_eq!(peer.bus().early_requests, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_exception_is_answered_for_its_function_and_start_only() {
    let mut refusing = bank(&[(100, 7)]);
    refusing
        .exceptions
        .insert((0x03, 100), ExceptionCode::IllegalDataAddress);
    let peer = RtuPeer::start(paced([(1, refusing)])).expect("start");
    let mut master = master(&peer, 1);
    let refused = timeout(REPLY_TIMEOUT, master.read_holding_registers(100, 1))
        .await
        .expect("a reply in time")
        .expect("no transport error");
    assert_eq!(refused, Err(ExceptionCode::IllegalDataAddress));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(read(&mut master, 99, 2).await, [0, 7]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_with_a_corrupted_crc_is_dropped_by_the_client_and_counted() {
    let peer = RtuPeer::start(paced([(1, bank(&[(0, 42)]))])).expect("start");
    peer.bus().unit(1).faults.corrupt_crc = 1;
    let mut master = master(&peer, 1);
    let corrupted = timeout(REPLY_TIMEOUT, master.read_holding_registers(0, 2)).await;
    assert!(
        matches!(corrupted, Err(_) | Ok(Err(_))),
        "a corrupted reply was accepted: {corrupted:?}"
    );
    assert_eq!(
        read(&mut master, 0, 2).await,
        [42, 0],
        "the next reply is clean"
    );
    let mut bus = peer.bus();
    assert_eq!(bus.unit(1).injected.crc_corrupted, 1);
    assert_eq!(bus.unit(1).replies, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_rewritten_to_another_unit_is_a_header_mismatch() {
    let peer = RtuPeer::start(paced([(1, bank(&[(0, 42)]))])).expect("start");
    peer.bus().unit(1).faults.reply_as = Some(9);
    let mut master = master(&peer, 1);
    let mismatched = timeout(REPLY_TIMEOUT, master.read_holding_registers(0, 1))
        .await
        .expect("a reply in time");
    assert!(
        matches!(
            mismatched,
            Err(Error::Protocol(ProtocolError::HeaderMismatch { .. }))
        ),
        "{mismatched:?}"
    );
    assert_eq!(peer.bus().unit(1).injected.unit_rewritten, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_reply_times_out_and_garbage_before_a_reply_is_skipped() {
    let peer = RtuPeer::start(paced([(1, bank(&[(0, 42)]))])).expect("start");
    let mut master = master(&peer, 1);
    peer.bus().unit(1).faults.truncate_to = Some(4);
    let truncated = timeout(REPLY_TIMEOUT, master.read_holding_registers(0, 1)).await;
    assert!(truncated.is_err(), "{truncated:?}");

    // tokio-modbus frames by length and resynchronises byte by byte past the noise.
    peer.bus().unit(1).faults.garbage_before = vec![0x00, 0xFF];
    assert_eq!(read(&mut master, 0, 1).await, [42]);

    let mut bus = peer.bus();
    assert_eq!(bus.unit(1).injected.truncated, 1);
    assert_eq!(bus.unit(1).injected.garbage, 1);
    assert_eq!(
        bus.unit(1).faults,
        Default::default(),
        "each fault applied once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_pacing_the_same_read_takes_no_line_time() {
    let peer = RtuPeer::start(PeerConfig {
        units: [(1, Bank::default())].into(),
        ..PeerConfig::default()
    })
    .expect("start");
    let mut master = master(&peer, 1);
    read(&mut master, 0, 125).await;
    let start = Instant::now();
    read(&mut master, 0, 125).await;
    let took = start.elapsed();
    assert!(took < Duration::from_millis(20), "{took:?}");
    peer.stop().expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broadcast_write_reaches_every_unit_and_nobody_answers() {
    let peer = RtuPeer::start(paced([(1, Bank::default()), (2, Bank::default())])).expect("start");
    let mut master = master(&peer, 0);
    let broadcast = timeout(REPLY_TIMEOUT, master.write_single_register(3, 33)).await;
    assert!(
        broadcast.is_err(),
        "someone answered a broadcast: {broadcast:?}"
    );
    let mut bus = peer.bus();
    for unit in [1, 2] {
        assert_eq!(bus.unit(unit).holding.get(&3), Some(&33));
        assert_eq!(bus.unit(unit).replies, 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_peer_survives_a_master_that_reopens_the_port_and_one_that_sends_garbage() {
    use tokio::io::AsyncWriteExt as _;

    // Unpaced, so the server reads the garbage in one piece (paced, its decoder drops it byte by
    // byte and never gives up).
    let peer = RtuPeer::start(PeerConfig {
        units: [(1, bank(&[(0, 5)]))].into(),
        ..PeerConfig::default()
    })
    .expect("start");
    let mut first = master(&peer, 1);
    assert_eq!(read(&mut first, 0, 1).await, [5]);
    drop(first);

    // tokio-modbus's server gives up on bytes it cannot decode; the peer starts it again.
    let port = tokio_serial::new(peer.path().to_string_lossy(), 19_200);
    let mut raw = tokio_serial::SerialStream::open(&port).expect("reopen the tty");
    raw.write_all(&[0xFF; 64]).await.expect("write garbage");
    tokio::time::sleep(Duration::from_millis(60)).await;
    drop(raw);

    let mut second = master(&peer, 1);
    assert_eq!(read(&mut second, 0, 1).await, [5]);
    assert_eq!(peer.bus().server_restarts, 1);
}
