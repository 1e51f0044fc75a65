//! CPU, memory and disk, read from `/proc` and the data directory's file system. The parsing is
//! `outpost_core::health::procfs`; a file that cannot be read (a unit with `ProcSubset=pid`)
//! leaves its gauge empty.

use std::path::{Path, PathBuf};
use std::time::Instant;

use outpost_core::health::procfs::{self, CpuTicks};
use outpost_core::health::{CpuHealth, DiskHealth, MemHealth, one_decimal};

/// `/proc`'s clock ticks per second (`USER_HZ`, `sysconf(_SC_CLK_TCK)`): 100 on every Linux
/// architecture, whatever the kernel's own HZ (proc(5), times(2)).
const USER_HZ: u64 = 100;

/// What the gauges read between samples: CPU use is a difference of two readings.
#[derive(Debug)]
pub struct Gauges {
    data_dir: PathBuf,
    last: Option<(Instant, Option<CpuTicks>, Option<CpuTicks>)>,
}

impl Gauges {
    #[must_use]
    pub fn new(data_dir: &Path) -> Gauges {
        Gauges {
            data_dir: data_dir.to_owned(),
            last: None,
        }
    }

    /// CPU since the previous call, memory and disk now.
    pub fn sample(&mut self, now: Instant) -> (CpuHealth, MemHealth, DiskHealth) {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let process = read("/proc/self/stat").and_then(|t| procfs::process_stat(&t));
        let system = read("/proc/stat").and_then(|t| procfs::system_stat(&t));
        let cpu = match self.last {
            Some((then, process_then, system_then)) => CpuHealth {
                proc: process_then.zip(process).and_then(|(a, b)| {
                    let elapsed = u64::try_from(now.duration_since(then).as_millis()).ok()?;
                    procfs::process_percent(a, b, elapsed, USER_HZ)
                }),
                sys: system_then
                    .zip(system)
                    .and_then(|(a, b)| procfs::system_percent(a, b)),
            },
            None => CpuHealth::default(),
        };
        self.last = Some((now, process, system));
        let (total, avail) = read("/proc/meminfo").map_or((None, None), |t| procfs::meminfo(&t));
        let mem = MemHealth {
            rss: read("/proc/self/status").and_then(|t| procfs::resident_bytes(&t)),
            avail,
            total,
        };
        (cpu, mem, disk(&self.data_dir))
    }
}

/// Free bytes for an unprivileged writer on the file system holding `dir`, and their share.
// The counts are u64 on the 64-bit targets, narrower on some 32-bit ones.
#[allow(clippy::useless_conversion)]
fn disk(dir: &Path) -> DiskHealth {
    let Ok(stat) = nix::sys::statvfs::statvfs(dir) else {
        return DiskHealth::default();
    };
    let unit = u64::from(stat.fragment_size());
    let free = u64::from(stat.blocks_available()).saturating_mul(unit);
    let size = u64::from(stat.blocks()).saturating_mul(unit);
    DiskHealth {
        free: Some(free),
        free_pct: (size > 0).then(|| one_decimal(100.0 * free as f64 / size as f64)),
        low: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_set_the_machine_memory_and_its_disk_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let mut gauges = Gauges::new(dir.path());
        let start = Instant::now();
        let (cpu, mem, disk) = gauges.sample(start);
        assert_eq!(cpu, CpuHealth::default(), "no CPU figure from one reading");
        assert!(mem.rss.unwrap() > 1024 * 1024, "{mem:?}");
        assert!(mem.avail.unwrap() <= mem.total.unwrap(), "{mem:?}");
        assert!(disk.free.unwrap() > 0);
        assert!((0.0..=100.0).contains(&disk.free_pct.unwrap()));
        // Some work, then a second reading.
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed().as_millis() < 200 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let (cpu, _, _) = gauges.sample(Instant::now());
        assert!(cpu.proc.unwrap() > 0.0, "{cpu:?}");
        assert!((0.0..=100.0).contains(&cpu.sys.unwrap()), "{cpu:?}");
    }

    #[test]
    fn a_missing_directory_leaves_the_disk_gauge_empty() {
        assert_eq!(
            disk(Path::new("/nonexistent/outpost")),
            DiskHealth::default()
        );
    }
}
