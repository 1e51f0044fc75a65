//! One node's transfer: the gateway's side of `docs/ota-design.md` §4.3–4.5.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use outpost_proto::{
    ChunkSize, FwVersion, ImageTag, Millis, OtaControl, OtaOp, OtaPhase, OtaRefusal, OtaStatus,
    RevertCause,
};
use serde::Serialize;

use super::image::{ChunkRef, Image, offer_line_len};
use super::pacer::Pacer;

/// The least and the most the STATUS timeout is: above the node's worst sector write (a 4 KiB
/// erase takes up to 400 ms on the W25Q16JV, so 300 ms plus the round trip covers a slow one
/// after a backoff), and short enough that a lost STATUS costs little.
pub const RTO_MIN: Duration = Duration::from_millis(300);
pub const RTO_MAX: Duration = Duration::from_secs(2);
/// The timeout before any round trip was measured (RFC 6298 §2.1).
pub const RTO_INITIAL: Duration = Duration::from_secs(1);
/// QUERYs in a row with no STATUS before the transfer pauses (`TransferEvent::Stalled`).
pub const MAX_UNANSWERED_QUERIES: u32 = 5;
/// How often a paused transfer, or one waiting for a node that installs, asks the node where it
/// is: rarely, since nothing is lost meanwhile, but so that a live node with a run of lost
/// STATUS frames is heard again without waiting for a new session.
pub const SLOW_QUERY_INTERVAL: Duration = Duration::from_secs(5);

/// Something to send the node in the small, priority queue: before any chunk, like an ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// An OTA_OFFER (a bulk frame): seal `Bulk::Offer(image.offer(chunk))`.
    Offer { image: ImageTag, chunk: ChunkSize },
    /// An OTA_CONTROL: seal `Message::OtaControl(control)`.
    Control(OtaControl),
}

/// How a transfer ended (serialized as its name; [`Outcome::detail`] names the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The node raised its floor to the image's and forgot the transfer: done.
    Finalized,
    /// Told to stop: the node forgot the image, or it was installing or on trial and was left to
    /// confirm or revert by itself.
    Aborted,
    /// The node refused the image (`None`: a refusal code this gateway does not know). Never
    /// retried by the transfer itself.
    Refused(Option<OtaRefusal>),
    /// The new image failed its trial; the node runs the previous one.
    Reverted(RevertCause),
    /// After it reported installing, trial or confirmed, the node no longer holds the image
    /// (its revert report was lost, or it was reflashed): its HEALTH's reset reason tells.
    Lost,
}

impl Outcome {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Finalized => "finalized",
            Outcome::Aborted => "aborted",
            Outcome::Refused(_) => "refused",
            Outcome::Reverted(_) => "reverted",
            Outcome::Lost => "lost",
        }
    }

    /// The refusal's or the revert cause's name.
    #[must_use]
    pub fn detail(self) -> Option<&'static str> {
        match self {
            Outcome::Refused(reason) => Some(reason.map_or("unknown", OtaRefusal::as_str)),
            Outcome::Reverted(cause) => Some(cause.as_str()),
            _ => None,
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What happened, for the journal, the rollout and the progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferEvent {
    /// An OTA_OFFER went out (`again`: not the transfer's first; the node had lost or never
    /// taken the previous one, or counts in another chunk size).
    Offered {
        chunk: ChunkSize,
        again: bool,
    },
    /// Bytes of the image in the node's flash, of `size`: when it grows, and where a transfer
    /// resumes.
    Progress {
        flashed: u64,
        size: u64,
    },
    /// Phase changes as the node reports them.
    Verified,
    Installing,
    Trial,
    Confirmed,
    /// No STATUS for [`MAX_UNANSWERED_QUERIES`] QUERYs: no chunk goes until the node is heard.
    Stalled {
        queries: u32,
    },
    /// The node was heard again after a stall.
    Resumed,
    /// The transfer ended (see [`Outcome`]).
    Ended(Outcome),
}

/// Where a transfer is, as the page and the API show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Asking the node where it is (a QUERY), before offering anything.
    Probing,
    /// OFFER sent; waiting for the node to take it.
    Offering,
    /// Sending chunks.
    Receiving,
    /// The whole image is in the node's flash and checks out: waiting for `install`.
    Verified,
    /// Told to install: the node drains its samples, resets and swaps.
    Installing,
    /// The new image runs on trial.
    Trial,
    /// The new image confirmed its health: waiting for `finalize`.
    Confirmed,
    Finalizing,
    Aborting,
    Ended,
}

impl Stage {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Probing => "probing",
            Stage::Offering => "offering",
            Stage::Receiving => "receiving",
            Stage::Verified => "verified",
            Stage::Installing => "installing",
            Stage::Trial => "trial",
            Stage::Confirmed => "confirmed",
            Stage::Finalizing => "finalizing",
            Stage::Aborting => "aborting",
            Stage::Ended => "ended",
        }
    }
}

/// Why a request to the transfer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("the transfer ended ({})", .0.as_str())]
    Ended(Outcome),
    #[error("the node has not verified the image")]
    NotVerified,
    #[error("the node has not confirmed the image")]
    NotConfirmed,
}

/// A transfer as the status page and the API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferStatus {
    /// The image's tag (the first bytes of its SHA-256), in hex.
    pub image: String,
    pub version: String,
    pub size: u64,
    pub chunk: usize,
    pub stage: Stage,
    /// The node's phase as it last reported it.
    pub node_phase: Option<&'static str>,
    pub outcome: Option<Outcome>,
    /// The refusal or revert cause, by name.
    pub detail: Option<&'static str>,
    /// Bytes in the node's flash.
    pub flashed: u64,
    /// Chunks the node holds beyond them (in RAM).
    pub held: usize,
    pub link_up: bool,
    pub stalled: bool,
    /// The anti-rollback floor the node last reported.
    pub floor: Option<String>,
    pub chunks_sent: u64,
    /// Of them, sent again (lost on the way, or in flight when the link dropped).
    pub chunks_resent: u64,
    /// Line bytes of the OFFERs and chunks sent.
    pub line_bytes: u64,
    pub offers: u32,
    pub queries: u32,
    pub stalls: u32,
    /// STATUS frames ignored as older than one already taken.
    pub stale_statuses: u64,
    /// The smoothed STATUS round trip and the current timeout.
    pub srtt_ms: Option<u64>,
    pub rto_ms: u64,
}

/// What the transfer works towards; what the node reports is compared with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// The image verified in the node's flash.
    Transfer,
    /// Then installed, with this many seconds to confirm.
    Install {
        confirm_within_s: u16,
    },
    Finalize,
    Abort,
}

/// What the node holds, from the latest STATUS taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeView {
    /// Not heard since the transfer started or the link came up.
    Unknown,
    /// Idle, on another image, or a QUERY about ours was answered `unknown-image`.
    NotHeld,
    /// Receiving this image, counting in another chunk size than this transfer's.
    OtherUnit,
    /// This image, in this phase (Receiving: in this transfer's chunk size).
    Holds(OtaPhase),
}

/// A STATUS read against this transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    View(NodeView),
    End(Outcome),
}

impl Report {
    /// How far along it is: a STATUS ranked below one already taken is stale.
    fn rank(self) -> u8 {
        match self {
            Report::View(NodeView::Unknown | NodeView::NotHeld | NodeView::OtherUnit) => 0,
            Report::View(NodeView::Holds(phase)) => match phase {
                OtaPhase::Receiving => 1,
                OtaPhase::Verified => 2,
                OtaPhase::Installing => 3,
                OtaPhase::Trial => 4,
                OtaPhase::Confirmed => 5,
                OtaPhase::Idle | OtaPhase::Reverted | OtaPhase::Refused => 6,
            },
            Report::End(_) => 6,
        }
    }
}

/// One chunk sent and not yet in the node's flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    /// Transmission number of the latest send: later sends have larger ones.
    xmit: u64,
    /// Transmission number of the first send.
    first_xmit: u64,
    at: Millis,
    times: u32,
    /// A STATUS showed it missing: send it again before anything new.
    lost: bool,
}

/// The STATUS timeout, from STATUS round trips (RFC 6298 in whole milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rtt {
    srtt_ms: Option<u64>,
    rttvar_ms: u64,
    /// Timeouts in a row since the last measure or progress: each doubles the timeout.
    backoff: u32,
}

impl Rtt {
    const MIN_MS: u64 = RTO_MIN.as_millis() as u64;
    const MAX_MS: u64 = RTO_MAX.as_millis() as u64;

    fn new() -> Rtt {
        Rtt {
            srtt_ms: None,
            rttvar_ms: 0,
            backoff: 0,
        }
    }

    /// A round trip measured on something sent once (Karn's rule).
    fn measured(&mut self, rtt_ms: u64) {
        let (srtt, rttvar) = match self.srtt_ms {
            None => (rtt_ms, rtt_ms / 2),
            Some(srtt) => (
                (7 * srtt + rtt_ms) / 8,
                (3 * self.rttvar_ms + srtt.abs_diff(rtt_ms)) / 4,
            ),
        };
        self.srtt_ms = Some(srtt);
        self.rttvar_ms = rttvar;
        self.backoff = 0;
    }

    /// How long a STATUS takes to reflect what was sent: the estimate, without backoff.
    fn estimate_ms(&self) -> u64 {
        match self.srtt_ms {
            Some(srtt) => (srtt + (4 * self.rttvar_ms).max(1)).clamp(Self::MIN_MS, Self::MAX_MS),
            None => RTO_INITIAL.as_millis() as u64,
        }
    }

    /// The timeout now: the estimate, doubled per timeout in a row.
    fn rto_ms(&self) -> u64 {
        (self.estimate_ms() << self.backoff.min(8)).min(Self::MAX_MS)
    }

    fn backed_off(&mut self) {
        self.backoff = self.backoff.saturating_add(1);
    }

    fn settle(&mut self) {
        self.backoff = 0;
    }
}

/// How the transfer waits for the node now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Nothing asked of the node (verified or confirmed, waiting for the caller), the link is
    /// down, or the transfer ended.
    Idle,
    /// Progress expected within the STATUS timeout, else a QUERY.
    Fast,
    /// Stalled, or the node installs or is on trial: a QUERY every [`SLOW_QUERY_INTERVAL`].
    Slow,
}

/// What was counted, for the status snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    chunks_sent: u64,
    chunks_resent: u64,
    line_bytes: u64,
    offers: u32,
    queries: u32,
    stalls: u32,
    stale: u64,
}

/// The gateway's side of one node's firmware transfer.
///
/// Design: owns what the node last said it holds (in flash, in RAM, its credit), which chunks
/// went out when, the STATUS timeout and the pacer. It never seals, frames or reads a clock: it
/// says *what* to send ([`Transfer::poll_control`], [`Transfer::poll_chunk`]) and the port's
/// session seals it with the session's counter. The node is the source of truth: nothing here
/// survives a gateway restart, and a new transfer resumes from the node's next STATUS.
#[derive(Debug)]
pub struct Transfer {
    image: Image,
    chunk: ChunkSize,
    /// Chunks in the image, in this transfer's chunk size.
    total: u16,
    pacer: Pacer,
    goal: Goal,
    node: NodeView,
    outcome: Option<Outcome>,
    link_up: bool,
    stalled: bool,
    /// A stall ended by a new session: say `Resumed` at the node's next STATUS.
    resume_pending: bool,
    /// The next STATUS is taken whatever it says: the first after the start, a new session or
    /// an OFFER.
    resync: bool,
    /// The furthest the node reported since the last resync (rank and bytes in flash), and when
    /// that was taken.
    best: (u8, u64),
    best_at: Millis,
    /// The phase last reported as an event.
    reported: Option<OtaPhase>,
    /// The full image's progress went out (once, at the first `verified`).
    reported_whole: bool,
    /// The node reported installing, trial or confirmed for this image.
    seen_install: bool,
    floor: Option<FwVersion>,
    /// In this transfer's chunk size: every chunk below `flashed` is in flash; the node takes
    /// chunks below `credit`; `held` are the chunks at or above `flashed` it holds in RAM.
    flashed: u16,
    credit: u16,
    held: BTreeSet<u16>,
    sent: BTreeMap<u16, Sent>,
    xmit: u64,
    rtt: Rtt,
    /// QUERYs sent since the last STATUS, and when the latest went out.
    queries_out: u32,
    query_at: Option<Millis>,
    /// When the transfer last sent something or the node last made progress: timeouts count
    /// from here.
    active_at: Millis,
    offer_at: Option<Millis>,
    /// When the current goal's control (INSTALL, FINALIZE, ABORT) last went out.
    op_at: Option<Millis>,
    controls: VecDeque<Control>,
    events: VecDeque<TransferEvent>,
    counters: Counters,
}

impl Transfer {
    /// Starts sending `image` to the node on this port in chunks of `chunk`, paced by `pacer`.
    /// The node is attached (its session is open). The transfer first asks the node where it is
    /// (QUERY); when the session already holds the node's latest STATUS (the one it sends at
    /// ACCEPT), hand it in with [`Transfer::handle_status`] before polling and the question is
    /// not asked. A node that holds the image resumes where it is; one that does not is offered
    /// it.
    #[must_use]
    pub fn start(now: Millis, image: Image, chunk: ChunkSize, pacer: Pacer) -> Transfer {
        let total = image.chunks(chunk);
        let mut transfer = Transfer {
            image,
            chunk,
            total,
            pacer,
            goal: Goal::Transfer,
            node: NodeView::Unknown,
            outcome: None,
            link_up: true,
            stalled: false,
            resume_pending: false,
            resync: true,
            best: (0, 0),
            best_at: now,
            reported: None,
            reported_whole: false,
            seen_install: false,
            floor: None,
            flashed: 0,
            credit: 0,
            held: BTreeSet::new(),
            sent: BTreeMap::new(),
            xmit: 0,
            rtt: Rtt::new(),
            queries_out: 0,
            query_at: None,
            active_at: now,
            offer_at: None,
            op_at: None,
            controls: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        };
        transfer.queue(Control::Control(transfer.control(OtaOp::Query, 0)));
        transfer
    }

    #[must_use]
    pub fn image(&self) -> &Image {
        &self.image
    }

    #[must_use]
    pub fn chunk_size(&self) -> ChunkSize {
        self.chunk
    }

    #[must_use]
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    #[must_use]
    pub fn is_ended(&self) -> bool {
        self.outcome.is_some()
    }

    /// Bytes of the image in the node's flash, as it last reported.
    #[must_use]
    pub fn flashed_bytes(&self) -> u64 {
        (usize::from(self.flashed) * self.chunk.bytes()).min(self.image.len()) as u64
    }

    #[must_use]
    pub fn stage(&self) -> Stage {
        if self.outcome.is_some() {
            return Stage::Ended;
        }
        match (self.goal, self.node) {
            (Goal::Abort, _) => Stage::Aborting,
            (Goal::Finalize, _) => Stage::Finalizing,
            (_, NodeView::Holds(OtaPhase::Receiving)) => Stage::Receiving,
            (Goal::Install { .. }, NodeView::Holds(OtaPhase::Verified))
            | (_, NodeView::Holds(OtaPhase::Installing)) => Stage::Installing,
            (_, NodeView::Holds(OtaPhase::Verified)) => Stage::Verified,
            (_, NodeView::Holds(OtaPhase::Trial)) => Stage::Trial,
            (_, NodeView::Holds(OtaPhase::Confirmed)) => Stage::Confirmed,
            _ if self.offer_at.is_some() => Stage::Offering,
            _ => Stage::Probing,
        }
    }

    /// The transfer as the status page shows it.
    #[must_use]
    pub fn status(&self) -> TransferStatus {
        let tag = self.image.tag().0;
        TransferStatus {
            image: tag.iter().map(|b| format!("{b:02x}")).collect(),
            version: self.image.version().to_string(),
            size: self.image.len() as u64,
            chunk: self.chunk.bytes(),
            stage: self.stage(),
            node_phase: match self.node {
                NodeView::Holds(phase) => Some(phase.as_str()),
                NodeView::NotHeld => Some("idle"),
                NodeView::OtherUnit => Some("receiving"),
                NodeView::Unknown => None,
            },
            outcome: self.outcome,
            detail: self.outcome.and_then(Outcome::detail),
            flashed: self.flashed_bytes(),
            held: self.held.len(),
            link_up: self.link_up,
            stalled: self.stalled,
            floor: self.floor.map(|f| f.to_string()),
            chunks_sent: self.counters.chunks_sent,
            chunks_resent: self.counters.chunks_resent,
            line_bytes: self.counters.line_bytes,
            offers: self.counters.offers,
            queries: self.counters.queries,
            stalls: self.counters.stalls,
            stale_statuses: self.counters.stale,
            srtt_ms: self.rtt.srtt_ms,
            rto_ms: self.rtt.rto_ms(),
        }
    }

    // ---- inputs -------------------------------------------------------------------------

    /// An OTA_STATUS from the node (opened under its session).
    pub fn handle_status(&mut self, now: Millis, status: &OtaStatus) {
        if self.outcome.is_some() {
            return;
        }
        if !self.link_up {
            // A sealed frame of the node's session opened: the link is up whatever was said.
            self.handle_link_up(now);
        }
        let report = self.read(status);
        let here = (report.rank(), self.flashed_of(status));
        if !self.resync && self.is_stale(report, here) {
            self.counters.stale += 1;
            return;
        }
        // The node answered: whatever QUERY is waiting is moot. A STATUS that came after a
        // QUERY is timed from the QUERY (when it was the only one), never from a chunk: the
        // chunk's own report may have been lost, and the wait would count in (Karn's rule).
        let asked = self.queries_out > 0;
        if self.queries_out == 1
            && let Some(at) = self.query_at
        {
            self.rtt.measured(now.saturating_since(at));
        }
        self.queries_out = 0;
        self.controls
            .retain(|c| !matches!(c, Control::Control(c) if c.op == OtaOp::Query));
        if self.stalled || self.resume_pending {
            self.stalled = false;
            self.resume_pending = false;
            self.events.push_back(TransferEvent::Resumed);
        }
        self.floor = Some(status.floor);
        let resync = std::mem::take(&mut self.resync);
        if resync || here != self.best {
            self.best = here;
            self.best_at = now;
        }
        let progress = match report {
            Report::End(outcome) => {
                self.end(outcome);
                return;
            }
            Report::View(view) => self.take(now, view, status, resync, asked),
        };
        if progress {
            self.active_at = now;
            self.rtt.settle();
        }
    }

    /// The STATUS timeout or the pacer's time came: call when [`Transfer::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Millis) {
        let Some(deadline) = self.deadline() else {
            return;
        };
        if now < deadline {
            return;
        }
        match self.wait() {
            Wait::Idle => {}
            Wait::Fast if self.queries_out >= MAX_UNANSWERED_QUERIES => {
                self.stalled = true;
                self.counters.stalls += 1;
                self.events.push_back(TransferEvent::Stalled {
                    queries: self.queries_out,
                });
                self.active_at = now;
            }
            Wait::Fast => {
                self.rtt.backed_off();
                self.query(now);
            }
            Wait::Slow => self.query(now),
        }
    }

    /// The node's session ended (the port closed, the node went quiet, a new HELLO): nothing
    /// is sent until it is back.
    pub fn handle_link_lost(&mut self, _now: Millis) {
        self.link_up = false;
        self.controls.clear();
    }

    /// The node opened a new session (it re-handshook: after a reset, a link drop, or the
    /// gateway's restart). Whatever was in flight is gone (it was sealed for the old session);
    /// the node's next STATUS (it sends one at ACCEPT) says where it is, and the transfer
    /// resumes from there: at `flashed`, skipping what `have` shows.
    pub fn handle_link_up(&mut self, now: Millis) {
        self.link_up = true;
        self.resync = true;
        self.node = match self.node {
            NodeView::Holds(phase) => NodeView::Holds(phase),
            _ => NodeView::Unknown,
        };
        self.sent.clear();
        self.held.clear();
        self.controls.clear();
        self.queries_out = 0;
        self.query_at = None;
        if self.stalled {
            self.stalled = false;
            self.resume_pending = true;
        }
        self.active_at = now;
    }

    /// Install the verified image: the node checks it once more, marks it for a trial boot and
    /// resets into it; the new image has `confirm_within_s` seconds to confirm its health.
    pub fn install(&mut self, confirm_within_s: u16) -> Result<(), TransferError> {
        if let Some(outcome) = self.outcome {
            return Err(TransferError::Ended(outcome));
        }
        if !matches!(self.goal, Goal::Transfer | Goal::Install { .. })
            || self.node != NodeView::Holds(OtaPhase::Verified)
        {
            return Err(TransferError::NotVerified);
        }
        self.goal = Goal::Install { confirm_within_s };
        self.op_at = None;
        self.queue(Control::Control(
            self.control(OtaOp::Install, confirm_within_s),
        ));
        Ok(())
    }

    /// The rollout passed: the node raises its floor to the image's and forgets the transfer.
    pub fn finalize(&mut self) -> Result<(), TransferError> {
        if let Some(outcome) = self.outcome {
            return Err(TransferError::Ended(outcome));
        }
        if self.node != NodeView::Holds(OtaPhase::Confirmed) || self.goal == Goal::Abort {
            return Err(TransferError::NotConfirmed);
        }
        self.goal = Goal::Finalize;
        self.op_at = None;
        self.queue(Control::Control(self.control(OtaOp::Finalize, 0)));
        Ok(())
    }

    /// Stop: the node is told to forget the image. A node installing, on trial or confirmed
    /// cannot forget it (the node refuses ABORT then): it is left to confirm or revert by
    /// itself and the transfer ends at once; so does one known not to hold the image.
    pub fn abort(&mut self) -> Result<(), TransferError> {
        if let Some(outcome) = self.outcome {
            return Err(TransferError::Ended(outcome));
        }
        match self.node {
            NodeView::NotHeld
            | NodeView::Holds(OtaPhase::Installing | OtaPhase::Trial | OtaPhase::Confirmed) => {
                self.end(Outcome::Aborted);
            }
            _ => {
                self.goal = Goal::Abort;
                self.op_at = None;
                self.controls.clear();
                self.queue(Control::Control(self.control(OtaOp::Abort, 0)));
            }
        }
        Ok(())
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next OFFER or OTA_CONTROL to seal, in the port's small queue, before any chunk.
    pub fn poll_control(&mut self, now: Millis) -> Option<Control> {
        if !self.link_up || self.outcome.is_some() {
            return None;
        }
        let control = self.controls.pop_front()?;
        self.active_at = now;
        match control {
            Control::Offer { chunk, .. } => {
                let again = self.counters.offers > 0;
                self.counters.offers += 1;
                let line = offer_line_len(self.image.manifest().len());
                self.counters.line_bytes += line as u64;
                self.pacer.charge(now, line);
                self.offer_at = Some(now);
                // What the node said before it took this offer no longer counts.
                self.resync = true;
                self.sent.clear();
                self.held.clear();
                self.events
                    .push_back(TransferEvent::Offered { chunk, again });
            }
            Control::Control(c) if c.op == OtaOp::Query => {
                self.counters.queries += 1;
                self.queries_out += 1;
                self.query_at = Some(now);
            }
            Control::Control(_) => self.op_at = Some(now),
        }
        Some(control)
    }

    /// The next chunk to send, if the node's credit, its holes and the pacer allow one now:
    /// first a chunk a STATUS showed missing (the lowest), then the next one never sent, never
    /// one the node holds, at or beyond its credit, or beyond the image. The adapter seals
    /// `Bulk::Chunk(image.chunk(chunk_ref))` and hands it to the port at once.
    pub fn poll_chunk(&mut self, now: Millis) -> Option<ChunkRef> {
        let index = self.next_chunk()?;
        let chunk_ref = self.image.chunk_ref(self.chunk, index)?;
        if !self.pacer.try_send(now, chunk_ref.line_len()) {
            return None;
        }
        self.xmit += 1;
        let sent = self.sent.entry(index).or_insert(Sent {
            xmit: 0,
            first_xmit: self.xmit,
            at: now,
            times: 0,
            lost: false,
        });
        sent.xmit = self.xmit;
        sent.at = now;
        sent.times += 1;
        sent.lost = false;
        if sent.times > 1 {
            self.counters.chunks_resent += 1;
        }
        self.counters.chunks_sent += 1;
        self.counters.line_bytes += chunk_ref.line_len() as u64;
        self.active_at = now;
        Some(chunk_ref)
    }

    /// When to call [`Transfer::handle_timeout`] (a STATUS timeout) or to ask
    /// [`Transfer::poll_chunk`] again (the pacer's bucket is full enough), whichever is first.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        let paced = self.next_chunk().map(|_| self.pacer.ready_at());
        match (self.deadline(), paced) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll_event(&mut self) -> Option<TransferEvent> {
        self.events.pop_front()
    }

    // ---- the rules ----------------------------------------------------------------------

    fn control(&self, op: OtaOp, arg: u16) -> OtaControl {
        OtaControl {
            image: self.image.tag(),
            op,
            arg,
        }
    }

    fn queue(&mut self, control: Control) {
        if !self.controls.contains(&control) {
            self.controls.push_back(control);
        }
    }

    fn query(&mut self, now: Millis) {
        self.active_at = now;
        self.queue(Control::Control(self.control(OtaOp::Query, 0)));
    }

    fn end(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
        self.controls.clear();
        self.events.push_back(TransferEvent::Ended(outcome));
    }

    /// What a STATUS says about this transfer's image.
    fn read(&self, status: &OtaStatus) -> Report {
        if status.image != self.image.tag() {
            return Report::View(NodeView::NotHeld);
        }
        match status.phase {
            OtaPhase::Idle => Report::View(NodeView::NotHeld),
            OtaPhase::Receiving if status.chunk != self.chunk => Report::View(NodeView::OtherUnit),
            OtaPhase::Refused => match OtaRefusal::from_code(status.detail) {
                // The answer to a control for an image the node does not hold: not a refusal of
                // the image.
                Some(OtaRefusal::UnknownImage) => Report::View(NodeView::NotHeld),
                reason => Report::End(Outcome::Refused(reason)),
            },
            OtaPhase::Reverted => {
                Report::End(Outcome::Reverted(RevertCause::from_code(status.detail)))
            }
            phase => Report::View(NodeView::Holds(phase)),
        }
    }

    /// Bytes in flash a STATUS reports, whatever chunk size it counts in.
    fn flashed_of(&self, status: &OtaStatus) -> u64 {
        if status.image != self.image.tag() {
            return 0;
        }
        match status.phase {
            OtaPhase::Receiving => {
                (usize::from(status.flashed) * status.chunk.bytes()).min(self.image.len()) as u64
            }
            OtaPhase::Idle | OtaPhase::Refused | OtaPhase::Reverted => 0,
            _ => self.image.len() as u64,
        }
    }

    /// Behind a STATUS already taken since the last resync: a copy, or overtaken on the way. A
    /// node's phase and `flashed` only go back across a reset, which opens a new session first
    /// (a resync). One that did go back otherwise is believed once it says so in answer to a
    /// QUERY sent a STATUS timeout or more after the newer word (no frame is held up that long
    /// on a serial line), so a node that forgot the image mid-session is offered it again.
    ///
    /// The timeout here is the round-trip estimate without its backoff: the QUERY that asks is
    /// itself sent by a timeout, which doubles the backed-off value, so measured against that
    /// the answer to the very QUERY sent to check would never count.
    fn is_stale(&self, report: Report, here: (u8, u64)) -> bool {
        let forgetting = matches!(self.goal, Goal::Finalize | Goal::Abort);
        if forgetting && report == Report::View(NodeView::NotHeld) {
            return false; // what FINALIZE and ABORT lead to
        }
        if here >= self.best {
            return false;
        }
        let asked_later = self
            .query_at
            .is_some_and(|at| at.saturating_since(self.best_at) >= self.rtt.estimate_ms());
        !asked_later
    }

    /// Takes a STATUS that is not stale; whether it shows progress.
    fn take(
        &mut self,
        now: Millis,
        view: NodeView,
        status: &OtaStatus,
        resync: bool,
        asked: bool,
    ) -> bool {
        let before = self.node;
        self.node = view;
        let mut progress = before != view;
        match view {
            NodeView::Unknown => {}
            NodeView::NotHeld => match self.goal {
                Goal::Finalize => self.end(Outcome::Finalized),
                Goal::Abort => self.end(Outcome::Aborted),
                Goal::Transfer | Goal::Install { .. } if self.seen_install => {
                    self.end(Outcome::Lost);
                }
                Goal::Transfer | Goal::Install { .. } => self.offer_if_due(now),
            },
            NodeView::OtherUnit => match self.goal {
                Goal::Abort => self.op_if_due(now, OtaOp::Abort, 0),
                Goal::Finalize => {}
                Goal::Transfer | Goal::Install { .. } => self.offer_if_due(now),
            },
            NodeView::Holds(phase) => {
                // The node holds the image in this chunk size: an OFFER not yet sent is moot.
                self.controls
                    .retain(|c| !matches!(c, Control::Offer { .. }));
                if phase != OtaPhase::Receiving && self.reported != Some(phase) {
                    self.reported = Some(phase);
                    if phase == OtaPhase::Verified && !self.reported_whole {
                        self.reported_whole = true;
                        // The whole image is in the node's flash: the progress bars end full.
                        let size = self.image.len() as u64;
                        self.events.push_back(TransferEvent::Progress {
                            flashed: size,
                            size,
                        });
                    }
                    self.events.push_back(match phase {
                        OtaPhase::Verified => TransferEvent::Verified,
                        OtaPhase::Installing => TransferEvent::Installing,
                        OtaPhase::Trial => TransferEvent::Trial,
                        _ => TransferEvent::Confirmed,
                    });
                }
                if matches!(
                    phase,
                    OtaPhase::Installing | OtaPhase::Trial | OtaPhase::Confirmed
                ) {
                    self.seen_install = true;
                }
                if phase == OtaPhase::Receiving {
                    progress |= self.take_receiving(now, status, resync, asked);
                } else {
                    self.sent.clear();
                    self.held.clear();
                    self.flashed = self.total;
                }
                match (self.goal, phase) {
                    (Goal::Install { confirm_within_s }, OtaPhase::Verified) => {
                        self.op_if_due(now, OtaOp::Install, confirm_within_s);
                    }
                    (Goal::Finalize, OtaPhase::Confirmed) => {
                        self.op_if_due(now, OtaOp::Finalize, 0);
                    }
                    (Goal::Abort, OtaPhase::Receiving | OtaPhase::Verified) => {
                        self.op_if_due(now, OtaOp::Abort, 0);
                    }
                    (Goal::Abort, _) => self.end(Outcome::Aborted),
                    _ => {}
                }
            }
        }
        progress
    }

    /// A Receiving STATUS in this transfer's chunk size: what is in flash, held and lost.
    fn take_receiving(
        &mut self,
        now: Millis,
        status: &OtaStatus,
        resync: bool,
        asked: bool,
    ) -> bool {
        let flashed = status.flashed.min(self.total);
        let credit = status.credit.min(self.total);
        let holds = |i: u16| {
            i.checked_sub(flashed)
                .is_some_and(|bit| bit < 64 && status.have & (1 << bit) != 0)
        };
        let mut progress = false;
        if resync {
            progress = true;
            self.flashed = flashed;
            self.credit = credit;
            self.held.clear();
        } else {
            // The newest chunk this STATUS shows arrived, and a round trip when it was the one
            // that completed a sector (sent once, and no QUERY since: Karn's rule).
            if !asked
                && flashed > self.flashed
                && let Some(newest) = self
                    .sent
                    .range(self.flashed..flashed)
                    .map(|(_, s)| *s)
                    .max_by_key(|s| s.xmit)
                && newest.times == 1
            {
                self.rtt.measured(now.saturating_since(newest.at));
            }
            progress |= flashed > self.flashed;
            self.flashed = self.flashed.max(flashed);
            self.credit = self.credit.max(credit);
        }
        let flashed = self.flashed;
        // The latest transmission the node surely has: anything sent before it and still
        // missing was passed over on the way (a hole, or a resent hole lost again). Of a chunk
        // sent more than once, which copy arrived is not known (Karn's ambiguity): only its
        // first send counts, so a late original that completed a sector does not make the
        // chunks sent between it and its resend look lost.
        let delivered = self
            .sent
            .iter()
            .filter(|&(&i, _)| i < flashed || holds(i))
            .map(|(_, s)| s.first_xmit)
            .max()
            .unwrap_or(0);
        self.sent.retain(|&i, _| i >= flashed);
        self.held.retain(|&i| i >= flashed);
        for i in flashed..self.total.min(flashed.saturating_add(64)) {
            if holds(i) {
                progress |= self.held.insert(i);
            }
        }
        // A tail chunk had its time to arrive and show when it went out a round-trip estimate
        // before (not backed off: a QUERY's answer after timeouts in a row is as fresh as any).
        let reflected = self.rtt.estimate_ms();
        for (i, sent) in &mut self.sent {
            if !self.held.contains(i) && !sent.lost {
                sent.lost = sent.xmit < delivered || now.saturating_since(sent.at) >= reflected;
            }
        }
        if progress {
            self.events.push_back(TransferEvent::Progress {
                flashed: self.flashed_bytes(),
                size: self.image.len() as u64,
            });
        }
        progress
    }

    /// OFFER again, unless one went out less than a STATUS timeout ago (the STATUS may predate
    /// it).
    fn offer_if_due(&mut self, now: Millis) {
        if self
            .offer_at
            .is_none_or(|at| now.saturating_since(at) >= self.rtt.rto_ms())
        {
            self.queue(Control::Offer {
                image: self.image.tag(),
                chunk: self.chunk,
            });
        }
    }

    /// The goal's control again, unless it went out less than a STATUS timeout ago.
    fn op_if_due(&mut self, now: Millis, op: OtaOp, arg: u16) {
        if self
            .op_at
            .is_none_or(|at| now.saturating_since(at) >= self.rtt.rto_ms())
        {
            self.queue(Control::Control(self.control(op, arg)));
        }
    }

    /// The chunk to send next, the pacer aside.
    fn next_chunk(&self) -> Option<u16> {
        let sending = matches!(self.goal, Goal::Transfer | Goal::Install { .. })
            && self.node == NodeView::Holds(OtaPhase::Receiving);
        if !sending || !self.link_up || self.stalled || self.resync || self.outcome.is_some() {
            return None;
        }
        let limit = self.credit.min(self.total).max(self.flashed);
        let lost = self
            .sent
            .range(self.flashed..limit)
            .find(|(i, s)| s.lost && !self.held.contains(i))
            .map(|(&i, _)| i);
        lost.or_else(|| {
            (self.flashed..limit).find(|i| !self.held.contains(i) && !self.sent.contains_key(i))
        })
    }

    fn wait(&self) -> Wait {
        if !self.link_up || self.outcome.is_some() {
            return Wait::Idle;
        }
        if self.stalled {
            return Wait::Slow;
        }
        match (self.goal, self.node) {
            (_, NodeView::Holds(OtaPhase::Installing | OtaPhase::Trial)) => Wait::Slow,
            (Goal::Transfer, NodeView::Holds(OtaPhase::Verified | OtaPhase::Confirmed))
            | (Goal::Install { .. }, NodeView::Holds(OtaPhase::Confirmed)) => Wait::Idle,
            _ => Wait::Fast,
        }
    }

    fn deadline(&self) -> Option<Millis> {
        match self.wait() {
            Wait::Idle => None,
            Wait::Fast => Some(self.active_at + self.rtt.rto_ms()),
            Wait::Slow => Some(self.active_at + SLOW_QUERY_INTERVAL),
        }
    }
}
