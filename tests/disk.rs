//! End-to-end: the store's disk fills up and frees again. The gateway reports it, keeps serving,
//! acknowledges nothing it could not write, and carries on by itself when space returns.
//! Needs root (it mounts a small tmpfs), as CI and the test script run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use outpost_e2e::{NodeSpec, Site, assert_contiguous, wait_for};

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "this test mounts a small tmpfs to fill a disk for real: run it as root (scripts/test.sh does)"
        );
        SmallDisk(at.to_owned())
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_reported_and_recovered_from_without_losing_acknowledged_readings() {
    // Node 0 fills the disk fast; node 1 is slow enough that its ring outlasts the outage.
    let specs = vec![
        NodeSpec {
            rate_hz: 200.0,
            ..NodeSpec::new(0)
        },
        NodeSpec {
            rate_hz: 20.0,
            ..NodeSpec::new(1)
        },
    ];
    let mut site = Site::with_config(specs, "[uplink]\nbatch_interval = \"2s\"\n").unwrap();
    let disk = SmallDisk::mount(&site.dir.path().join("data"), "1m");
    site.start_gateway().unwrap();

    let status = wait_for(
        Duration::from_secs(120),
        "the store to report a full disk",
        || {
            let status = site.get("/api/v1/status").ok()?;
            status["store"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("full"))
                .then_some(status)
        },
    )
    .unwrap();
    let error = status["store"]["error"].as_str().unwrap();
    assert!(error.contains("disk holding the store is full"), "{error}");
    let alerts = status["store"]["alerts"].as_array().unwrap();
    assert!(
        alerts.iter().any(|a| a["kind"] == "store_failing"),
        "a full disk is an alert too: {alerts:?}"
    );
    assert!(
        site.gateway.as_mut().unwrap().try_wait().is_none(),
        "the gateway keeps running"
    );
    // Still serving, and nothing more is stored while full.
    let stored = site.get("/api/v1/status").unwrap()["readings_stored"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(site.get("/api/v1/nodes").is_ok());

    // Space returns: the gateway recovers by itself.
    disk.remount("size=64m");
    wait_for(Duration::from_secs(60), "the store to recover", || {
        let status = site.get("/api/v1/status").ok()?;
        let alerts = status["store"]["alerts"].as_array()?;
        (status["store"]["error"].is_null()
            && status["readings_stored"].as_u64()? > stored + 100
            && !alerts.iter().any(|a| a["kind"] == "store_failing"))
        .then_some(())
    })
    .unwrap();
    // The slow node's samples, held in its ring during the outage, all arrived: no gap, no duplicate.
    wait_for(Duration::from_secs(30), "node 1 to catch up", || {
        let seqs = site.stored_seqs().ok()?;
        let s = &seqs[1].1;
        (s.len() >= 300).then_some(())
    })
    .unwrap();
    let seqs = site.stored_seqs().unwrap();
    assert_contiguous(&seqs[1].0, &seqs[1].1, 300);

    site.gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(10))
        .unwrap();
}
