//! Gorilla XOR coding of float series (Pelkonen et al., "Gorilla: A Fast, Scalable, In-Memory
//! Time Series Database", VLDB 2015, §4.1.2), bits written most significant first.
//!
//! The first value is its 64 IEEE-754 bits. Each later value is XORed with the one before:
//! - `0`: the XOR is zero (same value);
//! - `10` + the XOR's bits inside the previous window: the XOR's leading and trailing zeros are at
//!   least those of the window last opened by a `11`;
//! - `11` + 5 bits leading zeros (capped at 31) + 6 bits meaningful length (64 written as 0) +
//!   the meaningful bits; this opens a new window.
//!
//! The stream is padded with zero bits to a whole byte.

use crate::varint::{BodyError, Reader};

/// The encoder's state between values.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Encoder {
    prev: Option<u64>,
    /// (leading zeros, trailing zeros) of the window opened by the last `11` code.
    window: Option<(u32, u32)>,
}

/// One value's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    First(u64),
    Same,
    Reuse { bits: u64, len: u32 },
    Open { leading: u32, bits: u64, len: u32 },
}

impl Code {
    /// Length of the code in bits.
    pub(crate) fn bit_len(self) -> u64 {
        match self {
            Code::First(_) => 64,
            Code::Same => 1,
            Code::Reuse { len, .. } => 2 + u64::from(len),
            Code::Open { len, .. } => 2 + 5 + 6 + u64::from(len),
        }
    }
}

impl Encoder {
    pub(crate) fn step(&mut self, value: f64) -> Code {
        let bits = value.to_bits();
        let Some(prev) = self.prev.replace(bits) else {
            return Code::First(bits);
        };
        let xor = bits ^ prev;
        if xor == 0 {
            return Code::Same;
        }
        let leading = xor.leading_zeros().min(31);
        let trailing = xor.trailing_zeros();
        if let Some((wl, wt)) = self.window {
            if leading >= wl && trailing >= wt {
                return Code::Reuse {
                    bits: xor >> wt,
                    len: 64 - wl - wt,
                };
            }
        }
        self.window = Some((leading, trailing));
        Code::Open {
            leading,
            bits: xor >> trailing,
            len: 64 - leading - trailing,
        }
    }
}

/// Writes the Gorilla stream of `values`, padded to a whole byte.
pub(crate) fn encode(values: &[f64], out: &mut Vec<u8>) {
    let mut w = BitWriter::new(out);
    let mut enc = Encoder::default();
    for &v in values {
        match enc.step(v) {
            Code::First(bits) => w.write(bits, 64),
            Code::Same => w.write(0, 1),
            Code::Reuse { bits, len } => {
                w.write(0b10, 2);
                w.write(bits, len);
            }
            Code::Open { leading, bits, len } => {
                w.write(0b11, 2);
                w.write(u64::from(leading), 5);
                w.write(u64::from(len & 63), 6);
                w.write(bits, len);
            }
        }
    }
    w.finish();
}

/// Reads `n` values; the padding bits of the last byte must be zero.
pub(crate) fn decode(r: &mut Reader<'_>, n: usize) -> Result<Vec<f64>, BodyError> {
    // Every value takes at least one bit: never reserve more than the bytes left can hold.
    let mut values = Vec::with_capacity(n.min(r.remaining().saturating_mul(8)));
    let mut bits = BitReader::new(r);
    let mut prev = 0u64;
    let mut window: Option<(u32, u32)> = None;
    for i in 0..n {
        let v = if i == 0 {
            bits.read(64)?
        } else if bits.read(1)? == 0 {
            prev
        } else if bits.read(1)? == 0 {
            let (wl, wt) =
                window.ok_or_else(|| bits.error("window reused before one was opened"))?;
            prev ^ (bits.read(64 - wl - wt)? << wt)
        } else {
            let leading = bits.read(5)? as u32;
            let len = match bits.read(6)? as u32 {
                0 => 64,
                len => len,
            };
            if leading + len > 64 {
                return Err(bits.error("float window wider than 64 bits"));
            }
            let trailing = 64 - leading - len;
            window = Some((leading, trailing));
            prev ^ (bits.read(len)? << trailing)
        };
        values.push(f64::from_bits(v));
        prev = v;
    }
    bits.finish()?;
    Ok(values)
}

struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Pending bits, right-aligned; fewer than 8 between writes.
    acc: u64,
    len: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        BitWriter {
            out,
            acc: 0,
            len: 0,
        }
    }

    /// Writes the low `n` bits of `value`, most significant first; `n <= 64`.
    fn write(&mut self, value: u64, n: u32) {
        if n > 32 {
            self.write(value >> 32, n - 32);
            self.write(value & 0xffff_ffff, 32);
            return;
        }
        let value = value & mask(n);
        self.acc = (self.acc << n) | value;
        self.len += n;
        while self.len >= 8 {
            self.len -= 8;
            self.out.push((self.acc >> self.len) as u8);
        }
        self.acc &= mask(self.len);
    }

    fn finish(self) {
        if self.len > 0 {
            self.out.push((self.acc << (8 - self.len)) as u8);
        }
    }
}

struct BitReader<'r, 'a> {
    r: &'r mut Reader<'a>,
    acc: u64,
    len: u32,
}

impl<'r, 'a> BitReader<'r, 'a> {
    fn new(r: &'r mut Reader<'a>) -> Self {
        BitReader { r, acc: 0, len: 0 }
    }

    fn error(&self, problem: &'static str) -> BodyError {
        self.r.error(problem)
    }

    /// Reads `n <= 64` bits, most significant first.
    fn read(&mut self, n: u32) -> Result<u64, BodyError> {
        if n > 32 {
            let high = self.read(n - 32)?;
            let low = self.read(32)?;
            return Ok((high << 32) | low);
        }
        while self.len < n {
            let byte = self
                .r
                .u8()
                .map_err(|_| self.r.error("float column ends inside a value"))?;
            self.acc = (self.acc << 8) | u64::from(byte);
            self.len += 8;
        }
        self.len -= n;
        let v = (self.acc >> self.len) & mask(n);
        self.acc &= mask(self.len);
        Ok(v)
    }

    fn finish(self) -> Result<(), BodyError> {
        if self.acc != 0 {
            return Err(self.r.error("float column padding bits are not zero"));
        }
        Ok(())
    }
}

const fn mask(n: u32) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(values: &[f64]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(values, &mut out);
        let mut r = Reader::new(&out);
        let back = decode(&mut r, values.len()).unwrap();
        assert_eq!(r.remaining(), 0);
        let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(values));
        let expected_bits: u64 = {
            let mut enc = Encoder::default();
            values.iter().map(|&v| enc.step(v).bit_len()).sum()
        };
        assert_eq!(out.len() as u64, expected_bits.div_ceil(8));
        out
    }

    #[test]
    fn a_repeated_value_costs_one_bit() {
        let out = round_trip(&[12.5, 12.5, 12.5, 12.5, 12.5, 12.5, 12.5, 12.5, 12.5]);
        assert_eq!(out.len(), 9); // 64 + 8 bits
        assert_eq!(&out[..8], &12.5f64.to_bits().to_be_bytes());
        assert_eq!(out[8], 0);
    }

    #[test]
    fn floats_round_trip_bit_exactly_including_nan_and_signed_zero() {
        round_trip(&[
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            1.0,
            1.0 + f64::EPSILON,
            f64::MIN_POSITIVE,
        ]);
        round_trip(&[
            f64::from_bits(1),
            f64::from_bits(u64::MAX),
            f64::from_bits(1 << 63),
        ]);
        round_trip(
            &(0..100)
                .map(|i| 20.0 + f64::from(i) * 0.1)
                .collect::<Vec<_>>(),
        );
    }

    #[test]
    fn a_window_reused_before_one_is_opened_is_corrupt() {
        // First value 0.0, then the code `10`.
        let mut bytes = vec![0u8; 8];
        bytes.push(0b1000_0000);
        let err = decode(&mut Reader::new(&bytes), 2).unwrap_err();
        assert_eq!(err.problem, "window reused before one was opened");
    }

    #[test]
    fn nonzero_padding_is_corrupt() {
        let mut bytes = vec![0u8; 8];
        bytes.push(0b0100_0000); // `0` (same value), then a stray 1 in the padding
        let err = decode(&mut Reader::new(&bytes), 2).unwrap_err();
        assert_eq!(err.problem, "float column padding bits are not zero");
    }
}
