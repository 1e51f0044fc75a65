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
//! Scaling: an unscaled integer point (scale 1, offset 0) reads as [`Value::Int`] or
//! [`Value::Uint`], exactly. A scaled integer point reads as an exact decimal,
//! [`Value::Decimal`]: the map's `scale` and `offset` are taken as the decimals they were written
//! as (the shortest decimal text that reads back as the same `f64`: `0.1` is 1 × 10⁻¹, not
//! 0.1000000000000000055511…), and `raw × scale + offset` is computed in integers at their common
//! exponent ([`DecimalScaling`]). So raw 449 at scale 0.1 is 449 × 10⁻¹, which prints `44.9`; in
//! `f64` it would be 44.900000000000006. Every reading of a point has the point's one exponent,
//! so a series stays one decimal kind. Float points (f32, f64) stay floats (`raw × scale +
//! offset` in `f64`), and so does a scaled integer point whose scale and offset have no decimal
//! form within the limits ([`decimal_scaling`]: decided by the map alone, never by a reading),
//! or a 64-bit reading whose scaled mantissa passes `i64` (rounded once from the exact value).
//!
//! Writes are decided exactly too: a requested float is the decimal of its shortest text (44.9
//! asks for 44.9), and it is written only when some raw integer gives exactly that value.

use crate::modbus::map::{DataType, Order, Point};

/// A decoded reading, or a value requested for a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    /// An unscaled i16/i32/i64.
    Int(i64),
    /// An unscaled u16/u32/u64.
    Uint(u64),
    /// A scaled integer point's reading, exactly: `mantissa × 10^exp`, `exp` the point's own
    /// ([`DecimalScaling::exp`]). A request may use any exponent.
    Decimal {
        mantissa: i64,
        exp: i8,
    },
    /// A float point, or a scaled integer point without a decimal form (see the module docs).
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
            let raw = match point.data_type {
                DataType::U16 => i128::from(u16::from_be_bytes(take(&bytes))),
                DataType::U32 => i128::from(u32::from_be_bytes(take(&bytes))),
                DataType::U64 => i128::from(u64::from_be_bytes(take(&bytes))),
                DataType::I16 => i128::from(i16::from_be_bytes(take(&bytes))),
                DataType::I32 => i128::from(i32::from_be_bytes(take(&bytes))),
                DataType::I64 => i128::from(i64::from_be_bytes(take(&bytes))),
                DataType::F32 => {
                    let raw = f64::from(f32::from_be_bytes(take(&bytes)));
                    return Ok(Value::Float(float_scaled(point, raw)));
                }
                DataType::F64 => {
                    let raw = f64::from_be_bytes(take(&bytes));
                    return Ok(Value::Float(float_scaled(point, raw)));
                }
                DataType::Bool | DataType::String { .. } => unreachable!("handled above"),
            };
            Ok(integer_reading(point, raw))
        }
    }
}

/// A float point's reading: scaled in `f64` unless the point is unscaled.
fn float_scaled(point: &Point, raw: f64) -> f64 {
    if point.is_unscaled() {
        raw
    } else {
        raw * point.scale + point.offset
    }
}

/// An integer point's reading from its raw integer (see the module docs).
fn integer_reading(point: &Point, raw: i128) -> Value {
    if point.is_unscaled() {
        return match (i64::try_from(raw), u64::try_from(raw)) {
            (_, Ok(u))
                if matches!(
                    point.data_type,
                    DataType::U16 | DataType::U32 | DataType::U64
                ) =>
            {
                Value::Uint(u)
            }
            (Ok(i), _) => Value::Int(i),
            // Unreachable for the six integer types: their raw values fit one or the other.
            _ => Value::Float(raw as f64),
        };
    }
    match decimal_scaling(point) {
        Some(scaling) => match scaling.mantissa(raw) {
            Some(mantissa) => Value::Decimal {
                mantissa,
                exp: scaling.exp,
            },
            // Only a 64-bit raw gets here: the exact value, rounded once.
            None => Value::Float(scaling.to_f64(raw)),
        },
        #[allow(clippy::cast_precision_loss)] // no decimal form: a float reading by definition
        None => Value::Float(raw as f64 * point.scale + point.offset),
    }
}

/// The exact arithmetic of `point`'s readings, when it is a scaled integer point with one:
/// its scale and offset have a [`DecimalScaling::of`], and every raw value of a 16- or 32-bit
/// type gives a mantissa inside `i64` (so such a point's readings are all decimals, or all
/// floats, never a mix). A 64-bit point is decimal up to the raw values whose mantissa passes
/// `i64`; those few read as floats.
#[must_use]
pub fn decimal_scaling(point: &Point) -> Option<DecimalScaling> {
    let (min, max) = match point.data_type {
        DataType::U16 => (0, i128::from(u16::MAX)),
        DataType::I16 => (i128::from(i16::MIN), i128::from(i16::MAX)),
        DataType::U32 => (0, i128::from(u32::MAX)),
        DataType::I32 => (i128::from(i32::MIN), i128::from(i32::MAX)),
        DataType::U64 | DataType::I64 => (0, 0),
        DataType::Bool | DataType::F32 | DataType::F64 | DataType::String { .. } => return None,
    };
    if point.is_unscaled() {
        return None;
    }
    let scaling = DecimalScaling::of(point.scale, point.offset)?;
    (scaling.mantissa(min).is_some() && scaling.mantissa(max).is_some()).then_some(scaling)
}

/// The exact arithmetic of a scaled integer point: reading = `(raw × scale + offset) × 10^exp`.
///
/// `scale` and `offset` are the map's values as integers at their common exponent `exp` (the
/// smaller of the two exponents): scale 0.1 with offset −40 is `scale 1, offset −400, exp −1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecimalScaling {
    pub scale: i64,
    pub offset: i64,
    pub exp: i8,
}

/// The largest scale or offset mantissa a [`DecimalScaling`] takes (10^18: any 17-digit
/// shortest decimal, with a digit to spare for the common exponent).
const MAX_MANTISSA: i128 = 1_000_000_000_000_000_000;

impl DecimalScaling {
    /// The decimal form of `raw × scale + offset`, or `None` when the scale or offset is not
    /// finite, the common exponent is outside the batch format's −128..=127, or a mantissa at the
    /// common exponent passes 10^18 (scale 1e20 with offset 0.5, say). The map compiler refuses
    /// non-finite values; the others make a float point ([`decimal_scaling`] adds the
    /// rule on the raw range).
    #[must_use]
    pub fn of(scale: f64, offset: f64) -> Option<DecimalScaling> {
        let (sm, se) = shortest_decimal(scale)?;
        let (om, oe) = shortest_decimal(offset)?;
        let exp = if om == 0 { se } else { se.min(oe) };
        let exp8 = i8::try_from(exp).ok()?;
        let at = |m: i64, e: i32| -> Option<i64> {
            let m = i128::from(m).checked_mul(pow10(e - exp)?)?;
            (m.abs() <= MAX_MANTISSA).then(|| i64::try_from(m).ok())?
        };
        Some(DecimalScaling {
            scale: at(sm, se)?,
            offset: if om == 0 { 0 } else { at(om, oe)? },
            exp: exp8,
        })
    }

    /// `raw × scale + offset`, the reading's mantissa, when it fits an `i64`.
    #[must_use]
    pub fn mantissa(&self, raw: i128) -> Option<i64> {
        let m = raw
            .checked_mul(i128::from(self.scale))?
            .checked_add(i128::from(self.offset))?;
        i64::try_from(m).ok()
    }

    /// The reading of `raw` as the nearest `f64` of its exact value (for a mantissa past `i64`).
    #[must_use]
    pub fn to_f64(&self, raw: i128) -> f64 {
        match raw
            .checked_mul(i128::from(self.scale))
            .and_then(|m| m.checked_add(i128::from(self.offset)))
        {
            Some(m) => decimal_to_f64(m, i32::from(self.exp)),
            #[allow(clippy::cast_precision_loss)] // beyond i128: rounding is all there is
            None => {
                (raw as f64 * self.scale as f64 + self.offset as f64)
                    * 10f64.powi(i32::from(self.exp))
            }
        }
    }
}

/// The shortest decimal that reads back as `v`: `(mantissa, exponent)`, the mantissa without
/// trailing zeros (at most 17 digits); `(0, 0)` for zero; `None` for NaN and infinities.
///
/// Rust's `{:e}` formatting prints exactly these digits (the shortest round-trip form).
#[must_use]
pub fn shortest_decimal(v: f64) -> Option<(i64, i32)> {
    if !v.is_finite() {
        return None;
    }
    if v == 0.0 {
        return Some((0, 0));
    }
    let text = format!("{v:e}");
    let (digits, exp) = text.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    let (negative, digits) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, digits),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let mantissa: i64 = format!("{int}{frac}").parse().ok()?;
    let exp = exp - i32::try_from(frac.len()).ok()?;
    Some((if negative { -mantissa } else { mantissa }, exp))
}

/// 10^e as an `i128`, for 0 ≤ e ≤ 38.
fn pow10(e: i32) -> Option<i128> {
    10i128.checked_pow(u32::try_from(e).ok()?)
}

/// `m × 10^e`, correctly rounded to the nearest `f64` (by Rust's decimal parser).
#[must_use]
pub fn decimal_to_f64(m: i128, e: i32) -> f64 {
    format!("{m}e{e}").parse().unwrap_or(f64::NAN)
}

/// `n / d` rounded to the nearest integer, halves away from zero (`d != 0`).
fn round_div(n: i128, d: i128) -> i128 {
    let (q, r) = (n / d, n % d);
    if 2 * r.unsigned_abs() >= d.unsigned_abs() {
        if (n < 0) == (d < 0) { q + 1 } else { q - 1 }
    } else {
        q
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
    // Integer points with an exact form (unscaled, or a decimal scaling) are decided exactly.
    let integer = !matches!(data_type, DataType::F32 | DataType::F64);
    let exact = if !integer {
        None
    } else if point.is_unscaled() {
        Some(DecimalScaling {
            scale: 1,
            offset: 0,
            exp: 0,
        })
    } else {
        decimal_scaling(point)
    };
    if let Some(scaling) = exact {
        return exact_integer(point, data_type, scaling, value);
    }
    let requested = requested_f64(value);
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
            // A scaled integer point without a decimal form (see the module docs): in `f64`.
            let (min, max) = integer_range(data_type);
            let rounded = raw.round();
            if !rounded.is_finite() || rounded < min || rounded > max {
                let (lo, hi) = scaled_range(point, min, max);
                return Err(out_of_range(requested, lo, hi));
            }
            let nearest = rounded * point.scale + point.offset;
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

/// The requested value as an `f64` (decimals rounded once).
fn requested_f64(value: &Value) -> f64 {
    #[allow(clippy::cast_precision_loss)] // a float point or a float-scaled one: f64 by definition
    match value {
        Value::Int(i) => *i as f64,
        Value::Uint(u) => *u as f64,
        Value::Float(f) => *f,
        Value::Decimal { mantissa, exp } => decimal_to_f64(i128::from(*mantissa), i32::from(*exp)),
        Value::Bool(_) | Value::Text(_) => unreachable!("checked by encode"),
    }
}

/// The requested value as an exact decimal `(mantissa, exp)` with no trailing zeros in the
/// mantissa (`(0, 0)` for zero): a float is the decimal of its shortest text.
fn requested_decimal(value: &Value) -> Option<(i128, i32)> {
    let (mut m, mut e) = match value {
        Value::Int(i) => (i128::from(*i), 0),
        Value::Uint(u) => (i128::from(*u), 0),
        Value::Decimal { mantissa, exp } => (i128::from(*mantissa), i32::from(*exp)),
        Value::Float(f) => {
            let (m, e) = shortest_decimal(*f)?;
            (i128::from(m), e)
        }
        Value::Bool(_) | Value::Text(_) => unreachable!("checked by encode"),
    };
    if m == 0 {
        return Some((0, 0));
    }
    while m % 10 == 0 {
        m /= 10;
        e += 1;
    }
    Some((m, e))
}

/// The raw integer that reads exactly as `value` through `scaling`, in integer arithmetic:
/// `(raw × scale + offset) × 10^exp = m × 10^e`.
fn exact_integer(
    point: &Point,
    data_type: DataType,
    scaling: DecimalScaling,
    value: &Value,
) -> Result<Vec<u8>, EncodeError> {
    let (min, max) = integer_limits(data_type);
    let reading = |raw: i128| {
        let m = raw * i128::from(scaling.scale) + i128::from(scaling.offset);
        decimal_to_f64(m, i32::from(scaling.exp))
    };
    let (lo, hi) = {
        let (a, b) = (reading(min), reading(max));
        (a.min(b), a.max(b))
    };
    let requested = requested_f64(value);
    let out_of_range = || EncodeError::OutOfRange {
        point: point.name.clone(),
        data_type,
        value: requested,
        min: lo,
        max: hi,
    };
    let (m, e) = requested_decimal(value).ok_or_else(out_of_range)?;
    let (scale, offset, exp) = (
        i128::from(scaling.scale),
        i128::from(scaling.offset),
        i32::from(scaling.exp),
    );
    // The requested value in units of 10^exp: exact when e ≥ exp (or zero); otherwise it has
    // digits below the point's last one and only its nearest step is known.
    let (units, exact) = if m == 0 || e >= exp {
        let units = pow10(e - exp)
            .and_then(|p| m.checked_mul(p))
            .ok_or_else(out_of_range)?;
        (units, true)
    } else {
        // |m| < 10^19, so past 10^20 the nearest step is 0.
        let units = pow10(exp - e).map_or(0, |p| round_div(m, p));
        (units, false)
    };
    let n = units.checked_sub(offset).ok_or_else(out_of_range)?;
    let raw = round_div(n, scale);
    if raw < min || raw > max {
        return Err(out_of_range());
    }
    if !exact || n % scale != 0 {
        return Err(EncodeError::NotRepresentable {
            point: point.name.clone(),
            value: requested,
            nearest: reading(raw),
        });
    }
    integer_bytes(data_type, raw).ok_or_else(out_of_range)
}

/// The raw range of an integer type.
fn integer_limits(data_type: DataType) -> (i128, i128) {
    match data_type {
        DataType::U16 => (0, i128::from(u16::MAX)),
        DataType::I16 => (i128::from(i16::MIN), i128::from(i16::MAX)),
        DataType::U32 => (0, i128::from(u32::MAX)),
        DataType::I32 => (i128::from(i32::MIN), i128::from(i32::MAX)),
        DataType::U64 => (0, i128::from(u64::MAX)),
        DataType::I64 => (i128::from(i64::MIN), i128::from(i64::MAX)),
        _ => (0, 0),
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
        assert_eq!(
            read(&p, &[0x0259]),
            Value::Decimal {
                mantissa: 201,
                exp: -1
            }
        );
    }

    /// The value as the batch prints it.
    fn text(value: &Value) -> String {
        match *value {
            Value::Decimal { mantissa, exp } => {
                outpost_batch::Value::decimal(mantissa, exp).to_string()
            }
            ref other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_register_in_tenths_reads_as_the_decimal_the_device_meant() {
        // 449 × 0.1 in f64 is 44.900000000000006; the device meant 44.9.
        let mut p = point(DataType::U16, Big, Big);
        p.scale = 0.1;
        let v = read(&p, &[449]);
        assert_eq!(
            v,
            Value::Decimal {
                mantissa: 449,
                exp: -1
            }
        );
        assert_eq!(text(&v), "44.9");
        // Every reading of the point keeps the point's exponent: 450 is 450 × 10⁻¹ (prints 45).
        assert_eq!(
            read(&p, &[450]),
            Value::Decimal {
                mantissa: 450,
                exp: -1
            }
        );
        assert_eq!(text(&read(&p, &[450])), "45");
        // A scale that is no power of ten, and one above one.
        p.scale = 0.5;
        assert_eq!(text(&read(&p, &[7])), "3.5");
        p.scale = 1000.0;
        p.offset = 0.25;
        assert_eq!(text(&read(&p, &[3])), "3000.25");
        // A signed register with a negative scale.
        let mut q = point(DataType::I32, Big, Big);
        q.scale = -0.01;
        assert_eq!(text(&read(&q, &[0xFFFF, 0xFFFE])), "0.02");
    }

    #[test]
    fn floats_stay_floats_and_a_scale_without_a_decimal_form_reads_as_a_float() {
        let mut p = point(DataType::F32, Big, Big);
        p.scale = 0.1;
        assert!(matches!(read(&p, &[0x4366, 0x8000]), Value::Float(_)));
        // 1e-200 has no exponent inside the batch format's −128..=127.
        let mut q = point(DataType::U16, Big, Big);
        q.scale = 1e-200;
        assert_eq!(decimal_scaling(&q), None);
        assert!(matches!(read(&q, &[3]), Value::Float(_)));
        // 14 significant digits of scale on a u32: 4294967295 × 12345678901234 passes i64, so
        // the whole point is a float (never a mix of the two in one series).
        let mut r = point(DataType::U32, Big, Big);
        r.scale = 1.234_567_890_123_4;
        assert_eq!(decimal_scaling(&r), None);
        // On a u16 it fits: a decimal.
        r.data_type = DataType::U16;
        assert!(decimal_scaling(&r).is_some());
    }

    #[test]
    fn a_64_bit_reading_past_the_decimal_range_is_a_float_of_its_exact_value() {
        let mut p = point(DataType::U64, Big, Big);
        p.scale = 0.01;
        // 2^63 - 1 fits: a decimal.
        assert_eq!(
            read(&p, &[0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF]),
            Value::Decimal {
                mantissa: i64::MAX,
                exp: -2
            }
        );
        // 2^63 does not: the nearest f64 of 92233720368547758.08.
        assert_eq!(
            read(&p, &[0x8000, 0, 0, 0]),
            Value::Float(92_233_720_368_547_758.08)
        );
    }

    #[test]
    fn the_shortest_decimal_of_an_f64_is_what_was_written() {
        assert_eq!(shortest_decimal(0.1), Some((1, -1)));
        assert_eq!(shortest_decimal(44.9), Some((449, -1)));
        assert_eq!(shortest_decimal(-40.0), Some((-4, 1)));
        assert_eq!(shortest_decimal(1000.0), Some((1, 3)));
        assert_eq!(shortest_decimal(0.0), Some((0, 0)));
        assert_eq!(
            shortest_decimal(0.1 + 0.2),
            Some((30_000_000_000_000_004, -17))
        );
        assert_eq!(shortest_decimal(5e-324), Some((5, -324)));
        assert_eq!(shortest_decimal(f64::NAN), None);
        assert_eq!(
            DecimalScaling::of(0.1, -40.0),
            Some(DecimalScaling {
                scale: 1,
                offset: -400,
                exp: -1
            })
        );
        // Common exponent −1: 1000 is 10000 × 10⁻¹.
        assert_eq!(
            DecimalScaling::of(1000.0, 0.5),
            Some(DecimalScaling {
                scale: 10_000,
                offset: 5,
                exp: -1
            })
        );
        // 1e20 at the exponent of 0.5 is 10^21: past the mantissa limit.
        assert_eq!(DecimalScaling::of(1e20, 0.5), None);
        assert_eq!(DecimalScaling::of(1e-200, 0.0), None);
    }

    #[test]
    fn a_write_to_a_scaled_point_is_decided_exactly() {
        let mut p = point(DataType::U16, Big, Big);
        p.scale = 0.1;
        assert_eq!(
            encode(&p, &Value::Float(44.9)),
            Ok(Encoded::Registers(vec![449]))
        );
        assert_eq!(
            encode(
                &p,
                &Value::Decimal {
                    mantissa: 4490,
                    exp: -2
                }
            ),
            Ok(Encoded::Registers(vec![449]))
        );
        assert_eq!(
            encode(&p, &Value::Uint(45)),
            Ok(Encoded::Registers(vec![450]))
        );
        // 2301 × 0.1 computed in f64 is 230.10000000000002: a different number, refused, with the
        // step it is nearest to.
        assert_eq!(
            encode(&p, &Value::Float(2301.0 * 0.1)),
            Err(EncodeError::NotRepresentable {
                point: "p".into(),
                value: 230.100_000_000_000_02,
                nearest: 230.1
            })
        );
        assert!(matches!(
            encode(&p, &Value::Float(44.95)),
            Err(EncodeError::NotRepresentable { nearest, .. }) if nearest == 45.0
        ));
        // One step past the top of a u16 in tenths, and a negative value.
        assert!(matches!(
            encode(&p, &Value::Float(6553.6)),
            Err(EncodeError::OutOfRange { max, .. }) if max == 6553.5
        ));
        assert!(matches!(
            encode(&p, &Value::Float(-0.1)),
            Err(EncodeError::OutOfRange { min, .. }) if min == 0.0
        ));
        // With an offset: −40 °C + raw × 0.1.
        p.offset = -40.0;
        assert_eq!(
            encode(&p, &Value::Float(20.1)),
            Ok(Encoded::Registers(vec![601]))
        );
        // A tiny or huge request never overflows the arithmetic.
        assert!(matches!(
            encode(&p, &Value::Float(1e-300)),
            Err(EncodeError::NotRepresentable { .. })
        ));
        assert!(matches!(
            encode(&p, &Value::Float(1e300)),
            Err(EncodeError::OutOfRange { .. })
        ));
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

            /// For any raw integer of any integer type and any decimal scale and offset of up
            /// to 6 digits at exponents −6..=2, the reading is the exact `raw × scale + offset`
            /// (checked in i128 at the common exponent), and writing it back gives the same raw.
            #[test]
            fn a_scaled_integer_reads_as_its_exact_decimal_and_writes_back_to_its_raw(
                (w, b) in orders(),
                type_index in 0usize..6,
                raw in any::<i64>(),
                sm in (-999_999i64..=999_999).prop_filter("non-zero", |m| *m != 0),
                se in -6i32..=2,
                om in -999_999i64..=999_999,
                oe in -6i32..=2,
            ) {
                let data_type = [DataType::U16, DataType::I16, DataType::U32, DataType::I32, DataType::U64, DataType::I64][type_index];
                let (min, max) = integer_limits(data_type);
                let raw = i128::from(raw).clamp(min, max);
                let mut p = point(data_type, w, b);
                p.scale = decimal_to_f64(i128::from(sm), se);
                p.offset = decimal_to_f64(i128::from(om), oe);
                prop_assume!(!p.is_unscaled());
                let bytes = integer_bytes(data_type, raw).unwrap();
                let words = number_words(&p, &bytes);
                let value = decode(&p, Raw::Registers(&words)).unwrap();
                // The exact value at the exponent e = min(se, oe): raw × sm × 10^(se−e) + om × 10^(oe−e).
                let e = se.min(oe);
                let exact = raw * i128::from(sm) * 10i128.pow((se - e) as u32)
                    + i128::from(om) * 10i128.pow((oe - e) as u32);
                match value {
                    Value::Decimal { mantissa, exp } => {
                        // mantissa × 10^exp == exact × 10^e
                        let exp = i32::from(exp);
                        let (lhs, rhs) = if exp >= e {
                            (i128::from(mantissa) * 10i128.pow((exp - e) as u32), exact)
                        } else {
                            (i128::from(mantissa), exact * 10i128.pow((e - exp) as u32))
                        };
                        prop_assert_eq!(lhs, rhs);
                        p.writable = true;
                        let back = encode(&p, &value).unwrap();
                        prop_assert_eq!(back, Encoded::Registers(words.clone()));
                    }
                    Value::Float(f) if decimal_scaling(&p).is_some() => {
                        // Only a 64-bit raw past the mantissa range, as the nearest f64.
                        prop_assert!(matches!(data_type, DataType::U64 | DataType::I64), "{value:?}");
                        prop_assert!(i64::try_from(exact).is_err());
                        prop_assert_eq!(f, decimal_to_f64(exact, e));
                    }
                    Value::Float(_) => {
                        // A float point: a 16- or 32-bit type some raw value of which (an
                        // extreme) has no mantissa inside i64 at this scale.
                        prop_assert!(!matches!(data_type, DataType::U64 | DataType::I64));
                        let at = |raw: i128| raw * i128::from(sm) * 10i128.pow((se - e) as u32)
                            + i128::from(om) * 10i128.pow((oe - e) as u32);
                        prop_assert!(i64::try_from(at(min)).is_err() || i64::try_from(at(max)).is_err());
                    }
                    other => prop_assert!(false, "{other:?}"),
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
