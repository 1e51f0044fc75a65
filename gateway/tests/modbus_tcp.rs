//! The Modbus TCP adapter against a real tokio-modbus server on loopback: every type in every
//! word and byte order decoded exactly, the plan's requests counted on the server side,
//! exceptions kept apart from timeouts, back-off, and writes.

use std::collections::BTreeMap;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use outpost::io::modbus::{
    DeviceHealth, HealthPolicy, LinkState, ModbusDevice, TransportError, WriteError,
};
use outpost_core::modbus::plan::{CostModel, ReadPlan};
use outpost_core::modbus::value::{EncodeError, Value};
use outpost_proto::Millis;
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

#[allow(unreachable_pub)] // shared with the RTU tests
mod support;
use support::fixture::{Image, full_device, map, values};

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

impl From<Image> for Bank {
    fn from(image: Image) -> Bank {
        Bank {
            coils: image.coils,
            discrete_inputs: image.discrete_inputs,
            holding: image.holding,
            input: image.input,
            ..Bank::default()
        }
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

#[tokio::test]
async fn every_type_in_every_order_decodes_exactly_with_one_request_per_table() {
    let (text, image, expected) = full_device();
    let bank = Bank::from(image);
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
    let decision = health.handle_poll_result(Millis(10_000), &outcome.summary());

    assert_eq!(
        values(&outcome),
        BTreeMap::from([
            ("near".into(), Value::Uint(5)),
            // 230.1 exactly (2301.0 * 0.1 in f64 is 230.10000000000002).
            (
                "volts".into(),
                Value::Decimal {
                    mantissa: 2301,
                    exp: -1
                }
            ),
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
    now = health
        .handle_poll_result(now, &outcome.summary())
        .next_poll_at;
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
        let decision = health.handle_poll_result(now, &outcome.summary());
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
    let decision = health.handle_poll_result(now, &outcome.summary());
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
    let (text, image, _) = full_device();
    let bank = Bank::from(image);
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
    health.handle_poll_result(Millis(0), &outcome.summary());

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
    let decision = health.handle_poll_result(Millis(0), &outcome.summary());

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
