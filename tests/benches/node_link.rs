//! The node link end to end, with the real daemon and the node simulator on a pty paced at
//! 115200 baud (docs/BENCHMARKS.md, "Node link under faults"):
//!
//! - **dirty line**: a 20 Hz node whose line loses 0.1 % of its bytes both ways and gets a burst
//!   of garbage every 2 s (random bytes, a cut frame, an over-long run, and the next real frame
//!   damaged), for 2,400 samples: frames resent per sample stored (the node's own count);
//! - **catch-up**: the gateway killed for 60 s under a node at 50 % and at 80 % of what its line
//!   carries (42-byte frames: 274 a second): how long after the gateway is back the newest stored
//!   sample is current again, beside the line's theoretical drain time for the 1024-sample ring.
//!
//! `cargo bench -p outpost-e2e --bench node_link` (about 6 minutes).

use std::time::{Duration, Instant};

use anyhow::Result;
use outpost_e2e::{NodeSpec, Site, latest_health, newest_reading_ms, unix_ms, wait_for};

const MINUTE: Duration = Duration::from_secs(60);
/// TELEMETRY frames of four readings a 115200-baud line carries per second.
const LINE_FRAMES_PER_SEC: f64 = 11_520.0 / 42.0;
const RING: f64 = 1024.0;

fn main() -> Result<()> {
    dirty_line()?;
    for percent in [50.0, 80.0] {
        catch_up(percent)?;
    }
    Ok(())
}

fn dirty_line() -> Result<()> {
    let samples = 2_400;
    let spec = NodeSpec {
        rate_hz: 20.0,
        samples: Some(samples),
        garbage_every: Some(40),
        sim_args: vec!["--line-loss".into(), "1000".into()],
        ..NodeSpec::new(0)
    };
    let mut site = Site::new(vec![spec])?;
    site.start_gateway()?;
    site.wait_for_samples(samples as usize, 5 * MINUTE)?;
    let done = unix_ms();
    // The node's count, from a HEALTH report sent after the last sample was stored.
    let uid = site.specs[0].uid.clone();
    let health = wait_for(MINUTE, "a HEALTH report after the run", || {
        latest_health(&site.store_path(), &uid)
            .ok()
            .flatten()
            .filter(|h| h.ts_ms > done)
    })?;
    let seqs = site.stored_seqs()?.remove(0).1;
    assert_eq!(seqs, (1..=i64::from(samples)).collect::<Vec<_>>());
    let port = &site.get("/api/v1/status")?["ports"][0];
    println!(
        "dirty line, 20 Hz, 0.1 % bytes lost both ways, garbage every 2 s: {} samples stored, {} frames resent ({:.1} %); gateway: {} frame errors, {} NACKs, {} held after a gap, {} duplicates",
        seqs.len(),
        health.retransmits,
        100.0 * health.retransmits as f64 / seqs.len() as f64,
        port["frame_errors"],
        port["nacks"],
        port["reordered"],
        port["duplicates"],
    );
    Ok(())
}

fn catch_up(percent: f64) -> Result<()> {
    let rate = LINE_FRAMES_PER_SEC * percent / 100.0;
    let spec = NodeSpec {
        rate_hz: rate,
        ..NodeSpec::new(0)
    };
    let mut site = Site::new(vec![spec])?;
    site.start_gateway()?;
    site.wait_for_samples(200, MINUTE)?;
    site.gateway.as_mut().expect("started").kill_hard();
    std::thread::sleep(MINUTE);
    let back = Instant::now();
    site.start_gateway()?;
    wait_for(5 * MINUTE, "the node to catch up", || {
        let newest = newest_reading_ms(&site.store_path()).ok()?;
        (unix_ms() - newest < 1_000).then_some(())
    })?;
    let took = back.elapsed().as_secs_f64();
    println!(
        "catch-up after a 60 s outage at {percent} % of the line ({rate:.0} Hz): {took:.1} s after the gateway came back; the line drains the {RING}-sample ring in {:.1} s",
        RING / (LINE_FRAMES_PER_SEC - rate)
    );
    Ok(())
}
