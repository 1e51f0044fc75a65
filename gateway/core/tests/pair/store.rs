//! A model of the store and its writer task, in memory and on the virtual clock.
//!
//! It plays the role `store::writer` and `store::Tx` play for a port task, with the same
//! contract:
//! - **Group commit.** Commands are collected from the first one for `commit_interval` (a
//!   command nobody waits for, HEALTH or link errors, opens a relaxed 1 s window that an awaited
//!   one shortens), or until `max_commit_readings`; the group is then one transaction, durable
//!   `fsync_ms` later, and only then answered, in order. Commands that arrive meanwhile wait for
//!   the next group.
//! - **The transaction** registers nodes (creating them by uid, pinning the key at the first
//!   enrolment and refusing another one later, answering `ack_upto` = the last committed seq of
//!   that boot) and ingests samples through the real [`outpost_core::link::admit`], updating the last
//!   committed seq in the same transaction.
//! - **A failed commit** (disk full) changes nothing and answers every command with a failure.
//! - **A crash** (gateway restart) loses the commands not yet committed; the transaction being
//!   committed is on disk or not (the caller says which), and its answers are lost either way.

use std::collections::{BTreeMap, HashMap, VecDeque};

use outpost_core::link::{
    Action, Admission, Enrol, Refusal, Registered, Sample, admit_within, enrolment,
};
use outpost_proto::{Hello, Millis, Reading};

/// How the disk and the writer behave.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Disk {
    /// `store.commit_interval`.
    pub(crate) commit_interval_ms: u64,
    /// How long a commit takes to be durable (the fsync).
    pub(crate) fsync_ms: u64,
    /// `store.max_commit_readings`.
    pub(crate) max_commit_readings: usize,
}

/// `store::writer::RELAXED_COMMIT_WINDOW`.
const RELAXED_WINDOW_MS: u64 = 1000;

/// The store's answer to the port session, as `store::writer::StoreReply` carries it.
#[derive(Debug)]
pub(crate) enum Reply {
    /// `Ok(Err(_))`: refused (the key differs from the pinned one). `Err`: the commit failed.
    Registered {
        hello: Hello,
        result: Result<Result<Registered, Refusal>, ()>,
    },
    Committed {
        node_id: i64,
        boot_id: u32,
        /// `(upto, duplicates)`, as `Ingested` has them.
        result: Result<(u32, u32), ()>,
    },
}

/// A sample on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) seq: u32,
    pub(crate) ts_ms: i64,
    pub(crate) readings: Vec<Reading>,
}

#[derive(Debug)]
struct Transaction {
    durable_at: Millis,
    commands: Vec<Action>,
    fails: bool,
}

/// What is on disk, plus the writer's queue.
#[derive(Debug)]
pub(crate) struct ModelStore {
    disk: Disk,
    // ---- on disk ----
    nodes: HashMap<[u8; 8], i64>,
    keys: HashMap<i64, [u8; 32]>,
    /// `node_sessions.last_seq`.
    last_seq: HashMap<(i64, u32), u32>,
    /// The readings, per `(node_id, boot_id)`, in commit order.
    pub(crate) samples: BTreeMap<(i64, u32), Vec<Stored>>,
    /// Samples recorded as lost (gaps `admit` accepted), per boot.
    pub(crate) lost: HashMap<(i64, u32), u32>,
    // ---- the writer ----
    group: Vec<Action>,
    group_readings: usize,
    close_at: Option<Millis>,
    committing: Option<Transaction>,
    /// Commands that arrived while a transaction was being committed.
    backlog: VecDeque<Action>,
    // ---- counts ----
    pub(crate) commits: u64,
    pub(crate) failed_commits: u64,
    /// Transactions a crash caught between commit and answer, and whether they were durable.
    pub(crate) crashed_commits: u64,
    pub(crate) health_reports: u64,
    /// Registrations committed.
    pub(crate) registrations: u64,
    pub(crate) refusals: u64,
}

impl ModelStore {
    pub(crate) fn new(disk: Disk) -> Self {
        ModelStore {
            disk,
            nodes: HashMap::new(),
            keys: HashMap::new(),
            last_seq: HashMap::new(),
            samples: BTreeMap::new(),
            lost: HashMap::new(),
            group: Vec::new(),
            group_readings: 0,
            close_at: None,
            committing: None,
            backlog: VecDeque::new(),
            commits: 0,
            failed_commits: 0,
            crashed_commits: 0,
            health_reports: 0,
            registrations: 0,
            refusals: 0,
        }
    }

    pub(crate) fn node_id(&self, uid: &[u8; 8]) -> Option<i64> {
        self.nodes.get(uid).copied()
    }

    /// Whether `(node, boot, seq)` is on disk.
    pub(crate) fn holds(&self, node_id: i64, boot_id: u32, seq: u32) -> bool {
        self.samples
            .get(&(node_id, boot_id))
            .is_some_and(|s| s.iter().any(|s| s.seq == seq))
    }

    /// Nothing queued, collected or being committed.
    pub(crate) fn is_idle(&self) -> bool {
        self.group.is_empty() && self.committing.is_none() && self.backlog.is_empty()
    }

    /// A transaction is being committed (its answers are not out yet).
    pub(crate) fn is_committing(&self) -> bool {
        self.committing.is_some()
    }

    /// When [`ModelStore::poll`] next has something to do.
    pub(crate) fn next_due(&self) -> Option<Millis> {
        match &self.committing {
            Some(tx) => Some(tx.durable_at),
            None => self.close_at,
        }
    }

    /// A command from the port task (`command_for` in `io::serial`).
    pub(crate) fn submit(&mut self, now: Millis, action: Action) {
        if self.committing.is_some() {
            self.backlog.push_back(action);
        } else {
            self.collect(now, action);
        }
    }

    fn collect(&mut self, now: Millis, action: Action) {
        let (window, readings) = match &action {
            Action::Register { .. } => (self.disk.commit_interval_ms, 1),
            Action::Ingest { samples, .. } => (
                self.disk.commit_interval_ms,
                samples.iter().map(|s| s.readings.len()).sum(),
            ),
            Action::Health { .. }
            | Action::LinkErrors { .. }
            | Action::Anomalies { .. }
            | Action::ProofFailed { .. }
            | Action::OtaStatus { .. }
            | Action::Transfer { .. }
            | Action::Answer { .. } => (RELAXED_WINDOW_MS.max(self.disk.commit_interval_ms), 1),
        };
        self.group.push(action);
        self.group_readings += readings;
        let close = now + window;
        self.close_at = Some(self.close_at.map_or(close, |at| at.min(close)));
        if self.group_readings >= self.disk.max_commit_readings {
            self.close_at = Some(now);
        }
    }

    /// Runs the writer up to `now`: closes a group that is due (asking `commit_fails` whether
    /// its commit will fail), makes a transaction durable and answers it. Answers come back in
    /// the order the commands were submitted.
    pub(crate) fn poll(
        &mut self,
        now: Millis,
        commit_fails: &mut dyn FnMut(Millis) -> bool,
    ) -> Vec<Reply> {
        let mut replies = Vec::new();
        loop {
            if let Some(tx) = self.committing.take_if(|tx| tx.durable_at <= now) {
                let at = tx.durable_at;
                if tx.fails {
                    self.failed_commits += 1;
                    replies.extend(tx.commands.into_iter().filter_map(failure));
                } else {
                    self.commits += 1;
                    replies.extend(self.apply(tx.commands));
                }
                // The writer takes up what queued meanwhile, all at once.
                let backlog: Vec<Action> = self.backlog.drain(..).collect();
                for action in backlog {
                    self.collect(at, action);
                }
                continue;
            }
            if self.committing.is_none()
                && let Some(at) = self.close_at.filter(|&at| at <= now)
            {
                self.close_at = None;
                self.group_readings = 0;
                self.committing = Some(Transaction {
                    durable_at: at + self.disk.fsync_ms,
                    commands: std::mem::take(&mut self.group),
                    fails: commit_fails(at),
                });
                continue;
            }
            return replies;
        }
    }

    /// The gateway process dies. Commands not yet committed are gone; the transaction being
    /// committed made it to disk if `durable` (and its commit was not failing anyway).
    pub(crate) fn crash(&mut self, durable: bool) {
        if let Some(tx) = self.committing.take() {
            self.crashed_commits += 1;
            if durable && !tx.fails {
                self.commits += 1;
                let _answers_lost = self.apply(tx.commands);
            }
        }
        self.group.clear();
        self.group_readings = 0;
        self.close_at = None;
        self.backlog.clear();
    }

    /// One successful transaction: every command in order, as `store::writer::apply` does.
    fn apply(&mut self, commands: Vec<Action>) -> Vec<Reply> {
        let mut replies = Vec::new();
        for command in commands {
            match command {
                Action::Register {
                    hello,
                    public_key,
                    newcomer_allowed,
                } => {
                    self.registrations += 1;
                    let next_id = self.nodes.len() as i64 + 1;
                    let known = self.nodes.get(&hello.uid).copied();
                    let pinned = known.and_then(|id| self.keys.get(&id));
                    let result = match enrolment(
                        pinned,
                        &public_key,
                        newcomer_allowed,
                        self.nodes.len() as u64,
                        u64::MAX,
                    ) {
                        Ok(enrol) => {
                            let node_id = *self.nodes.entry(hello.uid).or_insert(next_id);
                            self.keys.entry(node_id).or_insert(public_key);
                            let ack_upto = self
                                .last_seq
                                .get(&(node_id, hello.boot_id))
                                .copied()
                                .unwrap_or(0);
                            Ok(Registered {
                                node_id,
                                ack_upto,
                                newcomer: enrol == Enrol::Newcomer,
                            })
                        }
                        Err(refusal) => {
                            self.refusals += 1;
                            Err(refusal)
                        }
                    };
                    replies.push(Reply::Registered {
                        hello,
                        result: Ok(result),
                    });
                }
                Action::Ingest {
                    node_id,
                    boot_id,
                    samples,
                } => {
                    let (upto, duplicates) = self.ingest(node_id, boot_id, &samples);
                    replies.push(Reply::Committed {
                        node_id,
                        boot_id,
                        result: Ok((upto, duplicates)),
                    });
                }
                Action::Health { .. } => self.health_reports += 1,
                Action::LinkErrors { .. }
                | Action::Anomalies { .. }
                | Action::ProofFailed { .. }
                | Action::OtaStatus { .. }
                | Action::Transfer { .. }
                | Action::Answer { .. } => {}
            }
        }
        replies
    }

    /// `Tx::ingest`: admits what keeps the boot contiguous, through the real admission rule.
    fn ingest(&mut self, node_id: i64, boot_id: u32, samples: &[Sample]) -> (u32, u32) {
        let key = (node_id, boot_id);
        let mut last = self.last_seq.get(&key).copied();
        let mut duplicates = 0;
        for sample in samples {
            match admit_within(last, sample.seq, sample.window_start, sample.max_lost) {
                Admission::Stale | Admission::Implausible { .. } => {
                    duplicates += 1;
                    continue;
                }
                Admission::Next => {}
                Admission::AfterGap { lost } => *self.lost.entry(key).or_default() += lost,
            }
            self.samples.entry(key).or_default().push(Stored {
                seq: sample.seq,
                ts_ms: sample.ts_ms,
                readings: sample.readings.to_vec(),
            });
            last = Some(sample.seq);
        }
        if let Some(last) = last {
            self.last_seq.insert(key, last);
        }
        (last.unwrap_or(0), duplicates)
    }
}

/// The answer to a command of a failed transaction.
fn failure(action: Action) -> Option<Reply> {
    match action {
        Action::Register { hello, .. } => Some(Reply::Registered {
            hello,
            result: Err(()),
        }),
        Action::Ingest {
            node_id, boot_id, ..
        } => Some(Reply::Committed {
            node_id,
            boot_id,
            result: Err(()),
        }),
        Action::Health { .. }
        | Action::LinkErrors { .. }
        | Action::Anomalies { .. }
        | Action::ProofFailed { .. }
        | Action::OtaStatus { .. }
        | Action::Transfer { .. }
        | Action::Answer { .. } => None,
    }
}
