//! The Modbus RTU bus adapter against a real peer: tokio-modbus's RTU server on a pseudo-terminal
//! behind a line emulator with RS-485 timing and injectable faults (`outpost_e2e::modbus_peer`).
//! Every type in every order decoded exactly, the plan's requests counted on the server side,
//! line faults counted as the peer injected them, a silent unit that does not slow the others,
//! the inter-frame silence kept, and writes served between polls.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost::io::modbus::LinkState;
use outpost::io::modbus::poller::{DeviceRuntime, ModbusWriter, WriteFailure};
use outpost::io::modbus::rtu::{RtuLine, poll, run_bus};
use outpost::io::store::writer::StoreCommand;
use outpost::io::telemetry::TelemetryHub;
use outpost_core::config::modbus::{BusConfig, DeviceConfig, Parity, Transport};
use outpost_core::modbus::map::RegisterMap;
use outpost_core::modbus::plan::CostModel;
use outpost_core::modbus::value::Value;
use outpost_e2e::modbus_peer::{Bank, ExceptionCode, PeerConfig, RtuPeer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[allow(unreachable_pub)] // shared with the TCP tests
mod support;
use support::fixture::{Image, full_device, map, values};

fn bank(image: Image) -> Bank {
    Bank {
        coils: image.coils,
        discrete_inputs: image.discrete_inputs,
        holding: image.holding,
        input: image.input,
        ..Bank::default()
    }
}

fn bus(peer: &RtuPeer) -> BusConfig {
    BusConfig {
        path: peer.path().to_owned(),
        baud: 19_200,
        parity: Parity::Even,
        stop_bits: 1,
    }
}

fn device(
    name: &str,
    unit: u8,
    map: &Arc<RegisterMap>,
    interval_ms: u64,
    timeout_ms: u64,
) -> DeviceConfig {
    DeviceConfig {
        name: name.into(),
        transport: Transport::Rtu(0),
        unit,
        poll_interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        retries: 0,
        map_path: Path::new("tests/test-slave.toml").to_owned(),
        map: Arc::clone(map),
    }
}

fn start(units: BTreeMap<u8, Bank>, baud: Option<u32>) -> RtuPeer {
    RtuPeer::start(PeerConfig {
        units,
        baud,
        ..PeerConfig::default()
    })
    .expect("the peer starts")
}

#[tokio::test]
async fn every_type_in_every_order_decodes_exactly_with_one_request_per_table() {
    let (text, image, expected) = full_device();
    let map = Arc::new(map(&text));
    let peer = start(BTreeMap::from([(7, bank(image))]), None);
    let board = TelemetryHub::new(outpost_core::telemetry::Telemetry::new(
        &[],
        false,
        std::time::Duration::ZERO,
    ));
    let runtime = DeviceRuntime::new(device("slave", 7, &map, 1000, 500), &CostModel::RTU, &board);
    assert_eq!(
        runtime.plan.requests().len(),
        4,
        "contiguous tables need one read each"
    );
    let mut line = RtuLine::new(&bus(&peer)).unwrap();

    let outcome = poll(&mut line, &runtime).await;

    assert!(outcome.complete(), "{outcome:?}");
    assert_eq!(values(&outcome), expected);
    assert_eq!(outcome.garbage_bytes, 0);
    assert_eq!(
        peer.bus().unit(7).requests,
        BTreeMap::from([(0x01, 1), (0x02, 1), (0x03, 1), (0x04, 1)]),
        "the server saw exactly the plan's requests"
    );
}

#[tokio::test]
async fn a_sparse_map_is_read_with_the_minimal_number_of_requests() {
    let text = "\
[[point]]\nname = \"a\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n
[[point]]\nname = \"b\"\ntable = \"holding\"\naddress = 3\ntype = \"u32\"\n
[[point]]\nname = \"c\"\ntable = \"holding\"\naddress = 400\ntype = \"u16\"\n
[[point]]\nname = \"d\"\ntable = \"input\"\naddress = 7\ntype = \"i16\"\nscale = 0.5\noffset = 10.0\n";
    let map = Arc::new(map(text));
    let mut slave = Bank::default();
    slave.holding.extend([(0, 1), (3, 0), (4, 2), (400, 3)]);
    slave
        .input
        .insert(7, u16::from_be_bytes((-7i16).to_be_bytes()));
    let peer = start(BTreeMap::from([(1, slave)]), None);
    let runtime = DeviceRuntime::new(
        device("sparse", 1, &map, 1000, 500),
        &CostModel::RTU,
        &TelemetryHub::new(outpost_core::telemetry::Telemetry::new(
            &[],
            false,
            std::time::Duration::ZERO,
        )),
    );
    let mut line = RtuLine::new(&bus(&peer)).unwrap();

    let outcome = poll(&mut line, &runtime).await;

    assert_eq!(
        values(&outcome),
        BTreeMap::from([
            ("a".into(), Value::Uint(1)),
            ("b".into(), Value::Uint(2)),
            ("c".into(), Value::Uint(3)),
            // -7 × 0.5 + 10, exactly: 65 tenths.
            (
                "d".into(),
                Value::Decimal {
                    mantissa: 65,
                    exp: -1
                }
            ),
        ])
    );
    // a and b share a read across the two-register gap; c is too far; d is another table.
    assert_eq!(runtime.plan.requests().len(), 3);
    assert_eq!(
        peer.bus().unit(1).requests,
        BTreeMap::from([(0x03, 2), (0x04, 1)])
    );
}

/// Polls `runtime` `n` times, feeding its health, and returns the last outcome's completeness.
async fn poll_times(line: &mut RtuLine, runtime: &mut DeviceRuntime, n: usize) -> Vec<bool> {
    let mut complete = Vec::new();
    for i in 0..n {
        let outcome = poll(line, runtime).await;
        complete.push(outcome.complete());
        let at = outpost_proto::Millis(1_000 * (i as u64 + 1));
        runtime.finish_poll(at, at, &outcome);
    }
    complete
}

#[tokio::test]
async fn line_faults_are_counted_as_injected_and_the_bus_recovers_after_each() {
    let map = Arc::new(map(
        "[[point]]\nname = \"volts\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\nscale = 0.1\n",
    ));
    let mut slave = Bank::default();
    slave.input.insert(0, 2301);
    let peer = start(BTreeMap::from([(3, slave)]), Some(19_200));
    let mut runtime = DeviceRuntime::new(
        device("meter", 3, &map, 1000, 100),
        &CostModel::RTU,
        &TelemetryHub::new(outpost_core::telemetry::Telemetry::new(
            &[],
            false,
            std::time::Duration::ZERO,
        )),
    );
    let mut line = RtuLine::new(&bus(&peer)).unwrap();

    assert_eq!(poll_times(&mut line, &mut runtime, 1).await, [true]);
    peer.bus().unit(3).faults.corrupt_crc = 2;
    assert_eq!(
        poll_times(&mut line, &mut runtime, 3).await,
        [false, false, true]
    );
    assert_eq!(runtime.health.crc_errors(), 2);

    peer.bus().unit(3).faults.reply_as = Some(9);
    assert_eq!(poll_times(&mut line, &mut runtime, 2).await, [false, true]);
    peer.bus().unit(3).faults.truncate_to = Some(4);
    assert_eq!(poll_times(&mut line, &mut runtime, 2).await, [false, true]);
    assert_eq!(
        runtime.health.frame_errors(),
        2,
        "a wrong unit and a short frame"
    );

    peer.bus().unit(3).faults.garbage_before = vec![0xAA, 0x55, 0xAA, 0x55];
    let complete = poll_times(&mut line, &mut runtime, 2).await;
    assert!(
        runtime.health.garbage_bytes() >= 4,
        "{}",
        runtime.health.garbage_bytes()
    );
    assert!(complete[1], "the bus recovers: {complete:?}");

    let injected = peer.bus().injected();
    assert_eq!(
        (
            injected.crc_corrupted,
            injected.unit_rewritten,
            injected.truncated,
            injected.garbage
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(
        runtime.health.timeouts(),
        0,
        "every fault was recognised as what it was"
    );
    assert_eq!(runtime.health.state(), LinkState::Online);
    assert_eq!(
        peer.bus().early_requests,
        0,
        "every request waited for t3.5 of silence"
    );
}

/// Runs `devices` on one bus for `run_for`, returning the store commands they produced.
async fn run_for(
    peer: &RtuPeer,
    devices: Vec<DeviceConfig>,
    board: &TelemetryHub,
    run_for: Duration,
    during: impl AsyncFnOnce(&ModbusWriter),
) -> Vec<StoreCommand> {
    let runtimes = devices
        .into_iter()
        .map(|d| DeviceRuntime::new(d, &CostModel::RTU, board))
        .collect::<Vec<_>>();
    let mut writer = ModbusWriter::default();
    let writes = writer.add_queue(runtimes.iter().map(|d| d.config.name.clone()));
    let (store_tx, mut store_rx) = mpsc::channel(10_000);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_bus(
        bus(peer),
        runtimes,
        store_tx,
        writes,
        outpost::io::wall_clock::WallClock::assume_synchronised(),
        shutdown.clone(),
    ));
    let started = Instant::now();
    during(&writer).await;
    tokio::time::sleep(run_for.saturating_sub(started.elapsed())).await;
    shutdown.cancel();
    task.await.unwrap();
    let mut commands = Vec::new();
    while let Ok(c) = store_rx.try_recv() {
        commands.push(c);
    }
    commands
}

fn polls_of(board: &TelemetryHub, name: &str) -> u64 {
    board.with(|t| {
        t.devices()
            .iter()
            .find(|d| d.name == name)
            .unwrap()
            .health
            .polls()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_unit_goes_offline_without_slowing_the_others_on_its_bus() {
    let text = "\
[[point]]\nname = \"volts\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\nscale = 0.1\n
[[point]]\nname = \"amps\"\ntable = \"input\"\naddress = 100\ntype = \"u16\"\nscale = 0.01\n";
    let map = Arc::new(map(text));
    let mut units = BTreeMap::new();
    for unit in 1..=3 {
        let mut slave = Bank::default();
        slave
            .input
            .extend([(0, 2300 + u16::from(unit)), (100, 1234)]);
        units.insert(unit, slave);
    }
    units.get_mut(&2).unwrap().silent = true;
    // Unit 3 refuses the second read: counted, but it stays online and keeps its rate.
    units
        .get_mut(&3)
        .unwrap()
        .exceptions
        .insert((0x04, 100), ExceptionCode::IllegalDataAddress);
    let peer = start(units, Some(19_200));
    let board = TelemetryHub::new(outpost_core::telemetry::Telemetry::new(
        &[],
        false,
        std::time::Duration::ZERO,
    ));
    let devices = vec![
        device("meter-1", 1, &map, 250, 150),
        device("meter-2", 2, &map, 250, 150),
        device("meter-3", 3, &map, 250, 150),
    ];
    let seconds = 5;
    let commands = run_for(
        &peer,
        devices,
        &board,
        Duration::from_secs(seconds),
        async |_| {},
    )
    .await;

    // 250 ms polls for 5 s: 20 each; the silent unit costs at most 150 ms per (backed-off) try.
    for name in ["meter-1", "meter-3"] {
        let polls = polls_of(&board, name);
        assert!(polls >= 18, "{name}: {polls} polls in {seconds} s");
    }
    let status = board.with(|t| t.devices().to_vec());
    assert_eq!(
        status[1].health.state(),
        LinkState::Offline,
        "{:?}",
        status[1]
    );
    assert!(
        status[1].health.polls() <= 6,
        "it backed off: {}",
        status[1].health.polls()
    );
    assert_eq!(status[0].health.timeouts(), 0);
    assert_eq!(
        status[2].health.exceptions(),
        &BTreeMap::from([(0x02, status[2].health.polls())])
    );
    assert_eq!(status[2].health.state(), LinkState::Online);
    let volts = status[0].values["volts"].value.as_f64().unwrap();
    assert!((volts - 230.1).abs() < 1e-9, "{volts}");
    assert_eq!(
        peer.bus().early_requests,
        0,
        "every request waited for t3.5 of silence"
    );

    // Readings reach the store under the device and point names.
    let mut per_device: BTreeMap<String, usize> = BTreeMap::new();
    for command in commands {
        let StoreCommand::DeviceReadings {
            source, readings, ..
        } = command
        else {
            panic!("only device readings: {command:?}");
        };
        *per_device.entry(source).or_default() += readings.len();
    }
    assert!(per_device["meter-1"] >= 2 * 18, "{per_device:?}");
    assert!(per_device["meter-3"] >= 18, "volts only: {per_device:?}");
    assert!(!per_device.contains_key("meter-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_between_polls_and_only_to_writable_points() {
    let text = "\
[[point]]\nname = \"setpoint\"\ntable = \"holding\"\naddress = 10\ntype = \"i32\"\nwritable = true\n
[[point]]\nname = \"relay\"\ntable = \"coil\"\naddress = 3\ntype = \"bool\"\nwritable = true\n
[[point]]\nname = \"serial\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n";
    let map = Arc::new(map(text));
    let peer = start(BTreeMap::from([(5, Bank::default())]), Some(19_200));
    let board = TelemetryHub::new(outpost_core::telemetry::Telemetry::new(
        &[],
        false,
        std::time::Duration::ZERO,
    ));
    let peer_ref = &peer;
    run_for(
        &peer,
        vec![device("pump", 5, &map, 100, 100)],
        &board,
        Duration::from_secs(2),
        async |writer| {
            tokio::time::sleep(Duration::from_millis(300)).await;
            writer
                .write("pump", "setpoint", Value::Int(-40_000))
                .await
                .expect("written");
            writer
                .write("pump", "relay", Value::Bool(true))
                .await
                .expect("written");
            let refused = writer
                .write("pump", "serial", Value::Uint(1))
                .await
                .unwrap_err();
            assert!(refused.to_string().contains("not writable"), "{refused}");
            let refused = writer
                .write("pump", "setpoint", Value::Float(1e12))
                .await
                .unwrap_err();
            assert!(matches!(refused, WriteFailure::Write(_)), "{refused}");
            assert!(matches!(
                writer.write("pump", "nothing", Value::Int(1)).await,
                Err(WriteFailure::UnknownPoint { .. })
            ));
            assert!(matches!(
                writer.write("valve", "x", Value::Int(1)).await,
                Err(WriteFailure::UnknownDevice(_))
            ));
            let bus = peer_ref.bus();
            let slave = &bus.units[&5];
            let (hi, lo) = ((-40_000i32 >> 16) as u16, (-40_000i32 & 0xFFFF) as u16);
            assert_eq!((slave.holding[&10], slave.holding[&11]), (hi, lo));
            assert!(slave.coils[&3]);
            assert_eq!(slave.writes, 2, "the refused writes never reached the bus");
        },
    )
    .await;
    assert!(polls_of(&board, "pump") >= 15);
    let status = board.with(|t| t.devices().to_vec());
    assert_eq!(
        status[0].values["setpoint"].value,
        serde_json::json!(-40_000)
    );
    assert_eq!(
        peer.bus().early_requests,
        0,
        "writes and polls never overlapped on the line"
    );
}
