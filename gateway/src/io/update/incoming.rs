//! The update spool: where signed artifacts (a gateway .deb and its `.sig` manifest) are dropped
//! for the root update agent (`outpost-update`, started by `outpost-update.path`) to verify and
//! install. The daemon runs without privileges and only writes files here; it never decides
//! whether an artifact is trusted (the agent verifies the signature itself).
//!
//! Upload order matters: the agent starts when a `.sig` appears, so the artifact goes first.
//! Each file is received into a hidden temporary file ([`Incoming`]), chunk by chunk as it
//! arrives (never whole in memory), synced, then renamed into place, so the agent never sees half
//! a file. An upload that is refused, too large or cut off (the client went away) leaves nothing:
//! the temporary file is removed when the [`Incoming`] is dropped unfinished.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
    #[error("an artifact is at most {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the upload ended after {received} of {expected} bytes")]
    Short { received: u64, expected: u64 },
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
    let mut incoming = Incoming::create(dir, name, bytes.len() as u64)?;
    incoming.write(bytes)?;
    incoming.finish()
}

/// Removes the temporary files of uploads a crash or a power cut interrupted (the daemon
/// removes its own otherwise); run at start, before uploads are taken. Returns how many.
pub fn remove_partials(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with('.') && name.ends_with(".partial")
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Tells concurrent uploads' temporary files apart.
static NEXT_PARTIAL: AtomicU64 = AtomicU64::new(0);

/// An artifact being received: `expected` bytes, written as they come to a hidden temporary file
/// in the spool, renamed into place by [`Incoming::finish`]. Dropped unfinished (refused, too
/// long, cut off), it removes its temporary file.
#[derive(Debug)]
pub struct Incoming {
    file: Option<std::fs::File>,
    partial: PathBuf,
    target: PathBuf,
    expected: u64,
    received: u64,
}

impl Incoming {
    /// Starts receiving `name` (checked) into `dir`, announced as `expected` bytes (at most
    /// [`MAX_ARTIFACT_BYTES`]).
    pub fn create(dir: &Path, name: &str, expected: u64) -> Result<Incoming, SpoolError> {
        check_name(name)?;
        let limit = MAX_ARTIFACT_BYTES as u64;
        if expected > limit {
            return Err(SpoolError::TooLarge { limit });
        }
        std::fs::create_dir_all(dir)?;
        let n = NEXT_PARTIAL.fetch_add(1, Ordering::Relaxed);
        let partial = dir.join(format!(".{name}.{}-{n}.partial", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)?;
        Ok(Incoming {
            file: Some(file),
            partial,
            target: dir.join(name),
            expected,
            received: 0,
        })
    }

    /// The next chunk of the body; more than announced is refused (and ends the upload).
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        let received = self.received + chunk.len() as u64;
        if received > self.expected {
            return Err(SpoolError::TooLarge {
                limit: self.expected,
            });
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("upload already finished"))?;
        file.write_all(chunk)?;
        self.received = received;
        Ok(())
    }

    /// Bytes written so far.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Syncs the whole artifact and renames it into place (then syncs the folder, so the rename
    /// survives a power cut). Fewer bytes than announced is refused.
    pub fn finish(mut self) -> Result<PathBuf, SpoolError> {
        if self.received != self.expected {
            return Err(SpoolError::Short {
                received: self.received,
                expected: self.expected,
            });
        }
        let file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("upload already finished"))?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.partial, &self.target)?;
        if let Some(dir) = self.target.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        // Renamed: nothing left for drop to remove.
        self.partial = PathBuf::new();
        Ok(self.target.clone())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.partial.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
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

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_artifact_arrives_in_chunks_under_a_hidden_name_then_appears_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut incoming = Incoming::create(dir.path(), "a_1_arm64.deb", 6).unwrap();
        incoming.write(b"pac").unwrap();
        let during = listing(dir.path());
        assert_eq!(during.len(), 1);
        assert!(during[0].starts_with(".a_1_arm64.deb.") && during[0].ends_with(".partial"));
        incoming.write(b"kag").unwrap();
        let path = incoming.finish().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"packag");
        assert_eq!(listing(dir.path()), ["a_1_arm64.deb"]);
    }

    #[test]
    fn partials_left_by_a_crash_are_removed_and_artifacts_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut incoming = Incoming::create(dir.path(), "a.deb", 10).unwrap();
        incoming.write(b"12345").unwrap();
        std::mem::forget(incoming); // a crash: no drop
        store(dir.path(), "b.deb", b"whole").unwrap();
        assert_eq!(listing(dir.path()).len(), 2);
        assert_eq!(remove_partials(dir.path()), 1);
        assert_eq!(listing(dir.path()), ["b.deb"]);
        assert_eq!(remove_partials(&dir.path().join("missing")), 0);
    }

    #[test]
    fn a_cut_off_or_oversize_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // Cut off: dropped before the end.
        let mut incoming = Incoming::create(dir.path(), "a.deb", 10).unwrap();
        incoming.write(b"12345").unwrap();
        drop(incoming);
        assert!(listing(dir.path()).is_empty());
        // Finished short.
        let mut incoming = Incoming::create(dir.path(), "a.deb", 10).unwrap();
        incoming.write(b"12345").unwrap();
        assert!(matches!(
            incoming.finish(),
            Err(SpoolError::Short {
                received: 5,
                expected: 10
            })
        ));
        assert!(listing(dir.path()).is_empty());
        // More than announced.
        let mut incoming = Incoming::create(dir.path(), "a.deb", 4).unwrap();
        assert!(matches!(
            incoming.write(b"12345"),
            Err(SpoolError::TooLarge { limit: 4 })
        ));
        drop(incoming);
        assert!(listing(dir.path()).is_empty());
        // Announced beyond the limit: refused before any file.
        assert!(matches!(
            Incoming::create(dir.path(), "a.deb", MAX_ARTIFACT_BYTES as u64 + 1),
            Err(SpoolError::TooLarge { .. })
        ));
        assert!(listing(dir.path()).is_empty());
    }
}
