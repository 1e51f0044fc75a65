//! Test harness: a node core on a virtual clock, and a small model gateway.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::convert::Infallible;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use outpost_node::{
    App, Boot, Identity, LinkConfig, Millis, NodeLink, Schedule, Secrets, SensorBank,
};
use outpost_proto::frame::MAX_FRAME_LEN;
use outpost_proto::session::{Ephemeral, GatewayHandshake};
use outpost_proto::wire::MAX_READINGS;
use outpost_proto::{
    Accept, Ack, ChannelId, FrameDecoder, FwVersion, Hello, Message, Opener, Reading, Received,
    ResetReason, Sealer, Telemetry, encode_frame, encode_sealed_frame,
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
    }
}

/// The node's key in these tests.
pub fn node_key() -> SigningKey {
    SigningKey::from_bytes(&[0xAB; 32])
}

/// The gateway's node-link key in these tests.
pub fn gateway_key() -> SigningKey {
    SigningKey::from_bytes(&[0xCD; 32])
}

pub fn secrets() -> Secrets {
    Secrets {
        signing_key: node_key(),
        gateway_key: None,
        entropy: [0x5E; 32],
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
    let link = NodeLink::new(Millis::ZERO, identity(), secrets(), boot(), config);
    App::new(Millis::ZERO, link, TestBank, schedule)
}

/// A clear message (HELLO, ENROLL, CHALLENGE, PROOF) as a frame.
pub fn frame(message: &Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let len = encode_frame(message, &mut buf).unwrap();
    buf[..len].to_vec()
}

/// The gateway's end of the session, as the real one does it: every HELLO + ENROLL gets a
/// CHALLENGE, a PROOF that verifies opens the session, and every later message is sealed.
#[derive(Debug)]
pub struct GatewayEnd {
    key: SigningKey,
    ephemerals: u8,
    hello: Option<Hello>,
    handshake: Option<GatewayHandshake>,
    session: Option<(Sealer, Opener)>,
    /// Sealed frames from the node that did not open.
    pub refused: u32,
}

impl Default for GatewayEnd {
    fn default() -> Self {
        GatewayEnd {
            key: gateway_key(),
            ephemerals: 0,
            hello: None,
            handshake: None,
            session: None,
            refused: 0,
        }
    }
}

impl GatewayEnd {
    /// A frame from the node: its message once opened (or in the clear), and the handshake's
    /// answer to send back, if any.
    pub fn receive(&mut self, received: Received) -> (Option<Message>, Option<Vec<u8>>) {
        if received.is_sealed() {
            let opened = match &mut self.session {
                Some((_, opener)) => received.open(opener).ok(),
                None => None,
            };
            if opened.is_none() {
                self.refused += 1;
            }
            return (opened, None);
        }
        let message = received.into_clear().expect("clear");
        let reply = match &message {
            Message::Hello(hello) => {
                self.hello = Some(hello.clone());
                None
            }
            Message::Enroll(enroll) => self.hello.take().map(|hello| {
                self.ephemerals = self.ephemerals.wrapping_add(1);
                let ephemeral = Ephemeral::from_random([self.ephemerals; 32]);
                let (challenge, handshake) =
                    GatewayHandshake::challenge(&self.key, &ephemeral, &hello, &enroll.public_key)
                        .unwrap();
                self.handshake = Some(handshake);
                frame(&Message::Challenge(challenge))
            }),
            Message::Proof(proof) => {
                if let Some(keys) = self.handshake.take().and_then(|h| h.finish(proof).ok()) {
                    self.session = Some(keys.gateway());
                }
                None
            }
            _ => None,
        };
        (Some(message), reply)
    }

    /// Whether a handshake completed and its session is open.
    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }

    /// A message for the node as a frame: sealed with the session (a clear message as is).
    pub fn frame(&mut self, message: &Message) -> Vec<u8> {
        if !message.is_sealed() {
            return frame(message);
        }
        let (sealer, _) = self
            .session
            .as_mut()
            .expect("a sealed message needs a session: the node has not completed a handshake");
        let mut buf = [0u8; MAX_FRAME_LEN];
        let len = encode_sealed_frame(message, sealer, &mut buf).unwrap();
        buf[..len].to_vec()
    }

    /// The gateway restarted: its sessions are gone.
    pub fn restart(&mut self) {
        self.hello = None;
        self.handshake = None;
        self.session = None;
    }
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
    /// Answers every handshake (unless `mute`) and seals what is delivered.
    pub end: GatewayEnd,
    sent: Vec<Message>,
    decoder: FrameDecoder,
}

impl<const RING: usize> Site<RING> {
    pub fn new(node: App<TestBank, RING>) -> Self {
        Site {
            now: Millis::ZERO,
            node,
            gateway: None,
            end: GatewayEnd::default(),
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

    /// Delivers a message from the gateway, sealed with the session when it must be.
    pub fn deliver(&mut self, message: &Message) {
        let bytes = self.end.frame(message);
        self.deliver_bytes(&bytes);
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
            let muted = self.gateway.as_ref().is_some_and(|g| g.mute);
            while let Some(len) = self.node.poll_transmit(&mut buf) {
                for &byte in &buf[..len] {
                    match self.decoder.push(byte) {
                        Some(Ok(received)) => {
                            let (message, answer) = self.end.receive(received);
                            let message = message.expect("the node seals with its session");
                            if !muted {
                                replies.extend(answer);
                            }
                            if let Some(gateway) = self.gateway.as_mut() {
                                let reply = gateway.handle(&message);
                                replies.extend(reply.map(|r| self.end.frame(&r)));
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
                self.node.handle_bytes(self.now, &reply);
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
            // The session opens once the node's PROOF verified (the handshake is
            // [`GatewayEnd`]'s): the ACCEPT goes out sealed with its keys.
            Message::Proof(proof) => {
                self.session = Some(proof.boot_id);
                Some(Message::Accept(Accept {
                    boot_id: proof.boot_id,
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
