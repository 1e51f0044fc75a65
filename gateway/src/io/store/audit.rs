//! The audit log of remote commands: every command that reached the gateway on its command
//! topic, who signed it (if anyone), and how it ended (`command_audit`, migration 10).
//!
//! The log is also the replay guard: a verified command is *claimed* by inserting its nonce,
//! which is unique, so the second arrival of the same command finds it taken, after a restart as
//! well. Rows are kept up to [`MAX_AUDIT_ROWS`]; the oldest go first, except a nonce whose
//! command has not expired (forgetting it would let a replay through).

use outpost_core::command::Verified;
use rusqlite::params;
use serde::Serialize;

use super::{Reader, StoreError, Tx};

/// The most rows the audit log keeps.
pub const MAX_AUDIT_ROWS: i64 = 10_000;

/// One command as the log holds it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub received_ms: i64,
    /// The verb its topic named.
    pub verb: String,
    pub request: Option<String>,
    /// The operator key that signed it, when the signature verified.
    pub key_id: Option<String>,
    /// `running`, `ok`, `refused`, `failed`, `interrupted` (the gateway stopped while it ran) or
    /// `dropped` (one entry for commands dropped unread in a flood; `detail` says how many).
    pub outcome: String,
    pub detail: String,
    pub finished_ms: Option<i64>,
}

impl Tx<'_> {
    /// Claims a verified command's nonce and logs it as running: `Ok(Some(id))`, or `Ok(None)`
    /// when the nonce was used before (a replay: nothing written).
    pub fn claim_command(
        &mut self,
        received_ms: i64,
        verified: &Verified,
    ) -> Result<Option<i64>, StoreError> {
        let command = &verified.command;
        let inserted = self.tx.execute(
            "INSERT INTO command_audit (received_ms, verb, request, key_id, nonce, expires_s, outcome, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', '')
             ON CONFLICT (nonce) DO NOTHING",
            params![
                received_ms,
                command.verb.name(),
                command.request,
                verified.key.to_string(),
                verified.nonce(),
                command.expires
            ],
        )?;
        if inserted == 0 {
            return Ok(None);
        }
        let id = self.tx.last_insert_rowid();
        self.prune_audit(received_ms)?;
        Ok(Some(id))
    }

    /// Records how the command `id` ended.
    pub fn finish_command(
        &mut self,
        id: i64,
        outcome: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE command_audit SET outcome = ?2, detail = ?3, finished_ms = ?4 WHERE id = ?1",
            params![id, outcome, detail, now_ms],
        )?;
        Ok(())
    }

    /// Logs a command that was not obeyed (bad signature, expired, replayed, …). Its nonce is
    /// not recorded: an unverified command must not be able to use up a real one's.
    pub fn audit_refused(
        &mut self,
        received_ms: i64,
        verb: &str,
        request: Option<&str>,
        key_id: Option<&str>,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO command_audit (received_ms, verb, request, key_id, outcome, detail, finished_ms)
             VALUES (?1, ?2, ?3, ?4, 'refused', ?5, ?1)",
            params![received_ms, verb, request, key_id, detail],
        )?;
        self.prune_audit(received_ms)
    }

    /// Logs commands the gateway dropped unread (more arrived at once than it queues).
    pub fn audit_dropped(&mut self, received_ms: i64, detail: &str) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO command_audit (received_ms, verb, outcome, detail, finished_ms)
             VALUES (?1, '*', 'dropped', ?2, ?1)",
            params![received_ms, detail],
        )?;
        self.prune_audit(received_ms)
    }

    /// Commands still `running` when the gateway stopped never finished: say so.
    pub fn interrupt_running_commands(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        Ok(self.tx.execute(
            "UPDATE command_audit SET outcome = 'interrupted',
                 detail = 'the gateway stopped before the command finished', finished_ms = ?1
             WHERE outcome = 'running'",
            [now_ms],
        )?)
    }

    /// Ids only grow (the newest row is never deleted), so everything more than
    /// [`MAX_AUDIT_ROWS`] ids back is old: one index range, not a count.
    fn prune_audit(&mut self, now_ms: i64) -> Result<(), StoreError> {
        self.tx.execute(
            "DELETE FROM command_audit
             WHERE id <= (SELECT max(id) FROM command_audit) - ?1
               AND (nonce IS NULL OR expires_s * 1000 < ?2)",
            params![MAX_AUDIT_ROWS, now_ms],
        )?;
        Ok(())
    }
}

impl Reader {
    /// The newest `limit` entries of the audit log, newest first.
    pub fn command_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT id, received_ms, verb, request, key_id, outcome, detail, finished_ms
             FROM command_audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = statement
            .query_map([limit], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    received_ms: r.get(1)?,
                    verb: r.get(2)?,
                    request: r.get(3)?,
                    key_id: r.get(4)?,
                    outcome: r.get(5)?,
                    detail: r.get(6)?,
                    finished_ms: r.get(7)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
