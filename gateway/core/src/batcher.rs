//! When to seal a batch: an IO-free policy.
//!
//! A batch is sealed when the oldest unsealed reading has waited `interval`, or as soon as
//! `max_readings` are waiting. The interval is what the cost policy stretches when the month's
//! projected traffic would exceed its budget (see `uplink` metering).

use std::time::Duration;

use outpost_proto::Millis;

/// Design: counts readings committed but not sealed and remembers when the oldest of them was
/// committed; answers "seal now?" and "when to look again?". It never reads a clock or the store.
#[derive(Debug, Clone)]
pub struct Batcher {
    interval: Duration,
    max_readings: usize,
    pending: u64,
    oldest_pending_at: Option<Millis>,
}

impl Batcher {
    #[must_use]
    pub fn new(interval: Duration, max_readings: usize) -> Self {
        Batcher {
            interval,
            max_readings,
            pending: 0,
            oldest_pending_at: None,
        }
    }

    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A new interval (stretched or restored by the cost policy); applies to the open window.
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

    /// A batch of `readings` was sealed at `now`; `left` readings are still unsealed.
    pub fn handle_sealed(&mut self, now: Millis, left: u64) {
        self.pending = left;
        self.oldest_pending_at = (left > 0).then_some(now);
    }

    /// Whether a batch should be sealed at `now`.
    #[must_use]
    pub fn poll_seal(&self, now: Millis) -> bool {
        self.pending >= self.max_readings as u64 || self.poll_timeout().is_some_and(|at| now >= at)
    }

    /// When the open window closes, if any reading is waiting.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.oldest_pending_at.map(|at| at + self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_waits_so_nothing_is_sealed() {
        let b = Batcher::new(Duration::from_secs(60), 1000);
        assert!(!b.poll_seal(Millis::from_secs(1000)));
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn a_window_closes_interval_after_its_first_reading() {
        let mut b = Batcher::new(Duration::from_secs(60), 1000);
        b.handle_committed(Millis::from_secs(10), 16);
        b.handle_committed(Millis::from_secs(50), 16);
        assert_eq!(b.poll_timeout(), Some(Millis::from_secs(70)));
        assert!(!b.poll_seal(Millis::from_secs(69)));
        assert!(b.poll_seal(Millis::from_secs(70)));
        b.handle_sealed(Millis::from_secs(70), 0);
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn a_full_batch_is_sealed_at_once() {
        let mut b = Batcher::new(Duration::from_secs(60), 100);
        b.handle_committed(Millis::from_secs(1), 100);
        assert!(b.poll_seal(Millis::from_secs(1)));
        b.handle_sealed(Millis::from_secs(1), 20);
        assert!(!b.poll_seal(Millis::from_secs(2)));
        assert_eq!(b.poll_timeout(), Some(Millis::from_secs(61)));
    }

    #[test]
    fn a_stretched_interval_applies_to_the_open_window() {
        let mut b = Batcher::new(Duration::from_secs(60), 1000);
        b.handle_committed(Millis::from_secs(0), 1);
        b.set_interval(Duration::from_secs(300));
        assert!(!b.poll_seal(Millis::from_secs(61)));
        assert!(b.poll_seal(Millis::from_secs(300)));
    }
}
