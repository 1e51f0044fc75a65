//! What the store writer is asked to do, and how each command travels through a group commit.
//!
//! Callers send a [`StoreCommand`]: a request and, where someone waits for it, where the answer
//! goes. The writer turns each into a job typed by its kind of request (`Pending<R>`), whose
//! [`Request`] impl says what it does inside the transaction (its `Outcome`) and what its caller
//! is told (its `Answer`).
//!
//! Design: a command's answer travels with the command. Applying a job inside the transaction
//! gives an `Applied<R>` holding its own outcome; once the transaction has committed, each one
//! answers its own caller ([`Settled::answer`]). If the transaction fails, applied jobs roll back
//! into pending ones and every job is answered with the one shared error: nothing acknowledges
//! work that is not on disk, and nothing pairs answers with commands by position.

use std::sync::Arc;

use outpost_proto::{Health, Hello};
use tokio::sync::{mpsc, oneshot};

use super::outbox::{AckError, Acked};
use outpost_core::clock::Basis;
use outpost_core::link::Refusal;

use super::{Ingested, Registered, Sample, SeriesReading, Store, StoreError, Tx};

/// Work for the store.
#[derive(Debug)]
pub enum StoreCommand {
    Register {
        port: String,
        hello: Hello,
        public_key: [u8; 32],
        /// The port's newcomer budget has room for a uid never enrolled.
        newcomer_allowed: bool,
        now_ms: i64,
        reply: mpsc::UnboundedSender<StoreReply>,
    },
    /// Samples of one boot of one node, their `ts_ms` stamped on `basis`.
    Ingest {
        node_id: i64,
        boot_id: u32,
        samples: Vec<Sample>,
        basis: Basis,
        now_ms: i64,
        reply: mpsc::UnboundedSender<StoreReply>,
    },
    /// The readings of one poll of a device, taken at `ts_ms`. No reply: if the commit fails
    /// they are lost (no one holds them for a resend, unlike node samples), and the device's next
    /// poll brings fresh ones.
    DeviceReadings {
        source: String,
        ts_ms: i64,
        /// Whether `ts_ms` is trusted wall time (`outpost_core::clock`).
        basis: Basis,
        readings: Vec<SeriesReading>,
        /// A `priority` point changed: commit within `commit_interval` and seal the batch
        /// holding these readings at once (rate-limited by the batcher).
        priority: bool,
    },
    Health {
        node_id: i64,
        boot_id: u32,
        health: Health,
        now_ms: i64,
    },
    LinkErrors {
        node_id: i64,
        count: u32,
    },
    /// Anomalies on a node's line (see `outpost_core::link::PortCounters`).
    Anomalies {
        node_id: i64,
        ages_clamped: u32,
        gaps_refused: u32,
        auth_failed: u32,
        replayed: u32,
    },
    /// A PROOF in the name of `uid` failed: counted on its row, if it is enrolled.
    ProofFailed {
        uid: [u8; 8],
    },
    /// The cloud acknowledged every batch up to `upto`.
    AckBatches {
        upto: u64,
        reply: oneshot::Sender<AckReply>,
    },
    /// Uplink traffic to add to `day`'s tally (see [`super::ledger`]).
    RecordUsage {
        day: String,
        sent: u64,
        received: u64,
        readings: u64,
    },
    /// A technician's "send now": seal what waits at once (the uplink sends what is sealed).
    /// Answered once the writer has taken it: the seal follows within the writer's next turn.
    SealNow {
        reply: oneshot::Sender<()>,
    },
    /// Opens the enrollment window until `until_ms` (0 closes it).
    EnrollmentWindow {
        until_ms: i64,
        reply: oneshot::Sender<Result<(), Arc<StoreError>>>,
    },
    /// Revokes the node `uid` for good; answers whether there is such a node.
    Revoke {
        uid: String,
        now_ms: i64,
        reply: oneshot::Sender<Result<bool, Arc<StoreError>>>,
    },
    /// The remote commands' audit log ([`super::audit`]). A claim answers `Some(row id)`, or
    /// `None` for a nonce used before; the others answer `None`.
    Audit {
        op: AuditOp,
        reply: oneshot::Sender<Result<Option<i64>, Arc<StoreError>>>,
    },
    /// Node firmware rollouts ([`super::ota`]): a new rollout's id answers `Some(id)`, the
    /// others `None`.
    Ota {
        op: OtaStoreOp,
        reply: oneshot::Sender<Result<Option<u64>, Arc<StoreError>>>,
    },
}

/// What [`StoreCommand::Ota`] does.
#[derive(Debug)]
pub enum OtaStoreOp {
    /// The rollout core's rows and events of one drain, in one transaction.
    Persist {
        rollout: u64,
        rows: Vec<outpost_core::rollout::Row>,
        events: Vec<String>,
        now_ms: i64,
    },
    /// A node's firmware changed (or did not): its RMA history.
    Transition(super::ota::FirmwareTransition),
    /// The id a new rollout takes.
    NextRolloutId,
}

/// What [`StoreCommand::Audit`] does to the audit log.
#[derive(Debug)]
pub enum AuditOp {
    Claim {
        received_ms: i64,
        verified: Box<outpost_core::command::Verified>,
    },
    Finish {
        id: i64,
        outcome: &'static str,
        detail: String,
        now_ms: i64,
    },
    Refused {
        received_ms: i64,
        verb: String,
        request: Option<String>,
        key_id: Option<String>,
        detail: String,
    },
    /// At start: commands left `running` by the previous run were interrupted.
    InterruptRunning { now_ms: i64 },
    /// Commands dropped unread (a flood): one entry for all of them.
    Dropped { received_ms: i64, detail: String },
}

/// The store's answer to a port task.
#[derive(Debug)]
pub enum StoreReply {
    /// `Ok(Err(_))`: the node is refused, and nothing was written.
    Registered {
        hello: Hello,
        result: Result<Result<Registered, Refusal>, Arc<StoreError>>,
    },
    Committed {
        node_id: i64,
        boot_id: u32,
        result: Result<Ingested, Arc<StoreError>>,
    },
}

/// The answer to [`StoreCommand::AckBatches`].
#[derive(Debug)]
pub enum AckReply {
    Acked(Acked),
    /// The acknowledgement itself is wrong (past the newest batch): the caller's error.
    Refused(AckError),
    /// The store could not apply it; nothing changed.
    Failed(Arc<StoreError>),
}

impl StoreCommand {
    /// The command as the writer carries it: its request, typed by kind, and its reply.
    pub(super) fn into_job(self) -> Box<dyn Job> {
        match self {
            StoreCommand::Register {
                port,
                hello,
                public_key,
                newcomer_allowed,
                now_ms,
                reply,
            } => job(
                Register {
                    port,
                    hello,
                    public_key,
                    newcomer_allowed,
                    now_ms,
                },
                Reply::Port(reply),
            ),
            StoreCommand::Ingest {
                node_id,
                boot_id,
                samples,
                basis,
                now_ms,
                reply,
            } => job(
                Ingest {
                    node_id,
                    boot_id,
                    samples,
                    basis,
                    now_ms,
                },
                Reply::Port(reply),
            ),
            StoreCommand::DeviceReadings {
                source,
                ts_ms,
                basis,
                readings,
                priority,
            } => job(
                DeviceReadings {
                    source,
                    ts_ms,
                    basis,
                    readings,
                    priority,
                },
                Reply::Nobody,
            ),
            StoreCommand::Health {
                node_id,
                boot_id,
                health,
                now_ms,
            } => job(
                NodeHealth {
                    node_id,
                    boot_id,
                    health,
                    now_ms,
                },
                Reply::Nobody,
            ),
            StoreCommand::LinkErrors { node_id, count } => {
                job(LinkErrors { node_id, count }, Reply::Nobody)
            }
            StoreCommand::Anomalies {
                node_id,
                ages_clamped,
                gaps_refused,
                auth_failed,
                replayed,
            } => job(
                Anomalies {
                    node_id,
                    ages_clamped,
                    gaps_refused,
                    auth_failed,
                    replayed,
                },
                Reply::Nobody,
            ),
            StoreCommand::ProofFailed { uid } => job(ProofFailed { uid }, Reply::Nobody),
            StoreCommand::AckBatches { upto, reply } => {
                job(AckBatches { upto }, Reply::Once(reply))
            }
            StoreCommand::RecordUsage {
                day,
                sent,
                received,
                readings,
            } => job(
                RecordUsage {
                    day,
                    sent,
                    received,
                    readings,
                },
                Reply::Nobody,
            ),
            StoreCommand::SealNow { reply } => job(SealNow, Reply::Once(reply)),
            StoreCommand::EnrollmentWindow { until_ms, reply } => {
                job(EnrollmentWindow { until_ms }, Reply::Once(reply))
            }
            StoreCommand::Revoke { uid, now_ms, reply } => {
                job(Revoke { uid, now_ms }, Reply::Once(reply))
            }
            StoreCommand::Audit { op, reply } => job(Audit(op), Reply::Once(reply)),
            StoreCommand::Ota { op, reply } => job(Ota(op), Reply::Once(reply)),
        }
    }
}

/// Where a command's answer goes.
#[derive(Debug)]
pub(super) enum Reply<T> {
    /// Nobody waits: work whose loss in a failed commit costs little (see each command).
    Nobody,
    /// One caller waits for this one answer.
    Once(oneshot::Sender<T>),
    /// A port task, which takes the answers for its node on one queue.
    Port(mpsc::UnboundedSender<T>),
}

impl<T> Reply<T> {
    /// Whether a caller waits for the commit (and so for the answer).
    fn awaited(&self) -> bool {
        !matches!(self, Reply::Nobody)
    }

    fn send(self, answer: T) {
        // A dropped receiver means its task ended; nothing to tell it.
        match self {
            Reply::Nobody => {}
            Reply::Once(tx) => {
                let _ = tx.send(answer);
            }
            Reply::Port(tx) => {
                let _ = tx.send(answer);
            }
        }
    }
}

/// One kind of work for the store.
pub(super) trait Request: Send + 'static {
    /// What applying it produced inside the transaction.
    type Outcome: Send + 'static;
    /// What its caller is told.
    type Answer: Send + 'static;

    /// Applies it inside the open transaction. An error rolls the whole transaction back.
    fn apply(&self, tx: &mut Tx<'_>) -> Result<Self::Outcome, StoreError>;

    /// Readings it brings, counted against `max_commit_readings`.
    fn readings(&self) -> usize {
        1
    }

    /// Readings its outcome committed (what the batcher counts towards the next batch).
    fn committed(_outcome: &Self::Outcome) -> u64 {
        0
    }

    /// Whether its readings are to be sealed at once (`batcher`: priority readings).
    fn priority(&self) -> bool {
        false
    }

    /// Whether it asks for everything waiting to be sealed now.
    fn seal_now(&self) -> bool {
        false
    }

    /// The answer: its outcome once the transaction committed, or the transaction's error.
    fn answer(self, result: Result<Self::Outcome, Arc<StoreError>>) -> Self::Answer;
}

struct Register {
    port: String,
    hello: Hello,
    public_key: [u8; 32],
    newcomer_allowed: bool,
    now_ms: i64,
}

impl Request for Register {
    /// `Err`: refused, nothing written.
    type Outcome = Result<Registered, Refusal>;
    type Answer = StoreReply;

    fn apply(&self, tx: &mut Tx<'_>) -> Result<Result<Registered, Refusal>, StoreError> {
        tx.register(
            self.now_ms,
            &self.port,
            &self.hello,
            &self.public_key,
            self.newcomer_allowed,
        )
    }

    fn answer(self, result: Result<Result<Registered, Refusal>, Arc<StoreError>>) -> StoreReply {
        StoreReply::Registered {
            hello: self.hello,
            result,
        }
    }
}

struct Ingest {
    node_id: i64,
    boot_id: u32,
    samples: Vec<Sample>,
    basis: Basis,
    now_ms: i64,
}

impl Request for Ingest {
    type Outcome = Ingested;
    type Answer = StoreReply;

    fn apply(&self, tx: &mut Tx<'_>) -> Result<Ingested, StoreError> {
        tx.ingest_at(
            self.node_id,
            self.boot_id,
            &self.samples,
            self.now_ms,
            self.basis,
        )
    }

    fn readings(&self) -> usize {
        self.samples.iter().map(|s| s.readings.len()).sum()
    }

    fn committed(outcome: &Ingested) -> u64 {
        outcome.readings
    }

    fn answer(self, result: Result<Ingested, Arc<StoreError>>) -> StoreReply {
        StoreReply::Committed {
            node_id: self.node_id,
            boot_id: self.boot_id,
            result,
        }
    }
}

struct DeviceReadings {
    source: String,
    ts_ms: i64,
    basis: Basis,
    readings: Vec<SeriesReading>,
    priority: bool,
}

impl Request for DeviceReadings {
    /// Readings stored.
    type Outcome = u64;
    type Answer = ();

    fn apply(&self, tx: &mut Tx<'_>) -> Result<u64, StoreError> {
        tx.ingest_series_at(&self.source, self.ts_ms, &self.readings, self.basis)
    }

    fn readings(&self) -> usize {
        self.readings.len()
    }

    fn committed(stored: &u64) -> u64 {
        *stored
    }

    fn priority(&self) -> bool {
        self.priority
    }

    fn answer(self, _: Result<u64, Arc<StoreError>>) {}
}

struct NodeHealth {
    node_id: i64,
    boot_id: u32,
    health: Health,
    now_ms: i64,
}

impl Request for NodeHealth {
    type Outcome = ();
    type Answer = ();

    fn apply(&self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        tx.health(self.node_id, self.boot_id, self.now_ms, &self.health)
    }

    fn answer(self, _: Result<(), Arc<StoreError>>) {}
}

struct LinkErrors {
    node_id: i64,
    count: u32,
}

impl Request for LinkErrors {
    type Outcome = ();
    type Answer = ();

    fn apply(&self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        tx.link_errors(self.node_id, self.count)
    }

    fn answer(self, _: Result<(), Arc<StoreError>>) {}
}

struct Anomalies {
    node_id: i64,
    ages_clamped: u32,
    gaps_refused: u32,
    auth_failed: u32,
    replayed: u32,
}

impl Request for Anomalies {
    type Outcome = ();
    type Answer = ();

    fn apply(&self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        tx.anomalies(
            self.node_id,
            super::NodeAnomalies {
                ages_clamped: self.ages_clamped,
                gaps_refused: self.gaps_refused,
                auth_failed: self.auth_failed,
                replayed: self.replayed,
            },
        )
    }

    fn answer(self, _: Result<(), Arc<StoreError>>) {}
}

struct ProofFailed {
    uid: [u8; 8],
}

impl Request for ProofFailed {
    type Outcome = ();
    type Answer = ();

    fn apply(&self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        tx.proof_failed(&self.uid)
    }

    fn answer(self, _: Result<(), Arc<StoreError>>) {}
}

struct AckBatches {
    upto: u64,
}

impl Request for AckBatches {
    /// A refused acknowledgement is the caller's error, not the transaction's: it is an outcome.
    type Outcome = Result<Acked, AckError>;
    type Answer = AckReply;

    fn apply(&self, tx: &mut Tx<'_>) -> Result<Result<Acked, AckError>, StoreError> {
        match tx.ack_batches(self.upto) {
            Err(AckError::Store(e)) => Err(e),
            outcome => Ok(outcome),
        }
    }

    fn answer(self, result: Result<Result<Acked, AckError>, Arc<StoreError>>) -> AckReply {
        match result {
            Ok(Ok(acked)) => AckReply::Acked(acked),
            Ok(Err(refused)) => AckReply::Refused(refused),
            Err(failed) => AckReply::Failed(failed),
        }
    }
}

struct RecordUsage {
    day: String,
    sent: u64,
    received: u64,
    readings: u64,
}

impl Request for RecordUsage {
    type Outcome = ();
    type Answer = ();

    fn apply(&self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        tx.record_usage(&self.day, self.sent, self.received, self.readings)
    }

    fn answer(self, _: Result<(), Arc<StoreError>>) {}
}

struct EnrollmentWindow {
    until_ms: i64,
}

impl Request for EnrollmentWindow {
    type Outcome = ();
    type Answer = Result<(), Arc<StoreError>>;

    fn apply(&self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        tx.set_enrollment_window(self.until_ms)
    }

    fn answer(self, result: Result<(), Arc<StoreError>>) -> Self::Answer {
        result
    }
}

struct Revoke {
    uid: String,
    now_ms: i64,
}

impl Request for Revoke {
    type Outcome = bool;
    type Answer = Result<bool, Arc<StoreError>>;

    fn apply(&self, tx: &mut Tx<'_>) -> Result<bool, StoreError> {
        tx.revoke(&self.uid, self.now_ms)
    }

    fn answer(self, result: Result<bool, Arc<StoreError>>) -> Self::Answer {
        result
    }
}

struct Audit(AuditOp);

impl Request for Audit {
    type Outcome = Option<i64>;
    type Answer = Result<Option<i64>, Arc<StoreError>>;

    fn apply(&self, tx: &mut Tx<'_>) -> Result<Option<i64>, StoreError> {
        match &self.0 {
            AuditOp::Claim {
                received_ms,
                verified,
            } => tx.claim_command(*received_ms, verified),
            AuditOp::Finish {
                id,
                outcome,
                detail,
                now_ms,
            } => tx
                .finish_command(*id, outcome, detail, *now_ms)
                .map(|()| None),
            AuditOp::Refused {
                received_ms,
                verb,
                request,
                key_id,
                detail,
            } => tx
                .audit_refused(
                    *received_ms,
                    verb,
                    request.as_deref(),
                    key_id.as_deref(),
                    detail,
                )
                .map(|()| None),
            AuditOp::Dropped {
                received_ms,
                detail,
            } => tx.audit_dropped(*received_ms, detail).map(|()| None),
            AuditOp::InterruptRunning { now_ms } => {
                tx.interrupt_running_commands(*now_ms).map(|_| None)
            }
        }
    }

    fn readings(&self) -> usize {
        0
    }

    fn answer(self, result: Result<Option<i64>, Arc<StoreError>>) -> Self::Answer {
        result
    }
}

struct Ota(OtaStoreOp);

impl Request for Ota {
    type Outcome = Option<u64>;
    type Answer = Result<Option<u64>, Arc<StoreError>>;

    fn apply(&self, tx: &mut Tx<'_>) -> Result<Option<u64>, StoreError> {
        match &self.0 {
            OtaStoreOp::Persist {
                rollout,
                rows,
                events,
                now_ms,
            } => tx
                .ota_persist(rows, events, *rollout, *now_ms)
                .map(|()| None),
            OtaStoreOp::Transition(t) => tx.firmware_transition(t).map(|()| None),
            OtaStoreOp::NextRolloutId => tx.next_rollout_id().map(Some),
        }
    }

    fn readings(&self) -> usize {
        0
    }

    fn answer(self, result: Result<Option<u64>, Arc<StoreError>>) -> Self::Answer {
        result
    }
}

struct SealNow;

impl Request for SealNow {
    type Outcome = ();
    type Answer = ();

    fn apply(&self, _: &mut Tx<'_>) -> Result<(), StoreError> {
        Ok(())
    }

    fn readings(&self) -> usize {
        0
    }

    fn seal_now(&self) -> bool {
        true
    }

    fn answer(self, _: Result<(), Arc<StoreError>>) {}
}

/// A command in the writer's hands, not applied yet: its request and where its answer goes.
struct Pending<R: Request> {
    request: R,
    reply: Reply<R::Answer>,
}

/// A command applied in the open transaction, holding its outcome until the commit.
struct Applied<R: Request> {
    pending: Pending<R>,
    outcome: R::Outcome,
}

/// A new pending command.
pub(super) fn job<R: Request>(request: R, reply: Reply<R::Answer>) -> Box<dyn Job> {
    Box::new(Pending { request, reply })
}

/// A pending command, whatever its kind.
pub(super) trait Job: Send {
    /// Whether a caller waits for its commit.
    fn awaited(&self) -> bool;
    /// Readings it brings, counted against `max_commit_readings`.
    fn readings(&self) -> usize;
    /// Whether its readings are to be sealed at once.
    fn priority(&self) -> bool;
    /// Whether it asks for everything waiting to be sealed at once.
    fn seal_now(&self) -> bool;
    /// Applies it in `tx`; on failure hands it back, unanswered, with the error.
    fn apply(self: Box<Self>, tx: &mut Tx<'_>)
    -> Result<Box<dyn Done>, (StoreError, Box<dyn Job>)>;
    /// The transaction failed: tells the caller.
    fn fail(self: Box<Self>, error: &Arc<StoreError>);
}

/// An applied command, whatever its kind.
pub(super) trait Done: Send {
    /// The transaction committed: tells the caller its outcome; returns the readings committed.
    fn answer(self: Box<Self>) -> u64;
    /// The transaction rolled back: the outcome is void and the command pending again.
    fn roll_back(self: Box<Self>) -> Box<dyn Job>;
}

impl<R: Request> Job for Pending<R> {
    fn awaited(&self) -> bool {
        self.reply.awaited()
    }

    fn readings(&self) -> usize {
        self.request.readings()
    }

    fn priority(&self) -> bool {
        self.request.priority()
    }

    fn seal_now(&self) -> bool {
        self.request.seal_now()
    }

    fn apply(
        self: Box<Self>,
        tx: &mut Tx<'_>,
    ) -> Result<Box<dyn Done>, (StoreError, Box<dyn Job>)> {
        match self.request.apply(tx) {
            Ok(outcome) => Ok(Box::new(Applied {
                pending: *self,
                outcome,
            })),
            Err(error) => Err((error, self)),
        }
    }

    fn fail(self: Box<Self>, error: &Arc<StoreError>) {
        let Pending { request, reply } = *self;
        reply.send(request.answer(Err(Arc::clone(error))));
    }
}

impl<R: Request> Done for Applied<R> {
    fn answer(self: Box<Self>) -> u64 {
        let Applied {
            pending: Pending { request, reply },
            outcome,
        } = *self;
        let committed = R::committed(&outcome);
        reply.send(request.answer(Ok(outcome)));
        committed
    }

    fn roll_back(self: Box<Self>) -> Box<dyn Job> {
        Box::new(self.pending)
    }
}

/// A group of commands after its transaction, not answered yet.
pub(super) enum Settled {
    /// On disk: every command holds its outcome.
    Committed(Vec<Box<dyn Done>>),
    /// Rolled back: nothing of the group is stored.
    Failed {
        error: Arc<StoreError>,
        jobs: Vec<Box<dyn Job>>,
    },
}

impl Settled {
    /// The transaction's error, if it failed.
    pub(super) fn error(&self) -> Option<&Arc<StoreError>> {
        match self {
            Settled::Committed(_) => None,
            Settled::Failed { error, .. } => Some(error),
        }
    }

    /// Answers every caller, each with its own outcome or all with the error; returns the
    /// readings committed.
    pub(super) fn answer(self) -> u64 {
        match self {
            Settled::Committed(applied) => applied.into_iter().map(Done::answer).sum(),
            Settled::Failed { error, jobs } => {
                for job in jobs {
                    job.fail(&error);
                }
                0
            }
        }
    }
}

/// Applies `jobs`, in order, in one transaction. Answers nobody: see [`Settled::answer`].
pub(super) fn apply(store: &mut Store, jobs: Vec<Box<dyn Job>>) -> Settled {
    let mut pending = jobs.into_iter();
    let mut applied: Vec<Box<dyn Done>> = Vec::with_capacity(pending.len());
    let mut failed = None;
    let result = store.transaction(|tx| {
        for job in pending.by_ref() {
            match job.apply(tx) {
                Ok(done) => applied.push(done),
                Err((error, job)) => {
                    failed = Some(job);
                    return Err(error);
                }
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => Settled::Committed(applied),
        Err(error) => Settled::Failed {
            error: Arc::new(error),
            jobs: applied
                .into_iter()
                .map(Done::roll_back)
                .chain(failed)
                .chain(pending)
                .collect(),
        },
    }
}
