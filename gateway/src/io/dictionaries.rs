//! Trained zstd dictionaries on disk: `data_dir/dictionaries/<id>.zdict`, and `active` naming the
//! one new batches are sealed with. The cloud fetches a dictionary by the id a batch header
//! carries (`GET /api/v1/dictionaries/{id}`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use outpost_batch::{Dictionaries, Dictionary};

#[must_use]
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("dictionaries")
}

fn file(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id}.zdict"))
}

/// Writes `dictionary` and makes it the active one. Each file is written to a temporary name
/// and renamed, so a reader never sees half a dictionary.
pub fn save_active(dir: &Path, dictionary: &Dictionary) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let id = dictionary.id().get();
    let path = file(dir, id);
    write_atomically(&path, dictionary.as_bytes())?;
    write_atomically(&dir.join("active"), format!("{id}\n").as_bytes())?;
    Ok(path)
}

/// Dictionaries are read by the cloud to decode batches: whole or absent after a power cut.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    crate::io::files::write_atomically(path, bytes, 0o644)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The active dictionary, if one was trained.
pub fn load_active(dir: &Path) -> anyhow::Result<Option<Dictionary>> {
    let active = dir.join("active");
    let id = match std::fs::read_to_string(&active) {
        Ok(text) => text
            .trim()
            .parse::<u32>()
            .with_context(|| format!("{} does not hold a dictionary id", active.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", active.display())),
    };
    load(dir, id).map(Some)
}

/// The dictionary with `id`.
pub fn load(dir: &Path, id: u32) -> anyhow::Result<Dictionary> {
    let path = file(dir, id);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("cannot read dictionary {}", path.display()))?;
    let dictionary = Dictionary::from_bytes(bytes)
        .with_context(|| format!("{} is not a dictionary", path.display()))?;
    anyhow::ensure!(
        dictionary.id().get() == id,
        "{} holds dictionary {}, not {id}",
        path.display(),
        dictionary.id()
    );
    Ok(dictionary)
}

/// Every dictionary in `files` (for decoding batches sealed with any of them).
pub fn load_files(files: &[PathBuf]) -> anyhow::Result<Dictionaries> {
    let mut all = Dictionaries::new();
    for path in files {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read dictionary {}", path.display()))?;
        let dictionary = Dictionary::from_bytes(bytes)
            .with_context(|| format!("{} is not a dictionary", path.display()))?;
        all.insert(dictionary)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(all)
}
