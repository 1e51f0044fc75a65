//! End-to-end: RMA traceability with the real daemon and simulated nodes on ptys. A node that
//! boots after a power-on, after a hard fault, and back with another firmware flashed by hand
//! shows in `outpost nodes export` (JSON and CSV) with its lot (hostile: a comma and quotes),
//! the firmware transition no rollout explains, and every reset with whether it was expected.

use std::process::Command;
use std::time::Duration;

use outpost_e2e::{NodeSpec, Site, bin, wait_for};

const UID: &str = "e2e0000000000001";
const LOT: &str = "L7,\"B\"";

fn resets(site: &Site) -> Vec<(String, String)> {
    let Ok(conn) = rusqlite::Connection::open(site.store_path()) else {
        return Vec::new();
    };
    let Ok(mut stmt) = conn.prepare("SELECT reason, fw_version FROM node_resets ORDER BY id")
    else {
        return Vec::new();
    };
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

fn export(site: &Site, format: &str) -> String {
    let out = Command::new(bin("outpost"))
        .args(["nodes", "export", "--format", format, "--config"])
        .arg(site.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "outpost nodes export --format {format}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Replaces node 0 by a new simulator process with `args` (a reboot of the board) and waits
/// until the gateway has recorded `boots` boots.
fn reboot_node(site: &mut Site, args: &[&str], boots: usize) {
    if let Some(mut node) = site.nodes[0].take() {
        node.terminate(Duration::from_secs(10)).unwrap();
    }
    site.specs[0].sim_args = common_args()
        .into_iter()
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect();
    site.nodes[0] = Some(site.spawn_node(0).unwrap());
    wait_for(Duration::from_secs(30), "the boot in node_resets", || {
        (resets(site).len() >= boots).then_some(())
    })
    .unwrap();
}

fn common_args() -> Vec<String> {
    ["--lot", LOT, "--hw-rev", "3", "--health-interval", "1"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_export_shows_a_nodes_lot_its_hand_flashed_firmware_and_every_reset() {
    let spec = NodeSpec {
        rate_hz: 5.0,
        sim_args: [common_args(), vec!["--fw".to_owned(), "1.0.0".to_owned()]].concat(),
        ..NodeSpec::new(0)
    };
    let mut site = Site::new(vec![spec]).unwrap();
    site.start_gateway().unwrap();
    wait_for(Duration::from_secs(30), "the first boot", || {
        (!resets(&site).is_empty()).then_some(())
    })
    .unwrap();
    // It crashes (a hard fault), then comes back from the bench with 1.1.0 flashed by hand.
    reboot_node(
        &mut site,
        &["--fw", "1.0.0", "--reset-reason", "hard_fault"],
        2,
    );
    reboot_node(&mut site, &["--fw", "1.1.0"], 3);
    assert_eq!(
        resets(&site),
        [
            ("power_on".to_owned(), "1.0.0".to_owned()),
            ("hard_fault".to_owned(), "1.0.0".to_owned()),
            ("power_on".to_owned(), "1.1.0".to_owned()),
        ]
    );

    let json = export(&site, "json");
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(lines.len(), 1, "one node, one line: {json}");
    let node: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(node["uid"], UID);
    assert_eq!(node["hw_rev"], 3);
    assert_eq!(node["lot"], LOT);
    assert_eq!(node["fw_version"], "1.1.0");
    let firmware = node["firmware"].as_array().unwrap();
    assert_eq!(firmware.len(), 1);
    assert_eq!(firmware[0]["from_version"], "1.0.0");
    assert_eq!(firmware[0]["to_version"], "1.1.0");
    assert_eq!(firmware[0]["outcome"], "booted_outside_rollout");
    let reasons: Vec<(&str, bool)> = node["resets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["reason"].as_str().unwrap(),
                r["expected"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("power_on", true),
            ("hard_fault", false),
            ("power_on", true)
        ]
    );

    // The CSV as a spreadsheet reads it: the lot's comma and quotes survive in one cell.
    let csv = export(&site, "csv");
    let mut rows = csv_rows(&csv);
    let header = rows.remove(0);
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let events: Vec<&str> = rows.iter().map(|r| r[column("event")].as_str()).collect();
    assert_eq!(events, ["node", "reset", "reset", "firmware", "reset"]);
    for row in &rows {
        assert_eq!(row.len(), header.len());
        assert_eq!(row[column("uid")], UID);
        assert_eq!(row[column("lot")], LOT);
        assert_eq!(row[column("hw_rev")], "3");
    }
    let firmware_row = &rows[3];
    assert_eq!(firmware_row[column("outcome")], "booted_outside_rollout");
    assert_eq!(firmware_row[column("to_version")], "1.1.0");
    assert_eq!(rows[2][column("reason")], "hard_fault");
    assert_eq!(rows[2][column("expected")], "false");
}

/// RFC 4180, as a spreadsheet reads it: quoted cells may hold commas, doubled quotes and line
/// breaks. Written here rather than with the gateway's CSV writer, so the test checks the bytes
/// against the standard, not against itself.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\r') => {}
            (false, c) => cell.push(c),
        }
    }
    rows
}
