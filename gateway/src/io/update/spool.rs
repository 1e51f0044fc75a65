//! The root agent's side of the update spool (`/var/lib/outpost/updates/incoming/`, written by
//! the daemon as user `outpost`: see `crate::io::update::incoming`).
//!
//! The spool belongs to an unprivileged user, so nothing in it is trusted, including its shape:
//! the folder is opened component by component without following symbolic links, files are
//! opened relative to it without following links and without blocking (a FIFO planted as an
//! artifact cannot hang the agent), only regular files are read, each read is capped, and the
//! artifact is copied into root's own folder while it is hashed. Verification and dpkg only ever
//! see that copy, so the file cannot change between the check and the install.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use sha2::{Digest as _, Sha256};

use outpost_core::update::signing::{Found, MAX_MANIFEST_BYTES};

/// The suffix of a manifest beside its artifact.
pub const SIG_SUFFIX: &str = ".sig";

/// How many trailing components of the spool path the daemon makes (`updates/incoming` under
/// its data folder): a link there is the daemon's doing, never an administrator's.
pub const DAEMON_MADE: usize = 2;

/// Why the spool was not opened, and where the offending entry was moved, if it was.
#[derive(Debug)]
pub struct Refused {
    pub reason: String,
    pub quarantined: Option<PathBuf>,
}

/// Renames `name` in `parent` (the folder `components[..index]` of `spool`, opened without
/// following links) to `NAME.refused-UNIXMS`; the new path, or `None` (logged) if it failed.
fn quarantine(
    parent: &OwnedFd,
    name: &std::ffi::OsStr,
    spool: &Path,
    index: usize,
) -> Option<PathBuf> {
    let mut aside = name.to_owned();
    aside.push(format!(".refused-{}", crate::io::wall_clock::unix_ms()));
    match nix::fcntl::renameat(parent, name, parent, aside.as_os_str()) {
        Ok(()) => {
            let mut path: PathBuf = spool.components().take(index).collect();
            path.push(&aside);
            tracing::warn!(message = "Update spool moved aside.", to = %path.display());
            Some(path)
        }
        Err(error) => {
            tracing::error!(message = "Cannot move the refused update spool aside.",
                spool = %spool.display(), %error);
            None
        }
    }
}

/// The spool folder, held open.
#[derive(Debug)]
pub struct Spool {
    dir: OwnedFd,
    path: PathBuf,
}

/// An artifact and its manifest, taken out of the spool.
#[derive(Debug)]
pub struct Taken {
    /// The artifact's file name (the manifest's name without `.sig`).
    pub file: String,
    pub manifest: Vec<u8>,
    /// Root's copy of the artifact.
    pub copy: PathBuf,
    /// The copy's name, size and SHA-256, to check the manifest against.
    pub found: Found,
}

impl Spool {
    /// Opens the spool folder; `None` when it does not exist (nothing was ever uploaded). A
    /// symbolic link (or a file) anywhere in `path` is refused; when it is in the part the
    /// daemon makes (`updates/incoming`, the last [`DAEMON_MADE`] components) it is moved aside
    /// (renamed in its folder, the link itself: nothing it points to is touched), so the path
    /// unit's glob stops matching and does not start the agent again.
    pub fn open(path: &Path) -> Result<Option<Spool>, Refused> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let refused = |reason: String| Refused {
            reason,
            quarantined: None,
        };
        if !path.is_absolute() {
            return Err(refused(format!(
                "the spool path {} is not absolute",
                path.display()
            )));
        }
        let components: Vec<Component<'_>> = path.components().collect();
        let daemon_made_from = components.len().saturating_sub(DAEMON_MADE);
        let cannot = |e: nix::errno::Errno| refused(format!("cannot open {}: {e}", path.display()));
        let mut dir = nix::fcntl::open("/", flags, Mode::empty()).map_err(cannot)?;
        for (index, component) in components.iter().enumerate() {
            match component {
                Component::RootDir => {}
                Component::Normal(name) => match openat(&dir, *name, flags, Mode::empty()) {
                    Ok(next) => dir = next,
                    Err(nix::errno::Errno::ENOENT) => return Ok(None),
                    Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
                        let reason = format!(
                            "{}: `{}` is a symbolic link or not a folder: refusing the spool",
                            path.display(),
                            name.to_string_lossy()
                        );
                        let quarantined = (index >= daemon_made_from)
                            .then(|| quarantine(&dir, name, path, index))
                            .flatten();
                        return Err(Refused {
                            reason,
                            quarantined,
                        });
                    }
                    Err(e) => return Err(cannot(e)),
                },
                _ => {
                    return Err(refused(format!(
                        "the spool path {} has `.` or `..` in it",
                        path.display()
                    )));
                }
            }
        }
        Ok(Some(Spool {
            dir,
            path: path.to_owned(),
        }))
    }

    /// The manifests waiting (`*.sig`, not hidden), in name order.
    pub fn signatures(&self) -> std::io::Result<Vec<String>> {
        // The folder as opened (not as its path now resolves).
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", self.dir.as_raw_fd()))?;
        let mut names: Vec<String> = listing
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                n.ends_with(SIG_SUFFIX) && n.len() > SIG_SUFFIX.len() && !n.starts_with('.')
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Takes `sig` and its artifact out of the spool: both are read (the artifact into
    /// `work/`, at most `max_bytes`), then both are deleted from the spool, whatever happened.
    /// `Err` says why they could not be taken, for the report.
    pub fn take(&self, sig: &str, work: &Path, max_bytes: u64) -> Result<Taken, String> {
        let file = sig.strip_suffix(SIG_SUFFIX).unwrap_or(sig).to_owned();
        let taken = self.read_both(sig, &file, work, max_bytes);
        for name in [sig, file.as_str()] {
            match unlinkat(&self.dir, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => tracing::warn!(
                    message = "Cannot remove a file from the update spool.",
                    spool = %self.path.display(), file = name, error = %e
                ),
            }
        }
        taken
    }

    fn read_both(
        &self,
        sig: &str,
        file: &str,
        work: &Path,
        max_bytes: u64,
    ) -> Result<Taken, String> {
        let mut manifest = Vec::new();
        self.open_file(sig)?
            .take(MAX_MANIFEST_BYTES as u64 + 1)
            .read_to_end(&mut manifest)
            .map_err(|e| format!("cannot read {sig}: {e}"))?;
        let mut source = self.open_file(file)?;
        let copy = work.join(file);
        let mut target = std::fs::File::create(&copy)
            .map_err(|e| format!("cannot create {}: {e}", copy.display()))?;
        let mut hasher = Sha256::new();
        let mut size = 0_u64;
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = source
                .read(&mut buf)
                .map_err(|e| format!("cannot read {file}: {e}"))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > max_bytes {
                return Err(format!("{file} is larger than {max_bytes} bytes"));
            }
            hasher.update(&buf[..n]);
            target
                .write_all(&buf[..n])
                .map_err(|e| format!("cannot write {}: {e}", copy.display()))?;
        }
        target
            .sync_all()
            .map_err(|e| format!("cannot write {}: {e}", copy.display()))?;
        Ok(Taken {
            file: file.to_owned(),
            manifest,
            copy,
            found: Found {
                file: file.to_owned(),
                size,
                sha256: hasher.finalize().into(),
            },
        })
    }

    /// A regular file in the spool, opened without following links or blocking.
    fn open_file(&self, name: &str) -> Result<std::fs::File, String> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = openat(&self.dir, name, flags, Mode::empty()).map_err(|e| match e {
            nix::errno::Errno::ENOENT => format!("{name} is missing from the spool"),
            nix::errno::Errno::ELOOP => format!("{name} is a symbolic link"),
            e => format!("cannot open {name}: {e}"),
        })?;
        let file = std::fs::File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot open {name}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{name} is not a regular file"));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let incoming = dir.path().join("updates/incoming");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&incoming).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        (dir, incoming, work)
    }

    #[test]
    fn an_artifact_is_copied_hashed_and_removed_from_the_spool() {
        let (_dir, incoming, work) = spool();
        std::fs::write(incoming.join("outpost_1_amd64.deb"), b"package").unwrap();
        std::fs::write(incoming.join("outpost_1_amd64.deb.sig"), b"manifest").unwrap();
        std::fs::write(incoming.join(".outpost_2_amd64.deb.sig.partial"), b"half").unwrap();
        let spool = Spool::open(&incoming).unwrap().unwrap();
        assert_eq!(spool.signatures().unwrap(), ["outpost_1_amd64.deb.sig"]);
        let taken = spool.take("outpost_1_amd64.deb.sig", &work, 1024).unwrap();
        assert_eq!(taken.manifest, b"manifest");
        assert_eq!(std::fs::read(&taken.copy).unwrap(), b"package");
        assert_eq!(
            taken.found,
            Found::of_bytes("outpost_1_amd64.deb", b"package")
        );
        assert_eq!(spool.signatures().unwrap(), Vec::<String>::new());
        assert!(!incoming.join("outpost_1_amd64.deb").exists());
    }

    #[test]
    fn a_symlinked_artifact_is_refused_and_removed() {
        let (dir, incoming, work) = spool();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        std::os::unix::fs::symlink(&secret, incoming.join("x.deb")).unwrap();
        std::fs::write(incoming.join("x.deb.sig"), b"manifest").unwrap();
        let spool = Spool::open(&incoming).unwrap().unwrap();
        let err = spool.take("x.deb.sig", &work, 1024).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(secret.exists(), "the link's target is left alone");
        assert!(std::fs::symlink_metadata(incoming.join("x.deb")).is_err());
    }

    #[test]
    fn a_fifo_artifact_does_not_hang_the_agent() {
        let (_dir, incoming, work) = spool();
        nix::unistd::mkfifo(&incoming.join("x.deb"), Mode::S_IRWXU).unwrap();
        std::fs::write(incoming.join("x.deb.sig"), b"manifest").unwrap();
        let spool = Spool::open(&incoming).unwrap().unwrap();
        let err = spool.take("x.deb.sig", &work, 1024).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn an_artifact_over_the_cap_is_refused() {
        let (_dir, incoming, work) = spool();
        std::fs::write(incoming.join("x.deb"), vec![0; 2048]).unwrap();
        std::fs::write(incoming.join("x.deb.sig"), b"manifest").unwrap();
        let spool = Spool::open(&incoming).unwrap().unwrap();
        let err = spool.take("x.deb.sig", &work, 1024).unwrap_err();
        assert!(err.contains("larger than 1024 bytes"), "{err}");
    }

    #[test]
    fn a_missing_artifact_is_reported() {
        let (_dir, incoming, work) = spool();
        std::fs::write(incoming.join("x.deb.sig"), b"manifest").unwrap();
        let spool = Spool::open(&incoming).unwrap().unwrap();
        let err = spool.take("x.deb.sig", &work, 1024).unwrap_err();
        assert!(err.contains("missing"), "{err}");
        assert!(spool.signatures().unwrap().is_empty());
    }

    #[test]
    fn a_spool_reached_through_a_symbolic_link_is_refused() {
        let (dir, incoming, _work) = spool();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&incoming, &link).unwrap();
        let err = Spool::open(&link.join("..").join("link")).unwrap_err();
        assert!(err.reason.contains('.'), "{err:?}");
        assert!(err.quarantined.is_none(), "{err:?}");
        let err = Spool::open(&link).unwrap_err();
        assert!(err.reason.contains("symbolic link"), "{err:?}");
        assert!(Spool::open(&dir.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn a_link_the_daemon_could_have_made_is_moved_aside_and_its_target_left_alone() {
        // `incoming` swapped for a link to a folder the daemon should not reach.
        let (dir, incoming, _work) = spool();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("x.deb.sig"), b"manifest").unwrap();
        std::fs::remove_dir(&incoming).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &incoming).unwrap();
        let err = Spool::open(&incoming).unwrap_err();
        let aside = err.quarantined.expect("moved aside");
        assert_eq!(aside.parent(), incoming.parent());
        assert!(
            std::fs::symlink_metadata(&incoming).is_err(),
            "no longer at its place"
        );
        assert!(
            std::fs::symlink_metadata(&aside)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(
            elsewhere.join("x.deb.sig").exists(),
            "the target is untouched"
        );
        // A link above the daemon's part (an administrator's) stays where it is.
        let root_link = dir.path().join("data");
        std::os::unix::fs::symlink(dir.path(), &root_link).unwrap();
        let err = Spool::open(&root_link.join("a/updates/incoming")).unwrap_err();
        assert!(err.quarantined.is_none(), "{err:?}");
        assert!(std::fs::symlink_metadata(&root_link).is_ok());
    }
}
