//! The store: one SQLite file (WAL) holding the node registry, readings and health.
//!
//! Readings come from nodes ([`Tx::ingest`]) and from Modbus devices ([`Tx::ingest_series`]);
//! each belongs to a series, `(source, channel, kind)` ([`series`]), which is what a batch
//! carries. Readings of all sources share one id sequence, so the outbox seals them in the order
//! they were committed.
//!
//! Invariants (what the rest of Outpost relies on):
//! 1. A sample is ACKed to its node only after the transaction holding it has committed with
//!    `synchronous = FULL`: an acknowledged reading survives `kill -9` and power loss.
//! 2. Per `(node, boot_id)`, committed sequence numbers are contiguous and unique: a sample is
//!    admitted only as the successor of the last committed one, or as the first one the node still
//!    holds after it reported a gap ([`outpost_core::link::admit`]). Retransmissions are dropped here, so
//!    the readings table never holds a duplicate, whatever the link did.
//! 3. The deduplication point (`node_sessions.last_seq`) is written in the same transaction as the
//!    readings it covers, so a crash can never separate them.
//! 4. A failed transaction (disk full, read-only file system) commits nothing and acknowledges
//!    nothing; nodes keep their samples and resend them, and the store retries on the next batch.
//!    Device readings have no one to resend them: a failed commit loses them, and the device's
//!    next poll brings fresh values.
//! 5. A refused enrolment ([`outpost_core::link::enrolment`]: another key for an enrolled uid, a
//!    newcomer over its port's budget or over `store.max_nodes`) writes nothing: the registry has
//!    a row only for nodes it accepted, and a refused frame never changes one.
//! 6. Memory does not grow with the nodes ever heard: the cache of dedup points holds at most
//!    `max_nodes` `(node, boot)`s, the least recently used dropped first; a dropped one is read
//!    back from `node_sessions` on its next sample, so nothing is lost or stored twice.
//!
//! Writes happen on one connection owned by the writer task ([`writer`]), which applies whatever
//! is queued within `commit_interval` in one transaction (group commit) and answers each command
//! after the commit (`command.rs`); between commits it runs sealing rounds (`sealer.rs`) that fill
//! the outbox ([`outbox`]). The uplink's usage ledger is [`ledger`]. Readers open their own
//! connections; WAL lets them run beside the writer.

pub mod alerting;
pub mod audit;
mod clock;
mod command;
mod diagnostics;
pub use diagnostics::StoreStatistics;
pub mod ledger;
mod metrics;
pub mod ota;
pub mod outbox;
mod readers;
pub mod rma;
mod schema;
mod sealer;
mod series;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use outpost_proto::{Health, Hello};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

pub use clock::Held;
use outpost_core::clock::Basis;
use outpost_core::config::EnrollmentConfig;
use outpost_core::link::{
    Admission, Candidate, Enrol, EnrollmentPolicy, Gate, Refusal, admit_enrolment, admit_within,
};
pub use outpost_core::link::{Registered, Sample};
pub use readers::Readers;
pub use series::SeriesReading;
use series::{SeriesCache, StoredValue};
use std::sync::Arc;

/// Store failures, by what the operator can do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the disk holding the store is full")]
    DiskFull,
    #[error(
        "the store is read-only (its file system is mounted read-only or was turned read-only by \
         the kernel after a disk error, or its files are not writable)"
    )]
    ReadOnly,
    #[error("the store file is corrupt: {0}")]
    Corrupt(String),
    #[error("store schema is version {found}, newer than this Outpost knows ({known})")]
    SchemaTooNew { found: usize, known: usize },
    #[error("store error: {0}")]
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::DiskFull,
            Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
                StoreError::ReadOnly
            }
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                StoreError::Corrupt(e.to_string())
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

/// Nodes the registry holds at most unless configured (`store.max_nodes`).
pub const DEFAULT_MAX_NODES: u64 = 1024;

/// What one ingest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ingested {
    /// Last committed sample of the boot after the transaction (0 if none).
    pub upto: u32,
    pub admitted: u32,
    /// Channel readings in the admitted samples.
    pub readings: u64,
    pub duplicates: u32,
    pub lost: u32,
    /// Samples refused for claiming a gap the node cannot have (see `Sample::max_lost`).
    pub implausible: u32,
    /// The node was revoked: nothing was stored, and its session must end.
    pub revoked: bool,
}

/// The write side of the store. One per file.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Cache of `node_sessions.last_seq`; `None` where the session is known to have no samples.
    sessions: Sessions,
    /// Cache of the `series` table.
    series: SeriesCache,
    /// `store.max_nodes`: the registry's cap on enrolled nodes, and the dedup cache's size.
    max_nodes: u64,
    /// `[enrollment]`: who may join, and the manifests' nodes.
    enrollment: Arc<EnrollmentConfig>,
}

/// The most nodes listed as waiting for enrollment; beyond it the least recently seen goes.
pub const MAX_WAITING: i64 = 100;

/// The cache of dedup points (`node_sessions.last_seq`) by `(node, boot)`, bounded: past
/// `cap` entries the least recently used is dropped (it is read back from the table when its
/// node sends again). `None`: the boot is known to have no samples.
#[derive(Debug, Default)]
struct Sessions {
    cap: usize,
    tick: u64,
    entries: HashMap<(i64, u32), (Option<u32>, u64)>,
}

impl Sessions {
    fn get(&mut self, key: (i64, u32)) -> Option<Option<u32>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&key).map(|(last, used)| {
            *used = tick;
            *last
        })
    }

    fn insert(&mut self, key: (i64, u32), last: Option<u32>) {
        self.tick += 1;
        self.entries.insert(key, (last, self.tick));
        if self.entries.len() > self.cap.max(1) {
            // O(n) over at most `cap` + 1 entries, only when full.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&oldest);
            }
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Opens (creating if needed) a store, applying pending migrations.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on stable storage when it returns; the ACK to the node depends on it.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // 1 MiB of page cache (SQLite's default is 2 MiB a connection): the writer's working set is
    // the right edge of append-only tables and their indexes, and memory is the budget here.
    conn.pragma_update(None, "cache_size", -1024)?;
    Ok(conn)
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut conn = open_connection(path)?;
        migrate(&mut conn)?;
        Ok(Store {
            conn,
            path: path.to_owned(),
            sessions: Sessions {
                cap: DEFAULT_MAX_NODES as usize,
                ..Sessions::default()
            },
            series: SeriesCache::default(),
            max_nodes: DEFAULT_MAX_NODES,
            // A store on its own takes every node; the daemon sets the configured policy.
            enrollment: Arc::new(EnrollmentConfig {
                policy: EnrollmentPolicy::Open,
                ..EnrollmentConfig::default()
            }),
        })
    }

    /// Sets `[enrollment]`: the policy newcomers pass and the manifests' nodes.
    pub fn set_enrollment(&mut self, enrollment: EnrollmentConfig) {
        self.enrollment = Arc::new(enrollment);
    }

    /// Sets `store.max_nodes`: the most nodes the registry enrols, and the most `(node, boot)`
    /// dedup points kept in memory.
    pub fn set_max_nodes(&mut self, max_nodes: u64) {
        self.max_nodes = max_nodes;
        self.sessions.cap = usize::try_from(max_nodes).unwrap_or(usize::MAX);
    }

    /// `(node, boot)` dedup points held in memory now.
    #[must_use]
    pub fn cached_sessions(&self) -> usize {
        self.sessions.len()
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one transaction; commits only if it returns `Ok`.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut sessions = std::mem::take(&mut self.sessions);
        let mut series = std::mem::take(&mut self.series);
        let tx = self.conn.transaction()?;
        let result = {
            let mut handle = Tx {
                tx,
                sessions: &mut sessions,
                series: &mut series,
                max_nodes: self.max_nodes,
                enrollment: &self.enrollment,
            };
            match f(&mut handle) {
                Ok(value) => handle.tx.commit().map(|()| value).map_err(StoreError::from),
                Err(e) => Err(e), // dropping the transaction rolls it back
            }
        };
        if result.is_ok() {
            self.sessions = sessions;
            self.series = series;
        } else {
            self.sessions.cap = sessions.cap;
        } // else the transaction rolled back: forget the cached positions it may have advanced,
        // and the series rows it may have created

        result.map_err(|e| self.explain(e))
    }

    /// SQLite reports a write the file system refused on a file it holds open as a plain
    /// "disk I/O error" (a file system the kernel turned read-only after a media error, e.g.
    /// ext4 `errors=remount-ro` on an SD card, or a full one under the WAL): the store's folder
    /// says which, by trying to create a file in it.
    fn explain(&self, error: StoreError) -> StoreError {
        let StoreError::Sqlite(e) = &error else {
            return error;
        };
        if e.sqlite_error_code() != Some(rusqlite::ErrorCode::SystemIoFailure) {
            return error;
        }
        let probe = self.path.with_file_name(".outpost-write-probe");
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe);
        match created {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                error
            }
            Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => StoreError::ReadOnly,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => StoreError::DiskFull,
            Err(_) => error,
        }
    }

    /// A separate connection for readers (the API).
    pub fn reader(&self) -> Result<Reader, StoreError> {
        Reader::open(&self.path)
    }
}

/// Writes inside one transaction.
#[derive(Debug)]
pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
    sessions: &'a mut Sessions,
    series: &'a mut SeriesCache,
    max_nodes: u64,
    enrollment: &'a EnrollmentConfig,
}

impl Tx<'_> {
    /// Records a HELLO + ENROLL, if [`enrolment`] accepts it: updates the row of a known node
    /// (its key is the pinned one) or writes a newcomer's with its key pinned, and returns where
    /// its boot stands. A refusal writes nothing.
    pub fn register(
        &mut self,
        now_ms: i64,
        port: &str,
        hello: &Hello,
        public_key: &[u8; 32],
        newcomer_allowed: bool,
    ) -> Result<Result<Registered, Refusal>, StoreError> {
        let uid = outpost_core::hex::encode(&hello.uid);
        let row: Option<(Option<Vec<u8>>, Option<i64>, String)> = self
            .tx
            .query_row(
                "SELECT public_key, revoked_ms, fw_version FROM nodes WHERE uid = ?1",
                [&uid],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        let (pinned, revoked, known_fw) = match row {
            Some((pinned, revoked, fw)) => (pinned, revoked, Some(fw)),
            None => (None, None, None),
        };
        let pinned: Option<[u8; 32]> =
            pinned.map(|key| key.as_slice().try_into().unwrap_or([0; 32]));
        let enrolled = if pinned.is_none() {
            self.tx.query_row(
                "SELECT count(*) FROM nodes WHERE public_key IS NOT NULL",
                [],
                |row| row.get(0),
            )?
        } else {
            0
        };
        let window_open = self
            .enrollment_window()?
            .is_some_and(|until| now_ms < until);
        let listed = self
            .enrollment
            .listed
            .get(&hello.uid)
            .map(|l| (&l.public_key, l.hw_rev));
        let candidate = Candidate {
            pinned: pinned.as_ref(),
            revoked: revoked.is_some(),
            key: public_key,
            hw_rev: hello.hw_rev,
            listed,
        };
        let gate = Gate {
            policy: self.enrollment.policy,
            window_open,
            newcomer_allowed,
            enrolled,
            max_nodes: self.max_nodes,
        };
        let enrol = match admit_enrolment(&candidate, &gate) {
            Ok(enrol) => enrol,
            Err(refusal) => {
                if refusal.waits_for_enrollment() {
                    self.waiting(now_ms, port, hello, public_key, refusal)?;
                }
                return Ok(Err(refusal));
            }
        };
        if enrol == Enrol::Newcomer {
            self.tx
                .execute("DELETE FROM enrollment_waiting WHERE uid = ?1", [&uid])?;
        }
        let channels: Vec<String> = hello.channels.iter().map(|c| c.0.to_string()).collect();
        let node_id: i64 = self.tx.query_row(
            "INSERT INTO nodes (uid, hw_rev, fw_version, lot, channels, port, boot_id, first_seen_ms, last_seen_ms, public_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)
             ON CONFLICT (uid) DO UPDATE SET hw_rev = ?2, fw_version = ?3, lot = ?4, channels = ?5,
                 port = ?6, boot_id = ?7, last_seen_ms = ?8, public_key = ?9
             RETURNING id",
            params![uid, hello.hw_rev, hello.fw.to_string(), hello.lot.as_str(), channels.join(","), port,
                hello.boot_id, now_ms, public_key.as_slice()],
            |row| row.get(0),
        )?;
        if let Some(from) = known_fw.filter(|fw| *fw != hello.fw.to_string()) {
            self.firmware_seen_at_boot(now_ms, &uid, &from, &hello.fw.to_string())?;
        }
        let last = self.last_seq(node_id, hello.boot_id)?;
        Ok(Ok(Registered {
            node_id,
            ack_upto: last.unwrap_or(0),
            newcomer: enrol == Enrol::Newcomer,
        }))
    }

    /// Node `uid` booted another firmware than it last reported: a firmware transition of its
    /// RMA history. `booted` with the rollout's id when an unfinished rollout is moving the node
    /// to (or back to) that version; `booted_outside_rollout` when none is (flashed by hand, or
    /// a board swapped under the same uid).
    fn firmware_seen_at_boot(
        &mut self,
        now_ms: i64,
        uid: &str,
        from: &str,
        to: &str,
    ) -> Result<(), StoreError> {
        let rollout: Option<i64> = self
            .tx
            .query_row(
                "SELECT r.id FROM rollout_nodes n JOIN rollouts r ON r.id = n.rollout
                 WHERE n.uid = ?1 AND r.state NOT IN ('done', 'halted')
                   AND (n.to_version = ?2 OR n.rollback_version = ?2)
                 ORDER BY r.id DESC LIMIT 1",
                params![uid, to],
                |row| row.get(0),
            )
            .optional()?;
        let outcome = if rollout.is_some() {
            "booted"
        } else {
            "booted_outside_rollout"
        };
        self.tx.execute(
            "INSERT INTO node_firmware (uid, at_ms, from_version, to_version, outcome, rollout)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![uid, now_ms, from, to, outcome, rollout],
        )?;
        Ok(())
    }

    /// Until when the enrollment window is open (Unix ms), if one was ever opened.
    pub fn enrollment_window(&self) -> Result<Option<i64>, StoreError> {
        let until: Option<String> = self
            .tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'enrollment.window_until_ms'",
                [],
                |row| row.get(0),
            )
            .optional()?;
        Ok(until.and_then(|v| v.parse().ok()).filter(|&v: &i64| v > 0))
    }

    /// Opens the enrollment window until `until_ms` (0 closes it).
    pub fn set_enrollment_window(&mut self, until_ms: i64) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO meta (key, value) VALUES ('enrollment.window_until_ms', ?1)
             ON CONFLICT (key) DO UPDATE SET value = ?1",
            [until_ms.to_string()],
        )?;
        Ok(())
    }

    /// Revokes the node `uid` for good: it is refused at its next HELLO and its samples from
    /// now on. `Ok(false)` when no node has that uid.
    pub fn revoke(&mut self, uid: &str, now_ms: i64) -> Result<bool, StoreError> {
        let changed = self.tx.execute(
            "UPDATE nodes SET revoked_ms = coalesce(revoked_ms, ?2) WHERE uid = ?1",
            params![uid, now_ms],
        )?;
        Ok(changed > 0)
    }

    /// Forgets the key pinned for `uid` (a board back from repair with a new key): its next
    /// enrolment pins the key it proves, under the policy like a newcomer. A revocation stays.
    pub fn unpin(&mut self, uid: &str) -> Result<bool, StoreError> {
        let changed = self
            .tx
            .execute("UPDATE nodes SET public_key = NULL WHERE uid = ?1", [uid])?;
        Ok(changed > 0)
    }

    /// Lists a node the policy holds back as waiting for enrollment (bounded: the least
    /// recently seen goes first).
    fn waiting(
        &mut self,
        now_ms: i64,
        port: &str,
        hello: &Hello,
        public_key: &[u8; 32],
        refusal: Refusal,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO enrollment_waiting (uid, port, hw_rev, fw_version, lot, public_key, reason, first_seen_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT (uid) DO UPDATE SET port = ?2, hw_rev = ?3, fw_version = ?4, lot = ?5, public_key = ?6,
                 reason = ?7, last_seen_ms = ?8, attempts = attempts + 1",
            params![
                outpost_core::hex::encode(&hello.uid),
                port,
                hello.hw_rev,
                hello.fw.to_string(),
                hello.lot.as_str(),
                public_key.as_slice(),
                refusal.as_str(),
                now_ms
            ],
        )?;
        self.tx.execute(
            "DELETE FROM enrollment_waiting WHERE uid NOT IN
                 (SELECT uid FROM enrollment_waiting ORDER BY last_seen_ms DESC LIMIT ?1)",
            [MAX_WAITING],
        )?;
        Ok(())
    }

    /// Whether `node_id` was revoked.
    pub fn is_revoked(&self, node_id: i64) -> Result<bool, StoreError> {
        let revoked: Option<i64> = self
            .tx
            .prepare_cached("SELECT revoked_ms FROM nodes WHERE id = ?1")?
            .query_row([node_id], |row| row.get(0))
            .optional()?
            .flatten();
        Ok(revoked.is_some())
    }

    fn last_seq(&mut self, node_id: i64, boot_id: u32) -> Result<Option<u32>, StoreError> {
        if let Some(known) = self.sessions.get((node_id, boot_id)) {
            return Ok(known);
        }
        let last: Option<u32> = self
            .tx
            .query_row(
                "SELECT last_seq FROM node_sessions WHERE node_id = ?1 AND boot_id = ?2",
                params![node_id, boot_id],
                |row| row.get(0),
            )
            .optional()?;
        self.sessions.insert((node_id, boot_id), last);
        Ok(last)
    }

    /// Appends samples of one boot of one node, admitting only what keeps the sequence contiguous.
    pub fn ingest(
        &mut self,
        node_id: i64,
        boot_id: u32,
        samples: &[Sample],
        now_ms: i64,
    ) -> Result<Ingested, StoreError> {
        self.ingest_at(node_id, boot_id, samples, now_ms, Basis::Trusted)
    }

    /// [`Tx::ingest`] of samples stamped on `basis`: untrusted ones keep their monotonic time
    /// (`readings.clock`) to be re-stamped (migration 6).
    pub fn ingest_at(
        &mut self,
        node_id: i64,
        boot_id: u32,
        samples: &[Sample],
        now_ms: i64,
        basis: Basis,
    ) -> Result<Ingested, StoreError> {
        if self.is_revoked(node_id)? {
            return Ok(Ingested {
                revoked: true,
                ..Ingested::default()
            });
        }
        let mut last = self.last_seq(node_id, boot_id)?;
        let mut out = Ingested::default();
        let mut readings = 0u64;
        {
            let mut series = self.series.node(node_id);
            let mut insert = self.tx.prepare_cached(
                "INSERT INTO readings (series_id, ts_ms, value, node_id, boot_id, channel, clock) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for sample in samples {
                match admit_within(last, sample.seq, sample.window_start, sample.max_lost) {
                    Admission::Stale => {
                        out.duplicates += 1;
                        continue;
                    }
                    Admission::Implausible { .. } => {
                        out.implausible += 1;
                        continue;
                    }
                    Admission::Next => {}
                    Admission::AfterGap { lost } => out.lost += lost,
                }
                for r in &sample.readings {
                    insert.execute(params![
                        series.id(&self.tx, r.channel.0)?,
                        sample.ts_ms,
                        r.value,
                        node_id,
                        boot_id,
                        r.channel.0,
                        clock::mono_column(basis, sample.ts_ms)
                    ])?;
                }
                readings += sample.readings.len() as u64;
                out.admitted += 1;
                out.readings += sample.readings.len() as u64;
                last = Some(sample.seq);
            }
        }
        if let Some(last) = last {
            self.tx.execute(
                "INSERT INTO node_sessions (node_id, boot_id, last_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (node_id, boot_id) DO UPDATE SET last_seq = ?3",
                params![node_id, boot_id, last],
            )?;
            self.tx.execute(
                "UPDATE nodes SET readings_received = readings_received + ?2, samples_lost = samples_lost + ?3,
                     gaps_refused = gaps_refused + ?5, last_seen_ms = max(last_seen_ms, ?4) WHERE id = ?1",
                params![node_id, readings, out.lost, now_ms, out.implausible],
            )?;
            self.sessions.insert((node_id, boot_id), Some(last));
        }
        out.upto = last.unwrap_or(0);
        Ok(out)
    }

    /// Appends the readings of one poll of a device, taken at `ts_ms`: `source` is the device
    /// name, each reading's channel a point name. Returns the readings stored.
    ///
    /// A reading of another kind than its point's last one (after a config edit) starts a new
    /// series. A reading whose source or channel name a batch cannot carry (empty, or longer than
    /// `outpost_batch::MAX_NAME_LEN`) is left out, with a warning: it could never be sealed, and
    /// the config check refuses such names before they get here.
    pub fn ingest_series(
        &mut self,
        source: &str,
        ts_ms: i64,
        readings: &[SeriesReading],
    ) -> Result<u64, StoreError> {
        self.ingest_series_at(source, ts_ms, readings, Basis::Trusted)
    }

    /// [`Tx::ingest_series`] of readings stamped on `basis` (see [`Tx::ingest_at`]).
    pub fn ingest_series_at(
        &mut self,
        source: &str,
        ts_ms: i64,
        readings: &[SeriesReading],
        basis: Basis,
    ) -> Result<u64, StoreError> {
        let mut stored = 0u64;
        if series::name_fits(source) {
            let mut series = self.series.device(source);
            let mut insert = self.tx.prepare_cached(
                "INSERT INTO readings (series_id, ts_ms, value, clock) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for r in readings.iter().filter(|r| series::name_fits(&r.channel)) {
                let id = series.id(&self.tx, &r.channel, r.value.kind())?;
                insert.execute(params![
                    id,
                    ts_ms,
                    StoredValue(r.value),
                    clock::mono_column(basis, ts_ms)
                ])?;
                stored += 1;
            }
        }
        if stored < readings.len() as u64 {
            tracing::warn!(
                message = "Device readings with a name a batch cannot carry were not stored.",
                source,
                dropped = readings.len() as u64 - stored
            );
        }
        if stored > 0 {
            self.tx.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + ?1 WHERE key = 'readings.devices'",
                [stored],
            )?;
        }
        Ok(stored)
    }

    /// Records a HEALTH report and the gateway's own count of frames it dropped from the node.
    /// The first report of a boot also enters the node's reset history (`node_resets`), with
    /// the firmware and lot it ran: what fleet-health rules count, cohort by cohort.
    pub fn health(
        &mut self,
        node_id: i64,
        boot_id: u32,
        now_ms: i64,
        h: &Health,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR IGNORE INTO node_resets (uid, boot_id, at_ms, reason, expected, fw_version, lot)
             SELECT uid, ?2, ?3, ?4, ?5, ?6, lot FROM nodes WHERE id = ?1",
            params![
                node_id,
                boot_id,
                now_ms,
                h.reset_reason.as_str(),
                h.reset_reason.is_expected(),
                h.fw.to_string()
            ],
        )?;
        self.tx.execute(
            "INSERT INTO health (node_id, ts_ms, uptime_s, reset_reason, fw_version, stack_free_min, rx_frames,
                 rx_errors, tx_frames, retransmits, dropped_samples, chip_temp_centi)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![node_id, now_ms, h.uptime_s, h.reset_reason.as_str(), h.fw.to_string(), h.stack_free_min,
                h.rx_frames, h.rx_errors, h.tx_frames, h.retransmits, h.dropped_samples, h.chip_temp_centi],
        )?;
        self.tx.execute(
            "UPDATE nodes SET uptime_s = ?2, reset_reason = ?3, fw_version = ?4, node_rx_errors = ?5,
                 last_seen_ms = max(last_seen_ms, ?6) WHERE id = ?1",
            params![node_id, h.uptime_s, h.reset_reason.as_str(), h.fw.to_string(), h.rx_errors, now_ms],
        )?;
        Ok(())
    }

    /// Adds to a node's counts of anomalies on its line (see `outpost_core::link::PortCounters`).
    pub fn anomalies(&mut self, node_id: i64, a: NodeAnomalies) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE nodes SET ages_clamped = ages_clamped + ?2, gaps_refused = gaps_refused + ?3,
                              auth_failed = auth_failed + ?4, replayed = replayed + ?5
             WHERE id = ?1",
            params![
                node_id,
                a.ages_clamped,
                a.gaps_refused,
                a.auth_failed,
                a.replayed
            ],
        )?;
        Ok(())
    }

    /// Counts a failed PROOF in the name of `uid` on its row; nothing for a uid never enrolled
    /// (no row is written for a node the gateway did not accept).
    pub fn proof_failed(&mut self, uid: &[u8; 8]) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE nodes SET auth_failed = auth_failed + 1 WHERE uid = ?1",
            [outpost_core::hex::encode(uid)],
        )?;
        Ok(())
    }

    /// Adds to the count of frames the gateway dropped on a node's line.
    pub fn link_errors(&mut self, node_id: i64, errors: u32) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE nodes SET gateway_rx_errors = gateway_rx_errors + ?2 WHERE id = ?1",
            params![node_id, errors],
        )?;
        Ok(())
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if applied > schema::MIGRATIONS.len() {
        return Err(StoreError::SchemaTooNew {
            found: applied,
            known: schema::MIGRATIONS.len(),
        });
    }
    if applied == schema::MIGRATIONS.len() {
        return Ok(());
    }
    schema::node_channels(conn)?;
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    conn.execute_batch("DROP TABLE temp.node_channels")?;
    Ok(())
}

/// A node as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeRow {
    pub uid: String,
    pub hw_rev: u8,
    pub fw_version: String,
    pub lot: String,
    pub channels: Vec<String>,
    pub port: Option<String>,
    pub enrolled: bool,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub uptime_s: Option<u32>,
    pub reset_reason: Option<String>,
    pub readings_received: u64,
    pub samples_lost: u64,
    pub link_errors: LinkErrors,
    pub anomalies: Anomalies,
    /// Frames the node sent again since its boot, as its last HEALTH said.
    pub retransmits: Option<u32>,
    /// When the node was revoked (Unix ms): it is kept out for good.
    pub revoked_ms: Option<i64>,
}

/// What a node's line carried that no node can have sent: forged or corrupt frames.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Anomalies {
    /// Samples claiming an age beyond what is possible; stored with the age clamped.
    pub ages_clamped: u64,
    /// Samples claiming a gap larger than the node can have taken; dropped.
    pub gaps_refused: u64,
    /// Frames in the node's session whose seal did not verify, and PROOFs in its name that did
    /// not verify: someone spoke as this node without its key. Dropped.
    pub auth_failed: u64,
    /// Frames of the node's session replayed. Dropped.
    pub replayed: u64,
}

/// Anomalies to add to a node's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeAnomalies {
    pub ages_clamped: u32,
    pub gaps_refused: u32,
    pub auth_failed: u32,
    pub replayed: u32,
}

/// The enrollment window and who waits for enrollment (`GET /api/v1/enrollment`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnrollmentState {
    /// The open (or last) window's end, Unix ms; `None` if none was ever opened.
    pub window_until_ms: Option<i64>,
    pub waiting: Vec<WaitingNode>,
}

/// A node that proved a key, held back by the policy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WaitingNode {
    pub uid: String,
    pub port: String,
    pub hw_rev: u8,
    pub fw_version: String,
    pub lot: String,
    /// The first 8 bytes of SHA-256 of its public key: what to compare with the manifest.
    pub key_id: String,
    /// `not_enrolling` (no window open, or `closed`) or `not_listed` (the manifest).
    pub reason: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub attempts: u64,
}

/// One page of the registry, in uid order (`GET /api/v1/nodes`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodePage {
    pub nodes: Vec<NodeRow>,
    /// The uid to pass as `after` for the next page; `None` on the last one.
    pub next: Option<String>,
}

/// Nodes on one page unless asked otherwise, and at most.
pub const NODES_PAGE: usize = 100;
pub const NODES_PAGE_MAX: usize = 500;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct LinkErrors {
    /// Frames from the node the gateway dropped (CRC, framing, malformed).
    pub gateway_rx: u64,
    /// Frames to the node the node dropped, as it reported in its last HEALTH.
    pub node_rx: u64,
}

/// Totals for the status endpoint.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub nodes: u64,
    /// Every reading stored: the nodes' (the sum of their `readings_received`) and the devices'.
    pub readings_stored: u64,
    /// Of `readings_stored`, those from devices.
    pub device_readings: u64,
}

/// Read-only access for the API and tools.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Readers answer small queries (the outbox's next batches, the status page's rows).
        conn.pragma_update(None, "cache_size", -512)?;
        Ok(Reader {
            conn,
            path: path.to_owned(),
        })
    }

    /// The enrollment window and the nodes waiting for enrollment, most recently seen first.
    pub fn enrollment(&self) -> Result<EnrollmentState, StoreError> {
        let window_until_ms: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'enrollment.window_until_ms'",
                [],
                |row| row.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse().ok())
            .filter(|&v: &i64| v > 0);
        let mut stmt = self.conn.prepare_cached(
            "SELECT uid, port, hw_rev, fw_version, lot, public_key, reason, first_seen_ms, last_seen_ms, attempts
             FROM enrollment_waiting ORDER BY last_seen_ms DESC",
        )?;
        let waiting = stmt
            .query_map([], |row| {
                let key: Vec<u8> = row.get(5)?;
                Ok(WaitingNode {
                    uid: row.get(0)?,
                    port: row.get(1)?,
                    hw_rev: row.get(2)?,
                    fw_version: row.get(3)?,
                    lot: row.get(4)?,
                    key_id: outpost_core::update::signing::KeyId::of_bytes(&key).to_string(),
                    reason: row.get(6)?,
                    first_seen_ms: row.get(7)?,
                    last_seen_ms: row.get(8)?,
                    attempts: row.get(9)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(EnrollmentState {
            window_until_ms,
            waiting,
        })
    }

    /// Every node, in uid order.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        self.nodes_after(None, usize::MAX)
    }

    /// At most `limit` nodes (capped at [`NODES_PAGE_MAX`]) with a uid after `after`, in uid
    /// order, and the cursor of the next page.
    pub fn node_page(&self, after: Option<&str>, limit: usize) -> Result<NodePage, StoreError> {
        let limit = limit.clamp(1, NODES_PAGE_MAX);
        // One more than asked: whether there is a next page.
        let mut nodes = self.nodes_after(after, limit + 1)?;
        let next = if nodes.len() > limit {
            nodes.truncate(limit);
            nodes.last().map(|n| n.uid.clone())
        } else {
            None
        };
        Ok(NodePage { nodes, next })
    }

    fn nodes_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<NodeRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT uid, hw_rev, fw_version, lot, channels, port, public_key IS NOT NULL, first_seen_ms, last_seen_ms,
                    uptime_s, reset_reason, readings_received, samples_lost, gateway_rx_errors, node_rx_errors,
                    ages_clamped, gaps_refused,
                    (SELECT retransmits FROM health h WHERE h.node_id = nodes.id ORDER BY ts_ms DESC LIMIT 1),
                    auth_failed, replayed, revoked_ms
             FROM nodes WHERE uid > ?1 ORDER BY uid LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after.unwrap_or(""), limit], |row| {
            let channels: String = row.get(4)?;
            Ok(NodeRow {
                uid: row.get(0)?,
                hw_rev: row.get(1)?,
                fw_version: row.get(2)?,
                lot: row.get(3)?,
                channels: channels
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(channel_name)
                    .collect(),
                port: row.get(5)?,
                enrolled: row.get(6)?,
                first_seen_ms: row.get(7)?,
                last_seen_ms: row.get(8)?,
                uptime_s: row.get(9)?,
                reset_reason: row.get(10)?,
                readings_received: row.get(11)?,
                samples_lost: row.get(12)?,
                link_errors: LinkErrors {
                    gateway_rx: row.get(13)?,
                    node_rx: row.get(14)?,
                },
                anomalies: Anomalies {
                    ages_clamped: row.get(15)?,
                    gaps_refused: row.get(16)?,
                    auth_failed: row.get(18)?,
                    replayed: row.get(19)?,
                },
                retransmits: row.get(17)?,
                revoked_ms: row.get(20)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn totals(&self) -> Result<Totals, StoreError> {
        let (nodes, node_readings, device_readings): (u64, u64, u64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(readings_received), 0),
                    (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'readings.devices')
             FROM nodes",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        Ok(Totals {
            nodes,
            readings_stored: node_readings + device_readings,
            device_readings,
        })
    }

    /// Bytes on disk: the database file and its write-ahead log.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        [self.path.as_os_str(), wal.as_os_str()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// `"4"` → `"seq"`; ids without a fixed name stay numeric.
fn channel_name(id: &str) -> String {
    id.parse::<u8>()
        .ok()
        .and_then(|c| outpost_proto::ChannelId(c).name())
        .map_or_else(|| id.to_owned(), str::to_owned)
}

#[cfg(test)]
mod tests;
