//! What the benchmarks that draw a plot share: a font for its text, a PNG encoder (no image
//! crate), and where under target/ they keep their samples.

use std::io::Write as _;
use std::path::PathBuf;

use plotters::style::FontStyle;

/// Registers a system sans-serif font for the plot's text; false (a plot without text) if none.
pub fn load_font() -> bool {
    const CANDIDATES: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ];
    CANDIDATES.iter().any(|path| {
        std::fs::read(path).is_ok_and(|bytes| {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    })
}

/// An 8-bit RGB PNG: signature, IHDR, one zlib IDAT (filter 0 on every row), IEND.
pub fn encode_png(rgb: &[u8], width: u32, height: u32) -> Vec<u8> {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut digest = CRC.digest();
        digest.update(kind);
        digest.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&digest.finalize().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, RGB, deflate, adaptive, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    for row in rgb.chunks(width as usize * 3) {
        z.write_all(&[0]).unwrap();
        z.write_all(row).unwrap();
    }
    chunk(&mut out, b"IDAT", &z.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}

/// target/, from this executable's path (target/release/deps/soak-…).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    exe.ancestors()
        .nth(3)
        .expect("target/release/deps layout")
        .to_owned()
}
