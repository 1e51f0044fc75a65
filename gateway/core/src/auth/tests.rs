use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, 1, last))
}

fn policy() -> ThrottlePolicy {
    ThrottlePolicy::default()
}

/// Sends `n` wrong tokens from `peer` at `now`; returns how many were compared (admitted).
fn guess(t: &mut Throttle, now: Millis, peer: IpAddr, n: usize) -> usize {
    let mut compared = 0;
    for _ in 0..n {
        if t.handle_request(now, peer) == Admission::Allow {
            compared += 1;
            t.handle_failure(now, peer);
        }
    }
    compared
}

#[test]
fn a_peer_beyond_its_burst_is_refused_with_the_time_until_its_next_try() {
    let mut t = Throttle::new(policy(), Millis(0));
    assert_eq!(guess(&mut t, Millis(0), v4(9), 200), 10);
    assert_eq!(
        t.handle_request(Millis(1_000), v4(9)),
        Admission::Throttled {
            retry_after_ms: 5_000
        }
    );
    let c = t.counters();
    assert_eq!((c.failures, c.throttled, c.throttling), (10, 191, true));
}

#[test]
fn another_peer_is_admitted_while_one_is_throttled() {
    let mut t = Throttle::new(policy(), Millis(0));
    guess(&mut t, Millis(0), v4(9), 200);
    assert_eq!(t.handle_request(Millis(10), v4(2)), Admission::Allow);
}

#[test]
fn the_allowance_comes_back_one_unit_per_refill_period() {
    let mut t = Throttle::new(policy(), Millis(0));
    guess(&mut t, Millis(0), v4(9), 10);
    let Admission::Throttled { retry_after_ms } = t.handle_request(Millis(0), v4(9)) else {
        panic!("throttled")
    };
    let later = Millis(retry_after_ms);
    assert_eq!(guess(&mut t, later, v4(9), 5), 1, "one unit back");
    assert_eq!(
        guess(&mut t, Millis(60_000 + retry_after_ms), v4(9), 20),
        10
    );
}

#[test]
fn the_gateway_allowance_stops_many_peers_guessing_together() {
    let mut t = Throttle::new(policy(), Millis(0));
    let mut compared = 0;
    for last in 0..=255u8 {
        compared += guess(&mut t, Millis(0), v4(last), 10);
    }
    assert_eq!(compared, 60);
    assert!(matches!(
        t.handle_request(Millis(0), v4(77)),
        Admission::Throttled { .. }
    ));
    assert_eq!(t.handle_request(Millis(500), v4(77)), Admission::Allow);
}

#[test]
fn an_episode_is_reported_once_when_it_starts_and_once_when_it_ends() {
    let mut t = Throttle::new(policy(), Millis(0));
    guess(&mut t, Millis(0), v4(9), 50);
    assert_eq!(
        t.poll_event(),
        Some(ThrottleEvent::Started { peer: Some(v4(9)) })
    );
    assert_eq!(t.poll_event(), None, "one start for the whole burst");
    let end = t.poll_timeout().expect("active");
    assert_eq!(end, Millis(6_000));
    t.handle_timeout(Millis(5_999));
    assert_eq!(t.poll_event(), None);
    t.handle_timeout(end);
    assert_eq!(
        t.poll_event(),
        Some(ThrottleEvent::Ended {
            failures: 10,
            refused: 40
        })
    );
    assert_eq!(t.poll_timeout(), None);
    assert!(!t.counters().throttling);
}

#[test]
fn ipv6_peers_count_per_64_and_mapped_ipv4_as_ipv4() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
    let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(peer_key(a), peer_key(b));
    assert_ne!(peer_key(a), peer_key(other));
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
    assert_eq!(peer_key(mapped), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));

    let mut t = Throttle::new(policy(), Millis(0));
    guess(&mut t, Millis(0), a, 10);
    assert!(matches!(
        t.handle_request(Millis(0), b),
        Admission::Throttled { .. }
    ));
    assert_eq!(t.handle_request(Millis(0), other), Admission::Allow);
    assert_eq!(
        t.handle_request(Millis(0), IpAddr::V6(Ipv6Addr::LOCALHOST)),
        Admission::Allow
    );
}

#[test]
fn a_success_gives_no_guesses_back() {
    // There is no success input at all: the allowance only comes back with time.
    let mut t = Throttle::new(policy(), Millis(0));
    guess(&mut t, Millis(0), v4(9), 10);
    assert!(matches!(
        t.handle_request(Millis(100), v4(9)),
        Admission::Throttled { .. }
    ));
}

#[test]
fn tracked_peers_stay_within_the_bound_and_whole_allowances_are_forgotten_first() {
    let small = ThrottlePolicy {
        max_peers: 4,
        global_burst: 1_000_000,
        ..policy()
    };
    let mut t = Throttle::new(small, Millis(0));
    // Peer 1 fails once long ago (whole again by t = 60 s); peers 2..=4 are throttled now.
    guess(&mut t, Millis(0), v4(1), 1);
    for p in 2..=4 {
        guess(&mut t, Millis(60_000), v4(p), 10);
    }
    guess(&mut t, Millis(60_000), v4(5), 1);
    assert_eq!(t.tracked_peers(), 4);
    for p in 2..=4 {
        assert!(
            matches!(
                t.handle_request(Millis(60_000), v4(p)),
                Admission::Throttled { .. }
            ),
            "peer {p} is still throttled: peer 1 made room"
        );
    }
}

proptest! {
    /// Whatever the peers and the timing, memory stays bounded, and no peer has more tokens
    /// compared than its burst plus what time gave back (nor the gateway than its own).
    #[test]
    fn memory_is_bounded_and_no_allowance_is_exceeded(
        steps in prop::collection::vec((0u32..5_000, 0u64..2_000, 1usize..4), 1..400),
        max_peers in 1usize..64,
    ) {
        let policy = ThrottlePolicy { max_peers, ..ThrottlePolicy::default() };
        let mut t = Throttle::new(policy, Millis(0));
        let mut now = Millis(0);
        let mut compared_total = 0u64;
        for (peer, dt, n) in steps {
            now = now + dt;
            let ip = IpAddr::V4(Ipv4Addr::from(peer));
            compared_total += guess(&mut t, now, ip, n) as u64;
            prop_assert!(t.tracked_peers() <= max_peers);
        }
        let earned = now.as_u64() / policy.global_refill_ms;
        prop_assert!(compared_total <= u64::from(policy.global_burst) + earned);
    }

    /// With every peer tracked, a single peer's compared tokens never exceed its allowance.
    #[test]
    fn one_peer_never_gets_more_than_its_allowance(
        steps in prop::collection::vec((0u64..3_000, 1usize..20), 1..200),
    ) {
        let mut t = Throttle::new(ThrottlePolicy::default(), Millis(0));
        let mut now = Millis(0);
        let mut compared = 0u64;
        for (dt, n) in steps {
            now = now + dt;
            compared += guess(&mut t, now, v4(9), n) as u64;
            let allowed = 10 + now.as_u64() / 6_000;
            prop_assert!(compared <= allowed, "{compared} compared by {now:?}");
        }
    }
}
