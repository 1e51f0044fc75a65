//! The gateway's end of the node link on one serial port, as an IO-free state machine.
//!
//! Bytes go in through [`PortSession::handle_bytes`]; out come [`Action`]s for the store
//! ([`PortSession::poll_action`]) and frames for the line ([`PortSession::poll_transmit`]). The
//! store's answers come back through `handle_registered` / `handle_committed` /
//! `handle_commit_failed`. The serial adapter (`outpost::io::serial`) only moves bytes and answers.
//!
//! The rule that keeps the store free of gaps and duplicates is [`admit`]; the store applies the
//! same rule inside its transaction, so a sample is only ever committed once.

use std::collections::VecDeque;

use outpost_proto::frame::MAX_FRAME_LEN;
use outpost_proto::{
    Accept, Ack, FrameDecoder, FrameError, Health, Hello, LinkCounters, Message, Millis,
    encode_frame,
};

/// A sample as the gateway received it, stamped with wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub seq: u32,
    pub window_start: u32,
    pub ts_ms: i64,
    pub readings: heapless::Vec<outpost_proto::Reading, { outpost_proto::wire::MAX_READINGS }>,
}

/// What the store knows of a node once it said HELLO: the answer to [`Action::Register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub node_id: i64,
    /// Last committed sample of this boot: the ACCEPT's `ack_upto`.
    pub ack_upto: u32,
}

/// Whether a sample may follow the last committed one of its boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The direct successor (or the first sample of a boot not seen before).
    Next,
    /// The node's ring overflowed: `lost` samples before it are gone for good.
    AfterGap { lost: u32 },
    /// Already committed, or ahead of a missing one: drop it; the node resends in order.
    Stale,
}

/// Decides if a sample `seq` (whose node still holds everything from `window_start`) may follow
/// `last`, the last committed sample of its boot.
#[must_use]
pub fn admit(last: Option<u32>, seq: u32, window_start: u32) -> Admission {
    match last {
        None if seq <= 1 => Admission::Next,
        // A boot first heard of mid-way: the node dropped what it could not deliver.
        None if seq == window_start => Admission::AfterGap { lost: seq - 1 },
        None => Admission::Stale,
        Some(last) if seq == last.wrapping_add(1) => Admission::Next,
        Some(last) if seq > last && seq == window_start => Admission::AfterGap {
            lost: seq - last - 1,
        },
        Some(_) => Admission::Stale,
    }
}

/// Work for the store, as data.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A node said HELLO and ENROLL on this port: register it and check its key.
    Register { hello: Hello, public_key: [u8; 32] },
    /// Samples to commit; answer with `handle_committed` or `handle_commit_failed`.
    Ingest {
        node_id: i64,
        boot_id: u32,
        samples: Vec<Sample>,
    },
    /// A HEALTH report.
    Health { node_id: i64, health: Health },
    /// Frames the gateway dropped on this node's line since the last report.
    LinkErrors { node_id: i64, count: u32 },
}

/// Things worth a log line, counted for the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortCounters {
    pub frames: u64,
    pub frame_errors: u64,
    pub discarded_bytes: u64,
    /// Frames over the node's rate limit, dropped unacknowledged (the node resends them).
    pub rate_limited: u64,
    /// Retransmitted samples dropped as already stored.
    pub duplicates: u64,
    /// Enrolments refused because the node's key differs from the pinned one.
    pub refused: u64,
}

#[derive(Debug)]
struct Attached {
    node_id: i64,
    boot_id: u32,
    /// Last sample handed to the store (committed or in flight).
    handed_over: Option<u32>,
    /// Last sample the store committed.
    committed: Option<u32>,
}

/// Token bucket over frames from the node.
#[derive(Debug)]
struct RateLimit {
    per_sec: u32,
    tokens: f64,
    refilled_at: Millis,
}

impl RateLimit {
    fn burst(&self) -> f64 {
        f64::from(self.per_sec.max(32))
    }
    fn take(&mut self, now: Millis) -> bool {
        let elapsed = now.saturating_since(self.refilled_at) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * f64::from(self.per_sec)).min(self.burst());
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One serial port's session with the node on it.
///
/// Design: owns the frame decoder, which node (and which boot of it) is on the line, and how far
/// its samples got (handed to the store, committed). It never touches the store or the port and
/// never reads a clock: the adapter passes `now` and the wall-clock time in, and carries out the
/// actions it returns. A node is attached only once the store has registered it.
#[derive(Debug)]
pub struct PortSession {
    port: String,
    decoder: FrameDecoder,
    counted: LinkCounters,
    rate: RateLimit,
    /// HELLO waiting for its ENROLL.
    hello: Option<Hello>,
    registering: bool,
    node: Option<Attached>,
    pending_samples: Vec<Sample>,
    actions: VecDeque<Action>,
    transmit: VecDeque<Message>,
    counters: PortCounters,
}

impl PortSession {
    #[must_use]
    pub fn new(port: impl Into<String>, max_frames_per_sec: u32, now: Millis) -> Self {
        let rate = RateLimit {
            per_sec: max_frames_per_sec,
            tokens: 0.0,
            refilled_at: now,
        };
        let mut session = PortSession {
            port: port.into(),
            decoder: FrameDecoder::new(),
            counted: LinkCounters::default(),
            rate,
            hello: None,
            registering: false,
            node: None,
            pending_samples: Vec::new(),
            actions: VecDeque::new(),
            transmit: VecDeque::new(),
            counters: PortCounters::default(),
        };
        session.rate.tokens = session.rate.burst();
        session
    }

    #[must_use]
    pub fn port(&self) -> &str {
        &self.port
    }

    #[must_use]
    pub fn counters(&self) -> PortCounters {
        self.counters
    }

    /// The node attached to this port, once registered.
    #[must_use]
    pub fn node_id(&self) -> Option<i64> {
        self.node.as_ref().map(|n| n.node_id)
    }

    /// The port was closed or reopened: forget the partial frame and who was on the line. A node
    /// re-announces itself with HELLO when it hears nothing for a while.
    pub fn handle_port_reset(&mut self) {
        self.decoder.reset();
        self.hello = None;
        self.node = None;
        self.registering = false;
        self.pending_samples.clear();
        self.transmit.clear();
    }

    /// Bytes read from the line; `wall_ms` is the Unix time they arrived.
    pub fn handle_bytes(&mut self, now: Millis, wall_ms: i64, bytes: &[u8]) {
        for &byte in bytes {
            match self.decoder.push(byte) {
                None => {}
                Some(Ok(message)) => {
                    if self.rate.take(now) {
                        self.handle_message(wall_ms, message);
                    } else {
                        self.counters.rate_limited += 1;
                    }
                }
                Some(Err(error)) => self.handle_frame_error(error),
            }
        }
        self.flush_samples();
        self.report_link_errors();
    }

    fn handle_frame_error(&mut self, error: FrameError) {
        tracing::debug!(message = "Frame dropped.", port = %self.port, %error);
    }

    fn report_link_errors(&mut self) {
        let now = self.decoder.counters();
        let new_errors = now.errors.wrapping_sub(self.counted.errors);
        self.counters.frames += u64::from(now.frames.wrapping_sub(self.counted.frames));
        self.counters.frame_errors += u64::from(new_errors);
        self.counters.discarded_bytes += u64::from(
            now.discarded_bytes
                .wrapping_sub(self.counted.discarded_bytes),
        );
        self.counted = now;
        if new_errors > 0 {
            tracing::info!(message = "Garbage on serial line.", port = %self.port, frames_dropped = new_errors);
            if let Some(node) = &self.node {
                self.actions.push_back(Action::LinkErrors {
                    node_id: node.node_id,
                    count: new_errors,
                });
            }
        }
    }

    fn handle_message(&mut self, wall_ms: i64, message: Message) {
        match message {
            Message::Hello(hello) => {
                let same_boot = self
                    .node
                    .as_ref()
                    .is_some_and(|n| n.boot_id == hello.boot_id);
                if same_boot {
                    // The node lost our ACCEPT or timed out: tell it again where it stands.
                    let node = self.node.as_ref().expect("checked above");
                    let ack_upto = node.committed.unwrap_or(0);
                    self.transmit.push_back(Message::Accept(Accept {
                        boot_id: hello.boot_id,
                        ack_upto,
                    }));
                } else {
                    self.hello = Some(hello);
                }
            }
            Message::Enroll(enroll) => {
                let Some(hello) = self.hello.take_if(|h| h.uid == enroll.uid) else {
                    return;
                };
                if self.registering {
                    self.hello = Some(hello); // one registration at a time; retried on next HELLO
                    return;
                }
                // A HELLO kept while this boot's registration ran: the boot is attached already,
                // and registering it again would detach it for a commit's time (with a disk
                // slower than the node's link timeout, for ever).
                if self
                    .node
                    .as_ref()
                    .is_some_and(|n| n.boot_id == hello.boot_id)
                {
                    return;
                }
                self.flush_samples();
                self.node = None;
                self.registering = true;
                self.actions.push_back(Action::Register {
                    hello,
                    public_key: enroll.public_key,
                });
            }
            Message::Telemetry(t) => {
                let Some(node) = &mut self.node else { return };
                match admit(node.handed_over, t.seq, t.window_start) {
                    Admission::Stale => {
                        self.counters.duplicates += 1;
                        // An ACK was lost: say again what is committed so the node frees its ring.
                        if let Some(committed) = node.committed.filter(|&c| t.seq <= c) {
                            let ack = Ack {
                                boot_id: node.boot_id,
                                upto: committed,
                            };
                            if !self.transmit.contains(&Message::Ack(ack)) {
                                self.transmit.push_back(Message::Ack(ack));
                            }
                        }
                    }
                    Admission::Next | Admission::AfterGap { .. } => {
                        node.handed_over = Some(t.seq);
                        let ts_ms = wall_ms - i64::from(t.age_ms);
                        self.pending_samples.push(Sample {
                            seq: t.seq,
                            window_start: t.window_start,
                            ts_ms,
                            readings: t.readings,
                        });
                    }
                }
            }
            Message::Health(health) => {
                if let Some(node) = &self.node {
                    self.actions.push_back(Action::Health {
                        node_id: node.node_id,
                        health,
                    });
                }
            }
            Message::Response(response) => {
                tracing::debug!(message = "Command response.", port = %self.port, id = response.id, status = response.status);
            }
            // Gateway-to-node messages echoed back: a loop or a confused peer.
            Message::Accept(_) | Message::Ack(_) | Message::Command(_) => {
                tracing::debug!(message = "Unexpected gateway message from node side.", port = %self.port);
            }
        }
    }

    fn flush_samples(&mut self) {
        if self.pending_samples.is_empty() {
            return;
        }
        let samples = std::mem::take(&mut self.pending_samples);
        if let Some(node) = &self.node {
            self.actions.push_back(Action::Ingest {
                node_id: node.node_id,
                boot_id: node.boot_id,
                samples,
            });
        }
    }

    /// The store registered the node from the last `Register` (or refused its key: `None`).
    pub fn handle_registered(&mut self, hello: &Hello, registered: Option<Registered>) {
        self.registering = false;
        // A HELLO of this boot kept while it registered is answered by this registration.
        self.hello = self.hello.take().filter(|h| h.boot_id != hello.boot_id);
        let Some(registered) = registered else {
            self.counters.refused += 1;
            return;
        };
        let committed = (registered.ack_upto > 0).then_some(registered.ack_upto);
        self.node = Some(Attached {
            node_id: registered.node_id,
            boot_id: hello.boot_id,
            handed_over: committed,
            committed,
        });
        self.transmit.push_back(Message::Accept(Accept {
            boot_id: hello.boot_id,
            ack_upto: registered.ack_upto,
        }));
    }

    /// The store could not register the node (its disk failed): the node says HELLO again.
    pub fn handle_register_failed(&mut self) {
        self.registering = false;
    }

    /// The store committed samples of `boot_id` up to `upto`.
    pub fn handle_committed(&mut self, node_id: i64, boot_id: u32, upto: u32, duplicates: u32) {
        self.counters.duplicates += u64::from(duplicates);
        let Some(node) = self
            .node
            .as_mut()
            .filter(|n| n.node_id == node_id && n.boot_id == boot_id)
        else {
            return;
        };
        if upto == 0 || node.committed.is_some_and(|c| c >= upto) {
            return;
        }
        node.committed = Some(upto);
        self.transmit.retain(|m| !matches!(m, Message::Ack(_)));
        self.transmit.push_back(Message::Ack(Ack { boot_id, upto }));
    }

    /// The store could not commit (disk full, read-only): nothing is acknowledged, and samples
    /// after the last commit are taken again when the node resends them.
    pub fn handle_commit_failed(&mut self, node_id: i64, boot_id: u32) {
        if let Some(node) = self
            .node
            .as_mut()
            .filter(|n| n.node_id == node_id && n.boot_id == boot_id)
        {
            node.handed_over = node.committed;
        }
    }

    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Writes the next frame for the line into `buf`.
    pub fn poll_transmit(&mut self, buf: &mut [u8; MAX_FRAME_LEN]) -> Option<usize> {
        let message = self.transmit.pop_front()?;
        // Cannot fail: every gateway message fits MAX_FRAME_LEN.
        encode_frame(&message, buf).ok()
    }
}

#[cfg(test)]
mod tests;
