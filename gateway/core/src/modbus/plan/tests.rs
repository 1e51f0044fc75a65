use proptest::prelude::*;

use super::*;
use crate::modbus::map::{DataType, Order};

fn point(name: &str, table: Table, address: u16, data_type: DataType) -> Point {
    Point {
        name: name.into(),
        table,
        address,
        data_type,
        word_order: Order::Big,
        byte_order: Order::Big,
        scale: 1.0,
        offset: 0.0,
        unit: None,
        writable: false,
    }
}

fn holding(address: u16, data_type: DataType) -> Point {
    point(&format!("h{address}"), Table::Holding, address, data_type)
}

/// (table, start, quantity) of every request.
fn shape(plan: &ReadPlan) -> Vec<(Table, u16, u16)> {
    plan.requests()
        .iter()
        .map(|r| (r.table(), r.start(), r.quantity()))
        .collect()
}

#[test]
fn adjacent_points_share_one_request() {
    let points = [
        holding(0, DataType::F32),
        holding(2, DataType::U16),
        holding(3, DataType::U64),
    ];
    let plan = ReadPlan::new(&points, Limits::PROTOCOL, &CostModel::RTU);
    assert_eq!(shape(&plan), [(Table::Holding, 0, 7)]);
    let offsets: Vec<u16> = plan.requests()[0]
        .served()
        .iter()
        .map(|s| s.offset)
        .collect();
    assert_eq!(offsets, [0, 2, 3]);
}

#[test]
fn on_rtu_a_gap_of_ten_registers_is_read_and_one_of_eleven_is_skipped() {
    // Reading g unused registers costs 2g bytes; a new request 20 (8 out, 5 back, 2 × 3.5
    // silences). At g = 10 they cost the same and one request is the better bus citizen.
    let ten = [holding(0, DataType::U16), holding(11, DataType::U16)];
    let plan = ReadPlan::new(&ten, Limits::PROTOCOL, &CostModel::RTU);
    assert_eq!(shape(&plan), [(Table::Holding, 0, 12)]);

    let eleven = [holding(0, DataType::U16), holding(12, DataType::U16)];
    let plan = ReadPlan::new(&eleven, Limits::PROTOCOL, &CostModel::RTU);
    assert_eq!(
        shape(&plan),
        [(Table::Holding, 0, 1), (Table::Holding, 12, 1)]
    );
}

#[test]
fn on_tcp_a_wider_gap_is_bridged_than_on_rtu() {
    // 40 unused registers (80 bytes) are cheaper than another 101-byte TCP exchange.
    let points = [holding(0, DataType::U16), holding(41, DataType::U16)];
    assert_eq!(
        shape(&ReadPlan::new(&points, Limits::PROTOCOL, &CostModel::TCP)),
        [(Table::Holding, 0, 42)]
    );
    assert_eq!(
        ReadPlan::new(&points, Limits::PROTOCOL, &CostModel::RTU)
            .requests()
            .len(),
        2
    );
}

#[test]
fn a_sparse_map_gets_the_minimal_plan() {
    // Holding: a cluster 0..=5 with small gaps, a lone value at 40, a cluster 100..=103.
    // Inputs at 0 and 2 (different table: a request of their own).
    // Coils 0 and 150 (a 149-bit gap costs 17 bytes < 20) and 400 (another 31 bytes: skipped).
    let points = [
        holding(0, DataType::F32),
        holding(4, DataType::U16), // the f32 ends at 1: a gap of 2 registers, bridged
        holding(5, DataType::I16), // adjacent
        holding(40, DataType::U16), // gap of 34 registers: a request of its own
        holding(100, DataType::F64), // gap of 59
        point("i0", Table::Input, 0, DataType::U16),
        point("i2", Table::Input, 2, DataType::U16),
        point("c0", Table::Coil, 0, DataType::Bool),
        point("c150", Table::Coil, 150, DataType::Bool),
        point("c400", Table::Coil, 400, DataType::Bool),
    ];
    let plan = ReadPlan::new(&points, Limits::PROTOCOL, &CostModel::RTU);
    assert_eq!(
        shape(&plan),
        [
            (Table::Coil, 0, 151),
            (Table::Coil, 400, 1),
            (Table::Holding, 0, 6),
            (Table::Holding, 40, 1),
            (Table::Holding, 100, 4),
            (Table::Input, 0, 3),
        ]
    );
    // Six requests is the least under the model: every one of them is separated from its
    // neighbour by a gap that costs more than the 20-byte request it would save.
    assert_eq!(
        plan.bytes(&CostModel::RTU),
        6 * 20 + 19 + 1 + 12 + 2 + 8 + 6
    );
}

#[test]
fn a_long_run_of_registers_is_cut_at_the_protocol_limit() {
    let points: Vec<Point> = (0..130).map(|a| holding(a, DataType::U16)).collect();
    let plan = ReadPlan::new(&points, Limits::PROTOCOL, &CostModel::RTU);
    assert_eq!(
        shape(&plan),
        [(Table::Holding, 0, 125), (Table::Holding, 125, 5)]
    );
}

#[test]
fn a_multi_register_point_is_never_split_across_requests() {
    // 62 f32s end at 123; the 63rd (124..=125) cannot start a 125-register request at 0.
    let points: Vec<Point> = (0..63).map(|k| holding(2 * k, DataType::F32)).collect();
    let plan = ReadPlan::new(&points, Limits::PROTOCOL, &CostModel::RTU);
    assert_eq!(
        shape(&plan),
        [(Table::Holding, 0, 124), (Table::Holding, 124, 2)]
    );
}

#[test]
fn a_device_limit_below_the_protocol_is_respected() {
    let points: Vec<Point> = (0..40).map(|k| holding(2 * k, DataType::F32)).collect();
    let limits = Limits {
        max_registers: 60,
        ..Limits::PROTOCOL
    };
    let plan = ReadPlan::new(&points, limits, &CostModel::RTU);
    assert_eq!(
        shape(&plan),
        [(Table::Holding, 0, 60), (Table::Holding, 60, 20)]
    );
}

#[test]
fn without_gap_bridging_only_touching_points_are_merged() {
    let points = [
        holding(0, DataType::U16),
        holding(1, DataType::U16),
        holding(3, DataType::U16),
    ];
    let plan = ReadPlan::new(&points, Limits::PROTOCOL, &CostModel::NO_GAPS);
    assert_eq!(
        shape(&plan),
        [(Table::Holding, 0, 2), (Table::Holding, 3, 1)]
    );
}

#[test]
fn a_response_is_split_into_each_served_points_reading() {
    let points = [
        holding(10, DataType::U16),
        holding(12, DataType::I32),
        holding(14, DataType::String { registers: 2 }),
    ];
    let plan = ReadPlan::new(&points, Limits::PROTOCOL, &CostModel::RTU);
    let request = &plan.requests()[0];
    assert_eq!(
        (request.function(), request.start(), request.quantity()),
        (0x03, 10, 6)
    );
    // Registers 10..=15: 10 = 7; 11 unused; 12..=13 = -1 (i32); 14..=15 = "OK" + NUL NUL.
    let response = [7, 0xDEAD, 0xFFFF, 0xFFFF, 0x4F4B, 0x0000];
    let readings: Vec<(String, Value)> = request
        .readings(&points, Raw::Registers(&response))
        .map(|(p, v)| (p.name.clone(), v.unwrap()))
        .collect();
    assert_eq!(
        readings,
        [
            ("h10".into(), Value::Uint(7)),
            ("h12".into(), Value::Int(-1)),
            ("h14".into(), Value::Text("OK".into())),
        ]
    );
    // A short response fails only the points it does not reach.
    let short: Vec<bool> = request
        .readings(&points, Raw::Registers(&response[..4]))
        .map(|(_, v)| v.is_ok())
        .collect();
    assert_eq!(short, [true, true, false]);
}

#[test]
fn rtu_line_time_follows_the_frame_bytes() {
    // 38 registers: 20 + 76 = 96 characters × 11 bits at 19200 baud = 55 ms.
    let t = CostModel::RTU.rtu_time(Table::Input, 38, 19_200);
    assert_eq!(t, Duration::from_nanos(96 * 11 * 1_000_000_000 / 19_200));
}

/// Non-overlapping points over the four tables: each table a walk of (gap, type) steps.
fn points_strategy() -> impl Strategy<Value = Vec<Point>> {
    let register_type = prop_oneof![
        Just(DataType::U16),
        Just(DataType::F32),
        Just(DataType::U64),
        (1u16..=20).prop_map(|registers| DataType::String { registers }),
    ];
    let steps =
        |gap_max: u16| proptest::collection::vec((0u16..gap_max, register_type.clone()), 0..40);
    (
        steps(40),
        steps(40),
        proptest::collection::vec(0u16..300, 0..40),
        0u16..60_000,
    )
        .prop_map(|(holding, input, coils, base)| {
            let mut points = Vec::new();
            for (table, walk) in [(Table::Holding, holding), (Table::Input, input)] {
                let mut next = u32::from(base);
                for (gap, data_type) in walk {
                    let address = next + u32::from(gap);
                    if address + u32::from(data_type.size()) > 65_536 {
                        break;
                    }
                    let name = format!("{table}{address}");
                    points.push(point(&name, table, address as u16, data_type));
                    next = address + u32::from(data_type.size());
                }
            }
            let mut next = 0u32;
            for gap in coils {
                let address = next + u32::from(gap);
                points.push(point(
                    &format!("c{address}"),
                    Table::Coil,
                    address as u16,
                    DataType::Bool,
                ));
                next = address + 1;
            }
            points
        })
}

fn cost_strategy() -> impl Strategy<Value = CostModel> {
    prop_oneof![
        Just(CostModel::RTU),
        Just(CostModel::TCP),
        Just(CostModel::NO_GAPS),
        (0u32..300).prop_map(|request_overhead_bytes| CostModel {
            request_overhead_bytes,
            bridge_gaps: true
        }),
    ]
}

proptest! {
    #[test]
    fn every_plan_covers_each_point_once_within_limits_sorted_and_never_worse_than_one_read_per_point(
        points in points_strategy(),
        cost in cost_strategy(),
        max_registers in 20u16..=125,
        max_bits in 1u16..=2000,
    ) {
        let limits = Limits { max_registers, max_bits };
        let plan = ReadPlan::new(&points, limits, &cost);
        let mut seen = vec![0; points.len()];
        for r in plan.requests() {
            prop_assert!(r.quantity() >= 1);
            prop_assert!(r.quantity() <= limits.of(r.table()), "{r:?}");
            prop_assert!(u32::from(r.start()) + u32::from(r.quantity()) <= 65_536);
            let mut reaches_end = false;
            for s in r.served() {
                let p = &points[s.point];
                seen[s.point] += 1;
                prop_assert_eq!(p.table, r.table());
                prop_assert_eq!(u32::from(s.offset), u32::from(p.address) - u32::from(r.start()));
                prop_assert!(s.offset + p.size() <= r.quantity(), "{p:?} outside {r:?}");
                reaches_end |= s.offset + p.size() == r.quantity();
            }
            // No request reads past its last point or before its first.
            prop_assert!(reaches_end);
            prop_assert_eq!(r.served()[0].offset, 0);
        }
        prop_assert!(seen.iter().all(|&n| n == 1), "coverage {seen:?}");
        for pair in plan.requests().windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            prop_assert!((a.table(), a.start()) < (b.table(), b.start()));
            if a.table() == b.table() {
                prop_assert!(u32::from(a.start()) + u32::from(a.quantity()) <= u32::from(b.start()));
            }
        }
        prop_assert!(plan.requests().len() <= points.len());
        let one_per_point: u32 = points.iter().map(|p| cost.bytes(p.table, p.size())).sum();
        prop_assert!(plan.bytes(&cost) <= one_per_point);
    }
}

/// The cheapest (bytes, requests) over every way of cutting `points` (one table, sorted,
/// non-overlapping) into runs, by trying all 2^(n-1) cut sets.
fn brute_force(points: &[Point], limit: u16, cost: &CostModel) -> (u32, usize) {
    let n = points.len();
    let mut best = (u32::MAX, usize::MAX);
    for cuts in 0u32..(1 << (n - 1)) {
        let mut total = (0u32, 0usize);
        let mut start = 0;
        let mut feasible = true;
        for k in 0..n {
            let last_of_run = k == n - 1 || cuts & (1 << k) != 0;
            if !last_of_run {
                let gap = points[k + 1].address > points[k].last_address() + 1;
                if gap && !cost.bridge_gaps {
                    feasible = false;
                }
                continue;
            }
            let span = points[k].last_address() - points[start].address + 1;
            if span > limit && k > start {
                feasible = false;
            }
            total.0 += cost.bytes(points[start].table, span);
            total.1 += 1;
            start = k + 1;
        }
        if feasible {
            best = best.min(total);
        }
    }
    best
}

proptest! {
    #[test]
    fn the_plan_is_as_cheap_as_the_best_of_every_possible_cut(
        steps in proptest::collection::vec(
            (0u16..30, prop_oneof![Just(DataType::U16), Just(DataType::F32), Just(DataType::F64)]),
            1..10,
        ),
        cost in cost_strategy(),
        max_registers in 4u16..=40,
    ) {
        let mut points = Vec::new();
        let mut next = 0u16;
        for (gap, data_type) in steps {
            let address = next + gap;
            points.push(holding(address, data_type));
            next = address + data_type.size();
        }
        let limits = Limits { max_registers, ..Limits::PROTOCOL };
        let plan = ReadPlan::new(&points, limits, &cost);
        prop_assert_eq!(
            (plan.bytes(&cost), plan.requests().len()),
            brute_force(&points, max_registers, &cost)
        );
    }
}
