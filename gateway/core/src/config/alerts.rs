//! The `[alerts]` part of the configuration: the fleet alert rules (`outpost_core::alerting`).
//! Every rule is on with its defaults; a table changes only the keys it names.
//!
//! ```toml
//! [alerts]
//! interval = "5s"                # how often the rules are evaluated
//!
//! [alerts.cohort_resets]         # unexpected resets per node of a firmware version
//! fire_above = 0.05              # 5 % of the cohort's nodes within the window
//! resolve_below = 0.02
//! for = "5m"                     # above it this long before it fires
//! clear_for = "15m"              # below resolve_below this long before it resolves
//! window = "1h"
//! min_nodes = 2                  # nodes with an unexpected reset, at least
//!
//! [alerts.outbox_age]
//! fire_above = "6h"              # durations for this rule; plain numbers are seconds
//!
//! [alerts.budget_pace]
//! enabled = false
//! ```
//!
//! See docs/alerts.md for every rule, its keys and its defaults.

use std::time::Duration;

use serde::Deserialize;

use crate::alerting::{Rule, RuleKind, Rules};

/// `[alerts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// How often the rules are evaluated (1 s to 5 min).
    #[serde(default, with = "humantime_serde::option")]
    pub interval: Option<Duration>,
    #[serde(default)]
    pub cohort_resets: RawRule,
    #[serde(default)]
    pub nodes_offline: RawRule,
    #[serde(default)]
    pub version_dropoff: RawRule,
    #[serde(default)]
    pub outbox_age: RawRule,
    #[serde(default)]
    pub budget_pace: RawRule,
    #[serde(default)]
    pub modbus_errors: RawRule,
    #[serde(default)]
    pub lot_cluster: RawRule,
}

/// One rule's table; an absent key keeps the rule's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub enabled: Option<bool>,
    pub fire_above: Option<RawThreshold>,
    pub resolve_below: Option<RawThreshold>,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for", with = "humantime_serde::option")]
    pub hold_for: Option<Duration>,
    /// How long the value must stay below `resolve_below` before the alert resolves.
    #[serde(default, with = "humantime_serde::option")]
    pub clear_for: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub window: Option<Duration>,
    pub min_nodes: Option<u32>,
    pub min_resets: Option<u32>,
    pub min_polls: Option<u32>,
}

/// A threshold: a number, or (for `outbox_age`) a duration such as `"6h"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawThreshold {
    Number(f64),
    Text(String),
}

/// The longest `for`, `clear_for` and `window` a rule may have.
const MAX_SPAN: Duration = Duration::from_secs(31 * 24 * 3_600);

/// Checks `[alerts]`: the rules with their defaults where the file says nothing.
pub fn compile(raw: RawAlerts, problem: &mut dyn FnMut(&str, String)) -> Rules {
    let mut rules = Rules::default();
    if let Some(interval) = raw.interval {
        if (Duration::from_secs(1)..=Duration::from_secs(300)).contains(&interval) {
            rules.interval = interval;
        } else {
            problem("alerts.interval", "must be between 1s and 5m".into());
        }
    }
    let tables = [
        (RuleKind::CohortResets, raw.cohort_resets),
        (RuleKind::NodesOffline, raw.nodes_offline),
        (RuleKind::VersionDropoff, raw.version_dropoff),
        (RuleKind::OutboxAge, raw.outbox_age),
        (RuleKind::BudgetPace, raw.budget_pace),
        (RuleKind::ModbusErrors, raw.modbus_errors),
        (RuleKind::LotCluster, raw.lot_cluster),
    ];
    for (kind, table) in tables {
        if let Some(rule) = rules.rules.iter_mut().find(|r| r.kind == kind) {
            compile_rule(rule, table, problem);
        }
    }
    rules
}

fn compile_rule(rule: &mut Rule, raw: RawRule, problem: &mut dyn FnMut(&str, String)) {
    let name = rule.kind.as_str();
    let key = |field: &str| format!("alerts.{name}.{field}");
    // Which keys the rule uses besides enabled, thresholds, for and clear_for.
    let (uses_window, min_nodes, min_events) = match rule.kind {
        RuleKind::CohortResets => (true, true, Some("min_resets")),
        RuleKind::LotCluster => (true, true, Some("min_resets")),
        RuleKind::VersionDropoff => (true, true, None),
        RuleKind::NodesOffline => (false, true, None),
        RuleKind::ModbusErrors => (true, false, Some("min_polls")),
        RuleKind::OutboxAge | RuleKind::BudgetPace => (false, false, None),
    };
    if let Some(enabled) = raw.enabled {
        rule.enabled = enabled;
    }
    let mut threshold = |field: &str, raw: Option<RawThreshold>, into: &mut f64| {
        let Some(raw) = raw else { return };
        match parse_threshold(rule.kind, raw) {
            Ok(value) => *into = value,
            Err(why) => problem(&key(field), why),
        }
    };
    threshold("fire_above", raw.fire_above, &mut rule.fire_above);
    threshold("resolve_below", raw.resolve_below, &mut rule.resolve_below);
    if rule.resolve_below > rule.fire_above {
        problem(
            &key("resolve_below"),
            format!(
                "must be at most fire_above ({}): an alert must be able to stay firing between them",
                rule.fire_above
            ),
        );
    }
    let mut span = |field: &str, value: Option<Duration>, into: &mut Duration, min: Duration| {
        let Some(value) = value else { return };
        if (min..=MAX_SPAN).contains(&value) {
            *into = value;
        } else {
            problem(
                &key(field),
                format!(
                    "must be between {} and 31d",
                    humantime::format_duration(min)
                ),
            );
        }
    };
    span("for", raw.hold_for, &mut rule.hold_for, Duration::ZERO);
    span(
        "clear_for",
        raw.clear_for,
        &mut rule.clear_for,
        Duration::ZERO,
    );
    if uses_window {
        span(
            "window",
            raw.window,
            &mut rule.window,
            Duration::from_secs(1),
        );
    } else if raw.window.is_some() {
        problem(&key("window"), format!("{name} has no window"));
    }
    match raw.min_nodes {
        Some(n) if min_nodes => rule.min_nodes = n,
        Some(_) => problem(&key("min_nodes"), format!("{name} counts no nodes")),
        None => {}
    }
    for (field, value) in [("min_resets", raw.min_resets), ("min_polls", raw.min_polls)] {
        match value {
            Some(n) if min_events == Some(field) => rule.min_events = n,
            Some(_) => problem(&key(field), format!("{name} has no {field}")),
            None => {}
        }
    }
}

fn parse_threshold(kind: RuleKind, raw: RawThreshold) -> Result<f64, String> {
    let value = match raw {
        RawThreshold::Number(n) => n,
        RawThreshold::Text(text) if kind == RuleKind::OutboxAge => humantime::parse_duration(&text)
            .map_err(|e| format!("`{text}` is not a duration ({e})"))?
            .as_secs_f64(),
        RawThreshold::Text(text) => {
            return Err(format!("`{text}` is not a number"));
        }
    };
    let max = match kind {
        RuleKind::CohortResets | RuleKind::LotCluster | RuleKind::BudgetPace => 1_000.0,
        RuleKind::NodesOffline | RuleKind::VersionDropoff => 1.0,
        RuleKind::OutboxAge => MAX_SPAN.as_secs_f64(),
        RuleKind::ModbusErrors => 100.0,
    };
    if value.is_finite() && (0.0..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be between 0 and {max}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(text: &str) -> (Rules, Vec<(String, String)>) {
        #[derive(Deserialize)]
        struct Wrapper {
            #[serde(default)]
            alerts: RawAlerts,
        }
        let raw: Wrapper = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        let rules = compile(raw.alerts, &mut |k, m| problems.push((k.to_owned(), m)));
        (rules, problems)
    }

    #[test]
    fn no_alerts_section_gives_every_rule_with_its_defaults() {
        let (rules, problems) = compiled("");
        assert!(problems.is_empty());
        assert_eq!(rules, Rules::default());
    }

    #[test]
    fn a_table_changes_only_the_keys_it_names() {
        let (rules, problems) = compiled(
            "[alerts]\ninterval = \"2s\"\n[alerts.cohort_resets]\nfire_above = 0.5\nfor = \"10s\"\nwindow = \"30s\"\nmin_resets = 4\n[alerts.outbox_age]\nfire_above = \"2h\"\nresolve_below = 60\n[alerts.budget_pace]\nenabled = false\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(rules.interval, Duration::from_secs(2));
        let cohort = rules.get(RuleKind::CohortResets).unwrap();
        let default = Rule::default_for(RuleKind::CohortResets);
        assert_eq!(
            (
                cohort.fire_above,
                cohort.hold_for,
                cohort.window,
                cohort.min_events
            ),
            (0.5, Duration::from_secs(10), Duration::from_secs(30), 4)
        );
        assert_eq!(
            (cohort.resolve_below, cohort.clear_for, cohort.min_nodes),
            (default.resolve_below, default.clear_for, default.min_nodes)
        );
        let outbox = rules.get(RuleKind::OutboxAge).unwrap();
        assert_eq!((outbox.fire_above, outbox.resolve_below), (7200.0, 60.0));
        assert!(!rules.get(RuleKind::BudgetPace).unwrap().enabled);
    }

    #[test]
    fn every_wrong_key_is_named() {
        let (_, problems) = compiled(
            "[alerts]\ninterval = \"0s\"\n[alerts.nodes_offline]\nfire_above = 0.2\nresolve_below = 0.3\nwindow = \"1h\"\n[alerts.budget_pace]\nfire_above = \"lots\"\nmin_nodes = 3\n[alerts.modbus_errors]\nmin_resets = 2\nclear_for = \"40d\"\n",
        );
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "alerts.interval",
                "alerts.nodes_offline.resolve_below",
                "alerts.nodes_offline.window",
                "alerts.budget_pace.fire_above",
                "alerts.budget_pace.min_nodes",
                "alerts.modbus_errors.clear_for",
                "alerts.modbus_errors.min_resets",
            ]
        );
        assert!(problems[1].1.contains("at most fire_above (0.2)"));
    }

    #[test]
    fn an_unknown_key_in_a_rule_is_refused_by_the_shape() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct Wrapper {
            alerts: RawAlerts,
        }
        let error = toml::from_str::<Wrapper>("[alerts.lot_cluster]\nfire_abov = 2\n")
            .err()
            .unwrap();
        assert!(error.to_string().contains("fire_abov"), "{error}");
    }
}
