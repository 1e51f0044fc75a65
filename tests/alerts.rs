//! End-to-end: fleet alerts on aggregates and rates, through a real Mosquitto with TLS and the
//! shipped pattern ACL, from simulated nodes on ptys that crash in a loop (`outpost-node-sim
//! --crash-every`: each boot after a crash reports `hard_fault` in its first HEALTH).
//!
//! - Three crash-looping nodes of one firmware make ONE cohort alert on
//!   `outpost/{id}/alerts`, published at once (the batch interval is ten minutes), which
//!   resolves once the resets left the window.
//! - Unexpected resets concentrated in one manufacturing lot fire the lot alert; the same number
//!   spread over the lots does not.
//!
//! The time from the crash loop's start to the alert on the broker is printed
//! (`ALERT-LATENCY …`) for docs/BENCHMARKS.md.

use std::time::{Duration, Instant};

use outpost_e2e::broker::{Broker, Cloud, Pki};
use outpost_e2e::{NodeSpec, Site, unix_ms, wait_for};
use serde_json::Value;

const GATEWAY: &str = "e2e-site"; // the Site's gateway.id
const MINUTE: Duration = Duration::from_secs(60);

fn alerts_topic() -> String {
    format!("outpost/{GATEWAY}/alerts")
}

/// A broker with TLS and the pattern ACL, the cloud subscribed to the alerts topic.
fn setup(dir: &std::path::Path) -> (Pki, Broker, Cloud) {
    let pki = Pki::new(&dir.join("pki")).unwrap();
    let broker = Broker::start(&dir.join("broker"), &pki).unwrap();
    let cloud = Cloud::connect(&broker, &pki).unwrap();
    cloud.subscribe(&alerts_topic()).unwrap();
    (pki, broker, cloud)
}

/// An uplink whose batches wait ten minutes: anything that arrives sooner was not batched.
fn uplink_config(broker: &Broker, pki: &Pki) -> String {
    let files = pki.client(GATEWAY).unwrap();
    format!(
        "[uplink]\nbatch_interval = \"10m\"\nmin_batch_interval = \"10m\"\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkeepalive = \"5s\"\n",
        broker.port(),
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    )
}

/// Every alert the cloud received, with when it was seen (the poll's time), in order.
fn received(cloud: &Cloud) -> Vec<Value> {
    cloud
        .messages()
        .iter()
        .filter(|m| m.topic == alerts_topic())
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

fn of_rule<'a>(alerts: &'a [Value], rule: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["rule"]["rule"] == rule)
        .collect()
}

/// The unexpected resets the gateway stored: (uid, at_ms, reason, lot).
fn unexpected_resets(site: &Site) -> Vec<(String, i64, String, String)> {
    let conn = rusqlite::Connection::open_with_flags(
        site.store_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT uid, at_ms, reason, lot FROM node_resets WHERE expected = 0 ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn node(i: usize, fw: &str, lot: &str, extra: &[&str]) -> NodeSpec {
    let mut spec = NodeSpec {
        rate_hz: 2.0,
        ..NodeSpec::new(i)
    };
    spec.sim_args = ["--fw", fw, "--lot", lot, "--health-interval", "2"]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect();
    spec
}

#[test]
fn crash_looping_nodes_of_one_firmware_fire_one_cohort_alert_at_once_which_resolves_when_they_stop()
{
    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, cloud) = setup(dir.path());
    // Three nodes on 0.3.0 and two on 0.2.0, all running.
    let mut specs: Vec<NodeSpec> = (0..3).map(|i| node(i, "0.3.0", "LOT-A", &[])).collect();
    specs.extend((3..5).map(|i| node(i, "0.2.0", "LOT-A", &[])));
    let config = uplink_config(&broker, &pki)
        + "\n[alerts]\ninterval = \"1s\"\n\n[alerts.cohort_resets]\nfire_above = 0.5\nresolve_below = 0.1\nfor = \"2s\"\nclear_for = \"2s\"\nwindow = \"20s\"\nmin_nodes = 2\n";
    let mut site = Site::with_config(specs, &config).unwrap();
    site.start_gateway().unwrap();
    wait_for(MINUTE, "all five nodes registered", || {
        (site.get("/api/v1/nodes").ok()?["nodes"].as_array()?.len() == 5).then_some(())
    })
    .unwrap();

    // The three on 0.3.0 start over crashing 2 s after each boot, four times each.
    let started_ms = unix_ms();
    let started = Instant::now();
    for i in 0..3 {
        restart_node(
            &mut site,
            i,
            node(
                i,
                "0.3.0",
                "LOT-A",
                &["--crash-every", "2", "--crash-boots", "4"],
            ),
        );
    }

    let firing = wait_for(MINUTE, "the cohort alert on the broker", || {
        let alerts = received(&cloud);
        of_rule(&alerts, "cohort_resets")
            .first()
            .map(|a| ((*a).clone(), Instant::now(), unix_ms()))
    })
    .unwrap();
    let (alert, arrived, arrived_ms) = firing;
    assert_eq!(alert["kind"], "rule");
    assert_eq!(alert["state"], "firing", "{alert}");
    assert_eq!(alert["subject"], "cohort_resets/0.3.0");
    assert_eq!(alert["rule"]["cohort_kind"], "firmware");
    assert_eq!(alert["rule"]["cohort"], "0.3.0");
    assert!(alert["rule"]["value"].as_f64().unwrap() > 0.5, "{alert}");
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("of 3 nodes of firmware 0.3.0"),
        "{alert}"
    );
    let resets = unexpected_resets(&site);
    assert!(resets.iter().all(|r| r.2 == "hard_fault"), "{resets:?}");
    let first_reset_ms = resets.first().unwrap().1;
    let fired_ms = alert["at_ms"].as_i64().unwrap();
    println!(
        "ALERT-LATENCY crash loop to alert on the broker: {:.2} s from the first crash (2 s after the restart), {:.2} s from the first unexpected reset stored, {:.2} s from firing to the broker (alerts.interval 1s, for 2s)",
        (arrived_ms - started_ms - 2_000) as f64 / 1e3,
        (arrived_ms - first_reset_ms) as f64 / 1e3,
        (arrived_ms - fired_ms) as f64 / 1e3,
    );
    assert!(
        arrived.duration_since(started) < Duration::from_secs(10 * 60),
        "sent ahead of the ten-minute batch"
    );

    // The page shows it, with its rule, cohort, value and thresholds.
    let overview = site.get("/api/v1/overview").unwrap();
    let shown: Vec<&Value> = overview["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "rule")
        .collect();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["rule"]["fire_above"], 0.5);

    // The loop ends after four crashes; the resets leave the 20 s window, then 2 s clear.
    wait_for(2 * MINUTE, "the cohort alert resolved", || {
        (of_rule(&received(&cloud), "cohort_resets").len() >= 2).then_some(())
    })
    .unwrap();
    // A few more rounds: nothing else comes.
    std::thread::sleep(Duration::from_secs(3));
    let alerts = received(&cloud);
    let states: Vec<(&str, &str)> = alerts
        .iter()
        .map(|a| (a["subject"].as_str().unwrap(), a["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("cohort_resets/0.3.0", "firing"),
            ("cohort_resets/0.3.0", "resolved")
        ],
        "one alert for three nodes, fired once and resolved once; nothing about 0.2.0"
    );
    let resolved = &alerts[1];
    assert!(resolved["rule"]["value"].as_f64().unwrap() < 0.1);
    assert_eq!(
        unexpected_resets(&site).len(),
        12,
        "four crashes each of three nodes, each boot after a crash reported once"
    );
    let status = site.get("/api/v1/status").unwrap();
    assert!(
        !status["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["kind"] == "rule"),
        "no longer firing"
    );
}

/// Restarts node `i` as `spec` (killed first; the new process's first boot is a power-on).
fn restart_node(site: &mut Site, i: usize, spec: NodeSpec) {
    if let Some(mut old) = site.nodes[i].take() {
        old.kill_hard();
    }
    site.specs[i] = spec;
    site.nodes[i] = Some(site.spawn_node(i).unwrap());
}

#[test]
fn resets_concentrated_in_one_lot_fire_the_lot_alert_and_the_same_number_spread_over_lots_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, broker, cloud) = setup(dir.path());
    // Eight nodes of one firmware, two in each of four lots.
    let lots = [
        "LOT-A", "LOT-A", "LOT-B", "LOT-B", "LOT-C", "LOT-C", "LOT-D", "LOT-D",
    ];
    let specs: Vec<NodeSpec> = lots
        .iter()
        .enumerate()
        .map(|(i, lot)| node(i, "0.5.0", lot, &[]))
        .collect();
    let config = uplink_config(&broker, &pki)
        + "\n[alerts]\ninterval = \"1s\"\n\n[alerts.lot_cluster]\nfire_above = 2.5\nresolve_below = 1.5\nfor = \"1s\"\nclear_for = \"2s\"\nwindow = \"15s\"\nmin_nodes = 2\nmin_resets = 2\n\n[alerts.cohort_resets]\nenabled = false\n";
    let mut site = Site::with_config(specs, &config).unwrap();
    site.start_gateway().unwrap();
    wait_for(MINUTE, "all eight nodes registered", || {
        (site.get("/api/v1/nodes").ok()?["nodes"].as_array()?.len() == 8).then_some(())
    })
    .unwrap();

    // Spread: every node crashes twice: four resets in each lot, sixteen in all.
    for (i, lot) in lots.iter().enumerate() {
        let spec = node(
            i,
            "0.5.0",
            lot,
            &["--crash-every", "1.5", "--crash-boots", "2"],
        );
        restart_node(&mut site, i, spec);
    }
    wait_for(MINUTE, "sixteen unexpected resets stored", || {
        (unexpected_resets(&site).len() >= 16).then_some(())
    })
    .unwrap();
    // Several evaluations with every reset in the window: each lot has its share, no cluster.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        of_rule(&received(&cloud), "lot_cluster").is_empty(),
        "spread failures are no lot's cluster"
    );
    let overview = site.get("/api/v1/overview").unwrap();
    assert!(
        overview["pending_alerts"].as_array().unwrap().is_empty(),
        "{}",
        overview["pending_alerts"]
    );

    // Let the spread resets leave the 15 s window, then the two nodes of LOT-A crash eight
    // times each: sixteen resets, all in one lot.
    let last = unexpected_resets(&site).last().unwrap().1;
    wait_for(MINUTE, "the spread resets out of the window", || {
        (unix_ms() > last + 16_000).then_some(())
    })
    .unwrap();
    for (i, lot) in lots.iter().enumerate().take(2) {
        let spec = node(
            i,
            "0.5.0",
            lot,
            &["--crash-every", "1.5", "--crash-boots", "8"],
        );
        restart_node(&mut site, i, spec);
    }
    let alert = wait_for(MINUTE, "the lot alert on the broker", || {
        of_rule(&received(&cloud), "lot_cluster")
            .first()
            .map(|a| (*a).clone())
    })
    .unwrap();
    assert_eq!(alert["state"], "firing", "{alert}");
    assert_eq!(alert["rule"]["cohort"], "LOT-A");
    assert_eq!(alert["rule"]["cohort_kind"], "lot");
    assert!(alert["rule"]["value"].as_f64().unwrap() > 2.5, "{alert}");
    std::thread::sleep(Duration::from_secs(3));
    let lot_alerts = of_rule(&received(&cloud), "lot_cluster")
        .into_iter()
        .filter(|a| a["state"] == "firing")
        .count();
    assert_eq!(lot_alerts, 1, "one alert for the lot, not one per node");
}
