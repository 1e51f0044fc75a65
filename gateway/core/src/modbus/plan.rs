//! Read planning: the cheapest set of read requests that covers every point of a device.
//!
//! Per table, points are taken in address order and cut into runs; each run is one request from
//! its first point's address to its last point's end, reading the unused registers in between.
//! Which cuts to make is a shortest-path problem over the sorted points (a run's cost depends
//! only on its first and last point), solved exactly by dynamic programming under the
//! [`CostModel`] and [`Limits`]: a gap is bridged exactly when reading it costs no more than the
//! request it saves. With equal cost, fewer requests win: each transaction is one more chance of
//! a timeout and one more bus turnaround.
//!
//! Guarantees, checked by the property tests below: every point is served by exactly one request
//! that contains it whole; requests are sorted by (table, start) and never overlap; none exceeds
//! its limit; there are never more requests than points, and the plan never costs more than one
//! request per point.
//!
//! A caveat for the adapter: some devices answer an exception (illegal data address) for a read
//! that touches an unmapped register. For them, plan with [`CostModel::NO_GAPS`].

use std::time::Duration;

use crate::modbus::map::{MAX_READ_BITS, MAX_READ_REGISTERS, Point, RegisterMap, Table};
use crate::modbus::value::{DecodeError, Raw, Value, decode};

/// Design: what one read request costs, in bytes on the line (for RTU, character times), so
/// that bridging a gap can be weighed against a new request. Data bytes follow from the protocol:
/// 2 per register, 1 per 8 bits (v1.1b §6.1–§6.4 responses). Only the fixed part differs by
/// transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostModel {
    /// Bytes a request costs however much it reads: both frames' fixed parts plus any silence.
    pub request_overhead_bytes: u32,
    /// Whether unused registers between points may be read at all.
    pub bridge_gaps: bool,
}

impl CostModel {
    /// Modbus RTU (Modbus over Serial Line v1.02 §2.5.1): a read request is 8 bytes (unit id,
    /// function, start ×2, quantity ×2, CRC ×2); its response 5 bytes besides data (unit id,
    /// function, byte count, CRC ×2); and each frame is followed by a 3.5-character silence
    /// (§2.5.1.1), 7 character times per transaction: 20 in all, so a gap of up to 10 registers
    /// is cheaper to read than to skip.
    pub const RTU: CostModel = CostModel {
        request_overhead_bytes: 8 + 5 + 7,
        bridge_gaps: true,
    };

    /// Modbus TCP (Modbus Messaging on TCP/IP v1.0b §3.1): 7-byte MBAP header plus function,
    /// start and quantity out (12 bytes), MBAP, function and byte count back (9 bytes), and an
    /// IPv4 + TCP header of 40 bytes on each segment: 101 bytes, so a gap of up to 50 registers
    /// is read. The round trip it also saves is not counted: on a LAN it dwarfs the bytes, and
    /// counting it would bridge almost any gap inside the 125-register limit.
    pub const TCP: CostModel = CostModel {
        request_overhead_bytes: 12 + 9 + 2 * 40,
        bridge_gaps: true,
    };

    /// Never read a register no point declares (for devices that refuse such reads); adjacent
    /// points are still merged.
    pub const NO_GAPS: CostModel = CostModel {
        request_overhead_bytes: 1,
        bridge_gaps: false,
    };

    /// Bytes of a read of `quantity` bits or registers from `table`, both directions.
    #[must_use]
    pub fn bytes(&self, table: Table, quantity: u16) -> u32 {
        let data = if table.is_bits() {
            u32::from(quantity).div_ceil(8)
        } else {
            2 * u32::from(quantity)
        };
        self.request_overhead_bytes + data
    }

    /// Line time of such a read on an RTU line at `baud` with 11-bit characters (start, 8 data,
    /// parity or a second stop bit, stop: Serial Line v1.02 §2.5.1), silences included.
    #[must_use]
    pub fn rtu_time(&self, table: Table, quantity: u16, baud: u32) -> Duration {
        let bits = u64::from(self.bytes(table, quantity)) * 11;
        Duration::from_nanos(bits * 1_000_000_000 / u64::from(baud.max(1)))
    }
}

/// The most one read may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Registers per read of holding or input registers; at most 125 (v1.1b §6.3, §6.4).
    pub max_registers: u16,
    /// Bits per read of coils or discrete inputs; at most 2000 (v1.1b §6.1, §6.2).
    pub max_bits: u16,
}

impl Limits {
    /// What the protocol allows.
    pub const PROTOCOL: Limits = Limits {
        max_registers: MAX_READ_REGISTERS,
        max_bits: MAX_READ_BITS,
    };

    fn of(&self, table: Table) -> u16 {
        if table.is_bits() {
            self.max_bits
        } else {
            self.max_registers
        }
    }
}

/// A point served by a request: its index in the map's points, and where its bits or registers
/// start in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub point: usize,
    pub offset: u16,
}

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    table: Table,
    start: u16,
    quantity: u16,
    served: Vec<Served>,
}

impl ReadRequest {
    #[must_use]
    pub fn table(&self) -> Table {
        self.table
    }

    /// The function code: 0x01–0x04.
    #[must_use]
    pub fn function(&self) -> u8 {
        self.table.read_function()
    }

    #[must_use]
    pub fn start(&self) -> u16 {
        self.start
    }

    /// Bits or registers to read.
    #[must_use]
    pub fn quantity(&self) -> u16 {
        self.quantity
    }

    /// The points served, in address order.
    #[must_use]
    pub fn served(&self) -> &[Served] {
        &self.served
    }

    /// Each served point's reading from this request's response. `points` are the points the
    /// plan was made from; a response too short for a point gives that point an error, the
    /// others still decode.
    pub fn readings<'a>(
        &'a self,
        points: &'a [Point],
        response: Raw<'a>,
    ) -> impl Iterator<Item = (&'a Point, Result<Value, DecodeError>)> + 'a {
        self.served.iter().map(move |s| {
            let point = &points[s.point];
            let range = usize::from(s.offset)..usize::from(s.offset) + usize::from(point.size());
            let raw = match response {
                Raw::Bits(bits) => Raw::Bits(bits.get(range).unwrap_or(&[])),
                Raw::Registers(words) => Raw::Registers(words.get(range).unwrap_or(&[])),
            };
            (point, decode(point, raw))
        })
    }
}

/// The reads that poll one device, sorted by (table, start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    requests: Vec<ReadRequest>,
}

impl ReadPlan {
    /// The plan for a compiled map, under its device's limits.
    #[must_use]
    pub fn for_map(map: &RegisterMap, cost: &CostModel) -> ReadPlan {
        let limits = Limits {
            max_registers: map.max_read_registers(),
            ..Limits::PROTOCOL
        };
        ReadPlan::new(map.points(), limits, cost)
    }

    /// The plan for `points`, which must not overlap within a table and must each fit `limits`
    /// (both hold for a compiled [`RegisterMap`]). A point larger than its limit still gets a
    /// request of its own, which the device will refuse.
    #[must_use]
    pub fn new(points: &[Point], limits: Limits, cost: &CostModel) -> ReadPlan {
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| (points[i].table, points[i].address, i));
        let mut requests = Vec::new();
        for run in order.chunk_by(|&a, &b| points[a].table == points[b].table) {
            plan_table(
                points,
                run,
                limits.of(points[run[0]].table),
                cost,
                &mut requests,
            );
        }
        ReadPlan { requests }
    }

    #[must_use]
    pub fn requests(&self) -> &[ReadRequest] {
        &self.requests
    }

    /// Bytes on the line for one poll of every request under `cost`.
    #[must_use]
    pub fn bytes(&self, cost: &CostModel) -> u32 {
        self.requests
            .iter()
            .map(|r| cost.bytes(r.table, r.quantity))
            .sum()
    }
}

/// Cuts one table's points (`sorted` by address) into the cheapest runs.
fn plan_table(
    points: &[Point],
    sorted: &[usize],
    limit: u16,
    cost: &CostModel,
    out: &mut Vec<ReadRequest>,
) {
    let n = sorted.len();
    let first = |k: usize| u32::from(points[sorted[k]].address);
    let last = |k: usize| u32::from(points[sorted[k]].last_address());
    // best[j]: (cost, requests) of covering the first j points; cut[j]: where the last run starts.
    let mut best = vec![(0u64, 0u32); n + 1];
    let mut cut = vec![0usize; n + 1];
    for j in 1..=n {
        let mut end = 0;
        let mut choice: Option<((u64, u32), usize)> = None;
        for i in (0..j).rev() {
            end = end.max(last(i));
            let span = end - first(i) + 1;
            let alone = i == j - 1;
            if !alone {
                // Would this run read a register no point declares?
                let gap = first(i + 1) > last(i) + 1;
                if span > u32::from(limit) || (gap && !cost.bridge_gaps) {
                    break;
                }
            }
            let span = u16::try_from(span).unwrap_or(u16::MAX);
            let (c, r) = best[i];
            let candidate = (
                c + u64::from(cost.bytes(points[sorted[i]].table, span)),
                r + 1,
            );
            if choice.is_none_or(|(b, _)| candidate < b) {
                choice = Some((candidate, i));
            }
        }
        let (b, i) = choice.expect("a run of the one last point is always possible");
        best[j] = b;
        cut[j] = i;
    }
    let mut runs = Vec::new();
    let mut j = n;
    while j > 0 {
        runs.push(cut[j]..j);
        j = cut[j];
    }
    for run in runs.into_iter().rev() {
        let start = points[sorted[run.start]].address;
        let end = run.clone().map(last).max().unwrap_or(u32::from(start));
        let served = run
            .map(|k| Served {
                point: sorted[k],
                offset: points[sorted[k]].address - start,
            })
            .collect();
        out.push(ReadRequest {
            table: points[sorted[0]].table,
            start,
            quantity: u16::try_from(end - u32::from(start) + 1).unwrap_or(u16::MAX),
            served,
        });
    }
}

#[cfg(test)]
mod tests;
