use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

const OLD: FwVersion = FwVersion {
    major: 1,
    minor: 2,
    patch: 0,
};
const NEW: FwVersion = FwVersion {
    major: 1,
    minor: 3,
    patch: 0,
};
const NEW_IMAGE: Artifact = Artifact {
    sha256: [0x13; 32],
    version: NEW,
};
const OLD_IMAGE: Artifact = Artifact {
    sha256: [0x12; 32],
    version: OLD,
};

/// The virtual clock's start.
const T0: Millis = Millis::from_secs(1000);

fn uid(n: u8) -> [u8; 8] {
    [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, n]
}

/// Node `n` on `port`, online, on the old version, with the old image to roll back to.
fn node(n: u8, port: &str) -> TargetNode {
    TargetNode {
        uid: uid(n),
        port: port.into(),
        version: OLD,
        online: true,
        boot_id: Some(100 + u32::from(n)),
        rollback: Some(OLD_IMAGE),
    }
}

fn nodes(count: u8, ports: &[&str]) -> Vec<TargetNode> {
    (1..=count)
        .map(|n| node(n, ports[usize::from(n) % ports.len()]))
        .collect()
}

fn staged(canary: usize, waves: &str) -> Settings {
    Settings {
        mode: Mode::Staged {
            canary,
            waves: Waves::parse(waves).unwrap(),
        },
        ..Settings::default()
    }
}

fn plan(nodes: Vec<TargetNode>, settings: Settings) -> Plan {
    Plan {
        id: 7,
        artifact: NEW_IMAGE,
        nodes,
        settings,
        started_by: "cli".into(),
    }
}

/// What the adapter's SQLite tables would hold: every row written, upserted.
#[derive(Debug, Default, Clone)]
struct Store {
    rollout: Option<RolloutRow>,
    nodes: BTreeMap<[u8; 8], NodeRow>,
}

impl Store {
    fn apply(&mut self, action: &Action) {
        match action {
            Action::Persist(Row::Rollout(row)) => self.rollout = Some(row.clone()),
            Action::Persist(Row::Node(row)) => {
                self.nodes.insert(row.uid, row.clone());
            }
            _ => {}
        }
    }

    fn rows(&self) -> Rows {
        Rows {
            rollout: self.rollout.clone().expect("the rollout's row was written"),
            nodes: self.nodes.values().cloned().collect(),
        }
    }
}

/// A rollout on a virtual clock, with its store and every action it asked for.
struct Run {
    rollout: Rollout,
    now: Millis,
    store: Store,
    log: Vec<Action>,
}

impl Run {
    fn start(plan: Plan) -> Run {
        let mut run = Run {
            rollout: Rollout::new(plan, T0).unwrap(),
            now: T0,
            store: Store::default(),
            log: Vec::new(),
        };
        run.drain();
        run
    }

    fn drain(&mut self) -> Vec<Action> {
        let actions: Vec<Action> = std::iter::from_fn(|| self.rollout.poll_action()).collect();
        for action in &actions {
            self.store.apply(action);
        }
        self.log.extend(actions.iter().cloned());
        actions
    }

    fn wait(&mut self, d: Duration) {
        self.now = self.now + d;
    }

    fn transferred(&mut self, n: u8) -> Vec<Action> {
        self.rollout
            .handle_transfer(self.now, uid(n), NEW_IMAGE.sha256, TransferEvent::Finished);
        self.drain()
    }

    fn report(&mut self, n: u8, report: NodeReport) -> Vec<Action> {
        self.rollout.handle_node_report(self.now, uid(n), report);
        self.drain()
    }

    /// Trial, then confirmed on the new version.
    fn confirm(&mut self, n: u8) -> Vec<Action> {
        let mut actions = self.report(n, NodeReport::Trial);
        actions.extend(self.report(n, NodeReport::Confirmed { version: NEW }));
        actions
    }

    fn reset(&mut self, n: u8, boot_id: u32) -> Vec<Action> {
        self.reset_for(n, boot_id, ResetReason::Watchdog)
    }

    fn reset_for(&mut self, n: u8, boot_id: u32, reset_reason: ResetReason) -> Vec<Action> {
        let boot = Boot {
            boot_id,
            reset_reason,
            install: false,
        };
        self.rollout.handle_boot(self.now, uid(n), boot);
        self.drain()
    }

    fn online(&mut self, n: u8, online: bool) -> Vec<Action> {
        self.rollout.handle_online(self.now, uid(n), online);
        self.drain()
    }

    fn halt(&mut self, rollback: bool) -> Vec<Action> {
        self.rollout.handle_halt(self.now, rollback);
        self.drain()
    }

    /// Moves the clock to the next deadline and lets it pass.
    fn next_timeout(&mut self) -> Vec<Action> {
        let at = self.rollout.poll_timeout().expect("a deadline");
        self.now = self.now.max(at);
        self.rollout.handle_timeout(self.now);
        self.drain()
    }

    /// Good nodes: every transfer of the stage finishes and each node confirms, until the
    /// stage's soak begins.
    fn pass_stage(&mut self) {
        loop {
            let transferring: Vec<u8> = (1..=u8::MAX)
                .take_while(|&n| self.rollout.phase_of(uid(n)).is_some())
                .filter(|&n| self.phase(n) == NodePhase::Transferring)
                .collect();
            if transferring.is_empty() {
                break;
            }
            for n in transferring {
                self.wait(Duration::from_secs(5));
                self.transferred(n);
                self.wait(Duration::from_secs(20));
                self.confirm(n);
            }
        }
        assert_eq!(self.rollout.state(), RolloutState::Soaking);
    }

    fn phase(&self, n: u8) -> NodePhase {
        self.rollout.phase_of(uid(n)).unwrap()
    }

    fn status(&self) -> RolloutStatus {
        self.rollout.status(self.now)
    }

    /// The gateway restarts `after` later: the rollout comes back from its rows.
    fn restart(&mut self, after: Duration) -> Vec<Action> {
        self.wait(after);
        self.rollout = Rollout::restore(self.store.rows(), self.now).unwrap();
        self.drain()
    }
}

fn started(actions: &[Action]) -> Vec<[u8; 8]> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StartTransfer { uid, artifact } => {
                assert_eq!(*artifact, NEW_IMAGE);
                Some(*uid)
            }
            _ => None,
        })
        .collect()
}

fn rolled_back(actions: &[Action]) -> Vec<[u8; 8]> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RollBack { uid, artifact } => {
                assert_eq!(*artifact, OLD_IMAGE);
                Some(*uid)
            }
            _ => None,
        })
        .collect()
}

fn finalized(actions: &[Action]) -> Vec<[u8; 8]> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Finalize { uid } => Some(*uid),
            _ => None,
        })
        .collect()
}

fn events(actions: &[Action], kind: EventKind) -> Vec<Event> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) if e.kind == kind => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// Every node an action other than Persist, Event or Progress was about.
fn touched(actions: &[Action]) -> BTreeSet<[u8; 8]> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StartTransfer { uid, .. }
            | Action::Install { uid, .. }
            | Action::Abort { uid }
            | Action::Finalize { uid }
            | Action::RollBack { uid, .. } => Some(*uid),
            _ => None,
        })
        .collect()
}

// ---- waves and names ----------------------------------------------------------------------

#[test]
fn waves_parse_cumulative_percentages() {
    assert_eq!(Waves::parse("25%,100%").unwrap().shares(), &[25, 100]);
    assert_eq!(
        Waves::parse(" 10% , 50 %,100%").unwrap().shares(),
        &[10, 50, 100]
    );
    assert_eq!(Waves::parse("100%").unwrap().shares(), &[100]);
    assert_eq!(Waves::default().to_string(), "25%,100%");
    assert_eq!("5%,100%".parse::<Waves>().unwrap().to_string(), "5%,100%");
}

#[test]
fn waves_that_are_empty_not_increasing_above_100_or_short_of_it_are_refused() {
    assert_eq!(Waves::parse(""), Err(WavesError::Empty));
    assert_eq!(Waves::parse("  "), Err(WavesError::Empty));
    assert_eq!(
        Waves::parse("50%,25%,100%"),
        Err(WavesError::NotIncreasing {
            previous: 50,
            next: 25
        })
    );
    assert_eq!(
        Waves::parse("50%,50%,100%"),
        Err(WavesError::NotIncreasing {
            previous: 50,
            next: 50
        })
    );
    assert_eq!(Waves::parse("25%,150%"), Err(WavesError::Above100(150)));
    assert_eq!(Waves::parse("25%,50%"), Err(WavesError::LastBelow100(50)));
    assert_eq!(Waves::parse("0%,100%"), Err(WavesError::Zero));
    assert_eq!(
        Waves::parse("25,100%"),
        Err(WavesError::NotAShare("25".into()))
    );
    assert_eq!(
        Waves::parse("12.5%,100%"),
        Err(WavesError::NotAShare("12.5%".into()))
    );
    assert_eq!(
        Waves::parse("25%,,100%"),
        Err(WavesError::NotAShare(String::new()))
    );
    assert_eq!(
        Waves::parse("99999999999%"),
        Err(WavesError::Above100(u32::MAX))
    );
    // The messages say what to write instead.
    assert!(WavesError::LastBelow100(50).to_string().contains("100%"));
    assert!(
        WavesError::NotAShare("25".into())
            .to_string()
            .contains("25%")
    );
}

#[test]
fn phase_state_stage_and_cause_names_round_trip_through_their_rows() {
    for phase in NodePhase::ALL {
        assert_eq!(NodePhase::parse(phase.as_str()), Some(phase));
    }
    for state in RolloutState::ALL {
        assert_eq!(RolloutState::parse(state.as_str()), Some(state));
    }
    for cause in RevertCause::ALL {
        assert_eq!(RevertCause::parse(cause.as_str()), Some(cause));
    }
    for stage in [
        StageId::Canary,
        StageId::Wave(1),
        StageId::Wave(12),
        StageId::Targeted,
    ] {
        assert_eq!(StageId::parse(&stage.to_string()), Some(stage));
    }
    assert_eq!(StageId::parse("wave 01"), None);
    assert_eq!(StageId::parse("wave "), None);
}

#[test]
fn plans_that_cannot_run_are_refused() {
    let refused = |p: Plan| Rollout::new(p, T0).unwrap_err();
    assert_eq!(
        refused(plan(Vec::new(), Settings::default())),
        PlanError::NoNodes
    );
    let twice = vec![node(1, "a"), node(2, "a"), node(1, "b")];
    assert_eq!(
        refused(plan(twice, Settings::default())),
        PlanError::DuplicateNode(uid(1))
    );
    assert_eq!(
        refused(plan(nodes(3, &["a"]), staged(0, "100%"))),
        PlanError::NoCanary
    );
    let targeted = Settings {
        mode: Mode::Targeted,
        ..Settings::default()
    };
    assert_eq!(
        refused(plan(nodes(2, &["a"]), targeted)),
        PlanError::TargetedNodes(2)
    );
    let slow = Settings {
        confirm_within: Duration::from_secs(70_000),
        ..Settings::default()
    };
    assert!(matches!(
        refused(plan(nodes(2, &["a"]), slow)),
        PlanError::ConfirmWithin(_)
    ));
}

// ---- issue 15's scenarios -----------------------------------------------------------------

#[test]
fn a_good_image_goes_canary_then_waves_and_every_node_is_finalized() {
    // Twelve nodes, four on each of three ports (node n on port n % 3).
    let mut run = Run::start(plan(
        nodes(12, &["ttyUSB0", "ttyUSB1", "ttyUSB2"]),
        Settings::default(),
    ));
    assert_eq!(run.rollout.stage(), Some(StageId::Canary));
    assert_eq!(started(&run.log), vec![uid(1)], "the canary, alone");

    let actions = run.transferred(1);
    assert!(actions.contains(&Action::Install {
        uid: uid(1),
        confirm_within: DEFAULT_CONFIRM_WITHIN
    }));
    assert_eq!(
        run.rollout.poll_timeout(),
        Some(run.now + DEFAULT_CONFIRM_WITHIN + CONFIRM_GRACE)
    );
    let actions = run.confirm(1);
    assert_eq!(events(&actions, EventKind::ConfirmGatePassed).len(), 1);
    assert_eq!(run.rollout.state(), RolloutState::Soaking);
    assert_eq!(run.rollout.poll_timeout(), Some(run.now + DEFAULT_SOAK));

    // Wave 1: 25 % of 12 is 3, the canary among them: two more, on two ports at once.
    let actions = run.next_timeout();
    assert_eq!(events(&actions, EventKind::SoakPassed).len(), 1);
    assert_eq!(run.rollout.stage(), Some(StageId::Wave(1)));
    assert_eq!(started(&actions), vec![uid(2), uid(3)]);
    run.pass_stage();

    // Wave 2: the other nine, three per port, one transfer at a time on each.
    let actions = run.next_timeout();
    assert_eq!(started(&actions), vec![uid(4), uid(5), uid(6)]);
    let actions = run.transferred(4);
    assert_eq!(
        started(&actions),
        vec![uid(7)],
        "4's port is free: 7 is next on it"
    );
    run.confirm(4);
    run.pass_stage();
    assert!(
        finalized(&run.log).is_empty(),
        "nothing is final before the last soak"
    );

    let actions = run.next_timeout();
    assert_eq!(finalized(&actions), (1..=12).map(uid).collect::<Vec<_>>());
    assert_eq!(run.rollout.state(), RolloutState::Done);
    assert!(run.rollout.is_over());
    assert_eq!(run.rollout.poll_timeout(), None);
    let status = run.status();
    assert!(status.nodes.iter().all(|n| n.phase == NodePhase::Finalized));
    assert!(status.stages.iter().all(|s| s.state == StageState::Passed));
    assert_eq!(
        status.stages.iter().map(|s| s.nodes).collect::<Vec<_>>(),
        vec![1, 2, 9]
    );
    assert_eq!(finalized(&run.log).len(), 12, "each node once");
    assert_eq!(
        run.store.rollout.as_ref().unwrap().state,
        RolloutState::Done
    );
}

#[test]
fn a_canary_that_never_confirms_halts_at_the_canary_and_no_other_node_is_touched() {
    let mut run = Run::start(plan(nodes(6, &["ttyUSB0", "ttyUSB1"]), Settings::default()));
    run.transferred(1);
    run.report(1, NodeReport::Trial);
    let actions = run.report(
        1,
        NodeReport::Reverted {
            cause: RevertCause::Deadline,
        },
    );
    assert_eq!(run.rollout.state(), RolloutState::Halted);
    assert_eq!(
        run.rollout.halt_reason(),
        Some("canary 0a1b2c3d4e5f6001 reverted (never confirmed)")
    );
    assert_eq!(events(&actions, EventKind::Halted).len(), 1);
    assert_eq!(run.phase(1), NodePhase::Failed);
    for n in 2..=6 {
        assert_eq!(run.phase(n), NodePhase::Pending);
    }
    // The canary is back on its old image by itself: nothing to roll back, no one else told
    // anything.
    assert_eq!(touched(&run.log), BTreeSet::from([uid(1)]));
    assert!(rolled_back(&run.log).is_empty());
    assert!(run.rollout.is_over());
    assert_eq!(run.rollout.poll_timeout(), None);
    let row = run.store.rollout.clone().unwrap();
    assert_eq!(row.state, RolloutState::Halted);
    assert!(row.rollback);
    assert_eq!(
        run.store.nodes[&uid(1)].revert_cause,
        Some(RevertCause::Deadline)
    );
}

#[test]
fn a_crash_looping_canary_halts_the_same_way() {
    let mut run = Run::start(plan(nodes(6, &["ttyUSB0"]), staged(2, "50%,100%")));
    // Two canaries on one port: the second waits for the first's transfer.
    assert_eq!(started(&run.log), vec![uid(1)]);
    let actions = run.transferred(1);
    assert_eq!(started(&actions), vec![uid(2)]);
    run.report(
        1,
        NodeReport::Reverted {
            cause: RevertCause::Crash,
        },
    );
    assert_eq!(
        run.rollout.halt_reason(),
        Some("canary 0a1b2c3d4e5f6001 reverted (crashed)")
    );
    // The other canary's transfer is aborted; the rest never hear of the rollout.
    assert!(run.log.contains(&Action::Abort { uid: uid(2) }));
    assert_eq!(run.phase(2), NodePhase::Aborted);
    assert_eq!(touched(&run.log), BTreeSet::from([uid(1), uid(2)]));
    assert!(rolled_back(&run.log).is_empty());
    assert_eq!(run.rollout.state(), RolloutState::Halted);
}

#[test]
fn a_silent_canary_fails_at_the_gateways_deadline_and_is_rolled_back_if_it_confirms_late() {
    let mut run = Run::start(plan(nodes(3, &["ttyUSB0"]), Settings::default()));
    run.transferred(1);
    run.wait(Duration::from_secs(60));
    assert!(run.rollout.poll_timeout() > Some(run.now));
    run.next_timeout();
    assert_eq!(
        run.rollout.halt_reason(),
        Some("canary 0a1b2c3d4e5f6001 did not confirm within 2m 30s")
    );
    assert_eq!(run.phase(1), NodePhase::Failed);
    // It confirms after all: it runs the new image, so the rollback takes it back.
    let actions = run.report(1, NodeReport::Confirmed { version: NEW });
    assert_eq!(rolled_back(&actions), vec![uid(1)]);
    assert_eq!(run.rollout.state(), RolloutState::RollingBack);
    run.rollout
        .handle_transfer(run.now, uid(1), OLD_IMAGE.sha256, TransferEvent::Finished);
    run.drain();
    run.report(1, NodeReport::Confirmed { version: OLD });
    assert_eq!(run.phase(1), NodePhase::RolledBack);
    assert_eq!(run.rollout.state(), RolloutState::Halted);
}

#[test]
fn an_operator_halt_aborts_transfers_leaves_trials_and_rolls_back_confirmed_nodes() {
    // Ports: 1, 2 and 5 on A; 3, 4 and 6 on B. Node 3 has no previous image.
    let mut list = nodes(6, &["B", "A"]);
    list[1].port = "A".into();
    list[2].port = "B".into();
    list[2].rollback = None;
    list[3].port = "B".into();
    let mut run = Run::start(plan(list, staged(1, "60%,100%")));
    run.transferred(1);
    run.confirm(1);
    // Wave 1: 60 % of 6 is 3.6, so 4 with the canary: nodes 2 (A), 3 (B) at once, 4 (B) after 3.
    let actions = run.next_timeout();
    assert_eq!(started(&actions), vec![uid(2), uid(3)]);
    run.transferred(2);
    run.report(2, NodeReport::Trial);
    let actions = run.transferred(3);
    assert_eq!(started(&actions), vec![uid(4)]);
    run.confirm(3);
    let before = run.log.len();

    let actions = run.halt(true);
    assert_eq!(run.rollout.halt_reason(), Some("halted by the operator"));
    assert_eq!(run.rollout.state(), RolloutState::RollingBack);
    assert!(actions.contains(&Action::Abort { uid: uid(4) }));
    assert_eq!(run.phase(4), NodePhase::Aborted);
    // The canary goes back; node 3 cannot; node 2, on trial, is left to itself.
    assert_eq!(rolled_back(&actions), vec![uid(1)]);
    assert_eq!(run.phase(3), NodePhase::CannotRollBack);
    assert_eq!(
        run.status().nodes[2].detail.as_deref(),
        Some("cannot roll back: no previous artifact")
    );
    assert_eq!(run.phase(2), NodePhase::Trial);
    for n in 5..=6 {
        assert_eq!(run.phase(n), NodePhase::Pending);
    }

    // Node 2 confirms: it is rolled back too, after the canary's transfer on their port.
    let actions = run.report(2, NodeReport::Confirmed { version: NEW });
    assert!(rolled_back(&actions).is_empty());
    assert_eq!(run.phase(2), NodePhase::RollbackQueued);
    run.rollout
        .handle_transfer(run.now, uid(1), OLD_IMAGE.sha256, TransferEvent::Finished);
    let actions = run.drain();
    assert!(actions.contains(&Action::Install {
        uid: uid(1),
        confirm_within: DEFAULT_CONFIRM_WITHIN
    }));
    assert_eq!(rolled_back(&actions), vec![uid(2)]);
    run.report(1, NodeReport::Confirmed { version: OLD });
    run.rollout
        .handle_transfer(run.now, uid(2), OLD_IMAGE.sha256, TransferEvent::Finished);
    run.drain();
    run.report(2, NodeReport::Confirmed { version: OLD });
    assert_eq!(run.phase(1), NodePhase::RolledBack);
    assert_eq!(run.phase(2), NodePhase::RolledBack);
    assert_eq!(run.rollout.state(), RolloutState::Halted);
    assert!(run.rollout.is_over());

    // Nothing new started after the halt, and nodes 5 and 6 were never touched.
    assert!(started(&run.log[before..]).is_empty());
    assert!(finalized(&run.log).is_empty());
    assert!(!touched(&run.log).contains(&uid(5)));
    assert!(!touched(&run.log).contains(&uid(6)));
}

#[test]
fn a_halt_without_rollback_leaves_confirmed_nodes_on_the_new_image_unfinalized() {
    let mut run = Run::start(plan(nodes(4, &["A"]), Settings::default()));
    run.transferred(1);
    run.confirm(1);
    run.halt(false);
    assert_eq!(run.rollout.state(), RolloutState::Halted);
    assert_eq!(run.phase(1), NodePhase::Confirmed);
    assert_eq!(run.rollout.poll_timeout(), None, "no soak after a halt");
    // Then with rollback after all.
    let actions = run.halt(true);
    assert_eq!(rolled_back(&actions), vec![uid(1)]);
    assert_eq!(run.rollout.halt_reason(), Some("halted by the operator"));
    assert!(run.store.rollout.as_ref().unwrap().rollback);
    assert!(finalized(&run.log).is_empty());
}

#[test]
fn a_restore_mid_stage_resumes_transfers_and_installs_and_carries_on() {
    // Ports: 1, 2 and 5 on A; 3, 4 and 6 on B.
    let mut list = nodes(6, &["B", "A"]);
    list[1].port = "A".into();
    list[2].port = "B".into();
    list[3].port = "B".into();
    let mut run = Run::start(plan(list, staged(1, "100%")));
    run.transferred(1);
    run.confirm(1);
    let actions = run.next_timeout();
    assert_eq!(started(&actions), vec![uid(2), uid(3)]);
    let actions = run.transferred(2);
    assert_eq!(started(&actions), vec![uid(5)]);
    let actions = run.transferred(3);
    assert_eq!(started(&actions), vec![uid(4)]);
    run.confirm(3);
    // 2 installing, 3 confirmed, 4 and 5 transferring, 6 queued behind 4.
    let before = run.status();

    let actions = run.restart(Duration::from_secs(30));
    let after = run.status();
    assert_eq!(after.state, before.state);
    assert_eq!(after.stage, before.stage);
    for (a, b) in after.nodes.iter().zip(&before.nodes) {
        assert_eq!((a.uid, a.stage, a.phase), (b.uid, b.stage, b.phase));
    }
    assert_eq!(events(&actions, EventKind::Restored).len(), 1);
    // The transfers resume and the INSTALL goes again; the queued node still waits its turn.
    assert_eq!(started(&actions), vec![uid(4), uid(5)]);
    assert!(actions.contains(&Action::Install {
        uid: uid(2),
        confirm_within: DEFAULT_CONFIRM_WITHIN
    }));
    assert_eq!(
        run.rollout.poll_timeout(),
        Some(run.now + DEFAULT_CONFIRM_WITHIN + CONFIRM_GRACE),
        "the confirm deadline starts over at the restore"
    );

    run.confirm(2);
    let actions = run.transferred(4);
    assert_eq!(started(&actions), vec![uid(6)]);
    run.confirm(4);
    run.pass_stage();
    let actions = run.next_timeout();
    assert_eq!(finalized(&actions), (1..=6).map(uid).collect::<Vec<_>>());
    assert_eq!(run.rollout.state(), RolloutState::Done);
}

#[test]
fn a_restore_during_a_soak_soaks_again_in_full() {
    let mut run = Run::start(plan(nodes(4, &["A"]), Settings::default()));
    run.transferred(1);
    run.confirm(1);
    run.wait(Duration::from_secs(400));
    let actions = run.restart(Duration::from_secs(20));
    assert!(touched(&actions).is_empty());
    assert_eq!(run.rollout.state(), RolloutState::Soaking);
    assert_eq!(run.rollout.poll_timeout(), Some(run.now + DEFAULT_SOAK));
    assert_eq!(run.status().soak_remaining_ms, Some(600_000));
}

#[test]
fn a_restore_after_a_halt_keeps_rolling_back_and_starts_nothing() {
    let mut run = Run::start(plan(nodes(4, &["A", "B"]), staged(2, "100%")));
    run.transferred(1);
    run.confirm(1);
    run.transferred(2);
    run.halt(true);
    assert_eq!(rolled_back(&run.log), vec![uid(1)]);
    let actions = run.restart(Duration::from_secs(5));
    // The rollback transfer resumes; node 2 (installing before the halt) is not told again.
    assert_eq!(rolled_back(&actions), vec![uid(1)]);
    assert!(started(&actions).is_empty());
    assert!(!actions.iter().any(|a| matches!(a, Action::Install { .. })));
    assert_eq!(run.rollout.state(), RolloutState::RollingBack);
    assert_eq!(run.rollout.halt_reason(), Some("halted by the operator"));
}

#[test]
fn a_power_loss_revert_is_retried_once_then_fails_the_gate() {
    let mut run = Run::start(plan(nodes(4, &["A"]), Settings::default()));
    run.transferred(1);
    run.report(1, NodeReport::Trial);
    let actions = run.report(
        1,
        NodeReport::Reverted {
            cause: RevertCause::PowerLoss,
        },
    );
    // Not a failure yet: transferred again (the node keeps the sectors it has) and installed.
    assert_eq!(run.rollout.halt_reason(), None);
    assert_eq!(started(&actions), vec![uid(1)]);
    assert_eq!(run.store.nodes[&uid(1)].attempts, 1);
    run.transferred(1);
    assert_eq!(run.store.nodes[&uid(1)].attempts, 2);
    run.report(
        1,
        NodeReport::Reverted {
            cause: RevertCause::PowerLoss,
        },
    );
    assert_eq!(
        run.rollout.halt_reason(),
        Some("canary 0a1b2c3d4e5f6001 reverted (power lost in its trial, again)")
    );
    assert_eq!(run.phase(1), NodePhase::Failed);
}

#[test]
fn a_power_loss_retry_that_confirms_carries_on() {
    let mut run = Run::start(plan(nodes(2, &["A"]), staged(1, "100%")));
    run.transferred(1);
    run.report(
        1,
        NodeReport::Reverted {
            cause: RevertCause::PowerLoss,
        },
    );
    run.transferred(1);
    run.confirm(1);
    assert_eq!(run.rollout.state(), RolloutState::Soaking);
    let actions = run.next_timeout();
    assert_eq!(started(&actions), vec![uid(2)]);
}

#[test]
fn an_offline_node_is_not_picked_as_canary() {
    let mut list = nodes(3, &["A"]);
    list[0].online = false;
    let run = Run::start(plan(list, Settings::default()));
    assert_eq!(started(&run.log), vec![uid(2)]);
    assert_eq!(run.phase(1), NodePhase::Pending);
    assert_eq!(run.status().nodes[1].stage, Some(StageId::Canary));

    // With every node offline there is no canary: the rollout halts before touching any.
    let mut list = nodes(3, &["A"]);
    for n in &mut list {
        n.online = false;
    }
    let run = Run::start(plan(list, Settings::default()));
    assert_eq!(run.rollout.state(), RolloutState::Halted);
    assert_eq!(
        run.rollout.halt_reason(),
        Some("no node is online to be the canary (3 to update, all offline)")
    );
    assert!(touched(&run.log).is_empty());
}

#[test]
fn a_reset_cluster_among_updated_nodes_fails_the_soak_and_rolls_them_back() {
    // Sixteen nodes on four ports; wave 1 makes four updated nodes, twelve wait.
    let mut run = Run::start(plan(nodes(16, &["A", "B", "C", "D"]), Settings::default()));
    run.pass_stage();
    run.next_timeout();
    run.pass_stage();
    run.wait(Duration::from_secs(120));
    run.reset(2, 900);
    let actions = run.reset(3, 901);
    assert_eq!(events(&actions, EventKind::UnexpectedReset).len(), 1);
    let actions = run.next_timeout();

    let reason =
        "soak after wave 1: 2 of 4 updated nodes reset unexpectedly vs 0 of 12 not updated";
    assert_eq!(run.rollout.halt_reason(), Some(reason));
    let failed = events(&actions, EventKind::SoakFailed);
    assert_eq!(
        failed[0].soak,
        Some(SoakCounts {
            updated: 4,
            updated_with_incident: 2,
            updated_reset: 2,
            updated_offline: 0,
            against: Comparison::NotUpdated,
            compared: 12,
            compared_with_incident: 0,
            window_ms: 600_000,
            compared_window_ms: 600_000,
        })
    );
    // The four are on four ports: all go back at once. The twelve were never touched.
    assert_eq!(rolled_back(&actions), (1..=4).map(uid).collect::<Vec<_>>());
    assert_eq!(run.rollout.state(), RolloutState::RollingBack);
    assert!((5..=16).all(|n| !touched(&run.log).contains(&uid(n))));
    assert_eq!(
        run.store.nodes[&uid(2)].last_reset,
        Some(ResetReason::Watchdog)
    );
}

#[test]
fn only_unexpected_resets_of_updated_nodes_count_against_the_soak() {
    let mut run = Run::start(plan(nodes(16, &["A", "B", "C", "D"]), Settings::default()));
    run.pass_stage();
    run.next_timeout();
    run.pass_stage();
    run.wait(Duration::from_secs(120));
    // Power applied again, a requested reboot, the RUN pin: nothing against the image.
    let mut actions = run.reset_for(2, 900, ResetReason::PowerOn);
    actions.extend(run.reset_for(3, 901, ResetReason::Software));
    actions.extend(run.reset_for(4, 902, ResetReason::ExternalPin));
    assert!(events(&actions, EventKind::UnexpectedReset).is_empty());
    // A hard fault is a symptom.
    let actions = run.reset_for(1, 903, ResetReason::HardFault);
    assert_eq!(events(&actions, EventKind::UnexpectedReset).len(), 1);
    let actions = run.next_timeout();
    let failed = events(&actions, EventKind::SoakFailed);
    assert_eq!(
        failed[0].detail,
        "soak after wave 1: 1 of 4 updated nodes reset unexpectedly vs 0 of 12 not updated"
    );
    // Each node's last reset is still kept, expected or not.
    assert_eq!(
        run.store.nodes[&uid(2)].last_reset,
        Some(ResetReason::PowerOn)
    );
}

#[test]
fn resets_as_common_among_the_nodes_not_updated_pass_the_soak() {
    let mut run = Run::start(plan(nodes(16, &["A", "B", "C", "D"]), Settings::default()));
    run.pass_stage();
    run.next_timeout();
    run.pass_stage();
    run.reset(2, 900);
    run.reset(3, 901);
    for n in 5..=10 {
        run.reset(n, 900 + u32::from(n));
    }
    let actions = run.next_timeout();
    let passed = events(&actions, EventKind::SoakPassed);
    assert_eq!(
        passed[0].detail,
        "soak after wave 1: 2 of 4 updated nodes reset unexpectedly vs 6 of 12 not updated"
    );
    assert_eq!(run.rollout.stage(), Some(StageId::Wave(2)));
}

#[test]
fn one_canary_reset_fails_the_soak_unless_every_other_node_reset_too() {
    let soak_with_others_reset = |others: u8| {
        let mut run = Run::start(plan(nodes(6, &["A"]), Settings::default()));
        run.transferred(1);
        run.confirm(1);
        run.reset(1, 500);
        for n in 2..2 + others {
            run.reset(n, 600);
        }
        run.next_timeout();
        run.rollout.halt_reason().map(str::to_owned)
    };
    assert_eq!(
        soak_with_others_reset(4).as_deref(),
        Some("soak after canary: 1 of 1 updated nodes reset unexpectedly vs 4 of 5 not updated")
    );
    assert_eq!(soak_with_others_reset(5), None);
}

#[test]
fn an_outage_counts_only_past_the_offline_threshold() {
    let soak_with_outage = |secs: u64| {
        let mut run = Run::start(plan(nodes(3, &["A"]), Settings::default()));
        run.transferred(1);
        run.confirm(1);
        run.wait(Duration::from_secs(60));
        run.online(1, false);
        run.wait(Duration::from_secs(secs));
        run.online(1, true);
        run.next_timeout();
        run.rollout.halt_reason().map(str::to_owned)
    };
    assert_eq!(soak_with_outage(45), None);
    assert_eq!(
        soak_with_outage(120).as_deref(),
        Some(
            "soak after canary: 1 of 1 updated nodes went offline for more than 1m vs 0 of 2 not updated"
        )
    );
}

#[test]
fn a_node_offline_for_the_whole_soak_is_left_out_of_the_comparison() {
    // Node 3 is offline from the start: it says nothing about the old image, so the canary's
    // outage-free soak is compared with node 2 alone.
    let mut list = nodes(3, &["A"]);
    list[2].online = false;
    let mut run = Run::start(plan(list, Settings::default()));
    run.transferred(1);
    run.confirm(1);
    let actions = run.next_timeout();
    let counts = events(&actions, EventKind::SoakPassed)[0]
        .soak
        .clone()
        .unwrap();
    assert_eq!((counts.compared, counts.compared_with_incident), (1, 0));
}

#[test]
fn the_last_wave_compares_the_updated_nodes_with_themselves_before_it_began() {
    let last_soak = |resets_after: &[u8]| {
        let mut run = Run::start(plan(nodes(2, &["A"]), staged(1, "100%")));
        run.transferred(1);
        run.confirm(1);
        // During the canary's soak node 2, not updated yet, resets once.
        run.wait(Duration::from_secs(100));
        run.reset(2, 700);
        run.next_timeout();
        assert_eq!(run.rollout.stage(), Some(StageId::Wave(1)));
        run.pass_stage();
        for &n in resets_after {
            run.reset(n, 800);
        }
        let actions = run.next_timeout();
        (run.rollout.halt_reason().map(str::to_owned), actions)
    };
    // One of two after, one of two before: not above.
    let (halt, actions) = last_soak(&[1]);
    assert_eq!(halt, None);
    let counts = events(&actions, EventKind::SoakPassed)[0]
        .soak
        .clone()
        .unwrap();
    assert_eq!(counts.against, Comparison::BeforeStage);
    assert_eq!(finalized(&actions), vec![uid(1), uid(2)]);
    // Two of two after: above.
    let (halt, _) = last_soak(&[1, 2]);
    assert_eq!(
        halt.as_deref(),
        Some(
            "soak after wave 1: 2 of 2 updated nodes reset unexpectedly vs 1 of 2 in the 10m before wave 1 began"
        )
    );
}

#[test]
fn a_targeted_update_confirms_soaks_and_finalizes_its_one_node() {
    let mut one = node(9, "A");
    one.online = false;
    let settings = Settings {
        mode: Mode::Targeted,
        soak: Duration::ZERO,
        ..Settings::default()
    };
    let mut run = Run::start(plan(vec![one], settings));
    // Taken even offline: its transfer waits for it.
    assert_eq!(run.rollout.stage(), Some(StageId::Targeted));
    assert_eq!(started(&run.log), vec![uid(9)]);
    run.online(9, true);
    run.transferred(9);
    let actions = run.confirm(9);
    assert_eq!(
        finalized(&actions),
        vec![uid(9)],
        "a soak of zero passes at once"
    );
    assert_eq!(run.rollout.state(), RolloutState::Done);
}

#[test]
fn a_targeted_update_fails_its_soak_on_any_unexpected_reset() {
    let settings = Settings {
        mode: Mode::Targeted,
        soak: Duration::from_secs(300),
        ..Settings::default()
    };
    let mut run = Run::start(plan(vec![node(9, "A")], settings));
    run.transferred(9);
    run.confirm(9);
    run.reset(9, 1);
    let actions = run.next_timeout();
    assert_eq!(
        run.rollout.halt_reason(),
        Some(
            "soak after targeted: 1 of 1 updated nodes reset unexpectedly vs nothing to compare with (no observed window before targeted began)"
        )
    );
    assert_eq!(rolled_back(&actions), vec![uid(9)]);
}

#[test]
fn waves_are_cumulative_shares_of_all_nodes_rounded_up() {
    // Ten nodes, node 10 already on the new version: it counts among the nodes taken.
    let mut list = nodes(10, &["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"]);
    list[9].version = NEW;
    let mut run = Run::start(plan(list, staged(1, "15%,50%,100%")));
    assert_eq!(run.phase(10), NodePhase::Skipped);
    run.pass_stage();
    // 15 % of 10 is 1.5, so 2: the canary and node 10 already count: wave 1 takes no node.
    let actions = run.next_timeout();
    assert_eq!(events(&actions, EventKind::StageSkipped).len(), 1);
    assert_eq!(run.rollout.stage(), Some(StageId::Wave(2)));
    // 50 % is 5: three more.
    assert_eq!(started(&actions), vec![uid(2), uid(3), uid(4)]);
    run.pass_stage();
    let actions = run.next_timeout();
    assert_eq!(started(&actions), (5..=9).map(uid).collect::<Vec<_>>());
    run.pass_stage();
    let actions = run.next_timeout();
    assert_eq!(finalized(&actions).len(), 9, "node 10 was never touched");
    let stages: Vec<StageState> = run.status().stages.iter().map(|s| s.state).collect();
    assert_eq!(
        stages,
        vec![
            StageState::Passed,
            StageState::Skipped,
            StageState::Passed,
            StageState::Passed
        ]
    );
}

#[test]
fn an_offline_node_waits_for_a_later_wave_and_is_left_out_by_the_last() {
    let mut list = nodes(4, &["A", "B", "C", "D"]);
    list[1].online = false;
    let mut run = Run::start(plan(list, staged(1, "50%,100%")));
    run.pass_stage();
    // Wave 1 takes one node: online ones first, so node 3 rather than node 2.
    let actions = run.next_timeout();
    assert_eq!(started(&actions), vec![uid(3)]);
    assert_eq!(run.phase(2), NodePhase::Pending);
    run.pass_stage();
    let actions = run.next_timeout();
    assert_eq!(started(&actions), vec![uid(4)]);
    assert_eq!(run.phase(2), NodePhase::Skipped);
    assert_eq!(
        run.status().nodes[1].detail.as_deref(),
        Some("offline when wave 2 began")
    );
    run.pass_stage();
    let actions = run.next_timeout();
    assert_eq!(finalized(&actions), vec![uid(1), uid(3), uid(4)]);
    assert_eq!(run.rollout.state(), RolloutState::Done);
}

#[test]
fn a_node_that_refuses_is_left_out_but_a_canary_stage_with_none_confirmed_halts() {
    let mut run = Run::start(plan(nodes(3, &["A", "B", "C"]), staged(2, "100%")));
    assert_eq!(started(&run.log), vec![uid(1), uid(2)]);
    let refuse = |run: &mut Run, n| {
        run.rollout.handle_transfer(
            run.now,
            uid(n),
            NEW_IMAGE.sha256,
            TransferEvent::Refused("below-floor".into()),
        );
        run.drain()
    };
    refuse(&mut run, 1);
    assert_eq!(run.phase(1), NodePhase::Skipped);
    assert_eq!(run.rollout.halt_reason(), None);
    run.transferred(2);
    run.confirm(2);
    assert_eq!(
        run.rollout.state(),
        RolloutState::Soaking,
        "the other canary passed"
    );

    let mut run = Run::start(plan(nodes(3, &["A"]), Settings::default()));
    refuse(&mut run, 1);
    assert_eq!(
        run.rollout.halt_reason(),
        Some("no canary node could be updated: 0a1b2c3d4e5f6001 refused the image: below-floor")
    );
    assert_eq!(run.rollout.state(), RolloutState::Halted);
    assert!(!run.store.rollout.as_ref().unwrap().rollback);
}

#[test]
fn a_failed_transfer_is_tried_again_then_the_node_is_left_out() {
    let mut run = Run::start(plan(nodes(3, &["A"]), staged(1, "100%")));
    run.transferred(1);
    run.confirm(1);
    let actions = run.next_timeout();
    assert_eq!(started(&actions), vec![uid(2)]);
    let fail = |run: &mut Run| {
        run.rollout.handle_transfer(
            run.now,
            uid(2),
            NEW_IMAGE.sha256,
            TransferEvent::Failed("link lost".into()),
        );
        run.drain()
    };
    assert_eq!(started(&fail(&mut run)), vec![uid(2)]);
    assert_eq!(started(&fail(&mut run)), vec![uid(2)]);
    let actions = fail(&mut run);
    assert_eq!(
        started(&actions),
        vec![uid(3)],
        "node 2 is out; the port goes to 3"
    );
    assert_eq!(run.phase(2), NodePhase::Skipped);
    assert_eq!(
        run.store.nodes[&uid(2)].detail.as_deref(),
        Some("transfer failed 3 times, last: link lost")
    );
}

#[test]
fn stale_duplicate_and_foreign_reports_change_nothing() {
    let mut run = Run::start(plan(nodes(3, &["A"]), Settings::default()));
    let before = run.status();
    let now = run.now;
    let r = &mut run.rollout;
    // A node not in any stage, another image's transfer, a node not in the plan.
    r.handle_node_report(now, uid(2), NodeReport::Confirmed { version: NEW });
    r.handle_node_report(now, uid(1), NodeReport::Confirmed { version: NEW });
    r.handle_transfer(now, uid(1), OLD_IMAGE.sha256, TransferEvent::Finished);
    r.handle_transfer(now, uid(2), NEW_IMAGE.sha256, TransferEvent::Finished);
    r.handle_transfer(now, uid(42), NEW_IMAGE.sha256, TransferEvent::Finished);
    r.handle_node_report(now, uid(42), NodeReport::Trial);
    // The boot already known, and the same online state again.
    r.handle_boot(
        now,
        uid(1),
        Boot {
            boot_id: 101,
            reset_reason: ResetReason::PowerOn,
            install: false,
        },
    );
    r.handle_online(now, uid(1), true);
    assert_eq!(run.drain(), Vec::new());
    assert_eq!(run.status(), before);

    // A confirm on the old version does not pass the gate: the deadline decides.
    run.transferred(1);
    run.report(1, NodeReport::Confirmed { version: OLD });
    assert_eq!(run.phase(1), NodePhase::Installing);
}

#[test]
fn the_status_and_events_serialise_for_the_api_the_page_and_mqtt() {
    let mut run = Run::start(plan(nodes(2, &["A"]), Settings::default()));
    run.rollout.handle_transfer(
        run.now,
        uid(1),
        NEW_IMAGE.sha256,
        TransferEvent::Progress {
            done: 1024,
            total: 4096,
        },
    );
    let actions = run.drain();
    let [Action::Progress(progress)] = actions.as_slice() else {
        panic!("one progress record, not persisted: {actions:?}");
    };
    assert!((progress.fraction() - 0.25).abs() < 1e-9);

    let json = serde_json::to_value(run.status()).unwrap();
    assert_eq!(json["state"], "running");
    assert_eq!(json["stage"], "canary");
    assert_eq!(json["mode"], "staged");
    assert_eq!(json["artifact"], "13".repeat(32));
    assert_eq!(json["version"], "1.3.0");
    assert_eq!(json["stages"][1]["stage"], "wave 1");
    assert_eq!(json["stages"][1]["state"], "not_started");
    let node = &json["nodes"][0];
    assert_eq!(node["uid"], "0a1b2c3d4e5f6001");
    assert_eq!(node["phase"], "transferring");
    assert_eq!(node["progress"], 0.25);
    assert_eq!(node["from_version"], "1.2.0");
    assert_eq!(json["nodes"][1]["phase"], "pending");

    let transferring = run
        .log
        .iter()
        .find_map(|a| match a {
            Action::Event(e) if e.kind == EventKind::Phase(NodePhase::Transferring) => Some(e),
            _ => None,
        })
        .unwrap();
    let json = serde_json::to_value(transferring).unwrap();
    assert_eq!(json["event"], "transferring");
    assert_eq!(json["uid"], "0a1b2c3d4e5f6001");
    assert_eq!(json["stage"], "canary");
    assert_eq!(json["rollout"], 7);
    assert!(json.get("soak").is_none());
}

// ---- properties ---------------------------------------------------------------------------

/// One input to the rollout, in the fleet's terms. Indices wrap around the fleet.
#[derive(Debug, Clone)]
enum Op {
    /// What a healthy node and transfer would report next.
    Cooperate(usize),
    /// Any transfer report: `image` 0 new, 1 old, 2 unknown; `event` 0 progress, 1 finished,
    /// 2 refused, 3 failed.
    Transfer {
        node: usize,
        image: u8,
        event: u8,
    },
    /// Any phase report: 0 installing, 1 trial, 2 confirmed new, 3 confirmed old, 4.. reverted.
    Report {
        node: usize,
        report: u8,
    },
    Boot {
        node: usize,
        boot: u8,
        install: bool,
    },
    Online {
        node: usize,
        online: bool,
    },
    Wait(u16),
    Timeout,
    Restore,
    /// The last input again.
    Duplicate,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..8usize).prop_map(Op::Cooperate),
        1 => (0..8usize, 0..3u8, 0..4u8)
            .prop_map(|(node, image, event)| Op::Transfer { node, image, event }),
        1 => (0..8usize, 0..8u8).prop_map(|(node, report)| Op::Report { node, report }),
        1 => (0..8usize, 0..4u8, any::<bool>())
            .prop_map(|(node, boot, install)| Op::Boot { node, boot, install }),
        1 => (0..8usize, any::<bool>()).prop_map(|(node, online)| Op::Online { node, online }),
        1 => (0..900u16).prop_map(Op::Wait),
        2 => Just(Op::Timeout),
        1 => Just(Op::Restore),
        1 => Just(Op::Duplicate),
    ]
}

/// A fleet: per node (port, online, has a previous image, already on the new version).
fn fleet() -> impl Strategy<Value = (Vec<TargetNode>, Settings)> {
    let node = (
        0..3u8,
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.1),
    );
    (
        prop::collection::vec(node, 1..=7),
        1..=3usize,
        prop::sample::select(vec!["100%", "50%,100%", "25%,100%", "10%,40%,70%,100%"]),
        prop::sample::select(vec![0u64, 60, 600]),
        1..=2usize,
        any::<bool>(),
    )
        .prop_map(|(spec, canary, waves, soak, per_port, targeted)| {
            let nodes: Vec<TargetNode> = spec
                .iter()
                .enumerate()
                .map(|(i, &(port, online, rollback, current))| TargetNode {
                    uid: uid(u8::try_from(i).unwrap() + 1),
                    port: format!("tty{port}"),
                    version: if current { NEW } else { OLD },
                    online,
                    boot_id: Some(0),
                    rollback: rollback.then_some(OLD_IMAGE),
                })
                .collect();
            let mode = if targeted && nodes.len() == 1 {
                Mode::Targeted
            } else {
                Mode::Staged {
                    canary,
                    waves: Waves::parse(waves).unwrap(),
                }
            };
            let settings = Settings {
                mode,
                soak: Duration::from_secs(soak),
                max_concurrent_per_port: NonZeroUsize::new(per_port).unwrap(),
                ..Settings::default()
            };
            (nodes, settings)
        })
}

/// The fleet's side, and what has been seen so far of the rollout's promises.
struct Sim {
    run: Run,
    size: usize,
    per_port: usize,
    /// What the adapter knows of each node's link (fed again after a restore).
    online: Vec<bool>,
    /// Stages seen passed (soak passed) or skipped.
    passed: BTreeSet<StageId>,
    finalized: BTreeSet<[u8; 8]>,
    halted: bool,
    stage_index: Option<usize>,
    last: Option<Op>,
}

impl Sim {
    fn new(nodes: Vec<TargetNode>, settings: Settings) -> Result<Sim, TestCaseError> {
        let size = nodes.len();
        let per_port = settings.max_concurrent_per_port.get();
        let online = nodes.iter().map(|n| n.online).collect();
        let mut sim = Sim {
            run: Run {
                rollout: Rollout::new(plan(nodes, settings), T0).unwrap(),
                now: T0,
                store: Store::default(),
                log: Vec::new(),
            },
            size,
            per_port,
            online,
            passed: BTreeSet::new(),
            finalized: BTreeSet::new(),
            halted: false,
            stage_index: None,
            last: None,
        };
        sim.drain_and_check()?;
        Ok(sim)
    }

    fn n(&self, i: usize) -> u8 {
        u8::try_from(i % self.size).unwrap() + 1
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        let now = self.run.now;
        match op.clone() {
            Op::Cooperate(i) => self.cooperate(self.n(i)),
            Op::Transfer { node, image, event } => {
                let sha = [NEW_IMAGE.sha256, OLD_IMAGE.sha256, [0xee; 32]][usize::from(image)];
                let event = match event {
                    0 => TransferEvent::Progress {
                        done: 512,
                        total: 4096,
                    },
                    1 => TransferEvent::Finished,
                    2 => TransferEvent::Refused("busy".into()),
                    _ => TransferEvent::Failed("link lost".into()),
                };
                self.run
                    .rollout
                    .handle_transfer(now, uid(self.n(node)), sha, event);
            }
            Op::Report { node, report } => {
                let report = match report {
                    0 => NodeReport::Installing,
                    1 => NodeReport::Trial,
                    2 => NodeReport::Confirmed { version: NEW },
                    3 => NodeReport::Confirmed { version: OLD },
                    c => NodeReport::Reverted {
                        cause: RevertCause::ALL[usize::from(c - 4)],
                    },
                };
                self.run
                    .rollout
                    .handle_node_report(now, uid(self.n(node)), report);
            }
            Op::Boot {
                node,
                boot,
                install,
            } => {
                let boot = Boot {
                    boot_id: u32::from(boot),
                    reset_reason: ResetReason::Software,
                    install,
                };
                self.run.rollout.handle_boot(now, uid(self.n(node)), boot);
            }
            Op::Online { node, online } => {
                let n = self.n(node);
                self.online[usize::from(n) - 1] = online;
                self.run.rollout.handle_online(now, uid(n), online);
            }
            Op::Wait(secs) => {
                self.run.wait(Duration::from_secs(u64::from(secs)));
                if self
                    .run
                    .rollout
                    .poll_timeout()
                    .is_some_and(|t| t <= self.run.now)
                {
                    self.run.rollout.handle_timeout(self.run.now);
                }
            }
            Op::Timeout => {
                if let Some(at) = self.run.rollout.poll_timeout() {
                    self.run.now = self.run.now.max(at);
                    self.run.rollout.handle_timeout(self.run.now);
                }
            }
            Op::Restore => return self.restore(),
            Op::Duplicate => {
                if let Some(last) = self.last.clone()
                    && !matches!(last, Op::Restore | Op::Duplicate)
                {
                    return self.apply(last);
                }
            }
        }
        if !matches!(op, Op::Duplicate) {
            self.last = Some(op);
        }
        self.drain_and_check()
    }

    /// What a healthy node and link do next in the node's phase.
    fn cooperate(&mut self, n: u8) {
        let now = self.run.now;
        let r = &mut self.run.rollout;
        match r.phase_of(uid(n)).unwrap() {
            NodePhase::Transferring => {
                r.handle_transfer(now, uid(n), NEW_IMAGE.sha256, TransferEvent::Finished);
            }
            NodePhase::RollbackTransferring => {
                r.handle_transfer(now, uid(n), OLD_IMAGE.sha256, TransferEvent::Finished);
            }
            NodePhase::Installing => r.handle_node_report(now, uid(n), NodeReport::Trial),
            NodePhase::Trial => {
                r.handle_node_report(now, uid(n), NodeReport::Confirmed { version: NEW });
            }
            NodePhase::RollbackInstalling => {
                r.handle_node_report(now, uid(n), NodeReport::Confirmed { version: OLD });
            }
            _ => {}
        }
    }

    /// The gateway restarts: the rollout comes back from the store, and must be the same.
    fn restore(&mut self) -> Result<(), TestCaseError> {
        let before = project(&self.run.status());
        self.run.rollout = Rollout::restore(self.run.store.rows(), self.run.now).unwrap();
        for (i, &online) in self.online.iter().enumerate() {
            if !online {
                let n = u8::try_from(i).unwrap() + 1;
                self.run.rollout.handle_online(self.run.now, uid(n), false);
            }
        }
        prop_assert_eq!(
            &project(&self.run.status()),
            &before,
            "restored from its rows"
        );
        self.drain_and_check()
    }

    fn drain_and_check(&mut self) -> Result<(), TestCaseError> {
        let actions = self.run.drain();
        let status = self.run.status();
        let node = |uid: &[u8; 8]| status.nodes.iter().find(|n| n.uid == *uid).unwrap();
        let halted = status.halt_reason.is_some();
        for action in &actions {
            match action {
                Action::Event(e)
                    if matches!(e.kind, EventKind::SoakPassed | EventKind::StageSkipped) =>
                {
                    self.passed.insert(e.stage.unwrap());
                }
                Action::StartTransfer { uid, artifact } => {
                    let n = node(uid);
                    prop_assert!(!halted && !self.halted, "StartTransfer in a halted rollout");
                    prop_assert_eq!(*artifact, NEW_IMAGE);
                    prop_assert_eq!(n.phase, NodePhase::Transferring);
                    prop_assert_eq!(n.stage, status.stage, "a node outside the current stage");
                }
                Action::Install { uid, .. } => {
                    let n = node(uid);
                    let forward = n.phase == NodePhase::Installing
                        && !halted
                        && !self.halted
                        && n.stage == status.stage;
                    prop_assert!(
                        forward || n.phase == NodePhase::RollbackInstalling,
                        "Install for {:?} in phase {:?} (halted: {})",
                        uid,
                        n.phase,
                        halted
                    );
                }
                Action::Abort { uid } => {
                    let n = node(uid);
                    prop_assert!(halted);
                    prop_assert_eq!(n.phase, NodePhase::Aborted);
                    prop_assert_eq!(n.stage, status.stage);
                }
                Action::RollBack { uid, artifact } => {
                    let n = node(uid);
                    prop_assert!(status.rollback);
                    prop_assert_eq!(*artifact, OLD_IMAGE);
                    prop_assert_eq!(n.phase, NodePhase::RollbackTransferring);
                    prop_assert!(
                        n.stage.is_some(),
                        "rolled back a node the rollout never took"
                    );
                }
                Action::Finalize { uid } => {
                    prop_assert_eq!(status.state, RolloutState::Done);
                    prop_assert_eq!(node(uid).phase, NodePhase::Finalized);
                    for stage in &status.stages {
                        prop_assert!(
                            self.passed.contains(&stage.stage),
                            "{} not passed",
                            stage.stage
                        );
                    }
                    prop_assert!(self.finalized.insert(*uid), "finalized twice");
                }
                _ => {}
            }
        }
        // One transfer per port (or the plan's limit).
        let mut per_port: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &status.nodes {
            if matches!(
                n.phase,
                NodePhase::Transferring | NodePhase::RollbackTransferring
            ) {
                *per_port.entry(n.port.as_str()).or_default() += 1;
            }
            if n.stage.is_none() {
                prop_assert!(matches!(n.phase, NodePhase::Pending | NodePhase::Skipped));
            }
        }
        prop_assert!(
            per_port.values().all(|&c| c <= self.per_port),
            "{:?}",
            per_port
        );
        // A halt is for good; a done rollout never halted.
        prop_assert!(!self.halted || halted, "a halt was undone");
        if status.state == RolloutState::Done {
            prop_assert!(!halted);
        }
        self.halted = halted;
        let index = status
            .stage
            .map(|s| status.stages.iter().position(|x| x.stage == s).unwrap());
        prop_assert!(index >= self.stage_index, "the stage went backwards");
        self.stage_index = index;
        Ok(())
    }

    /// Every node online and healthy from now on, until nothing more happens.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for i in 0..self.size {
            self.apply(Op::Online {
                node: i,
                online: true,
            })?;
        }
        for _ in 0..1000 {
            if self.run.rollout.is_over() {
                break;
            }
            // Healthy nodes answer before any deadline passes.
            for _ in 0..3 {
                for i in 0..self.size {
                    self.apply(Op::Cooperate(i))?;
                }
            }
            self.apply(Op::Timeout)?;
        }
        prop_assert!(self.run.rollout.is_over(), "stuck: {:?}", self.run.status());
        Ok(())
    }
}

/// What the rows must bring back.
type Projection = (
    RolloutState,
    Option<StageId>,
    Option<String>,
    bool,
    Vec<(
        NodePhase,
        Option<StageId>,
        u8,
        u8,
        Option<String>,
        Option<RevertCause>,
        Option<&'static str>,
    )>,
);

fn project(s: &RolloutStatus) -> Projection {
    (
        s.state,
        s.stage,
        s.halt_reason.clone(),
        s.rollback,
        s.nodes
            .iter()
            .map(|n| {
                (
                    n.phase,
                    n.stage,
                    n.attempts,
                    n.transfer_failures,
                    n.detail.clone(),
                    n.revert_cause,
                    n.last_reset,
                )
            })
            .collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Under any interleaving of node events, drops (an event that never comes), duplicates,
    /// restarts and an operator halt: one transfer per port, no node outside the current stage
    /// touched, FINALIZE only after every stage passed, nothing new started once halted, and in
    /// the end every node in a terminal phase unless the rollout is halted.
    #[test]
    fn the_rollout_keeps_its_promises_under_any_interleaving(
        (nodes, settings) in fleet(),
        ops in prop::collection::vec(op(), 0..120),
        halt in prop::option::weighted(0.3, (0..120usize, any::<bool>())),
        impatient in any::<bool>(),
    ) {
        let mut sim = Sim::new(nodes, settings)?;
        for (i, op) in ops.into_iter().enumerate() {
            // A patient fleet's deadlines pass only in the end: more cases get past the canary.
            let op = match op {
                Op::Timeout if !impatient => Op::Wait(1),
                Op::Wait(secs) if !impatient => Op::Wait(secs % 60),
                op => op,
            };
            if let Some((at, rollback)) = halt && at == i {
                sim.run.rollout.handle_halt(sim.run.now, rollback);
                sim.drain_and_check()?;
            }
            sim.apply(op)?;
        }
        sim.settle()?;
        let status = sim.run.status();
        match status.state {
            RolloutState::Done => {
                for n in &status.nodes {
                    prop_assert!(
                        matches!(n.phase, NodePhase::Finalized | NodePhase::Skipped),
                        "done with {:?} in {:?}", n.uid, n.phase
                    );
                }
                let confirmed: BTreeSet<[u8; 8]> = status
                    .nodes
                    .iter()
                    .filter(|n| n.phase == NodePhase::Finalized)
                    .map(|n| n.uid)
                    .collect();
                prop_assert_eq!(&confirmed, &sim.finalized);
            }
            RolloutState::Halted => {
                prop_assert!(sim.finalized.is_empty());
                prop_assert!(status.halt_reason.is_some());
            }
            other => prop_assert!(false, "over in state {:?}", other),
        }
    }

    /// Any valid list of waves reads back from its own text.
    #[test]
    fn waves_read_back_from_their_text(cuts in prop::collection::btree_set(1u32..100, 0..6)) {
        let mut shares: Vec<u32> = cuts.into_iter().collect();
        shares.push(100);
        let waves = Waves::new(&shares).unwrap();
        prop_assert_eq!(Waves::parse(&waves.to_string()), Ok(waves));
    }
}
