//! When to seal a batch: an IO-free policy.
//!
//! A batch is sealed when the oldest unsealed reading has waited `interval`, or as soon as
//! `max_readings` are waiting. Two things seal earlier:
//!
//! - **The first batch after start** is sealed [`Batcher::first_batch_after`] after the first
//!   reading is committed (or at once for readings left unsealed by the last run), so the cloud
//!   sees the site alive within seconds, not a whole interval later. One small extra batch per
//!   start.
//! - **A priority reading** (a Modbus point marked `priority`, when its value changes) seals the
//!   batch that holds it, with whatever else is pending, right after its commit; at most one such
//!   early seal per `priority_min_interval`, so a chattering point cannot multiply the batches:
//!   one arriving sooner is sealed when that much time has passed since the last early seal.
//!
//! The interval is what the data budget's pacer (`budget::Pacer`) chooses between
//! `uplink.min_batch_interval` and `uplink.max_batch_interval`.

use std::time::Duration;

use outpost_proto::Millis;

/// How long after the first committed reading of a run the first batch is sealed: long enough
/// for the first polls of a site's devices to share it, short enough that the cloud sees the
/// site within seconds of its start.
pub const FIRST_BATCH_AFTER: Duration = Duration::from_secs(1);

/// Design: counts readings committed but not sealed and remembers when the oldest of them was
/// committed; answers "seal now?" and "when to look again?". It never reads a clock or the store.
#[derive(Debug, Clone)]
pub struct Batcher {
    interval: Duration,
    max_readings: usize,
    pending: u64,
    oldest_pending_at: Option<Millis>,
    /// Until the first batch of the run is sealed: how soon after its first reading.
    first_batch_after: Option<Duration>,
    /// The least time between two seals made early for a priority reading.
    priority_min_interval: Duration,
    /// A priority reading committed at this time waits for its early seal.
    priority_at: Option<Millis>,
    /// When the last early seal for a priority reading was made.
    last_priority_seal: Option<Millis>,
    /// A technician asked at this time for what waits to be sealed and sent now.
    requested_at: Option<Millis>,
}

impl Batcher {
    /// A batcher sealing every `interval`, the first batch [`FIRST_BATCH_AFTER`] its first reading,
    /// and a priority reading at most every `priority_min_interval` (never, with
    /// `Duration::MAX`).
    #[must_use]
    pub fn new(interval: Duration, max_readings: usize) -> Self {
        Batcher {
            interval,
            max_readings,
            pending: 0,
            oldest_pending_at: None,
            first_batch_after: Some(FIRST_BATCH_AFTER),
            priority_min_interval: Duration::MAX,
            priority_at: None,
            last_priority_seal: None,
            requested_at: None,
        }
    }

    /// How soon after its first reading the run's first batch is sealed (`None`: a whole
    /// interval, like every other).
    #[must_use]
    pub fn with_first_batch_after(mut self, after: Option<Duration>) -> Self {
        self.first_batch_after = after;
        self
    }

    /// Priority readings seal early, at most once per `min_interval`.
    #[must_use]
    pub fn with_priority_min_interval(mut self, min_interval: Duration) -> Self {
        self.priority_min_interval = min_interval;
        self
    }

    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A new interval (chosen by the budget's pacer); applies to the open window.
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// `readings` more readings were committed at `now`.
    pub fn handle_committed(&mut self, now: Millis, readings: u64) {
        if readings == 0 {
            return;
        }
        self.pending += readings;
        self.oldest_pending_at.get_or_insert(now);
    }

    /// A priority reading was committed at `now` (after [`Batcher::handle_committed`] counted it).
    pub fn handle_priority(&mut self, now: Millis) {
        if self.pending > 0 {
            self.priority_at.get_or_insert(now);
        }
    }

    /// A technician asked at `now` for everything waiting to be sealed at once ("send now",
    /// before leaving a site with a flaky modem). Not rate-limited like priority readings: a
    /// person asks, and the API's login stands before it. Nothing waiting, nothing to do.
    pub fn handle_seal_requested(&mut self, now: Millis) {
        if self.pending > 0 {
            self.requested_at.get_or_insert(now);
        }
    }

    /// A batch was sealed at `now`; `left` readings are still unsealed. Every reading committed
    /// before it, the priority ones too, is in a batch now.
    pub fn handle_sealed(&mut self, now: Millis, left: u64) {
        if self.priority_at.take().is_some() {
            self.last_priority_seal = Some(now);
        }
        self.requested_at = None;
        self.first_batch_after = None;
        self.pending = left;
        self.oldest_pending_at = (left > 0).then_some(now);
    }

    /// Whether a batch should be sealed at `now`.
    #[must_use]
    pub fn poll_seal(&self, now: Millis) -> bool {
        self.pending >= self.max_readings as u64 || self.poll_timeout().is_some_and(|at| now >= at)
    }

    /// When the open window closes, if any reading is waiting: a whole interval after its first
    /// reading, or sooner for the run's first batch or a priority reading.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        let oldest = self.oldest_pending_at?;
        let mut at = oldest + self.interval;
        if let Some(after) = self.first_batch_after {
            at = at.min(oldest + after);
        }
        if let Some(priority) = self.priority_at {
            let allowed = self
                .last_priority_seal
                .map_or(priority, |last| last + self.priority_min_interval);
            at = at.min(priority.max(allowed));
        }
        if let Some(requested) = self.requested_at {
            at = at.min(requested);
        }
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The behaviour before the first batch and priority readings sealed early.
    fn plain(interval: Duration, max_readings: usize) -> Batcher {
        Batcher::new(interval, max_readings).with_first_batch_after(None)
    }

    #[test]
    fn nothing_waits_so_nothing_is_sealed() {
        let b = Batcher::new(Duration::from_secs(60), 1000);
        assert!(!b.poll_seal(Millis::from_secs(1000)));
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn a_window_closes_interval_after_its_first_reading() {
        let mut b = plain(Duration::from_secs(60), 1000);
        b.handle_committed(Millis::from_secs(10), 16);
        b.handle_committed(Millis::from_secs(50), 16);
        assert_eq!(b.poll_timeout(), Some(Millis::from_secs(70)));
        assert!(!b.poll_seal(Millis::from_secs(69)));
        assert!(b.poll_seal(Millis::from_secs(70)));
        b.handle_sealed(Millis::from_secs(70), 0);
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn a_technicians_request_seals_what_waits_at_once_and_only_that() {
        let mut b = plain(Duration::from_secs(600), 1000);
        b.handle_seal_requested(Millis::from_secs(5));
        assert_eq!(b.poll_timeout(), None, "nothing waits: nothing to seal");
        b.handle_committed(Millis::from_secs(10), 16);
        b.handle_seal_requested(Millis::from_secs(12));
        assert!(b.poll_seal(Millis::from_secs(12)));
        b.handle_sealed(Millis::from_secs(12), 0);
        b.handle_committed(Millis::from_secs(13), 16);
        assert_eq!(
            b.poll_timeout(),
            Some(Millis::from_secs(613)),
            "the next window is whole"
        );
    }

    #[test]
    fn a_full_batch_is_sealed_at_once() {
        let mut b = plain(Duration::from_secs(60), 100);
        b.handle_committed(Millis::from_secs(1), 100);
        assert!(b.poll_seal(Millis::from_secs(1)));
        b.handle_sealed(Millis::from_secs(1), 20);
        assert!(!b.poll_seal(Millis::from_secs(2)));
        assert_eq!(b.poll_timeout(), Some(Millis::from_secs(61)));
    }

    #[test]
    fn a_stretched_interval_applies_to_the_open_window() {
        let mut b = plain(Duration::from_secs(60), 1000);
        b.handle_committed(Millis::from_secs(0), 1);
        b.set_interval(Duration::from_secs(300));
        assert!(!b.poll_seal(Millis::from_secs(61)));
        assert!(b.poll_seal(Millis::from_secs(300)));
    }

    #[test]
    fn the_first_batch_of_a_run_is_sealed_soon_after_its_first_reading_then_every_interval() {
        let mut b = Batcher::new(Duration::from_secs(60), 1000);
        // Nothing yet: nothing to seal, however long it waits.
        assert_eq!(b.poll_timeout(), None);
        b.handle_committed(Millis::from_secs(5), 10);
        assert_eq!(
            b.poll_timeout(),
            Some(Millis::from_secs(5) + FIRST_BATCH_AFTER)
        );
        assert!(b.poll_seal(Millis::from_secs(5) + FIRST_BATCH_AFTER));
        b.handle_sealed(Millis::from_secs(6), 0);
        b.handle_committed(Millis::from_secs(7), 10);
        assert_eq!(b.poll_timeout(), Some(Millis::from_secs(67)));
    }

    #[test]
    fn a_priority_reading_seals_at_once_then_at_most_once_per_min_interval() {
        let mut b = plain(Duration::from_secs(60), 1000)
            .with_priority_min_interval(Duration::from_secs(30));
        b.handle_committed(Millis::from_secs(0), 10);
        b.handle_committed(Millis::from_secs(10), 1);
        b.handle_priority(Millis::from_secs(10));
        assert!(b.poll_seal(Millis::from_secs(10)));
        b.handle_sealed(Millis::from_secs(10), 0);
        // The next one, 5 s later: waits until 30 s after the last early seal.
        b.handle_committed(Millis::from_secs(15), 1);
        b.handle_priority(Millis::from_secs(15));
        assert_eq!(b.poll_timeout(), Some(Millis::from_secs(40)));
        assert!(!b.poll_seal(Millis::from_secs(39)));
        b.handle_committed(Millis::from_secs(20), 1);
        b.handle_priority(Millis::from_secs(20));
        assert_eq!(b.poll_timeout(), Some(Millis::from_secs(40)));
        b.handle_sealed(Millis::from_secs(40), 0);
        // Ordinary readings wait for the interval again.
        b.handle_committed(Millis::from_secs(41), 10);
        assert_eq!(b.poll_timeout(), Some(Millis::from_secs(101)));
    }

    #[test]
    fn a_priority_reading_already_sealed_by_the_interval_asks_for_nothing_more() {
        let mut b = plain(Duration::from_secs(60), 1000);
        b.handle_priority(Millis::from_secs(1));
        assert_eq!(b.poll_timeout(), None);
    }

    /// What a run of the batcher did: when each seal happened, and whether it was one the
    /// priority readings asked for.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Readings committed, `priority` among them, `gap` ms after the previous step.
        Commit {
            gap: u64,
            readings: u64,
            priority: bool,
        },
        /// Time passes: the writer wakes at the batcher's deadline if it comes before `gap`.
        Wait { gap: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..5_000, 1u64..50, any::<bool>()).prop_map(|(gap, readings, priority)| {
                Step::Commit {
                    gap,
                    readings,
                    priority,
                }
            }),
            (0u64..120_000).prop_map(|gap| Step::Wait { gap }),
        ]
    }

    proptest! {
        /// Every reading is sealed within the interval of its commit; a priority reading within
        /// `priority_min_interval`; and seals made early for priority readings (not the first
        /// batch's) are never closer together than `priority_min_interval`.
        #[test]
        fn readings_wait_at_most_their_bound_and_early_seals_are_rate_limited(
            steps in proptest::collection::vec(step(), 1..200),
            interval_s in 1u64..120,
            min_interval_s in 1u64..60,
        ) {
            let interval = Duration::from_secs(interval_s);
            let min_interval = Duration::from_secs(min_interval_s);
            let mut b = Batcher::new(interval, 1_000_000).with_priority_min_interval(min_interval);
            let mut now = Millis(0);
            // (committed at, bound) of each commit not sealed yet.
            let mut waiting: Vec<(Millis, Duration)> = Vec::new();
            // Seals made while a priority reading waited.
            let mut priority_seals: Vec<Millis> = Vec::new();
            let mut priority_waiting = false;
            let mut first = true;
            let mut seal = |b: &mut Batcher, at: Millis, waiting: &mut Vec<(Millis, Duration)>,
                            priority_waiting: &mut bool, priority_seals: &mut Vec<Millis>|
             -> Result<(), TestCaseError> {
                let before_first = std::mem::replace(&mut first, false);
                let early = waiting.iter().all(|&(c, _)| at < c + interval);
                if !before_first && early {
                    // Early: only a priority reading asks for that, and not too often.
                    prop_assert!(*priority_waiting, "a seal at {at:?} before any interval ended");
                    if let Some(&last) = priority_seals.last() {
                        prop_assert!(at >= last + min_interval,
                            "early seals at {last:?} and {at:?}, closer than {min_interval:?}");
                    }
                }
                for &(committed, bound) in waiting.iter() {
                    let bound = if before_first { bound.min(FIRST_BATCH_AFTER) } else { bound };
                    prop_assert!(at <= committed + bound,
                        "a reading committed at {committed:?} waited until {at:?}, bound {bound:?}");
                }
                if std::mem::take(priority_waiting) {
                    priority_seals.push(at);
                }
                waiting.clear();
                b.handle_sealed(at, 0);
                Ok(())
            };
            for step in steps {
                let gap = match step {
                    Step::Commit { gap, .. } | Step::Wait { gap } => gap,
                };
                let until = now + Duration::from_millis(gap);
                // The writer wakes at every deadline before `until`.
                while let Some(at) = b.poll_timeout().filter(|&at| at <= until) {
                    let at = at.max(now);
                    prop_assert!(b.poll_seal(at));
                    seal(&mut b, at, &mut waiting, &mut priority_waiting, &mut priority_seals)?;
                    now = at;
                }
                now = until;
                if let Step::Commit { readings, priority, .. } = step {
                    b.handle_committed(now, readings);
                    // A priority reading waits at most the rate limit since the last early seal
                    // (or the interval, whichever seals first).
                    let bound = if priority {
                        b.handle_priority(now);
                        priority_waiting = true;
                        let since = priority_seals.last().map_or(Duration::ZERO, |&last| {
                            min_interval.saturating_sub(Duration::from_millis(now - last))
                        });
                        since.min(interval)
                    } else {
                        interval
                    };
                    waiting.push((now, bound));
                    if b.poll_seal(now) {
                        seal(&mut b, now, &mut waiting, &mut priority_waiting, &mut priority_seals)?;
                    }
                }
            }
        }
    }
}
