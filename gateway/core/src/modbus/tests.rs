//! The device catalogue in `config/devices/`, loaded and planned as the daemon will.

use std::path::{Path, PathBuf};

use super::map::{DataType, RegisterMap, Table, parse_map};
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

/// `(mantissa, exponent)` of a decimal literal as written (`0.01` → `(1, -2)`, `-40` →
/// `(-40, 0)`, `1e3` → `(1, 3)`), by string arithmetic: no `f64` on the way.
fn literal_decimal(text: &str) -> (i128, i32) {
    let (digits, exp) = match text.split_once(['e', 'E']) {
        Some((d, e)) => (d, e.parse::<i32>().unwrap()),
        None => (text, 0),
    };
    let (negative, digits) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, digits.strip_prefix('+').unwrap_or(digits)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let m: i128 = format!("{int}{frac}").replace('_', "").parse().unwrap();
    let e = exp - i32::try_from(frac.len()).unwrap();
    (if negative { -m } else { m }, e)
}

/// `m × 10^e` as plain decimal text without trailing fractional zeros, by string arithmetic.
fn decimal_text(m: i128, e: i32) -> String {
    let digits = m.unsigned_abs().to_string();
    let sign = if m < 0 { "-" } else { "" };
    if m == 0 {
        return "0".into();
    }
    if e >= 0 {
        return format!("{sign}{digits}{}", "0".repeat(e as usize));
    }
    let frac_len = (-e) as usize;
    let padded = format!(
        "{}{digits}",
        "0".repeat(frac_len.saturating_sub(digits.len()))
    );
    let (int, frac) = padded.split_at(padded.len() - frac_len);
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// Each point's `scale` and `offset` exactly as the map file writes them (`None`: not written).
fn written_scales(text: &str) -> Vec<(String, Option<String>, Option<String>)> {
    text.split("[[point]]")
        .skip(1)
        .map(|block| {
            let field = |key: &str| {
                block.lines().find_map(|line| {
                    let line = line.split('#').next().unwrap().trim();
                    let (k, v) = line.split_once('=')?;
                    (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
                })
            };
            (field("name").unwrap(), field("scale"), field("offset"))
        })
        .collect()
}

#[test]
fn every_scale_in_the_catalogue_reads_raw_registers_as_their_exact_decimals() {
    use super::value::{DecimalScaling, Encoded, decimal_scaling, encode_image};
    let mut files: Vec<PathBuf> = std::fs::read_dir(catalogue_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut scales_seen = std::collections::BTreeSet::new();
    let mut checked = 0usize;
    for path in files {
        let map = load_map(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        for (name, scale, offset) in written_scales(&text) {
            let point = map.point(&name).unwrap();
            let integer = !matches!(
                point.data_type,
                DataType::F32 | DataType::F64 | DataType::Bool | DataType::String { .. }
            );
            if !integer || (scale.is_none() && offset.is_none()) {
                continue;
            }
            let (sm, se) = literal_decimal(scale.as_deref().unwrap_or("1"));
            let (om, oe) = literal_decimal(offset.as_deref().unwrap_or("0"));
            scales_seen.insert(scale.clone().unwrap_or("1".into()));
            let where_ = format!("{}: {name}", path.display());
            let scaling: DecimalScaling =
                decimal_scaling(point).unwrap_or_else(|| panic!("{where_}: no decimal form"));
            let (min, max): (i128, i128) = match point.data_type {
                DataType::U16 => (0, u16::MAX.into()),
                DataType::I16 => (i16::MIN.into(), i16::MAX.into()),
                DataType::U32 => (0, u32::MAX.into()),
                DataType::I32 => (i32::MIN.into(), i32::MAX.into()),
                DataType::U64 => (0, u64::MAX.into()),
                DataType::I64 => (i64::MIN.into(), i64::MAX.into()),
                _ => unreachable!(),
            };
            // The extremes, the values around zero and across the range, and a spread of others.
            let mut raws = vec![min, max, min + 1, max - 1, 0, 1, 449, 2301];
            if min < 0 {
                raws.push(-1);
            }
            let span = max - min;
            raws.extend((0..=1000).map(|k| min + span / 1000 * k));
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            for _ in 0..1000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                raws.push(min + i128::from(x) % (span + 1));
            }
            for raw in raws.into_iter().filter(|r| (min..=max).contains(r)) {
                // Expected by string arithmetic on the file's own text.
                let e = se.min(oe);
                let exact =
                    raw * sm * 10i128.pow((se - e) as u32) + om * 10i128.pow((oe - e) as u32);
                let expected = decimal_text(exact, e);
                let words = match point.data_type {
                    DataType::U16 | DataType::I16 => vec![raw as u16],
                    DataType::U32 | DataType::I32 => {
                        let v = raw as u32;
                        vec![(v >> 16) as u16, v as u16]
                    }
                    _ => {
                        let v = raw as u64;
                        vec![
                            (v >> 48) as u16,
                            (v >> 32) as u16,
                            (v >> 16) as u16,
                            v as u16,
                        ]
                    }
                };
                let words: Vec<u16> = if point.word_order == super::map::Order::Little {
                    words.into_iter().rev().collect()
                } else {
                    words
                };
                let value = super::value::decode(point, Raw::Registers(&words)).unwrap();
                match value {
                    Value::Decimal { mantissa, exp } => {
                        assert_eq!(exp, scaling.exp, "{where_}: one exponent per point");
                        let got = outpost_batch::Value::decimal(mantissa, exp).to_string();
                        assert_eq!(got, expected, "{where_}: raw {raw}");
                        assert_eq!(
                            encode_image(point, &value),
                            Ok(Encoded::Registers(words.clone())),
                            "{where_}: raw {raw} writes back"
                        );
                    }
                    Value::Float(f) => {
                        // Only a u64/i64 whose mantissa passes i64: the nearest f64.
                        assert!(
                            i64::try_from(exact / 10i128.pow((scaling.exp as i32 - e) as u32))
                                .is_err(),
                            "{where_}: raw {raw}"
                        );
                        assert_eq!(f, expected.parse::<f64>().unwrap(), "{where_}: raw {raw}");
                    }
                    other => panic!("{where_}: raw {raw} read as {other:?}"),
                }
                checked += 1;
            }
        }
    }
    // The catalogue's scales (ABB B23: 0.1, 0.01, 0.001), so this test cannot pass by checking
    // nothing.
    let seen: Vec<&str> = scales_seen.iter().map(String::as_str).collect();
    assert!(
        ["0.1", "0.01", "0.001"].iter().all(|s| seen.contains(s)),
        "{seen:?}"
    );
    assert!(checked > 10_000, "{checked}");
}
