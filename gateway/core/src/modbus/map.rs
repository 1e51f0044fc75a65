//! Register maps: the points a device exposes, as declared in a map file, in two stages.
//!
//! Stage one deserializes [`RawMap`] (unknown keys rejected). Stage two, [`compile`], checks
//! every point and the relations between points and reports **all** problems at once, each with
//! the key path of the offending field (`point[3].address`) so [`parse_map`] can name the line.
//!
//! A map file:
//!
//! ```toml
//! [device]
//! manufacturer = "Eastron"
//! model = "SDM120-Modbus"
//! documentation = "Eastron SDM120-Modbus protocol, input registers (function 04)"
//!
//! [[point]]
//! name = "voltage"
//! table = "input"        # coil | discrete_input | holding | input
//! address = 0            # 0-based protocol address (30001 in the 3X notation is 0)
//! type = "f32"           # bool u16 i16 u32 i32 u64 i64 f32 f64 string
//! unit = "V"
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::config::ConfigErrors;
use crate::config::Problem;

/// The most registers one read may ask for: Modbus Application Protocol v1.1b §6.3 (0x03 Read
/// Holding Registers) and §6.4 (0x04 Read Input Registers), quantity 1 to 125 (0x7D).
pub const MAX_READ_REGISTERS: u16 = 125;
/// The most registers one write may carry: Modbus Application Protocol v1.1b §6.12 (0x10 Write
/// Multiple Registers), quantity 1 to 123 (0x7B).
pub const MAX_WRITE_REGISTERS: u16 = 123;
/// The most bits one read may ask for: Modbus Application Protocol v1.1b §6.1 (0x01 Read Coils)
/// and §6.2 (0x02 Read Discrete Inputs), quantity 1 to 2000 (0x7D0).
pub const MAX_READ_BITS: u16 = 2000;

/// The shape of a map file. Doc comments are the user's reference.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMap {
    /// What device the map describes and where its registers are documented.
    #[serde(default)]
    pub device: Option<RawDevice>,
    /// One `[[point]]` table per value.
    #[serde(default)]
    pub point: Vec<RawPoint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// The document (title, version, section) the points were written from.
    pub documentation: Option<String>,
    /// Fewer registers per read than the protocol allows, for devices that refuse long reads
    /// (the Eastron SDM72D-M answers an exception beyond 30 parameters, i.e. 60 registers).
    pub max_read_registers: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoint {
    /// Unique in the map; becomes the reading's channel name.
    pub name: String,
    /// `coil`, `discrete_input`, `holding` or `input`.
    pub table: String,
    /// 0-based protocol address of the (first) bit or register.
    pub address: i64,
    /// `bool` (bit tables only), `u16`, `i16`, `u32`, `i32`, `u64`, `i64`, `f32`, `f64` or
    /// `string` (register tables only).
    #[serde(rename = "type")]
    pub data_type: String,
    /// For `string`: its length in registers (two bytes each).
    pub len: Option<i64>,
    /// `big` (default: the register at the lowest address holds the most significant word) or
    /// `little`.
    #[serde(default = "default_order")]
    pub word_order: String,
    /// `big` (default: the first byte on the wire is the most significant) or `little`.
    #[serde(default = "default_order")]
    pub byte_order: String,
    /// Reading = raw × scale + offset.
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    pub unit: Option<String>,
    /// Whether commands may write the point (coils and holding registers only).
    #[serde(default)]
    pub writable: bool,
    /// Whether a change of its value is sent at once (an alarm register): the batch holding it
    /// is sealed right after its commit, within `uplink.priority_min_interval` of the last one
    /// sealed so.
    #[serde(default)]
    pub priority: bool,
}

fn default_order() -> String {
    "big".into()
}
fn default_scale() -> f64 {
    1.0
}

/// The four Modbus data tables (Modbus Application Protocol v1.1b §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Coil,
    DiscreteInput,
    Holding,
    Input,
}

impl Table {
    /// Whether the table holds single bits (coils, discrete inputs) rather than 16-bit registers.
    #[must_use]
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// Whether the protocol can write the table at all (coils and holding registers).
    #[must_use]
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::Holding)
    }

    /// The read function code: 0x01, 0x02, 0x03 or 0x04 (v1.1b §6.1–§6.4).
    #[must_use]
    pub fn read_function(self) -> u8 {
        match self {
            Table::Coil => 0x01,
            Table::DiscreteInput => 0x02,
            Table::Holding => 0x03,
            Table::Input => 0x04,
        }
    }

    fn parse(text: &str) -> Option<Table> {
        Some(match text {
            "coil" => Table::Coil,
            "discrete_input" => Table::DiscreteInput,
            "holding" => Table::Holding,
            "input" => Table::Input,
            _ => return None,
        })
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete_input",
            Table::Holding => "holding",
            Table::Input => "input",
        })
    }
}

/// The type of a point's value on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// `registers` × 2 bytes of text.
    String {
        registers: u16,
    },
}

impl DataType {
    /// Bits (bool) or registers (everything else) the value occupies.
    #[must_use]
    pub fn size(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String { registers } => registers,
        }
    }

    fn parse(text: &str, len: u16) -> Option<DataType> {
        Some(match text {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            "string" => DataType::String { registers: len },
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataType::Bool => f.write_str("bool"),
            DataType::U16 => f.write_str("u16"),
            DataType::I16 => f.write_str("i16"),
            DataType::U32 => f.write_str("u32"),
            DataType::I32 => f.write_str("i32"),
            DataType::U64 => f.write_str("u64"),
            DataType::I64 => f.write_str("i64"),
            DataType::F32 => f.write_str("f32"),
            DataType::F64 => f.write_str("f64"),
            DataType::String { registers } => write!(f, "string[{registers}]"),
        }
    }
}

/// Order of bytes or of 16-bit words: `Big` puts the most significant first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Big,
    Little,
}

impl Order {
    fn parse(text: &str) -> Option<Order> {
        match text {
            "big" => Some(Order::Big),
            "little" => Some(Order::Little),
            _ => None,
        }
    }
}

/// One validated point.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: String,
    pub table: Table,
    pub address: u16,
    pub data_type: DataType,
    /// Order of the registers of a multi-register number (ignored for strings, which are read in
    /// address order).
    pub word_order: Order,
    /// Order of the two bytes within each register.
    pub byte_order: Order,
    /// Finite; reading = raw × scale + offset.
    pub scale: f64,
    /// Finite.
    pub offset: f64,
    pub unit: Option<String>,
    /// Only on coils and holding registers.
    pub writable: bool,
}

impl Point {
    /// Bits or registers the point occupies.
    #[must_use]
    pub fn size(&self) -> u16 {
        self.data_type.size()
    }

    /// The last address the point occupies (never past 65535: checked by [`compile`]).
    #[must_use]
    pub fn last_address(&self) -> u16 {
        self.address + (self.size() - 1)
    }

    /// Whether the raw value is reported as is (no scale, no offset).
    #[must_use]
    pub fn is_unscaled(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }
}

/// What the map says about its device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub documentation: Option<String>,
}

/// A validated register map: no two points overlap in a table, every point fits the address
/// space and one read request, names are unique.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterMap {
    device: DeviceInfo,
    max_read_registers: u16,
    points: Vec<Point>,
    /// Whether each point (by index) is `priority`.
    priority: Vec<bool>,
}

impl RegisterMap {
    #[must_use]
    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    /// In declaration order; a [`crate::modbus::plan::ReadPlan`] refers to points by index here.
    #[must_use]
    pub fn points(&self) -> &[Point] {
        &self.points
    }

    /// The device's limit on registers per read (at most [`MAX_READ_REGISTERS`]).
    #[must_use]
    pub fn max_read_registers(&self) -> u16 {
        self.max_read_registers
    }

    /// The point called `name`.
    #[must_use]
    pub fn point(&self, name: &str) -> Option<&Point> {
        self.points.iter().find(|p| p.name == name)
    }

    /// Whether point `index` is marked `priority`: a change of its value is sent at once.
    #[must_use]
    pub fn is_priority(&self, index: usize) -> bool {
        self.priority.get(index).copied().unwrap_or(false)
    }

    /// The map with the points called `names` marked `priority` too (a device's own list, for a
    /// catalogue map); `Err` names each one that is not a point of the map, or is a string.
    pub fn with_priority(&self, names: &[String]) -> Result<RegisterMap, Vec<String>> {
        let mut map = self.clone();
        let mut problems = Vec::new();
        for name in names {
            match self.points.iter().position(|p| &p.name == name) {
                Some(i) if matches!(self.points[i].data_type, DataType::String { .. }) => {
                    problems.push(format!(
                        "`{name}` is a string: shown on the status page, never batched"
                    ));
                }
                Some(i) => map.priority[i] = true,
                None => problems.push(format!("the map has no point `{name}`")),
            }
        }
        if problems.is_empty() {
            Ok(map)
        } else {
            Err(problems)
        }
    }
}

/// Stage two: checks every point and every pair of points, collecting all problems.
pub fn compile(raw: RawMap) -> Result<RegisterMap, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut problem = |key: String, message: String| problems.push(Problem { key, message });

    let raw_device = raw.device.unwrap_or_default();
    let max_read_registers = match raw_device.max_read_registers {
        None => MAX_READ_REGISTERS,
        Some(n) if (4..=u32::from(MAX_READ_REGISTERS)).contains(&n) => {
            u16::try_from(n).unwrap_or(MAX_READ_REGISTERS)
        }
        Some(n) => {
            problem(
                "device.max_read_registers".into(),
                format!("{n} is outside 4..={MAX_READ_REGISTERS} (Modbus v1.1b §6.3/§6.4)"),
            );
            MAX_READ_REGISTERS
        }
    };

    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut points = Vec::new();
    // (index, table, first, last) of every point that got far enough to have a place.
    let mut placed: Vec<(usize, Table, u32, u32)> = Vec::new();
    for (i, p) in raw.point.iter().enumerate() {
        let key = |field: &str| format!("point[{i}].{field}");
        let name = &p.name;
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
            // Names become reading channels in the store and uplink topics: a safe alphabet.
            problem(
                key("name"),
                format!("`{name}` must be 1 to 64 letters, digits, '_', '-' or '.'"),
            );
        } else if let Some(first) = names.insert(name, i) {
            problem(
                key("name"),
                format!("`{name}` is already the name of point[{first}]"),
            );
            names.insert(name, first);
        }
        let table = Table::parse(&p.table);
        if table.is_none() {
            problem(
                key("table"),
                format!(
                    "point `{name}`: `{}` is not coil, discrete_input, holding or input",
                    p.table
                ),
            );
        }
        let len = match (p.data_type.as_str(), p.len) {
            ("string", None) => {
                problem(
                    key("type"),
                    format!("point `{name}`: a string needs `len`, its length in registers"),
                );
                1
            }
            ("string", Some(len)) if (1..=i64::from(max_read_registers)).contains(&len) => {
                u16::try_from(len).unwrap_or(1)
            }
            ("string", Some(len)) => {
                problem(
                    key("len"),
                    format!(
                        "point `{name}`: string length {len} is outside 1..={max_read_registers} registers (one read)"
                    ),
                );
                1
            }
            (_, Some(_)) => {
                problem(
                    key("len"),
                    format!("point `{name}`: `len` is only for strings"),
                );
                1
            }
            (_, None) => 1,
        };
        let data_type = DataType::parse(&p.data_type, len);
        if data_type.is_none() {
            problem(
                key("type"),
                format!(
                    "point `{name}`: `{}` is not bool, u16, i16, u32, i32, u64, i64, f32, f64 or string",
                    p.data_type
                ),
            );
        }
        let word_order = Order::parse(&p.word_order);
        if word_order.is_none() {
            problem(
                key("word_order"),
                format!(
                    "point `{name}`: `{}` is neither big nor little",
                    p.word_order
                ),
            );
        }
        let byte_order = Order::parse(&p.byte_order);
        if byte_order.is_none() {
            problem(
                key("byte_order"),
                format!(
                    "point `{name}`: `{}` is neither big nor little",
                    p.byte_order
                ),
            );
        }
        if !p.scale.is_finite() || p.scale == 0.0 {
            problem(
                key("scale"),
                format!("point `{name}`: scale must be finite and not zero"),
            );
        }
        if !p.offset.is_finite() {
            problem(
                key("offset"),
                format!("point `{name}`: offset must be finite"),
            );
        }
        if let (Some(table), Some(data_type)) = (table, data_type) {
            if table.is_bits() && data_type != DataType::Bool {
                problem(
                    key("type"),
                    format!("point `{name}`: a {table} holds one bit; its type must be bool"),
                );
            } else if !table.is_bits() && data_type == DataType::Bool {
                problem(
                    key("type"),
                    format!(
                        "point `{name}`: a {table} register is 16 bits; bool is for coils and discrete inputs"
                    ),
                );
            } else if data_type == DataType::Bool && (p.scale != 1.0 || p.offset != 0.0) {
                problem(
                    key("scale"),
                    format!("point `{name}`: a bool takes no scale or offset"),
                );
            }
            if p.writable && !table.is_writable() {
                problem(
                    key("writable"),
                    format!("point `{name}`: a {table} is read-only in Modbus"),
                );
            } else if p.writable && data_type.size() > MAX_WRITE_REGISTERS {
                problem(
                    key("writable"),
                    format!(
                        "point `{name}`: one write holds at most {MAX_WRITE_REGISTERS} registers (Modbus v1.1b §6.12)"
                    ),
                );
            }
        }
        let address = match u16::try_from(p.address) {
            Ok(a) => Some(a),
            Err(_) => {
                problem(
                    key("address"),
                    format!("point `{name}`: address {} is outside 0..=65535", p.address),
                );
                None
            }
        };
        if let (Some(table), Some(data_type), Some(address)) = (table, data_type, address) {
            let last = u32::from(address) + u32::from(data_type.size()) - 1;
            if last > u32::from(u16::MAX) {
                problem(
                    key("address"),
                    format!("point `{name}`: {data_type} at {address} ends at {last}, past 65535"),
                );
            } else {
                placed.push((i, table, u32::from(address), last));
            }
            if let (Some(word_order), Some(byte_order)) = (word_order, byte_order) {
                points.push(Point {
                    name: name.clone(),
                    table,
                    address,
                    data_type,
                    word_order,
                    byte_order,
                    scale: p.scale,
                    offset: p.offset,
                    unit: p.unit.clone(),
                    writable: p.writable,
                });
            }
        }
    }

    // Overlaps: sort each table's places by start; a point overlapping any earlier-starting
    // point overlaps the one reaching furthest.
    placed.sort_by_key(|&(i, table, first, _)| (table, first, i));
    let mut reach: Option<(usize, Table, u32)> = None;
    let mut overlaps = Vec::new();
    for &(i, table, first, last) in &placed {
        match reach {
            Some((j, t, end)) if t == table && first <= end => {
                overlaps.push((i, j, table));
                if last > end {
                    reach = Some((i, table, last));
                }
            }
            _ => reach = Some((i, table, last)),
        }
    }
    overlaps.sort_unstable();
    for (i, j, table) in overlaps {
        let (later, earlier) = (i.max(j), i.min(j));
        let (a, b) = (&raw.point[later], &raw.point[earlier]);
        problem(
            format!("point[{later}].address"),
            format!(
                "point `{}` overlaps point `{}` (point[{earlier}]) in the {table} table",
                a.name, b.name
            ),
        );
    }

    for (i, p) in raw.point.iter().enumerate() {
        if p.priority && p.data_type == "string" {
            problem(
                format!("point[{i}].priority"),
                format!(
                    "point `{}`: a string is shown on the status page, never batched; it cannot be priority",
                    p.name
                ),
            );
        }
    }

    if problems.is_empty() {
        Ok(RegisterMap {
            device: DeviceInfo {
                manufacturer: raw_device.manufacturer,
                model: raw_device.model,
                documentation: raw_device.documentation,
            },
            max_read_registers,
            priority: raw.point.iter().map(|p| p.priority).collect(),
            points,
        })
    } else {
        Err(problems)
    }
}

/// Parses and compiles map text; `path` only names it in errors.
pub fn parse_map(path: &Path, text: &str) -> Result<RegisterMap, ConfigErrors> {
    crate::config::parse_two_stage(path, text, compile)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RegisterMap, ConfigErrors> {
        parse_map(Path::new("config/devices/test.toml"), text)
    }

    fn problems(text: &str) -> Vec<(String, Option<usize>, String)> {
        parse(text)
            .expect_err("map should be rejected")
            .0
            .into_iter()
            .map(|e| (e.key, e.line, e.message))
            .collect()
    }

    #[test]
    fn a_well_formed_map_compiles_with_defaults_applied() {
        let map = parse(
            "[device]\nmanufacturer = \"Acme\"\n\n[[point]]\nname = \"v\"\ntable = \"input\"\naddress = 0\ntype = \"f32\"\nunit = \"V\"\n\n[[point]]\nname = \"relay\"\ntable = \"coil\"\naddress = 3\ntype = \"bool\"\nwritable = true\n",
        )
        .unwrap();
        assert_eq!(map.device().manufacturer.as_deref(), Some("Acme"));
        assert_eq!(map.max_read_registers(), MAX_READ_REGISTERS);
        let v = map.point("v").unwrap();
        assert_eq!(
            (v.table, v.address, v.data_type, v.word_order, v.byte_order),
            (Table::Input, 0, DataType::F32, Order::Big, Order::Big)
        );
        assert!(v.is_unscaled());
        assert!(map.point("relay").unwrap().writable);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let errors = problems(
            "[[point]]\nname = \"v\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\nsigned = true\n",
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].1, Some(6), "{errors:?}");
        assert!(errors[0].2.contains("signed"), "{errors:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_point_name_key_and_line() {
        let text = "\
[[point]]
name = \"a\"
table = \"holding\"
address = 10
type = \"u32\"

[[point]]
name = \"b\"
table = \"holding\"
address = 11
type = \"u16\"

[[point]]
name = \"a\"
table = \"input\"
address = 65535
type = \"f32\"
writable = true

[[point]]
name = \"flag\"
table = \"holding\"
address = 0
type = \"bool\"

[[point]]
name = \"temp\"
table = \"coil\"
address = 0
type = \"i16\"

[[point]]
name = \"label\"
table = \"holding\"
address = 100
type = \"string\"
len = 0

[[point]]
name = \"gain\"
table = \"holding\"
address = 200
type = \"u16\"
scale = inf
";
        let found: Vec<(String, Option<usize>)> = problems(text)
            .into_iter()
            .map(|(key, line, _)| (key, line))
            .collect();
        assert_eq!(
            found,
            vec![
                ("point[2].name".into(), Some(14)),
                ("point[2].writable".into(), Some(18)),
                ("point[2].address".into(), Some(16)),
                ("point[3].type".into(), Some(24)),
                ("point[4].type".into(), Some(30)),
                ("point[5].len".into(), Some(37)),
                ("point[6].scale".into(), Some(44)),
                ("point[1].address".into(), Some(10)),
            ]
        );
    }

    #[test]
    fn an_overlap_names_both_points() {
        let errors = problems(
            "[[point]]\nname = \"energy\"\ntable = \"input\"\naddress = 0\ntype = \"f64\"\n\n[[point]]\nname = \"power\"\ntable = \"input\"\naddress = 3\ntype = \"f32\"\n",
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "point[1].address");
        assert!(
            errors[0].2.contains("`power` overlaps point `energy`"),
            "{errors:?}"
        );
    }

    #[test]
    fn the_same_address_in_different_tables_is_not_an_overlap() {
        let map = parse(
            "[[point]]\nname = \"a\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\n[[point]]\nname = \"b\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n",
        );
        assert!(map.is_ok(), "{map:?}");
    }

    #[test]
    fn a_point_inside_a_long_earlier_point_is_an_overlap_even_past_a_short_one() {
        // `long` spans 0..=9; `short` 2..=2 and `inner` 5..=5 both sit inside it.
        let errors = problems(
            "[[point]]\nname = \"long\"\ntable = \"holding\"\naddress = 0\ntype = \"string\"\nlen = 10\n[[point]]\nname = \"short\"\ntable = \"holding\"\naddress = 2\ntype = \"u16\"\n[[point]]\nname = \"inner\"\ntable = \"holding\"\naddress = 5\ntype = \"u16\"\n",
        );
        let keys: Vec<&str> = errors.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(keys, ["point[1].address", "point[2].address"]);
    }

    #[test]
    fn a_writable_string_too_long_for_one_write_is_refused() {
        let errors = problems(
            "[[point]]\nname = \"label\"\ntable = \"holding\"\naddress = 0\ntype = \"string\"\nlen = 124\nwritable = true\n",
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (errors[0].0.as_str(), errors[0].1),
            ("point[0].writable", Some(7))
        );
    }

    #[test]
    fn a_name_unfit_for_a_channel_is_refused() {
        let errors = problems(
            "[[point]]\nname = \"phase 1/volts\"\ntable = \"input\"\naddress = 0\ntype = \"f32\"\n",
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (errors[0].0.as_str(), errors[0].1),
            ("point[0].name", Some(2))
        );
    }

    #[test]
    fn an_address_beyond_the_address_space_is_refused() {
        let errors = problems(
            "[[point]]\nname = \"x\"\ntable = \"holding\"\naddress = 70000\ntype = \"u16\"\n",
        );
        assert_eq!(errors[0].0, "point[0].address");
        assert!(errors[0].2.contains("outside 0..=65535"));
    }

    #[test]
    fn a_string_longer_than_the_device_reads_is_refused() {
        let errors = problems(
            "[device]\nmax_read_registers = 60\n[[point]]\nname = \"serial\"\ntable = \"holding\"\naddress = 0\ntype = \"string\"\nlen = 61\n",
        );
        assert_eq!(errors[0].0, "point[0].len");
        assert_eq!(errors[0].1, Some(8));
    }
}
