//! Daily partitions of the readings table (UTC days). A batch's readings go into the partition
//! of their day when that day lies in the kept window (from `retention_days` ago to
//! `ahead_days` from now); readings outside it (a gateway clock in 1970, a node's in 2099) go to
//! the default partition, so a wrong clock never makes thousands of partitions.

use std::ops::RangeInclusive;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// The retention and look-ahead that decide which days get their own partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Days kept; `None` keeps everything (every day in the past gets a partition).
    pub retention_days: Option<u32>,
    /// Days after today that get a partition (clocks a little ahead, midnight races).
    pub ahead_days: u32,
}

/// The UTC day (days since 1970-01-01) of a Unix-millisecond time.
#[must_use]
pub fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

/// `readings_YYYYMMDD` for a day, or `None` outside years 1..=9999.
#[must_use]
pub fn partition_name(day: i64) -> Option<String> {
    Some(format!("readings_{}", iso_date(day)?.replace('-', "")))
}

/// `YYYY-MM-DD` of a day, for the partition's bounds.
#[must_use]
pub fn iso_date(day: i64) -> Option<String> {
    let date = date_of(day)?;
    Some(format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    ))
}

fn date_of(day: i64) -> Option<time::Date> {
    let julian = i32::try_from(day.checked_add(UNIX_EPOCH_JULIAN_DAY)?).ok()?;
    let date = time::Date::from_julian_day(julian).ok()?;
    (1..=9999).contains(&date.year()).then_some(date)
}

impl Window {
    /// The days of `first_ts_ms..=last_ts_ms` that get their own partition at `now_ms`.
    #[must_use]
    pub fn days_for(&self, first_ts_ms: i64, last_ts_ms: i64, now_ms: i64) -> RangeInclusive<i64> {
        let today = day_of(now_ms);
        let oldest = match self.retention_days {
            Some(days) => today - i64::from(days),
            None => day_of(first_ts_ms),
        };
        let newest = today + i64::from(self.ahead_days);
        day_of(first_ts_ms).max(oldest)..=day_of(last_ts_ms).min(newest)
    }

    /// Whether a day's partition is past retention at `now_ms` (dropped whole).
    #[must_use]
    pub fn is_expired(&self, day: i64, now_ms: i64) -> bool {
        self.retention_days
            .is_some_and(|days| day < day_of(now_ms) - i64::from(days))
    }

    /// The oldest time kept at `now_ms` (rows before it leave the default partition too).
    #[must_use]
    pub fn cutoff_ms(&self, now_ms: i64) -> Option<i64> {
        self.retention_days
            .map(|days| (day_of(now_ms) - i64::from(days)) * DAY_MS)
    }
}

/// The day a partition name stands for, if it is one of ours.
#[must_use]
pub fn day_of_partition(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("readings_")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[0..4].parse().ok()?;
    let month: u8 = digits[4..6].parse().ok()?;
    let day: u8 = digits[6..8].parse().ok()?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    Some(i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DEC_2_2026: i64 = 1_796_169_600_000; // 2026-12-02T00:00:00Z

    #[test]
    fn names_and_bounds_are_utc_days() {
        let day = day_of(DEC_2_2026 + 5);
        assert_eq!(partition_name(day).unwrap(), "readings_20261202");
        assert_eq!(iso_date(day + 1).unwrap(), "2026-12-03");
        assert_eq!(day_of(-1), -1);
        assert_eq!(partition_name(-1).unwrap(), "readings_19691231");
        assert_eq!(partition_name(i64::MAX), None);
    }

    #[test]
    fn a_wrong_clock_gets_no_partition_of_its_own() {
        let window = Window {
            retention_days: Some(30),
            ahead_days: 2,
        };
        // A batch from 1970: no day in the window.
        assert!(window.days_for(1000, 5000, DEC_2_2026).is_empty());
        // One spanning midnight today: both days.
        let days = window.days_for(DEC_2_2026 - 10, DEC_2_2026 + 10, DEC_2_2026 + 20);
        assert_eq!(days.count(), 2);
        // One from next year: nothing.
        assert!(
            window
                .days_for(
                    DEC_2_2026 + 400 * DAY_MS,
                    DEC_2_2026 + 401 * DAY_MS,
                    DEC_2_2026
                )
                .is_empty()
        );
        assert!(window.is_expired(day_of(DEC_2_2026) - 31, DEC_2_2026));
        assert!(!window.is_expired(day_of(DEC_2_2026) - 30, DEC_2_2026));
    }

    proptest! {
        #[test]
        fn a_partition_name_reads_back_as_its_day(day in -719_162i64..2_932_896) {
            let name = partition_name(day).unwrap();
            prop_assert_eq!(day_of_partition(&name), Some(day));
        }

        #[test]
        fn every_day_a_batch_touches_in_the_window_is_in_the_range(
            first in -10i64 * DAY_MS..10 * DAY_MS,
            len in 0i64..3 * DAY_MS,
            now in 0i64..5 * DAY_MS,
            retention in proptest::option::of(0u32..5),
        ) {
            let window = Window { retention_days: retention, ahead_days: 1 };
            let days = window.days_for(first, first + len, now);
            for ts in [first, first + len / 2, first + len] {
                let day = day_of(ts);
                let kept = retention.is_none_or(|r| day >= day_of(now) - i64::from(r))
                    && day <= day_of(now) + 1;
                prop_assert_eq!(days.contains(&day), kept);
            }
        }
    }
}
