//! Requests to a node through the daemon's `NodeRequests` handle, with the real parts: a
//! simulated node (the node core) on a real pty, the real serial adapter and its `PortSession`,
//! the real store writer over a SQLite file. A REBOOT brings the node back with reason
//! `software`, and the reset history pulled over the link shows it; HEALTH now, the log ring
//! read page by page, and a node not linked.

use std::path::Path;
use std::time::Duration;

use outpost::io::node_requests::{self, NodeRequests};
use outpost::io::store::{Store, writer};
use outpost::io::telemetry::TelemetryHub;
use outpost::io::wall_clock::WallClock;
use outpost_core::clock::{ClockConfig, Remembered};
use outpost_core::config::{EnrollmentConfig, SerialPort};
use outpost_core::link::{EnrollmentPolicy, LinkLimits};
use outpost_core::node_request::{NodeAnswer, NodeRequest, NodeRequestError};
use outpost_core::telemetry::Telemetry;
use outpost_node::sim::{SimConfig, SimNode};
use outpost_proto::ResetReason;
use outpost_proto::diag::LogEvent;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const UID: [u8; 8] = [0xE2, 0xE0, 0, 0, 0, 0, 0, 0x42];

/// The gateway's side: the store writer and one serial port's task, as the topology starts them.
async fn gateway(dir: &Path, link: &Path, shutdown: &CancellationToken) -> NodeRequests {
    let mut store = Store::open(&dir.join("outpost.db")).unwrap();
    store.set_enrollment(EnrollmentConfig {
        policy: EnrollmentPolicy::Open,
        listed: Default::default(),
    });
    let clock = WallClock::new(ClockConfig::with_floor(0), Remembered::default());
    let port = link.display().to_string();
    let telemetry = TelemetryHub::new(Telemetry::new(
        std::slice::from_ref(&port),
        false,
        Duration::from_secs(60),
    ));
    let (store_tx, store_rx) = mpsc::channel(64);
    let (_interval_tx, interval_rx) = watch::channel(Duration::from_secs(60));
    let (sealed, _) = watch::channel(0);
    let writer_config = writer::WriterConfig {
        gateway_id: "node-requests-test".into(),
        commit_interval: Duration::from_millis(20),
        max_commit_readings: 1000,
        batch_interval: Duration::from_secs(60),
        max_batch_readings: 10_000,
        priority_min_interval: Duration::from_secs(1),
        buffer_max_bytes: 1 << 30,
        keep_readings: 1_000_000,
        dictionary: None,
        sealed,
        clock: clock.clone(),
    };
    tokio::spawn(writer::run(
        store,
        store_rx,
        interval_rx,
        writer_config,
        telemetry.clone(),
    ));
    let (handle, mut ends) = node_requests::channels(1);
    let key = outpost::io::node_key::load_or_create(dir).unwrap();
    tokio::spawn(outpost::io::serial::run(
        0,
        SerialPort {
            path: link.into(),
            baud: 115_200,
            limits: LinkLimits::default(),
            reopen_backoff_max: Duration::from_secs(1),
            offline_after: Duration::from_secs(30),
            run_pin: None,
        },
        outpost::io::node_key::secrets(&key).unwrap(),
        store_tx,
        clock,
        telemetry,
        None,
        shutdown.clone(),
        ends.pop(),
    ));
    handle
}

async fn until_linked(handle: &NodeRequests) {
    for _ in 0..600 {
        if handle.is_linked(&UID) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the node was never linked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_through_the_handle_brings_the_node_back_with_reason_software_in_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyNODE");
    let mut config = SimConfig::new(UID);
    config.sample_interval = Duration::from_millis(200);
    config.baud = None;
    let node = SimNode::spawn_on_pty(config, &link).unwrap();
    let shutdown = CancellationToken::new();
    let handle = gateway(dir.path(), &link, &shutdown).await;

    assert_eq!(
        handle.request([1; 8], NodeRequest::HealthNow).await,
        Err(NodeRequestError::NotLinked)
    );
    until_linked(&handle).await;
    assert_eq!(
        handle.request(UID, NodeRequest::HealthNow).await,
        Ok(NodeAnswer::HealthSent)
    );
    let Ok(NodeAnswer::ResetHistory(before)) = handle.request(UID, NodeRequest::ResetHistory).await
    else {
        panic!("no reset history")
    };
    assert_eq!(before.records.len(), 1);
    assert_eq!(before.records[0].reason, ResetReason::PowerOn);
    let first_boot = node.status().boot_id;

    assert_eq!(
        handle.request(UID, NodeRequest::Reboot).await,
        Ok(NodeAnswer::Rebooting)
    );
    // The node resets into a new boot and says HELLO again.
    for _ in 0..600 {
        if node.status().boot_id != first_boot && node.status().boots == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.status().boots, 2, "the node reset once");
    let history = loop {
        match handle.request(UID, NodeRequest::ResetHistory).await {
            Ok(NodeAnswer::ResetHistory(h)) if h.records.len() == 2 => break h,
            // Asked before the new session opened: the old one is gone.
            Ok(_) | Err(NodeRequestError::LinkLost | NodeRequestError::TimedOut) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(history.records[0].reason, ResetReason::Software);
    assert_eq!(history.records[0].boot, 2);
    assert_eq!(history.records[1].reason, ResetReason::PowerOn);

    // The new boot's log, read through the handle: the session it opened.
    let (entries, overwritten) = handle.read_log(UID).await.unwrap();
    assert_eq!(overwritten, 0);
    assert!(
        entries.iter().any(|e| e.event == LogEvent::LinkUp),
        "{entries:?}"
    );
    shutdown.cancel();
    node.stop().unwrap();
}
