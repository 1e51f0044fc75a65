//! The few `/proc` files the health report reads, parsed from their text (proc(5)); the adapter
//! reads them. A file that does not parse gives `None`, never a panic: a kernel may add fields,
//! and a hardened unit may hide a file.

/// CPU time counters, in clock ticks (`USER_HZ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    /// Ticks spent working (everything but idle and iowait).
    pub busy: u64,
    /// All ticks (for the machine); unused for a process.
    pub total: u64,
}

/// `/proc/self/stat`: this process's CPU ticks (`utime + stime`).
#[must_use]
pub fn process_stat(text: &str) -> Option<CpuTicks> {
    // The command name (field 2) is in parentheses and may hold spaces: count from the last `)`.
    let after = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so field N is fields[N - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(CpuTicks {
        busy: utime + stime,
        total: 0,
    })
}

/// `/proc/self/status`: the resident set (`VmRSS`) in bytes (in kB there, whatever the page
/// size: a Raspberry Pi 5 kernel has 16 KiB pages).
#[must_use]
pub fn resident_bytes(text: &str) -> Option<u64> {
    kib_field(text, "VmRSS")
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|k| k.saturating_mul(1024))
}

/// `/proc/stat`'s first line (`cpu  user nice system idle iowait irq softirq steal …`).
#[must_use]
pub fn system_stat(text: &str) -> Option<CpuTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if values.len() < 4 {
        return None;
    }
    // guest and guest_nice (9th, 10th) are already counted in user and nice.
    let total: u64 = values.iter().take(8).sum();
    let idle = values[3] + values.get(4).copied().unwrap_or(0);
    Some(CpuTicks {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// `/proc/meminfo`: (`MemTotal`, `MemAvailable`) in bytes.
#[must_use]
pub fn meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    (kib_field(text, "MemTotal"), kib_field(text, "MemAvailable"))
}

/// The machine's CPU use between two readings of `/proc/stat`, percent of all cores.
#[must_use]
pub fn system_percent(before: CpuTicks, after: CpuTicks) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let busy = after.busy.checked_sub(before.busy)?;
    (total > 0).then(|| super::one_decimal(100.0 * busy as f64 / total as f64))
}

/// A process's CPU use between two readings `elapsed_ms` apart, percent of one core.
#[must_use]
pub fn process_percent(
    before: CpuTicks,
    after: CpuTicks,
    elapsed_ms: u64,
    ticks_per_s: u64,
) -> Option<f64> {
    let busy = after.busy.checked_sub(before.busy)?;
    (elapsed_ms > 0 && ticks_per_s > 0).then(|| {
        super::one_decimal(100.0 * busy as f64 * 1000.0 / (elapsed_ms as f64 * ticks_per_s as f64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_stat_line_gives_cpu_ticks_even_with_spaces_in_the_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime=120 stime=30 cutime cstime priority nice threads itrealvalue starttime vsize rss=5000
        let line = "4242 (out post) S 1 4242 4242 0 -1 4194560 900 0 0 0 120 30 0 0 20 0 5 0 \
                    1000 200000000 5000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(process_stat(line).unwrap().busy, 150);
        assert_eq!(process_stat("4242 (outpost) S 1"), None);
        assert_eq!(process_stat("garbage"), None);
    }

    #[test]
    fn the_system_line_counts_idle_and_iowait_as_not_busy() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let text = "cpu  100 0 50 800 50 0 0 0 10 0\ncpu0 1 2 3 4\nintr 1 2\n";
        let ticks = system_stat(text).unwrap();
        assert_eq!(ticks.total, 1000);
        assert_eq!(ticks.busy, 150);
        assert_eq!(system_stat("intr 1 2\n"), None);
        assert_eq!(system_stat("cpu  1 x 3 4\n"), None);
    }

    #[test]
    fn the_resident_set_is_read_in_kilobytes() {
        let text = "Name:\toutpost\nVmPeak:\t  90000 kB\nVmRSS:\t   28672 kB\nThreads:\t5\n";
        assert_eq!(resident_bytes(text), Some(28_672 * 1024));
        assert_eq!(resident_bytes("Name: x\n"), None);
    }

    #[test]
    fn meminfo_gives_total_and_available_in_bytes() {
        let text = "MemTotal:        1000 kB\nMemFree:  10 kB\nMemAvailable:     250 kB\n";
        assert_eq!(meminfo(text), (Some(1_024_000), Some(256_000)));
        assert_eq!(meminfo("nothing"), (None, None));
    }

    #[test]
    fn percentages_come_from_the_difference_of_two_readings() {
        let before = CpuTicks {
            busy: 100,
            total: 1000,
        };
        let after = CpuTicks {
            busy: 150,
            total: 1200,
        };
        assert_eq!(system_percent(before, after), Some(25.0));
        assert_eq!(system_percent(after, before), None, "counters went back");
        assert_eq!(system_percent(before, before), None);
        // 50 ticks at 100 Hz in 2 s: a quarter of one core.
        assert_eq!(process_percent(before, after, 2_000, 100), Some(25.0));
        assert_eq!(process_percent(before, after, 0, 100), None);
    }
}
