//! The gateway's firmware library: the node images it took, each beside its manifest, in
//! `<data_dir>/firmware/`.
//!
//! An image goes in only after `outpost_core::firmware::admit` took it (fleet key, board, floor,
//! expiry, slot size) and only if the library stays within `[ota] library_max_bytes`: a refused
//! image leaves nothing behind. Each file is written whole or not at all
//! ([`crate::io::files::write_atomically`]), the image before its manifest, so a listing never
//! pairs a manifest with half an image. A listing checks every entry again (a manifest that
//! expired since, or a file changed on disk, shows as refused with its reason).

use std::path::{Path, PathBuf};

use outpost_core::firmware::{Expect, Firmware, Refusal, admit};
use outpost_core::update::signing::{Found, PublicKey, SignedManifest};

/// The library's folder inside a data directory.
#[must_use]
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("firmware")
}

/// Why an image was not added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("refused ({kind}): {0}", kind = .0.as_str())]
    Refused(Refusal),
    #[error("cannot read the manifest {path}: {why}")]
    Manifest { path: PathBuf, why: String },
    #[error(
        "the library would hold {would} bytes, more than ota.library_max_bytes ({cap}): remove an image first (`outpost firmware remove`)"
    )]
    Full { would: u64, cap: u64 },
    #[error("{0} is already in the library")]
    Exists(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl AddError {
    /// The refusal's name, as the API, the page and the cloud's result say it.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            AddError::Refused(r) => r.as_str(),
            AddError::Manifest { .. } => "bad-signature",
            AddError::Full { .. } => "library-full",
            AddError::Exists(_) => "exists",
            AddError::Io { .. } => "io",
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AddError {
    let path = path.to_owned();
    move |source| AddError::Io { what, path, source }
}

/// Checks `image` (with `IMAGE.sig` beside it) and copies both into the library at `dir`.
pub fn add(dir: &Path, image: &Path, expect: &Expect<'_>, cap: u64) -> Result<Firmware, AddError> {
    let sig = crate::io::signing_files::sig_path(image);
    let manifest_bytes = std::fs::read(&sig).map_err(io("cannot read", &sig))?;
    // An image larger than a slot is refused without reading it whole.
    let size = std::fs::metadata(image)
        .map_err(io("cannot read", image))?
        .len();
    if size > outpost_core::firmware::MAX_IMAGE_BYTES {
        return Err(AddError::Refused(Refusal::TooLarge { size }));
    }
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let bytes = std::fs::read(image).map_err(io("cannot read", image))?;
    add_bytes(dir, &name, &manifest_bytes, &bytes, expect, cap).map_err(|e| match e {
        AddError::Manifest { why, .. } => AddError::Manifest { path: sig, why },
        other => other,
    })
}

/// Adds an image that came as a bundle (its manifest, then its bytes:
/// [`outpost_core::firmware::split_bundle`]), from the cloud or the local API. The file takes
/// the name its manifest gives.
pub fn add_bundle(
    dir: &Path,
    bundle: &[u8],
    expect: &Expect<'_>,
    cap: u64,
) -> Result<Firmware, AddError> {
    let (manifest_bytes, bytes) =
        outpost_core::firmware::split_bundle(bundle).map_err(|why| AddError::Manifest {
            path: PathBuf::from("(bundle)"),
            why,
        })?;
    let manifest = SignedManifest::parse(manifest_bytes).map_err(|e| AddError::Manifest {
        path: PathBuf::from("(bundle)"),
        why: e.to_string(),
    })?;
    let name = manifest.manifest().artifact.file.clone();
    add_bytes(dir, &name, manifest_bytes, bytes, expect, cap)
}

/// Admits `bytes` as the image `name` with its manifest, and writes both into the library.
fn add_bytes(
    dir: &Path,
    name: &str,
    manifest_bytes: &[u8],
    bytes: &[u8],
    expect: &Expect<'_>,
    cap: u64,
) -> Result<Firmware, AddError> {
    let manifest = SignedManifest::parse(manifest_bytes).map_err(|e| AddError::Manifest {
        path: PathBuf::from(format!("{name}.sig")),
        why: e.to_string(),
    })?;
    if bytes.len() as u64 > outpost_core::firmware::MAX_IMAGE_BYTES {
        return Err(AddError::Refused(Refusal::TooLarge {
            size: bytes.len() as u64,
        }));
    }
    let firmware =
        admit(&manifest, &Found::of_bytes(name, bytes), expect).map_err(AddError::Refused)?;
    let target = dir.join(&firmware.file);
    if target.exists() {
        return Err(AddError::Exists(firmware.file));
    }
    let would = used_bytes(dir) + bytes.len() as u64 + manifest_bytes.len() as u64;
    if would > cap {
        return Err(AddError::Full { would, cap });
    }
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    crate::io::files::write_atomically(&target, bytes, 0o644)
        .map_err(io("cannot write", &target))?;
    let target_sig = crate::io::signing_files::sig_path(&target);
    crate::io::files::write_atomically(&target_sig, manifest_bytes, 0o644)
        .map_err(io("cannot write", &target_sig))?;
    Ok(firmware)
}

/// Bytes the library's files take (temporary files of an interrupted write included: they
/// count until the next write replaces them).
fn used_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// One image of the library, checked again as it is listed.
#[derive(Debug)]
pub struct Entry {
    pub file: String,
    pub checked: Result<Firmware, String>,
}

/// Every image in the library (each `*.sig` and the file it names), by file name, checked again
/// against `keys` at `now_unix_ms`.
pub fn list(dir: &Path, keys: &[PublicKey], now_unix_ms: i64) -> Vec<Entry> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut images: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "sig")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .map(|sig| sig.with_extension(""))
        .collect();
    images.sort();
    let expect = Expect {
        keys,
        hw_rev: None,
        floor: None,
        now_unix_ms,
    };
    images
        .into_iter()
        .map(|image| {
            let file = image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let checked = (|| {
                let sig = crate::io::signing_files::sig_path(&image);
                let manifest = std::fs::read(&sig).map_err(|e| e.to_string())?;
                let manifest = SignedManifest::parse(&manifest).map_err(|e| e.to_string())?;
                let bytes = std::fs::read(&image).map_err(|e| e.to_string())?;
                admit(&manifest, &Found::of_bytes(&file, &bytes), &expect)
                    .map_err(|why| format!("{} ({})", why, why.as_str()))
            })();
            Entry { file, checked }
        })
        .collect()
}

/// Removes `file` and its manifest from the library; whether it was there.
pub fn remove(dir: &Path, file: &str) -> std::io::Result<bool> {
    if file.contains('/') || file.starts_with('.') {
        return Ok(false);
    }
    let image = dir.join(file);
    let sig = crate::io::signing_files::sig_path(&image);
    // The manifest first: without it the image is no longer listed.
    let had_sig = match std::fs::remove_file(&sig) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    let had_image = match std::fs::remove_file(&image) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    Ok(had_sig || had_image)
}
