//! The node's end of the node link: session, sample ring and telemetry window.
//!
//! Rules (the gateway is written to the same contract; `docs/node-link.md` is the reference):
//!
//! - A node boots `Unaccepted` and sends HELLO (with a fresh X25519 ephemeral) + ENROLL at once
//!   and every `hello_interval` until a sealed ACCEPT for its `boot_id` arrives. A CHALLENGE
//!   signed by the gateway over its latest HELLO is answered with a PROOF signed by the node's
//!   key, and the session keys derived then open that ACCEPT (`outpost_proto::session`).
//! - Every message after the handshake is sealed (counter and tag) both ways: the node takes
//!   nothing unsealed from the gateway but a CHALLENGE, and sends nothing unsealed but HELLO,
//!   ENROLL and PROOF.
//! - Every sample goes into a bounded ring and stays there until the gateway acknowledges it
//!   (ACCEPT's `ack_upto` or ACK's `upto`, both cumulative). A full ring drops its oldest
//!   sample; TELEMETRY's `window_start` then tells the gateway the gap is final.
//! - While `Accepted`, held samples are sent in seq order, at most [`WINDOW`] unacknowledged.
//! - A NACK names samples that did not arrive while later ones did: exactly those are sent
//!   again, at once, before anything new (selective repeat).
//! - With no ACK progress for the retransmit timeout, sending restarts at the oldest held
//!   sample (go-back-N): the repair of last resort, for a lost NACK or a lost tail. The timeout
//!   adapts to the round trip the node measures (RFC 6298, Karn's rule), between [`RTO_MIN`] and
//!   [`RTO_MAX`], starting at [`RTO_MAX`] and doubling on every expiry.
//! - Silence from the gateway for [`LINK_TIMEOUT`] while samples wait means the session is
//!   gone (a restarted gateway ignores TELEMETRY from nodes that have not said HELLO): the node
//!   is `Unaccepted` again and says HELLO.
//!
//! Why this stays simple: acknowledgements are cumulative and the ring is ordered by seq, so
//! "what to send next" is one number (`next_send`), "what is in flight" is the range from the
//! oldest held sample up to it, and "what the gateway asked for again" is one more range
//! (`resend`). Every loss is repaired by sending again what the gateway does not hold; it keeps
//! only `seq == last + 1` (holding a few later frames until the gap is filled), so a resend is
//! never stored twice.

use core::time::Duration;

use core::fmt;

use crate::diag::LogRing;
use ed25519_dalek::SigningKey;
use heapless::{Deque, String, Vec};
use outpost_proto::diag::{self, LogEvent, LogRead, ResetHistory};
use outpost_proto::session::{Ephemeral, node_answer};
use outpost_proto::wire::{MAX_CHANNELS, MAX_LOT_LEN, MAX_READINGS};
use outpost_proto::{
    Accept, Ack, AnyFrame, AuthError, Bulk, BulkFrameDecoder, Challenge, ChannelId, Command,
    Enroll, FwVersion, Health, Hello, LinkCounters, Message, Millis, Nack, Opener, OtaControl,
    OtaStatus, Proof, Reading, Received, ResetReason, Response, Sealer, Telemetry, encode_frame,
    encode_sealed_frame,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Most TELEMETRY frames sent and not yet acknowledged.
pub use outpost_proto::WINDOW;
/// The longest retransmit timeout, and the first one, before any round trip is measured: frames
/// in flight with no ACK progress for the timeout are sent again.
pub const RTO_MAX: Duration = Duration::from_millis(1000);
/// The shortest retransmit timeout, however fast the round trip: the gateway groups commits, and
/// a timer shorter than a slow commit would only resend what is on its way to the disk.
pub const RTO_MIN: Duration = Duration::from_millis(200);
/// The retransmit timeout before any round trip is measured.
pub const RTO: Duration = RTO_MAX;
/// Silence from the gateway, while samples wait, after which the session counts as lost.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(3);
/// Control frames (HELLO, ENROLL, HEALTH, RESPONSE) queued for `poll_transmit`.
const CONTROL_QUEUE: usize = 8;

/// COMMAND code of PING: answered with status 0 and the arguments echoed. Every command code
/// is in [`outpost_proto::diag::code`].
pub const COMMAND_PING: u8 = diag::code::PING;
/// RESPONSE status of a command that ran.
pub const STATUS_OK: u8 = diag::status::OK;
/// RESPONSE status of a command code this node does not know.
pub const STATUS_UNSUPPORTED: u8 = diag::status::UNSUPPORTED;

/// Who the node is; sent in HELLO and ENROLL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: [u8; 8],
    pub hw_rev: u8,
    pub fw: FwVersion,
    pub lot: String<MAX_LOT_LEN>,
    pub channels: Vec<ChannelId, MAX_CHANNELS>,
}

/// What the node keeps secret: its identity key and the randomness of this boot. Inputs from the
/// board (key from flash, entropy from the ring oscillator or the OS); never printed.
pub struct Secrets {
    /// The node's Ed25519 key: its public half is pinned by the gateway at enrolment.
    pub signing_key: SigningKey,
    /// The gateway's node-link key this node is tied to, if it was given one (at manufacture,
    /// or kept from an earlier boot). `None`: the first gateway that completes a handshake is
    /// pinned for the rest of the boot ([`NodeLink::gateway_key`] tells the board which).
    pub gateway_key: Option<[u8; 32]>,
    /// 32 random bytes, fresh at every boot: seeds the generator of handshake ephemerals.
    pub entropy: [u8; 32],
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("public_key", &self.signing_key.verifying_key().to_bytes())
            .field("gateway_key", &self.gateway_key)
            .finish_non_exhaustive()
    }
}

/// What this boot is: inputs from the board, never derived inside the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// Random per boot (not derived from any seed), so a reboot is never mistaken for the
    /// previous boot's session.
    pub boot_id: u32,
    pub reset_reason: ResetReason,
}

/// Tunables of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    pub hello_interval: Duration,
    pub health_interval: Duration,
    /// Samples held at most; the ring's capacity when larger. At least 1.
    pub ring_limit: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            hello_interval: Duration::from_secs(1),
            health_interval: Duration::from_secs(10),
            ring_limit: usize::MAX,
        }
    }
}

/// What the board measures about itself, reported in HEALTH. Updated by the board.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoardStatus {
    /// Least free stack seen since boot, bytes.
    pub stack_free_min: u32,
    /// Die temperature, hundredths of a degree Celsius.
    pub chip_temp_centi: i16,
}

/// Session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Saying HELLO; samples are held, not sent.
    Unaccepted,
    /// The gateway accepted this boot; telemetry flows.
    Accepted,
}

/// What the node has counted since boot. Counters wrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Samples taken (the last seq).
    pub samples: u32,
    /// Frames received and decoded.
    pub rx_frames: u32,
    /// Frames received and dropped (noise, truncation, CRC, unknown message).
    pub rx_errors: u32,
    /// Frames handed out by `poll_transmit`.
    pub tx_frames: u32,
    /// Frames that could not be queued or encoded, and were dropped.
    pub tx_dropped: u32,
    /// TELEMETRY frames sent again.
    pub retransmits: u32,
    /// Samples lost to a full ring before the gateway acknowledged them.
    pub dropped_samples: u32,
    /// NACKs received for this boot.
    pub nacks: u32,
    /// Times the retransmit timer expired and everything in flight was sent again.
    pub timeouts: u32,
    /// Sealed frames whose seal did not verify (forged, bit-flipped, another session's).
    pub auth_failed: u32,
    /// Sealed frames of this session taken before: replays.
    pub replayed: u32,
    /// CHALLENGEs refused: a signature that does not verify, or a gateway not the pinned one.
    pub challenges_refused: u32,
    /// Sessions opened (ACCEPTs taken after a handshake).
    pub sessions: u32,
}

/// The retransmit timeout, from measured round trips (RFC 6298 in whole milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RetransmitTimer {
    /// Smoothed round trip and its mean deviation, once one was measured.
    srtt_ms: Option<u64>,
    rttvar_ms: u64,
    /// The current timeout (backed off after expiries).
    rto_ms: u64,
}

impl RetransmitTimer {
    const MIN_MS: u64 = RTO_MIN.as_millis() as u64;
    const MAX_MS: u64 = RTO_MAX.as_millis() as u64;

    fn new() -> Self {
        RetransmitTimer {
            srtt_ms: None,
            rttvar_ms: 0,
            rto_ms: Self::MAX_MS,
        }
    }

    /// A round trip measured on a frame sent once (Karn: never on a resent one).
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
        self.rto_ms = (srtt + (4 * rttvar).max(1)).clamp(Self::MIN_MS, Self::MAX_MS);
    }

    /// The timer expired: wait twice as long next time (up to the maximum).
    fn backed_off(&mut self) {
        self.rto_ms = (self.rto_ms * 2).min(Self::MAX_MS);
    }
}

#[derive(Debug, Clone)]
struct Sample {
    seq: u32,
    taken_at: Millis,
    readings: Vec<Reading, MAX_READINGS>,
}

/// A control frame waiting for `poll_transmit`. HEALTH is built when it is sent, so its
/// counters are current.
#[derive(Debug, Clone)]
enum Control {
    Hello,
    Enroll,
    Proof(Proof),
    Health,
    Response(Response),
    /// The answer to REBOOT: once it is handed out, the board may reset.
    RebootAnswer(Response),
}

/// One direction pair of an open (or opening) session.
#[derive(Debug, Clone)]
struct Keys {
    sealer: Sealer,
    opener: Opener,
    gateway_key: [u8; 32],
}

// Design: `NodeLink` owns the node's side of one node-link session: the frame decoder, the
// ring of unacknowledged samples (capacity `RING`, fixed, no heap), the session state and its
// four timers (hello, health, retransmit, link timeout), and a small bounded queue of control
// frames. It never does I/O, never reads a clock (every input carries `now`), never draws a
// random number (`boot_id` is an input) and never panics on input: anything that does not fit
// is dropped and counted. Sampling is not here: `App` takes samples and hands them in with
// `handle_sample`.
/// The node link, node side. See the module docs for the rules. `O` takes firmware updates
/// ([`crate::ota::Updater`]); [`NoOta`] is a node that takes none and never says it does.
#[derive(Debug)]
pub struct NodeLink<const RING: usize, O = NoOta> {
    identity: Identity,
    signing_key: SigningKey,
    /// The gateway this node is tied to: given, or pinned at the first session of this boot.
    gateway_key: Option<[u8; 32]>,
    rng: ChaCha20Rng,
    /// The ephemeral of the latest HELLO, until a CHALLENGE to it is answered.
    ephemeral: Option<Ephemeral>,
    /// Keys of the last PROOF sent, waiting for the gateway's sealed ACCEPT.
    pending: Option<Keys>,
    /// The open session: seals what the node sends and opens what it hears.
    session: Option<Keys>,
    boot: Boot,
    config: LinkConfig,
    board: BoardStatus,
    booted_at: Millis,
    /// Latest time handed in; `poll_transmit` stamps `age_ms` and arms timers with it.
    now: Millis,
    state: LinkState,
    /// Holds bulk frames too (firmware chunks, up to 1,050 bytes): one buffer, no copy.
    decoder: BulkFrameDecoder,
    ota: O,
    ring: Deque<Sample, RING>,
    next_seq: u32,
    /// Seq of the next TELEMETRY to send; between the oldest held seq and the newest + 1.
    next_send: u32,
    /// Highest seq ever sent: anything at or below it is a retransmit.
    highest_sent: u32,
    /// Samples the gateway asked for again (a NACK), sent before anything new: `from..=to`.
    resend: Option<(u32, u32)>,
    /// One sample sent once, being timed until an ACK covers it: its seq and when it was sent.
    rtt_probe: Option<(u32, Millis)>,
    timer: RetransmitTimer,
    next_hello: Millis,
    next_health: Millis,
    /// Armed while frames are in flight; reset by ACK progress.
    rto_at: Option<Millis>,
    /// Start of the silence that counts towards `LINK_TIMEOUT`: the last message heard, or the
    /// moment samples started waiting, whichever is later.
    quiet_since: Millis,
    control: Deque<Control, CONTROL_QUEUE>,
    counters: NodeCounters,
    /// The boots the board recorded in flash, newest first (RESET_HISTORY's answer).
    history: ResetHistory,
    /// What this boot saw (LOG_READ's answer).
    log: LogRing,
    /// The OTA phase last logged.
    logged_phase: Option<u8>,
    /// The answer to a REBOOT went out: the board resets now.
    reboot_due: bool,
}

/// What the link hands a firmware updater and takes from it: the OTA messages, opened; the
/// session coming up; acknowledgements; and the OTA_STATUS to send.
pub trait OtaHandler {
    fn handle_bulk(&mut self, now: Millis, bulk: Bulk<'_>);
    fn handle_control(&mut self, control: OtaControl);
    fn handle_session_up(&mut self, now: Millis);
    fn handle_acked(&mut self, now: Millis, upto: u32);
    fn poll_status(&mut self) -> Option<OtaStatus>;
    /// Runs the updater's timers (a trial's deadline); `board_ok` is the board's own verdict
    /// (every channel read without error, watchdog running).
    fn handle_timeout(&mut self, _now: Millis, _board_ok: bool) {}
    fn poll_timeout(&self) -> Option<Millis> {
        None
    }
    fn poll_action(&mut self) -> Option<crate::ota::OtaAction> {
        None
    }
    /// The update's phase (OTA_STATUS code), logged when it changes; `None` without updates.
    fn phase_code(&self) -> Option<u8> {
        None
    }
}

/// A node without firmware updates: takes nothing, reports nothing, so a gateway never offers
/// it an image.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOta;

impl OtaHandler for NoOta {
    fn handle_bulk(&mut self, _: Millis, _: Bulk<'_>) {}
    fn handle_control(&mut self, _: OtaControl) {}
    fn handle_session_up(&mut self, _: Millis) {}
    fn handle_acked(&mut self, _: Millis, _: u32) {}
    fn poll_status(&mut self) -> Option<OtaStatus> {
        None
    }
}

impl<const RING: usize> NodeLink<RING> {
    /// A node without firmware updates that has just booted at `now`. Its first HELLO is due
    /// at once.
    pub fn new(
        now: Millis,
        identity: Identity,
        secrets: Secrets,
        boot: Boot,
        config: LinkConfig,
    ) -> Self {
        Self::with_ota(now, identity, secrets, boot, config, NoOta)
    }
}

impl<const RING: usize, O: OtaHandler> NodeLink<RING, O> {
    /// A node that has just booted at `now` and takes firmware updates through `ota`.
    pub fn with_ota(
        now: Millis,
        identity: Identity,
        secrets: Secrets,
        boot: Boot,
        config: LinkConfig,
        ota: O,
    ) -> Self {
        const { assert!(RING > 0, "the sample ring needs room for one sample") };
        NodeLink {
            identity,
            signing_key: secrets.signing_key,
            gateway_key: secrets.gateway_key,
            rng: ChaCha20Rng::from_seed(secrets.entropy),
            ephemeral: None,
            pending: None,
            session: None,
            boot,
            config,
            board: BoardStatus::default(),
            booted_at: now,
            now,
            state: LinkState::Unaccepted,
            decoder: BulkFrameDecoder::bulk(),
            ota,
            ring: Deque::new(),
            next_seq: 1,
            next_send: 1,
            highest_sent: 0,
            resend: None,
            rtt_probe: None,
            timer: RetransmitTimer::new(),
            next_hello: now,
            next_health: now,
            rto_at: None,
            quiet_since: now,
            control: Deque::new(),
            counters: NodeCounters::default(),
            history: ResetHistory::default(),
            log: LogRing::new(),
            logged_phase: None,
            reboot_due: false,
        }
    }

    // ---- inputs ----

    /// Bytes from the serial line, in any chunking.
    pub fn handle_bytes(&mut self, now: Millis, bytes: &[u8]) {
        for &byte in bytes {
            match self.decoder.push_any(byte) {
                Some(Ok(AnyFrame::Small(received))) => self.handle_received(now, received),
                Some(Ok(AnyFrame::Bulk(bulk))) => {
                    // A view into the decoder's buffer: opened and handed on right here, with
                    // field borrows only, before the next byte overwrites it.
                    self.now = self.now.max(now);
                    let c = &mut self.counters;
                    c.rx_frames = c.rx_frames.wrapping_add(1);
                    let session = match &mut self.session {
                        Some(session) if self.state == LinkState::Accepted => session,
                        _ => {
                            c.auth_failed = c.auth_failed.wrapping_add(1);
                            self.log
                                .push(uptime_ms(self.booted_at, now), LogEvent::AuthFailed, 1);
                            continue;
                        }
                    };
                    match bulk.open(&mut session.opener) {
                        Ok(bulk) => {
                            self.quiet_since = self.now;
                            self.ota.handle_bulk(now, bulk);
                        }
                        Err(AuthError::Replayed) => c.replayed = c.replayed.wrapping_add(1),
                        Err(AuthError::Forged) => {
                            c.auth_failed = c.auth_failed.wrapping_add(1);
                            self.log
                                .push(uptime_ms(self.booted_at, now), LogEvent::AuthFailed, 1);
                        }
                    }
                }
                Some(Err(_)) => self.counters.rx_errors = self.counters.rx_errors.wrapping_add(1),
                None => {}
            }
        }
        self.note_ota_phase();
    }

    /// One frame from the gateway: a CHALLENGE in the clear, anything else only once its seal
    /// opens under the session (or, for an ACCEPT, under the handshake just answered).
    fn handle_received(&mut self, now: Millis, received: Received) {
        self.advance(now);
        self.counters.rx_frames = self.counters.rx_frames.wrapping_add(1);
        if !received.is_sealed() {
            if let Some(Message::Challenge(challenge)) = received.into_clear() {
                self.handle_challenge(challenge);
            }
            // HELLO, ENROLL, PROOF echoed by the line: not from the gateway.
            return;
        }
        if matches!(received.message(), Message::Accept(a) if a.boot_id == self.boot.boot_id)
            && let Some(pending) = &mut self.pending
            && let Ok(message) = received.clone().open(&mut pending.opener)
        {
            // The handshake answered last is complete: its keys are the session now.
            let keys = self.pending.take().expect("matched above");
            self.gateway_key.get_or_insert(keys.gateway_key);
            self.session = Some(keys);
            self.state = LinkState::Unaccepted; // the ACCEPT below opens it afresh
            self.counters.sessions = self.counters.sessions.wrapping_add(1);
            self.handle_opened(message);
            return;
        }
        let Some(session) = &mut self.session else {
            self.counters.auth_failed = self.counters.auth_failed.wrapping_add(1);
            self.log_event(LogEvent::AuthFailed, 1);
            return;
        };
        match received.open(&mut session.opener) {
            Ok(message) => self.handle_opened(message),
            Err(AuthError::Replayed) => {
                self.counters.replayed = self.counters.replayed.wrapping_add(1);
                self.log_event(LogEvent::AuthFailed, 1);
            }
            Err(AuthError::Forged) => {
                self.counters.auth_failed = self.counters.auth_failed.wrapping_add(1);
                self.log_event(LogEvent::AuthFailed, 1);
            }
        }
    }

    /// A CHALLENGE: answered with a PROOF if the gateway signed the latest HELLO (and is the
    /// pinned one, if any). Not "heard": anyone can send one.
    fn handle_challenge(&mut self, challenge: Challenge) {
        if self.state == LinkState::Accepted || challenge.boot_id != self.boot.boot_id {
            return;
        }
        let Some(ephemeral) = &self.ephemeral else {
            return;
        };
        match node_answer(
            &self.signing_key,
            self.identity.uid,
            self.boot.boot_id,
            ephemeral,
            &challenge,
            self.gateway_key.as_ref(),
        ) {
            Ok((proof, keys)) => {
                // One answer per ephemeral: a lost PROOF is repaired by the next HELLO.
                self.ephemeral = None;
                let (sealer, opener) = keys.node();
                self.pending = Some(Keys {
                    sealer,
                    opener,
                    gateway_key: challenge.gateway_key,
                });
                self.queue(Control::Proof(proof));
            }
            Err(_) => {
                self.counters.challenges_refused = self.counters.challenges_refused.wrapping_add(1);
            }
        }
    }

    /// One message from the gateway, its seal verified.
    fn handle_opened(&mut self, message: Message) {
        let now = self.now;
        match message {
            Message::Accept(Accept { boot_id, ack_upto }) if boot_id == self.boot.boot_id => {
                self.heard();
                self.acknowledge(ack_upto);
                // A late ACCEPT (answer to an earlier HELLO) in an open session is just an ACK:
                // restarting the window there would only resend what is in flight.
                if self.state == LinkState::Unaccepted {
                    self.state = LinkState::Accepted;
                    self.next_send = self.oldest_seq();
                    self.rto_at = None;
                    self.queue(Control::Health);
                    self.next_health = now + self.config.health_interval;
                    self.ota.handle_session_up(now);
                    #[allow(clippy::cast_possible_truncation)] // the low 16 bits: a count
                    self.log_event(LogEvent::LinkUp, self.counters.sessions as u16);
                }
            }
            Message::Ack(Ack { boot_id, upto }) if boot_id == self.boot.boot_id => {
                self.heard();
                // An ACK is a fact about the gateway's disk, true in any state.
                self.acknowledge(upto);
            }
            Message::Nack(Nack { boot_id, from, to }) if boot_id == self.boot.boot_id => {
                self.heard();
                self.counters.nacks = self.counters.nacks.wrapping_add(1);
                if self.state == LinkState::Accepted {
                    self.ask_again(from, to);
                }
            }
            // Commands open only under the session's keys: nobody without them gets here.
            Message::Command(command) => {
                self.heard();
                self.handle_command(command);
            }
            Message::OtaControl(control) if self.state == LinkState::Accepted => {
                self.heard();
                self.ota.handle_control(control);
            }
            // ACCEPT/ACK for another boot (stale, or meant for the node's previous life), or a
            // node-to-gateway message: not for us, not "heard".
            _ => {}
        }
    }

    /// A new sample of every channel, taken at `now`. Returns its seq.
    pub fn handle_sample(&mut self, now: Millis, readings: Vec<Reading, MAX_READINGS>) -> u32 {
        self.advance(now);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.counters.samples = seq;
        if self.ring.is_empty() {
            // Samples start waiting now: silence before this moment does not count.
            self.quiet_since = now;
        }
        if self.ring.len() >= self.ring_limit() {
            self.ring.pop_front();
            self.counters.dropped_samples = self.counters.dropped_samples.wrapping_add(1);
            // Frames of the dropped sample may be in flight; sending continues after it.
            self.next_send = self.next_send.max(self.oldest_seq());
            self.clip_resend();
        }
        let sample = Sample {
            seq,
            taken_at: now,
            readings,
        };
        // Cannot fail: a slot was freed above when the ring was at its limit (<= RING).
        let _ = self.ring.push_back(sample);
        seq
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.advance(now);
        if self.state == LinkState::Accepted
            && self.link_deadline().is_some_and(|deadline| now >= deadline)
        {
            // The gateway is gone or restarted: start over with HELLO. Held samples stay held
            // and the next ACCEPT's `ack_upto` says where to resume.
            self.state = LinkState::Unaccepted;
            self.rto_at = None;
            self.resend = None;
            self.next_hello = now;
            let held = u16::try_from(self.ring.len()).unwrap_or(u16::MAX);
            self.log_event(LogEvent::LinkDown, held);
        }
        match self.state {
            LinkState::Unaccepted => {
                if now >= self.next_hello {
                    self.queue(Control::Hello);
                    self.queue(Control::Enroll);
                    self.next_hello = now + self.config.hello_interval;
                }
            }
            LinkState::Accepted => {
                if now >= self.next_health {
                    self.queue(Control::Health);
                    self.next_health = now + self.config.health_interval;
                }
                if self.rto_at.is_some_and(|at| now >= at) {
                    // Go-back-N: no ACK progress for the timeout, send again from the oldest
                    // held sample. The timer is re-armed by the first frame sent, backed off.
                    self.rto_at = None;
                    self.resend = None;
                    self.rtt_probe = None;
                    self.next_send = self.oldest_seq();
                    self.timer.backed_off();
                    self.counters.timeouts = self.counters.timeouts.wrapping_add(1);
                }
            }
        }
        self.note_ota_phase();
    }

    /// The boots the board recorded (`crate::diag::record_boot`), newest first: what the node
    /// answers RESET_HISTORY with.
    pub fn set_reset_history(&mut self, history: ResetHistory) {
        self.history = history;
    }

    /// Logs an event the board saw (a sensor error, a watchdog near miss) at the latest time
    /// handed in.
    pub fn log_event(&mut self, event: LogEvent, arg: u16) {
        self.log
            .push(uptime_ms(self.booted_at, self.now), event, arg);
    }

    /// The board's own measurements, reported in the next HEALTH.
    pub fn set_board_status(&mut self, board: BoardStatus) {
        self.board = board;
    }

    // ---- outputs ----

    /// Writes the next frame to send into `buf` (size it with `frame::MAX_FRAME_LEN`) and
    /// returns its length; `None` when there is nothing to send. Call until `None` after every
    /// input. A frame that does not fit `buf` is dropped and counted.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let message = match self.control.pop_front() {
                Some(control) => self.control_message(control),
                None => match self.ota_status() {
                    Some(status) => Message::OtaStatus(status),
                    None => self.next_telemetry()?,
                },
            };
            let encoded = if message.is_sealed() {
                match &mut self.session {
                    Some(session) => {
                        let encoded = encode_sealed_frame(&message, &mut session.sealer, buf);
                        if session.sealer.sent() == u32::MAX {
                            // The counter is spent: a new handshake before the next frame.
                            self.session = None;
                            self.state = LinkState::Unaccepted;
                            self.next_hello = self.now;
                        }
                        encoded
                    }
                    // HEALTH or RESPONSE queued before the session ended: not sent in clear.
                    None => Err(outpost_proto::EncodeError),
                }
            } else {
                encode_frame(&message, buf)
            };
            match encoded {
                Ok(len) => {
                    self.counters.tx_frames = self.counters.tx_frames.wrapping_add(1);
                    return Some(len);
                }
                // A TELEMETRY dropped here counts as sent: the retransmit timer resends it.
                Err(_) => self.counters.tx_dropped = self.counters.tx_dropped.wrapping_add(1),
            }
        }
    }

    /// When `handle_timeout` must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        let at = match self.state {
            LinkState::Unaccepted => self.next_hello,
            LinkState::Accepted => {
                let mut at = self.next_health;
                if let Some(rto) = self.rto_at {
                    at = at.min(rto);
                }
                if let Some(deadline) = self.link_deadline() {
                    at = at.min(deadline);
                }
                at
            }
        };
        Some(at)
    }

    /// The answer to a REBOOT has been handed out: the board resets now (reason `software` at
    /// the next boot).
    #[must_use]
    pub fn reboot_requested(&self) -> bool {
        self.reboot_due
    }

    // ---- accessors ----

    /// The reset history the node answers with.
    #[must_use]
    pub fn reset_history(&self) -> &ResetHistory {
        &self.history
    }

    /// This boot's log.
    #[must_use]
    pub fn log(&self) -> &LogRing {
        &self.log
    }

    /// The firmware updater.
    #[must_use]
    pub fn ota(&self) -> &O {
        &self.ota
    }

    pub fn ota_mut(&mut self) -> &mut O {
        &mut self.ota
    }

    #[must_use]
    pub fn state(&self) -> LinkState {
        self.state
    }

    #[must_use]
    pub fn boot(&self) -> Boot {
        self.boot
    }

    #[must_use]
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The node's Ed25519 public key, sent in ENROLL.
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        self.signing_key.verifying_key().to_bytes()
    }

    /// The gateway key this node is tied to: given at start, or pinned by the first session of
    /// this boot. A board that keeps it across boots (flash) refuses any other gateway after.
    #[must_use]
    pub fn gateway_key(&self) -> Option<[u8; 32]> {
        self.gateway_key
    }

    #[must_use]
    pub fn counters(&self) -> NodeCounters {
        self.counters
    }

    /// What the frame decoder has seen (bytes discarded, CRC errors).
    #[must_use]
    pub fn decoder_counters(&self) -> LinkCounters {
        self.decoder.counters()
    }

    /// Seq the next sample will get.
    #[must_use]
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Samples held, waiting for an acknowledgement.
    #[must_use]
    pub fn held(&self) -> usize {
        self.ring.len()
    }

    /// The current retransmit timeout.
    #[must_use]
    pub fn retransmit_timeout(&self) -> Duration {
        Duration::from_millis(self.timer.rto_ms)
    }

    /// Seq of the oldest held sample, `None` when the ring is empty.
    #[must_use]
    pub fn oldest_held(&self) -> Option<u32> {
        self.ring.front().map(|s| s.seq)
    }

    // ---- internals ----

    fn advance(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    fn heard(&mut self) {
        self.quiet_since = self.now;
    }

    /// The updater's OTA_STATUS, once a session is open to carry it.
    fn ota_status(&mut self) -> Option<OtaStatus> {
        if self.state != LinkState::Accepted || self.session.is_none() {
            return None;
        }
        self.ota.poll_status()
    }

    fn ring_limit(&self) -> usize {
        self.config.ring_limit.clamp(1, RING)
    }

    /// `window_start`: the oldest held seq, or the next seq when nothing is held.
    fn oldest_seq(&self) -> u32 {
        self.ring.front().map_or(self.next_seq, |s| s.seq)
    }

    fn in_flight(&self) -> u32 {
        self.next_send.saturating_sub(self.oldest_seq())
    }

    fn link_deadline(&self) -> Option<Millis> {
        (!self.ring.is_empty()).then(|| self.quiet_since + LINK_TIMEOUT)
    }

    /// Drops every held sample with `seq <= upto`.
    fn acknowledge(&mut self, upto: u32) {
        let mut progress = false;
        while self.ring.front().is_some_and(|s| s.seq <= upto) {
            self.ring.pop_front();
            progress = true;
        }
        self.ota.handle_acked(self.now, upto);
        if !progress {
            return;
        }
        if let Some((_, sent_at)) = self.rtt_probe.filter(|&(seq, _)| seq <= upto) {
            self.timer.measured(self.now - sent_at);
            self.rtt_probe = None;
        }
        self.next_send = self.next_send.max(self.oldest_seq());
        self.clip_resend();
        self.rto_at = (self.in_flight() > 0).then(|| self.now + self.retransmit_timeout());
    }

    /// A NACK: send `from..=to` again, as far as they are held and were sent. Merged with a
    /// range asked for earlier and not yet sent.
    fn ask_again(&mut self, from: u32, to: u32) {
        let (from, to) = match self.resend {
            Some((f, t)) => (from.min(f), to.max(t)),
            None => (from, to),
        };
        self.resend = Some((from, to));
        self.clip_resend();
        if self
            .rtt_probe
            .is_some_and(|(seq, _)| self.resend.is_some_and(|(f, t)| (f..=t).contains(&seq)))
        {
            self.rtt_probe = None; // it was lost: its round trip would include the NACK's
        }
    }

    /// Keeps the resend range within what is held and was sent.
    fn clip_resend(&mut self) {
        let (held_from, sent_to) = (self.oldest_seq(), self.next_send.wrapping_sub(1));
        self.resend = self
            .resend
            .map(|(from, to)| (from.max(held_from), to.min(sent_to)))
            .filter(|(from, to)| from <= to);
    }

    fn queue(&mut self, control: Control) {
        if self.control.push_back(control).is_err() {
            self.counters.tx_dropped = self.counters.tx_dropped.wrapping_add(1);
        }
    }

    fn next_telemetry(&mut self) -> Option<Message> {
        if self.state != LinkState::Accepted {
            return None;
        }
        let window_start = self.oldest_seq();
        if let Some((from, to)) = self.resend {
            // Asked for again: only these, before anything new. `clip_resend` keeps `from`
            // held and below `next_send`.
            self.resend = (from < to).then(|| (from + 1, to));
            let sample = self.ring.get(usize::try_from(from - window_start).ok()?)?;
            let telemetry = Telemetry {
                seq: sample.seq,
                window_start,
                age_ms: u32::try_from(self.now - sample.taken_at).unwrap_or(u32::MAX),
                readings: sample.readings.clone(),
            };
            self.counters.retransmits = self.counters.retransmits.wrapping_add(1);
            if self.rto_at.is_none() {
                self.rto_at = Some(self.now + self.retransmit_timeout());
            }
            return Some(Message::Telemetry(telemetry));
        }
        if self.in_flight() >= WINDOW {
            return None;
        }
        let index = usize::try_from(self.in_flight()).ok()?;
        let sample = self.ring.get(index)?;
        let age_ms = u32::try_from(self.now - sample.taken_at).unwrap_or(u32::MAX);
        let telemetry = Telemetry {
            seq: sample.seq,
            window_start,
            age_ms,
            readings: sample.readings.clone(),
        };
        if sample.seq <= self.highest_sent {
            self.counters.retransmits = self.counters.retransmits.wrapping_add(1);
        } else if self.rtt_probe.is_none() {
            self.rtt_probe = Some((sample.seq, self.now));
        }
        self.highest_sent = self.highest_sent.max(sample.seq);
        self.next_send = sample.seq.wrapping_add(1);
        if self.rto_at.is_none() {
            self.rto_at = Some(self.now + self.retransmit_timeout());
        }
        Some(Message::Telemetry(telemetry))
    }

    fn control_message(&mut self, control: Control) -> Message {
        match control {
            Control::Hello => {
                // A fresh ephemeral for every HELLO: each handshake's keys are new on both sides.
                let mut random = [0u8; 32];
                self.rng.fill_bytes(&mut random);
                let ephemeral = Ephemeral::from_random(random);
                let public = ephemeral.public();
                self.ephemeral = Some(ephemeral);
                let id = &self.identity;
                Message::Hello(Hello {
                    uid: id.uid,
                    hw_rev: id.hw_rev,
                    fw: id.fw,
                    boot_id: self.boot.boot_id,
                    lot: id.lot.clone(),
                    channels: id.channels.clone(),
                    ephemeral: public,
                })
            }
            Control::Enroll => Message::Enroll(Enroll {
                uid: self.identity.uid,
                public_key: self.public_key(),
            }),
            Control::Proof(proof) => Message::Proof(proof),
            Control::Health => Message::Health(self.health()),
            Control::Response(response) => Message::Response(response),
            Control::RebootAnswer(response) => {
                // Handed out (or dropped with the session): either way the gateway asked.
                self.reboot_due = true;
                Message::Response(response)
            }
        }
    }

    fn health(&self) -> Health {
        let uptime_s = (self.now - self.booted_at) / 1000;
        let c = &self.counters;
        Health {
            uptime_s: u32::try_from(uptime_s).unwrap_or(u32::MAX),
            reset_reason: self.boot.reset_reason,
            fw: self.identity.fw,
            stack_free_min: self.board.stack_free_min,
            rx_frames: c.rx_frames,
            rx_errors: c.rx_errors,
            tx_frames: c.tx_frames,
            retransmits: c.retransmits,
            dropped_samples: c.dropped_samples,
            chip_temp_centi: self.board.chip_temp_centi,
        }
    }
}

impl<const RING: usize, O: OtaHandler> NodeLink<RING, O> {
    /// A COMMAND of the session: answered with a RESPONSE of the same id. An unknown code gets
    /// `UNSUPPORTED`, never a dropped session, so a gateway newer than the node keeps working.
    fn handle_command(&mut self, command: Command) {
        let id = command.id;
        let answer = |status, body| Response { id, status, body };
        let bad_arguments = answer(diag::status::BAD_ARGUMENTS, Vec::new());
        match command.code {
            diag::code::PING => self.queue(Control::Response(answer(STATUS_OK, command.args))),
            diag::code::REBOOT if command.args.is_empty() => {
                self.log_event(LogEvent::RebootRequested, 0);
                self.queue(Control::RebootAnswer(answer(STATUS_OK, Vec::new())));
            }
            diag::code::HEALTH_NOW if command.args.is_empty() => {
                self.queue(Control::Health);
                self.queue(Control::Response(answer(STATUS_OK, Vec::new())));
            }
            diag::code::RESET_HISTORY if command.args.is_empty() => {
                let mut body = Vec::new();
                let response = match self.history.emit(&mut body) {
                    Ok(()) => answer(STATUS_OK, body),
                    Err(_) => bad_arguments,
                };
                self.queue(Control::Response(response));
            }
            diag::code::LOG_READ => {
                let response = match LogRead::parse(&command.args) {
                    Ok(read) => {
                        let mut body = Vec::new();
                        match self.log.page(read.from).emit(&mut body) {
                            Ok(()) => answer(STATUS_OK, body),
                            Err(_) => bad_arguments,
                        }
                    }
                    Err(_) => bad_arguments,
                };
                self.queue(Control::Response(response));
            }
            diag::code::REBOOT | diag::code::HEALTH_NOW | diag::code::RESET_HISTORY => {
                self.queue(Control::Response(bad_arguments));
            }
            _ => self.queue(Control::Response(answer(STATUS_UNSUPPORTED, Vec::new()))),
        }
    }

    /// Logs the update's phase when it changed.
    fn note_ota_phase(&mut self) {
        let phase = self.ota.phase_code();
        if phase.is_some() && phase != self.logged_phase {
            self.logged_phase = phase;
            self.log_event(LogEvent::OtaPhase, phase.map_or(0, u16::from));
        }
    }
}

/// Time since boot in ms, as the log stamps it (wraps after 49.7 days).
#[allow(clippy::cast_possible_truncation)] // wraps by design
fn uptime_ms(booted_at: Millis, now: Millis) -> u32 {
    (now - booted_at) as u32
}
