//! Why the daemon's previous run ended: clean stop, crash, watchdog, power loss.
//!
//! Design: three witnesses, none of which alone is enough, are combined by one pure function,
//! [`decide`]:
//!
//! 1. **The run-state file** (`run-state.json` in the data directory, [`RunState`]), which the
//!    daemon writes itself: `running` at start (with its pid, the kernel's boot id and a
//!    heartbeat refreshed while it lives), `stopped` at the end of a clean shutdown, `panicked`
//!    from the panic hook (with the message), `failed` when `run` returns an error.
//! 2. **systemd's exit record** ([`ExitRecord`]): the unit's `ExecStopPost=outpost record-exit`
//!    adds `$SERVICE_RESULT`, `$EXIT_CODE` and `$EXIT_STATUS` to the same file after every run,
//!    however it ended. Only systemd knows a watchdog kill (`SERVICE_RESULT=watchdog`) from any
//!    other SIGABRT, and it sees a SIGKILL the daemon never could.
//! 3. **The boot id** (`/proc/sys/kernel/random/boot_id`), new at every boot of the kernel.
//!
//! Nothing runs after a power cut or a kernel crash: the file still says `running`, no exit
//! record was added, and the boot id has changed. With the same boot id and no exit record the
//! process was killed outright (SIGKILL outside systemd's stop, or systemd itself was gone).
//!
//! | run-state | exit record (`SERVICE_RESULT`) | boot id | previous run |
//! |---|---|---|---|
//! | absent | – | – | `first_run` |
//! | unreadable | – | – | `unknown` (and why) |
//! | any | `watchdog` | any | `watchdog` |
//! | `stopped` | none or any other | any | `clean` |
//! | `panicked` | none or any other | any | `crash` / `panic` (the message) |
//! | `failed` | none or any other | any | `crash` / `error` (the error) |
//! | `running` | `success` | any | `clean` (the stop was not marked, the exit was 0) |
//! | `running` | `exit-code` | any | `crash` / `exit_code` |
//! | `running` | `signal` | any | `crash` / `signal` |
//! | `running` | `core-dump` | any | `crash` / `core_dump` |
//! | `running` | `oom-kill` | any | `crash` / `out_of_memory` |
//! | `running` | `timeout` | any | `crash` / `timeout` |
//! | `running` | anything else | any | `crash` / `other` |
//! | `running` | none | same | `crash` / `killed` |
//! | `running` | none | another | `power_loss` (or a kernel crash or hard reset) |
//! | `running` | none | unknown on either side | `unknown` |

use serde::{Deserialize, Serialize};

/// The run-state file's format version.
pub const RUN_STATE_VERSION: u32 = 1;

/// Text taken from the file (a panic message, an error, systemd's values) is cut to this many
/// characters before it is reported: the file is an input like any other.
pub const MAX_DETAIL_CHARS: usize = 300;

/// What the daemon last said about its own run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    Running,
    /// A clean shutdown finished.
    Stopped,
    /// The panic hook ran.
    Panicked,
    /// `run` returned an error (the store could not be opened, the API could not listen).
    Failed,
}

/// systemd's account of how the process ended, from the variables it sets for `ExecStopPost=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// `$SERVICE_RESULT`: `success`, `exit-code`, `signal`, `core-dump`, `watchdog`, `timeout`,
    /// `oom-kill`, `start-limit-hit`, `resources`, `protocol`.
    pub service_result: String,
    /// `$EXIT_CODE`: `exited`, `killed` or `dumped`.
    #[serde(default)]
    pub exit_code: Option<String>,
    /// `$EXIT_STATUS`: the exit status (`1`) or the signal's name (`KILL`, `ABRT`).
    #[serde(default)]
    pub exit_status: Option<String>,
    /// When it was recorded (Unix ms).
    pub at_ms: i64,
}

/// The run-state file (`run-state.json`), as the daemon and `outpost record-exit` write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// [`RUN_STATE_VERSION`].
    pub v: u32,
    pub state: RunPhase,
    /// When the run started (Unix ms).
    pub since_ms: i64,
    pub pid: u32,
    /// The kernel's boot id during the run; empty when it could not be read.
    pub boot_id: String,
    /// When the run was last known alive (Unix ms).
    pub heartbeat_ms: i64,
    /// The panic message or the error, for `panicked` and `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Added by `outpost record-exit` after the process ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitRecord>,
}

impl RunState {
    /// A run starting now.
    #[must_use]
    pub fn running(now_ms: i64, pid: u32, boot_id: &str) -> RunState {
        RunState {
            v: RUN_STATE_VERSION,
            state: RunPhase::Running,
            since_ms: now_ms,
            pid,
            boot_id: boot_id.to_owned(),
            heartbeat_ms: now_ms,
            message: None,
            exit: None,
        }
    }

    /// Reads the file's bytes. Anything but a whole, well-formed record of this version is an
    /// error that says what is wrong (a truncated write, another program's file).
    pub fn parse(bytes: &[u8]) -> Result<RunState, RunStateError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(RunStateError::Empty);
        }
        let state: RunState =
            serde_json::from_slice(bytes).map_err(|e| RunStateError::Malformed(e.to_string()))?;
        if state.v != RUN_STATE_VERSION {
            return Err(RunStateError::Version(state.v));
        }
        Ok(state)
    }

    /// The file's bytes.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("a RunState always serializes");
        bytes.push(b'\n');
        bytes
    }
}

/// Why the run-state file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunStateError {
    #[error("the run-state file is empty")]
    Empty,
    #[error("the run-state file is not a run state (truncated or foreign): {0}")]
    Malformed(String),
    #[error("the run-state file has format version {0}, this gateway reads {RUN_STATE_VERSION}")]
    Version(u32),
}

/// What was found of the previous run at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No run-state file: no run of this gateway recorded one before.
    Nothing,
    /// A file that could not be read or parsed: why.
    Unreadable(String),
    Record(RunState),
}

/// How the previous run ended, in the categories the health topic reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    FirstRun,
    Clean,
    Crash,
    Watchdog,
    /// The machine lost power, or its kernel crashed or was reset: nothing ran after the daemon.
    PowerLoss,
    Unknown,
}

impl EndReason {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::FirstRun => "first_run",
            EndReason::Clean => "clean",
            EndReason::Crash => "crash",
            EndReason::Watchdog => "watchdog",
            EndReason::PowerLoss => "power_loss",
            EndReason::Unknown => "unknown",
        }
    }
}

/// What kind of crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashKind {
    /// The panic hook recorded a panic.
    Panic,
    /// `run` returned an error.
    Error,
    /// Killed without an exit record, on the same boot: SIGKILL outside systemd's stop.
    Killed,
    Signal,
    CoreDump,
    ExitCode,
    OutOfMemory,
    Timeout,
    Other,
}

/// The verdict on the previous run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreviousRun {
    pub reason: EndReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<CrashKind>,
    /// A sentence for people: the panic message, the signal, why it is unknown.
    pub detail: String,
    /// When the previous run started and was last known alive (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_alive_ms: Option<i64>,
}

/// Decides how the previous run ended from what was found of it and this boot's id (empty when
/// it cannot be read). See the module documentation for the table.
#[must_use]
pub fn decide(found: &Found, boot_id: &str) -> PreviousRun {
    let record = match found {
        Found::Nothing => {
            return PreviousRun {
                reason: EndReason::FirstRun,
                kind: None,
                detail: "no earlier run recorded its state".into(),
                since_ms: None,
                last_alive_ms: None,
            };
        }
        Found::Unreadable(why) => {
            return PreviousRun {
                reason: EndReason::Unknown,
                kind: None,
                detail: cut(why),
                since_ms: None,
                last_alive_ms: None,
            };
        }
        Found::Record(record) => record,
    };
    let verdict = |reason, kind, detail: String| PreviousRun {
        reason,
        kind,
        detail: cut(&detail),
        since_ms: Some(record.since_ms),
        last_alive_ms: Some(record.heartbeat_ms),
    };
    let exit = record.exit.as_ref();
    let systemd_said = exit.map(|e| {
        let status = e.exit_status.as_deref().unwrap_or("?");
        format!("systemd: {} ({status})", e.service_result)
    });
    if exit.is_some_and(|e| e.service_result == "watchdog") {
        return verdict(
            EndReason::Watchdog,
            None,
            "systemd's watchdog killed it: the daemon stopped answering".into(),
        );
    }
    let message = record.message.as_deref().unwrap_or("no message recorded");
    match record.state {
        RunPhase::Stopped => verdict(EndReason::Clean, None, "stopped cleanly".into()),
        RunPhase::Panicked => verdict(
            EndReason::Crash,
            Some(CrashKind::Panic),
            format!("panic: {message}"),
        ),
        RunPhase::Failed => verdict(
            EndReason::Crash,
            Some(CrashKind::Error),
            format!("exited with an error: {message}"),
        ),
        RunPhase::Running => match exit {
            Some(e) => {
                let said = systemd_said.unwrap_or_default();
                let kind = match e.service_result.as_str() {
                    "success" => {
                        return verdict(
                            EndReason::Clean,
                            None,
                            format!("exited normally without marking its stop; {said}"),
                        );
                    }
                    "exit-code" => CrashKind::ExitCode,
                    "signal" => CrashKind::Signal,
                    "core-dump" => CrashKind::CoreDump,
                    "oom-kill" => CrashKind::OutOfMemory,
                    "timeout" => CrashKind::Timeout,
                    _ => CrashKind::Other,
                };
                verdict(EndReason::Crash, Some(kind), said)
            }
            None if record.boot_id.is_empty() || boot_id.is_empty() => verdict(
                EndReason::Unknown,
                None,
                "it did not stop cleanly, and without the kernel's boot id a power cut cannot be \
                 told from a kill"
                    .into(),
            ),
            None if record.boot_id == boot_id => verdict(
                EndReason::Crash,
                Some(CrashKind::Killed),
                "killed without a chance to record it (SIGKILL outside systemd's stop), on this boot"
                    .into(),
            ),
            None => verdict(
                EndReason::PowerLoss,
                None,
                "the machine rebooted while it ran, with no clean stop: power loss, or a kernel \
                 crash or hard reset"
                    .into(),
            ),
        },
    }
}

/// At most [`MAX_DETAIL_CHARS`] characters, control characters replaced.
#[must_use]
pub fn cut(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_DETAIL_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_DETAIL_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = "2f8c0f4e-1111-4a4a-9b9b-000000000001";
    const OTHER_BOOT: &str = "2f8c0f4e-2222-4a4a-9b9b-000000000002";

    fn record(state: RunPhase, boot: &str, exit: Option<&str>) -> RunState {
        RunState {
            message: match state {
                RunPhase::Panicked => Some("index out of bounds".into()),
                RunPhase::Failed => Some("cannot open store".into()),
                _ => None,
            },
            exit: exit.map(|result| ExitRecord {
                service_result: result.into(),
                exit_code: Some("killed".into()),
                exit_status: Some("ABRT".into()),
                at_ms: 2_000,
            }),
            state,
            ..RunState::running(1_000, 42, boot)
        }
    }

    fn reason(state: RunPhase, boot: &str, exit: Option<&str>, now_boot: &str) -> PreviousRun {
        decide(&Found::Record(record(state, boot, exit)), now_boot)
    }

    const PHASES: [RunPhase; 4] = [
        RunPhase::Running,
        RunPhase::Stopped,
        RunPhase::Panicked,
        RunPhase::Failed,
    ];
    const RESULTS: [Option<&str>; 11] = [
        None,
        Some("success"),
        Some("exit-code"),
        Some("signal"),
        Some("core-dump"),
        Some("watchdog"),
        Some("timeout"),
        Some("oom-kill"),
        Some("start-limit-hit"),
        Some("resources"),
        Some("something-new"),
    ];

    /// The table in the module documentation, written out as the expected verdict of every
    /// combination of marker, exit record and boot id (same, other, unknown on either side).
    fn expected(
        phase: RunPhase,
        result: Option<&str>,
        boot: &str,
        now: &str,
    ) -> (EndReason, Option<CrashKind>) {
        use CrashKind as K;
        use EndReason as R;
        if result == Some("watchdog") {
            return (R::Watchdog, None);
        }
        match phase {
            RunPhase::Stopped => (R::Clean, None),
            RunPhase::Panicked => (R::Crash, Some(K::Panic)),
            RunPhase::Failed => (R::Crash, Some(K::Error)),
            RunPhase::Running => match result {
                Some("success") => (R::Clean, None),
                Some("exit-code") => (R::Crash, Some(K::ExitCode)),
                Some("signal") => (R::Crash, Some(K::Signal)),
                Some("core-dump") => (R::Crash, Some(K::CoreDump)),
                Some("oom-kill") => (R::Crash, Some(K::OutOfMemory)),
                Some("timeout") => (R::Crash, Some(K::Timeout)),
                Some(_) => (R::Crash, Some(K::Other)),
                None if boot.is_empty() || now.is_empty() => (R::Unknown, None),
                None if boot == now => (R::Crash, Some(K::Killed)),
                None => (R::PowerLoss, None),
            },
        }
    }

    #[test]
    fn every_combination_of_marker_exit_record_and_boot_id_gets_the_documented_verdict() {
        let boots = [
            (BOOT, BOOT),
            (BOOT, OTHER_BOOT),
            ("", BOOT),
            (BOOT, ""),
            ("", ""),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for phase in PHASES {
            for result in RESULTS {
                for (then, now) in boots {
                    let verdict = reason(phase, then, result, now);
                    let want = expected(phase, result, then, now);
                    assert_eq!(
                        (verdict.reason, verdict.kind),
                        want,
                        "{phase:?}, exit {result:?}, boot {then:?} then, {now:?} now: {}",
                        verdict.detail
                    );
                    assert_eq!(verdict.since_ms, Some(1_000));
                    assert_eq!(verdict.last_alive_ms, Some(1_000));
                    assert!(!verdict.detail.is_empty());
                    seen.insert(verdict.reason.as_str());
                }
            }
        }
        // Every reason a record can lead to was reached.
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["clean", "crash", "power_loss", "unknown", "watchdog"]
        );
    }

    #[test]
    fn a_run_left_running_on_another_boot_without_an_exit_record_is_a_power_loss() {
        let verdict = reason(RunPhase::Running, OTHER_BOOT, None, BOOT);
        assert_eq!(verdict.reason, EndReason::PowerLoss);
        assert!(
            verdict.detail.contains("kernel crash"),
            "{}",
            verdict.detail
        );
    }

    #[test]
    fn a_run_left_running_on_this_boot_without_an_exit_record_was_killed() {
        let verdict = reason(RunPhase::Running, BOOT, None, BOOT);
        assert_eq!(
            (verdict.reason, verdict.kind),
            (EndReason::Crash, Some(CrashKind::Killed))
        );
    }

    #[test]
    fn a_watchdog_kill_is_told_from_a_panic_and_from_a_plain_sigabrt() {
        // The watchdog's SIGABRT: systemd says so.
        assert_eq!(
            reason(RunPhase::Running, BOOT, Some("watchdog"), BOOT).reason,
            EndReason::Watchdog
        );
        // A SIGABRT from anyone else is a signal crash.
        assert_eq!(
            reason(RunPhase::Running, BOOT, Some("signal"), BOOT).kind,
            Some(CrashKind::Signal)
        );
        // A panic (abort) keeps its message.
        let panic = reason(RunPhase::Panicked, BOOT, Some("core-dump"), BOOT);
        assert_eq!(panic.kind, Some(CrashKind::Panic));
        assert!(
            panic.detail.contains("index out of bounds"),
            "{}",
            panic.detail
        );
    }

    #[test]
    fn no_file_is_a_first_run_and_an_unreadable_one_is_unknown_with_why() {
        assert_eq!(decide(&Found::Nothing, BOOT).reason, EndReason::FirstRun);
        let unknown = decide(&Found::Unreadable("truncated".into()), BOOT);
        assert_eq!(unknown.reason, EndReason::Unknown);
        assert_eq!(unknown.detail, "truncated");
    }

    #[test]
    fn the_file_round_trips_and_bad_bytes_say_what_is_wrong() {
        let mut state = record(RunPhase::Panicked, BOOT, Some("core-dump"));
        state.heartbeat_ms = 5_000;
        assert_eq!(RunState::parse(&state.to_bytes()).unwrap(), state);
        assert_eq!(RunState::parse(b""), Err(RunStateError::Empty));
        assert_eq!(RunState::parse(b" \n"), Err(RunStateError::Empty));
        let bytes = state.to_bytes();
        for cut_at in [1, bytes.len() / 2, bytes.len() - 3] {
            assert!(
                matches!(
                    RunState::parse(&bytes[..cut_at]),
                    Err(RunStateError::Malformed(_))
                ),
                "truncated at {cut_at}"
            );
        }
        assert!(matches!(
            RunState::parse(b"\x00\xff\xfe garbage"),
            Err(RunStateError::Malformed(_))
        ));
        assert!(matches!(
            RunState::parse(
                br#"{"v":1,"state":"sleeping","since_ms":1,"pid":1,"boot_id":"","heartbeat_ms":1}"#
            ),
            Err(RunStateError::Malformed(_))
        ));
        let future = String::from_utf8(bytes)
            .unwrap()
            .replace("\"v\":1", "\"v\":9");
        assert_eq!(
            RunState::parse(future.as_bytes()),
            Err(RunStateError::Version(9))
        );
    }

    #[test]
    fn text_from_the_file_is_bounded_and_has_no_control_characters() {
        let mut state = record(RunPhase::Panicked, BOOT, None);
        state.message = Some(format!(
            "line one\nline two\u{1b}[31m{}",
            "x".repeat(10_000)
        ));
        let verdict = decide(&Found::Record(state), BOOT);
        assert!(verdict.detail.chars().count() <= MAX_DETAIL_CHARS + 1);
        assert!(!verdict.detail.chars().any(char::is_control));
        assert!(verdict.detail.ends_with('…'));
    }
}
