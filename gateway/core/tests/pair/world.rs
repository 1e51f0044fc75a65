//! The pair itself: a real `NodeLink`, a real `PortSession`, the model store behind the session,
//! the faulty line between them, and one virtual clock for all of it.
//!
//! Besides driving them, the pair keeps its own record of every boot of the node, from outside
//! the two ends: each sample it produced (seq, readings, when), exactly which seqs the node
//! pushed out of its full ring, which ones left the ring because an ACK or ACCEPT said they
//! were committed, and which ones it still held when it restarted. All of it is read off what
//! the node's ring holds (`oldest_held`, `next_seq`) before and after each input, never from the
//! gateway. [`Pair::check`] judges the store against that record; no part of it relies on
//! `admit`.

use std::collections::{BTreeSet, VecDeque};

use outpost_core::link::{LinkSecrets, PortCounters, PortSession};
use outpost_node::{Boot, Identity, LinkConfig, NodeCounters, NodeLink, Secrets};
use outpost_proto::frame::MAX_FRAME_LEN;
use outpost_proto::wire::MAX_READINGS;
use outpost_proto::{
    ChannelId, FrameDecoder, FwVersion, Message, Millis, Reading, Received, ResetReason,
};

use crate::line::{Dir, Fault, Line, MAX_TRANSIT_MS};
use crate::store::{Disk, ModelStore, Reply};

/// The node's ring capacity; `Setup::ring_limit` lowers it.
pub(crate) const RING: usize = 1024;
const PORT: &str = "/dev/ttyPAIR0";
/// Wall-clock time at virtual time zero (the gateway stamps samples with wall time).
const WALL_EPOCH_MS: i64 = 1_767_225_600_000;
const UID: [u8; 8] = [0x0E, 0xD6, 0xE0, 0x00, 0x00, 0x00, 0x00, 0x01];
const KEY: [u8; 32] = [0x5A; 32];
/// The site-specific channel carrying the boot id, so a stored sample names its boot itself.
const BOOT_CHANNEL: ChannelId = ChannelId(200);

/// Something that happens to one end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The gateway process dies and starts again: a new `PortSession`, the store's queue lost,
    /// the transaction being committed on disk or not (`durable`), its answers lost either way.
    GatewayRestart { durable: bool },
    /// The gateway closes and reopens the port (USB unplug): `handle_port_reset`.
    PortReset,
    /// The node reboots: a new boot id, seq from 1, its ring lost.
    NodeRestart,
}

/// What goes wrong, asked once per frame and once per transaction while faults are on.
pub(crate) trait Faults {
    fn fault(&mut self, now: Millis, dir: Dir) -> Fault;
    fn commit_fails(&mut self, now: Millis) -> bool;
}

/// Faults from two lists, one per direction, spread over the run: each entry lets a number of
/// frames through untouched, then does something to the next one. Commit failures come as
/// disk-full episodes: a number of transactions that commit, then a number that fail in a row.
/// Once a list runs out, everything goes well.
#[derive(Debug, Default)]
pub(crate) struct Scripted {
    pub(crate) to_gateway: VecDeque<(u32, Fault)>,
    pub(crate) to_node: VecDeque<(u32, Fault)>,
    pub(crate) disk_full: VecDeque<(u32, u32)>,
}

impl Faults for Scripted {
    fn fault(&mut self, _: Millis, dir: Dir) -> Fault {
        let list = match dir {
            Dir::ToGateway => &mut self.to_gateway,
            Dir::ToNode => &mut self.to_node,
        };
        match list.front_mut() {
            None => Fault::Deliver,
            Some((clean, _)) if *clean > 0 => {
                *clean -= 1;
                Fault::Deliver
            }
            Some(_) => list.pop_front().expect("just seen").1,
        }
    }
    fn commit_fails(&mut self, _: Millis) -> bool {
        while let Some((commit, fail)) = self.disk_full.front_mut() {
            if *commit > 0 {
                *commit -= 1;
                return false;
            }
            if *fail > 0 {
                *fail -= 1;
                return true;
            }
            self.disk_full.pop_front();
        }
        false
    }
}

/// Faults decided by two functions of the time (for the scenario tests).
pub(crate) struct ByTime<F, C> {
    pub(crate) fault: F,
    pub(crate) commit_fails: C,
}

impl<F: FnMut(Millis, Dir) -> Fault, C: FnMut(Millis) -> bool> Faults for ByTime<F, C> {
    fn fault(&mut self, now: Millis, dir: Dir) -> Fault {
        (self.fault)(now, dir)
    }
    fn commit_fails(&mut self, now: Millis) -> bool {
        (self.commit_fails)(now)
    }
}

/// How a run is set up.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) sample_every_ms: u64,
    /// The node takes no sample at or after this time.
    pub(crate) sampling_until: Millis,
    pub(crate) ring_limit: usize,
    pub(crate) disk: Disk,
    /// `serial.max_frames_per_sec` of the port.
    pub(crate) max_frames_per_sec: u32,
    /// What the line carries from the node, bytes per second (a UART at `baud` carries
    /// `baud / 10`): the node hands out its next frame only when the line is free. `None`: every
    /// frame arrives `LATENCY_MS` after it is sent, however many there are.
    pub(crate) line_bytes_per_sec: Option<u64>,
    pub(crate) first_boot_id: u32,
    pub(crate) events: Vec<(Millis, Event)>,
    /// The line and the disk misbehave only before this time.
    pub(crate) faults_until: Millis,
    /// Whether frames the node sent before a reboot may still reach the gateway after it (so
    /// after frames of the new boot). When false, a reboot takes longer than the line holds a
    /// frame: whatever the old boot had in flight to the gateway is gone by then.
    pub(crate) late_frames_across_reboots: bool,
}

/// One sample as the node produced it.
#[derive(Debug, Clone)]
pub(crate) struct Produced {
    pub(crate) taken_at: Millis,
    pub(crate) readings: Vec<Reading>,
}

/// One boot of the node, as seen from outside.
#[derive(Debug, Clone)]
pub(crate) struct BootRecord {
    pub(crate) boot_id: u32,
    /// Sample `seq` is `produced[seq - 1]`.
    pub(crate) produced: Vec<Produced>,
    /// Seqs pushed out of the full ring before they were acknowledged.
    pub(crate) dropped: BTreeSet<u32>,
    /// Seqs that left the ring on an ACK or ACCEPT.
    pub(crate) acked: BTreeSet<u32>,
    /// Seqs still held when this boot ended (lost by the restart unless committed).
    pub(crate) held_at_restart: BTreeSet<u32>,
    /// The node's counters when this boot ended (or now, for the current boot).
    pub(crate) counters: NodeCounters,
}

/// Frames by kind, as sent (before the line's faults), and other totals of a run.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    pub(crate) hellos: u64,
    pub(crate) accepts: u64,
    pub(crate) acks: u64,
    pub(crate) telemetry: u64,
    pub(crate) health: u64,
    /// The gateway's port counters, summed over the `PortSession`s a restart ended.
    retired_port: PortCounters,
    pub(crate) gateway_restarts: u32,
    pub(crate) port_resets: u32,
    /// Samples lost to node restarts: held, unacknowledged and not committed when it rebooted.
    pub(crate) lost_by_restart: u64,
    /// Samples pushed out of the node's full ring, over every boot.
    pub(crate) dropped: u64,
}

/// The two ends and everything between them.
pub(crate) struct Pair {
    pub(crate) now: Millis,
    setup: Setup,
    faults: Box<dyn Faults>,
    events: VecDeque<(Millis, Event)>,
    pub(crate) line: Line,
    pub(crate) store: ModelStore,
    pub(crate) session: PortSession,
    pub(crate) node: NodeLink<RING>,
    pub(crate) boots: Vec<BootRecord>,
    next_sample: Option<Millis>,
    /// From here on nothing goes wrong: faults are over, every event happened, sampling ended.
    pub(crate) calm_at: Millis,
    /// The first broken rule seen while running (checked at the moment it happens).
    violation: Option<String>,
    pub(crate) tally: Tally,
    /// PAIR_TRACE set: print every frame sent, store answer and event.
    trace: bool,
    /// When the line from the node is free for its next frame, in microseconds (see
    /// `Setup::line_bytes_per_sec`).
    uplink_free_us: u64,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("now", &self.now)
            .field("node_state", &self.node.state())
            .field("held", &self.node.held())
            .field("oldest_held", &self.node.oldest_held())
            .field("next_seq", &self.node.next_seq())
            .field("session_node", &self.session.node_id())
            .field("store_idle", &self.store.is_idle())
            .field("line_empty", &self.line.is_empty())
            .field("tally", &self.tally)
            .finish_non_exhaustive()
    }
}

fn identity() -> Identity {
    Identity {
        uid: UID,
        hw_rev: 3,
        fw: FwVersion {
            major: 1,
            minor: 4,
            patch: 0,
        },
        lot: heapless::String::try_from("LOT-PAIR").unwrap(),
        channels: heapless::Vec::from_slice(&[
            ChannelId::SEQ,
            ChannelId::TEMPERATURE,
            BOOT_CHANNEL,
        ])
        .unwrap(),
    }
}

/// The node's secrets for a boot: its key (the same every boot) and entropy of this boot.
fn node_secrets(boot_id: u32) -> Secrets {
    Secrets {
        signing_key: ed25519_dalek::SigningKey::from_bytes(&KEY),
        gateway_key: None,
        entropy: [boot_id as u8; 32],
    }
}

/// The gateway's node-link key (the same across its restarts, as on disk); entropy per start.
fn gateway_secrets(now: Millis) -> LinkSecrets {
    LinkSecrets {
        signing_key: ed25519_dalek::SigningKey::from_bytes(&[0x6B; 32]),
        entropy: [now.as_u64() as u8 ^ 0x33; 32],
    }
}

/// What sample `seq` of boot `boot_id`, taken at `at`, reads: it names itself.
fn readings(boot_id: u32, seq: u32, at: Millis) -> heapless::Vec<Reading, MAX_READINGS> {
    [
        (ChannelId::SEQ, seq as i32),
        (ChannelId::TEMPERATURE, (at.as_u64() % 100_000) as i32),
        (BOOT_CHANNEL, boot_id as i32),
    ]
    .into_iter()
    .map(|(channel, value)| Reading { channel, value })
    .collect()
}

fn wall(now: Millis) -> i64 {
    WALL_EPOCH_MS + now.as_u64() as i64
}

impl Pair {
    pub(crate) fn new(setup: Setup, faults: impl Faults + 'static) -> Self {
        let mut events: Vec<(Millis, Event)> = setup.events.clone();
        events.sort_by_key(|e| e.0);
        let calm_at = [setup.faults_until, setup.sampling_until]
            .into_iter()
            .chain(events.last().map(|e| e.0))
            .max()
            .unwrap();
        let node = Self::boot_node(&setup, setup.first_boot_id, Millis::ZERO);
        Pair {
            now: Millis::ZERO,
            faults: Box::new(faults),
            events: events.into(),
            line: Line::default(),
            store: ModelStore::new(setup.disk),
            session: PortSession::new(
                PORT,
                setup.max_frames_per_sec,
                gateway_secrets(Millis::ZERO),
                Millis::ZERO,
            ),
            boots: vec![BootRecord::new(setup.first_boot_id)],
            node,
            next_sample: (setup.sampling_until > Millis::ZERO).then_some(Millis::ZERO),
            calm_at,
            violation: None,
            tally: Tally::default(),
            trace: std::env::var_os("PAIR_TRACE").is_some(),
            uplink_free_us: 0,
            setup,
        }
    }

    fn boot_node(setup: &Setup, boot_id: u32, now: Millis) -> NodeLink<RING> {
        let boot = Boot {
            boot_id,
            reset_reason: ResetReason::Watchdog,
        };
        let config = LinkConfig {
            ring_limit: setup.ring_limit,
            ..LinkConfig::default()
        };
        NodeLink::new(now, identity(), node_secrets(boot_id), boot, config)
    }

    fn boot(&mut self) -> &mut BootRecord {
        self.boots.last_mut().expect("there is always a boot")
    }

    fn violated(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(format!("at {} ms: {what}", self.now.as_u64()));
        }
    }

    /// When something next happens.
    fn next_due(&self) -> Millis {
        [
            self.line.next_arrival(),
            self.node.poll_timeout(),
            self.next_sample,
            self.store.next_due(),
            self.events.front().map(|e| e.0),
            // The line frees up for the node's next frame.
            Some(Millis(self.uplink_free_us.div_ceil(1000))).filter(|&at| at > self.now),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("the node always has a timer")
    }

    /// Advances the clock to the next thing that happens, if that is no later than `limit`, and
    /// lets everything due then happen. Returns false (with the clock at `limit`) otherwise.
    pub(crate) fn step(&mut self, limit: Millis) -> bool {
        let next = self.next_due();
        if next > limit {
            self.now = self.now.max(limit);
            return false;
        }
        self.now = self.now.max(next);
        let now = self.now;
        while let Some(&(_, event)) = self.events.front().filter(|e| e.0 <= now) {
            self.events.pop_front();
            self.event(event);
        }
        self.store_answers();
        for (dir, read) in self.line.take_due(now) {
            match dir {
                Dir::ToNode => self.node_bytes(&read),
                Dir::ToGateway => {
                    self.session.handle_bytes(now, wall(now), &read);
                    self.flush_gateway();
                }
            }
        }
        if self.next_sample.is_some_and(|at| at <= now) {
            self.sample();
        }
        if self.node.poll_timeout().is_some_and(|at| at <= now) {
            self.node.handle_timeout(now);
        }
        self.flush_node();
        true
    }

    /// Runs until `until` (inclusive), or until a rule is broken.
    pub(crate) fn run_until(&mut self, until: Millis) {
        while self.violation.is_none() && self.step(until) {}
    }

    /// Runs until `pred` holds (checked after every step), at most until `until`. Returns whether
    /// it held.
    pub(crate) fn run_until_that(
        &mut self,
        until: Millis,
        mut pred: impl FnMut(&Pair) -> bool,
    ) -> bool {
        while self.violation.is_none() {
            if pred(self) {
                return true;
            }
            if !self.step(until) {
                return pred(self);
            }
        }
        false
    }

    /// Everything calm and delivered: nothing happens any more, the node holds nothing, nothing
    /// is on the line or in the store's queue.
    pub(crate) fn is_settled(&self) -> bool {
        self.now >= self.calm_at
            && self.next_sample.is_none()
            && self.node.held() == 0
            && self.line.is_empty()
            && self.store.is_idle()
    }

    /// Runs past the calm moment until everything is delivered, for at most `patience_ms` after
    /// it. Returns whether it settled.
    pub(crate) fn settle(&mut self, patience_ms: u64) -> bool {
        let until = self.calm_at + patience_ms;
        self.run_until_that(until, Pair::is_settled)
    }

    fn event(&mut self, event: Event) {
        if self.trace {
            eprintln!("{:>7} {event:?}", self.now.as_u64());
        }
        match event {
            Event::GatewayRestart { durable } => {
                self.tally.gateway_restarts += 1;
                add_counters(&mut self.tally.retired_port, self.session.counters());
                self.store.crash(durable);
                self.session = PortSession::new(
                    PORT,
                    self.setup.max_frames_per_sec,
                    gateway_secrets(self.now),
                    self.now,
                );
            }
            Event::PortReset => {
                self.tally.port_resets += 1;
                self.session.handle_port_reset();
            }
            Event::NodeRestart => {
                let held = self.held();
                let counters = self.node.counters();
                let boot = self.boot();
                boot.held_at_restart = held;
                boot.counters = counters;
                let n = self.boots.len() as u32;
                let boot_id = self
                    .setup
                    .first_boot_id
                    .wrapping_add(n.wrapping_mul(0x9E37_79B9));
                if !self.setup.late_frames_across_reboots {
                    self.line.discard(Dir::ToGateway);
                }
                self.node = Self::boot_node(&self.setup, boot_id, self.now);
                self.boots.push(BootRecord::new(boot_id));
                // A node samples as soon as it is up.
                self.next_sample = (self.now < self.setup.sampling_until).then_some(self.now);
            }
        }
    }

    /// The seqs the node holds.
    fn held(&self) -> BTreeSet<u32> {
        self.node.oldest_held().map_or(BTreeSet::new(), |oldest| {
            (oldest..self.node.next_seq()).collect()
        })
    }

    fn sample(&mut self) {
        let now = self.now;
        let boot_id = self.boot().boot_id;
        let seq = self.node.next_seq();
        let readings = readings(boot_id, seq, now);
        let (oldest, dropped) = (
            self.node.oldest_held(),
            self.node.counters().dropped_samples,
        );
        let got = self.node.handle_sample(now, readings.clone());
        if got != seq {
            self.violated(format!("the node numbered sample {seq} as {got}"));
        }
        match self.node.counters().dropped_samples - dropped {
            0 => {}
            1 => {
                let pushed_out = oldest.expect("a full ring holds something");
                self.boot().dropped.insert(pushed_out);
            }
            n => self.violated(format!("one sample pushed {n} out of the ring")),
        }
        self.boot().produced.push(Produced {
            taken_at: now,
            readings: readings.to_vec(),
        });
        let next = now + self.setup.sample_every_ms;
        self.next_sample = (next < self.setup.sampling_until).then_some(next);
    }

    /// Bytes for the node. Whatever leaves its ring now was acknowledged: it must be on disk.
    fn node_bytes(&mut self, bytes: &[u8]) {
        let oldest = self.node.oldest_held();
        self.node.handle_bytes(self.now, bytes);
        let Some(oldest) = oldest else { return };
        let now_oldest = self.node.oldest_held().unwrap_or(self.node.next_seq());
        if now_oldest == oldest {
            return;
        }
        let boot_id = self.boot().boot_id;
        let node_id = self.store.node_id(&UID);
        for seq in oldest..now_oldest {
            self.boot().acked.insert(seq);
            if !node_id.is_some_and(|id| self.store.holds(id, boot_id, seq)) {
                self.violated(format!(
                    "the node was told sample {seq} of boot {boot_id:#010x} is committed, and \
                     dropped it, but the store does not hold it"
                ));
            }
        }
    }

    fn send(&mut self, dir: Dir, frame: &[u8]) {
        self.send_until(dir, frame, self.now);
    }

    /// Sends a frame that is on the line until `last_byte_at` (later than now on a line with a
    /// capacity): it arrives `LATENCY_MS` after that.
    fn send_until(&mut self, dir: Dir, frame: &[u8], last_byte_at: Millis) {
        let mut decoder = FrameDecoder::new();
        for message in frame.iter().filter_map(|&b| decoder.push(b)) {
            match message.as_ref().map(Received::message) {
                Ok(Message::Hello(_)) => self.tally.hellos += 1,
                Ok(Message::Accept(_)) => self.tally.accepts += 1,
                Ok(Message::Ack(_)) => self.tally.acks += 1,
                Ok(Message::Telemetry(_)) => self.tally.telemetry += 1,
                Ok(Message::Health(_)) => self.tally.health += 1,
                Ok(_) => {}
                Err(e) => self.violated(format!("{dir:?}: an end sent a bad frame: {e}")),
            }
        }
        let fault = if self.now < self.setup.faults_until {
            self.faults.fault(self.now, dir)
        } else {
            Fault::Deliver
        };
        if self.trace {
            let mut decoder = FrameDecoder::new();
            for message in frame.iter().filter_map(|&b| decoder.push(b)).flatten() {
                eprintln!("{:>7} {dir:?} {message:?} {fault:?}", self.now.as_u64());
            }
        }
        self.line.send(last_byte_at, dir, frame, fault);
    }

    fn flush_node(&mut self) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let now_us = self.now.as_u64() * 1000;
        while self.uplink_free_us <= now_us {
            let Some(len) = self.node.poll_transmit(&mut buf) else {
                break;
            };
            let Some(bytes_per_sec) = self.setup.line_bytes_per_sec else {
                self.send(Dir::ToGateway, &buf[..len]);
                continue;
            };
            // Back to back when the line freed less than a millisecond ago (the clock steps in
            // whole milliseconds), from now when it has been idle.
            let start = if self.uplink_free_us + 1000 > now_us {
                self.uplink_free_us
            } else {
                now_us
            };
            self.uplink_free_us = start + len as u64 * 1_000_000 / bytes_per_sec;
            let last_byte_at = Millis(self.uplink_free_us.div_ceil(1000)).max(self.now);
            self.send_until(Dir::ToGateway, &buf[..len], last_byte_at);
        }
    }

    /// The port task's loop body: actions to the store, frames to the line.
    fn flush_gateway(&mut self) {
        while let Some(action) = self.session.poll_action() {
            self.store.submit(self.now, action);
        }
        let mut buf = [0u8; MAX_FRAME_LEN];
        while let Some(len) = self.session.poll_transmit(&mut buf) {
            self.send(Dir::ToNode, &buf[..len]);
        }
    }

    /// The store's answers, handed to the session as `io::serial::handle_reply` does.
    fn store_answers(&mut self) {
        let now = self.now;
        let until = self.setup.faults_until;
        let faults = &mut self.faults;
        let replies = self
            .store
            .poll(now, &mut |at| at < until && faults.commit_fails(at));
        for reply in replies {
            if self.trace {
                eprintln!("{:>7} store: {reply:?}", now.as_u64());
            }
            match reply {
                Reply::Registered { hello, result } => match result {
                    Ok(registered) => self.session.handle_registered(&hello, registered),
                    Err(()) => self.session.handle_register_failed(),
                },
                Reply::Committed {
                    node_id,
                    boot_id,
                    result,
                } => match result {
                    Ok((upto, duplicates)) => {
                        self.session
                            .handle_committed(node_id, boot_id, upto, duplicates);
                    }
                    Err(()) => self.session.handle_commit_failed(node_id, boot_id),
                },
            }
        }
        self.flush_gateway();
    }

    /// Judges the run. Call once it settled: every rule below is about the end state, besides
    /// those checked as the run went (an ACK for a sample the store does not hold, a bad frame).
    ///
    /// Per boot of the node, with `stored` its samples in the store in commit order:
    /// 1. `stored` is strictly increasing: nothing committed twice, nothing out of order;
    /// 2. each stored sample is one the node produced in that boot, with the same readings,
    ///    stamped no earlier than it was taken and no later than the line can carry a frame;
    /// 3. every sample the node dropped on an ACK or ACCEPT is stored;
    /// 4. a produced sample that is not stored was pushed out of the node's full ring, or, above
    ///    the last stored one of a boot that ended in a restart, held by the node when it
    ///    rebooted (lost by restart). For the last boot that means: everything it produced is
    ///    stored but what the node itself counted as dropped;
    /// 5. the store's recorded gaps account exactly for the missing samples below the last one
    ///    stored;
    /// 6. the node's own count of dropped samples matches what the pair saw it push out.
    pub(crate) fn check(&mut self) -> Result<(), String> {
        if let Some(violation) = &self.violation {
            return Err(violation.clone());
        }
        let node_id = self.store.node_id(&UID);
        for &(id, boot_id) in self.store.samples.keys() {
            if Some(id) != node_id || !self.boots.iter().any(|b| b.boot_id == boot_id) {
                return Err(format!(
                    "the store holds samples of an unknown boot {boot_id:#x} of node {id}"
                ));
            }
        }
        let counters = self.node.counters();
        self.boot().counters = counters;
        let last_boot = self.boots.len() - 1;
        let (mut lost_by_restart, mut dropped) = (0, 0);
        for (i, boot) in self.boots.iter().enumerate() {
            let name = format!("boot {i} ({:#010x})", boot.boot_id);
            let stored = node_id
                .and_then(|id| self.store.samples.get(&(id, boot.boot_id)))
                .map_or(&[][..], Vec::as_slice);
            let seqs: Vec<u32> = stored.iter().map(|s| s.seq).collect();
            // 1.
            if !seqs.windows(2).all(|w| w[0] < w[1]) {
                return Err(format!("{name}: committed twice or out of order: {seqs:?}"));
            }
            // 2.
            for s in stored {
                let Some(p) = (s.seq as usize)
                    .checked_sub(1)
                    .and_then(|i| boot.produced.get(i))
                else {
                    return Err(format!(
                        "{name}: the store holds seq {} the node never produced",
                        s.seq
                    ));
                };
                if s.readings != p.readings {
                    return Err(format!(
                        "{name}: seq {} stored as {:?}, produced as {:?}",
                        s.seq, s.readings, p.readings
                    ));
                }
                let transit = s.ts_ms - wall(p.taken_at);
                if !(0..=MAX_TRANSIT_MS as i64).contains(&transit) {
                    return Err(format!(
                        "{name}: seq {} stamped {transit} ms after it was taken",
                        s.seq
                    ));
                }
            }
            // 3.
            let stored_set: BTreeSet<u32> = seqs.iter().copied().collect();
            if let Some(seq) = boot.acked.difference(&stored_set).next() {
                return Err(format!(
                    "{name}: seq {seq} was acknowledged but is not stored"
                ));
            }
            // 4.
            let last_stored = seqs.last().copied().unwrap_or(0);
            let produced = boot.produced.len() as u32;
            let missing: Vec<u32> = (1..=produced).filter(|s| !stored_set.contains(s)).collect();
            for &seq in &missing {
                let by_restart =
                    i != last_boot && seq > last_stored && boot.held_at_restart.contains(&seq);
                if !boot.dropped.contains(&seq) && !by_restart {
                    return Err(format!(
                        "{name}: seq {seq} of {produced} is not stored, and the node neither \
                         dropped it nor rebooted holding it; stored: {seqs:?}, dropped: {:?}",
                        boot.dropped
                    ));
                }
                if !boot.dropped.contains(&seq) {
                    lost_by_restart += 1;
                }
            }
            // 5.
            let gaps = missing.iter().filter(|&&s| s < last_stored).count() as u32;
            let recorded = node_id
                .and_then(|id| self.store.lost.get(&(id, boot.boot_id)))
                .copied()
                .unwrap_or(0);
            if recorded != gaps {
                return Err(format!(
                    "{name}: the store recorded {recorded} samples lost, {gaps} are missing"
                ));
            }
            // 6.
            if boot.counters.dropped_samples as usize != boot.dropped.len() {
                return Err(format!(
                    "{name}: the node counted {} dropped samples, the pair saw {}",
                    boot.counters.dropped_samples,
                    boot.dropped.len()
                ));
            }
            dropped += boot.dropped.len() as u64;
        }
        self.tally.lost_by_restart = lost_by_restart;
        self.tally.dropped = dropped;
        Ok(())
    }
}

impl Pair {
    /// The gateway's port counters, summed over every `PortSession` of the run.
    pub(crate) fn port_counters(&self) -> PortCounters {
        let mut sum = self.tally.retired_port;
        add_counters(&mut sum, self.session.counters());
        sum
    }

    /// The first rule broken while running, if any.
    pub(crate) fn violation(&self) -> Option<&str> {
        self.violation.as_deref()
    }

    /// Makes `event` happen now.
    pub(crate) fn happen(&mut self, event: Event) {
        self.event(event);
        self.calm_at = self.calm_at.max(self.now);
    }

    /// The current boot's record.
    pub(crate) fn current_boot(&self) -> &BootRecord {
        self.boots.last().expect("there is always a boot")
    }
}

impl BootRecord {
    fn new(boot_id: u32) -> Self {
        BootRecord {
            boot_id,
            produced: Vec::new(),
            dropped: BTreeSet::new(),
            acked: BTreeSet::new(),
            held_at_restart: BTreeSet::new(),
            counters: NodeCounters::default(),
        }
    }
}

fn add_counters(sum: &mut PortCounters, c: PortCounters) {
    sum.frames += c.frames;
    sum.frame_errors += c.frame_errors;
    sum.discarded_bytes += c.discarded_bytes;
    sum.rate_limited += c.rate_limited;
    sum.duplicates += c.duplicates;
    sum.reordered += c.reordered;
    sum.nacks += c.nacks;
    sum.refused += c.refused;
}
