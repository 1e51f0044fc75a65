//! One reading's value: a decimal (integer with a power-of-ten exponent) or a float.

use std::fmt;

/// The value of one reading.
///
/// Equality is exact: two floats are equal when their bit patterns are (so a NaN equals the same
/// NaN, and `0.0 != -0.0`), which is what a codec that round-trips bits must promise.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    /// `raw × 10^exp`, e.g. a temperature of 21.50 °C sent in hundredths is
    /// `Decimal { raw: 2150, exp: -2 }`; a pressure of 101 325 Pa is `Decimal { raw: 101325, exp: 0 }`.
    Decimal { raw: i64, exp: i8 },
    /// An IEEE-754 double, e.g. a Modbus float register.
    Float(f64),
}

impl Value {
    /// `raw × 10^exp`.
    #[must_use]
    pub const fn decimal(raw: i64, exp: i8) -> Value {
        Value::Decimal { raw, exp }
    }

    /// A plain integer: `raw × 10^0`.
    #[must_use]
    pub const fn integer(raw: i64) -> Value {
        Value::Decimal { raw, exp: 0 }
    }

    /// A float.
    #[must_use]
    pub const fn float(value: f64) -> Value {
        Value::Float(value)
    }

    /// The kind a series holding this value has.
    #[must_use]
    pub const fn kind(&self) -> ValueKind {
        match *self {
            Value::Decimal { exp, .. } => ValueKind::Decimal { exp },
            Value::Float(_) => ValueKind::Float,
        }
    }

    /// The value as the nearest `f64` (exact for floats; a decimal is rounded once).
    #[must_use]
    pub fn as_f64(&self) -> f64 {
        match *self {
            Value::Decimal { raw, exp } if exp < 0 => raw as f64 / 10f64.powi(-i32::from(exp)),
            Value::Decimal { raw, exp } => raw as f64 * 10f64.powi(i32::from(exp)),
            Value::Float(v) => v,
        }
    }

    /// Appends the value as a JSON number: a decimal exactly, without trailing fractional zeros
    /// (`2150e-2` → `21.5`); a float in its shortest round-trip form; a non-finite float as `null`
    /// (JSON has no NaN or infinity).
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        match *self {
            Value::Decimal { raw, exp } => write_decimal(raw, exp, out),
            Value::Float(v) => {
                // Writing JSON into a Vec cannot fail: serde_json's only errors here are I/O ones.
                let _ = serde_json::to_writer(&mut *out, &v);
            }
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (*self, *other) {
            (Value::Decimal { raw: a, exp: x }, Value::Decimal { raw: b, exp: y }) => {
                a == b && x == y
            }
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            _ => false,
        }
    }
}

impl Eq for Value {}

impl fmt::Display for Value {
    /// As in JSON lines (exact decimals, shortest floats), except that non-finite floats show as
    /// `NaN`, `inf`, `-inf` rather than `null`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Float(v) if !v.is_finite() => write!(f, "{v}"),
            _ => {
                let mut out = Vec::new();
                self.write_json(&mut out);
                f.write_str(&String::from_utf8_lossy(&out))
            }
        }
    }
}

/// What every value of one series is: decimals with one exponent, or floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    Decimal { exp: i8 },
    Float,
}

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueKind::Decimal { exp } => write!(f, "decimal ×10^{exp}"),
            ValueKind::Float => f.write_str("float"),
        }
    }
}

/// `raw × 10^exp` as an exact JSON number: no float rounding, no exponent notation, no trailing
/// fractional zeros.
fn write_decimal(raw: i64, exp: i8, out: &mut Vec<u8>) {
    if raw < 0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 20];
    let mut n = raw.unsigned_abs();
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[start..];
    if raw == 0 {
        out.push(b'0');
        return;
    }
    if exp >= 0 {
        out.extend_from_slice(digits);
        out.resize(out.len() + exp as usize, b'0');
        return;
    }
    let frac_len = exp.unsigned_abs() as usize;
    let (int_part, frac): (&[u8], Vec<u8>) = if digits.len() > frac_len {
        let (i, f) = digits.split_at(digits.len() - frac_len);
        (i, f.to_vec())
    } else {
        let mut f = vec![b'0'; frac_len - digits.len()];
        f.extend_from_slice(digits);
        (b"0", f)
    };
    out.extend_from_slice(int_part);
    let kept = frac.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
    if kept > 0 {
        out.push(b'.');
        out.extend_from_slice(&frac[..kept]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: Value) -> String {
        let mut out = Vec::new();
        value.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decimals_print_exactly_without_trailing_zeros() {
        assert_eq!(json(Value::decimal(2150, -2)), "21.5");
        assert_eq!(json(Value::decimal(2151, -2)), "21.51");
        assert_eq!(json(Value::decimal(2100, -2)), "21");
        assert_eq!(json(Value::decimal(5, -3)), "0.005");
        assert_eq!(json(Value::decimal(-5, -1)), "-0.5");
        assert_eq!(json(Value::decimal(-1234, -2)), "-12.34");
        assert_eq!(json(Value::decimal(0, -2)), "0");
        assert_eq!(json(Value::integer(101_325)), "101325");
        assert_eq!(json(Value::decimal(3, 2)), "300");
        assert_eq!(json(Value::decimal(i64::MIN, -2)), "-92233720368547758.08");
        assert_eq!(json(Value::decimal(i64::MAX, 0)), "9223372036854775807");
    }

    #[test]
    fn every_decimal_prints_as_a_json_number_of_the_same_value() {
        for (raw, exp) in [(1, -20), (-7, -128), (12, 127), (999, -3), (1000, -3)] {
            let text = json(Value::decimal(raw, exp));
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            let expected = Value::decimal(raw, exp).as_f64();
            let got = parsed.as_f64().unwrap();
            assert!(
                (got - expected).abs() <= expected.abs() * 1e-15,
                "{raw}e{exp}: {text}"
            );
        }
    }

    #[test]
    fn floats_print_shortest_and_non_finite_floats_print_null() {
        assert_eq!(json(Value::float(21.5)), "21.5");
        assert_eq!(json(Value::float(0.1)), "0.1");
        assert_eq!(json(Value::float(1e300)), "1e+300");
        assert_eq!(json(Value::float(f64::NAN)), "null");
        assert_eq!(json(Value::float(f64::NEG_INFINITY)), "null");
    }

    #[test]
    fn float_equality_is_bitwise() {
        assert_eq!(Value::float(f64::NAN), Value::float(f64::NAN));
        assert_ne!(Value::float(0.0), Value::float(-0.0));
        assert_ne!(Value::decimal(1, 0), Value::decimal(10, -1));
    }
}
