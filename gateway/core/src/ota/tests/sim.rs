//! The adapter and the line in a test: a [`Transfer`] and a [`ModelNode`] on a virtual clock
//! (microseconds), over a serial line that takes its time per byte and, on request, drops,
//! duplicates and reorders frames in both directions, drops the link, resets the node or
//! restarts the gateway.

use std::collections::BTreeMap;

use outpost_proto::{ChunkSize, Millis, OtaStatus};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::model::{Down, ModelNode};
use crate::ota::{
    CONTROL_LINE_LEN, Control, Image, Pacer, STATUS_LINE_LEN, Transfer, TransferEvent,
    chunk_line_len, offer_line_len,
};

/// What the line does to frames, each direction alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Faults {
    /// Probability a frame is lost (noise: its CRC fails).
    pub(super) drop: f64,
    /// Probability a frame arrives twice.
    pub(super) dup: f64,
    /// Probability a frame is held up by up to `jitter_ms`, so later ones overtake it.
    pub(super) reorder: f64,
    pub(super) jitter_ms: u64,
}

impl Faults {
    pub(super) const CLEAN: Faults = Faults {
        drop: 0.0,
        dup: 0.0,
        reorder: 0.0,
        jitter_ms: 0,
    };
}

/// Something that interrupts the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disruption {
    /// The port is closed and reopened: the gateway knows at once; the node re-handshakes.
    LinkDrop,
    /// The line goes dead without a word; the node re-handshakes after it (`LINK_TIMEOUT`).
    Silence,
    /// The node resets: its RAM is lost; it re-handshakes after booting.
    NodeReset,
    /// The gateway restarts: a new transfer for the same image once the node is back, handed the
    /// node's STATUS at ACCEPT or not (then it asks).
    GatewayRestart { hand_in: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Down (the gateway knows) or dead (it does not) until a new session opens.
    Down {
        until_us: u64,
    },
    Dead {
        until_us: u64,
    },
}

#[derive(Debug)]
struct InFlight<T> {
    at_us: u64,
    seq: u64,
    copy: bool,
    /// A frame sent later was delivered before this one (counted once).
    overtaken: bool,
    frame: T,
}

/// One direction of the serial line: a frame takes `10 × bytes / baud` after the previous one.
#[derive(Debug)]
struct Line<T> {
    free_us: u64,
    seq: u64,
    frames: Vec<InFlight<T>>,
}

impl<T: Clone> Line<T> {
    fn new() -> Self {
        Line {
            free_us: 0,
            seq: 0,
            frames: Vec::new(),
        }
    }

    /// Puts a frame on the line; whether it is lost.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        now_us: u64,
        bytes: usize,
        baud: u32,
        latency_us: u64,
        faults: &Faults,
        rng: &mut ChaCha8Rng,
        frame: T,
    ) -> bool {
        let start = self.free_us.max(now_us);
        self.free_us = start + (bytes as u64 * 10 * 1_000_000).div_ceil(u64::from(baud));
        self.seq += 1;
        if chance(rng, faults.drop) {
            return true;
        }
        let jitter = |rng: &mut ChaCha8Rng| {
            if faults.jitter_ms > 0 && chance(rng, faults.reorder) {
                u64::from(rng.next_u32()) % (faults.jitter_ms * 1000)
            } else {
                0
            }
        };
        let at_us = self.free_us + latency_us + jitter(rng);
        if chance(rng, faults.dup) {
            let again = self.free_us + latency_us + jitter(rng) + 1;
            self.frames.push(InFlight {
                at_us: again,
                seq: self.seq,
                copy: true,
                overtaken: false,
                frame: frame.clone(),
            });
        }
        self.frames.push(InFlight {
            at_us,
            seq: self.seq,
            copy: false,
            overtaken: false,
            frame,
        });
        false
    }

    fn next_at(&self) -> Option<u64> {
        self.frames.iter().map(|f| f.at_us).min()
    }

    fn take_due(&mut self, now_us: u64) -> Vec<InFlight<T>> {
        let (mut due, rest): (Vec<_>, Vec<_>) =
            self.frames.drain(..).partition(|f| f.at_us <= now_us);
        self.frames = rest;
        due.sort_by_key(|f| (f.at_us, f.seq, f.copy));
        due
    }

    /// Frames in flight when a session ends: sealed for it, they never open again.
    fn purge(&mut self) -> Vec<InFlight<T>> {
        self.frames.drain(..).collect()
    }
}

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && f64::from(rng.next_u32()) / f64::from(u32::MAX) < p
}

/// What the run counted.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats {
    /// How often each chunk index was sent, over every transfer of the run.
    pub(super) sends: BTreeMap<u16, u32>,
    /// Chunk frames lost on the way (noise, or a dead line).
    pub(super) chunks_dropped: u64,
    /// Chunk frames overtaken by one sent later (counted when the later one arrives, so also
    /// when the run ends first or the frame is lost afterwards; not counted as dropped then).
    pub(super) chunks_reordered: u64,
    pub(super) disruptions: u64,
    /// Line bytes each way.
    pub(super) down_bytes: u64,
    pub(super) up_bytes: u64,
    pub(super) offers: u64,
    pub(super) queries: u64,
    pub(super) statuses: u64,
    /// When the first chunk went out, and when the node reported the image verified.
    pub(super) first_chunk_us: Option<u64>,
    pub(super) verified_us: Option<u64>,
}

impl Stats {
    /// Chunk frames sent for an index already sent before.
    pub(super) fn resent(&self) -> u64 {
        self.sends
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum()
    }
}

/// The gateway's adapter for one port, the line, and the node.
#[derive(Debug)]
pub(super) struct Sim {
    pub(super) now_us: u64,
    rng: ChaCha8Rng,
    pub(super) image: Image,
    chunk: ChunkSize,
    baud: u32,
    share: f64,
    latency_us: u64,
    faults: Faults,
    pub(super) transfer: Transfer,
    pub(super) node: ModelNode,
    down: Line<Down>,
    up: Line<OtaStatus>,
    link: Link,
    /// What happens when a session reopens after a gateway restart.
    restart: Option<bool>,
    /// A session reopened and no chunk went since.
    resumed: bool,
    /// Chunks the first after a new session that the node already had (in flash or in RAM):
    /// the transfer started over instead of resuming where the node is.
    pub(super) not_resumed: Vec<String>,
    disruptions: Vec<(u64, Disruption, u64)>,
    pub(super) stats: Stats,
    pub(super) events: Vec<(u64, TransferEvent)>,
}

impl Sim {
    pub(super) fn new(
        image: Image,
        chunk: ChunkSize,
        baud: u32,
        share: f64,
        node: ModelNode,
        faults: Faults,
        seed: u64,
    ) -> Sim {
        let transfer = Transfer::start(Millis(0), image.clone(), chunk, Pacer::new(baud, share));
        Sim {
            now_us: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            image,
            chunk,
            baud,
            share,
            latency_us: 1000,
            faults,
            transfer,
            node,
            down: Line::new(),
            up: Line::new(),
            link: Link::Up,
            restart: None,
            resumed: false,
            not_resumed: Vec::new(),
            disruptions: Vec::new(),
            stats: Stats::default(),
            events: Vec::new(),
        }
    }

    /// Schedules a disruption at `at_us`, the line staying down for `down_us`.
    pub(super) fn disrupt(&mut self, at_us: u64, what: Disruption, down_us: u64) {
        self.disruptions.push((at_us, what, down_us));
        self.disruptions.sort_by_key(|d| d.0);
    }

    fn now(&self) -> Millis {
        Millis(self.now_us / 1000)
    }

    /// Runs until `done`, or `max_us` of virtual time; whether `done` was reached. Panics
    /// rather than spin when the clock no longer moves (something asks to be woken now, again
    /// and again, and does nothing when it is).
    pub(super) fn run_until(&mut self, max_us: u64, done: impl Fn(&Sim) -> bool) -> bool {
        let mut same_instant = 0;
        for _ in 0..5_000_000 {
            self.pump();
            if done(self) {
                return true;
            }
            let timeout = self.transfer.poll_timeout().map(|t| t.as_u64() * 1000);
            let link = match self.link {
                Link::Up => None,
                Link::Down { until_us } | Link::Dead { until_us } => Some(until_us),
            };
            let next = [
                self.down.next_at(),
                self.up.next_at(),
                timeout,
                link,
                self.disruptions.first().map(|d| d.0),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else { return false };
            if next > max_us {
                return false;
            }
            if next <= self.now_us {
                same_instant += 1;
                assert!(same_instant < 1000, "stuck at {} us", self.now_us);
            } else {
                same_instant = 0;
            }
            self.now_us = self.now_us.max(next);
            self.step();
        }
        panic!("the run did not settle");
    }

    /// Runs until the node's image is verified and the transfer knows it.
    pub(super) fn run_to_verified(&mut self, max_us: u64) -> bool {
        self.run_until(max_us, |s| {
            s.transfer.is_ended()
                || (s.transfer.stage() == crate::ota::Stage::Verified
                    && s.node.phase() == outpost_proto::OtaPhase::Verified)
        })
    }

    fn step(&mut self) {
        let now = self.now();
        // The session reopens.
        match self.link {
            Link::Down { until_us } | Link::Dead { until_us } if until_us <= self.now_us => {
                self.reopen();
            }
            _ => {}
        }
        while let Some(&(at, what, down_us)) = self.disruptions.first() {
            if at > self.now_us {
                break;
            }
            self.disruptions.remove(0);
            self.apply(what, down_us);
        }
        let mut due = self.down.take_due(self.now_us);
        for i in 0..due.len() {
            if let Down::Chunk { .. } = due[i].frame {
                // Every chunk frame sent before this one (or its copy) and still on its way was
                // overtaken: counted now, whether it arrives later, is lost, or the run ends
                // first.
                let seq = due[i].seq;
                let rest = due[i + 1..].iter_mut().chain(self.down.frames.iter_mut());
                for f in rest {
                    if !f.copy
                        && !f.overtaken
                        && f.seq < seq
                        && matches!(f.frame, Down::Chunk { .. })
                    {
                        f.overtaken = true;
                        self.stats.chunks_reordered += 1;
                    }
                }
            }
        }
        for f in due {
            self.node.handle(now, f.frame);
        }
        for f in self.up.take_due(self.now_us) {
            self.transfer.handle_status(now, &f.frame);
        }
        if self
            .transfer
            .poll_timeout()
            .is_some_and(|t| t <= self.now())
        {
            self.transfer.handle_timeout(now);
        }
    }

    fn apply(&mut self, what: Disruption, down_us: u64) {
        if self.link != Link::Up {
            if what == Disruption::NodeReset {
                self.node.reset();
            }
            return;
        }
        self.stats.disruptions += 1;
        let until_us = self.now_us + down_us;
        let lost = self.down.purge();
        self.stats.chunks_dropped += lost
            .iter()
            .filter(|f| !f.copy && !f.overtaken && matches!(f.frame, Down::Chunk { .. }))
            .count() as u64;
        self.up.purge();
        match what {
            Disruption::LinkDrop => {
                self.transfer.handle_link_lost(self.now());
                self.link = Link::Down { until_us };
            }
            Disruption::Silence => self.link = Link::Dead { until_us },
            Disruption::NodeReset => {
                self.node.reset();
                self.link = Link::Dead { until_us };
            }
            Disruption::GatewayRestart { hand_in } => {
                // The old process is gone: its transfer sends nothing more (a new one starts
                // when the node is back).
                self.transfer.handle_link_lost(self.now());
                self.restart = Some(hand_in);
                self.link = Link::Down { until_us };
            }
        }
    }

    /// A new session: the node says where it is at ACCEPT.
    fn reopen(&mut self) {
        let now = self.now();
        self.link = Link::Up;
        self.resumed = true;
        self.node.handle_accept();
        match self.restart.take() {
            Some(hand_in) => {
                self.transfer = Transfer::start(
                    now,
                    self.image.clone(),
                    self.chunk,
                    Pacer::new(self.baud, self.share),
                );
                // The STATUS at ACCEPT reached the new session before the transfer existed.
                let at_accept = self.node.poll_status().expect("a STATUS at ACCEPT");
                if hand_in {
                    self.stats.statuses += 1;
                    self.transfer.handle_status(now, &at_accept);
                }
            }
            None => {
                self.transfer.handle_link_lost(now);
                self.transfer.handle_link_up(now);
            }
        }
    }

    /// Drains the transfer and the node, putting what they send on the line.
    fn pump(&mut self) {
        let now = self.now();
        let dead = self.link != Link::Up;
        while let Some(control) = self.transfer.poll_control(now) {
            assert!(
                !dead || matches!(self.link, Link::Dead { .. }),
                "sent while down"
            );
            let (frame, bytes) = match control {
                Control::Offer { image, chunk } => {
                    assert_eq!(image, self.image.tag());
                    self.stats.offers += 1;
                    let offer = self.image.offer(chunk);
                    let bytes = offer_line_len(offer.manifest.len());
                    (
                        Down::Offer {
                            image,
                            chunk,
                            manifest: offer.manifest.to_vec(),
                        },
                        bytes,
                    )
                }
                Control::Control(c) => {
                    if c.op == outpost_proto::OtaOp::Query {
                        self.stats.queries += 1;
                    }
                    (Down::Control(c), CONTROL_LINE_LEN)
                }
            };
            self.send_down(frame, bytes, false);
        }
        while let Some(c) = self.transfer.poll_chunk(now) {
            assert!(
                !dead || matches!(self.link, Link::Dead { .. }),
                "sent while down"
            );
            assert_eq!(
                c.range(),
                self.image.chunk_ref(self.chunk, c.index).unwrap().range()
            );
            assert!(
                c.range().end <= self.image.len(),
                "a chunk beyond the image"
            );
            *self.stats.sends.entry(c.index).or_default() += 1;
            self.stats.first_chunk_us.get_or_insert(self.now_us);
            if std::mem::take(&mut self.resumed) {
                // Nothing reached the node since the session opened: what it holds now is what
                // it said at ACCEPT (or to the QUERY), and the transfer resumes past it.
                let node = self.node.status();
                let had = c.index < node.flashed
                    || (c.index - node.flashed < 64
                        && node.have & (1 << (c.index - node.flashed)) != 0);
                if node.phase == outpost_proto::OtaPhase::Receiving
                    && node.chunk == self.chunk
                    && had
                {
                    self.not_resumed.push(format!(
                        "at {} us: chunk {} first after a new session, the node has flashed {} and have {:#x}",
                        self.now_us, c.index, node.flashed, node.have
                    ));
                }
            }
            let chunk = self.image.chunk(c);
            let frame = Down::Chunk {
                image: chunk.image,
                index: chunk.index,
                data: chunk.data.to_vec(),
            };
            self.send_down(frame, chunk_line_len(c.len), true);
        }
        while let Some(e) = self.transfer.poll_event() {
            if e == TransferEvent::Verified {
                self.stats.verified_us.get_or_insert(self.now_us);
            }
            self.events.push((self.now_us, e));
        }
        while let Some(status) = self.node.poll_status() {
            self.stats.statuses += 1;
            self.stats.up_bytes += STATUS_LINE_LEN as u64;
            if self.link == Link::Up {
                let now_us = self.now_us;
                let (baud, latency, faults) = (self.baud, self.latency_us, self.faults);
                self.up.send(
                    now_us,
                    STATUS_LINE_LEN,
                    baud,
                    latency,
                    &faults,
                    &mut self.rng,
                    status,
                );
            }
        }
    }

    fn send_down(&mut self, frame: Down, bytes: usize, is_chunk: bool) {
        self.stats.down_bytes += bytes as u64;
        let lost = match self.link {
            Link::Up => {
                let (now_us, baud, latency, faults) =
                    (self.now_us, self.baud, self.latency_us, self.faults);
                self.down
                    .send(now_us, bytes, baud, latency, &faults, &mut self.rng, frame)
            }
            Link::Down { .. } | Link::Dead { .. } => true,
        };
        if lost && is_chunk {
            self.stats.chunks_dropped += 1;
        }
    }
}
