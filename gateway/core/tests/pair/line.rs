//! The serial line between the two ends: frames in flight, each with its arrival time, and what
//! the line did to it on the way.
//!
//! The line works on bytes: a fault changes, cuts, splits or pads a frame's bytes, and each end
//! is handed bytes (the gateway through `PortSession::handle_bytes`, the node through
//! `NodeLink::handle_bytes`), never decoded messages.

use outpost_proto::Millis;
use proptest::sample::Index;

/// Time every frame spends on the line.
pub(crate) const LATENCY_MS: u64 = 2;
/// Longest extra latency of a delayed frame (later frames overtake it).
pub(crate) const MAX_DELAY_MS: u64 = 2500;
/// Longest time between a frame and its duplicate.
pub(crate) const MAX_DUPLICATE_GAP_MS: u64 = 50;
/// Longest a frame (or a copy of it) is on the line.
pub(crate) const MAX_TRANSIT_MS: u64 = LATENCY_MS + max(MAX_DELAY_MS, MAX_DUPLICATE_GAP_MS);

const fn max(a: u64, b: u64) -> u64 {
    if a > b { a } else { b }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    ToGateway,
    ToNode,
}

/// What the line does to one frame.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    Deliver,
    Drop,
    /// A second copy arrives this many ms after the first.
    Duplicate(u64),
    /// Extra latency, so later frames overtake this one.
    Delay(u64),
    /// One byte changed: XORed with a non-zero mask (a delimiter may be hit too).
    Corrupt(Index, u8),
    /// Only a prefix arrives: the frame is cut off (the next frame's leading delimiter ends it).
    Truncate(Index),
    /// Noise on the line just before the frame.
    Noise(Vec<u8>),
    /// The frame arrives intact but split across two reads: two `handle_bytes` calls at the
    /// same instant.
    Split(Index),
    /// A dirty line: each byte lost with probability `lose_per_million` / 10^6 (drawn from
    /// `seed`), and `noise` (if any) written into the middle of the frame.
    Dirty {
        seed: u64,
        lose_per_million: u32,
        noise: Vec<u8>,
    },
}

/// splitmix64: a tiny deterministic generator for byte-level faults.
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug)]
struct InFlight {
    at: Millis,
    order: u64,
    dir: Dir,
    /// Its bytes, in the pieces a read ends between (one piece unless split).
    reads: Vec<Vec<u8>>,
}

/// Frames on the wire, both directions.
#[derive(Debug, Default)]
pub(crate) struct Line {
    in_flight: Vec<InFlight>,
    sent: u64,
    /// Frames the line hurt (dropped, changed, cut), per direction: to the gateway, to the node.
    pub(crate) hurt: [u64; 2],
}

impl Line {
    pub(crate) fn send(&mut self, now: Millis, dir: Dir, frame: &[u8], fault: Fault) {
        let mut reads = vec![frame.to_vec()];
        let mut arrivals = vec![now + LATENCY_MS];
        let mut hurt = !matches!(
            fault,
            Fault::Deliver
                | Fault::Duplicate(_)
                | Fault::Delay(_)
                | Fault::Split(_)
                | Fault::Dirty { .. }
        );
        match fault {
            Fault::Deliver => {}
            Fault::Drop => arrivals.clear(),
            Fault::Duplicate(gap) => arrivals.push(now + LATENCY_MS + gap),
            Fault::Delay(ms) => arrivals[0] = now + LATENCY_MS + ms,
            Fault::Corrupt(at, mask) => {
                let i = at.index(frame.len());
                reads[0][i] ^= mask;
            }
            Fault::Truncate(at) => reads[0].truncate(at.index(frame.len())),
            Fault::Noise(mut noise) => {
                noise.extend_from_slice(&reads[0]);
                reads[0] = noise;
            }
            Fault::Split(at) => {
                let tail = reads[0].split_off(at.index(frame.len()));
                reads.push(tail);
            }
            Fault::Dirty {
                mut seed,
                lose_per_million,
                noise,
            } => {
                let mut bytes = frame.to_vec();
                if !noise.is_empty() {
                    let middle = bytes.len() / 2;
                    bytes.splice(middle..middle, noise);
                }
                let before = bytes.len();
                bytes.retain(|_| splitmix(&mut seed) % 1_000_000 >= u64::from(lose_per_million));
                hurt = bytes.len() != frame.len() || before != frame.len();
                reads[0] = bytes;
            }
        }
        if hurt {
            self.hurt[dir as usize] += 1;
        }
        for at in arrivals {
            self.sent += 1;
            self.in_flight.push(InFlight {
                at,
                order: self.sent,
                dir,
                reads: reads.clone(),
            });
        }
    }

    pub(crate) fn next_arrival(&self) -> Option<Millis> {
        self.in_flight.iter().map(|f| f.at).min()
    }

    /// What arrives by `now`, in arrival order (ties in the order sent), as the reads an end
    /// gets: frames arriving together in one direction come in one read, as a serial port
    /// returns whatever its buffer holds; a split frame ends a read.
    pub(crate) fn take_due(&mut self, now: Millis) -> Vec<(Dir, Vec<u8>)> {
        self.in_flight.sort_by_key(|f| (f.at, f.order));
        let due = self.in_flight.iter().take_while(|f| f.at <= now).count();
        let mut reads: Vec<(Dir, Vec<u8>, Millis)> = Vec::new();
        for frame in self.in_flight.drain(..due) {
            for (i, piece) in frame.reads.into_iter().enumerate() {
                match reads.last_mut() {
                    Some((dir, read, at)) if i == 0 && *dir == frame.dir && *at == frame.at => {
                        read.extend_from_slice(&piece);
                    }
                    _ => reads.push((frame.dir, piece, frame.at)),
                }
            }
        }
        reads
            .into_iter()
            .map(|(dir, read, _)| (dir, read))
            .collect()
    }

    /// Forgets the frames in flight in one direction.
    pub(crate) fn discard(&mut self, dir: Dir) {
        self.in_flight.retain(|f| f.dir != dir);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}
