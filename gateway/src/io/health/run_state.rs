//! The run-state file (`run-state.json` in the data directory): what this run says about itself,
//! so that the next one can tell how it ended (`outpost_core::health::run_end`, which also
//! documents the file and the decision table).
//!
//! - [`begin`] at start: reads what the previous run left (at most [`MAX_FILE_BYTES`]; anything
//!   else is `unknown` with one WARN line), decides its end, writes `running` for this run and
//!   installs the panic hook. The verdict stays available through [`previous`].
//! - [`heartbeat`] while the daemon lives (the health task, at most once a minute: the file is
//!   rewritten with an fsync, and an SD card counts its writes).
//! - [`end`] after `run` returns: `stopped`, or `failed` with the error.
//! - [`record_exit`] is `outpost record-exit`, the unit's `ExecStopPost=`: it adds systemd's
//!   `$SERVICE_RESULT`, `$EXIT_CODE` and `$EXIT_STATUS` to the file, however the run ended.
//!
//! Every write is atomic (`io::files::write_atomically`): a power cut leaves the old record or
//! the new one.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use outpost_core::health::run_end::{self, ExitRecord, Found, PreviousRun, RunPhase, RunState};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "run-state.json";

/// A larger file is not a run state: it is not read further.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// The file's path in `data_dir`.
#[must_use]
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// This run's record and where it goes, for the heartbeat, the end and the panic hook.
struct Current {
    path: PathBuf,
    state: Mutex<RunState>,
}

static CURRENT: OnceLock<Current> = OnceLock::new();
static PREVIOUS: OnceLock<PreviousRun> = OnceLock::new();

/// How the previous run ended, once [`begin`] decided it (`None` in a process that is not the
/// daemon, such as `outpost demo`).
#[must_use]
pub fn previous() -> Option<&'static PreviousRun> {
    PREVIOUS.get()
}

/// What the file at `path` holds.
#[must_use]
pub fn read(path: &Path) -> Found {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Found::Nothing,
        Err(e) => return Found::Unreadable(format!("cannot open {}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        return Found::Unreadable(format!("cannot read {}: {e}", path.display()));
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Found::Unreadable(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes: not a run state",
            path.display()
        ));
    }
    match RunState::parse(&bytes) {
        Ok(state) => Found::Record(state),
        Err(e) => Found::Unreadable(format!("{}: {e}", path.display())),
    }
}

/// At the daemon's start: decides how the previous run ended, records this one as `running`,
/// and installs the panic hook. Called once; a failure to write is logged, never fatal (the
/// gateway's work matters more than this record).
pub fn begin(data_dir: &Path, now_ms: i64, boot_id: &str) -> PreviousRun {
    let path = path(data_dir);
    let found = read(&path);
    if let Found::Unreadable(why) = &found {
        tracing::warn!(message = "The run-state file is unreadable; the previous run's end is unknown.", file = %path.display(), %why);
    }
    let verdict = run_end::decide(&found, boot_id);
    match verdict.reason {
        run_end::EndReason::Clean | run_end::EndReason::FirstRun => {
            tracing::info!(message = "Previous run.", reason = verdict.reason.as_str(), detail = %verdict.detail);
        }
        _ => {
            tracing::warn!(message = "The previous run did not end cleanly.", reason = verdict.reason.as_str(),
                kind = ?verdict.kind, detail = %verdict.detail, last_alive_ms = ?verdict.last_alive_ms);
        }
    }
    let _ = PREVIOUS.set(verdict.clone());
    let state = RunState::running(now_ms, std::process::id(), boot_id);
    write(&path, &state);
    if CURRENT
        .set(Current {
            path,
            state: Mutex::new(state),
        })
        .is_ok()
    {
        install_panic_hook();
    }
    verdict
}

/// The daemon is alive at `now_ms`.
pub fn heartbeat(now_ms: i64) {
    update(|state| state.heartbeat_ms = now_ms);
}

/// After `run` returned: `stopped`, or `failed` with the error.
pub fn end(now_ms: i64, outcome: Result<(), String>) {
    update(|state| {
        state.heartbeat_ms = now_ms;
        match outcome {
            Ok(()) => state.state = RunPhase::Stopped,
            Err(error) => {
                state.state = RunPhase::Failed;
                state.message = Some(run_end::cut(&error));
            }
        }
    });
}

fn update(change: impl FnOnce(&mut RunState)) {
    let Some(current) = CURRENT.get() else {
        return;
    };
    let mut state = current
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    change(&mut state);
    write(&current.path, &state);
}

fn write(path: &Path, state: &RunState) {
    if let Err(error) = crate::io::files::write_atomically(path, &state.to_bytes(), 0o600) {
        tracing::warn!(message = "Cannot write the run-state file; the next start may not tell how this run ended.", file = %path.display(), %error);
    }
}

/// Records a panic before the process goes (the release build aborts on panic), then runs the
/// hook that was there (which prints the message).
fn install_panic_hook() {
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(current) = CURRENT.get()
            // Not if the panic came from inside `update` itself: never wait for a lock here.
            && let Ok(mut state) = current.state.try_lock()
        {
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            state.state = RunPhase::Panicked;
            state.message = Some(run_end::cut(&format!("{payload}{location}")));
            state.heartbeat_ms = crate::io::wall_clock::unix_ms();
            let _ = crate::io::files::write_atomically(&current.path, &state.to_bytes(), 0o600);
        }
        previous_hook(info);
    }));
}

/// systemd's account of the run, from the variables it sets for `ExecStopPost=`: `None` when
/// `$SERVICE_RESULT` is unset (not run by systemd).
#[must_use]
pub fn exit_record_from(env: impl Fn(&str) -> Option<String>, now_ms: i64) -> Option<ExitRecord> {
    let bounded = |name: &str| env(name).map(|v| run_end::cut(v.trim()));
    Some(ExitRecord {
        service_result: bounded("SERVICE_RESULT")?,
        exit_code: bounded("EXIT_CODE"),
        exit_status: bounded("EXIT_STATUS"),
        at_ms: now_ms,
    })
}

/// `outpost record-exit`: adds `record` to the run-state file in `data_dir`. A sentence saying
/// what was recorded, or an error saying why nothing was.
pub fn record_exit(data_dir: &Path, record: ExitRecord) -> anyhow::Result<String> {
    let path = path(data_dir);
    let mut state = match read(&path) {
        Found::Record(state) => state,
        Found::Nothing => anyhow::bail!(
            "{} does not exist: the daemon did not get as far as recording its run",
            path.display()
        ),
        Found::Unreadable(why) => anyhow::bail!("{why}; left as it is"),
    };
    let said = format!(
        "recorded in {}: the run of pid {} ({:?}) ended with {} ({} {})",
        path.display(),
        state.pid,
        state.state,
        record.service_result,
        record.exit_code.as_deref().unwrap_or("-"),
        record.exit_status.as_deref().unwrap_or("-"),
    );
    state.exit = Some(record);
    crate::io::files::write_atomically(&path, &state.to_bytes(), 0o600)?;
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_nothing_and_a_directory_a_huge_or_a_truncated_file_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        assert_eq!(read(&path), Found::Nothing);

        std::fs::create_dir(&path).unwrap();
        assert!(matches!(read(&path), Found::Unreadable(_)));
        std::fs::remove_dir(&path).unwrap();

        std::fs::write(&path, vec![b'{'; MAX_FILE_BYTES as usize + 10]).unwrap();
        let Found::Unreadable(why) = read(&path) else {
            panic!("a huge file was read")
        };
        assert!(why.contains("larger than"), "{why}");

        let state = RunState::running(1, 2, "boot");
        let bytes = state.to_bytes();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let Found::Unreadable(why) = read(&path) else {
            panic!("a truncated file was read")
        };
        assert!(why.contains("run-state.json"), "{why}");

        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path), Found::Record(state));
    }

    #[test]
    fn the_exit_record_comes_from_systemds_variables_and_is_added_to_the_file() {
        let env = |name: &str| match name {
            "SERVICE_RESULT" => Some("watchdog".to_owned()),
            "EXIT_CODE" => Some("dumped".to_owned()),
            "EXIT_STATUS" => Some("ABRT\n".to_owned()),
            _ => None,
        };
        let record = exit_record_from(env, 7).unwrap();
        assert_eq!(record.exit_status.as_deref(), Some("ABRT"));
        assert_eq!(exit_record_from(|_| None, 7), None);

        let dir = tempfile::tempdir().unwrap();
        assert!(record_exit(dir.path(), record.clone()).is_err(), "no file");
        std::fs::write(path(dir.path()), b"garbage").unwrap();
        assert!(record_exit(dir.path(), record.clone()).is_err());
        assert_eq!(
            std::fs::read(path(dir.path())).unwrap(),
            b"garbage",
            "an unreadable file is left as it is"
        );
        std::fs::write(path(dir.path()), RunState::running(1, 2, "boot").to_bytes()).unwrap();
        record_exit(dir.path(), record.clone()).unwrap();
        let Found::Record(state) = read(&path(dir.path())) else {
            panic!()
        };
        assert_eq!(state.exit, Some(record));
    }
}
