//! LEB128 varints, zigzag, and a bounds-checked reader over the decompressed body.
//!
//! `uvarint`: 7 bits per byte, least significant group first, high bit set on every byte but the
//! last; at most 10 bytes; canonical (no superfluous zero group). `svarint`: the `uvarint` of
//! `zigzag(n) = (n << 1) ^ (n >> 63)`, so small magnitudes of either sign take one byte.

/// Longest `uvarint` of a `u64`.
pub(crate) const MAX_VARINT_LEN: usize = 10;

pub(crate) const fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

pub(crate) const fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_svarint(out: &mut Vec<u8>, n: i64) {
    put_uvarint(out, zigzag(n));
}

pub(crate) const fn uvarint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

pub(crate) const fn svarint_len(n: i64) -> usize {
    uvarint_len(zigzag(n))
}

/// Why the body could not be read, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyError {
    pub(crate) offset: usize,
    pub(crate) problem: &'static str,
}

/// A cursor over the decompressed body. Every read is bounds-checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn error(&self, problem: &'static str) -> BodyError {
        BodyError {
            offset: self.pos,
            problem,
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, BodyError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.error("unexpected end of body"))?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], BodyError> {
        if n > self.remaining() {
            return Err(self.error("unexpected end of body"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn uvarint(&mut self) -> Result<u64, BodyError> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..MAX_VARINT_LEN {
            let Some(&b) = self.buf.get(self.pos) else {
                self.pos = start;
                return Err(self.error("unexpected end of body inside a varint"));
            };
            self.pos += 1;
            let group = u64::from(b & 0x7f);
            if i == MAX_VARINT_LEN - 1 && b > 1 {
                self.pos = start;
                return Err(self.error("varint overflows 64 bits"));
            }
            v |= group << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    self.pos = start;
                    return Err(self.error("varint not in its shortest form"));
                }
                return Ok(v);
            }
        }
        self.pos = start;
        Err(self.error("varint longer than 10 bytes"))
    }

    pub(crate) fn svarint(&mut self) -> Result<i64, BodyError> {
        self.uvarint().map(unzigzag)
    }

    /// A `uvarint` that must lie in `min..=max`.
    pub(crate) fn count(
        &mut self,
        min: u64,
        max: u64,
        problem: &'static str,
    ) -> Result<usize, BodyError> {
        let start = self.pos;
        let v = self.uvarint()?;
        if v < min || v > max {
            self.pos = start;
            return Err(self.error(problem));
        }
        // `max` is bounded by the format's limits, far below `usize::MAX` on any target we build.
        Ok(v as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_maps_small_magnitudes_to_small_codes() {
        assert_eq!(zigzag(0), 0);
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        assert_eq!(zigzag(-2), 3);
        assert_eq!(zigzag(i64::MAX), u64::MAX - 1);
        assert_eq!(zigzag(i64::MIN), u64::MAX);
        for n in [0, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(n)), n);
        }
    }

    #[test]
    fn uvarints_round_trip_and_report_their_length() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            assert_eq!(out.len(), uvarint_len(v), "{v}");
            let mut r = Reader::new(&out);
            assert_eq!(r.uvarint(), Ok(v));
            assert_eq!(r.remaining(), 0);
        }
        let mut out = Vec::new();
        put_uvarint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }

    #[test]
    fn overlong_overflowing_and_cut_varints_are_errors() {
        let problem = |bytes: &[u8]| Reader::new(bytes).uvarint().unwrap_err().problem;
        assert_eq!(problem(&[0x80, 0x00]), "varint not in its shortest form");
        assert_eq!(
            problem(&[0xff; 9]),
            "unexpected end of body inside a varint"
        );
        let mut eleven = [0xff; 10];
        eleven[9] = 0x02;
        assert_eq!(problem(&eleven), "varint overflows 64 bits");
        assert_eq!(problem(&[0x80; 12]), "varint overflows 64 bits");
        assert_eq!(problem(&[]), "unexpected end of body inside a varint");
    }
}
