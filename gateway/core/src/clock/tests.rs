use proptest::prelude::*;

use super::*;

/// 2026-01-01T00:00Z: the floor of these tests.
const FLOOR: i64 = 1_767_225_600_000;
/// 2026-12-01T12:00Z: "now", when the clock is right.
const REAL: i64 = 1_796_126_400_000;

fn at(mono_ms: i64, wall_ms: i64, kernel: KernelSync) -> Observation {
    Observation {
        mono_ms,
        wall_ms,
        kernel,
    }
}

fn clock(trust: Trust) -> Clock {
    Clock::new(
        ClockConfig {
            trust,
            ..ClockConfig::with_floor(FLOOR)
        },
        Remembered::default(),
    )
}

const ALL: [Trust; 3] = [Trust::Plausible, Trust::Synchronised, Trust::Step];

#[test]
fn a_cold_boot_in_1970_is_untrusted_until_the_first_sync_and_then_re_stamps_exactly() {
    for trust in ALL {
        let mut c = clock(trust);
        // Booted 5 s ago; the clock says 1970 + 5 s; the kernel flag may even claim synced.
        assert_eq!(c.observe(at(5_000, 5_000, KernelSync::Synced)), None);
        assert!(!c.trusted());
        let Basis::Untrusted { offset_ms } = c.basis() else {
            panic!("trusted in 1970")
        };
        // A reading taken at mono 7 s is stored as 1970 + 7 s, its mono time kept.
        let stored = 7_000 + offset_ms;
        let mono_t = stored - offset_ms;
        // The time service steps the clock to the real time at mono 60 s.
        let step = c.observe(at(60_000, REAL, KernelSync::Unsynced));
        assert_eq!(
            step,
            Some(Step {
                at_mono_ms: 60_000,
                by_ms: REAL - 60_000
            })
        );
        assert!(c.trusted(), "{trust:?}: the step is the evidence");
        assert_eq!(c.wall_at(mono_t), REAL - 53_000);
        assert_eq!(c.basis(), Basis::Trusted);
        assert_eq!(c.high_water_ms(), REAL);
    }
}

#[test]
fn fake_hwclock_time_after_the_floor_waits_for_the_kernel_or_a_step() {
    let yesterday = REAL - 86_400_000;
    let mut c = clock(Trust::Synchronised);
    c.observe(at(1_000, yesterday, KernelSync::Unsynced));
    assert!(!c.trusted(), "no evidence of a sync yet");
    c.observe(at(2_000, yesterday + 1_000, KernelSync::Synced));
    assert!(c.trusted(), "the kernel's word");

    let mut c = clock(Trust::Step);
    c.observe(at(1_000, yesterday, KernelSync::Synced));
    assert!(!c.trusted(), "the kernel flag is ignored: a step is needed");
    c.observe(at(2_000, REAL, KernelSync::Synced));
    assert!(c.trusted());

    // Plausible: after the floor and the high-water mark is enough (the limit of that mode).
    let mut c = clock(Trust::Plausible);
    c.observe(at(1_000, yesterday, KernelSync::Unsynced));
    assert!(c.trusted());
}

#[test]
fn a_plausible_clock_behind_the_high_water_mark_is_not_trusted() {
    let mut c = Clock::new(
        ClockConfig::with_floor(FLOOR),
        Remembered {
            high_water_ms: REAL,
            boot_trusted: false,
        },
    );
    c.observe(at(1_000, REAL - 3_600_000, KernelSync::Unsynced));
    assert!(!c.trusted(), "fake-hwclock's hourly save after a crash");
    c.observe(at(2_000, REAL + 60_000, KernelSync::Unsynced));
    assert!(c.trusted());
}

#[test]
fn a_clock_back_in_the_past_is_not_trusted_until_it_is_back_without_the_kernels_word() {
    let mut c = clock(Trust::Step);
    c.observe(at(1_000, REAL - 86_400_000, KernelSync::Unknown));
    c.observe(at(2_000, REAL, KernelSync::Unknown));
    assert!(c.trusted());
    // A bad source sets it an hour back: above the floor, below the high-water mark.
    c.observe(at(3_000, REAL - 3_600_000, KernelSync::Unknown));
    assert!(!c.trusted());
    // And 1970.
    c.observe(at(4_000, 4_000, KernelSync::Unknown));
    assert!(!c.trusted());
    c.observe(at(5_000, REAL + 3_000, KernelSync::Unknown));
    assert!(c.trusted());
    // A small step back (slew, NTP) within the tolerance stays trusted.
    c.observe(at(6_000, REAL + 3_500, KernelSync::Unknown));
    assert!(c.trusted());
}

#[test]
fn the_kernels_word_overrides_the_high_water_mark_but_never_the_floor() {
    let mut c = Clock::new(
        ClockConfig {
            trust: Trust::Synchronised,
            ..ClockConfig::with_floor(FLOOR)
        },
        Remembered {
            high_water_ms: REAL + 86_400_000,
            boot_trusted: false,
        },
    );
    c.observe(at(1_000, REAL, KernelSync::Synced));
    assert!(c.trusted());
    c.observe(at(2_000, FLOOR - 1, KernelSync::Synced));
    assert!(!c.trusted());
}

#[test]
fn a_restart_in_a_boot_whose_clock_was_trusted_trusts_it_at_once() {
    let mut c = Clock::new(
        ClockConfig {
            trust: Trust::Step,
            ..ClockConfig::with_floor(FLOOR)
        },
        Remembered {
            high_water_ms: REAL - 10_000,
            boot_trusted: true,
        },
    );
    c.observe(at(1_000, REAL, KernelSync::Unknown));
    assert!(c.trusted());
    assert_eq!(c.status().evidence, Some(Evidence::EarlierRun));
}

#[test]
fn held_readings_are_released_after_max_hold_only_while_untrusted() {
    let mut c = clock(Trust::Synchronised);
    c.observe(at(0, 0, KernelSync::Unsynced));
    let hold = i64::try_from(DEFAULT_MAX_HOLD.as_millis()).unwrap();
    assert!(!c.release_due(0, hold - 1));
    assert!(c.release_due(0, hold));
    c.observe(at(hold, REAL, KernelSync::Synced));
    assert!(!c.release_due(0, hold));
}

#[test]
fn the_budget_day_never_goes_back_and_waits_for_a_trusted_day() {
    let today = Date::from_unix_ms(REAL);
    let mut c = clock(Trust::Synchronised);
    c.observe(at(0, 5_000, KernelSync::Unsynced));
    assert_eq!(c.budget_day(None), None);
    assert_eq!(c.budget_now(None), None);
    assert_eq!(c.budget_day(Some(today)), Some(today));
    c.observe(at(1_000, REAL, KernelSync::Synced));
    assert_eq!(c.budget_day(None), Some(today));
    assert_eq!(c.budget_now(Some(today)), Some(REAL));
    // Trusted by the kernel, but a month behind the ledger's last day.
    let next_month = Date::from_unix_ms(REAL + 31 * 86_400_000);
    assert_eq!(c.budget_day(Some(next_month)), Some(next_month));
    assert_eq!(c.budget_now(Some(next_month)), None);
}

#[derive(Debug, Clone)]
enum Move {
    /// Time passes on both clocks.
    Tick(i64),
    /// The wall clock steps by this much.
    Step(i64),
    /// The wall clock goes to 1970 + mono.
    Reset,
    Kernel(KernelSync),
}

fn moves() -> impl Strategy<Value = Vec<Move>> {
    let one = prop_oneof![
        4 => (1i64..120_000).prop_map(Move::Tick),
        1 => (-400_000_000_000i64..400_000_000_000).prop_map(Move::Step),
        1 => (-900i64..900).prop_map(Move::Step),
        1 => Just(Move::Reset),
        1 => prop_oneof![
            Just(KernelSync::Synced),
            Just(KernelSync::Unsynced),
            Just(KernelSync::Unknown)
        ]
        .prop_map(Move::Kernel),
    ];
    proptest::collection::vec(one, 1..60)
}

proptest! {
    /// Whatever the wall clock does, in every mode: nothing below the floor is ever trusted;
    /// a clock that never stepped, not vouched for by the kernel, is trusted only in the
    /// plausible mode (or not at all); without the
    /// kernel's word trusted time never goes back past the tolerance; a trusted clock stamps an
    /// event of this boot at `mono + offset`, so held events re-stamped at any trusted moment
    /// land exactly where the true clock puts them if that moment's clock is true.
    #[test]
    fn trust_follows_the_rules(moves in moves(), mode in 0usize..3, start_wall in 0i64..REAL) {
        let trust = ALL[mode];
        let mut c = clock(trust);
        let (mut mono, mut wall, mut kernel) = (1_000i64, start_wall, KernelSync::Unsynced);
        let mut trusted_max: Option<i64> = None;
        c.observe(at(mono, wall, kernel));
        for m in moves {
            match m {
                Move::Tick(d) => { mono += d; wall += d; }
                Move::Step(d) => wall = wall.saturating_add(d).max(0),
                Move::Reset => wall = mono,
                Move::Kernel(k) => kernel = k,
            }
            let before = c.offset_ms();
            let step = c.observe(at(mono, wall, kernel));
            let moved = (wall - mono) - before;
            prop_assert_eq!(step.is_some(), moved.abs() > DEFAULT_STEP_TOLERANCE_MS);
            if c.trusted() {
                prop_assert!(wall >= FLOOR);
                let kernel_word = trust != Trust::Step && kernel == KernelSync::Synced;
                if let (Some(max), false) = (trusted_max, kernel_word) {
                    prop_assert!(wall >= max - DEFAULT_STEP_TOLERANCE_MS);
                }
                prop_assert_eq!(c.basis(), Basis::Trusted);
                if trust != Trust::Plausible && !kernel_word {
                    prop_assert!(c.status().steps > 0 || trusted_max.is_some());
                }
                trusted_max = Some(trusted_max.map_or(wall, |m: i64| m.max(wall)));
            } else {
                prop_assert_eq!(c.basis(), Basis::Untrusted { offset_ms: wall - mono });
            }
            // Re-stamping is exact arithmetic on the monotonic axis.
            prop_assert_eq!(c.wall_at(mono - 5_000), wall - 5_000);
            prop_assert!(c.high_water_ms() >= trusted_max.unwrap_or(0));
        }
    }
}
