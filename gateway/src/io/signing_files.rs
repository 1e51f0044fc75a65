//! Key and artifact files as the signing tools handle them (`outpost-sign`, `outpost firmware`):
//! role-bound key pairs made with the OS's randomness (the secret 0600, never overwritten), a
//! private key refused when others can read it, an artifact's name, size and SHA-256 read in
//! chunks, and where its manifest goes (`ARTIFACT.sig`). The formats are
//! `outpost_core::update::signing`'s.

use std::io::Read as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use outpost_core::update::signing::{Found, PublicKey, Role, SigningKey};
use rand::TryRngCore as _;
use sha2::{Digest as _, Sha256};

/// Makes a key pair for `role` in `out`: `ROLE.key` (secret, 0600) and `ROLE.pub`.
pub fn keygen(role: Role, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut seed = [0_u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .context("no randomness from the OS")?;
    let key = SigningKey::from_seed(role, &seed);
    seed.fill(0);
    let secret = out.join(format!("{role}.key"));
    let public = out.join(format!("{role}.pub"));
    for (path, text, mode) in [
        (&secret, key.emit(), 0o600),
        (&public, key.public().emit(), 0o644),
    ] {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| {
                format!("cannot create {} (it is never overwritten)", path.display())
            })?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
    }
    println!("key {} for role {role}", key.public().id());
    println!("secret: {} (keep it off the gateways)", secret.display());
    println!("public: {}", public.display());
    Ok(())
}

/// Reads a private key file, refused when group or others may read it.
pub fn private_key(key_path: &Path) -> anyhow::Result<SigningKey> {
    let mode = std::fs::metadata(key_path)
        .with_context(|| format!("cannot read {}", key_path.display()))?
        .permissions()
        .mode();
    ensure!(
        mode & 0o077 == 0,
        "{} is readable by others (mode {:o}): chmod 600 it",
        key_path.display(),
        mode & 0o777
    );
    SigningKey::parse(&std::fs::read_to_string(key_path)?)
        .with_context(|| format!("{} is not a private key", key_path.display()))
}

/// Every public key in the files `paths`.
pub fn public_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    let mut keys = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        keys.extend(PublicKey::parse_all(&text).with_context(|| format!("{}", path.display()))?);
    }
    Ok(keys)
}

/// The artifact's name, size and SHA-256, read in chunks.
pub fn hash_file(path: &Path) -> anyhow::Result<Found> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut size = 0_u64;
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("the artifact has no UTF-8 file name")?
        .to_owned();
    Ok(Found {
        file,
        size,
        sha256: hasher.finalize().into(),
    })
}

/// Where the manifest of `artifact` goes: `ARTIFACT.sig` beside it.
pub fn sig_path(artifact: &Path) -> PathBuf {
    let mut name = artifact.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}
