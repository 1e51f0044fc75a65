//! The node application: the link core plus sampling on a fixed schedule.

use core::fmt;
use core::time::Duration;

use heapless::Vec;
use outpost_proto::wire::MAX_READINGS;
use outpost_proto::{Millis, Reading};

use crate::link::{NoOta, NodeLink, OtaHandler};
use crate::ota::OtaAction;

/// How long an install waits for the gateway to acknowledge every sample held before the node
/// resets into the new image anyway.
pub const INSTALL_DRAIN: Duration = Duration::from_secs(2);

/// The node's sensors, read once per sample. A board implements it over its embedded-hal
/// drivers (e.g. [`crate::sht3x::Sht3x`]); the simulator over simulated devices.
pub trait SensorBank {
    type Error: fmt::Debug;

    /// Reads every channel once and pushes one reading per channel into `readings`. `seq` is
    /// the sample's sequence number, the value of the `seq` channel. A sensor that fails may
    /// leave its channel out; an `Err` drops the whole sample (it gets no seq).
    fn sample(
        &mut self,
        seq: u32,
        readings: &mut Vec<Reading, MAX_READINGS>,
    ) -> Result<(), Self::Error>;
}

/// When samples are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Time between samples; at least 1 ms.
    pub interval: Duration,
    /// Stop sampling after this many samples (the link keeps delivering them).
    pub limit: Option<u32>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            interval: Duration::from_secs(1),
            limit: None,
        }
    }
}

// Design: `App` owns the link core and the sensor bank and decides only *when* to sample:
// sample k is due at `started_at + k * interval`, computed from k so a fractional interval
// (3 Hz) never drifts, and ticks missed while the caller was late are skipped, never taken in a
// burst. It has the same verbs and guarantees as `NodeLink` (no I/O, no clock, time passed in).
/// A sensor node: [`NodeLink`] plus a [`SensorBank`] read on a [`Schedule`].
#[derive(Debug)]
pub struct App<S, const RING: usize, O = NoOta> {
    link: NodeLink<RING, O>,
    bank: S,
    limit: Option<u32>,
    started_at: Millis,
    interval_ns: u128,
    /// Index of the next sampling tick.
    tick: u128,
    /// `None` once the limit is reached.
    next_sample: Option<Millis>,
    taken: u32,
    sensor_errors: u32,
    /// A reset the updater asked for, and when it is due at the latest.
    reset: Option<(OtaAction, Millis)>,
    /// The board's own checks (watchdog running, stack sane) pass: a trial image may confirm.
    board_ok: bool,
}

impl<S: SensorBank, const RING: usize, O: OtaHandler> App<S, RING, O> {
    /// The first sample is due at `now`.
    pub fn new(now: Millis, link: NodeLink<RING, O>, bank: S, schedule: Schedule) -> Self {
        let interval_ns = schedule.interval.as_nanos().max(1_000_000);
        App {
            link,
            bank,
            limit: schedule.limit,
            started_at: now,
            interval_ns,
            tick: 0,
            next_sample: (schedule.limit != Some(0)).then_some(now),
            taken: 0,
            sensor_errors: 0,
            reset: None,
            board_ok: true,
        }
    }

    pub fn handle_bytes(&mut self, now: Millis, bytes: &[u8]) {
        self.link.handle_bytes(now, bytes);
        self.take_ota_action(now);
    }

    /// Takes a sample if one is due, then runs the link's timers.
    pub fn handle_timeout(&mut self, now: Millis) {
        if self.next_sample.is_some_and(|at| now >= at) {
            self.sample(now);
        }
        self.link.handle_timeout(now);
        let board_ok = self.board_ok && self.sensor_errors == 0;
        self.link.ota_mut().handle_timeout(now, board_ok);
        self.take_ota_action(now);
    }

    /// The board's verdict on itself, which a trial image needs to confirm (every channel read
    /// without error is checked here).
    pub fn set_board_ok(&mut self, ok: bool) {
        self.board_ok = ok;
    }

    /// The reset the updater asked for, once it is due: at once out of a failed trial; for an
    /// install, when the gateway has acknowledged every sample held (so the reboot loses none
    /// and `seq` is contiguous to the old boot's last sample), or after [`INSTALL_DRAIN`].
    pub fn poll_reset(&mut self, now: Millis) -> Option<OtaAction> {
        let (action, due) = self.reset?;
        let drained = self.link.held() == 0;
        (matches!(action, OtaAction::ResetToRevert { .. }) || drained || now >= due)
            .then_some(action)
    }

    /// Whether the gateway asked for a reboot and its answer has been handed out: the board
    /// resets now, and reports reason `software` at its next boot.
    #[must_use]
    pub fn poll_reboot(&self) -> bool {
        self.link.reboot_requested()
    }

    fn take_ota_action(&mut self, now: Millis) {
        match self.link.ota_mut().poll_action() {
            Some(action @ OtaAction::ResetToInstall) => {
                // No new sample from here: the ones held drain first.
                self.next_sample = None;
                self.reset = Some((action, now + INSTALL_DRAIN));
            }
            Some(action @ OtaAction::ResetToRevert { .. }) => self.reset = Some((action, now)),
            None => {}
        }
    }

    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.link.poll_transmit(buf)
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        [
            self.link.poll_timeout(),
            self.next_sample,
            self.link.ota().poll_timeout(),
            self.reset.map(|(_, due)| due),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    #[must_use]
    pub fn link(&self) -> &NodeLink<RING, O> {
        &self.link
    }

    /// For the board: e.g. [`NodeLink::set_board_status`].
    pub fn link_mut(&mut self) -> &mut NodeLink<RING, O> {
        &mut self.link
    }

    #[must_use]
    pub fn bank(&self) -> &S {
        &self.bank
    }

    pub fn bank_mut(&mut self) -> &mut S {
        &mut self.bank
    }

    /// Samples taken so far.
    #[must_use]
    pub fn samples_taken(&self) -> u32 {
        self.taken
    }

    /// Samples lost because the bank returned an error.
    #[must_use]
    pub fn sensor_errors(&self) -> u32 {
        self.sensor_errors
    }

    /// The sample limit is reached: no more samples will be taken.
    #[must_use]
    pub fn sampling_done(&self) -> bool {
        self.next_sample.is_none()
    }

    fn sample(&mut self, now: Millis) {
        let mut readings = Vec::new();
        match self.bank.sample(self.link.next_seq(), &mut readings) {
            Ok(()) => {
                self.link.handle_sample(now, readings);
                self.taken = self.taken.wrapping_add(1);
            }
            Err(_) => {
                self.sensor_errors = self.sensor_errors.wrapping_add(1);
                self.link
                    .log_event(outpost_proto::diag::LogEvent::SensorError, 1);
            }
        }
        if self.limit.is_some_and(|limit| self.taken >= limit) {
            self.next_sample = None;
            return;
        }
        // The first tick after `now`: skip ticks missed while the caller was late.
        let elapsed_ms = u128::from(now - self.started_at);
        let first_after_now = ((elapsed_ms + 1) * 1_000_000).div_ceil(self.interval_ns);
        self.tick = (self.tick + 1).max(first_after_now);
        let offset_ms = self.interval_ns.saturating_mul(self.tick) / 1_000_000;
        self.next_sample = Some(self.started_at + u64::try_from(offset_ms).unwrap_or(u64::MAX));
    }
}
