//! The gateway's node-link key on disk: made on first start, kept in the data directory, never
//! leaves it.
//!
//! The file is the role-bound key format of `outpost-sign` (role `node-link`), written once with
//! mode 0600 (created exclusively, synced, then renamed into place), and refused when anyone but
//! its owner can read it. Nodes may pin its public half; `outpost identity show` prints it.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use outpost_core::link::LinkSecrets;
use outpost_core::update::signing::{Role, SigningKey};
use rand::TryRngCore as _;

/// The key file's name in the data directory.
pub const FILE_NAME: &str = "node-link.key";

/// Where the key of a gateway with this data directory lives.
#[must_use]
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the key, or makes one if there is none yet.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<SigningKey> {
    let path = path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mode = std::fs::metadata(&path)
                .with_context(|| format!("cannot stat {}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{} is readable by others (mode {:o}); it must be 0600: chmod 600 it, or \
                     delete it to make a new key (every node pinned to the old one must then be \
                     re-paired)",
                    path.display(),
                    mode & 0o777
                );
            }
            let key = SigningKey::parse(&text)
                .with_context(|| format!("{} is not a key file", path.display()))?;
            if key.role() != Role::NodeLink {
                bail!(
                    "{} holds a {} key, not a node-link key",
                    path.display(),
                    key.role()
                );
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn create(path: &Path) -> anyhow::Result<SigningKey> {
    let key = SigningKey::from_seed(Role::NodeLink, &random()?);
    let tmp = path.with_extension("key.tmp");
    let _ = std::fs::remove_file(&tmp); // a half-written one from a power cut
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(key.emit().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} into place", tmp.display()))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    tracing::info!(message = "Made the gateway's node-link key.", path = %path.display(), key_id = %key.public().id());
    Ok(key)
}

fn random() -> anyhow::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .context("the OS's random source failed")?;
    Ok(bytes)
}

/// What one port's session needs: the key, and fresh entropy for its ephemerals.
pub fn secrets(key: &SigningKey) -> anyhow::Result<LinkSecrets> {
    Ok(LinkSecrets {
        signing_key: key.ed25519().clone(),
        entropy: random()?,
    })
}
