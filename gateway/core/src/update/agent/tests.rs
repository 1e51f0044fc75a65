use super::*;

const CONFIG: AgentConfig = AgentConfig {
    deadline: Duration::from_secs(60),
    settle: Duration::from_secs(5),
    probe_interval: Duration::from_secs(1),
};

/// The virtual clock's t=0.
const T0: Millis = Millis::from_secs(1000);

fn plan() -> Plan {
    Plan {
        file: "outpost_0.2.0-1_arm64.deb".into(),
        artifact: "/var/lib/outpost-update/work/outpost_0.2.0-1_arm64.deb".into(),
        from_version: "0.1.0-1".into(),
        to_version: "0.2.0-1".into(),
        previous: "/var/lib/outpost-update/current/outpost_0.1.0-1_arm64.deb".into(),
    }
}

fn probe(state: &str, invocation: &str, api: Result<&str, &str>) -> Probe {
    Probe {
        active_state: state.into(),
        invocation: invocation.into(),
        api: api.map(str::to_owned).map_err(str::to_owned),
    }
}

/// The new version, up and answering, in its own invocation.
fn new_healthy(_t: u64) -> Probe {
    probe("active", "new", Ok("0.2.0"))
}

/// A version that never sends READY=1: systemd keeps it `activating`, the API is not up.
fn never_ready(_t: u64) -> Probe {
    probe("activating", "new", Err("connection refused"))
}

/// The previous version back, in a third invocation.
fn previous_healthy(_t: u64) -> Probe {
    probe("active", "back", Ok("0.1.0"))
}

fn installed(version: &str) -> InstallExit {
    InstallExit {
        result: Ok(()),
        installed_version: Some(version.into()),
    }
}

/// An agent on a virtual clock.
struct Run {
    agent: Agent,
    now: Millis,
}

impl Run {
    fn new() -> Run {
        Run {
            agent: Agent::new(CONFIG, 1_700_000_000_000),
            now: T0,
        }
    }

    fn at(&mut self, secs: u64) -> Millis {
        self.now = T0 + Duration::from_secs(secs);
        self.now
    }

    fn secs(&self) -> u64 {
        self.now.saturating_since(T0) / 1000
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.agent.poll_action()).collect()
    }

    /// Verified at t=0 with the old service (invocation "old") running: dpkg is asked to run.
    fn verified_and_installing(&mut self) {
        let now = self.at(0);
        self.agent.handle_verified(now, Ok(plan()));
        assert_eq!(self.agent.phase(), Phase::Verified);
        assert_eq!(self.actions(), [Action::Probe]);
        self.agent
            .handle_probe(now, probe("active", "old", Ok("0.1.0")));
        let actions = self.actions();
        assert!(
            matches!(&actions[..], [Action::Persist(p), Action::Install { artifact }]
                if p.rolling_back.is_none() && *artifact == plan().artifact),
            "{actions:?}"
        );
        assert_eq!(self.agent.phase(), Phase::Installing);
        // The deadline is armed while dpkg runs.
        assert_eq!(
            self.agent.poll_timeout(),
            Some(T0 + Duration::from_secs(60))
        );
    }

    fn dpkg_exit(&mut self, secs: u64, exit: InstallExit) {
        let now = self.at(secs);
        self.agent.handle_install_exit(now, exit);
    }

    /// Answers the agent's probes with `f(t)`, advancing the clock to each timeout, until it
    /// asks for something else: returns that.
    fn probe_loop(&mut self, f: impl Fn(u64) -> Probe) -> Vec<Action> {
        let mut actions = self.actions();
        while actions == [Action::Probe] {
            let t = self.secs();
            self.agent.handle_probe(self.now, f(t));
            actions = self.actions();
            if actions.is_empty() {
                let at = self
                    .agent
                    .poll_timeout()
                    .expect("the agent waits for nothing");
                self.now = at;
                self.agent.handle_timeout(at);
                actions = self.actions();
            }
        }
        actions
    }

    /// From the start of a rollback: the release, the marker, the look at the service, then
    /// the reinstall of the previous package.
    fn rollback_reinstalls(&mut self, actions: &[Action], reason: &str) {
        assert!(
            matches!(actions, [Action::ReleaseService, Action::Persist(p), Action::Probe]
                if p.rolling_back.as_deref().is_some_and(|r| r.contains(reason))),
            "{actions:?}"
        );
        assert_eq!(self.agent.phase(), Phase::RollingBack);
        let failed_invocation = "new";
        self.agent.handle_probe(
            self.now,
            probe("failed", failed_invocation, Err("connection refused")),
        );
        assert_eq!(
            self.actions(),
            [Action::Reinstall {
                artifact: plan().previous
            }]
        );
    }

    fn report(actions: &[Action]) -> &UpdateReport {
        match actions.last() {
            Some(Action::Report(report)) => report,
            other => panic!("no report last: {other:?} in {actions:?}"),
        }
    }
}

#[test]
fn a_new_version_healthy_for_the_settle_time_is_confirmed_and_kept() {
    let mut run = Run::new();
    run.verified_and_installing();
    run.dpkg_exit(3, installed("0.2.0-1"));
    assert_eq!(run.agent.phase(), Phase::AwaitingHealth);
    // Starting for two seconds, then up.
    let actions = run.probe_loop(|t| {
        if t < 5 {
            never_ready(t)
        } else {
            new_healthy(t)
        }
    });
    // Healthy from t=5, confirmed at t=10 (5 s settle).
    assert_eq!(run.secs(), 10);
    assert_eq!(
        actions[0],
        Action::Keep {
            artifact: plan().artifact
        }
    );
    let report = Run::report(&actions);
    assert_eq!(report.outcome, Outcome::Confirmed);
    assert_eq!(report.installed_version.as_deref(), Some("0.2.0-1"));
    assert_eq!(report.reason, None);
    assert_eq!(report.finished_at_unix_ms, 1_700_000_010_000);
    assert_eq!(run.agent.phase(), Phase::Confirmed);
    assert_eq!(run.agent.poll_timeout(), None);
}

#[test]
fn a_new_version_that_never_becomes_ready_is_rolled_back() {
    let mut run = Run::new();
    run.verified_and_installing();
    // dpkg gave up waiting on its own (the unit's start timeout is shorter than the deadline).
    run.dpkg_exit(20, installed("0.2.0-1"));
    let actions = run.probe_loop(never_ready);
    // Probed until the deadline, 60 s after dpkg started, and not one probe longer.
    assert_eq!(run.secs(), 60);
    run.rollback_reinstalls(&actions, "not ready and healthy within 60 s");
    run.dpkg_exit(64, installed("0.1.0-1"));
    let actions = run.probe_loop(previous_healthy);
    let report = Run::report(&actions);
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(
        report.reason.as_deref(),
        Some("not ready and healthy within 60 s (service activating, API: connection refused)")
    );
    assert_eq!(report.rollback_reason, None);
    assert_eq!(report.installed_version.as_deref(), Some("0.1.0-1"));
    assert_eq!(run.agent.phase(), Phase::RolledBack);
    // No Keep: the rollback artifact stays the previous package.
    assert!(!actions.iter().any(|a| matches!(a, Action::Keep { .. })));
}

#[test]
fn the_deadline_passing_while_dpkg_waits_for_the_service_holds_it_then_rolls_back() {
    let mut run = Run::new();
    run.verified_and_installing();
    // dpkg still runs at the deadline (postinst waits for READY=1).
    let deadline = run.agent.poll_timeout().unwrap();
    run.now = deadline;
    run.agent.handle_timeout(deadline);
    assert_eq!(run.actions(), [Action::HoldService]);
    assert_eq!(run.agent.poll_timeout(), None, "now waiting for dpkg alone");
    // The held service's start gives up, dpkg returns (successfully: postinst ignores it).
    run.dpkg_exit(61, installed("0.2.0-1"));
    let actions = run.actions();
    run.rollback_reinstalls(&actions, "dpkg was still waiting for the service to start");
    run.dpkg_exit(63, installed("0.1.0-1"));
    let report = Run::report(&run.probe_loop(previous_healthy)).clone();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(
        report
            .steps
            .iter()
            .any(|s| s.after_ms == 60_000 && s.what.contains("holding the service")),
        "{:?}",
        report.steps
    );
}

#[test]
fn a_failed_dpkg_run_rolls_back() {
    let mut run = Run::new();
    run.verified_and_installing();
    run.dpkg_exit(
        2,
        InstallExit {
            result: Err("exit status 1: dependency problems".into()),
            installed_version: None,
        },
    );
    let actions = run.actions();
    run.rollback_reinstalls(&actions, "dpkg failed: exit status 1");
    run.dpkg_exit(4, installed("0.1.0-1"));
    let report = Run::report(&run.probe_loop(previous_healthy)).clone();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(
        report.reason.as_deref(),
        Some("dpkg failed: exit status 1: dependency problems")
    );
}

#[test]
fn dpkg_leaving_another_version_installed_rolls_back() {
    let mut run = Run::new();
    run.verified_and_installing();
    run.dpkg_exit(2, installed("0.1.0-1"));
    let actions = run.actions();
    run.rollback_reinstalls(&actions, "dpkg left version 0.1.0-1 installed, not 0.2.0-1");
}

#[test]
fn the_old_process_still_answering_is_not_taken_for_the_new_version() {
    // Same upstream version (a Debian revision bump), and the old invocation still running:
    // nothing proves the new files run. Never healthy, so rolled back.
    let mut run = Run::new();
    run.verified_and_installing();
    run.dpkg_exit(2, installed("0.2.0-1"));
    let actions = run.probe_loop(|_| probe("active", "old", Ok("0.2.0")));
    run.rollback_reinstalls(&actions, "not restarted since the install");
}

#[test]
fn the_api_reporting_another_version_is_not_healthy() {
    let mut run = Run::new();
    run.verified_and_installing();
    run.dpkg_exit(2, installed("0.2.0-1"));
    let actions = run.probe_loop(|_| probe("active", "new", Ok("0.1.0")));
    run.rollback_reinstalls(&actions, "API reports version 0.1.0");
}

#[test]
fn a_version_that_answers_and_then_crashes_is_not_confirmed() {
    let mut run = Run::new();
    run.verified_and_installing();
    run.dpkg_exit(2, installed("0.2.0-1"));
    // Healthy at t=2 and 3, then systemd restarts it (new invocation) at t=4: the settle time
    // had not passed, so this is a failure at once, deadline or not.
    let actions = run.probe_loop(|t| match t {
        ..4 => new_healthy(t),
        _ => probe("activating", "again", Err("connection refused")),
    });
    assert_eq!(run.secs(), 4);
    run.rollback_reinstalls(&actions, "service activating");
}

#[test]
fn a_restart_during_the_settle_time_starts_the_settle_time_again() {
    let mut run = Run::new();
    run.verified_and_installing();
    run.dpkg_exit(2, installed("0.2.0-1"));
    // Healthy in invocation "new" until t=4, then healthy in "new2" (a restart between two
    // probes): the settle time counts from t=4.
    let actions = run.probe_loop(|t| match t {
        ..4 => new_healthy(t),
        _ => probe("active", "new2", Ok("0.2.0")),
    });
    assert_eq!(run.secs(), 9);
    assert_eq!(Run::report(&actions).outcome, Outcome::Confirmed);
}

#[test]
fn a_failed_rollback_reports_both_reasons() {
    let mut run = Run::new();
    run.verified_and_installing();
    run.dpkg_exit(5, installed("0.2.0-1"));
    let actions = run.probe_loop(never_ready);
    run.rollback_reinstalls(&actions, "not ready");
    run.dpkg_exit(
        62,
        InstallExit {
            result: Err("exit status 2: disk full".into()),
            installed_version: None,
        },
    );
    let actions = run.actions();
    let report = Run::report(&actions);
    assert_eq!(report.outcome, Outcome::Failed);
    assert!(
        report.reason.as_deref().unwrap().starts_with("not ready"),
        "{report:?}"
    );
    assert_eq!(
        report.rollback_reason.as_deref(),
        Some("dpkg failed: exit status 2: disk full")
    );
    assert!(report.summary().contains("FAILED"), "{}", report.summary());
    assert_eq!(run.agent.phase(), Phase::Failed);
}

#[test]
fn a_previous_version_that_does_not_come_back_healthy_fails_the_rollback() {
    let mut run = Run::new();
    run.verified_and_installing();
    run.dpkg_exit(5, installed("0.2.0-1"));
    let actions = run.probe_loop(never_ready);
    run.rollback_reinstalls(&actions, "not ready");
    run.dpkg_exit(62, installed("0.1.0-1"));
    let actions = run.probe_loop(|_| probe("failed", "back", Err("connection refused")));
    // The rollback has its own deadline, from its own dpkg run (t=60).
    assert_eq!(run.secs(), 120);
    let report = Run::report(&actions);
    assert_eq!(report.outcome, Outcome::Failed);
    assert!(
        report
            .rollback_reason
            .as_deref()
            .unwrap()
            .contains("service failed"),
        "{report:?}"
    );
}

#[test]
fn a_refused_artifact_is_reported_and_nothing_is_installed() {
    let mut run = Run::new();
    let now = run.at(0);
    run.agent.handle_verified(
        now,
        Err(Refusal {
            file: "outpost_0.2.0-1_arm64.deb".into(),
            from_version: Some("0.1.0-1".into()),
            to_version: Some("0.2.0-1".into()),
            reason: "signed by key 0011223344556677, which is not a trusted key".into(),
        }),
    );
    let actions = run.actions();
    assert_eq!(actions.len(), 1, "{actions:?}");
    let report = Run::report(&actions);
    assert_eq!(report.outcome, Outcome::Refused);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("not a trusted key")
    );
    assert_eq!(run.agent.phase(), Phase::Refused);
    assert!(run.agent.is_done());
}

#[test]
fn events_after_the_end_change_nothing() {
    let mut run = Run::new();
    run.verified_and_installing();
    run.dpkg_exit(1, installed("0.2.0-1"));
    run.probe_loop(new_healthy);
    assert_eq!(run.agent.phase(), Phase::Confirmed);
    let now = run.at(100);
    run.agent.handle_probe(now, never_ready(100));
    run.agent.handle_install_exit(now, installed("0.1.0-1"));
    run.agent.handle_timeout(now);
    run.agent.handle_verified(now, Ok(plan()));
    assert_eq!(run.actions(), []);
    assert_eq!(run.agent.phase(), Phase::Confirmed);
}

fn pending(rolling_back: Option<&str>) -> Pending {
    let plan = plan();
    Pending {
        file: plan.file,
        artifact: plan.artifact,
        from_version: plan.from_version,
        to_version: plan.to_version,
        previous: plan.previous,
        rolling_back: rolling_back.map(str::to_owned),
        started_at_unix_ms: 1_700_000_000_000,
    }
}

#[test]
fn an_interrupted_update_with_the_new_version_in_place_gets_a_fresh_deadline() {
    let mut run = Run::new();
    run.agent = Agent::resume(CONFIG, T0, pending(None), Some("0.2.0-1".into()));
    assert_eq!(run.agent.phase(), Phase::AwaitingHealth);
    assert_eq!(run.actions(), [Action::ReleaseService, Action::Probe]);
    // After a reboot any invocation is a new one.
    let actions = {
        run.agent.handle_probe(T0, new_healthy(0));
        run.now = run.agent.poll_timeout().unwrap();
        run.agent.handle_timeout(run.now);
        run.probe_loop(new_healthy)
    };
    let report = Run::report(&actions);
    assert_eq!(report.outcome, Outcome::Confirmed);
    assert!(
        report.steps[0]
            .what
            .starts_with("resumed after an interruption")
    );
}

#[test]
fn an_interrupted_update_without_the_new_version_in_place_is_rolled_back() {
    let mut run = Run::new();
    // dpkg was cut off half way: the package is not configured.
    run.agent = Agent::resume(CONFIG, T0, pending(None), None);
    let actions = run.actions();
    run.rollback_reinstalls(&actions, "interrupted");
    run.dpkg_exit(3, installed("0.1.0-1"));
    let report = Run::report(&run.probe_loop(previous_healthy)).clone();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(report.reason.unwrap().contains("power cut or crash"));
}

#[test]
fn an_interrupted_rollback_is_done_again_with_its_recorded_reason() {
    let mut run = Run::new();
    run.agent = Agent::resume(
        CONFIG,
        T0,
        pending(Some(
            "not ready and healthy within 60 s (service activating)",
        )),
        Some("0.2.0-1".into()),
    );
    let actions = run.actions();
    run.rollback_reinstalls(&actions, "not ready and healthy within 60 s");
    run.dpkg_exit(3, installed("0.1.0-1"));
    let report = Run::report(&run.probe_loop(previous_healthy)).clone();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(
        report
            .reason
            .unwrap()
            .starts_with("not ready and healthy within 60 s (service activating)")
    );
}

#[test]
fn every_step_is_in_the_report_in_order() {
    let mut run = Run::new();
    run.verified_and_installing();
    run.dpkg_exit(20, installed("0.2.0-1"));
    let actions = run.probe_loop(never_ready);
    run.rollback_reinstalls(&actions, "not ready");
    run.dpkg_exit(64, installed("0.1.0-1"));
    let report = Run::report(&run.probe_loop(previous_healthy)).clone();
    let steps: Vec<(u64, &str)> = report
        .steps
        .iter()
        .map(|s| (s.after_ms / 1000, s.what.split(':').next().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            (0, "verified outpost_0.2.0-1_arm64.deb"),
            (0, "installing 0.2.0-1"),
            (20, "dpkg done"),
            (60, "rolling back to 0.1.0-1"),
            (60, "reinstalling 0.1.0-1"),
            (64, "dpkg done"),
            (69, "previous version healthy"),
        ]
    );
}
