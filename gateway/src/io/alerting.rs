//! The fleet alert rules' adapter: every `alerts.interval` it gathers a sample (the registry and
//! new resets from the store, the outbox's oldest unsent reading, the budget and the Modbus
//! counters from the telemetry), hands it to `outpost_core::alerting::Engine`, and carries out
//! the transitions: logged (warn when firing, info otherwise: journald under systemd) and
//! recorded in the telemetry, which wakes the uplink to publish them at once on
//! `outpost/{id}/alerts` and shows them on the status page. It decides nothing itself.

use std::collections::HashMap;
use std::time::Duration;

use outpost_core::alerting::{
    BudgetFacts, DeviceFacts, Engine, FleetSample, NodeFacts, Phase, ResetFacts, Rules, Transition,
};
use outpost_core::site::{self, NodeState};
use outpost_core::telemetry::{AlertKey, Event, RuleDetail};
use tokio_util::sync::CancellationToken;

use crate::io::store::alerting::{FleetNode, ResetRow};
use crate::io::store::{Readers, StoreError};
use crate::io::telemetry::TelemetryHub;
use crate::io::wall_clock;

/// Resets read at most per round; more wait for the next round (the cursor moves on).
const RESETS_PER_ROUND: usize = outpost_core::alerting::MAX_WINDOW_RESETS;

/// What the alerting task reads and where its alerts go.
#[derive(Debug, Clone)]
pub struct AlertingIo {
    pub readers: Readers,
    pub telemetry: TelemetryHub,
    /// Each port's `offline_after`, by path as the registry records it.
    pub offline_after: HashMap<String, Duration>,
}

/// Evaluates the rules every `rules.interval` until `shutdown`.
pub async fn run(rules: Rules, io: AlertingIo, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(rules.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = Round::new(rules);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        round.run(&io).await;
    }
}

/// The engine and the cursor into the reset history, between rounds.
#[derive(Debug)]
pub struct Round {
    engine: Engine,
    reset_window_ms: i64,
    /// The newest `node_resets` id handed to the engine.
    after_id: i64,
    /// The last read failed (logged once until a read succeeds again).
    failing: bool,
}

impl Round {
    #[must_use]
    pub fn new(rules: Rules) -> Round {
        Round {
            reset_window_ms: i64::try_from(rules.reset_window().as_millis()).unwrap_or(i64::MAX),
            engine: Engine::new(rules),
            after_id: 0,
            failing: false,
        }
    }

    /// One round: gather, evaluate, carry out. The transitions, for tests and benchmarks.
    pub async fn run(&mut self, io: &AlertingIo) -> Vec<Transition> {
        let now_ms = wall_clock::unix_ms();
        let (after, since) = (self.after_id, now_ms.saturating_sub(self.reset_window_ms));
        let read = io
            .readers
            .read(move |r| {
                Ok((
                    r.fleet_nodes()?,
                    r.resets_after(after, since, RESETS_PER_ROUND)?,
                    r.outbox()?.oldest_unsent_ms,
                ))
            })
            .await;
        let (nodes, resets, oldest_unsent_ms) = match read {
            Ok(read) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(message = "The alert rules read the store again.");
                }
                read
            }
            Err(error) => {
                self.note_failure(&error);
                return Vec::new();
            }
        };
        if let Some(last) = resets.last() {
            self.after_id = last.id;
        }
        let (budget, devices) = io.telemetry.with(|t| {
            let cost = t.cost();
            let budget = (cost.budget > 0).then_some(BudgetFacts {
                projected_month: cost.projected_month,
                budget: cost.budget,
            });
            let devices = t
                .devices()
                .iter()
                .map(|d| DeviceFacts {
                    name: d.name.clone(),
                    polls: d.health.polls(),
                    errors: d.health.timeouts()
                        + d.health.transport_errors()
                        + d.health.crc_errors()
                        + d.health.frame_errors()
                        + d.health.decode_errors()
                        + d.health.exceptions().values().sum::<u64>(),
                })
                .collect();
            (budget, devices)
        });
        let sample = FleetSample {
            nodes: nodes
                .into_iter()
                .filter_map(|n| fleet_node(n, now_ms, &io.offline_after))
                .collect(),
            new_resets: resets.into_iter().map(reset_facts).collect(),
            oldest_unsent_ms,
            budget,
            devices,
        };
        self.engine.observe(now_ms, sample);
        let transitions = self.engine.evaluate(now_ms);
        for transition in &transitions {
            log(transition);
            io.telemetry.record(Event::RuleAlert {
                at_ms: transition.at_ms,
                key: AlertKey::rule(transition.rule, &transition.cohort),
                phase: transition.phase,
                message: transition.message.clone(),
                detail: detail(
                    transition.rule,
                    &transition.cohort,
                    transition.value,
                    transition.fire_above,
                    transition.resolve_below,
                ),
            });
        }
        // The page shows the latest value of what is pending or firing; the cloud is not told.
        for active in self.engine.active() {
            io.telemetry.record(Event::RuleValue {
                key: AlertKey::rule(active.rule, &active.cohort),
                message: active.message.clone(),
                detail: detail(
                    active.rule,
                    &active.cohort,
                    active.value,
                    active.fire_above,
                    active.resolve_below,
                ),
            });
        }
        transitions
    }

    fn note_failure(&mut self, error: &StoreError) {
        if !std::mem::replace(&mut self.failing, true) {
            tracing::warn!(message = "The alert rules cannot read the store; they wait for the next round.", %error);
        }
    }

    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

fn detail(
    rule: outpost_core::alerting::RuleKind,
    cohort: &str,
    value: f64,
    fire_above: f64,
    resolve_below: f64,
) -> RuleDetail {
    RuleDetail {
        rule,
        cohort_kind: rule.cohort_kind(),
        cohort: cohort.to_owned(),
        value,
        fire_above,
        resolve_below,
    }
}

/// A registry row as the rules see it; nodes never accepted are not part of the fleet.
fn fleet_node(
    node: FleetNode,
    now_ms: i64,
    offline_after: &HashMap<String, Duration>,
) -> Option<NodeFacts> {
    let offline_after = node
        .port
        .as_deref()
        .and_then(|port| offline_after.get(port).copied())
        .unwrap_or(site::DEFAULT_OFFLINE_AFTER);
    let online = match site::node_state(node.enrolled, node.last_seen_ms, now_ms, offline_after) {
        NodeState::NeverAccepted => return None,
        state => state == NodeState::Online,
    };
    Some(NodeFacts {
        uid: node.uid,
        fw_version: node.fw_version,
        lot: node.lot,
        online,
    })
}

fn reset_facts(row: ResetRow) -> ResetFacts {
    ResetFacts {
        uid: row.uid,
        boot_id: row.boot_id,
        at_ms: row.at_ms,
        expected: row.expected,
        fw_version: row.fw_version,
        lot: row.lot,
    }
}

fn log(t: &Transition) {
    let (rule, cohort, value) = (t.rule.as_str(), t.cohort.as_str(), t.value);
    let (fire_above, resolve_below) = (t.fire_above, t.resolve_below);
    match t.phase {
        Phase::Firing => tracing::warn!(
            message = "Alert firing.",
            rule,
            cohort,
            value,
            fire_above,
            detail = %t.message
        ),
        Phase::Resolved => tracing::info!(
            message = "Alert resolved.",
            rule,
            cohort,
            value,
            resolve_below,
            detail = %t.message
        ),
        Phase::Pending => tracing::info!(
            message = "Alert pending.",
            rule,
            cohort,
            value,
            fire_above,
            detail = %t.message
        ),
        Phase::Cleared => tracing::info!(
            message = "Alert cleared before it fired.",
            rule,
            cohort,
            value,
            detail = %t.message
        ),
    }
}

#[cfg(test)]
mod tests {
    use outpost_core::alerting::RuleKind;
    use outpost_core::telemetry::{AlertKind, AlertState, Telemetry};
    use outpost_proto::{ChannelId, FwVersion, Health, Hello, ResetReason};

    use super::*;
    use crate::io::store::Store;

    fn fw() -> FwVersion {
        FwVersion {
            major: 0,
            minor: 3,
            patch: 0,
        }
    }

    /// A store with three nodes of firmware 0.3.0, each with one watchdog reset at `at_ms`.
    fn crashed_store(path: &std::path::Path, at_ms: i64) {
        let mut store = Store::open(path).unwrap();
        for uid in 1..=3u8 {
            let hello = Hello {
                uid: [uid; 8],
                hw_rev: 1,
                fw: fw(),
                boot_id: 1,
                lot: heapless::String::try_from("LOT-A").unwrap(),
                channels: [ChannelId::SEQ].into_iter().collect(),
                ephemeral: [0; 32],
            };
            let node = store
                .transaction(|tx| tx.register(at_ms, "/dev/ttyACM0", &hello, &[7; 32], true))
                .unwrap()
                .unwrap();
            let health = Health {
                uptime_s: 1,
                reset_reason: ResetReason::Watchdog,
                fw: fw(),
                stack_free_min: 1800,
                rx_frames: 0,
                rx_errors: 0,
                tx_frames: 0,
                retransmits: 0,
                dropped_samples: 0,
                chip_temp_centi: 3000,
            };
            store
                .transaction(|tx| tx.health(node.node_id, 2, at_ms, &health))
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_round_reads_the_store_and_raises_one_alert_for_the_cohort_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outpost.db");
        crashed_store(&path, wall_clock::unix_ms());
        let telemetry = TelemetryHub::new(Telemetry::new(&[], true, Duration::from_secs(60)));
        let io = AlertingIo {
            readers: Readers::new(&path),
            telemetry: telemetry.clone(),
            offline_after: HashMap::new(),
        };
        let mut rules = Rules::default();
        for rule in &mut rules.rules {
            rule.enabled = rule.kind == RuleKind::CohortResets;
            rule.hold_for = Duration::ZERO;
        }
        let mut round = Round::new(rules);
        let transitions = round.run(&io).await;
        assert_eq!(transitions.len(), 1, "{transitions:?}");
        let changed = telemetry.alerts_changed_since(0);
        assert_eq!(changed.len(), 1);
        let alert = &changed[0];
        assert_eq!(
            (alert.kind, alert.state, alert.subject.as_deref()),
            (
                AlertKind::Rule,
                AlertState::Firing,
                Some("cohort_resets/0.3.0")
            )
        );
        assert_eq!(
            alert.message,
            "3 unexpected resets on 3 of 3 nodes of firmware 0.3.0 in 1h"
        );
        // The same resets read again (the cursor moved on) and another round: nothing new.
        assert!(round.run(&io).await.is_empty());
        assert_eq!(telemetry.alerts_changed_since(alert.change).len(), 0);
        assert_eq!(round.engine().resets_in_window(), 3);
    }

    #[tokio::test]
    async fn a_store_that_cannot_be_read_makes_no_transition_and_no_panic() {
        let io = AlertingIo {
            readers: Readers::new(std::path::Path::new("/nonexistent/outpost.db")),
            telemetry: TelemetryHub::new(Telemetry::new(&[], false, Duration::from_secs(60))),
            offline_after: HashMap::new(),
        };
        let mut round = Round::new(Rules::default());
        assert!(round.run(&io).await.is_empty());
        assert!(round.run(&io).await.is_empty());
    }
}
