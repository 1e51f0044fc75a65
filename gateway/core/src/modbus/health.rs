//! Per-device health: counters, back-off and the offline flag, with no IO and no clock.

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_proto::Millis;
use serde::{Serialize, Serializer};

/// Why a request got no answer, as health counts it. The adapter maps its own transport errors
/// onto these (tokio-modbus's for TCP, the RTU decoder's for a bus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the device's timeout.
    Timeout,
    /// An RTU response whose CRC did not match.
    Crc,
    /// An RTU response from the wrong unit, with the wrong function or length, or cut short.
    Frame,
    /// A connection or socket error, or a reply that does not match the request.
    Transport,
    /// An earlier request of the same poll lost the link; this one was not sent.
    NotSent,
}

/// What became of one planned request: the two layers of a Modbus answer kept apart (the device
/// answered, with data or an exception; or the link failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Data,
    /// The device answered with this exception code (0x02 illegal data address, …).
    Exception(u8),
    Failed(Failure),
}

/// One request of a poll, as health counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSummary {
    /// How long the device took to answer (data or exception); `None` without an answer.
    pub response_time: Option<Duration>,
    /// Why each earlier attempt failed, when the request was retried; `answer` is the last's.
    pub earlier_failures: Vec<Failure>,
    pub answer: Answer,
}

/// One poll, as health counts it: every planned request in plan order, the line's garbage and
/// the points that did not decode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollSummary {
    pub requests: Vec<RequestSummary>,
    /// RTU: bytes on the line during the poll that belonged to no expected response.
    pub garbage_bytes: u64,
    /// Points whose registers arrived but did not decode to a value.
    pub decode_errors: u64,
}

impl PollSummary {
    /// Whether the link failed during the poll (a timeout or other transport error).
    #[must_use]
    pub fn link_failed(&self) -> bool {
        self.requests
            .iter()
            .any(|r| matches!(r.answer, Answer::Failed(_)))
    }

    /// Whether every request returned data and every point decoded.
    #[must_use]
    pub fn complete(&self) -> bool {
        self.requests.iter().all(|r| r.answer == Answer::Data) && self.decode_errors == 0
    }
}

/// When to poll and when to give up: the device's poll interval, the longest back-off, and how
/// many polls in a row must fail before the device is reported offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    pub interval: Duration,
    /// The back-off doubles per failed poll up to this.
    pub max_backoff: Duration,
    /// Consecutive polls without any answer before the device is offline (at least 1).
    pub offline_after: u32,
}

impl HealthPolicy {
    #[must_use]
    pub fn new(interval: Duration) -> HealthPolicy {
        HealthPolicy {
            interval,
            max_backoff: Duration::from_secs(300).max(interval),
            offline_after: 3,
        }
    }
}

/// Whether the device answers, as the status page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Not polled yet.
    Unknown,
    Online,
    Offline,
}

/// What to do after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollDecision {
    pub next_poll_at: Millis,
    pub offline: bool,
}

/// Per-device health: counters for the status page and `/api/v1/modbus`, and the back-off
/// decision.
///
/// Design: owns counters and the consecutive-failure streak; never reads a clock or does IO.
/// The adapter feeds it every poll's [`PollSummary`] with the time and sleeps until the returned
/// [`PollDecision::next_poll_at`]. A failed poll is one where the link failed (a timeout or
/// other transport error); exceptions mean the device is there and answering, so they are
/// counted but never back off or take it offline. After `n` failed polls in a row the next poll
/// is `interval × 2^n` away, capped at `max_backoff`; the first answer resets the streak.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceHealth {
    #[serde(skip)]
    policy: HealthPolicy,
    state: LinkState,
    polls: u64,
    timeouts: u64,
    /// RTU responses whose CRC did not match: noise, a bad termination, two talkers.
    crc_errors: u64,
    /// RTU responses from the wrong unit, with the wrong function or length, or cut short.
    frame_errors: u64,
    /// RTU bytes that belonged to no expected response.
    garbage_bytes: u64,
    /// Connection and socket errors.
    transport_errors: u64,
    /// By exception code (0x02 illegal data address, …).
    exceptions: BTreeMap<u8, u64>,
    decode_errors: u64,
    #[serde(serialize_with = "millis_opt")]
    last_response_at: Option<Millis>,
    /// The slowest answer of the last poll that got any, in milliseconds.
    last_response_ms: Option<u64>,
    /// The last poll in which every request returned data and every point decoded.
    #[serde(serialize_with = "millis_opt")]
    last_good_poll_at: Option<Millis>,
    consecutive_failures: u32,
    #[serde(serialize_with = "millis_opt")]
    next_poll_at: Option<Millis>,
}

fn millis_opt<S: Serializer>(t: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    t.map(Millis::as_u64).serialize(s)
}

impl DeviceHealth {
    #[must_use]
    pub fn new(policy: HealthPolicy) -> DeviceHealth {
        DeviceHealth {
            policy,
            state: LinkState::Unknown,
            polls: 0,
            timeouts: 0,
            crc_errors: 0,
            frame_errors: 0,
            garbage_bytes: 0,
            transport_errors: 0,
            exceptions: BTreeMap::new(),
            decode_errors: 0,
            last_response_at: None,
            last_response_ms: None,
            last_good_poll_at: None,
            consecutive_failures: 0,
            next_poll_at: None,
        }
    }

    /// Counts a poll finished at `now` and decides when to poll next and whether the device is
    /// offline.
    pub fn handle_poll_result(&mut self, now: Millis, outcome: &PollSummary) -> PollDecision {
        self.polls += 1;
        for request in &outcome.requests {
            for &failure in &request.earlier_failures {
                self.count_failure(failure);
            }
            match request.answer {
                Answer::Data => {}
                Answer::Exception(code) => *self.exceptions.entry(code).or_default() += 1,
                Answer::Failed(failure) => self.count_failure(failure),
            }
        }
        self.garbage_bytes += outcome.garbage_bytes;
        self.decode_errors += outcome.decode_errors;
        let slowest = outcome
            .requests
            .iter()
            .filter_map(|r| r.response_time)
            .max();
        if let Some(slowest) = slowest {
            self.last_response_at = Some(now);
            self.last_response_ms = Some(u64::try_from(slowest.as_millis()).unwrap_or(u64::MAX));
        }
        if outcome.complete() && !outcome.requests.is_empty() {
            self.last_good_poll_at = Some(now);
        }
        let delay = if outcome.link_failed() {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.consecutive_failures >= self.policy.offline_after.max(1) {
                self.state = LinkState::Offline;
            }
            self.backoff()
        } else {
            self.consecutive_failures = 0;
            self.state = LinkState::Online;
            self.policy.interval
        };
        let next_poll_at = now + delay;
        self.next_poll_at = Some(next_poll_at);
        PollDecision {
            next_poll_at,
            offline: self.state == LinkState::Offline,
        }
    }

    fn count_failure(&mut self, failure: Failure) {
        match failure {
            Failure::Timeout => self.timeouts += 1,
            Failure::NotSent => {}
            Failure::Crc => self.crc_errors += 1,
            Failure::Frame => self.frame_errors += 1,
            Failure::Transport => self.transport_errors += 1,
        }
    }

    /// `interval × 2^failures`, capped.
    fn backoff(&self) -> Duration {
        let factor = 1u32
            .checked_shl(self.consecutive_failures)
            .unwrap_or(u32::MAX);
        self.policy
            .interval
            .checked_mul(factor)
            .map_or(self.policy.max_backoff, |d| d.min(self.policy.max_backoff))
    }

    #[must_use]
    pub fn state(&self) -> LinkState {
        self.state
    }

    #[must_use]
    pub fn polls(&self) -> u64 {
        self.polls
    }

    #[must_use]
    pub fn timeouts(&self) -> u64 {
        self.timeouts
    }

    #[must_use]
    pub fn crc_errors(&self) -> u64 {
        self.crc_errors
    }

    #[must_use]
    pub fn frame_errors(&self) -> u64 {
        self.frame_errors
    }

    #[must_use]
    pub fn garbage_bytes(&self) -> u64 {
        self.garbage_bytes
    }

    #[must_use]
    pub fn transport_errors(&self) -> u64 {
        self.transport_errors
    }

    /// Exceptions answered, by code.
    #[must_use]
    pub fn exceptions(&self) -> &BTreeMap<u8, u64> {
        &self.exceptions
    }

    #[must_use]
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    #[must_use]
    pub fn last_response_at(&self) -> Option<Millis> {
        self.last_response_at
    }

    /// The slowest answer of the last poll that got any, in milliseconds.
    #[must_use]
    pub fn last_response_ms(&self) -> Option<u64> {
        self.last_response_ms
    }

    #[must_use]
    pub fn last_good_poll_at(&self) -> Option<Millis> {
        self.last_good_poll_at
    }

    #[must_use]
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    /// Modbus exception codes (Modbus Application Protocol v1.1b §7).
    const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
    const SERVER_DEVICE_BUSY: u8 = 0x06;

    fn request(answer: Answer) -> RequestSummary {
        let answered = !matches!(answer, Answer::Failed(_));
        RequestSummary {
            response_time: answered.then_some(Duration::from_millis(7)),
            earlier_failures: Vec::new(),
            answer,
        }
    }

    fn outcome(answers: Vec<Answer>) -> PollSummary {
        PollSummary {
            requests: answers.into_iter().map(request).collect(),
            garbage_bytes: 0,
            decode_errors: 0,
        }
    }

    fn timed_out() -> PollSummary {
        outcome(vec![
            Answer::Failed(Failure::Timeout),
            Answer::Failed(Failure::NotSent),
        ])
    }

    #[test]
    fn a_device_is_unknown_until_its_first_poll_and_online_after_an_answer() {
        let mut health = DeviceHealth::new(HealthPolicy::new(SECOND));
        assert_eq!(health.state(), LinkState::Unknown);
        let decision = health.handle_poll_result(Millis(500), &outcome(vec![Answer::Data]));
        assert_eq!(
            decision,
            PollDecision {
                next_poll_at: Millis(1500),
                offline: false
            }
        );
        assert_eq!(health.state(), LinkState::Online);
        assert_eq!(health.last_good_poll_at(), Some(Millis(500)));
        assert_eq!(health.last_response_at(), Some(Millis(500)));
    }

    #[test]
    fn timeouts_back_off_exponentially_up_to_the_cap_and_take_the_device_offline() {
        let policy = HealthPolicy {
            interval: SECOND,
            max_backoff: Duration::from_secs(6),
            offline_after: 3,
        };
        let mut health = DeviceHealth::new(policy);
        let mut now = Millis::ZERO;
        let mut delays = Vec::new();
        let mut offline = Vec::new();
        for _ in 0..5 {
            let decision = health.handle_poll_result(now, &timed_out());
            delays.push(decision.next_poll_at - now);
            offline.push(decision.offline);
            now = decision.next_poll_at;
        }
        assert_eq!(delays, [2000, 4000, 6000, 6000, 6000]);
        assert_eq!(offline, [false, false, true, true, true]);
        assert_eq!(
            health.timeouts(),
            5,
            "the requests not sent are not timeouts"
        );
        assert_eq!(health.transport_errors(), 0);
        assert_eq!(health.last_response_at(), None);
    }

    #[test]
    fn one_answer_brings_an_offline_device_back_to_its_interval() {
        let mut health = DeviceHealth::new(HealthPolicy {
            offline_after: 1,
            ..HealthPolicy::new(SECOND)
        });
        assert!(health.handle_poll_result(Millis(0), &timed_out()).offline);
        let decision = health.handle_poll_result(Millis(2000), &outcome(vec![Answer::Data]));
        assert_eq!(decision.next_poll_at, Millis(3000));
        assert!(!decision.offline);
        assert_eq!(health.consecutive_failures(), 0);
    }

    #[test]
    fn exceptions_are_counted_by_code_but_never_back_off_nor_make_a_poll_good() {
        let mut health = DeviceHealth::new(HealthPolicy::new(SECOND));
        let decision = health.handle_poll_result(
            Millis(0),
            &outcome(vec![Answer::Data, Answer::Exception(ILLEGAL_DATA_ADDRESS)]),
        );
        assert_eq!(decision.next_poll_at, Millis(1000));
        assert_eq!(health.state(), LinkState::Online);
        assert_eq!(health.exceptions(), &BTreeMap::from([(0x02, 1)]));
        assert_eq!(health.last_good_poll_at(), None);
        assert_eq!(health.last_response_at(), Some(Millis(0)));
    }

    #[test]
    fn health_serializes_times_as_milliseconds_and_exceptions_by_code() {
        let mut health = DeviceHealth::new(HealthPolicy::new(SECOND));
        health.handle_poll_result(
            Millis(42),
            &outcome(vec![Answer::Exception(SERVER_DEVICE_BUSY)]),
        );
        let json = serde_json::to_value(&health).expect("serializes");
        assert_eq!(json["state"], "online");
        assert_eq!(json["last_response_at"], 42);
        assert_eq!(json["last_response_ms"], 7);
        assert_eq!(json["exceptions"]["6"], 1);
        assert_eq!(json["last_good_poll_at"], serde_json::Value::Null);
        assert_eq!(json["next_poll_at"], 1042);
    }
}
