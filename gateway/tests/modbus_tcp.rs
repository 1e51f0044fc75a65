//! The Modbus TCP adapter against a real tokio-modbus server on loopback: every type in every
//! word and byte order decoded exactly, the plan's requests counted on the server side,
//! exceptions kept apart from timeouts, back-off, and writes.

use std::collections::BTreeMap;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use outpost::io::modbus::{
    DeviceHealth, HealthPolicy, LinkState, ModbusDevice, PollOutcome, TransportError, WriteError,
};
use outpost::modbus::map::{RegisterMap, parse_map};
use outpost::modbus::plan::{CostModel, ReadPlan};
use outpost::modbus::value::{EncodeError, Value};
use outpost_proto::Millis;
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

const TIMEOUT: Duration = Duration::from_secs(2);

/// The slave's memory, what it refuses, and what it was asked.
#[derive(Debug, Default)]
struct Bank {
    coils: BTreeMap<u16, bool>,
    discrete_inputs: BTreeMap<u16, bool>,
    holding: BTreeMap<u16, u16>,
    input: BTreeMap<u16, u16>,
    /// Requests seen, by function code.
    requests: BTreeMap<u8, usize>,
    /// (function code, start) answered with Illegal Data Address.
    refused: Vec<(u8, u16)>,
    /// Swallows every request without answering.
    silent: bool,
    /// Answers register reads with one register too few.
    short: bool,
}

impl Bank {
    fn handle(&mut self, request: &Request<'_>) -> Result<Option<Response>, ExceptionCode> {
        let function = request.function_code().value();
        *self.requests.entry(function).or_default() += 1;
        if self.silent {
            return Ok(None);
        }
        let start = match request {
            Request::ReadCoils(a, _)
            | Request::ReadDiscreteInputs(a, _)
            | Request::ReadHoldingRegisters(a, _)
            | Request::ReadInputRegisters(a, _)
            | Request::WriteSingleCoil(a, _)
            | Request::WriteSingleRegister(a, _)
            | Request::WriteMultipleRegisters(a, _) => *a,
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        if self.refused.contains(&(function, start)) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        // Unmapped addresses read as zero, as many real devices do inside a bridged gap.
        let bits = |table: &BTreeMap<u16, bool>, n: u16| -> Vec<bool> {
            (start..start + n)
                .map(|a| table.get(&a).copied().unwrap_or(false))
                .collect()
        };
        let short = u16::from(self.short);
        let words = |table: &BTreeMap<u16, u16>, n: u16| -> Vec<u16> {
            (start..start + n - short)
                .map(|a| table.get(&a).copied().unwrap_or(0))
                .collect()
        };
        Ok(Some(match request {
            Request::ReadCoils(_, n) => Response::ReadCoils(bits(&self.coils, *n)),
            Request::ReadDiscreteInputs(_, n) => {
                Response::ReadDiscreteInputs(bits(&self.discrete_inputs, *n))
            }
            Request::ReadHoldingRegisters(_, n) => {
                Response::ReadHoldingRegisters(words(&self.holding, *n))
            }
            Request::ReadInputRegisters(_, n) => {
                Response::ReadInputRegisters(words(&self.input, *n))
            }
            Request::WriteSingleCoil(a, bit) => {
                self.coils.insert(*a, *bit);
                Response::WriteSingleCoil(*a, *bit)
            }
            Request::WriteSingleRegister(a, word) => {
                self.holding.insert(*a, *word);
                Response::WriteSingleRegister(*a, *word)
            }
            Request::WriteMultipleRegisters(a, ws) => {
                for (a, w) in (*a..).zip(ws.iter()) {
                    self.holding.insert(a, *w);
                }
                Response::WriteMultipleRegisters(*a, u16::try_from(ws.len()).expect("≤ 123"))
            }
            _ => unreachable!("refused above"),
        }))
    }
}

#[derive(Debug, Clone)]
struct Slave(Arc<Mutex<Bank>>);

impl Slave {
    fn bank(&self) -> MutexGuard<'_, Bank> {
        self.0.lock().expect("bank lock")
    }
}

impl tokio_modbus::server::Service for Slave {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        ready(self.bank().handle(&request.request))
    }
}

/// Serves `bank` on 127.0.0.1:0 until the test's runtime ends.
async fn serve(bank: Bank) -> (SocketAddr, Slave) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let slave = Slave(Arc::new(Mutex::new(bank)));
    let served = slave.clone();
    tokio::spawn(async move {
        let on_connected = move |stream, socket_addr| {
            let slave = served.clone();
            async move { accept_tcp_connection(stream, socket_addr, |_| Ok(Some(slave.clone()))) }
        };
        Server::new(listener)
            .serve(&on_connected, |_error| {})
            .await
    });
    (addr, slave)
}

#[derive(Clone, Copy)]
struct Orders {
    suffix: &'static str,
    word: &'static str,
    byte: &'static str,
}

const ORDERS: [Orders; 4] = [
    Orders {
        suffix: "abcd",
        word: "big",
        byte: "big",
    },
    Orders {
        suffix: "cdab",
        word: "little",
        byte: "big",
    },
    Orders {
        suffix: "badc",
        word: "big",
        byte: "little",
    },
    Orders {
        suffix: "dcba",
        word: "little",
        byte: "little",
    },
];

/// The registers a device in `orders` puts on the wire for a value whose bytes, most significant
/// first, are `be` (written independently of the core's encoder).
fn wire(be: &[u8], orders: Orders, is_text: bool) -> Vec<u16> {
    let mut words: Vec<u16> = be
        .chunks_exact(2)
        .map(|c| match orders.byte {
            "big" => u16::from_be_bytes([c[0], c[1]]),
            _ => u16::from_be_bytes([c[1], c[0]]),
        })
        .collect();
    if orders.word == "little" && !is_text {
        words.reverse();
    }
    words
}

/// A sample of each type: its TOML `type`, bytes on the wire (big-endian), the decoded value.
fn samples() -> Vec<(&'static str, Vec<u8>, Value)> {
    vec![
        ("u16", 0xBEEFu16.to_be_bytes().to_vec(), Value::Uint(0xBEEF)),
        (
            "i16",
            (-12345i16).to_be_bytes().to_vec(),
            Value::Int(-12345),
        ),
        (
            "u32",
            0xDEAD_BEEFu32.to_be_bytes().to_vec(),
            Value::Uint(0xDEAD_BEEF),
        ),
        (
            "i32",
            (-123_456_789i32).to_be_bytes().to_vec(),
            Value::Int(-123_456_789),
        ),
        (
            "u64",
            0x0123_4567_89AB_CDEFu64.to_be_bytes().to_vec(),
            Value::Uint(0x0123_4567_89AB_CDEF),
        ),
        (
            "i64",
            (-1_234_567_890_123_456_789i64).to_be_bytes().to_vec(),
            Value::Int(-1_234_567_890_123_456_789),
        ),
        (
            "f32",
            (-273.15f32).to_be_bytes().to_vec(),
            Value::Float(f64::from(-273.15f32)),
        ),
        (
            "f64",
            6.022_140_76e23f64.to_be_bytes().to_vec(),
            Value::Float(6.022_140_76e23),
        ),
        (
            "string",
            b"Outpost!".to_vec(),
            Value::Text("Outpost!".into()),
        ),
    ]
}

fn point(toml: &mut String, name: &str, table: &str, address: u16, extra: &str) {
    toml.push_str(&format!(
        "\n[[point]]\nname = \"{name}\"\ntable = \"{table}\"\naddress = {address}\n{extra}"
    ));
}

/// A device with every type in every order in both register tables, scaled points, bits and
/// writable points: its map text, its bank, and every point's expected reading.
fn full_device() -> (String, Bank, BTreeMap<String, Value>) {
    let mut toml = String::from("[device]\nmanufacturer = \"Outpost\"\nmodel = \"test slave\"\n");
    let mut bank = Bank::default();
    let mut expected = BTreeMap::new();
    for table in ["holding", "input"] {
        let mut address = 0u16;
        for orders in ORDERS {
            for (data_type, be, value) in samples() {
                let is_text = data_type == "string";
                let words = wire(&be, orders, is_text);
                let name = format!("{table}_{data_type}_{}", orders.suffix);
                let len = if is_text { "len = 4\n" } else { "" };
                let extra = format!(
                    "type = \"{data_type}\"\n{len}word_order = \"{}\"\nbyte_order = \"{}\"\n",
                    orders.word, orders.byte
                );
                point(&mut toml, &name, table, address, &extra);
                let registers = if table == "holding" {
                    &mut bank.holding
                } else {
                    &mut bank.input
                };
                for w in words {
                    registers.insert(address, w);
                    address += 1;
                }
                expected.insert(name, value);
            }
        }
        assert_eq!(address, 96, "24 registers per order");
    }
    // Scaled input registers, after the 96 above.
    let scaled: [(&str, &str, &str, Vec<u16>, f64); 4] = [
        (
            "temperature",
            "i16",
            "scale = 0.1\n",
            vec![u16::from_be_bytes((-405i16).to_be_bytes())],
            f64::from(-405i16) * 0.1,
        ),
        (
            "energy",
            "u32",
            "scale = 0.01\nword_order = \"little\"\n",
            vec![0xCD15, 0x075B], // 123456789 = 0x075BCD15, low word first
            123_456_789.0 * 0.01,
        ),
        (
            "level",
            "u16",
            "scale = 0.5\noffset = -40.0\n",
            vec![1000],
            1000.0 * 0.5 + -40.0,
        ),
        (
            "flow",
            "f32",
            "scale = 2.0\noffset = 1.0\n",
            wire(&12.5f32.to_be_bytes(), ORDERS[0], false),
            f64::from(12.5f32) * 2.0 + 1.0,
        ),
    ];
    let mut address = 96u16;
    for (name, data_type, extra, words, value) in scaled {
        point(
            &mut toml,
            name,
            "input",
            address,
            &format!("type = \"{data_type}\"\n{extra}"),
        );
        for w in words {
            bank.input.insert(address, w);
            address += 1;
        }
        expected.insert(name.to_owned(), Value::Float(value));
    }
    // Writable holding registers after the 96 ordered ones.
    point(
        &mut toml,
        "setpoint",
        "holding",
        96,
        "type = \"u16\"\nwritable = true\n",
    );
    bank.holding.insert(96, 20);
    expected.insert("setpoint".into(), Value::Uint(20));
    point(
        &mut toml,
        "limit",
        "holding",
        97,
        "type = \"i32\"\nword_order = \"little\"\nwritable = true\n",
    );
    bank.holding.insert(97, 1000);
    bank.holding.insert(98, 0);
    expected.insert("limit".into(), Value::Int(1000));
    // Bits.
    for (i, on) in [true, false, true, true, false].into_iter().enumerate() {
        let address = u16::try_from(i).expect("small");
        let name = format!("relay_{i}");
        let writable = if i == 1 { "writable = true\n" } else { "" };
        point(
            &mut toml,
            &name,
            "coil",
            address,
            &format!("type = \"bool\"\n{writable}"),
        );
        bank.coils.insert(address, on);
        expected.insert(name, Value::Bool(on));
    }
    for (i, on) in [false, true, true].into_iter().enumerate() {
        let address = u16::try_from(i).expect("small");
        let name = format!("alarm_{i}");
        point(
            &mut toml,
            &name,
            "discrete_input",
            address,
            "type = \"bool\"\n",
        );
        bank.discrete_inputs.insert(address, on);
        expected.insert(name, Value::Bool(on));
    }
    (toml, bank, expected)
}

fn map(text: &str) -> RegisterMap {
    parse_map(Path::new("tests/test-slave.toml"), text).expect("the test map compiles")
}

fn values(outcome: &PollOutcome) -> BTreeMap<String, Value> {
    outcome
        .readings
        .iter()
        .map(|r| (r.name.clone(), r.value.clone().expect("decodes")))
        .collect()
}

#[tokio::test]
async fn every_type_in_every_order_decodes_exactly_with_one_request_per_table() {
    let (text, bank, expected) = full_device();
    let map = map(&text);
    let plan = ReadPlan::for_map(&map, &CostModel::TCP);
    assert_eq!(
        plan.requests().len(),
        4,
        "contiguous tables need one read each"
    );
    let (addr, slave) = serve(bank).await;
    let mut device = ModbusDevice::connect(addr, 1).await.expect("connects");

    let outcome = device.poll(&map, &plan, TIMEOUT, 0).await;

    assert!(outcome.complete(), "{outcome:?}");
    assert_eq!(values(&outcome), expected);
    assert_eq!(outcome.readings.len(), map.points().len());
    assert_eq!(
        slave.bank().requests,
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
[[point]]\nname = \"d\"\ntable = \"input\"\naddress = 7\ntype = \"i16\"\n";
    let map = map(text);
    let plan = ReadPlan::for_map(&map, &CostModel::TCP);
    let mut bank = Bank::default();
    bank.holding.extend([(0, 1), (3, 0), (4, 2), (400, 3)]);
    bank.input
        .insert(7, u16::from_be_bytes((-7i16).to_be_bytes()));
    let (addr, slave) = serve(bank).await;
    let mut device = ModbusDevice::new(addr, 1);

    let outcome = device.poll(&map, &plan, TIMEOUT, 0).await;

    assert_eq!(
        values(&outcome),
        BTreeMap::from([
            ("a".into(), Value::Uint(1)),
            ("b".into(), Value::Uint(2)),
            ("c".into(), Value::Uint(3)),
            ("d".into(), Value::Int(-7)),
        ])
    );
    // a and b share a read across the two-register gap; c is too far; d is another table.
    assert_eq!(plan.requests().len(), 3);
    assert_eq!(
        slave.bank().requests,
        BTreeMap::from([(0x03, 2), (0x04, 1)])
    );
}

#[tokio::test]
async fn an_exception_on_one_request_is_counted_and_the_other_points_still_decode() {
    let text = "\
[[point]]\nname = \"near\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n
[[point]]\nname = \"far\"\ntable = \"holding\"\naddress = 1000\ntype = \"u16\"\n
[[point]]\nname = \"volts\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\nscale = 0.1\n";
    let map = map(text);
    let plan = ReadPlan::for_map(&map, &CostModel::TCP);
    let mut bank = Bank::default();
    bank.holding.extend([(0, 5), (1000, 6)]);
    bank.input.insert(0, 2301);
    bank.refused.push((0x03, 1000));
    let (addr, _slave) = serve(bank).await;
    let mut device = ModbusDevice::connect(addr, 1).await.expect("connects");
    let mut health = DeviceHealth::new(HealthPolicy::new(Duration::from_secs(1)));

    let outcome = device.poll(&map, &plan, TIMEOUT, 0).await;
    let decision = health.handle_poll_result(Millis(10_000), &outcome);

    assert_eq!(
        values(&outcome),
        BTreeMap::from([
            ("near".into(), Value::Uint(5)),
            ("volts".into(), Value::Float(2301.0 * 0.1)),
        ])
    );
    let exceptions: Vec<_> = outcome
        .requests
        .iter()
        .filter_map(|r| match r.result {
            Ok(Err(code)) => Some((r.function, r.start, code)),
            _ => None,
        })
        .collect();
    assert_eq!(
        exceptions,
        [(0x03, 1000, ExceptionCode::IllegalDataAddress)]
    );
    assert!(
        device.is_connected(),
        "an exception is an answer: the link stays up"
    );
    assert_eq!(health.exceptions(), &BTreeMap::from([(0x02, 1)]));
    assert_eq!(health.timeouts(), 0);
    assert_eq!(health.state(), LinkState::Online);
    assert_eq!(
        decision.next_poll_at,
        Millis(11_000),
        "exceptions do not back off"
    );
    assert_eq!(health.last_good_poll_at(), None);
}

#[tokio::test]
async fn a_silent_server_times_out_backs_off_goes_offline_and_recovers() {
    let text = "\
[[point]]\nname = \"a\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n
[[point]]\nname = \"b\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\n";
    let map = map(text);
    let plan = ReadPlan::for_map(&map, &CostModel::TCP);
    let mut bank = Bank::default();
    bank.holding.insert(0, 11);
    bank.input.insert(0, 22);
    let (addr, slave) = serve(bank).await;
    let mut device = ModbusDevice::connect(addr, 1).await.expect("connects");
    let policy = HealthPolicy {
        interval: Duration::from_secs(1),
        max_backoff: Duration::from_secs(8),
        offline_after: 3,
    };
    let mut health = DeviceHealth::new(policy);
    let short = Duration::from_millis(150);

    let mut now = Millis(0);
    let outcome = device.poll(&map, &plan, short, 0).await;
    now = health.handle_poll_result(now, &outcome).next_poll_at;
    assert!(outcome.complete());
    assert_eq!(now, Millis(1000));

    slave.bank().silent = true;
    let mut delays = Vec::new();
    let mut offline = Vec::new();
    for _ in 0..4 {
        let outcome = device.poll(&map, &plan, short, 0).await;
        assert!(matches!(
            outcome.requests[0].result,
            Err(TransportError::Timeout(_))
        ));
        assert!(matches!(
            outcome.requests[1].result,
            Err(TransportError::NotSent)
        ));
        assert!(outcome.readings.is_empty());
        assert!(!device.is_connected(), "a timeout drops the connection");
        let decision = health.handle_poll_result(now, &outcome);
        delays.push(decision.next_poll_at - now);
        offline.push(decision.offline);
        now = decision.next_poll_at;
    }
    assert_eq!(delays, [2000, 4000, 8000, 8000]);
    assert_eq!(offline, [false, false, true, true]);
    assert_eq!(health.state(), LinkState::Offline);
    assert_eq!(health.timeouts(), 4);
    assert_eq!(health.last_good_poll_at(), Some(Millis(0)));

    slave.bank().silent = false;
    let outcome = device.poll(&map, &plan, short, 0).await;
    let decision = health.handle_poll_result(now, &outcome);
    assert!(outcome.complete(), "the poll reconnects: {outcome:?}");
    assert!(!decision.offline);
    assert_eq!(decision.next_poll_at - now, 1000);
    assert_eq!(
        values(&outcome),
        BTreeMap::from([("a".into(), Value::Uint(11)), ("b".into(), Value::Uint(22))])
    );
}

#[tokio::test]
async fn writes_land_in_the_bank_and_a_non_writable_point_is_refused_without_a_request() {
    let (text, bank, _) = full_device();
    let map = map(&text);
    let (addr, slave) = serve(bank).await;
    let mut device = ModbusDevice::connect(addr, 1).await.expect("connects");
    let point = |name: &str| map.point(name).expect("point in map");

    device
        .write(point("setpoint"), &Value::Uint(42), TIMEOUT)
        .await
        .expect("link")
        .expect("no exception");
    device
        .write(point("limit"), &Value::Int(-2), TIMEOUT)
        .await
        .expect("link")
        .expect("no exception");
    device
        .write(point("relay_1"), &Value::Bool(true), TIMEOUT)
        .await
        .expect("link")
        .expect("no exception");
    {
        let bank = slave.bank();
        assert_eq!(bank.holding[&96], 42);
        // -2 = 0xFFFF_FFFE, low word first.
        assert_eq!((bank.holding[&97], bank.holding[&98]), (0xFFFE, 0xFFFF));
        assert!(bank.coils[&1]);
        assert_eq!(
            bank.requests,
            BTreeMap::from([(0x05, 1), (0x06, 1), (0x10, 1)])
        );
    }

    let refused = device
        .write(point("holding_u16_abcd"), &Value::Uint(1), TIMEOUT)
        .await;
    assert!(matches!(
        refused,
        Err(WriteError::Refused(EncodeError::NotWritable { .. }))
    ));
    let out_of_range = device
        .write(point("setpoint"), &Value::Uint(70_000), TIMEOUT)
        .await;
    assert!(matches!(
        out_of_range,
        Err(WriteError::Refused(EncodeError::OutOfRange { .. }))
    ));
    assert_eq!(
        slave.bank().requests.values().sum::<usize>(),
        3,
        "no request sent"
    );
    assert_eq!(slave.bank().holding[&0], 0xBEEF);
}

#[tokio::test]
async fn a_short_answer_fails_only_the_points_it_cannot_cover_and_is_counted() {
    let text = "\
[[point]]\nname = \"first\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n
[[point]]\nname = \"last\"\ntable = \"holding\"\naddress = 1\ntype = \"u32\"\n";
    let map = map(text);
    let plan = ReadPlan::for_map(&map, &CostModel::TCP);
    let mut bank = Bank::default();
    bank.holding.extend([(0, 9), (1, 0), (2, 10)]);
    bank.short = true;
    let (addr, _slave) = serve(bank).await;
    let mut device = ModbusDevice::connect(addr, 1).await.expect("connects");
    let mut health = DeviceHealth::new(HealthPolicy::new(Duration::from_secs(1)));

    let outcome = device.poll(&map, &plan, TIMEOUT, 0).await;
    health.handle_poll_result(Millis(0), &outcome);

    assert_eq!(outcome.readings[0].value, Ok(Value::Uint(9)));
    assert!(outcome.readings[1].value.is_err(), "{outcome:?}");
    assert!(!outcome.complete());
    assert_eq!(health.decode_errors(), 1);
    assert_eq!(health.state(), LinkState::Online, "the device did answer");
    assert_eq!(health.last_good_poll_at(), None);
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error_not_a_timeout_and_the_rest_is_not_sent() {
    let text = "\
[[point]]\nname = \"a\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n
[[point]]\nname = \"b\"\ntable = \"coil\"\naddress = 0\ntype = \"bool\"\n";
    let map = map(text);
    let plan = ReadPlan::for_map(&map, &CostModel::TCP);
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("local addr");
    drop(closed);
    let mut device = ModbusDevice::new(addr, 1);
    let mut health = DeviceHealth::new(HealthPolicy::new(Duration::from_secs(1)));

    let outcome = device.poll(&map, &plan, TIMEOUT, 0).await;
    let decision = health.handle_poll_result(Millis(0), &outcome);

    assert!(matches!(
        outcome.requests[0].result,
        Err(TransportError::Connect(_))
    ));
    assert!(matches!(
        outcome.requests[1].result,
        Err(TransportError::NotSent)
    ));
    assert_eq!((health.transport_errors(), health.timeouts()), (1, 0));
    assert_eq!(decision.next_poll_at, Millis(2000), "backs off");
    assert!(!device.is_connected());
}
