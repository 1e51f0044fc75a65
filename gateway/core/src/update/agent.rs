//! The update agent's core: one self-update attempt, from a verified artifact to confirmed,
//! rolled back or failed.
//!
//! Design: [`Agent`] owns the attempt's plan, its deadlines and its verdicts, and never does IO
//! or reads a clock. The adapter (`outpost::io::update::apply`) feeds it events (`handle_*`: a probe of the
//! service, dpkg's exit, a timer) with the time, and carries out the [`Action`]s it drains with
//! [`Agent::poll_action`] (run dpkg, probe, hold or release the service, write the marker and the
//! report), sleeping until [`Agent::poll_timeout`] in between.
//!
//! ```text
//!  Idle ──handle_verified(Err)──────────────────────────────────────────────► Refused
//!   │ handle_verified(Ok)
//!   ▼
//!  Verified: Probe (the running service's invocation, to see it restart)
//!   │ handle_probe
//!   ▼
//!  Installing: Persist(update), Install(new) ───deadline passes first─► HoldService
//!   │ handle_install_exit                                  (dpkg's own restart gives up)
//!   ├── dpkg failed / other version installed / held ──┐
//!   ▼                                                  │
//!  AwaitingHealth{deadline}: Probe every probe_interval │
//!   ├── healthy, and still healthy settle later ─► Keep(new), Report ─► Confirmed
//!   └── not healthy by the deadline ───────────────────┤
//!                                                      ▼
//!  RollingBack: ReleaseService, Persist(rollback), Probe, Reinstall(previous), Probe …
//!   ├── previous installed and healthy ─► Report ─► RolledBack(reason)
//!   └── otherwise ─────────────────────► Report ─► Failed(reason, rollback reason)
//! ```
//!
//! # The health rule
//!
//! A version is healthy when, in one probe: systemd says the service is `active` (for a
//! `Type=notify` unit: it sent READY=1), its invocation differs from the one before dpkg ran
//! (it was restarted onto the new files, not merely left running), and `GET /api/v1/status`
//! answers with the version's upstream part (`0.2.0` for the package version `1:0.2.0-3`: the
//! daemon knows its crate version, not the Debian revision). It must be healthy by the deadline
//! (counted from the start of dpkg) and then stay healthy, in the same invocation, for `settle`:
//! a daemon that answers once and then crashes is not confirmed.
//!
//! # Deadline while dpkg still runs
//!
//! A package's postinst restarts the service and waits for it (a `Type=notify` start waits for
//! READY=1 up to the unit's own TimeoutStartSec), so a version that never becomes ready keeps
//! dpkg running. When the deadline passes first, the agent asks for [`Action::HoldService`]:
//! the adapter masks the service for this boot and stops it, the postinst's start gives up,
//! dpkg returns, and the rollback begins with [`Action::ReleaseService`].

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use outpost_proto::Millis;

use super::report::{Outcome, Pending, Step, UpdateReport};
use super::version::upstream;

/// The agent's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentConfig {
    /// How long a version has to become healthy, from the start of its dpkg run.
    pub deadline: Duration,
    /// How long it must then stay healthy, in the same invocation, to be confirmed.
    pub settle: Duration,
    /// The time between probes while waiting.
    pub probe_interval: Duration,
}

impl Default for AgentConfig {
    fn default() -> AgentConfig {
        AgentConfig {
            deadline: Duration::from_secs(120),
            settle: Duration::from_secs(10),
            probe_interval: Duration::from_secs(1),
        }
    }
}

/// A verified update, ready to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The artifact's file name, for the report.
    pub file: String,
    /// The verified copy of the new package.
    pub artifact: PathBuf,
    pub from_version: String,
    pub to_version: String,
    /// The installed version's package, reinstalled on failure.
    pub previous: PathBuf,
}

/// Why an artifact was not installed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub file: String,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub reason: String,
}

/// What the adapter saw of the service, at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// systemd's `ActiveState`: `active`, `activating`, `failed`, …
    pub active_state: String,
    /// systemd's `InvocationID` (new at every start); empty when there is none.
    pub invocation: String,
    /// `GET /api/v1/status`'s `version`, or why there is none.
    pub api: Result<String, String>,
}

/// How a dpkg run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallExit {
    /// `Err`: dpkg failed (exit status and the end of its output).
    pub result: Result<(), String>,
    /// The package version dpkg reports installed afterwards (`None`: not installed, or not
    /// configured).
    pub installed_version: Option<String>,
}

/// Why a version was judged failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// dpkg failed.
    Install(String),
    /// dpkg succeeded but another version (or none) ended up installed.
    NotInstalled {
        expected: String,
        found: Option<String>,
    },
    /// Not ready and healthy within the deadline; `last` is what was seen last.
    NotReady { within: Duration, last: String },
    /// The agent was interrupted (power cut, crash) before the new version was in place.
    Interrupted,
    /// A reason recorded before an interruption, read back from the marker.
    Recorded(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Install(why) => write!(f, "dpkg failed: {why}"),
            Failure::NotInstalled { expected, found } => match found {
                Some(found) => write!(f, "dpkg left version {found} installed, not {expected}"),
                None => write!(f, "dpkg left no configured outpost package, not {expected}"),
            },
            Failure::NotReady { within, last } => write!(
                f,
                "not ready and healthy within {} s ({last})",
                within.as_secs_f64()
            ),
            Failure::Interrupted => f.write_str(
                "the update was interrupted (power cut or crash) before the new version was in place",
            ),
            Failure::Recorded(why) => write!(f, "{why} (the rollback was interrupted and resumed)"),
        }
    }
}

/// What the adapter is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Look at the service: systemd's state and invocation, and the API's version.
    Probe,
    /// Record the attempt before a dpkg run, so an interrupted one is finished on restart.
    Persist(Pending),
    /// `dpkg -i` the new package (keeping the installer's conffiles).
    Install { artifact: PathBuf },
    /// The deadline passed while dpkg still runs: stop the service and keep it from being
    /// started again (until [`Action::ReleaseService`] or the next boot), so dpkg returns.
    HoldService,
    /// Undo [`Action::HoldService`] (harmless when nothing is held).
    ReleaseService,
    /// `dpkg -i` the previous package.
    Reinstall { artifact: PathBuf },
    /// The new package is confirmed: keep it as the one to roll back to next time.
    Keep { artifact: PathBuf },
    /// The attempt is over: write the report and forget the marker. The last action.
    Report(UpdateReport),
}

/// Where an attempt stands, in the terms of docs/self-update.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Idle,
    /// Verified; the running service is being looked at before dpkg runs.
    Verified,
    Installing,
    AwaitingHealth,
    RollingBack,
    Confirmed,
    RolledBack,
    Failed,
    Refused,
}

#[derive(Debug)]
enum State {
    Idle,
    Updating {
        plan: Plan,
        stage: Stage,
    },
    RollingBack {
        plan: Plan,
        failure: Failure,
        stage: Stage,
    },
    Done(Outcome),
}

#[derive(Debug)]
enum Stage {
    /// Waiting for the probe taken before dpkg runs.
    Baseline,
    Installing {
        deadline: Millis,
        baseline: Option<String>,
        held: bool,
    },
    Health(Health),
}

#[derive(Debug)]
struct Health {
    expected: String,
    /// The invocation before dpkg ran; a healthy one must differ. `None`: any will do (after
    /// a reboot every invocation is new).
    baseline: Option<String>,
    deadline: Millis,
    /// Healthy since when, in which invocation.
    healthy_since: Option<(Millis, String)>,
    next_probe: Option<Millis>,
    /// What the last probe saw, for the failure reason.
    last: String,
}

/// One self-update attempt. See the module docs.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    started_at_unix_ms: i64,
    /// The time of the first event: steps are timed from it.
    origin: Option<Millis>,
    state: State,
    actions: VecDeque<Action>,
    steps: Vec<Step>,
    file: String,
    from_version: Option<String>,
    to_version: Option<String>,
    installed_version: Option<String>,
    reason: Option<String>,
    rollback_reason: Option<String>,
}

impl Agent {
    /// An agent for one attempt that starts at the wall-clock time `started_at_unix_ms` (for
    /// the report only: every decision runs on the monotonic `now` given to each event).
    #[must_use]
    pub fn new(config: AgentConfig, started_at_unix_ms: i64) -> Agent {
        Agent {
            config,
            started_at_unix_ms,
            origin: None,
            state: State::Idle,
            actions: VecDeque::new(),
            steps: Vec::new(),
            file: String::new(),
            from_version: None,
            to_version: None,
            installed_version: None,
            reason: None,
            rollback_reason: None,
        }
    }

    /// An agent that finishes an attempt cut short (the marker was found at start): the new
    /// version is given a fresh deadline if dpkg left it installed, otherwise the previous one
    /// is reinstalled; a rollback in progress is done again.
    #[must_use]
    pub fn resume(
        config: AgentConfig,
        now: Millis,
        pending: Pending,
        installed: Option<String>,
    ) -> Agent {
        let mut agent = Agent::new(config, pending.started_at_unix_ms);
        agent.origin = Some(now);
        agent.file.clone_from(&pending.file);
        agent.from_version = Some(pending.from_version.clone());
        agent.to_version = Some(pending.to_version.clone());
        agent.installed_version.clone_from(&installed);
        agent.step(
            now,
            format!(
                "resumed after an interruption; installed: {}",
                installed.as_deref().unwrap_or("none")
            ),
        );
        let plan = Plan {
            file: pending.file,
            artifact: pending.artifact,
            from_version: pending.from_version,
            to_version: pending.to_version,
            previous: pending.previous,
        };
        match pending.rolling_back {
            Some(reason) => agent.roll_back(now, plan, Failure::Recorded(reason)),
            None if installed.as_deref() == Some(plan.to_version.as_str()) => {
                // A hold does not outlive a reboot, but does outlive a crash of the agent.
                agent.actions.push_back(Action::ReleaseService);
                let expected = plan.to_version.clone();
                agent.state = State::Updating {
                    plan,
                    stage: Stage::Health(agent.health(now, expected, None)),
                };
                agent.actions.push_back(Action::Probe);
            }
            None => agent.roll_back(now, plan, Failure::Interrupted),
        }
        agent
    }

    /// The artifact was verified and a plan made (`Ok`), or it was refused (`Err`).
    pub fn handle_verified(&mut self, now: Millis, verified: Result<Plan, Refusal>) {
        if !matches!(self.state, State::Idle) {
            return;
        }
        self.origin.get_or_insert(now);
        match verified {
            Ok(plan) => {
                self.file.clone_from(&plan.file);
                self.from_version = Some(plan.from_version.clone());
                self.to_version = Some(plan.to_version.clone());
                self.step(
                    now,
                    format!(
                        "verified {}: {} -> {}",
                        plan.file, plan.from_version, plan.to_version
                    ),
                );
                self.state = State::Updating {
                    plan,
                    stage: Stage::Baseline,
                };
                self.actions.push_back(Action::Probe);
            }
            Err(refusal) => {
                self.file = refusal.file;
                self.from_version = refusal.from_version;
                self.to_version = refusal.to_version;
                self.step(now, format!("refused: {}", refusal.reason));
                self.reason = Some(refusal.reason);
                self.finish(now, Outcome::Refused);
            }
        }
    }

    /// A probe the agent asked for.
    pub fn handle_probe(&mut self, now: Millis, probe: Probe) {
        let config = self.config;
        let (plan, stage, rolling_back) = match &mut self.state {
            State::Updating { plan, stage } => (plan, stage, false),
            State::RollingBack { plan, stage, .. } => (plan, stage, true),
            State::Idle | State::Done(_) => return,
        };
        match stage {
            Stage::Baseline => {
                let artifact = if rolling_back {
                    plan.previous.clone()
                } else {
                    plan.artifact.clone()
                };
                *stage = Stage::Installing {
                    deadline: now + config.deadline,
                    baseline: Some(probe.invocation),
                    held: false,
                };
                let what = if rolling_back {
                    self.actions.push_back(Action::Reinstall { artifact });
                    format!("reinstalling {}", plan.from_version)
                } else {
                    // The marker goes down before dpkg touches anything.
                    self.actions.push_back(Action::Persist(Pending {
                        file: plan.file.clone(),
                        artifact: plan.artifact.clone(),
                        from_version: plan.from_version.clone(),
                        to_version: plan.to_version.clone(),
                        previous: plan.previous.clone(),
                        rolling_back: None,
                        started_at_unix_ms: self.started_at_unix_ms,
                    }));
                    self.actions.push_back(Action::Install { artifact });
                    format!("installing {}", plan.to_version)
                };
                self.step(now, what);
            }
            Stage::Installing { .. } => {}
            Stage::Health(health) => {
                health.next_probe = None;
                let (verdict, seen) = judge(&probe, &health.expected, health.baseline.as_deref());
                health.last = seen;
                match verdict {
                    Ok(()) => {
                        let since = match &health.healthy_since {
                            Some((since, invocation)) if *invocation == probe.invocation => *since,
                            _ => {
                                health.healthy_since = Some((now, probe.invocation));
                                now
                            }
                        };
                        if now.saturating_since(since) >= millis(config.settle) {
                            let done = if rolling_back {
                                "previous version healthy"
                            } else {
                                "new version healthy: confirmed"
                            };
                            let artifact = plan.artifact.clone();
                            self.step(now, done.to_owned());
                            if rolling_back {
                                self.finish(now, Outcome::RolledBack);
                            } else {
                                self.actions.push_back(Action::Keep { artifact });
                                self.finish(now, Outcome::Confirmed);
                            }
                            return;
                        }
                        health.next_probe = Some(now + config.probe_interval);
                    }
                    Err(()) if health.healthy_since.is_some() || now >= health.deadline => {
                        // Unhealthy after having been healthy (a crash, a restart), or still
                        // unhealthy at the deadline.
                        let failure = Failure::NotReady {
                            within: config.deadline,
                            last: health.last.clone(),
                        };
                        self.fail(now, failure);
                    }
                    Err(()) => {
                        let next = (now + config.probe_interval).min(health.deadline);
                        health.next_probe = Some(next);
                    }
                }
            }
        }
    }

    /// A dpkg run the agent asked for has ended.
    pub fn handle_install_exit(&mut self, now: Millis, exit: InstallExit) {
        let config = self.config;
        self.installed_version.clone_from(&exit.installed_version);
        let (plan, stage, rolling_back) = match &mut self.state {
            State::Updating { plan, stage } => (plan, stage, false),
            State::RollingBack { plan, stage, .. } => (plan, stage, true),
            State::Idle | State::Done(_) => return,
        };
        let Stage::Installing {
            deadline,
            baseline,
            held,
        } = stage
        else {
            return;
        };
        let expected = if rolling_back {
            plan.from_version.clone()
        } else {
            plan.to_version.clone()
        };
        let failure = if *held {
            Some(Failure::NotReady {
                within: config.deadline,
                last: "dpkg was still waiting for the service to start".into(),
            })
        } else if let Err(why) = exit.result {
            Some(Failure::Install(why))
        } else if exit.installed_version.as_deref() != Some(expected.as_str()) {
            Some(Failure::NotInstalled {
                expected: expected.clone(),
                found: exit.installed_version.clone(),
            })
        } else {
            None
        };
        if let Some(failure) = failure {
            self.step(now, format!("dpkg done: {failure}"));
            self.fail(now, failure);
            return;
        }
        let health = Health {
            expected: expected.clone(),
            baseline: baseline.take(),
            deadline: *deadline,
            healthy_since: None,
            next_probe: None,
            last: "not probed yet".into(),
        };
        *stage = Stage::Health(health);
        self.actions.push_back(Action::Probe);
        self.step(
            now,
            format!("dpkg done: {expected} installed; waiting for it to be healthy"),
        );
    }

    /// The time [`Agent::poll_timeout`] named has come.
    pub fn handle_timeout(&mut self, now: Millis) {
        let mut held = false;
        match &mut self.state {
            State::Updating { stage, .. } | State::RollingBack { stage, .. } => match stage {
                Stage::Installing {
                    deadline,
                    held: held_now,
                    ..
                } if !*held_now && now >= *deadline => {
                    *held_now = true;
                    held = true;
                    self.actions.push_back(Action::HoldService);
                }
                Stage::Health(health) if health.next_probe.is_some_and(|at| now >= at) => {
                    health.next_probe = None;
                    self.actions.push_back(Action::Probe);
                }
                _ => {}
            },
            State::Idle | State::Done(_) => {}
        }
        if held {
            self.step(
                now,
                "deadline passed with dpkg still running: holding the service".into(),
            );
        }
    }

    /// The next thing to do, if any. Drain after every event.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Agent::handle_timeout`] is due next (`None`: waiting for an event, or done).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        match &self.state {
            State::Updating { stage, .. } | State::RollingBack { stage, .. } => match stage {
                Stage::Installing {
                    deadline,
                    held: false,
                    ..
                } => Some(*deadline),
                Stage::Health(health) => health.next_probe,
                _ => None,
            },
            State::Idle | State::Done(_) => None,
        }
    }

    #[must_use]
    pub fn phase(&self) -> Phase {
        match &self.state {
            State::Idle => Phase::Idle,
            State::Updating { stage, .. } => match stage {
                Stage::Baseline => Phase::Verified,
                Stage::Installing { .. } => Phase::Installing,
                Stage::Health(_) => Phase::AwaitingHealth,
            },
            State::RollingBack { .. } => Phase::RollingBack,
            State::Done(Outcome::Confirmed) => Phase::Confirmed,
            State::Done(Outcome::RolledBack) => Phase::RolledBack,
            State::Done(Outcome::Failed) => Phase::Failed,
            State::Done(Outcome::Refused) => Phase::Refused,
        }
    }

    #[must_use]
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// Why the current version failed, while rolling back (what the marker records).
    #[must_use]
    pub fn failure(&self) -> Option<&Failure> {
        match &self.state {
            State::RollingBack { failure, .. } => Some(failure),
            _ => None,
        }
    }

    fn health(&self, now: Millis, expected: String, baseline: Option<String>) -> Health {
        Health {
            expected,
            baseline,
            deadline: now + self.config.deadline,
            healthy_since: None,
            next_probe: None,
            last: "not probed yet".into(),
        }
    }

    /// The version in place failed: roll back, or, if that was the rollback, give up.
    fn fail(&mut self, now: Millis, failure: Failure) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Updating { plan, .. } => self.roll_back(now, plan, failure),
            State::RollingBack { failure: first, .. } => {
                self.step(now, format!("rollback failed: {failure}"));
                self.reason = Some(first.to_string());
                self.rollback_reason = Some(failure.to_string());
                self.finish(now, Outcome::Failed);
            }
            other => self.state = other,
        }
    }

    fn roll_back(&mut self, now: Millis, plan: Plan, failure: Failure) {
        self.step(
            now,
            format!("rolling back to {}: {failure}", plan.from_version),
        );
        self.reason = Some(failure.to_string());
        self.actions.push_back(Action::ReleaseService);
        self.actions.push_back(Action::Persist(Pending {
            file: plan.file.clone(),
            artifact: plan.artifact.clone(),
            from_version: plan.from_version.clone(),
            to_version: plan.to_version.clone(),
            previous: plan.previous.clone(),
            rolling_back: Some(failure.to_string()),
            started_at_unix_ms: self.started_at_unix_ms,
        }));
        self.actions.push_back(Action::Probe);
        self.state = State::RollingBack {
            plan,
            failure,
            stage: Stage::Baseline,
        };
    }

    fn finish(&mut self, now: Millis, outcome: Outcome) {
        let elapsed = self.elapsed(now);
        self.state = State::Done(outcome);
        self.actions.push_back(Action::Report(UpdateReport {
            outcome,
            file: self.file.clone(),
            from_version: self.from_version.clone(),
            to_version: self.to_version.clone(),
            installed_version: self.installed_version.clone(),
            reason: self.reason.clone(),
            rollback_reason: self.rollback_reason.clone(),
            started_at_unix_ms: self.started_at_unix_ms,
            finished_at_unix_ms: self
                .started_at_unix_ms
                .saturating_add(i64::try_from(elapsed).unwrap_or(i64::MAX)),
            deadline_ms: millis(self.config.deadline),
            steps: self.steps.clone(),
        }));
    }

    fn elapsed(&mut self, now: Millis) -> u64 {
        now.saturating_since(*self.origin.get_or_insert(now))
    }

    fn step(&mut self, now: Millis, what: String) {
        let after_ms = self.elapsed(now);
        self.steps.push(Step { after_ms, what });
    }
}

/// The health rule (module docs): `Ok` when healthy, and in every case what was seen.
fn judge(probe: &Probe, expected: &str, baseline: Option<&str>) -> (Result<(), ()>, String) {
    let want = upstream(expected);
    let api = match &probe.api {
        Ok(version) => format!("API reports version {version}"),
        Err(why) => format!("API: {why}"),
    };
    let restarted = baseline.is_none_or(|b| b != probe.invocation);
    let seen = format!(
        "service {}{}, {api}",
        probe.active_state,
        if restarted {
            ""
        } else {
            " (not restarted since the install)"
        }
    );
    let healthy = probe.active_state == "active"
        && restarted
        && probe.api.as_deref().is_ok_and(|v| v == want);
    (if healthy { Ok(()) } else { Err(()) }, seen)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
