//! Test harness: a node core on a virtual clock, and a small model gateway.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::convert::Infallible;
use std::time::Duration;

use outpost_node::{App, Boot, Identity, LinkConfig, Millis, NodeLink, Schedule, SensorBank};
use outpost_proto::frame::MAX_FRAME_LEN;
use outpost_proto::wire::MAX_READINGS;
use outpost_proto::{
    Accept, Ack, ChannelId, FrameDecoder, FwVersion, Message, Reading, ResetReason, Telemetry,
    encode_frame,
};

pub const BOOT_ID: u32 = 0xB007_0001;
pub const UID: [u8; 8] = [0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80];
pub const FW: FwVersion = FwVersion {
    major: 1,
    minor: 2,
    patch: 3,
};

/// Sensors whose values tell the sample: temperature 20.00 °C + seq hundredths, and seq.
#[derive(Debug, Default)]
pub struct TestBank;

impl SensorBank for TestBank {
    type Error = Infallible;
    fn sample(
        &mut self,
        seq: u32,
        readings: &mut heapless::Vec<Reading, MAX_READINGS>,
    ) -> Result<(), Infallible> {
        let _ = readings.push(Reading {
            channel: ChannelId::TEMPERATURE,
            value: 2000 + seq as i32,
        });
        let _ = readings.push(Reading {
            channel: ChannelId::SEQ,
            value: seq as i32,
        });
        Ok(())
    }
}

pub fn identity() -> Identity {
    Identity {
        uid: UID,
        hw_rev: 2,
        fw: FW,
        lot: heapless::String::try_from("LOT-7").unwrap(),
        channels: heapless::Vec::from_slice(&[ChannelId::TEMPERATURE, ChannelId::SEQ]).unwrap(),
        public_key: [0xAB; 32],
    }
}

pub fn boot() -> Boot {
    Boot {
        boot_id: BOOT_ID,
        reset_reason: ResetReason::Watchdog,
    }
}

pub fn every(ms: u64) -> Schedule {
    Schedule {
        interval: Duration::from_millis(ms),
        limit: None,
    }
}

pub fn node<const RING: usize>(config: LinkConfig, schedule: Schedule) -> App<TestBank, RING> {
    let link = NodeLink::new(Millis::ZERO, identity(), boot(), config);
    App::new(Millis::ZERO, link, TestBank, schedule)
}

pub fn frame(message: &Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let len = encode_frame(message, &mut buf).unwrap();
    buf[..len].to_vec()
}

pub fn accept(ack_upto: u32) -> Message {
    Message::Accept(Accept {
        boot_id: BOOT_ID,
        ack_upto,
    })
}

pub fn ack(upto: u32) -> Message {
    Message::Ack(Ack {
        boot_id: BOOT_ID,
        upto,
    })
}

pub fn telemetry(messages: &[Message]) -> Vec<&Telemetry> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Telemetry(t) => Some(t),
            _ => None,
        })
        .collect()
}

pub fn seqs(messages: &[Message]) -> Vec<u32> {
    telemetry(messages).iter().map(|t| t.seq).collect()
}

pub fn hellos(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| matches!(m, Message::Hello(_)))
        .count()
}

/// A node and the far end of its serial line on a virtual clock. Everything the node sends is
/// decoded from its frames, so a frame that is not complete and valid fails the test.
pub struct Site<const RING: usize> {
    pub now: Millis,
    pub node: App<TestBank, RING>,
    /// Answers the node at once when present.
    pub gateway: Option<ModelGateway>,
    sent: Vec<Message>,
    decoder: FrameDecoder,
}

impl<const RING: usize> Site<RING> {
    pub fn new(node: App<TestBank, RING>) -> Self {
        Site {
            now: Millis::ZERO,
            node,
            gateway: None,
            sent: Vec::new(),
            decoder: FrameDecoder::new(),
        }
    }

    pub fn with_gateway(mut self) -> Self {
        self.gateway = Some(ModelGateway::default());
        self
    }

    /// Runs every node timer due up to `until` (inclusive), in order, and stops the clock there.
    pub fn run_until(&mut self, until: Millis) {
        for _ in 0..1_000_000 {
            match self.node.poll_timeout() {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    self.node.handle_timeout(self.now);
                    self.drain();
                }
                _ => {
                    self.now = self.now.max(until);
                    return;
                }
            }
        }
        panic!("the node's timers do not advance");
    }

    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now + ms);
    }

    pub fn deliver(&mut self, message: &Message) {
        self.deliver_bytes(&frame(message));
    }

    pub fn deliver_bytes(&mut self, bytes: &[u8]) {
        self.node.handle_bytes(self.now, bytes);
        self.drain();
    }

    /// What the node sent since the last call.
    pub fn take_sent(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.sent)
    }

    /// Decodes what the node sends; a gateway present answers at once, until it is quiet.
    fn drain(&mut self) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        loop {
            let mut replies = Vec::new();
            while let Some(len) = self.node.poll_transmit(&mut buf) {
                for &byte in &buf[..len] {
                    match self.decoder.push(byte) {
                        Some(Ok(message)) => {
                            if let Some(gateway) = self.gateway.as_mut() {
                                replies.extend(gateway.handle(&message));
                            }
                            self.sent.push(message);
                        }
                        Some(Err(e)) => panic!("the node sent a bad frame: {e}"),
                        None => {}
                    }
                }
            }
            if replies.is_empty() {
                return;
            }
            for reply in replies {
                self.node.handle_bytes(self.now, &frame(&reply));
            }
        }
    }
}

/// The gateway's side of the contract, reduced to what decides delivery: a session begins
/// with HELLO; TELEMETRY is stored only if `seq == last + 1`, or `seq == window_start` when
/// `window_start > last + 1` (the node's ring overflowed: a final gap); every TELEMETRY is
/// answered with a cumulative ACK. `last` survives a restart, as the gateway's database does.
#[derive(Debug, Default)]
pub struct ModelGateway {
    session: Option<u32>,
    last: u32,
    pub stored: Vec<u32>,
    /// Stop answering (a gateway that hangs or lost its port).
    pub mute: bool,
}

impl ModelGateway {
    pub fn handle(&mut self, message: &Message) -> Option<Message> {
        if self.mute {
            return None;
        }
        match message {
            Message::Hello(hello) => {
                self.session = Some(hello.boot_id);
                Some(Message::Accept(Accept {
                    boot_id: hello.boot_id,
                    ack_upto: self.last,
                }))
            }
            Message::Telemetry(t) => {
                let boot_id = self.session?;
                let gap = t.window_start > self.last + 1 && t.seq == t.window_start;
                if t.seq == self.last + 1 || gap {
                    self.stored.push(t.seq);
                    self.last = t.seq;
                }
                Some(Message::Ack(Ack {
                    boot_id,
                    upto: self.last,
                }))
            }
            _ => None,
        }
    }

    /// The gateway process restarts: its sessions are gone, its database is not.
    pub fn restart(&mut self) {
        self.session = None;
    }

    pub fn last(&self) -> u32 {
        self.last
    }
}
