//! One place for what the gateway knows about itself: status, counters and alerts.
//!
//! Design: [`Telemetry`] takes typed [`Event`]s from every part of the daemon (the store writer,
//! the port sessions, the uplink, the cost meter, the Modbus pollers, the update report) and
//! gives back one [`Snapshot`] that every reader uses: the local API's `/api/v1/status` now, and
//! later `/metrics`, the web page and the health topic. It never does IO and never reads a
//! clock: events carry their time. The adapter (`outpost::io::telemetry`) shares it between
//! tasks and wakes the uplink when an alert changes.
//!
//! Alerts have an identity ([`AlertKey`]: what kind, about what), a state (firing or resolved)
//! and timestamps (first raised, last changed, resolved). Raising a firing alert again updates
//! it (message, time, count) instead of adding a second one, and every change gets a sequence
//! number, so the uplink forwards exactly the alerts that changed since it last looked, with no
//! guessing by wall-clock time (which may be set backwards on a gateway without an RTC).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::auth::AuthCounters;
use crate::link::PortCounters;
use crate::listener::admission::ConnCounters;
use crate::modbus::health::{DeviceHealth, LinkState};
use crate::uplink::UplinkStatus;

/// What an alert is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The outbox outgrew `buffer.max_bytes`; the oldest batches were dropped.
    BufferFull,
    /// The last self-update did not end confirmed (refused, rolled back, failed).
    Update,
    /// An acknowledgement covered batches never published; it was refused.
    AckRefused,
    /// Store commits fail (disk full, read-only): nothing is acknowledged until they succeed.
    StoreFailing,
    /// Failed authentications on the local API went beyond an allowance: requests are being
    /// refused (429) until it comes back.
    AuthFailures,
    /// A serial port refuses uids never enrolled (its newcomer budget, or `store.max_nodes`, is
    /// spent): a flood of made-up nodes, or a new node the operator must make room for.
    NewcomersRefused,
    /// A fleet alert rule (`crate::alerting`) about a cohort; the subject is `rule/cohort` and
    /// [`Alert::rule`] has the details.
    Rule,
}

impl AlertKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::BufferFull => "buffer_full",
            AlertKind::Update => "update",
            AlertKind::AckRefused => "ack_refused",
            AlertKind::StoreFailing => "store_failing",
            AlertKind::AuthFailures => "auth_failures",
            AlertKind::NewcomersRefused => "newcomers_refused",
            AlertKind::Rule => "rule",
        }
    }
}

/// An alert's identity: its kind and, where there can be several, what it is about (a node, a
/// device, a port). The same key raised again is the same alert.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AlertKey {
    pub kind: AlertKind,
    pub subject: Option<String>,
}

impl AlertKey {
    /// An alert about the gateway as a whole.
    #[must_use]
    pub fn gateway(kind: AlertKind) -> AlertKey {
        AlertKey {
            kind,
            subject: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// A rule's condition holds, not yet for its `for`: shown on the site, not sent.
    Pending,
    Firing,
    Resolved,
}

/// What a fleet alert rule measured: which rule, about which cohort, its value and thresholds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleDetail {
    pub rule: crate::alerting::RuleKind,
    /// `firmware`, `lot`, `device`, `fleet` or `gateway`.
    pub cohort_kind: &'static str,
    pub cohort: String,
    pub value: f64,
    pub fire_above: f64,
    pub resolve_below: f64,
}

impl AlertKey {
    /// The alert of fleet rule `rule` about `cohort`: one per rule and cohort.
    #[must_use]
    pub fn rule(rule: crate::alerting::RuleKind, cohort: &str) -> AlertKey {
        AlertKey {
            kind: AlertKind::Rule,
            subject: Some(format!("{}/{cohort}", rule.as_str())),
        }
    }
}

/// One alert as the API shows it and the uplink sends it (`outpost/{id}/alerts`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub subject: Option<String>,
    pub state: AlertState,
    pub message: String,
    /// When it was last raised or resolved (Unix ms): the time of the news it carries.
    pub at_ms: i64,
    /// When it first fired in its current episode (Unix ms).
    pub raised_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
    /// How often it was raised in this episode.
    pub count: u64,
    /// Its place in the order of changes, for forwarding ([`Alerts::changed_since`]).
    pub change: u64,
    /// A technician silenced it on the site until then (Unix ms): it still fires and still
    /// reaches the cloud, but the page and the verdict do not press it.
    pub silenced_until_ms: Option<i64>,
    /// A fleet rule's alert: what it measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleDetail>,
}

impl Alert {
    /// Whether it is silenced at `now_ms`.
    #[must_use]
    pub fn silenced(&self, now_ms: i64) -> bool {
        self.silenced_until_ms.is_some_and(|until| now_ms < until)
    }

    #[must_use]
    pub fn key(&self) -> AlertKey {
        AlertKey {
            kind: self.kind,
            subject: self.subject.clone(),
        }
    }
}

/// Every alert the gateway has raised, by identity.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    by_key: BTreeMap<AlertKey, Alert>,
    last_change: u64,
    /// Rule alerts whose condition holds, not yet for `for`: local, never forwarded.
    pending: BTreeMap<AlertKey, Alert>,
}

impl Alerts {
    /// Raises `key` at `at_ms` (Unix ms) with `message`: a new episode if it was not firing,
    /// otherwise the same alert with the new message, time and count. Raising it again with the
    /// same message and time (the same report seen at each start) changes nothing.
    pub fn raise(&mut self, at_ms: i64, key: AlertKey, message: impl Into<String>) {
        self.raise_with(at_ms, key, message.into(), None);
    }

    fn raise_with(&mut self, at_ms: i64, key: AlertKey, message: String, rule: Option<RuleDetail>) {
        let change = self.last_change + 1;
        match self.by_key.get_mut(&key) {
            Some(alert) if alert.state == AlertState::Firing => {
                if alert.message == message && alert.at_ms == at_ms {
                    return;
                }
                alert.message = message;
                alert.at_ms = at_ms;
                alert.count += 1;
                alert.change = change;
                alert.rule = rule.or(alert.rule.take());
            }
            _ => {
                self.by_key.insert(
                    key.clone(),
                    Alert {
                        kind: key.kind,
                        subject: key.subject,
                        state: AlertState::Firing,
                        message,
                        at_ms,
                        raised_at_ms: at_ms,
                        resolved_at_ms: None,
                        count: 1,
                        change,
                        silenced_until_ms: None,
                        rule,
                    },
                );
            }
        }
        self.last_change = change;
    }

    /// A rule's condition holds at `at_ms`, not yet for its `for`: shown, not forwarded.
    pub fn pend(&mut self, at_ms: i64, key: AlertKey, message: String, rule: RuleDetail) {
        self.pending.insert(
            key.clone(),
            Alert {
                kind: key.kind,
                subject: key.subject,
                state: AlertState::Pending,
                message,
                at_ms,
                raised_at_ms: at_ms,
                resolved_at_ms: None,
                count: 0,
                change: 0,
                silenced_until_ms: None,
                rule: Some(rule),
            },
        );
    }

    /// A rule's alert changed phase (`crate::alerting::Phase`): pending, fired, resolved, or
    /// back from pending without firing.
    pub fn handle_rule(
        &mut self,
        at_ms: i64,
        key: AlertKey,
        phase: crate::alerting::Phase,
        message: String,
        rule: RuleDetail,
    ) {
        use crate::alerting::Phase;
        match phase {
            Phase::Pending => self.pend(at_ms, key, message, rule),
            Phase::Cleared => {
                self.pending.remove(&key);
            }
            Phase::Firing => {
                self.pending.remove(&key);
                self.raise_with(at_ms, key, message, Some(rule));
            }
            Phase::Resolved => {
                self.pending.remove(&key);
                if let Some(alert) = self
                    .by_key
                    .get_mut(&key)
                    .filter(|a| a.state == AlertState::Firing)
                {
                    alert.message = message;
                    alert.rule = Some(rule);
                }
                self.resolve(at_ms, &key);
            }
        }
    }

    /// The latest value of a pending or firing rule alert, for the page: not a change (nothing
    /// is forwarded for it).
    pub fn refresh_rule(&mut self, key: &AlertKey, message: String, rule: RuleDetail) {
        let alert = match self.pending.get_mut(key) {
            Some(alert) => Some(alert),
            None => self
                .by_key
                .get_mut(key)
                .filter(|a| a.state == AlertState::Firing),
        };
        if let Some(alert) = alert {
            alert.message = message;
            alert.rule = Some(rule);
        }
    }

    /// The pending rule alerts, newest first.
    #[must_use]
    pub fn pending(&self) -> Vec<Alert> {
        let mut pending: Vec<Alert> = self.pending.values().cloned().collect();
        pending.sort_by_key(|a| std::cmp::Reverse(a.at_ms));
        pending
    }

    /// The condition behind `key` is over.
    pub fn resolve(&mut self, at_ms: i64, key: &AlertKey) {
        let change = self.last_change + 1;
        if let Some(alert) = self
            .by_key
            .get_mut(key)
            .filter(|a| a.state == AlertState::Firing)
        {
            alert.state = AlertState::Resolved;
            alert.resolved_at_ms = Some(at_ms);
            alert.at_ms = at_ms;
            alert.change = change;
            self.last_change = change;
        }
    }

    /// Silences the firing alert `key` until `until_ms` (a new episode starts unsilenced).
    /// Whether there was such an alert.
    pub fn silence(&mut self, key: &AlertKey, until_ms: i64) -> bool {
        match self
            .by_key
            .get_mut(key)
            .filter(|a| a.state == AlertState::Firing)
        {
            Some(alert) => {
                alert.silenced_until_ms = Some(until_ms);
                true
            }
            None => false,
        }
    }

    /// The firing alerts, newest first.
    #[must_use]
    pub fn firing(&self) -> Vec<Alert> {
        let mut firing: Vec<Alert> = self
            .by_key
            .values()
            .filter(|a| a.state == AlertState::Firing)
            .cloned()
            .collect();
        firing.sort_by_key(|a| std::cmp::Reverse(a.change));
        firing
    }

    /// Alerts raised, updated or resolved after change `after`, oldest change first.
    #[must_use]
    pub fn changed_since(&self, after: u64) -> Vec<Alert> {
        let mut changed: Vec<Alert> = self
            .by_key
            .values()
            .filter(|a| a.change > after)
            .cloned()
            .collect();
        changed.sort_by_key(|a| a.change);
        changed
    }

    /// The newest change's number (0 before any).
    #[must_use]
    pub fn last_change(&self) -> u64 {
        self.last_change
    }
}

/// The store writer, as the status page shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreStatus {
    pub commits: u64,
    pub failed_commits: u64,
    /// The last failure, cleared by the next successful commit.
    pub error: Option<String>,
    pub batches_sealed: u64,
    /// Current batch interval: `uplink.batch_interval`, or paced by the data budget between
    /// `uplink.min_batch_interval` and `uplink.max_batch_interval` (`budget::Pacer`).
    pub batch_interval_s: u64,
}

impl StoreStatus {
    /// Work the writer has finished: grows with every commit tried and every sealing round.
    #[must_use]
    pub fn progress(&self) -> u64 {
        self.commits + self.failed_commits + self.batches_sealed
    }
}

/// A serial port as the status page shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortStatus {
    pub path: String,
    pub open: bool,
    pub node_id: Option<i64>,
    pub opens: u64,
    pub last_error: Option<String>,
    #[serde(flatten)]
    pub counters: PortCounters,
}

/// Connectivity cost as the status page shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CostStatus {
    pub bytes_today: u64,
    pub bytes_month: u64,
    pub projected_month: u64,
    /// `uplink.monthly_budget_bytes`; 0 when none is set.
    pub budget: u64,
    /// Uplink bytes (both directions) per reading the cloud acknowledged, this month.
    pub bytes_per_reading: Option<f64>,
    pub batch_interval_s: u64,
    pub over_budget: bool,
}

/// The MQTT uplink as the status page shows it: the session's view and the metered bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UplinkBoard {
    #[serde(flatten)]
    pub session: UplinkStatus,
    /// The MQTT version of the connection that is up (`5` or `3.1.1`).
    pub protocol: Option<&'static str>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// When `connected` last changed (Unix ms), or when the uplink was first heard from; set by
    /// [`Telemetry`] from the events' times, not by the sender.
    pub since_ms: Option<i64>,
}

/// Where the gateway's own identity stands (`[uplink.mqtt.provisioning]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityState {
    /// No certificate of its own yet: the claim exchange runs (or waits to retry).
    Claiming,
    /// It has its own certificate; the claim is no longer used.
    Provisioned,
    /// It has its own certificate and is getting the next one (the uplink runs meanwhile).
    Renewing,
}

/// The gateway's identity and its provisioning exchange, as `/api/v1/status` and the status
/// page show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProvisioningBoard {
    pub state: IdentityState,
    /// The exchange under way or waiting to retry: its step.
    pub exchange: Option<crate::provisioning::State>,
    /// Attempts of the current exchange.
    pub attempts: u32,
    /// Why its last attempt failed, and what to fix.
    pub last_error: Option<String>,
    /// When its next attempt starts (Unix ms), while it waits after a failure.
    pub next_attempt_unix_ms: Option<i64>,
    /// Accepted certificates for another key that were ignored.
    pub foreign_certificates: u64,
    /// The name the provisioning template gave the gateway, if any.
    pub thing_name: Option<String>,
    /// The own certificate: its expiry and when renewal is due (Unix s).
    pub not_after_unix_s: Option<i64>,
    pub renew_at_unix_s: Option<i64>,
}

/// One Modbus device as the status page and `/api/v1/modbus` show it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceStatus {
    pub name: String,
    /// `tcp 10.0.0.20:502` or `rtu /dev/ttyUSB0`.
    pub transport: String,
    pub unit: u8,
    /// Manufacturer and model from the map file, when it names them.
    pub model: Option<String>,
    pub map: String,
    pub poll_interval_ms: u64,
    /// Requests one poll sends (the read plan).
    pub requests_per_poll: usize,
    pub readings: u64,
    /// The last error of any kind (transport, exception, decode), with its time.
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    pub health: DeviceHealth,
    /// The latest value of every point, with its unit.
    pub values: BTreeMap<String, PointValue>,
    /// The points its map declares `writable`, in map order: what a technician may write.
    pub writable: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PointValue {
    pub value: serde_json::Value,
    pub unit: Option<String>,
    pub at: u64,
}

/// The Modbus devices at a glance.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ModbusSummary {
    pub devices: usize,
    pub online: usize,
    pub offline: usize,
}

/// What happened, as the parts of the daemon report it.
#[derive(Debug, Clone)]
pub enum Event {
    /// A store transaction committed.
    Committed,
    /// A store transaction (or a sealing round) failed; nothing was acknowledged.
    CommitFailed(String),
    /// A sealing round sealed `batches` batches.
    Sealed {
        batches: u64,
    },
    /// A sealing round failed; its readings stay unsealed for the next.
    SealFailed(String),
    /// The data budget set the batch interval.
    BatchInterval(Duration),
    /// Serial port `index` (config order) opened.
    PortOpened {
        index: usize,
    },
    /// Serial port `index` could not be opened, or was lost (USB unplug): why.
    PortDown {
        index: usize,
        error: String,
    },
    /// Serial port `index`'s session counters and the node on it, after a round of work.
    PortCounted {
        index: usize,
        counters: PortCounters,
        node_id: Option<i64>,
    },
    /// The uplink's board after a round of work, at `at_ms` (Unix ms).
    Uplink {
        board: UplinkBoard,
        at_ms: i64,
    },
    /// The identity's board, after a change.
    Provisioning(ProvisioningBoard),
    Cost(CostStatus),
    /// The local API's connection counters, after a change.
    Api(ConnCounters),
    /// A Modbus device is polled from now on; it is the next index (config order).
    DeviceAdded(Box<DeviceStatus>),
    /// Modbus device `index`'s transport label (an RTU bus is only known by path at spawn).
    DeviceTransport {
        index: usize,
        label: String,
    },
    /// Modbus device `index` finished a poll.
    Polled(Box<Polled>),
    Raise {
        at_ms: i64,
        key: AlertKey,
        message: String,
    },
    Resolve {
        at_ms: i64,
        key: AlertKey,
    },
    /// A fleet rule's alert changed phase (`crate::alerting::Transition`).
    RuleAlert {
        at_ms: i64,
        key: AlertKey,
        phase: crate::alerting::Phase,
        message: String,
        detail: RuleDetail,
    },
    /// A pending or firing rule alert's latest value (not forwarded).
    RuleValue {
        key: AlertKey,
        message: String,
        detail: RuleDetail,
    },
    /// The local API's authentication counters, after a failure or a throttled request.
    Auth(AuthCounters),
    /// A technician silenced a firing alert until `until_ms`.
    Silence {
        key: AlertKey,
        until_ms: i64,
    },
    /// The gateway's newest health report (`io::health`).
    Health(Box<crate::health::HealthReport>),
}

/// What one Modbus poll changed on the status page.
#[derive(Debug, Clone)]
pub struct Polled {
    pub index: usize,
    /// Readings stored from it.
    pub readings: u64,
    pub health: DeviceHealth,
    /// The points that decoded, with their values.
    pub values: Vec<(String, PointValue)>,
    /// The poll's last error, and when (the adapter's monotonic ms).
    pub error: Option<(String, u64)>,
}

/// Everything the gateway knows about itself, for every reader.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub store: StoreStatus,
    pub ports: Vec<PortStatus>,
    /// `None` without an MQTT uplink.
    pub uplink: Option<UplinkBoard>,
    /// `None` without `[uplink.mqtt.provisioning]`.
    pub provisioning: Option<ProvisioningBoard>,
    pub cost: CostStatus,
    pub modbus: Vec<DeviceStatus>,
    /// The local API's connections: open, cap, refusals, evictions, time-outs.
    pub api: ConnCounters,
    /// Firing alerts, newest first.
    pub alerts: Vec<Alert>,
    /// Fleet rule alerts whose condition holds, not yet for their `for`, newest first.
    pub pending_alerts: Vec<Alert>,
    /// Failed and throttled authentications on the local API.
    pub auth: AuthCounters,
    /// The gateway's own health (CPU, memory, disk, modem, previous run), once sampled.
    pub health: Option<crate::health::HealthReport>,
}

impl Snapshot {
    #[must_use]
    pub fn modbus_summary(&self) -> ModbusSummary {
        let count = |state| {
            self.modbus
                .iter()
                .filter(|d| d.health.state() == state)
                .count()
        };
        ModbusSummary {
            devices: self.modbus.len(),
            online: count(LinkState::Online),
            offline: count(LinkState::Offline),
        }
    }
}

/// The gateway's status, counters and alerts. See the module documentation.
#[derive(Debug, Clone)]
pub struct Telemetry {
    store: StoreStatus,
    ports: Vec<PortStatus>,
    uplink: Option<UplinkBoard>,
    provisioning: Option<ProvisioningBoard>,
    cost: CostStatus,
    modbus: Vec<DeviceStatus>,
    api: ConnCounters,
    alerts: Alerts,
    auth: AuthCounters,
    health: Option<crate::health::HealthReport>,
}

impl Telemetry {
    /// Telemetry for a daemon with these serial ports (config order) and, if `uplink`, an MQTT
    /// uplink. Modbus devices join with [`Event::DeviceAdded`].
    #[must_use]
    pub fn new(ports: &[String], uplink: bool, batch_interval: Duration) -> Telemetry {
        Telemetry {
            store: StoreStatus {
                batch_interval_s: batch_interval.as_secs(),
                ..StoreStatus::default()
            },
            ports: ports
                .iter()
                .map(|path| PortStatus {
                    path: path.clone(),
                    ..PortStatus::default()
                })
                .collect(),
            uplink: uplink.then(UplinkBoard::default),
            provisioning: None,
            cost: CostStatus {
                batch_interval_s: batch_interval.as_secs(),
                ..CostStatus::default()
            },
            modbus: Vec::new(),
            api: ConnCounters::default(),
            alerts: Alerts::default(),
            auth: AuthCounters::default(),
            health: None,
        }
    }

    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Committed => {
                self.store.commits += 1;
                self.store.error = None;
            }
            Event::CommitFailed(error) => {
                self.store.failed_commits += 1;
                self.store.error = Some(error);
            }
            Event::Sealed { batches } => self.store.batches_sealed += batches,
            Event::SealFailed(error) => self.store.error = Some(error),
            Event::BatchInterval(interval) => self.store.batch_interval_s = interval.as_secs(),
            Event::PortOpened { index } => {
                if let Some(port) = self.ports.get_mut(index) {
                    port.open = true;
                    port.opens += 1;
                    port.last_error = None;
                }
            }
            Event::PortDown { index, error } => {
                if let Some(port) = self.ports.get_mut(index) {
                    port.open = false;
                    port.node_id = None;
                    port.last_error = Some(error);
                }
            }
            Event::PortCounted {
                index,
                counters,
                node_id,
            } => {
                if let Some(port) = self.ports.get_mut(index) {
                    port.counters = counters;
                    port.node_id = node_id;
                }
            }
            Event::Uplink { board, at_ms } => {
                let since_ms = match &self.uplink {
                    Some(old) if old.session.connected == board.session.connected => {
                        old.since_ms.or(Some(at_ms))
                    }
                    _ => Some(at_ms),
                };
                self.uplink = Some(UplinkBoard { since_ms, ..board });
            }
            Event::Provisioning(board) => self.provisioning = Some(board),
            Event::Cost(cost) => self.cost = cost,
            Event::Api(counters) => self.api = counters,
            Event::DeviceAdded(status) => self.modbus.push(*status),
            Event::DeviceTransport { index, label } => {
                if let Some(device) = self.modbus.get_mut(index) {
                    device.transport = label;
                }
            }
            Event::Polled(polled) => {
                let Polled {
                    index,
                    readings,
                    health,
                    values,
                    error,
                } = *polled;
                if let Some(device) = self.modbus.get_mut(index) {
                    device.readings += readings;
                    device.health = health;
                    device.values.extend(values);
                    if let Some((error, at)) = error {
                        device.last_error = Some(error);
                        device.last_error_at = Some(at);
                    }
                }
            }
            Event::Raise {
                at_ms,
                key,
                message,
            } => self.alerts.raise(at_ms, key, message),
            Event::Resolve { at_ms, key } => self.alerts.resolve(at_ms, &key),
            Event::RuleAlert {
                at_ms,
                key,
                phase,
                message,
                detail,
            } => self.alerts.handle_rule(at_ms, key, phase, message, detail),
            Event::RuleValue {
                key,
                message,
                detail,
            } => self.alerts.refresh_rule(&key, message, detail),
            Event::Auth(counters) => self.auth = counters,
            Event::Silence { key, until_ms } => {
                self.alerts.silence(&key, until_ms);
            }
            Event::Health(report) => self.health = Some(*report),
        }
    }

    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            store: self.store.clone(),
            ports: self.ports.clone(),
            uplink: self.uplink.clone(),
            provisioning: self.provisioning.clone(),
            cost: self.cost.clone(),
            modbus: self.modbus.clone(),
            api: self.api,
            alerts: self.alerts.firing(),
            pending_alerts: self.alerts.pending(),
            auth: self.auth,
            health: self.health.clone(),
        }
    }

    #[must_use]
    pub fn store(&self) -> &StoreStatus {
        &self.store
    }

    #[must_use]
    pub fn cost(&self) -> &CostStatus {
        &self.cost
    }

    #[must_use]
    pub fn port(&self, index: usize) -> Option<&PortStatus> {
        self.ports.get(index)
    }

    /// The Modbus devices, in the order they were added.
    #[must_use]
    pub fn devices(&self) -> &[DeviceStatus] {
        &self.modbus
    }

    /// The MQTT uplink's board (`None` without one).
    #[must_use]
    pub fn uplink(&self) -> Option<&UplinkBoard> {
        self.uplink.as_ref()
    }

    #[must_use]
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: AlertKind) -> AlertKey {
        AlertKey::gateway(kind)
    }

    #[test]
    fn raising_a_firing_alert_again_updates_it_instead_of_adding_one() {
        let mut alerts = Alerts::default();
        alerts.raise(1000, key(AlertKind::BufferFull), "dropped 2");
        alerts.raise(2000, key(AlertKind::BufferFull), "dropped 5");
        let firing = alerts.firing();
        assert_eq!(firing.len(), 1);
        let a = &firing[0];
        assert_eq!(
            (a.message.as_str(), a.at_ms, a.raised_at_ms, a.count),
            ("dropped 5", 2000, 1000, 2)
        );
        assert_eq!(a.change, 2);
    }

    #[test]
    fn the_same_report_raised_at_every_start_is_one_unchanged_alert() {
        let mut alerts = Alerts::default();
        alerts.raise(5000, key(AlertKind::Update), "rolled back");
        let before = alerts.last_change();
        alerts.raise(5000, key(AlertKind::Update), "rolled back");
        assert_eq!(alerts.last_change(), before);
        assert_eq!(alerts.firing()[0].count, 1);
    }

    #[test]
    fn alerts_about_different_subjects_are_different_alerts() {
        let mut alerts = Alerts::default();
        let about = |s: &str| AlertKey {
            kind: AlertKind::AckRefused,
            subject: Some(s.into()),
        };
        alerts.raise(1, about("a"), "x");
        alerts.raise(2, about("b"), "y");
        assert_eq!(alerts.firing().len(), 2);
        assert_eq!(
            alerts.firing()[0].subject.as_deref(),
            Some("b"),
            "newest first"
        );
    }

    #[test]
    fn a_resolved_alert_leaves_the_firing_list_and_comes_back_as_a_new_episode() {
        let mut alerts = Alerts::default();
        alerts.raise(1000, key(AlertKind::BufferFull), "full");
        alerts.raise(1500, key(AlertKind::BufferFull), "full again");
        alerts.resolve(2000, &key(AlertKind::BufferFull));
        assert!(alerts.firing().is_empty());
        let changed = alerts.changed_since(2);
        assert_eq!(changed.len(), 1);
        assert_eq!(
            (changed[0].state, changed[0].resolved_at_ms),
            (AlertState::Resolved, Some(2000))
        );
        alerts.resolve(2500, &key(AlertKind::BufferFull));
        assert_eq!(alerts.last_change(), 3, "resolving twice is one change");
        alerts.raise(3000, key(AlertKind::BufferFull), "full once more");
        let a = &alerts.firing()[0];
        assert_eq!((a.raised_at_ms, a.count, a.resolved_at_ms), (3000, 1, None));
    }

    #[test]
    fn changes_are_forwarded_once_each_in_the_order_they_happened() {
        let mut alerts = Alerts::default();
        alerts.raise(10, key(AlertKind::Update), "u");
        alerts.raise(20, key(AlertKind::BufferFull), "b");
        let first: Vec<AlertKind> = alerts.changed_since(0).iter().map(|a| a.kind).collect();
        assert_eq!(first, [AlertKind::Update, AlertKind::BufferFull]);
        let seen = alerts.last_change();
        assert!(alerts.changed_since(seen).is_empty());
        // A clock set backwards does not hide a change: order is by change, not by time.
        alerts.raise(5, key(AlertKind::Update), "u again");
        let next: Vec<AlertKind> = alerts.changed_since(seen).iter().map(|a| a.kind).collect();
        assert_eq!(next, [AlertKind::Update]);
    }

    #[test]
    fn the_snapshot_carries_every_section_and_only_firing_alerts() {
        let mut t = Telemetry::new(&["/dev/ttyACM0".into()], true, Duration::from_secs(60));
        t.handle(Event::Committed);
        t.handle(Event::CommitFailed("disk full".into()));
        t.handle(Event::Sealed { batches: 3 });
        t.handle(Event::PortOpened { index: 0 });
        t.handle(Event::PortCounted {
            index: 0,
            counters: PortCounters {
                frames: 9,
                ..PortCounters::default()
            },
            node_id: Some(4),
        });
        t.handle(Event::PortOpened { index: 7 });
        t.handle(Event::Raise {
            at_ms: 1,
            key: key(AlertKind::BufferFull),
            message: "full".into(),
        });
        t.handle(Event::Raise {
            at_ms: 2,
            key: key(AlertKind::Update),
            message: "refused".into(),
        });
        t.handle(Event::Resolve {
            at_ms: 3,
            key: key(AlertKind::BufferFull),
        });
        let s = t.snapshot();
        assert_eq!(
            (
                s.store.commits,
                s.store.failed_commits,
                s.store.batches_sealed
            ),
            (1, 1, 3)
        );
        assert_eq!(s.store.error.as_deref(), Some("disk full"));
        assert_eq!(t.store().progress(), 5);
        assert_eq!(s.ports.len(), 1, "an unknown port index changes nothing");
        let port = &s.ports[0];
        assert_eq!(
            (port.open, port.opens, port.counters.frames, port.node_id),
            (true, 1, 9, Some(4))
        );
        assert!(s.uplink.is_some());
        assert_eq!(s.store.batch_interval_s, 60);
        let kinds: Vec<AlertKind> = s.alerts.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, [AlertKind::Update]);
        t.handle(Event::Committed);
        assert_eq!(t.snapshot().store.error, None, "a commit clears the error");
        t.handle(Event::PortDown {
            index: 0,
            error: "end of file".into(),
        });
        let port = &t.snapshot().ports[0];
        assert_eq!(
            (port.open, port.node_id, port.last_error.as_deref()),
            (false, None, Some("end of file"))
        );
    }

    #[test]
    fn an_alert_serializes_with_its_kind_as_text_and_its_times() {
        let mut alerts = Alerts::default();
        alerts.raise(1234, key(AlertKind::BufferFull), "full");
        let json = serde_json::to_value(&alerts.firing()[0]).unwrap();
        assert_eq!(json["kind"], "buffer_full");
        assert_eq!(json["state"], "firing");
        assert_eq!(json["message"], "full");
        assert_eq!(json["at_ms"], 1234);
        assert_eq!(json["subject"], serde_json::Value::Null);
    }

    #[test]
    fn the_uplink_since_is_when_connected_last_changed() {
        let mut t = Telemetry::new(&[], true, Duration::from_secs(60));
        let board = |connected| UplinkBoard {
            session: UplinkStatus {
                connected,
                ..UplinkStatus::default()
            },
            ..UplinkBoard::default()
        };
        let since = |t: &Telemetry| t.snapshot().uplink.unwrap().since_ms;
        t.handle(Event::Uplink {
            board: board(false),
            at_ms: 100,
        });
        t.handle(Event::Uplink {
            board: board(false),
            at_ms: 200,
        });
        assert_eq!(since(&t), Some(100), "down since the first report");
        t.handle(Event::Uplink {
            board: board(true),
            at_ms: 300,
        });
        t.handle(Event::Uplink {
            board: board(true),
            at_ms: 400,
        });
        assert_eq!(since(&t), Some(300));
        t.handle(Event::Uplink {
            board: board(false),
            at_ms: 500,
        });
        assert_eq!(since(&t), Some(500));
    }

    #[test]
    fn a_rule_alert_is_forwarded_when_it_fires_and_resolves_and_never_while_pending() {
        use crate::alerting::{Phase, RuleKind};
        let mut alerts = Alerts::default();
        let key = AlertKey::rule(RuleKind::CohortResets, "1.2.0");
        assert_eq!(key.subject.as_deref(), Some("cohort_resets/1.2.0"));
        let detail = |value| RuleDetail {
            rule: RuleKind::CohortResets,
            cohort_kind: "firmware",
            cohort: "1.2.0".into(),
            value,
            fire_above: 0.05,
            resolve_below: 0.02,
        };
        let step = |alerts: &mut Alerts, at, phase, value| {
            alerts.handle_rule(at, key.clone(), phase, format!("at {value}"), detail(value));
        };
        step(&mut alerts, 1_000, Phase::Pending, 0.1);
        assert_eq!(alerts.last_change(), 0, "pending is not news for the cloud");
        assert_eq!(alerts.pending()[0].state, AlertState::Pending);
        assert!(alerts.firing().is_empty());
        step(&mut alerts, 2_000, Phase::Firing, 0.2);
        assert!(alerts.pending().is_empty());
        let fired = alerts.changed_since(0);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].rule.as_ref().unwrap().value, 0.2);
        alerts.refresh_rule(&key, "at 0.3".into(), detail(0.3));
        assert_eq!(alerts.last_change(), 1, "a new value is shown, not sent");
        assert_eq!(alerts.firing()[0].message, "at 0.3");
        step(&mut alerts, 3_000, Phase::Resolved, 0.01);
        let resolved = alerts.changed_since(1);
        assert_eq!(
            (resolved[0].state, resolved[0].message.as_str()),
            (AlertState::Resolved, "at 0.01")
        );
        step(&mut alerts, 4_000, Phase::Pending, 0.1);
        step(&mut alerts, 5_000, Phase::Cleared, 0.0);
        assert!(alerts.pending().is_empty() && alerts.firing().is_empty());
        assert_eq!(alerts.last_change(), 2);
        let json = serde_json::to_value(&resolved[0]).unwrap();
        assert_eq!(json["kind"], "rule");
        assert_eq!(json["rule"]["rule"], "cohort_resets");
        assert_eq!(json["rule"]["cohort"], "1.2.0");
    }

    #[test]
    fn a_silenced_alert_still_fires_and_a_new_episode_is_loud_again() {
        let mut alerts = Alerts::default();
        let key = AlertKey::gateway(AlertKind::BufferFull);
        assert!(!alerts.silence(&key, 5_000), "nothing to silence");
        alerts.raise(1_000, key.clone(), "full");
        let change = alerts.last_change();
        assert!(alerts.silence(&key, 5_000));
        let alert = &alerts.firing()[0];
        assert!(alert.silenced(4_999) && !alert.silenced(5_000));
        assert_eq!(
            alerts.last_change(),
            change,
            "a local silence is not news for the cloud"
        );
        alerts.resolve(2_000, &key);
        alerts.raise(3_000, key.clone(), "full again");
        assert!(!alerts.firing()[0].silenced(3_000));
    }
}
