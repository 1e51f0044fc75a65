//! Alerts on aggregates and rates: the fleet's facts and time in, alert transitions out.
//!
//! Design: [`Engine`] owns the rules ([`Rules`], from `[alerts]`), a sliding window of the
//! nodes' unexpected resets, a sliding window of each Modbus device's poll and error counters,
//! the latest fleet sample, and one [`Tracker`] per rule and cohort. It never reads a clock or a
//! store: the adapter (`outpost::io::alerting`) gathers a [`FleetSample`] every few seconds,
//! hands it in with [`Engine::observe`] and carries out what [`Engine::evaluate`] returns
//! (raise, resolve, log, publish).
//!
//! Each rule measures a value per cohort (a firmware version, a lot, a device, the fleet, the
//! gateway). Per rule and cohort there is at most one alert, whatever the number of nodes
//! behind it: a hundred crash-looping nodes of one firmware make one alert about that firmware.
//!
//! ```text
//!             value > fire_above                 held `for`
//!  inactive ─────────────────────────► pending ─────────────────► firing
//!     ▲  ◄───────────────────────────────┘  (not above: cleared)    │
//!     │                                                             │ value < resolve_below,
//!     └──────────────────── resolved ◄──────────────────────────────┘ held `clear_for`
//! ```
//!
//! Hysteresis: a firing alert stays firing while its value is between `resolve_below` and
//! `fire_above`, and resolves only once the value stayed below `resolve_below` for `clear_for`;
//! a new episode goes through `pending` again. A rule's guards (`min_nodes`, `min_resets`,
//! `min_polls`) must hold for it to fire; when they no longer hold, the cohort counts as clear.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// Unexpected resets kept in the window at most: a fleet of crash-looping nodes (or one hostile
/// node rebooting as fast as the link lets it) cannot grow the engine without bound. The oldest
/// go first; they are the first to leave the window anyway.
pub const MAX_WINDOW_RESETS: usize = 65_536;
/// Counter samples kept per Modbus device (one per evaluation): a 15-minute window at a 5 s
/// interval is 180.
const MAX_DEVICE_SAMPLES: usize = 4_096;

/// The rules the engine knows. Each has its own table in `[alerts]`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Unexpected resets in the window per node of a firmware-version cohort.
    CohortResets,
    /// The fraction of the fleet's nodes that are offline.
    NodesOffline,
    /// How much faster a firmware version's nodes drop off (offline, or an unexpected reset in
    /// the window) than its predecessor's: the difference of the two fractions.
    VersionDropoff,
    /// The age of the oldest reading the cloud has not acknowledged, in seconds.
    OutboxAge,
    /// The month's projected uplink bytes over the data budget.
    BudgetPace,
    /// A Modbus device's errors per poll over the window.
    ModbusErrors,
    /// How much one lot's share of the fleet's unexpected resets exceeds its share of nodes.
    LotCluster,
}

impl RuleKind {
    pub const ALL: [RuleKind; 7] = [
        RuleKind::CohortResets,
        RuleKind::NodesOffline,
        RuleKind::VersionDropoff,
        RuleKind::OutboxAge,
        RuleKind::BudgetPace,
        RuleKind::ModbusErrors,
        RuleKind::LotCluster,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::CohortResets => "cohort_resets",
            RuleKind::NodesOffline => "nodes_offline",
            RuleKind::VersionDropoff => "version_dropoff",
            RuleKind::OutboxAge => "outbox_age",
            RuleKind::BudgetPace => "budget_pace",
            RuleKind::ModbusErrors => "modbus_errors",
            RuleKind::LotCluster => "lot_cluster",
        }
    }

    /// What a cohort of this rule is.
    #[must_use]
    pub fn cohort_kind(self) -> &'static str {
        match self {
            RuleKind::CohortResets | RuleKind::VersionDropoff => "firmware",
            RuleKind::NodesOffline => "fleet",
            RuleKind::OutboxAge | RuleKind::BudgetPace => "gateway",
            RuleKind::ModbusErrors => "device",
            RuleKind::LotCluster => "lot",
        }
    }
}

/// One rule, checked: when it fires and when it resolves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    pub kind: RuleKind,
    pub enabled: bool,
    /// Fires once the value stayed above this for `hold_for`.
    pub fire_above: f64,
    /// Resolves once the value stayed below this for `clear_for` (at most `fire_above`).
    pub resolve_below: f64,
    /// `for`: how long the condition must hold before the alert fires (0: at once).
    pub hold_for: Duration,
    pub clear_for: Duration,
    /// The sliding window the rule counts events in (resets, polls).
    pub window: Duration,
    /// Nodes the cohort must have with the event (resets, dropping off) for the rule to fire.
    pub min_nodes: u32,
    /// Events (resets, polls) the cohort must have in the window for the rule to fire.
    pub min_events: u32,
}

impl Rule {
    /// The rule's defaults: sensible for a site of a few to a few hundred nodes.
    #[must_use]
    pub fn default_for(kind: RuleKind) -> Rule {
        const MIN: u64 = 60;
        const HOUR: u64 = 3_600;
        let rule =
            |fire_above, resolve_below, hold_for, clear_for, window, min_nodes, min_events| Rule {
                kind,
                enabled: true,
                fire_above,
                resolve_below,
                hold_for: Duration::from_secs(hold_for),
                clear_for: Duration::from_secs(clear_for),
                window: Duration::from_secs(window),
                min_nodes,
                min_events,
            };
        match kind {
            // 5 % of the cohort's nodes reset unexpectedly within an hour, by two nodes at least.
            RuleKind::CohortResets => rule(0.05, 0.02, 5 * MIN, 15 * MIN, HOUR, 2, 0),
            RuleKind::NodesOffline => rule(0.25, 0.10, 5 * MIN, 5 * MIN, 0, 1, 0),
            RuleKind::VersionDropoff => rule(0.20, 0.10, 15 * MIN, 30 * MIN, 24 * HOUR, 3, 0),
            // The oldest unsent reading six hours old; resolved below one hour.
            RuleKind::OutboxAge => rule(6.0 * 3600.0, 3600.0, 0, 5 * MIN, 0, 0, 0),
            RuleKind::BudgetPace => rule(1.0, 0.95, HOUR, HOUR, 0, 0, 0),
            RuleKind::ModbusErrors => rule(0.20, 0.05, 5 * MIN, 10 * MIN, 15 * MIN, 0, 10),
            // A lot with three times its share of the resets, three resets on two nodes at least.
            RuleKind::LotCluster => rule(3.0, 2.0, 5 * MIN, HOUR, 24 * HOUR, 2, 3),
        }
    }
}

/// `[alerts]`, checked: every rule (each kind once, in [`RuleKind::ALL`] order) and how often
/// the adapter evaluates them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub interval: Duration,
    pub rules: Vec<Rule>,
}

/// How often the adapter gathers a sample and evaluates, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            interval: DEFAULT_INTERVAL,
            rules: RuleKind::ALL
                .iter()
                .map(|&k| Rule::default_for(k))
                .collect(),
        }
    }
}

impl Rules {
    #[must_use]
    pub fn get(&self, kind: RuleKind) -> Option<&Rule> {
        self.rules.iter().find(|r| r.kind == kind)
    }

    /// The longest window an enabled reset rule counts in: how far back the adapter loads the
    /// reset history at start.
    #[must_use]
    pub fn reset_window(&self) -> Duration {
        self.rules
            .iter()
            .filter(|r| {
                r.enabled
                    && matches!(
                        r.kind,
                        RuleKind::CohortResets | RuleKind::VersionDropoff | RuleKind::LotCluster
                    )
            })
            .map(|r| r.window)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

/// A node in the registry, as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub uid: String,
    pub fw_version: String,
    pub lot: String,
    /// Heard from within its port's `offline_after` (`site::node_state`).
    pub online: bool,
}

/// One boot of a node (a row of the reset history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetFacts {
    pub uid: String,
    pub boot_id: i64,
    /// When the gateway heard of it (Unix ms).
    pub at_ms: i64,
    /// A reset the node or its operator asked for (power on, software, OTA apply).
    pub expected: bool,
    /// The firmware that booted, and the node's lot.
    pub fw_version: String,
    pub lot: String,
}

/// A Modbus device's counters since the daemon started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    pub name: String,
    pub polls: u64,
    /// Timeouts, transport, CRC, frame, decode errors and exceptions.
    pub errors: u64,
}

/// The data budget as the cost meter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetFacts {
    pub projected_month: u64,
    pub budget: u64,
}

/// What the adapter gathered at one time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSample {
    /// Every node in the registry (revoked ones left out).
    pub nodes: Vec<NodeFacts>,
    /// Resets heard of since the previous sample (older ones and repeats are ignored).
    pub new_resets: Vec<ResetFacts>,
    /// The oldest reading not acknowledged by the cloud (Unix ms).
    pub oldest_unsent_ms: Option<i64>,
    /// `None` without a data budget.
    pub budget: Option<BudgetFacts>,
    pub devices: Vec<DeviceFacts>,
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Above its threshold, not yet for `for`.
    Pending,
    Firing,
    /// Was firing; stayed clear for `clear_for`.
    Resolved,
    /// Was pending; fell back below its threshold before `for` passed (never fired).
    Cleared,
}

/// One change of one alert (a rule and a cohort), for the adapter to raise, resolve, log and
/// publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub rule: RuleKind,
    pub cohort: String,
    pub phase: Phase,
    pub at_ms: i64,
    /// The value at the transition, and the rule's thresholds.
    pub value: f64,
    pub fire_above: f64,
    pub resolve_below: f64,
    /// What was measured, in words ("5 unexpected resets on 3 of 4 nodes in 1h").
    pub message: String,
}

/// A rule's value for one cohort at one evaluation.
#[derive(Debug, Clone, PartialEq)]
struct Measure {
    value: f64,
    /// The rule's guards hold (enough nodes, events).
    eligible: bool,
    message: String,
}

/// The hysteresis of one alert: inactive, pending since, or firing (clear since).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tracker {
    #[default]
    Inactive,
    Pending {
        since_ms: i64,
    },
    Firing {
        since_ms: i64,
        clear_since_ms: Option<i64>,
    },
}

impl Tracker {
    /// Advances on one evaluation at `now_ms`: the value is above `fire_above` and the guards
    /// hold (`active`), or below `resolve_below` or the guards fail (`clear`). Returns the phase
    /// entered, if any.
    pub fn step(&mut self, now_ms: i64, active: bool, clear: bool, rule: &Rule) -> Option<Phase> {
        let held = |since: i64, need: Duration| {
            u128::try_from(now_ms.saturating_sub(since)).unwrap_or(0) >= need.as_millis()
        };
        match *self {
            Tracker::Inactive if active => {
                if rule.hold_for.is_zero() {
                    *self = Tracker::Firing {
                        since_ms: now_ms,
                        clear_since_ms: None,
                    };
                    Some(Phase::Firing)
                } else {
                    *self = Tracker::Pending { since_ms: now_ms };
                    Some(Phase::Pending)
                }
            }
            Tracker::Inactive => None,
            Tracker::Pending { .. } if !active => {
                *self = Tracker::Inactive;
                Some(Phase::Cleared)
            }
            Tracker::Pending { since_ms } => held(since_ms, rule.hold_for).then(|| {
                *self = Tracker::Firing {
                    since_ms: now_ms,
                    clear_since_ms: None,
                };
                Phase::Firing
            }),
            Tracker::Firing {
                since_ms,
                clear_since_ms,
            } => {
                if !clear {
                    *self = Tracker::Firing {
                        since_ms,
                        clear_since_ms: None,
                    };
                    return None;
                }
                let clear_since = clear_since_ms.unwrap_or(now_ms);
                if held(clear_since, rule.clear_for) {
                    *self = Tracker::Inactive;
                    Some(Phase::Resolved)
                } else {
                    *self = Tracker::Firing {
                        since_ms,
                        clear_since_ms: Some(clear_since),
                    };
                    None
                }
            }
        }
    }
}

/// An unexpected reset in the window.
#[derive(Debug, Clone)]
struct WindowReset {
    uid: String,
    boot_id: i64,
    at_ms: i64,
    fw_version: String,
    lot: String,
}

/// One pending or firing alert, with its latest value, for the status page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Active {
    pub rule: RuleKind,
    pub cohort: String,
    pub phase: Phase,
    /// Since when it is in that phase (Unix ms).
    pub since_ms: i64,
    pub value: f64,
    pub fire_above: f64,
    pub resolve_below: f64,
    pub message: String,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Engine {
    rules: Rules,
    /// Unexpected resets, oldest first, and their identities (for repeats).
    resets: VecDeque<WindowReset>,
    reset_ids: BTreeSet<(String, i64)>,
    /// Per device: (time, polls, errors), oldest first.
    devices: BTreeMap<String, VecDeque<(i64, u64, u64)>>,
    latest: FleetSample,
    trackers: BTreeMap<(RuleKind, String), (Tracker, Measure)>,
}

impl Engine {
    #[must_use]
    pub fn new(rules: Rules) -> Engine {
        Engine {
            rules,
            resets: VecDeque::new(),
            reset_ids: BTreeSet::new(),
            devices: BTreeMap::new(),
            latest: FleetSample::default(),
            trackers: BTreeMap::new(),
        }
    }

    #[must_use]
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Takes a sample gathered at `now_ms`: the registry, new resets, the outbox, the budget,
    /// the devices' counters.
    pub fn observe(&mut self, now_ms: i64, mut sample: FleetSample) {
        let window_start = now_ms.saturating_sub(duration_ms(self.rules.reset_window()));
        let mut new: Vec<ResetFacts> = std::mem::take(&mut sample.new_resets)
            .into_iter()
            .filter(|r| !r.expected && r.at_ms >= window_start)
            .collect();
        new.sort_by_key(|r| r.at_ms);
        for reset in new {
            if !self.reset_ids.insert((reset.uid.clone(), reset.boot_id)) {
                continue;
            }
            // Kept in time order; a reset heard late goes in its place.
            let at = self.resets.partition_point(|r| r.at_ms <= reset.at_ms);
            self.resets.insert(
                at,
                WindowReset {
                    uid: reset.uid,
                    boot_id: reset.boot_id,
                    at_ms: reset.at_ms,
                    fw_version: reset.fw_version,
                    lot: reset.lot,
                },
            );
            if self.resets.len() > MAX_WINDOW_RESETS {
                self.forget_oldest_reset();
            }
        }
        while self.resets.front().is_some_and(|r| r.at_ms < window_start) {
            self.forget_oldest_reset();
        }

        let longest = self
            .rules
            .get(RuleKind::ModbusErrors)
            .map_or(0, |r| duration_ms(r.window));
        let present: BTreeSet<&str> = sample.devices.iter().map(|d| d.name.as_str()).collect();
        self.devices
            .retain(|name, _| present.contains(name.as_str()));
        for device in &sample.devices {
            let history = self.devices.entry(device.name.clone()).or_default();
            // Counters that went back: the device was added again; its history starts over.
            if history
                .back()
                .is_some_and(|&(_, polls, errors)| device.polls < polls || device.errors < errors)
            {
                history.clear();
            }
            history.push_back((now_ms, device.polls, device.errors));
            // Keep one sample at or before the window's start: the base of the rate.
            while (history.len() > 2 && history[1].0 <= now_ms.saturating_sub(longest))
                || history.len() > MAX_DEVICE_SAMPLES
            {
                history.pop_front();
            }
        }
        self.latest = sample;
    }

    fn forget_oldest_reset(&mut self) {
        if let Some(old) = self.resets.pop_front() {
            self.reset_ids.remove(&(old.uid, old.boot_id));
        }
    }

    /// Unexpected resets in the window now (for the benchmark and the page).
    #[must_use]
    pub fn resets_in_window(&self) -> usize {
        self.resets.len()
    }

    /// Evaluates every enabled rule at `now_ms` on what was observed: the alerts that changed.
    pub fn evaluate(&mut self, now_ms: i64) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for rule in self.rules.rules.clone() {
            let measures = if rule.enabled {
                self.measure(&rule, now_ms)
            } else {
                BTreeMap::new()
            };
            // The cohorts measured now, and the ones with an alert under way that may have
            // left (a firmware nobody runs any more is clear).
            let mut cohorts: BTreeSet<String> = measures.keys().cloned().collect();
            cohorts.extend(
                self.trackers
                    .keys()
                    .filter(|(kind, _)| *kind == rule.kind)
                    .map(|(_, cohort)| cohort.clone()),
            );
            for cohort in cohorts {
                let measure = measures.get(&cohort).cloned().unwrap_or_else(|| Measure {
                    value: 0.0,
                    eligible: false,
                    message: format!(
                        "nothing to measure any more for {} {cohort}",
                        rule.kind.cohort_kind()
                    ),
                });
                let active = measure.eligible && measure.value > rule.fire_above;
                let clear = !measure.eligible || measure.value < rule.resolve_below;
                let key = (rule.kind, cohort);
                let (mut tracker, _) = self
                    .trackers
                    .remove(&key)
                    .unwrap_or((Tracker::Inactive, measure.clone()));
                let phase = tracker.step(now_ms, active, clear, &rule);
                if let Some(phase) = phase {
                    transitions.push(Transition {
                        rule: rule.kind,
                        cohort: key.1.clone(),
                        phase,
                        at_ms: now_ms,
                        value: measure.value,
                        fire_above: rule.fire_above,
                        resolve_below: rule.resolve_below,
                        message: measure.message.clone(),
                    });
                }
                if tracker != Tracker::Inactive {
                    self.trackers.insert(key, (tracker, measure));
                }
            }
        }
        transitions
    }

    /// The pending and firing alerts with their latest values.
    #[must_use]
    pub fn active(&self) -> Vec<Active> {
        self.trackers
            .iter()
            .filter_map(|((kind, cohort), (tracker, measure))| {
                let (phase, since_ms) = match *tracker {
                    Tracker::Inactive => return None,
                    Tracker::Pending { since_ms } => (Phase::Pending, since_ms),
                    Tracker::Firing { since_ms, .. } => (Phase::Firing, since_ms),
                };
                let rule = self.rules.get(*kind)?;
                Some(Active {
                    rule: *kind,
                    cohort: cohort.clone(),
                    phase,
                    since_ms,
                    value: measure.value,
                    fire_above: rule.fire_above,
                    resolve_below: rule.resolve_below,
                    message: measure.message.clone(),
                })
            })
            .collect()
    }

    fn measure(&self, rule: &Rule, now_ms: i64) -> BTreeMap<String, Measure> {
        let since = now_ms.saturating_sub(duration_ms(rule.window));
        let window = || {
            self.resets
                .iter()
                .skip(self.resets.partition_point(|r| r.at_ms < since))
        };
        let nodes = &self.latest.nodes;
        match rule.kind {
            RuleKind::CohortResets => {
                // Every version the fleet runs, so that a quiet one says so when it resolves.
                let mut by_version: BTreeMap<&str, (u64, BTreeSet<&str>)> = nodes
                    .iter()
                    .map(|n| (n.fw_version.as_str(), (0, BTreeSet::new())))
                    .collect();
                for reset in window() {
                    let entry = by_version.entry(&reset.fw_version).or_default();
                    entry.0 += 1;
                    entry.1.insert(&reset.uid);
                }
                let sizes = count_by(nodes.iter().map(|n| n.fw_version.as_str()));
                by_version
                    .into_iter()
                    .map(|(version, (resets, failing))| {
                        let size = sizes.get(version).copied().unwrap_or(0).max(failing.len());
                        let value = ratio(resets, size);
                        let message = format!(
                            "{resets} unexpected resets on {} of {size} nodes of firmware {version} in {}",
                            failing.len(),
                            span(rule.window)
                        );
                        let eligible = failing.len() >= as_usize(rule.min_nodes)
                            && resets >= u64::from(rule.min_events);
                        (version.to_owned(), Measure { value, eligible, message })
                    })
                    .collect()
            }
            RuleKind::NodesOffline => {
                if nodes.is_empty() {
                    return BTreeMap::new();
                }
                let offline = nodes.iter().filter(|n| !n.online).count();
                let measure = Measure {
                    value: ratio(offline as u64, nodes.len()),
                    eligible: offline >= as_usize(rule.min_nodes),
                    message: format!("{offline} of {} nodes offline", nodes.len()),
                };
                BTreeMap::from([("fleet".to_owned(), measure)])
            }
            RuleKind::VersionDropoff => {
                let mut dropped: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
                let version_of: BTreeMap<&str, &str> = nodes
                    .iter()
                    .map(|n| (n.uid.as_str(), n.fw_version.as_str()))
                    .collect();
                for node in nodes.iter().filter(|n| !n.online) {
                    dropped
                        .entry(&node.fw_version)
                        .or_default()
                        .insert(&node.uid);
                }
                for reset in window() {
                    // Counted against the version the node runs now and booted then.
                    if version_of.get(reset.uid.as_str()) == Some(&reset.fw_version.as_str()) {
                        dropped
                            .entry(&reset.fw_version)
                            .or_default()
                            .insert(&reset.uid);
                    }
                }
                let sizes = count_by(nodes.iter().map(|n| n.fw_version.as_str()));
                let mut versions: Vec<&str> = sizes
                    .iter()
                    .filter(|&(_, &n)| n >= as_usize(rule.min_nodes).max(1))
                    .map(|(&v, _)| v)
                    .collect();
                versions.sort_by(|a, b| compare_versions(a, b));
                let rate = |v: &str| {
                    let n = dropped.get(v).map_or(0, BTreeSet::len);
                    (n, ratio(n as u64, sizes[v]))
                };
                versions
                    .windows(2)
                    .map(|pair| {
                        let (older, newer) = (pair[0], pair[1]);
                        let (n_new, r_new) = rate(newer);
                        let (n_old, r_old) = rate(older);
                        let message = format!(
                            "{n_new} of {} nodes of firmware {newer} dropped off (offline or an unexpected reset in {}), against {n_old} of {} of {older}",
                            sizes[newer],
                            span(rule.window),
                            sizes[older]
                        );
                        let measure = Measure {
                            value: r_new - r_old,
                            eligible: n_new >= 1,
                            message,
                        };
                        (newer.to_owned(), measure)
                    })
                    .collect()
            }
            RuleKind::OutboxAge => self
                .latest
                .oldest_unsent_ms
                .map(|oldest| {
                    let age_s = now_ms.saturating_sub(oldest).max(0) as f64 / 1000.0;
                    let message = format!(
                        "the oldest unsent reading is {} old",
                        span(Duration::from_secs_f64(age_s))
                    );
                    let measure = Measure {
                        value: age_s,
                        eligible: true,
                        message,
                    };
                    BTreeMap::from([("gateway".to_owned(), measure)])
                })
                .unwrap_or_default(),
            RuleKind::BudgetPace => self
                .latest
                .budget
                .filter(|b| b.budget > 0)
                .map(|b| {
                    let measure = Measure {
                        value: b.projected_month as f64 / b.budget as f64,
                        eligible: true,
                        message: format!(
                            "the month is projected at {} bytes against a budget of {}",
                            b.projected_month, b.budget
                        ),
                    };
                    BTreeMap::from([("gateway".to_owned(), measure)])
                })
                .unwrap_or_default(),
            RuleKind::ModbusErrors => self
                .devices
                .iter()
                .filter_map(|(name, history)| {
                    let &(_, polls_now, errors_now) = history.back()?;
                    // The base: the newest sample at or before the window's start, else the
                    // oldest there is.
                    let base = history
                        .iter()
                        .rev()
                        .find(|s| s.0 <= since)
                        .or(history.front())?;
                    let polls = polls_now - base.1;
                    let errors = errors_now - base.2;
                    let measure = Measure {
                        value: if polls == 0 {
                            0.0
                        } else {
                            errors as f64 / polls as f64
                        },
                        eligible: polls >= u64::from(rule.min_events),
                        message: format!(
                            "{errors} errors in {polls} polls of device {name} in {}",
                            span(rule.window)
                        ),
                    };
                    Some((name.clone(), measure))
                })
                .collect(),
            RuleKind::LotCluster => {
                let mut by_lot: BTreeMap<&str, (u64, BTreeSet<&str>)> = nodes
                    .iter()
                    .filter(|n| !n.lot.is_empty())
                    .map(|n| (n.lot.as_str(), (0, BTreeSet::new())))
                    .collect();
                let mut total = 0u64;
                let mut fleet_uids: BTreeSet<&str> = nodes.iter().map(|n| n.uid.as_str()).collect();
                for reset in window() {
                    total += 1;
                    fleet_uids.insert(&reset.uid);
                    // Nodes without a lot are no lot's cluster; they count in the fleet's.
                    if !reset.lot.is_empty() {
                        let entry = by_lot.entry(&reset.lot).or_default();
                        entry.0 += 1;
                        entry.1.insert(&reset.uid);
                    }
                }
                let sizes = count_by(nodes.iter().map(|n| n.lot.as_str()));
                let fleet = fleet_uids.len();
                by_lot
                    .into_iter()
                    .map(|(lot, (resets, failing))| {
                        let size = sizes.get(lot).copied().unwrap_or(0).max(failing.len());
                        // Its share of the resets over its share of the nodes: 1 when failures
                        // are spread evenly, the fleet's size over the lot's when all are in it.
                        let value = if resets == 0 {
                            0.0
                        } else {
                            ratio(resets, 1) / total as f64 / ratio(size as u64, fleet)
                        };
                        let message = format!(
                            "lot {lot}: {resets} of the fleet's {total} unexpected resets in {} on {} of its {size} nodes ({size} of {fleet} nodes)",
                            span(rule.window),
                            failing.len()
                        );
                        let eligible = failing.len() >= as_usize(rule.min_nodes)
                            && resets >= u64::from(rule.min_events);
                        (lot.to_owned(), Measure { value, eligible, message })
                    })
                    .collect()
            }
        }
    }
}

fn count_by<'a>(items: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}

#[allow(clippy::cast_precision_loss)] // counts of nodes and resets: far below 2^52
fn ratio(part: u64, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn as_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Orders firmware versions by their dotted numbers (`0.10.0` after `0.9.2`); text otherwise.
#[must_use]
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |v: &str| -> Option<Vec<u64>> { v.split('.').map(|p| p.parse().ok()).collect() };
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// `1h`, `15m`, `90s`, `2h30m`: a window or an age in words.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    let mut out = String::new();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if sec > 0 || out.is_empty() {
        let _ = write!(out, "{sec}s");
    }
    out
}

#[cfg(test)]
mod tests;
