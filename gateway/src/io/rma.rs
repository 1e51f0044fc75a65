//! `outpost nodes export`: the node registry's RMA record ([`crate::io::store::rma`]) as JSON
//! (one object per node and line) or as CSV (one row per event, the node's columns repeated on
//! each) for a spreadsheet. docs/rma.md is the reference for both shapes.
//!
//! The lot comes from the node and is untrusted: the `csv` crate quotes it (commas, quotes,
//! newlines), and a text cell that a spreadsheet would run as a formula (starting with `=`, `+`,
//! `-`, `@`, a tab or a carriage return) gets a leading `'` in the CSV, so opening the export
//! never runs what a node wrote. The JSON keeps every value as it is.

use std::io::Write;

use crate::io::store::rma::RmaNode;

/// The CSV's columns, in order.
pub const CSV_HEADER: [&str; 17] = [
    "uid",
    "hw_rev",
    "lot",
    "first_seen",
    "last_seen",
    "fw_version",
    "revoked",
    "event",
    "at",
    "at_ms",
    "from_version",
    "to_version",
    "outcome",
    "rollout",
    "boot_id",
    "reason",
    "expected",
];

/// One JSON object per node, one per line.
pub fn write_json(out: &mut impl Write, nodes: &[RmaNode]) -> anyhow::Result<()> {
    for node in nodes {
        serde_json::to_writer(&mut *out, node)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// One row per event (`node`: the node as registered; `firmware`: a transition; `reset`: a
/// boot), events of a node in time order after its `node` row.
pub fn write_csv(out: &mut impl Write, nodes: &[RmaNode]) -> anyhow::Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(CSV_HEADER)?;
    for node in nodes {
        let hw_rev = node.hw_rev.to_string();
        let first_seen = rfc3339(node.first_seen_ms);
        let last_seen = rfc3339(node.last_seen_ms);
        let revoked = node.revoked_ms.map(rfc3339).unwrap_or_default();
        let lot = cell(&node.lot);
        let fw_version = cell(&node.fw_version);
        let node_columns = [
            node.uid.as_str(),
            hw_rev.as_str(),
            lot.as_str(),
            first_seen.as_str(),
            last_seen.as_str(),
            fw_version.as_str(),
            revoked.as_str(),
        ];
        let mut events: Vec<(i64, [String; 10])> = Vec::new();
        events.push((
            node.first_seen_ms,
            row("node", node.first_seen_ms, ["", "", "", "", "", "", ""]),
        ));
        for f in &node.firmware {
            let rollout = f.rollout.map(|r| r.to_string()).unwrap_or_default();
            events.push((
                f.at_ms,
                row(
                    "firmware",
                    f.at_ms,
                    [
                        &cell(&f.from_version),
                        &cell(&f.to_version),
                        &cell(&f.outcome),
                        &rollout,
                        "",
                        "",
                        "",
                    ],
                ),
            ));
        }
        for r in &node.resets {
            events.push((
                r.at_ms,
                row(
                    "reset",
                    r.at_ms,
                    [
                        "",
                        &cell(&r.fw_version),
                        "",
                        "",
                        &r.boot_id.to_string(),
                        &cell(&r.reason),
                        if r.expected { "true" } else { "false" },
                    ],
                ),
            ));
        }
        // Stable: the node row first, then firmware before resets at the same millisecond.
        events.sort_by_key(|(at, _)| *at);
        for (_, event) in &events {
            csv.write_record(
                node_columns
                    .iter()
                    .copied()
                    .chain(event.iter().map(String::as_str)),
            )?;
        }
    }
    csv.flush()?;
    Ok(())
}

fn row(event: &str, at_ms: i64, rest: [&str; 7]) -> [String; 10] {
    let mut row: [String; 10] = Default::default();
    row[0] = event.to_owned();
    row[1] = rfc3339(at_ms);
    row[2] = at_ms.to_string();
    for (slot, value) in row[3..].iter_mut().zip(rest) {
        *slot = value.to_owned();
    }
    row
}

/// A text cell a spreadsheet shows as text, never runs as a formula.
fn cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

fn rfc3339(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::store::rma::{RmaFirmware, RmaReset};

    fn hostile_node() -> RmaNode {
        RmaNode {
            uid: "0102030405060708".into(),
            hw_rev: 2,
            lot: "=1+2,\"x\"\nA".into(),
            fw_version: "1.1.0".into(),
            first_seen_ms: 1_000,
            last_seen_ms: 9_000,
            port: Some("/dev/ttyACM0".into()),
            enrolled: true,
            revoked_ms: None,
            firmware: vec![RmaFirmware {
                at_ms: 5_000,
                from_version: "1.0.0".into(),
                to_version: "1.1.0".into(),
                outcome: "booted_outside_rollout".into(),
                rollout: None,
            }],
            resets: vec![
                RmaReset {
                    boot_id: 11,
                    at_ms: 1_000,
                    reason: "power_on".into(),
                    expected: true,
                    fw_version: "1.0.0".into(),
                },
                RmaReset {
                    boot_id: 12,
                    at_ms: 3_000,
                    reason: "hard_fault".into(),
                    expected: false,
                    fw_version: "1.0.0".into(),
                },
            ],
        }
    }

    #[test]
    fn the_csv_reads_back_as_one_row_per_event_with_the_lot_intact_and_never_a_formula() {
        let mut out = Vec::new();
        write_csv(&mut out, &[hostile_node()]).unwrap();
        let mut reader = csv::Reader::from_reader(out.as_slice());
        assert_eq!(
            reader.headers().unwrap().iter().collect::<Vec<_>>(),
            CSV_HEADER
        );
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        let events: Vec<&str> = rows.iter().map(|r| &r[7]).collect();
        assert_eq!(events, ["node", "reset", "reset", "firmware"]);
        for r in &rows {
            assert_eq!(r.len(), CSV_HEADER.len());
            assert_eq!(&r[0], "0102030405060708");
            // Commas, quotes and the newline survive; the leading `=` is defused.
            assert_eq!(&r[2], "'=1+2,\"x\"\nA");
        }
        assert_eq!(&rows[2][15], "hard_fault");
        assert_eq!(&rows[2][16], "false");
        assert_eq!(&rows[3][12], "booted_outside_rollout");
        assert_eq!(&rows[3][8], "1970-01-01T00:00:05.000Z");
    }

    #[test]
    fn the_json_keeps_each_node_on_its_own_line_with_the_lot_as_reported() {
        let mut out = Vec::new();
        write_json(&mut out, &[hostile_node(), hostile_node()]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let node: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(node["lot"], "=1+2,\"x\"\nA");
        assert_eq!(node["resets"][1]["reason"], "hard_fault");
        assert_eq!(node["firmware"][0]["to_version"], "1.1.0");
    }
}
