//! The update spool: where signed artifacts (a gateway .deb and its `.sig` manifest) are dropped
//! for the root update agent (`outpost-update`, started by `outpost-update.path`) to verify and
//! install. The daemon runs without privileges and only writes files here; it never decides
//! whether an artifact is trusted (the agent verifies the signature itself).
//!
//! Upload order matters: the agent starts when a `.sig` appears, so the artifact goes first.
//! Each file is written under a hidden temporary name, synced, then renamed into place, so the
//! agent never sees half a file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The largest artifact accepted, as a body limit.
pub const MAX_ARTIFACT_BYTES: usize = outpost_core::update::MAX_ARTIFACT_BYTES as usize;

/// The spool's incoming folder inside a data directory.
#[must_use]
pub fn incoming_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("updates").join("incoming")
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "`{0}` is not an artifact name: letters, digits, '.', '_', '+', '-', ending in .deb or .deb.sig"
    )]
    BadName(String),
    #[error("cannot write to the update spool: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks an uploaded file's name: a plain file name (no path), `*.deb` or `*.deb.sig`.
pub fn check_name(name: &str) -> Result<(), SpoolError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-');
    let ok = !name.starts_with('.')
        && name.len() <= 200
        && name.chars().all(ok_char)
        && (name.ends_with(".deb") || name.ends_with(".deb.sig"));
    if ok {
        Ok(())
    } else {
        Err(SpoolError::BadName(name.to_owned()))
    }
}

/// Writes `bytes` as `dir/name`, atomically.
pub fn store(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
    check_name(name)?;
    std::fs::create_dir_all(dir)?;
    let partial = dir.join(format!(".{name}.partial"));
    let target = dir.join(name);
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&partial, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_artifact_names_are_accepted() {
        for good in [
            "outpost_0.2.0_arm64.deb",
            "outpost_0.2.0-1+rpi_arm64.deb.sig",
        ] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "../outpost.deb",
            "a/b.deb",
            ".hidden.deb",
            "outpost.sh",
            "outpost.deb.sig.partial",
            "",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_stored_file_appears_whole_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let incoming = incoming_dir(dir.path());
        let path = store(&incoming, "outpost_0.2.0_amd64.deb", b"package").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"package");
        let names: Vec<_> = std::fs::read_dir(&incoming)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["outpost_0.2.0_amd64.deb"], "no temporary file left");
    }
}
