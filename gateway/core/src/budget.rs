//! The data budget: what the month's uplink traffic is heading for, and how long to make
//! batches so it stays within `uplink.monthly_budget_bytes` while readings reach the cloud as
//! soon as the budget allows. IO-free: usage and time in, an interval out.
//!
//! The interval works on the budget because most of the per-batch cost is fixed (MQTT and TLS
//! framing, the batch header, the acknowledgement, and the compressor's start-up cost on a small
//! body): fewer, larger batches cost fewer bytes per reading; more, smaller ones bring readings
//! sooner. The [`Pacer`] moves it between `uplink.min_batch_interval` and
//! `uplink.max_batch_interval` by the month's [`pace`]; without a budget it stays
//! `uplink.batch_interval`. Alerts do not go through batches, so they are never delayed by it.

use std::time::Duration;

/// A calendar date in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

impl Date {
    /// The UTC date of a Unix time in milliseconds (Hinnant's civil-from-days).
    #[must_use]
    pub fn from_unix_ms(ms: i64) -> Date {
        let days = ms.div_euclid(86_400_000);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Date { year, month, day }
    }

    #[must_use]
    pub fn days_in_month(self) -> u32 {
        match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            _ if (self.year % 4 == 0 && self.year % 100 != 0) || self.year % 400 == 0 => 29,
            _ => 28,
        }
    }

    /// `YYYY-MM-DD`, the store's key for a day.
    #[must_use]
    pub fn key(self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// The date of a `YYYY-MM-DD` key; `None` if it is not one.
    #[must_use]
    pub fn from_key(key: &str) -> Option<Date> {
        let mut parts = key.split('-');
        let date = Date {
            year: parts.next()?.parse().ok()?,
            month: parts.next()?.parse().ok()?,
            day: parts.next()?.parse().ok()?,
        };
        (parts.next().is_none()
            && (1..=12).contains(&date.month)
            && (1..=date.days_in_month()).contains(&date.day))
        .then_some(date)
    }

    /// `YYYY-MM-`, the prefix of every day of the month.
    #[must_use]
    pub fn month_prefix(self) -> String {
        format!("{:04}-{:02}-", self.year, self.month)
    }
}

/// The month's traffic and where it is heading.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Projection {
    pub bytes_today: u64,
    pub bytes_month: u64,
    /// `bytes_month` extended linearly to the end of the month.
    pub projected_month: u64,
    /// 0 when no budget is set.
    pub budget: u64,
}

/// Projects the month from its usage so far at `now_ms`.
#[must_use]
pub fn project(now_ms: i64, bytes_today: u64, bytes_month: u64, budget: u64) -> Projection {
    let date = Date::from_unix_ms(now_ms);
    let ms_into_day = now_ms.rem_euclid(86_400_000) as f64;
    let elapsed_days = f64::from(date.day - 1) + ms_into_day / 86_400_000.0;
    // Early in the month a few hours say little: project from at least one day.
    let elapsed = elapsed_days.max(1.0);
    let projected_month = (bytes_month as f64 * f64::from(date.days_in_month()) / elapsed) as u64;
    Projection {
        bytes_today,
        bytes_month,
        projected_month: projected_month.max(bytes_month),
        budget,
    }
}

/// The batch interval's bounds: `uplink.min_batch_interval` ≤ `uplink.batch_interval` ≤
/// `uplink.max_batch_interval`, and the budget they are paced by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Bytes a month; 0: no budget, and the interval is always `target`.
    pub budget: u64,
    /// The shortest interval, taken while the month's traffic is well under its budget's pace.
    pub floor: Duration,
    /// The interval at start, and always without a budget.
    pub target: Duration,
    /// The longest interval, taken while it is over.
    pub ceiling: Duration,
}

/// The share of what is left of the budget the pacer aims to spend; the rest is a margin for
/// what its model does not foresee (a reconnection's handshake, a backlog after an outage).
pub const AIM: f64 = 0.9;

/// A shorter interval is taken only when it is at most this share of the current one: the
/// hysteresis that keeps the choice still while the pace moves a little. A longer one is taken
/// at once (the budget comes first).
pub const SHORTEN_BELOW: f64 = 0.8;

/// The pacer measures the traffic at one interval for at least this long, and at least
/// [`DWELL_BATCHES`] of its batches, before it chooses again.
pub const MIN_DWELL: Duration = Duration::from_secs(10 * 60);
/// See [`MIN_DWELL`].
pub const DWELL_BATCHES: u32 = 4;

/// The month's pace: the uplink's byte rate now over the rate that would spend exactly what is
/// left of `budget` by the end of the month at `now_ms` (Unix ms, trusted). Above 1 the month
/// heads over budget; `f64::INFINITY` once nothing is left.
#[must_use]
pub fn pace(rate_bytes_per_s: f64, now_ms: i64, bytes_month: u64, budget: u64) -> f64 {
    let date = Date::from_unix_ms(now_ms);
    let ms_into_month = i64::from(date.day - 1) * 86_400_000 + now_ms.rem_euclid(86_400_000);
    let remaining_s =
        ((i64::from(date.days_in_month()) * 86_400_000 - ms_into_month).max(1_000)) as f64 / 1000.0;
    let left = budget.saturating_sub(bytes_month) as f64;
    let allowed = left / remaining_s;
    if allowed <= 0.0 {
        return f64::INFINITY;
    }
    rate_bytes_per_s.max(0.0) / allowed
}

/// The interval to use next, from the current one and the month's [`pace`] at it.
///
/// The model: the traffic's rate is inversely proportional to the interval (as if all of it
/// were per-batch overhead). That overstates what a shorter interval costs (the readings cost
/// the same however they are batched), so each step towards the floor spends at most what is
/// left, and the next measurement finds room for another: the choice closes in on the shortest
/// affordable interval from the safe side, without oscillating. Over pace, it lengthens at
/// once; under, it shortens only by a step of at least `1 - SHORTEN_BELOW` (hysteresis).
///
/// Properties (tested): always within `floor..=ceiling`; `target` without a budget;
/// non-decreasing in `pace`; by the model, the month's projected bytes at the chosen interval
/// stay within the budget whenever the ceiling's would.
#[must_use]
pub fn paced_interval(current: Duration, pace: f64, pacing: &Pacing) -> Duration {
    let (floor, ceiling) = (pacing.floor, pacing.ceiling.max(pacing.floor));
    if pacing.budget == 0 {
        return pacing.target.clamp(floor, ceiling);
    }
    let current = current.clamp(floor, ceiling);
    if pace.is_nan() {
        return current;
    }
    let wanted_s = (current.as_secs_f64() * pace / AIM).min(ceiling.as_secs_f64());
    let wanted = Duration::from_secs_f64(wanted_s.max(0.0)).clamp(floor, ceiling);
    if wanted > current || wanted <= current.mul_f64(SHORTEN_BELOW) {
        wanted
    } else {
        current
    }
}

/// The pacer: measures the uplink's traffic at the interval in force and, every
/// [`MIN_DWELL`] (or [`DWELL_BATCHES`] batches, if longer), chooses the next by
/// [`paced_interval`]. IO-free: the meter's count, monotonic and wall time in; the interval out.
#[derive(Debug, Clone)]
pub struct Pacer {
    pacing: Pacing,
    current: Duration,
    /// Where the measurement at the current interval began: monotonic ms, metered bytes.
    window: Option<(u64, u64)>,
}

impl Pacer {
    /// Starts at `pacing.target`.
    #[must_use]
    pub fn new(pacing: Pacing) -> Pacer {
        let current = pacing
            .target
            .clamp(pacing.floor, pacing.ceiling.max(pacing.floor));
        Pacer {
            pacing,
            current,
            window: None,
        }
    }

    #[must_use]
    pub fn interval(&self) -> Duration {
        self.current
    }

    /// At monotonic time `mono_ms` the uplink's meter has counted `metered` bytes (both
    /// directions, since start); `month` is the trusted wall time (Unix ms) and the bytes the
    /// month has used, `None` while the clock is not trusted. Returns the interval to use.
    ///
    /// A window in which nothing crossed the uplink (it is down, or nobody pulls) says nothing
    /// about the cost of batches: the interval stays.
    pub fn handle_usage(
        &mut self,
        mono_ms: u64,
        metered: u64,
        month: Option<(i64, u64)>,
    ) -> Duration {
        if self.pacing.budget == 0 {
            return self.current;
        }
        // The month already projected over its budget (or spent): lengthen at once, by how far
        // over it is, without waiting for a whole measurement: the budget comes first.
        if let Some((now_ms, bytes_month)) = month {
            let projected = project(now_ms, 0, bytes_month, self.pacing.budget).projected_month;
            if projected > self.pacing.budget {
                let over = projected as f64 / self.pacing.budget as f64;
                let longer = paced_interval(self.current, over, &self.pacing);
                if longer > self.current {
                    self.current = longer;
                    self.window = Some((mono_ms, metered));
                    return self.current;
                }
            }
        }
        let (start_ms, start_bytes) = *self.window.get_or_insert((mono_ms, metered));
        let elapsed_ms = mono_ms.saturating_sub(start_ms);
        let dwell = MIN_DWELL.max(self.current * DWELL_BATCHES);
        if u128::from(elapsed_ms) < dwell.as_millis() {
            return self.current;
        }
        self.window = Some((mono_ms, metered));
        let bytes = metered.saturating_sub(start_bytes);
        let Some((now_ms, bytes_month)) = month else {
            return self.current;
        };
        if bytes == 0 {
            return self.current;
        }
        let rate = bytes as f64 * 1000.0 / elapsed_ms as f64;
        let pace = pace(rate, now_ms, bytes_month, self.pacing.budget);
        self.current = paced_interval(self.current, pace, &self.pacing);
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn dates_come_out_right_across_leap_years_and_month_ends() {
        assert_eq!(
            Date::from_unix_ms(0),
            Date {
                year: 1970,
                month: 1,
                day: 1
            }
        );
        // 2024-02-29T12:00Z
        assert_eq!(
            Date::from_unix_ms(1_709_208_000_000),
            Date {
                year: 2024,
                month: 2,
                day: 29
            }
        );
        assert_eq!(Date::from_unix_ms(1_709_208_000_000).days_in_month(), 29);
        // 2026-11-27T14:00Z
        assert_eq!(Date::from_unix_ms(1_795_788_000_000).key(), "2026-11-27");
        let d = Date::from_unix_ms(1_795_788_000_000);
        assert_eq!(Date::from_key(&d.key()), Some(d));
        assert_eq!(Date::from_key("2026-02-30"), None);
        assert_eq!(Date::from_key("2026-11"), None);
        assert_eq!(
            Date {
                year: 2100,
                month: 2,
                day: 1
            }
            .days_in_month(),
            28
        );
    }

    #[test]
    fn the_month_is_projected_linearly_from_its_usage_so_far() {
        // 2026-11-16T00:00Z: 15 days of a 30-day month gone.
        let now = 1_795_788_000_000 - 11 * DAY - 14 * 3_600_000;
        assert_eq!(Date::from_unix_ms(now).key(), "2026-11-16");
        let p = project(now, 1000, 15_000, 0);
        assert_eq!(p.projected_month, 30_000);
    }

    const PACING: Pacing = Pacing {
        budget: 1_000_000_000,
        floor: Duration::from_secs(5),
        target: Duration::from_secs(60),
        ceiling: Duration::from_secs(900),
    };

    #[test]
    fn without_a_budget_the_interval_is_batch_interval_whatever_the_pace() {
        let pacing = Pacing {
            budget: 0,
            ..PACING
        };
        for pace in [0.0, 0.5, 2.0, f64::INFINITY] {
            assert_eq!(
                paced_interval(Duration::from_secs(5), pace, &pacing),
                pacing.target
            );
        }
        let mut pacer = Pacer::new(pacing);
        let hour = 3_600_000;
        assert_eq!(
            pacer.handle_usage(hour, 1, Some((1_795_788_000_000, 0))),
            pacing.target
        );
        assert_eq!(
            pacer.handle_usage(2 * hour, 2, Some((1_795_788_000_000, 0))),
            pacing.target
        );
    }

    #[test]
    fn under_pace_batches_get_shorter_over_it_longer_and_near_it_they_stay() {
        let current = Duration::from_secs(60);
        // A tenth of the pace: 60 s × 0.1 / 0.9.
        assert_eq!(
            paced_interval(current, 0.1, &PACING).as_millis(),
            Duration::from_secs_f64(60.0 * 0.1 / AIM).as_millis()
        );
        assert_eq!(paced_interval(current, 0.01, &PACING), PACING.floor);
        // Twice the pace: stretched at once.
        assert_eq!(
            paced_interval(current, 1.8, &PACING),
            Duration::from_secs(120)
        );
        assert_eq!(paced_interval(current, 1000.0, &PACING), PACING.ceiling);
        assert_eq!(
            paced_interval(current, f64::INFINITY, &PACING),
            PACING.ceiling
        );
        // Just under the aim: not worth a change.
        assert_eq!(paced_interval(current, 0.85, &PACING), current);
        assert_eq!(paced_interval(current, AIM, &PACING), current);
    }

    #[test]
    fn the_pace_is_the_rate_now_over_what_the_rest_of_the_month_allows() {
        // 2026-11-16T00:00Z: 15 days of 30 left; half of 2.592 GB used: 1.296 GB over 1.296 Ms
        // allows 1000 B/s.
        let now = 1_795_788_000_000 - 11 * DAY - 14 * 3_600_000;
        let p = pace(500.0, now, 1_296_000_000, 2_592_000_000);
        assert!((p - 0.5).abs() < 1e-9, "{p}");
        assert_eq!(pace(1.0, now, 3_000_000_000, 2_592_000_000), f64::INFINITY);
    }

    #[test]
    fn the_pacer_measures_a_whole_dwell_before_it_chooses_and_holds_without_traffic() {
        let now = 1_795_788_000_000 - 11 * DAY - 14 * 3_600_000;
        let mut pacer = Pacer::new(PACING);
        let dwell = MIN_DWELL.max(PACING.target * DWELL_BATCHES).as_millis() as u64;
        assert_eq!(pacer.handle_usage(0, 0, Some((now, 0))), PACING.target);
        // 100 B/s where 386 B/s would do (half of 1 GB left for 15 days): not before the dwell
        // is over.
        assert_eq!(
            pacer.handle_usage(dwell - 1, (dwell - 1) / 10, Some((now, 0))),
            PACING.target
        );
        let month = Some((now, 500_000_000));
        let shorter = pacer.handle_usage(dwell, dwell / 10, month);
        assert!(shorter < PACING.target, "{shorter:?}");
        // A window with no traffic at all (the uplink down) changes nothing.
        let dwell2 = MIN_DWELL.max(shorter * DWELL_BATCHES).as_millis() as u64;
        assert_eq!(
            pacer.handle_usage(dwell + dwell2, dwell / 10, month),
            shorter
        );
        // Nor does an untrusted clock.
        assert_eq!(
            pacer.handle_usage(dwell + 2 * dwell2, dwell / 10 + 1_000_000, None),
            shorter
        );
    }

    #[test]
    fn a_month_projected_over_its_budget_lengthens_the_interval_at_once() {
        let now = 1_795_788_000_000 - 11 * DAY - 14 * 3_600_000;
        let mut pacer = Pacer::new(PACING);
        assert_eq!(pacer.handle_usage(0, 0, Some((now, 0))), PACING.target);
        // 15 days of 30 in, 0.75 of the 1 GB spent: the month projects to 1.5 GB. Ten seconds
        // in, no dwell waited.
        let longer = pacer.handle_usage(10_000, 1_000, Some((now, 750_000_000)));
        assert!(longer > PACING.target, "{longer:?}");
        // Still over at the next tally: longer again, up to the ceiling.
        let spent = Some((now, PACING.budget));
        let longest = pacer.handle_usage(20_000, 2_000, spent);
        assert!(longest > longer && longest <= PACING.ceiling, "{longest:?}");
        for t in 3..10 {
            pacer.handle_usage(t * 10_000, t * 1_000, spent);
        }
        assert_eq!(pacer.interval(), PACING.ceiling);
    }

    #[test]
    fn a_site_paced_by_the_model_settles_without_oscillating_and_within_budget() {
        // A site whose traffic is 2 B/s of readings plus 400 B a batch, with a budget that
        // allows 10 B/s: the interval settles near 400 / (0.9 × 10 − 2) ≈ 57 s, from above or
        // below, and never swings back.
        let now = 1_795_788_000_000 - 11 * DAY - 14 * 3_600_000;
        let budget = 25_920_000; // 10 B/s over 30 days
        for start in [
            Duration::from_secs(5),
            Duration::from_secs(60),
            Duration::from_secs(900),
        ] {
            let pacing = Pacing {
                budget,
                floor: Duration::from_secs(1),
                target: start,
                ceiling: Duration::from_secs(900),
            };
            let mut pacer = Pacer::new(pacing);
            let (mut mono, mut metered) = (0u64, 0u64);
            pacer.handle_usage(mono, metered, Some((now, budget / 2)));
            let mut seen = vec![pacer.interval()];
            for _ in 0..40 {
                let dwell = MIN_DWELL.max(pacer.interval() * DWELL_BATCHES).as_millis() as u64;
                let rate = 2.0 + 400.0 / pacer.interval().as_secs_f64();
                mono += dwell;
                metered += (rate * dwell as f64 / 1000.0) as u64;
                seen.push(pacer.handle_usage(mono, metered, Some((now, budget / 2))));
            }
            let last = *seen.last().unwrap();
            let rate = 2.0 + 400.0 / last.as_secs_f64();
            assert!(rate <= 10.0, "{start:?}: settled at {last:?}, {rate} B/s");
            assert!(
                last < Duration::from_secs(80),
                "{start:?}: settled at {last:?}"
            );
            // Monotone: one direction of travel, no swing back.
            let rising = seen.windows(2).all(|w| w[0] <= w[1]);
            let falling = seen.windows(2).all(|w| w[0] >= w[1]);
            assert!(rising || falling, "{start:?}: {seen:?}");
        }
    }

    fn pacing() -> impl Strategy<Value = Pacing> {
        (1u64..10_000_000_000, 1u64..600, 0u64..600, 0u64..86_400).prop_map(
            |(budget, floor, up, up2)| {
                let floor = Duration::from_secs(floor);
                let target = floor + Duration::from_secs(up);
                Pacing {
                    budget,
                    floor,
                    target,
                    ceiling: target + Duration::from_secs(up2),
                }
            },
        )
    }

    proptest! {
        #[test]
        fn the_interval_stays_within_floor_and_ceiling(
            pacing in pacing(), current_s in 0u64..100_000, pace in 0.0f64..1e6,
        ) {
            let chosen = paced_interval(Duration::from_secs(current_s), pace, &pacing);
            prop_assert!(pacing.floor <= chosen && chosen <= pacing.ceiling, "{chosen:?}");
        }

        #[test]
        fn a_faster_pace_never_shortens_the_interval(
            pacing in pacing(), current_s in 0u64..100_000, a in 0.0f64..100.0, b in 0.0f64..100.0,
        ) {
            let current = Duration::from_secs(current_s);
            let (slow, fast) = (a.min(b), a.max(b));
            prop_assert!(paced_interval(current, slow, &pacing) <= paced_interval(current, fast, &pacing));
        }

        /// By the model (traffic ∝ 1 / interval, measured at `current`): the month's projection
        /// at the chosen interval is within budget whenever the ceiling's is.
        #[test]
        fn the_projected_month_stays_within_budget_when_the_ceiling_would(
            pacing in pacing(),
            current_s in 1u64..100_000,
            rate in 0.0f64..100_000.0,
            day_ms in 0i64..(30 * DAY),
            used_share in 0.0f64..1.2,
        ) {
            let now = 1_793_491_200_000 + day_ms; // 2026-11-01T00:00Z + up to 30 days
            let used = (pacing.budget as f64 * used_share) as u64;
            let current = Duration::from_secs(current_s).clamp(pacing.floor, pacing.ceiling);
            let p = pace(rate, now, used, pacing.budget);
            let chosen = paced_interval(current, p, &pacing);
            let remaining_s = ((30 * DAY - day_ms).max(1000)) as f64 / 1000.0;
            let projected = |interval: Duration| {
                used as f64 + rate * current.as_secs_f64() / interval.as_secs_f64() * remaining_s
            };
            let budget = pacing.budget as f64;
            if projected(pacing.ceiling) <= budget {
                prop_assert!(projected(chosen) <= budget * (1.0 + 1e-9) + 1.0,
                    "chosen {chosen:?} projects {} over {budget}", projected(chosen));
            }
        }
    }
}
