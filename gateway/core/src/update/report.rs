//! What a self-update attempt leaves behind, as data: `report.json` (the last attempt's outcome,
//! for the status page and the cloud) and `pending.json` (the attempt in progress, so one cut
//! short by a power cut or a crash is finished on the next start). Reading and writing them is
//! the adapter's (`outpost::io::update::report`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How an update attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The new version was installed and proved itself healthy: it stays.
    Confirmed,
    /// The new version failed; the previous one is installed and healthy again.
    RolledBack,
    /// The new version failed and so did the rollback: the gateway needs a person.
    Failed,
    /// Nothing was installed: the artifact was not trusted or not applicable.
    Refused,
}

impl Outcome {
    /// Whether the cloud should hear about it as an alert (anything but a confirmed update).
    #[must_use]
    pub fn is_alert(self) -> bool {
        self != Outcome::Confirmed
    }
}

/// One step of an attempt, timed from its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub after_ms: u64,
    pub what: String,
}

/// `report.json`: the last update attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReport {
    pub outcome: Outcome,
    /// The artifact's file name, e.g. `outpost_0.2.0-1_arm64.deb`.
    pub file: String,
    /// The package version installed before the attempt (when known).
    pub from_version: Option<String>,
    /// The version the artifact carries (when it could be read).
    pub to_version: Option<String>,
    /// The package version dpkg reported last (when dpkg ran).
    pub installed_version: Option<String>,
    /// Why the update was refused, or why the new version was rolled back.
    pub reason: Option<String>,
    /// Why the rollback failed too (outcome `failed` only).
    pub rollback_reason: Option<String>,
    /// Wall-clock times (Unix milliseconds). The durations in `steps` are from a monotonic
    /// clock and stay right if the wall clock was set during the attempt.
    pub started_at_unix_ms: i64,
    pub finished_at_unix_ms: i64,
    /// The health deadline the attempt ran with.
    pub deadline_ms: u64,
    pub steps: Vec<Step>,
}

impl UpdateReport {
    /// A one-line summary, for logs and alerts.
    #[must_use]
    pub fn summary(&self) -> String {
        let versions = match (&self.from_version, &self.to_version) {
            (Some(from), Some(to)) => format!(" {from} -> {to}"),
            (None, Some(to)) => format!(" to {to}"),
            _ => String::new(),
        };
        let outcome = match self.outcome {
            Outcome::Confirmed => "confirmed",
            Outcome::RolledBack => "rolled back",
            Outcome::Failed => "FAILED (rollback failed too)",
            Outcome::Refused => "refused",
        };
        let mut line = format!("update {}{versions}: {outcome}", self.file);
        if let Some(reason) = &self.reason {
            line += &format!(": {reason}");
        }
        if let Some(reason) = &self.rollback_reason {
            line += &format!("; rollback: {reason}");
        }
        line
    }
}

/// `pending.json`: the attempt in progress, written before each dpkg run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub file: String,
    /// The verified copy of the new package (root's own folder).
    pub artifact: PathBuf,
    pub from_version: String,
    pub to_version: String,
    /// The package to reinstall on failure.
    pub previous: PathBuf,
    /// `None` while the new version is being installed or checked; the failure once the
    /// previous version is being reinstalled.
    pub rolling_back: Option<String>,
    pub started_at_unix_ms: i64,
}
