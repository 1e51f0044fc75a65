//! The gateway's end of the node link on one serial port, as an IO-free state machine.
//!
//! Bytes go in through [`PortSession::handle_bytes`]; out come [`Action`]s for the store
//! ([`PortSession::poll_action`]) and frames for the line ([`PortSession::poll_transmit`]). The
//! store's answers come back through `handle_registered` / `handle_committed` /
//! `handle_commit_failed`. The serial adapter (`outpost::io::serial`) only moves bytes and answers.
//!
//! The rule that keeps the store free of gaps and duplicates is [`admit`]; the store applies the
//! same rule inside its transaction, so a sample is only ever committed once.
//!
//! Who is on the line is proven, not claimed: every HELLO + ENROLL gets a CHALLENGE signed with
//! the gateway's node-link key, and only a node whose PROOF verifies under the key it enrolled
//! reaches the store; every later frame is sealed with the session's keys (counter and tag,
//! `outpost_proto::session`), and one that does not open is dropped and counted, per port and
//! per node. A real node can still misreport, so the session bounds what a frame can claim
//! ([`LinkLimits`]): a sample's age against
//! the node's reported uptime and `max_sample_age` (an older claim is clamped and counted), a gap
//! against the samples the node can have taken in the time it spans (a larger one is refused
//! and counted), and first enrolments against a per-port budget of newcomers. Who may enrol is
//! [`enrolment`]: the store applies it before it writes anything, so a refused ENROLL changes
//! neither the registry nor the session.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use outpost_proto::frame::{MAX_BULK_FRAME_LEN, MAX_FRAME_LEN};
use outpost_proto::session::{Ephemeral, GatewayHandshake};
use outpost_proto::{
    Accept, Ack, AuthError, Bulk, ChunkSize, FrameDecoder, FrameError, Health, Hello, LinkCounters,
    Message, Millis, Nack, Opener, OtaStatus, Proof, Received, Sealer, SessionKeys, Telemetry,
    WINDOW, encode_frame, encode_sealed_bulk, encode_sealed_frame,
};

use crate::node_request::{NodeAnswer, NodeRequest, NodeRequestError};
use crate::ota::{Control as OtaOut, Image, Pacer, Transfer, TransferError, TransferEvent};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// A sample as the gateway received it, stamped with wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub seq: u32,
    pub window_start: u32,
    pub ts_ms: i64,
    /// The most samples the node can physically have lost right before this one (see
    /// [`LinkLimits::max_sample_rate_hz`]): the store books a larger gap as an anomaly, never as
    /// lost samples.
    pub max_lost: u32,
    pub readings: heapless::Vec<outpost_proto::Reading, { outpost_proto::wire::MAX_READINGS }>,
}

/// What the store knows of a node once it said HELLO: the answer to [`Action::Register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub node_id: i64,
    /// Last committed sample of this boot: the ACCEPT's `ack_upto`.
    pub ack_upto: u32,
    /// The node was enrolled now, for the first time: it used the port's newcomer budget.
    pub newcomer: bool,
}

/// Why the store refused a HELLO + ENROLL. A refused enrolment writes nothing to the registry
/// (a node refused by the policy is listed as waiting for enrollment, apart from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The uid is enrolled with another key: an impostor, or a replaced board.
    KeyMismatch,
    /// A uid never enrolled, and the port's newcomer budget is spent for now.
    NewcomerLimited,
    /// A uid never enrolled, and the registry holds `max_nodes` nodes already.
    RegistryFull,
    /// The node was revoked (`outpost nodes revoke`): it stays out, whatever its key.
    Revoked,
    /// A uid never enrolled, and the policy takes no newcomer now: `closed`, or `window` with no
    /// enrollment window open. It waits for enrollment.
    NotEnrolling,
    /// A uid never enrolled that the `allowlist` policy does not list, or lists with another key
    /// or board revision. It waits for enrollment.
    NotListed,
}

impl Refusal {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::KeyMismatch => "key_mismatch",
            Refusal::NewcomerLimited => "newcomer_limited",
            Refusal::RegistryFull => "registry_full",
            Refusal::Revoked => "revoked",
            Refusal::NotEnrolling => "not_enrolling",
            Refusal::NotListed => "not_listed",
        }
    }

    /// Whether the node waits for an operator (a window, a manifest): shown as "waiting for
    /// enrollment".
    #[must_use]
    pub fn waits_for_enrollment(self) -> bool {
        matches!(self, Refusal::NotEnrolling | Refusal::NotListed)
    }
}

/// How nodes never enrolled may join (`[enrollment] policy`). Nodes already enrolled are never
/// held back by it; a revoked one always is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentPolicy {
    /// Only while an enrollment window is open (the technician page, `outpost nodes enroll
    /// --window 10m`); it closes by itself.
    #[default]
    Window,
    /// Only nodes a manufacturer-signed manifest lists, with the listed key and board revision.
    Allowlist,
    /// None.
    Closed,
    /// Any, within the newcomer budget and `max_nodes`: a lab bench or the demo, never a site.
    Open,
}

impl EnrollmentPolicy {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentPolicy::Window => "window",
            EnrollmentPolicy::Allowlist => "allowlist",
            EnrollmentPolicy::Closed => "closed",
            EnrollmentPolicy::Open => "open",
        }
    }
}

/// What the store knows about a candidate, read in its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The key the registry holds for the uid (`None`: never enrolled).
    pub pinned: Option<&'a [u8; 32]>,
    /// The uid was revoked.
    pub revoked: bool,
    /// The key the node proved it holds (its PROOF verified under it).
    pub key: &'a [u8; 32],
    pub hw_rev: u8,
    /// What the manufacturer's manifest lists for the uid: key and board revision.
    pub listed: Option<(&'a [u8; 32], u8)>,
}

/// The gate newcomers pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    pub policy: EnrollmentPolicy,
    /// An enrollment window is open now.
    pub window_open: bool,
    /// The port's newcomer budget has room (see [`Action::Register`]).
    pub newcomer_allowed: bool,
    /// Nodes in the registry, and its cap.
    pub enrolled: u64,
    pub max_nodes: u64,
}

/// Who may enrol: the rule the store applies, inside its transaction, before it writes anything.
/// A known uid with its own key is always accepted, unless revoked; the policy, the budget and
/// the cap hold back newcomers, never the site's own nodes.
pub fn admit_enrolment(c: &Candidate<'_>, g: &Gate) -> Result<Enrol, Refusal> {
    if c.revoked {
        return Err(Refusal::Revoked);
    }
    match c.pinned {
        Some(pinned) if pinned == c.key => return Ok(Enrol::Known),
        Some(_) => return Err(Refusal::KeyMismatch),
        None => {}
    }
    match g.policy {
        EnrollmentPolicy::Closed => return Err(Refusal::NotEnrolling),
        EnrollmentPolicy::Window if !g.window_open => return Err(Refusal::NotEnrolling),
        EnrollmentPolicy::Allowlist if c.listed != Some((c.key, c.hw_rev)) => {
            return Err(Refusal::NotListed);
        }
        EnrollmentPolicy::Window | EnrollmentPolicy::Allowlist | EnrollmentPolicy::Open => {}
    }
    enrolment(None, c.key, g.newcomer_allowed, g.enrolled, g.max_nodes)
}

/// How a node the store accepts is enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrol {
    /// Its key is the pinned one: the row is updated from the HELLO.
    Known,
    /// A uid never enrolled: its row is written now, with the key pinned.
    Newcomer,
}

/// Who may enrol: the rule the store applies, inside its transaction, before it writes anything.
///
/// `pinned` is the key the registry holds for the HELLO's uid (`None`: never enrolled),
/// `newcomer_allowed` the port's newcomer budget (see [`Action::Register`]), `enrolled` how many
/// nodes the registry holds and `max_nodes` its cap. A known uid with its own key is always
/// accepted, whatever the caps: they hold back newcomers, never the site's own nodes.
pub fn enrolment(
    pinned: Option<&[u8; 32]>,
    key: &[u8; 32],
    newcomer_allowed: bool,
    enrolled: u64,
    max_nodes: u64,
) -> Result<Enrol, Refusal> {
    match pinned {
        Some(pinned) if pinned == key => Ok(Enrol::Known),
        Some(_) => Err(Refusal::KeyMismatch),
        None if !newcomer_allowed => Err(Refusal::NewcomerLimited),
        None if enrolled >= max_nodes => Err(Refusal::RegistryFull),
        None => Ok(Enrol::Newcomer),
    }
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
    /// It claims a gap of `lost` samples, more than the node can have taken in the time the gap
    /// spans: a forged or corrupt frame. Dropped and counted; it changes nothing, so the node's
    /// real next sample is still taken.
    Implausible { lost: u32 },
}

/// Decides if a sample `seq` (whose node still holds everything from `window_start`) may follow
/// `last`, the last committed sample of its boot.
#[must_use]
pub fn admit(last: Option<u32>, seq: u32, window_start: u32) -> Admission {
    admit_within(last, seq, window_start, u32::MAX)
}

/// [`admit`], with a gap of more than `max_lost` samples refused as [`Admission::Implausible`].
#[must_use]
pub fn admit_within(last: Option<u32>, seq: u32, window_start: u32, max_lost: u32) -> Admission {
    let gap = |lost: u32| {
        if lost > max_lost {
            Admission::Implausible { lost }
        } else {
            Admission::AfterGap { lost }
        }
    };
    match last {
        None if seq <= 1 => Admission::Next,
        // A boot first heard of mid-way: the node dropped what it could not deliver.
        None if seq == window_start => gap(seq - 1),
        None => Admission::Stale,
        Some(last) if seq == last.wrapping_add(1) => Admission::Next,
        Some(last) if seq > last && seq == window_start => gap(seq - last - 1),
        Some(_) => Admission::Stale,
    }
}

/// Bytes on the line of the smallest frame a node sends (a TELEMETRY without readings, its
/// varints one byte each: 5 message bytes and the 9-byte seal, CRC, COBS code and two
/// delimiters).
pub const SMALLEST_NODE_FRAME: u32 = 21;

/// The most frames a node can send per second on a UART at `baud` (8N1: ten bits a byte), all of
/// them the smallest there is. The default frame limit: a node on a real UART is never held back
/// by it, so catching up after an outage has the whole line; a transport faster than its nominal
/// baud (USB CDC, a pty) is held to it.
#[must_use]
pub fn line_frame_capacity(baud: u32) -> u32 {
    (baud / 10 / SMALLEST_NODE_FRAME).max(1)
}

/// What a frame on one port may claim, and who may join through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkLimits {
    /// Frames per second a node may send; the excess is dropped unacknowledged. The frame after
    /// a dropped one is held and the node asked for the missing one at once (NACK), so a dropped
    /// frame costs one resend, not a retransmit timeout.
    pub max_frames_per_sec: u32,
    /// The oldest a sample may claim to be when it arrives (`age_ms`). The bound is the node's
    /// uptime as it last reported it (HEALTH, sent at every ACCEPT) when known, and this in any
    /// case: a node cannot hold a sample from before it booted, and no ring outlasts this. An
    /// older claim is clamped to the bound and counted (`ages_clamped`): the reading is kept,
    /// stamped with the oldest time the gateway believes possible.
    pub max_sample_age: Duration,
    /// The fastest a node can take samples. A gap (ring overflow) can only hold the samples the
    /// node took in the time between the samples on either side of it: a claimed gap larger than
    /// that (plus a second of slack) is refused and counted (`gaps_refused`).
    pub max_sample_rate_hz: u32,
    /// Uids never enrolled that may enrol through this port at once (a token bucket's size)…
    pub newcomers_burst: u32,
    /// …and how fast that allowance refills.
    pub newcomers_per_hour: u32,
}

impl Default for LinkLimits {
    fn default() -> Self {
        LinkLimits {
            max_frames_per_sec: line_frame_capacity(115_200),
            max_sample_age: Duration::from_secs(7 * 24 * 3600),
            max_sample_rate_hz: 1000,
            newcomers_burst: 4,
            newcomers_per_hour: 12,
        }
    }
}

/// Slack on the time bounds: uptime is reported in whole seconds, and sampling jitters.
const SLACK_MS: u64 = 1000;

/// How often a kind of anomaly is logged per port at most; the count in between is in the line.
const LOG_EVERY: u64 = 10_000;

/// How soon the gateway asks again for the same missing sample when later ones keep arriving
/// (the NACK or the resend was lost too); the node's retransmit timer repairs the rest.
const NACK_REPEAT_MS: u64 = 250;

/// How long after the last refused newcomer a port still counts as refusing newcomers (the
/// `newcomers_refused` alert).
pub const REFUSING_FOR: Duration = Duration::from_secs(60);

/// The gateway's node-link identity and the randomness its handshakes draw from: inputs from
/// the adapter (the key from the state directory, entropy from the OS). Never printed.
pub struct LinkSecrets {
    /// The key every CHALLENGE is signed with; nodes may pin its public half.
    pub signing_key: SigningKey,
    /// 32 random bytes, fresh for every session object: seeds the ephemerals.
    pub entropy: [u8; 32],
}

impl fmt::Debug for LinkSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSecrets")
            .field("public_key", &self.signing_key.verifying_key().to_bytes())
            .finish_non_exhaustive()
    }
}

/// The least time between two handshakes on one port: a real node says HELLO once per
/// `hello_interval` (1 s); a flood of HELLOs must not keep the gateway signing.
pub const HANDSHAKE_MIN_INTERVAL_MS: u64 = 200;

/// Work for the store, as data.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A node said HELLO and ENROLL on this port: check its key and register it (see
    /// [`enrolment`]). `newcomer_allowed`: the port's newcomer budget has room for a uid never
    /// enrolled.
    Register {
        hello: Hello,
        public_key: [u8; 32],
        newcomer_allowed: bool,
    },
    /// Samples to commit; answer with `handle_committed` or `handle_commit_failed`.
    Ingest {
        node_id: i64,
        boot_id: u32,
        samples: Vec<Sample>,
    },
    /// A HEALTH report of boot `boot_id` of node `uid`.
    Health {
        node_id: i64,
        uid: [u8; 8],
        boot_id: u32,
        health: Health,
    },
    /// Frames the gateway dropped on this node's line since the last report.
    LinkErrors { node_id: i64, count: u32 },
    /// Anomalies on this node's line since the last report (see [`PortCounters`]).
    Anomalies {
        node_id: i64,
        ages_clamped: u32,
        gaps_refused: u32,
        /// Frames in this node's session whose seal did not verify.
        auth_failed: u32,
        /// Frames of this node's session taken before.
        replayed: u32,
    },
    /// A PROOF in the name of `uid` did not verify under the key that ENROLL claimed: someone
    /// without that key spoke as that node. Counted on the node's row if it is enrolled.
    ProofFailed { uid: [u8; 8] },
    /// The attached node's OTA_STATUS (opened): where it is with a firmware image. A node that
    /// sends one takes updates.
    OtaStatus {
        uid: [u8; 8],
        boot_id: u32,
        status: OtaStatus,
    },
    /// What the port's firmware transfer to `uid` did ([`crate::ota::Transfer`]).
    Transfer { uid: [u8; 8], event: TransferEvent },
    /// The outcome of the request the adapter handed in as `token`
    /// ([`PortSession::handle_request`]).
    Answer {
        token: u64,
        result: Result<NodeAnswer, NodeRequestError>,
    },
}

/// Requests a port has sent and not seen answered at most: a node answers in order, a few frame
/// times each, so more waiting means a caller is looping.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 16;

/// A request sent to the attached node, waiting for its RESPONSE.
#[derive(Debug)]
struct PendingRequest {
    token: u64,
    request: NodeRequest,
    deadline: Millis,
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
    /// Samples that arrived after a missing one and were held until it came.
    pub reordered: u64,
    /// NACKs sent: a sample was missing and later ones arrived.
    pub nacks: u64,
    /// Enrolments refused because the node's key differs from the pinned one.
    pub refused: u64,
    /// Enrolments of uids never enrolled, refused: the port's newcomer budget was spent, or the
    /// registry was full.
    pub newcomers_refused: u64,
    /// ENROLLs ignored because another registration was in flight (a real node says HELLO
    /// again; a flood of uids is mostly counted here).
    pub enrolls_busy: u64,
    /// Samples whose claimed age was beyond what is possible, stored with the age clamped.
    pub ages_clamped: u64,
    /// Samples claiming a gap larger than the node can have taken, dropped.
    pub gaps_refused: u64,
    /// Enrolments held back by the policy (no window open, not in the manifest): the node waits
    /// for enrollment.
    pub waiting_for_enrollment: u64,
    /// Sessions ended because their node was revoked.
    pub revoked: u64,
    /// Handshakes answered (CHALLENGEs sent).
    pub handshakes: u64,
    /// HELLO + ENROLL not answered: the port's handshake rate (one per
    /// [`HANDSHAKE_MIN_INTERVAL_MS`]) was spent, or the ephemeral key was weak.
    pub handshakes_refused: u64,
    /// PROOFs that did not verify: a uid claimed without its key.
    pub proofs_failed: u64,
    /// Sealed frames with no session on the port to open them (before any handshake, or from a
    /// session the gateway no longer holds).
    pub unauthenticated: u64,
    /// Sealed frames whose seal did not verify: forged, or bits flipped with the CRC redone.
    pub auth_failed: u64,
    /// Sealed frames of the open session taken before: replays.
    pub replayed: u64,
}

#[derive(Debug)]
struct Attached {
    node_id: i64,
    uid: [u8; 8],
    boot_id: u32,
    /// The session's keys: seal what goes to the node, open what comes from it.
    sealer: Sealer,
    opener: Opener,
    /// Seal failures and replays not yet reported to the store.
    auth_failed: u32,
    replayed: u32,
    /// Last sample handed to the store (committed or in flight).
    handed_over: Option<u32>,
    /// Last sample the store committed.
    committed: Option<u32>,
    /// When the last sample handed over was taken (session time); `None` when not known (just
    /// attached, or rewound after a failed commit).
    last_capture: Option<Millis>,
    /// The node's uptime as it last reported it, and when that report arrived.
    uptime: Option<(u64, Millis)>,
    /// Anomalies not yet reported to the store.
    ages_clamped: u32,
    gaps_refused: u32,
    /// Frames that arrived after a missing one, by seq: at most [`WINDOW`], all within a window
    /// of the first missing sample.
    held: BTreeMap<u32, Arrived>,
    /// The samples last asked for (NACK), and when.
    nacked: Option<(u32, u32, Millis)>,
}

/// A TELEMETRY frame as it arrived: when (session and wall-clock time) and what it said.
#[derive(Debug, Clone)]
struct Arrived {
    telemetry: Telemetry,
    at: Millis,
    wall_ms: i64,
}

/// What became of a TELEMETRY frame offered to the attached node's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offered {
    /// Handed to the store.
    Taken,
    /// A sample before it is missing: hold it and ask for the missing one.
    Ahead,
    /// Stored already, refused, or no node attached: dropped.
    Dropped,
}

impl Attached {
    /// The node's uptime at session time `at`, if it reported one.
    fn uptime_at(&self, at: Millis) -> Option<u64> {
        self.uptime.map(|(ms, heard)| {
            (ms + at.saturating_since(heard)).saturating_sub(heard.saturating_since(at))
        })
    }
}

/// The most samples a node can have lost right before a sample it took at `capture`: those it
/// can have taken since the last sample handed over (or, not knowing when that was taken, since
/// it booted), and no more than its seq can have reached since it booted (so forged gaps cannot
/// add up beyond the node's life either).
fn max_lost(node: &Attached, capture: Millis, max_sample_age: Duration, rate_hz: u32) -> u32 {
    let samples_in = |ms: u64| {
        ms.saturating_add(SLACK_MS)
            .saturating_mul(u64::from(rate_hz))
            / 1000
    };
    let uptime = node.uptime_at(capture);
    let span = match (node.last_capture, uptime) {
        (Some(last), _) => capture.saturating_since(last),
        (None, Some(uptime)) => uptime,
        (None, None) => u64::try_from(max_sample_age.as_millis()).unwrap_or(u64::MAX),
    };
    let since_last = samples_in(span);
    // The sample's seq is at most the samples taken since boot (seq 1 is the first).
    let up_to_seq = uptime.map_or(u64::MAX, |u| {
        (samples_in(u) + 1).saturating_sub(u64::from(node.handed_over.unwrap_or(0)) + 1)
    });
    u32::try_from(since_last.min(up_to_seq)).unwrap_or(u32::MAX)
}

/// Logs a kind of anomaly at most once per [`LOG_EVERY`] ms, saying how many were not logged.
#[derive(Debug, Default)]
struct LogLimit {
    last: Option<Millis>,
    unlogged: u64,
}

impl LogLimit {
    /// `Some(n)`: log now, `n` more of the same since the last line.
    fn take(&mut self, now: Millis) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.saturating_since(l) < LOG_EVERY)
        {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
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

/// Token bucket over first enrolments through one port.
#[derive(Debug)]
struct NewcomerBudget {
    burst: u32,
    per_hour: u32,
    /// In thousandths of a newcomer, so slow rates refill exactly.
    millis: u64,
    refilled_at: Millis,
}

impl NewcomerBudget {
    fn refill(&mut self, now: Millis) {
        let elapsed = now.saturating_since(self.refilled_at);
        // per_hour newcomers per 3.6e6 ms = per_hour thousandths per 3.6 s.
        let gained = elapsed.saturating_mul(u64::from(self.per_hour)) / 3600;
        self.millis = (self.millis + gained).min(u64::from(self.burst) * 1000);
        self.refilled_at = now;
    }
    fn available(&mut self, now: Millis) -> bool {
        self.refill(now);
        self.millis >= 1000
    }
    fn spend(&mut self, now: Millis) {
        self.refill(now);
        self.millis = self.millis.saturating_sub(1000);
    }
}

/// A handshake between its CHALLENGE and the node's PROOF.
#[derive(Debug)]
struct Handshaking {
    hello: Hello,
    node_key: [u8; 32],
    handshake: GatewayHandshake,
}

/// A node that proved its key, while the store registers it.
#[derive(Debug)]
struct Registering {
    hello: Hello,
    keys: SessionKeys,
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
    /// The handshake waiting for its PROOF.
    handshaking: Option<Handshaking>,
    /// When the last CHALLENGE went out (handshakes are rate-limited).
    challenged_at: Option<Millis>,
    registering: Option<Registering>,
    node: Option<Attached>,
    signing_key: SigningKey,
    rng: ChaCha20Rng,
    pending_samples: Vec<Sample>,
    actions: VecDeque<Action>,
    transmit: VecDeque<Message>,
    counters: PortCounters,
    limits: LinkLimits,
    newcomers: NewcomerBudget,
    /// When a newcomer was last refused (the alert's condition).
    newcomer_refused_at: Option<Millis>,
    /// Session time of the latest input.
    now: Millis,
    log_refusals: LogLimit,
    log_ages: LogLimit,
    log_gaps: LogLimit,
    log_garbage: LogLimit,
    log_auth: LogLimit,
    /// Frames dropped for garbage since the last log line about it.
    garbage_unlogged: u64,
    /// The firmware transfer to a node on this port, if one runs.
    ota: Option<PortTransfer>,
    /// Requests sent to the attached node, by COMMAND id.
    requests: BTreeMap<u16, PendingRequest>,
    /// The COMMAND id the next request gets.
    next_command_id: u16,
}

/// A firmware transfer a port runs for one node.
#[derive(Debug)]
struct PortTransfer {
    uid: [u8; 8],
    transfer: Transfer,
    /// An OFFER the transfer asked for, sent as a bulk frame before any chunk.
    offer: Option<ChunkSize>,
}

impl PortSession {
    /// A session with the default [`LinkLimits`] but for the frame rate.
    #[must_use]
    pub fn new(
        port: impl Into<String>,
        max_frames_per_sec: u32,
        secrets: LinkSecrets,
        now: Millis,
    ) -> Self {
        let limits = LinkLimits {
            max_frames_per_sec,
            ..LinkLimits::default()
        };
        Self::with_limits(port, limits, secrets, now)
    }

    #[must_use]
    pub fn with_limits(
        port: impl Into<String>,
        limits: LinkLimits,
        secrets: LinkSecrets,
        now: Millis,
    ) -> Self {
        let rate = RateLimit {
            per_sec: limits.max_frames_per_sec,
            tokens: 0.0,
            refilled_at: now,
        };
        let mut session = PortSession {
            port: port.into(),
            decoder: FrameDecoder::new(),
            counted: LinkCounters::default(),
            rate,
            hello: None,
            handshaking: None,
            challenged_at: None,
            registering: None,
            node: None,
            signing_key: secrets.signing_key,
            rng: ChaCha20Rng::from_seed(secrets.entropy),
            pending_samples: Vec::new(),
            actions: VecDeque::new(),
            transmit: VecDeque::new(),
            counters: PortCounters::default(),
            limits,
            newcomers: NewcomerBudget {
                burst: limits.newcomers_burst,
                per_hour: limits.newcomers_per_hour,
                millis: u64::from(limits.newcomers_burst) * 1000,
                refilled_at: now,
            },
            newcomer_refused_at: None,
            now,
            log_refusals: LogLimit::default(),
            log_ages: LogLimit::default(),
            log_gaps: LogLimit::default(),
            log_garbage: LogLimit::default(),
            log_auth: LogLimit::default(),
            garbage_unlogged: 0,
            ota: None,
            requests: BTreeMap::new(),
            next_command_id: 1,
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

    /// Whether this port refused a newcomer in the last [`REFUSING_FOR`] (the condition of the
    /// `newcomers_refused` alert).
    #[must_use]
    pub fn refusing_newcomers(&self, now: Millis) -> bool {
        self.newcomer_refused_at
            .is_some_and(|at| now.saturating_since(at) < REFUSING_FOR.as_millis() as u64)
    }

    /// The port was closed or reopened: forget the partial frame and who was on the line. A node
    /// re-announces itself with HELLO when it hears nothing for a while.
    pub fn handle_port_reset(&mut self) {
        self.decoder.reset();
        self.hello = None;
        self.handshaking = None;
        self.detach();
        self.registering = None;
        self.pending_samples.clear();
        self.transmit.clear();
    }

    /// Bytes read from the line; `wall_ms` is the Unix time they arrived.
    pub fn handle_bytes(&mut self, now: Millis, wall_ms: i64, bytes: &[u8]) {
        self.now = self.now.max(now);
        for &byte in bytes {
            match self.decoder.push(byte) {
                None => {}
                Some(Ok(received)) => {
                    if self.rate.take(now) {
                        self.handle_received(wall_ms, received);
                    } else {
                        self.counters.rate_limited += 1;
                    }
                }
                Some(Err(error)) => self.handle_frame_error(error),
            }
        }
        self.flush_samples();
        self.report_link_errors();
        self.report_anomalies();
    }

    fn report_anomalies(&mut self) {
        let Some(node) = &mut self.node else { return };
        if node.ages_clamped > 0
            || node.gaps_refused > 0
            || node.auth_failed > 0
            || node.replayed > 0
        {
            self.actions.push_back(Action::Anomalies {
                node_id: node.node_id,
                ages_clamped: std::mem::take(&mut node.ages_clamped),
                gaps_refused: std::mem::take(&mut node.gaps_refused),
                auth_failed: std::mem::take(&mut node.auth_failed),
                replayed: std::mem::take(&mut node.replayed),
            });
        }
    }

    /// One frame: the handshake's in the clear, everything else only once it opens under the
    /// attached node's session.
    fn handle_received(&mut self, wall_ms: i64, received: Received) {
        if !received.is_sealed() {
            if let Some(message) = received.into_clear() {
                self.handle_message(wall_ms, message);
            }
            return;
        }
        let Some(node) = &mut self.node else {
            self.counters.unauthenticated += 1;
            self.log_auth("Sealed frame with no session on the port; dropped.", None);
            return;
        };
        match received.open(&mut node.opener) {
            Ok(message) => self.handle_message(wall_ms, message),
            Err(AuthError::Forged) => {
                node.auth_failed = node.auth_failed.saturating_add(1);
                let uid = node.uid;
                self.counters.auth_failed += 1;
                self.log_auth("Frame failed authentication; dropped.", Some(uid));
            }
            Err(AuthError::Replayed) => {
                node.replayed = node.replayed.saturating_add(1);
                let uid = node.uid;
                self.counters.replayed += 1;
                self.log_auth("Replayed frame; dropped.", Some(uid));
            }
        }
    }

    fn log_auth(&mut self, message: &'static str, uid: Option<[u8; 8]>) {
        if let Some(unlogged) = self.log_auth.take(self.now) {
            let uid = uid.map(|u| crate::hex::encode(&u));
            tracing::warn!(message, port = %self.port, uid, unlogged);
        }
    }

    /// HELLO + ENROLL: a CHALLENGE signed with the gateway's key, unless the port's handshake
    /// rate is spent.
    fn challenge(&mut self, hello: Hello, node_key: [u8; 32]) {
        if self
            .challenged_at
            .is_some_and(|at| self.now.saturating_since(at) < HANDSHAKE_MIN_INTERVAL_MS)
        {
            self.counters.handshakes_refused += 1;
            return;
        }
        let mut random = [0u8; 32];
        self.rng.fill_bytes(&mut random);
        let ephemeral = Ephemeral::from_random(random);
        match GatewayHandshake::challenge(&self.signing_key, &ephemeral, &hello, &node_key) {
            Ok((challenge, handshake)) => {
                self.challenged_at = Some(self.now);
                self.counters.handshakes += 1;
                self.handshaking = Some(Handshaking {
                    hello,
                    node_key,
                    handshake,
                });
                self.transmit
                    .retain(|m| !matches!(m, Message::Challenge(_)));
                self.transmit.push_back(Message::Challenge(challenge));
            }
            Err(_) => self.counters.handshakes_refused += 1,
        }
    }

    /// A PROOF: the node holds the key it enrolled. A node already attached (same uid and boot)
    /// gets fresh keys and its ACCEPT at once; any other goes to the store to be registered.
    fn handle_proof(&mut self, proof: Proof) {
        let Some(pending) = self.handshaking.take_if(|h| h.handshake.matches(&proof)) else {
            return; // an answer to no open handshake: stale, or someone else's
        };
        let keys = match pending.handshake.finish(&proof) {
            Ok(keys) => keys,
            Err(_) => {
                self.counters.proofs_failed += 1;
                self.actions
                    .push_back(Action::ProofFailed { uid: proof.uid });
                self.log_auth(
                    "PROOF does not verify under the key enrolled; the node is not accepted.",
                    Some(proof.uid),
                );
                return;
            }
        };
        let hello = pending.hello;
        if let Some(node) = self
            .node
            .as_mut()
            .filter(|n| n.uid == hello.uid && n.boot_id == hello.boot_id)
        {
            // The node lost our ACCEPT or timed out: new keys, and where it stands.
            let (sealer, opener) = keys.gateway();
            node.sealer = sealer;
            node.opener = opener;
            let ack_upto = node.committed.unwrap_or(0);
            let uid = node.uid;
            self.transmit.clear();
            self.fail_requests(NodeRequestError::LinkLost);
            self.transmit.push_back(Message::Accept(Accept {
                boot_id: hello.boot_id,
                ack_upto,
            }));
            self.ota_session_changed(Some(uid));
            return;
        }
        if self.registering.is_some() {
            // One registration at a time; the node says HELLO again.
            self.counters.enrolls_busy += 1;
            return;
        }
        // The node on the line stays attached until the store accepts the newcomer: a refused
        // one must not cut it off.
        let newcomer_allowed = self.newcomers.available(self.now);
        self.actions.push_back(Action::Register {
            hello: hello.clone(),
            public_key: pending.node_key,
            newcomer_allowed,
        });
        self.registering = Some(Registering { hello, keys });
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
            // A noisy line drops frames all day: one line per LOG_EVERY with the count, not one
            // per frame (journald on an SD card).
            self.garbage_unlogged += u64::from(new_errors);
            if self.log_garbage.take(self.now).is_some() {
                tracing::info!(message = "Garbage on serial line.", port = %self.port,
                    frames_dropped = std::mem::take(&mut self.garbage_unlogged));
            }
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
            Message::Hello(hello) => self.hello = Some(hello),
            Message::Enroll(enroll) => {
                let Some(hello) = self.hello.take_if(|h| h.uid == enroll.uid) else {
                    return;
                };
                if self
                    .registering
                    .as_ref()
                    .is_some_and(|r| r.hello.uid == hello.uid && r.hello.boot_id == hello.boot_id)
                {
                    return; // this boot's registration is running; its ACCEPT follows
                }
                self.challenge(hello, enroll.public_key);
            }
            Message::Proof(proof) => self.handle_proof(proof),
            Message::Telemetry(telemetry) => self.handle_telemetry(Arrived {
                telemetry,
                at: self.now,
                wall_ms,
            }),
            Message::Health(health) => {
                if let Some(node) = &mut self.node {
                    node.uptime = Some((u64::from(health.uptime_s) * 1000, self.now));
                    self.actions.push_back(Action::Health {
                        node_id: node.node_id,
                        uid: node.uid,
                        boot_id: node.boot_id,
                        health,
                    });
                }
            }
            Message::Response(response) => {
                tracing::debug!(message = "Command response.", port = %self.port, id = response.id, status = response.status);
                // An answer to nothing pending (late, after its timeout) is dropped.
                if self.node.is_some()
                    && let Some(pending) = self.requests.remove(&response.id)
                {
                    self.actions.push_back(Action::Answer {
                        token: pending.token,
                        result: pending.request.answer(&response),
                    });
                }
            }
            Message::OtaStatus(status) => self.handle_ota_status(status),
            // Gateway-to-node messages echoed back: a loop or a confused peer.
            Message::Accept(_)
            | Message::Ack(_)
            | Message::Nack(_)
            | Message::Command(_)
            | Message::OtaControl(_)
            | Message::Challenge(_) => {
                tracing::debug!(message = "Unexpected gateway message from node side.", port = %self.port);
            }
        }
    }

    /// A TELEMETRY frame: taken if it follows the last sample handed over (then any held frames
    /// that now follow too), held if a sample before it is missing (and the node asked for that
    /// one at once), dropped otherwise.
    fn handle_telemetry(&mut self, arrived: Arrived) {
        match self.offer(&arrived) {
            Offered::Taken => self.take_held(),
            Offered::Ahead => self.hold(arrived),
            Offered::Dropped => {}
        }
    }

    /// Held frames that follow the sequence now, in order.
    fn take_held(&mut self) {
        loop {
            let Some(node) = &mut self.node else { return };
            let Some(entry) = node.held.first_entry() else {
                return;
            };
            if node.handed_over.is_some_and(|last| *entry.key() <= last) {
                entry.remove();
                self.counters.duplicates += 1;
                continue;
            }
            let arrived = entry.remove();
            if self.offer(&arrived) == Offered::Ahead {
                // Another sample missing before it: back where it was, and ask for that one.
                if let Some(node) = &mut self.node {
                    node.held.insert(arrived.telemetry.seq, arrived);
                }
                self.ask_for_missing();
                return;
            }
        }
    }

    /// Holds a frame that came after a missing one, and asks the node for the missing ones.
    fn hold(&mut self, arrived: Arrived) {
        let Some(node) = &mut self.node else { return };
        let first_missing = node.handed_over.map_or(1, |last| last.wrapping_add(1));
        let seq = arrived.telemetry.seq;
        // A node never has more than WINDOW samples in flight from its oldest unacknowledged
        // one, which is at or before the first missing: anything further is not worth a slot.
        if seq.wrapping_sub(first_missing) >= WINDOW || node.held.contains_key(&seq) {
            self.counters.duplicates += 1;
            return;
        }
        node.held.insert(seq, arrived);
        self.counters.reordered += 1;
        self.ask_for_missing();
    }

    /// NACKs the samples between the last one handed over and the first held, unless they were
    /// asked for a moment ago.
    fn ask_for_missing(&mut self) {
        let now = self.now;
        let Some(node) = &mut self.node else { return };
        let first_missing = node.handed_over.map_or(1, |last| last.wrapping_add(1));
        let Some(&first_held) = node.held.keys().next() else {
            return;
        };
        let to = first_held.wrapping_sub(1);
        // A hole inside the one asked for a moment ago is on its way already.
        let repeat = match node.nacked {
            Some((from, until, at)) => {
                !(from <= first_missing && to <= until)
                    || now.saturating_since(at) >= NACK_REPEAT_MS
            }
            None => true,
        };
        if repeat {
            node.nacked = Some((first_missing, to, now));
            self.counters.nacks += 1;
            self.transmit.retain(|m| !matches!(m, Message::Nack(_)));
            self.transmit.push_back(Message::Nack(Nack {
                boot_id: node.boot_id,
                from: first_missing,
                to,
            }));
        }
    }

    /// Admits one TELEMETRY frame into the attached node's sequence (see [`admit_within`]),
    /// bounding what it claims (§4.6 of docs/node-link.md).
    fn offer(&mut self, arrived: &Arrived) -> Offered {
        let (t, now, wall_ms) = (&arrived.telemetry, arrived.at, arrived.wall_ms);
        let Some(node) = &mut self.node else {
            return Offered::Dropped;
        };
        // How old the sample can be: not older than the node (uptime as it reported it,
        // advanced by the time since), and never older than max_sample_age.
        let max_age = u64::try_from(self.limits.max_sample_age.as_millis())
            .unwrap_or(u64::MAX)
            .min(node.uptime_at(now).map_or(u64::MAX, |u| u + SLACK_MS));
        let clamped = u64::from(t.age_ms) > max_age;
        let age = u64::from(t.age_ms).min(max_age);
        let capture = Millis(now.0.saturating_sub(age));
        let max_lost = max_lost(
            node,
            capture,
            self.limits.max_sample_age,
            self.limits.max_sample_rate_hz,
        );
        match admit_within(node.handed_over, t.seq, t.window_start, max_lost) {
            Admission::Implausible { lost } => {
                self.counters.gaps_refused += 1;
                node.gaps_refused = node.gaps_refused.saturating_add(1);
                if let Some(unlogged) = self.log_gaps.take(now) {
                    tracing::warn!(message = "Sample refused: it claims a gap larger than the node can have taken.",
                        port = %self.port, seq = t.seq, window_start = t.window_start, lost, max_lost, unlogged);
                }
                Offered::Dropped
            }
            Admission::Stale if node.handed_over.is_none_or(|last| t.seq > last) => Offered::Ahead,
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
                Offered::Dropped
            }
            Admission::Next | Admission::AfterGap { .. } => {
                if clamped {
                    self.counters.ages_clamped += 1;
                    node.ages_clamped = node.ages_clamped.saturating_add(1);
                    if let Some(unlogged) = self.log_ages.take(now) {
                        tracing::warn!(message = "Sample claims an impossible age; stored with the age clamped.",
                            port = %self.port, seq = t.seq, age_ms = t.age_ms, max_age_ms = max_age, unlogged);
                    }
                }
                node.handed_over = Some(t.seq);
                node.last_capture = Some(capture);
                node.nacked = node.nacked.filter(|&(_, to, _)| to > t.seq);
                let ts_ms = wall_ms.saturating_sub(i64::try_from(age).unwrap_or(i64::MAX));
                self.pending_samples.push(Sample {
                    seq: t.seq,
                    window_start: t.window_start,
                    ts_ms,
                    max_lost,
                    readings: t.readings.clone(),
                });
                Offered::Taken
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

    /// The store's answer to the last `Register`: the node registered, or refused (then nothing
    /// changed: the node attached before, if any, stays attached).
    pub fn handle_registered(&mut self, hello: &Hello, registered: Result<Registered, Refusal>) {
        let registering = self.registering.take();
        let registered = match registered {
            Ok(registered) => registered,
            Err(refusal) => {
                match refusal {
                    Refusal::KeyMismatch | Refusal::Revoked => self.counters.refused += 1,
                    Refusal::NewcomerLimited | Refusal::RegistryFull => {
                        self.counters.newcomers_refused += 1;
                        self.newcomer_refused_at = Some(self.now);
                    }
                    Refusal::NotEnrolling | Refusal::NotListed => {
                        self.counters.waiting_for_enrollment += 1;
                    }
                }
                if let Some(unlogged) = self.log_refusals.take(self.now) {
                    tracing::warn!(message = "Enrolment refused.", port = %self.port,
                        uid = %crate::hex::encode(&hello.uid), reason = refusal.as_str(), unlogged);
                }
                return;
            }
        };
        let Some(keys) = registering
            .filter(|r| r.hello.uid == hello.uid && r.hello.boot_id == hello.boot_id)
            .map(|r| r.keys)
        else {
            return; // the port was reset meanwhile: the node starts over with HELLO
        };
        if registered.newcomer {
            self.newcomers.spend(self.now);
        }
        // Samples read for the node attached until now go to the store before it is replaced.
        self.flush_samples();
        self.report_anomalies();
        let committed = (registered.ack_upto > 0).then_some(registered.ack_upto);
        let (sealer, opener) = keys.gateway();
        self.node = Some(Attached {
            node_id: registered.node_id,
            uid: hello.uid,
            boot_id: hello.boot_id,
            sealer,
            opener,
            auth_failed: 0,
            replayed: 0,
            handed_over: committed,
            committed,
            last_capture: None,
            uptime: None,
            ages_clamped: 0,
            gaps_refused: 0,
            held: BTreeMap::new(),
            nacked: None,
        });
        // Nothing queued for the node before goes out under its keys.
        self.transmit.clear();
        self.fail_requests(NodeRequestError::LinkLost);
        self.transmit.push_back(Message::Accept(Accept {
            boot_id: hello.boot_id,
            ack_upto: registered.ack_upto,
        }));
        self.ota_session_changed(Some(hello.uid));
    }

    /// The store could not register the node (its disk failed): the node says HELLO again.
    pub fn handle_register_failed(&mut self) {
        self.registering = None;
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

    /// The store refused samples of `node_id`: it was revoked. Its session ends; its frames are
    /// no longer opened, and its next HELLO is refused.
    pub fn handle_revoked(&mut self, node_id: i64) {
        if self.node.as_ref().is_some_and(|n| n.node_id == node_id) {
            self.detach();
            self.pending_samples.clear();
            self.transmit.clear();
            self.counters.revoked += 1;
            tracing::warn!(message = "Node revoked: its session is closed.", port = %self.port, node_id);
        }
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
            // When the last committed sample was taken is not known: bound gaps by uptime.
            node.last_capture = None;
        }
    }

    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Writes the next frame for the line into `buf`: a CHALLENGE in the clear, anything else
    /// sealed with the attached node's session.
    pub fn poll_transmit(&mut self, buf: &mut [u8; MAX_FRAME_LEN]) -> Option<usize> {
        self.take_ota_controls();
        loop {
            let message = self.transmit.pop_front()?;
            if !message.is_sealed() {
                // Cannot fail: every gateway message fits MAX_FRAME_LEN.
                return encode_frame(&message, buf).ok();
            }
            let Some(node) = &mut self.node else {
                continue; // its session is gone: never sent in the clear
            };
            let encoded = encode_sealed_frame(&message, &mut node.sealer, buf).ok();
            if node.sealer.sent() == u32::MAX {
                // The counter is spent: drop the session; the node's link timeout brings a new
                // handshake (and the store says where it stands).
                self.detach();
            }
            if encoded.is_some() {
                return encoded;
            }
        }
    }

    // ---- firmware transfers ----

    /// Starts sending `image` to node `uid` (replacing any transfer this port runs). The node
    /// need not be on the line yet: the transfer waits for its session.
    pub fn start_transfer(
        &mut self,
        now: Millis,
        uid: [u8; 8],
        image: Image,
        chunk: ChunkSize,
        pacer: Pacer,
    ) {
        self.now = self.now.max(now);
        let mut transfer = Transfer::start(now, image, chunk, pacer);
        if self.node.as_ref().is_none_or(|n| n.uid != uid) {
            transfer.handle_link_lost(now);
        }
        self.ota = Some(PortTransfer {
            uid,
            transfer,
            offer: None,
        });
        self.drain_transfer_events();
    }

    /// The transfer to `uid`, for the rollout's install, abort and finalize.
    pub fn transfer_mut(&mut self, uid: [u8; 8]) -> Option<&mut Transfer> {
        self.ota
            .as_mut()
            .filter(|t| t.uid == uid)
            .map(|t| &mut t.transfer)
    }

    /// Applies `op` to the transfer to `uid`; `Err` when there is none or it has ended.
    pub fn with_transfer(
        &mut self,
        uid: [u8; 8],
        op: impl FnOnce(&mut Transfer) -> Result<(), TransferError>,
    ) -> Result<(), Option<TransferError>> {
        let transfer = self.transfer_mut(uid).ok_or(None)?;
        let result = op(transfer).map_err(Some);
        self.drain_transfer_events();
        result
    }

    /// Forgets the transfer to `uid` (its rollout no longer needs it).
    pub fn drop_transfer(&mut self, uid: [u8; 8]) {
        if self.ota.as_ref().is_some_and(|t| t.uid == uid) {
            self.ota = None;
        }
    }

    /// The uid and status of the transfer this port runs.
    #[must_use]
    pub fn transfer_status(&self) -> Option<([u8; 8], crate::ota::TransferStatus)> {
        self.ota.as_ref().map(|t| (t.uid, t.transfer.status()))
    }

    /// The uid of the node attached to the port.
    #[must_use]
    pub fn node_uid(&self) -> Option<[u8; 8]> {
        self.node.as_ref().map(|n| n.uid)
    }

    /// Runs the transfer's timers and the requests' deadlines.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.now = self.now.max(now);
        if let Some(t) = &mut self.ota {
            t.transfer.handle_timeout(now);
        }
        self.drain_transfer_events();
        self.expire_requests(now);
    }

    /// When [`PortSession::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        let transfer = self.ota.as_ref().and_then(|t| t.transfer.poll_timeout());
        let request = self.requests.values().map(|p| p.deadline).min();
        transfer.into_iter().chain(request).min()
    }

    /// Writes the next bulk frame for the line into `buf`: the transfer's OFFER, or a chunk the
    /// node's credit, its holes and the pacer allow now. Call when the previous one has left
    /// (the pacer counts a chunk as on the line from the moment it is handed out).
    pub fn poll_bulk(&mut self, now: Millis, buf: &mut [u8; MAX_BULK_FRAME_LEN]) -> Option<usize> {
        self.now = self.now.max(now);
        self.take_ota_controls();
        let ota = self.ota.as_mut()?;
        let node = self.node.as_mut().filter(|n| n.uid == ota.uid)?;
        let encoded = if let Some(chunk) = ota.offer.take() {
            let image = ota.transfer.image().clone();
            encode_sealed_bulk(&Bulk::Offer(image.offer(chunk)), &mut node.sealer, buf).ok()
        } else {
            let chunk = ota.transfer.poll_chunk(now)?;
            let image = ota.transfer.image();
            encode_sealed_bulk(&Bulk::Chunk(image.chunk(chunk)), &mut node.sealer, buf).ok()
        };
        if node.sealer.sent() == u32::MAX {
            self.detach();
        }
        self.drain_transfer_events();
        encoded
    }

    /// The transfer's controls go out with the ACKs, ahead of any chunk; an OFFER waits for
    /// [`PortSession::poll_bulk`].
    fn take_ota_controls(&mut self) {
        let Some(ota) = &mut self.ota else { return };
        if self.node.as_ref().is_none_or(|n| n.uid != ota.uid) {
            return;
        }
        while let Some(out) = ota.transfer.poll_control(self.now) {
            match out {
                OtaOut::Offer { chunk, .. } => ota.offer = Some(chunk),
                OtaOut::Control(control) => self.transmit.push_back(Message::OtaControl(control)),
            }
        }
    }

    fn handle_ota_status(&mut self, status: OtaStatus) {
        let Some(node) = &self.node else { return };
        let (uid, boot_id) = (node.uid, node.boot_id);
        self.actions.push_back(Action::OtaStatus {
            uid,
            boot_id,
            status,
        });
        if let Some(t) = self.ota.as_mut().filter(|t| t.uid == uid) {
            t.transfer.handle_status(self.now, &status);
        }
        self.drain_transfer_events();
    }

    /// A new session opened with `uid` on this port (or none is open any more): the transfer
    /// learns whether its node can hear it.
    fn ota_session_changed(&mut self, uid: Option<[u8; 8]>) {
        let now = self.now;
        if let Some(t) = &mut self.ota {
            t.offer = None;
            if Some(t.uid) == uid {
                t.transfer.handle_link_up(now);
            } else {
                t.transfer.handle_link_lost(now);
            }
        }
        self.drain_transfer_events();
    }

    /// The node is no longer attached (port reset, revoked, its counter spent).
    fn detach(&mut self) {
        self.node = None;
        self.fail_requests(NodeRequestError::LinkLost);
        self.ota_session_changed(None);
    }

    // ---- requests to the node ----

    /// Asks node `uid` for `request`; the outcome comes back as [`Action::Answer`] with `token`,
    /// at the latest `timeout` after `now` (driven by [`PortSession::handle_timeout`]). At once
    /// `NotLinked` when the node has no session on this port.
    pub fn handle_request(
        &mut self,
        now: Millis,
        token: u64,
        uid: [u8; 8],
        request: NodeRequest,
        timeout: Duration,
    ) {
        self.now = self.now.max(now);
        let refused = if self.node.as_ref().is_none_or(|n| n.uid != uid) {
            Some(NodeRequestError::NotLinked)
        } else if self.requests.len() >= MAX_REQUESTS_IN_FLIGHT {
            Some(NodeRequestError::Busy)
        } else {
            None
        };
        if let Some(error) = refused {
            self.actions.push_back(Action::Answer {
                token,
                result: Err(error),
            });
            return;
        }
        // An id not in flight: at most MAX_REQUESTS_IN_FLIGHT are, so one is found at once.
        let mut id = self.next_command_id;
        while self.requests.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_command_id = id.wrapping_add(1);
        let (code, args) = request.command();
        self.transmit
            .push_back(Message::Command(outpost_proto::Command { id, code, args }));
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.requests.insert(
            id,
            PendingRequest {
                token,
                request,
                deadline: now + timeout_ms,
            },
        );
    }

    /// Every request waiting fails with `error` (the session they were sent in is gone).
    fn fail_requests(&mut self, error: NodeRequestError) {
        for (_, pending) in std::mem::take(&mut self.requests) {
            self.actions.push_back(Action::Answer {
                token: pending.token,
                result: Err(error),
            });
        }
    }

    /// Requests past their deadline fail with `TimedOut`.
    fn expire_requests(&mut self, now: Millis) {
        let expired: Vec<u16> = self
            .requests
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(pending) = self.requests.remove(&id) {
                self.actions.push_back(Action::Answer {
                    token: pending.token,
                    result: Err(NodeRequestError::TimedOut),
                });
            }
        }
    }

    fn drain_transfer_events(&mut self) {
        let Some(t) = &mut self.ota else { return };
        while let Some(event) = t.transfer.poll_event() {
            self.actions
                .push_back(Action::Transfer { uid: t.uid, event });
        }
    }
}

#[cfg(test)]
mod tests;
