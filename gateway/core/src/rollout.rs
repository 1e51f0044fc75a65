//! One staged rollout of node firmware on one gateway: which nodes get the image when, the gates
//! each stage must pass, halting and rolling back, and what survives a gateway restart.
//!
//! Design: [`Rollout`] owns the plan, every target node's phase in this rollout, the stage in
//! progress and the gate deadlines. It never does IO and never reads a clock: the adapter feeds
//! it what happened (`handle_*`, each with the monotonic `now`) and carries out the [`Action`]s
//! it drains with [`Rollout::poll_action`], sleeping until [`Rollout::poll_timeout`] in between.
//! Transfers themselves (chunks, credit, holes) are the per-node transfer core's; a rollout only
//! says when a transfer starts and what its outcome means.
//!
//! # Stages
//!
//! ```text
//!  staged:    canary ──► wave 1 ──► wave 2 … ──► last wave (100 %) ──► done: Finalize every node
//!  targeted:  the one node ─────────────────────────────────────────► done: Finalize it
//!
//!  each stage:  Queued ─► Transferring ─► Installing ─► Trial ─► Confirmed ─┐  (per node)
//!               confirm gate: every node of the stage Confirmed ◄──────────┘
//!               soak (Soaking) ─► soak gate ─► next stage
//! ```
//!
//! - **Canary**: the first `canary` nodes of the plan (default 1) that are online when the
//!   rollout starts and run another version than the target. Fewer when fewer are online; when
//!   none is online but some wait offline, the rollout halts (nothing was changed) rather than
//!   going on without a canary.
//! - **Waves**: cumulative shares of *all* target nodes ([`Waves`], default `25%,100%`). Wave
//!   `k` takes `ceil(share_k × total / 100)` minus the nodes already taken (by the canary, earlier
//!   waves, or left out as already on the target version), from the nodes not yet taken: online
//!   nodes first, then in plan order. An offline node picked by a wave that is not the last stays
//!   for a later wave; one picked by the last wave is left out (`skipped`, "offline when wave N
//!   began") so one dead node cannot stall the rollout. A wave that takes no node is skipped.
//! - **Targeted** (field support): one node, no canary and no waves, the same gates; its soak may
//!   be zero. The node is taken even when offline: its transfer waits for it.
//! - Nodes already on the target version are `skipped` at the start and never touched.
//!
//! Within a stage every node's transfer is started at once, except that a serial port carries
//! at most `max_concurrent_per_port` transfers (1: a port's session has one bulk stream): the
//! others of the stage on that port wait `queued` and go one after another. A node is told to
//! install as soon as its image is verified on it; the node resets, runs the image on trial and
//! confirms or reverts by itself (docs/ota-design.md §3.2).
//!
//! A node the image is refused by (`below-floor`, `busy`, …) is left out of the rollout; a
//! transfer that fails is started again, and after [`MAX_TRANSFER_FAILURES`] the node is left
//! out. Neither is evidence against the image, so neither fails a gate; but a first stage (the
//! canary, or the targeted node) that ends with no node confirmed halts the rollout without
//! rollback: nothing was proven.
//!
//! # Gates
//!
//! **Confirm gate.** Every node of the stage reports `confirmed` on the target version within
//! `confirm_within + 60 s` ([`CONFIRM_GRACE`]) of its INSTALL. The first node that reverts, or
//! whose deadline passes, fails the gate at once: the rollout halts with rollback and a reason
//! naming the node (`canary 0a1b2c3d4e5f6071 reverted (never confirmed)`). A revert with cause
//! `power_loss` (a power cut in the trial reverts a good image, risk R4) is retried once: the
//! node is queued for a new transfer and install (it keeps the sectors it has); a second one
//! counts as a failure.
//!
//! **Soak gate.** When the confirm gate passes the stage soaks for `soak` (default 10 min); at
//! its end the gate compares two shares over windows of time:
//!
//! - an **incident** of a node in a window `[a, b)` is an *unexpected reset* (a boot with a new
//!   `boot_id` that INSTALL did not cause, for a reason that is a symptom: watchdog, hard fault,
//!   brown-out, a reverted update, unknown; not power-on, a requested reboot, the RUN pin, a
//!   debugger: `ResetReason::is_expected`) at a time in the window, or an *outage*: offline
//!   (as the adapter reports it, from `site::node_state`) for longer than `offline_threshold`
//!   (default 60 s) of the window, counting only the part inside it;
//! - **updated** nodes `U`: every node this rollout has confirmed so far, of this stage and the
//!   earlier ones (a slow fault of the canary still shows in a later soak); `u` of them had an
//!   incident in the soak window `W`;
//! - **comparison** nodes `C`, while nodes remain that no stage has taken: those nodes over the
//!   same `W`; when none remain (the last wave, a targeted update): the same nodes `U` over the
//!   soak-long window just before this stage began, `[start − soak, start)`, as far as this
//!   gateway observed it (since the rollout started or the gateway last restarted). A comparison
//!   node offline for the whole of its window tells nothing and is left out of `C`; `c` of `C`
//!   had an incident.
//! - the gate **passes** when `u / |U| ≤ c / |C|`, compared exactly (`u·|C| ≤ c·|U|`, integers).
//!   When `C` is empty (every comparison node left out, or a window not observed at all) the
//!   comparison share is taken as zero: the gate passes only when `u = 0`.
//!
//! On failure the rollout halts with rollback and a reason with the counts
//! (`soak after canary: 1 of 1 updated nodes reset unexpectedly vs 0 of 11 not updated`); pass
//! or fail, the raw counts go out in the event ([`SoakCounts`]) for the `ota_events` table
//! (question Q6: revisit the rule with field data).
//!
//! **Small cohorts (Q6).** There is no tolerance: any incident among the updated nodes fails the
//! gate unless the comparison nodes had at least as large a share. With one canary and eleven
//! others, a single unexpected reset of the canary fails the soak unless all eleven others had an
//! incident in the same window; with two canaries it needs at least half of them. The rule errs
//! towards halting: a rollback costs a transfer per node, a bad image spread to the site costs
//! the site. What the gateway did not observe (after a restart) counts as quiet, which only ever
//! makes the gate stricter.
//!
//! # Halt
//!
//! A failed gate halts with rollback; the operator halts with or without (`handle_halt`; a halt
//! without rollback can be followed by one with). Once halted nothing new starts: queued nodes are
//! `aborted` where they stand, transfers in flight get [`Action::Abort`], nodes installing or in
//! their trial are left to confirm or revert by themselves (their deadline still runs). With
//! rollback, every node this rollout confirmed (also one that confirms after the halt) gets
//! [`Action::RollBack`]: a transfer of its previous artifact through the same path (port queue,
//! install, confirm within the deadline, one retry after a power loss), ending `rolled_back` or
//! `rollback_failed`; a node without a previous artifact is listed `cannot_roll_back` (Q4).
//! [`Action::Finalize`] (the node raises its anti-rollback floor) goes out only when the whole
//! rollout passed, so a rollback inside a rollout is never refused by a floor (Q3).
//!
//! # Persistence and restart
//!
//! | node phase | what the row means | on restore |
//! |---|---|---|
//! | `pending` | no stage has taken it | waits for its wave |
//! | `queued`, `rollback_queued` | taken; its port is busy | started when the port is free |
//! | `transferring`, `rollback_transferring` | StartTransfer / RollBack was sent | sent again: the transfer resumes where the node is |
//! | `installing` | the image is verified on the node; INSTALL was sent | INSTALL sent again (not in a halted rollout); a fresh confirm deadline |
//! | `trial`, `rollback_installing` | the node runs the image on trial | a fresh confirm deadline |
//! | `confirmed` | confirmed on the new version, not final | waits for the rollout to pass (or for the rollback) |
//! | `finalized`, `skipped`, `failed`, `aborted`, `rolled_back`, `rollback_failed`, `cannot_roll_back` | terminal | nothing |
//!
//! | rollout state | on restore |
//! |---|---|
//! | `running` | the stage goes on from its nodes' rows |
//! | `soaking` | the soak starts over, in full, from the restore |
//! | `rolling_back`, `halted`, `done` | as the rows say; nothing new starts |
//!
//! Every change of a node's phase (and of its boot id, attempts or cause) and every change of the
//! rollout's state or stage is an [`Action::Persist`] of the whole row ([`RolloutRow`],
//! [`NodeRow`]): write them with upsert semantics, those drained after one input in one
//! transaction, before carrying out the other actions of that drain (write-ahead: a restart never
//! finds a node told something its row does not say). Transfer progress is never persisted (the
//! node says what it has). [`Rollout::restore`] rebuilds the rollout from its rows after a
//! gateway restart and resumes it: transfers in flight are started again (the transfer resumes
//! where the node is), an INSTALL is sent again to a node `installing` (the node acts on it only
//! while it holds a verified image), confirm deadlines and a soak in progress start over from the
//! restore (longer observation, never shorter), and incidents seen before the restart are not
//! known. After a restore, report every node that is offline with [`Rollout::handle_online`];
//! until then a node counts as online.

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

use outpost_proto::{FwVersion, Millis, ResetReason};
use serde::{Serialize, Serializer};

use crate::hex;

/// Canary nodes when the plan does not say.
pub const DEFAULT_CANARY: usize = 1;
/// How long a stage soaks when the plan does not say.
pub const DEFAULT_SOAK: Duration = Duration::from_secs(600);
/// How long a trial image has to confirm its health, from INSTALL (docs/ota-design.md §3.2).
pub const DEFAULT_CONFIRM_WITHIN: Duration = Duration::from_secs(90);
/// What the gateway waits beyond `confirm_within` before it calls a node unconfirmed: the swap
/// (about 13 s for the 512 KiB slot), the re-handshake, and the report's way back.
pub const CONFIRM_GRACE: Duration = Duration::from_secs(60);
/// How long a node must stay offline (after the site calls it offline) to count as an outage.
pub const DEFAULT_OFFLINE_THRESHOLD: Duration = Duration::from_secs(60);
/// The most `confirm_within` can be: INSTALL carries it in seconds as a `u16`.
pub const MAX_CONFIRM_WITHIN: Duration = Duration::from_secs(u16::MAX as u64);
/// Failed transfers of one image to one node before the node is left out.
pub const MAX_TRANSFER_FAILURES: u8 = 3;
/// Reverts with cause `power_loss` tried again before one counts as a failure (risk R4).
pub const POWER_LOSS_RETRIES: u8 = 1;

/// An image, as a rollout refers to it: its SHA-256 names it, its version is what the node
/// reports once it runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Artifact {
    pub sha256: [u8; 32],
    pub version: FwVersion,
}

impl fmt::Display for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (sha256 {}…)",
            self.version,
            hex::encode(&self.sha256[..4])
        )
    }
}

/// Cumulative shares of all target nodes, in whole percent: strictly increasing, the last 100.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waves(Vec<u8>);

/// Why a list of waves is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavesError {
    #[error("no waves given: write cumulative shares of the nodes, e.g. `25%,100%`")]
    Empty,
    #[error("`{0}` is not a share: write a whole percentage such as `25%`")]
    NotAShare(String),
    #[error("a wave of 0% updates no node")]
    Zero,
    #[error("{0}% is above 100%")]
    Above100(u32),
    #[error(
        "waves are cumulative shares and must increase: {next}% comes after {previous}% (`25%,100%` means a quarter, then all)"
    )]
    NotIncreasing { previous: u32, next: u32 },
    #[error("the last wave is {0}%, not 100%: every target node must be covered")]
    LastBelow100(u32),
}

impl Waves {
    /// Waves from whole percentages.
    pub fn new(shares: &[u32]) -> Result<Waves, WavesError> {
        let mut previous = 0;
        for &share in shares {
            if share == 0 {
                return Err(WavesError::Zero);
            }
            if share > 100 {
                return Err(WavesError::Above100(share));
            }
            if share <= previous {
                return Err(WavesError::NotIncreasing {
                    previous,
                    next: share,
                });
            }
            previous = share;
        }
        match previous {
            0 => Err(WavesError::Empty),
            100 => Ok(Waves(
                shares
                    .iter()
                    .map(|&s| u8::try_from(s).unwrap_or(100))
                    .collect(),
            )),
            last => Err(WavesError::LastBelow100(last)),
        }
    }

    /// `25%,100%` (spaces around items allowed).
    pub fn parse(text: &str) -> Result<Waves, WavesError> {
        if text.trim().is_empty() {
            return Err(WavesError::Empty);
        }
        let shares = text
            .split(',')
            .map(|item| {
                let item = item.trim();
                let digits = item.strip_suffix('%').map(str::trim_end).unwrap_or("");
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(WavesError::NotAShare(item.to_owned()));
                }
                // Only digits: an error here is an overflow, which is above 100 % anyway.
                Ok(digits.parse::<u32>().unwrap_or(u32::MAX))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Waves::new(&shares)
    }

    /// The cumulative shares, percent.
    #[must_use]
    pub fn shares(&self) -> &[u8] {
        &self.0
    }
}

impl Default for Waves {
    fn default() -> Waves {
        Waves(vec![25, 100])
    }
}

impl FromStr for Waves {
    type Err = WavesError;
    fn from_str(text: &str) -> Result<Waves, WavesError> {
        Waves::parse(text)
    }
}

impl fmt::Display for Waves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, share) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{share}%")?;
        }
        Ok(())
    }
}

/// How the nodes are staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A canary of `canary` nodes, then the waves.
    Staged { canary: usize, waves: Waves },
    /// One node, no waves (field support).
    Targeted,
}

/// A plan's policy: everything but the nodes and the image. Also what the `rollouts` row keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub soak: Duration,
    /// What INSTALL gives the trial image to confirm (the gateway waits [`CONFIRM_GRACE`] more).
    pub confirm_within: Duration,
    /// An outage counts in the soak gate past this (module docs).
    pub offline_threshold: Duration,
    /// Transfers at once on one serial port.
    pub max_concurrent_per_port: NonZeroUsize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            mode: Mode::Staged {
                canary: DEFAULT_CANARY,
                waves: Waves::default(),
            },
            soak: DEFAULT_SOAK,
            confirm_within: DEFAULT_CONFIRM_WITHIN,
            offline_threshold: DEFAULT_OFFLINE_THRESHOLD,
            max_concurrent_per_port: NonZeroUsize::MIN,
        }
    }
}

/// A node the rollout is for, as the gateway knows it when the rollout starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetNode {
    /// The RP2040's flash id, as HELLO carries it.
    pub uid: [u8; 8],
    /// The serial port it is behind.
    pub port: String,
    /// The version it runs.
    pub version: FwVersion,
    pub online: bool,
    /// The boot it is in, when known: a later boot with another id is a reset.
    pub boot_id: Option<u32>,
    /// The image to roll it back to (the one it runs), if the gateway holds it.
    pub rollback: Option<Artifact>,
}

/// One rollout, as the operator asked for it and the admission check let it through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The `rollouts` row's id (the adapter assigns it).
    pub id: u64,
    pub artifact: Artifact,
    /// In the operator's order, which is the order nodes are picked in.
    pub nodes: Vec<TargetNode>,
    pub settings: Settings,
    /// Who started it (CLI, MQTT signer, technician), for the record.
    pub started_by: String,
}

/// Why a plan cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the plan names no node")]
    NoNodes,
    #[error("node {} is named twice", hex::encode(.0))]
    DuplicateNode([u8; 8]),
    #[error("a canary of 0 nodes: a staged rollout starts with at least one")]
    NoCanary,
    #[error("a targeted update is for exactly one node, not {0}")]
    TargetedNodes(usize),
    #[error("confirm_within of {0:?} is outside 1 s to 65535 s (INSTALL carries it in seconds)")]
    ConfirmWithin(Duration),
}

/// A node's phase in one rollout (`rollout_nodes.phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodePhase {
    /// Not taken by a stage yet.
    Pending,
    /// Taken by the current stage, waiting for its port.
    Queued,
    /// Its transfer runs.
    Transferring,
    /// The image is verified on the node and INSTALL was sent.
    Installing,
    /// It runs the new image on trial.
    Trial,
    /// It confirmed the new image.
    Confirmed,
    /// Terminal: the rollout passed and FINALIZE was sent.
    Finalized,
    /// Terminal: left out of this rollout (already on the version, refused, transfers failed,
    /// offline); `detail` says why. It keeps its image.
    Skipped,
    /// Terminal: it reverted, or did not confirm in time.
    Failed,
    /// Terminal: the rollout halted before its image was installed.
    Aborted,
    /// Halted with rollback: waiting for its port to take the previous image.
    RollbackQueued,
    RollbackTransferring,
    RollbackInstalling,
    /// Terminal: back on its previous image, confirmed.
    RolledBack,
    /// Terminal: the previous image could not be put back.
    RollbackFailed,
    /// Terminal: confirmed on the new image, with no previous artifact to go back to.
    CannotRollBack,
}

impl NodePhase {
    pub const ALL: [NodePhase; 16] = [
        NodePhase::Pending,
        NodePhase::Queued,
        NodePhase::Transferring,
        NodePhase::Installing,
        NodePhase::Trial,
        NodePhase::Confirmed,
        NodePhase::Finalized,
        NodePhase::Skipped,
        NodePhase::Failed,
        NodePhase::Aborted,
        NodePhase::RollbackQueued,
        NodePhase::RollbackTransferring,
        NodePhase::RollbackInstalling,
        NodePhase::RolledBack,
        NodePhase::RollbackFailed,
        NodePhase::CannotRollBack,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            NodePhase::Pending => "pending",
            NodePhase::Queued => "queued",
            NodePhase::Transferring => "transferring",
            NodePhase::Installing => "installing",
            NodePhase::Trial => "trial",
            NodePhase::Confirmed => "confirmed",
            NodePhase::Finalized => "finalized",
            NodePhase::Skipped => "skipped",
            NodePhase::Failed => "failed",
            NodePhase::Aborted => "aborted",
            NodePhase::RollbackQueued => "rollback_queued",
            NodePhase::RollbackTransferring => "rollback_transferring",
            NodePhase::RollbackInstalling => "rollback_installing",
            NodePhase::RolledBack => "rolled_back",
            NodePhase::RollbackFailed => "rollback_failed",
            NodePhase::CannotRollBack => "cannot_roll_back",
        }
    }

    /// The phase a row's text names.
    #[must_use]
    pub fn parse(text: &str) -> Option<NodePhase> {
        NodePhase::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// Nothing more happens to the node in this rollout.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            NodePhase::Finalized
                | NodePhase::Skipped
                | NodePhase::Failed
                | NodePhase::Aborted
                | NodePhase::RolledBack
                | NodePhase::RollbackFailed
                | NodePhase::CannotRollBack
        )
    }

    fn is_transfer(self) -> bool {
        matches!(
            self,
            NodePhase::Transferring | NodePhase::RollbackTransferring
        )
    }

    fn awaits_confirm(self) -> bool {
        matches!(
            self,
            NodePhase::Installing | NodePhase::Trial | NodePhase::RollbackInstalling
        )
    }
}

impl fmt::Display for NodePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stage of a rollout, ordered as they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StageId {
    Canary,
    /// The `n`th wave, from 1.
    Wave(u8),
    /// The one stage of a targeted update.
    Targeted,
}

impl StageId {
    /// `canary`, `wave 2`, `targeted`.
    #[must_use]
    pub fn parse(text: &str) -> Option<StageId> {
        match text {
            "canary" => Some(StageId::Canary),
            "targeted" => Some(StageId::Targeted),
            _ => {
                let n = text.strip_prefix("wave ")?;
                let canonical = !n.is_empty() && !n.starts_with('0');
                canonical
                    .then(|| n.parse().ok())
                    .flatten()
                    .map(StageId::Wave)
            }
        }
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageId::Canary => f.write_str("canary"),
            StageId::Wave(n) => write!(f, "wave {n}"),
            StageId::Targeted => f.write_str("targeted"),
        }
    }
}

impl Serialize for StageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where the rollout stands (`rollouts.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// A stage's transfers, installs and confirm gate.
    Running,
    /// A stage's soak.
    Soaking,
    /// Halted with rollback, and nodes still on their way back (or still in a trial).
    RollingBack,
    /// Terminal: halted; whatever was to be rolled back has ended.
    Halted,
    /// Terminal: every stage passed; FINALIZE was sent.
    Done,
}

impl RolloutState {
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Running,
        RolloutState::Soaking,
        RolloutState::RollingBack,
        RolloutState::Halted,
        RolloutState::Done,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Soaking => "soaking",
            RolloutState::RollingBack => "rolling_back",
            RolloutState::Halted => "halted",
            RolloutState::Done => "done",
        }
    }

    #[must_use]
    pub fn parse(text: &str) -> Option<RolloutState> {
        RolloutState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Why a trial image was reverted, as the old image reports it (OTA_STATUS `reverted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevertCause {
    /// It did not confirm its health within `confirm_within`.
    Deadline,
    /// A panic or HardFault.
    Crash,
    /// It hung and the watchdog reset it.
    Watchdog,
    /// The power was cut during the trial: says nothing about the image (risk R4).
    PowerLoss,
}

impl RevertCause {
    pub const ALL: [RevertCause; 4] = [
        RevertCause::Deadline,
        RevertCause::Crash,
        RevertCause::Watchdog,
        RevertCause::PowerLoss,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RevertCause::Deadline => "deadline",
            RevertCause::Crash => "crash",
            RevertCause::Watchdog => "watchdog",
            RevertCause::PowerLoss => "power_loss",
        }
    }

    #[must_use]
    pub fn parse(text: &str) -> Option<RevertCause> {
        RevertCause::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// What happened, for a reason line: "never confirmed", "crashed", …
    fn said(self) -> &'static str {
        match self {
            RevertCause::Deadline => "never confirmed",
            RevertCause::Crash => "crashed",
            RevertCause::Watchdog => "hung: watchdog reset",
            RevertCause::PowerLoss => "power lost in its trial",
        }
    }
}

/// A `rollouts` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRow {
    pub id: u64,
    pub artifact: Artifact,
    pub settings: Settings,
    pub started_by: String,
    pub state: RolloutState,
    /// The stage in progress, or the last one (`None` only before the first).
    pub stage: Option<StageId>,
    pub halt_reason: Option<String>,
    /// The halt asked for rollback.
    pub rollback: bool,
}

/// A `rollout_nodes` row. Wall-clock times (`confirmed_at`, `updated_at`) are the adapter's to
/// stamp as it writes: the core's time is monotonic and does not survive a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub rollout: u64,
    pub uid: [u8; 8],
    /// Its place in the plan: nodes are picked in this order.
    pub position: usize,
    pub port: String,
    pub stage: Option<StageId>,
    pub phase: NodePhase,
    pub from_version: FwVersion,
    pub to_version: FwVersion,
    pub rollback: Option<Artifact>,
    /// Installs begun of the image now on its way (the new one, or the previous one once
    /// rolling back): 2 after a retry.
    pub attempts: u8,
    /// Failed transfers of the image now on its way.
    pub transfer_failures: u8,
    /// The boot it was last seen in.
    pub boot_id: Option<u32>,
    pub last_reset: Option<ResetReason>,
    pub revert_cause: Option<RevertCause>,
    /// Why it is where it is, in words (why skipped, failed, aborted, …).
    pub detail: Option<String>,
}

/// A row to write (upsert): see "Persistence and restart" in the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    Rollout(RolloutRow),
    Node(NodeRow),
}

/// Everything [`Rollout::restore`] needs: the rollout's row and its nodes' (any order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    pub rollout: RolloutRow,
    pub nodes: Vec<NodeRow>,
}

/// Why rows cannot be made into a rollout again (the store holds something this code never
/// wrote).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("the rollout's settings: {0}")]
    Plan(#[from] PlanError),
    #[error("node {} belongs to rollout {found}, not {expected}", hex::encode(.uid))]
    OtherRollout {
        uid: [u8; 8],
        found: u64,
        expected: u64,
    },
    #[error("stage `{0}` is not one of this rollout's")]
    UnknownStage(StageId),
    #[error("node {} is in stage {stage} but its phase is {phase}", hex::encode(.uid))]
    Inconsistent {
        uid: [u8; 8],
        stage: String,
        phase: NodePhase,
    },
}

/// What the node's transfer core reports about a transfer the rollout started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEvent {
    /// Bytes in the node's flash so far, of `total`: for the page and MQTT, never persisted.
    Progress { done: u64, total: u64 },
    /// The whole image is in the node's DFU slot and its SHA-256 verified there.
    Finished,
    /// The node refused the OFFER (`below-floor`, `busy`, `wrong-hardware`, …).
    Refused(String),
    /// The transfer broke off (the node gone for good, `damaged` repeatedly, …).
    Failed(String),
}

/// A node's OTA phase report (OTA_STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeReport {
    Installing,
    /// Running the image on trial.
    Trial,
    /// Confirmed, running `version`.
    Confirmed {
        version: FwVersion,
    },
    /// The trial image was reverted; the old one runs.
    Reverted {
        cause: RevertCause,
    },
}

/// A node's boot, as its HELLO shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    pub boot_id: u32,
    pub reset_reason: ResetReason,
    /// The reset was the one an INSTALL asked for.
    pub install: bool,
}

/// What the adapter is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this row (upsert) before carrying out what follows.
    Persist(Row),
    /// Offer `artifact` to the node and transfer it (or resume: the node says what it has).
    StartTransfer { uid: [u8; 8], artifact: Artifact },
    /// Send INSTALL with `confirm_within`.
    Install {
        uid: [u8; 8],
        confirm_within: Duration,
    },
    /// Send ABORT and drop the node's transfer.
    Abort { uid: [u8; 8] },
    /// Send FINALIZE: the node raises its floor. Only after the whole rollout passed.
    Finalize { uid: [u8; 8] },
    /// Transfer the previous `artifact` to the node (then INSTALL follows as for any image).
    RollBack { uid: [u8; 8], artifact: Artifact },
    /// Publish at once on `outpost/{gateway}/ota` and keep in `ota_events`.
    Event(Event),
    /// Publish at once (not kept): a transfer's progress.
    Progress(Progress),
}

/// What an [`Event`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Started,
    Restored,
    StageStarted,
    /// A stage took no node, or none of its nodes could be updated: it is passed over.
    StageSkipped,
    ConfirmGatePassed,
    SoakPassed,
    SoakFailed,
    Halted,
    Done,
    /// A node entered this phase; the event's detail says why where it matters.
    Phase(NodePhase),
    /// A node booted without an INSTALL asking for it.
    UnexpectedReset,
}

impl EventKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Restored => "restored",
            EventKind::StageStarted => "stage_started",
            EventKind::StageSkipped => "stage_skipped",
            EventKind::ConfirmGatePassed => "confirm_gate_passed",
            EventKind::SoakPassed => "soak_passed",
            EventKind::SoakFailed => "soak_failed",
            EventKind::Halted => "halted",
            EventKind::Done => "done",
            EventKind::Phase(phase) => phase.as_str(),
            EventKind::UnexpectedReset => "unexpected_reset",
        }
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One thing that happened in a rollout. The adapter stamps the wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub rollout: u64,
    pub stage: Option<StageId>,
    #[serde(serialize_with = "uid_opt")]
    pub uid: Option<[u8; 8]>,
    #[serde(rename = "event")]
    pub kind: EventKind,
    pub detail: String,
    /// The soak gate's raw counts (soak events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakCounts>,
}

/// What the soak gate compared (module docs), for the record and later tuning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SoakCounts {
    /// `|U|` and how many of them had an incident; of those, how many reset and how many were
    /// offline past the threshold (a node can do both).
    pub updated: usize,
    pub updated_with_incident: usize,
    pub updated_reset: usize,
    pub updated_offline: usize,
    pub against: Comparison,
    /// `|C|` and how many of them had an incident.
    pub compared: usize,
    pub compared_with_incident: usize,
    /// The soak window's length, and the comparison window's as observed.
    pub window_ms: u64,
    pub compared_window_ms: u64,
}

/// Which nodes the updated ones were compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// The nodes no stage has taken yet, over the same window.
    NotUpdated,
    /// The same updated nodes, over the soak-long window before the stage began.
    BeforeStage,
}

/// A transfer's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub rollout: u64,
    #[serde(serialize_with = "uid")]
    pub uid: [u8; 8],
    /// Bytes in the node's flash, of `total`.
    pub done: u64,
    pub total: u64,
}

impl Progress {
    #[must_use]
    pub fn fraction(&self) -> f64 {
        fraction(self.done, self.total)
    }
}

/// A stage as the status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    NotStarted,
    Running,
    Soaking,
    Passed,
    /// It took no node, or none of its nodes could be updated.
    Skipped,
    /// The rollout halted in it.
    Halted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageStatus {
    pub stage: StageId,
    pub state: StageState,
    /// Nodes it took (left-out ones included).
    pub nodes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStatus {
    #[serde(serialize_with = "uid")]
    pub uid: [u8; 8],
    pub port: String,
    pub stage: Option<StageId>,
    pub phase: NodePhase,
    pub from_version: String,
    pub to_version: String,
    pub rollback_version: Option<String>,
    pub online: bool,
    pub attempts: u8,
    pub transfer_failures: u8,
    pub revert_cause: Option<RevertCause>,
    /// The last reset reason seen (`power_on`, `watchdog`, …).
    pub last_reset: Option<&'static str>,
    pub detail: Option<String>,
    /// Of its transfer in flight, when the adapter reported progress.
    pub progress: Option<f64>,
    /// Milliseconds left to confirm, while installing or on trial.
    pub confirm_deadline_in_ms: Option<u64>,
}

/// A snapshot for `outpost rollout status`, the API and the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutStatus {
    pub id: u64,
    #[serde(serialize_with = "sha256")]
    pub artifact: [u8; 32],
    pub version: String,
    pub mode: &'static str,
    pub state: RolloutState,
    pub stage: Option<StageId>,
    pub stages: Vec<StageStatus>,
    /// Milliseconds left in the soak, while soaking.
    pub soak_remaining_ms: Option<u64>,
    pub halt_reason: Option<String>,
    pub rollback: bool,
    pub started_by: String,
    /// Nodes confirmed or finalized on the new version, of all target nodes.
    pub updated: usize,
    pub total: usize,
    /// The share of target nodes that have reached the end of their way in this rollout.
    pub progress: f64,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Clone, Copy)]
enum Incident {
    Reset(Millis),
    Offline { from: Millis, to: Option<Millis> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    from: Millis,
    to: Millis,
}

impl Window {
    fn len(self) -> u64 {
        self.to.saturating_since(self.from)
    }
}

#[derive(Debug, Clone)]
struct Node {
    uid: [u8; 8],
    port: String,
    from: FwVersion,
    rollback: Option<Artifact>,
    stage: Option<StageId>,
    phase: NodePhase,
    attempts: u8,
    transfer_failures: u8,
    boot_id: Option<u32>,
    last_reset: Option<ResetReason>,
    revert_cause: Option<RevertCause>,
    detail: Option<String>,
    // Not persisted.
    online: bool,
    /// The confirm deadline, while installing or on trial.
    deadline: Option<Millis>,
    progress: Option<(u64, u64)>,
    /// Resets and outages seen, for the soak gate; pruned at each stage start.
    incidents: Vec<Incident>,
}

#[derive(Debug, Clone)]
struct Halt {
    reason: String,
    rollback: bool,
}

/// One rollout. See the module docs.
#[derive(Debug)]
pub struct Rollout {
    id: u64,
    artifact: Artifact,
    settings: Settings,
    started_by: String,
    stages: Vec<StageId>,
    /// Index in `stages` of the stage in progress (or the last one).
    current: Option<usize>,
    state: RolloutState,
    halt: Option<Halt>,
    nodes: Vec<Node>,
    stage_started_at: Millis,
    soak: Option<Window>,
    /// Since when incidents are known: the start, or the last restore.
    observed_from: Millis,
    actions: VecDeque<Action>,
}

fn validate(settings: &Settings, nodes: &[[u8; 8]]) -> Result<(), PlanError> {
    if nodes.is_empty() {
        return Err(PlanError::NoNodes);
    }
    for (i, uid) in nodes.iter().enumerate() {
        if nodes[..i].contains(uid) {
            return Err(PlanError::DuplicateNode(*uid));
        }
    }
    match &settings.mode {
        Mode::Staged { canary: 0, .. } => return Err(PlanError::NoCanary),
        Mode::Targeted if nodes.len() != 1 => return Err(PlanError::TargetedNodes(nodes.len())),
        _ => {}
    }
    let confirm = settings.confirm_within;
    if confirm < Duration::from_secs(1) || confirm > MAX_CONFIRM_WITHIN {
        return Err(PlanError::ConfirmWithin(confirm));
    }
    Ok(())
}

fn stages_of(mode: &Mode) -> Vec<StageId> {
    match mode {
        Mode::Staged { waves, .. } => std::iter::once(StageId::Canary)
            .chain((1..=waves.shares().len()).map(|n| StageId::Wave(u8::try_from(n).unwrap_or(0))))
            .collect(),
        Mode::Targeted => vec![StageId::Targeted],
    }
}

impl Rollout {
    /// Starts a rollout at `now`: its rows and the first stage's actions are ready to drain.
    pub fn new(plan: Plan, now: Millis) -> Result<Rollout, PlanError> {
        let uids: Vec<[u8; 8]> = plan.nodes.iter().map(|n| n.uid).collect();
        validate(&plan.settings, &uids)?;
        let nodes = plan
            .nodes
            .into_iter()
            .map(|t| Node {
                uid: t.uid,
                port: t.port,
                from: t.version,
                rollback: t.rollback,
                stage: None,
                phase: NodePhase::Pending,
                attempts: 0,
                transfer_failures: 0,
                boot_id: t.boot_id,
                last_reset: None,
                revert_cause: None,
                detail: None,
                online: t.online,
                deadline: None,
                progress: None,
                incidents: if t.online {
                    Vec::new()
                } else {
                    vec![Incident::Offline {
                        from: now,
                        to: None,
                    }]
                },
            })
            .collect();
        let mut rollout = Rollout {
            id: plan.id,
            artifact: plan.artifact,
            stages: stages_of(&plan.settings.mode),
            settings: plan.settings,
            started_by: plan.started_by,
            current: None,
            state: RolloutState::Running,
            halt: None,
            nodes,
            stage_started_at: now,
            soak: None,
            observed_from: now,
            actions: VecDeque::new(),
        };
        rollout.persist_rollout();
        let version = rollout.artifact.version;
        for i in 0..rollout.nodes.len() {
            if rollout.nodes[i].from == version {
                let detail = format!("already on {version}");
                rollout.set_phase(i, NodePhase::Skipped, Some(detail));
            } else {
                rollout.persist_node(i);
            }
        }
        let detail = format!(
            "{} to {} nodes ({}), started by {}",
            rollout.artifact,
            rollout.nodes.len(),
            match &rollout.settings.mode {
                Mode::Staged { canary, waves } => format!("canary {canary}, waves {waves}"),
                Mode::Targeted => "targeted".to_owned(),
            },
            rollout.started_by
        );
        rollout.event(EventKind::Started, None, detail);
        rollout.start_stage(now, 0);
        rollout.step(now);
        Ok(rollout)
    }

    /// Rebuilds a rollout from its rows after a gateway restart and resumes it (module docs).
    pub fn restore(rows: Rows, now: Millis) -> Result<Rollout, RestoreError> {
        let Rows {
            rollout: row,
            nodes: mut node_rows,
        } = rows;
        node_rows.sort_by_key(|n| n.position);
        let uids: Vec<[u8; 8]> = node_rows.iter().map(|n| n.uid).collect();
        validate(&row.settings, &uids)?;
        let stages = stages_of(&row.settings.mode);
        let current = match row.stage {
            Some(stage) => Some(
                stages
                    .iter()
                    .position(|s| *s == stage)
                    .ok_or(RestoreError::UnknownStage(stage))?,
            ),
            None => None,
        };
        let deadline = now + row.settings.confirm_within + CONFIRM_GRACE;
        let mut nodes = Vec::with_capacity(node_rows.len());
        for n in node_rows {
            if n.rollout != row.id {
                return Err(RestoreError::OtherRollout {
                    uid: n.uid,
                    found: n.rollout,
                    expected: row.id,
                });
            }
            if let Some(stage) = n.stage
                && !stages.contains(&stage)
            {
                return Err(RestoreError::UnknownStage(stage));
            }
            // Only a node left out at the start (already on the version) has no stage.
            let consistent = match n.phase {
                NodePhase::Pending => n.stage.is_none(),
                NodePhase::Skipped => true,
                _ => n.stage.is_some(),
            };
            if !consistent {
                return Err(RestoreError::Inconsistent {
                    uid: n.uid,
                    stage: n.stage.map_or_else(|| "none".to_owned(), |s| s.to_string()),
                    phase: n.phase,
                });
            }
            nodes.push(Node {
                uid: n.uid,
                port: n.port,
                from: n.from_version,
                rollback: n.rollback,
                stage: n.stage,
                phase: n.phase,
                attempts: n.attempts,
                transfer_failures: n.transfer_failures,
                boot_id: n.boot_id,
                last_reset: n.last_reset,
                revert_cause: n.revert_cause,
                detail: n.detail,
                online: true,
                deadline: n.phase.awaits_confirm().then_some(deadline),
                progress: None,
                incidents: Vec::new(),
            });
        }
        let mut rollout = Rollout {
            id: row.id,
            artifact: row.artifact,
            stages,
            soak: (row.state == RolloutState::Soaking).then_some(Window {
                from: now,
                to: now + row.settings.soak,
            }),
            settings: row.settings,
            started_by: row.started_by,
            current,
            state: row.state,
            halt: row.halt_reason.map(|reason| Halt {
                reason,
                rollback: row.rollback,
            }),
            nodes,
            stage_started_at: now,
            observed_from: now,
            actions: VecDeque::new(),
        };
        let in_flight: Vec<(usize, NodePhase)> = rollout
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.phase.is_transfer() || n.phase.awaits_confirm())
            .map(|(i, n)| (i, n.phase))
            .collect();
        rollout.event(
            EventKind::Restored,
            None,
            format!("restored in state {}", rollout.state.as_str()),
        );
        // Settle first what the rows left half done, then resend what is still in flight.
        rollout.step(now);
        for (i, phase) in in_flight {
            let node = &rollout.nodes[i];
            if node.phase != phase {
                continue;
            }
            let uid = node.uid;
            let action = match phase {
                NodePhase::Transferring => Action::StartTransfer {
                    uid,
                    artifact: rollout.artifact,
                },
                NodePhase::RollbackTransferring => match node.rollback {
                    Some(artifact) => Action::RollBack { uid, artifact },
                    None => continue,
                },
                // An INSTALL in a halted rollout would be a new start: only a rollback's.
                NodePhase::Installing if rollout.halt.is_none() => Action::Install {
                    uid,
                    confirm_within: rollout.settings.confirm_within,
                },
                NodePhase::RollbackInstalling => Action::Install {
                    uid,
                    confirm_within: rollout.settings.confirm_within,
                },
                _ => continue,
            };
            rollout.actions.push_back(action);
        }
        Ok(rollout)
    }

    /// The image this rollout is putting on node `uid` now: the new one on the way forward, the
    /// previous one while rolling back; `None` for a node it no longer acts on (or never did).
    #[must_use]
    pub fn expected_image(&self, uid: [u8; 8]) -> Option<[u8; 32]> {
        let node = &self.nodes[self.index(uid)?];
        match node.phase {
            NodePhase::Queued
            | NodePhase::Transferring
            | NodePhase::Installing
            | NodePhase::Trial
            | NodePhase::Confirmed => Some(self.artifact.sha256),
            NodePhase::RollbackQueued
            | NodePhase::RollbackTransferring
            | NodePhase::RollbackInstalling => node.rollback.map(|a| a.sha256),
            _ => None,
        }
    }

    /// The transfer core reports on a transfer this rollout started; `sha256` names its image.
    /// Reports about another image, or a transfer not in flight, are stale and ignored.
    pub fn handle_transfer(
        &mut self,
        now: Millis,
        uid: [u8; 8],
        sha256: [u8; 32],
        event: TransferEvent,
    ) {
        let Some(i) = self.index(uid) else { return };
        let phase = self.nodes[i].phase;
        let expected = match phase {
            NodePhase::Transferring => Some(self.artifact),
            NodePhase::RollbackTransferring => self.nodes[i].rollback,
            _ => None,
        };
        if expected.is_none_or(|a| a.sha256 != sha256) {
            return;
        }
        let rolling_back = phase == NodePhase::RollbackTransferring;
        match event {
            TransferEvent::Progress { done, total } => {
                let done = done.min(total);
                self.nodes[i].progress = Some((done, total));
                self.actions.push_back(Action::Progress(Progress {
                    rollout: self.id,
                    uid,
                    done,
                    total,
                }));
                return;
            }
            TransferEvent::Finished => {
                let node = &mut self.nodes[i];
                node.attempts = node.attempts.saturating_add(1);
                node.deadline = Some(now + self.settings.confirm_within + CONFIRM_GRACE);
                let next = if rolling_back {
                    NodePhase::RollbackInstalling
                } else {
                    NodePhase::Installing
                };
                self.set_phase(i, next, None);
                self.actions.push_back(Action::Install {
                    uid,
                    confirm_within: self.settings.confirm_within,
                });
            }
            TransferEvent::Refused(reason) => {
                if rolling_back {
                    let detail = format!("refused its previous image: {reason}");
                    self.set_phase(i, NodePhase::RollbackFailed, Some(detail));
                } else {
                    let detail = format!("refused the image: {reason}");
                    self.set_phase(i, NodePhase::Skipped, Some(detail));
                }
            }
            TransferEvent::Failed(reason) => {
                let node = &mut self.nodes[i];
                node.transfer_failures = node.transfer_failures.saturating_add(1);
                let failures = node.transfer_failures;
                if failures < MAX_TRANSFER_FAILURES {
                    let next = if rolling_back {
                        NodePhase::RollbackQueued
                    } else {
                        NodePhase::Queued
                    };
                    let detail = format!("transfer failed ({reason}); trying again");
                    self.set_phase(i, next, Some(detail));
                } else {
                    let detail = format!("transfer failed {failures} times, last: {reason}");
                    let next = if rolling_back {
                        NodePhase::RollbackFailed
                    } else {
                        NodePhase::Skipped
                    };
                    self.set_phase(i, next, Some(detail));
                }
            }
        }
        self.step(now);
    }

    /// A node's OTA phase report. Reports that do not fit the node's phase (duplicates, stale
    /// or out of order) change nothing.
    pub fn handle_node_report(&mut self, now: Millis, uid: [u8; 8], report: NodeReport) {
        let Some(i) = self.index(uid) else { return };
        let node = &self.nodes[i];
        let target = self.artifact.version;
        let previous = node.rollback.map(|a| a.version);
        match (node.phase, report) {
            (NodePhase::Installing, NodeReport::Trial) => self.set_phase(i, NodePhase::Trial, None),
            (NodePhase::Installing | NodePhase::Trial, NodeReport::Confirmed { version })
                if version == target =>
            {
                self.set_phase(i, NodePhase::Confirmed, None);
            }
            // It confirmed after the gateway stopped waiting: it runs the new image, and a
            // halt with rollback must bring it back too.
            (NodePhase::Failed, NodeReport::Confirmed { version })
                if version == target && node.revert_cause.is_none() =>
            {
                let detail = "confirmed after the gateway stopped waiting".to_owned();
                self.set_phase(i, NodePhase::Confirmed, Some(detail));
            }
            // The outcome of a trial the gateway stopped waiting for: kept for the record.
            (NodePhase::Failed, NodeReport::Reverted { cause }) if node.revert_cause.is_none() => {
                self.nodes[i].revert_cause = Some(cause);
                let detail = format!("reverted ({})", cause.said());
                self.set_phase(i, NodePhase::Failed, Some(detail));
            }
            (NodePhase::Installing | NodePhase::Trial, NodeReport::Reverted { cause }) => {
                self.reverted(i, cause, false);
            }
            (NodePhase::RollbackInstalling, NodeReport::Confirmed { version })
                if Some(version) == previous =>
            {
                let detail = format!("back on {version}");
                self.set_phase(i, NodePhase::RolledBack, Some(detail));
            }
            (NodePhase::RollbackInstalling, NodeReport::Reverted { cause }) => {
                self.reverted(i, cause, true);
            }
            _ => return,
        }
        self.step(now);
    }

    /// A node's HELLO. A boot seen before (same `boot_id`) changes nothing.
    pub fn handle_boot(&mut self, now: Millis, uid: [u8; 8], boot: Boot) {
        let Some(i) = self.index(uid) else { return };
        let node = &mut self.nodes[i];
        if node.boot_id == Some(boot.boot_id) {
            return;
        }
        // The first boot seen of a node whose boot was not known may be a reset or only a
        // reconnection: it is not counted.
        // A reset someone asked for (power applied, a requested reboot, the RUN pin) says
        // nothing against the image: only symptoms count (`ResetReason::is_expected`).
        let unexpected =
            node.boot_id.is_some() && !boot.install && !boot.reset_reason.is_expected();
        node.boot_id = Some(boot.boot_id);
        node.last_reset = Some(boot.reset_reason);
        if unexpected {
            node.incidents.push(Incident::Reset(now));
        }
        self.persist_node(i);
        if unexpected && !matches!(self.state, RolloutState::Done | RolloutState::Halted) {
            let detail = format!("reset ({})", boot.reset_reason.as_str());
            self.event(EventKind::UnexpectedReset, Some(i), detail);
        }
    }

    /// A node went online or offline, as `site::node_state` decides.
    pub fn handle_online(&mut self, now: Millis, uid: [u8; 8], online: bool) {
        let Some(i) = self.index(uid) else { return };
        let node = &mut self.nodes[i];
        if node.online == online {
            return;
        }
        node.online = online;
        if online {
            for incident in node.incidents.iter_mut().rev() {
                if let Incident::Offline { to: to @ None, .. } = incident {
                    *to = Some(now);
                    break;
                }
            }
        } else {
            node.incidents.push(Incident::Offline {
                from: now,
                to: None,
            });
        }
    }

    /// The operator halts the rollout (`outpost rollout halt [--rollback]`). A halt without
    /// rollback can be followed by one with; a rollout that passed cannot be halted.
    pub fn handle_halt(&mut self, now: Millis, rollback: bool) {
        if self.state == RolloutState::Done {
            return;
        }
        self.halt("halted by the operator".to_owned(), rollback);
        self.step(now);
    }

    /// The time [`Rollout::poll_timeout`] named has come (early or late calls are harmless).
    pub fn handle_timeout(&mut self, now: Millis) {
        let waited = self.settings.confirm_within + CONFIRM_GRACE;
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            if node.deadline.is_none_or(|d| now < d) {
                continue;
            }
            match node.phase {
                NodePhase::Installing | NodePhase::Trial => {
                    let detail = format!("did not confirm within {}", secs(waited));
                    self.set_phase(i, NodePhase::Failed, Some(detail));
                }
                NodePhase::RollbackInstalling => {
                    let detail =
                        format!("its previous image did not confirm within {}", secs(waited));
                    self.set_phase(i, NodePhase::RollbackFailed, Some(detail));
                }
                _ => self.nodes[i].deadline = None,
            }
        }
        self.step(now);
    }

    /// The next thing to do, if any. Drain after every input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Rollout::handle_timeout`] is due next: a confirm deadline or the soak's end.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        let deadlines = self.nodes.iter().filter_map(|n| n.deadline);
        let soak = match self.state {
            RolloutState::Soaking => self.soak.map(|w| w.to),
            _ => None,
        };
        deadlines.chain(soak).min()
    }

    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    #[must_use]
    pub fn state(&self) -> RolloutState {
        self.state
    }

    /// The stage in progress (or the last one, once over).
    #[must_use]
    pub fn stage(&self) -> Option<StageId> {
        self.current.map(|i| self.stages[i])
    }

    #[must_use]
    pub fn halt_reason(&self) -> Option<&str> {
        self.halt.as_ref().map(|h| h.reason.as_str())
    }

    /// Nothing more will happen: done, or halted with no node still on its way anywhere.
    #[must_use]
    pub fn is_over(&self) -> bool {
        match self.state {
            RolloutState::Done => true,
            RolloutState::Halted => !self
                .nodes
                .iter()
                .any(|n| n.phase.awaits_confirm() || n.phase.is_transfer()),
            _ => false,
        }
    }

    #[must_use]
    pub fn phase_of(&self, uid: [u8; 8]) -> Option<NodePhase> {
        self.index(uid).map(|i| self.nodes[i].phase)
    }

    /// A snapshot at `now`.
    #[must_use]
    pub fn status(&self, now: Millis) -> RolloutStatus {
        let nodes: Vec<NodeStatus> = self
            .nodes
            .iter()
            .map(|n| NodeStatus {
                uid: n.uid,
                port: n.port.clone(),
                stage: n.stage,
                phase: n.phase,
                from_version: n.from.to_string(),
                to_version: self.artifact.version.to_string(),
                rollback_version: n.rollback.map(|a| a.version.to_string()),
                online: n.online,
                attempts: n.attempts,
                transfer_failures: n.transfer_failures,
                revert_cause: n.revert_cause,
                last_reset: n.last_reset.map(ResetReason::as_str),
                detail: n.detail.clone(),
                progress: match (n.phase.is_transfer(), n.progress) {
                    (true, Some((done, total))) => Some(fraction(done, total)),
                    _ => None,
                },
                confirm_deadline_in_ms: n.deadline.map(|d| d.saturating_since(now)),
            })
            .collect();
        let stages = self
            .stages
            .iter()
            .enumerate()
            .map(|(k, &stage)| {
                let taken = self.nodes.iter().filter(|n| n.stage == Some(stage)).count();
                let worked = self
                    .nodes
                    .iter()
                    .any(|n| n.stage == Some(stage) && n.phase != NodePhase::Skipped);
                let ended = if worked {
                    StageState::Passed
                } else {
                    StageState::Skipped
                };
                let state = match self.current {
                    Some(c) if k < c => ended,
                    Some(c) if k == c => match self.state {
                        RolloutState::Running => StageState::Running,
                        RolloutState::Soaking => StageState::Soaking,
                        RolloutState::Done => ended,
                        RolloutState::Halted | RolloutState::RollingBack => StageState::Halted,
                    },
                    _ => StageState::NotStarted,
                };
                StageStatus {
                    stage,
                    state,
                    nodes: taken,
                }
            })
            .collect();
        let updated = self
            .nodes
            .iter()
            .filter(|n| matches!(n.phase, NodePhase::Confirmed | NodePhase::Finalized))
            .count();
        let settled = self
            .nodes
            .iter()
            .filter(|n| n.phase.is_terminal() || n.phase == NodePhase::Confirmed)
            .count();
        RolloutStatus {
            id: self.id,
            artifact: self.artifact.sha256,
            version: self.artifact.version.to_string(),
            mode: match self.settings.mode {
                Mode::Staged { .. } => "staged",
                Mode::Targeted => "targeted",
            },
            state: self.state,
            stage: self.stage(),
            stages,
            soak_remaining_ms: match self.state {
                RolloutState::Soaking => self.soak.map(|w| w.to.saturating_since(now)),
                _ => None,
            },
            halt_reason: self.halt.as_ref().map(|h| h.reason.clone()),
            rollback: self.halt.as_ref().is_some_and(|h| h.rollback),
            started_by: self.started_by.clone(),
            updated,
            total: self.nodes.len(),
            progress: fraction(settled as u64, self.nodes.len() as u64),
            nodes,
        }
    }

    // ---- stages -------------------------------------------------------------------------

    /// Starts stage `idx` (or the first after it that takes a node), or finishes the rollout.
    fn start_stage(&mut self, now: Millis, mut idx: usize) {
        loop {
            let Some(&stage) = self.stages.get(idx) else {
                self.finish();
                return;
            };
            self.current = Some(idx);
            self.state = RolloutState::Running;
            self.soak = None;
            self.stage_started_at = now;
            self.prune_incidents();
            let picked = match self.pick(stage) {
                Ok(picked) => picked,
                Err(reason) => {
                    self.persist_rollout();
                    self.halt(reason, false);
                    return;
                }
            };
            if picked.is_empty() {
                self.event(
                    EventKind::StageSkipped,
                    None,
                    format!("{stage} takes no node"),
                );
                idx += 1;
                continue;
            }
            self.persist_rollout();
            for &i in &picked {
                self.nodes[i].stage = Some(stage);
                self.set_phase(i, NodePhase::Queued, None);
            }
            let names: Vec<String> = picked
                .iter()
                .map(|&i| hex::encode(&self.nodes[i].uid))
                .collect();
            let detail = format!("{stage}: {}", names.join(", "));
            self.event(EventKind::StageStarted, None, detail);
            self.pump();
            return;
        }
    }

    /// The nodes `stage` takes (module docs). Offline nodes the last wave picks are left out
    /// here. `Err`: the canary cannot be picked.
    fn pick(&mut self, stage: StageId) -> Result<Vec<usize>, String> {
        let pending: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].phase == NodePhase::Pending)
            .collect();
        match (stage, &self.settings.mode) {
            (StageId::Canary, Mode::Staged { canary, .. }) => {
                let picked: Vec<usize> = pending
                    .iter()
                    .copied()
                    .filter(|&i| self.nodes[i].online)
                    .take(*canary)
                    .collect();
                if picked.is_empty() && !pending.is_empty() {
                    return Err(format!(
                        "no node is online to be the canary ({} to update, all offline)",
                        pending.len()
                    ));
                }
                Ok(picked)
            }
            (StageId::Wave(k), Mode::Staged { waves, .. }) => {
                let shares = waves.shares();
                let share = usize::from(shares[usize::from(k) - 1]);
                let last = usize::from(k) == shares.len();
                let total = self.nodes.len();
                let taken = total - pending.len();
                let want = (share * total).div_ceil(100).saturating_sub(taken);
                let mut order = pending;
                order.sort_by_key(|&i| !self.nodes[i].online);
                let mut picked = Vec::new();
                for i in order.into_iter().take(want) {
                    if self.nodes[i].online {
                        picked.push(i);
                    } else if last {
                        self.nodes[i].stage = Some(stage);
                        let detail = format!("offline when {stage} began");
                        self.set_phase(i, NodePhase::Skipped, Some(detail));
                    }
                }
                picked.sort_unstable();
                Ok(picked)
            }
            _ => Ok(pending),
        }
    }

    /// Starts transfers on every port with room, queued nodes in plan order.
    fn pump(&mut self) {
        let limit = self.settings.max_concurrent_per_port.get();
        for i in 0..self.nodes.len() {
            let next = match self.nodes[i].phase {
                NodePhase::Queued => NodePhase::Transferring,
                NodePhase::RollbackQueued => NodePhase::RollbackTransferring,
                _ => continue,
            };
            let port = &self.nodes[i].port;
            let busy = self
                .nodes
                .iter()
                .filter(|n| n.port == *port && n.phase.is_transfer())
                .count();
            if busy >= limit {
                continue;
            }
            let uid = self.nodes[i].uid;
            let action = if next == NodePhase::Transferring {
                Action::StartTransfer {
                    uid,
                    artifact: self.artifact,
                }
            } else {
                let Some(artifact) = self.nodes[i].rollback else {
                    continue;
                };
                Action::RollBack { uid, artifact }
            };
            self.set_phase(i, next, None);
            self.actions.push_back(action);
        }
    }

    /// Applies every transition the state now calls for: gates, the next stage, the halt's
    /// consequences. Idempotent, so it also settles what restored rows left half done.
    fn step(&mut self, now: Millis) {
        loop {
            match self.state {
                RolloutState::Done => {
                    self.finalize_confirmed();
                    return;
                }
                RolloutState::Halted | RolloutState::RollingBack => {
                    self.enforce_halt();
                    return;
                }
                RolloutState::Running => {
                    let Some(idx) = self.current else {
                        self.start_stage(now, 0);
                        continue;
                    };
                    let stage = self.stages[idx];
                    let members: Vec<usize> = (0..self.nodes.len())
                        .filter(|&i| self.nodes[i].stage == Some(stage))
                        .collect();
                    if let Some(&i) = members
                        .iter()
                        .find(|&&i| self.nodes[i].phase == NodePhase::Failed)
                    {
                        let detail = self.nodes[i].detail.clone().unwrap_or_default();
                        let reason = format!("{} {detail}", self.who(i));
                        self.halt(reason, true);
                        continue;
                    }
                    let settled = members.iter().all(|&i| {
                        matches!(
                            self.nodes[i].phase,
                            NodePhase::Confirmed | NodePhase::Skipped
                        )
                    });
                    if !settled {
                        self.pump();
                        return;
                    }
                    let confirmed = members
                        .iter()
                        .filter(|&&i| self.nodes[i].phase == NodePhase::Confirmed)
                        .count();
                    if confirmed == 0 && idx == 0 {
                        let why: Vec<String> = members
                            .iter()
                            .map(|&i| {
                                let n = &self.nodes[i];
                                format!(
                                    "{} {}",
                                    hex::encode(&n.uid),
                                    n.detail.as_deref().unwrap_or("left out")
                                )
                            })
                            .collect();
                        let reason =
                            format!("no {stage} node could be updated: {}", why.join("; "));
                        self.halt(reason, false);
                        continue;
                    }
                    if confirmed == 0 {
                        let detail = format!("no node of {stage} could be updated");
                        self.event(EventKind::StageSkipped, None, detail);
                        self.start_stage(now, idx + 1);
                        continue;
                    }
                    let detail = format!("{confirmed} of {} confirmed", members.len());
                    self.event(EventKind::ConfirmGatePassed, None, detail);
                    self.state = RolloutState::Soaking;
                    self.soak = Some(Window {
                        from: now,
                        to: now + self.settings.soak,
                    });
                    self.persist_rollout();
                }
                RolloutState::Soaking => {
                    let window = *self.soak.get_or_insert(Window {
                        from: now,
                        to: now + self.settings.soak,
                    });
                    if now < window.to {
                        return;
                    }
                    let (passed, counts, detail) = self.soak_gate(window);
                    let next = self.current.map_or(0, |c| c + 1);
                    let kind = if passed {
                        EventKind::SoakPassed
                    } else {
                        EventKind::SoakFailed
                    };
                    self.actions.push_back(Action::Event(Event {
                        rollout: self.id,
                        stage: self.stage(),
                        uid: None,
                        kind,
                        detail: detail.clone(),
                        soak: Some(counts),
                    }));
                    if passed {
                        self.start_stage(now, next);
                    } else {
                        self.halt(detail, true);
                    }
                }
            }
        }
    }

    /// The soak gate over `window` (module docs): whether it passes, the counts, and the line
    /// that says it.
    fn soak_gate(&self, window: Window) -> (bool, SoakCounts, String) {
        let stage = self.stage().map_or_else(String::new, |s| s.to_string());
        let threshold = millis(self.settings.offline_threshold);
        let updated: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| n.phase == NodePhase::Confirmed)
            .collect();
        let pending: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| n.phase == NodePhase::Pending)
            .collect();
        let seen: Vec<(bool, bool)> = updated
            .iter()
            .map(|n| incidents_in(n, window, threshold))
            .collect();
        let u = seen.iter().filter(|(r, o)| *r || *o).count();
        let resets = seen.iter().filter(|(r, _)| *r).count();
        let outages = seen.iter().filter(|(_, o)| *o).count();
        let (against, group, compared_window) = if pending.is_empty() {
            let from = Millis(
                self.stage_started_at
                    .0
                    .saturating_sub(millis(self.settings.soak))
                    .max(self.observed_from.0),
            );
            let to = self.stage_started_at.max(from);
            (
                Comparison::BeforeStage,
                updated.clone(),
                Window { from, to },
            )
        } else {
            (Comparison::NotUpdated, pending, window)
        };
        let compared: Vec<&Node> = if compared_window.len() == 0 {
            Vec::new()
        } else {
            group
                .into_iter()
                .filter(|n| !offline_throughout(n, compared_window))
                .collect()
        };
        let c = compared
            .iter()
            .filter(|n| {
                let (r, o) = incidents_in(n, compared_window, threshold);
                r || o
            })
            .count();
        let passed = if compared.is_empty() {
            u == 0
        } else {
            u * compared.len() <= c * updated.len()
        };
        let counts = SoakCounts {
            updated: updated.len(),
            updated_with_incident: u,
            updated_reset: resets,
            updated_offline: outages,
            against,
            compared: compared.len(),
            compared_with_incident: c,
            window_ms: window.len(),
            compared_window_ms: compared_window.len(),
        };
        let what = match (resets > 0, outages > 0) {
            (true, false) => "reset unexpectedly".to_owned(),
            (false, true) => format!(
                "went offline for more than {}",
                secs(self.settings.offline_threshold)
            ),
            _ => "reset unexpectedly or went offline".to_owned(),
        };
        let versus = match (against, compared.is_empty()) {
            (Comparison::NotUpdated, false) => {
                format!("{c} of {} not updated", compared.len())
            }
            (Comparison::BeforeStage, false) => format!(
                "{c} of {} in the {} before {stage} began",
                compared.len(),
                secs(Duration::from_millis(compared_window.len()))
            ),
            (Comparison::NotUpdated, true) => {
                "nothing to compare with (every node not updated was offline)".to_owned()
            }
            (Comparison::BeforeStage, true) => {
                format!("nothing to compare with (no observed window before {stage} began)")
            }
        };
        let detail = format!(
            "soak after {stage}: {u} of {} updated nodes {what} vs {versus}",
            updated.len()
        );
        (passed, counts, detail)
    }

    fn finish(&mut self) {
        self.state = RolloutState::Done;
        self.soak = None;
        self.persist_rollout();
        let confirmed = self
            .nodes
            .iter()
            .filter(|n| n.phase == NodePhase::Confirmed)
            .count();
        self.event(
            EventKind::Done,
            None,
            format!("every stage passed; finalizing {confirmed} nodes"),
        );
        self.finalize_confirmed();
    }

    fn finalize_confirmed(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].phase == NodePhase::Confirmed {
                self.set_phase(i, NodePhase::Finalized, None);
                let uid = self.nodes[i].uid;
                self.actions.push_back(Action::Finalize { uid });
            }
        }
    }

    // ---- halt ---------------------------------------------------------------------------

    fn halt(&mut self, reason: String, rollback: bool) {
        match &mut self.halt {
            Some(halt) if rollback && !halt.rollback => {
                halt.rollback = true;
                let detail = format!("rolling back ({reason})");
                self.event(EventKind::Halted, None, detail);
            }
            Some(_) => return,
            None => {
                let detail = if rollback {
                    format!("{reason}; rolling back")
                } else {
                    reason.clone()
                };
                self.halt = Some(Halt { reason, rollback });
                self.event(EventKind::Halted, None, detail);
            }
        }
        self.soak = None;
        self.state = if rollback {
            RolloutState::RollingBack
        } else {
            RolloutState::Halted
        };
        self.persist_rollout();
        self.enforce_halt();
    }

    /// What a halt means for each node (module docs), and whether rolling back is over.
    fn enforce_halt(&mut self) {
        let rollback = self.halt.as_ref().is_some_and(|h| h.rollback);
        for i in 0..self.nodes.len() {
            match self.nodes[i].phase {
                NodePhase::Queued => {
                    let detail = "halted before its transfer began".to_owned();
                    self.set_phase(i, NodePhase::Aborted, Some(detail));
                }
                NodePhase::Transferring => {
                    let detail = "transfer aborted by the halt".to_owned();
                    self.set_phase(i, NodePhase::Aborted, Some(detail));
                    let uid = self.nodes[i].uid;
                    self.actions.push_back(Action::Abort { uid });
                }
                NodePhase::Confirmed if rollback => match self.nodes[i].rollback {
                    Some(artifact) => {
                        let node = &mut self.nodes[i];
                        node.attempts = 0;
                        node.transfer_failures = 0;
                        let detail = format!("rolling back to {}", artifact.version);
                        self.set_phase(i, NodePhase::RollbackQueued, Some(detail));
                    }
                    None => {
                        let detail = "cannot roll back: no previous artifact".to_owned();
                        self.set_phase(i, NodePhase::CannotRollBack, Some(detail));
                    }
                },
                _ => {}
            }
        }
        self.pump();
        let busy = rollback
            && self.nodes.iter().any(|n| {
                matches!(
                    n.phase,
                    NodePhase::RollbackQueued
                        | NodePhase::RollbackTransferring
                        | NodePhase::RollbackInstalling
                        | NodePhase::Installing
                        | NodePhase::Trial
                )
            });
        let state = if busy {
            RolloutState::RollingBack
        } else {
            RolloutState::Halted
        };
        if state != self.state {
            self.state = state;
            self.persist_rollout();
        }
    }

    /// A trial reverted: once more after a power loss, else a failure.
    fn reverted(&mut self, i: usize, cause: RevertCause, rolling_back: bool) {
        let halted = self.halt.is_some();
        let node = &mut self.nodes[i];
        node.revert_cause = Some(cause);
        let attempts = node.attempts;
        let retry = cause == RevertCause::PowerLoss
            && attempts <= POWER_LOSS_RETRIES
            && (rolling_back || !halted);
        if retry {
            let detail = "power lost during its trial: installing once more".to_owned();
            let next = if rolling_back {
                NodePhase::RollbackQueued
            } else {
                NodePhase::Queued
            };
            self.set_phase(i, next, Some(detail));
            return;
        }
        let again = if cause == RevertCause::PowerLoss && attempts > POWER_LOSS_RETRIES {
            ", again"
        } else {
            ""
        };
        if rolling_back {
            let detail = format!("its previous image reverted ({}{again})", cause.said());
            self.set_phase(i, NodePhase::RollbackFailed, Some(detail));
        } else {
            let detail = format!("reverted ({}{again})", cause.said());
            self.set_phase(i, NodePhase::Failed, Some(detail));
        }
    }

    // ---- bookkeeping --------------------------------------------------------------------

    fn index(&self, uid: [u8; 8]) -> Option<usize> {
        self.nodes.iter().position(|n| n.uid == uid)
    }

    /// How a reason names node `i`: `canary 0a1b…`, `wave 2 node 0a1b…`.
    fn who(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let uid = hex::encode(&node.uid);
        match node.stage {
            Some(StageId::Canary) => format!("canary {uid}"),
            Some(stage @ StageId::Wave(_)) => format!("{stage} node {uid}"),
            Some(StageId::Targeted) | None => format!("node {uid}"),
        }
    }

    fn set_phase(&mut self, i: usize, phase: NodePhase, detail: Option<String>) {
        let node = &mut self.nodes[i];
        node.phase = phase;
        node.detail.clone_from(&detail);
        if !phase.awaits_confirm() {
            node.deadline = None;
        }
        if !phase.is_transfer() {
            node.progress = None;
        }
        self.persist_node(i);
        self.event(EventKind::Phase(phase), Some(i), detail.unwrap_or_default());
    }

    fn event(&mut self, kind: EventKind, node: Option<usize>, detail: String) {
        let (uid, stage) = match node {
            Some(i) => (Some(self.nodes[i].uid), self.nodes[i].stage),
            None => (None, self.stage()),
        };
        self.actions.push_back(Action::Event(Event {
            rollout: self.id,
            stage,
            uid,
            kind,
            detail,
            soak: None,
        }));
    }

    fn persist_rollout(&mut self) {
        let row = RolloutRow {
            id: self.id,
            artifact: self.artifact,
            settings: self.settings.clone(),
            started_by: self.started_by.clone(),
            state: self.state,
            stage: self.stage(),
            halt_reason: self.halt.as_ref().map(|h| h.reason.clone()),
            rollback: self.halt.as_ref().is_some_and(|h| h.rollback),
        };
        self.actions.push_back(Action::Persist(Row::Rollout(row)));
    }

    fn persist_node(&mut self, i: usize) {
        let n = &self.nodes[i];
        let row = NodeRow {
            rollout: self.id,
            uid: n.uid,
            position: i,
            port: n.port.clone(),
            stage: n.stage,
            phase: n.phase,
            from_version: n.from,
            to_version: self.artifact.version,
            rollback: n.rollback,
            attempts: n.attempts,
            transfer_failures: n.transfer_failures,
            boot_id: n.boot_id,
            last_reset: n.last_reset,
            revert_cause: n.revert_cause,
            detail: n.detail.clone(),
        };
        self.actions.push_back(Action::Persist(Row::Node(row)));
    }

    /// Forgets incidents that no window from now on can see: those over before the comparison
    /// window of the stage just begun.
    fn prune_incidents(&mut self) {
        let horizon = self
            .stage_started_at
            .0
            .saturating_sub(millis(self.settings.soak));
        for node in &mut self.nodes {
            node.incidents.retain(|incident| match *incident {
                Incident::Reset(at) => at.0 >= horizon,
                Incident::Offline { to, .. } => to.is_none_or(|to| to.0 >= horizon),
            });
        }
    }
}

/// (reset, outage) of `node` in `window`: a reset inside it, and an outage longer than
/// `threshold_ms` counting only its part inside the window.
fn incidents_in(node: &Node, window: Window, threshold_ms: u64) -> (bool, bool) {
    let mut reset = false;
    let mut outage = false;
    for incident in &node.incidents {
        match *incident {
            Incident::Reset(at) => reset |= window.from <= at && at < window.to,
            Incident::Offline { from, to } => {
                let start = from.max(window.from);
                let end = to.unwrap_or(window.to).min(window.to);
                outage |= end.saturating_since(start) > threshold_ms;
            }
        }
    }
    (reset, outage)
}

/// Whether `node` was offline from before `window` began until it ended.
fn offline_throughout(node: &Node, window: Window) -> bool {
    node.incidents.iter().any(|incident| match *incident {
        Incident::Offline { from, to } => {
            from <= window.from && to.is_none_or(|to| to >= window.to)
        }
        Incident::Reset(_) => false,
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A duration for a reason line, to the second: `2m 30s`.
fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[allow(clippy::cast_precision_loss)]
fn fraction(done: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        done as f64 / total as f64
    }
}

fn uid<S: Serializer>(uid: &[u8; 8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(uid))
}

#[allow(clippy::ref_option)]
fn uid_opt<S: Serializer>(uid: &Option<[u8; 8]>, s: S) -> Result<S::Ok, S::Error> {
    match uid {
        Some(uid) => s.serialize_str(&hex::encode(uid)),
        None => s.serialize_none(),
    }
}

fn sha256<S: Serializer>(sha: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(sha))
}

#[cfg(test)]
mod tests;
