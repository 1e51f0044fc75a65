//! Node firmware rollouts in the store (migration 11): the rollout core's rows
//! (`outpost_core::rollout::Row`), the events published on `outpost/{id}/ota`, and every node's
//! firmware history.
//!
//! The rollout core asks for its rows to be written at every stage and phase change; a drain's
//! rows are written in one transaction before anything else of that drain is done, so a restart
//! finds the rollout as it last decided ([`Reader::active_rollout`] then `Rollout::restore`).

use std::num::NonZeroUsize;
use std::time::Duration;

use outpost_core::firmware::parse_version;
use outpost_core::hex;
use outpost_core::rollout::{
    Artifact, Mode, NodePhase, NodeRow, RevertCause, RolloutRow, RolloutState, Row, Rows, Settings,
    StageId, Waves,
};
use outpost_proto::{FwVersion, ResetReason};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Reader, StoreError, Tx};

/// The most `ota_events` rows kept.
pub const MAX_OTA_EVENTS: i64 = 10_000;

/// One firmware transition of a node, for its record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FirmwareTransition {
    pub uid: String,
    pub at_ms: i64,
    pub from_version: String,
    pub to_version: String,
    /// `confirmed`, `reverted (deadline)`, `finalized`, …
    pub outcome: String,
    pub rollout: Option<i64>,
}

/// A rollout as the list shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RolloutSummary {
    pub id: i64,
    pub version: String,
    pub artifact_sha256: String,
    pub mode: String,
    pub state: String,
    pub stage: Option<String>,
    pub halt_reason: Option<String>,
    pub started_by: String,
    pub started_ms: i64,
    pub updated_ms: i64,
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} `{value}` in the rollout tables"))
}

fn version(text: &str) -> Result<FwVersion, StoreError> {
    parse_version(text).map_err(|_| corrupt("version", text))
}

fn sha256(text: &str) -> Result<[u8; 32], StoreError> {
    hex::decode::<32>(text).ok_or_else(|| corrupt("sha256", text))
}

fn uid(text: &str) -> Result<[u8; 8], StoreError> {
    hex::decode::<8>(text).ok_or_else(|| corrupt("uid", text))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn duration(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl Tx<'_> {
    /// Writes (upserts) the rollout core's rows and appends its events (JSON, stamped `now_ms`).
    pub fn ota_persist(
        &mut self,
        rows: &[Row],
        events: &[String],
        rollout: u64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        for row in rows {
            match row {
                Row::Rollout(r) => self.upsert_rollout(r, now_ms)?,
                Row::Node(n) => self.upsert_rollout_node(n, now_ms)?,
            }
        }
        for json in events {
            self.tx.execute(
                "INSERT INTO ota_events (rollout, at_ms, json) VALUES (?1, ?2, ?3)",
                params![rollout as i64, now_ms, json],
            )?;
        }
        if !events.is_empty() {
            self.tx.execute(
                "DELETE FROM ota_events WHERE id <= (SELECT max(id) FROM ota_events) - ?1",
                [MAX_OTA_EVENTS],
            )?;
        }
        Ok(())
    }

    fn upsert_rollout(&mut self, r: &RolloutRow, now_ms: i64) -> Result<(), StoreError> {
        let (mode, canary, waves) = match &r.settings.mode {
            Mode::Staged { canary, waves } => ("staged", *canary as i64, waves.to_string()),
            Mode::Targeted => ("targeted", 0, String::new()),
        };
        let s = &r.settings;
        self.tx.execute(
            "INSERT INTO rollouts (id, artifact_sha256, artifact_version, mode, canary, waves,
                 soak_ms, confirm_within_ms, offline_threshold_ms, max_per_port, started_by, state,
                 stage, halt_reason, rollback, started_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?16)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, stage = excluded.stage,
                 halt_reason = excluded.halt_reason, rollback = excluded.rollback,
                 updated_ms = excluded.updated_ms",
            params![
                r.id as i64,
                hex::encode(&r.artifact.sha256),
                r.artifact.version.to_string(),
                mode,
                canary,
                waves,
                ms(s.soak),
                ms(s.confirm_within),
                ms(s.offline_threshold),
                s.max_concurrent_per_port.get() as i64,
                r.started_by,
                r.state.as_str(),
                r.stage.map(|st| st.to_string()),
                r.halt_reason,
                r.rollback,
                now_ms,
            ],
        )?;
        Ok(())
    }

    fn upsert_rollout_node(&mut self, n: &NodeRow, now_ms: i64) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO rollout_nodes (rollout, uid, position, port, stage, phase, from_version,
                 to_version, rollback_sha256, rollback_version, attempts, transfer_failures,
                 boot_id, last_reset, revert_cause, detail, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
             ON CONFLICT (rollout, uid) DO UPDATE SET stage = excluded.stage,
                 phase = excluded.phase, to_version = excluded.to_version,
                 attempts = excluded.attempts, transfer_failures = excluded.transfer_failures,
                 boot_id = excluded.boot_id, last_reset = excluded.last_reset,
                 revert_cause = excluded.revert_cause, detail = excluded.detail,
                 updated_ms = excluded.updated_ms",
            params![
                n.rollout as i64,
                hex::encode(&n.uid),
                n.position as i64,
                n.port,
                n.stage.map(|st| st.to_string()),
                n.phase.as_str(),
                n.from_version.to_string(),
                n.to_version.to_string(),
                n.rollback.map(|a| hex::encode(&a.sha256)),
                n.rollback.map(|a| a.version.to_string()),
                n.attempts,
                n.transfer_failures,
                n.boot_id,
                n.last_reset.map(ResetReason::code),
                n.revert_cause.map(RevertCause::as_str),
                n.detail,
                now_ms,
            ],
        )?;
        Ok(())
    }

    /// Records a firmware transition of node `uid` (its RMA history).
    pub fn firmware_transition(&mut self, t: &FirmwareTransition) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO node_firmware (uid, at_ms, from_version, to_version, outcome, rollout)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                t.uid,
                t.at_ms,
                t.from_version,
                t.to_version,
                t.outcome,
                t.rollout
            ],
        )?;
        Ok(())
    }

    /// The id for a new rollout.
    pub fn next_rollout_id(&mut self) -> Result<u64, StoreError> {
        let max: Option<i64> = self
            .tx
            .query_row("SELECT max(id) FROM rollouts", [], |r| r.get(0))?;
        Ok(u64::try_from(max.unwrap_or(0)).unwrap_or(0) + 1)
    }
}

impl Reader {
    /// The rollout that has not ended (at most one runs at a time), as rows to restore it from.
    pub fn active_rollout(&self) -> Result<Option<Rows>, StoreError> {
        let id: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM rollouts WHERE state NOT IN ('halted', 'done')
                 ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        id.map(|id| self.rollout_rows(id)).transpose()
    }

    /// Rollout `id`'s rows.
    pub fn rollout_rows(&self, id: i64) -> Result<Rows, StoreError> {
        type Raw = (String, String, String, i64, String, i64, i64, i64, i64);
        let (raw, started_by, state, stage, halt_reason, rollback): (
            Raw,
            String,
            String,
            Option<String>,
            Option<String>,
            bool,
        ) = self.conn.query_row(
            "SELECT artifact_sha256, artifact_version, mode, canary, waves, soak_ms,
                    confirm_within_ms, offline_threshold_ms, max_per_port, started_by, state,
                    stage, halt_reason, rollback
             FROM rollouts WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    (
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                    ),
                    r.get(9)?,
                    r.get(10)?,
                    r.get(11)?,
                    r.get(12)?,
                    r.get(13)?,
                ))
            },
        )?;
        let (sha, ver, mode, canary, waves, soak, confirm, offline, per_port) = raw;
        let mode = match mode.as_str() {
            "staged" => Mode::Staged {
                canary: usize::try_from(canary).unwrap_or(1),
                waves: Waves::parse(&waves).map_err(|_| corrupt("waves", &waves))?,
            },
            "targeted" => Mode::Targeted,
            other => return Err(corrupt("mode", other)),
        };
        let rollout = RolloutRow {
            id: id as u64,
            artifact: Artifact {
                sha256: sha256(&sha)?,
                version: version(&ver)?,
            },
            settings: Settings {
                mode,
                soak: duration(soak),
                confirm_within: duration(confirm),
                offline_threshold: duration(offline),
                max_concurrent_per_port: NonZeroUsize::new(usize::try_from(per_port).unwrap_or(1))
                    .unwrap_or(NonZeroUsize::MIN),
            },
            started_by,
            state: RolloutState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
            stage: stage
                .map(|s| StageId::parse(&s).ok_or_else(|| corrupt("stage", &s)))
                .transpose()?,
            halt_reason,
            rollback,
        };
        let mut statement = self.conn.prepare_cached(
            "SELECT uid, position, port, stage, phase, from_version, to_version, rollback_sha256,
                    rollback_version, attempts, transfer_failures, boot_id, last_reset,
                    revert_cause, detail
             FROM rollout_nodes WHERE rollout = ?1 ORDER BY position",
        )?;
        let raw = statement
            .query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    (
                        r.get::<_, u8>(9)?,
                        r.get::<_, u8>(10)?,
                        r.get::<_, Option<u32>>(11)?,
                        r.get::<_, Option<u8>>(12)?,
                        r.get::<_, Option<String>>(13)?,
                        r.get::<_, Option<String>>(14)?,
                    ),
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut nodes = Vec::with_capacity(raw.len());
        for (u, position, port, stage, phase, from, to, rb_sha, rb_ver, rest) in raw {
            let (attempts, transfer_failures, boot_id, last_reset, cause, detail) = rest;
            let rollback = match (rb_sha, rb_ver) {
                (Some(s), Some(v)) => Some(Artifact {
                    sha256: sha256(&s)?,
                    version: version(&v)?,
                }),
                _ => None,
            };
            nodes.push(NodeRow {
                rollout: id as u64,
                uid: uid(&u)?,
                position: usize::try_from(position).unwrap_or(0),
                port,
                stage: stage
                    .map(|s| StageId::parse(&s).ok_or_else(|| corrupt("stage", &s)))
                    .transpose()?,
                phase: NodePhase::parse(&phase).ok_or_else(|| corrupt("phase", &phase))?,
                from_version: version(&from)?,
                to_version: version(&to)?,
                rollback,
                attempts,
                transfer_failures,
                boot_id,
                last_reset: last_reset.map(ResetReason::from_code),
                revert_cause: cause
                    .map(|c| RevertCause::parse(&c).ok_or_else(|| corrupt("revert cause", &c)))
                    .transpose()?,
                detail,
            });
        }
        Ok(Rows { rollout, nodes })
    }

    /// The newest `limit` rollouts, newest first.
    pub fn rollouts(&self, limit: u32) -> Result<Vec<RolloutSummary>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT id, artifact_version, artifact_sha256, mode, state, stage, halt_reason,
                    started_by, started_ms, updated_ms
             FROM rollouts ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = statement
            .query_map([limit], |r| {
                Ok(RolloutSummary {
                    id: r.get(0)?,
                    version: r.get(1)?,
                    artifact_sha256: r.get(2)?,
                    mode: r.get(3)?,
                    state: r.get(4)?,
                    stage: r.get(5)?,
                    halt_reason: r.get(6)?,
                    started_by: r.get(7)?,
                    started_ms: r.get(8)?,
                    updated_ms: r.get(9)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Rollout `rollout`'s newest `limit` events (JSON as published), oldest first.
    pub fn ota_events(&self, rollout: i64, limit: u32) -> Result<Vec<(i64, String)>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT at_ms, json FROM (SELECT id, at_ms, json FROM ota_events WHERE rollout = ?1
                                      ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )?;
        let rows = statement
            .query_map(params![rollout, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Node `uid`'s firmware history, oldest first.
    pub fn firmware_history(&self, uid: &str) -> Result<Vec<FirmwareTransition>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT uid, at_ms, from_version, to_version, outcome, rollout
             FROM node_firmware WHERE uid = ?1 ORDER BY id",
        )?;
        let rows = statement
            .query_map([uid], |r| {
                Ok(FirmwareTransition {
                    uid: r.get(0)?,
                    at_ms: r.get(1)?,
                    from_version: r.get(2)?,
                    to_version: r.get(3)?,
                    outcome: r.get(4)?,
                    rollout: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
