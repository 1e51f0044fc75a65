//! Who may use which part of the local API, and how fast a peer may guess tokens.
//!
//! The API has three [`Scope`]s, each with its own bearer token: `pull` (the cloud fetching and
//! acknowledging batches), `upload` (gateway update artifacts, which a root agent installs) and
//! `technician` (the read endpoints, when a site wants them closed). The adapter
//! (`outpost::io::api::auth`) compares tokens; this module holds the policy that decides whether a
//! token is compared at all.
//!
//! Design: [`Throttle`] owns one failure allowance (a token bucket) per peer and one for the
//! whole gateway. A failed authentication takes one unit from both; a peer whose allowance, or
//! the gateway whose allowance, is spent is refused ([`Admission::Throttled`]) before its token is
//! even looked at, until a unit has come back. It never reads a clock, never sees a token and
//! never answers a request: the adapter passes the time in, reports failures, and carries out
//! the [`ThrottleEvent`]s (an alert while a throttle is active, a log line per episode).
//!
//! Invariants:
//! - memory is bounded: at most [`ThrottlePolicy::max_peers`] peers are tracked; a new peer
//!   beyond that replaces one whose allowance is whole again, else the one that failed longest
//!   ago (a peer never tracked has a whole allowance, so forgetting one only ever forgives);
//! - one peer's failures never spend another peer's allowance; only the global allowance is
//!   shared, and it is larger than a peer's, so a peer alone cannot lock others out;
//! - IPv6 peers count per /64 (one host usually holds a whole /64), IPv4-mapped ones as IPv4;
//! - a success gives nothing back: knowing one scope's token must not buy guesses at another's.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};

use serde::Serialize;

use crate::Millis;

/// Which endpoints a token opens. A token of one scope never opens another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `GET /api/v1/batches…`, `POST /api/v1/batches/ack`, `GET /api/v1/dictionaries/{id}`.
    Pull,
    /// `PUT /api/v1/updates/{file}`.
    Upload,
    /// `GET /api/v1/status`, `/api/v1/nodes`, `/api/v1/modbus` (open when no token is set).
    Technician,
}

impl Scope {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Pull => "pull",
            Scope::Upload => "upload",
            Scope::Technician => "technician",
        }
    }
}

/// How many failed authentications are allowed, per peer and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures one peer may make in a row.
    pub peer_burst: u32,
    /// One more failure is allowed a peer every this many ms.
    pub peer_refill_ms: u64,
    /// Failures all peers together may make in a row.
    pub global_burst: u32,
    /// One more failure is allowed the gateway every this many ms.
    pub global_refill_ms: u64,
    /// Most peers tracked at once (memory bound).
    pub max_peers: usize,
}

impl Default for ThrottlePolicy {
    /// 10 failures per peer, then one every 6 s (10 a minute); 60 for the gateway, then two a
    /// second; 1024 peers tracked (about 40 KiB).
    fn default() -> Self {
        ThrottlePolicy {
            peer_burst: 10,
            peer_refill_ms: 6_000,
            global_burst: 60,
            global_refill_ms: 500,
            max_peers: 1024,
        }
    }
}

/// Whether a request's token may be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allow,
    /// Refused without comparing; try again in `retry_after_ms`.
    Throttled {
        retry_after_ms: u64,
    },
}

/// What the adapter reports: the start and end of a throttled episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThrottleEvent {
    /// An allowance ran out: requests are being refused. `peer` spent its own allowance, or
    /// `None` when the gateway's did.
    Started { peer: Option<IpAddr> },
    /// Every allowance has a unit again; since the previous episode ended `failures`
    /// authentications failed, and `refused` requests were throttled.
    Ended { failures: u64, refused: u64 },
}

/// Counts since start, for the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuthCounters {
    /// Wrong or missing tokens.
    pub failures: u64,
    /// Requests refused by the throttle (their token not compared).
    pub throttled: u64,
    /// Whether a throttle is active now.
    pub throttling: bool,
}

/// A token bucket of allowed failures.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    units: u32,
    /// When the last unit came back (or the bucket was last whole).
    stamp: Millis,
    /// The last failure (eviction order).
    last_failure: Millis,
}

impl Bucket {
    fn whole(burst: u32, now: Millis) -> Bucket {
        Bucket {
            units: burst,
            stamp: now,
            last_failure: now,
        }
    }

    /// Brings back the units earned since `stamp`.
    fn refill(&mut self, now: Millis, burst: u32, every_ms: u64) {
        let every_ms = every_ms.max(1);
        let earned = now.saturating_since(self.stamp) / every_ms;
        if earned == 0 {
            return;
        }
        let units = u64::from(self.units).saturating_add(earned);
        if units >= u64::from(burst) {
            self.units = burst;
            self.stamp = now;
        } else {
            self.units = u32::try_from(units).unwrap_or(burst);
            self.stamp = self.stamp + earned * every_ms;
        }
    }

    /// When the next unit comes back.
    fn next_unit(&self, every_ms: u64) -> Millis {
        self.stamp + every_ms.max(1)
    }
}

/// The failed-authentication throttle. See the module documentation.
#[derive(Debug, Clone)]
pub struct Throttle {
    policy: ThrottlePolicy,
    peers: HashMap<IpAddr, Bucket>,
    global: Bucket,
    /// While a throttle is active: when the last empty allowance gets a unit back.
    active_until: Option<Millis>,
    episode_failures: u64,
    episode_refused: u64,
    counters: AuthCounters,
    events: VecDeque<ThrottleEvent>,
}

/// The key a peer is counted under: IPv4 as is (also when IPv4-mapped), IPv6 by its /64.
#[must_use]
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

impl Throttle {
    #[must_use]
    pub fn new(policy: ThrottlePolicy, now: Millis) -> Throttle {
        Throttle {
            policy,
            peers: HashMap::new(),
            global: Bucket::whole(policy.global_burst, now),
            active_until: None,
            episode_failures: 0,
            episode_refused: 0,
            counters: AuthCounters::default(),
            events: VecDeque::new(),
        }
    }

    /// A request from `peer` presents a token at `now`: may it be compared?
    pub fn handle_request(&mut self, now: Millis, peer: IpAddr) -> Admission {
        self.handle_timeout(now);
        let p = self.policy;
        self.global.refill(now, p.global_burst, p.global_refill_ms);
        let mut wait = None;
        if self.global.units == 0 {
            wait = Some(self.global.next_unit(p.global_refill_ms));
        }
        if let Some(bucket) = self.peers.get_mut(&peer_key(peer)) {
            bucket.refill(now, p.peer_burst, p.peer_refill_ms);
            if bucket.units == 0 {
                let next = bucket.next_unit(p.peer_refill_ms);
                wait = Some(wait.map_or(next, |w: Millis| w.max(next)));
            }
        }
        match wait {
            None => Admission::Allow,
            Some(until) => {
                self.counters.throttled += 1;
                self.episode_refused += 1;
                Admission::Throttled {
                    retry_after_ms: until.saturating_since(now).max(1),
                }
            }
        }
    }

    /// The token `peer` presented at `now` was wrong or missing.
    pub fn handle_failure(&mut self, now: Millis, peer: IpAddr) {
        let p = self.policy;
        self.counters.failures += 1;
        self.episode_failures += 1;
        let key = peer_key(peer);
        if !self.peers.contains_key(&key) && self.peers.len() >= p.max_peers.max(1) {
            self.evict(now);
        }
        let bucket = self
            .peers
            .entry(key)
            .or_insert_with(|| Bucket::whole(p.peer_burst, now));
        bucket.refill(now, p.peer_burst, p.peer_refill_ms);
        bucket.units = bucket.units.saturating_sub(1);
        bucket.last_failure = now;
        let peer_empty = (bucket.units == 0).then(|| bucket.next_unit(p.peer_refill_ms));
        self.global.refill(now, p.global_burst, p.global_refill_ms);
        self.global.units = self.global.units.saturating_sub(1);
        let global_empty =
            (self.global.units == 0).then(|| self.global.next_unit(p.global_refill_ms));
        for (until, who) in [(peer_empty, Some(key)), (global_empty, None)] {
            let Some(until) = until else { continue };
            if self.active_until.is_none() {
                self.events.push_back(ThrottleEvent::Started { peer: who });
            }
            self.active_until = Some(self.active_until.map_or(until, |a| a.max(until)));
        }
        self.counters.throttling = self.active_until.is_some();
    }

    /// Ends an episode whose allowances have all come back.
    pub fn handle_timeout(&mut self, now: Millis) {
        if self.active_until.is_some_and(|until| now >= until) {
            self.active_until = None;
            self.counters.throttling = false;
            self.events.push_back(ThrottleEvent::Ended {
                failures: std::mem::take(&mut self.episode_failures),
                refused: std::mem::take(&mut self.episode_refused),
            });
        }
    }

    /// When [`Throttle::handle_timeout`] should next be called: the end of the active episode.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.active_until
    }

    pub fn poll_event(&mut self) -> Option<ThrottleEvent> {
        self.events.pop_front()
    }

    #[must_use]
    pub fn counters(&self) -> AuthCounters {
        self.counters
    }

    /// Peers tracked now (never more than [`ThrottlePolicy::max_peers`]).
    #[must_use]
    pub fn tracked_peers(&self) -> usize {
        self.peers.len()
    }

    /// Makes room for one peer: forgets those whose allowance is whole again; if none, the one
    /// that failed longest ago.
    fn evict(&mut self, now: Millis) {
        let p = self.policy;
        self.peers.retain(|_, b| {
            let mut b = *b;
            b.refill(now, p.peer_burst, p.peer_refill_ms);
            b.units < p.peer_burst
        });
        if self.peers.len() >= p.max_peers.max(1) {
            if let Some(oldest) = self
                .peers
                .iter()
                .min_by_key(|(ip, b)| (b.last_failure, **ip))
                .map(|(ip, _)| *ip)
            {
                self.peers.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests;
