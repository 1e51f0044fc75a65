//! The site at a glance, as the technician's page shows it: whether each node is online, and
//! one verdict line that says whether the site is healthy and, if not, what matters most.
//!
//! IO-free: the adapter gathers the facts (the telemetry snapshot, the store's outbox and
//! registry, the disk, the wall clock) into [`SiteFacts`]; [`verdict`] ranks what is wrong.
//! The ranking is by consequence for the data: readings being lost or not acknowledged first,
//! then readings not leaving the site, then parts of the site not reporting, then cost and
//! time-keeping. The headline is the worst problem; every problem is listed after it.

use std::time::Duration;

use serde::Serialize;

/// A node's state on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Heard from within its port's `offline_after`.
    Online,
    /// Silent for longer than that: unplugged, powered off, or its line is broken.
    Offline,
    /// Registered but never enrolled with a key: it has not been accepted onto the site.
    NeverAccepted,
}

/// How long a node may stay silent before the page calls it offline, unless its port says
/// otherwise (`[[serial]] offline_after`): three of the node's default 10 s HEALTH intervals,
/// so one lost report is not an outage.
pub const DEFAULT_OFFLINE_AFTER: Duration = Duration::from_secs(30);

/// `last_seen_ms` and `now_ms` are wall-clock Unix ms. A node seen "in the future" (the clock
/// was stepped back) counts as online: it was heard from, and the page must not flap.
#[must_use]
pub fn node_state(
    enrolled: bool,
    last_seen_ms: i64,
    now_ms: i64,
    offline_after: Duration,
) -> NodeState {
    if !enrolled {
        return NodeState::NeverAccepted;
    }
    let silent_ms = now_ms.saturating_sub(last_seen_ms);
    if silent_ms <= i64::try_from(offline_after.as_millis()).unwrap_or(i64::MAX) {
        NodeState::Online
    } else {
        NodeState::Offline
    }
}

/// The uplink as the verdict needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkFacts {
    pub connected: bool,
    /// When `connected` last changed (Unix ms); `None` before the first attempt ended.
    pub since_ms: Option<i64>,
    /// The broker refused this gateway's identity.
    pub refused: Option<String>,
    pub last_error: Option<String>,
    /// It was connected at least once since the gateway started.
    pub ever_connected: bool,
}

/// Everything the verdict weighs, gathered by the adapter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteFacts {
    pub now_ms: i64,
    /// The store's last commit failed with this error (cleared by the next success).
    pub store_error: Option<String>,
    /// Free space for the store, where the adapter could measure it.
    pub disk_free_bytes: Option<u64>,
    /// `None` without an MQTT uplink (pull only, or nothing configured).
    pub uplink: Option<UplinkFacts>,
    /// Sealed batches waiting for an acknowledgement, and their size.
    pub outbox_batches: u64,
    pub outbox_bytes: u64,
    /// The oldest reading not yet acknowledged by the cloud (Unix ms).
    pub oldest_unsent_ms: Option<i64>,
    pub nodes: usize,
    pub nodes_offline: usize,
    pub nodes_never_accepted: usize,
    pub devices: usize,
    pub devices_offline: usize,
    /// The month's uplink bytes are projected beyond `uplink.monthly_budget_bytes`.
    pub over_budget: bool,
    pub projected_month_bytes: u64,
    pub budget_bytes: u64,
    pub clock_trusted: bool,
    /// Firing alerts not already told by another line of the verdict.
    pub other_alerts: usize,
}

/// How bad the worst problem is: the page's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Good,
    /// Something needs a look, but readings are safe and leaving the site.
    Attention,
    /// Readings are at risk or not leaving the site.
    Trouble,
}

/// One problem, worded for a technician: what is wrong, and where relevant what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub level: Level,
    /// The worst finding's text, or "All good".
    pub headline: String,
    /// Every finding, worst first (empty when all is good).
    pub findings: Vec<Finding>,
}

/// Below this much free space the store is about to fail; said before it does.
pub const DISK_LOW_BYTES: u64 = 50 * 1024 * 1024;

/// An uplink down for less than this is a reconnection in progress, not yet trouble (the
/// uplink retries every second or so for the first two minutes).
pub const UPLINK_GRACE: Duration = Duration::from_secs(120);

/// The site's verdict from its facts. See the module documentation for the order.
#[must_use]
pub fn verdict(facts: &SiteFacts) -> Verdict {
    let mut findings = Vec::new();
    let mut find = |level, text: String| findings.push(Finding { level, text });

    if let Some(error) = &facts.store_error {
        let full = facts.disk_free_bytes == Some(0)
            || error.contains("full")
            || error.contains("No space");
        let text = if full {
            "Disk full — readings are not being acknowledged".to_owned()
        } else {
            format!("The store cannot write ({error}) — readings are not being acknowledged")
        };
        find(Level::Trouble, text);
    } else if let Some(free) = facts.disk_free_bytes.filter(|&f| f < DISK_LOW_BYTES) {
        find(
            Level::Attention,
            format!("Disk almost full — {} free", bytes(free)),
        );
    }

    if let Some(uplink) = &facts.uplink {
        if let Some(why) = &uplink.refused {
            find(
                Level::Trouble,
                format!(
                    "The broker refuses this gateway's identity ({why}) — check gateway.id and the certificate"
                ),
            );
        } else if !uplink.connected {
            let down_ms = uplink
                .since_ms
                .map(|since| facts.now_ms.saturating_sub(since));
            let waiting = if facts.outbox_bytes > 0 {
                format!(" — {} waiting", bytes(facts.outbox_bytes))
            } else {
                String::new()
            };
            match down_ms {
                Some(ms) if ms >= millis(UPLINK_GRACE) => find(
                    Level::Trouble,
                    format!("Uplink down for {}{waiting}", duration_ms(ms)),
                ),
                Some(ms) if uplink.ever_connected => find(
                    Level::Attention,
                    format!("Uplink reconnecting ({} so far){waiting}", duration_ms(ms)),
                ),
                Some(ms) => find(
                    Level::Attention,
                    format!("Uplink not connected yet ({}){waiting}", duration_ms(ms)),
                ),
                None => find(Level::Attention, format!("Uplink connecting{waiting}")),
            }
        }
    }

    if facts.nodes_offline > 0 {
        find(
            Level::Attention,
            format!("{} of {} nodes offline", facts.nodes_offline, facts.nodes),
        );
    }
    if facts.nodes_never_accepted > 0 {
        find(
            Level::Attention,
            format!(
                "{} {} never accepted",
                facts.nodes_never_accepted,
                plural(facts.nodes_never_accepted, "node", "nodes")
            ),
        );
    }
    if facts.devices_offline > 0 {
        find(
            Level::Attention,
            format!(
                "{} of {} Modbus {} offline",
                facts.devices_offline,
                facts.devices,
                plural(facts.devices, "device", "devices")
            ),
        );
    }
    if facts.over_budget {
        find(
            Level::Attention,
            format!(
                "Data budget: on course for {} this month, budget {}",
                bytes(facts.projected_month_bytes),
                bytes(facts.budget_bytes)
            ),
        );
    }
    if !facts.clock_trusted {
        find(
            Level::Attention,
            "The clock is not trusted yet — readings are held until it is".to_owned(),
        );
    }
    if facts.other_alerts > 0 {
        find(
            Level::Attention,
            format!(
                "{} {} firing",
                facts.other_alerts,
                plural(facts.other_alerts, "alert", "alerts")
            ),
        );
    }

    // Stable: equal levels keep the order above.
    findings.sort_by_key(|f| std::cmp::Reverse(f.level));
    match findings.first() {
        None => Verdict {
            level: Level::Good,
            headline: "All good".to_owned(),
            findings,
        },
        Some(worst) => Verdict {
            level: worst.level,
            headline: worst.text.clone(),
            findings,
        },
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// Bytes as a technician reads them: `950 B`, `12 kB`, `3.4 MB`, `1.2 GB` (SI, like a
/// mobile operator's bill).
#[must_use]
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.5 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if value < 9.95 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// A span in the largest unit that says it: `40 s`, `12 min`, `3 h`, `2 d` (rounded down: an
/// outage of 2 h 59 min has not lasted 3 h).
#[must_use]
pub fn duration_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;

    fn healthy() -> SiteFacts {
        SiteFacts {
            now_ms: NOW,
            disk_free_bytes: Some(10 << 30),
            uplink: Some(UplinkFacts {
                connected: true,
                since_ms: Some(NOW - 3_600_000),
                refused: None,
                last_error: None,
                ever_connected: true,
            }),
            nodes: 4,
            devices: 1,
            clock_trusted: true,
            ..SiteFacts::default()
        }
    }

    #[test]
    fn a_healthy_site_is_all_good() {
        let v = verdict(&healthy());
        assert_eq!(v.level, Level::Good);
        assert_eq!(v.headline, "All good");
        assert!(v.findings.is_empty());
    }

    #[test]
    fn an_uplink_down_for_hours_says_how_long_and_what_waits() {
        let mut facts = healthy();
        facts.uplink = Some(UplinkFacts {
            connected: false,
            since_ms: Some(NOW - 3 * 3_600_000 - 120_000),
            refused: None,
            last_error: Some("connection refused".into()),
            ever_connected: true,
        });
        facts.outbox_bytes = 12_300_000;
        let v = verdict(&facts);
        assert_eq!(v.level, Level::Trouble);
        assert_eq!(v.headline, "Uplink down for 3 h — 12 MB waiting");
    }

    #[test]
    fn an_uplink_down_for_seconds_is_a_reconnection_not_yet_trouble() {
        let mut facts = healthy();
        facts.uplink = Some(UplinkFacts {
            connected: false,
            since_ms: Some(NOW - 5_000),
            refused: None,
            last_error: None,
            ever_connected: true,
        });
        let v = verdict(&facts);
        assert_eq!(v.level, Level::Attention);
        assert_eq!(v.headline, "Uplink reconnecting (5 s so far)");
        facts.uplink.as_mut().unwrap().ever_connected = false;
        facts.outbox_bytes = 2_500;
        assert_eq!(
            verdict(&facts).headline,
            "Uplink not connected yet (5 s) — 2.5 kB waiting"
        );
    }

    #[test]
    fn a_full_disk_outranks_everything_else() {
        let mut facts = healthy();
        facts.nodes_offline = 2;
        facts.uplink.as_mut().unwrap().connected = false;
        facts.uplink.as_mut().unwrap().since_ms = Some(NOW - 3_600_000);
        facts.store_error = Some("database or disk is full".into());
        facts.disk_free_bytes = Some(0);
        let v = verdict(&facts);
        assert_eq!(v.level, Level::Trouble);
        assert_eq!(
            v.headline,
            "Disk full — readings are not being acknowledged"
        );
        let texts: Vec<&str> = v.findings.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Disk full — readings are not being acknowledged",
                "Uplink down for 1 h",
                "2 of 4 nodes offline",
            ]
        );
    }

    #[test]
    fn a_refused_identity_says_what_to_check() {
        let mut facts = healthy();
        let uplink = facts.uplink.as_mut().unwrap();
        uplink.connected = false;
        uplink.refused = Some("not authorised for outpost/site-0001/batch".into());
        let v = verdict(&facts);
        assert_eq!(v.level, Level::Trouble);
        assert!(
            v.headline.contains("check gateway.id and the certificate"),
            "{}",
            v.headline
        );
    }

    #[test]
    fn attention_items_are_listed_in_order_after_the_headline() {
        let mut facts = healthy();
        facts.nodes_offline = 1;
        facts.devices_offline = 1;
        facts.clock_trusted = false;
        facts.other_alerts = 2;
        facts.disk_free_bytes = Some(20_000_000);
        let v = verdict(&facts);
        assert_eq!(v.level, Level::Attention);
        assert_eq!(v.headline, "Disk almost full — 20 MB free");
        assert_eq!(v.findings.len(), 5);
        assert_eq!(v.findings[1].text, "1 of 4 nodes offline");
        assert_eq!(v.findings[2].text, "1 of 1 Modbus device offline");
        assert_eq!(v.findings[4].text, "2 alerts firing");
    }

    #[test]
    fn a_node_turns_offline_after_its_timeout_and_not_before() {
        let after = Duration::from_secs(30);
        assert_eq!(
            node_state(true, NOW - 30_000, NOW, after),
            NodeState::Online
        );
        assert_eq!(
            node_state(true, NOW - 30_001, NOW, after),
            NodeState::Offline
        );
        assert_eq!(
            node_state(true, NOW + 60_000, NOW, after),
            NodeState::Online
        );
        assert_eq!(node_state(false, NOW, NOW, after), NodeState::NeverAccepted);
    }

    #[test]
    fn sizes_and_spans_read_as_a_technician_expects() {
        assert_eq!(bytes(950), "950 B");
        assert_eq!(bytes(1_000), "1.0 kB");
        assert_eq!(bytes(12_345_678), "12 MB");
        assert_eq!(bytes(3_400_000), "3.4 MB");
        assert_eq!(bytes(999_999), "1.0 MB");
        assert_eq!(duration_ms(40_999), "40 s");
        assert_eq!(duration_ms(12 * 60_000 + 59_000), "12 min");
        assert_eq!(duration_ms(3 * 3_600_000 - 1), "2 h");
        assert_eq!(duration_ms(2 * 86_400_000), "2 d");
        assert_eq!(duration_ms(-5), "0 s");
    }
}
