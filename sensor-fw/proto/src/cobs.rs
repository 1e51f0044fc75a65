//! Consistent Overhead Byte Stuffing (Cheshire & Baker, 1999).
//!
//! COBS removes every `0x00` from a frame at a cost of at most one byte per 254, so `0x00` can
//! delimit frames on the line. A receiver that joins mid-stream, or sees a corrupted byte, loses
//! at most the frame in progress: the next `0x00` always starts a fresh one.

/// Largest input that [`encode`] accepts into a buffer of `out_len` bytes.
#[must_use]
pub const fn max_encoded_len(input_len: usize) -> usize {
    input_len + input_len / 254 + 1
}

/// Encodes `input` into `out`, without the trailing `0x00`. Returns the encoded length, or `None`
/// when `out` is too small (see [`max_encoded_len`]).
pub fn encode(input: &[u8], out: &mut [u8]) -> Option<usize> {
    if out.len() < max_encoded_len(input.len()) {
        return None;
    }
    let mut code_at = 0; // where the current block's length code goes
    let mut write = 1;
    let mut code: u8 = 1;
    for &byte in input {
        if byte == 0 {
            out[code_at] = code;
            code_at = write;
            write += 1;
            code = 1;
        } else {
            out[write] = byte;
            write += 1;
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = write;
                write += 1;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    Some(write)
}

/// Why a COBS block could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CobsError {
    /// A `0x00` inside the encoded data: never produced by an encoder.
    ZeroByte,
    /// A length code points past the end of the data.
    Overrun,
}

/// Decodes `buf` in place (the output is never longer than the input). Returns the decoded length.
pub fn decode_in_place(buf: &mut [u8]) -> Result<usize, CobsError> {
    let mut read = 0;
    let mut write = 0;
    while read < buf.len() {
        let code = buf[read];
        if code == 0 {
            return Err(CobsError::ZeroByte);
        }
        let block_end = read + code as usize;
        if block_end > buf.len() {
            return Err(CobsError::Overrun);
        }
        read += 1;
        while read < block_end {
            let byte = buf[read];
            if byte == 0 {
                return Err(CobsError::ZeroByte);
            }
            buf[write] = byte;
            write += 1;
            read += 1;
        }
        // A block shorter than 254 data bytes stands for a zero, except at the very end.
        if code != 0xFF && read < buf.len() {
            buf[write] = 0;
            write += 1;
        }
    }
    Ok(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(input: &[u8]) {
        let mut enc = [0u8; 1200];
        let n = encode(input, &mut enc).unwrap();
        assert!(!enc[..n].contains(&0), "encoded data must hold no zero");
        let dec = decode_in_place(&mut enc[..n]).unwrap();
        assert_eq!(&enc[..dec], input);
    }

    #[test]
    fn examples_from_the_cobs_paper_round_trip() {
        let mut enc = [0u8; 8];
        // 00 -> 01 01
        assert_eq!(encode(&[0x00], &mut enc), Some(2));
        assert_eq!(&enc[..2], &[0x01, 0x01]);
        // 11 22 00 33 -> 03 11 22 02 33
        assert_eq!(encode(&[0x11, 0x22, 0x00, 0x33], &mut enc), Some(5));
        assert_eq!(&enc[..5], &[0x03, 0x11, 0x22, 0x02, 0x33]);
        roundtrip(&[]);
        roundtrip(&[0, 0, 0]);
    }

    #[test]
    fn long_runs_without_zero_split_into_254_byte_blocks() {
        let data: [u8; 600] = core::array::from_fn(|i| (i % 255) as u8 + 1);
        roundtrip(&data);
        let mut data = [7u8; 254];
        data[253] = 0;
        roundtrip(&data);
    }

    #[test]
    fn too_small_output_is_refused() {
        let mut enc = [0u8; 3];
        assert_eq!(encode(&[1, 2, 3], &mut enc), None);
    }

    #[test]
    fn corrupt_codes_are_errors_not_panics() {
        assert_eq!(decode_in_place(&mut [0x05, 0x01]), Err(CobsError::Overrun));
        assert_eq!(decode_in_place(&mut [0x02, 0x00]), Err(CobsError::ZeroByte));
    }
}
