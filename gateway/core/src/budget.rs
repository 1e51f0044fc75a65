//! The data budget: what the month's uplink traffic is heading for, and how far to stretch the
//! batch interval so it stays within `uplink.monthly_budget_bytes`. IO-free: usage and time in,
//! an interval out.
//!
//! Stretching works because most of the per-batch cost is fixed (MQTT and TLS framing, the batch
//! header, the acknowledgement, and the compressor's start-up cost on a small body): fewer, larger
//! batches cost fewer bytes per reading. Alerts do not go through batches, so they are never
//! delayed by it.

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

/// The batch interval that keeps the projection within budget: `base` while it fits, stretched
/// in proportion to the overshoot otherwise, never beyond `max`.
#[must_use]
pub fn batch_interval(projection: &Projection, base: Duration, max: Duration) -> Duration {
    if projection.budget == 0 || projection.projected_month <= projection.budget {
        return base;
    }
    let overshoot = projection.projected_month as f64 / projection.budget as f64;
    base.mul_f64(overshoot).clamp(base, max.max(base))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn within_budget_the_interval_stays_and_over_it_stretches_up_to_the_cap() {
        let base = Duration::from_secs(60);
        let max = Duration::from_secs(600);
        let fits = Projection {
            bytes_today: 0,
            bytes_month: 0,
            projected_month: 900,
            budget: 1000,
        };
        assert_eq!(batch_interval(&fits, base, max), base);
        let over = Projection {
            projected_month: 2000,
            ..fits
        };
        assert_eq!(batch_interval(&over, base, max), Duration::from_secs(120));
        let far_over = Projection {
            projected_month: 100_000,
            ..fits
        };
        assert_eq!(batch_interval(&far_over, base, max), max);
        let no_budget = Projection {
            budget: 0,
            ..far_over
        };
        assert_eq!(batch_interval(&no_budget, base, max), base);
    }
}
