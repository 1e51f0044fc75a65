//! A point's bits or registers to a typed value and back.
//!
//! Registers arrive as `u16`s in address order, each as the protocol carries it: first byte on
//! the wire in the high half (tokio-modbus hands them over this way). Two settings of the point
//! undo the device's layout:
//!
//! | word_order | byte_order | wire bytes of 0xAABBCCDD | name |
//! | ---------- | ---------- | ------------------------ | ---- |
//! | big        | big        | AA BB CC DD              | ABCD |
//! | little     | big        | CC DD AA BB              | CDAB |
//! | big        | little     | BB AA DD CC              | BADC |
//! | little     | little     | DD CC BB AA              | DCBA |
//!
//! and likewise for 64-bit values over four registers. Strings take the byte order (some devices
//! swap the two characters of a register) but not the word order: their registers are text in
//! address order.
//!
//! Scaling: the reading is `raw × scale + offset` as `f64`, except for an unscaled point (scale
//! 1, offset 0), whose integers stay exact as [`Value::Int`] or [`Value::Uint`]. A u64 energy
//! counter in Wh passes 2^53 (where `f64` stops counting in ones) long before it wraps, and a
//! reading that silently loses its last digits is worse than one that needs a wider type.

use crate::modbus::map::{DataType, Order, Point};

/// A decoded reading, or a value requested for a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    /// An unscaled i16/i32/i64.
    Int(i64),
    /// An unscaled u16/u32/u64.
    Uint(u64),
    /// A float point, or any scaled one.
    Float(f64),
    Text(String),
}

/// What a read returned for one point: exactly its bits or its registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raw<'a> {
    Bits(&'a [bool]),
    Registers(&'a [u16]),
}

/// Why a response could not be decoded for a point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("point `{point}` needs {expected} {unit}, got {got}")]
    WrongLength {
        point: String,
        expected: u16,
        got: usize,
        unit: &'static str,
    },
}

/// Why a requested value cannot be written to a point.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("point `{point}` is not writable")]
    NotWritable { point: String },
    #[error("point `{point}` is a {expected}; {got:?} is not")]
    WrongType {
        point: String,
        expected: DataType,
        got: Value,
    },
    #[error("point `{point}`: {value} is outside {min}..={max} for a {data_type}")]
    OutOfRange {
        point: String,
        data_type: DataType,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("point `{point}`: {value} is not a multiple of its scale; nearest is {nearest}")]
    NotRepresentable {
        point: String,
        value: f64,
        nearest: f64,
    },
    #[error("point `{point}`: {len} bytes of text do not fit its {capacity} bytes")]
    TextTooLong {
        point: String,
        len: usize,
        capacity: usize,
    },
}

/// What a write sends: one coil, or the registers from the point's address on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    Bit(bool),
    Registers(Vec<u16>),
}

impl Encoded {
    /// The usual function code: 0x05 Write Single Coil (v1.1b §6.5), 0x06 Write Single Register
    /// (§6.6) for one register, 0x10 Write Multiple Registers (§6.12) for more. Some devices take
    /// only 0x10, even for one register; the adapter may use it for any register write.
    #[must_use]
    pub fn function(&self) -> u8 {
        match self {
            Encoded::Bit(_) => 0x05,
            Encoded::Registers(words) if words.len() == 1 => 0x06,
            Encoded::Registers(_) => 0x10,
        }
    }
}

/// Decodes a point's bits or registers into its reading (scaled, see the module docs).
pub fn decode(point: &Point, raw: Raw<'_>) -> Result<Value, DecodeError> {
    let size = point.size();
    match raw {
        Raw::Bits(bits) => {
            if bits.len() != usize::from(size) || point.data_type != DataType::Bool {
                return Err(wrong_length(point, bits.len()));
            }
            Ok(Value::Bool(bits[0]))
        }
        Raw::Registers(words) => {
            if words.len() != usize::from(size) || point.data_type == DataType::Bool {
                return Err(wrong_length(point, words.len()));
            }
            if let DataType::String { .. } = point.data_type {
                return Ok(Value::Text(text(point.byte_order, words)));
            }
            let bytes = number_bytes(point, words);
            let unscaled = point.is_unscaled();
            let value = match point.data_type {
                DataType::U16 => integer(u64::from(u16::from_be_bytes(take(&bytes))), unscaled),
                DataType::U32 => integer(u64::from(u32::from_be_bytes(take(&bytes))), unscaled),
                DataType::U64 => integer(u64::from_be_bytes(take(&bytes)), unscaled),
                DataType::I16 => signed(i64::from(i16::from_be_bytes(take(&bytes))), unscaled),
                DataType::I32 => signed(i64::from(i32::from_be_bytes(take(&bytes))), unscaled),
                DataType::I64 => signed(i64::from_be_bytes(take(&bytes)), unscaled),
                DataType::F32 => Value::Float(f64::from(f32::from_be_bytes(take(&bytes)))),
                DataType::F64 => Value::Float(f64::from_be_bytes(take(&bytes))),
                DataType::Bool | DataType::String { .. } => unreachable!("handled above"),
            };
            Ok(match value {
                Value::Float(raw) if !unscaled => Value::Float(raw * point.scale + point.offset),
                Value::Float(raw) => Value::Float(raw),
                other => other,
            })
        }
    }
}

fn wrong_length(point: &Point, got: usize) -> DecodeError {
    DecodeError::WrongLength {
        point: point.name.clone(),
        expected: point.size(),
        got,
        unit: if point.data_type == DataType::Bool {
            "bit"
        } else {
            "registers"
        },
    }
}

/// Unscaled integers stay exact; scaled ones go through `f64` (the caller applies the scale).
fn integer(raw: u64, unscaled: bool) -> Value {
    if unscaled {
        Value::Uint(raw)
    } else {
        #[allow(clippy::cast_precision_loss)] // scaled readings are f64 by definition
        Value::Float(raw as f64)
    }
}

fn signed(raw: i64, unscaled: bool) -> Value {
    if unscaled {
        Value::Int(raw)
    } else {
        #[allow(clippy::cast_precision_loss)] // scaled readings are f64 by definition
        Value::Float(raw as f64)
    }
}

fn take<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes[..N]
        .try_into()
        .expect("the point's size matches its type")
}

/// The value's bytes, most significant first, from registers in the point's orders.
fn number_bytes(point: &Point, words: &[u16]) -> Vec<u8> {
    let mut words: Vec<u16> = words
        .iter()
        .map(|&w| match point.byte_order {
            Order::Big => w,
            Order::Little => w.swap_bytes(),
        })
        .collect();
    if point.word_order == Order::Little {
        words.reverse();
    }
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// The inverse of [`number_bytes`].
fn number_words(point: &Point, bytes: &[u8]) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    if point.word_order == Order::Little {
        words.reverse();
    }
    for w in &mut words {
        if point.byte_order == Order::Little {
            *w = w.swap_bytes();
        }
    }
    words
}

/// Text in address order, NULs trimmed from both ends; invalid UTF-8 replaced (a label with a
/// bad byte is still more use than an error).
fn text(byte_order: Order, words: &[u16]) -> String {
    let bytes: Vec<u8> = words
        .iter()
        .flat_map(|&w| match byte_order {
            Order::Big => w.to_be_bytes(),
            Order::Little => w.to_le_bytes(),
        })
        .collect();
    String::from_utf8_lossy(&bytes)
        .trim_matches('\0')
        .to_owned()
}

/// The bit or registers that write `value` to `point`: refuses a point not declared writable, a
/// value of the wrong kind, out of the type's range, or (scaled points) one the registers cannot
/// hold exactly.
pub fn encode(point: &Point, value: &Value) -> Result<Encoded, EncodeError> {
    if !point.writable {
        return Err(EncodeError::NotWritable {
            point: point.name.clone(),
        });
    }
    encode_image(point, value)
}

/// What the device's registers (or bit) hold when `point` reads `value`, writable or not: for a
/// simulated device serving a map, and for tests. Same type and range checks as [`encode`].
pub fn encode_image(point: &Point, value: &Value) -> Result<Encoded, EncodeError> {
    let name = || point.name.clone();
    let wrong_type = || EncodeError::WrongType {
        point: name(),
        expected: point.data_type,
        got: value.clone(),
    };
    match (point.data_type, value) {
        (DataType::Bool, Value::Bool(b)) => Ok(Encoded::Bit(*b)),
        (DataType::Bool, _) | (_, Value::Bool(_)) => Err(wrong_type()),
        (DataType::String { registers }, Value::Text(text)) => {
            let capacity = usize::from(registers) * 2;
            if text.len() > capacity {
                return Err(EncodeError::TextTooLong {
                    point: name(),
                    len: text.len(),
                    capacity,
                });
            }
            let mut bytes = text.as_bytes().to_vec();
            bytes.resize(capacity, 0);
            let words = bytes
                .chunks_exact(2)
                .map(|pair| match point.byte_order {
                    Order::Big => u16::from_be_bytes([pair[0], pair[1]]),
                    Order::Little => u16::from_le_bytes([pair[0], pair[1]]),
                })
                .collect();
            Ok(Encoded::Registers(words))
        }
        (DataType::String { .. }, _) | (_, Value::Text(_)) => Err(wrong_type()),
        (data_type, value) => {
            let bytes = number_to_bytes(point, data_type, value)?;
            Ok(Encoded::Registers(number_words(point, &bytes)))
        }
    }
}

/// The raw number for a requested numeric value, as big-endian bytes of the point's type.
fn number_to_bytes(
    point: &Point,
    data_type: DataType,
    value: &Value,
) -> Result<Vec<u8>, EncodeError> {
    let out_of_range = |value: f64, min: f64, max: f64| EncodeError::OutOfRange {
        point: point.name.clone(),
        data_type,
        value,
        min,
        max,
    };
    // Exact integer paths first: an unscaled integer point takes an integer request as is.
    if point.is_unscaled() {
        let as_i128 = match value {
            Value::Int(i) => Some(i128::from(*i)),
            Value::Uint(u) => Some(i128::from(*u)),
            #[allow(clippy::cast_possible_truncation)] // checked to be integral and in range below
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 2f64.powi(64) => Some(*f as i128),
            _ => None,
        };
        if let Some(raw) = as_i128 {
            if let Some(bytes) = integer_bytes(data_type, raw) {
                return Ok(bytes);
            }
        }
    }
    #[allow(clippy::cast_precision_loss)] // requests beyond 2^53 only reach here when scaled
    let requested = match value {
        Value::Int(i) => *i as f64,
        Value::Uint(u) => *u as f64,
        Value::Float(f) => *f,
        Value::Bool(_) | Value::Text(_) => unreachable!("checked by encode"),
    };
    let raw = (requested - point.offset) / point.scale;
    match data_type {
        DataType::F32 => {
            if !raw.is_finite() || raw.abs() > f64::from(f32::MAX) {
                let (lo, hi) = scaled_range(point, -f64::from(f32::MAX), f64::from(f32::MAX));
                return Err(out_of_range(requested, lo, hi));
            }
            #[allow(clippy::cast_possible_truncation)] // f32 is the point's type
            Ok((raw as f32).to_be_bytes().to_vec())
        }
        DataType::F64 => {
            if !raw.is_finite() {
                return Err(out_of_range(requested, f64::MIN, f64::MAX));
            }
            Ok(raw.to_be_bytes().to_vec())
        }
        _ => {
            let (min, max) = integer_range(data_type);
            let rounded = raw.round();
            if !rounded.is_finite() || rounded < min || rounded > max {
                let (lo, hi) = scaled_range(point, min, max);
                return Err(out_of_range(requested, lo, hi));
            }
            let nearest = rounded * point.scale + point.offset;
            // Round-trip: the registers must read back as the value asked for (to within f64
            // rounding of the scale arithmetic, not to within a scale step).
            if (nearest - requested).abs() > 1e-9 * requested.abs().max(1.0) {
                return Err(EncodeError::NotRepresentable {
                    point: point.name.clone(),
                    value: requested,
                    nearest,
                });
            }
            #[allow(clippy::cast_possible_truncation)] // rounded is integral and in range
            integer_bytes(data_type, rounded as i128)
                .ok_or_else(|| out_of_range(requested, min, max))
        }
    }
}

/// The requested range of a scaled point: the raw limits through `raw × scale + offset`.
fn scaled_range(point: &Point, min: f64, max: f64) -> (f64, f64) {
    let (a, b) = (
        min * point.scale + point.offset,
        max * point.scale + point.offset,
    );
    (a.min(b), a.max(b))
}

#[allow(clippy::cast_precision_loss)] // the range is reported, not computed with
fn integer_range(data_type: DataType) -> (f64, f64) {
    match data_type {
        DataType::U16 => (0.0, f64::from(u16::MAX)),
        DataType::I16 => (f64::from(i16::MIN), f64::from(i16::MAX)),
        DataType::U32 => (0.0, f64::from(u32::MAX)),
        DataType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
        DataType::U64 => (0.0, u64::MAX as f64),
        DataType::I64 => (i64::MIN as f64, i64::MAX as f64),
        _ => (f64::MIN, f64::MAX),
    }
}

/// Big-endian bytes of `raw` as an integer `data_type`, or `None` when it does not fit.
fn integer_bytes(data_type: DataType, raw: i128) -> Option<Vec<u8>> {
    Some(match data_type {
        DataType::U16 => u16::try_from(raw).ok()?.to_be_bytes().to_vec(),
        DataType::I16 => i16::try_from(raw).ok()?.to_be_bytes().to_vec(),
        DataType::U32 => u32::try_from(raw).ok()?.to_be_bytes().to_vec(),
        DataType::I32 => i32::try_from(raw).ok()?.to_be_bytes().to_vec(),
        DataType::U64 => u64::try_from(raw).ok()?.to_be_bytes().to_vec(),
        DataType::I64 => i64::try_from(raw).ok()?.to_be_bytes().to_vec(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::map::Table;

    fn point(data_type: DataType, word_order: Order, byte_order: Order) -> Point {
        Point {
            name: "p".into(),
            table: Table::Holding,
            address: 0,
            data_type,
            word_order,
            byte_order,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            writable: true,
        }
    }

    fn read(p: &Point, words: &[u16]) -> Value {
        decode(p, Raw::Registers(words)).unwrap()
    }

    use Order::{Big, Little};

    #[test]
    fn a_u32_decodes_exactly_in_all_four_orders() {
        // The value 0x1122_3344 = 287454020 as four devices lay it out.
        let abcd = [0x1122, 0x3344]; // wire: 11 22 33 44
        let cdab = [0x3344, 0x1122]; // wire: 33 44 11 22 (low word first)
        let badc = [0x2211, 0x4433]; // wire: 22 11 44 33 (bytes swapped in each register)
        let dcba = [0x4433, 0x2211]; // wire: 44 33 22 11 (fully little-endian)
        let expected = Value::Uint(0x1122_3344);
        assert_eq!(read(&point(DataType::U32, Big, Big), &abcd), expected);
        assert_eq!(read(&point(DataType::U32, Little, Big), &cdab), expected);
        assert_eq!(read(&point(DataType::U32, Big, Little), &badc), expected);
        assert_eq!(read(&point(DataType::U32, Little, Little), &dcba), expected);
    }

    #[test]
    fn an_f32_in_eastron_layout_reads_as_its_ieee_value() {
        // 230.5 V as an Eastron meter sends it: IEEE 754 0x4366_8000, high word first.
        let words = [0x4366, 0x8000]; // wire: 43 66 80 00
        assert_eq!(
            read(&point(DataType::F32, Big, Big), &words),
            Value::Float(230.5)
        );
        // The same value from a device with the low word first (CDAB).
        assert_eq!(
            read(&point(DataType::F32, Little, Big), &[0x8000, 0x4366]),
            Value::Float(230.5)
        );
    }

    #[test]
    fn a_64_bit_value_decodes_in_all_four_orders() {
        // 0x0102_0304_0506_0708 over four registers.
        let expected = Value::Int(0x0102_0304_0506_0708);
        let p = |w, b| point(DataType::I64, w, b);
        // wire: 01 02 03 04 05 06 07 08
        assert_eq!(
            read(&p(Big, Big), &[0x0102, 0x0304, 0x0506, 0x0708]),
            expected
        );
        // wire: 07 08 05 06 03 04 01 02
        assert_eq!(
            read(&p(Little, Big), &[0x0708, 0x0506, 0x0304, 0x0102]),
            expected
        );
        // wire: 02 01 04 03 06 05 08 07
        assert_eq!(
            read(&p(Big, Little), &[0x0201, 0x0403, 0x0605, 0x0807]),
            expected
        );
        // wire: 08 07 06 05 04 03 02 01
        assert_eq!(
            read(&p(Little, Little), &[0x0807, 0x0605, 0x0403, 0x0201]),
            expected
        );
        // An f64: 1.5 is 0x3FF8_0000_0000_0000.
        assert_eq!(
            read(&point(DataType::F64, Big, Big), &[0x3FF8, 0, 0, 0]),
            Value::Float(1.5)
        );
    }

    #[test]
    fn signed_registers_keep_their_sign() {
        // -2 as i16 is 0xFFFE; as i32 0xFFFF_FFFE.
        assert_eq!(
            read(&point(DataType::I16, Big, Big), &[0xFFFE]),
            Value::Int(-2)
        );
        assert_eq!(
            read(&point(DataType::I16, Big, Little), &[0xFEFF]),
            Value::Int(-2)
        );
        assert_eq!(
            read(&point(DataType::I32, Big, Big), &[0xFFFF, 0xFFFE]),
            Value::Int(-2)
        );
        assert_eq!(
            read(&point(DataType::U16, Big, Big), &[0xFFFE]),
            Value::Uint(65534)
        );
    }

    #[test]
    fn a_u64_counter_past_two_to_the_53_stays_exact_when_unscaled() {
        // 2^53 + 1 = 0x0020_0000_0000_0001: not representable as f64.
        let words = [0x0020, 0x0000, 0x0000, 0x0001];
        assert_eq!(
            read(&point(DataType::U64, Big, Big), &words),
            Value::Uint((1 << 53) + 1)
        );
    }

    #[test]
    fn scale_and_offset_turn_a_register_into_engineering_units() {
        // A temperature in tenths of a degree with a -40 °C offset: raw 0x0259 = 601.
        let mut p = point(DataType::U16, Big, Big);
        p.scale = 0.1;
        p.offset = -40.0;
        let Value::Float(t) = read(&p, &[0x0259]) else {
            panic!("a scaled point reads as a float")
        };
        assert!((t - 20.1).abs() < 1e-9, "{t}");
    }

    #[test]
    fn a_string_is_read_in_address_order_with_nuls_trimmed() {
        // "SDM120" + NUL padding over four registers: wire 53 44 4D 31 32 30 00 00.
        let p = point(DataType::String { registers: 4 }, Big, Big);
        assert_eq!(
            read(&p, &[0x5344, 0x4D31, 0x3230, 0x0000]),
            Value::Text("SDM120".into())
        );
        // A device that swaps the characters in each register: wire 44 53 31 4D 30 32 00 00.
        let swapped = point(DataType::String { registers: 4 }, Little, Little);
        assert_eq!(
            read(&swapped, &[0x4453, 0x314D, 0x3032, 0x0000]),
            Value::Text("SDM120".into())
        );
    }

    #[test]
    fn a_response_of_the_wrong_length_is_an_error_not_a_panic() {
        let p = point(DataType::U32, Big, Big);
        assert_eq!(
            decode(&p, Raw::Registers(&[1])),
            Err(DecodeError::WrongLength {
                point: "p".into(),
                expected: 2,
                got: 1,
                unit: "registers"
            })
        );
        assert!(decode(&p, Raw::Bits(&[true, false])).is_err());
    }

    #[test]
    fn a_coil_decodes_and_encodes_as_a_bool() {
        let mut p = point(DataType::Bool, Big, Big);
        p.table = Table::Coil;
        assert_eq!(decode(&p, Raw::Bits(&[true])), Ok(Value::Bool(true)));
        assert_eq!(encode(&p, &Value::Bool(false)), Ok(Encoded::Bit(false)));
        assert_eq!(Encoded::Bit(false).function(), 0x05);
        assert!(matches!(
            encode(&p, &Value::Uint(1)),
            Err(EncodeError::WrongType { .. })
        ));
    }

    #[test]
    fn a_u16_point_refuses_seventy_thousand() {
        let p = point(DataType::U16, Big, Big);
        assert!(matches!(
            encode(&p, &Value::Uint(70_000)),
            Err(EncodeError::OutOfRange { max, .. }) if max == 65535.0
        ));
        assert!(matches!(
            encode(&p, &Value::Int(-1)),
            Err(EncodeError::OutOfRange { .. })
        ));
        let write = encode(&p, &Value::Uint(65535)).unwrap();
        assert_eq!(write, Encoded::Registers(vec![0xFFFF]));
        assert_eq!(write.function(), 0x06);
    }

    #[test]
    fn a_point_not_declared_writable_refuses_every_write() {
        let mut p = point(DataType::U16, Big, Big);
        p.writable = false;
        assert_eq!(
            encode(&p, &Value::Uint(1)),
            Err(EncodeError::NotWritable { point: "p".into() })
        );
    }

    #[test]
    fn a_scaled_point_refuses_a_value_between_its_steps() {
        // A setpoint in tenths: 21.5 is raw 215; 21.55 has no raw value.
        let mut p = point(DataType::I16, Big, Big);
        p.scale = 0.1;
        assert_eq!(
            encode(&p, &Value::Float(21.5)),
            Ok(Encoded::Registers(vec![215]))
        );
        assert!(matches!(
            encode(&p, &Value::Float(21.55)),
            Err(EncodeError::NotRepresentable { .. })
        ));
        // The range is reported in engineering units: i16 × 0.1.
        assert!(matches!(
            encode(&p, &Value::Float(5000.0)),
            Err(EncodeError::OutOfRange { max, .. }) if (max - 3276.7).abs() < 1e-9
        ));
    }

    #[test]
    fn a_text_longer_than_its_registers_is_refused_and_a_short_one_padded() {
        let p = point(DataType::String { registers: 2 }, Big, Big);
        assert_eq!(
            encode(&p, &Value::Text("AB".into())),
            Ok(Encoded::Registers(vec![0x4142, 0x0000]))
        );
        assert!(matches!(
            encode(&p, &Value::Text("ABCDE".into())),
            Err(EncodeError::TextTooLong { capacity: 4, .. })
        ));
    }

    mod round_trip {
        use super::*;
        use proptest::prelude::*;

        fn orders() -> impl Strategy<Value = (Order, Order)> {
            prop_oneof![
                Just((Big, Big)),
                Just((Big, Little)),
                Just((Little, Big)),
                Just((Little, Little)),
            ]
        }

        fn any_point() -> impl Strategy<Value = Point> {
            let data_type = prop_oneof![
                Just(DataType::Bool),
                Just(DataType::U16),
                Just(DataType::I32),
                Just(DataType::U64),
                Just(DataType::F32),
                Just(DataType::F64),
                (1u16..8).prop_map(|registers| DataType::String { registers }),
            ];
            (data_type, orders(), -10.0f64..10.0).prop_map(|(data_type, (w, b), scale)| {
                let mut p = point(data_type, w, b);
                p.scale = scale;
                p
            })
        }

        proptest! {
            #[test]
            fn decoding_any_response_for_any_point_never_panics(
                p in any_point(),
                words in proptest::collection::vec(any::<u16>(), 0..10),
                bits in proptest::collection::vec(any::<bool>(), 0..3),
            ) {
                let _ = decode(&p, Raw::Registers(&words));
                let _ = decode(&p, Raw::Bits(&bits));
            }

            #[test]
            fn encoding_any_request_for_any_point_never_panics(
                p in any_point(),
                f in any::<f64>(),
                i in any::<i64>(),
                u in any::<u64>(),
                text in "[ -~]{0,20}",
            ) {
                for value in [Value::Float(f), Value::Int(i), Value::Uint(u), Value::Text(text.clone()), Value::Bool(true)] {
                    let _ = encode(&p, &value);
                }
            }

            #[test]
            fn every_integer_encodes_and_decodes_to_itself_in_every_order(
                (w, b) in orders(),
                u in any::<u64>(),
                i in any::<i64>(),
                u32v in any::<u32>(),
                i16v in any::<i16>(),
            ) {
                for (data_type, value) in [
                    (DataType::U64, Value::Uint(u)),
                    (DataType::I64, Value::Int(i)),
                    (DataType::U32, Value::Uint(u64::from(u32v))),
                    (DataType::I16, Value::Int(i64::from(i16v))),
                ] {
                    let p = point(data_type, w, b);
                    let Encoded::Registers(words) = encode(&p, &value).unwrap() else {
                        panic!("registers expected")
                    };
                    prop_assert_eq!(decode(&p, Raw::Registers(&words)).unwrap(), value);
                }
            }

            #[test]
            fn every_finite_float_encodes_and_decodes_to_itself_in_every_order(
                (w, b) in orders(),
                f in any::<f32>().prop_filter("finite", |f| f.is_finite()),
                d in any::<f64>().prop_filter("finite", |f| f.is_finite()),
            ) {
                for (data_type, value) in [
                    (DataType::F32, Value::Float(f64::from(f))),
                    (DataType::F64, Value::Float(d)),
                ] {
                    let p = point(data_type, w, b);
                    let Encoded::Registers(words) = encode(&p, &value).unwrap() else {
                        panic!("registers expected")
                    };
                    prop_assert_eq!(decode(&p, Raw::Registers(&words)).unwrap(), value);
                }
            }
        }
    }
}
