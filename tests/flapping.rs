//! Fault injection: the broker flapping. Mosquitto (TLS, client certificates) is stopped for 20 s
//! of every minute for 10 minutes, by PID, and started again on the same port, while nodes stream
//! and the outbox holds a backlog each time (1 s batches, a 256 KiB outbox cap). Every batch
//! reaches the cloud exactly once after deduplication by sequence number, first arrivals in
//! order, and the gateway reconnects after every return.
//!
//! About 11 minutes, mostly waiting: its own test binary so scripts/test.sh can run it beside the
//! rest (`cargo test -p outpost-e2e --test flapping`). Prints its figure (`figure: …`).

#[path = "faults_common.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{CloudView, broker_and_cloud, median_max, mqtt_config, spawn_node_logged, stop_node};
use outpost_e2e::broker::Cloud;
use outpost_e2e::{NodeSpec, Site, assert_contiguous, wait_for};

const CYCLES: usize = 10;
const UP: Duration = Duration::from_secs(40);
const DOWN: Duration = Duration::from_secs(20);
const OUTBOX_CAP: u64 = 256 * 1024;

/// What the test watches between faults.
#[derive(Debug, Default)]
struct Watch {
    view: CloudView,
    last_ack: Option<Instant>,
    peak_batches: u64,
    peak_bytes: u64,
}

impl Watch {
    /// One look: the gateway's status (outbox peaks) and, twice a second, the cloud's messages
    /// (acknowledged as they arrive). Returns the status.
    fn tick(&mut self, site: &Site, cloud: &Cloud) -> Option<serde_json::Value> {
        if self
            .last_ack
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
        {
            self.view.update(cloud);
            self.view.ack(cloud);
            self.last_ack = Some(Instant::now());
        }
        let status = site.get("/api/v1/status").ok()?;
        let outbox = &status["outbox"];
        self.peak_batches = self
            .peak_batches
            .max(outbox["batches"].as_u64().unwrap_or(0));
        self.peak_bytes = self.peak_bytes.max(outbox["bytes"].as_u64().unwrap_or(0));
        Some(status)
    }

    /// Watches for `d`.
    fn run(&mut self, site: &Site, cloud: &Cloud, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.tick(site, cloud);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
#[ignore = "10 minutes: scripts/test.sh runs it beside the rest of the suite (cargo test -p outpost-e2e --test flapping -- --ignored)"]
fn the_broker_down_20_s_of_every_minute_for_10_minutes_costs_nothing_and_each_return_is_rejoined() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (pki, mut broker, cloud) = broker_and_cloud(dir.path());
    let specs = (0..4)
        .map(|i| NodeSpec {
            rate_hz: 20.0,
            ..NodeSpec::new(i)
        })
        .collect();
    let config =
        mqtt_config(&broker, &pki, "1s") + &format!("\n[buffer]\nmax_bytes = {OUTBOX_CAP}\n");
    let mut site = Site::with_config(specs, &config).unwrap();
    let mut logs = Vec::new();
    for i in 0..site.specs.len() {
        drop(site.nodes[i].take());
        let log = site.dir.path().join(format!("node{i}.log"));
        site.nodes[i] = Some(spawn_node_logged(&site, i, &log).unwrap());
        logs.push(log);
    }
    site.start_gateway().unwrap();
    let mut watch = Watch::default();
    wait_for(
        Duration::from_secs(60),
        "the first batches at the cloud",
        || {
            watch.tick(&site, &cloud);
            (watch.view.contiguous_upto() >= 3).then_some(())
        },
    )
    .unwrap();

    let mut noticed = Vec::new();
    let mut reconnect = Vec::new();
    let mut drained = Vec::new();
    let mut backlog = Vec::new();
    for cycle in 0..CYCLES {
        watch.run(&site, &cloud, UP);
        broker.stop().unwrap();
        let down = Instant::now();
        wait_for(
            Duration::from_secs(15),
            "the gateway to see the broker gone",
            || {
                let status = watch.tick(&site, &cloud)?;
                (status["uplink"]["connected"] == false).then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("cycle {cycle}: {e:#}"));
        noticed.push(down.elapsed());
        watch.run(&site, &cloud, DOWN.saturating_sub(down.elapsed()));
        let status = watch.tick(&site, &cloud).unwrap();
        let newest = status["outbox"]["newest_seq"].as_u64().unwrap_or(0);
        backlog.push(newest.saturating_sub(watch.view.contiguous_upto()));

        broker.restart().unwrap();
        let back = Instant::now();
        let connects = status["uplink"]["connects"].as_u64().unwrap();
        wait_for(Duration::from_secs(60), "the gateway to reconnect", || {
            let status = watch.tick(&site, &cloud)?;
            (status["uplink"]["connected"] == true
                && status["uplink"]["connects"].as_u64()? > connects)
                .then_some(())
        })
        .unwrap_or_else(|e| panic!("cycle {cycle}: {e:#}\n{}", broker.log()));
        reconnect.push(back.elapsed());
        wait_for(Duration::from_secs(40), "the backlog at the cloud", || {
            watch.tick(&site, &cloud);
            watch.view.update(&cloud);
            (watch.view.contiguous_upto() >= newest).then_some(())
        })
        .unwrap_or_else(|e| panic!("cycle {cycle}: {e:#}"));
        drained.push(back.elapsed());
        eprintln!(
            "flapping: cycle {cycle}: {} batches waited, reconnected {:?} and backlog delivered {:?} after the broker's return",
            backlog[cycle], reconnect[cycle], drained[cycle]
        );
    }

    // Stop the nodes and let the last readings reach the cloud.
    let mut reports = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        reports.push(stop_node(site.nodes[i].as_mut().unwrap(), log).unwrap());
    }
    wait_for(
        Duration::from_secs(60),
        "every reading at the cloud",
        || {
            let status = watch.tick(&site, &cloud)?;
            (status["outbox"]["batches"] == 0 && status["outbox"]["unsealed_readings"] == 0)
                .then_some(())
        },
    )
    .unwrap();
    watch.view.update(&cloud);
    let status = site.get("/api/v1/status").unwrap();
    assert_eq!(
        status["outbox"]["dropped_batches"], 0,
        "the cap held every backlog: {}",
        status["outbox"]
    );
    assert!(
        status["uplink"]["connects"].as_u64().unwrap() > CYCLES as u64,
        "{}",
        status["uplink"]
    );
    site.gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(10))
        .unwrap();

    let seqs = site.stored_seqs().unwrap();
    for ((uid, s), report) in seqs.iter().zip(&reports) {
        assert_eq!(report.dropped, 0, "node {uid}: {report:?}");
        assert_contiguous(uid, s, report.acknowledged() as usize);
    }
    let view = &watch.view;
    common::assert_cloud_has_exactly_what_was_sealed(view, &site.store_path());

    let (noticed_median, noticed_max) = median_max(&noticed);
    let (reconnect_median, reconnect_max) = median_max(&reconnect);
    let (drained_median, drained_max) = median_max(&drained);
    eprintln!(
        "figure: broker down 20 s of every minute, {CYCLES} times, 4 nodes at 20 Hz, 1 s batches, outbox cap {OUTBOX_CAP} B: \
         {} batches at the cloud ({} deliveries with resends), each once after dedup by seq, in order, every reading of the store; \
         broker loss noticed in median {noticed_median:?} (max {noticed_max:?}); \
         reconnected after the broker's return in median {reconnect_median:?}, max {reconnect_max:?} (each: {reconnect:?}); \
         backlog ({backlog:?} batches) at the cloud after median {drained_median:?}, max {drained_max:?}; \
         outbox peak {} batches, {} B; 0 dropped; test took {:?}",
        view.batches.len(),
        view.received,
        watch.peak_batches,
        watch.peak_bytes,
        started.elapsed()
    );
}
