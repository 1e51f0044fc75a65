//! The Modbus TCP adapter against a hostile or broken device: a raw TCP server on loopback that
//! answers a poll with garbage, a header claiming a 64 KiB frame, another transaction's reply,
//! another function's reply, another unit's reply or an oversized register count. Each is an error
//! of that poll (never a panic, never a reading), and the next poll, answered properly, decodes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost::io::modbus::{ModbusDevice, TransportError};
use outpost_core::modbus::plan::{CostModel, ReadPlan};
use outpost_core::modbus::value::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[allow(unreachable_pub, dead_code)] // shared with the other Modbus tests
mod support;
use support::fixture::map;

const TIMEOUT: Duration = Duration::from_millis(500);

/// How the server answers the next request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// A correct reply: holding register 0 holds 1234.
    Good,
    /// 300 bytes of noise instead of a reply.
    Garbage,
    /// An MBAP header claiming 65,535 bytes, six of them sent, then silence.
    HugeLength,
    /// A correct reply carrying another transaction id.
    WrongTransaction,
    /// A reply for Read Input Registers to a Read Holding Registers request.
    WrongFunction,
    /// A correct reply from unit 9 (the device is unit 1).
    WrongUnit,
    /// A reply with 125 registers to a one-register request.
    Oversized,
    /// A byte count that disagrees with the frame's length.
    LyingByteCount,
}

/// Answers each request on each connection with the next answer from `script`; closes the
/// connection after anything but `Good` (as a broken device often does), so the adapter must
/// reconnect.
async fn serve(script: Arc<Mutex<Vec<Answer>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer_requests(stream, Arc::clone(&script)));
        }
    });
    addr
}

async fn answer_requests(mut stream: TcpStream, script: Arc<Mutex<Vec<Answer>>>) {
    loop {
        let mut header = [0u8; 7];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let mut pdu = vec![0u8; length.saturating_sub(1)];
        if stream.read_exact(&mut pdu).await.is_err() {
            return;
        }
        let answer = {
            let mut script = script.lock().expect("script");
            if script.is_empty() {
                Answer::Good
            } else {
                script.remove(0)
            }
        };
        let (transaction, unit) = ([header[0], header[1]], header[6]);
        let frame = |transaction: [u8; 2], unit: u8, pdu: &[u8]| -> Vec<u8> {
            let length = u16::try_from(pdu.len() + 1)
                .expect("short pdu")
                .to_be_bytes();
            let mut frame = vec![
                transaction[0],
                transaction[1],
                0,
                0,
                length[0],
                length[1],
                unit,
            ];
            frame.extend_from_slice(pdu);
            frame
        };
        let good_pdu = [0x03, 2, 0x04, 0xD2];
        let bytes = match answer {
            Answer::Good => frame(transaction, unit, &good_pdu),
            Answer::Garbage => (0..300u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            Answer::HugeLength => vec![transaction[0], transaction[1], 0, 0, 0xFF, 0xFF],
            Answer::WrongTransaction => {
                let other = u16::from_be_bytes(transaction)
                    .wrapping_add(7)
                    .to_be_bytes();
                frame(other, unit, &good_pdu)
            }
            Answer::WrongFunction => frame(transaction, unit, &[0x04, 2, 0x04, 0xD2]),
            Answer::WrongUnit => frame(transaction, 9, &good_pdu),
            Answer::Oversized => {
                let mut pdu = vec![0x03, 250];
                pdu.extend(std::iter::repeat_n([0x04, 0xD2], 125).flatten());
                frame(transaction, unit, &pdu)
            }
            Answer::LyingByteCount => frame(transaction, unit, &[0x03, 200, 0x04, 0xD2]),
        };
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
        if answer != Answer::Good {
            // Hold the connection open a little (a HugeLength must run into the timeout), then
            // drop it.
            tokio::time::sleep(TIMEOUT * 2).await;
            return;
        }
    }
}

const MAP: &str = "[[point]]\nname = \"level\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n";

#[tokio::test]
async fn every_hostile_answer_fails_only_its_poll_and_the_next_good_answer_decodes() {
    let map = map(MAP);
    let plan = ReadPlan::for_map(&map, &CostModel::TCP);
    for hostile in [
        Answer::Garbage,
        Answer::HugeLength,
        Answer::WrongTransaction,
        Answer::WrongFunction,
        Answer::WrongUnit,
        Answer::Oversized,
        Answer::LyingByteCount,
    ] {
        let script = Arc::new(Mutex::new(vec![hostile]));
        let addr = serve(Arc::clone(&script)).await;
        let mut device = ModbusDevice::new(addr, 1);

        let outcome = device.poll(&map, &plan, TIMEOUT, 0).await;
        let reading = outcome.readings.first().map(|r| r.value.clone());
        assert!(
            outcome.link_failed() || matches!(reading, Some(Err(_))),
            "{hostile:?} must not be taken as an answer: {outcome:?}"
        );
        assert!(
            !matches!(reading, Some(Ok(_))),
            "{hostile:?} produced a reading: {outcome:?}"
        );
        if let Some(Err(e)) = outcome.requests.first().map(|r| &r.result) {
            assert!(
                !matches!(e, TransportError::NotSent | TransportError::Connect(_)),
                "{hostile:?}: the request was sent and answered badly: {e}"
            );
        }

        // The device behaves again: the next poll (on a new connection if needed) decodes.
        let mut recovered = None;
        for _ in 0..3 {
            let outcome = device.poll(&map, &plan, TIMEOUT, 0).await;
            if outcome.complete() {
                recovered = Some(outcome);
                break;
            }
        }
        let outcome = recovered.unwrap_or_else(|| panic!("no recovery after {hostile:?}"));
        assert_eq!(
            outcome.readings[0].value,
            Ok(Value::Uint(1234)),
            "after {hostile:?}"
        );
    }
}
