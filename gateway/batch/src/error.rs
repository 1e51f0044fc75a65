//! Why bytes are not a valid batch: the one error of the decoder, shared by the header, body and
//! decode modules (each reports into it; none depends on another for it).

use std::io;

/// Why bytes are not a valid batch. Every variant says what is wrong; none of them panics or
/// allocates more than the batch's own limits allow.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("batch truncated at byte {len}: {needed} bytes needed")]
    Truncated { len: usize, needed: usize },
    #[error("not an Outpost batch: magic {found:02x?}, expected \"OPBT\"")]
    BadMagic { found: [u8; 4] },
    #[error(
        "unsupported batch format version {version}; this decoder reads version {}",
        crate::FORMAT_VERSION
    )]
    UnsupportedVersion { version: u8 },
    #[error("{extra} bytes after the end of the batch at byte {batch_len}")]
    TrailingBytes { batch_len: usize, extra: usize },
    #[error(
        "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}; the batch is corrupt"
    )]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("invalid header: {0}")]
    InvalidHeader(&'static str),
    #[error(
        "unknown dictionary id {id}: the batch was compressed with a dictionary this decoder was not given ({known} known)"
    )]
    UnknownDictionary { id: u32, known: usize },
    #[error("body does not decompress: {0}")]
    Decompress(#[source] io::Error),
    #[error("body decompresses to {actual} bytes, the header declares {declared}")]
    BodyLength { declared: u32, actual: usize },
    #[error("corrupt body at byte {offset} (decompressed): {problem}")]
    CorruptBody {
        offset: usize,
        problem: &'static str,
    },
    #[error("corrupt column {source_name}/{channel} at byte {offset} (decompressed): {problem}")]
    CorruptColumn {
        source_name: String,
        channel: String,
        offset: usize,
        problem: &'static str,
    },
    #[error("{field} is {header} in the header but {body} in the body")]
    HeaderMismatch {
        field: &'static str,
        header: i64,
        body: i64,
    },
}
