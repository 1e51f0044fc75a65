//! Which TCP connections the local API keeps when there are too many.
//!
//! Design: [`Admission`] is told every connection's life (opened, a request started or finished,
//! closed) and answers each new connection with a [`Decision`]: admit it, admit it and close an
//! older one to make room, or refuse it. It never does IO and never reads a clock: "older" is an
//! activity order kept by a counter. The adapter (`outpost::io::api::listener`) carries the
//! decision out and reports back.
//!
//! Invariants (checked by the property tests below):
//! - never more than `max_connections` admitted connections are open;
//! - a connection with a request in flight is never chosen to be closed;
//! - a new connection from a peer holding fewer than `max_per_peer` connections is admitted
//!   whenever there is room or some open connection is idle (no request in flight: a kept-alive
//!   connection between requests, or one that never sent a complete request);
//! - to make room, the idle connection closed is one of the peer holding the most connections,
//!   its least recently active: 2,000 idle connections from one address only ever push out each
//!   other, never a fresh client from another address;
//! - a peer at its share (`max_per_peer`) makes room only among its own connections.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::Serialize;

/// A connection's number, given by [`Admission::open`].
pub type ConnId = u64;

/// How many connections the API keeps open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Open connections at most, from all peers.
    pub max_connections: usize,
    /// Open connections at most from one peer address: three quarters of `max_connections`, so
    /// one address busy on all of its connections still leaves room for the others.
    pub max_per_peer: usize,
}

impl Limits {
    /// The cap for `configured` connections (`api.max_connections`) when the process may hold
    /// `descriptors` file descriptors and needs `reserved` of them for everything but API
    /// connections (store, serial ports, uplink, listening socket, logs): never more
    /// connections than descriptors left for them, and at least one.
    #[must_use]
    pub fn sized(configured: usize, descriptors: u64, reserved: u64) -> Limits {
        let available = usize::try_from(descriptors.saturating_sub(reserved)).unwrap_or(usize::MAX);
        let max_connections = configured.min(available).max(1);
        Limits {
            max_connections,
            max_per_peer: (max_connections - max_connections / 4).max(1),
        }
    }
}

/// File descriptors the daemon keeps for everything but API connections: 64 for itself (standard
/// streams, the log, the listening socket, the runtime's epoll and event descriptors, the store
/// writer's database, WAL and shared-memory files, the API's read connections at three each,
/// dictionaries, the update spool, the systemd sockets), two per serial port, one per Modbus
/// connection (TCP device or RTU bus) and eight for the MQTT uplink (its TCP/TLS link, the
/// private Unix socket pair, its directory).
#[must_use]
pub fn reserved_descriptors(serial_ports: usize, modbus_links: usize, mqtt: bool) -> u64 {
    64 + 2 * serial_ports as u64 + modbus_links as u64 + if mqtt { 8 } else { 0 }
}

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve it as `id`; first close `evict` (idle) to make room, if given.
    Admit { id: ConnId, evict: Option<ConnId> },
    /// Close it at once.
    Refuse(Refusal),
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every open connection has a request in flight.
    AllBusy,
    /// This peer holds its share of connections, each with a request in flight.
    PeerBusy,
}

impl Refusal {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::AllBusy => "every connection is busy",
            Refusal::PeerBusy => "this address holds its share of connections, all busy",
        }
    }
}

/// How a connection ended, as the adapter saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it, or it ended after a response (no keep-alive), or at shutdown.
    Normally,
    /// A request head did not arrive in full within `api.header_timeout` of its first byte.
    HeaderTimeout,
    /// No request began within `api.idle_timeout`.
    IdleTimeout,
    /// An IO or protocol error.
    Error,
}

/// The API's connection counters, as `/api/v1/status` shows them (`api`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConnCounters {
    /// Connections open now.
    pub open: u64,
    /// The cap in force (`api.max_connections`, bounded by the descriptor limit).
    pub max_connections: u64,
    pub accepted: u64,
    /// Idle connections closed to make room for a new one.
    pub evicted: u64,
    /// New connections closed at once: every connection busy.
    pub refused: u64,
    pub header_timeouts: u64,
    pub idle_timeouts: u64,
    /// Requests answered 503 after `api.request_timeout`.
    pub request_timeouts: u64,
    /// Requests refused with 421 for a `Host` not in the allowed names.
    pub misdirected: u64,
    /// `accept` failures (descriptors exhausted, …).
    pub accept_errors: u64,
}

#[derive(Debug, Clone)]
struct Conn {
    peer: IpAddr,
    in_flight: u32,
    /// Place in the activity order: set when opened and when a request starts or finishes.
    active: u64,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: Limits,
    conns: BTreeMap<ConnId, Conn>,
    per_peer: HashMap<IpAddr, usize>,
    next_id: ConnId,
    tick: u64,
    counters: ConnCounters,
}

impl Admission {
    #[must_use]
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            conns: BTreeMap::new(),
            per_peer: HashMap::new(),
            next_id: 1,
            tick: 0,
            counters: ConnCounters {
                max_connections: limits.max_connections as u64,
                ..ConnCounters::default()
            },
        }
    }

    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Connections open now.
    #[must_use]
    pub fn open_count(&self) -> usize {
        self.conns.len()
    }

    /// Open connections from `peer`.
    #[must_use]
    pub fn peer_count(&self, peer: IpAddr) -> usize {
        self.per_peer.get(&peer).copied().unwrap_or(0)
    }

    /// Whether `id` is open and has a request in flight.
    #[must_use]
    pub fn is_busy(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.in_flight > 0)
    }

    #[must_use]
    pub fn counters(&self) -> ConnCounters {
        self.counters
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// A new connection from `peer` was accepted by the socket: what to do with it.
    pub fn open(&mut self, peer: IpAddr) -> Decision {
        let evict = if self.peer_count(peer) >= self.limits.max_per_peer {
            match self.idle_victim(Some(peer)) {
                Some(victim) => Some(victim),
                None => return self.refuse(Refusal::PeerBusy),
            }
        } else if self.conns.len() >= self.limits.max_connections {
            match self.idle_victim(None) {
                Some(victim) => Some(victim),
                None => return self.refuse(Refusal::AllBusy),
            }
        } else {
            None
        };
        if let Some(victim) = evict {
            self.remove(victim);
            self.counters.evicted += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        let active = self.next_tick();
        self.conns.insert(
            id,
            Conn {
                peer,
                in_flight: 0,
                active,
            },
        );
        *self.per_peer.entry(peer).or_default() += 1;
        self.counters.accepted += 1;
        self.counters.open = self.conns.len() as u64;
        Decision::Admit { id, evict }
    }

    fn refuse(&mut self, why: Refusal) -> Decision {
        self.counters.refused += 1;
        Decision::Refuse(why)
    }

    /// The descriptors ran out (`accept` failed with EMFILE/ENFILE): an idle connection to close
    /// so the next `accept` can succeed, chosen as for room, or `None` when all are busy.
    pub fn evict_for_descriptor(&mut self) -> Option<ConnId> {
        let victim = self.idle_victim(None)?;
        self.remove(victim);
        self.counters.evicted += 1;
        Some(victim)
    }

    /// The idle connection to close: among `peer`'s (or everyone's), of the peer with the most
    /// connections, the least recently active.
    fn idle_victim(&self, peer: Option<IpAddr>) -> Option<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.in_flight == 0 && peer.is_none_or(|p| c.peer == p))
            .max_by_key(|(_, c)| (self.peer_count(c.peer), std::cmp::Reverse(c.active)))
            .map(|(&id, _)| id)
    }

    /// Connection `id` handed a request to the application. `false`: `id` is no longer open
    /// (it was closed to make room an instant before); the adapter drops the request.
    pub fn request_started(&mut self, id: ConnId) -> bool {
        let tick = self.next_tick();
        match self.conns.get_mut(&id) {
            Some(conn) => {
                conn.in_flight += 1;
                conn.active = tick;
                true
            }
            None => false,
        }
    }

    /// Connection `id`'s request was answered (or dropped).
    pub fn request_finished(&mut self, id: ConnId) {
        let tick = self.next_tick();
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.in_flight = conn.in_flight.saturating_sub(1);
            conn.active = tick;
        }
    }

    /// Connection `id` ended (the adapter calls this however it ended, also after an eviction:
    /// then it changes nothing).
    pub fn closed(&mut self, id: ConnId, how: Closed) {
        if !self.remove(id) {
            return;
        }
        match how {
            Closed::HeaderTimeout => self.counters.header_timeouts += 1,
            Closed::IdleTimeout => self.counters.idle_timeouts += 1,
            Closed::Normally | Closed::Error => {}
        }
    }

    /// A request ran past `api.request_timeout`.
    pub fn request_timed_out(&mut self) {
        self.counters.request_timeouts += 1;
    }

    /// A request named a `Host` not allowed.
    pub fn misdirected(&mut self) {
        self.counters.misdirected += 1;
    }

    /// `accept` failed.
    pub fn accept_failed(&mut self) {
        self.counters.accept_errors += 1;
    }

    fn remove(&mut self, id: ConnId) -> bool {
        let Some(conn) = self.conns.remove(&id) else {
            return false;
        };
        if let Some(count) = self.per_peer.get_mut(&conn.peer) {
            *count -= 1;
            if *count == 0 {
                self.per_peer.remove(&conn.peer);
            }
        }
        self.counters.open = self.conns.len() as u64;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn admitted(decision: Decision) -> (ConnId, Option<ConnId>) {
        match decision {
            Decision::Admit { id, evict } => (id, evict),
            Decision::Refuse(why) => panic!("refused: {why:?}"),
        }
    }

    #[test]
    fn the_cap_is_bounded_by_the_descriptors_left_after_the_reserve() {
        assert_eq!(Limits::sized(512, 4096, 64).max_connections, 512);
        assert_eq!(Limits::sized(512, 256, 64).max_connections, 192);
        assert_eq!(Limits::sized(512, 256, 64).max_per_peer, 144);
        assert_eq!(Limits::sized(512, 10, 64).max_connections, 1);
        assert_eq!(Limits::sized(1, 4096, 64).max_per_peer, 1);
    }

    #[test]
    fn a_fresh_client_pushes_out_the_oldest_idle_connection_of_the_flooding_address() {
        let mut admission = Admission::new(Limits::sized(8, 4096, 0));
        let flood: Vec<ConnId> = (0..6).map(|_| admitted(admission.open(ip(2))).0).collect();
        // The flood at its share (6 of 8) makes room among its own connections only.
        let (_, evict) = admitted(admission.open(ip(2)));
        assert_eq!(evict, Some(flood[0]));
        let (fresh, evict) = admitted(admission.open(ip(1)));
        assert_eq!(evict, None);
        admitted(admission.open(ip(1)));
        // Full now: the next fresh client takes the flood's least recently active slot.
        assert!(admission.request_started(fresh));
        let (_, evict) = admitted(admission.open(ip(3)));
        assert_eq!(evict, Some(flood[1]));
        assert_eq!(admission.open_count(), 8);
        assert_eq!(admission.counters().evicted, 2);
    }

    #[test]
    fn when_every_connection_is_busy_a_new_one_is_refused_and_counted() {
        let mut admission = Admission::new(Limits::sized(4, 4096, 0));
        for last in 1..=4 {
            let (id, _) = admitted(admission.open(ip(last)));
            assert!(admission.request_started(id));
        }
        assert_eq!(admission.open(ip(9)), Decision::Refuse(Refusal::AllBusy));
        assert_eq!(admission.counters().refused, 1);
    }

    #[test]
    fn a_request_on_a_connection_closed_to_make_room_is_not_started() {
        let mut admission = Admission::new(Limits::sized(1, 4096, 0));
        let (first, _) = admitted(admission.open(ip(2)));
        let (_, evict) = admitted(admission.open(ip(1)));
        assert_eq!(evict, Some(first));
        assert!(!admission.request_started(first));
        admission.closed(first, Closed::HeaderTimeout);
        assert_eq!(admission.counters().header_timeouts, 0, "already gone");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Open(u8),
        Start(usize),
        Finish(usize),
        Close(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..5).prop_map(Op::Open),
            2 => any::<usize>().prop_map(Op::Start),
            2 => any::<usize>().prop_map(Op::Finish),
            1 => any::<usize>().prop_map(Op::Close),
        ]
    }

    proptest! {
        #[test]
        fn the_policy_keeps_its_promises(cap in 1usize..12, ops in proptest::collection::vec(op(), 1..200)) {
            let mut admission = Admission::new(Limits::sized(cap, 4096, 0));
            let limits = admission.limits();
            let mut open: Vec<ConnId> = Vec::new();
            for op in ops {
                match op {
                    Op::Open(last) => {
                        let peer = ip(last);
                        let idle_anywhere = open.iter().any(|&id| !admission.is_busy(id));
                        let own_idle = open.iter().any(|&id| {
                            !admission.is_busy(id) && admission.conns[&id].peer == peer
                        });
                        let room = open.len() < limits.max_connections;
                        let below_share = admission.peer_count(peer) < limits.max_per_peer;
                        match admission.open(peer) {
                            Decision::Admit { id, evict } => {
                                if let Some(victim) = evict {
                                    // Never a busy one; never a stranger's for a peer at its share.
                                    prop_assert!(open.contains(&victim));
                                    open.retain(|&o| o != victim);
                                    if !below_share {
                                        prop_assert!(own_idle);
                                    }
                                }
                                open.push(id);
                            }
                            Decision::Refuse(_) => {
                                // A fresh connection is admitted while some connection is idle.
                                prop_assert!(!(below_share && (room || idle_anywhere)));
                                prop_assert!(below_share || !own_idle);
                            }
                        }
                    }
                    Op::Start(i) if !open.is_empty() => {
                        let id = open[i % open.len()];
                        prop_assert!(admission.request_started(id));
                    }
                    Op::Finish(i) if !open.is_empty() => {
                        admission.request_finished(open[i % open.len()]);
                    }
                    Op::Close(i) if !open.is_empty() => {
                        let id = open.remove(i % open.len());
                        admission.closed(id, Closed::Normally);
                    }
                    _ => {}
                }
                prop_assert!(admission.open_count() <= limits.max_connections);
                prop_assert_eq!(admission.open_count(), open.len());
                prop_assert_eq!(admission.counters().open as usize, open.len());
            }
        }

        #[test]
        fn an_evicted_connection_never_had_a_request_in_flight(cap in 1usize..8, n in 1usize..40) {
            let mut admission = Admission::new(Limits::sized(cap, 4096, 0));
            let mut busy = Vec::new();
            for k in 0..n {
                let peer = ip(1 + (k % 3) as u8);
                if let Decision::Admit { id, evict } = admission.open(peer) {
                    if let Some(victim) = evict {
                        prop_assert!(!busy.contains(&victim));
                    }
                    if k % 2 == 0 {
                        admission.request_started(id);
                        busy.push(id);
                    }
                }
            }
        }
    }
}
