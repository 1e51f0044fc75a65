//! `/metrics`: what the gateway knows, as Prometheus text (format 0.0.4).
//!
//! Design: [`render`] is a pure function from [`Facts`] (the telemetry [`Snapshot`], the store's
//! outbox and registry rows, the meter, the rollout, the time) to the exposition text. It reads
//! no clock and no store: the adapter (`outpost::io::api::metrics`) gathers the facts per scrape
//! and hands them in. Every family, its type, unit and labels are listed in `docs/metrics.md`.
//!
//! Conventions kept:
//! - names start with `outpost_`; counters end in `_total`; units are base units in the name
//!   (`_seconds`, `_bytes`, `_celsius`);
//! - labels are `node` (a uid, 16 hex digits), `device` (a Modbus device's name from the
//!   config), `port` (a serial path from the config) and small fixed sets (`reason`, `kind`,
//!   `event`, `state`, `side`). No label ever takes an unbounded value (an error message, a
//!   timestamp): the series count is bounded by the registry (`store.max_nodes`), the config's
//!   ports and devices, and the fixed sets ([`series_bound`]);
//! - a node's strings (firmware, lot, hardware revision, port) are one info series,
//!   `outpost_node_info{…} 1`. The lot comes from the node over the wire: label values are
//!   escaped, whatever they hold ([`exposition`]);
//! - ages (`…_age_seconds`) are measured on the gateway's own clock against times it stamped
//!   itself, so they are right even when that clock is far off (a gateway without RTC).

pub mod exposition;

use std::time::Duration;

use outpost_proto::ResetReason;

use crate::modbus::health::LinkState;
use crate::rollout::RolloutState;
use crate::site::NodeState;
use crate::telemetry::{AlertKind, Snapshot};
use exposition::{Exposition, Kind};

/// The store and its outbox, as the adapter read them for this scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFacts {
    /// The database and its write-ahead log.
    pub size_bytes: u64,
    pub node_readings: u64,
    pub device_readings: u64,
    /// Readings stored with their monotonic time, waiting for a trusted clock.
    pub held_readings: u64,
    pub outbox_batches: u64,
    pub outbox_bytes: u64,
    pub unsealed_readings: u64,
    pub dropped_batches: u64,
    pub dropped_readings: u64,
    /// The oldest reading the cloud has not acknowledged (Unix ms).
    pub oldest_unsent_ms: Option<i64>,
}

/// Bytes over the uplink (MQTT and HTTP pull alike) and readings the cloud acknowledged, since
/// start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterFacts {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub readings_acknowledged: u64,
}

/// One node of the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    /// 16 hex digits.
    pub uid: String,
    pub hw_rev: u8,
    pub firmware: String,
    /// As the node sent it: anything.
    pub lot: String,
    /// The serial path it was last seen on.
    pub port: Option<String>,
    pub state: NodeState,
    pub revoked: bool,
    pub last_seen_ms: i64,
    pub uptime_s: Option<u32>,
    pub readings: u64,
    pub samples_lost: u64,
    /// Frames from the node the gateway dropped.
    pub gateway_rx_errors: u64,
    /// Frames to the node the node dropped, and frames it sent again, since its boot (its last
    /// HEALTH).
    pub node_rx_errors: u64,
    pub retransmits: Option<u32>,
    pub ages_clamped: u64,
    pub gaps_refused: u64,
    pub auth_failed: u64,
    pub replayed: u64,
    /// The last HEALTH's chip temperature, in hundredths of a degree Celsius.
    pub chip_temp_centi: Option<i32>,
    /// The last HEALTH's lowest free stack, in bytes.
    pub stack_free_min: Option<u32>,
    /// Resets in its history (`node_resets`), by reason as stored
    /// (`ResetReason::as_str`).
    pub resets: Vec<(String, u64)>,
}

/// The node firmware rollout of this run, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutFacts {
    pub state: RolloutState,
    pub updated: usize,
    pub total: usize,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Wall time (Unix ms): what ages are measured against.
    pub now_ms: i64,
    pub version: &'a str,
    pub uptime: Duration,
    pub clock_trusted: bool,
    pub clock_steps: u64,
    pub telemetry: &'a Snapshot,
    pub store: StoreFacts,
    pub meter: MeterFacts,
    /// The registry in uid order (every node: it is bounded by `store.max_nodes`).
    pub nodes: &'a [NodeFacts],
    pub rollout: Option<RolloutFacts>,
}

/// The alert kinds always shown (0 when not firing), so a series does not vanish when its
/// alert resolves; a kind not listed here still shows while it fires.
const ALERT_KINDS: [AlertKind; 7] = [
    AlertKind::Rule,
    AlertKind::BufferFull,
    AlertKind::Update,
    AlertKind::AckRefused,
    AlertKind::StoreFailing,
    AlertKind::AuthFailures,
    AlertKind::NewcomersRefused,
];

/// The reset reasons the node link names (`other` for codes this version does not know).
fn reset_reasons() -> impl Iterator<Item = ResetReason> {
    (0..=8)
        .map(ResetReason::from_code)
        .chain([ResetReason::Other(u8::MAX)])
}

/// The stored reason's name, kept to the fixed set: a name this version does not know counts
/// as `other`.
fn known_reset_reason(stored: &str) -> ResetReason {
    reset_reasons()
        .find(|r| r.as_str() == stored)
        .unwrap_or(ResetReason::Other(u8::MAX))
}

const NODE_STATES: [(NodeState, &str); 3] = [
    (NodeState::Online, "online"),
    (NodeState::Offline, "offline"),
    (NodeState::NeverAccepted, "never_accepted"),
];

/// The most series a scrape can hold with `nodes` nodes, `ports` ports and `devices` devices,
/// each device with at most `exception_codes` distinct exception codes seen: what the
/// cardinality promise in docs/security.md rests on (checked by the tests).
#[must_use]
pub fn series_bound(nodes: usize, ports: usize, devices: usize, exception_codes: usize) -> usize {
    // With the gateway's own health (9).
    const GATEWAY: usize = 64 + 9;
    // Per node: info, online, revoked, uptime, last seen, readings, lost, 2 link errors,
    // retransmits, 4 anomalies, temperature, stack, and resets by reason (10).
    const PER_NODE: usize = 17 + 10;
    // Per port: open, opens, frames, frame errors, discarded bytes, and the events.
    const PER_PORT: usize = 5 + PORT_EVENTS;
    // Per device: online, readings, polls, 5 error kinds, garbage, response time, failures.
    const PER_DEVICE: usize = 11;
    GATEWAY
        + nodes * PER_NODE
        + ports * PER_PORT
        + devices * (PER_DEVICE + exception_codes)
        + ALERT_KINDS.len()
        + RolloutState::ALL.len()
}

const PORT_EVENTS: usize = 17;

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// The exposition text of `facts`.
#[must_use]
pub fn render(facts: &Facts<'_>) -> String {
    let t = facts.telemetry;
    // About 120 bytes a series: one allocation for a site of a few hundred nodes.
    let mut e = Exposition::with_capacity(8192 + facts.nodes.len() * 2600 + t.modbus.len() * 1400);
    gateway(&mut e, facts);
    store(&mut e, facts);
    uplink(&mut e, facts);
    ports(&mut e, t);
    nodes(&mut e, facts);
    devices(&mut e, t);
    alerts(&mut e, t);
    host(&mut e, t);
    api(&mut e, t);
    rollout(&mut e, facts);
    e.finish()
}

fn gateway(e: &mut Exposition, f: &Facts<'_>) {
    e.family(
        "outpost_build_info",
        Kind::Gauge,
        "The gateway's version; always 1.",
    )
    .sample(&[("version", f.version)], 1u64);
    e.family(
        "outpost_uptime_seconds",
        Kind::Gauge,
        "Time since the daemon started.",
    )
    .sample(&[], f.uptime.as_secs_f64());
    e.family(
        "outpost_clock_trusted",
        Kind::Gauge,
        "1 when the wall clock is trusted and readings get their wall time; 0 while they are held.",
    )
    .sample(&[], f.clock_trusted);
    e.family(
        "outpost_clock_steps_total",
        Kind::Counter,
        "Steps of the wall clock seen since start.",
    )
    .sample(&[], f.clock_steps);
}

fn store(e: &mut Exposition, f: &Facts<'_>) {
    let s = &f.telemetry.store;
    let o = &f.store;
    e.family(
        "outpost_store_commits_total",
        Kind::Counter,
        "Store transactions committed.",
    )
    .sample(&[], s.commits);
    e.family(
        "outpost_store_commit_failures_total",
        Kind::Counter,
        "Store transactions that failed (nothing they held was acknowledged).",
    )
    .sample(&[], s.failed_commits);
    e.family(
        "outpost_store_failing",
        Kind::Gauge,
        "1 while the last store operation failed (disk full, read-only).",
    )
    .sample(&[], s.error.is_some());
    e.family(
        "outpost_store_batches_sealed_total",
        Kind::Counter,
        "Batches sealed into the outbox.",
    )
    .sample(&[], s.batches_sealed);
    e.family(
        "outpost_store_size_bytes",
        Kind::Gauge,
        "The store's database and write-ahead log on disk.",
    )
    .sample(&[], o.size_bytes);
    let mut stored = e.family(
        "outpost_readings_stored_total",
        Kind::Counter,
        "Readings committed to the store, by source (nodes, Modbus devices).",
    );
    stored.sample(&[("source", "node")], o.node_readings);
    stored.sample(&[("source", "device")], o.device_readings);
    e.family(
        "outpost_readings_held",
        Kind::Gauge,
        "Readings held out of batches until the wall clock is trusted.",
    )
    .sample(&[], o.held_readings);
    e.family(
        "outpost_batch_interval_seconds",
        Kind::Gauge,
        "The batch interval in force (paced by the data budget when one is set).",
    )
    .sample(&[], s.batch_interval_s);
    e.family(
        "outpost_outbox_batches",
        Kind::Gauge,
        "Sealed batches waiting for the cloud's acknowledgement.",
    )
    .sample(&[], o.outbox_batches);
    e.family(
        "outpost_outbox_bytes",
        Kind::Gauge,
        "Bytes of the sealed batches waiting for the cloud's acknowledgement.",
    )
    .sample(&[], o.outbox_bytes);
    e.family(
        "outpost_outbox_unsealed_readings",
        Kind::Gauge,
        "Readings committed but not sealed into a batch yet.",
    )
    .sample(&[], o.unsealed_readings);
    e.family(
        "outpost_outbox_oldest_unsent_age_seconds",
        Kind::Gauge,
        "Age of the oldest reading the cloud has not acknowledged; 0 when there is none.",
    )
    .sample(
        &[],
        o.oldest_unsent_ms
            .map_or(0.0, |at| secs(f.now_ms.saturating_sub(at).max(0))),
    );
    e.family(
        "outpost_outbox_dropped_batches_total",
        Kind::Counter,
        "Batches dropped, oldest first, because the outbox outgrew buffer.max_bytes.",
    )
    .sample(&[], o.dropped_batches);
    e.family(
        "outpost_outbox_dropped_readings_total",
        Kind::Counter,
        "Readings in the batches dropped because the outbox outgrew buffer.max_bytes.",
    )
    .sample(&[], o.dropped_readings);
}

fn uplink(e: &mut Exposition, f: &Facts<'_>) {
    let m = &f.meter;
    e.family(
        "outpost_uplink_sent_bytes_total",
        Kind::Counter,
        "Bytes sent to the cloud: the MQTT connection's TCP payload and batches pulled over HTTP.",
    )
    .sample(&[], m.sent_bytes);
    e.family(
        "outpost_uplink_received_bytes_total",
        Kind::Counter,
        "Bytes received on the MQTT connection (TCP payload).",
    )
    .sample(&[], m.received_bytes);
    e.family(
        "outpost_readings_acknowledged_total",
        Kind::Counter,
        "Readings in batches the cloud acknowledged.",
    )
    .sample(&[], m.readings_acknowledged);
    let c = &f.telemetry.cost;
    e.family(
        "outpost_cost_today_bytes",
        Kind::Gauge,
        "Uplink bytes (both directions) counted today (UTC).",
    )
    .sample(&[], c.bytes_today);
    e.family(
        "outpost_cost_month_bytes",
        Kind::Gauge,
        "Uplink bytes (both directions) counted this month (UTC).",
    )
    .sample(&[], c.bytes_month);
    e.family(
        "outpost_cost_projected_month_bytes",
        Kind::Gauge,
        "This month's uplink bytes projected to its end at the current pace.",
    )
    .sample(&[], c.projected_month);
    e.family(
        "outpost_cost_budget_bytes",
        Kind::Gauge,
        "The monthly data budget (uplink.monthly_budget_bytes); 0 when none is set.",
    )
    .sample(&[], c.budget);
    e.family(
        "outpost_cost_over_budget",
        Kind::Gauge,
        "1 when the month's projection is over the budget.",
    )
    .sample(&[], c.over_budget);
    // The MQTT session's families only with an MQTT uplink (a pulling cloud has none).
    let Some(board) = &f.telemetry.uplink else {
        return;
    };
    let s = &board.session;
    e.family(
        "outpost_uplink_connected",
        Kind::Gauge,
        "1 while the MQTT uplink is connected.",
    )
    .sample(&[], s.connected);
    e.family(
        "outpost_uplink_identity_refused",
        Kind::Gauge,
        "1 when the broker refused the gateway its own topics (certificate and gateway.id differ).",
    )
    .sample(&[], s.refused.is_some());
    e.family(
        "outpost_uplink_connects_total",
        Kind::Counter,
        "MQTT connections made.",
    )
    .sample(&[], s.connects);
    e.family(
        "outpost_uplink_batches_published_total",
        Kind::Counter,
        "Batches published over MQTT (resends included).",
    )
    .sample(&[], s.batches_published);
    let mut dropped = e.family(
        "outpost_uplink_dropped_total",
        Kind::Counter,
        "Messages the uplink refused or dropped, by what: acknowledgements beyond what was \
         published, alerts, command results and firmware events from full queues.",
    );
    dropped.sample(&[("what", "ack")], s.acks_refused);
    dropped.sample(&[("what", "alert")], s.alerts_dropped);
    dropped.sample(&[("what", "command_result")], s.results_dropped);
    dropped.sample(&[("what", "ota_event")], s.ota_dropped);
}

fn ports(e: &mut Exposition, t: &Snapshot) {
    if t.ports.is_empty() {
        return;
    }
    let mut open = e.family(
        "outpost_port_open",
        Kind::Gauge,
        "1 while the serial port is open.",
    );
    for p in &t.ports {
        open.sample(&[("port", &p.path)], p.open);
    }
    let mut opens = e.family(
        "outpost_port_opens_total",
        Kind::Counter,
        "Times the serial port was opened (reopened after a loss).",
    );
    for p in &t.ports {
        opens.sample(&[("port", &p.path)], p.opens);
    }
    let mut frames = e.family(
        "outpost_port_frames_total",
        Kind::Counter,
        "Frames received on the serial port.",
    );
    for p in &t.ports {
        frames.sample(&[("port", &p.path)], p.counters.frames);
    }
    let mut errors = e.family(
        "outpost_port_frame_errors_total",
        Kind::Counter,
        "Frames dropped on the serial port: CRC, framing, malformed.",
    );
    for p in &t.ports {
        errors.sample(&[("port", &p.path)], p.counters.frame_errors);
    }
    let mut discarded = e.family(
        "outpost_port_discarded_bytes_total",
        Kind::Counter,
        "Bytes on the serial port that belonged to no frame.",
    );
    for p in &t.ports {
        discarded.sample(&[("port", &p.path)], p.counters.discarded_bytes);
    }
    let mut events = e.family(
        "outpost_port_events_total",
        Kind::Counter,
        "What the node link session on the port counted, by event (docs/metrics.md lists them).",
    );
    for p in &t.ports {
        let c = &p.counters;
        let by_event: [(&str, u64); PORT_EVENTS] = [
            ("rate_limited", c.rate_limited),
            ("duplicate", c.duplicates),
            ("reordered", c.reordered),
            ("nack", c.nacks),
            ("key_refused", c.refused),
            ("newcomer_refused", c.newcomers_refused),
            ("enroll_busy", c.enrolls_busy),
            ("age_clamped", c.ages_clamped),
            ("gap_refused", c.gaps_refused),
            ("waiting_for_enrollment", c.waiting_for_enrollment),
            ("revoked", c.revoked),
            ("handshake", c.handshakes),
            ("handshake_refused", c.handshakes_refused),
            ("proof_failed", c.proofs_failed),
            ("unauthenticated", c.unauthenticated),
            ("auth_failed", c.auth_failed),
            ("replayed", c.replayed),
        ];
        for (event, n) in by_event {
            events.sample(&[("port", &p.path), ("event", event)], n);
        }
    }
}

fn nodes(e: &mut Exposition, f: &Facts<'_>) {
    let mut by_state = e.family(
        "outpost_nodes",
        Kind::Gauge,
        "Nodes in the registry, by state: online (heard within its port's offline_after), \
         offline, never_accepted (registered, never enrolled with a key).",
    );
    for (state, name) in NODE_STATES {
        let n = f.nodes.iter().filter(|n| n.state == state).count();
        by_state.sample(&[("state", name)], n);
    }
    if f.nodes.is_empty() {
        return;
    }
    let mut info = e.family(
        "outpost_node_info",
        Kind::Gauge,
        "A node's firmware, lot, hardware revision and port, as it announced them; always 1.",
    );
    for n in f.nodes {
        let hw_rev = n.hw_rev.to_string();
        info.sample(
            &[
                ("node", &n.uid),
                ("firmware", &n.firmware),
                ("lot", &n.lot),
                ("hw_rev", &hw_rev),
                ("port", n.port.as_deref().unwrap_or("")),
            ],
            1u64,
        );
    }
    let mut online = e.family(
        "outpost_node_online",
        Kind::Gauge,
        "1 while the node is heard from within its port's offline_after.",
    );
    for n in f.nodes {
        online.sample(&[("node", &n.uid)], n.state == NodeState::Online);
    }
    let mut revoked = e.family(
        "outpost_node_revoked",
        Kind::Gauge,
        "1 when the node was revoked: it is kept out for good.",
    );
    for n in f.nodes {
        revoked.sample(&[("node", &n.uid)], n.revoked);
    }
    let mut uptime = e.family(
        "outpost_node_uptime_seconds",
        Kind::Gauge,
        "The node's uptime as its last HEALTH report said.",
    );
    for n in f.nodes {
        if let Some(s) = n.uptime_s {
            uptime.sample(&[("node", &n.uid)], s);
        }
    }
    let mut seen = e.family(
        "outpost_node_last_seen_age_seconds",
        Kind::Gauge,
        "Time since the gateway last heard from the node, on the gateway's clock.",
    );
    for n in f.nodes {
        seen.sample(
            &[("node", &n.uid)],
            secs(f.now_ms.saturating_sub(n.last_seen_ms).max(0)),
        );
    }
    let mut readings = e.family(
        "outpost_node_readings_total",
        Kind::Counter,
        "Readings from the node committed to the store.",
    );
    for n in f.nodes {
        readings.sample(&[("node", &n.uid)], n.readings);
    }
    let mut lost = e.family(
        "outpost_node_samples_lost_total",
        Kind::Counter,
        "Samples the node reported lost (its ring overflowed while the gateway was away).",
    );
    for n in f.nodes {
        lost.sample(&[("node", &n.uid)], n.samples_lost);
    }
    let mut link = e.family(
        "outpost_node_link_errors_total",
        Kind::Counter,
        "Frames dropped on the node's line: side=gateway, from the node, counted by the gateway; \
         side=node, to the node, as its last HEALTH said (since its boot).",
    );
    for n in f.nodes {
        link.sample(
            &[("node", &n.uid), ("side", "gateway")],
            n.gateway_rx_errors,
        );
        link.sample(&[("node", &n.uid), ("side", "node")], n.node_rx_errors);
    }
    let mut retransmits = e.family(
        "outpost_node_retransmits_total",
        Kind::Counter,
        "Frames the node sent again since its boot, as its last HEALTH said.",
    );
    for n in f.nodes {
        if let Some(r) = n.retransmits {
            retransmits.sample(&[("node", &n.uid)], r);
        }
    }
    let mut anomalies = e.family(
        "outpost_node_anomalies_total",
        Kind::Counter,
        "What the node's line carried that no node can have sent, by kind: age_clamped, \
         gap_refused, auth_failed (seal or proof did not verify), replayed.",
    );
    for n in f.nodes {
        for (kind, count) in [
            ("age_clamped", n.ages_clamped),
            ("gap_refused", n.gaps_refused),
            ("auth_failed", n.auth_failed),
            ("replayed", n.replayed),
        ] {
            anomalies.sample(&[("node", &n.uid), ("kind", kind)], count);
        }
    }
    let mut temperature = e.family(
        "outpost_node_chip_temperature_celsius",
        Kind::Gauge,
        "The node's chip temperature, as its last HEALTH said.",
    );
    for n in f.nodes {
        if let Some(centi) = n.chip_temp_centi {
            temperature.sample(&[("node", &n.uid)], f64::from(centi) / 100.0);
        }
    }
    let mut stack = e.family(
        "outpost_node_stack_free_min_bytes",
        Kind::Gauge,
        "The node's lowest free stack since its boot, as its last HEALTH said.",
    );
    for n in f.nodes {
        if let Some(bytes) = n.stack_free_min {
            stack.sample(&[("node", &n.uid)], bytes);
        }
    }
    let mut resets = e.family(
        "outpost_node_resets_total",
        Kind::Counter,
        "The node's boots in its reset history, by reason; expected=true for resets someone \
         asked for (power_on, software, external_pin, debugger, ota_apply).",
    );
    for n in f.nodes {
        // Summed by known reason, so an unknown stored name cannot make a series of its own.
        let mut counts = [0u64; 10];
        for (stored, count) in &n.resets {
            let reason = known_reset_reason(stored);
            let slot = reset_reasons()
                .position(|r| r == reason)
                .expect("known_reset_reason returns one of reset_reasons");
            counts[slot] += count;
        }
        for (reason, count) in reset_reasons().zip(counts) {
            if count > 0 {
                let expected = if reason.is_expected() {
                    "true"
                } else {
                    "false"
                };
                resets.sample(
                    &[
                        ("node", &n.uid),
                        ("reason", reason.as_str()),
                        ("expected", expected),
                    ],
                    count,
                );
            }
        }
    }
}

fn devices(e: &mut Exposition, t: &Snapshot) {
    let summary = t.modbus_summary();
    let mut by_state = e.family(
        "outpost_modbus_devices",
        Kind::Gauge,
        "Configured Modbus devices, by state: online, offline, unknown (not polled yet).",
    );
    by_state.sample(&[("state", "online")], summary.online);
    by_state.sample(&[("state", "offline")], summary.offline);
    by_state.sample(
        &[("state", "unknown")],
        summary
            .devices
            .saturating_sub(summary.online + summary.offline),
    );
    if t.modbus.is_empty() {
        return;
    }
    let mut online = e.family(
        "outpost_modbus_device_online",
        Kind::Gauge,
        "1 while the Modbus device answers.",
    );
    for d in &t.modbus {
        online.sample(
            &[("device", &d.name)],
            d.health.state() == LinkState::Online,
        );
    }
    let mut readings = e.family(
        "outpost_modbus_device_readings_total",
        Kind::Counter,
        "Readings from the Modbus device committed to the store.",
    );
    for d in &t.modbus {
        readings.sample(&[("device", &d.name)], d.readings);
    }
    let mut polls = e.family(
        "outpost_modbus_device_polls_total",
        Kind::Counter,
        "Polls of the Modbus device.",
    );
    for d in &t.modbus {
        polls.sample(&[("device", &d.name)], d.health.polls());
    }
    let mut errors = e.family(
        "outpost_modbus_device_errors_total",
        Kind::Counter,
        "Failed exchanges with the Modbus device, by kind: timeout, crc, frame, transport, \
         decode (exceptions are counted apart).",
    );
    for d in &t.modbus {
        let h = &d.health;
        for (kind, n) in [
            ("timeout", h.timeouts()),
            ("crc", h.crc_errors()),
            ("frame", h.frame_errors()),
            ("transport", h.transport_errors()),
            ("decode", h.decode_errors()),
        ] {
            errors.sample(&[("device", &d.name), ("kind", kind)], n);
        }
    }
    let mut exceptions = e.family(
        "outpost_modbus_device_exceptions_total",
        Kind::Counter,
        "Exception responses from the Modbus device, by exception code (0x02 illegal data \
         address, …): it answers, but refused.",
    );
    for d in &t.modbus {
        for (code, n) in d.health.exceptions() {
            let code = format!("0x{code:02x}");
            exceptions.sample(&[("device", &d.name), ("code", &code)], *n);
        }
    }
    let mut garbage = e.family(
        "outpost_modbus_device_garbage_bytes_total",
        Kind::Counter,
        "RTU bytes that belonged to no expected response of the device.",
    );
    for d in &t.modbus {
        garbage.sample(&[("device", &d.name)], d.health.garbage_bytes());
    }
    let mut response = e.family(
        "outpost_modbus_device_response_seconds",
        Kind::Gauge,
        "The slowest answer of the device's last poll that got any.",
    );
    for d in &t.modbus {
        if let Some(ms) = d.health.last_response_ms() {
            response.sample(&[("device", &d.name)], ms as f64 / 1000.0);
        }
    }
    let mut failures = e.family(
        "outpost_modbus_device_consecutive_failures",
        Kind::Gauge,
        "Polls of the device that failed in a row (it backs off, then goes offline).",
    );
    for d in &t.modbus {
        failures.sample(&[("device", &d.name)], d.health.consecutive_failures());
    }
}

/// The gateway's own health ([`crate::health`], docs/health.md): absent until the health task's
/// first sample; a gauge it could not read is left out rather than shown as 0.
fn host(e: &mut Exposition, t: &Snapshot) {
    let Some(h) = &t.health else { return };
    e.family(
        "outpost_previous_run_end",
        Kind::Gauge,
        "How the daemon's previous run ended (first_run, clean, crash, watchdog, power_loss, unknown); always 1.",
    )
    .sample(&[("reason", h.prev.reason.as_str())], 1u64);
    let mut gauge = |name: &'static str, help: &'static str, value: Option<f64>| {
        if let Some(value) = value {
            e.family(name, Kind::Gauge, help).sample(&[], value);
        }
    };
    gauge(
        "outpost_process_cpu_ratio",
        "The daemon's CPU use between the last two health samples, as a share of one core.",
        h.cpu.proc.map(|p| p / 100.0),
    );
    gauge(
        "outpost_host_cpu_ratio",
        "The machine's CPU use between the last two health samples, as a share of all its cores.",
        h.cpu.sys.map(|p| p / 100.0),
    );
    gauge(
        "outpost_process_resident_memory_bytes",
        "The daemon's resident memory.",
        h.mem.rss.map(|b| b as f64),
    );
    gauge(
        "outpost_host_memory_available_bytes",
        "Memory the machine can still give without swapping (MemAvailable).",
        h.mem.avail.map(|b| b as f64),
    );
    gauge(
        "outpost_data_disk_free_bytes",
        "Bytes free for the daemon on the data directory's file system.",
        h.disk.free.map(|b| b as f64),
    );
    gauge(
        "outpost_data_disk_free_ratio",
        "Share of the data directory's file system free for the daemon.",
        h.disk.free_pct.map(|p| p / 100.0),
    );
    gauge(
        "outpost_modem_present",
        "1 when ModemManager reports a modem, 0 when there is none (no D-Bus, no ModemManager, no modem).",
        Some(if h.modem.state == "none" { 0.0 } else { 1.0 }),
    );
    gauge(
        "outpost_modem_signal_quality_ratio",
        "The modem's signal quality (ModemManager's SignalQuality), as a share.",
        h.modem.signal.map(|s| f64::from(s) / 100.0),
    );
}

fn alerts(e: &mut Exposition, t: &Snapshot) {
    let mut firing = e.family(
        "outpost_alerts_firing",
        Kind::Gauge,
        "Alerts firing, by kind (one per subject: a port, a device, a node).",
    );
    let count = |kind: AlertKind| t.alerts.iter().filter(|a| a.kind == kind).count();
    for kind in ALERT_KINDS {
        firing.sample(&[("kind", kind.as_str())], count(kind));
    }
    let mut others: Vec<AlertKind> = t
        .alerts
        .iter()
        .map(|a| a.kind)
        .filter(|k| !ALERT_KINDS.contains(k))
        .collect();
    others.sort();
    others.dedup();
    for kind in others {
        firing.sample(&[("kind", kind.as_str())], count(kind));
    }
}

fn api(e: &mut Exposition, t: &Snapshot) {
    let a = &t.api;
    e.family(
        "outpost_api_connections",
        Kind::Gauge,
        "Connections to the local API open now.",
    )
    .sample(&[], a.open);
    e.family(
        "outpost_api_max_connections",
        Kind::Gauge,
        "The local API's connection cap in force.",
    )
    .sample(&[], a.max_connections);
    let mut events = e.family(
        "outpost_api_connection_events_total",
        Kind::Counter,
        "The local API's connections, by event: accepted, evicted (idle, for a new one), \
         refused (all busy), header_timeout, idle_timeout, request_timeout, misdirected \
         (wrong Host), accept_error.",
    );
    for (event, n) in [
        ("accepted", a.accepted),
        ("evicted", a.evicted),
        ("refused", a.refused),
        ("header_timeout", a.header_timeouts),
        ("idle_timeout", a.idle_timeouts),
        ("request_timeout", a.request_timeouts),
        ("misdirected", a.misdirected),
        ("accept_error", a.accept_errors),
    ] {
        events.sample(&[("event", event)], n);
    }
    e.family(
        "outpost_api_auth_failures_total",
        Kind::Counter,
        "Requests to the local API with a wrong or missing token.",
    )
    .sample(&[], t.auth.failures);
    e.family(
        "outpost_api_auth_throttled_total",
        Kind::Counter,
        "Requests to the local API refused by the failed-authentication throttle (429).",
    )
    .sample(&[], t.auth.throttled);
    e.family(
        "outpost_api_auth_throttling",
        Kind::Gauge,
        "1 while the failed-authentication throttle refuses requests.",
    )
    .sample(&[], t.auth.throttling);
}

fn rollout(e: &mut Exposition, f: &Facts<'_>) {
    let mut state = e.family(
        "outpost_rollout_state",
        Kind::Gauge,
        "The node firmware rollout of this run: 1 for its state, 0 for the others (all 0 \
         without one).",
    );
    for s in RolloutState::ALL {
        state.sample(
            &[("state", s.as_str())],
            f.rollout.is_some_and(|r| r.state == s),
        );
    }
    let Some(r) = f.rollout else {
        return;
    };
    e.family(
        "outpost_rollout_nodes",
        Kind::Gauge,
        "Nodes the rollout targets.",
    )
    .sample(&[], r.total);
    e.family(
        "outpost_rollout_nodes_updated",
        Kind::Gauge,
        "Nodes the rollout confirmed or finalized on the new version.",
    )
    .sample(&[], r.updated);
}

#[cfg(test)]
mod tests;
