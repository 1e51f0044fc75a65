//! End-to-end: a fast node catches up after the gateway was away longer than its ring lasts.
//!
//! The node samples at 200 Hz on a simulated UART at 115200 baud (73 % of what the line carries
//! in its 42-byte TELEMETRY frames) with the simulator's 1024-sample ring: 5.1 s of samples. The
//! gateway is killed for twice that. When it is back the node must drain its ring at the line's
//! spare speed and then lose nothing more: the only samples missing are the ones its full ring
//! pushed out during the outage, one contiguous block, exactly the count the node reports.

use std::time::{Duration, Instant};

use outpost_e2e::{NodeSpec, Site, latest_health, newest_reading_ms, unix_ms, wait_for};

const MINUTE: Duration = Duration::from_secs(60);
const RATE_HZ: f64 = 200.0;
const RING: f64 = 1024.0;

/// The newest stored sample's timestamp, and the node's latest reported `dropped_samples`.
fn newest_and_dropped(site: &Site) -> (i64, i64) {
    let newest = newest_reading_ms(&site.store_path()).unwrap();
    let health = latest_health(&site.store_path(), &site.specs[0].uid).unwrap();
    (newest, health.map_or(0, |h| h.dropped_samples))
}

#[test]
fn a_node_at_200_hz_catches_up_after_an_outage_twice_its_ring_and_then_loses_nothing() {
    let spec = NodeSpec {
        rate_hz: RATE_HZ,
        ..NodeSpec::new(0)
    };
    let mut site = Site::new(vec![spec]).unwrap();
    site.start_gateway().unwrap();
    site.wait_for_samples(400, MINUTE).unwrap();

    // The gateway is away for twice the ring's span: the node's ring fills and overflows.
    site.gateway.as_mut().unwrap().kill_hard();
    std::thread::sleep(Duration::from_secs_f64(2.0 * RING / RATE_HZ));
    let back = Instant::now();
    site.start_gateway().unwrap();

    // Caught up: the newest stored sample is less than a second old.
    wait_for(2 * MINUTE, "the node to catch up", || {
        let (newest, _) = newest_and_dropped(&site);
        (unix_ms() - newest < 1_000).then_some(())
    })
    .unwrap();
    let catch_up = back.elapsed();
    // Theoretical: the ring (1024) drains at the line's spare rate, 11520 B/s / 42 B - 200/s.
    let spare = 11_520.0 / 42.0 - RATE_HZ;
    eprintln!(
        "figure: caught up {:.1} s after the gateway came back (ring drained at the line's spare rate: {:.1} s)",
        catch_up.as_secs_f64(),
        RING / spare
    );

    // Caught up for good: two HEALTH reports (every 10 s) later the node has dropped no more.
    let (_, dropped_at_catch_up) = newest_and_dropped(&site);
    std::thread::sleep(Duration::from_secs(11));
    let (_, dropped_then) = newest_and_dropped(&site);
    std::thread::sleep(Duration::from_secs(10));
    let (newest, dropped_later) = newest_and_dropped(&site);
    assert!(unix_ms() - newest < 1_000, "still current");
    assert_eq!(
        dropped_then, dropped_later,
        "the node still drops samples after catching up"
    );
    assert!(dropped_at_catch_up <= dropped_later);

    // The only samples missing are the ones the full ring pushed out: during the outage, and
    // in the moment after it, until the first acknowledgements freed the ring.
    let seqs = site.stored_seqs().unwrap().remove(0).1;
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "stored in order, once each"
    );
    let gaps: Vec<(i64, i64)> = seqs
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(!gaps.is_empty(), "the outage lost samples");
    let outage_end = gaps[0].1;
    assert!(
        gaps.iter().all(|g| g.1 < outage_end + RING as i64),
        "a gap after the catch-up began: {gaps:?}"
    );
    let lost: i64 = gaps.iter().map(|g| g.1 - g.0 - 1).sum();
    // The node counts every sample its full ring pushed out, including a few that were on
    // their way to the gateway's disk (stored, not yet acknowledged): at most a window more.
    assert!(
        (dropped_later - i64::from(outpost_proto::WINDOW)..=dropped_later).contains(&lost),
        "{lost} missing, the node dropped {dropped_later}"
    );
    let conn = rusqlite::Connection::open(site.store_path()).unwrap();
    let recorded: i64 = conn
        .query_row("SELECT samples_lost FROM nodes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(recorded, lost, "the store recorded the gap as lost samples");
    // The outage lasted 2 rings; the first ring's worth was held, about one ring lost.
    assert!(
        (RING * 0.7..RING * 1.6).contains(&(lost as f64)),
        "{lost} samples lost for an outage of two rings"
    );
    eprintln!("figure: lost {lost} samples to the outage, none after");
}
