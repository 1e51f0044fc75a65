//! When to try the broker again after a failed or lost connection.
//!
//! A gateway's broker usually comes back within seconds (a restart, a cellular hand-over), and
//! every second spent waiting after that is a second of latency; a broker gone for an hour is
//! not helped by a gateway knocking every second. So the cap on the wait depends on how long
//! the outage has lasted, not on how many attempts failed:
//!
//! - while the outage is younger than [`BackoffPolicy::recent`], the wait is capped at
//!   [`BackoffPolicy::recent_cap`] (1 s): the gateway is back within about a second of the
//!   broker;
//! - after that the cap grows by a tenth of the outage's further length, up to
//!   [`BackoffPolicy::max`] (30 s after about 7 minutes).
//!
//! Within the cap the wait doubles from [`BackoffPolicy::first`], and each wait is jittered
//! ("equal jitter": half of it fixed, the other half random), so that a fleet that lost the same
//! broker does not come back in lockstep, and no wait is ever shorter than half of `first`: the
//! gateway never spins. A successful connection ends the outage and resets everything.
//!
//! IO-free: the time comes in with each call, the randomness from a seed given at construction
//! (a xorshift generator: this is spreading, not cryptography).

use std::time::Duration;

use outpost_proto::Millis;

/// The back-off's constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The first wait, before jitter (which halves it at most).
    pub first: Duration,
    /// The cap while the outage is recent.
    pub recent_cap: Duration,
    /// How long an outage counts as recent.
    pub recent: Duration,
    /// The cap for the longest outages.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            first: Duration::from_millis(200),
            recent_cap: Duration::from_secs(1),
            recent: Duration::from_secs(120),
            max: Duration::from_secs(30),
        }
    }
}

impl BackoffPolicy {
    /// The cap on a wait when the outage has lasted `outage`.
    #[must_use]
    pub fn cap(&self, outage: Duration) -> Duration {
        let recent_cap = self.recent_cap.max(self.first);
        match outage.checked_sub(self.recent) {
            None => recent_cap,
            Some(beyond) => (recent_cap + beyond / 10).min(self.max.max(recent_cap)),
        }
    }
}

/// The back-off of one uplink: which outage it is in, and how many attempts failed in it.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    rng: u64,
    down_since: Option<Millis>,
    failures: u32,
}

impl Backoff {
    /// A back-off with its jitter drawn from `seed` (any value; 0 is replaced).
    #[must_use]
    pub fn new(policy: BackoffPolicy, seed: u64) -> Backoff {
        Backoff {
            policy,
            // xorshift never leaves 0; any other state is fine.
            rng: if seed == 0 {
                0x9e37_79b9_7f4a_7c15
            } else {
                seed
            },
            down_since: None,
            failures: 0,
        }
    }

    /// A connection attempt failed, or the connection was lost, at `now`: how long to wait
    /// before the next attempt.
    pub fn failed(&mut self, now: Millis) -> Duration {
        let since = *self.down_since.get_or_insert(now);
        self.failures = self.failures.saturating_add(1);
        let cap = self
            .policy
            .cap(Duration::from_millis(now.saturating_since(since)));
        let doublings = (self.failures - 1).min(20);
        let base = self
            .policy
            .first
            .saturating_mul(1 << doublings)
            .min(cap)
            .max(Duration::from_millis(2));
        let half = base / 2;
        let spread = u64::try_from((base - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(self.next_random() % (spread + 1))
    }

    /// The broker accepted a connection: the outage is over.
    pub fn succeeded(&mut self) {
        self.down_since = None;
        self.failures = 0;
    }

    /// When the current outage began (the first failure since the last success), if in one.
    #[must_use]
    pub fn down_since(&self) -> Option<Millis> {
        self.down_since
    }

    /// Failures since the last success.
    #[must_use]
    pub fn failures(&self) -> u32 {
        self.failures
    }

    #[must_use]
    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap()
    }

    #[test]
    fn a_recent_outage_waits_at_most_a_second_and_a_success_starts_over() {
        let mut backoff = Backoff::new(BackoffPolicy::default(), 7);
        let mut now = Millis::ZERO;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let wait = backoff.failed(now);
            waits.push(ms(wait));
            now = now + wait;
        }
        // 200 ms doubling, capped at 1 s, each between half and all of it.
        for (wait, base) in waits
            .iter()
            .zip([200, 400, 800, 1000, 1000, 1000, 1000, 1000])
        {
            assert!((base / 2..=base).contains(wait), "{waits:?}");
        }
        assert_eq!(backoff.failures(), 8);
        assert_eq!(backoff.down_since(), Some(Millis::ZERO));
        backoff.succeeded();
        assert_eq!(backoff.down_since(), None);
        let wait = ms(backoff.failed(now));
        assert!((100..=200).contains(&wait), "{wait}");
        assert_eq!(backoff.down_since(), Some(now));
    }

    #[test]
    fn a_long_outage_waits_longer_up_to_thirty_seconds() {
        let policy = BackoffPolicy::default();
        assert_eq!(policy.cap(Duration::from_secs(0)), Duration::from_secs(1));
        assert_eq!(policy.cap(Duration::from_secs(119)), Duration::from_secs(1));
        assert_eq!(
            policy.cap(Duration::from_secs(220)),
            Duration::from_secs(11)
        );
        assert_eq!(
            policy.cap(Duration::from_secs(3600)),
            Duration::from_secs(30)
        );
        let mut backoff = Backoff::new(policy, 1);
        backoff.failed(Millis::ZERO);
        let mut now = Millis::ZERO;
        for _ in 0..30 {
            now = now + backoff.failed(now);
        }
        let wait = backoff.failed(Millis::from_secs(3600));
        assert!((15_000..=30_000).contains(&ms(wait)), "{wait:?}");
    }

    #[test]
    fn gateways_with_other_seeds_wait_differently() {
        let waits = |seed| {
            let mut backoff = Backoff::new(BackoffPolicy::default(), seed);
            (0..6)
                .map(|_| backoff.failed(Millis::ZERO))
                .collect::<Vec<_>>()
        };
        assert_ne!(waits(1), waits(2));
        assert_eq!(waits(3), waits(3));
    }

    proptest! {
        /// Whatever the policy, the seed and the times of the failures: every wait is at least
        /// half of the first one (never a spin) and at most the cap for the outage so far, and
        /// the first failure after a success waits no longer than the first wait.
        #[test]
        fn waits_stay_within_the_caps_and_restart_after_a_success(
            first_ms in 1u64..2_000,
            recent_cap_ms in 1u64..5_000,
            recent_s in 0u64..600,
            max_ms in 1u64..120_000,
            seed in any::<u64>(),
            steps in proptest::collection::vec((0u64..200_000, any::<bool>()), 1..60),
        ) {
            let policy = BackoffPolicy {
                first: Duration::from_millis(first_ms),
                recent_cap: Duration::from_millis(recent_cap_ms),
                recent: Duration::from_secs(recent_s),
                max: Duration::from_millis(max_ms),
            };
            let mut backoff = Backoff::new(policy, seed);
            let mut now = Millis::ZERO;
            for (advance, success) in steps {
                now = now + advance;
                if success {
                    backoff.succeeded();
                    let wait = backoff.failed(now);
                    prop_assert!(wait <= policy.first.max(Duration::from_millis(2)));
                    prop_assert!(wait >= Duration::from_millis(1));
                    continue;
                }
                let since = backoff.down_since().unwrap_or(now);
                let wait = backoff.failed(now);
                let cap = policy.cap(Duration::from_millis(now - since));
                prop_assert!(wait <= cap.max(Duration::from_millis(2)), "{wait:?} over {cap:?}");
                prop_assert!(
                    wait >= (policy.first.min(cap) / 2).max(Duration::from_millis(1)),
                    "{wait:?} is a spin"
                );
                prop_assert!(wait <= policy.max.max(policy.recent_cap).max(policy.first).max(Duration::from_millis(2)));
                if now - since < ms(policy.recent) {
                    prop_assert!(wait <= policy.recent_cap.max(policy.first).max(Duration::from_millis(2)));
                }
            }
        }
    }
}
