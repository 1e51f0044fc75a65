//! The update agent's files: `report.json` and `pending.json` in its state folder (the types are
//! `outpost_core::update::report`'s), written atomically by the root agent, read by the daemon.

use std::path::Path;

use serde::Serialize;

pub use outpost_core::update::report::{Outcome, Pending, Step, UpdateReport};

/// The report's file name in the update agent's state folder.
pub const REPORT_FILE: &str = "report.json";
/// The in-progress marker's file name in the update agent's state folder.
pub const PENDING_FILE: &str = "pending.json";

/// The last update attempt's report in `state_dir` (normally [`super::STATE_DIR`]), if there is
/// a readable one. The daemon shows it on its status page and raises an alert upstream when
/// [`Outcome::is_alert`].
#[must_use]
pub fn last_report(state_dir: &Path) -> Option<UpdateReport> {
    let bytes = std::fs::read(state_dir.join(REPORT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `value` as JSON to `dir/name` atomically (temporary file, fsync, rename), readable by
/// all (the daemon, running as `outpost`, reads the report).
pub(crate) fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    json.push(b'\n');
    write_atomically(dir, name, &json)
}

/// Writes `text` to `dir/name` atomically, like [`write_json`].
pub(crate) fn write_text(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    write_atomically(dir, name, text.as_bytes())
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    crate::io::files::write_atomically(&dir.join(name), bytes, 0o644)
}

/// A report of a 0.1.0-1 → 0.2.0-1 attempt that was not ready in time, for tests.
#[cfg(test)]
pub(crate) fn example(outcome: Outcome) -> UpdateReport {
    UpdateReport {
        outcome,
        file: "outpost_0.2.0-1_arm64.deb".into(),
        from_version: Some("0.1.0-1".into()),
        to_version: Some("0.2.0-1".into()),
        installed_version: Some("0.1.0-1".into()),
        reason: Some("not ready within 120 s".into()),
        rollback_reason: None,
        started_at_unix_ms: 1_700_000_000_000,
        finished_at_unix_ms: 1_700_000_130_000,
        deadline_ms: 120_000,
        steps: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> UpdateReport {
        let mut report = example(Outcome::RolledBack);
        report.steps.push(Step {
            after_ms: 0,
            what: "verified".into(),
        });
        report
    }

    #[test]
    fn the_last_report_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(last_report(dir.path()), None);
        write_json(dir.path(), REPORT_FILE, &report()).unwrap();
        assert_eq!(last_report(dir.path()), Some(report()));
        let text = std::fs::read_to_string(dir.path().join(REPORT_FILE)).unwrap();
        assert!(text.contains("\"outcome\": \"rolled_back\""), "{text}");
    }

    #[test]
    fn the_summary_names_versions_outcome_and_reasons() {
        assert_eq!(
            report().summary(),
            "update outpost_0.2.0-1_arm64.deb 0.1.0-1 -> 0.2.0-1: rolled back: not ready within 120 s"
        );
        assert!(Outcome::RolledBack.is_alert() && !Outcome::Confirmed.is_alert());
    }

    #[test]
    fn a_garbled_report_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(REPORT_FILE), b"{not json").unwrap();
        assert_eq!(last_report(dir.path()), None);
    }
}
