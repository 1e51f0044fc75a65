//! The device catalogue in `config/devices/`, loaded and planned as the daemon will.

use std::path::{Path, PathBuf};

use super::map::{RegisterMap, Table, parse_map};
use super::plan::{CostModel, ReadPlan};
use super::value::{Raw, Value};

fn catalogue_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/devices")
}

/// A catalogue file, read as the daemon's config adapter reads it.
pub(crate) fn load_map(path: &Path) -> RegisterMap {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_map(path, &text).unwrap_or_else(|e| panic!("{e}"))
}

fn catalogue(file: &str) -> RegisterMap {
    let path = catalogue_dir().join(file);
    load_map(&path)
}

/// (table, start, quantity) of every request.
fn shape(plan: &ReadPlan) -> Vec<(Table, u16, u16)> {
    plan.requests()
        .iter()
        .map(|r| (r.table(), r.start(), r.quantity()))
        .collect()
}

#[test]
fn every_map_in_the_catalogue_compiles_cleanly_and_names_its_document() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(catalogue_dir())
        .expect("config/devices exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for path in files {
        let map = load_map(&path);
        let device = map.device();
        assert!(device.manufacturer.is_some(), "{}", path.display());
        assert!(device.model.is_some(), "{}", path.display());
        assert!(device.documentation.is_some(), "{}", path.display());
        assert!(!map.points().is_empty(), "{}", path.display());
        // Every plan over a catalogue map stays inside the device's own read limit.
        for cost in [CostModel::RTU, CostModel::TCP] {
            let plan = ReadPlan::for_map(&map, &cost);
            assert!(
                plan.requests()
                    .iter()
                    .all(|r| r.quantity() <= map.max_read_registers())
            );
        }
    }
}

#[test]
fn an_sdm230_is_polled_in_four_rtu_requests() {
    // Four clusters: 0..=37 (instantaneous values, 4-register gaps bridged), 70..=87 (frequency,
    // energies, demand), 258..=265 (current demand), 342..=345 (totals). Between them lie gaps of
    // 32, 170 and 76 unused registers, each dearer than the 20-byte request it would save: four
    // requests is the least the cost model allows.
    let map = catalogue("eastron-sdm230.toml");
    let plan = ReadPlan::for_map(&map, &CostModel::RTU);
    assert_eq!(
        shape(&plan),
        [
            (Table::Input, 0, 38),
            (Table::Input, 70, 18),
            (Table::Input, 258, 8),
            (Table::Input, 342, 4),
        ]
    );
}

#[test]
fn an_sdm72d_m_is_split_where_its_sixty_register_limit_costs_least() {
    let map = catalogue("eastron-sdm72d-m.toml");
    assert_eq!(map.max_read_registers(), 60);
    // On TCP the gaps up to 0x48 would all be bridged, but 0..=75 is 76 registers. Cutting after
    // the per-phase block (0..=29, then 52..=75) reads 4 registers fewer than cutting after the
    // total power (0..=53, then 72..=75).
    let plan = ReadPlan::for_map(&map, &CostModel::TCP);
    assert_eq!(
        shape(&plan),
        [
            (Table::Input, 0, 30),
            (Table::Input, 52, 24),
            (Table::Input, 342, 50),
            (Table::Input, 1280, 4),
        ]
    );
}

#[test]
fn an_sdm630_response_decodes_into_volts_and_hertz() {
    let map = catalogue("eastron-sdm630.toml");
    let plan = ReadPlan::for_map(&map, &CostModel::RTU);
    // 30001..=30072 in one read of 72 registers.
    assert_eq!(shape(&plan), [(Table::Input, 0, 72)]);
    let mut response = [0u16; 72];
    response[0..2].copy_from_slice(&[0x4366, 0x8000]); // l1_voltage 230.5 V: 43 66 80 00
    response[70..72].copy_from_slice(&[0x4248, 0x0000]); // frequency 50.0 Hz: 42 48 00 00
    let readings: Vec<(&str, Value)> = plan.requests()[0]
        .readings(map.points(), Raw::Registers(&response))
        .map(|(p, v)| (p.name.as_str(), v.unwrap()))
        .filter(|(name, _)| ["l1_voltage", "frequency"].contains(name))
        .collect();
    assert_eq!(
        readings,
        [
            ("l1_voltage", Value::Float(230.5)),
            ("frequency", Value::Float(50.0))
        ]
    );
}
