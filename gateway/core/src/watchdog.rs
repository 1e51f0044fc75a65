//! When the daemon may tell systemd it is alive (`WATCHDOG=1`): an IO-free decision from tick
//! times and what the store writer did. The adapter (`outpost::io::systemd::run_watchdog`) feeds
//! it and sends the pings.

use std::time::{Duration, Instant};

/// How much the store writer has done, and how much waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterSnapshot {
    /// Commits tried (successful or not) plus sealing rounds: grows whenever the writer finishes
    /// a piece of work.
    pub progress: u64,
    /// Commands queued that the writer has not taken yet.
    pub queued: usize,
}

/// What the watchdog task does after a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogAction {
    /// Send `WATCHDOG=1`.
    Ping,
    /// Say nothing: systemd restarts the daemon when the period runs out without a ping.
    Withhold(Wedge),
}

/// Why a ping was withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wedge {
    /// The watchdog's own timer fired this late: the runtime did not run it for that long.
    LateTick { late: Duration },
    /// The store writer left `queued` commands waiting without finishing anything for `stalled`.
    WriterStalled { queued: usize, stalled: Duration },
}

impl std::fmt::Display for Wedge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wedge::LateTick { late } => {
                write!(
                    f,
                    "event loop stalled: watchdog tick {} ms late",
                    late.as_millis()
                )
            }
            Wedge::WriterStalled { queued, stalled } => write!(
                f,
                "store writer stalled: {queued} commands waiting, nothing committed or sealed for {} s",
                stalled.as_secs()
            ),
        }
    }
}

/// Decides whether to tell systemd the daemon is alive.
///
/// Design: owns the tick schedule and what it has seen of the store writer; never reads a
/// clock, never sends anything. The adapter (`outpost::io::systemd::run_watchdog`) sleeps until
/// [`Watchdog::poll_timeout`], hands in the time and a [`WriterSnapshot`], and carries out
/// [`Watchdog::poll_action`].
///
/// A tick pings only when both hold:
/// 1. **The event loop runs.** The tick comes every half period (`WatchdogSec / 2`) from a task
///    on the same tokio runtime as everything else, so a runtime that stops running tasks stops
///    the pings by itself. A tick later than a quarter period past its due time withholds its
///    ping: the loop was frozen that long, and the next ping could not come in time anyway.
/// 2. **The store writer moves.** An idle writer is fine (an empty queue says nothing is
///    owed); a writer that has left commands queued for a whole period without finishing a
///    commit or a sealing round is wedged (a commit window is at most 5 s). Without snapshots
///    (no probe wired) only rule 1 applies.
///
/// Withholding is not sticky: a tick that finds both rules met again pings again.
#[derive(Debug, Clone)]
pub struct Watchdog {
    /// Between ticks: half the period, so one late ping is not yet a missed one.
    interval: Duration,
    /// A tick later than this withholds its ping.
    max_lateness: Duration,
    /// Work queued this long without progress means the writer is stuck.
    stall_after: Duration,
    next_tick: Instant,
    /// Writer progress last seen, and since when it has not moved while work was queued.
    writer: Option<(WriterSnapshot, Option<Instant>)>,
    /// The action of the tick just handled, until polled.
    pending: Option<WatchdogAction>,
}

impl Watchdog {
    /// A watchdog for systemd's `period` (`WATCHDOG_USEC`); the first tick is due at `now`.
    #[must_use]
    pub fn new(now: Instant, period: Duration) -> Watchdog {
        let interval = (period / 2).max(Duration::from_millis(1));
        Watchdog {
            interval,
            max_lateness: period / 4,
            stall_after: period,
            next_tick: now,
            writer: None,
            pending: None,
        }
    }

    /// Between pings.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When the next tick is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    /// What the store writer looked like at `now`.
    pub fn handle_writer(&mut self, now: Instant, seen: WriterSnapshot) {
        let since = match self.writer {
            // Nothing owed: whatever the counter did, the writer is keeping up.
            _ if seen.queued == 0 => None,
            // Work waits and nothing finished since last time: the stall goes on (or starts).
            Some((last, since)) if last.progress == seen.progress => since.or(Some(now)),
            // Progress (or the first look): the clock starts now, in case nothing else finishes.
            _ => Some(now),
        };
        self.writer = Some((seen, since));
    }

    /// The tick fired at `now`: decides its action (see [`Watchdog::poll_action`]) and schedules
    /// the next tick one interval from now, so a late tick is not followed by a burst.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late = now.saturating_duration_since(self.next_tick);
        self.next_tick = now + self.interval;
        let stalled = self
            .writer
            .and_then(|(seen, since)| Some((seen.queued, now.saturating_duration_since(since?))));
        self.pending = Some(match stalled {
            _ if late > self.max_lateness => WatchdogAction::Withhold(Wedge::LateTick { late }),
            Some((queued, stalled)) if stalled >= self.stall_after => {
                WatchdogAction::Withhold(Wedge::WriterStalled { queued, stalled })
            }
            _ => WatchdogAction::Ping,
        });
    }

    /// The action of the last tick, once.
    pub fn poll_action(&mut self) -> Option<WatchdogAction> {
        self.pending.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(20);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Ticks on time from `start` for `n` intervals, each after showing the writer `seen`;
    /// returns the actions and the time of the last tick.
    fn tick_on_time(
        w: &mut Watchdog,
        n: usize,
        seen: impl Fn(usize) -> Option<WriterSnapshot>,
    ) -> Vec<WatchdogAction> {
        (0..n)
            .map(|i| {
                let now = w.poll_timeout();
                if let Some(s) = seen(i) {
                    w.handle_writer(now, s);
                }
                w.handle_timeout(now);
                w.poll_action().expect("a tick has an action")
            })
            .collect()
    }

    fn idle() -> Option<WriterSnapshot> {
        Some(WriterSnapshot {
            progress: 7,
            queued: 0,
        })
    }

    #[test]
    fn the_first_tick_is_due_at_once_and_then_every_half_period() {
        let start = Instant::now();
        let mut w = Watchdog::new(start, PERIOD);
        assert_eq!(w.poll_timeout(), start);
        w.handle_timeout(start);
        assert_eq!(w.poll_action(), Some(WatchdogAction::Ping));
        assert_eq!(w.poll_action(), None, "one action per tick");
        assert_eq!(w.poll_timeout(), start + PERIOD / 2);
    }

    #[test]
    fn ticks_on_time_without_a_writer_probe_always_ping() {
        let mut w = Watchdog::new(Instant::now(), PERIOD);
        let actions = tick_on_time(&mut w, 10, |_| None);
        assert!(actions.iter().all(|a| *a == WatchdogAction::Ping));
    }

    #[test]
    fn an_idle_writer_is_alive_however_long_nothing_is_committed() {
        let mut w = Watchdog::new(Instant::now(), PERIOD);
        let actions = tick_on_time(&mut w, 100, |_| idle());
        assert!(actions.iter().all(|a| *a == WatchdogAction::Ping));
    }

    #[test]
    fn a_busy_writer_that_keeps_committing_is_alive() {
        let mut w = Watchdog::new(Instant::now(), PERIOD);
        let actions = tick_on_time(&mut w, 100, |i| {
            Some(WriterSnapshot {
                progress: i as u64,
                queued: 1000,
            })
        });
        assert!(actions.iter().all(|a| *a == WatchdogAction::Ping));
    }

    #[test]
    fn a_writer_with_work_queued_and_no_progress_for_a_period_withholds_the_ping() {
        let start = Instant::now();
        let mut w = Watchdog::new(start, PERIOD);
        let stuck = Some(WriterSnapshot {
            progress: 3,
            queued: 12,
        });
        // Seen stuck at 0, 10 s, 20 s: the stall is a whole period old at the third tick.
        let actions = tick_on_time(&mut w, 3, |_| stuck);
        assert_eq!(actions[..2], [WatchdogAction::Ping, WatchdogAction::Ping]);
        assert_eq!(
            actions[2],
            WatchdogAction::Withhold(Wedge::WriterStalled {
                queued: 12,
                stalled: PERIOD
            })
        );
    }

    #[test]
    fn the_stall_clock_restarts_when_the_writer_finishes_something() {
        let start = Instant::now();
        let mut w = Watchdog::new(start, PERIOD);
        // Stuck for 10 s, then one commit, then stuck again: never a whole period without one.
        let progress = [1, 1, 2, 2, 3, 3, 4, 4];
        let actions = tick_on_time(&mut w, progress.len(), |i| {
            Some(WriterSnapshot {
                progress: progress[i],
                queued: 5,
            })
        });
        assert!(
            actions.iter().all(|a| *a == WatchdogAction::Ping),
            "{actions:?}"
        );
    }

    #[test]
    fn an_emptied_queue_ends_a_stall_even_without_a_new_commit() {
        let mut w = Watchdog::new(Instant::now(), PERIOD);
        let queued = [4, 4, 0, 4, 4];
        let actions = tick_on_time(&mut w, queued.len(), |i| {
            Some(WriterSnapshot {
                progress: 9,
                queued: queued[i],
            })
        });
        assert!(
            actions.iter().all(|a| *a == WatchdogAction::Ping),
            "{actions:?}"
        );
    }

    #[test]
    fn a_writer_that_gets_going_again_resumes_the_pings() {
        let mut w = Watchdog::new(Instant::now(), PERIOD);
        let progress = [1, 1, 1, 1, 2];
        let actions = tick_on_time(&mut w, progress.len(), |i| {
            Some(WriterSnapshot {
                progress: progress[i],
                queued: 5,
            })
        });
        assert_eq!(actions[0..2], [WatchdogAction::Ping, WatchdogAction::Ping]);
        assert!(matches!(actions[2], WatchdogAction::Withhold(_)));
        assert!(matches!(actions[3], WatchdogAction::Withhold(_)));
        assert_eq!(actions[4], WatchdogAction::Ping);
    }

    #[test]
    fn a_tick_late_by_more_than_a_quarter_period_withholds_its_ping() {
        let start = Instant::now();
        let mut w = Watchdog::new(start, PERIOD);
        w.handle_timeout(start);
        assert_eq!(w.poll_action(), Some(WatchdogAction::Ping));
        let due = w.poll_timeout();
        let late = PERIOD / 4 + ms(1);
        w.handle_timeout(due + late);
        assert_eq!(
            w.poll_action(),
            Some(WatchdogAction::Withhold(Wedge::LateTick { late }))
        );
        // The schedule restarts from the late tick; an on-time tick pings again.
        assert_eq!(w.poll_timeout(), due + late + PERIOD / 2);
        w.handle_timeout(w.poll_timeout() + ms(3));
        assert_eq!(w.poll_action(), Some(WatchdogAction::Ping));
    }

    #[test]
    fn a_tick_late_by_up_to_a_quarter_period_still_pings() {
        let start = Instant::now();
        let mut w = Watchdog::new(start, PERIOD);
        w.handle_timeout(start + PERIOD / 4);
        assert_eq!(w.poll_action(), Some(WatchdogAction::Ping));
    }

    #[test]
    fn a_tiny_period_still_ticks_forward() {
        let start = Instant::now();
        let mut w = Watchdog::new(start, Duration::from_micros(1));
        w.handle_timeout(start);
        assert!(w.poll_timeout() > start);
    }
}
