use super::*;
use proptest::prelude::*;

const SEC: i64 = 1_000;
const MIN: i64 = 60 * SEC;
const T0: i64 = 1_780_000_000_000;

fn node(i: usize, fw: &str, lot: &str) -> NodeFacts {
    NodeFacts {
        uid: format!("{i:016x}"),
        fw_version: fw.into(),
        lot: lot.into(),
        online: true,
    }
}

fn reset(node: &NodeFacts, boot_id: i64, at_ms: i64, expected: bool) -> ResetFacts {
    ResetFacts {
        uid: node.uid.clone(),
        boot_id,
        at_ms,
        expected,
        fw_version: node.fw_version.clone(),
        lot: node.lot.clone(),
    }
}

/// Only `kind`, with `for` and `clear_for` of a minute, the rest its defaults.
fn only(kind: RuleKind, mut adjust: impl FnMut(&mut Rule)) -> Rules {
    let mut rules = Rules::default();
    for rule in &mut rules.rules {
        rule.enabled = rule.kind == kind;
        rule.hold_for = Duration::from_secs(60);
        rule.clear_for = Duration::from_secs(60);
        if rule.kind == kind {
            adjust(rule);
        }
    }
    rules
}

fn sample(nodes: &[NodeFacts], new_resets: Vec<ResetFacts>) -> FleetSample {
    FleetSample {
        nodes: nodes.to_vec(),
        new_resets,
        ..FleetSample::default()
    }
}

fn phases(transitions: &[Transition]) -> Vec<(RuleKind, String, Phase)> {
    transitions
        .iter()
        .map(|t| (t.rule, t.cohort.clone(), t.phase))
        .collect()
}

/// 20 nodes on 1.0.0 and 20 on 1.1.0; the first `looping` of 1.1.0 crash every 30 s from T0
/// until `until`; evaluated every 10 s until `end`. Every transition.
fn crash_loop(looping: usize, until: i64, end: i64) -> Vec<Transition> {
    let mut nodes: Vec<NodeFacts> = (0..20).map(|i| node(i, "1.0.0", "L1")).collect();
    nodes.extend((20..40).map(|i| node(i, "1.1.0", "L1")));
    let mut engine = Engine::new(only(RuleKind::CohortResets, |r| {
        r.window = Duration::from_secs(600);
    }));
    let mut all = Vec::new();
    let mut boot = 0;
    let mut now = T0;
    while now <= end {
        let mut resets = Vec::new();
        if now < until && (now - T0) % (30 * SEC) == 0 {
            for n in &nodes[20..20 + looping] {
                boot += 1;
                resets.push(reset(n, boot, now, false));
            }
        }
        engine.observe(now, sample(&nodes, resets));
        all.extend(engine.evaluate(now));
        now += 10 * SEC;
    }
    all
}

#[test]
fn many_crash_looping_nodes_of_one_firmware_make_one_alert_that_resolves_after_they_stop() {
    let stop = T0 + 10 * MIN;
    let all = crash_loop(6, stop, stop + 30 * MIN);
    let cohort = |p| (RuleKind::CohortResets, "1.1.0".to_owned(), p);
    assert_eq!(
        phases(&all),
        [
            cohort(Phase::Pending),
            cohort(Phase::Firing),
            cohort(Phase::Resolved)
        ],
        "one alert for six nodes, about their firmware only"
    );
    let firing = &all[1];
    assert_eq!(firing.at_ms - all[0].at_ms, MIN, "fired after `for`");
    assert!(
        firing.message.contains("of 20 nodes of firmware 1.1.0"),
        "{}",
        firing.message
    );
    // The resets leave the 10-minute window, then it stays clear for `clear_for`.
    let resolved = &all[2];
    assert!(resolved.at_ms >= stop + 10 * MIN - 30 * SEC + MIN);
    assert!(resolved.value < resolved.resolve_below);
}

#[test]
fn one_crash_looping_node_does_not_make_its_firmware_an_alert() {
    assert!(crash_loop(1, T0 + 10 * MIN, T0 + 20 * MIN).is_empty());
}

#[test]
fn expected_resets_and_repeats_of_one_boot_count_for_nothing() {
    let nodes: Vec<NodeFacts> = (0..4).map(|i| node(i, "2.0.0", "L")).collect();
    let mut engine = Engine::new(only(RuleKind::CohortResets, |r| {
        r.hold_for = Duration::ZERO
    }));
    let updates: Vec<ResetFacts> = nodes.iter().map(|n| reset(n, 1, T0, true)).collect();
    engine.observe(T0, sample(&nodes, updates));
    assert!(engine.evaluate(T0).is_empty(), "an OTA apply is no failure");
    let once = vec![reset(&nodes[0], 7, T0, false)];
    for s in 0..5 {
        engine.observe(T0 + s * SEC, sample(&nodes, once.clone()));
    }
    assert_eq!(engine.resets_in_window(), 1, "one boot heard five times");
}

#[test]
fn a_condition_that_goes_away_before_for_is_cleared_and_never_fires() {
    let nodes: Vec<NodeFacts> = (0..4).map(|i| node(i, "1.0.0", "")).collect();
    let mut engine = Engine::new(only(RuleKind::NodesOffline, |_| {}));
    let mut down = nodes.clone();
    down[0].online = false;
    down[1].online = false;
    engine.observe(T0, sample(&down, vec![]));
    assert_eq!(phases(&engine.evaluate(T0))[0].2, Phase::Pending);
    engine.observe(T0 + 30 * SEC, sample(&down, vec![]));
    assert!(engine.evaluate(T0 + 30 * SEC).is_empty());
    assert_eq!(engine.active()[0].phase, Phase::Pending);
    engine.observe(T0 + 40 * SEC, sample(&nodes, vec![]));
    assert_eq!(phases(&engine.evaluate(T0 + 40 * SEC))[0].2, Phase::Cleared);
    assert!(engine.active().is_empty());
}

#[test]
fn a_firing_alert_stays_firing_between_the_thresholds() {
    let mut nodes: Vec<NodeFacts> = (0..10).map(|i| node(i, "1.0.0", "")).collect();
    let mut engine = Engine::new(only(RuleKind::NodesOffline, |r| {
        r.hold_for = Duration::ZERO;
    }));
    let offline = |nodes: &mut Vec<NodeFacts>, n: usize| {
        for (i, node) in nodes.iter_mut().enumerate() {
            node.online = i >= n;
        }
    };
    offline(&mut nodes, 3); // 30 %: above 25 %
    engine.observe(T0, sample(&nodes, vec![]));
    assert_eq!(phases(&engine.evaluate(T0))[0].2, Phase::Firing);
    offline(&mut nodes, 2); // 20 %: below 25 %, above 10 %
    for s in 1..=10 {
        engine.observe(T0 + s * MIN, sample(&nodes, vec![]));
        assert!(engine.evaluate(T0 + s * MIN).is_empty());
    }
    offline(&mut nodes, 0);
    engine.observe(T0 + 11 * MIN, sample(&nodes, vec![]));
    assert!(
        engine.evaluate(T0 + 11 * MIN).is_empty(),
        "clear, not yet for clear_for"
    );
    engine.observe(T0 + 12 * MIN, sample(&nodes, vec![]));
    let resolved = engine.evaluate(T0 + 12 * MIN);
    assert_eq!(phases(&resolved)[0].2, Phase::Resolved);
    assert_eq!(resolved[0].message, "0 of 10 nodes offline");
}

#[test]
fn resets_in_one_lot_are_a_cluster_and_the_same_spread_over_lots_are_not() {
    let lots = ["A", "B", "C", "D"];
    let nodes: Vec<NodeFacts> = (0..16).map(|i| node(i, "1.0.0", lots[i % 4])).collect();
    let rules = only(RuleKind::LotCluster, |r| r.hold_for = Duration::ZERO);
    // Six resets on three nodes of lot A.
    let in_a: Vec<ResetFacts> = (0..6)
        .map(|k| reset(&nodes[(k % 3) * 4], i64::try_from(k).unwrap(), T0, false))
        .collect();
    let mut engine = Engine::new(rules.clone());
    engine.observe(T0, sample(&nodes, in_a));
    let fired = engine.evaluate(T0);
    assert_eq!(
        phases(&fired),
        [(RuleKind::LotCluster, "A".to_owned(), Phase::Firing)]
    );
    assert!(
        (fired[0].value - 4.0).abs() < 1e-9,
        "all resets, a quarter of the nodes"
    );
    // Six resets on six nodes over the four lots.
    let spread: Vec<ResetFacts> = (0..6)
        .map(|k| reset(&nodes[k], i64::try_from(k).unwrap(), T0, false))
        .collect();
    let mut engine = Engine::new(rules);
    engine.observe(T0, sample(&nodes, spread));
    assert!(engine.evaluate(T0).is_empty());
}

#[test]
fn a_version_whose_nodes_drop_off_faster_than_its_predecessors_fires() {
    let mut nodes: Vec<NodeFacts> = (0..10).map(|i| node(i, "1.9.0", "")).collect();
    nodes.extend((10..20).map(|i| node(i, "1.10.0", "")));
    nodes[10].online = false;
    nodes[11].online = false;
    nodes[13].online = false;
    nodes[0].online = false;
    let crashes = vec![reset(&nodes[12], 1, T0, false)];
    let mut engine = Engine::new(only(RuleKind::VersionDropoff, |r| {
        r.hold_for = Duration::ZERO;
    }));
    engine.observe(T0, sample(&nodes, crashes));
    let fired = engine.evaluate(T0);
    assert_eq!(
        phases(&fired),
        [(RuleKind::VersionDropoff, "1.10.0".to_owned(), Phase::Firing)],
        "1.10.0 follows 1.9.0 (numbers, not text)"
    );
    assert!(
        (fired[0].value - 0.3).abs() < 1e-9,
        "4 of 10 against 1 of 10"
    );
}

#[test]
fn the_outbox_age_and_the_budget_pace_fire_on_their_thresholds() {
    let mut rules = Rules::default();
    for rule in &mut rules.rules {
        rule.enabled = matches!(rule.kind, RuleKind::OutboxAge | RuleKind::BudgetPace);
        rule.hold_for = Duration::ZERO;
    }
    let mut engine = Engine::new(rules);
    let now = T0 + 7 * 3_600 * SEC;
    engine.observe(
        now,
        FleetSample {
            oldest_unsent_ms: Some(T0),
            budget: Some(BudgetFacts {
                projected_month: 120,
                budget: 100,
            }),
            ..FleetSample::default()
        },
    );
    let fired = engine.evaluate(now);
    let kinds: Vec<RuleKind> = fired.iter().map(|t| t.rule).collect();
    assert_eq!(kinds, [RuleKind::OutboxAge, RuleKind::BudgetPace]);
    assert_eq!(fired[0].message, "the oldest unsent reading is 7h old");
    engine.observe(now, FleetSample::default());
    assert!(
        engine.evaluate(now).is_empty(),
        "clear, but not for clear_for yet"
    );
}

#[test]
fn a_modbus_devices_error_rate_is_counted_over_its_window() {
    let mut engine = Engine::new(only(RuleKind::ModbusErrors, |r| {
        r.hold_for = Duration::ZERO;
        r.window = Duration::from_secs(60);
    }));
    let device = |polls, errors| FleetSample {
        devices: vec![DeviceFacts {
            name: "meter".into(),
            polls,
            errors,
        }],
        ..FleetSample::default()
    };
    // An hour of history with 100 errors, then a clean minute: the old errors are outside.
    engine.observe(T0, device(0, 0));
    engine.observe(T0 + 60 * MIN, device(3_600, 100));
    assert!(
        engine.evaluate(T0 + 60 * MIN).is_empty(),
        "100 / 3600 < 20 %"
    );
    engine.observe(T0 + 61 * MIN, device(3_660, 130));
    let fired = engine.evaluate(T0 + 61 * MIN);
    assert_eq!(fired.len(), 1);
    assert!(
        (fired[0].value - 0.5).abs() < 1e-9,
        "30 errors in the last 60 polls"
    );
    assert!(
        fired[0]
            .message
            .contains("30 errors in 60 polls of device meter")
    );
}

#[test]
fn a_disabled_rule_never_fires_and_resolves_an_alert_of_a_cohort_that_went_away() {
    let mut rules = only(RuleKind::NodesOffline, |r| r.hold_for = Duration::ZERO);
    for rule in &mut rules.rules {
        rule.enabled = false;
    }
    let mut nodes = vec![node(0, "1", "")];
    nodes[0].online = false;
    let mut engine = Engine::new(rules);
    engine.observe(T0, sample(&nodes, vec![]));
    assert!(engine.evaluate(T0).is_empty());
}

#[test]
fn the_defaults_hold_every_rule_once_with_consistent_thresholds() {
    let rules = Rules::default();
    assert_eq!(rules.rules.len(), RuleKind::ALL.len());
    for kind in RuleKind::ALL {
        let rule = rules.get(kind).unwrap();
        assert!(
            rule.enabled && rule.resolve_below <= rule.fire_above,
            "{kind:?}"
        );
    }
    assert_eq!(rules.reset_window(), Duration::from_secs(24 * 3_600));
}

#[test]
fn versions_compare_by_their_numbers() {
    use std::cmp::Ordering::*;
    assert_eq!(compare_versions("0.10.0", "0.9.2"), Greater);
    assert_eq!(compare_versions("1.0.0", "1.0.0"), Equal);
    assert_eq!(compare_versions("beta", "alpha"), Greater);
}

#[test]
fn one_hostile_node_rebooting_under_ever_new_firmware_and_lot_names_fires_nothing_and_stays_bounded()
 {
    let mut nodes: Vec<NodeFacts> = (0..8).map(|i| node(i, "1.0.0", "L")).collect();
    let mut rules = Rules::default();
    for rule in &mut rules.rules {
        rule.hold_for = Duration::ZERO;
    }
    let mut engine = Engine::new(rules);
    let hostile = nodes[0].clone();
    let mut boot = 0;
    // 70,000 boots in 14 rounds: past the window's cap.
    for round in 0..14 {
        let now = T0 + round * SEC;
        let resets: Vec<ResetFacts> = (0..5_000)
            .map(|_| {
                boot += 1;
                ResetFacts {
                    fw_version: format!("9.9.{boot}"),
                    lot: format!("LOT-{boot}"),
                    ..reset(&hostile, boot, now, false)
                }
            })
            .collect();
        nodes[0].fw_version = format!("9.9.{boot}");
        engine.observe(now, sample(&nodes, resets));
        let fired = engine.evaluate(now);
        assert!(fired.is_empty(), "{fired:?}");
        assert!(engine.resets_in_window() <= MAX_WINDOW_RESETS);
    }
    assert_eq!(engine.resets_in_window(), MAX_WINDOW_RESETS);
}

// --- Properties ---

fn rule_with(hold_s: u64, clear_s: u64) -> Rule {
    Rule {
        hold_for: Duration::from_secs(hold_s),
        clear_for: Duration::from_secs(clear_s),
        fire_above: 0.5,
        resolve_below: 0.2,
        ..Rule::default_for(RuleKind::NodesOffline)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Fed a random value every few seconds, a tracker fires only after the value stayed above
    /// `fire_above` for `for`, resolves only after it stayed below `resolve_below` for
    /// `clear_for`, and goes through pending again before it fires again.
    #[test]
    fn the_tracker_keeps_its_hysteresis(
        hold_s in 0u64..120,
        clear_s in 0u64..120,
        steps in proptest::collection::vec((1i64..30, 0u8..=10), 1..200),
    ) {
        let rule = rule_with(hold_s, clear_s);
        let mut tracker = Tracker::Inactive;
        let mut now = T0;
        let mut history: Vec<(i64, f64)> = Vec::new();
        let mut firing = false;
        let mut last_fired_or_resolved: Option<Phase> = None;
        for (dt, tenth) in steps {
            now += dt * SEC;
            let value = f64::from(tenth) / 10.0;
            history.push((now, value));
            let active = value > rule.fire_above;
            let clear = value < rule.resolve_below;
            let held_since = |ok: &dyn Fn(f64) -> bool, need: Duration| {
                // The value satisfied `ok` at every evaluation in the last `need`, and at one
                // evaluation at least `need` ago (the run's start).
                let start = history.iter().rposition(|&(_, v)| !ok(v)).map_or(0, |i| i + 1);
                start < history.len()
                    && now - history[start].0 >= i64::try_from(need.as_millis()).unwrap()
            };
            match tracker.step(now, active, clear, &rule) {
                Some(Phase::Firing) => {
                    prop_assert!(!firing);
                    prop_assert!(held_since(&|v| v > rule.fire_above, rule.hold_for));
                    prop_assert_ne!(last_fired_or_resolved, Some(Phase::Firing));
                    firing = true;
                    last_fired_or_resolved = Some(Phase::Firing);
                }
                Some(Phase::Resolved) => {
                    prop_assert!(firing);
                    prop_assert!(held_since(&|v| v < rule.resolve_below, rule.clear_for));
                    firing = false;
                    last_fired_or_resolved = Some(Phase::Resolved);
                }
                Some(Phase::Pending | Phase::Cleared) => prop_assert!(!firing),
                None => {}
            }
            prop_assert_eq!(firing, matches!(tracker, Tracker::Firing { .. }));
        }
    }

    /// Whatever the nodes do, there is at most one alert per rule and cohort: a cohort's
    /// transitions alternate firing and resolved, and each firing came out of a pending.
    #[test]
    fn at_most_one_alert_per_rule_and_cohort(
        events in proptest::collection::vec((0usize..24, 0u8..4, any::<bool>()), 1..300),
    ) {
        let versions = ["1.0.0", "1.1.0", "2.0.0"];
        let lots = ["A", "B", "C", "D"];
        let mut nodes: Vec<NodeFacts> =
            (0..24).map(|i| node(i, versions[i % 3], lots[i % 4])).collect();
        let mut rules = Rules::default();
        for rule in &mut rules.rules {
            rule.hold_for = Duration::from_secs(20);
            rule.clear_for = Duration::from_secs(20);
            rule.window = Duration::from_secs(120);
        }
        let mut engine = Engine::new(rules);
        let mut now = T0;
        let mut state: BTreeMap<(RuleKind, String), Phase> = BTreeMap::new();
        for (boot, (who, what, expected)) in events.into_iter().enumerate() {
            now += 5 * SEC;
            let mut resets = Vec::new();
            match what {
                0 => resets.push(reset(&nodes[who], i64::try_from(boot).unwrap(), now, expected)),
                1 => nodes[who].online = !nodes[who].online,
                _ => {}
            }
            engine.observe(now, sample(&nodes, resets));
            for t in engine.evaluate(now) {
                let key = (t.rule, t.cohort.clone());
                let before = state.get(&key).copied();
                let allowed = match t.phase {
                    Phase::Pending => matches!(before, None | Some(Phase::Resolved | Phase::Cleared)),
                    Phase::Firing => before == Some(Phase::Pending),
                    Phase::Resolved => before == Some(Phase::Firing),
                    Phase::Cleared => before == Some(Phase::Pending),
                };
                prop_assert!(allowed, "{:?} after {:?} for {:?}", t.phase, before, key);
                state.insert(key, t.phase);
            }
            let active = engine.active();
            let keys: BTreeSet<(RuleKind, String)> =
                active.iter().map(|a| (a.rule, a.cohort.clone())).collect();
            prop_assert_eq!(keys.len(), active.len());
        }
    }

    /// A lot with at least `min_resets` unexpected resets on `min_nodes` of its nodes, and no
    /// other failures, is a cluster once the fleet has four lots or more; the same number of
    /// resets spread over the lots round-robin never is.
    #[test]
    fn the_lot_rule_fires_for_a_cluster_and_not_for_the_same_failures_spread(
        lot_count in 4usize..9,
        per_lot in 2usize..10,
        resets in 3usize..40,
    ) {
        let nodes: Vec<NodeFacts> = (0..lot_count * per_lot)
            .map(|i| node(i, "1.0.0", &format!("lot-{}", i % lot_count)))
            .collect();
        let rules = only(RuleKind::LotCluster, |r| r.hold_for = Duration::ZERO);
        let boot = |k: usize| i64::try_from(k).unwrap();
        // Cluster: the resets on the nodes of lot 0 (index multiple of lot_count), in turn.
        let cluster: Vec<ResetFacts> = (0..resets)
            .map(|k| reset(&nodes[(k % per_lot) * lot_count], boot(k), T0, false))
            .collect();
        let mut engine = Engine::new(rules.clone());
        engine.observe(T0, sample(&nodes, cluster));
        let fired = phases(&engine.evaluate(T0));
        prop_assert_eq!(fired, vec![(RuleKind::LotCluster, "lot-0".to_owned(), Phase::Firing)]);
        // Spread: node k % n, so lot k % lot_count: round-robin over the lots.
        let spread: Vec<ResetFacts> = (0..resets)
            .map(|k| reset(&nodes[k % nodes.len()], boot(k), T0, false))
            .collect();
        let mut engine = Engine::new(rules);
        engine.observe(T0, sample(&nodes, spread));
        prop_assert!(engine.evaluate(T0).is_empty());
    }
}
