use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::link::PortCounters;
use crate::modbus::health::{
    Answer, DeviceHealth, Failure, HealthPolicy, PollSummary, RequestSummary,
};
use crate::telemetry::{AlertKey, CostStatus, DeviceStatus, Event, Polled, Telemetry, UplinkBoard};
use outpost_proto::Millis;

/// One parsed sample: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// What a scrape says, read back by the grammar of format 0.0.4, failing on anything it does
/// not allow: a sample before its family's HELP and TYPE, a family seen twice, a counter not
/// ending in `_total`, a malformed label or value.
#[derive(Debug, Default)]
struct Parsed {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Parsed {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    fn family(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut helped: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series = BTreeSet::new();
    assert!(text.ends_with('\n'), "the text ends with a line feed");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("HELP has a text");
            assert!(helped.insert(name.to_owned()), "HELP for {name} twice");
            current = None;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert!(helped.contains(name), "TYPE before HELP for {name}");
            assert!(kind == "counter" || kind == "gauge", "{kind}");
            assert!(
                kind != "counter" || name.ends_with("_total"),
                "counter {name} without _total"
            );
            assert!(
                parsed
                    .types
                    .insert(name.to_owned(), kind.to_owned())
                    .is_none(),
                "TYPE for {name} twice"
            );
            current = Some(name.to_owned());
        } else {
            assert!(!line.starts_with('#'), "stray comment {line:?}");
            let sample = parse_sample(line);
            assert_eq!(
                current.as_deref(),
                Some(sample.name.as_str()),
                "sample {line:?} outside its family"
            );
            let key = (sample.name.clone(), sample.labels.clone());
            assert!(series.insert(key), "series twice: {line:?}");
            parsed.samples.push(sample);
        }
    }
    parsed
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).expect("a name");
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        loop {
            let start = chars.peek().expect("label or }").0;
            if body[start..].starts_with('}') {
                rest = &body[start + 1..];
                break;
            }
            let eq = body[start..].find('=').expect("label=") + start;
            let label = body[start..eq].to_owned();
            assert!(
                label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{label}"
            );
            while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                chars.next();
            }
            assert_eq!(chars.next().map(|c| c.1), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars.next().expect("closing quote").1 {
                    '\\' => match chars.next().expect("escape").1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => panic!("bad escape \\{other} in {line:?}"),
                    },
                    '"' => break,
                    '\n' => panic!("raw line feed"),
                    c => value.push(c),
                }
            }
            assert!(labels.insert(label, value).is_none(), "label twice");
            match chars.peek().map(|c| c.1) {
                Some(',') => {
                    chars.next();
                }
                Some('}') => {}
                other => panic!("{other:?} after a label in {line:?}"),
            }
        }
    }
    let value = rest.strip_prefix(' ').expect("space before the value");
    let value = match value {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("value {v:?}")),
    };
    Sample {
        name,
        labels,
        value,
    }
}

const PORT: &str = "/dev/ttyACM0";
/// What a hostile node can put in its lot (16 bytes at most on the wire; the renderer does not
/// care).
const HOSTILE_LOT: &str = "a\"b\\c\nd}{x=\"1\"";

fn device(name: &str) -> DeviceStatus {
    DeviceStatus {
        name: name.into(),
        transport: "tcp 127.0.0.1:502".into(),
        unit: 1,
        model: None,
        map: "meter.toml".into(),
        poll_interval_ms: 1000,
        requests_per_poll: 1,
        readings: 0,
        last_error: None,
        last_error_at: None,
        health: DeviceHealth::new(HealthPolicy::new(Duration::from_secs(1))),
        values: BTreeMap::new(),
        writable: Vec::new(),
    }
}

fn node(uid: &str, lot: &str) -> NodeFacts {
    NodeFacts {
        uid: uid.into(),
        hw_rev: 2,
        firmware: "1.4.0".into(),
        lot: lot.into(),
        port: Some(PORT.into()),
        state: NodeState::Online,
        revoked: false,
        last_seen_ms: 1_000_000,
        uptime_s: Some(3600),
        readings: 500,
        samples_lost: 0,
        gateway_rx_errors: 2,
        node_rx_errors: 1,
        retransmits: Some(4),
        ages_clamped: 0,
        gaps_refused: 0,
        auth_failed: 0,
        replayed: 0,
        chip_temp_centi: Some(2_315),
        stack_free_min: Some(1_024),
        resets: vec![("power_on".into(), 1), ("watchdog".into(), 3)],
    }
}

/// A poll of a device: answered with data, an exception, or a timeout.
fn poll(answer: Answer) -> PollSummary {
    PollSummary {
        requests: vec![RequestSummary {
            response_time: (!matches!(answer, Answer::Failed(_)))
                .then_some(Duration::from_millis(12)),
            earlier_failures: Vec::new(),
            answer,
        }],
        garbage_bytes: 0,
        decode_errors: 0,
    }
}

fn telemetry() -> Telemetry {
    let mut t = Telemetry::new(&[PORT.into()], true, Duration::from_secs(60));
    t.handle(Event::DeviceAdded(Box::new(device("hall-meter"))));
    t.handle(Event::DeviceAdded(Box::new(device("dead \"meter\""))));
    t
}

fn facts<'a>(t: &'a Snapshot, nodes: &'a [NodeFacts]) -> Facts<'a> {
    Facts {
        now_ms: 1_010_000,
        version: "0.9.0",
        uptime: Duration::from_secs(90),
        clock_trusted: true,
        clock_steps: 0,
        telemetry: t,
        store: StoreFacts {
            size_bytes: 4096,
            node_readings: 1000,
            device_readings: 20,
            oldest_unsent_ms: Some(1_000_000),
            outbox_batches: 2,
            outbox_bytes: 900,
            ..StoreFacts::default()
        },
        meter: MeterFacts::default(),
        nodes,
        rollout: Some(RolloutFacts {
            state: RolloutState::Soaking,
            updated: 1,
            total: 2,
        }),
    }
}

#[test]
fn every_family_has_help_and_type_and_no_series_appears_twice() {
    let mut t = telemetry();
    t.handle(Event::Committed);
    t.handle(Event::Raise {
        at_ms: 1,
        key: AlertKey::gateway(AlertKind::BufferFull),
        message: "full".into(),
    });
    let mut health = DeviceHealth::new(HealthPolicy::new(Duration::from_secs(1)));
    health.handle_poll_result(Millis(10), &poll(Answer::Exception(2)));
    t.handle(Event::Polled(Box::new(Polled {
        index: 0,
        readings: 10,
        health,
        values: Vec::new(),
        error: None,
    })));
    let snapshot = t.snapshot();
    let nodes = [
        node("e2e0000000000001", "L1"),
        node("e2e0000000000002", "L2"),
    ];
    let parsed = parse(&render(&facts(&snapshot, &nodes)));

    // The families the brief of /metrics promises, with their types.
    for (name, kind) in [
        ("outpost_store_commits_total", "counter"),
        ("outpost_store_batches_sealed_total", "counter"),
        ("outpost_outbox_batches", "gauge"),
        ("outpost_outbox_bytes", "gauge"),
        ("outpost_outbox_oldest_unsent_age_seconds", "gauge"),
        ("outpost_uplink_connected", "gauge"),
        ("outpost_uplink_sent_bytes_total", "counter"),
        ("outpost_readings_acknowledged_total", "counter"),
        ("outpost_cost_month_bytes", "gauge"),
        ("outpost_port_frames_total", "counter"),
        ("outpost_node_info", "gauge"),
        ("outpost_node_uptime_seconds", "gauge"),
        ("outpost_node_resets_total", "counter"),
        ("outpost_node_chip_temperature_celsius", "gauge"),
        ("outpost_node_last_seen_age_seconds", "gauge"),
        ("outpost_modbus_device_readings_total", "counter"),
        ("outpost_modbus_device_errors_total", "counter"),
        ("outpost_modbus_device_online", "gauge"),
        ("outpost_alerts_firing", "gauge"),
        ("outpost_api_connections", "gauge"),
        ("outpost_api_auth_failures_total", "counter"),
        ("outpost_rollout_state", "gauge"),
    ] {
        assert_eq!(
            parsed.types.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }
    // Every family has samples named as it is, and its labels come from the fixed set.
    let allowed: BTreeSet<&str> = [
        "node", "device", "port", "firmware", "lot", "hw_rev", "version", "source", "what",
        "event", "side", "kind", "reason", "expected", "code", "state",
    ]
    .into();
    for s in &parsed.samples {
        assert!(s.name.starts_with("outpost_"), "{}", s.name);
        for label in s.labels.keys() {
            assert!(
                allowed.contains(label.as_str()),
                "{}: label {label}",
                s.name
            );
        }
    }
    assert_eq!(
        parsed.value(
            "outpost_node_chip_temperature_celsius",
            &[("node", "e2e0000000000001")]
        ),
        Some(23.15)
    );
    assert_eq!(
        parsed.value(
            "outpost_node_resets_total",
            &[
                ("node", "e2e0000000000002"),
                ("reason", "watchdog"),
                ("expected", "false")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        parsed.value(
            "outpost_node_resets_total",
            &[
                ("node", "e2e0000000000002"),
                ("reason", "power_on"),
                ("expected", "true")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        parsed.value("outpost_outbox_oldest_unsent_age_seconds", &[]),
        Some(10.0)
    );
    assert_eq!(
        parsed.value(
            "outpost_node_last_seen_age_seconds",
            &[("node", "e2e0000000000001")]
        ),
        Some(10.0)
    );
    assert_eq!(
        parsed.value("outpost_alerts_firing", &[("kind", "buffer_full")]),
        Some(1.0)
    );
    assert_eq!(
        parsed.value("outpost_alerts_firing", &[("kind", "update")]),
        Some(0.0)
    );
    assert_eq!(
        parsed.value(
            "outpost_modbus_device_exceptions_total",
            &[("device", "hall-meter"), ("code", "0x02")]
        ),
        Some(1.0)
    );
    assert_eq!(
        parsed.value(
            "outpost_modbus_device_readings_total",
            &[("device", "dead \"meter\"")]
        ),
        Some(0.0),
        "a device name is escaped and read back"
    );
    assert_eq!(
        parsed.value("outpost_rollout_state", &[("state", "soaking")]),
        Some(1.0)
    );
    assert_eq!(
        parsed.value("outpost_rollout_state", &[("state", "running")]),
        Some(0.0)
    );
    assert_eq!(
        parsed.value("outpost_nodes", &[("state", "online")]),
        Some(2.0)
    );
}

#[test]
fn a_hostile_lot_is_escaped_and_reads_back_as_the_node_sent_it() {
    let snapshot = telemetry().snapshot();
    let nodes = [node("e2e0000000000001", HOSTILE_LOT)];
    let text = render(&facts(&snapshot, &nodes));
    let parsed = parse(&text);
    let info = parsed.family("outpost_node_info");
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].labels["lot"], HOSTILE_LOT);
    assert_eq!(info[0].labels["node"], "e2e0000000000001");
    assert_eq!(info[0].labels.len(), 5, "the lot made no label of its own");
    assert!(
        text.contains(r#"lot="a\"b\\c\nd}{x=\"1\"""#),
        "escaped as the format says"
    );
}

#[test]
fn an_unknown_reset_reason_counts_as_other_and_makes_no_series_of_its_own() {
    let snapshot = telemetry().snapshot();
    let mut n = node("e2e0000000000001", "L1");
    n.resets = vec![
        ("other".into(), 1),
        ("made up \" by a newer version".into(), 2),
        ("hard_fault".into(), 5),
    ];
    let parsed = parse(&render(&facts(&snapshot, &[n])));
    let resets = parsed.family("outpost_node_resets_total");
    assert_eq!(resets.len(), 2, "{resets:?}");
    assert_eq!(
        parsed.value(
            "outpost_node_resets_total",
            &[
                ("node", "e2e0000000000001"),
                ("reason", "other"),
                ("expected", "false")
            ]
        ),
        Some(3.0)
    );
}

#[test]
fn without_an_mqtt_uplink_its_session_families_are_absent_but_the_meter_is_there() {
    let t = Telemetry::new(&[], false, Duration::from_secs(60));
    let snapshot = t.snapshot();
    let parsed = parse(&render(&facts(&snapshot, &[])));
    assert!(!parsed.types.contains_key("outpost_uplink_connected"));
    assert!(parsed.types.contains_key("outpost_uplink_sent_bytes_total"));
    assert!(!parsed.types.contains_key("outpost_port_open"), "no ports");
    assert!(!parsed.types.contains_key("outpost_node_info"), "no nodes");
    assert_eq!(
        parsed.value("outpost_nodes", &[("state", "online")]),
        Some(0.0)
    );
}

#[test]
fn the_series_stay_within_the_bound_at_the_registry_cap() {
    let mut t = Telemetry::new(
        &[PORT.into(), "/dev/ttyACM1".into()],
        true,
        Duration::from_secs(60),
    );
    let devices = 100;
    for d in 0..devices {
        let mut health = DeviceHealth::new(HealthPolicy::new(Duration::from_secs(1)));
        for code in 1..=4 {
            health.handle_poll_result(Millis(10), &poll(Answer::Exception(code)));
        }
        health.handle_poll_result(Millis(20), &poll(Answer::Failed(Failure::Timeout)));
        t.handle(Event::DeviceAdded(Box::new(device(&format!("dev-{d:03}")))));
        t.handle(Event::Polled(Box::new(Polled {
            index: d,
            readings: 1,
            health,
            values: Vec::new(),
            error: None,
        })));
    }
    let snapshot = t.snapshot();
    let every_reason: Vec<(String, u64)> = (0..=8)
        .map(|c| (ResetReason::from_code(c).as_str().to_owned(), 1))
        .chain([("unknown-1".into(), 1), ("unknown-2".into(), 1)])
        .collect();
    let nodes: Vec<NodeFacts> = (0..256)
        .map(|i| NodeFacts {
            resets: every_reason.clone(),
            ..node(&format!("{i:016x}"), "L")
        })
        .collect();
    let parsed = parse(&render(&facts(&snapshot, &nodes)));
    let bound = series_bound(256, 2, devices, 4);
    assert!(
        parsed.samples.len() <= bound,
        "{} series, bound {bound}",
        parsed.samples.len()
    );
    assert!(
        parsed.samples.len() > bound * 9 / 10,
        "the bound is tight enough to mean something: {} of {bound}",
        parsed.samples.len()
    );
}

/// What the telemetry may be told, for the monotonicity property.
#[derive(Debug, Clone)]
enum Step {
    Commit,
    CommitFailed,
    Sealed(u64),
    PortFrames(u64),
    PortDown,
    PortOpened,
    Uplink(bool, u64),
    Poll(Answer),
    Raise(bool),
    Resolve(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Commit),
        Just(Step::CommitFailed),
        (0u64..4).prop_map(Step::Sealed),
        (0u64..50).prop_map(Step::PortFrames),
        Just(Step::PortDown),
        Just(Step::PortOpened),
        (any::<bool>(), 0u64..5).prop_map(|(c, p)| Step::Uplink(c, p)),
        prop_oneof![
            Just(Answer::Data),
            (1u8..5).prop_map(Answer::Exception),
            Just(Answer::Failed(Failure::Timeout)),
            Just(Answer::Failed(Failure::Transport)),
        ]
        .prop_map(Step::Poll),
        any::<bool>().prop_map(Step::Raise),
        any::<bool>().prop_map(Step::Resolve),
    ]
}

proptest! {
    /// Every counter a scrape shows is at least what the previous scrape showed, whatever the
    /// daemon reported in between (the telemetry is the real one; the store's and the meter's
    /// counts only grow too, and are passed as such).
    #[test]
    fn counters_never_go_down_from_one_scrape_to_the_next(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        let mut t = telemetry();
        let mut frames = 0;
        let mut published = 0;
        let mut health = DeviceHealth::new(HealthPolicy::new(Duration::from_secs(1)));
        let mut previous: BTreeMap<(String, BTreeMap<String, String>), f64> = BTreeMap::new();
        let nodes = [node("e2e0000000000001", "L1")];
        for (i, step) in steps.into_iter().enumerate() {
            let now = i as i64 * 1000;
            let key = |kind| AlertKey::gateway(if kind { AlertKind::BufferFull } else { AlertKind::Update });
            match step {
                Step::Commit => t.handle(Event::Committed),
                Step::CommitFailed => t.handle(Event::CommitFailed("disk full".into())),
                Step::Sealed(batches) => t.handle(Event::Sealed { batches }),
                Step::PortFrames(n) => {
                    frames += n;
                    t.handle(Event::PortCounted {
                        index: 0,
                        counters: PortCounters { frames, nacks: frames / 3, ..PortCounters::default() },
                        node_id: Some(1),
                    });
                }
                Step::PortDown => t.handle(Event::PortDown { index: 0, error: "end of file".into() }),
                Step::PortOpened => t.handle(Event::PortOpened { index: 0 }),
                Step::Uplink(connected, more) => {
                    published += more;
                    let mut board = UplinkBoard::default();
                    board.session.connected = connected;
                    board.session.connects = published / 2;
                    board.session.batches_published = published;
                    t.handle(Event::Uplink { board, at_ms: now });
                }
                Step::Poll(answer) => {
                    health.handle_poll_result(Millis(i as u64 * 1000), &poll(answer));
                    t.handle(Event::Polled(Box::new(Polled {
                        index: 0,
                        readings: u64::from(answer == Answer::Data),
                        health: health.clone(),
                        values: Vec::new(),
                        error: None,
                    })));
                }
                Step::Raise(kind) => t.handle(Event::Raise { at_ms: now, key: key(kind), message: "x".into() }),
                Step::Resolve(kind) => t.handle(Event::Resolve { at_ms: now, key: key(kind) }),
            }
            t.handle(Event::Cost(CostStatus { bytes_month: published * 10, ..CostStatus::default() }));
            let snapshot = t.snapshot();
            let mut f = facts(&snapshot, &nodes);
            f.now_ms = 1_010_000 + now;
            f.store.node_readings = 1000 + i as u64;
            f.meter.sent_bytes = published * 100;
            let parsed = parse(&render(&f));
            for s in &parsed.samples {
                if parsed.types[&s.name] != "counter" {
                    continue;
                }
                let key = (s.name.clone(), s.labels.clone());
                if let Some(&before) = previous.get(&key) {
                    prop_assert!(s.value >= before, "{} {:?}: {} after {}", s.name, s.labels, s.value, before);
                }
                previous.insert(key, s.value);
            }
        }
    }
}

#[test]
fn the_gateway_health_shows_as_ratios_and_bytes_and_a_gauge_it_could_not_read_is_left_out() {
    use crate::health::{
        CpuHealth, DiskHealth, HealthReport, MemHealth, ModemHealth, OutboxHealth,
        run_end::{EndReason, PreviousRun},
    };
    let mut t = telemetry();
    t.handle(Event::Health(Box::new(HealthReport {
        v: 1,
        at: 1_000_000,
        why: None,
        up_s: 90,
        prev: PreviousRun {
            reason: EndReason::PowerLoss,
            kind: None,
            detail: "power loss, or a kernel crash or hard reset".into(),
            since_ms: None,
            last_alive_ms: None,
        },
        cpu: CpuHealth {
            proc: Some(12.5),
            sys: None,
        },
        mem: MemHealth {
            rss: Some(14_000_000),
            avail: Some(1_000_000_000),
            total: Some(4_000_000_000),
        },
        disk: DiskHealth {
            free: Some(5_000_000_000),
            free_pct: Some(40.0),
            low: false,
        },
        link: None,
        outbox: OutboxHealth::default(),
        modem: ModemHealth::none("no ModemManager"),
    })));
    let snapshot = t.snapshot();
    let text = render(&facts(&snapshot, &[]));
    let parsed = parse(&text);
    let value = |name: &str| {
        parsed
            .samples
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.value)
    };
    assert_eq!(value("outpost_process_cpu_ratio"), Some(0.125));
    assert_eq!(value("outpost_host_cpu_ratio"), None, "not read: left out");
    assert_eq!(value("outpost_process_resident_memory_bytes"), Some(14e6));
    assert_eq!(value("outpost_data_disk_free_ratio"), Some(0.4));
    assert_eq!(value("outpost_modem_present"), Some(0.0));
    assert_eq!(value("outpost_modem_signal_quality_ratio"), None);
    assert!(
        text.contains("outpost_previous_run_end{reason=\"power_loss\"} 1\n"),
        "{text}"
    );
    assert_eq!(parsed.types["outpost_previous_run_end"], "gauge");
}
